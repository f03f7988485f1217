//! Reconciliation with the node, at start-up (before the daemon turns ready) and then every
//! `--node-reconcile-interval`:
//!
//! - A lease that recorded a pod network namespace whose file no longer exists is released (into
//!   cooldown). That is how DELs the plugin ran while the daemon was down (it tears the pod down
//!   but cannot release) and pods that vanished without a DEL are reclaimed. A lease made through
//!   the API alone (no namespace recorded) is never released here; a lease younger than
//!   `--node-reconcile-grace` is left alone (its ADD may still be in flight); a namespace path
//!   this daemon cannot judge counts as alive, since releasing a live pod's IP would hand it out
//!   twice: its directory is not visible here, it is a `/proc/<pid>` path of a process we may not
//!   see, or it is a plain file rather than a mounted namespace (what a daemon sees when
//!   `/run/netns` is mounted into its container without mount propagation).
//! - With `--node-cleanup`, host veths of ours (recognised by their alias, see
//!   `enipool_api::node`) whose attachment has no lease are deleted, and our pod policy rules
//!   (priorities 512 and 1536, protocol 211) whose IP has no lease are removed. The kernel is read
//!   before the leases: the plugin takes its lease before it makes the veth and the rules, so
//!   anything an ADD in flight has made is covered by a lease the snapshot already holds.
//!
//! Teardown collects errors and goes on (one stuck veth does not keep the rest).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use enipool_api::node::{PROTO, RULE_FROM_PRIORITY, RULE_TO_PRIORITY, attachment_tag, parse_alias};
use enipool_storage::{Lease, LeaseFilter, LeaseKey, Ledger};
use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use tracing::{info, warn};

use crate::app::App;
use crate::host::{HostNet, errno, failed};

/// statfs(2)'s f_type of a network namespace file (a bind mount of nsfs).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// What a lease's recorded namespace path says about its pod.
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsState {
    Alive,
    Gone,
    /// This daemon cannot tell; treated as alive.
    Undecidable(String),
}

/// Judges a recorded namespace path: a mounted nsfs file is alive; a missing file in a directory
/// we can see is gone; anything else is undecidable.
pub fn netns_state(path: &Path) -> NetnsState {
    if path.starts_with("/proc") {
        return NetnsState::Undecidable(format!("{}: a process's namespace, which we may not see", path.display()));
    }
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return NetnsState::Undecidable(format!("{}: not a usable path", path.display()));
    };
    // SAFETY: statfs reads the NUL-terminated path and writes into the struct we own; zeroed is a
    // valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc == 0 {
        #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
        return if st.f_type as i64 == NSFS_MAGIC {
            NetnsState::Alive
        } else {
            NetnsState::Undecidable(format!(
                "{}: a file, not a mounted namespace (is /run/netns mounted with HostToContainer propagation?)",
                path.display()
            ))
        };
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::NotFound {
        match path.parent() {
            Some(dir) if dir.is_dir() => NetnsState::Gone,
            _ => NetnsState::Undecidable(format!("{}: its directory is not visible to enipoold", path.display())),
        }
    } else {
        NetnsState::Undecidable(format!("{}: {err}", path.display()))
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub released: Vec<LeaseKey>,
    /// Leases left alone for being younger than the grace period.
    pub young: usize,
    pub undecidable: usize,
    pub veths_removed: Vec<String>,
    pub rules_removed: usize,
    pub errors: Vec<String>,
}

/// One reconciliation pass (see the module's doc).
pub async fn reconcile(app: &App) -> NodeReport {
    let mut report = NodeReport::default();
    let now = app.clock_now();
    let grace = app.config.node_reconcile_grace.as_millis() as u64;
    let mut first_undecidable = None;
    for lease in app.ledger.leases(&LeaseFilter::default()) {
        let Some(netns) = lease.meta.netns.as_deref() else { continue };
        if now.saturating_sub(lease.created_at) < grace {
            report.young += 1;
            continue;
        }
        match netns_state(Path::new(netns)) {
            NetnsState::Alive => {}
            NetnsState::Undecidable(why) => {
                report.undecidable += 1;
                first_undecidable.get_or_insert(why);
            }
            NetnsState::Gone => match release(app, &lease).await {
                Ok(true) => {
                    info!(key = %lease.key, ip = %lease.ip, netns, "released: its pod's network namespace is gone");
                    report.released.push(lease.key);
                }
                Ok(false) => {}
                Err(e) => report.errors.push(format!("releasing {}: {e}", lease.key)),
            },
        }
    }
    if let Some(why) = first_undecidable {
        warn!(count = report.undecidable, example = %why, "leases whose pod namespace cannot be judged are kept");
    }
    if app.config.node_cleanup {
        let host = HostNet { netns: app.config.host_netns.clone() };
        let ledger = app.ledger.clone();
        match host.run(move |h| async move { Ok(remove_orphans(&h, &ledger).await) }).await {
            Ok((veths, rules, errors)) => {
                for v in &veths {
                    info!(veth = %v, "removed a host veth of ours that no lease accounts for");
                }
                report.veths_removed = veths;
                report.rules_removed = rules;
                report.errors.extend(errors);
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for e in &report.errors {
        warn!(error = %e, "node reconciliation");
    }
    app.metrics.node_reconciled(
        report.released.len(),
        report.veths_removed.len(),
        report.rules_removed,
        !report.errors.is_empty(),
    );
    report
}

/// Releases `lease` unless its key now holds another lease (the pod came back meanwhile).
async fn release(app: &App, lease: &Lease) -> anyhow::Result<bool> {
    let ledger = app.ledger.clone();
    let seen = lease.clone();
    app.blocking(move || {
        if ledger.lease(&seen.key).is_none_or(|now| now.ip != seen.ip || now.created_at != seen.created_at) {
            return Ok(false);
        }
        ledger.release(&seen.key).map(|r| r.is_some())
    })
    .await
}

/// The periodic passes after start-up, until shutdown. Interval 0: none.
pub async fn run(app: Arc<App>) {
    let every = app.config.node_reconcile_interval;
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = app.shutdown.notified() => return,
        }
        if app.is_shutting_down() {
            return;
        }
        reconcile(&app).await;
    }
}

fn link_attr<'a, T>(m: &'a LinkMessage, pick: impl Fn(&'a LinkAttribute) -> Option<T>) -> Option<T> {
    m.attributes.iter().find_map(pick)
}

/// The pod IP of one of our pod rules (`to <ip>` at 512, `from <ip>` at 1536, protocol 211).
fn our_rule_ip(m: &RuleMessage) -> Option<Ipv4Addr> {
    let mut priority = None;
    let mut ours = false;
    let mut ip = None;
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => priority = Some(*p),
            RuleAttribute::Protocol(p) => ours = *p == RouteProtocol::Other(PROTO),
            RuleAttribute::Source(IpAddr::V4(v)) | RuleAttribute::Destination(IpAddr::V4(v)) => ip = Some(*v),
            _ => {}
        }
    }
    let prio_ok = matches!(priority, Some(RULE_TO_PRIORITY | RULE_FROM_PRIORITY));
    (ours && prio_ok).then_some(ip).flatten()
}

/// Deletes our veths and pod rules that no lease accounts for; returns (veths, rules, errors).
async fn remove_orphans(h: &Handle, ledger: &Ledger) -> (Vec<String>, usize, Vec<String>) {
    let mut errors = Vec::new();
    let links: Vec<LinkMessage> = match h.link().get().execute().try_collect().await {
        Ok(l) => l,
        Err(e) => return (vec![], 0, vec![failed("listing interfaces", e).to_string()]),
    };
    let rules: Vec<RuleMessage> = match h.rule().get(IpVersion::V4).execute().try_collect().await {
        Ok(r) => r,
        Err(e) => return (vec![], 0, vec![failed("listing rules", e).to_string()]),
    };
    // After the kernel dumps, not before (see the module's doc).
    let leases = ledger.leases(&LeaseFilter::default());
    let leased_tags: HashSet<String> =
        leases.iter().map(|l| attachment_tag(&l.key.network, &l.key.container_id, &l.key.ifname)).collect();
    let leased: HashSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();

    let mut veths = Vec::new();
    for m in &links {
        let Some(alias) = link_attr(m, |a| if let LinkAttribute::IfAlias(s) = a { Some(s) } else { None }) else {
            continue;
        };
        let Some(info) = parse_alias(alias) else { continue };
        if leased_tags.contains(&info.attachment_tag) {
            continue;
        }
        let name = link_attr(m, |a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
            .unwrap_or_else(|| format!("#{}", m.header.index));
        match h.link().del(m.header.index).execute().await {
            Ok(()) => veths.push(name),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => errors.push(failed(&format!("deleting {name}"), e).to_string()),
        }
    }
    let mut removed_rules = 0;
    for m in rules {
        let Some(ip) = our_rule_ip(&m) else { continue };
        if leased.contains(&ip) {
            continue;
        }
        match h.rule().del(m).execute().await {
            Ok(()) => removed_rules += 1,
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => errors.push(failed(&format!("deleting a rule of {ip}"), e).to_string()),
        }
    }
    (veths, removed_rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_in_a_visible_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(netns_state(&dir.path().join("cni-1234")), NetnsState::Gone);
    }

    #[test]
    fn a_plain_file_where_a_namespace_should_be_mounted_is_undecidable() {
        // Without mount propagation a live pod's namespace looks exactly like this.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("cni-1234");
        std::fs::write(&plain, "").unwrap();
        assert!(matches!(netns_state(&plain), NetnsState::Undecidable(_)));
    }

    #[test]
    fn paths_the_daemon_cannot_see_are_undecidable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(netns_state(&dir.path().join("no-such-dir/cni-1")), NetnsState::Undecidable(_)));
        assert!(matches!(netns_state(Path::new("/proc/999999999/ns/net")), NetnsState::Undecidable(_)));
    }

    #[test]
    fn our_own_namespace_is_alive() {
        // Through /proc this would be undecidable by design; /proc/self/ns/net is still nsfs, so
        // check the magic on a bind-free path: the thread's own namespace file via its fd.
        let f = std::fs::File::open("/proc/self/ns/net").unwrap();
        use std::os::fd::AsRawFd;
        let fd_path = format!("/dev/fd/{}", f.as_raw_fd());
        assert_eq!(netns_state(Path::new(&fd_path)), NetnsState::Alive);
    }
}

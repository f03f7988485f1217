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
//! - Cleanup never removes a host veth that one of our host routes (`<pod IP>/32`, protocol 211)
//!   goes out of, nor a pod rule for such an IP: that is a live pod, whatever the ledger says.
//!   A DEL removes the route before it releases the lease, so what DELs leave behind (a veth whose
//!   namespace lingers) has none.
//!
//! Rebuilding leases from the node (`read_attachments`, `rebuild`): a live pod of ours shows on
//! the node as a host veth with our alias and our host route to its IP. A start-up on a ledger
//! that lost leases (emptied, moved aside, restored from an old copy) finds such pods with no
//! lease; each gets its lease back before the daemon hands out anything: here for addresses the
//! ledger still knows (free or cooling), and in the provider sync (`pool::sync_with_provider`)
//! for addresses it adopts from the provider. The lease is keyed by the attachment the alias
//! names, or by its hashes (`enipool_api::node::hashed_key`) for veths made before the alias
//! carried it in clear; its namespace path is found by the veth peer's namespace id among
//! `/run/netns`, else the lease records none and is never released here (like an API lease).
//!
//! Teardown collects errors and goes on (one stuck veth does not keep the rest).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use enipool_api::node::{
    AliasInfo, PROTO, RULE_FROM_PRIORITY, RULE_TO_PRIORITY, hashed_key, key_attachment_tag, parse_alias,
};
use enipool_storage::{AddressState, Lease, LeaseFilter, LeaseKey, LeaseMeta, Ledger};
use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tracing::{info, warn};

use crate::app::App;
use crate::host::{HostError, HostNet, errno, failed};

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
    // SAFETY: as above: a NUL-terminated path and a struct we own.
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

/// A pod of ours wired on the node: a host veth with our alias and our host route to its IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAttachment {
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub alias: AliasInfo,
    /// The pod's namespace path, when found.
    pub netns: Option<String>,
}

impl NodeAttachment {
    /// The lease this pod would have had (ENI and time to be filled in by the ledger call).
    pub fn lease(&self, now: u64) -> Lease {
        let (network, container_id, ifname) = self
            .alias
            .attachment
            .clone()
            .unwrap_or_else(|| hashed_key(&self.alias.network_tag, &self.alias.attachment_tag));
        Lease {
            key: LeaseKey::new(network, container_id, ifname),
            ip: self.ip,
            eni_id: String::new(),
            meta: LeaseMeta {
                pod_namespace: None,
                pod_name: None,
                netns: self.netns.clone(),
                host_veth: Some(self.host_veth.clone()),
            },
            created_at: now,
        }
    }
}

/// Where runtimes mount pods' network namespaces (containerd, CRI-O; `/var/run` is `/run`).
const NETNS_DIR: &str = "/run/netns";

/// Every pod of ours the node shows (see the module's doc), read in the host namespace.
pub async fn read_attachments(app: &App) -> Result<Vec<NodeAttachment>, HostError> {
    let host = HostNet { netns: app.config.host_netns.clone() };
    host.run(|h| async move {
        let links: Vec<LinkMessage> =
            h.link().get().execute().try_collect().await.map_err(|e| failed("listing interfaces", e))?;
        // index -> (name, alias, the peer's namespace id)
        let mut ours = std::collections::HashMap::new();
        for m in &links {
            let alias = link_attr(m, |a| if let LinkAttribute::IfAlias(s) = a { parse_alias(s) } else { None });
            let Some(alias) = alias else { continue };
            let name = link_attr(m, |a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None });
            let nsid = link_attr(m, |a| if let LinkAttribute::LinkNetNsId(id) = a { Some(*id) } else { None });
            ours.insert(m.header.index, (name.unwrap_or_default(), alias, nsid));
        }
        let routes: Vec<RouteMessage> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| failed("listing routes", e))?;
        let mut found = Vec::new();
        let mut nsids = Vec::new();
        for r in &routes {
            let Some((ip, oif)) = our_host_route(r) else { continue };
            let Some((name, alias, nsid)) = ours.get(&oif) else { continue };
            nsids.extend(*nsid);
            found.push((NodeAttachment { ip, host_veth: name.clone(), alias: alias.clone(), netns: None }, *nsid));
        }
        let paths = if nsids.is_empty() { Default::default() } else { netns_paths_by_id(&h).await };
        Ok(found
            .into_iter()
            .map(|(mut a, nsid)| {
                a.netns = nsid.and_then(|id| paths.get(&id).cloned());
                a
            })
            .collect())
    })
    .await
}

/// `<ip>/32 dev <oif>` in the main table with our protocol: (ip, oif).
fn our_host_route(r: &RouteMessage) -> Option<(Ipv4Addr, u32)> {
    if r.header.protocol != RouteProtocol::Other(PROTO) || r.header.destination_prefix_length != 32 {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    let mut table = u32::from(r.header.table);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some((dst?, oif?))
}

/// The namespace id (as this netlink socket's namespace sees it) of every namespace mounted in
/// `/run/netns`, to its path. Unreadable entries are skipped.
async fn netns_paths_by_id(h: &Handle) -> std::collections::HashMap<i32, String> {
    let mut out = std::collections::HashMap::new();
    let mut ambiguous = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return out };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(file) = std::fs::File::open(&path) else { continue };
        if let Ok(Some(id)) = netns_id(h, &file).await {
            ambiguous.entry(id).or_insert_with(Vec::new).push(path.to_string_lossy().into_owned());
        }
    }
    // A namespace mounted under two names (`ip netns attach` while debugging): recording either
    // could have its lease released when the other name goes, so record none (never released
    // by node reconciliation).
    for (id, paths) in ambiguous {
        if let [only] = paths.as_slice() {
            out.insert(id, only.clone());
        }
    }
    out
}

/// RTM_GETNSID for an open namespace file: its id, if one is assigned (a veth peer there has one).
async fn netns_id(h: &Handle, file: &std::fs::File) -> Result<Option<i32>, rtnetlink::Error> {
    use futures_util::StreamExt;
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
    use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use std::os::fd::AsRawFd;

    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(file.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut replies = h.clone().request(req)?;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct RebuildReport {
    pub restored: Vec<Lease>,
    /// Pods of ours on the node whose IP the ledger does not know (yet): the provider sync
    /// leases them when it adopts their IPs.
    pub unknown_ip: usize,
}

/// Gives pods found on the node (`attachments`) whose IP the ledger knows but has not leased
/// their lease back (see the module's doc). An IP the ledger has leased to another attachment,
/// older than the grace period, is a stale lease (our host route goes to this pod's veth, so no
/// other pod on the node uses the IP): the lease moves to the pod, lest the stale one's release
/// hand the IP out again.
pub async fn rebuild(app: &App, attachments: &[NodeAttachment]) -> anyhow::Result<RebuildReport> {
    let now = app.clock_now();
    let grace = app.config.node_reconcile_grace.as_millis() as u64;
    let mut wanted = Vec::new();
    let mut report = RebuildReport::default();
    for a in attachments {
        match app.ledger.address(a.ip) {
            None => report.unknown_ip += 1,
            Some(addr) => match addr.state {
                AddressState::Free | AddressState::Cooling { .. } => wanted.push(a.lease(now)),
                AddressState::Leased { key } | AddressState::Lost { key } => {
                    let same =
                        a.alias.attachment_tag == key_attachment_tag(&key.network, &key.container_id, &key.ifname);
                    let stale = app.ledger.lease(&key).is_some_and(|l| now.saturating_sub(l.created_at) >= grace);
                    if same || !stale {
                        continue;
                    }
                    let lease = a.lease(now);
                    let (ledger, old, new) = (app.ledger.clone(), key.clone(), lease.clone());
                    if app.blocking(move || ledger.rekey_lease(&old, new)).await? {
                        warn!(stale = %key, key = %lease.key, ip = %a.ip, host_veth = %a.host_veth,
                            "lease moved from a stale key to the live pod the node shows using its IP");
                        report.restored.push(lease);
                    }
                }
            },
        }
    }
    if !wanted.is_empty() {
        let ledger = app.ledger.clone();
        report.restored = app.blocking(move || ledger.restore_leases(wanted)).await?;
        for l in &report.restored {
            warn!(key = %l.key, ip = %l.ip, netns = ?l.meta.netns, host_veth = ?l.meta.host_veth,
                "lease rebuilt from the node: a live pod uses this IP and the ledger had no lease for it");
        }
    }
    Ok(report)
}

/// One reconciliation pass (see the module's doc).
pub async fn reconcile(app: &App) -> NodeReport {
    reconcile_with(app, app.config.node_cleanup).await
}

/// One pass; `cleanup` as `--node-cleanup`, off while the provider has not been listed (the
/// ledger may lack leases the provider sync will rebuild).
pub async fn reconcile_with(app: &App, cleanup: bool) -> NodeReport {
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
    if cleanup {
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
        // No cleanup while the ledger may lack leases the provider sync would rebuild.
        reconcile_with(&app, app.config.node_cleanup && app.is_ready()).await;
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
        leases.iter().map(|l| key_attachment_tag(&l.key.network, &l.key.container_id, &l.key.ifname)).collect();
    let leased: HashSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();

    let routes: Vec<RouteMessage> =
        match h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await {
            Ok(r) => r,
            Err(e) => return (vec![], 0, vec![failed("listing routes", e).to_string()]),
        };
    // Live pods: never unplugged here, whatever the ledger says (see the module's doc).
    let routed: Vec<(Ipv4Addr, u32)> = routes.iter().filter_map(our_host_route).collect();
    let mut veths = Vec::new();
    for m in &links {
        if routed.iter().any(|(_, oif)| *oif == m.header.index) {
            continue;
        }
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
        if leased.contains(&ip) || routed.iter().any(|(r, _)| *r == ip) {
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

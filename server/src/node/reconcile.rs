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
//!   `enipool_nodenet::alias`) whose attachment has no lease are deleted, and our pod policy rules
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
//! names, or by its hashes (`enipool_nodenet::alias::hashed_key`) for veths made before the alias
//! carried it in clear; its namespace path is found by the veth peer's namespace id among
//! `/run/netns`, else the lease records none and is never released here (like an API lease).
//!
//! Teardown collects errors and goes on (one stuck veth does not keep the rest).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use enipool_nodenet::alias::{AliasInfo, hashed_key, key_attachment_tag};
use enipool_nodenet::netlink::{self, Handle, errno};
use enipool_nodenet::netns::{NetnsState, netns_state};
use enipool_nodenet::view::RouteView;
use enipool_storage::{AddressState, Lease, LeaseFilter, LeaseKey, LeaseMeta, Ledger};
use tracing::{info, warn};

use super::eni_setup::{HostError, HostNet, failed};
use crate::app::{App, LedgerCallError};

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
        let links = netlink::links(&h).await.map_err(|e| failed("listing interfaces", e))?;
        let routes = netlink::routes(&h).await.map_err(|e| failed("listing routes", e))?;
        let mut found = Vec::new();
        for r in routes.iter().map(RouteView::from_message) {
            let (Some(ip), Some(oif)) = (r.our_host_route(), r.oif) else { continue };
            let Some(link) = links.iter().find(|l| l.index == oif) else { continue };
            let Some(alias) = link.our_alias() else { continue };
            found.push((NodeAttachment { ip, host_veth: link.name.clone(), alias, netns: None }, link.peer_netns_id));
        }
        let paths = if found.iter().all(|(_, nsid)| nsid.is_none()) {
            Default::default()
        } else {
            netlink::netns_paths_by_id(&h, Path::new(NETNS_DIR)).await
        };
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
pub async fn rebuild(app: &App, attachments: &[NodeAttachment]) -> Result<RebuildReport, LedgerCallError> {
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
                    if app.ledger_call(move || ledger.rekey_lease(&old, new)).await? {
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
        let restored = app.ledger_call(move || ledger.restore_leases(wanted)).await?;
        for l in &restored {
            warn!(key = %l.key, ip = %l.ip, netns = ?l.meta.netns, host_veth = ?l.meta.host_veth,
                "lease rebuilt from the node: a live pod uses this IP and the ledger had no lease for it");
        }
        // Beside the leases moved from stale keys above, not instead of them.
        report.restored.extend(restored);
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
async fn release(app: &App, lease: &Lease) -> Result<bool, LedgerCallError> {
    let ledger = app.ledger.clone();
    let seen = lease.clone();
    app.ledger_call(move || {
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
            _ = app.shutdown_signalled() => return,
        }
        if app.is_shutting_down() {
            return;
        }
        // No cleanup while the ledger may lack leases the provider sync would rebuild.
        reconcile_with(&app, app.config.node_cleanup && app.is_ready()).await;
    }
}

/// Deletes our veths and pod rules that no lease accounts for; returns (veths, rules, errors).
async fn remove_orphans(h: &Handle, ledger: &Ledger) -> (Vec<String>, usize, Vec<String>) {
    let mut errors = Vec::new();
    let links = match netlink::links(h).await {
        Ok(l) => l,
        Err(e) => return (vec![], 0, vec![failed("listing interfaces", e).to_string()]),
    };
    let rules = match netlink::rules(h).await {
        Ok(r) => r,
        Err(e) => return (vec![], 0, vec![failed("listing rules", e).to_string()]),
    };
    // After the kernel dumps, not before (see the module's doc).
    let leases = ledger.leases(&LeaseFilter::default());
    let leased_tags: HashSet<String> =
        leases.iter().map(|l| key_attachment_tag(&l.key.network, &l.key.container_id, &l.key.ifname)).collect();
    let leased: HashSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();

    let routes = match netlink::routes(h).await {
        Ok(r) => r,
        Err(e) => return (vec![], 0, vec![failed("listing routes", e).to_string()]),
    };
    // Live pods: never unplugged here, whatever the ledger says (see the module's doc).
    let routed: Vec<(Ipv4Addr, Option<u32>)> =
        routes.iter().map(RouteView::from_message).filter_map(|r| Some((r.our_host_route()?, r.oif))).collect();
    let mut veths = Vec::new();
    for link in &links {
        if routed.iter().any(|(_, oif)| *oif == Some(link.index)) {
            continue;
        }
        let Some(info) = link.our_alias() else { continue };
        if leased_tags.contains(&info.attachment_tag) {
            continue;
        }
        let name = if link.name.is_empty() { format!("#{}", link.index) } else { link.name.clone() };
        // One that went meanwhile is not counted as removed here.
        match h.link().del(link.index).execute().await {
            Ok(()) => veths.push(name),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => errors.push(failed(&format!("deleting {name}"), e).to_string()),
        }
    }
    let mut removed_rules = 0;
    for (m, view) in rules {
        let Some(ip) = view.filter(|v| v.our_pod_rule()).map(|v| v.ip) else { continue };
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
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Duration;

    use enipool_nodenet::alias::{host_veth_alias, parse_alias};
    use enipool_storage::{EniRecord, LeaseKey, LeaseMeta, Ledger, LedgerConfig, SystemClock};

    use super::{NodeAttachment, rebuild};
    use crate::app::{App, Identity};
    use crate::config::DaemonArgs;
    use crate::metrics::Metrics;
    use crate::provider::Provider;
    use crate::provider::static_provider::StaticProvider;

    fn pod(name: &str, ip: Ipv4Addr) -> NodeAttachment {
        NodeAttachment {
            ip,
            host_veth: format!("eni{name}"),
            alias: parse_alias(&host_veth_alias("net", name, "eth0")).unwrap(),
            netns: None,
        }
    }

    #[tokio::test]
    async fn the_report_counts_moved_and_restored_leases_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DaemonArgs { data_dir: Some(dir.path().into()), ..DaemonArgs::default() }.resolve().unwrap();
        config.node_reconcile_grace = Duration::ZERO;
        let ledger = Ledger::open(&dir.path().join("ledger"), LedgerConfig::default(), Arc::new(SystemClock)).unwrap();
        let provider = StaticProvider::open(dir.path(), "m5.large", config.vpc_cidr, Duration::ZERO).unwrap();
        let info = provider.init().await.unwrap();
        let app = App::new(config, ledger, Arc::new(provider), info, Identity::Provider, Arc::new(Metrics::new()));
        let (held, free) = (Ipv4Addr::new(10, 0, 0, 20), Ipv4Addr::new(10, 0, 0, 21));
        let eni = EniRecord {
            id: "eni-1".into(),
            device_number: 0,
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            subnet_gateway: Ipv4Addr::new(10, 0, 0, 1),
            primary_ip: Ipv4Addr::new(10, 0, 0, 10),
            route_table: 254,
            attached: true,
        };
        app.ledger.add_eni(eni, &[held, free]).unwrap();
        let stale = LeaseKey::new("net", "stale", "eth0");
        assert_eq!(app.ledger.allocate(stale, LeaseMeta::default()).unwrap().lease.ip, held);

        // One pod uses the stale lease's IP (its lease moves), one uses a free IP (restored).
        let report = rebuild(&app, &[pod("moved", held), pod("restored", free)]).await.unwrap();
        let mut keys: Vec<String> = report.restored.iter().map(|l| l.key.container_id.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["moved", "restored"]);
    }
}

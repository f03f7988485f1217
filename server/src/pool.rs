//! The pool manager: keeps enough free IPs (and ENIs) warm, and gives back what is in excess.
//!
//! It is one background task, woken by every allocation and by a periodic tick. It never holds
//! anything an allocation waits on: allocations go straight to the ledger, and only when the
//! ledger has no free IP does an allocation wait (bounded) for this task to grow the pool.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use enipool_storage::{EffectiveState, EniRecord, Stats};
use tracing::{info, warn};

use crate::app::App;
use crate::config::Config;
use crate::host::{EniHost, HostError};
use crate::provider::{Limits, ProviderEni, ProviderError};

/// What the pool should hold, given the targets and the current counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// IPs the pool wants to hold now (capped by the ENI limit).
    pub desired_total: u32,
    pub deficit: u32,
    pub excess: u32,
}

/// The warm-pool arithmetic, with the reference daemon's knobs and meanings except that cooling
/// IPs do not count as available (the reference's starvation bug): they are neither free for new
/// pods nor releasable.
pub fn plan(config: &Config, limits: Limits, total: u32, leased: u32, cooling: u32) -> Plan {
    let per_eni = limits.pod_ips_per_eni().max(1);
    let max_enis = config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
    let max_total = max_enis * per_eni;
    let in_use = leased + cooling;
    let wanted = if config.warm_ip_target.is_some() || config.minimum_ip_target.is_some() {
        let warm = in_use + config.warm_ip_target.unwrap_or(0);
        warm.max(config.minimum_ip_target.unwrap_or(0))
    } else {
        // Whole ENIs: enough of them that `warm_eni_target` ENIs' worth of IPs stay free.
        let need = in_use + config.warm_eni_target * per_eni;
        need.div_ceil(per_eni) * per_eni
    };
    let desired_total = wanted.min(max_total);
    Plan {
        desired_total,
        deficit: desired_total.saturating_sub(total),
        excess: total.saturating_sub(desired_total.max(in_use)),
    }
}

pub fn plan_now(app: &App, stats: &Stats) -> Plan {
    let c = stats.addresses;
    plan(&app.config, app.info().limits, c.total as u32, c.leased as u32, c.cooling as u32)
}

/// The ledger's record of a provider ENI. The primary ENI routes through the main table; a
/// secondary ENI gets its own table, device number + 1, as the reference does.
pub fn eni_record(eni: &ProviderEni) -> EniRecord {
    EniRecord {
        id: eni.id.clone(),
        device_number: eni.device_number,
        subnet_cidr: eni.subnet_cidr,
        subnet_gateway: eni.subnet_gateway,
        primary_ip: eni.primary_ip,
        route_table: if eni.primary { 254 } else { eni.device_number + 1 },
        attached: true,
    }
}

/// Runs the pool manager until shutdown. Besides growing and shrinking, it reconciles the
/// ledger with the provider every `reconcile_interval` and runs the leaked-ENI sweep every
/// `leaked_eni_interval`, in the same task, so none of these interleave.
pub async fn run(app: Arc<App>) {
    let mut last_shrink: Option<Instant> = None;
    // The start-up sync is the first reconciliation.
    let mut last_reconcile = Instant::now();
    let mut last_sweep: Option<Instant> = None;
    loop {
        if app.is_shutting_down() {
            return;
        }
        if app.is_started() {
            watch_node(&app).await;
        }
        if app.is_ready() {
            if last_reconcile.elapsed() >= app.config.reconcile_interval {
                last_reconcile = Instant::now();
                if let Err(e) = sync_with_provider(&app).await {
                    warn!(error = %e, "reconciliation with the provider failed");
                }
            }
            let sweep_every = app.config.leaked_eni_interval;
            if !sweep_every.is_zero() && last_sweep.is_none_or(|at| at.elapsed() >= sweep_every) {
                last_sweep = Some(Instant::now());
                match app.provider_call("sweep_leaked_enis", app.provider.sweep_leaked_enis()).await {
                    Ok(gone) if !gone.is_empty() => {
                        app.metrics.leaked_enis_deleted(gone.len());
                        app.note_action("sweep_leaked_enis", format!("deleted {}", gone.join(", ")));
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "leaked-ENI sweep failed"),
                }
            }
            host_side(&app).await;
            if let Err(e) = step(&app, &mut last_shrink).await {
                warn!(error = %e, "pool step failed");
            }
        }
        tokio::select! {
            _ = app.pool_wake.notified() => {}
            _ = tokio::time::sleep(app.config.pool_tick) => {}
            _ = app.shutdown.notified() => return,
        }
    }
}

/// The node-wide sysctls (see `host.rs`), read on the primary ENI's interface (found by its
/// MAC) and written where the daemon can: `Err` with the reason while they are wrong and
/// cannot be written, or while no interface has the primary ENI's MAC; `Ok` when they are
/// right or there is no host setup. Cheap (three small reads), so it runs every pool tick.
pub async fn prepare_node(app: &App) -> Result<(), String> {
    let Some(host) = &app.host else { return Ok(()) };
    let primary = app.info().primary_eni_id;
    let Some(mac) = crate::lock(&app.macs).get(&primary).cloned() else {
        // A provider that reports no MACs: nothing to find the interface by.
        return Ok(());
    };
    match host.setup_node(&mac).await {
        Ok(_) => Ok(()),
        Err(HostError::NotFound(mac)) => Err(format!("no interface has the primary ENI's MAC {mac}")),
        Err(e) => Err(e.to_string()),
    }
}

/// After start-up, readiness follows the node: not ready while its sysctls are wrong (someone
/// reset them), ready again once they are right. Logs only when that changes.
async fn watch_node(app: &App) {
    match prepare_node(app).await {
        Ok(()) if !app.is_ready() => {
            info!("the node is prepared again: ready");
            app.set_ready();
        }
        Err(why) if app.is_ready() => {
            warn!(reason = %why, "the node's sysctls went wrong: not ready");
            app.set_not_ready(why);
        }
        Err(why) => app.set_not_ready(why),
        Ok(()) => {}
    }
}

/// The node side of every attached secondary ENI not done yet, and the node-wide settings once
/// (see `host.rs`). An interface that has not appeared yet is tried again next tick.
async fn host_side(app: &App) {
    let Some(host) = &app.host else { return };
    let info = app.info();
    let done = |id: &str| crate::lock(&app.host_done).contains(id);
    let mac_of = |id: &str| crate::lock(&app.macs).get(id).cloned();
    for eni in app.ledger.enis() {
        if !eni.attached || eni.id == info.primary_eni_id || done(&eni.id) {
            continue;
        }
        let Some(mac) = mac_of(&eni.id) else { continue };
        let spec = EniHost {
            eni_id: eni.id.clone(),
            mac,
            primary_ip: eni.primary_ip,
            subnet: eni.subnet_cidr,
            gateway: eni.subnet_gateway,
            table: eni.route_table,
            mtu: app.config.eni_mtu,
        };
        match host.setup_eni(spec).await {
            Ok(ifname) => {
                info!(eni = %eni.id, %ifname, table = eni.route_table, "ENI's node side set up");
                crate::lock(&app.host_done).insert(eni.id.clone());
            }
            Err(HostError::NotFound(mac)) => {
                tracing::debug!(eni = %eni.id, %mac, "ENI's interface has not appeared yet");
            }
            Err(e) => warn!(eni = %eni.id, error = %e, "setting up the ENI's node side failed"),
        }
    }
}

/// One look at the pool: grow to the target, or shrink what is in excess (rate-limited).
pub async fn step(app: &App, last_shrink: &mut Option<Instant>) -> anyhow::Result<()> {
    let stats = app.ledger.stats();
    let p = plan_now(app, &stats);
    if p.deficit > 0 {
        if app.growth_pause().is_some() {
            return Ok(());
        }
        let grown = grow(app, p.deficit).await;
        if let Err(e) = &grown
            && let Some(ProviderError::SubnetExhausted(reason)) = e.downcast_ref::<ProviderError>()
        {
            app.pause_growth(app.config.subnet_exhausted_pause, reason.clone());
        }
        grown
    } else if p.excess > 0 && last_shrink.is_none_or(|at| at.elapsed() >= app.config.shrink_interval) {
        let shrunk = shrink(app, p.excess).await?;
        if shrunk {
            *last_shrink = Some(Instant::now());
        }
        Ok(())
    } else {
        Ok(())
    }
}

async fn grow(app: &App, mut deficit: u32) -> anyhow::Result<()> {
    let limits = app.info().limits;
    let per_eni = limits.pod_ips_per_eni();
    let max_enis = app.config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
    while deficit > 0 {
        let stats = app.ledger.stats();
        let mut enis = app.ledger.enis();
        enis.sort_by_key(|e| e.device_number);
        let with_room = enis
            .iter()
            .filter(|e| e.attached)
            .map(|e| (e, per_eni.saturating_sub(stats.per_eni.get(&e.id).map_or(0, |c| c.total as u32))))
            .find(|(_, room)| *room > 0);
        if let Some((eni, room)) = with_room {
            let n = room.min(deficit);
            let ips = app.provider_call("assign_ips", app.provider.assign_ips(&eni.id, n)).await?;
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            let added = ips.clone();
            app.blocking(move || ledger.add_addresses(&id, &added)).await?;
            app.note_action("assign_ips", format!("{} IPs to {}", ips.len(), eni.id));
            deficit = deficit.saturating_sub(ips.len() as u32);
            app.pool_grew();
            if ips.is_empty() {
                break;
            }
        } else if (enis.iter().filter(|e| e.attached).count() as u32) < max_enis {
            // An ENI the provider lost (detached here, waiting for its lost leases to go) does
            // not hold its device index.
            let used: Vec<u32> = enis.iter().filter(|e| e.attached).map(|e| e.device_number).collect();
            let device = (1..).find(|d| !used.contains(d)).expect("a free device number");
            let eni = app.provider_call("create_eni", app.provider.create_eni(device)).await?;
            app.note_macs([&eni]);
            let record = eni_record(&eni);
            let ledger = app.ledger.clone();
            let ips = eni.secondary_ips.clone();
            app.blocking(move || ledger.add_eni(record, &ips)).await?;
            app.note_action("create_eni", format!("{} at device {device}", eni.id));
        } else {
            // At the instance's limit: nothing more to do until pods go away.
            break;
        }
    }
    Ok(())
}

/// Gives back up to `excess` IPs: whole secondary ENIs without leased or cooling IPs first,
/// then (with WARM_IP_TARGET / MINIMUM_IP_TARGET) single free IPs. Returns whether anything went.
async fn shrink(app: &App, excess: u32) -> anyhow::Result<bool> {
    let now = app.clock_now();
    let stats = app.ledger.stats();
    let mut left = excess;
    let mut shrunk = false;
    let mut enis = app.ledger.enis();
    // Highest device numbers first: they were added last.
    enis.sort_by_key(|e| std::cmp::Reverse(e.device_number));
    let primary_eni_id = app.info().primary_eni_id;
    // Only attached ENIs: reconciliation drops the ones the provider lost.
    enis.retain(|e| e.attached);
    for eni in enis.iter().filter(|e| e.id != primary_eni_id) {
        let Some(c) = stats.per_eni.get(&eni.id) else { continue };
        if c.leased + c.cooling > 0 || c.total as u32 > left {
            continue;
        }
        let ips: Vec<Ipv4Addr> = app.ledger.addresses(Some(&eni.id)).iter().map(|a| a.ip).collect();
        let ledger = app.ledger.clone();
        let id = eni.id.clone();
        // The ledger refuses if an allocation took one of its IPs meanwhile; then we keep it.
        if app.blocking(move || ledger.remove_eni(&id)).await.is_err() {
            continue;
        }
        if let Err(e) = app.provider_call("delete_eni", app.provider.delete_eni(&eni.id)).await {
            // Put it back so its IPs stay usable; the next step retries.
            let ledger = app.ledger.clone();
            let record = eni.clone();
            let _ = app.blocking(move || ledger.add_eni(record, &ips)).await;
            return Err(e.into());
        }
        app.note_action("delete_eni", format!("{} ({} IPs)", eni.id, c.total));
        left -= c.total as u32;
        shrunk = true;
    }
    let single_ips = app.config.warm_ip_target.is_some() || app.config.minimum_ip_target.is_some();
    if single_ips && left > 0 {
        for eni in &enis {
            if left == 0 {
                break;
            }
            let free: Vec<Ipv4Addr> = app
                .ledger
                .addresses(Some(&eni.id))
                .into_iter()
                .filter(|a| a.effective_state(now) == EffectiveState::Free)
                .map(|a| a.ip)
                .rev()
                .take(left as usize)
                .collect();
            if free.is_empty() {
                continue;
            }
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            let gone = free.clone();
            if app.blocking(move || ledger.remove_addresses(&id, &gone)).await.is_err() {
                continue;
            }
            if let Err(e) = app.provider_call("unassign_ips", app.provider.unassign_ips(&eni.id, &free)).await {
                let ledger = app.ledger.clone();
                let id = eni.id.clone();
                let _ = app.blocking(move || ledger.add_addresses(&id, &free)).await;
                return Err(e.into());
            }
            app.note_action("unassign_ips", format!("{} IPs from {}", free.len(), eni.id));
            left -= free.len() as u32;
            shrunk = true;
        }
    }
    Ok(shrunk)
}

/// Makes the ledger agree with the provider (reconciliation), at start-up and then every
/// `reconcile_interval`, always from the pool manager's task or before it acts, so it never
/// interleaves with a grow or shrink:
/// - an ENI or IP the provider has and the ledger lacks is adopted, cooling for one cooldown
///   (nobody here leased it, but we cannot know who used it last);
/// - an IP the provider no longer has: free or cooling, it is dropped; leased, it is marked lost
///   (metric, log, `/v1/pool`), never handed out again, and dropped when its lease goes;
/// - an ENI the provider no longer has: all its IPs as above, it is marked detached (nothing is
///   allocated from it), and dropped once nothing references it.
///
/// Stale reads: the provider overlays its own recent changes on what it lists (see
/// `enipool_ec2`), so an IP we just gave back is not re-adopted from a stale listing.
pub async fn sync_with_provider(app: &App) -> Result<(), ProviderError> {
    let enis = app.provider_call("list_enis", app.provider.list_enis()).await?;
    app.note_macs(&enis);
    let fail = |e: anyhow::Error| ProviderError::Failed(format!("{e:#}"));
    let cooling_until = app.clock_now() + app.config.ip_cooldown.as_millis() as u64;
    let mut gone: Vec<Ipv4Addr> = Vec::new();
    // The provider showing an IP the ledger has on another ENI is a disagreement we do not
    // guess about: the sync fails (and the daemon stays unready at start-up) until it clears.
    for eni in &enis {
        for ip in &eni.secondary_ips {
            if let Some(a) = app.ledger.address(*ip)
                && a.eni_id != eni.id
            {
                return Err(ProviderError::Failed(format!(
                    "the provider shows {ip} on {}, the ledger has it on {}",
                    eni.id, a.eni_id
                )));
            }
        }
    }
    // IPs the provider has and the ledger lacks are adopted; a live pod of ours on the node may
    // use one (the ledger lost its lease): that one is adopted leased to it, in the same ledger
    // operation, so it is never handed out first (see `node`).
    let lacking = enis.iter().any(|e| e.secondary_ips.iter().any(|ip| app.ledger.address(*ip).is_none()));
    // Fails closed: without the node, an adopted IP a pod uses would cool and then go to another.
    let on_node = if lacking {
        crate::node::read_attachments(app)
            .await
            .map_err(|e| ProviderError::Failed(format!("reading the node's pods before adopting IPs: {e}")))?
    } else {
        Vec::new()
    };
    let adopt = |eni_id: String, ips: Vec<Ipv4Addr>| {
        let now = app.clock_now();
        let in_use: Vec<_> = on_node.iter().filter(|a| ips.contains(&a.ip)).map(|a| a.lease(now)).collect();
        let ledger = app.ledger.clone();
        async move {
            let made = app
                .blocking(move || ledger.adopt_addresses_in_use(&eni_id, &ips, cooling_until, in_use))
                .await
                .map_err(fail)?;
            for l in &made {
                warn!(key = %l.key, ip = %l.ip, netns = ?l.meta.netns, host_veth = ?l.meta.host_veth,
                    "lease rebuilt from the node: a live pod uses this adopted IP");
            }
            Ok::<_, ProviderError>(())
        }
    };
    for eni in &enis {
        let Some(known) = app.ledger.eni(&eni.id) else {
            let record = eni_record(eni);
            let ledger = app.ledger.clone();
            app.blocking(move || ledger.add_eni(record, &[])).await.map_err(fail)?;
            adopt(eni.id.clone(), eni.secondary_ips.clone()).await?;
            info!(eni = %eni.id, ips = eni.secondary_ips.len(), "adopted ENI from provider");
            continue;
        };
        if !known.attached {
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            app.blocking(move || ledger.set_eni_attached(&id, true)).await.map_err(fail)?;
            info!(eni = %eni.id, "ENI is attached again");
        }
        let have: Vec<Ipv4Addr> = app.ledger.addresses(Some(&eni.id)).iter().map(|a| a.ip).collect();
        let missing: Vec<Ipv4Addr> = eni.secondary_ips.iter().copied().filter(|ip| !have.contains(ip)).collect();
        if !missing.is_empty() {
            info!(eni = %eni.id, ips = ?missing, "adopting IPs the provider has and the ledger lacks (cooling first)");
            adopt(eni.id.clone(), missing).await?;
        }
        gone.extend(have.into_iter().filter(|ip| !eni.secondary_ips.contains(ip)));
    }
    let vanished: Vec<EniRecord> =
        app.ledger.enis().into_iter().filter(|k| !enis.iter().any(|e| e.id == k.id)).collect();
    for eni in &vanished {
        if eni.attached {
            warn!(eni = %eni.id, "the provider no longer has this ENI; nothing is allocated from it any more");
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            app.blocking(move || ledger.set_eni_attached(&id, false)).await.map_err(fail)?;
        }
        gone.extend(app.ledger.addresses(Some(&eni.id)).iter().map(|a| a.ip));
    }
    if !gone.is_empty() {
        let ledger = app.ledger.clone();
        let lost = app.blocking(move || ledger.mark_lost(&gone)).await.map_err(fail)?;
        for l in &lost {
            warn!(lease = %l.key, ip = %l.ip, eni = %l.eni_id, "lease lost: the provider no longer has its IP");
        }
        if !lost.is_empty() {
            app.metrics.leases_lost(lost.len());
        }
    }
    for eni in vanished {
        let ledger = app.ledger.clone();
        let id = eni.id.clone();
        if app.blocking(move || ledger.remove_eni(&id)).await.is_ok() {
            info!(eni = %eni.id, "dropped an ENI the provider no longer has");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonArgs;

    fn config(f: impl FnOnce(&mut DaemonArgs)) -> Config {
        let mut a = DaemonArgs::default();
        f(&mut a);
        a.resolve().unwrap()
    }

    const M5_LARGE: Limits = Limits { max_enis: 3, ipv4_per_eni: 10 };

    #[test]
    fn warm_eni_target_keeps_whole_enis_of_free_ips() {
        let c = config(|_| {});
        // Nothing leased: one ENI's worth (9) wanted.
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0), Plan { desired_total: 9, deficit: 9, excess: 0 });
        // One pod: still one full free ENI wanted, so two ENIs.
        assert_eq!(plan(&c, M5_LARGE, 9, 1, 0).desired_total, 18);
        // Cooling IPs are not available: they push the target up like leased ones.
        assert_eq!(plan(&c, M5_LARGE, 18, 0, 9).desired_total, 18);
        // Capped at the instance's 27 pod IPs.
        assert_eq!(plan(&c, M5_LARGE, 27, 26, 0), Plan { desired_total: 27, deficit: 0, excess: 0 });
    }

    #[test]
    fn warm_ip_and_minimum_targets() {
        let c = config(|a| {
            a.warm_ip_target = Some(5);
            a.minimum_ip_target = Some(10);
        });
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0).desired_total, 10);
        assert_eq!(plan(&c, M5_LARGE, 10, 8, 0).desired_total, 13);
        assert_eq!(plan(&c, M5_LARGE, 20, 2, 0), Plan { desired_total: 10, deficit: 0, excess: 10 });
        // Never releasable below what is leased or cooling.
        assert_eq!(plan(&c, M5_LARGE, 20, 2, 17).excess, 0);
    }

    #[test]
    fn max_eni_caps_the_pool() {
        let c = config(|a| a.max_eni = Some(1));
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0).desired_total, 9);
        assert_eq!(plan(&c, M5_LARGE, 9, 9, 0).desired_total, 9);
    }
}

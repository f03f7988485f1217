//! The pool manager's loop: one task, woken by every allocation and release and by a periodic
//! tick, that grows and shrinks the pool, keeps the node side of ENIs set up, reconciles with the
//! provider and sweeps leaked ENIs, in that one task so none of these interleave. A wake looks at
//! the pool only; the node's sysctls are read on the tick, which keeps its period however busy
//! the node is (reading them costs a thread in the node's namespace and netlink: a pod's ADD
//! and DEL must not pay that).

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use std::time::Instant;

use enipool_storage::{AddressState, EffectiveState, EniRecord};
use tracing::{info, warn};

use super::error::PoolError;
use super::plan::{Mode, PREFIX_SIZE, mode_now, plan_now};
use super::sync::{eni_record, sync_with_provider};
use crate::app::App;
use crate::node::eni_setup::{EniHost, HostError, HostNet};
use crate::provider::{Fill, ProviderError};

/// Runs the pool manager until shutdown. Besides growing and shrinking, it reconciles the
/// ledger with the provider every `reconcile_interval` and runs the leaked-ENI sweep every
/// `leaked_eni_interval`, in the same task, so none of these interleave.
pub async fn run(app: Arc<App>) {
    let mut last_shrink: Option<Instant> = None;
    // The start-up sync is the first reconciliation.
    let mut last_reconcile = Instant::now();
    let mut last_sweep: Option<Instant> = None;
    let mut next_tick = tokio::time::Instant::now();
    loop {
        if app.is_shutting_down() {
            return;
        }
        let ticked = tokio::time::Instant::now() >= next_tick;
        if ticked {
            next_tick = tokio::time::Instant::now() + app.config.pool_tick;
        }
        if app.is_started() && ticked {
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
            _ = app.pool.woken() => {
                // Wakes meanwhile are this one: a burst of pods costs one look, not one per pod.
                tokio::select! {
                    _ = tokio::time::sleep(app.config.pool_wake_delay) => {}
                    _ = app.shutdown_signalled() => return,
                }
            }
            _ = tokio::time::sleep_until(next_tick) => {}
            _ = app.shutdown_signalled() => return,
        }
    }
}

/// The node-wide sysctls (see `node::eni_setup`), read on the primary ENI's interface (found by its
/// MAC) and written where the daemon can: `Err` with the reason while they are wrong and
/// cannot be written, or while no interface has the primary ENI's MAC; `Ok` when they are
/// right or there is no host setup. Cheap (three small reads), so it runs every pool tick.
pub async fn prepare_node(app: &App) -> Result<(), String> {
    let Some(host) = host_net(app) else { return Ok(()) };
    let primary = app.info().primary_eni_id;
    let Some(mac) = app.pool.mac(&primary) else {
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
/// (see `node::eni_setup`). An interface that has not appeared yet is tried again next tick.
async fn host_side(app: &App) {
    let Some(host) = host_net(app) else { return };
    let info = app.info();
    for eni in app.ledger.enis() {
        if !eni.attached || eni.id == info.primary_eni_id || app.pool.host_done(&eni.id) {
            continue;
        }
        let Some(mac) = app.pool.mac(&eni.id) else { continue };
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
                app.pool.set_host_done(&eni.id);
            }
            Err(HostError::NotFound(mac)) => {
                tracing::debug!(eni = %eni.id, %mac, "ENI's interface has not appeared yet");
            }
            Err(e) => warn!(eni = %eni.id, error = %e, "setting up the ENI's node side failed"),
        }
    }
}

/// Where the ENIs' node side is done, when it is (`--eni-host-setup`).
fn host_net(app: &App) -> Option<HostNet> {
    app.config.eni_host_setup.then(|| HostNet { netns: app.config.host_netns.clone() })
}

/// One look at the pool: grow to the target, or shrink what is in excess (rate-limited). In
/// prefix mode the pool grows and shrinks by prefixes, and secondary IPs held from before go back
/// once free; without it, prefixes held from before go back once wholly free.
pub async fn step(app: &App, last_shrink: &mut Option<Instant>) -> Result<(), PoolError> {
    app.refresh_served_enis();
    let mut stats = app.ledger.stats();
    if app.config.ec2.custom_network.is_some() && give_back_outside_custom_subnet(app, &stats).await? {
        // Every step, growing or not: what is held outside the zone's subnet makes no room for
        // pods and may fill the instance's ENI limit, so it goes as soon as it is free.
        stats = app.ledger.stats();
    }
    let p = plan_now(app, &stats);
    if p.deficit > 0 {
        if app.pool.growth_pause().is_some() || app.growth_blocked().is_some() {
            return Ok(());
        }
        let grown = match p.prefixes {
            Some(prefixes) => grow_prefixes(app, prefixes.deficit).await,
            None => grow(app, p.deficit).await,
        };
        match &grown {
            Err(PoolError::Provider(ProviderError::SubnetExhausted(reason))) => {
                app.pause_growth(app.config.subnet_exhausted_pause, reason.clone());
            }
            Err(PoolError::Provider(ProviderError::NoCidrBlocks(reason))) => {
                // Pods never wait for a prefix that cannot come: single IPs, now.
                app.fall_back_from_prefixes(app.config.prefix_fallback_pause, reason.clone());
                let p = plan_now(app, &app.ledger.stats());
                let grown = grow(app, p.deficit).await;
                if let Err(PoolError::Provider(ProviderError::SubnetExhausted(reason))) = &grown {
                    app.pause_growth(app.config.subnet_exhausted_pause, reason.clone());
                }
                return grown;
            }
            _ => {}
        }
        grown
    } else if last_shrink.is_none_or(|at| at.elapsed() >= app.config.shrink_interval) {
        let mut shrunk = false;
        match (mode_now(app), p.prefixes) {
            (Mode::Prefixes, Some(prefixes)) => {
                // During a burst, what it grew is kept: the next pods need it.
                let in_burst = app.pool.recent_prefix_growth(app.config.prefix_burst_window).is_some();
                if prefixes.excess > 0 && !in_burst {
                    shrunk |= shrink_prefixes(app, prefixes.excess).await?;
                }
                // Each look below walks the ledger; a wake comes with every allocation and
                // release, so the stats decide first whether there is anything to find.
                if stats.addresses.free > stats.prefix_addresses.free {
                    shrunk |= give_back_free_secondaries(app).await?;
                }
                // Secondary ENIs left with neither prefixes nor addresses go too.
                let fresh;
                let now_stats = if shrunk {
                    fresh = app.ledger.stats();
                    &fresh
                } else {
                    &stats
                };
                if has_empty_secondary_eni(app, now_stats) {
                    shrunk |= shrink(app, 0).await?;
                }
            }
            (Mode::Ips, _) => {
                if p.excess > 0 {
                    shrunk |= shrink(app, p.excess).await?;
                }
                if stats.prefixes > 0 {
                    shrunk |= shrink_prefixes(app, u32::MAX).await?;
                }
            }
            _ => {
                if p.excess > 0 {
                    shrunk |= shrink(app, p.excess).await?;
                }
            }
        }
        if shrunk {
            *last_shrink = Some(Instant::now());
        }
        Ok(())
    } else {
        Ok(())
    }
}

/// Whether an attached secondary ENI holds no address at all (neither secondary IPs nor
/// prefixes): one `shrink(app, 0)` would delete.
fn has_empty_secondary_eni(app: &App, stats: &enipool_storage::Stats) -> bool {
    let primary = app.info().primary_eni_id;
    app.ledger
        .enis()
        .iter()
        .filter(|e| e.attached && e.id != primary)
        .any(|e| stats.per_eni.get(&e.id).is_none_or(|c| c.total == 0))
}

/// Grows by up to `deficit` prefixes: as many as an ENI with room takes, in one call (so a burst
/// of pods costs one call, not one per prefix); a new ENI when none has room.
///
/// Pods arriving in a burst: growth within `--prefix-burst-window` of the last asks for twice as
/// many as that one did (1, 2, 4, ...), within the room the attached ENIs have and what MAX_PODS
/// allows, so 110 pods on an m5.large cost 3 calls instead of 7.
async fn grow_prefixes(app: &App, deficit: u32) -> Result<(), PoolError> {
    let window = app.config.prefix_burst_window;
    let mut want = deficit;
    let stats = app.ledger.stats();
    // A burst is pods arriving: growth with no pod yet (the warm prefix at start) starts none.
    let pods_arriving = stats.prefix_addresses.leased > 0;
    if let Some(last) = app.pool.recent_prefix_growth(window).filter(|_| pods_arriving) {
        let per_eni = app.info().limits.pod_ips_per_eni();
        let room: u32 = app
            .ledger
            .enis()
            .iter()
            .filter(|e| e.attached)
            .map(|e| per_eni.saturating_sub(slots_used(&stats, &e.id)))
            .sum();
        let pods_cap = app.config.max_pods.map_or(u32::MAX, |m| m.div_ceil(PREFIX_SIZE));
        let allowed = room.min(pods_cap.saturating_sub(stats.prefixes as u32));
        want = deficit.max(last.saturating_mul(2).min(allowed));
    }
    if pods_arriving {
        app.pool.note_prefix_growth(want);
    }
    grow_by(app, want, Unit::Prefixes).await
}

/// Puts up to `n` prefixes on `eni`; how many it got.
async fn fill_prefixes(app: &App, eni: &EniRecord, n: u32) -> Result<u32, PoolError> {
    let prefixes = app.provider_call("assign_prefixes", app.provider.assign_prefixes(&eni.id, n)).await?;
    take_prefixes(app, &eni.id, &prefixes).await?;
    app.note_action("assign_prefixes", format!("{} prefixes to {}", prefixes.len(), eni.id));
    Ok(prefixes.len() as u32)
}

/// Adds what the provider just delegated to `eni_id` to the ledger: all of it in one operation,
/// so the pool is never seen half grown (and one record is synced, not one per prefix); prefix
/// by prefix only when the ledger refuses that, to keep what it can and settle the rest.
async fn take_prefixes(app: &App, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), PoolError> {
    let ledger = app.ledger.clone();
    let (id, all) = (eni_id.to_string(), prefixes.to_vec());
    if prefixes.is_empty() || app.ledger_call(move || ledger.add_prefixes(&id, &all, None, Vec::new())).await.is_ok() {
        return Ok(());
    }
    for prefix in prefixes {
        let ledger = app.ledger.clone();
        let (id, cidr) = (eni_id.to_string(), *prefix);
        let Err(e) = app.ledger_call(move || ledger.add_prefixes(&id, &[cidr], None, Vec::new())).await else {
            continue;
        };
        // The same prefix the ledger has on this ENI (EC2 took it away and gives it back before
        // reconciliation noticed): an active one stays as it is, a lost one is leased to its pods
        // again. Anything else overlapping what the ledger holds goes back: never handed out twice.
        let same = app.ledger.prefixes(Some(eni_id)).into_iter().find(|p| p.cidr == *prefix);
        if let Some(same) = same {
            if same.state == enipool_storage::PrefixState::Lost {
                let ledger = app.ledger.clone();
                let cooling_until = app.clock_now() + app.config.ip_cooldown.as_millis() as u64;
                let (id, cidr) = (eni_id.to_string(), *prefix);
                app.ledger_call(move || ledger.recover_prefix(&id, cidr, cooling_until)).await?;
            }
        } else {
            warn!(eni = %eni_id, %prefix, error = %e, "the provider assigned a prefix the ledger cannot take; giving it back");
            app.provider_call("unassign_prefixes", app.provider.unassign_prefixes(eni_id, &[*prefix])).await?;
        }
    }
    Ok(())
}

/// Gives back up to `excess` prefixes that are wholly free and done cooling, one call per ENI
/// (secondary ENIs first, highest device first, so they empty). Returns whether any went.
async fn shrink_prefixes(app: &App, excess: u32) -> Result<bool, PoolError> {
    let now = app.clock_now();
    // Pods just went: more prefixes empty as their addresses finish cooling. Wait until none
    // will within a shrink interval, and give them back together.
    let soon = now + app.config.shrink_interval.as_millis() as u64;
    let emptying =
        app.ledger.prefixes(None).iter().filter(|p| p.state == enipool_storage::PrefixState::Active).any(|p| {
            p.addresses().any(|ip| {
                app.ledger
                    .address(ip)
                    .is_some_and(|a| matches!(a.state, AddressState::Cooling { until } if until > now && until <= soon))
            })
        });
    if emptying {
        return Ok(false);
    }
    let mut left = excess;
    let mut enis = app.ledger.enis();
    enis.sort_by_key(|e| std::cmp::Reverse(e.device_number));
    let mut shrunk = false;
    for eni in enis.iter().filter(|e| e.attached) {
        if left == 0 {
            break;
        }
        let gone = give_back_free_prefixes(app, &eni.id, left, now).await?;
        if gone > 0 {
            left = left.saturating_sub(gone);
            shrunk = true;
        }
    }
    Ok(shrunk)
}

/// Gives back up to `most` of an ENI's wholly free (and done cooling) prefixes in one call:
/// out of the ledger first (refused for one an allocation took meanwhile), then to the
/// provider; if that fails they are the ledger's again, cooling. How many went.
async fn give_back_free_prefixes(app: &App, eni_id: &str, most: u32, now: u64) -> Result<u32, PoolError> {
    let free: Vec<_> = app
        .ledger
        .prefixes(Some(eni_id))
        .into_iter()
        .filter(|p| p.state == enipool_storage::PrefixState::Active)
        .filter(|p| {
            p.addresses()
                .all(|ip| app.ledger.address(ip).is_some_and(|a| a.effective_state(now) == EffectiveState::Free))
        })
        .map(|p| p.cidr)
        .rev()
        .take(most as usize)
        .collect();
    let mut gone = Vec::new();
    for cidr in free {
        let ledger = app.ledger.clone();
        let id = eni_id.to_string();
        // The ledger refuses if an allocation took one of its addresses meanwhile.
        if app.ledger_call(move || ledger.remove_prefix(&id, cidr)).await.is_ok() {
            gone.push(cidr);
        }
    }
    if gone.is_empty() {
        return Ok(0);
    }
    if let Err(e) = app.provider_call("unassign_prefixes", app.provider.unassign_prefixes(eni_id, &gone)).await {
        // Back in the ledger, cooling: the call may have gone through (a timeout), and then
        // EC2 may give them to another node until reconciliation drops them.
        let ledger = app.ledger.clone();
        let id = eni_id.to_string();
        let back = gone.clone();
        let cooling_until = app.clock_now() + app.config.ip_cooldown.as_millis() as u64;
        let _ = app.ledger_call(move || ledger.add_prefixes(&id, &back, Some(cooling_until), Vec::new())).await;
        return Err(e.into());
    }
    app.note_action("unassign_prefixes", format!("{} prefixes from {eni_id}", gone.len()));
    Ok(gone.len() as u32)
}

/// The free (and done cooling) secondary IPs of an ENI, by address; a prefix's addresses go
/// only with the prefix.
fn free_secondaries(app: &App, eni_id: &str, now: u64) -> Vec<Ipv4Addr> {
    app.ledger
        .addresses(Some(eni_id))
        .into_iter()
        .filter(|a| a.effective_state(now) == EffectiveState::Free)
        .map(|a| a.ip)
        .filter(|ip| app.ledger.prefix_of(*ip).is_none())
        .collect()
}

/// Gives secondary IPs back: out of the ledger first (refused, and false, if an allocation took
/// one meanwhile), then to the provider; if that fails they are the ledger's again.
async fn give_back_ips(app: &App, eni_id: &str, ips: Vec<Ipv4Addr>, why: &str) -> Result<bool, PoolError> {
    let ledger = app.ledger.clone();
    let (id, gone) = (eni_id.to_string(), ips.clone());
    if app.ledger_call(move || ledger.remove_addresses(&id, &gone)).await.is_err() {
        return Ok(false);
    }
    if let Err(e) = app.provider_call("unassign_ips", app.provider.unassign_ips(eni_id, &ips)).await {
        let ledger = app.ledger.clone();
        let id = eni_id.to_string();
        let _ = app.ledger_call(move || ledger.add_addresses(&id, &ips)).await;
        return Err(e.into());
    }
    app.note_action("unassign_ips", format!("{} IPs from {eni_id}{why}", ips.len()));
    Ok(true)
}

/// Custom networking: secondary IPs on the primary ENI, or on an ENI outside the zone's subnet
/// (held from before it was switched on), serve their pods until free, then go back.
async fn give_back_outside_custom_subnet(app: &App, stats: &enipool_storage::Stats) -> Result<bool, PoolError> {
    // Without the zone's subnet (custom networking off, or growth blocked) nothing counts as
    // outside: giving back is for making room there.
    let Some(subnet) = app.custom_subnet() else { return Ok(false) };
    let primary = app.info().primary_eni_id;
    let now = app.clock_now();
    let mut shrunk = false;
    let is_outside = |e: &EniRecord| e.id == primary || app.pool.subnet(&e.id).is_some_and(|(id, _)| id != subnet);
    for eni in app.ledger.enis().iter().filter(|e| e.attached) {
        let outside = is_outside(eni);
        // The counts first: this runs on every wake.
        if !outside || stats.per_eni.get(&eni.id).is_none_or(|c| c.free == 0) {
            continue;
        }
        let free = free_secondaries(app, &eni.id, now);
        if !free.is_empty() && give_back_ips(app, &eni.id, free, " (custom networking)").await? {
            shrunk = true;
        }
        if give_back_free_prefixes(app, &eni.id, u32::MAX, now).await? > 0 {
            shrunk = true;
        }
    }
    // An ENI outside the subnet left with nothing goes, making room for one inside it.
    if shrunk || has_empty_secondary_eni(app, stats) {
        shrunk |= shrink_where(app, 0, is_outside).await?;
    }
    Ok(shrunk)
}

/// Prefix mode: secondary IPs held from before serve their pods until free, then go back.
async fn give_back_free_secondaries(app: &App) -> Result<bool, PoolError> {
    let now = app.clock_now();
    let mut shrunk = false;
    for eni in app.ledger.enis().iter().filter(|e| e.attached) {
        let free = free_secondaries(app, &eni.id, now);
        if !free.is_empty() && give_back_ips(app, &eni.id, free, " (prefix mode)").await? {
            shrunk = true;
        }
    }
    Ok(shrunk)
}

async fn grow(app: &App, deficit: u32) -> Result<(), PoolError> {
    grow_by(app, deficit, Unit::Ips).await
}

/// Puts up to `n` secondary IPs on `eni`; how many it got.
async fn fill_ips(app: &App, eni: &EniRecord, n: u32) -> Result<u32, PoolError> {
    let ips = app.provider_call("assign_ips", app.provider.assign_ips(&eni.id, n)).await?;
    let fresh = take_assigned(app, &eni.id, &ips).await?;
    let ledger = app.ledger.clone();
    let id = eni.id.clone();
    app.ledger_call(move || ledger.add_addresses(&id, &fresh)).await?;
    app.note_action("assign_ips", format!("{} IPs to {}", ips.len(), eni.id));
    Ok(ips.len() as u32)
}

/// What the pool grows by: each takes one ENI slot.
#[derive(Clone, Copy)]
enum Unit {
    Ips,
    Prefixes,
}

/// Grows by up to `deficit` units: as many as the first attached ENI with room takes, in one
/// call; a new ENI when none has room, up to the limit.
async fn grow_by(app: &App, mut deficit: u32, unit: Unit) -> Result<(), PoolError> {
    let limits = app.info().limits;
    let per_eni = limits.pod_ips_per_eni();
    let max_enis = app.config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
    // ENIs whose subnet refused this growth (exhausted, or no free /28): the next ENI with room,
    // or a new ENI (which the provider may put in another subnet), is tried before giving up.
    // Refused in an earlier step too, within the skip period (or the growth pause, if shorter:
    // when it ends, everything is worth asking again): not asked until then, or every growth
    // would spend a failing call on it.
    let period = app.config.ec2.subnet_skip.min(app.config.subnet_exhausted_pause);
    let prefix_period = app.config.ec2.subnet_skip.min(app.config.prefix_fallback_pause);
    let remembered = app.pool.refused_enis(matches!(unit, Unit::Prefixes), period, prefix_period);
    let mut refused: Vec<String> = remembered.iter().map(|(id, _)| id.clone()).collect();
    let mut first_refusal: Option<PoolError> = None;
    // Custom networking: pods get addresses only from ENIs in the zone's subnet, never the
    // primary's (already in `refused`'s place: they are never filled).
    let custom_subnet = app.config.ec2.custom_network.as_ref().map(|_| app.custom_subnet());
    let primary_eni_id = app.info().primary_eni_id;
    let serves_pods = |e: &EniRecord| match &custom_subnet {
        None => true,
        Some(subnet) => {
            e.id != primary_eni_id && subnet.is_some() && app.pool.subnet(&e.id).map(|(id, _)| id) == *subnet
        }
    };
    while deficit > 0 {
        let stats = app.ledger.stats();
        let mut enis = app.ledger.enis();
        enis.sort_by_key(|e| e.device_number);
        let with_room = enis
            .iter()
            .filter(|e| e.attached && !refused.contains(&e.id) && serves_pods(e))
            .map(|e| (e, per_eni.saturating_sub(slots_used(&stats, &e.id))))
            .find(|(_, room)| *room > 0);
        if let Some((eni, room)) = with_room {
            let n = room.min(deficit);
            let filled = match unit {
                Unit::Ips => fill_ips(app, eni, n).await,
                Unit::Prefixes => fill_prefixes(app, eni, n).await,
            };
            let got = match filled {
                Ok(got) => got,
                Err(e @ PoolError::Provider(ProviderError::SubnetExhausted(_) | ProviderError::NoCidrBlocks(_))) => {
                    warn!(eni = %eni.id, subnet = %eni.subnet_cidr, error = %e, "the ENI's subnet refused; trying elsewhere");
                    refused.push(eni.id.clone());
                    let (prefixes_only, reason) = match &e {
                        PoolError::Provider(ProviderError::NoCidrBlocks(m)) => (true, m.clone()),
                        PoolError::Provider(ProviderError::SubnetExhausted(m)) => (false, m.clone()),
                        other => (false, other.to_string()),
                    };
                    app.pool.note_refused_eni(&eni.id, prefixes_only, reason);
                    first_refusal.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            deficit = deficit.saturating_sub(got);
            app.pool.grew();
            if got == 0 {
                break;
            }
        } else if (enis.iter().filter(|e| e.attached).count() as u32) < max_enis {
            // An ENI the provider lost (detached here, waiting for its lost leases to go) does
            // not hold its device index.
            let used: Vec<u32> = enis.iter().filter(|e| e.attached).map(|e| e.device_number).collect();
            let device = (1..).find(|d| !used.contains(d)).expect("a free device number");
            // The new ENI comes with what it can take of the deficit: no separate assign.
            let n = per_eni.min(deficit);
            let fill = match unit {
                Unit::Ips => Fill::Ips(n),
                Unit::Prefixes => Fill::Prefixes(n),
            };
            // Its error, if it fails, covers every candidate subnet.
            let eni = app.provider_call("create_eni", app.provider.create_eni(device, fill)).await?;
            app.pool.note_enis([&eni]);
            let record = eni_record(&eni);
            let fresh = take_assigned(app, &eni.id, &eni.secondary_ips).await?;
            let ledger = app.ledger.clone();
            app.ledger_call(move || ledger.add_eni(record, &fresh)).await?;
            take_prefixes(app, &eni.id, &eni.prefixes).await?;
            // Custom networking: the new ENI serves before waiting pods are woken.
            app.refresh_served_enis();
            let got = (eni.secondary_ips.len() + eni.prefixes.len()) as u32;
            deficit = deficit.saturating_sub(got);
            app.pool.grew();
            let with = match unit {
                Unit::Ips => format!("{} IPs", eni.secondary_ips.len()),
                Unit::Prefixes => format!("{} prefixes", eni.prefixes.len()),
            };
            app.note_action("create_eni", format!("{} at device {device} with {with}", eni.id));
            if got == 0 && n > 0 {
                break;
            }
        } else {
            // At the instance's limit: nothing more to do until pods go away (or, if a subnet
            // refused, until it has room: the caller pauses growth on that).
            if let Some(e) = first_refusal {
                return Err(e);
            }
            // Stuck on refusals from earlier steps: the same answer, so the step pauses (or,
            // for prefixes, falls back to single IPs) as it did then.
            if let Some((eni, reason)) = remembered.into_iter().next() {
                let reason = format!("{eni}'s subnet refused recently: {reason}");
                return Err(PoolError::Provider(match unit {
                    Unit::Prefixes => ProviderError::NoCidrBlocks(reason),
                    Unit::Ips => ProviderError::SubnetExhausted(reason),
                }));
            }
            break;
        }
    }
    Ok(())
}

/// The address slots an ENI's records take: one per secondary IP, one per prefix (whose 16
/// addresses the ledger holds one by one).
fn slots_used(stats: &enipool_storage::Stats, eni_id: &str) -> u32 {
    let addresses = stats.per_eni.get(eni_id).map_or(0, |c| c.total);
    let prefixes = stats.per_eni_prefixes.get(eni_id).copied().unwrap_or(0);
    addresses.saturating_sub(prefixes * 16).saturating_add(prefixes) as u32
}

/// Sorts what the provider just assigned to `eni_id` by what the ledger knows of each address;
/// returns the ones it does not know, for the caller to add. An address `Lost` on this ENI (EC2
/// took it away while a pod used it, and now gives it back) is leased to that pod again; one the
/// ledger has on this ENI otherwise stays as it is (the provider took it away and gave it back
/// before reconciliation noticed). An address the ledger has on another ENI, or as an ENI's
/// primary, is given back to the provider: adding it twice would hand one IP to two pods.
async fn take_assigned(app: &App, eni_id: &str, ips: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, PoolError> {
    let mut fresh = Vec::new();
    let mut lost_here = Vec::new();
    let mut held = Vec::new();
    // The primary address of an ENI EC2 deleted behind our back, kept in the ledger while its
    // lost leases last, is free in EC2 and may come back as a secondary; so may an address a
    // lost prefix dropped.
    let primaries: Vec<Ipv4Addr> = app.ledger.enis().iter().map(|e| e.primary_ip).collect();
    for &ip in ips {
        match app.ledger.address(ip) {
            None if primaries.contains(&ip) || app.ledger.prefix_of(ip).is_some() => held.push(ip),
            None => fresh.push(ip),
            Some(a) if a.eni_id == eni_id => {
                if matches!(a.state, AddressState::Lost { .. }) {
                    lost_here.push(ip);
                }
            }
            Some(_) => held.push(ip),
        }
    }
    if !lost_here.is_empty() {
        let ledger = app.ledger.clone();
        let id = eni_id.to_string();
        for l in app.ledger_call(move || ledger.recover_lost(&id, &lost_here)).await? {
            warn!(lease = %l.key, ip = %l.ip, eni = %l.eni_id, "lease recovered: the provider assigned its lost IP again");
        }
    }
    if !held.is_empty() {
        warn!(eni = %eni_id, ips = ?held, "the provider assigned addresses the ledger has elsewhere; giving them back");
        app.provider_call("unassign_ips", app.provider.unassign_ips(eni_id, &held)).await?;
    }
    Ok(fresh)
}

/// Gives back up to `excess` IPs: whole secondary ENIs without leased or cooling IPs first,
/// then (with WARM_IP_TARGET / MINIMUM_IP_TARGET) single free IPs. Returns whether anything went.
async fn shrink(app: &App, excess: u32) -> Result<bool, PoolError> {
    shrink_where(app, excess, |_| true).await
}

/// `shrink`, deleting only ENIs `may_delete` allows.
async fn shrink_where(app: &App, excess: u32, may_delete: impl Fn(&EniRecord) -> bool) -> Result<bool, PoolError> {
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
    for eni in enis.iter().filter(|e| e.id != primary_eni_id && may_delete(e)) {
        let Some(c) = stats.per_eni.get(&eni.id) else { continue };
        if c.leased + c.cooling > 0 || c.total as u32 > left {
            continue;
        }
        let prefixes: Vec<_> = app.ledger.prefixes(Some(&eni.id)).into_iter().map(|p| p.cidr).collect();
        let ips: Vec<Ipv4Addr> = app
            .ledger
            .addresses(Some(&eni.id))
            .iter()
            .map(|a| a.ip)
            .filter(|ip| !prefixes.iter().any(|p| p.contains(ip)))
            .collect();
        let ledger = app.ledger.clone();
        let id = eni.id.clone();
        // The ledger refuses if an allocation took one of its IPs meanwhile; then we keep it.
        if app.ledger_call(move || ledger.remove_eni(&id)).await.is_err() {
            continue;
        }
        if let Err(e) = app.provider_call("delete_eni", app.provider.delete_eni(&eni.id)).await {
            // Put it back as it was (secondary IPs and prefixes), so its addresses stay usable;
            // the next step retries.
            let ledger = app.ledger.clone();
            let record = eni.clone();
            let _ = app
                .ledger_call(move || {
                    ledger.add_eni(record.clone(), &ips)?;
                    ledger.add_prefixes(&record.id, &prefixes, None, Vec::new()).map(drop)
                })
                .await;
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
            let free: Vec<Ipv4Addr> =
                free_secondaries(app, &eni.id, now).into_iter().rev().take(left as usize).collect();
            let n = free.len() as u32;
            if !free.is_empty() && give_back_ips(app, &eni.id, free, "").await? {
                left -= n;
                shrunk = true;
            }
        }
    }
    Ok(shrunk)
}

//! Reconciliation of the ledger with the provider: at start-up, then every
//! `--reconcile-interval`, always from the pool manager's task.

use std::net::Ipv4Addr;

use enipool_storage::{AddressState, EniRecord, PrefixState};
use tracing::{info, warn};

use super::error::PoolError;
use crate::app::App;
use crate::provider::ProviderEni;

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

/// Makes the ledger agree with the provider (reconciliation), at start-up and then every
/// `reconcile_interval`, always from the pool manager's task or before it acts, so it never
/// interleaves with a grow or shrink:
/// - an ENI or IP the provider has and the ledger lacks is adopted, cooling for one cooldown
///   (nobody here leased it, but we cannot know who used it last);
/// - an IP the provider no longer has: free or cooling, it is dropped; leased, it is marked lost
///   (metric, log, `/v1/pool`), never handed out again, and dropped when its lease goes;
/// - a lost IP the provider lists on its ENI again is leased to its pod again (recovered);
/// - prefixes likewise (`sync_prefixes`): adopted cooling, marked lost but never given back
///   while leased, recovered when listed again;
/// - an ENI the provider no longer has: all its IPs as above, it is marked detached (nothing is
///   allocated from it), and dropped once nothing references it.
///
/// Stale reads: the provider overlays its own recent changes on what it lists (see
/// `enipool_ec2`), so an IP we just gave back is not re-adopted from a stale listing.
pub async fn sync_with_provider(app: &App) -> Result<(), PoolError> {
    let enis = app.provider_call("list_enis", app.provider.list_enis()).await?;
    app.pool.note_enis(&enis);
    app.refresh_served_enis();
    let cooling_until = app.clock_now() + app.config.ip_cooldown.as_millis() as u64;
    let mut gone: Vec<Ipv4Addr> = Vec::new();
    // The provider showing an IP the ledger has on another ENI is a disagreement we do not
    // guess about: the sync fails (and the daemon stays unready at start-up) until it clears.
    for eni in &enis {
        for ip in &eni.secondary_ips {
            if let Some(a) = app.ledger.address(*ip)
                && a.eni_id != eni.id
            {
                return Err(PoolError::Disagreement(format!(
                    "the provider shows {ip} on {}, the ledger has it on {}",
                    eni.id, a.eni_id
                )));
            }
        }
    }
    // IPs the provider has and the ledger lacks are adopted; a live pod of ours on the node may
    // use one (the ledger lost its lease): that one is adopted leased to it, in the same ledger
    // operation, so it is never handed out first (see `node`).
    let lacking = enis.iter().any(|e| {
        e.secondary_ips.iter().any(|ip| app.ledger.address(*ip).is_none())
            || e.prefixes.iter().any(|p| app.ledger.prefix_of(p.network()).is_none())
    });
    // Fails closed: without the node, an adopted IP a pod uses would cool and then go to another.
    let on_node =
        if lacking { crate::node::read_attachments(app).await.map_err(PoolError::NodeUnreadable)? } else { Vec::new() };
    let adopt = |eni_id: String, ips: Vec<Ipv4Addr>| {
        let now = app.clock_now();
        let in_use: Vec<_> = on_node.iter().filter(|a| ips.contains(&a.ip)).map(|a| a.lease(now)).collect();
        let ledger = app.ledger.clone();
        async move {
            let made =
                app.ledger_call(move || ledger.adopt_addresses_in_use(&eni_id, &ips, cooling_until, in_use)).await?;
            for l in &made {
                warn!(key = %l.key, ip = %l.ip, netns = ?l.meta.netns, host_veth = ?l.meta.host_veth,
                    "lease rebuilt from the node: a live pod uses this adopted IP");
            }
            Ok::<_, PoolError>(())
        }
    };
    for eni in &enis {
        let Some(known) = app.ledger.eni(&eni.id) else {
            let record = eni_record(eni);
            let ledger = app.ledger.clone();
            app.ledger_call(move || ledger.add_eni(record, &[])).await?;
            adopt(eni.id.clone(), eni.secondary_ips.clone()).await?;
            sync_prefixes(app, eni, cooling_until, &on_node).await?;
            info!(eni = %eni.id, ips = eni.secondary_ips.len(), prefixes = eni.prefixes.len(), "adopted ENI from provider");
            continue;
        };
        if !known.attached {
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            app.ledger_call(move || ledger.set_eni_attached(&id, true)).await?;
            info!(eni = %eni.id, "ENI is attached again");
        }
        let records = app.ledger.addresses(Some(&eni.id));
        let have: Vec<Ipv4Addr> = records.iter().map(|a| a.ip).collect();
        let (inside, missing): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) = eni
            .secondary_ips
            .iter()
            .copied()
            .filter(|ip| !have.contains(ip))
            .partition(|ip| app.ledger.prefix_of(*ip).is_some());
        if !inside.is_empty() {
            // An address a lost prefix dropped, now a secondary IP: adopting it would put one
            // address in two records; the pool gives such addresses back when it meets them.
            warn!(eni = %eni.id, ips = ?inside, "the provider lists secondary IPs inside a prefix the ledger holds; not adopted");
        }
        let back: Vec<Ipv4Addr> = records
            .iter()
            .filter(|a| matches!(a.state, AddressState::Lost { .. }) && eni.secondary_ips.contains(&a.ip))
            .map(|a| a.ip)
            .collect();
        if !back.is_empty() {
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            for l in app.ledger_call(move || ledger.recover_lost(&id, &back)).await? {
                warn!(lease = %l.key, ip = %l.ip, eni = %l.eni_id, "lease recovered: the provider has its lost IP again");
            }
        }
        if !missing.is_empty() {
            info!(eni = %eni.id, ips = ?missing, "adopting IPs the provider has and the ledger lacks (cooling first)");
            adopt(eni.id.clone(), missing).await?;
        }
        sync_prefixes(app, eni, cooling_until, &on_node).await?;
        gone.extend(have.into_iter().filter(|ip| !eni.secondary_ips.contains(ip)));
    }
    let vanished: Vec<EniRecord> =
        app.ledger.enis().into_iter().filter(|k| !enis.iter().any(|e| e.id == k.id)).collect();
    for eni in &vanished {
        if eni.attached {
            warn!(eni = %eni.id, "the provider no longer has this ENI; nothing is allocated from it any more");
            let ledger = app.ledger.clone();
            let id = eni.id.clone();
            app.ledger_call(move || ledger.set_eni_attached(&id, false)).await?;
        }
        gone.extend(app.ledger.addresses(Some(&eni.id)).iter().map(|a| a.ip));
        let held = app.ledger.prefixes(Some(&eni.id));
        mark_prefixes_lost(app, held.iter().filter(|p| p.state == PrefixState::Active).map(|p| p.cidr).collect())
            .await?;
    }
    if !gone.is_empty() {
        let ledger = app.ledger.clone();
        let lost = app.ledger_call(move || ledger.mark_lost(&gone)).await?;
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
        if app.ledger_call(move || ledger.remove_eni(&id)).await.is_ok() {
            info!(eni = %eni.id, "dropped an ENI the provider no longer has");
        }
    }
    Ok(())
}

/// Makes the ledger's prefixes of `eni` agree with the provider's listing of it:
/// - a prefix listed and unknown is adopted, its addresses cooling for one cooldown, and the
///   leases of live pods found using any of them rebuilt (right after, inside that cooldown);
/// - a lost prefix listed again is recovered, its leases whole;
/// - a prefix not listed is marked lost (`Ledger::mark_prefixes_lost`): dropped at once if no
///   lease names it, else kept, never handed out and never given back, whatever a stale listing
///   says (the reference once released prefixes live pods used after a restart, #3824).
async fn sync_prefixes(
    app: &App,
    eni: &ProviderEni,
    cooling_until: u64,
    on_node: &[crate::node::NodeAttachment],
) -> Result<(), PoolError> {
    let known = app.ledger.prefixes(Some(&eni.id));
    for p in eni.prefixes.iter().filter(|p| !known.iter().any(|k| k.cidr == **p)) {
        // The leases of live pods using its addresses are made in the same ledger operation, so
        // none of those addresses is ever handed out first (whatever the cooldown).
        let now = app.clock_now();
        let in_use: Vec<_> = on_node.iter().filter(|a| p.contains(&a.ip)).map(|a| a.lease(now)).collect();
        let ledger = app.ledger.clone();
        let (id, cidr) = (eni.id.clone(), *p);
        match app.ledger_call(move || ledger.add_prefixes(&id, &[cidr], Some(cooling_until), in_use)).await {
            Ok(made) => {
                info!(eni = %eni.id, prefix = %p, "adopted a prefix the provider has and the ledger lacked (cooling first)");
                for l in made {
                    warn!(key = %l.key, ip = %l.ip, "lease rebuilt from the node: a live pod uses this adopted prefix's IP");
                }
            }
            Err(e) => warn!(eni = %eni.id, prefix = %p, error = %e, "cannot adopt a prefix the provider lists"),
        }
    }
    for k in known.iter().filter(|k| k.state == PrefixState::Lost && eni.prefixes.contains(&k.cidr)) {
        let ledger = app.ledger.clone();
        let (id, cidr) = (eni.id.clone(), k.cidr);
        for l in app.ledger_call(move || ledger.recover_prefix(&id, cidr, cooling_until)).await? {
            warn!(lease = %l.key, ip = %l.ip, prefix = %k.cidr, "lease recovered: the provider lists its prefix again");
        }
    }
    let unlisted: Vec<_> = known
        .iter()
        .filter(|k| k.state == PrefixState::Active && !eni.prefixes.contains(&k.cidr))
        .map(|k| k.cidr)
        .collect();
    mark_prefixes_lost(app, unlisted).await
}

async fn mark_prefixes_lost(app: &App, cidrs: Vec<ipnet::Ipv4Net>) -> Result<(), PoolError> {
    if cidrs.is_empty() {
        return Ok(());
    }
    warn!(prefixes = ?cidrs, "the provider no longer lists these prefixes; kept while leases name them");
    let ledger = app.ledger.clone();
    let lost = app.ledger_call(move || ledger.mark_prefixes_lost(&cidrs)).await?;
    for l in &lost {
        warn!(lease = %l.key, ip = %l.ip, eni = %l.eni_id, "lease lost: the provider no longer lists its prefix");
    }
    if !lost.is_empty() {
        app.metrics.leases_lost(lost.len());
    }
    Ok(())
}

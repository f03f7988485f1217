//! `enipoold status` and `enipoold leases`: read the API over the socket, print tables.

use anyhow::bail;
use enipool_api as api;

use crate::client::Client;
use crate::config::ClientArgs;

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

async fn fetch(args: &ClientArgs, path: &str) -> anyhow::Result<Vec<u8>> {
    let reply = Client::new(&args.socket).get(path).await?;
    if !reply.status.is_success() {
        bail!("{path}: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
    }
    Ok(reply.body.to_vec())
}

pub async fn status(args: &ClientArgs) -> anyhow::Result<String> {
    let pool_bytes = fetch(args, "/v1/pool").await?;
    let enis_bytes = fetch(args, "/v1/enis").await?;
    if args.json {
        return Ok(format!("{}\n{}\n", String::from_utf8_lossy(&pool_bytes), String::from_utf8_lossy(&enis_bytes)));
    }
    let pool: api::Pool = serde_json::from_slice(&pool_bytes)?;
    let enis: Vec<api::Eni> = serde_json::from_slice(&enis_bytes)?;
    let t = &pool.targets;
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = format!(
        "instance {} ({}, provider {}): up to {} ENIs x {} IPv4\n\
         IPs: {} total, {} free, {} leased, {} cooling; wanted {} (deficit {}, excess {})\n\
         targets: WARM_ENI_TARGET={} WARM_IP_TARGET={} MINIMUM_IP_TARGET={} MAX_ENI={} IP_COOLDOWN_PERIOD={}s\n\
         allocations refused for lack of IPs: {}\n",
        pool.instance_id,
        pool.instance_type,
        pool.provider,
        pool.max_enis,
        pool.ipv4_per_eni,
        pool.total,
        pool.free,
        pool.leased,
        pool.cooling,
        pool.desired_total,
        pool.deficit,
        pool.excess,
        t.warm_eni_target,
        opt(t.warm_ip_target),
        opt(t.minimum_ip_target),
        t.max_eni,
        t.ip_cooldown_seconds,
        pool.exhausted_allocations,
    );
    if let Some(a) = &pool.last_provider_action {
        out.push_str(&format!("last provider action: {} {} (at {} ms)\n", a.action, a.detail, a.at));
    }
    if let Some(e) = &pool.last_provider_error {
        out.push_str(&format!("last provider error: {} {} (at {} ms)\n", e.action, e.detail, e.at));
    }
    if pool.lost > 0 {
        out.push_str(&format!("lost: {} leased IPs the provider no longer has (never handed out again)\n", pool.lost));
    }
    if let Some(why) = &pool.growth_blocked {
        out.push_str(&format!("growth blocked: {why}\n"));
    }
    if let Some(p) = &pool.growth_paused {
        out.push_str(&format!("growth paused until {} ms: {}\n", p.until, p.reason));
    }
    if !pool.subnets.is_empty() {
        out.push_str("\nsubnets for new ENIs, best first:\n");
        let rows: Vec<Vec<String>> = pool
            .subnets
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.cidr.clone(),
                    s.zone.clone(),
                    s.free.to_string(),
                    if s.node { "yes".into() } else { "no".into() },
                    s.refusals.to_string(),
                    s.skipped.clone().map_or("-".into(), |w| format!("skipped: {w}")),
                ]
            })
            .collect();
        out.push_str(&table(&["SUBNET", "CIDR", "ZONE", "FREE", "NODE'S", "REFUSALS", "NOW"], &rows));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = enis
        .iter()
        .map(|e| {
            let count = |s: api::AddressState| e.addresses.iter().filter(|a| a.state == s).count().to_string();
            vec![
                e.id.clone(),
                e.device_number.to_string(),
                if e.primary { "yes".into() } else { "no".into() },
                e.primary_ip.clone(),
                e.subnet_cidr.clone(),
                e.subnet_id.clone().unwrap_or_else(|| "-".into()),
                e.zone.clone().unwrap_or_else(|| "-".into()),
                e.route_table.to_string(),
                e.addresses.len().to_string(),
                count(api::AddressState::Free),
                count(api::AddressState::Leased),
                count(api::AddressState::Cooling),
                e.prefixes.len().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ENI",
            "DEVICE",
            "PRIMARY",
            "PRIMARY IP",
            "SUBNET",
            "SUBNET ID",
            "ZONE",
            "TABLE",
            "IPS",
            "FREE",
            "LEASED",
            "COOLING",
            "PREFIXES",
        ],
        &rows,
    ));
    Ok(out)
}

pub async fn leases(args: &ClientArgs) -> anyhow::Result<String> {
    let bytes = fetch(args, "/v1/leases").await?;
    if args.json {
        return Ok(format!("{}\n", String::from_utf8_lossy(&bytes)));
    }
    let leases: Vec<api::Lease> = serde_json::from_slice(&bytes)?;
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            let pod = match (&l.pod_namespace, &l.pod_name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => "-".into(),
            };
            vec![
                l.ip.clone(),
                pod,
                l.network.clone(),
                l.container_id.chars().take(12).collect(),
                l.ifname.clone(),
                l.eni_id.clone(),
                l.host_veth.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    Ok(table(&["IP", "POD", "NETWORK", "CONTAINER", "IFNAME", "ENI", "HOST VETH"], &rows))
}

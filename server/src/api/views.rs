//! What `/v1/pool` and `/v1/enis` return, built in one place: the JSON handlers serve these
//! values and the status page renders them, so the pool arithmetic and the address states exist
//! once.

use enipool_api as api;
use enipool_storage::AddressState;

use crate::app::App;
use crate::pool;

/// Every ENI with its addresses and their states (`GET /v1/enis`).
pub fn enis(app: &App) -> Vec<api::Eni> {
    let now = app.clock_now();
    let primary_eni_id = app.info().primary_eni_id;
    app.ledger
        .enis()
        .into_iter()
        .map(|e| {
            let addresses = app
                .ledger
                .addresses(Some(&e.id))
                .into_iter()
                .map(|a| {
                    let state = match a.effective_state(now) {
                        enipool_storage::EffectiveState::Free => api::AddressState::Free,
                        enipool_storage::EffectiveState::Leased => api::AddressState::Leased,
                        enipool_storage::EffectiveState::Cooling => api::AddressState::Cooling,
                        enipool_storage::EffectiveState::Lost => api::AddressState::Lost,
                    };
                    let (lease, cooling_until) = match &a.state {
                        AddressState::Leased { key } | AddressState::Lost { key } => (Some(key.to_string()), None),
                        AddressState::Cooling { until } if *until > now => (None, Some(*until)),
                        _ => (None, None),
                    };
                    api::Address { ip: a.ip.to_string(), state, lease, cooling_until, last_released: a.last_released }
                })
                .collect();
            let prefixes = app
                .ledger
                .prefixes(Some(&e.id))
                .into_iter()
                .map(|p| api::Prefix {
                    cidr: p.cidr.to_string(),
                    state: match p.state {
                        enipool_storage::PrefixState::Active => api::PrefixState::Active,
                        enipool_storage::PrefixState::Lost => api::PrefixState::Lost,
                    },
                    leased: p
                        .addresses()
                        .filter(|ip| {
                            app.ledger.address(*ip).is_some_and(|a| {
                                matches!(a.state, AddressState::Leased { .. } | AddressState::Lost { .. })
                            })
                        })
                        .count() as u32,
                })
                .collect();
            let subnet = app.pool.subnet(&e.id);
            api::Eni {
                primary: e.id == primary_eni_id,
                id: e.id,
                device_number: e.device_number,
                attached: e.attached,
                primary_ip: e.primary_ip.to_string(),
                subnet_cidr: e.subnet_cidr.to_string(),
                subnet_gateway: e.subnet_gateway.to_string(),
                route_table: e.route_table,
                addresses,
                prefixes,
                subnet_id: subnet.as_ref().map(|(id, _)| id.clone()),
                zone: subnet.and_then(|(_, zone)| zone),
            }
        })
        .collect()
}

/// The pool: counts, targets, deficit or excess, last provider action and error (`GET /v1/pool`).
pub fn pool(app: &App) -> api::Pool {
    let stats = app.ledger.stats();
    let plan = pool::plan_now(app, &stats);
    let c = &app.config;
    let info = app.info();
    let limits = info.limits;
    api::Pool {
        instance_id: info.instance_id.clone(),
        instance_type: info.instance_type.clone(),
        provider: app.provider.name().into(),
        max_enis: limits.max_enis,
        ipv4_per_eni: limits.ipv4_per_eni,
        enis: stats.enis as u32,
        total: stats.addresses.total as u32,
        free: stats.addresses.free as u32,
        leased: stats.addresses.leased as u32,
        cooling: stats.addresses.cooling as u32,
        targets: api::WarmTargets {
            warm_eni_target: c.warm_eni_target,
            warm_ip_target: c.warm_ip_target,
            minimum_ip_target: c.minimum_ip_target,
            max_eni: c.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis)),
            ip_cooldown_seconds: c.ip_cooldown.as_secs_f64(),
            warm_prefix_target: c.prefix_delegation.then(|| {
                let others = c.warm_ip_target.is_some() || c.minimum_ip_target.is_some();
                c.warm_prefix_target.unwrap_or(if others { 0 } else { 1 })
            }),
            max_pods: c.max_pods,
        },
        desired_total: plan.desired_total,
        deficit: plan.deficit,
        excess: plan.excess,
        exhausted_allocations: app.pool.exhausted_allocations(),
        last_provider_action: app.pool.last_action(),
        last_provider_error: app.pool.last_error(),
        lost: stats.lost as u32,
        growth_paused: app.pool.growth_pause().map(|p| api::GrowthPause { reason: p.reason, until: p.until_ms }),
        leaked_eni_sweep: c.provider == crate::config::ProviderKind::Ec2
            && c.ec2.cluster_name.is_some()
            && !c.leaked_eni_interval.is_zero(),
        mode: match pool::mode_now(app) {
            pool::Mode::Ips => "ips",
            pool::Mode::Prefixes => "prefixes",
            pool::Mode::PrefixFallback => "prefix-fallback",
        }
        .into(),
        prefixes: stats.prefixes as u32,
        free_prefixes: stats.free_prefixes as u32,
        prefix_plan: plan.prefixes.map(|p| api::PrefixPlan {
            desired: p.desired,
            deficit: p.deficit,
            excess: p.excess,
        }),
        prefix_fallback: app.pool.prefix_fallback().map(|p| api::GrowthPause { reason: p.reason, until: p.until_ms }),
        subnets: subnets(app),
        growth_blocked: app.growth_blocked(),
    }
}

/// Where new ENIs may go, as the provider last described them.
pub fn subnets(app: &App) -> Vec<api::Subnet> {
    app.provider
        .candidate_subnets()
        .into_iter()
        .map(|c| api::Subnet {
            id: c.id,
            cidr: c.cidr.to_string(),
            zone: c.zone,
            free: c.free,
            node: c.node,
            skipped: c.skipped,
            refusals: c.refusals,
        })
        .collect()
}

//! The warm-pool arithmetic: what the pool should hold, given the targets and the counts.

use enipool_storage::Stats;

use crate::app::App;
use crate::config::Config;
use crate::provider::Limits;

/// Addresses in one EC2 prefix (/28).
pub const PREFIX_SIZE: u32 = 16;

/// What the pool should hold, given the targets and the current counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// IPs the pool wants to hold now (capped by the ENI limit).
    pub desired_total: u32,
    pub deficit: u32,
    pub excess: u32,
    /// In prefix mode (not falling back): the plan in prefixes, which the pool grows and shrinks
    /// by; the address figures above are 16 times these.
    pub prefixes: Option<PrefixPlan>,
}

/// Prefix mode's plan, in prefixes: only what is inside prefixes counts (secondary IPs held from
/// before serve their pods and go back once free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixPlan {
    pub desired: u32,
    pub deficit: u32,
    pub excess: u32,
}

/// How the pool grows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// By secondary IPs (prefixes held from before go back once free).
    Ips,
    /// By /28 prefixes.
    Prefixes,
    /// Prefix mode, but EC2 had no free /28: by secondary IPs until the fallback pause ends.
    PrefixFallback,
}

/// Prefixes wanted for `in_use` addresses (leased or cooling), with the reference's prefix-mode
/// meaning of the targets: WARM_IP_TARGET / MINIMUM_IP_TARGET, if set, met in whole prefixes;
/// else WARM_PREFIX_TARGET (default 1) wholly free prefixes. WARM_ENI_TARGET has no say.
pub fn prefix_target(config: &Config, in_use: u32) -> u32 {
    if config.warm_ip_target.is_some() || config.minimum_ip_target.is_some() {
        let addresses = (in_use + config.warm_ip_target.unwrap_or(0)).max(config.minimum_ip_target.unwrap_or(0));
        addresses.div_ceil(PREFIX_SIZE)
    } else {
        in_use.div_ceil(PREFIX_SIZE) + config.warm_prefix_target.unwrap_or(1)
    }
}

/// The prefix-mode plan. `held` prefixes (active), `in_use` of their addresses leased or
/// cooling, `secondary_slots` ENI slots held by secondary IPs (they leave that much less room).
pub fn prefix_plan(config: &Config, limits: Limits, held: u32, in_use: u32, secondary_slots: u32) -> PrefixPlan {
    let max_enis = config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
    let room = (max_enis * limits.pod_ips_per_eni()).saturating_sub(secondary_slots);
    let pods_cap = config.max_pods.map_or(u32::MAX, |m| m.div_ceil(PREFIX_SIZE));
    let desired = prefix_target(config, in_use).min(room).min(pods_cap);
    PrefixPlan {
        desired,
        deficit: desired.saturating_sub(held),
        excess: held.saturating_sub(desired.max(in_use.div_ceil(PREFIX_SIZE))),
    }
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
    let desired_total = wanted.min(max_total).min(config.max_pods.unwrap_or(u32::MAX));
    Plan {
        desired_total,
        deficit: desired_total.saturating_sub(total),
        excess: total.saturating_sub(desired_total.max(in_use)),
        prefixes: None,
    }
}

/// The prefix fallback's target in addresses: `want`, within what the ENI slots still free
/// (beside the prefixes and secondary IPs held) can add to what is held.
fn fallback_total(config: &Config, limits: Limits, stats: &Stats, want: u32) -> u32 {
    let held = stats.addresses.total as u32;
    let secondaries = held.saturating_sub(stats.prefix_addresses.total as u32);
    let max_enis = config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
    let free_slots = (max_enis * limits.pod_ips_per_eni()).saturating_sub(stats.prefixes as u32 + secondaries);
    want.min(held + free_slots).max(held)
}

/// The mode the pool grows in now.
pub fn mode_now(app: &App) -> Mode {
    match (app.config.prefix_delegation, app.pool.prefix_fallback().is_some()) {
        (false, _) => Mode::Ips,
        (true, false) => Mode::Prefixes,
        (true, true) => Mode::PrefixFallback,
    }
}

pub fn plan_now(app: &App, stats: &Stats) -> Plan {
    let mut limits = app.info().limits;
    if app.config.ec2.custom_network.is_some() {
        // The primary ENI serves no pods: one ENI fewer than MAX_ENI or the type allows, and the
        // plan's own MAX_ENI cap then changes nothing.
        let max_enis = app.config.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis));
        limits.max_enis = max_enis.saturating_sub(1);
    }
    let c = stats.addresses;
    let in_use = (c.leased + c.cooling) as u32;
    match mode_now(app) {
        Mode::Ips => plan(&app.config, limits, c.total as u32, c.leased as u32, c.cooling as u32),
        Mode::Prefixes => {
            let inside = stats.prefix_addresses;
            let held = stats.prefixes as u32;
            let secondary_slots = (c.total - inside.total) as u32;
            let p = prefix_plan(&app.config, limits, held, (inside.leased + inside.cooling) as u32, secondary_slots);
            Plan {
                desired_total: p.desired * PREFIX_SIZE,
                deficit: p.deficit * PREFIX_SIZE,
                excess: p.excess * PREFIX_SIZE,
                prefixes: Some(p),
            }
        }
        Mode::PrefixFallback => {
            // What the prefix plan wants, in addresses, met by single IPs (pods on them count).
            let want = (prefix_target(&app.config, in_use) * PREFIX_SIZE)
                .min(app.config.max_pods.unwrap_or(u32::MAX))
                .max(in_use);
            let desired_total = fallback_total(&app.config, limits, stats, want);
            Plan { desired_total, deficit: desired_total.saturating_sub(c.total as u32), excess: 0, prefixes: None }
        }
    }
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
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0), Plan { desired_total: 9, deficit: 9, excess: 0, prefixes: None });
        // One pod: still one full free ENI wanted, so two ENIs.
        assert_eq!(plan(&c, M5_LARGE, 9, 1, 0).desired_total, 18);
        // Cooling IPs are not available: they push the target up like leased ones.
        assert_eq!(plan(&c, M5_LARGE, 18, 0, 9).desired_total, 18);
        // Capped at the instance's 27 pod IPs.
        assert_eq!(plan(&c, M5_LARGE, 27, 26, 0), Plan { desired_total: 27, deficit: 0, excess: 0, prefixes: None });
    }

    #[test]
    fn warm_ip_and_minimum_targets() {
        let c = config(|a| {
            a.warm_ip_target = Some(5);
            a.minimum_ip_target = Some(10);
        });
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0).desired_total, 10);
        assert_eq!(plan(&c, M5_LARGE, 10, 8, 0).desired_total, 13);
        assert_eq!(plan(&c, M5_LARGE, 20, 2, 0), Plan { desired_total: 10, deficit: 0, excess: 10, prefixes: None });
        // Never releasable below what is leased or cooling.
        assert_eq!(plan(&c, M5_LARGE, 20, 2, 17).excess, 0);
    }

    /// The reference's worked examples (t3.small: 3 ENIs x 3 slots), read from
    /// `../shared/reference/vpc-cni.md`: (pods, prefixes attached).
    #[test]
    fn prefix_targets_match_the_references_worked_examples() {
        const T3_SMALL: Limits = Limits { max_enis: 3, ipv4_per_eni: 4 };
        type Row = (Option<u32>, Option<u32>, Option<u32>, &'static [(u32, u32)]);
        let cases: [Row; 3] = [
            (Some(1), None, None, &[(0, 1), (5, 2), (16, 2), (17, 3), (58, 5)]),
            (None, Some(1), Some(1), &[(0, 1), (5, 1), (17, 2), (58, 4)]),
            (None, Some(7), Some(20), &[(0, 2), (5, 2), (17, 2), (58, 5)]),
        ];
        for (warm_prefix, warm_ip, minimum_ip, rows) in cases {
            let c = config(|a| {
                a.prefix_delegation = Some(true);
                a.warm_prefix_target = warm_prefix;
                a.warm_ip_target = warm_ip;
                a.minimum_ip_target = minimum_ip;
            });
            for &(pods, prefixes) in rows {
                let p = prefix_plan(&c, T3_SMALL, 0, pods, 0);
                assert_eq!(p.desired, prefixes, "{warm_prefix:?}/{warm_ip:?}/{minimum_ip:?}, {pods} pods");
            }
        }
    }

    #[test]
    fn prefix_plans_are_capped_by_slots_max_pods_and_what_is_in_use() {
        let c = config(|a| a.prefix_delegation = Some(true));
        // An m5.large has 27 slots; 3 taken by secondary IPs leave 24.
        assert_eq!(prefix_plan(&c, M5_LARGE, 0, 1_000, 3).desired, 24);
        // 110 pods need 7 prefixes, and one more is warm; MAX_PODS caps at what 110 pods need.
        assert_eq!(prefix_plan(&c, M5_LARGE, 0, 110, 0).desired, 8);
        let capped = config(|a| {
            a.prefix_delegation = Some(true);
            a.max_pods = Some(110);
        });
        assert_eq!(prefix_plan(&capped, M5_LARGE, 0, 110, 0), PrefixPlan { desired: 7, deficit: 7, excess: 0 });
        // Excess only beyond what the addresses in use fill.
        assert_eq!(prefix_plan(&c, M5_LARGE, 5, 17, 0), PrefixPlan { desired: 3, deficit: 0, excess: 2 });
        // WARM_IP_TARGET overrides WARM_PREFIX_TARGET; WARM_ENI_TARGET has no say.
        let by_ip = config(|a| {
            a.prefix_delegation = Some(true);
            a.warm_prefix_target = Some(4);
            a.warm_ip_target = Some(3);
            a.warm_eni_target = Some(3);
        });
        assert_eq!(prefix_plan(&by_ip, M5_LARGE, 0, 0, 0).desired, 1);
    }

    #[test]
    fn the_fallback_grows_single_ips_into_the_free_slots() {
        // An m5.large (27 slots) with 2 prefixes, 31 pods on them: 48 addresses wanted, 32 held;
        // 25 free slots take single IPs, so the target is 48 and 16 are missing.
        let c = config(|a| a.prefix_delegation = Some(true));
        let mut stats = Stats { prefixes: 2, ..Stats::default() };
        stats.addresses.total = 32;
        stats.prefix_addresses.total = 32;
        assert_eq!(fallback_total(&c, M5_LARGE, &stats, 48), 48);
        // With every slot taken, what is held.
        let mut full = Stats { prefixes: 20, ..Stats::default() };
        full.addresses.total = 20 * 16 + 7;
        full.prefix_addresses.total = 20 * 16;
        assert_eq!(fallback_total(&c, M5_LARGE, &full, 500), 327);
        // --max-eni below the ENIs holding prefixes: no underflow.
        let capped = config(|a| {
            a.prefix_delegation = Some(true);
            a.max_eni = Some(1);
        });
        assert_eq!(fallback_total(&capped, M5_LARGE, &full, 500), 327);
    }

    #[test]
    fn max_pods_caps_the_ip_pool() {
        let c = config(|a| a.max_pods = Some(12));
        assert_eq!(plan(&c, M5_LARGE, 9, 9, 0).desired_total, 12);
    }

    #[test]
    fn max_eni_caps_the_pool() {
        let c = config(|a| a.max_eni = Some(1));
        assert_eq!(plan(&c, M5_LARGE, 0, 0, 0).desired_total, 9);
        assert_eq!(plan(&c, M5_LARGE, 9, 9, 0).desired_total, 9);
    }
}

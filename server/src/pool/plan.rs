//! The warm-pool arithmetic: what the pool should hold, given the targets and the counts.

use enipool_storage::Stats;

use crate::app::App;
use crate::config::Config;
use crate::provider::Limits;

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

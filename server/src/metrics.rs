//! Prometheus metrics. Pool gauges are read from the ledger at scrape time, so they are never
//! stale; counters and histograms are updated where things happen.

use std::sync::Mutex;
use std::time::Duration;

use enipool_provider::CandidateSubnet;
use enipool_storage::{LedgerHealth, Stats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub action: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    pub subnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    leases: Gauge,
    ips: Family<StateLabel, Gauge>,
    ips_total: Gauge,
    enis: Gauge,
    allocation_seconds: Histogram,
    allocations_exhausted: Counter,
    allocations_waiting: Gauge,
    provider_calls: Family<ActionLabel, Counter>,
    provider_errors: Family<ActionLabel, Counter>,
    provider_seconds: Family<ActionLabel, Histogram>,
    // Registered in every build (an empty family without the ec2 feature), so the set of
    // metric names does not depend on how the daemon was built.
    #[cfg_attr(not(feature = "ec2"), allow(dead_code))]
    ec2_calls: Family<ActionLabel, Counter>,
    #[cfg_attr(not(feature = "ec2"), allow(dead_code))]
    ec2_errors: Family<ErrorLabel, Counter>,
    #[cfg_attr(not(feature = "ec2"), allow(dead_code))]
    ec2_seconds: Family<ActionLabel, Histogram>,
    growth_pauses: Counter,
    prefix_fallbacks: Counter,
    subnet_free: Family<SubnetLabel, Gauge>,
    subnet_refusals: Family<SubnetLabel, Counter>,
    leaked_enis_deleted: Counter,
    leases_lost: Counter,
    ips_lost: Gauge,
    node_leases_released: Counter,
    node_removed: Family<KindLabel, Counter>,
    node_reconcile_errors: Counter,
    ledger_write_failed: Gauge,
    ledger_checkpoint_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("enipool");
        let leases = Gauge::default();
        let ips = Family::<StateLabel, Gauge>::default();
        let ips_total = Gauge::default();
        let enis = Gauge::default();
        // 50 us .. ~3 s
        let allocation_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 17));
        let allocations_exhausted = Counter::default();
        let allocations_waiting = Gauge::default();
        let provider_calls = Family::<ActionLabel, Counter>::default();
        let provider_errors = Family::<ActionLabel, Counter>::default();
        let provider_seconds = Family::<ActionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let ec2_calls = Family::<ActionLabel, Counter>::default();
        let ec2_errors = Family::<ErrorLabel, Counter>::default();
        let ec2_seconds = Family::<ActionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let growth_pauses = Counter::default();
        let prefix_fallbacks = Counter::default();
        let subnet_free = Family::<SubnetLabel, Gauge>::default();
        let subnet_refusals = Family::<SubnetLabel, Counter>::default();
        let leaked_enis_deleted = Counter::default();
        let leases_lost = Counter::default();
        let ips_lost = Gauge::default();
        let node_leases_released = Counter::default();
        let node_removed = Family::<KindLabel, Counter>::default();
        let node_reconcile_errors = Counter::default();
        let ledger_write_failed = Gauge::default();
        let ledger_checkpoint_failures = Counter::default();
        registry.register(
            "ledger_write_failed",
            "1 once a ledger write or sync failed: nothing is leased or released until a restart (liveness is 503)",
            ledger_write_failed.clone(),
        );
        registry.register(
            "ledger_checkpoint_failures",
            "Ledger checkpoints into sled that failed and were retried (the write-ahead log keeps every change)",
            ledger_checkpoint_failures.clone(),
        );
        registry.register("leases", "Live leases", leases.clone());
        registry.register("ips", "Secondary IPs by state (free, leased, cooling)", ips.clone());
        registry.register("ips_total", "Secondary IPs held by the node", ips_total.clone());
        registry.register("enis", "ENIs attached to the node", enis.clone());
        registry.register("allocation_seconds", "Time to answer a lease request", allocation_seconds.clone());
        registry.register(
            "allocations_exhausted",
            "Lease requests refused because no IP was free",
            allocations_exhausted.clone(),
        );
        registry.register(
            "allocations_waiting",
            "Lease requests waiting for the pool to gain a free IP",
            allocations_waiting.clone(),
        );
        registry.register("provider_calls", "Provider (EC2) calls by action", provider_calls.clone());
        registry.register("provider_errors", "Failed provider (EC2) calls by action", provider_errors.clone());
        registry.register("provider_call_seconds", "Provider (EC2) call latency by action", provider_seconds.clone());
        registry.register("ec2_requests", "EC2 API requests by action, every retry included", ec2_calls.clone());
        registry.register("ec2_errors", "Failed EC2 API requests by action and error code", ec2_errors.clone());
        registry.register("ec2_request_seconds", "EC2 API request latency by action", ec2_seconds.clone());
        registry.register(
            "growth_pauses",
            "Times growth paused because the subnet ran out of addresses",
            growth_pauses.clone(),
        );
        registry.register(
            "prefix_fallbacks",
            "Times prefix growth fell back to single IPs because the subnet had no free /28 (InsufficientCidrBlocks)",
            prefix_fallbacks.clone(),
        );
        registry.register(
            "subnet_free_addresses",
            "Free addresses of each subnet new ENIs may go to, as EC2 last counted them (at the last ENI created)",
            subnet_free.clone(),
        );
        registry.register(
            "subnet_refusals",
            "Times a subnet refused a new ENI (exhausted, or no free /28) and was skipped for --subnet-skip",
            subnet_refusals.clone(),
        );
        registry.register("leaked_enis_deleted", "Leaked ENIs deleted by the sweep", leaked_enis_deleted.clone());
        registry.register(
            "leases_lost",
            "Leases whose IP (or ENI) the provider no longer had at reconciliation",
            leases_lost.clone(),
        );
        registry.register("ips_lost", "Leased IPs the provider no longer has", ips_lost.clone());
        registry.register(
            "node_leases_released",
            "Leases released by node reconciliation because their pod network namespace was gone",
            node_leases_released.clone(),
        );
        registry.register(
            "node_removed",
            "Host veths and policy rules of ours that no lease accounted for, removed by node reconciliation",
            node_removed.clone(),
        );
        registry.register(
            "node_reconcile_errors",
            "Node reconciliation passes that failed part-way",
            node_reconcile_errors.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            leases,
            ips,
            ips_total,
            enis,
            allocation_seconds,
            allocations_exhausted,
            allocations_waiting,
            provider_calls,
            provider_errors,
            provider_seconds,
            ec2_calls,
            ec2_errors,
            ec2_seconds,
            growth_pauses,
            prefix_fallbacks,
            subnet_free,
            subnet_refusals,
            leaked_enis_deleted,
            leases_lost,
            ips_lost,
            node_leases_released,
            node_removed,
            node_reconcile_errors,
            ledger_write_failed,
            ledger_checkpoint_failures,
        }
    }

    pub fn node_reconciled(&self, released: usize, veths: usize, rules: usize, failed: bool) {
        self.node_leases_released.inc_by(released as u64);
        self.node_removed.get_or_create(&KindLabel { kind: "veth".into() }).inc_by(veths as u64);
        self.node_removed.get_or_create(&KindLabel { kind: "rule".into() }).inc_by(rules as u64);
        if failed {
            self.node_reconcile_errors.inc();
        }
    }

    pub fn leases_lost(&self, n: usize) {
        self.leases_lost.inc_by(n as u64);
    }

    pub fn growth_paused(&self) {
        self.growth_pauses.inc();
    }

    pub fn prefix_fell_back(&self) {
        self.prefix_fallbacks.inc();
    }

    pub fn leaked_enis_deleted(&self, n: usize) {
        self.leaked_enis_deleted.inc_by(n as u64);
    }

    pub fn allocation(&self, took: Duration) {
        self.allocation_seconds.observe(took.as_secs_f64());
    }

    /// Counts a lease request as waiting for a free IP until the guard drops.
    pub fn waiting_allocation(&self) -> WaitingAllocation {
        self.allocations_waiting.inc();
        WaitingAllocation(self.allocations_waiting.clone())
    }

    pub fn exhausted(&self) {
        self.allocations_exhausted.inc();
    }

    pub fn provider_call(&self, action: &str, took: Duration, ok: bool) {
        let label = ActionLabel { action: action.into() };
        self.provider_calls.get_or_create(&label).inc();
        if !ok {
            self.provider_errors.get_or_create(&label).inc();
        }
        self.provider_seconds.get_or_create(&label).observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition, with pool gauges set from `stats`.
    pub fn render(&self, stats: &Stats, leases: usize, ledger: &LedgerHealth, subnets: &[CandidateSubnet]) -> String {
        // Counters set from totals are read and raised under the registry's lock: two scrapes
        // at once would otherwise both add the difference.
        let registry = crate::lock(&self.registry);
        for sn in subnets {
            let label = SubnetLabel { subnet: sn.id.clone() };
            self.subnet_free.get_or_create(&label).set(sn.free as i64);
            let refusals = self.subnet_refusals.get_or_create(&label);
            refusals.inc_by(sn.refusals.saturating_sub(refusals.get()));
        }
        self.leases.set(leases as i64);
        self.ledger_write_failed.set(i64::from(ledger.write_failure.is_some()));
        let counted = self.ledger_checkpoint_failures.get();
        self.ledger_checkpoint_failures.inc_by(ledger.checkpoint_failures.saturating_sub(counted));
        for (state, n) in
            [("free", stats.addresses.free), ("leased", stats.addresses.leased), ("cooling", stats.addresses.cooling)]
        {
            self.ips.get_or_create(&StateLabel { state: state.into() }).set(n as i64);
        }
        self.ips_total.set(stats.addresses.total as i64);
        self.ips_lost.set(stats.lost as i64);
        self.enis.set(stats.enis as i64);
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// See `Metrics::waiting_allocation`.
#[derive(Debug)]
pub struct WaitingAllocation(Gauge);

impl Drop for WaitingAllocation {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(feature = "ec2")]
impl enipool_ec2::CallObserver for Metrics {
    fn attempt(&self, action: &str, took: Duration, error: Option<&str>) {
        let label = ActionLabel { action: action.into() };
        self.ec2_calls.get_or_create(&label).inc();
        self.ec2_seconds.get_or_create(&label).observe(took.as_secs_f64());
        if let Some(code) = error {
            self.ec2_errors.get_or_create(&ErrorLabel { action: action.into(), code: code.into() }).inc();
        }
    }
}

//! Random operation sequences against a plain in-memory model of the ledger's policy.
//!
//! The model below is written from the ledger's documented policy, not from its code: what each
//! operation refuses (and in which order it checks), which address `allocate` picks, what a
//! release does to an address, and what survives a close or a crash. After every step the
//! ledger's answer and its whole visible state must equal the model's.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use enipool_storage::*;
use proptest::prelude::*;

use common::eni;

const START: UnixMillis = 1_700_000_000_000;
const ENI_IDS: [&str; 3] = ["eni-a", "eni-b", "eni-c"];
const NETWORKS: [&str; 2] = ["net-a", "net-b"];
const CONTAINERS: [&str; 4] = ["c0", "c1", "c2", "c3"];
const NAMESPACES: [Option<&str>; 3] = [Some("ns0"), Some("ns1"), None];
/// Address indexes 0..20 are plain secondaries; 20 and 21 are the default primaries of eni-a and
/// eni-b, so that lists of addresses sometimes name a primary.
const ADDRESS_SPACE: u8 = 22;

fn addr(i: u8) -> Ipv4Addr {
    if i < 20 { Ipv4Addr::new(10, 0, 0, 1 + i) } else { default_primary((i - 20) as usize) }
}

fn default_primary(eni: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 1 + eni as u8)
}

fn key(i: u8) -> LeaseKey {
    let i = i as usize;
    LeaseKey::new(NETWORKS[i / CONTAINERS.len()], CONTAINERS[i % CONTAINERS.len()], "eth0")
}

fn lease_meta(key: &LeaseKey, ns: u8) -> LeaseMeta {
    LeaseMeta {
        pod_namespace: NAMESPACES[ns as usize].map(String::from),
        pod_name: Some(key.container_id.clone()),
        netns: Some(format!("/var/run/netns/{}", key.container_id)),
        host_veth: None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    AddEni {
        eni: usize,
        primary: Option<u8>,
        attached: bool,
        addrs: Vec<u8>,
    },
    AddAddresses {
        eni: usize,
        addrs: Vec<u8>,
    },
    RemoveAddresses {
        eni: usize,
        addrs: Vec<u8>,
    },
    RemoveEni {
        eni: usize,
    },
    SetAttached {
        eni: usize,
        attached: bool,
    },
    Allocate {
        key: u8,
        ns: u8,
    },
    /// A key with a NUL byte, which the ledger must refuse.
    AllocateInvalid,
    Release {
        key: u8,
    },
    /// Garbage-collects `network`, keeping the containers whose bit is set in `keep`.
    Gc {
        network: usize,
        keep: u8,
    },
    ExpireCooldowns,
    Advance {
        ms: u64,
    },
    Checkpoint,
    /// Close (or simulate a crash) and open the same directory again.
    Reopen {
        crash: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let eni = 0..ENI_IDS.len();
    let addrs = |max| prop::collection::vec(0..ADDRESS_SPACE, 0..max);
    prop_oneof![
        4 => (eni.clone(), prop::option::weighted(0.2, 0..ADDRESS_SPACE), prop::bool::weighted(0.85), addrs(6))
            .prop_map(|(eni, primary, attached, addrs)| Op::AddEni { eni, primary, attached, addrs }),
        2 => (eni.clone(), addrs(4)).prop_map(|(eni, addrs)| Op::AddAddresses { eni, addrs }),
        2 => (eni.clone(), addrs(4)).prop_map(|(eni, addrs)| Op::RemoveAddresses { eni, addrs }),
        1 => eni.clone().prop_map(|eni| Op::RemoveEni { eni }),
        2 => (eni, any::<bool>()).prop_map(|(eni, attached)| Op::SetAttached { eni, attached }),
        12 => (0..8u8, 0..3u8).prop_map(|(key, ns)| Op::Allocate { key, ns }),
        1 => Just(Op::AllocateInvalid),
        7 => (0..8u8).prop_map(|key| Op::Release { key }),
        2 => (0..NETWORKS.len(), 0..16u8).prop_map(|(network, keep)| Op::Gc { network, keep }),
        2 => Just(Op::ExpireCooldowns),
        4 => prop::sample::select(vec![1u64, 4, 5, 6, 50, 99, 100, 101, 1_000]).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Checkpoint),
        2 => any::<bool>().prop_map(|crash| Op::Reopen { crash }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    cooldown_ms: u64,
    /// Background checkpoints every millisecond, racing the operations.
    background_checkpoints: bool,
    /// Small segments make the log rotate (and trim) many times within one sequence.
    wal_segment_bytes: u64,
    ops: Vec<Op>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![0u64, 5, 100]),
        prop::bool::weighted(0.25),
        prop::sample::select(vec![64u64 << 10, 300]),
        // Most sequences start from an attached ENI, so that allocation has addresses to hand out.
        prop::option::weighted(0.9, prop::collection::vec(0..20u8, 2..8)),
        prop::collection::vec(op_strategy(), 1..60),
    )
        .prop_map(|(cooldown_ms, background_checkpoints, wal_segment_bytes, first_eni, mut ops)| {
            if let Some(addrs) = first_eni {
                ops.insert(0, Op::AddEni { eni: 0, primary: None, attached: true, addrs });
            }
            Case { cooldown_ms, background_checkpoints, wal_segment_bytes, ops }
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eff {
    Free,
    Leased,
    Cooling,
}

/// The policy, on plain maps.
#[derive(Default)]
struct Model {
    cooldown: u64,
    enis: BTreeMap<String, EniRecord>,
    addrs: BTreeMap<Ipv4Addr, AddressRecord>,
    leases: BTreeMap<LeaseKey, Lease>,
    /// Operations that changed something get the next sequence number.
    seq: u64,
    /// Such operations since the last checkpoint: what a crash leaves for the log to replay.
    since_checkpoint: u64,
}

fn eff(a: &AddressRecord, now: UnixMillis) -> Eff {
    match a.state {
        AddressState::Free => Eff::Free,
        AddressState::Leased { .. } | AddressState::Lost { .. } => Eff::Leased,
        AddressState::Cooling { until } => {
            if until > now {
                Eff::Cooling
            } else {
                Eff::Free
            }
        }
    }
}

impl Model {
    fn committed(&mut self) {
        self.seq += 1;
        self.since_checkpoint += 1;
    }

    fn is_primary(&self, ip: Ipv4Addr) -> bool {
        self.enis.values().any(|e| e.attached && e.primary_ip == ip)
    }

    fn add_eni(&mut self, rec: EniRecord, addrs: &[Ipv4Addr]) -> Result<(), LedgerError> {
        if self.enis.contains_key(&rec.id) {
            return Err(LedgerError::EniExists(rec.id));
        }
        if self.addrs.contains_key(&rec.primary_ip) || self.is_primary(rec.primary_ip) {
            return Err(LedgerError::AddressExists(rec.primary_ip));
        }
        let mut seen = HashSet::new();
        for &ip in addrs {
            if self.addrs.contains_key(&ip) {
                return Err(LedgerError::AddressExists(ip));
            }
            if self.is_primary(ip) || ip == rec.primary_ip {
                return Err(LedgerError::PrimaryAddress(ip));
            }
            if !seen.insert(ip) {
                return Err(LedgerError::AddressExists(ip));
            }
        }
        for &ip in addrs {
            self.addrs.insert(
                ip,
                AddressRecord { ip, eni_id: rec.id.clone(), state: AddressState::Free, last_released: None },
            );
        }
        self.enis.insert(rec.id.clone(), rec);
        self.committed();
        Ok(())
    }

    fn add_addresses(&mut self, eni: &str, addrs: &[Ipv4Addr]) -> Result<(), LedgerError> {
        if !self.enis.contains_key(eni) {
            return Err(LedgerError::UnknownEni(eni.into()));
        }
        let mut seen = HashSet::new();
        for &ip in addrs {
            if self.addrs.contains_key(&ip) {
                return Err(LedgerError::AddressExists(ip));
            }
            if self.is_primary(ip) {
                return Err(LedgerError::PrimaryAddress(ip));
            }
            if !seen.insert(ip) {
                return Err(LedgerError::AddressExists(ip));
            }
        }
        for &ip in addrs {
            self.addrs
                .insert(ip, AddressRecord { ip, eni_id: eni.into(), state: AddressState::Free, last_released: None });
        }
        if !addrs.is_empty() {
            self.committed();
        }
        Ok(())
    }

    fn remove_addresses(&mut self, eni: &str, addrs: &[Ipv4Addr], now: UnixMillis) -> Result<(), LedgerError> {
        for &ip in addrs {
            let a = self.addrs.get(&ip).ok_or(LedgerError::UnknownAddress(ip))?;
            if a.eni_id != eni {
                return Err(LedgerError::WrongEni { ip, requested: eni.into(), actual: a.eni_id.clone() });
            }
            match eff(a, now) {
                Eff::Free => {}
                Eff::Leased => return Err(LedgerError::AddressInUse { ip, state: "leased" }),
                Eff::Cooling => return Err(LedgerError::AddressInUse { ip, state: "cooling" }),
            }
        }
        for ip in addrs {
            self.addrs.remove(ip);
        }
        if !addrs.is_empty() {
            self.committed();
        }
        Ok(())
    }

    fn remove_eni(&mut self, eni: &str, now: UnixMillis) -> Result<(), LedgerError> {
        if !self.enis.contains_key(eni) {
            return Err(LedgerError::UnknownEni(eni.into()));
        }
        let states: Vec<Eff> = self.addrs.values().filter(|a| a.eni_id == eni).map(|a| eff(a, now)).collect();
        let leased = states.iter().filter(|s| **s == Eff::Leased).count();
        let cooling = states.iter().filter(|s| **s == Eff::Cooling).count();
        if leased + cooling > 0 {
            return Err(LedgerError::EniInUse { eni: eni.into(), leased, cooling });
        }
        self.addrs.retain(|_, a| a.eni_id != eni);
        self.enis.remove(eni);
        self.committed();
        Ok(())
    }

    fn set_attached(&mut self, eni: &str, attached: bool) -> Result<(), LedgerError> {
        let rec = self.enis.get(eni).ok_or_else(|| LedgerError::UnknownEni(eni.into()))?;
        if rec.attached == attached {
            return Ok(());
        }
        let primary = rec.primary_ip;
        if attached && (self.addrs.contains_key(&primary) || self.is_primary(primary)) {
            return Err(LedgerError::AddressExists(primary));
        }
        self.enis.get_mut(eni).expect("checked above").attached = attached;
        self.committed();
        Ok(())
    }

    fn allocate(&mut self, key: LeaseKey, meta: LeaseMeta, now: UnixMillis) -> Result<Allocation, LedgerError> {
        if [&key.network, &key.container_id, &key.ifname].iter().any(|p| p.contains('\0')) {
            return Err(LedgerError::InvalidKey(key));
        }
        if let Some(lease) = self.leases.get(&key) {
            return Ok(Allocation { lease: lease.clone(), created: false });
        }
        // Among allocatable addresses (free, or cooled down, on an attached ENI): never released
        // first, then the one released longest ago, then the lowest address.
        let chosen = self
            .addrs
            .values()
            .filter(|a| eff(a, now) == Eff::Free && self.enis[&a.eni_id].attached)
            .min_by_key(|a| (a.last_released, a.ip))
            .ok_or(LedgerError::NoFreeAddress)?;
        let ip = chosen.ip;
        let lease = Lease { key: key.clone(), ip, eni_id: chosen.eni_id.clone(), meta, created_at: now };
        self.addrs.get_mut(&ip).expect("chosen above").state = AddressState::Leased { key: key.clone() };
        self.leases.insert(key, lease.clone());
        self.committed();
        Ok(Allocation { lease, created: true })
    }

    /// Puts the lease's address into cooldown (or straight back to free with no cooldown).
    fn release_one(&mut self, key: &LeaseKey, now: UnixMillis) -> Lease {
        let lease = self.leases.remove(key).expect("the caller checked the lease exists");
        let a = self.addrs.get_mut(&lease.ip).expect("a leased address exists");
        a.state =
            if self.cooldown == 0 { AddressState::Free } else { AddressState::Cooling { until: now + self.cooldown } };
        a.last_released = Some(now);
        lease
    }

    fn release(&mut self, key: &LeaseKey, now: UnixMillis) -> Result<Option<Lease>, LedgerError> {
        if !self.leases.contains_key(key) {
            return Ok(None);
        }
        let lease = self.release_one(key, now);
        self.committed();
        Ok(Some(lease))
    }

    fn gc(&mut self, network: &str, keep: &HashSet<(String, String)>, now: UnixMillis) -> Vec<Lease> {
        let stale: Vec<LeaseKey> = self
            .leases
            .keys()
            .filter(|k| k.network == network && !keep.contains(&(k.container_id.clone(), k.ifname.clone())))
            .cloned()
            .collect();
        let released: Vec<Lease> = stale.iter().map(|k| self.release_one(k, now)).collect();
        if !released.is_empty() {
            self.committed();
        }
        released
    }

    fn expire_cooldowns(&mut self, now: UnixMillis) -> usize {
        let mut n = 0;
        for a in self.addrs.values_mut() {
            if matches!(a.state, AddressState::Cooling { until } if until <= now) {
                a.state = AddressState::Free;
                n += 1;
            }
        }
        if n > 0 {
            self.committed();
        }
        n
    }

    fn stats(&self, now: UnixMillis) -> Stats {
        let mut stats = Stats { enis: self.enis.len(), ..Stats::default() };
        for id in self.enis.keys() {
            stats.per_eni.insert(id.clone(), Counts::default());
        }
        for a in self.addrs.values() {
            let state = eff(a, now);
            for counts in [&mut stats.addresses, stats.per_eni.entry(a.eni_id.clone()).or_default()] {
                counts.total += 1;
                match state {
                    Eff::Free => counts.free += 1,
                    Eff::Leased => counts.leased += 1,
                    Eff::Cooling => counts.cooling += 1,
                }
            }
        }
        stats
    }
}

/// Compares the ledger's whole visible state with the model's.
fn assert_same_state(ledger: &Ledger, model: &Model, now: UnixMillis, step: usize) -> Result<(), TestCaseError> {
    let at = format!("after step {step}");
    prop_assert_eq!(ledger.check_invariants(), Ok(()), "{}", at);
    prop_assert_eq!(ledger.enis(), model.enis.values().cloned().collect::<Vec<_>>(), "{}", at);
    prop_assert_eq!(ledger.addresses(None), model.addrs.values().cloned().collect::<Vec<_>>(), "{}", at);
    prop_assert_eq!(
        ledger.leases(&LeaseFilter::default()),
        model.leases.values().cloned().collect::<Vec<_>>(),
        "{}",
        at
    );
    prop_assert_eq!(ledger.stats(), model.stats(now), "{}", at);
    prop_assert_eq!(ledger.last_seq(), model.seq, "{}", at);
    prop_assert!(ledger.durable_seq() >= model.seq, "{}: durable {} < {}", at, ledger.durable_seq(), model.seq);

    for id in ENI_IDS {
        prop_assert_eq!(ledger.eni(id), model.enis.get(id).cloned(), "{} eni {}", at, id);
        let of_eni: Vec<AddressRecord> = model.addrs.values().filter(|a| a.eni_id == id).cloned().collect();
        prop_assert_eq!(ledger.addresses(Some(id)), of_eni, "{} addresses of {}", at, id);
        let filter = LeaseFilter { eni_id: Some(id.into()), ..LeaseFilter::default() };
        let expected: Vec<Lease> = model.leases.values().filter(|l| l.eni_id == id).cloned().collect();
        prop_assert_eq!(ledger.leases(&filter), expected, "{} leases on {}", at, id);
    }
    for network in NETWORKS {
        let filter = LeaseFilter { network: Some(network.into()), ..LeaseFilter::default() };
        let expected: Vec<Lease> = model.leases.values().filter(|l| l.key.network == network).cloned().collect();
        prop_assert_eq!(ledger.leases(&filter), expected, "{} leases in {}", at, network);
    }
    let filter = LeaseFilter { pod_namespace: Some("ns0".into()), ..LeaseFilter::default() };
    let expected: Vec<Lease> =
        model.leases.values().filter(|l| l.meta.pod_namespace.as_deref() == Some("ns0")).cloned().collect();
    prop_assert_eq!(ledger.leases(&filter), expected, "{} leases of ns0", at);
    for k in 0..8 {
        prop_assert_eq!(ledger.lease(&key(k)), model.leases.get(&key(k)).cloned(), "{} lease {}", at, key(k));
    }
    for i in 0..ADDRESS_SPACE {
        let ip = addr(i);
        prop_assert_eq!(ledger.address(ip), model.addrs.get(&ip).cloned(), "{} address {}", at, ip);
        let by_ip = model.leases.values().find(|l| l.ip == ip).cloned();
        prop_assert_eq!(ledger.lease_by_ip(ip), by_ip, "{} lease_by_ip {}", at, ip);
    }
    Ok(())
}

/// Both results, compared through their debug form (which shows every field of an error).
fn same<T: std::fmt::Debug>(actual: &T, expected: &T, step: usize, op: &Op) -> Result<(), TestCaseError> {
    prop_assert_eq!(format!("{actual:?}"), format!("{expected:?}"), "step {}: {:?}", step, op);
    Ok(())
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = Arc::new(ManualClock::new(START));
    let config = LedgerConfig {
        cooldown: Duration::from_millis(case.cooldown_ms),
        checkpoint_interval: case.background_checkpoints.then(|| Duration::from_millis(1)),
        wal_segment_bytes: case.wal_segment_bytes,
        cache_bytes: 4 << 20,
        ..LedgerConfig::default()
    };
    let open = || Ledger::open(dir.path(), config.clone(), clock.clone() as Arc<dyn Clock>);
    let mut ledger = open().expect("a new ledger opens");
    let mut model = Model { cooldown: case.cooldown_ms, ..Model::default() };

    for (step, op) in case.ops.iter().enumerate() {
        let now = clock.now();
        match op {
            Op::AddEni { eni: e, primary, attached, addrs } => {
                let rec = eni(ENI_IDS[*e], *e as u32 + 1, primary.map_or(default_primary(*e), addr), *attached);
                let ips: Vec<Ipv4Addr> = addrs.iter().map(|&i| addr(i)).collect();
                same(&ledger.add_eni(rec.clone(), &ips), &model.add_eni(rec, &ips), step, op)?;
            }
            Op::AddAddresses { eni: e, addrs } => {
                let ips: Vec<Ipv4Addr> = addrs.iter().map(|&i| addr(i)).collect();
                same(&ledger.add_addresses(ENI_IDS[*e], &ips), &model.add_addresses(ENI_IDS[*e], &ips), step, op)?;
            }
            Op::RemoveAddresses { eni: e, addrs } => {
                let ips: Vec<Ipv4Addr> = addrs.iter().map(|&i| addr(i)).collect();
                let expected = model.remove_addresses(ENI_IDS[*e], &ips, now);
                same(&ledger.remove_addresses(ENI_IDS[*e], &ips), &expected, step, op)?;
            }
            Op::RemoveEni { eni: e } => {
                same(&ledger.remove_eni(ENI_IDS[*e]), &model.remove_eni(ENI_IDS[*e], now), step, op)?;
            }
            Op::SetAttached { eni: e, attached } => {
                let expected = model.set_attached(ENI_IDS[*e], *attached);
                same(&ledger.set_eni_attached(ENI_IDS[*e], *attached), &expected, step, op)?;
            }
            Op::Allocate { key: k, ns } => {
                let meta = lease_meta(&key(*k), *ns);
                let expected = model.allocate(key(*k), meta.clone(), now);
                same(&ledger.allocate(key(*k), meta), &expected, step, op)?;
            }
            Op::AllocateInvalid => {
                let bad = LeaseKey::new("net-a", "c\0nul", "eth0");
                let expected = model.allocate(bad.clone(), LeaseMeta::default(), now);
                same(&ledger.allocate(bad, LeaseMeta::default()), &expected, step, op)?;
            }
            Op::Release { key: k } => {
                same(&ledger.release(&key(*k)), &model.release(&key(*k), now), step, op)?;
            }
            Op::Gc { network, keep } => {
                let valid: HashSet<(String, String)> = CONTAINERS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep & (1 << i) != 0)
                    .map(|(_, c)| (c.to_string(), "eth0".to_string()))
                    .collect();
                let expected: Result<Vec<Lease>, LedgerError> = Ok(model.gc(NETWORKS[*network], &valid, now));
                same(&ledger.gc(NETWORKS[*network], &valid, Duration::ZERO), &expected, step, op)?;
            }
            Op::ExpireCooldowns => {
                let expected: Result<usize, LedgerError> = Ok(model.expire_cooldowns(now));
                same(&ledger.expire_cooldowns(), &expected, step, op)?;
            }
            Op::Advance { ms } => clock.advance(*ms),
            Op::Checkpoint => {
                prop_assert_eq!(format!("{:?}", ledger.checkpoint()), "Ok(())", "step {}", step);
                model.since_checkpoint = 0;
            }
            Op::Reopen { crash } => {
                if *crash {
                    ledger.simulate_crash();
                } else {
                    prop_assert_eq!(format!("{:?}", ledger.close()), "Ok(())", "step {}", step);
                }
                ledger = match open() {
                    Ok(l) => l,
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: reopen failed: {e}"))),
                };
                let report = ledger.recovery();
                prop_assert_eq!(report.torn_tail_bytes, 0, "step {}", step);
                let expected_replay = if *crash { model.since_checkpoint } else { 0 };
                if case.background_checkpoints {
                    prop_assert!(report.replayed_records <= expected_replay, "step {}: {:?}", step, report);
                } else {
                    prop_assert_eq!(report.replayed_records, expected_replay, "step {}", step);
                }
                model.since_checkpoint = 0;
            }
        }
        assert_same_state(&ledger, &model, clock.now(), step)?;
    }
    prop_assert_eq!(format!("{:?}", ledger.close()), "Ok(())");

    // What the sequence left behind survives a final close and open.
    let ledger = open().expect("the ledger reopens");
    assert_same_state(&ledger, &model, clock.now(), case.ops.len())?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_the_model(case in case_strategy()) {
        run_case(&case)?;
    }
}

/// A fixed sequence that walks through every refusal and the allocation order, so the policy is
/// covered even if the random sequences happen not to reach a corner.
#[test]
fn fixed_sequence_matches_the_model() {
    use Op::*;
    let ops = vec![
        Allocate { key: 0, ns: 0 },
        AddEni { eni: 0, primary: None, attached: true, addrs: vec![3, 1, 2] },
        AddEni { eni: 0, primary: None, attached: true, addrs: vec![] },
        AddEni { eni: 1, primary: Some(1), attached: true, addrs: vec![] },
        AddEni { eni: 1, primary: Some(20), attached: true, addrs: vec![] },
        AddEni { eni: 1, primary: None, attached: true, addrs: vec![4, 21] },
        AddEni { eni: 1, primary: None, attached: true, addrs: vec![4, 4] },
        AddEni { eni: 1, primary: None, attached: false, addrs: vec![0, 5] },
        AddAddresses { eni: 0, addrs: vec![20] },
        AddAddresses { eni: 2, addrs: vec![6] },
        AddAddresses { eni: 0, addrs: vec![6, 6] },
        AddAddresses { eni: 0, addrs: vec![7] },
        Allocate { key: 0, ns: 0 },
        Allocate { key: 1, ns: 1 },
        Allocate { key: 0, ns: 2 },
        AllocateInvalid,
        Release { key: 0 },
        Release { key: 0 },
        Allocate { key: 2, ns: 0 },
        Allocate { key: 3, ns: 0 },
        Allocate { key: 4, ns: 0 },
        Allocate { key: 5, ns: 0 },
        SetAttached { eni: 1, attached: true },
        Allocate { key: 5, ns: 0 },
        Allocate { key: 6, ns: 0 },
        Allocate { key: 7, ns: 0 },
        RemoveEni { eni: 0 },
        RemoveAddresses { eni: 0, addrs: vec![1] },
        RemoveAddresses { eni: 1, addrs: vec![1] },
        RemoveAddresses { eni: 0, addrs: vec![19] },
        Gc { network: 0, keep: 0b0010 },
        RemoveEni { eni: 0 },
        Reopen { crash: true },
        Advance { ms: 99 },
        Allocate { key: 0, ns: 0 },
        Advance { ms: 1 },
        RemoveAddresses { eni: 0, addrs: vec![2] },
        Allocate { key: 0, ns: 0 },
        Release { key: 1 },
        Release { key: 0 },
        ExpireCooldowns,
        Advance { ms: 100 },
        ExpireCooldowns,
        Reopen { crash: false },
        Gc { network: 1, keep: 0 },
        Advance { ms: 1_000 },
        RemoveAddresses { eni: 0, addrs: vec![3, 7] },
        RemoveEni { eni: 0 },
        RemoveEni { eni: 1 },
        Checkpoint,
        Reopen { crash: true },
    ];
    let case = Case { cooldown_ms: 100, background_checkpoints: false, wal_segment_bytes: 64 << 10, ops };
    if let Err(e) = run_case(&case) {
        panic!("{e}");
    }
}

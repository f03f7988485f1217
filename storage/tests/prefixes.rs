//! Prefixes (schema 3): a /28 delegated to an ENI is a record of its own, and its 16 addresses
//! are leased one by one like secondary IPs. A prefix goes back only when every address is free
//! and done cooling; a prefix the provider stops listing is never given back while a lease names
//! one of its addresses, and comes back whole if the provider lists it again.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use enipool_storage::*;
use ipnet::Ipv4Net;

use common::{eni, ips_from, meta};

const START: UnixMillis = 1_700_000_000_000;
const COOLDOWN: u64 = 30_000;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Ledger {
    let config = LedgerConfig {
        cooldown: Duration::from_millis(COOLDOWN),
        checkpoint_interval: None,
        ..LedgerConfig::default()
    };
    Ledger::open(dir, config, clock.clone() as Arc<dyn Clock>).unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn key(name: &str) -> LeaseKey {
    LeaseKey::new("net", name, "eth0")
}

/// A node with one attached ENI (primary 10.0.0.10, one secondary 10.0.0.11) and the prefix
/// 10.0.0.16/28 on it.
fn node(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Ledger {
    let ledger = open(dir, clock);
    ledger.add_eni(eni("eni-1", 1, Ipv4Addr::new(10, 0, 0, 10), true), &[Ipv4Addr::new(10, 0, 0, 11)]).unwrap();
    ledger.add_prefixes("eni-1", &[net("10.0.0.16/28")], None, Vec::new()).unwrap();
    ledger
}

#[test]
fn a_prefixs_sixteen_addresses_are_leased_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = node(dir.path(), &clock);
    let stats = ledger.stats();
    assert_eq!((stats.prefixes, stats.free_prefixes, stats.addresses.total), (1, 1, 17));
    assert_eq!(stats.per_eni_prefixes.get("eni-1"), Some(&1));
    let mut got: Vec<Ipv4Addr> =
        (0..17).map(|i| ledger.allocate(key(&format!("p{i}")), meta("d", "p")).unwrap().lease.ip).collect();
    got.sort();
    let mut want = vec![Ipv4Addr::new(10, 0, 0, 11)];
    want.extend(ips_from(Ipv4Addr::new(10, 0, 0, 16), 16));
    assert_eq!(got, want, "the secondary IP and all 16, network and broadcast addresses of the /28 included");
    assert!(matches!(ledger.allocate(key("one-more"), meta("d", "p")), Err(LedgerError::NoFreeAddress)));
    assert_eq!(ledger.stats().free_prefixes, 0);
    ledger.check_invariants().unwrap();
}

#[test]
fn prefixes_overlap_nothing_and_their_addresses_come_and_go_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = node(dir.path(), &clock);
    ledger.add_eni(eni("eni-2", 2, Ipv4Addr::new(10, 0, 0, 12), true), &[]).unwrap();
    let refused = |cidr: &str, eni_id: &str| {
        let r = ledger.add_prefixes(eni_id, &[net(cidr)], None, Vec::new());
        assert!(matches!(r, Err(LedgerError::PrefixOverlaps { .. })), "{cidr}: {r:?}");
    };
    refused("10.0.0.16/28", "eni-2"); // the same prefix, on another ENI
    refused("10.0.0.0/27", "eni-1"); // contains it
    refused("10.0.0.0/28", "eni-1"); // holds the secondary and both primaries
    refused("10.0.0.40/28", "eni-1"); // not its own network
    let twice = ledger.add_prefixes("eni-1", &[net("10.0.0.32/28"), net("10.0.0.32/28")], None, Vec::new());
    assert!(matches!(twice, Err(LedgerError::PrefixOverlaps { .. })), "{twice:?}");
    assert!(ledger.prefix_of(Ipv4Addr::new(10, 0, 0, 33)).is_none(), "a refused call adds nothing");
    assert!(matches!(
        ledger.add_prefixes("eni-9", &[net("10.0.0.48/28")], None, Vec::new()),
        Err(LedgerError::UnknownEni(_))
    ));

    let inside = Ipv4Addr::new(10, 0, 0, 20);
    assert!(matches!(ledger.add_addresses("eni-2", &[inside]), Err(LedgerError::InPrefix { .. })));
    assert!(matches!(ledger.remove_addresses("eni-1", &[inside]), Err(LedgerError::InPrefix { .. })));
    assert_eq!(ledger.prefix_of(inside).map(|p| p.cidr), Some(net("10.0.0.16/28")));
    // mark_lost is for secondary IPs: a prefix's address is skipped.
    assert!(ledger.mark_lost(&[inside]).unwrap().is_empty());
    assert_eq!(ledger.address(inside).unwrap().state, AddressState::Free);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_prefix_goes_back_only_when_every_address_is_free_and_done_cooling() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = node(dir.path(), &clock);
    let prefix = net("10.0.0.16/28");
    // Take the secondary IP first, so the next lease lands in the prefix.
    ledger.allocate(key("secondary"), meta("d", "s")).unwrap();
    let pod = ledger.allocate(key("pod"), meta("d", "pod")).unwrap().lease;
    assert!(prefix.contains(&pod.ip));
    assert!(matches!(ledger.remove_prefix("eni-1", prefix), Err(LedgerError::AddressInUse { state: "leased", .. })));
    ledger.release(&pod.key).unwrap();
    assert!(matches!(ledger.remove_prefix("eni-1", prefix), Err(LedgerError::AddressInUse { state: "cooling", .. })));
    assert_eq!(ledger.stats().free_prefixes, 0, "a cooling address keeps the prefix from being free");
    clock.set(START + COOLDOWN);
    assert_eq!(ledger.stats().free_prefixes, 1);
    assert!(matches!(ledger.remove_prefix("eni-2", prefix), Err(LedgerError::WrongEni { .. })));
    ledger.remove_prefix("eni-1", prefix).unwrap();
    assert!(matches!(ledger.remove_prefix("eni-1", prefix), Err(LedgerError::UnknownPrefix(_))));
    assert!(ledger.address(pod.ip).is_none() && ledger.prefixes(None).is_empty());
    ledger.check_invariants().unwrap();
    // Durable, also after a crash (replayed from the log).
    ledger.add_prefixes("eni-1", &[net("10.0.0.48/28")], Some(START + 2 * COOLDOWN), Vec::new()).unwrap();
    ledger.simulate_crash();
    let ledger = open(dir.path(), &clock);
    assert_eq!(ledger.prefixes(None).iter().map(|p| p.cidr).collect::<Vec<_>>(), [net("10.0.0.48/28")]);
    let adopted = ledger.address(Ipv4Addr::new(10, 0, 0, 50)).unwrap();
    assert_eq!(adopted.state, AddressState::Cooling { until: START + 2 * COOLDOWN }, "adopted addresses cool first");
    ledger.check_invariants().unwrap();
}

#[test]
fn a_prefix_the_provider_stops_listing_is_kept_while_leased_and_recovered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = node(dir.path(), &clock);
    ledger.add_prefixes("eni-1", &[net("10.0.0.32/28")], None, Vec::new()).unwrap();
    ledger.allocate(key("secondary"), meta("d", "s")).unwrap();
    let a = ledger.allocate(key("a"), meta("d", "a")).unwrap().lease;
    let b = ledger.allocate(key("b"), meta("d", "b")).unwrap().lease;
    let prefix = ledger.prefix_of(a.ip).unwrap().cidr;
    assert_eq!(ledger.prefix_of(b.ip).unwrap().cidr, prefix, "both in the first prefix");
    let idle = if prefix == net("10.0.0.16/28") { net("10.0.0.32/28") } else { net("10.0.0.16/28") };

    // A (maybe stale) listing without either prefix.
    let lost = ledger.mark_prefixes_lost(&[prefix, idle, net("10.9.9.0/28")]).unwrap();
    assert_eq!(lost.len(), 2);
    let records = ledger.prefixes(None);
    assert_eq!(records.len(), 1, "the idle prefix went at once: {records:?}");
    assert_eq!((records[0].cidr, records[0].state), (prefix, PrefixState::Lost));
    assert_eq!(ledger.address(a.ip).unwrap().state, AddressState::Lost { key: a.key.clone() });
    let stats = ledger.stats();
    assert_eq!((stats.lost, stats.prefixes, stats.addresses.total), (2, 0, 1), "{stats:?}");
    // Nothing of it is handed out, and it cannot be given back.
    assert!(matches!(ledger.allocate(key("c"), meta("d", "c")), Err(LedgerError::NoFreeAddress)));
    assert!(matches!(ledger.remove_prefix("eni-1", prefix), Err(LedgerError::AddressInUse { .. })));
    ledger.check_invariants().unwrap();

    // The provider lists it again: the leases are whole, the rest comes back cooling.
    ledger.simulate_crash();
    let ledger = open(dir.path(), &clock);
    assert!(ledger.recover_prefix("eni-2", prefix, START + COOLDOWN).unwrap().is_empty(), "not that ENI's");
    let back = ledger.recover_prefix("eni-1", prefix, START + COOLDOWN).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(ledger.address(b.ip).unwrap().state, AddressState::Leased { key: b.key.clone() });
    let stats = ledger.stats();
    assert_eq!((stats.lost, stats.prefixes, stats.addresses.cooling), (0, 1, 14));
    ledger.check_invariants().unwrap();

    // Lost again, then its leases go (one released, one collected): the prefix goes with them.
    ledger.mark_prefixes_lost(&[prefix]).unwrap();
    ledger.release(&a.key).unwrap();
    assert_eq!(ledger.prefixes(None).len(), 1, "b still names it");
    ledger.check_invariants().unwrap();
    let collected = ledger.gc("net", &[("secondary".to_string(), "eth0".to_string())].into(), Duration::ZERO).unwrap();
    assert_eq!(collected.iter().map(|l| &l.key).collect::<Vec<_>>(), [&b.key]);
    assert!(ledger.prefixes(None).is_empty());
    assert!(ledger.address(b.ip).is_none());
    ledger.check_invariants().unwrap();
    drop(ledger);
    open(dir.path(), &clock).check_invariants().unwrap();
}

#[test]
fn removing_an_eni_removes_its_idle_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = node(dir.path(), &clock);
    let pod = ledger.allocate(key("pod"), meta("d", "pod")).unwrap().lease;
    assert!(matches!(ledger.remove_eni("eni-1"), Err(LedgerError::EniInUse { .. })));
    ledger.release(&pod.key).unwrap();
    clock.set(START + COOLDOWN);
    ledger.remove_eni("eni-1").unwrap();
    assert!(ledger.prefixes(None).is_empty() && ledger.addresses(None).is_empty());
    ledger.check_invariants().unwrap();
}

#[test]
fn an_adopted_prefix_is_leased_to_the_pods_using_it_in_the_same_operation() {
    // Reconciliation adopts a prefix the provider lists while pods on the node use two of its
    // addresses (the ledger lost their leases). Even with no cooldown at all, neither address can
    // be handed out first: the leases are made in the same operation.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    ledger.add_eni(eni("eni-1", 1, Ipv4Addr::new(10, 0, 0, 10), true), &[]).unwrap();
    ledger.allocate(key("holder"), meta("d", "holder")).unwrap_err();
    let pod = |name: &str, ip: Ipv4Addr| Lease {
        key: key(name),
        ip,
        eni_id: String::new(),
        meta: meta("d", name),
        created_at: START,
    };
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 16), Ipv4Addr::new(10, 0, 0, 20));
    let in_use = vec![pod("a", a), pod("b", b), pod("elsewhere", Ipv4Addr::new(10, 0, 0, 99)), pod("a", b)];
    let made = ledger.add_prefixes("eni-1", &[net("10.0.0.16/28")], None, in_use).unwrap();
    assert_eq!(made.iter().map(|l| (l.key.container_id.as_str(), l.ip)).collect::<Vec<_>>(), [("a", a), ("b", b)]);
    assert!(made.iter().all(|l| l.eni_id == "eni-1"));
    for i in 0..14 {
        let got = ledger.allocate(key(&format!("new{i}")), meta("d", "n")).unwrap().lease.ip;
        assert!(got != a && got != b, "a live pod's address was handed out: {got}");
    }
    assert!(matches!(ledger.allocate(key("one-more"), meta("d", "n")), Err(LedgerError::NoFreeAddress)));
    ledger.check_invariants().unwrap();
}

/// Custom networking's "the primary ENI serves no pods": free addresses of ENIs the caller names
/// are not handed out (leases there stand), prefixes' addresses included; the set is in memory
/// and replaced whole.
#[test]
fn allocation_passes_over_the_enis_the_caller_does_not_serve_from() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    ledger
        .add_eni(eni("eni-primary", 0, Ipv4Addr::new(10, 0, 0, 10), true), &ips_from(Ipv4Addr::new(10, 0, 0, 11), 2))
        .unwrap();
    ledger.add_eni(eni("eni-pods", 1, Ipv4Addr::new(10, 0, 1, 10), true), &[]).unwrap();
    ledger.add_prefixes("eni-pods", &[net("10.0.1.16/28")], None, Vec::new()).unwrap();
    let held = ledger.allocate(key("before"), meta("default", "before")).unwrap().lease;
    ledger.set_served_enis(Some(["eni-pods".to_string()].into_iter().collect()));
    for i in 0..16 {
        let name = format!("pod{i}");
        let l = ledger.allocate(key(&name), meta("default", &name)).unwrap().lease;
        assert_eq!(l.eni_id, "eni-pods", "{l:?}");
    }
    assert!(matches!(ledger.allocate(key("more"), meta("default", "more")), Err(LedgerError::NoFreeAddress)));
    assert_eq!(held.eni_id, "eni-primary", "the oldest free address first: {held:?}");
    assert!(ledger.lease(&key("before")).is_some(), "a lease on an unserved ENI stands");
    ledger.set_served_enis(None);
    assert_eq!(ledger.allocate(key("more"), meta("default", "more")).unwrap().lease.eni_id, "eni-primary");
}

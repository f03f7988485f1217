//! Leases rebuilt from the node after the ledger lost them: `adopt_addresses_in_use` adopts
//! provider addresses with the ones live pods use leased to them, in one operation;
//! `restore_leases` gives known free or cooling addresses back to the pods using them. Neither
//! takes an address someone holds, nor a key that holds a lease, and both survive a reopen.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use enipool_storage::*;

use common::{eni, ips_from, meta};

const START: UnixMillis = 1_700_000_000_000;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Ledger {
    let config =
        LedgerConfig { cooldown: Duration::from_secs(30), checkpoint_interval: None, ..LedgerConfig::default() };
    Ledger::open(dir, config, clock.clone() as Arc<dyn Clock>).unwrap()
}

fn pod(name: &str, ip: Ipv4Addr) -> Lease {
    Lease {
        key: LeaseKey::new("net", name, "eth0"),
        ip,
        eni_id: String::new(),
        meta: meta("default", name),
        created_at: START,
    }
}

#[test]
fn adopted_addresses_a_pod_uses_are_leased_to_it_and_the_rest_cool() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    ledger.add_eni(eni("eni-1", 0, Ipv4Addr::new(10, 0, 0, 10), true), &[]).unwrap();
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 4);
    let elsewhere = pod("elsewhere", Ipv4Addr::new(10, 9, 9, 9));
    let made = ledger
        .adopt_addresses_in_use("eni-1", &ips, START, vec![pod("a", ips[1]), pod("b", ips[1]), elsewhere])
        .unwrap();
    assert_eq!(made.len(), 1, "one pod per address, and only addresses being adopted: {made:?}");
    assert_eq!((made[0].key.container_id.as_str(), made[0].eni_id.as_str()), ("a", "eni-1"));
    // With the cooldown over, every other adopted address is handed out, never the pod's.
    clock.set(START + 1);
    for i in 0..3 {
        let got = ledger.allocate(LeaseKey::new("net", format!("new-{i}"), "eth0"), meta("d", "n")).unwrap();
        assert_ne!(got.lease.ip, ips[1]);
    }
    assert!(matches!(
        ledger.allocate(LeaseKey::new("net", "one-more", "eth0"), meta("d", "n")),
        Err(LedgerError::NoFreeAddress)
    ));
    ledger.check_invariants().unwrap();
    drop(ledger);
    let ledger = open(dir.path(), &clock);
    assert_eq!(ledger.lease(&LeaseKey::new("net", "a", "eth0")).unwrap().ip, ips[1], "durable");
}

#[test]
fn known_free_or_cooling_addresses_are_restored_to_their_pods_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 4);
    ledger.add_eni(eni("eni-1", 0, Ipv4Addr::new(10, 0, 0, 10), true), &ips).unwrap();
    let held = ledger.allocate(LeaseKey::new("net", "held", "eth0"), meta("d", "held")).unwrap().lease;
    let cooled = ledger.allocate(LeaseKey::new("net", "cooled", "eth0"), meta("d", "cooled")).unwrap().lease;
    ledger.release(&cooled.key).unwrap();
    let free = ips.iter().copied().find(|ip| *ip != held.ip && *ip != cooled.ip).unwrap();

    let made = ledger
        .restore_leases(vec![
            pod("x", held.ip),                          // someone holds it: skipped
            pod("cooled-pod", cooled.ip),               // we released it, yet a pod uses it
            pod("free-pod", free),                      // free
            pod("held", Ipv4Addr::new(10, 0, 0, 23)),   // the key holds a lease: skipped
            pod("unknown", Ipv4Addr::new(10, 9, 9, 9)), // not ours: skipped
        ])
        .unwrap();
    let keys: Vec<&str> = made.iter().map(|l| l.key.container_id.as_str()).collect();
    assert_eq!(keys, ["cooled-pod", "free-pod"]);
    assert_eq!(ledger.lease(&LeaseKey::new("net", "held", "eth0")).unwrap(), held);
    assert_eq!(ledger.lease_by_ip(free).unwrap().key.container_id, "free-pod");
    ledger.check_invariants().unwrap();
    drop(ledger);
    let ledger = open(dir.path(), &clock);
    assert_eq!(ledger.lease_by_ip(cooled.ip).unwrap().key.container_id, "cooled-pod", "durable");
}

#[test]
fn a_stale_lease_moves_to_the_pod_seen_using_its_address_without_passing_through_free() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 2);
    ledger.add_eni(eni("eni-1", 0, Ipv4Addr::new(10, 0, 0, 10), true), &ips).unwrap();
    let stale = ledger.allocate(LeaseKey::new("net", "stale", "eth0"), meta("d", "stale")).unwrap().lease;
    let other = ledger.allocate(LeaseKey::new("net", "other", "eth0"), meta("d", "other")).unwrap().lease;
    // Refused: another address, or a key that holds a lease.
    assert!(!ledger.rekey_lease(&stale.key, pod("live", other.ip)).unwrap());
    assert!(!ledger.rekey_lease(&stale.key, pod("other", stale.ip)).unwrap());
    assert!(ledger.rekey_lease(&stale.key, pod("live", stale.ip)).unwrap());
    assert_eq!(ledger.lease(&stale.key), None);
    let moved = ledger.lease_by_ip(stale.ip).unwrap();
    assert_eq!((moved.key.container_id.as_str(), moved.eni_id.as_str()), ("live", "eni-1"));
    assert_eq!(ledger.stats().addresses.leased, 2, "never free or cooling on the way");
    ledger.check_invariants().unwrap();
}

#[test]
fn a_lost_address_moved_to_the_live_pod_stays_lost() {
    // The provider no longer has the address (lost), and a stale lease holds it; the node shows
    // a live pod using it, so the lease moves to that pod. The address must stay lost: once the
    // pod goes it goes too, never through cooling into another pod's hands.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 2);
    ledger.add_eni(eni("eni-1", 0, Ipv4Addr::new(10, 0, 0, 10), true), &ips).unwrap();
    let stale = ledger.allocate(LeaseKey::new("net", "stale", "eth0"), meta("d", "stale")).unwrap().lease;
    assert_eq!(ledger.mark_lost(&[stale.ip]).unwrap().len(), 1);

    let live = pod("live", stale.ip);
    assert!(ledger.rekey_lease(&stale.key, live.clone()).unwrap());
    assert_eq!(ledger.address(stale.ip).unwrap().state, AddressState::Lost { key: live.key.clone() });
    assert_eq!(ledger.stats().lost, 1);
    ledger.check_invariants().unwrap();

    ledger.release(&live.key).unwrap();
    clock.set(START + 3_600_000);
    ledger.expire_cooldowns().unwrap();
    for i in 0..2 {
        match ledger.allocate(LeaseKey::new("net", format!("new-{i}"), "eth0"), meta("d", "n")) {
            Ok(a) => assert_ne!(a.lease.ip, stale.ip, "a lost address was handed out"),
            Err(e) => assert!(matches!(e, LedgerError::NoFreeAddress), "{e}"),
        }
    }
    drop(ledger);
    let ledger = open(dir.path(), &clock);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_lost_address_the_provider_gives_back_to_its_eni_is_leased_again() {
    // EC2 took the address away (lost), then assigned it to the same ENI again: the pod that
    // never stopped using it holds it as an ordinary lease once more, durably. Only a lost
    // address of that ENI is recovered.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 3);
    ledger.add_eni(eni("eni-1", 0, Ipv4Addr::new(10, 0, 0, 10), true), &ips).unwrap();
    ledger.add_eni(eni("eni-2", 1, Ipv4Addr::new(10, 0, 0, 11), true), &[]).unwrap();
    let pod_a = ledger.allocate(LeaseKey::new("net", "a", "eth0"), meta("d", "a")).unwrap().lease;
    let pod_b = ledger.allocate(LeaseKey::new("net", "b", "eth0"), meta("d", "b")).unwrap().lease;
    assert_eq!(ledger.mark_lost(&[pod_a.ip, pod_b.ip]).unwrap().len(), 2);

    assert!(ledger.recover_lost("eni-2", &[pod_a.ip]).unwrap().is_empty(), "not that ENI's address");
    let free = ips.iter().copied().find(|ip| *ip != pod_a.ip && *ip != pod_b.ip).unwrap();
    assert!(ledger.recover_lost("eni-1", &[free]).unwrap().is_empty(), "not lost");
    let recovered = ledger.recover_lost("eni-1", &[pod_a.ip, pod_a.ip]).unwrap();
    assert_eq!(recovered.iter().map(|l| &l.key).collect::<Vec<_>>(), [&pod_a.key]);
    assert_eq!(ledger.address(pod_a.ip).unwrap().state, AddressState::Leased { key: pod_a.key.clone() });
    assert_eq!(ledger.stats().lost, 1, "b is still lost");
    ledger.check_invariants().unwrap();
    drop(ledger);
    let ledger = open(dir.path(), &clock);
    assert_eq!(ledger.address(pod_a.ip).unwrap().state, AddressState::Leased { key: pod_a.key.clone() }, "durable");
    ledger.check_invariants().unwrap();
}

#[test]
fn a_detached_enis_primary_address_may_come_back_on_another_eni() {
    // EC2 deleted eni-1 behind our back; it stays here, detached, while its lost lease lasts.
    // EC2 reuses its primary address: as a new ENI's primary, or as a secondary address.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), &clock);
    let old_primary = Ipv4Addr::new(10, 0, 0, 10);
    let ips = ips_from(Ipv4Addr::new(10, 0, 0, 20), 1);
    ledger.add_eni(eni("eni-1", 1, old_primary, true), &ips).unwrap();
    let pod = ledger.allocate(LeaseKey::new("net", "a", "eth0"), meta("d", "a")).unwrap().lease;
    ledger.mark_lost(&[pod.ip]).unwrap();
    // Attached, its primary is nobody else's.
    assert!(matches!(
        ledger.add_eni(eni("eni-2", 2, old_primary, true), &[]),
        Err(LedgerError::AddressExists(ip)) if ip == old_primary
    ));
    ledger.set_eni_attached("eni-1", false).unwrap();
    ledger.add_eni(eni("eni-2", 2, old_primary, true), &[]).unwrap();
    ledger.add_eni(eni("eni-3", 3, Ipv4Addr::new(10, 0, 0, 11), true), &[]).unwrap();
    assert!(
        matches!(ledger.add_addresses("eni-3", &[old_primary]), Err(LedgerError::PrimaryAddress(_))),
        "eni-2's now"
    );
    // eni-1 cannot come back while eni-2 holds its primary.
    assert!(matches!(ledger.set_eni_attached("eni-1", true), Err(LedgerError::AddressExists(_))));
    ledger.check_invariants().unwrap();
    drop(ledger);
    let ledger = open(dir.path(), &clock);
    ledger.check_invariants().unwrap();
    // Once its lost lease goes, eni-1 goes.
    ledger.release(&pod.key).unwrap();
    ledger.remove_eni("eni-1").unwrap();
    ledger.check_invariants().unwrap();
}

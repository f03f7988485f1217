//! Ledgers written by older schemas open, migrated in place, with nothing lost. The fixtures
//! under `fixtures/` were written by the old code itself (see their README).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enipool_storage::*;

/// The fixtures' cooldown.
const COOLDOWN_MS: u64 = 3_600_000;

/// A ledger an older schema wrote (see the README beside each).
#[derive(Clone, Copy)]
struct Old {
    dir: &'static str,
    version: u32,
    /// The fixture's clock when it was written.
    written_at: u64,
    /// Whether its history ends with a lease marked lost (schema 2's record).
    has_lost: bool,
}

const V1: Old = Old { dir: "ledger-v1", version: 1, written_at: 1_790_000_000_000, has_lost: false };
const V2: Old = Old { dir: "ledger-v2", version: 2, written_at: 1_795_000_000_000, has_lost: true };

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn fixture(old: Old, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(old.dir).join(name);
    copy_dir(&from, dir.path());
    dir
}

fn open_at(dir: &Path, now: u64) -> Ledger {
    let config = LedgerConfig { cooldown: Duration::from_millis(COOLDOWN_MS), ..Default::default() };
    Ledger::open(dir, config, Arc::new(ManualClock::new(now))).unwrap_or_else(|e| panic!("opening {dir:?}: {e}"))
}

fn key(container: &str) -> LeaseKey {
    LeaseKey::new("enipool", container, "eth0")
}

fn schema_on_disk(dir: &Path) -> u32 {
    let db = sled::Config::new().path(dir.join("sled")).open().unwrap();
    let v = db.open_tree("meta").unwrap().get("schema_version").unwrap().expect("a schema version");
    u32::from_be_bytes(v.as_ref().try_into().unwrap())
}

/// What the fixture's history left, as the current code sees it.
fn assert_fixture_state(old: Old, ledger: &Ledger) {
    ledger.check_invariants().unwrap();
    assert_eq!(ledger.enis().len(), 2);
    let web = ledger.lease(&key("c-web-0")).expect("the pod's lease");
    assert_eq!(web.meta.netns.as_deref(), Some("/var/run/netns/cni-web-0"));
    assert_eq!(web.meta.host_veth.as_deref(), Some("eni1a2b3c4d5e6"));
    assert_eq!(web.meta.pod_name.as_deref(), Some("web-0"));
    assert_eq!(web.created_at, old.written_at);
    let api_only = ledger.lease(&key("c-api-only")).expect("the API-only lease");
    assert_eq!(api_only.meta, LeaseMeta::default());
    assert_ne!(api_only.ip, web.ip);
    assert!(ledger.lease(&key("c-gone")).is_none(), "the released lease stays released");

    let stats = ledger.stats();
    let lost = usize::from(old.has_lost);
    assert_eq!(stats.addresses.total, 8 - lost, "a lost address is not held");
    assert_eq!(stats.addresses.leased, 2);
    assert_eq!(stats.addresses.cooling, 1);
    assert_eq!(stats.lost, lost);
    assert_eq!((stats.prefixes, ledger.prefixes(None).len()), (0, 0), "no prefixes before schema 3");
    if old.has_lost {
        let l = ledger.lease(&key("c-lost")).expect("the lost lease stands");
        assert_eq!(ledger.address(l.ip).unwrap().state, AddressState::Lost { key: key("c-lost") });
    }
    let cooling: Vec<_> =
        ledger.addresses(None).into_iter().filter(|a| matches!(a.state, AddressState::Cooling { .. })).collect();
    assert_eq!(cooling.len(), 1);
    assert_eq!(cooling[0].state, AddressState::Cooling { until: old.written_at + COOLDOWN_MS });
    assert_eq!(cooling[0].last_released, Some(old.written_at));
}

/// Every address but the cooling one is handed out before it, and it only once its cooldown ends.
fn assert_cooldown_holds(old: Old, dir: &Path) {
    let ledger = open_at(dir, old.written_at + 1_000);
    let cooling_ip: Ipv4Addr = ledger
        .addresses(None)
        .into_iter()
        .find(|a| matches!(a.state, AddressState::Cooling { .. }))
        .expect("a cooling address")
        .ip;
    for i in 0..5 - usize::from(old.has_lost) {
        let lease = ledger.allocate(key(&format!("new-{i}")), LeaseMeta::default()).unwrap().lease;
        assert_ne!(lease.ip, cooling_ip, "a cooling address was handed out");
    }
    assert!(ledger.allocate(key("one-too-many"), LeaseMeta::default()).is_err(), "only the cooling address is left");
    ledger.close().unwrap();
    let ledger = open_at(dir, old.written_at + COOLDOWN_MS);
    assert_eq!(ledger.allocate(key("after-cooldown"), LeaseMeta::default()).unwrap().lease.ip, cooling_ip);
    ledger.close().unwrap();
}

/// How the first open must have found the state.
struct Expect {
    from_image: bool,
    replayed_records: u64,
}

fn migrates(old: Old, name: &str, remove_image: bool, expect: Expect) {
    let dir = fixture(old, name);
    if remove_image {
        std::fs::remove_file(dir.path().join("image")).unwrap();
    }
    assert_eq!(schema_on_disk(dir.path()), old.version, "the fixture's schema");
    let ledger = open_at(dir.path(), old.written_at + 1_000);
    let recovery = ledger.recovery();
    assert_eq!((recovery.from_image, recovery.replayed_records), (expect.from_image, expect.replayed_records));
    assert_fixture_state(old, &ledger);
    ledger.close().unwrap();
    assert_eq!(schema_on_disk(dir.path()), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 3);
    // Opened again, now as a current ledger, the same state.
    let ledger = open_at(dir.path(), old.written_at + 2_000);
    assert_fixture_state(old, &ledger);
    ledger.close().unwrap();
    assert_cooldown_holds(old, dir.path());
    // What the new schema adds works on the migrated ledger, and is durable.
    let prefix: ipnet::Ipv4Net = "10.9.0.16/28".parse().unwrap();
    let ledger = open_at(dir.path(), old.written_at + COOLDOWN_MS);
    ledger.add_prefixes("eni-0bbb", &[prefix], None, Vec::new()).unwrap();
    ledger.close().unwrap();
    let ledger = open_at(dir.path(), old.written_at + COOLDOWN_MS);
    assert!(ledger.recovery().from_image);
    assert_eq!(ledger.prefixes(Some("eni-0bbb")).iter().map(|p| p.cidr).collect::<Vec<_>>(), [prefix]);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_cleanly_closed_version_1_ledger_opens_from_its_image_migrated() {
    migrates(V1, "clean", false, Expect { from_image: true, replayed_records: 0 });
}

#[test]
fn a_cleanly_closed_version_1_ledger_opens_from_sled_migrated() {
    migrates(V1, "clean", true, Expect { from_image: false, replayed_records: 0 });
}

#[test]
fn a_crashed_version_1_ledger_replays_its_log_migrated() {
    // Two ENIs added, three leases, one release: six records.
    migrates(V1, "crashed", false, Expect { from_image: false, replayed_records: 6 });
}

#[test]
fn a_cleanly_closed_version_2_ledger_opens_from_its_image_migrated() {
    migrates(V2, "clean", false, Expect { from_image: true, replayed_records: 0 });
}

#[test]
fn a_cleanly_closed_version_2_ledger_opens_from_sled_migrated() {
    migrates(V2, "clean", true, Expect { from_image: false, replayed_records: 0 });
}

#[test]
fn a_crashed_version_2_ledger_replays_its_log_migrated() {
    // Two ENIs added, four leases, one release, one marked lost: eight records.
    migrates(V2, "crashed", false, Expect { from_image: false, replayed_records: 8 });
}

//! Ledgers written by older schemas open, migrated in place, with nothing lost. The fixtures
//! under `fixtures/` were written by the old code itself (see their README).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enipool_storage::*;

/// The fixture's clock when it was written, and its cooldown.
const WRITTEN_AT: u64 = 1_790_000_000_000;
const COOLDOWN_MS: u64 = 3_600_000;

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

fn fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-v1").join(name);
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
fn assert_fixture_state(ledger: &Ledger) {
    ledger.check_invariants().unwrap();
    assert_eq!(ledger.enis().len(), 2);
    let web = ledger.lease(&key("c-web-0")).expect("the pod's lease");
    assert_eq!(web.meta.netns.as_deref(), Some("/var/run/netns/cni-web-0"));
    assert_eq!(web.meta.host_veth.as_deref(), Some("eni1a2b3c4d5e6"));
    assert_eq!(web.meta.pod_name.as_deref(), Some("web-0"));
    assert_eq!(web.created_at, WRITTEN_AT);
    let api_only = ledger.lease(&key("c-api-only")).expect("the API-only lease");
    assert_eq!(api_only.meta, LeaseMeta::default());
    assert_ne!(api_only.ip, web.ip);
    assert!(ledger.lease(&key("c-gone")).is_none(), "the released lease stays released");

    let stats = ledger.stats();
    assert_eq!(stats.addresses.total, 8);
    assert_eq!(stats.addresses.leased, 2);
    assert_eq!(stats.addresses.cooling, 1);
    assert_eq!(stats.lost, 0);
    let cooling: Vec<_> =
        ledger.addresses(None).into_iter().filter(|a| matches!(a.state, AddressState::Cooling { .. })).collect();
    assert_eq!(cooling.len(), 1);
    assert_eq!(cooling[0].state, AddressState::Cooling { until: WRITTEN_AT + COOLDOWN_MS });
    assert_eq!(cooling[0].last_released, Some(WRITTEN_AT));
}

/// Every address but the cooling one is handed out before it, and it only once its cooldown ends.
fn assert_cooldown_holds(dir: &Path) {
    let ledger = open_at(dir, WRITTEN_AT + 1_000);
    let cooling_ip: Ipv4Addr = ledger
        .addresses(None)
        .into_iter()
        .find(|a| matches!(a.state, AddressState::Cooling { .. }))
        .expect("a cooling address")
        .ip;
    for i in 0..5 {
        let lease = ledger.allocate(key(&format!("new-{i}")), LeaseMeta::default()).unwrap().lease;
        assert_ne!(lease.ip, cooling_ip, "a cooling address was handed out");
    }
    assert!(ledger.allocate(key("one-too-many"), LeaseMeta::default()).is_err(), "only the cooling address is left");
    ledger.close().unwrap();
    let ledger = open_at(dir, WRITTEN_AT + COOLDOWN_MS);
    assert_eq!(ledger.allocate(key("after-cooldown"), LeaseMeta::default()).unwrap().lease.ip, cooling_ip);
    ledger.close().unwrap();
}

/// How the first open must have found the state.
struct Expect {
    from_image: bool,
    replayed_records: u64,
}

fn migrates(name: &str, remove_image: bool, expect: Expect) {
    let dir = fixture(name);
    if remove_image {
        std::fs::remove_file(dir.path().join("image")).unwrap();
    }
    assert_eq!(schema_on_disk(dir.path()), 1, "the fixture is a version-1 ledger");
    let ledger = open_at(dir.path(), WRITTEN_AT + 1_000);
    let recovery = ledger.recovery();
    assert_eq!((recovery.from_image, recovery.replayed_records), (expect.from_image, expect.replayed_records));
    assert_fixture_state(&ledger);
    ledger.close().unwrap();
    assert_eq!(schema_on_disk(dir.path()), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 2);
    // Opened again, now as a version-2 ledger, the same state.
    let ledger = open_at(dir.path(), WRITTEN_AT + 2_000);
    assert_fixture_state(&ledger);
    ledger.close().unwrap();
    assert_cooldown_holds(dir.path());
}

#[test]
fn a_cleanly_closed_version_1_ledger_opens_from_its_image_migrated() {
    migrates("clean", false, Expect { from_image: true, replayed_records: 0 });
}

#[test]
fn a_cleanly_closed_version_1_ledger_opens_from_sled_migrated() {
    migrates("clean", true, Expect { from_image: false, replayed_records: 0 });
}

#[test]
fn a_crashed_version_1_ledger_replays_its_log_migrated() {
    // Two ENIs added, three leases, one release: six records.
    migrates("crashed", false, Expect { from_image: false, replayed_records: 6 });
}

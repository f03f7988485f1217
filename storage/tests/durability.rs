//! Durability: acknowledgements wait for a covering sync, a torn log tail recovers to a record
//! boundary, cooldowns and allocation order survive restarts, and damaged, foreign, newer or
//! locked ledgers are refused with an error naming their directory.

mod common;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use enipool_storage::*;

use common::{Observed, copy_dir, eni, files_under, ips_from, meta, observe, wal_segments};

const START: UnixMillis = 1_700_000_000_000;
/// How long a test gives a wrongly early acknowledgement to show up before it lets the sync it
/// holds back finish. Only the failing case depends on it; a correct ledger passes either way.
const EARLY_ACK_WINDOW: Duration = Duration::from_millis(300);

fn key(name: &str) -> LeaseKey {
    LeaseKey::new("net", name, "eth0")
}

fn first_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1)
}

fn config(cooldown: Duration) -> LedgerConfig {
    LedgerConfig {
        cooldown,
        checkpoint_interval: None,
        // Segments (and the spare the log keeps ready) are zero-filled to this size on open.
        wal_segment_bytes: 64 << 10,
        cache_bytes: 4 << 20,
        ..LedgerConfig::default()
    }
}

fn open(dir: &Path, config: LedgerConfig, clock: &Arc<ManualClock>) -> Result<Ledger, OpenError> {
    Ledger::open(dir, config, clock.clone() as Arc<dyn Clock>)
}

/// A ledger with one attached ENI of `n` addresses from 10.0.0.1.
fn ledger_with_eni(dir: &Path, config: LedgerConfig, clock: &Arc<ManualClock>, n: u32) -> Ledger {
    let ledger = open(dir, config, clock).expect("a new ledger opens");
    ledger.add_eni(eni("eni-1", 1, Ipv4Addr::new(10, 0, 255, 1), true), &ips_from(first_ip(), n)).expect("add the ENI");
    ledger
}

// ---------------------------------------------------------------------------------------------
// a. Acknowledgements and syncs, seen through the observer
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Synced(u64),
    Acked(u64),
}

#[derive(Default)]
struct Gate {
    /// The next sync report waits in the observer until `release`.
    armed: bool,
    holding: bool,
}

/// Records every sync and acknowledgement in the order the ledger reports them. Armed, it holds
/// the next sync report back, as if the thread that synced were preempted right there.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

impl SyncObserver for Recorder {
    fn synced(&self, upto: u64) {
        let mut gate = self.gate.lock().unwrap();
        if gate.armed {
            gate.armed = false;
            gate.holding = true;
            self.gate_changed.notify_all();
            while gate.holding {
                gate = self.gate_changed.wait(gate).unwrap();
            }
        }
        drop(gate);
        self.events.lock().unwrap().push(Event::Synced(upto));
    }

    fn acknowledged(&self, seq: u64) {
        self.events.lock().unwrap().push(Event::Acked(seq));
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn arm(&self) {
        self.gate.lock().unwrap().armed = true;
    }

    /// Waits until a sync report is being held back.
    fn wait_holding(&self) {
        let mut gate = self.gate.lock().unwrap();
        while !gate.holding {
            gate = self.gate_changed.wait(gate).unwrap();
        }
    }

    fn release(&self) {
        self.gate.lock().unwrap().holding = false;
        self.gate_changed.notify_all();
    }
}

/// Every acknowledgement must come after a sync covering it (or be of a record that was durable
/// when the ledger opened).
fn check_acks_follow_syncs(events: &[Event], durable_at_open: u64) -> Result<(), String> {
    let mut synced = durable_at_open;
    for (i, event) in events.iter().enumerate() {
        match *event {
            Event::Synced(upto) => synced = synced.max(upto),
            Event::Acked(seq) if seq > synced => {
                let around = &events[i.saturating_sub(4)..(i + 4).min(events.len())];
                return Err(format!(
                    "event {i}: Acked({seq}) reported when syncs covered only up to {synced}; around it: {around:?}"
                ));
            }
            Event::Acked(_) => {}
        }
    }
    Ok(())
}

fn observed_config(recorder: &Arc<Recorder>) -> LedgerConfig {
    LedgerConfig { sync_observer: Some(recorder.clone() as Arc<dyn SyncObserver>), ..config(Duration::ZERO) }
}

#[test]
fn sequential_operations_each_sync_before_they_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 32);

    let syncs_before = ledger.sync_count();
    let events_before = recorder.events().len();
    let mut mutating = 0u64;
    let mut calls = 0usize;
    for i in 0..50 {
        let k = key(&format!("c{i}"));
        let a = ledger.allocate(k.clone(), LeaseMeta::default()).unwrap();
        assert!(a.created);
        assert_eq!(ledger.durable_seq(), ledger.last_seq(), "allocate returned before its record was durable");
        // Calls that change nothing still acknowledge, without a sync of their own.
        assert!(!ledger.allocate(k.clone(), LeaseMeta::default()).unwrap().created);
        assert_eq!(ledger.release(&key("never-leased")).unwrap(), None);
        assert!(ledger.release(&k).unwrap().is_some());
        assert_eq!(ledger.durable_seq(), ledger.last_seq(), "release returned before its record was durable");
        mutating += 2;
        calls += 4;
    }
    let syncs = ledger.sync_count() - syncs_before;
    assert!(syncs >= mutating, "{syncs} syncs for {mutating} sequential mutating operations");

    let events = recorder.events();
    check_acks_follow_syncs(&events, 0).unwrap();
    let new = &events[events_before..];
    let acks = new.iter().filter(|e| matches!(e, Event::Acked(_))).count();
    let synced = new.iter().filter(|e| matches!(e, Event::Synced(_))).count() as u64;
    assert_eq!(acks, calls, "every call is acknowledged once");
    assert_eq!(synced, syncs, "every sync is reported");
}

#[test]
fn concurrent_callers_share_syncs_and_each_is_acknowledged_after_one() {
    const THREADS: usize = 16;
    const PAIRS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 64);

    let syncs_before = ledger.sync_count();
    let events_before = recorder.events().len();
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (ledger, start) = (&ledger, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..PAIRS {
                    let k = key(&format!("t{t}-{i}"));
                    let a = ledger.allocate(k.clone(), LeaseMeta::default()).unwrap();
                    assert_eq!(ledger.release(&k).unwrap().map(|l| l.ip), Some(a.lease.ip));
                }
            });
        }
    });
    let ops = (THREADS * PAIRS * 2) as u64;
    check_concurrent_run(&ledger, &recorder, ledger.sync_count() - syncs_before, events_before, ops);
}

/// After `ops` concurrent operations that left no lease: they shared syncs, all are durable and
/// acknowledged once each, every acknowledgement after the sync that covers it.
fn check_concurrent_run(ledger: &Ledger, recorder: &Recorder, syncs: u64, events_before: usize, ops: u64) {
    assert!(syncs < ops, "{syncs} syncs for {ops} concurrent operations: no sync was shared");
    assert_eq!(ledger.durable_seq(), ledger.last_seq());
    assert!(ledger.leases(&LeaseFilter::default()).is_empty());
    ledger.check_invariants().unwrap();

    let events = recorder.events();
    let acks = events[events_before..].iter().filter(|e| matches!(e, Event::Acked(_))).count() as u64;
    assert_eq!(acks, ops, "every operation is acknowledged once");
    check_acks_follow_syncs(&events, 0).unwrap();
}

/// A repeated allocation finds the lease in memory while the record that made it is still waiting
/// for its sync (behind a sync that is held back); it must not return before that record is
/// synced.
#[test]
fn repeat_allocate_waits_for_the_sync_of_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 8);
    let k = key("original");

    let (ledger, recorder, k) = (&ledger, &recorder, &k);
    std::thread::scope(|s| {
        recorder.arm();
        // X's sync completes but its report is held: X stays the leader, so the next record waits.
        let x = s.spawn(move || ledger.allocate(key("x"), LeaseMeta::default()).unwrap());
        recorder.wait_holding();
        let original = s.spawn(move || ledger.allocate(k.clone(), LeaseMeta::default()).unwrap());
        // The original's record is committed (visible in memory) but cannot be synced yet.
        while ledger.lease(k).is_none() {
            std::thread::yield_now();
        }
        let original_seq = ledger.last_seq();
        assert!(ledger.durable_seq() < original_seq);

        let (repeat_tx, repeat_rx) = mpsc::channel();
        let repeat = s.spawn(move || {
            let a = ledger.allocate(key("original"), LeaseMeta::default()).unwrap();
            repeat_tx.send(()).unwrap();
            a
        });
        let early = repeat_rx.recv_timeout(EARLY_ACK_WINDOW).is_ok();
        recorder.release();
        let (x, original, repeat) = (x.join().unwrap(), original.join().unwrap(), repeat.join().unwrap());
        assert!(!early, "the repeated allocation returned while its lease's record ({original_seq}) was not synced");
        assert!(x.created && original.created && !repeat.created);
        assert_eq!(repeat.lease, original.lease);

        let events = recorder.events();
        check_acks_follow_syncs(&events, 0).unwrap();
        // Both the original and the repeat are acknowledged as `original_seq`, after its sync.
        let first_sync = events.iter().position(|e| matches!(e, Event::Synced(u) if *u >= original_seq)).unwrap();
        let acks: Vec<usize> = (0..events.len()).filter(|&i| events[i] == Event::Acked(original_seq)).collect();
        assert_eq!(acks.len(), 2, "{events:?}");
        assert!(acks.iter().all(|&i| i > first_sync), "{events:?}");
    });
}

/// The sync of the original has returned but has not been reported to the observer yet (its
/// report is held back, as a preempted leader's would be). A repeated allocation must still not be
/// reported acknowledged before the sync that covers it; otherwise the observer cannot prove the
/// ordering it exists to prove.
#[test]
fn no_acknowledgement_is_reported_before_the_sync_covering_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 8);
    let k = key("original");

    let (ledger, recorder, k) = (&ledger, &recorder, &k);
    std::thread::scope(|s| {
        recorder.arm();
        let original = s.spawn(move || ledger.allocate(k.clone(), LeaseMeta::default()).unwrap());
        recorder.wait_holding();
        let original_seq = ledger.last_seq();

        let (repeat_tx, repeat_rx) = mpsc::channel();
        let repeat = s.spawn(move || {
            let a = ledger.allocate(key("original"), LeaseMeta::default()).unwrap();
            repeat_tx.send(()).unwrap();
            a
        });
        let _ = repeat_rx.recv_timeout(EARLY_ACK_WINDOW);
        recorder.release();
        let (original, repeat) = (original.join().unwrap(), repeat.join().unwrap());
        assert!(original.created && !repeat.created);
        assert_eq!(repeat.lease, original.lease);

        let events = recorder.events();
        if let Err(e) = check_acks_follow_syncs(&events, 0) {
            panic!("the repeat of record {original_seq} was reported acknowledged before its sync was: {e}");
        }
    });
}

#[test]
fn concurrent_async_callers_share_syncs_and_each_is_acknowledged_after_one() {
    const TASKS: usize = 64;
    const PAIRS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 128);

    let syncs_before = ledger.sync_count();
    let events_before = recorder.events().len();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for i in 0..PAIRS {
                        let k = key(&format!("t{t}-{i}"));
                        let a = ledger.allocate_async(k.clone(), LeaseMeta::default()).await.unwrap();
                        let released = ledger.release_async(&k).await.unwrap();
                        assert_eq!(released.map(|l| l.ip), Some(a.lease.ip));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let ops = (TASKS * PAIRS * 2) as u64;
    check_concurrent_run(&ledger, &recorder, ledger.sync_count() - syncs_before, events_before, ops);
}

/// The daemon's lease requests await their sync on the runtime's own threads. While a sync is
/// under way (here: held back), an async allocation is pending and its thread goes on running
/// other work; it completes, acknowledged after a sync that covers it, once the syncs go on.
#[test]
fn an_async_caller_waits_for_a_busy_log_without_holding_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let ledger = ledger_with_eni(dir.path(), observed_config(&recorder), &clock, 8);
    let held = key("held");

    recorder.arm();
    let (free_tx, free_rx) = mpsc::channel();
    std::thread::scope(|s| {
        // The log is idle: this caller syncs on its own thread, and that sync is held back.
        let first = s.spawn(|| ledger.allocate(key("first"), LeaseMeta::default()));
        recorder.wait_holding();
        let runtime_thread = s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let allocation = tokio::spawn({
                    let (ledger, held) = (ledger.clone(), held.clone());
                    async move { ledger.allocate_async(held, LeaseMeta::default()).await }
                });
                // Runs only if the allocation's task gave the thread back.
                while ledger.lease(&held).is_none() {
                    tokio::task::yield_now().await;
                }
                free_tx.send(ledger.durable_seq() < ledger.last_seq()).unwrap();
                allocation.await.unwrap().unwrap()
            })
        });
        // Generous: only a failing ledger (one whose allocation blocks its thread) waits it out.
        let free = free_rx.recv_timeout(Duration::from_secs(10));
        recorder.release();
        assert!(first.join().unwrap().unwrap().created);
        let allocation = runtime_thread.join().unwrap();
        assert_eq!(free, Ok(true), "the async allocation held its thread while the log was busy");
        assert!(allocation.created);
        assert_eq!(ledger.durable_seq(), ledger.last_seq());
        check_acks_follow_syncs(&recorder.events(), 0).unwrap();
    });
}

/// The name of the thread that ran each sync.
#[derive(Default)]
struct SyncThreads(Mutex<Vec<Option<String>>>);

impl SyncObserver for SyncThreads {
    fn synced(&self, _upto: u64) {
        self.0.lock().unwrap().push(std::thread::current().name().map(String::from));
    }
    fn acknowledged(&self, _seq: u64) {}
}

/// Uncontended (the syncer asleep and nobody waiting: an idle daemon's one request), a caller
/// syncs on its own thread, blocking or async: no hand-over to the syncer thread and no wake-up
/// back, which cost more than the fdatasync on an idle machine.
#[test]
fn an_uncontended_caller_syncs_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let threads = Arc::new(SyncThreads::default());
    let config =
        LedgerConfig { sync_observer: Some(threads.clone() as Arc<dyn SyncObserver>), ..config(Duration::ZERO) };
    let ledger = ledger_with_eni(dir.path(), config, &clock, 8);
    threads.0.lock().unwrap().clear();
    let caller = |name: &str, async_caller: bool| {
        let ledger = ledger.clone();
        let key = key(name);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if async_caller {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    rt.block_on(ledger.allocate_async(key, LeaseMeta::default()))
                } else {
                    ledger.allocate(key, LeaseMeta::default())
                }
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap()
    };
    assert!(caller("blocking-caller", false).created);
    assert!(caller("async-caller", true).created);
    let ran_on = threads.0.lock().unwrap().clone();
    assert_eq!(ran_on, [Some("blocking-caller".to_string()), Some("async-caller".to_string())]);
    assert_eq!(ledger.durable_seq(), ledger.last_seq());
}

/// Both observers at once: the gate that holds a sync back, and the thread each sync ran on.
struct GatedThreads(Arc<Recorder>, Arc<SyncThreads>);

impl SyncObserver for GatedThreads {
    fn synced(&self, upto: u64) {
        self.1.synced(upto);
        self.0.synced(upto);
    }
    fn acknowledged(&self, seq: u64) {
        self.0.acknowledged(seq);
    }
}

/// After a sync that covered several callers' records the log counts as busy: the next caller
/// hands its record to the syncer even if it finds nobody waiting (under load, the first caller
/// after each batch syncing alone on a runtime worker made the daemon slower at 64 clients).
/// Once a sync covers one record again, callers sync in place again.
#[test]
fn a_caller_after_a_batch_leaves_the_sync_to_the_syncer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let recorder = Arc::new(Recorder::default());
    let threads = Arc::new(SyncThreads::default());
    let observer = GatedThreads(recorder.clone(), threads.clone());
    let config =
        LedgerConfig { sync_observer: Some(Arc::new(observer) as Arc<dyn SyncObserver>), ..config(Duration::ZERO) };
    let ledger = ledger_with_eni(dir.path(), config, &clock, 8);
    threads.0.lock().unwrap().clear();
    let start = ledger.last_seq();
    let caller = |name: &str| {
        let (ledger, key) = (ledger.clone(), key(name));
        std::thread::Builder::new().name(name.into()).spawn(move || ledger.allocate(key, LeaseMeta::default())).unwrap()
    };

    recorder.arm();
    let first = caller("first");
    recorder.wait_holding();
    // Two more records queue up while the first sync is held back: one sync takes both.
    let batch = [caller("batch-1"), caller("batch-2")];
    while ledger.last_seq() < start + 3 {
        std::thread::yield_now();
    }
    recorder.release();
    for t in std::iter::once(first).chain(batch) {
        assert!(t.join().unwrap().unwrap().created);
    }
    let synced: Vec<u64> = recorder
        .events()
        .iter()
        .filter_map(|e| if let Event::Synced(upto) = e { Some(*upto).filter(|u| *u > start) } else { None })
        .collect();
    assert_eq!(synced, [start + 1, start + 3], "the batch's two records were not synced together");

    assert!(caller("after-batch").join().unwrap().unwrap().created);
    assert!(caller("alone-again").join().unwrap().unwrap().created);
    let ran_on = threads.0.lock().unwrap().clone();
    assert_eq!(ran_on[0].as_deref(), Some("first"));
    assert_eq!(ran_on[2..], [Some("wal-sync".to_string()), Some("alone-again".to_string())]);
    assert_eq!(ledger.durable_seq(), ledger.last_seq());
    check_acks_follow_syncs(&recorder.events(), start).unwrap();
}

// ---------------------------------------------------------------------------------------------
// b. A torn tail, cut at every byte
// ---------------------------------------------------------------------------------------------

/// The end offsets of the records at the start of a log segment, read by the documented frame
/// format (`[len: u32 LE][crc32: u32 LE][seq: u64 LE][body]`, `len` counting seq and body; a zero
/// length is unused, zero-filled space), with each record's sequence number.
fn record_ends(segment: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let seq = u64::from_le_bytes(segment[at + 8..at + 16].try_into().unwrap());
        at += 8 + len;
        out.push((seq, at as u64));
    }
    out
}

#[test]
fn a_log_cut_at_any_byte_recovers_exactly_its_complete_records() {
    let clock = Arc::new(ManualClock::new(START));
    let cfg = LedgerConfig { wal_segment_bytes: 4 << 10, ..config(Duration::from_secs(10)) };
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_eni(dir.path(), cfg.clone(), &clock, 8);

    // A: acknowledged and in sled (a clean close), so the log starts empty.
    ledger.allocate(key("a0"), meta("ns", "a0")).unwrap();
    ledger.allocate(key("a1"), meta("ns", "a1")).unwrap();
    clock.advance(5);
    ledger.release(&key("a0")).unwrap();
    clock.advance(20_000);
    ledger.close().unwrap();
    assert!(wal_segments(dir.path()).is_empty(), "a clean close empties the log");
    let snapshot = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), snapshot.path());

    // B: acknowledged, in the log only. The clock stands still, so what each state shows (and its
    // stats) does not depend on when it is looked at.
    let ledger = open(dir.path(), cfg.clone(), &clock).unwrap();
    let a_seq = ledger.last_seq();
    let mut expected: Vec<Observed> = vec![observe(&ledger)];
    let mut ends: Vec<u64> = vec![0];
    let b_ops: Vec<fn(&Ledger)> = vec![
        |l| assert!(l.allocate(key("b0"), meta("ns", "b0")).unwrap().created),
        |l| assert!(l.release(&key("a1")).unwrap().is_some()),
        |l| l.set_eni_attached("eni-1", false).unwrap(),
        |l| l.set_eni_attached("eni-1", true).unwrap(),
        |l| assert!(l.allocate(key("b1"), LeaseMeta::default()).unwrap().created),
        |l| assert_eq!(l.expire_cooldowns().unwrap(), 1),
    ];
    for (i, op) in b_ops.iter().enumerate() {
        op(&ledger);
        // By the time the call returned, its record was in the segment, after the earlier ones.
        let segments = wal_segments(dir.path());
        assert_eq!(segments.len(), 1, "{segments:?}");
        let records = record_ends(&fs::read(&segments[0]).unwrap());
        let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (a_seq + 1..=a_seq + 1 + i as u64).collect::<Vec<_>>());
        ends.push(records[i].1);
        expected.push(observe(&ledger));
    }
    let segment = wal_segments(dir.path()).remove(0);
    let segment_name = segment.file_name().unwrap().to_owned();
    ledger.simulate_crash();
    let log = fs::read(&segment).unwrap();
    let used = *ends.last().unwrap() as usize;
    assert!(log[used..].iter().all(|&b| b == 0), "the segment is zero-filled after its records");

    // Every cut within the records, and a few in the zero-filled rest.
    let cuts = (0..=used).chain([used + 1, used + 8, (used + log.len()) / 2, log.len() - 1, log.len()]);
    for cut in cuts {
        let restored = tempfile::tempdir().unwrap();
        copy_dir(snapshot.path(), restored.path());
        fs::write(restored.path().join("wal").join(&segment_name), &log[..cut]).unwrap();
        let ledger = open(restored.path(), cfg.clone(), &clock)
            .unwrap_or_else(|e| panic!("cut at {cut} of {}: open failed: {e}", log.len()));
        let complete = ends.iter().rposition(|&end| end <= cut as u64).unwrap();
        assert_eq!(observe(&ledger), expected[complete], "cut at byte {cut}: expected the first {complete} records");
        // The torn part is what was written of the incomplete record, up to its last non-zero
        // byte (zeros are indistinguishable from the segment's unused space).
        let after = &log[ends[complete] as usize..cut];
        let torn = after.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
        // (Whether the base state came from the image the snapshot holds is beside the point.)
        let report = ledger.recovery();
        assert_eq!(
            RecoveryReport { from_image: false, ..report },
            RecoveryReport { replayed_records: complete as u64, torn_tail_bytes: torn, from_image: false },
            "cut at byte {cut}"
        );
        ledger.check_invariants().unwrap();

        // Now and then: the log goes on after the cut, and what is written next survives a crash.
        if cut % 37 == 5 {
            let extra = Ipv4Addr::new(10, 0, 0, 200);
            ledger.add_addresses("eni-1", &[extra]).unwrap();
            ledger.simulate_crash();
            let again = open(restored.path(), cfg.clone(), &clock).unwrap();
            assert!(again.address(extra).is_some(), "cut at byte {cut}: a write after recovery was lost");
            assert_eq!(again.recovery().torn_tail_bytes, 0);
            again.close().unwrap();
        } else {
            ledger.close().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// c. Cooldowns survive a restart; d. allocation order
// ---------------------------------------------------------------------------------------------

fn cooldown_survives(crash: bool) {
    let clock = Arc::new(ManualClock::new(START));
    let cfg = config(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_eni(dir.path(), cfg.clone(), &clock, 2);
    let (a, b) = (first_ip(), Ipv4Addr::new(10, 0, 0, 2));

    assert_eq!(ledger.allocate(key("k1"), LeaseMeta::default()).unwrap().lease.ip, a);
    clock.advance(1_000);
    let released_at = clock.now();
    ledger.release(&key("k1")).unwrap();
    if crash {
        ledger.simulate_crash();
    } else {
        ledger.close().unwrap();
    }

    let ledger = open(dir.path(), cfg, &clock).unwrap();
    let rec = ledger.address(a).unwrap();
    assert_eq!(rec.state, AddressState::Cooling { until: released_at + 10_000 });
    assert_eq!(rec.last_released, Some(released_at));
    assert_eq!(ledger.stats().addresses, Counts { total: 2, free: 1, leased: 0, cooling: 1 });
    assert_eq!(ledger.allocate(key("k2"), LeaseMeta::default()).unwrap().lease.ip, b, "a cooling address was leased");
    assert!(matches!(ledger.allocate(key("k3"), LeaseMeta::default()), Err(LedgerError::NoFreeAddress)));
    clock.advance(9_999);
    assert!(matches!(ledger.allocate(key("k3"), LeaseMeta::default()), Err(LedgerError::NoFreeAddress)));
    assert_eq!(ledger.expire_cooldowns().unwrap(), 0);
    clock.advance(1);
    assert_eq!(ledger.stats().addresses, Counts { total: 2, free: 1, leased: 1, cooling: 0 });
    assert_eq!(ledger.allocate(key("k3"), LeaseMeta::default()).unwrap().lease.ip, a);
    ledger.close().unwrap();
}

#[test]
fn a_cooldown_survives_a_clean_restart() {
    cooldown_survives(false);
}

#[test]
fn a_cooldown_survives_a_crash() {
    cooldown_survives(true);
}

/// The wall clock can step back (an NTP correction). An address whose cooldown had ended is
/// cooling again at the earlier time; it must not be handed out then, whether or not an earlier
/// allocation already looked at it.
#[test]
fn a_clock_stepping_back_does_not_hand_out_a_cooling_address() {
    let clock = Arc::new(ManualClock::new(START));
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_eni(dir.path(), config(Duration::from_secs(10)), &clock, 2);
    let (a, b) = (first_ip(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(ledger.allocate(key("k1"), LeaseMeta::default()).unwrap().lease.ip, a);
    ledger.release(&key("k1")).unwrap();
    clock.advance(10_000);
    // The cooldown has ended; this allocation takes the never-released .2 and sees .1 free.
    assert_eq!(ledger.allocate(key("k2"), LeaseMeta::default()).unwrap().lease.ip, b);
    clock.set(START + 5_000);
    assert_eq!(ledger.stats().addresses.cooling, 1, "at the earlier time .1 is cooling");
    let third = ledger.allocate(key("k3"), LeaseMeta::default());
    assert!(matches!(third, Err(LedgerError::NoFreeAddress)), "a cooling address was handed out: {third:?}");
}

#[test]
fn allocation_prefers_never_released_then_longest_ago_released_addresses() {
    let clock = Arc::new(ManualClock::new(START));
    let cfg = config(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_eni(dir.path(), cfg.clone(), &clock, 4);
    let ip = |last: u8| Ipv4Addr::new(10, 0, 0, last);

    // Never-released addresses go lowest first.
    for (i, last) in [1, 2, 3, 4].into_iter().enumerate() {
        assert_eq!(ledger.allocate(key(&format!("k{i}")), LeaseMeta::default()).unwrap().lease.ip, ip(last));
    }
    // Released in the order .3, .1, .4; .2 stays leased. .3 and .1 are released at the same instant.
    ledger.release(&key("k2")).unwrap();
    ledger.release(&key("k0")).unwrap();
    clock.advance(100);
    ledger.release(&key("k3")).unwrap();
    clock.advance(100);
    ledger.add_addresses("eni-1", &[ip(9)]).unwrap();
    ledger.close().unwrap();

    let ledger = open(dir.path(), cfg, &clock).unwrap();
    // The never-released .9 first, then the two released longest ago (the lower address first),
    // then .4.
    for (i, last) in [9, 1, 3, 4].into_iter().enumerate() {
        let a = ledger.allocate(key(&format!("n{i}")), LeaseMeta::default()).unwrap();
        assert_eq!(a.lease.ip, ip(last), "allocation {i}");
    }
    assert!(matches!(ledger.allocate(key("n4"), LeaseMeta::default()), Err(LedgerError::NoFreeAddress)));
}

// ---------------------------------------------------------------------------------------------
// e. Ledgers that must not open
// ---------------------------------------------------------------------------------------------

/// Opening `dir` fails, with an error whose message names `dir`.
fn open_fails(dir: &Path) -> OpenError {
    open_fails_in(dir, "")
}

fn open_fails_in(dir: &Path, context: &str) -> OpenError {
    let clock = Arc::new(ManualClock::new(START));
    match open(dir, config(Duration::from_secs(1)), &clock) {
        Ok(l) => panic!("{context}: {} opened, with {:?}", dir.display(), observe(&l)),
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains(&dir.display().to_string()), "{shown:?} does not name {}", dir.display());
            e
        }
    }
}

/// A closed ledger holding an ENI, two leases and a cooling address.
fn closed_ledger(dir: &Path) -> Observed {
    let clock = Arc::new(ManualClock::new(START));
    let ledger = ledger_with_eni(dir, config(Duration::from_secs(1)), &clock, 4);
    ledger.allocate(key("c0"), meta("ns", "c0")).unwrap();
    ledger.allocate(key("c1"), meta("ns", "c1")).unwrap();
    ledger.allocate(key("c2"), meta("ns", "c2")).unwrap();
    ledger.release(&key("c2")).unwrap();
    let seen = observe(&ledger);
    ledger.close().unwrap();
    seen
}

fn plain_sled(dir: &Path) -> sled::Db {
    // Changing sled behind the ledger's back: the image a clean close leaves would stand for the
    // old state, so it goes (the ledger reads sled's records when there is none).
    match fs::remove_file(dir.join("image")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing the image: {e}"),
        _ => {}
    }
    // A ledger closed a moment ago can leave sled's file lock held by one of sled's IO threads
    // (spacejam/sled#1234); the ledger's own open waits for it the same way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new().path(dir.join("sled")).open() {
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "the store stays locked after its ledger closed");
                std::thread::yield_now();
            }
            other => return other.expect("plain sled opens the ledger's store"),
        }
    }
}

/// Damages the files of a closed ledger's store that `pick` selects (by file name), with
/// garbage of the same length or by emptying them, and expects opening to fail as Corrupt or Io.
fn damaged_store_is_refused(what: &str, pick: fn(&str) -> bool, empty: bool) {
    let dir = tempfile::tempdir().unwrap();
    let before = closed_ledger(dir.path());
    assert!(!before.leases.is_empty());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut hit = 0;
    for file in files_under(&dir.path().join("sled")) {
        if !pick(&file.file_name().unwrap().to_string_lossy()) {
            continue;
        }
        hit += 1;
        let len = if empty { 0 } else { fs::metadata(&file).unwrap().len().max(64) as usize };
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        fs::write(&file, garbage).unwrap();
    }
    assert!(hit > 0, "no file is {what}");
    // Opening must not come up as a new, empty ledger: the leases it held would be handed out
    // again.
    let err = open_fails_in(dir.path(), what);
    assert!(
        matches!(err, OpenError::Corrupt { .. } | OpenError::Io { .. }),
        "{what}: expected Corrupt or Io, got {err:?}"
    );
}

#[test]
fn garbage_over_every_store_file_is_refused() {
    damaged_store_is_refused("garbage over every file of the store", |_| true, false);
}

#[test]
fn garbage_over_the_store_log_is_refused() {
    damaged_store_is_refused("garbage over the store's log (sled/db)", |name| name == "db", false);
}

#[test]
fn an_emptied_store_log_is_refused() {
    damaged_store_is_refused("the store's log (sled/db) emptied", |name| name == "db", true);
}

#[test]
fn garbage_over_the_store_config_is_refused() {
    damaged_store_is_refused("garbage over the store's config (sled/conf)", |name| name == "conf", false);
}

#[test]
fn a_foreign_sled_database_is_refused_and_left_alone() {
    // A sled database of someone else's, with its own tree.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = plain_sled(dir.path());
        db.open_tree("inventory").unwrap().insert("item", "value").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Foreign { .. }));
    let db = plain_sled(dir.path());
    assert_eq!(db.open_tree("inventory").unwrap().get("item").unwrap().as_deref(), Some(&b"value"[..]));
    drop(db);

    // Data in the default tree only.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = plain_sled(dir.path());
        db.insert("k", "v").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Foreign { .. }));

    // A `meta` tree whose marker is not enipool's.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = plain_sled(dir.path());
        db.open_tree("meta").unwrap().insert("magic", "something-else").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Foreign { .. }));
}

#[test]
fn a_newer_schema_version_is_refused_and_the_ledger_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let before = closed_ledger(dir.path());
    let set_version = |v: u32| {
        let db = plain_sled(dir.path());
        db.open_tree("meta").unwrap().insert("schema_version", &v.to_be_bytes()).unwrap();
        db.flush().unwrap();
    };

    set_version(SCHEMA_VERSION + 1);
    match open_fails(dir.path()) {
        OpenError::NewerVersion { found, supported, .. } => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerVersion, got {other:?}"),
    }

    // The refused open changed nothing: with the version put back, everything is there.
    set_version(SCHEMA_VERSION);
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), config(Duration::from_secs(1)), &clock).unwrap();
    assert_eq!(observe(&ledger), before);
}

#[test]
fn a_second_open_of_an_open_ledger_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let first = ledger_with_eni(dir.path(), config(Duration::from_secs(1)), &clock, 2);
    // Straight to `Ledger::open`: the `open` helper would wait for the first ledger's store.
    match Ledger::open(dir.path(), config(Duration::from_secs(1)), clock.clone() as Arc<dyn Clock>) {
        Ok(_) => panic!("a second ledger opened {} while the first is open", dir.path().display()),
        Err(e @ OpenError::Locked { .. }) => {
            assert!(e.to_string().contains(&dir.path().display().to_string()), "{e} does not name the directory");
        }
        Err(e) => panic!("expected Locked, got {e:?}"),
    }
    // The refused open disturbed nothing, and closing the first releases the lock.
    let lease = first.allocate(key("k"), LeaseMeta::default()).unwrap().lease;
    first.close().unwrap();
    let second = open(dir.path(), config(Duration::from_secs(1)), &clock).unwrap();
    assert_eq!(second.lease(&key("k")), Some(lease));
}

/// A log of several segments (small segments, no checkpoints), left by a crash.
fn crashed_with_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let clock = Arc::new(ManualClock::new(START));
    let cfg = LedgerConfig { wal_segment_bytes: 150, ..config(Duration::ZERO) };
    let ledger = ledger_with_eni(dir, cfg, &clock, 8);
    ledger.checkpoint().unwrap();
    for i in 0..6 {
        ledger.allocate(key(&format!("k{i}")), LeaseMeta::default()).unwrap();
    }
    ledger.simulate_crash();
    let segments = wal_segments(dir);
    assert!(segments.len() >= 3, "{segments:?}");
    segments
}

fn read_all(files: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files.iter().map(|f| (f.clone(), fs::read(f).unwrap())).collect()
}

#[test]
fn a_damaged_record_before_the_last_segment_is_corrupt_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = crashed_with_segments(dir.path());
    // A byte in the body of the first record.
    let mut first = fs::read(&segments[0]).unwrap();
    first[20] ^= 0x20;
    fs::write(&segments[0], &first).unwrap();
    let before = read_all(&wal_segments(dir.path()));

    let err = open_fails(dir.path());
    assert!(matches!(err, OpenError::Corrupt { .. }), "expected Corrupt, got {err:?}");
    // Nothing was cut off or deleted: the log is there for an operator to look at.
    assert_eq!(read_all(&wal_segments(dir.path())), before);
}

#[test]
fn a_damaged_record_followed_by_valid_ones_is_corrupt_even_in_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = ledger_with_eni(dir.path(), config(Duration::ZERO), &clock, 8);
    ledger.checkpoint().unwrap();
    for i in 0..3 {
        ledger.allocate(key(&format!("k{i}")), LeaseMeta::default()).unwrap();
    }
    ledger.simulate_crash();
    let segments = wal_segments(dir.path());
    assert_eq!(segments.len(), 1);
    let mut log = fs::read(&segments[0]).unwrap();
    let ends = record_ends(&log);
    assert_eq!(ends.len(), 3);
    // A byte in the body of the second of three acknowledged records.
    log[ends[0].1 as usize + 20] ^= 0x01;
    fs::write(&segments[0], &log).unwrap();
    let before = read_all(&segments);

    let err = open_fails(dir.path());
    assert!(matches!(err, OpenError::Corrupt { .. }), "expected Corrupt, got {err:?}");
    assert_eq!(read_all(&wal_segments(dir.path())), before);
}

#[test]
fn a_missing_segment_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let segments = crashed_with_segments(dir.path());
    fs::remove_file(&segments[0]).unwrap();
    let err = open_fails(dir.path());
    assert!(matches!(err, OpenError::Corrupt { .. }), "expected Corrupt, got {err:?}");
}

#[test]
fn broken_invariants_on_disk_are_refused() {
    // A lease record deleted while its address still says leased.
    let dir = tempfile::tempdir().unwrap();
    closed_ledger(dir.path());
    {
        let db = plain_sled(dir.path());
        let removed = db.open_tree("leases").unwrap().remove(b"net\0c0\0eth0").unwrap();
        assert!(removed.is_some(), "the lease is stored under network NUL container NUL ifname");
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Invariant { .. }));

    // An ENI deleted while its addresses remain.
    let dir = tempfile::tempdir().unwrap();
    closed_ledger(dir.path());
    {
        let db = plain_sled(dir.path());
        assert!(db.open_tree("enis").unwrap().remove(b"eni-1").unwrap().is_some());
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Invariant { .. }));
}

#[test]
fn undecodable_records_and_missing_metadata_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    closed_ledger(dir.path());
    {
        let db = plain_sled(dir.path());
        db.open_tree("leases").unwrap().insert(b"net\0c0\0eth0", &[0xff; 3]).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Corrupt { .. }));

    let dir = tempfile::tempdir().unwrap();
    closed_ledger(dir.path());
    {
        let db = plain_sled(dir.path());
        db.open_tree("meta").unwrap().remove("schema_version").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(open_fails(dir.path()), OpenError::Corrupt { .. }));
}

#[test]
fn a_path_that_is_a_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(open_fails(&file), OpenError::Io { .. }));
}

#[test]
fn a_clean_close_leaves_an_image_the_next_open_uses_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    ledger
        .add_eni(common::eni("eni-0", 0, Ipv4Addr::new(10, 0, 0, 250), true), &[first_ip(), Ipv4Addr::new(10, 0, 0, 2)])
        .unwrap();
    let lease = ledger.allocate(LeaseKey::new("net", "c0", "eth0"), LeaseMeta::default()).unwrap().lease;
    ledger.close().unwrap();
    assert!(dir.path().join("image").exists(), "a clean close leaves an image");

    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    assert!(ledger.recovery().from_image);
    assert!(!dir.path().join("image").exists(), "the image is consumed by the open that uses it");
    assert_eq!(ledger.lease(&lease.key), Some(lease.clone()));
    ledger.simulate_crash();

    // After a crash there is no image: the state comes from sled's records, and it is the same.
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    assert!(!ledger.recovery().from_image);
    assert_eq!(ledger.lease(&lease.key), Some(lease));
}

#[test]
fn a_stale_or_damaged_image_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    ledger
        .add_eni(common::eni("eni-0", 0, Ipv4Addr::new(10, 0, 0, 250), true), &[first_ip(), Ipv4Addr::new(10, 0, 0, 2)])
        .unwrap();
    ledger.close().unwrap();
    let old_image = fs::read(dir.path().join("image")).unwrap();

    // Stale: the ledger moved on (and checkpointed) after the image was written.
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    let lease = ledger.allocate(LeaseKey::new("net", "c0", "eth0"), LeaseMeta::default()).unwrap().lease;
    ledger.checkpoint().unwrap();
    ledger.simulate_crash();
    fs::write(dir.path().join("image"), &old_image).unwrap();
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    assert!(!ledger.recovery().from_image, "an image of an older state is not used");
    assert_eq!(ledger.lease(&lease.key), Some(lease.clone()));
    ledger.close().unwrap();

    // Damaged: one flipped byte and the checksum refuses it.
    let mut image = fs::read(dir.path().join("image")).unwrap();
    let last = image.len() - 1;
    image[last] ^= 0x5a;
    fs::write(dir.path().join("image"), &image).unwrap();
    let ledger = open(dir.path(), config(Duration::ZERO), &clock).unwrap();
    assert!(!ledger.recovery().from_image, "a damaged image is not used");
    assert_eq!(ledger.lease(&lease.key), Some(lease));
}

// ---------------------------------------------------------------------------------------------
// Addresses the provider lost, and addresses adopted from it
// ---------------------------------------------------------------------------------------------

#[test]
fn lost_addresses_are_never_handed_out_and_go_with_their_lease() {
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(START));
        let ledger = ledger_with_eni(dir.path(), config(Duration::from_secs(1)), &clock, 4);
        let kept = ledger.allocate(key("kept"), meta("ns", "kept")).unwrap().lease;
        let cooled = ledger.allocate(key("cooled"), meta("ns", "cooled")).unwrap().lease;
        ledger.release(&key("cooled")).unwrap();
        let all = ips_from(first_ip(), 4);

        // Free and cooling addresses go; the leased one stays, lost, with its lease.
        assert_eq!(ledger.mark_lost(&all).unwrap(), vec![kept.clone()]);
        assert!(ledger.address(cooled.ip).is_none());
        assert_eq!(ledger.address(kept.ip).unwrap().state, AddressState::Lost { key: key("kept") });
        let stats = ledger.stats();
        assert_eq!((stats.addresses.total, stats.lost), (0, 1));
        assert_eq!(ledger.lease(&key("kept")), Some(kept.clone()));
        assert!(matches!(ledger.allocate(key("new"), meta("ns", "new")), Err(LedgerError::NoFreeAddress)));
        assert!(matches!(ledger.remove_eni("eni-1"), Err(LedgerError::EniInUse { .. })));
        assert!(ledger.remove_addresses("eni-1", &[kept.ip]).is_err());
        // Again: nothing more to do.
        assert_eq!(ledger.mark_lost(&all).unwrap(), vec![]);

        // It survives a restart, clean or not.
        if crash {
            ledger.simulate_crash();
        } else {
            ledger.close().unwrap();
        }
        let ledger = open(dir.path(), config(Duration::from_secs(1)), &clock).unwrap();
        ledger.check_invariants().unwrap();
        assert_eq!(ledger.address(kept.ip).unwrap().state, AddressState::Lost { key: key("kept") });
        // Even a provider that hands the address back later does not make it leasable while
        // the lease stands: adding it again is refused.
        assert!(ledger.add_addresses("eni-1", &[kept.ip]).is_err());

        // Released: the address goes with the lease, and the ENI can go.
        assert_eq!(ledger.release(&key("kept")).unwrap(), Some(kept.clone()));
        assert!(ledger.address(kept.ip).is_none());
        assert_eq!(ledger.stats().lost, 0);
        ledger.check_invariants().unwrap();
        ledger.remove_eni("eni-1").unwrap();
    }
}

#[test]
fn adopted_addresses_cool_down_before_they_are_leased() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let ledger = ledger_with_eni(dir.path(), config(Duration::from_secs(1)), &clock, 0);
    let adopted = Ipv4Addr::new(10, 0, 0, 9);
    ledger.adopt_addresses("eni-1", &[adopted], START + 5_000).unwrap();
    assert_eq!(ledger.stats().addresses.cooling, 1);
    assert!(matches!(ledger.allocate(key("early"), meta("ns", "early")), Err(LedgerError::NoFreeAddress)));
    assert!(ledger.adopt_addresses("eni-1", &[adopted], START).is_err(), "known already");
    assert!(ledger.adopt_addresses("eni-nope", &[Ipv4Addr::new(10, 0, 0, 10)], START).is_err());
    clock.advance(5_000);
    assert_eq!(ledger.allocate(key("later"), meta("ns", "later")).unwrap().lease.ip, adopted);
}

#[test]
fn a_version_1_ledger_opens_migrated_to_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let before = closed_ledger(dir.path());
    let version = |db: &sled::Db| {
        let v = db.open_tree("meta").unwrap().get("schema_version").unwrap().unwrap();
        u32::from_be_bytes(v.as_ref().try_into().unwrap())
    };
    {
        let db = plain_sled(dir.path());
        db.open_tree("meta").unwrap().insert("schema_version", &1u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let clock = Arc::new(ManualClock::new(START));
    let ledger = open(dir.path(), config(Duration::from_secs(1)), &clock).unwrap();
    assert_eq!(observe(&ledger), before);
    ledger.close().unwrap();
    assert_eq!(version(&plain_sled(dir.path())), SCHEMA_VERSION);
}

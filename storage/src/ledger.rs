//! The ledger: what every operation does, how it is made atomic and durable, and how a ledger is
//! opened, recovered and checked.
//!
//! Every mutation runs under one state lock: it computes a list of [`Change`]s from the in-memory
//! mirror, queues them as one write-ahead-log record (its atomic unit), applies them to the
//! mirror and marks the touched keys dirty. It then drops the lock and waits until a sync covers
//! its record. Reads are served from the mirror.
//!
//! sled is the checkpoint store: the checkpointer writes the current value of every dirty key in
//! one sled transaction across the trees (tagged with the sequence number it reflects), flushes
//! sled, and trims the log. The request path never waits on sled. That matters: sled 0.34.7 can
//! deadlock when a writer holding its segment lock waits for a file truncation queued behind IO
//! tasks that need that lock, and per-operation writes also make sled grow without bound.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::clock::Clock;
use ipnet::Ipv4Net;

use crate::error::{LedgerError, OpenError};
use crate::model::*;
use crate::wal::{SyncObserver, Wal};

/// The schema this build writes. Bump it with every change to the records in `model.rs`, and
/// teach `migrate` to bring the previous version forward.
pub const SCHEMA_VERSION: u32 = 3;
const MAGIC: &[u8] = b"enipool-ledger";

const META_MAGIC: &[u8] = b"magic";
const META_SCHEMA: &[u8] = b"schema_version";
const META_APPLIED: &[u8] = b"applied_seq";

const TREE_META: &str = "meta";
const TREE_ENIS: &str = "enis";
const TREE_ADDRS: &str = "addresses";
const TREE_LEASES: &str = "leases";
const TREE_PREFIXES: &str = "prefixes";

/// How a ledger behaves. Every period is configuration, so tests and benchmarks set it.
#[derive(Clone)]
pub struct LedgerConfig {
    /// How long a released address cools down before it can be leased again.
    pub cooldown: Duration,
    /// How often the background checkpoint flushes sled and trims the write-ahead log.
    /// `None`: only on `checkpoint()` and on close.
    pub checkpoint_interval: Option<Duration>,
    /// A write-ahead-log segment is closed once it reaches this size.
    pub wal_segment_bytes: u64,
    /// sled's page cache.
    pub cache_bytes: u64,
    /// Instrumentation: sees every sync and acknowledgement.
    pub sync_observer: Option<Arc<dyn SyncObserver>>,
    /// How long `open` waits for sled's own file lock (see `open_sled`).
    pub store_lock_wait: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            cooldown: Duration::from_secs(30),
            checkpoint_interval: Some(Duration::from_secs(1)),
            wal_segment_bytes: 4 << 20,
            cache_bytes: 32 << 20,
            sync_observer: None,
            store_lock_wait: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("cooldown", &self.cooldown)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("wal_segment_bytes", &self.wal_segment_bytes)
            .field("cache_bytes", &self.cache_bytes)
            .field("sync_observer", &self.sync_observer.is_some())
            .field("store_lock_wait", &self.store_lock_wait)
            .finish()
    }
}

/// One effect of an operation. The same list is logged and applied to the in-memory mirror (and
/// marks its key dirty for the next checkpoint), so log, mirror and sled cannot drift apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Change {
    PutEni(EniRecord),
    DelEni(String),
    PutAddr(AddressRecord),
    DelAddr(Ipv4Addr),
    PutLease(Lease),
    DelLease(LeaseKey),
    // Schema 3. New variants go at the end: a record of an older schema decodes unchanged.
    PutPrefix(PrefixRecord),
    DelPrefix(Ipv4Net),
}

/// The in-memory mirror of the sled trees, plus the two indexes allocation needs.
#[derive(Default)]
struct State {
    enis: BTreeMap<String, EniRecord>,
    addrs: BTreeMap<Ipv4Addr, AddressRecord>,
    leases: BTreeMap<LeaseKey, Lease>,
    prefixes: BTreeMap<Ipv4Net, PrefixRecord>,
    /// Allocatable addresses, oldest release first (never released sorts first).
    free: BTreeSet<(Option<UnixMillis>, Ipv4Addr)>,
    /// Cooling addresses by the instant they become free.
    cooling: BTreeSet<(UnixMillis, Ipv4Addr)>,
    /// Sequence number of the last committed operation.
    last_seq: u64,
    /// Keys changed since the last checkpoint took its snapshot.
    dirty: Dirty,
    /// When set, the only ENIs whose free addresses are handed out (the caller's policy, not
    /// persisted).
    served: Option<BTreeSet<String>>,
}

#[derive(Default)]
struct Dirty {
    enis: BTreeSet<String>,
    addrs: BTreeSet<Ipv4Addr>,
    prefixes: BTreeSet<Ipv4Net>,
    /// Each dirty lease key, with whether it existed at the last checkpoint: a lease made and
    /// released between two checkpoints (most of them, under churn) never reaches sled.
    leases: BTreeMap<LeaseKey, bool>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.enis.is_empty() && self.addrs.is_empty() && self.leases.is_empty() && self.prefixes.is_empty()
    }

    fn merge(&mut self, other: Dirty) {
        self.enis.extend(other.enis);
        self.addrs.extend(other.addrs);
        self.prefixes.extend(other.prefixes);
        // `other` is older than `self`, so its record of what sled holds wins.
        self.leases.extend(other.leases);
    }
}

/// The current value (or absence) of every dirty key, as of `seq`: what a checkpoint writes.
struct Snapshot {
    seq: u64,
    keys: Dirty,
    enis: Vec<(String, Option<EniRecord>)>,
    addrs: Vec<(Ipv4Addr, Option<AddressRecord>)>,
    leases: Vec<(LeaseKey, Option<Lease>)>,
    prefixes: Vec<(Ipv4Net, Option<PrefixRecord>)>,
}

impl State {
    fn unindex(&mut self, rec: &AddressRecord) {
        match rec.state {
            AddressState::Free => {
                self.free.remove(&(rec.last_released, rec.ip));
            }
            AddressState::Cooling { until } => {
                // An expired cooling address may have been promoted into `free` already.
                self.cooling.remove(&(until, rec.ip));
                self.free.remove(&(rec.last_released, rec.ip));
            }
            AddressState::Leased { .. } | AddressState::Lost { .. } => {}
        }
    }

    fn index(&mut self, rec: &AddressRecord) {
        match rec.state {
            AddressState::Free => {
                self.free.insert((rec.last_released, rec.ip));
            }
            AddressState::Cooling { until } => {
                self.cooling.insert((until, rec.ip));
            }
            AddressState::Leased { .. } | AddressState::Lost { .. } => {}
        }
    }

    /// Moves addresses whose cooldown has ended into `free` (memory only: the record keeps
    /// saying cooling until it is next written, and reads as free meanwhile).
    fn promote_expired(&mut self, now: UnixMillis) {
        while let Some(&(until, ip)) = self.cooling.first() {
            if until > now {
                break;
            }
            self.cooling.pop_first();
            let released = self.addrs.get(&ip).and_then(|a| a.last_released);
            self.free.insert((released, ip));
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::PutEni(eni) => {
                self.dirty.enis.insert(eni.id.clone());
                self.enis.insert(eni.id.clone(), eni);
            }
            Change::DelEni(id) => {
                self.enis.remove(&id);
                self.dirty.enis.insert(id);
            }
            Change::PutAddr(rec) => {
                if let Some(old) = self.addrs.remove(&rec.ip) {
                    self.unindex(&old);
                }
                self.index(&rec);
                self.dirty.addrs.insert(rec.ip);
                self.addrs.insert(rec.ip, rec);
            }
            Change::DelAddr(ip) => {
                if let Some(old) = self.addrs.remove(&ip) {
                    self.unindex(&old);
                }
                self.dirty.addrs.insert(ip);
            }
            Change::PutLease(lease) => {
                let existed = self.leases.contains_key(&lease.key);
                self.dirty.leases.entry(lease.key.clone()).or_insert(existed);
                self.leases.insert(lease.key.clone(), lease);
            }
            Change::DelLease(key) => {
                let existed = self.leases.remove(&key).is_some();
                self.dirty.leases.entry(key).or_insert(existed);
            }
            Change::PutPrefix(p) => {
                self.dirty.prefixes.insert(p.cidr);
                self.prefixes.insert(p.cidr, p);
            }
            Change::DelPrefix(cidr) => {
                self.prefixes.remove(&cidr);
                self.dirty.prefixes.insert(cidr);
            }
        }
    }

    /// Takes the dirty set and the current value of each of its keys.
    fn take_snapshot(&mut self) -> Snapshot {
        let keys = std::mem::take(&mut self.dirty);
        Snapshot {
            seq: self.last_seq,
            enis: keys.enis.iter().map(|k| (k.clone(), self.enis.get(k).cloned())).collect(),
            addrs: keys.addrs.iter().map(|k| (*k, self.addrs.get(k).cloned())).collect(),
            prefixes: keys.prefixes.iter().map(|k| (*k, self.prefixes.get(k).cloned())).collect(),
            leases: keys
                .leases
                .iter()
                .filter_map(|(k, &in_sled)| match self.leases.get(k) {
                    None if !in_sled => None,
                    now => Some((k.clone(), now.cloned())),
                })
                .collect(),
            keys,
        }
    }

    /// Whether `ip` is the primary address of an attached ENI. A detached ENI's primary does not
    /// count: the ENI may be deleted (kept here only while its lost leases last), and EC2 reuses
    /// a deleted ENI's primary address for other ENIs, ours among them.
    fn is_primary_ip(&self, ip: Ipv4Addr) -> bool {
        self.enis.values().any(|e| e.attached && e.primary_ip == ip)
    }

    /// The prefix `ip` lies in, if any.
    fn prefix_of(&self, ip: Ipv4Addr) -> Option<&PrefixRecord> {
        self.prefixes.values().find(|p| p.cidr.contains(&ip))
    }

    fn check_new_address(&self, ip: Ipv4Addr) -> Result<(), LedgerError> {
        if let Some(p) = self.prefix_of(ip) {
            return Err(LedgerError::InPrefix { ip, prefix: p.cidr });
        }
        if self.addrs.contains_key(&ip) {
            return Err(LedgerError::AddressExists(ip));
        }
        if self.is_primary_ip(ip) {
            return Err(LedgerError::PrimaryAddress(ip));
        }
        Ok(())
    }

    /// Every invariant the ledger promises; `Err` names the first one broken.
    fn check_invariants(&self) -> Result<(), String> {
        let mut primary_ips: HashSet<Ipv4Addr> = HashSet::new();
        for e in self.enis.values().filter(|e| e.attached) {
            if !primary_ips.insert(e.primary_ip) {
                return Err(format!("two attached ENIs have the primary address {}", e.primary_ip));
            }
        }
        for (key, lease) in &self.leases {
            if *key != lease.key {
                return Err(format!("lease stored under {key} is for {}", lease.key));
            }
            let Some(addr) = self.addrs.get(&lease.ip) else {
                return Err(format!("lease {key} holds {} which is no known address", lease.ip));
            };
            match &addr.state {
                AddressState::Leased { key: k } | AddressState::Lost { key: k } if k == key => {}
                other => {
                    return Err(format!("lease {key} holds {} but the address says {other:?}", lease.ip));
                }
            }
            if addr.eni_id != lease.eni_id {
                return Err(format!("lease {key} says ENI {} but {} is on {}", lease.eni_id, lease.ip, addr.eni_id));
            }
        }
        for (ip, addr) in &self.addrs {
            if *ip != addr.ip {
                return Err(format!("address stored under {ip} is {}", addr.ip));
            }
            if !self.enis.contains_key(&addr.eni_id) {
                return Err(format!("address {ip} belongs to unknown ENI {}", addr.eni_id));
            }
            if let AddressState::Leased { key } | AddressState::Lost { key } = &addr.state {
                match self.leases.get(key) {
                    Some(l) if l.ip == *ip => {}
                    Some(l) => {
                        return Err(format!("address {ip} says leased to {key}, whose lease holds {}", l.ip));
                    }
                    None => {
                        return Err(format!("address {ip} says leased to {key}, which has no lease"));
                    }
                }
            }
            if primary_ips.contains(ip) {
                return Err(format!("address {ip} is an ENI primary address"));
            }
        }
        let mut last: Option<&Ipv4Net> = None;
        for (cidr, p) in &self.prefixes {
            if *cidr != p.cidr || p.cidr.trunc() != p.cidr {
                return Err(format!("prefix {cidr} is stored as {}", p.cidr));
            }
            if let Some(prev) = last
                && prev.contains(&cidr.network())
            {
                return Err(format!("prefixes {prev} and {cidr} overlap"));
            }
            last = Some(cidr);
            if !self.enis.contains_key(&p.eni_id) {
                return Err(format!("prefix {cidr} belongs to unknown ENI {}", p.eni_id));
            }
            let mut present = 0;
            for ip in p.addresses() {
                if primary_ips.contains(&ip) {
                    return Err(format!("prefix {cidr} holds the primary address {ip}"));
                }
                let Some(addr) = self.addrs.get(&ip) else { continue };
                present += 1;
                if addr.eni_id != p.eni_id {
                    return Err(format!("address {ip} of prefix {cidr} belongs to {}, not {}", addr.eni_id, p.eni_id));
                }
                if p.state == PrefixState::Lost && !matches!(addr.state, AddressState::Lost { .. }) {
                    return Err(format!("address {ip} of lost prefix {cidr} is not lost"));
                }
            }
            match p.state {
                PrefixState::Active if present != p.addresses().count() => {
                    return Err(format!("prefix {cidr} has {present} of its addresses"));
                }
                PrefixState::Lost if present == 0 => {
                    return Err(format!("lost prefix {cidr} has no lost address left"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    enis: sled::Tree,
    addrs: sled::Tree,
    leases: sled::Tree,
    prefixes: sled::Tree,
}

impl Trees {
    /// Writes a snapshot and the sequence number it reflects in one sled transaction, so sled
    /// always sits at an operation boundary and its two indexes agree.
    fn write_snapshot(&self, snap: &Snapshot) -> Result<(), String> {
        fn enc<T: Serialize>(v: &Option<T>) -> Option<Vec<u8>> {
            v.as_ref().map(|v| postcard::to_allocvec(v).expect("records always serialize"))
        }
        let enis: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            snap.enis.iter().map(|(k, v)| (k.as_bytes().to_vec(), enc(v))).collect();
        let addrs: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            snap.addrs.iter().map(|(k, v)| (k.octets().to_vec(), enc(v))).collect();
        let leases: Vec<(Vec<u8>, Option<Vec<u8>>)> = snap.leases.iter().map(|(k, v)| (k.encode(), enc(v))).collect();
        let prefixes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            snap.prefixes.iter().map(|(k, v)| (prefix_key(k), enc(v))).collect();
        let result: Result<(), TransactionError<()>> =
            (&self.enis, &self.addrs, &self.leases, &self.prefixes, &self.meta).transaction(|(te, ta, tl, tp, tm)| {
                for (tree, rows) in [(te, &enis), (ta, &addrs), (tl, &leases), (tp, &prefixes)] {
                    for (key, value) in rows {
                        match value {
                            Some(v) => tree.insert(key.as_slice(), v.as_slice())?,
                            None => tree.remove(key.as_slice())?,
                        };
                    }
                }
                tm.insert(META_APPLIED, &snap.seq.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| format!("sled transaction failed: {e:?}"))
    }

    fn applied_seq(&self) -> Result<u64, String> {
        match self.meta.get(META_APPLIED).map_err(|e| e.to_string())? {
            None => Ok(0),
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| "applied_seq is not 8 bytes".into()),
        }
    }
}

/// What opening the ledger found and repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Write-ahead-log records replayed into sled (operations sled had not flushed).
    pub replayed_records: u64,
    /// Bytes of a torn record cut off the end of the log (a write that was under way in a crash
    /// and so was never acknowledged).
    pub torn_tail_bytes: u64,
    /// The state came from the image a clean close left, not from sled's records.
    pub from_image: bool,
}

struct Inner {
    path: PathBuf,
    recovery: RecoveryReport,
    config: LedgerConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    checkpointing: Mutex<()>,
    /// Checkpoints that failed (and are retried by the next), and the last one's error.
    checkpoint_failures: std::sync::atomic::AtomicU64,
    last_checkpoint_error: Mutex<Option<String>>,
    /// Set by `simulate_crash`: close without the final checkpoint.
    crashed: std::sync::atomic::AtomicBool,
    trees: Trees,
    wal: Wal,
    _lock: File,
}

/// Stops the checkpoint thread when the last `Ledger` handle goes away.
struct CheckpointGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for CheckpointGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// See [`Ledger::health`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerHealth {
    /// Set once a write-ahead-log write or sync failed: from then on every mutation fails (after
    /// a failed fsync the page cache cannot be trusted) until the process restarts and recovers
    /// from disk.
    pub write_failure: Option<String>,
    /// Checkpoints into sled that failed since open (each is retried by the next one).
    pub checkpoint_failures: u64,
    /// The last checkpoint's error, while the checkpoints keep failing.
    pub last_checkpoint_error: Option<String>,
}

/// The crash-safe lease ledger. Cheap to clone; all clones share one ledger.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
    _checkpoint: Arc<CheckpointGuard>,
}

/// An operation's answer, applied to the state and logged, handed over once a sync of the log
/// covers its record: [`Syncing::wait`] blocks the thread, `.await` holds none.
#[must_use = "the answer counts only once its record is durable"]
struct Syncing<T> {
    inner: Arc<Inner>,
    seq: u64,
    value: Option<T>,
}

// `value` is never pinned: it is moved out when ready.
impl<T> Unpin for Syncing<T> {}

impl<T> Syncing<T> {
    fn wait(mut self) -> Result<T, LedgerError> {
        self.inner.wal.wait_durable(self.seq).map_err(LedgerError::Poisoned)?;
        Ok(self.acknowledge())
    }

    fn acknowledge(&mut self) -> T {
        self.inner.wal.acknowledge(self.seq);
        self.value.take().expect("a Syncing answer is handed over once")
    }
}

impl<T> Future for Syncing<T> {
    type Output = Result<T, LedgerError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.inner.wal.poll_durable(self.seq, cx).map(|synced| match synced {
            Ok(()) => Ok(self.acknowledge()),
            Err(reason) => Err(LedgerError::Poisoned(reason)),
        })
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.inner.path).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean close leaves sled holding everything and the log empty, so the next open
        // replays nothing.
        if !self.crashed.load(std::sync::atomic::Ordering::SeqCst) && self.checkpoint().is_ok() {
            // Nothing else can run now (this is the last handle), so the state is exactly what
            // sled holds at its sequence number: leave an image for a fast next open. Failing
            // to write it only makes the next open slower.
            let st = self.lock();
            if st.dirty.is_empty() && self.trees.applied_seq().ok() == Some(st.last_seq) {
                let _ = write_image(&self.path, &st);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_usable(&self) -> Result<(), LedgerError> {
        match self.wal.poisoned() {
            Some(reason) => Err(LedgerError::Poisoned(reason.to_string())),
            None => Ok(()),
        }
    }

    /// Logs `changes` as one record and applies them to the mirror; returns the sequence number
    /// the caller must wait on.
    fn commit(&self, st: &mut State, changes: Vec<Change>) -> Result<u64, LedgerError> {
        self.check_usable()?;
        let seq = st.last_seq + 1;
        let body = postcard::to_allocvec(&changes).expect("changes always serialize");
        self.wal.append(seq, &body);
        for c in changes {
            st.apply(c);
        }
        st.last_seq = seq;
        Ok(seq)
    }

    /// One checkpoint; a failure (other than the log's own, which poisons the ledger) is
    /// counted, remembered and logged as a warning: the log still holds everything, so the
    /// ledger keeps working while a later checkpoint retries.
    fn checkpoint(&self) -> Result<(), LedgerError> {
        let result = self.checkpoint_once();
        let mut last = self.last_checkpoint_error.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(e) if self.wal.poisoned().is_none() => {
                self.checkpoint_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), error = %e, "ledger checkpoint failed; the write-ahead log keeps every change and the next checkpoint retries");
                *last = Some(e.to_string());
            }
            Ok(()) => *last = None,
            Err(_) => {}
        }
        result
    }

    fn checkpoint_once(&self) -> Result<(), LedgerError> {
        if self.wal.poisoned().is_some() {
            // sled may hold changes the log never made durable; leave the log as it is.
            return self.check_usable();
        }
        // One checkpoint at a time: two could otherwise write their snapshots out of order.
        let _one = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = {
            let mut st = self.lock();
            if st.dirty.is_empty() && self.wal.durable_seq() == st.last_seq && self.wal.segment_count() == 0 {
                return Ok(());
            }
            st.take_snapshot()
        };
        let upto = snapshot.seq;
        let written = self
            .trees
            .write_snapshot(&snapshot)
            .and_then(|()| self.trees.db.flush().map(drop).map_err(|e| format!("sled flush: {e}")));
        if let Err(e) = written {
            // Keep the keys dirty so the next checkpoint writes them; the log still has them.
            // The transaction may have reached sled even if the flush failed, so every lease key
            // now counts as possibly in sled (its removal must be written).
            let mut keys = snapshot.keys;
            keys.leases.values_mut().for_each(|in_sled| *in_sled = true);
            self.lock().dirty.merge(keys);
            return Err(LedgerError::Storage(e));
        }
        self.wal.trim(upto).map_err(|e| LedgerError::Storage(format!("trimming the write-ahead log: {e}")))
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`: takes its lock, checks the schema version,
    /// replays the write-ahead log into sled, loads the mirror and checks every invariant.
    pub fn open(dir: &Path, config: LedgerConfig, clock: Arc<dyn Clock>) -> Result<Ledger, OpenError> {
        let path = dir.to_path_buf();
        let io = |source| OpenError::Io { path: path.clone(), source };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = File::options().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(io)?;
        lock.try_lock().map_err(|e| OpenError::Locked {
            path: path.clone(),
            source: match e {
                fs::TryLockError::Error(e) => e,
                fs::TryLockError::WouldBlock => std::io::Error::from(std::io::ErrorKind::WouldBlock),
            },
        })?;

        // sled can panic on some damaged files; a panic here must become an error naming the path.
        let opened = catch_unwind(AssertUnwindSafe(|| open_locked(dir, &config)));
        let (trees, state, recovery) = match opened {
            Ok(result) => result?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                return Err(OpenError::Corrupt {
                    path,
                    detail: format!("the storage engine failed while reading: {what}"),
                });
            }
        };
        let wal = Wal::open(&dir.join("wal"), config.wal_segment_bytes, state.last_seq, config.sync_observer.clone())
            .map_err(io)?;

        let inner = Arc::new(Inner {
            path: path.clone(),
            recovery,
            config,
            clock,
            state: Mutex::new(state),
            checkpointing: Mutex::new(()),
            checkpoint_failures: Default::default(),
            last_checkpoint_error: Mutex::new(None),
            crashed: Default::default(),
            trees,
            wal,
            _lock: lock,
        });
        let guard = match inner.config.checkpoint_interval {
            None => CheckpointGuard { stop: None, thread: None },
            Some(every) => {
                let (stop, stopped) = mpsc::channel::<()>();
                let worker = Arc::clone(&inner);
                let thread = std::thread::Builder::new()
                    .name("ledger-checkpoint".into())
                    .spawn(move || {
                        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                            // A failed checkpoint leaves the log longer; the next one retries
                            // (counted and logged in `checkpoint`).
                            let _ = worker.checkpoint();
                        }
                    })
                    .map_err(io)?;
                CheckpointGuard { stop: Some(stop), thread: Some(thread) }
            }
        };
        Ok(Ledger { inner, _checkpoint: Arc::new(guard) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What opening the ledger replayed and repaired.
    pub fn recovery(&self) -> RecoveryReport {
        self.inner.recovery
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.inner.config
    }

    /// Flushes sled and trims the write-ahead log now.
    pub fn checkpoint(&self) -> Result<(), LedgerError> {
        self.inner.checkpoint()
    }

    /// Sequence number of the last committed operation.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().last_seq
    }

    /// Sequence number up to which operations are on disk.
    pub fn durable_seq(&self) -> u64 {
        self.inner.wal.durable_seq()
    }

    /// How many fdatasyncs the write-ahead log has done since open.
    pub fn sync_count(&self) -> u64 {
        self.inner.wal.sync_count()
    }

    /// Live write-ahead-log segments.
    pub fn wal_segments(&self) -> usize {
        self.inner.wal.segment_count()
    }

    /// Whether the ledger still takes writes, and how its checkpoints fare.
    pub fn health(&self) -> LedgerHealth {
        LedgerHealth {
            write_failure: self.inner.wal.poisoned().map(str::to_string),
            checkpoint_failures: self.inner.checkpoint_failures.load(std::sync::atomic::Ordering::Relaxed),
            last_checkpoint_error: self.inner.last_checkpoint_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn run<T>(
        &self,
        op: impl FnOnce(&Inner, &mut State) -> Result<(T, Vec<Change>), LedgerError>,
    ) -> Result<T, LedgerError> {
        self.run_deferred(op)?.wait()
    }

    /// The one path every operation takes: `op` reads the state and says what to change, under
    /// the state lock; the changes are logged as one record and applied. The answer is handed
    /// back once a sync covers that record.
    fn run_deferred<T>(
        &self,
        op: impl FnOnce(&Inner, &mut State) -> Result<(T, Vec<Change>), LedgerError>,
    ) -> Result<Syncing<T>, LedgerError> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let (value, changes) = op(inner, &mut st)?;
        // Even an operation that changed nothing waits: what it read (say, an existing lease)
        // may have been written by a call whose sync is still under way.
        let seq = if changes.is_empty() { st.last_seq } else { inner.commit(&mut st, changes)? };
        Ok(Syncing { inner: self.inner.clone(), seq, value: Some(value) })
    }

    /// Adds an ENI and its secondary addresses, all free.
    pub fn add_eni(&self, eni: EniRecord, addresses: &[Ipv4Addr]) -> Result<(), LedgerError> {
        self.run(|_, st| {
            if st.enis.contains_key(&eni.id) {
                return Err(LedgerError::EniExists(eni.id.clone()));
            }
            if st.addrs.contains_key(&eni.primary_ip) || st.is_primary_ip(eni.primary_ip) {
                return Err(LedgerError::AddressExists(eni.primary_ip));
            }
            let mut seen = HashSet::new();
            for &ip in addresses {
                st.check_new_address(ip)?;
                if ip == eni.primary_ip {
                    return Err(LedgerError::PrimaryAddress(ip));
                }
                if !seen.insert(ip) {
                    return Err(LedgerError::AddressExists(ip));
                }
            }
            let mut changes = vec![Change::PutEni(eni.clone())];
            changes.extend(addresses.iter().map(|&ip| free_address(ip, &eni.id)));
            Ok(((), changes))
        })
    }

    /// Marks an ENI attached or not. Addresses of a detached ENI are not leased.
    pub fn set_eni_attached(&self, eni_id: &str, attached: bool) -> Result<(), LedgerError> {
        self.run(|_, st| {
            let eni = st.enis.get(eni_id).ok_or_else(|| LedgerError::UnknownEni(eni_id.into()))?;
            if eni.attached == attached {
                return Ok(((), vec![]));
            }
            // Attached again, its primary counts again: refused if it was reused meanwhile.
            if attached && (st.addrs.contains_key(&eni.primary_ip) || st.is_primary_ip(eni.primary_ip)) {
                return Err(LedgerError::AddressExists(eni.primary_ip));
            }
            Ok(((), vec![Change::PutEni(EniRecord { attached, ..eni.clone() })]))
        })
    }

    /// Adds free secondary addresses to a known ENI.
    pub fn add_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), LedgerError> {
        self.run(|_, st| {
            if !st.enis.contains_key(eni_id) {
                return Err(LedgerError::UnknownEni(eni_id.into()));
            }
            let mut seen = HashSet::new();
            for &ip in addresses {
                st.check_new_address(ip)?;
                if !seen.insert(ip) {
                    return Err(LedgerError::AddressExists(ip));
                }
            }
            Ok(((), addresses.iter().map(|&ip| free_address(ip, eni_id)).collect()))
        })
    }

    /// Removes addresses of an ENI. Refused (and nothing removed) if any is leased or cooling.
    pub fn remove_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), LedgerError> {
        self.run(|inner, st| {
            let now = inner.clock.now();
            let mut changes = Vec::new();
            for &ip in addresses {
                let addr = st.addrs.get(&ip).ok_or(LedgerError::UnknownAddress(ip))?;
                if let Some(p) = st.prefix_of(ip) {
                    return Err(LedgerError::InPrefix { ip, prefix: p.cidr });
                }
                if addr.eni_id != eni_id {
                    return Err(LedgerError::WrongEni { ip, requested: eni_id.into(), actual: addr.eni_id.clone() });
                }
                match addr.effective_state(now) {
                    EffectiveState::Free => changes.push(Change::DelAddr(ip)),
                    EffectiveState::Leased => {
                        return Err(LedgerError::AddressInUse { ip, state: "leased" });
                    }
                    EffectiveState::Cooling => {
                        return Err(LedgerError::AddressInUse { ip, state: "cooling" });
                    }
                    EffectiveState::Lost => {
                        return Err(LedgerError::AddressInUse { ip, state: "lost but still leased" });
                    }
                }
            }
            Ok(((), changes))
        })
    }

    /// Adds secondary addresses to a known ENI that are not handed out before `cooling_until`
    /// (adopted from the provider: nobody here leased them, but someone may have just used them).
    pub fn adopt_addresses(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
        cooling_until: UnixMillis,
    ) -> Result<(), LedgerError> {
        self.adopt_addresses_in_use(eni_id, addresses, cooling_until, Vec::new()).map(drop)
    }

    /// Like `adopt_addresses`, in one operation with the leases of pods found using some of them
    /// (rebuilt from the node): an address that one of `in_use` names is adopted leased to it.
    /// A lease whose key already holds a lease, or whose address is not among `addresses`, is
    /// skipped. Returns the leases made.
    pub fn adopt_addresses_in_use(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
        cooling_until: UnixMillis,
        in_use: Vec<Lease>,
    ) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            if !st.enis.contains_key(eni_id) {
                return Err(LedgerError::UnknownEni(eni_id.into()));
            }
            let mut seen = HashSet::new();
            for &ip in addresses {
                st.check_new_address(ip)?;
                if !seen.insert(ip) {
                    return Err(LedgerError::AddressExists(ip));
                }
            }
            let mut made: Vec<Lease> = Vec::new();
            for mut lease in in_use {
                check_key(&lease.key)?;
                let taken =
                    st.leases.contains_key(&lease.key) || made.iter().any(|m| m.key == lease.key || m.ip == lease.ip);
                if !taken && seen.contains(&lease.ip) {
                    lease.eni_id = eni_id.into();
                    made.push(lease);
                }
            }
            let mut changes: Vec<Change> = addresses
                .iter()
                .map(|&ip| {
                    let state = match made.iter().find(|l| l.ip == ip) {
                        Some(l) => AddressState::Leased { key: l.key.clone() },
                        None => AddressState::Cooling { until: cooling_until },
                    };
                    Change::PutAddr(AddressRecord { ip, eni_id: eni_id.into(), state, last_released: None })
                })
                .collect();
            changes.extend(made.iter().cloned().map(Change::PutLease));
            Ok((made, changes))
        })
    }

    /// Leases known addresses to pods found using them (rebuilt from the node after the ledger
    /// lost them): each lease is made only if its key holds no lease and its address is known,
    /// on an ENI of ours, and free or cooling (cooling because we released it, yet a pod uses
    /// it). Everything else is skipped. Returns the leases made.
    pub fn restore_leases(&self, leases: Vec<Lease>) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            let mut made: Vec<Lease> = Vec::new();
            for mut lease in leases {
                check_key(&lease.key)?;
                let Some(addr) = st.addrs.get(&lease.ip) else { continue };
                let usable = matches!(addr.state, AddressState::Free | AddressState::Cooling { .. });
                let taken =
                    st.leases.contains_key(&lease.key) || made.iter().any(|m| m.key == lease.key || m.ip == lease.ip);
                if usable && !taken {
                    lease.eni_id = addr.eni_id.clone();
                    made.push(lease);
                }
            }
            let changes = made
                .iter()
                .flat_map(|l| {
                    let addr = &st.addrs[&l.ip];
                    let leased = AddressRecord { state: AddressState::Leased { key: l.key.clone() }, ..addr.clone() };
                    [Change::PutAddr(leased), Change::PutLease(l.clone())]
                })
                .collect();
            Ok((made, changes))
        })
    }

    /// The provider no longer has these addresses: free and cooling ones are removed, leased
    /// ones become `Lost` (their lease stays until released, and the address is never handed
    /// out again). Unknown and already lost addresses are skipped. Returns the leases now lost.
    pub fn mark_lost(&self, addresses: &[Ipv4Addr]) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            let mut changes = Vec::new();
            let mut lost = Vec::new();
            for ip in addresses.iter().copied().collect::<std::collections::BTreeSet<_>>() {
                let Some(addr) = st.addrs.get(&ip) else { continue };
                if st.prefix_of(ip).is_some() {
                    // A prefix's addresses go with it: `mark_prefixes_lost`.
                    continue;
                }
                match &addr.state {
                    AddressState::Free | AddressState::Cooling { .. } => changes.push(Change::DelAddr(ip)),
                    AddressState::Leased { key } => {
                        if let Some(lease) = st.leases.get(key) {
                            lost.push(lease.clone());
                        }
                        let state = AddressState::Lost { key: key.clone() };
                        changes.push(Change::PutAddr(AddressRecord { state, ..addr.clone() }));
                    }
                    AddressState::Lost { .. } => {}
                }
            }
            Ok((lost, changes))
        })
    }

    /// The provider has these addresses on `eni_id` again: each that is `Lost` there is leased
    /// to its lease once more (the pod never stopped using it). Others are skipped. Returns the
    /// leases recovered.
    pub fn recover_lost(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            let mut changes = Vec::new();
            let mut recovered = Vec::new();
            for ip in addresses.iter().copied().collect::<std::collections::BTreeSet<_>>() {
                let Some(addr) = st.addrs.get(&ip) else { continue };
                if addr.eni_id != eni_id || st.prefix_of(ip).is_some() {
                    continue;
                }
                if let AddressState::Lost { key } = &addr.state {
                    if let Some(lease) = st.leases.get(key) {
                        recovered.push(lease.clone());
                    }
                    let state = AddressState::Leased { key: key.clone() };
                    changes.push(Change::PutAddr(AddressRecord { state, ..addr.clone() }));
                }
            }
            Ok((recovered, changes))
        })
    }

    /// Removes an ENI and its addresses. Refused while any address is leased or cooling.
    pub fn remove_eni(&self, eni_id: &str) -> Result<(), LedgerError> {
        self.run(|inner, st| {
            if !st.enis.contains_key(eni_id) {
                return Err(LedgerError::UnknownEni(eni_id.into()));
            }
            let now = inner.clock.now();
            let mut counts = Counts::default();
            let mut changes = Vec::new();
            for addr in st.addrs.values().filter(|a| a.eni_id == eni_id) {
                counts.count(addr.effective_state(now));
                changes.push(Change::DelAddr(addr.ip));
            }
            let lost = st
                .addrs
                .values()
                .filter(|a| a.eni_id == eni_id && matches!(a.state, AddressState::Lost { .. }))
                .count();
            if counts.leased + counts.cooling + lost > 0 {
                return Err(LedgerError::EniInUse {
                    eni: eni_id.into(),
                    leased: counts.leased + lost,
                    cooling: counts.cooling,
                });
            }
            changes.extend(st.prefixes.values().filter(|p| p.eni_id == eni_id).map(|p| Change::DelPrefix(p.cidr)));
            changes.push(Change::DelEni(eni_id.into()));
            Ok(((), changes))
        })
    }

    /// Adds prefixes to a known ENI, every address of each free, or cooling until
    /// `cooling_until` (adopted from the provider: nobody here leased them, but someone may have
    /// just used them), except those that a lease of `in_use` names (pods found on the node using
    /// them: leased to them in the same operation, so never handed out first; a lease whose key
    /// already holds one is skipped). Refused (nothing added) if a prefix is not its own network,
    /// overlaps a known prefix or another of `cidrs`, or holds a known address or an attached
    /// ENI's primary. Returns the leases made.
    pub fn add_prefixes(
        &self,
        eni_id: &str,
        cidrs: &[Ipv4Net],
        cooling_until: Option<UnixMillis>,
        in_use: Vec<Lease>,
    ) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            if !st.enis.contains_key(eni_id) {
                return Err(LedgerError::UnknownEni(eni_id.into()));
            }
            let mut changes = Vec::new();
            for (i, &cidr) in cidrs.iter().enumerate() {
                let overlaps = |with: String| LedgerError::PrefixOverlaps { prefix: cidr, with };
                if cidr.trunc() != cidr {
                    return Err(overlaps(format!("its own network {}", cidr.trunc())));
                }
                if let Some(p) =
                    st.prefixes.values().find(|p| p.cidr.contains(&cidr.network()) || cidr.contains(&p.cidr.network()))
                {
                    return Err(overlaps(format!("prefix {}", p.cidr)));
                }
                if let Some(other) =
                    cidrs[..i].iter().find(|o| o.contains(&cidr.network()) || cidr.contains(&o.network()))
                {
                    return Err(overlaps(format!("prefix {other} of the same call")));
                }
                let prefix = PrefixRecord { cidr, eni_id: eni_id.into(), state: PrefixState::Active };
                for ip in prefix.addresses() {
                    if st.addrs.contains_key(&ip) {
                        return Err(overlaps(format!("address {ip}")));
                    }
                    if st.is_primary_ip(ip) {
                        return Err(overlaps(format!("the primary address {ip}")));
                    }
                    let state = cooling_until.map_or(AddressState::Free, |until| AddressState::Cooling { until });
                    changes.push(Change::PutAddr(AddressRecord {
                        ip,
                        eni_id: eni_id.into(),
                        state,
                        last_released: None,
                    }));
                }
                changes.push(Change::PutPrefix(prefix));
            }
            let mut made: Vec<Lease> = Vec::new();
            for mut lease in in_use {
                check_key(&lease.key)?;
                let ours = cidrs.iter().any(|c| c.contains(&lease.ip));
                let taken =
                    st.leases.contains_key(&lease.key) || made.iter().any(|m| m.key == lease.key || m.ip == lease.ip);
                if ours && !taken {
                    lease.eni_id = eni_id.into();
                    made.push(lease);
                }
            }
            for change in &mut changes {
                if let Change::PutAddr(rec) = change
                    && let Some(l) = made.iter().find(|l| l.ip == rec.ip)
                {
                    rec.state = AddressState::Leased { key: l.key.clone() };
                }
            }
            changes.extend(made.iter().cloned().map(Change::PutLease));
            Ok((made, changes))
        })
    }

    /// Removes a prefix and its addresses, to give it back to the provider. Refused (nothing
    /// removed) unless every one of its addresses is free and done cooling: a prefix never goes
    /// while a lease names any of its addresses.
    pub fn remove_prefix(&self, eni_id: &str, cidr: Ipv4Net) -> Result<(), LedgerError> {
        self.run(|inner, st| {
            let prefix = st.prefixes.get(&cidr).ok_or(LedgerError::UnknownPrefix(cidr))?;
            if prefix.eni_id != eni_id {
                return Err(LedgerError::WrongEni {
                    ip: cidr.network(),
                    requested: eni_id.into(),
                    actual: prefix.eni_id.clone(),
                });
            }
            let now = inner.clock.now();
            let mut changes = Vec::new();
            for ip in prefix.addresses() {
                let state = st.addrs.get(&ip).map(|a| a.effective_state(now));
                match state {
                    Some(EffectiveState::Free) => changes.push(Change::DelAddr(ip)),
                    None => {}
                    Some(EffectiveState::Leased) => return Err(LedgerError::AddressInUse { ip, state: "leased" }),
                    Some(EffectiveState::Cooling) => return Err(LedgerError::AddressInUse { ip, state: "cooling" }),
                    Some(EffectiveState::Lost) => {
                        return Err(LedgerError::AddressInUse { ip, state: "lost but still leased" });
                    }
                }
            }
            changes.push(Change::DelPrefix(cidr));
            Ok(((), changes))
        })
    }

    /// The provider no longer lists these prefixes. One that no lease names goes at once; one
    /// that leases name becomes `Lost`: its leased addresses `Lost`, its other addresses gone,
    /// nothing of it handed out, and it is never given back (`recover_prefix` if the provider
    /// lists it again; it goes with its last lease otherwise). Unknown prefixes and lost ones are
    /// skipped. Returns the leases now lost.
    pub fn mark_prefixes_lost(&self, cidrs: &[Ipv4Net]) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            let mut changes = Vec::new();
            let mut lost = Vec::new();
            for cidr in cidrs.iter().copied().collect::<BTreeSet<_>>() {
                let Some(prefix) = st.prefixes.get(&cidr) else { continue };
                if prefix.state == PrefixState::Lost {
                    continue;
                }
                let mut any_leased = false;
                for ip in prefix.addresses() {
                    let Some(addr) = st.addrs.get(&ip) else { continue };
                    match &addr.state {
                        AddressState::Leased { key } | AddressState::Lost { key } => {
                            any_leased = true;
                            if let Some(lease) = st.leases.get(key) {
                                lost.push(lease.clone());
                            }
                            let state = AddressState::Lost { key: key.clone() };
                            changes.push(Change::PutAddr(AddressRecord { state, ..addr.clone() }));
                        }
                        AddressState::Free | AddressState::Cooling { .. } => changes.push(Change::DelAddr(ip)),
                    }
                }
                if any_leased {
                    changes.push(Change::PutPrefix(PrefixRecord { state: PrefixState::Lost, ..prefix.clone() }));
                } else {
                    changes.push(Change::DelPrefix(cidr));
                }
            }
            Ok((lost, changes))
        })
    }

    /// The provider lists a lost prefix on `eni_id` again: it is active again, each lost address
    /// leased to its lease once more, and the addresses it had dropped come back cooling until
    /// `cooling_until`. Anything else is skipped. Returns the leases recovered.
    pub fn recover_prefix(
        &self,
        eni_id: &str,
        cidr: Ipv4Net,
        cooling_until: UnixMillis,
    ) -> Result<Vec<Lease>, LedgerError> {
        self.run(|_, st| {
            let Some(prefix) = st.prefixes.get(&cidr) else { return Ok((Vec::new(), Vec::new())) };
            if prefix.eni_id != eni_id || prefix.state != PrefixState::Lost {
                return Ok((Vec::new(), Vec::new()));
            }
            let mut changes = vec![Change::PutPrefix(PrefixRecord { state: PrefixState::Active, ..prefix.clone() })];
            let mut recovered = Vec::new();
            for ip in prefix.addresses() {
                match st.addrs.get(&ip) {
                    Some(addr) => {
                        if let AddressState::Lost { key } = &addr.state {
                            if let Some(lease) = st.leases.get(key) {
                                recovered.push(lease.clone());
                            }
                            let state = AddressState::Leased { key: key.clone() };
                            changes.push(Change::PutAddr(AddressRecord { state, ..addr.clone() }));
                        }
                    }
                    None => changes.push(Change::PutAddr(AddressRecord {
                        ip,
                        eni_id: eni_id.into(),
                        state: AddressState::Cooling { until: cooling_until },
                        last_released: None,
                    })),
                }
            }
            Ok((recovered, changes))
        })
    }

    /// Leases an address to `key`: the free address released longest ago, on an attached ENI.
    /// Idempotent: a key that already holds a lease gets that lease back (`created == false`).
    pub fn allocate(&self, key: LeaseKey, meta: LeaseMeta) -> Result<Allocation, LedgerError> {
        self.allocate_deferred(key, meta)?.wait()
    }

    /// [`Ledger::allocate`] for async callers: the state lock is held only briefly, and the
    /// wait for the sync holds no thread.
    pub async fn allocate_async(&self, key: LeaseKey, meta: LeaseMeta) -> Result<Allocation, LedgerError> {
        self.allocate_deferred(key, meta)?.await
    }

    fn allocate_deferred(&self, key: LeaseKey, meta: LeaseMeta) -> Result<Syncing<Allocation>, LedgerError> {
        check_key(&key)?;
        self.run_deferred(|inner, st| {
            if let Some(lease) = st.leases.get(&key) {
                return Ok((Allocation { lease: lease.clone(), created: false }, vec![]));
            }
            let now = inner.clock.now();
            st.promote_expired(now);
            // Check the record, not just the index: an address promoted out of cooling reads as
            // cooling again if the wall clock has stepped back since.
            let addr = st
                .free
                .iter()
                .map(|(_, ip)| &st.addrs[ip])
                .find(|a| {
                    a.effective_state(now) == EffectiveState::Free
                        && st.enis.get(&a.eni_id).is_some_and(|e| e.attached)
                        && st.served.as_ref().is_none_or(|s| s.contains(&a.eni_id))
                })
                .ok_or(LedgerError::NoFreeAddress)?;
            let lease = Lease { key: key.clone(), ip: addr.ip, eni_id: addr.eni_id.clone(), meta, created_at: now };
            let leased = AddressRecord { state: AddressState::Leased { key }, ..addr.clone() };
            Ok((
                Allocation { lease: lease.clone(), created: true },
                vec![Change::PutAddr(leased), Change::PutLease(lease)],
            ))
        })
    }

    /// Releases the lease of `key` into cooldown and returns it; `None` if there was none.
    pub fn release(&self, key: &LeaseKey) -> Result<Option<Lease>, LedgerError> {
        self.release_deferred(key)?.wait()
    }

    /// [`Ledger::release`] for async callers, as [`Ledger::allocate_async`].
    pub async fn release_async(&self, key: &LeaseKey) -> Result<Option<Lease>, LedgerError> {
        self.release_deferred(key)?.await
    }

    fn release_deferred(&self, key: &LeaseKey) -> Result<Syncing<Option<Lease>>, LedgerError> {
        self.run_deferred(|inner, st| {
            let Some(lease) = st.leases.get(key).cloned() else {
                return Ok((None, vec![]));
            };
            let now = inner.clock.now();
            let changes = release_changes(st, &lease, now, inner.config.cooldown);
            Ok((Some(lease), with_emptied_prefixes(st, changes)))
        })
    }

    /// Releases every lease of `network` whose (container id, ifname) is not in `valid` and that
    /// is at least `min_age` old (a younger one may belong to an ADD the caller's list predates),
    /// in one transaction, and returns them.
    pub fn gc(
        &self,
        network: &str,
        valid: &HashSet<(String, String)>,
        min_age: Duration,
    ) -> Result<Vec<Lease>, LedgerError> {
        self.run(|inner, st| {
            let now = inner.clock.now();
            let made_before = now.saturating_sub(min_age.as_millis() as u64);
            let stale: Vec<Lease> = st
                .leases
                .values()
                .filter(|l| l.key.network == network)
                .filter(|l| min_age.is_zero() || l.created_at <= made_before)
                .filter(|l| !valid.contains(&(l.key.container_id.clone(), l.key.ifname.clone())))
                .cloned()
                .collect();
            let changes = stale.iter().flat_map(|l| release_changes(st, l, now, inner.config.cooldown)).collect();
            Ok((stale, with_emptied_prefixes(st, changes)))
        })
    }

    /// Moves the lease of `old` to `new.key` (same IP): the ledger holds a stale lease for an
    /// address that a live pod is seen using (an old copy of the ledger restored). Nothing
    /// happens, and false is returned, unless `old` holds exactly `new.ip` and `new.key` holds no
    /// lease. The address never passes through free or cooling, and a lost one stays lost.
    pub fn rekey_lease(&self, old: &LeaseKey, new: Lease) -> Result<bool, LedgerError> {
        check_key(&new.key)?;
        self.run(|_, st| {
            let Some(stale) = st.leases.get(old) else { return Ok((false, vec![])) };
            if stale.ip != new.ip || st.leases.contains_key(&new.key) {
                return Ok((false, vec![]));
            }
            let Some(addr) = st.addrs.get(&new.ip) else { return Ok((false, vec![])) };
            let lease = Lease { eni_id: stale.eni_id.clone(), ..new };
            // A lost address stays lost under its new key: it goes with the lease, never to free.
            let state = match addr.state {
                AddressState::Lost { .. } => AddressState::Lost { key: lease.key.clone() },
                _ => AddressState::Leased { key: lease.key.clone() },
            };
            let moved = AddressRecord { state, ..addr.clone() };
            Ok((true, vec![Change::DelLease(old.clone()), Change::PutAddr(moved), Change::PutLease(lease)]))
        })
    }

    /// Rewrites every address whose cooldown has ended as free; returns how many.
    pub fn expire_cooldowns(&self) -> Result<usize, LedgerError> {
        self.run(|inner, st| {
            let now = inner.clock.now();
            let changes: Vec<Change> = st
                .addrs
                .values()
                .filter(|a| matches!(a.state, AddressState::Cooling { until } if until <= now))
                .map(|a| Change::PutAddr(AddressRecord { state: AddressState::Free, ..a.clone() }))
                .collect();
            Ok((changes.len(), changes))
        })
    }

    pub fn lease(&self, key: &LeaseKey) -> Option<Lease> {
        self.inner.lock().leases.get(key).cloned()
    }

    pub fn lease_by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        let st = self.inner.lock();
        match &st.addrs.get(&ip)?.state {
            AddressState::Leased { key } => st.leases.get(key).cloned(),
            _ => None,
        }
    }

    /// Leases matching `filter`, ordered by key.
    pub fn leases(&self, filter: &LeaseFilter) -> Vec<Lease> {
        self.inner.lock().leases.values().filter(|l| filter.matches(l)).cloned().collect()
    }

    pub fn enis(&self) -> Vec<EniRecord> {
        self.inner.lock().enis.values().cloned().collect()
    }

    pub fn eni(&self, id: &str) -> Option<EniRecord> {
        self.inner.lock().enis.get(id).cloned()
    }

    /// The prefixes of `eni_id`, or of every ENI.
    pub fn prefixes(&self, eni_id: Option<&str>) -> Vec<PrefixRecord> {
        let st = self.inner.lock();
        st.prefixes.values().filter(|p| eni_id.is_none_or(|id| p.eni_id == id)).cloned().collect()
    }

    /// The prefix `ip` lies in, if any.
    pub fn prefix_of(&self, ip: Ipv4Addr) -> Option<PrefixRecord> {
        self.inner.lock().prefix_of(ip).cloned()
    }

    pub fn address(&self, ip: Ipv4Addr) -> Option<AddressRecord> {
        self.inner.lock().addrs.get(&ip).cloned()
    }

    /// Addresses, ordered by IP; only those of `eni_id` when given.
    pub fn addresses(&self, eni_id: Option<&str>) -> Vec<AddressRecord> {
        let st = self.inner.lock();
        st.addrs.values().filter(|a| eni_id.is_none_or(|e| a.eni_id == e)).cloned().collect()
    }

    /// The only ENIs whose free addresses `allocate` hands out (`None`: every attached one),
    /// replacing the last choice. Held in memory only: the daemon sets it from its
    /// configuration (custom networking: the zone's subnet's ENIs, never the primary). Leases on
    /// other ENIs stand; an ENI added later serves only once named.
    pub fn set_served_enis(&self, enis: Option<BTreeSet<String>>) {
        self.inner.lock().served = enis;
    }

    /// Counts as of now (a cooling address whose cooldown has ended counts as free).
    pub fn stats(&self) -> Stats {
        let now = self.inner.clock.now();
        let st = self.inner.lock();
        let mut stats = Stats { enis: st.enis.len(), ..Stats::default() };
        for id in st.enis.keys() {
            stats.per_eni.insert(id.clone(), Counts::default());
        }
        for addr in st.addrs.values() {
            let state = addr.effective_state(now);
            if state == EffectiveState::Lost {
                stats.lost += 1;
            }
            stats.addresses.count(state);
            // Every ENI has its entry already: no key cloned per address (this runs under the
            // lock allocations take, on every pool wake).
            match stats.per_eni.get_mut(&addr.eni_id) {
                Some(c) => c.count(state),
                None => stats.per_eni.entry(addr.eni_id.clone()).or_default().count(state),
            }
        }
        for p in st.prefixes.values().filter(|p| p.state == PrefixState::Active) {
            // The prefix's addresses are one range of the ordered map: one walk, no lookups.
            let mut here = Counts::default();
            for a in st.addrs.range(p.cidr.network()..=p.cidr.broadcast()).map(|(_, a)| a) {
                here.count(a.effective_state(now));
            }
            stats.prefix_addresses.add(&here);
            stats.prefixes += 1;
            match stats.per_eni_prefixes.get_mut(&p.eni_id) {
                Some(n) => *n += 1,
                None => {
                    stats.per_eni_prefixes.insert(p.eni_id.clone(), 1);
                }
            }
            if here.free == 1usize << (32 - p.cidr.prefix_len()) {
                stats.free_prefixes += 1;
            }
        }
        stats
    }

    /// Checks every invariant of the in-memory state (also done on open).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.lock().check_invariants()
    }

    /// Closes the ledger the way a crash would leave it as far as this process's writes go: no
    /// final checkpoint, so everything since the last checkpoint exists only in the
    /// write-ahead log. For recovery tests. (The kernel still holds what was written.)
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.inner.crashed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flushes everything and closes the ledger, reporting a failure to do so (dropping the
    /// last handle does the same silently).
    pub fn close(self) -> Result<(), LedgerError> {
        let result = self.inner.checkpoint();
        drop(self);
        result
    }
}

fn free_address(ip: Ipv4Addr, eni_id: &str) -> Change {
    Change::PutAddr(AddressRecord { ip, eni_id: eni_id.into(), state: AddressState::Free, last_released: None })
}

/// `changes` plus the removal of each lost prefix they leave without an address (its last lost
/// lease went).
fn with_emptied_prefixes(st: &State, mut changes: Vec<Change>) -> Vec<Change> {
    let deleted: BTreeSet<Ipv4Addr> =
        changes.iter().filter_map(|c| if let Change::DelAddr(ip) = c { Some(*ip) } else { None }).collect();
    if deleted.is_empty() {
        // The common release: an address cools or goes free; no prefix can have emptied.
        return changes;
    }
    let emptied: Vec<Ipv4Net> = st
        .prefixes
        .values()
        .filter(|p| p.state == PrefixState::Lost)
        .filter(|p| deleted.iter().any(|ip| p.cidr.contains(ip)))
        .filter(|p| p.addresses().all(|ip| deleted.contains(&ip) || !st.addrs.contains_key(&ip)))
        .map(|p| p.cidr)
        .collect();
    changes.extend(emptied.into_iter().map(Change::DelPrefix));
    changes
}

fn release_changes(st: &State, lease: &Lease, now: UnixMillis, cooldown: Duration) -> Vec<Change> {
    let addr = &st.addrs[&lease.ip];
    if matches!(addr.state, AddressState::Lost { .. }) {
        // The provider no longer has it: it goes with its lease.
        return vec![Change::DelAddr(lease.ip), Change::DelLease(lease.key.clone())];
    }
    let state = if cooldown.is_zero() {
        AddressState::Free
    } else {
        AddressState::Cooling { until: now.saturating_add(cooldown.as_millis() as u64) }
    };
    vec![
        Change::PutAddr(AddressRecord { state, last_released: Some(now), ..addr.clone() }),
        Change::DelLease(lease.key.clone()),
    ]
}

fn check_key(key: &LeaseKey) -> Result<(), LedgerError> {
    if [&key.network, &key.container_id, &key.ifname].iter().any(|p| p.contains('\0')) {
        return Err(LedgerError::InvalidKey(key.clone()));
    }
    Ok(())
}

fn sled_error(path: &Path, e: sled::Error) -> OpenError {
    match e {
        sled::Error::Io(source) => OpenError::Io { path: path.to_path_buf(), source },
        other => OpenError::Corrupt { path: path.to_path_buf(), detail: format!("the storage engine says: {other}") },
    }
}

/// Everything of `open` that may touch sled (and so may panic on damaged files).
fn open_locked(dir: &Path, config: &LedgerConfig) -> Result<(Trees, State, RecoveryReport), OpenError> {
    let path = dir.to_path_buf();
    let corrupt = |detail: String| OpenError::Corrupt { path: path.clone(), detail };
    let db = open_sled(dir, config)?;
    let meta = db.open_tree(TREE_META).map_err(|e| sled_error(dir, e))?;
    // sled 0.34 opens a damaged or emptied log as an empty database. The marker file, written
    // once the ledger exists, tells "new" from "lost its data": the latter must never open as an
    // empty ledger, or every address would be handed out again.
    let marker = dir.join(MARKER_FILE);
    let initialised = marker.exists();

    match meta.get(META_MAGIC).map_err(|e| sled_error(dir, e))? {
        Some(m) if m.as_ref() == MAGIC => {}
        Some(_) => {
            return Err(OpenError::Foreign { path, detail: "its marker is not enipool's".into() });
        }
        None if initialised => {
            return Err(corrupt(format!(
                "the store under {} has lost its data (no enipool marker, but {} says this ledger was \
                 initialised); restore it from a backup or move the directory aside to start empty",
                dir.join("sled").display(),
                marker.display()
            )));
        }
        None => {
            let others: Vec<String> = db
                .tree_names()
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .filter(|n| n != TREE_META && n != "__sled__default")
                .collect();
            if !others.is_empty() || !db.is_empty() || !meta.is_empty() {
                return Err(OpenError::Foreign {
                    path,
                    detail: format!("it is a sled database without enipool's marker (trees: {others:?})"),
                });
            }
            meta.insert(META_MAGIC, MAGIC).map_err(|e| sled_error(dir, e))?;
            meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes()).map_err(|e| sled_error(dir, e))?;
            db.flush().map_err(|e| sled_error(dir, e))?;
        }
    }
    if !initialised {
        write_marker(&marker).map_err(|source| OpenError::Io { path: marker.clone(), source })?;
    }
    let version = match meta.get(META_SCHEMA).map_err(|e| sled_error(dir, e))? {
        Some(v) => v
            .as_ref()
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt("schema_version is not 4 bytes".into()))?,
        None => {
            return Err(corrupt("it has enipool's marker but no schema version".into()));
        }
    };
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerVersion { path, found: version, supported: SCHEMA_VERSION });
    }
    migrate(&db, version).map_err(corrupt)?;

    let open = |name: &str| db.open_tree(name).map_err(|e| sled_error(dir, e));
    let trees = Trees {
        enis: open(TREE_ENIS)?,
        addrs: open(TREE_ADDRS)?,
        leases: open(TREE_LEASES)?,
        prefixes: open(TREE_PREFIXES)?,
        meta,
        db: db.clone(),
    };

    let applied = trees.applied_seq().map_err(corrupt)?;
    let image = take_image(dir, applied);
    let from_image = image.is_some();
    let mut state = match image {
        Some(image) => {
            let mut state = State::default();
            for e in image.enis {
                state.enis.insert(e.id.clone(), e);
            }
            for a in image.addrs {
                state.index(&a);
                state.addrs.insert(a.ip, a);
            }
            for l in image.leases {
                state.leases.insert(l.key.clone(), l);
            }
            for p in image.prefixes {
                state.prefixes.insert(p.cidr, p);
            }
            state
        }
        None => load_state(&trees, dir)?,
    };

    // Replay what the log holds beyond the last checkpoint, then checkpoint it into sled so the
    // log can start empty.
    let wal_dir = dir.join("wal");
    let recovered =
        Wal::recover(&wal_dir).map_err(|source| OpenError::Io { path: wal_dir.clone(), source })?.map_err(corrupt)?;
    state.last_seq = applied;
    let mut report = RecoveryReport { torn_tail_bytes: recovered.torn_tail_bytes, replayed_records: 0, from_image };
    for rec in recovered.records.iter().filter(|r| r.seq > applied) {
        if rec.seq != state.last_seq + 1 {
            return Err(corrupt(format!(
                "the write-ahead log resumes at record {} but the store holds records up to {}: records are missing",
                rec.seq, state.last_seq
            )));
        }
        let changes: Vec<Change> = postcard::from_bytes(&rec.body)
            .map_err(|e| corrupt(format!("write-ahead log record {} does not decode: {e}", rec.seq)))?;
        for c in changes {
            state.apply(c);
        }
        state.last_seq = rec.seq;
        report.replayed_records += 1;
    }
    if !state.dirty.is_empty() {
        trees.write_snapshot(&state.take_snapshot()).map_err(corrupt)?;
        db.flush().map_err(|e| sled_error(dir, e))?;
    }
    state.check_invariants().map_err(|detail| OpenError::Invariant { path: path.clone(), detail })?;
    Ok((trees, state, report))
}

/// Loads the mirror from sled's trees (the path after a crash, or without an image).
fn load_state(trees: &Trees, dir: &Path) -> Result<State, OpenError> {
    let corrupt = |detail: String| OpenError::Corrupt { path: dir.to_path_buf(), detail };
    // The two big trees load in parallel: reopening with thousands of leases is mostly
    // iterating and decoding them.
    let mut state = State::default();
    let (leases, loaded) = std::thread::scope(|scope| {
        let leases = scope.spawn(|| {
            let mut leases = BTreeMap::new();
            load_tree(&trees.leases, TREE_LEASES, dir, |l: Lease| {
                leases.insert(l.key.clone(), l);
            })
            .map(|()| leases)
        });
        let loaded = load_tree(&trees.enis, TREE_ENIS, dir, |e: EniRecord| {
            state.enis.insert(e.id.clone(), e);
        })
        .and_then(|()| {
            load_tree(&trees.addrs, TREE_ADDRS, dir, |a: AddressRecord| {
                state.index(&a);
                state.addrs.insert(a.ip, a);
            })
        })
        .and_then(|()| {
            load_tree(&trees.prefixes, TREE_PREFIXES, dir, |p: PrefixRecord| {
                state.prefixes.insert(p.cidr, p);
            })
        });
        (leases.join(), loaded)
    });
    loaded?;
    state.leases = leases.map_err(|_| corrupt("the storage engine failed while reading leases".into()))??;
    Ok(state)
}

/// A clean close leaves the whole state in one checksummed file, tagged with the sequence number
/// sled holds, so the next open reads one file instead of materialising every record from sled
/// (a cold sled open of 10,000 leases took ~170 ms here). Used only when its sequence number is
/// sled's, and deleted as it is read, so it can never stand for any other state.
#[derive(Serialize, Deserialize)]
struct Image {
    seq: u64,
    enis: Vec<EniRecord>,
    addrs: Vec<AddressRecord>,
    leases: Vec<Lease>,
    prefixes: Vec<PrefixRecord>,
}

/// The image schemas 1 and 2 wrote: the same, without prefixes.
#[derive(Deserialize)]
struct ImageBeforePrefixes {
    seq: u64,
    enis: Vec<EniRecord>,
    addrs: Vec<AddressRecord>,
    leases: Vec<Lease>,
}

const IMAGE_FILE: &str = "image";

fn write_image(dir: &Path, st: &State) -> std::io::Result<()> {
    let image = Image {
        seq: st.last_seq,
        enis: st.enis.values().cloned().collect(),
        addrs: st.addrs.values().cloned().collect(),
        leases: st.leases.values().cloned().collect(),
        prefixes: st.prefixes.values().cloned().collect(),
    };
    let body = postcard::to_allocvec(&image).expect("records always serialize");
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let tmp = dir.join("image.tmp");
    let file = File::create(&tmp)?;
    std::io::Write::write_all(&mut &file, &bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(IMAGE_FILE))?;
    File::open(dir)?.sync_all()
}

/// Reads and removes the image; returns it if it is whole and stands for sled's state `applied`.
fn take_image(dir: &Path, applied: u64) -> Option<Image> {
    let path = dir.join(IMAGE_FILE);
    let bytes = fs::read(&path).ok()?;
    let _ = fs::remove_file(&path);
    let (crc, body) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(crc.try_into().ok()?) != crc32fast::hash(body) {
        return None;
    }
    // An older image lacks the prefixes at the end, and so does not decode as today's.
    let image: Image = postcard::from_bytes(body).ok().or_else(|| {
        let old: ImageBeforePrefixes = postcard::from_bytes(body).ok()?;
        Some(Image { seq: old.seq, enis: old.enis, addrs: old.addrs, leases: old.leases, prefixes: Vec::new() })
    })?;
    (image.seq == applied).then_some(image)
}

const MARKER_FILE: &str = "LEDGER";

fn write_marker(marker: &Path) -> std::io::Result<()> {
    let tmp = marker.with_extension("tmp");
    let file = File::create(&tmp)?;
    std::io::Write::write_all(&mut &file, format!("enipool ledger, schema {SCHEMA_VERSION}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, marker)?;
    File::open(marker.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Opens sled, waiting (at most `config.store_lock_wait`) for its file lock: a sled IO thread of
/// a ledger closed a moment ago in this process can still hold it (spacejam/sled#1234). Our own
/// `LOCK` is already held, so no other ledger can be the holder.
fn open_sled(dir: &Path, config: &LedgerConfig) -> Result<sled::Db, OpenError> {
    let deadline = std::time::Instant::now() + config.store_lock_wait;
    let mut pause = Duration::from_millis(1);
    loop {
        let opened =
            sled::Config::new().path(dir.join("sled")).cache_capacity(config.cache_bytes).flush_every_ms(None).open();
        match opened {
            // sled reports its lock as ErrorKind::Other with this message (config.rs).
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(OpenError::Locked { path: dir.to_path_buf(), source: e });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other.map_err(|e| sled_error(dir, e)),
        }
    }
}

fn load_tree<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    name: &str,
    dir: &Path,
    mut put: impl FnMut(T),
) -> Result<(), OpenError> {
    for item in tree.iter() {
        let (key, value) = item.map_err(|e| sled_error(dir, e))?;
        let rec = postcard::from_bytes(&value).map_err(|e| OpenError::Corrupt {
            path: dir.to_path_buf(),
            detail: format!("record {:02x?} in tree {name} does not decode: {e}", key.as_ref()),
        })?;
        put(rec);
    }
    Ok(())
}

/// Brings an older schema forward, in place, one version at a time.
/// - 2 added `AddressState::Lost` at the end of the enum;
/// - 3 added prefixes (`PrefixRecord`, the `prefixes` tree, `Change::PutPrefix`/`DelPrefix` at the
///   end of the enum, the image's last field).
///
/// Each only added at the end, so every older record reads the same and only the number changes
/// (older builds then refuse a ledger that may hold what they cannot read).
fn migrate(db: &sled::Db, mut version: u32) -> Result<(), String> {
    while version < SCHEMA_VERSION {
        match version {
            1 | 2 => {
                version += 1;
                let meta = db.open_tree(TREE_META).map_err(|e| e.to_string())?;
                meta.insert(META_SCHEMA, &version.to_be_bytes()).map_err(|e| e.to_string())?;
                db.flush().map_err(|e| e.to_string())?;
            }
            older => return Err(format!("schema version {older} is unknown (this build knows 1..={SCHEMA_VERSION})")),
        }
    }
    Ok(())
}

/// A prefix's sled key: its address and length.
fn prefix_key(cidr: &Ipv4Net) -> Vec<u8> {
    let mut key = cidr.network().octets().to_vec();
    key.push(cidr.prefix_len());
    key
}

//! Shared pieces of the ledger benchmarks: the pool they run on, the workload (allocate+release
//! pairs from N concurrent callers), the peer they are compared with (the reference daemon's
//! whole-file JSON checkpoint), the fdatasync floor, and small statistics and size helpers.
//!
//! Both `benches/ledger.rs` (criterion) and `benches/ledger_report.rs` (the plain summary that
//! prints the figures beside their targets) use these, so the two measure the same thing.

pub mod harness;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use enipool_storage::{EniRecord, LeaseKey, LeaseMeta, Ledger, LedgerConfig, SystemClock};
use serde::Serialize;

/// Addresses in the pool the throughput benchmarks run on (one ENI).
pub const POOL_SIZE: usize = 4096;
/// The network every benchmark lease belongs to.
pub const NETWORK: &str = "aws-cni";
/// The ENI the pool lives on.
pub const ENI_ID: &str = "eni-0bench0000000001";
/// The version string of the reference daemon's checkpoint file.
pub const JSON_CHECKPOINT_VERSION: &str = "vpc-cni-ipam/1";

/// True when the binary was started by `cargo bench` (which passes `--bench`); false under
/// `cargo test --benches`, where the benchmarks run once, at smoke sizes, in the test profile.
pub fn full_mode() -> bool {
    std::env::args().skip(1).any(|a| a == "--bench")
}

/// Where every benchmark makes its scratch directories: `<temp dir>/enipool-benches`. On the
/// development machines the temp dir is on the same disk (ext4) as the repository.
pub fn bench_root() -> PathBuf {
    let root = std::env::temp_dir().join("enipool-benches");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    root
}

/// A fresh scratch directory under [`bench_root`], removed when dropped.
pub fn scratch_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{label}-"))
        .tempdir_in(bench_root())
        .unwrap_or_else(|e| panic!("cannot create a scratch directory under {}: {e}", bench_root().display()))
}

/// The ledger's default configuration (checkpoint interval included) with the given cooldown.
pub fn ledger_config(cooldown: Duration) -> LedgerConfig {
    LedgerConfig { cooldown, ..LedgerConfig::default() }
}

/// `n` secondary addresses, 10.0.64.0 upwards (at most 49,152 of them, all inside 10.0.0.0/16).
pub fn pool_addresses(n: usize) -> Vec<Ipv4Addr> {
    assert!(n <= 49_152, "the benchmark subnet holds at most 49,152 secondary addresses");
    let first = u32::from(Ipv4Addr::new(10, 0, 64, 0));
    (0..n as u32).map(|i| Ipv4Addr::from(first + i)).collect()
}

/// The one ENI the pool lives on.
pub fn bench_eni() -> EniRecord {
    EniRecord {
        id: ENI_ID.into(),
        device_number: 1,
        subnet_cidr: "10.0.0.0/16".parse().expect("valid CIDR"),
        subnet_gateway: Ipv4Addr::new(10, 0, 0, 1),
        primary_ip: Ipv4Addr::new(10, 0, 0, 10),
        route_table: 2,
        attached: true,
    }
}

/// Opens a ledger in `dir` and gives it one ENI with `pool` free addresses.
pub fn open_pool(dir: &Path, cooldown: Duration, pool: usize) -> Ledger {
    let ledger = Ledger::open(dir, ledger_config(cooldown), Arc::new(SystemClock))
        .unwrap_or_else(|e| panic!("cannot open a ledger in {}: {e}", dir.display()));
    ledger.add_eni(bench_eni(), &pool_addresses(pool)).expect("adding the benchmark ENI");
    ledger
}

/// Like [`open_pool`], with the pool's addresses held as `pool / 16` prefixes (/28s) of the
/// ENI, as prefix delegation holds them, instead of secondary IPs.
pub fn open_prefix_pool(dir: &Path, cooldown: Duration, pool: usize) -> Ledger {
    assert_eq!(pool % 16, 0, "a prefix pool holds whole /28s");
    let ledger = Ledger::open(dir, ledger_config(cooldown), Arc::new(SystemClock))
        .unwrap_or_else(|e| panic!("cannot open a ledger in {}: {e}", dir.display()));
    ledger.add_eni(bench_eni(), &[]).expect("adding the benchmark ENI");
    // pool_addresses starts on a /28 boundary: its addresses, 16 at a time, are the prefixes.
    let prefixes: Vec<ipnet::Ipv4Net> =
        pool_addresses(pool).chunks(16).map(|block| ipnet::Ipv4Net::new(block[0], 28).expect("a valid /28")).collect();
    ledger.add_prefixes(ENI_ID, &prefixes, None, Vec::new()).expect("adding the benchmark prefixes");
    ledger
}

/// A lease key shaped like the real ones: a 64-hex-digit container id and `eth0`. `owner` keeps
/// the keys of different callers (and of the pre-populated live leases) apart.
pub fn lease_key(owner: u64, n: u64) -> LeaseKey {
    LeaseKey::new(NETWORK, format!("{owner:032x}{n:032x}"), "eth0")
}

/// Pod metadata like the daemon records it.
pub fn lease_meta(owner: u64, n: u64) -> LeaseMeta {
    LeaseMeta {
        pod_namespace: Some("default".into()),
        pod_name: Some(format!("bench-{owner}-{n}")),
        netns: Some(format!("/var/run/netns/cni-{owner:08x}-{n:016x}")),
        host_veth: Some(format!("eni{:011x}", (owner << 32 | n) & 0xfff_ffff_ffff)),
    }
}

/// The owner id of the pre-populated live leases (callers are 0..N).
pub const LIVE_OWNER: u64 = 0xffff_ffff;

/// A durable lease store under test: both the ledger and the JSON-checkpoint peer.
pub trait LeaseStore: Sync {
    /// Durably leases an address to `key`.
    fn allocate(&self, key: LeaseKey, meta: LeaseMeta) -> Ipv4Addr;
    /// Durably releases the lease of `key`.
    fn release(&self, key: &LeaseKey);
}

impl LeaseStore for Ledger {
    fn allocate(&self, key: LeaseKey, meta: LeaseMeta) -> Ipv4Addr {
        Ledger::allocate(self, key, meta).expect("ledger allocate").lease.ip
    }

    fn release(&self, key: &LeaseKey) {
        Ledger::release(self, key).expect("ledger release").expect("the key held a lease");
    }
}

/// Runs `callers` threads that each do `per_caller` allocate+release pairs on fresh keys
/// (`first_n..`), all released again at the end; returns the wall time from the moment every
/// thread is ready to the moment the last one is done.
pub fn run_pairs<S: LeaseStore>(store: &S, callers: usize, per_caller: u64, first_n: u64) -> Duration {
    let barrier = Barrier::new(callers + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers as u64)
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for n in first_n..first_n + per_caller {
                        let key = lease_key(c, n);
                        store.allocate(key.clone(), lease_meta(c, n));
                        store.release(&key);
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("a benchmark caller panicked");
        }
        start.elapsed()
    })
}

/// Leases `count` addresses to live keys (owner [`LIVE_OWNER`]) from up to 64 threads, so the
/// ledger's group commit makes the setup quick. Not measured.
pub fn populate_ledger(ledger: &Ledger, count: u64) {
    let threads = count.clamp(1, 64);
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for n in (t..count).step_by(threads as usize) {
                    LeaseStore::allocate(ledger, lease_key(LIVE_OWNER, n), lease_meta(LIVE_OWNER, n));
                }
            });
        }
    });
}

/// The allocate+release workload split over `callers`: how many pairs each does so that the
/// total is about `total` (at least one each).
pub fn per_caller(total: u64, callers: usize) -> u64 {
    (total / callers as u64).max(1)
}

// ---------------------------------------------------------------------------------------------
// The peer: the reference daemon's whole-file JSON checkpoint.
// ---------------------------------------------------------------------------------------------

/// One allocation as the reference daemon's checkpoint file records it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointEntry {
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    pub ipv4: String,
    #[serde(rename = "allocationTimestamp")]
    pub allocation_timestamp: i64,
    pub metadata: CheckpointMetadata,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckpointMetadata {
    #[serde(rename = "k8sPodNamespace", skip_serializing_if = "Option::is_none")]
    pub k8s_pod_namespace: Option<String>,
    #[serde(rename = "k8sPodName", skip_serializing_if = "Option::is_none")]
    pub k8s_pod_name: Option<String>,
}

#[derive(Serialize)]
struct CheckpointData<'a> {
    version: &'static str,
    allocations: Vec<&'a CheckpointEntry>,
}

#[derive(Debug)]
struct JsonState {
    /// Free addresses, the one released longest ago first (as the ledger hands them out).
    free: VecDeque<Ipv4Addr>,
    leases: HashMap<LeaseKey, (Ipv4Addr, CheckpointEntry)>,
    temp_counter: u64,
}

/// A small, honest reimplementation of how the reference daemon persists its leases: the state
/// lives in memory under one mutex, and every change (each allocate, each release) rewrites the
/// whole checkpoint `{"version":"vpc-cni-ipam/1","allocations":[...]}` while still holding the
/// mutex: write a temp file beside it, fsync it, rename it over the checkpoint.
///
/// It is, if anything, kinder to the peer than the original: the free address comes off a queue
/// instead of a scan of every ENI's addresses, and the temp file is closed before the rename.
#[derive(Debug)]
pub struct JsonCheckpointStore {
    dir: PathBuf,
    path: PathBuf,
    state: Mutex<JsonState>,
}

impl JsonCheckpointStore {
    /// A store for `pool` free addresses whose checkpoint is `<dir>/ipam.json`.
    pub fn create(dir: &Path, pool: usize) -> JsonCheckpointStore {
        let store = JsonCheckpointStore {
            dir: dir.to_path_buf(),
            path: dir.join("ipam.json"),
            state: Mutex::new(JsonState { free: pool_addresses(pool).into(), leases: HashMap::new(), temp_counter: 0 }),
        };
        let mut st = store.lock();
        store.checkpoint(&mut st);
        drop(st);
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JsonState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leases `count` addresses to live keys (owner [`LIVE_OWNER`]) and writes one checkpoint.
    /// Setup only, not measured.
    pub fn populate(&self, count: u64) {
        let mut st = self.lock();
        for n in 0..count {
            Self::insert(&mut st, lease_key(LIVE_OWNER, n), lease_meta(LIVE_OWNER, n));
        }
        self.checkpoint(&mut st);
    }

    /// Live leases.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the checkpoint file now.
    pub fn checkpoint_bytes(&self) -> u64 {
        fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn insert(st: &mut JsonState, key: LeaseKey, meta: LeaseMeta) -> Ipv4Addr {
        if let Some((ip, _)) = st.leases.get(&key) {
            return *ip;
        }
        let ip = st.free.pop_front().expect("the JSON peer ran out of addresses");
        let entry = CheckpointEntry {
            network_name: key.network.clone(),
            container_id: key.container_id.clone(),
            if_name: key.ifname.clone(),
            ipv4: ip.to_string(),
            allocation_timestamp: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
            metadata: CheckpointMetadata { k8s_pod_namespace: meta.pod_namespace, k8s_pod_name: meta.pod_name },
        };
        st.leases.insert(key, (ip, entry));
        ip
    }

    /// Rewrites the whole checkpoint: temp file, fsync, rename. Called with the mutex held.
    fn checkpoint(&self, st: &mut JsonState) {
        let data = CheckpointData {
            version: JSON_CHECKPOINT_VERSION,
            allocations: st.leases.values().map(|(_, e)| e).collect(),
        };
        let mut bytes = serde_json::to_vec(&data).expect("checkpoint serializes");
        bytes.push(b'\n');
        st.temp_counter += 1;
        let temp = self.dir.join(format!("ipam.json.tmp{}", st.temp_counter));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&temp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&temp, &self.path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp);
            panic!("JSON checkpoint to {} failed: {e}", self.path.display());
        }
    }
}

impl LeaseStore for JsonCheckpointStore {
    fn allocate(&self, key: LeaseKey, meta: LeaseMeta) -> Ipv4Addr {
        let mut st = self.lock();
        let ip = Self::insert(&mut st, key, meta);
        self.checkpoint(&mut st);
        ip
    }

    fn release(&self, key: &LeaseKey) {
        let mut st = self.lock();
        let (ip, _) = st.leases.remove(key).expect("the key held a lease");
        st.free.push_back(ip);
        self.checkpoint(&mut st);
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: one fdatasync of a small append.
// ---------------------------------------------------------------------------------------------

/// A file in `dir` that small records are appended to and fdatasync'ed, the way the ledger's
/// write-ahead log does it: the cheapest durable write the disk offers.
#[derive(Debug)]
pub struct AppendFile {
    file: File,
    record: Vec<u8>,
}

impl AppendFile {
    /// Creates `<dir>/floor.log`; every [`append_sync`](Self::append_sync) appends `record_bytes`.
    pub fn create(dir: &Path, record_bytes: usize) -> AppendFile {
        let path = dir.join("floor.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        AppendFile { file, record: vec![b'x'; record_bytes] }
    }

    /// One append and one fdatasync.
    pub fn append_sync(&mut self) {
        self.file.write_all(&self.record).expect("append");
        self.file.sync_data().expect("fdatasync");
    }
}

/// Times `n` appends of `record_bytes`, each followed by an fdatasync, in `dir` (after one that is
/// not counted).
pub fn fdatasync_samples(dir: &Path, record_bytes: usize, n: usize) -> Vec<Duration> {
    let mut f = AppendFile::create(dir, record_bytes);
    f.append_sync();
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f.append_sync();
            t.elapsed()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Statistics and sizes.
// ---------------------------------------------------------------------------------------------

/// The `p`-th percentile (0..=100, nearest rank) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "percentile of no samples");
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Median and 99th percentile.
pub fn median_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    (percentile(samples, 50.0), percentile(samples, 99.0))
}

/// What a directory tree takes on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirSize {
    /// Sum of file lengths (`du --apparent-size`).
    pub apparent: u64,
    /// Sum of allocated blocks (`du`).
    pub allocated: u64,
    pub files: u64,
}

impl DirSize {
    /// The larger of the two measures.
    pub fn bytes(&self) -> u64 {
        self.apparent.max(self.allocated)
    }
}

/// Sizes the tree under `dir`. Files that vanish while it walks (a trimmed log segment, a sled
/// file being replaced) are skipped.
pub fn dir_size(dir: &Path) -> DirSize {
    use std::os::unix::fs::MetadataExt;
    let mut total = DirSize::default();
    let Ok(entries) = fs::read_dir(dir) else { return total };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let sub = dir_size(&entry.path());
            total.apparent += sub.apparent;
            total.allocated += sub.allocated;
            total.files += sub.files;
        } else {
            total.apparent += meta.len();
            total.allocated += meta.blocks() * 512;
            total.files += 1;
        }
    }
    total
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or `unknown`.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `1.23 ms`, `45.6 us`, `1.234 s`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// `12.3 MiB`, `456.0 KiB`, `789 B`.
pub fn fmt_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// `12,345`.
pub fn fmt_count(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut v, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(fmt_count(0.0), "0");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1000.0), "1,000");
        assert_eq!(fmt_count(1234567.0), "1,234,567");
    }

    #[test]
    fn json_peer_writes_the_reference_format() {
        let dir = scratch_dir("json-peer-test");
        let store = JsonCheckpointStore::create(dir.path(), 8);
        store.populate(2);
        let key = lease_key(1, 1);
        let ip = LeaseStore::allocate(&store, key.clone(), lease_meta(1, 1));
        let text = fs::read_to_string(dir.path().join("ipam.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], JSON_CHECKPOINT_VERSION);
        let allocs = v["allocations"].as_array().unwrap();
        assert_eq!(allocs.len(), 3);
        let mine = allocs.iter().find(|a| a["containerID"] == key.container_id.as_str()).unwrap();
        assert_eq!(mine["ipv4"], ip.to_string());
        assert_eq!(mine["ifName"], "eth0");
        assert_eq!(mine["networkName"], NETWORK);
        assert_eq!(mine["metadata"]["k8sPodNamespace"], "default");
        LeaseStore::release(&store, &key);
        assert_eq!(store.len(), 2);
        // Only the checkpoint is left: every temp file was renamed over it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! Criterion benchmarks of the ledger and of its peer, the reference daemon's whole-file JSON
//! checkpoint. Throughput is counted in allocate+release pairs (criterion's "elem/s").
//!
//! `cargo bench -p enipool-benches --bench ledger`. For the figures beside their targets in one
//! table, use the `ledger_report` bench instead. Under `cargo test --benches` each benchmark runs
//! once, and the setup sizes shrink so that run takes seconds.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use enipool_benches::*;
use enipool_storage::{Ledger, SystemClock};

const COOLDOWN: Duration = Duration::ZERO;
const CALLERS: [usize; 3] = [1, 16, 64];
const LIVE: [u64; 3] = [30, 250, 750];

/// Fresh keys for every batch, across benchmarks.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn announce(what: &str, pool: usize, live: u64, dir: &std::path::Path) {
    println!(
        "[{what}] pool {pool} addresses, cooldown {}s, {live} live leases, in {}",
        COOLDOWN.as_secs(),
        dir.display()
    );
}

/// Runs `iters` batches of `batch` pairs over `callers` threads (spawned once per call) and
/// returns the wall time.
fn batches<S: LeaseStore>(store: &S, callers: usize, batch: u64, iters: u64) -> Duration {
    let per = per_caller(batch, callers) * iters;
    let first = NEXT_KEY.fetch_add(per, Ordering::Relaxed);
    run_pairs(store, callers, per, first)
}

fn floor(c: &mut Criterion) {
    let dir = scratch_dir("crit-floor");
    println!("[floor] 100-byte append + fdatasync, in {}", dir.path().display());
    let mut f = AppendFile::create(dir.path(), 100);
    c.bench_function("floor/fdatasync_100B_append", |b| b.iter(|| f.append_sync()));
}

fn single_caller(c: &mut Criterion) {
    let dir = scratch_dir("crit-single");
    announce("single caller", POOL_SIZE, 0, dir.path());
    let ledger = open_pool(dir.path(), COOLDOWN, POOL_SIZE);
    let mut g = c.benchmark_group(format!("single_caller/pool{POOL_SIZE}_cooldown0"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
                let key = lease_key(0, n);
                let t = Instant::now();
                black_box(LeaseStore::allocate(&ledger, key.clone(), lease_meta(0, n)));
                timed += t.elapsed();
                LeaseStore::release(&ledger, &key);
            }
            timed
        })
    });
    g.bench_function("allocate_release", |b| {
        b.iter(|| {
            let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
            let key = lease_key(0, n);
            black_box(LeaseStore::allocate(&ledger, key.clone(), lease_meta(0, n)));
            LeaseStore::release(&ledger, &key);
        })
    });
    g.finish();
    ledger.close().expect("close");
}

fn throughput_ledger(c: &mut Criterion) {
    let dir = scratch_dir("crit-throughput");
    announce("ledger throughput", POOL_SIZE, 0, dir.path());
    let ledger = open_pool(dir.path(), COOLDOWN, POOL_SIZE);
    let mut g = c.benchmark_group(format!("ledger_pairs/pool{POOL_SIZE}_cooldown0_live0"));
    g.sampling_mode(SamplingMode::Flat);
    for callers in CALLERS {
        let batch = 256;
        g.throughput(Throughput::Elements(per_caller(batch, callers) * callers as u64));
        g.bench_with_input(BenchmarkId::new("callers", callers), &callers, |b, &callers| {
            b.iter_custom(|iters| batches(&ledger, callers, batch, iters))
        });
    }
    g.finish();
    ledger.close().expect("close");
}

fn versus_json(c: &mut Criterion) {
    for live in LIVE {
        let ldir = scratch_dir(&format!("crit-ledger-{live}"));
        let jdir = scratch_dir(&format!("crit-json-{live}"));
        announce("ledger", POOL_SIZE, live, ldir.path());
        announce("JSON-checkpoint peer", POOL_SIZE, live, jdir.path());
        let ledger = open_pool(ldir.path(), COOLDOWN, POOL_SIZE);
        populate_ledger(&ledger, live);
        let json = JsonCheckpointStore::create(jdir.path(), POOL_SIZE);
        json.populate(live);

        let mut g = c.benchmark_group(format!("vs_json/pool{POOL_SIZE}_cooldown0_live{live}"));
        g.sampling_mode(SamplingMode::Flat);
        for callers in CALLERS {
            let batch = 256;
            g.throughput(Throughput::Elements(per_caller(batch, callers) * callers as u64));
            g.bench_with_input(BenchmarkId::new("ledger", callers), &callers, |b, &callers| {
                b.iter_custom(|iters| batches(&ledger, callers, batch, iters))
            });
            // Each pair rewrites the whole file twice; keep the batch small.
            let batch = 64;
            g.throughput(Throughput::Elements(per_caller(batch, callers) * callers as u64));
            g.bench_with_input(BenchmarkId::new("json_checkpoint", callers), &callers, |b, &callers| {
                b.iter_custom(|iters| batches(&json, callers, batch, iters))
            });
        }
        g.finish();
        ledger.close().expect("close");
    }
}

fn reopen(c: &mut Criterion) {
    let (leases, pool) = if full_mode() { (10_000, 16_384) } else { (100, 256) };
    let dir = scratch_dir("crit-reopen");
    announce("reopen", pool, leases, dir.path());
    let ledger = open_pool(dir.path(), COOLDOWN, pool);
    populate_ledger(&ledger, leases);
    ledger.close().expect("close");
    let mut g = c.benchmark_group(format!("reopen/pool{pool}_cooldown0"));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_with_input(BenchmarkId::new("live_leases", leases), &leases, |b, _| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let ledger = Ledger::open(dir.path(), ledger_config(COOLDOWN), Arc::new(SystemClock)).expect("reopen");
                timed += t.elapsed();
                ledger.close().expect("close");
            }
            timed
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = floor, single_caller, throughput_ledger, versus_json, reopen
}
criterion_main!(benches);

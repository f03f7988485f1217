//! The ledger's figures beside their targets, all measured in one run so the ratios hold:
//!
//! ```text
//! cargo bench -p enipool-benches --bench ledger_report
//! ```
//!
//! Its own timing loops with fixed iteration counts (medians and 99th percentiles where a figure
//! is a latency), then one table: figure | measured | target | met | setup. Run without `--bench`
//! (as `cargo test --benches` does) it is a smoke run at tiny sizes that takes seconds; it still
//! prints the table, but those figures say nothing about the targets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enipool_benches::*;
use enipool_storage::{Ledger, SystemClock};

/// Iteration counts: the full run's, or the smoke run's.
struct Sizes {
    floor_samples: usize,
    latency_samples: usize,
    /// Total pairs per ledger throughput run, split over the callers.
    ledger_pairs: u64,
    /// Total pairs per JSON-peer throughput run, split over the callers.
    json_pairs: u64,
    /// Throughput runs per configuration for the headline ledger figures (the median is kept).
    runs: usize,
    /// Runs of each pool, alternating, for the prefix / secondary-IP ratio (a ratio of two
    /// medians needs more runs than one figure to be steadier than its target's margin).
    mode_runs: usize,
    reopen_leases: u64,
    reopen_pool: usize,
    /// Ledgers written and reopened, each timed on its first open and on `opens_per_round - 1` more.
    reopen_rounds: usize,
    opens_per_round: usize,
    cycles: u64,
    cycle_live: u64,
    cycle_callers: usize,
}

const FULL: Sizes = Sizes {
    floor_samples: 2000,
    latency_samples: 2000,
    ledger_pairs: 16_384,
    json_pairs: 512,
    runs: 3,
    mode_runs: 9,
    reopen_leases: 10_000,
    reopen_pool: 16_384,
    reopen_rounds: 5,
    opens_per_round: 4,
    cycles: 1_000_000,
    cycle_live: 250,
    cycle_callers: 64,
};

const SMOKE: Sizes = Sizes {
    floor_samples: 20,
    latency_samples: 20,
    ledger_pairs: 128,
    json_pairs: 64,
    runs: 1,
    mode_runs: 1,
    reopen_leases: 100,
    reopen_pool: 256,
    reopen_rounds: 2,
    opens_per_round: 2,
    cycles: 200,
    cycle_live: 250,
    cycle_callers: 64,
};

const CALLERS: [usize; 3] = [1, 16, 64];
const LIVE: [u64; 3] = [30, 250, 750];
const COOLDOWN: Duration = Duration::ZERO;
const FLOOR_RECORD_BYTES: usize = 100;

struct Row {
    figure: String,
    measured: String,
    target: String,
    met: Option<bool>,
    setup: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, figure: impl Into<String>, measured: impl Into<String>, setup: impl Into<String>) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: "-".into(),
            met: None,
            setup: setup.into(),
        });
    }

    fn target(
        &mut self,
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        met: bool,
        setup: impl Into<String>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
            met: Some(met),
            setup: setup.into(),
        });
    }

    fn print(&self, smoke: bool) {
        let met = |r: &Row| match (r.met, smoke) {
            (None, _) => "-".to_string(),
            (Some(m), false) => if m { "yes" } else { "NO" }.to_string(),
            (Some(m), true) => if m { "yes*" } else { "no*" }.to_string(),
        };
        let w = |f: &dyn Fn(&Row) -> String, head: &str| {
            self.rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0).max(head.len())
        };
        let (w0, w1, w2, w3) = (
            w(&|r| r.figure.clone(), "figure"),
            w(&|r| r.measured.clone(), "measured"),
            w(&|r| r.target.clone(), "target"),
            w(&|r| met(r), "met"),
        );
        println!();
        println!("{:<w0$} | {:>w1$} | {:<w2$} | {:<w3$} | setup", "figure", "measured", "target", "met");
        println!("{}", "-".repeat(w0 + w1 + w2 + w3 + 12 + 40));
        for r in &self.rows {
            println!("{:<w0$} | {:>w1$} | {:<w2$} | {:<w3$} | {}", r.figure, r.measured, r.target, met(r), r.setup);
        }
        if smoke {
            println!("* smoke mode: tiny sizes in the test profile; the targets apply to the full run only.");
        }
    }
}

fn pairs_per_sec(pairs: u64, elapsed: Duration) -> f64 {
    pairs as f64 / elapsed.as_secs_f64()
}

/// Median of `runs` throughput runs of `callers` callers doing `total` pairs between them.
fn throughput<S: LeaseStore>(store: &S, callers: usize, total: u64, runs: usize, first_n: &AtomicU64) -> f64 {
    let per = per_caller(total, callers);
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let base = first_n.fetch_add(per, Ordering::Relaxed);
            pairs_per_sec(per * callers as u64, run_pairs(store, callers, per, base))
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// Like [`throughput`], with the callers as async tasks on a 2-thread tokio runtime calling
/// `allocate_async`/`release_async`, as the daemon's lease routes do: a caller waiting for its
/// fdatasync holds no thread.
fn throughput_async(ledger: &Ledger, callers: usize, total: u64, runs: usize, first_n: &AtomicU64) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    let per = per_caller(total, callers);
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let base = first_n.fetch_add(per, Ordering::Relaxed);
            let started = Instant::now();
            runtime.block_on(async {
                let tasks: Vec<_> = (0..callers as u64)
                    .map(|c| {
                        let ledger = ledger.clone();
                        tokio::spawn(async move {
                            for n in base..base + per {
                                let key = lease_key(c, n);
                                ledger.allocate_async(key.clone(), lease_meta(c, n)).await.expect("ledger allocate");
                                ledger
                                    .release_async(&key)
                                    .await
                                    .expect("ledger release")
                                    .expect("the key held a lease");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("a benchmark task panicked");
                }
            });
            pairs_per_sec(per * callers as u64, started.elapsed())
        })
        .collect();
    median(&mut rates)
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

fn setup_line(pool: usize, live: u64, callers: usize) -> String {
    format!("pool {pool}, cooldown {}s, {live} live, {callers} callers", COOLDOWN.as_secs())
}

fn main() {
    let full = full_mode();
    let sizes = if full { FULL } else { SMOKE };
    let root = bench_root();
    if full {
        println!("ledger_report: full run");
    } else {
        println!("ledger_report: smoke mode (run without --bench): tiny sizes, figures are not meaningful");
    }
    println!(
        "scratch directories under {} (build: {})",
        root.display(),
        if cfg!(debug_assertions) { "debug" } else { "optimised" }
    );
    let checkpoint_interval = ledger_config(COOLDOWN).checkpoint_interval;
    println!(
        "ledger config: pool {POOL_SIZE} addresses on one ENI, cooldown {}s, checkpoint interval {:?} (the default)",
        COOLDOWN.as_secs(),
        checkpoint_interval
    );
    println!(
        "machine: {} cores; load average at start {} (other work on the machine moves these figures)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let run_start = Instant::now();
    let mut table = Table::default();
    let keys = AtomicU64::new(0);

    // --- the floor ------------------------------------------------------------------------
    let floor = {
        let dir = scratch_dir("floor");
        println!(
            "\n[floor] {FLOOR_RECORD_BYTES}-byte append + fdatasync, {} samples, in {}",
            sizes.floor_samples,
            dir.path().display()
        );
        let mut s = fdatasync_samples(dir.path(), FLOOR_RECORD_BYTES, sizes.floor_samples);
        let (med, p99) = median_p99(&mut s);
        println!("  median {}  p99 {}", fmt_duration(med), fmt_duration(p99));
        table.add(
            format!("floor: one fdatasync of a {FLOOR_RECORD_BYTES} B append (median)"),
            fmt_duration(med),
            format!("p99 {}", fmt_duration(p99)),
        );
        med
    };

    // --- single-caller latency ------------------------------------------------------------
    {
        let dir = scratch_dir("latency");
        let ledger = open_pool(dir.path(), COOLDOWN, POOL_SIZE);
        println!(
            "\n[latency] single caller, {} samples each; pool {POOL_SIZE}, cooldown {}s, in {}",
            sizes.latency_samples,
            COOLDOWN.as_secs(),
            dir.path().display()
        );
        let mut alloc = Vec::with_capacity(sizes.latency_samples);
        let mut pair = Vec::with_capacity(sizes.latency_samples);
        for i in 0..sizes.latency_samples as u64 {
            let key = lease_key(0, i);
            let t = Instant::now();
            LeaseStore::allocate(&ledger, key.clone(), lease_meta(0, i));
            alloc.push(t.elapsed());
            LeaseStore::release(&ledger, &key);
        }
        for i in 0..sizes.latency_samples as u64 {
            let n = 1_000_000 + i;
            let key = lease_key(0, n);
            let t = Instant::now();
            LeaseStore::allocate(&ledger, key.clone(), lease_meta(0, n));
            LeaseStore::release(&ledger, &key);
            pair.push(t.elapsed());
        }
        let (a_med, a_p99) = median_p99(&mut alloc);
        let (p_med, p_p99) = median_p99(&mut pair);
        println!("  allocate median {} p99 {}", fmt_duration(a_med), fmt_duration(a_p99));
        println!("  allocate+release median {} p99 {}", fmt_duration(p_med), fmt_duration(p_p99));
        let ratio = a_med.as_secs_f64() / floor.as_secs_f64();
        table.target(
            "single-caller durable allocate (median)",
            format!("{} ({ratio:.2}x floor)", fmt_duration(a_med)),
            format!("<= 3x floor = {}", fmt_duration(floor * 3)),
            a_med <= floor * 3,
            format!("p99 {}; {}", fmt_duration(a_p99), setup_line(POOL_SIZE, 0, 1)),
        );
        table.add(
            "single-caller durable allocate+release (median)",
            fmt_duration(p_med),
            format!("p99 {}; {}", fmt_duration(p_p99), setup_line(POOL_SIZE, 0, 1)),
        );
        ledger.close().expect("close");
    }

    // --- ledger throughput on an empty pool -----------------------------------------------
    {
        let dir = scratch_dir("throughput");
        let ledger = open_pool(dir.path(), COOLDOWN, POOL_SIZE);
        println!(
            "\n[throughput] ledger, {} pairs per run, median of {} runs; pool {POOL_SIZE}, cooldown {}s, in {}",
            sizes.ledger_pairs,
            sizes.runs,
            COOLDOWN.as_secs(),
            dir.path().display()
        );
        for asynchronous in [false, true] {
            for callers in CALLERS {
                let syncs = ledger.sync_count();
                let rate = if asynchronous {
                    throughput_async(&ledger, callers, sizes.ledger_pairs, sizes.runs, &keys)
                } else {
                    throughput(&ledger, callers, sizes.ledger_pairs, sizes.runs, &keys)
                };
                let synced = ledger.sync_count() - syncs;
                let ops = 2 * sizes.runs as u64 * per_caller(sizes.ledger_pairs, callers) * callers as u64;
                let per_sync = ops as f64 / synced.max(1) as f64;
                let who = if asynchronous { "async tasks (as the daemon calls it)" } else { "threads" };
                println!("  {callers:>2} {who}: {} pairs/s ({per_sync:.1} operations per fdatasync)", fmt_count(rate));
                let setup = format!("{}; {per_sync:.1} operations per fdatasync", setup_line(POOL_SIZE, 0, callers));
                let who = if asynchronous { "async callers" } else { "caller threads" };
                let name = format!("ledger durable pairs/s, {callers} {who}");
                if asynchronous && callers == 64 {
                    table.target(name, fmt_count(rate), ">= 40,000", rate >= 40_000.0, setup);
                } else {
                    table.add(name, fmt_count(rate), setup);
                }
            }
        }
        ledger.close().expect("close");
    }

    // --- prefix delegation: the same pool held as /28 prefixes ------------------------------
    // Runs alternate between the two ledgers, so drift on the machine falls on both alike.
    {
        let idir = scratch_dir("modes-ips");
        let pdir = scratch_dir("modes-prefixes");
        let ips = open_pool(idir.path(), COOLDOWN, POOL_SIZE);
        let prefixes = open_prefix_pool(pdir.path(), COOLDOWN, POOL_SIZE);
        println!(
            "\n[prefix mode] {} pairs per run, runs alternating, median of {} each; pool {POOL_SIZE} as secondary IPs in {}, as {} prefixes in {}",
            sizes.ledger_pairs,
            sizes.mode_runs,
            idir.path().display(),
            POOL_SIZE / 16,
            pdir.path().display()
        );
        for callers in CALLERS {
            let (mut on_ips, mut on_prefixes) = (Vec::new(), Vec::new());
            for _ in 0..sizes.mode_runs {
                on_ips.push(throughput(&ips, callers, sizes.ledger_pairs, 1, &keys));
                on_prefixes.push(throughput(&prefixes, callers, sizes.ledger_pairs, 1, &keys));
            }
            let (i_rate, p_rate) = (median(&mut on_ips), median(&mut on_prefixes));
            let ratio = p_rate / i_rate;
            println!(
                "  {callers:>2} callers: secondary IPs {} pairs/s, prefixes {} pairs/s, ratio {ratio:.2}x",
                fmt_count(i_rate),
                fmt_count(p_rate)
            );
            let setup = format!("{}; {} prefixes", setup_line(POOL_SIZE, 0, callers), POOL_SIZE / 16);
            table.add(format!("ledger pairs/s on prefixes, {callers} callers"), fmt_count(p_rate), setup.clone());
            if callers == 64 {
                // "No loss": within the few percent two runs of one pool differ by here.
                table.target(
                    format!("ledger prefixes / secondary IPs, {callers} callers"),
                    format!("{ratio:.2}x"),
                    ">= 0.95x",
                    ratio >= 0.95,
                    setup,
                );
            } else {
                table.add(format!("ledger prefixes / secondary IPs, {callers} callers"), format!("{ratio:.2}x"), setup);
            }
        }
        ips.close().expect("close");
        prefixes.close().expect("close");
    }

    // --- the ledger against the JSON checkpoint, same workload, same callers ---------------
    for live in LIVE {
        let ldir = scratch_dir(&format!("vs-json-ledger-{live}"));
        let jdir = scratch_dir(&format!("vs-json-peer-{live}"));
        let ledger = open_pool(ldir.path(), COOLDOWN, POOL_SIZE);
        populate_ledger(&ledger, live);
        let json = JsonCheckpointStore::create(jdir.path(), POOL_SIZE);
        json.populate(live);
        println!(
            "\n[vs JSON checkpoint] {live} live leases; pool {POOL_SIZE}, cooldown {}s; ledger in {}, JSON peer in {} ({} checkpoint)",
            COOLDOWN.as_secs(),
            ldir.path().display(),
            jdir.path().display(),
            fmt_bytes(json.checkpoint_bytes())
        );
        for callers in CALLERS {
            let l_rate = throughput(&ledger, callers, sizes.ledger_pairs, sizes.runs, &keys);
            let j_rate = throughput(&json, callers, sizes.json_pairs, 1, &keys);
            let ratio = l_rate / j_rate;
            println!(
                "  {callers:>2} callers: ledger {} pairs/s, JSON checkpoint {} pairs/s, ratio {ratio:.1}x",
                fmt_count(l_rate),
                fmt_count(j_rate)
            );
            let setup = setup_line(POOL_SIZE, live, callers);
            table.add(
                format!("JSON-checkpoint peer pairs/s, {live} live, {callers} callers"),
                fmt_count(j_rate),
                setup.clone(),
            );
            table.add(format!("ledger pairs/s, {live} live, {callers} callers"), fmt_count(l_rate), setup.clone());
            if live == 250 && callers == 64 {
                table.target(
                    format!("ledger / JSON peer, {live} live, {callers} callers"),
                    format!("{ratio:.1}x"),
                    ">= 10x",
                    ratio >= 10.0,
                    setup,
                );
            } else {
                table.add(format!("ledger / JSON peer, {live} live, {callers} callers"), format!("{ratio:.1}x"), setup);
            }
        }
        assert_eq!(json.len() as u64, live, "the JSON peer keeps its live leases");
        assert_eq!(ledger.leases(&Default::default()).len() as u64, live, "the ledger keeps its live leases");
        ledger.close().expect("close");
    }

    // --- reopen ---------------------------------------------------------------------------
    // A restart opens a ledger that the previous process wrote and closed, and that first open
    // is slower than opening the same directory again (sled settles its files on it). So each
    // round writes a fresh ledger, closes it, and times the first open and then a few more.
    {
        println!(
            "\n[reopen] {} rounds: write {} live leases (pool {}, cooldown {}s), close, then time {} opens after the clean close",
            sizes.reopen_rounds,
            sizes.reopen_leases,
            sizes.reopen_pool,
            COOLDOWN.as_secs(),
            sizes.opens_per_round
        );
        let mut first = Vec::with_capacity(sizes.reopen_rounds);
        let mut again = Vec::new();
        for round in 0..sizes.reopen_rounds {
            let dir = scratch_dir("reopen");
            let ledger = open_pool(dir.path(), COOLDOWN, sizes.reopen_pool);
            populate_ledger(&ledger, sizes.reopen_leases);
            ledger.close().expect("close");
            let size = dir_size(dir.path());
            let mut took = Vec::with_capacity(sizes.opens_per_round);
            for _ in 0..sizes.opens_per_round {
                let t = Instant::now();
                let ledger = Ledger::open(dir.path(), ledger_config(COOLDOWN), Arc::new(SystemClock))
                    .expect("reopening the ledger");
                took.push(t.elapsed());
                assert_eq!(ledger.leases(&Default::default()).len() as u64, sizes.reopen_leases);
                ledger.close().expect("close");
            }
            println!(
                "  round {round}: {} on disk in {}; opens {}",
                fmt_bytes(size.bytes()),
                dir.path().display(),
                took.iter().map(|d| fmt_duration(*d)).collect::<Vec<_>>().join(", ")
            );
            first.push(took[0]);
            again.extend_from_slice(&took[1..]);
        }
        let first_med = percentile(&mut first, 50.0);
        let first_max = percentile(&mut first, 100.0);
        let setup = format!("pool {}, cooldown {}s", sizes.reopen_pool, COOLDOWN.as_secs());
        table.target(
            format!("reopen with {} leases: first open after close (median)", sizes.reopen_leases),
            fmt_duration(first_med),
            "<= 100 ms",
            first_med <= Duration::from_millis(100),
            format!("max {} of {} rounds; {setup}", fmt_duration(first_max), sizes.reopen_rounds),
        );
        if !again.is_empty() {
            let n = again.len();
            let (again_med, again_max) = (percentile(&mut again, 50.0), percentile(&mut again, 100.0));
            table.add(
                "  ... opening the same directory again (median)",
                fmt_duration(again_med),
                format!("max {} of {n}; {setup}", fmt_duration(again_max)),
            );
        }
    }

    // --- footprint after many cycles ------------------------------------------------------
    {
        let dir = scratch_dir("footprint");
        let ledger = open_pool(dir.path(), COOLDOWN, POOL_SIZE);
        populate_ledger(&ledger, sizes.cycle_live);
        let callers = sizes.cycle_callers;
        println!(
            "\n[footprint] {} cycles (release one live lease, allocate a new key) at {} live, {callers} callers; pool {POOL_SIZE}, cooldown {}s, checkpoint interval {:?}; in {}",
            fmt_count(sizes.cycles as f64),
            sizes.cycle_live,
            COOLDOWN.as_secs(),
            checkpoint_interval,
            dir.path().display()
        );
        let stop = AtomicBool::new(false);
        let peak = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let syncs_before = ledger.sync_count();
        let start = Instant::now();
        std::thread::scope(|s| {
            // Samples the directory while the cycles run, for the peak.
            s.spawn(|| {
                let mut next_report = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(dir_size(dir.path()).bytes(), Ordering::Relaxed);
                    if Instant::now() >= next_report {
                        next_report += Duration::from_secs(30);
                        println!(
                            "  ... {} cycles after {:.0} s, directory {}",
                            fmt_count(done.load(Ordering::Relaxed) as f64),
                            start.elapsed().as_secs_f64(),
                            fmt_bytes(dir_size(dir.path()).bytes())
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let workers: Vec<_> = (0..callers as u64)
                .map(|c| {
                    let (ledger, done) = (&ledger, &done);
                    // Caller c owns the live leases n with n % callers == c, and its share of cycles.
                    let mut owned: VecDeque<(u64, u64)> =
                        (c..sizes.cycle_live).step_by(callers).map(|n| (LIVE_OWNER, n)).collect();
                    let share = sizes.cycles / callers as u64 + u64::from(c < sizes.cycles % callers as u64);
                    s.spawn(move || {
                        for n in 0..share {
                            let (o, old) = owned.pop_front().expect("each caller owns at least one live lease");
                            LeaseStore::release(ledger, &lease_key(o, old));
                            LeaseStore::allocate(ledger, lease_key(c, n), lease_meta(c, n));
                            owned.push_back((c, n));
                            if n % 1024 == 1023 {
                                done.fetch_add(1024, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("a cycling caller panicked");
            }
            stop.store(true, Ordering::Relaxed);
        });
        let elapsed = start.elapsed();
        let after = dir_size(dir.path());
        let peak = peak.load(Ordering::Relaxed).max(after.bytes());
        let live_now = ledger.leases(&Default::default()).len() as u64;
        assert_eq!(live_now, sizes.cycle_live, "the cycles keep the live count");
        let syncs = ledger.sync_count() - syncs_before;
        ledger.close().expect("close");
        let closed = dir_size(dir.path());
        println!(
            "  {} cycles in {:.1} s ({} cycles/s, {} fdatasyncs)",
            fmt_count(sizes.cycles as f64),
            elapsed.as_secs_f64(),
            fmt_count(sizes.cycles as f64 / elapsed.as_secs_f64()),
            fmt_count(syncs as f64)
        );
        println!(
            "  directory after the cycles: {} apparent, {} allocated, {} files; peak {}; after close {}",
            fmt_bytes(after.apparent),
            fmt_bytes(after.allocated),
            after.files,
            fmt_bytes(peak),
            fmt_bytes(closed.bytes())
        );
        let setup = format!(
            "{} live, {callers} callers, pool {POOL_SIZE}, cooldown {}s, checkpoint {:?}",
            sizes.cycle_live,
            COOLDOWN.as_secs(),
            checkpoint_interval
        );
        table.target(
            format!("ledger directory after {} cycles", fmt_count(sizes.cycles as f64)),
            fmt_bytes(after.bytes()),
            "<= 64 MiB",
            after.bytes() <= 64 << 20,
            setup.clone(),
        );
        table.add(
            "  ... peak while cycling / after close",
            format!("{} / {}", fmt_bytes(peak), fmt_bytes(closed.bytes())),
            setup,
        );
    }

    table.print(!full);
    println!("whole run {:.0} s; load average at the end {}", run_start.elapsed().as_secs_f64(), load_average());
}

//! Load on the `enipoold` binary over its unix socket: 1, 16 and 64 concurrent clients doing
//! allocate/release pairs, and in the same run the host-local IPAM plugin (the peer: Debian's
//! containernetworking-plugins) exec'd for the same number of pairs at the same concurrency, and
//! a second enipoold in prefix-delegation mode (its addresses from /28s), so the ratio of the
//! two modes comes from one run. Beside them, the ledger alone, driven as the daemon's lease
//! routes drive it (`allocate_async`/`release_async` on a 2-thread runtime, same concurrency):
//! ours / ledger alone is what the HTTP path costs.
//!
//! `cargo bench -p enipool-benches --bench daemon_load` runs the full measurement (it builds
//! `enipoold` in release first). Without `--bench` (as `cargo test --benches` runs it) it is a
//! smoke run with a few pairs, so the harness cannot rot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enipool_api::client::Client;
use enipool_api::{LeaseRequest, Pool};
use enipool_benches::harness::build_binaries;
use enipool_benches::{lease_key, lease_meta, load_average, open_pool, percentile, scratch_dir};
use enipool_storage::Ledger;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const POOL_TARGET: u32 = 200;

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the daemon's pool holds its addresses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Secondary IPs, one per ENI slot.
    Ips,
    /// Prefix delegation: /28s, whose addresses are leased one by one.
    Prefixes,
}

async fn start_daemon(bin: &Path, mode: Mode) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("enipool.sock");
    let prefixes = if mode == Mode::Prefixes { "true" } else { "false" };
    let child = Command::new(bin)
        .args(["--data-dir"])
        .arg(dir.path())
        .arg("--socket")
        .arg(&socket)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--instance-type", "m5.24xlarge"])
        .args(["--warm-ip-target", &POOL_TARGET.to_string(), "--ip-cooldown-period", "0", "--pool-tick", "20ms"])
        .args(["--prefix-delegation", prefixes, "--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting enipoold");
    let daemon = Daemon { child, socket, _dir: dir };
    // Wait (bounded) until the pool holds its target, so the run measures allocation, not growth.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = Client::new(&daemon.socket).get("/v1/pool").await
            && let Ok(pool) = reply.json::<Pool>()
            && pool.free >= POOL_TARGET
        {
            println!(
                "enipoold ({} mode): static provider, {}, pool {} free IPs ({} prefixes), cooldown {} s",
                pool.mode, pool.instance_type, pool.free, pool.prefixes, pool.targets.ip_cooldown_seconds
            );
            return daemon;
        }
        assert!(Instant::now() < deadline, "enipoold did not fill its pool within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Figures {
    pairs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Request latencies and wall time of one or more stretches of load.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    pairs: usize,
    wall: Duration,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.pairs += other.pairs;
        self.wall += other.wall;
    }

    fn figures(mut self) -> Figures {
        Figures {
            pairs_per_sec: self.pairs as f64 / self.wall.as_secs_f64(),
            p50_ms: percentile(&mut self.latencies, 50.0).as_secs_f64() * 1e3,
            p99_ms: percentile(&mut self.latencies, 99.0).as_secs_f64() * 1e3,
        }
    }
}

/// The two modes are compared in this many alternating stretches per level, so a disturbance
/// (the machine, the peer's leftovers) falls on both.
const ROUNDS: usize = 4;

async fn load_enipoold(socket: &Path, clients: usize, pairs: usize, round: usize) -> Samples {
    let per_client = pairs.div_ceil(clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(&socket);
            let mut latencies = Vec::with_capacity(per_client * 2);
            for i in 0..per_client {
                let req = LeaseRequest {
                    network: "bench".into(),
                    container_id: format!("c{clients}x{round}x{c}x{i}"),
                    ifname: "eth0".into(),
                    pod_namespace: Some("bench".into()),
                    pod_name: Some(format!("pod-{c}-{i}")),
                    netns: None,
                    host_veth: None,
                };
                let t = Instant::now();
                let reply = client.post_json("/v1/leases", &req).await.expect("lease request");
                latencies.push(t.elapsed());
                assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
                let t = Instant::now();
                let path = format!("/v1/leases/bench/{}/eth0", req.container_id);
                let reply = client.delete(&path).await.expect("release request");
                latencies.push(t.elapsed());
                assert_eq!(reply.status, 204);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Samples { latencies, pairs: per_client * clients, wall: started.elapsed() }
}

/// Pairs/s of the ledger alone at `clients` concurrent tasks.
async fn load_ledger(ledger: &Ledger, clients: usize, pairs: usize) -> f64 {
    let per_client = pairs.div_ceil(clients);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..per_client as u64 {
                    let key = lease_key(c, i);
                    ledger.allocate_async(key.clone(), lease_meta(c, i)).await.expect("allocate");
                    ledger.release_async(&key).await.expect("release");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("ledger task");
    }
    (per_client * clients) as f64 / started.elapsed().as_secs_f64()
}

fn host_local(data: &Path, command: &str, id: &str) -> Duration {
    use std::io::Write;
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.80.0.0/16"}}]],"dataDir":"{}"}}}}"#,
        data.display()
    );
    let t = Instant::now();
    let mut child = Command::new(HOST_LOCAL)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/enipool-bench-unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec host-local");
    child.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("writing config");
    let out = child.wait_with_output().expect("host-local");
    let took = t.elapsed();
    assert!(out.status.success(), "host-local {command}: {}", String::from_utf8_lossy(&out.stdout));
    took
}

fn load_host_local(clients: usize, pairs: usize) -> Figures {
    let data = tempfile::tempdir().expect("temp dir");
    let data = Arc::new(data.path().join("host-local"));
    let per_client = pairs.div_ceil(clients);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_client * 2);
                for i in 0..per_client {
                    let id = format!("c{clients}x{c}x{i}");
                    latencies.push(host_local(&data, "ADD", &id));
                    latencies.push(host_local(&data, "DEL", &id));
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("peer thread"));
    }
    let wall = started.elapsed();
    Figures {
        pairs_per_sec: (per_client * clients) as f64 / wall.as_secs_f64(),
        p50_ms: percentile(&mut all, 50.0).as_secs_f64() * 1e3,
        p99_ms: percentile(&mut all, 99.0).as_secs_f64() * 1e3,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (pairs, peer_pairs) = if full { (20_000, 2_000) } else { (128, 64) };
    println!(
        "daemon_load ({}): {pairs} allocate+release pairs per level against enipoold, {peer_pairs} against host-local; \
         load average at the start {}",
        if full { "full run" } else { "smoke mode" },
        load_average()
    );
    let bin = build_binaries(full).daemon;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = runtime.block_on(start_daemon(&bin, Mode::Ips));
    let prefix_daemon = runtime.block_on(start_daemon(&bin, Mode::Prefixes));
    let ledger_dir = scratch_dir("daemon-load-ledger");
    let ledger = open_pool(ledger_dir.path(), Duration::ZERO, POOL_TARGET as usize);
    let have_peer = Path::new(HOST_LOCAL).exists();
    if !have_peer {
        println!("peer: {HOST_LOCAL} not found (apt-get install containernetworking-plugins); peer rows skipped");
    }
    println!();
    println!(
        "| clients | enipoold pairs/s | p50 ms | p99 ms | host-local pairs/s | p50 ms | p99 ms | ratio | prefix mode pairs/s | p99 ms | prefix / IP mode | ledger alone pairs/s | ours / ledger alone |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ours = Vec::new();
    for clients in [1usize, 16, 64] {
        // Prefix mode against secondary-IP mode: alternating stretches, each mode first in turn.
        let (mut ips, mut prefixes) = (Samples::default(), Samples::default());
        for round in 0..ROUNDS {
            let mut order = [(&daemon, &mut ips), (&prefix_daemon, &mut prefixes)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (d, samples) in order {
                samples.add(runtime.block_on(load_enipoold(&d.socket, clients, pairs / ROUNDS, round)));
            }
        }
        let (f, pf) = (ips.figures(), prefixes.figures());
        let peer = have_peer.then(|| load_host_local(clients, peer_pairs));
        let alone = runtime.block_on(load_ledger(&ledger, clients, pairs));
        let (pp, p50, p99, ratio) = match &peer {
            Some(p) => (
                format!("{:.0}", p.pairs_per_sec),
                format!("{:.2}", p.p50_ms),
                format!("{:.2}", p.p99_ms),
                format!("{:.1}x", f.pairs_per_sec / p.pairs_per_sec),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {clients} | {:.0} | {:.3} | {:.3} | {pp} | {p50} | {p99} | {ratio} | {:.0} | {:.3} | {:.2}x | {alone:.0} | {:.2}x |",
            f.pairs_per_sec,
            f.p50_ms,
            f.p99_ms,
            pf.pairs_per_sec,
            pf.p99_ms,
            pf.pairs_per_sec / f.pairs_per_sec,
            f.pairs_per_sec / alone
        );
        ours.push((clients, f, pf));
    }
    println!();
    let at = |c: usize| ours.iter().find(|(n, _, _)| *n == c).expect("measured");
    let check = |name: &str, measured: String, target: &str, met: bool| {
        println!("| {name} | {measured} | {target} | {} |", if met { "met" } else { "NOT met" });
    };
    println!("| target | measured | target | |");
    println!("|---|---|---|---|");
    let (_, ips64, prefixes64) = at(64);
    check("pairs/s at 64 clients", format!("{:.0}", ips64.pairs_per_sec), ">= 15,000", ips64.pairs_per_sec >= 15_000.0);
    check("p99 at 64 clients", format!("{:.2} ms", ips64.p99_ms), "<= 5 ms", ips64.p99_ms <= 5.0);
    check("p50 at 1 client", format!("{:.3} ms", at(1).1.p50_ms), "<= 0.5 ms", at(1).1.p50_ms <= 0.5);
    // "No loss": within the few percent two back-to-back runs of one mode differ by here.
    let ratio = prefixes64.pairs_per_sec / ips64.pairs_per_sec;
    check("prefix mode / IP mode pairs/s at 64 clients", format!("{ratio:.2}x"), ">= 0.95x", ratio >= 0.95);
    println!();
    println!("load average at the end {}", load_average());
    if !full {
        println!("(smoke mode: figures from a few pairs in the test profile mean nothing)");
    }
}

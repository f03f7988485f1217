//! Issue 5 item 4, the EC2 economy report: EC2 calls by action and idle IPs held while the real
//! `enipoold` (`--provider ec2`) serves a scripted burst of pods on an m5.large, 0 -> 27 (the
//! instance's maximum: 3 ENIs x 9 pod IPs) -> 0 -> 27 -> 0, under WARM_ENI_TARGET=1 and under
//! WARM_IP_TARGET=5 / MINIMUM_IP_TARGET=10 (given as those environment variables); and (issue 16)
//! in prefix mode, ENABLE_PREFIX_DELEGATION=true with WARM_PREFIX_TARGET=1, 0 -> 110 -> 0 -> 110
//! -> 0 (110: the m5.large's max-pods with prefixes), beside what the reference's
//! one-prefix-as-each-fills rule would cost (computed).
//!
//! EC2 is a real moto server behind the fault layer the EC2 tests use
//! (`ec2/tests/support/fake_ec2.py`, whose `GET /_fault/calls` counts every request by action);
//! the VPC, subnet and instance are made by `benches/support/ec2_world.py` with boto3. Both run
//! on the virtualenv python that `scripts/test` installs. Each configuration gets its own moto,
//! instance and data dir. The harness does not link the EC2 provider: it drives the binary.
//!
//! Each phase ends when the pool has settled: no deficit, nothing cooling, and neither the pool
//! nor EC2's call counts changing for [`HOLD`] (polled, with a deadline). Idle IPs (free +
//! cooling, i.e. held but not leased) are sampled from `GET /v1/pool` every [`SAMPLE_EVERY`]
//! throughout. Beside the measurements it prints what the reference daemon would hold idle at
//! the settled points, computed from its documented warm-target formula (`vpc-cni.md`), not
//! measured.
//!
//! `cargo bench -p enipool-benches --bench economy` is the full run (release `enipoold`, the
//! three configurations, two bursts each). Without `--bench` (as `cargo test --benches` runs it)
//! it is a smoke run in the test profile: WARM_ENI_TARGET=1 with one burst of [`SMOKE_PODS`] pods
//! and prefix mode with one of [`SMOKE_PREFIX_PODS`], with
//! the same assertions.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use enipool_api::client::Client;
use enipool_api::{LeaseRequest, Pool};
use enipool_benches::harness::build_binaries;
use enipool_benches::{fmt_duration, full_mode, load_average};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COMMAND: &str = "cargo bench -p enipool-benches --bench economy";
const INSTANCE_TYPE: &str = "m5.large";
/// The m5.large's limits (the reference's table): 3 ENIs, 10 IPv4 addresses each, one of which
/// (the ENI's primary) never goes to a pod.
const MAX_ENIS: u32 = 3;
const IPV4_PER_ENI: u32 = 10;
const POD_IPS_PER_ENI: u32 = IPV4_PER_ENI - 1;
const MAX_POD_IPS: u32 = MAX_ENIS * POD_IPS_PER_ENI;

const FULL_PODS: u32 = MAX_POD_IPS;
/// Prefix mode: an m5.large's max-pods (`enipoold max-pods m5.large --prefix-delegation`).
const FULL_PREFIX_PODS: u32 = 110;
const SMOKE_PREFIX_PODS: u32 = 20;
const PREFIX_SIZE: u32 = 16;
/// Prefix mode's target: at most this many mutating calls for the whole run.
const PREFIX_CALL_TARGET: u64 = 10;
const FULL_BURSTS: usize = 2;
/// Enough pods to need a second ENI under either configuration.
const SMOKE_PODS: u32 = 10;
const SMOKE_BURSTS: usize = 1;

/// Released IPs cool this long before reuse (the reference's default is 30 s; short here so the
/// run is short, and long enough to be seen in the idle samples).
const FULL_COOLDOWN: &str = "2s";
const SMOKE_COOLDOWN: &str = "1s";
/// The pool is settled once nothing changed for this long (50 pool ticks, 5 shrink intervals).
const HOLD: Duration = Duration::from_secs(1);
/// How long any phase may take to settle.
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);
/// How long a helper process may take to start, and the daemon to get ready.
const START_DEADLINE: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// EC2 actions that change something (the same list as `enipool_ec2::testing::MUTATING`).
const MUTATING: &[&str] = &[
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
];

/// The daemon's settings beyond the pool knobs. The pool's own periods are short so the run is
/// short; reconciliation and the leaked-ENI sweep keep the reference daemon's periods (60 s,
/// hourly), because the Describe calls they make grow with wall-clock time, and a run squeezed
/// into seconds would otherwise count minutes' worth of them.
const DAEMON_FLAGS: &[(&str, &str)] = &[
    ("--provider", "ec2"),
    ("--eni-host-setup", "false"),
    ("--pool-tick", "20ms"),
    ("--shrink-interval", "200ms"),
    ("--allocation-wait", "5s"),
    ("--checkpoint-interval", "200ms"),
    ("--reconcile-interval", "60s"),
    ("--leaked-eni-interval", "1h"),
    // The sweep (and its start-up Describe) runs only with a cluster name, as in production.
    ("--cluster-name", "economy"),
    ("--ec2-detach-wait", "5s"),
    ("--listen", "127.0.0.1:0"),
    ("--metrics-listen", "off"),
    ("--log", "warn"),
];

/// Dummy credentials and a region for the daemon and boto3; no real metadata service (the same
/// as `enipool_ec2::testing::aws_env`).
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_SESSION_TOKEN", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

// ---------------------------------------------------------------------------------------------
// The two configurations, and the reference daemon's formula for them.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)] // the reference's knob names: WARM_ENI, WARM_IP, WARM_PREFIX
enum Targets {
    WarmEni(u32),
    WarmIp {
        warm: u32,
        minimum: u32,
    },
    /// ENABLE_PREFIX_DELEGATION=true, WARM_PREFIX_TARGET=n, nothing else set.
    WarmPrefix(u32),
}

impl Targets {
    fn label(self) -> String {
        match self {
            Targets::WarmEni(n) => format!("WARM_ENI_TARGET={n}"),
            Targets::WarmIp { warm, minimum } => format!("WARM_IP_TARGET={warm} MINIMUM_IP_TARGET={minimum}"),
            Targets::WarmPrefix(n) => format!("ENABLE_PREFIX_DELEGATION=true WARM_PREFIX_TARGET={n}"),
        }
    }

    /// Addresses the instance can hold in this mode.
    fn max_addresses(self) -> u32 {
        match self {
            Targets::WarmPrefix(_) => MAX_POD_IPS * PREFIX_SIZE,
            _ => MAX_POD_IPS,
        }
    }

    /// The reference daemon's names, as environment variables: the daemon reads them so.
    fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Targets::WarmEni(n) => vec![("WARM_ENI_TARGET", n.to_string())],
            Targets::WarmIp { warm, minimum } => {
                vec![("WARM_IP_TARGET", warm.to_string()), ("MINIMUM_IP_TARGET", minimum.to_string())]
            }
            Targets::WarmPrefix(n) => {
                vec![("ENABLE_PREFIX_DELEGATION", "true".into()), ("WARM_PREFIX_TARGET", n.to_string())]
            }
        }
    }

    /// Computed, not measured: the IPs the reference daemon holds idle once settled with `leased`
    /// pods and nothing cooling, from `vpc-cni.md`'s pool policy. WARM_ENI_TARGET keeps that many
    /// spare ENIs' worth of free IPs (whole ENIs, 9 pod IPs each on an m5.large); WARM_IP_TARGET
    /// keeps that many free and MINIMUM_IP_TARGET floors the total; both capped by the instance.
    fn reference_idle(self, leased: u32) -> u32 {
        let total = match self {
            Targets::WarmEni(n) => (leased + n * POD_IPS_PER_ENI).div_ceil(POD_IPS_PER_ENI) * POD_IPS_PER_ENI,
            Targets::WarmIp { warm, minimum } => (leased + warm).max(minimum),
            // Whole prefixes: as many as the pods fill, and n wholly free.
            Targets::WarmPrefix(n) => (leased.div_ceil(PREFIX_SIZE) + n) * PREFIX_SIZE,
        };
        total.min(self.max_addresses()).max(leased) - leased
    }

    /// Computed, not measured: the mutating calls the reference's documented prefix rule makes
    /// for `bursts` of 0 -> `pods` -> 0 (one prefix per call as each fills, one per call as each
    /// empties; the warm prefix at start).
    fn reference_prefix_calls(self, pods: u32, bursts: usize) -> Option<u64> {
        let Targets::WarmPrefix(n) = self else { return None };
        let grown = pods.div_ceil(PREFIX_SIZE) as u64;
        Some(n as u64 + bursts as u64 * 2 * grown)
    }
}

// ---------------------------------------------------------------------------------------------
// Helper processes: moto behind the fault layer, the world, the daemon.
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

/// The virtualenv's python, which has moto and boto3: where `enipool_ec2::testing` looks for it
/// (`<repo>/.venv`, or the directory of `$ENIPOOL_MOTO_SERVER`), and failing the same way.
fn venv_python() -> PathBuf {
    let bin = match std::env::var_os("ENIPOOL_MOTO_SERVER") {
        Some(p) => PathBuf::from(p).parent().map(Path::to_path_buf).unwrap_or_default(),
        None => repo_root().join(".venv/bin"),
    };
    let python = bin.join("python3");
    if !bin.join("moto_server").exists() || !python.exists() {
        panic!(
            "moto is not installed at {}: the economy report needs a real moto server. Run ./scripts/test (it makes \
             the virtualenv), or: python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5' \
             (or point ENIPOOL_MOTO_SERVER at a moto_server inside such a virtualenv)",
            bin.display()
        );
    }
    python
}

/// Kills and reaps a child when dropped, also when the harness panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's EC2 server behind the fault layer, on a free loopback port.
struct FakeEc2 {
    _child: ChildGuard,
    addr: String,
}

impl FakeEc2 {
    fn start(python: &Path) -> FakeEc2 {
        let script = repo_root().join("ec2/tests/support/fake_ec2.py");
        let mut child = Command::new(python)
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let guard = ChildGuard(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        loop {
            let left = START_DEADLINE.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening ") {
                        return FakeEc2 { _child: guard, addr: addr.trim().to_string() };
                    }
                }
                Err(e) => panic!("fake_ec2.py did not say where it listens within {START_DEADLINE:?} ({e})"),
            }
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every EC2 request the fault layer has seen, by action.
    async fn calls(&self) -> BTreeMap<String, u64> {
        let body = http_get(&self.addr, "/_fault/calls").await;
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/_fault/calls is not JSON ({e}): {body}"));
        v["calls"]
            .as_object()
            .expect("/_fault/calls has a calls object")
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect()
    }
}

/// One HTTP/1.0 GET to a loopback helper; returns the body.
async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("writing a request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("reading a reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "GET {addr}{path}: {text}");
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Makes the VPC, subnet and instance in moto; returns the instance id.
fn make_world(python: &Path, ec2: &FakeEc2) -> String {
    let script = repo_root().join("benches/support/ec2_world.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(ec2.endpoint())
        .arg(INSTANCE_TYPE)
        .envs(AWS_ENV.iter().copied())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let world: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{} printed no JSON ({e}): {}", script.display(), String::from_utf8_lossy(&out.stdout))
    });
    world["instance_id"].as_str().expect("an instance id").to_string()
}

fn moto_version(python: &Path) -> String {
    let out = Command::new(python).args(["-c", "import moto; print(moto.__version__)"]).output().expect("python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Daemon {
    _child: ChildGuard,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts `enipoold --provider ec2` for `instance_id` on a fresh data dir. Its environment is
/// cleared first, so only the flags, the AWS dummies and the pool knobs given here count.
fn start_daemon(bin: &Path, ec2: &FakeEc2, instance_id: &str, targets: Targets, cooldown: &str) -> Daemon {
    let dir = tempfile::Builder::new().prefix("economy-").tempdir().expect("temp dir");
    let socket = dir.path().join("enipool.sock");
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(AWS_ENV.iter().copied()).envs(targets.env());
    cmd.arg("--data-dir").arg(dir.path()).arg("--socket").arg(&socket);
    cmd.args(["--instance-id", instance_id, "--ec2-endpoint", &ec2.endpoint(), "--ip-cooldown-period", cooldown]);
    for (flag, value) in DAEMON_FLAGS {
        cmd.args([flag, value]);
    }
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("starting enipoold");
    Daemon { _child: ChildGuard(child), socket, _dir: dir }
}

/// `GET /v1/pool`, or None while the daemon does not answer yet.
async fn try_pool(client: &mut Client) -> Option<Pool> {
    let reply = client.get("/v1/pool").await.ok()?;
    if reply.status != 200 {
        return None;
    }
    reply.json::<Pool>().ok()
}

async fn pool(client: &mut Client) -> Pool {
    try_pool(client).await.expect("GET /v1/pool answers")
}

async fn wait_ready(socket: &Path) {
    let mut client = Client::new(socket);
    let started = Instant::now();
    loop {
        if let Ok(reply) = client.get("/readyz").await
            && reply.status == 200
        {
            return;
        }
        assert!(started.elapsed() < START_DEADLINE, "enipoold was not ready within {START_DEADLINE:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling idle IPs, and phases.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    idle: u32,
    enis: u32,
    total: u32,
}

/// Polls `/v1/pool` every [`SAMPLE_EVERY`] until stopped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(socket: &Path) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, stopped, socket) = (Arc::clone(&samples), Arc::clone(&stop), socket.to_path_buf());
        let task = tokio::spawn(async move {
            let mut client = Client::new(&socket);
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(p) = try_pool(&mut client).await {
                    let sample = Sample { at: Instant::now(), idle: p.free + p.cooling, enis: p.enis, total: p.total };
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                }
            }
        });
        Sampler { samples, stop, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler task");
        Arc::try_unwrap(self.samples).expect("sampler done").into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

struct Phase {
    name: String,
    started: Instant,
    /// When the pool last changed: the phase's own figures stop here.
    settled_at: Instant,
    /// When the quiet [`HOLD`] after it ended; the next phase starts here.
    ended: Instant,
    /// EC2 calls made during the phase, by action.
    calls: BTreeMap<String, u64>,
    /// The pool once settled at the end of the phase.
    settled: Pool,
    /// The slowest allocation of the phase, if it allocated.
    slowest_allocation: Option<Duration>,
    /// The reference daemon's idle IPs at the settled end (computed).
    reference_idle: u32,
}

#[derive(Default)]
struct IdleFigures {
    max: u32,
    time_weighted_mean: f64,
}

impl Phase {
    fn mutating(&self) -> u64 {
        MUTATING.iter().map(|a| self.calls.get(*a).copied().unwrap_or(0)).sum()
    }

    fn describes(&self) -> u64 {
        self.calls.iter().filter(|(a, _)| a.starts_with("Describe")).map(|(_, n)| n).sum()
    }

    /// Idle IPs from the phase's start until the pool settled.
    fn idle(&self, samples: &[Sample]) -> IdleFigures {
        idle_between(samples, self.started, self.settled_at)
    }
}

/// Max and time-weighted mean idle IPs between `from` and `to`: the pool as the last sample
/// before `from` saw it holds from `from` (a burst can outrun the first sample of its phase), and
/// each sample holds until the next.
fn idle_between(samples: &[Sample], from: Instant, to: Instant) -> IdleFigures {
    let first = samples.iter().rposition(|s| s.at <= from).unwrap_or(0);
    let steps: Vec<(Instant, u32)> =
        samples[first..].iter().take_while(|s| s.at <= to).map(|s| (s.at.max(from), s.idle)).collect();
    let (Some(&(start, _)), Some(&(last_at, last_idle))) = (steps.first(), steps.last()) else {
        return IdleFigures::default();
    };
    let mut weighted: f64 = steps.windows(2).map(|w| w[0].1 as f64 * (w[1].0 - w[0].0).as_secs_f64()).sum();
    weighted += last_idle as f64 * (to - last_at).as_secs_f64();
    let span = (to - start).as_secs_f64();
    IdleFigures {
        max: steps.iter().map(|s| s.1).max().unwrap_or(0),
        time_weighted_mean: if span > 0.0 { weighted / span } else { last_idle as f64 },
    }
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(a, n)| (a.clone(), n - before.get(a).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
}

/// Waits until the pool holds `leased` leases, lacks nothing, has nothing cooling, and neither
/// its counts nor EC2's call counts have changed for [`HOLD`]; returns it and when it last changed.
async fn settle(client: &mut Client, ec2: &FakeEc2, leased: u32, phase: &str) -> (Pool, Instant) {
    let started = Instant::now();
    let mut last: Option<(Value, BTreeMap<String, u64>)> = None;
    let mut stable_since = Instant::now();
    loop {
        let p = pool(client).await;
        let calls = ec2.calls().await;
        let counts = serde_json::json!([p.enis, p.total, p.free, p.leased, p.cooling, p.deficit, p.excess]);
        let now = (counts, calls);
        if last.as_ref() != Some(&now) {
            last = Some(now);
            stable_since = Instant::now();
        }
        let quiet = p.leased == leased && p.deficit == 0 && p.cooling == 0 && p.excess == 0;
        if quiet && stable_since.elapsed() >= HOLD {
            return (p, stable_since);
        }
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "{phase}: the pool did not settle within {SETTLE_DEADLINE:?} (want {leased} leased, no deficit, nothing \
             cooling): {p:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn lease_request(pod: u32, burst: usize) -> LeaseRequest {
    LeaseRequest {
        network: "aws-cni".into(),
        container_id: format!("economy{burst}x{pod:04}"),
        ifname: "eth0".into(),
        pod_namespace: Some("economy".into()),
        pod_name: Some(format!("pod-{burst}-{pod}")),
        netns: None,
        host_veth: None,
    }
}

/// Closes phases: each ends when the pool settles, and covers the EC2 calls since the last one.
struct PhaseClock<'a> {
    ec2: &'a FakeEc2,
    client: Client,
    targets: Targets,
    started: Instant,
    calls_before: BTreeMap<String, u64>,
}

impl PhaseClock<'_> {
    async fn end(&mut self, name: String, leased: u32, slowest_allocation: Option<Duration>) -> Phase {
        let (settled, settled_at) = settle(&mut self.client, self.ec2, leased, &name).await;
        let calls_after = self.ec2.calls().await;
        let ended = Instant::now();
        let phase = Phase {
            name,
            started: self.started,
            settled_at,
            ended,
            calls: delta(&calls_after, &self.calls_before),
            settled,
            slowest_allocation,
            reference_idle: self.targets.reference_idle(leased),
        };
        self.started = ended;
        self.calls_before = calls_after;
        phase
    }
}

/// One configuration: warm-up, then `bursts` times allocate `pods` and release them all.
async fn run_config(
    python: &Path,
    bin: &Path,
    targets: Targets,
    pods: u32,
    bursts: usize,
    cooldown: &str,
) -> (Vec<Phase>, Vec<Sample>) {
    let ec2 = FakeEc2::start(python);
    let instance_id = make_world(python, &ec2);
    // The warm-up counts from just before the daemon starts: its identity and start-up calls too.
    let calls_before = ec2.calls().await;
    let started = Instant::now();
    let daemon = start_daemon(bin, &ec2, &instance_id, targets, cooldown);
    let sampler = Sampler::start(&daemon.socket);
    wait_ready(&daemon.socket).await;
    let mut clock = PhaseClock { ec2: &ec2, client: Client::new(&daemon.socket), targets, started, calls_before };
    let mut phases = vec![clock.end("warm-up (0 pods)".into(), 0, None).await];

    let mut client = Client::new(&daemon.socket);
    for burst in 1..=bursts {
        let mut slowest = Duration::ZERO;
        for pod in 0..pods {
            let t = Instant::now();
            let reply = client.post_json("/v1/leases", &lease_request(pod, burst)).await.expect("lease request");
            slowest = slowest.max(t.elapsed());
            assert_eq!(reply.status, 201, "allocating pod {pod}: {}", String::from_utf8_lossy(&reply.body));
        }
        phases.push(clock.end(format!("burst {burst}: 0 -> {pods} pods"), pods, Some(slowest)).await);
        for pod in 0..pods {
            let id = lease_request(pod, burst).container_id;
            let reply = client.delete(&format!("/v1/leases/aws-cni/{id}/eth0")).await.expect("release request");
            assert_eq!(reply.status, 204, "releasing pod {pod}");
        }
        phases.push(clock.end(format!("release {burst}: {pods} -> 0 pods"), 0, None).await);
    }
    let samples = sampler.finish().await;
    drop(daemon);
    (phases, samples)
}

// ---------------------------------------------------------------------------------------------
// Checks and the report.
// ---------------------------------------------------------------------------------------------

/// What must hold in every run, smoke or full.
fn check(targets: Targets, phases: &[Phase], samples: &[Sample], pods: u32) {
    let label = targets.label();
    assert!(!samples.is_empty(), "{label}: no pool samples");
    for s in samples {
        assert!(s.enis <= MAX_ENIS, "{label}: {} ENIs on an m5.large: {s:?}", s.enis);
        assert!(s.total <= targets.max_addresses(), "{label}: {} IPs on an m5.large: {s:?}", s.total);
    }
    for p in phases {
        let s = &p.settled;
        assert_eq!((s.max_enis, s.ipv4_per_eni), (MAX_ENIS, IPV4_PER_ENI), "{label}: the daemon's m5.large limits");
        assert_eq!(s.exhausted_allocations, 0, "{label} {}: an allocation found no free IP", p.name);
        assert!(s.last_provider_error.is_none(), "{label} {}: {:?}", p.name, s.last_provider_error);
        // The pool reached its target: at rest it holds what the warm targets ask for, which at
        // these settled points (nothing cooling) is what the reference's formula gives too.
        let idle = s.free + s.cooling;
        assert_eq!(idle, targets.reference_idle(s.leased), "{label} {}: idle IPs once settled: {s:?}", p.name);
    }
    let total = |action: &str| phases.iter().map(|p| p.calls.get(action).copied().unwrap_or(0)).sum::<u64>();
    if let Targets::WarmPrefix(_) = targets {
        assert!(phases.iter().all(|p| p.settled.mode == "prefixes"), "{label}: not in prefix mode throughout");
        if pods == FULL_PREFIX_PODS {
            let mutating: u64 = phases.iter().map(Phase::mutating).sum();
            assert!(mutating <= PREFIX_CALL_TARGET, "{label}: {mutating} mutating calls, target {PREFIX_CALL_TARGET}");
        }
    }
    assert!(phases.iter().map(Phase::mutating).sum::<u64>() > 0, "{label}: no mutating EC2 call was counted");
    assert!(phases[1..].iter().any(|p| p.mutating() > 0), "{label}: the burst of {pods} made no mutating EC2 call");
    // Nothing leaked: every ENI made was deleted, except the ones still attached at the end.
    let secondary_enis_left = phases.last().expect("phases").settled.enis as u64 - 1;
    assert_eq!(
        total("CreateNetworkInterface"),
        total("DeleteNetworkInterface") + secondary_enis_left,
        "{label}: ENIs leaked"
    );
    assert_eq!(total("DetachNetworkInterface"), total("DeleteNetworkInterface"), "{label}: detached but not deleted");
}

/// `Assign 3, Create 2`: the mutating (or the other) calls made, by short action name.
fn by_action(calls: &BTreeMap<String, u64>, mutating: bool) -> String {
    let parts: Vec<String> = calls
        .iter()
        .filter(|(a, _)| MUTATING.contains(&a.as_str()) == mutating)
        .map(|(a, n)| format!("{} {n}", short_action(a)))
        .collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn short_action(action: &str) -> &str {
    match action {
        "CreateNetworkInterface" => "Create",
        "AttachNetworkInterface" => "Attach",
        "ModifyNetworkInterfaceAttribute" => "Modify",
        "AssignPrivateIpAddresses" => "Assign",
        "UnassignPrivateIpAddresses" => "Unassign",
        "DetachNetworkInterface" => "Detach",
        "DeleteNetworkInterface" => "Delete",
        "DescribeNetworkInterfaces" => "DescribeENIs",
        other => other,
    }
}

fn report(targets: Targets, phases: &[Phase], samples: &[Sample]) {
    println!();
    println!("{}", targets.label());
    println!();
    println!(
        "| phase | time to settle | mutating EC2 calls | by action | Describe calls | by action | idle IPs max | idle IPs mean \
         (time-weighted) | idle IPs settled | reference idle settled (computed) | slowest allocation |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all = BTreeMap::new();
    for p in phases {
        for (a, n) in &p.calls {
            *all.entry(a.clone()).or_insert(0) += n;
        }
        let idle = p.idle(samples);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            p.name,
            fmt_duration(p.settled_at - p.started),
            p.mutating(),
            by_action(&p.calls, true),
            p.describes(),
            by_action(&p.calls, false),
            idle.max,
            idle.time_weighted_mean,
            p.settled.free + p.settled.cooling,
            p.reference_idle,
            p.slowest_allocation.map_or("-".into(), fmt_duration),
        );
    }
    let whole = Phase {
        name: "whole run".into(),
        started: phases[0].started,
        settled_at: phases.last().expect("phases").ended,
        ended: phases.last().expect("phases").ended,
        calls: all,
        settled: phases.last().expect("phases").settled.clone(),
        slowest_allocation: phases.iter().filter_map(|p| p.slowest_allocation).max(),
        reference_idle: phases.last().expect("phases").reference_idle,
    };
    let idle = whole.idle(samples);
    println!(
        "| **{}** | {} | **{}** | {} | {} | {} | {} | {:.1} | | | {} |",
        whole.name,
        fmt_duration(whole.ended - whole.started),
        whole.mutating(),
        by_action(&whole.calls, true),
        whole.describes(),
        by_action(&whole.calls, false),
        idle.max,
        idle.time_weighted_mean,
        whole.slowest_allocation.map_or("-".into(), fmt_duration),
    );
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let full = full_mode();
    // (configuration, pods per burst)
    let (configs, bursts, cooldown) = if full {
        (
            vec![
                (Targets::WarmEni(1), FULL_PODS),
                (Targets::WarmIp { warm: 5, minimum: 10 }, FULL_PODS),
                (Targets::WarmPrefix(1), FULL_PREFIX_PODS),
            ],
            FULL_BURSTS,
            FULL_COOLDOWN,
        )
    } else {
        (
            vec![(Targets::WarmEni(1), SMOKE_PODS), (Targets::WarmPrefix(1), SMOKE_PREFIX_PODS)],
            SMOKE_BURSTS,
            SMOKE_COOLDOWN,
        )
    };
    let pods: Vec<String> = configs.iter().map(|(t, n)| format!("{n} with {}", t.label())).collect();
    let pods = pods.join(", ");
    let python = venv_python();
    let moto = moto_version(&python);
    let bin = build_binaries(full).daemon;
    println!(
        "economy ({}): `{COMMAND}`, {}, moto {moto}, {INSTANCE_TYPE} ({MAX_ENIS} ENIs x {POD_IPS_PER_ENI} pod IPs), \
         {bursts} burst(s) of 0 -> N -> 0 pods (N: {pods}), IP cooldown {cooldown}, load average {}",
        if full { "full run" } else { "smoke mode" },
        today(),
        load_average(),
    );
    let flags: Vec<String> = DAEMON_FLAGS.iter().map(|(f, v)| format!("{f} {v}")).collect();
    println!("enipoold {} (release: {full}) {}", bin.display(), flags.join(" "));
    println!(
        "idle IPs = free + cooling (held, not leased), sampled every {SAMPLE_EVERY:?}; a phase ends once the pool \
         settled (nothing changed for {HOLD:?}); a phase's time and idle figures run until the pool last changed, the \
         whole run's include the quiet holds. The reference's idle is computed from vpc-cni.md's warm-target \
         formula at the settled point, NOT measured."
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for (targets, pods) in configs {
        let (phases, samples) = runtime.block_on(run_config(&python, &bin, targets, pods, bursts, cooldown));
        report(targets, &phases, &samples);
        if let Some(reference) = targets.reference_prefix_calls(pods, bursts) {
            let ours: u64 = phases.iter().map(Phase::mutating).sum();
            println!();
            println!(
                "prefix mode, 0 -> {pods} -> 0 x {bursts}: {ours} mutating calls (target <= {PREFIX_CALL_TARGET}); the \
                 reference's one-prefix-as-each-fills rule: {reference} (computed: {} warm, then one Assign per prefix \
                 as each fills and one Unassign per prefix as each empties)",
                match targets {
                    Targets::WarmPrefix(n) => n,
                    _ => 0,
                }
            );
        }
        check(targets, &phases, &samples, pods);
    }
    println!();
    println!(
        "reference (computed from vpc-cni.md, not measured): it grows an ENI with CreateNetworkInterface, \
         DescribeInstances (free device index), AttachNetworkInterface, ModifyNetworkInterfaceAttribute and waits \
         (Describe) until the ENI and its IPs show; it counts cooling IPs as available; its pool loop runs every 5 s \
         and releases excess at most every 30 s."
    );
    if !full {
        println!("(smoke mode: two configurations, one short burst each, test-profile enipoold)");
    }
}

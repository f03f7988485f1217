//! Issue 6: the restart-recovery drill. It starts `enipoold` (static provider), runs C concurrent
//! simulated pods churning ADD/DEL through the real `enipool-cni` binary in real network
//! namespaces (through the API alone when not root), SIGKILLs the daemon at random moments N
//! times and restarts it each time (the last stop is a SIGTERM, which must exit 0 within 5 s).
//!
//! After every restart, with the pods paused between operations, it checks:
//! - every lease acknowledged to a pod that still holds it is there, on the same IP;
//! - no IP is leased to two keys;
//! - no lease whose release the daemon acknowledged (the plugin logged `released`) reappears;
//! - every other lease of the drill's network goes once reconciliation has run (pods whose DEL
//!   ran while the daemon was down, or whose ADD failed after the lease was written);
//! - the node's kernel state agrees with the ledger: our host veths (by alias), host routes and
//!   pod rules are exactly those of the pods that hold a lease.
//!
//! Then a recovery phase: 700 live leases (about an m5.24xlarge's maximum), SIGKILL and restart
//! R times, timing restart-to-ready (spawn to `/readyz` ready) against the 300 ms target.
//!
//! `cargo bench -p enipool-benches --bench drill` is the long drill (release binaries, 200
//! kills, 8 pods); `-- --kills N --pods C` overrides. Without `--bench` (as `cargo test --benches`
//! runs it in CI) it is the short drill: 20 kills, 4 pods, the CNI path when root. Violations
//! fail the run. Every namespace made here is deleted by a Drop guard.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use enipool_api::client::Client;
use enipool_benches::harness::{Exec, Netns, PATH, build_binaries, find_program};
use enipool_benches::{fmt_duration, full_mode, load_average, percentile, scratch_dir};
use enipool_nodenet::alias::ALIAS_PREFIX;
use serde_json::{Value, json};

const COMMAND: &str = "cargo bench -p enipool-benches --bench drill";
const NETWORK: &str = "enipool-drill";
const IFNAME: &str = "eth0";
const INSTANCE_TYPE: &str = "m5.24xlarge";
/// Short enough that the drill never runs the pool dry, long enough to matter.
const COOLDOWN: &str = "1s";
const GRACE: &str = "300ms";
const NODE_INTERVAL: &str = "100ms";
/// Live pods each simulated pod slot keeps (it ADDs one and DELs its oldest beyond this).
const HELD_PER_SLOT: usize = 2;
const RECOVERY_LEASES: usize = 700;
const RECOVERY_TARGET: Duration = Duration::from_millis(300);
const SIGTERM_LIMIT: Duration = Duration::from_secs(5);
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long reconciliation may take to remove what dead pods left (grace + a few passes).
const SETTLE_DEADLINE: Duration = Duration::from_secs(15);
const NODE_IP_CIDR: &str = "10.0.0.10/20";
const UPLINK: &str = "up0";

struct Opts {
    kills: usize,
    slots: usize,
    recovery_restarts: usize,
    cni: bool,
    release: bool,
}

fn opts() -> Opts {
    let full = full_mode();
    let mut o = Opts {
        kills: if full { 200 } else { 20 },
        slots: if full { 8 } else { 4 },
        recovery_restarts: if full { 20 } else { 5 },
        // SAFETY: geteuid has no preconditions.
        cni: unsafe { libc::geteuid() } == 0,
        release: full,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)?.parse::<usize>().ok());
    if let Some(k) = value("--kills") {
        o.kills = k.max(1);
    }
    if let Some(c) = value("--pods") {
        o.slots = c.max(1);
    }
    if args.iter().any(|a| a == "--api-only") {
        o.cni = false;
    }
    o
}

/// The daemon's node flags: with a node, reconcile and clean up inside it; else never touch one.
fn node_flags(node: Option<&Node>) -> Vec<String> {
    match node {
        Some(n) => vec!["--host-netns".into(), n.netns.path(), "--node-cleanup".into(), "true".into()],
        None => vec!["--node-cleanup".into(), "false".into()],
    }
}

/// xorshift64*: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// The daemon, stopped and started again and again on one data dir.
// ---------------------------------------------------------------------------------------------

struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemon {
    fn new(bin: &Path, dir: &Path, extra: &[String]) -> Daemon {
        Daemon { bin: bin.to_path_buf(), dir: dir.to_path_buf(), extra: extra.to_vec(), child: None }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("enipoold.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("enipoold.log")
    }

    /// Spawns it and waits until `/readyz` says ready; returns spawn-to-ready.
    fn start(&mut self, rt: &tokio::runtime::Runtime) -> Duration {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("daemon log");
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", PATH)
            .args(["--provider", "static", "--instance-type", INSTANCE_TYPE])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--log", "warn"])
            .arg("--socket")
            .arg(self.socket())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--ip-cooldown-period", COOLDOWN, "--pool-tick", "50ms"])
            .args(["--node-reconcile-grace", GRACE, "--node-reconcile-interval", NODE_INTERVAL])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let socket = self.socket();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("enipoold exited ({status}): {}", fs::read_to_string(self.log()).unwrap_or_default());
            }
            let ready = rt.block_on(async {
                let reply = Client::new(&socket).get("/readyz").await.ok()?;
                Some(reply.status.as_u16() == 200)
            });
            if ready == Some(true) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "enipoold not ready within {READY_DEADLINE:?}: {}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
            // Polling granularity of the restart-to-ready figure.
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reaping enipoold");
    }

    /// SIGTERM; returns whether it exited 0, and how long it took.
    fn terminate(&mut self) -> (bool, Duration) {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGTERM) }, 0);
        loop {
            if let Some(status) = c.try_wait().expect("waiting for enipoold") {
                return (status.success(), started.elapsed());
            }
            if started.elapsed() > SIGTERM_LIMIT * 3 {
                let _ = c.kill();
                let _ = c.wait();
                return (false, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn leases(&self, rt: &tokio::runtime::Runtime) -> Vec<Value> {
        let path = format!("/v1/leases?network={NETWORK}");
        rt.block_on(async {
            let reply = Client::new(self.socket()).get(&path).await.expect("GET /v1/leases");
            assert_eq!(reply.status.as_u16(), 200, "GET /v1/leases");
            reply.json::<Vec<Value>>().expect("a lease list")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The node: its namespace, and the plugin run in it as a runtime runs it.
// ---------------------------------------------------------------------------------------------

struct Node {
    netns: Netns,
    _ext: Netns,
    plugin: PathBuf,
    nsenter: PathBuf,
}

impl Node {
    fn new(plugin: &Path, tag: &str) -> Node {
        let pid = std::process::id();
        let netns = Netns::add(format!("enpd-node-{pid}-{tag}"));
        let ext = Netns::add(format!("enpd-ext-{pid}-{tag}"));
        netns.ip(&["link", "set", "lo", "up"]);
        netns.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", "dn0", "netns", &ext.name]);
        netns.ip(&["addr", "add", NODE_IP_CIDR, "dev", UPLINK]);
        netns.ip(&["link", "set", UPLINK, "up"]);
        netns.ip(&["route", "add", "default", "via", "10.0.0.1"]);
        ext.ip(&["addr", "add", "10.0.0.1/20", "dev", "dn0"]);
        ext.ip(&["link", "set", "dn0", "up"]);
        netns
            .on_thread(|| fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("net.ipv4.ip_forward=1 in the node namespace");
        let nsenter = find_program("nsenter").expect("nsenter (util-linux) is needed");
        Node { netns, _ext: ext, plugin: plugin.to_path_buf(), nsenter }
    }

    fn cni(&self, command: &str, id: &str, netns: &str, conf: &Value) -> Exec {
        let mut cmd = Command::new(&self.nsenter);
        cmd.arg(format!("--net={}", self.netns.path()))
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", PATH)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=drill;K8S_POD_NAME={id}"))
            .env("CNI_PATH", "/usr/lib/cni");
        Exec::run(&mut cmd, conf.to_string().as_bytes())
    }

    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.netns.ip(&all);
        if out.trim().is_empty() { vec![] } else { serde_json::from_str(&out).expect("ip -j printed JSON") }
    }

    /// Where the node's kernel disagrees with the pods that hold leases (IP -> host veth).
    fn disagreements(&self, held: &HashMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        let veths: HashSet<String> = self
            .ip_json(&["link", "show"])
            .iter()
            .filter(|l| l["ifalias"].as_str().is_some_and(|a| a.starts_with(ALIAS_PREFIX)))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        let want_veths: HashSet<String> = held.values().cloned().collect();
        for v in veths.difference(&want_veths) {
            out.push(format!("host veth {v} of ours has no lease"));
        }
        for v in want_veths.difference(&veths) {
            out.push(format!("host veth {v} of a leased pod is missing"));
        }
        let routes: HashSet<String> = self
            .ip_json(&["route", "show", "proto", "211"])
            .iter()
            .filter_map(|r| r["dst"].as_str().map(|d| d.trim_end_matches("/32").to_string()))
            .collect();
        let want_ips: HashSet<String> = held.keys().cloned().collect();
        for ip in routes.symmetric_difference(&want_ips) {
            let what = if routes.contains(ip) { "has no lease" } else { "is missing" };
            out.push(format!("host route to {ip} {what}"));
        }
        let mut to_rules = HashSet::new();
        for r in self.ip_json(&["rule", "show"]) {
            let prio = r["priority"].as_u64();
            let ours = r["protocol"].as_str() == Some("211") || r["protocol"].as_u64() == Some(211);
            if !ours || !matches!(prio, Some(512 | 1536)) {
                continue;
            }
            let ip = if prio == Some(512) { r["dst"].as_str() } else { r["src"].as_str() };
            let Some(ip) = ip.map(str::to_string) else { continue };
            if !want_ips.contains(&ip) {
                out.push(format!("rule {prio:?} for {ip} has no lease"));
            }
            if prio == Some(512) {
                to_rules.insert(ip);
            }
        }
        for ip in want_ips.difference(&to_rules) {
            out.push(format!("rule 512 to {ip} of a leased pod is missing"));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated pods.
// ---------------------------------------------------------------------------------------------

/// A pod whose ADD was acknowledged.
struct Pod {
    id: String,
    ip: String,
    host_veth: Option<String>,
    result: Value,
    netns: Option<Netns>,
}

/// What one slot knows: its live pods, and the ids whose release the daemon acknowledged.
#[derive(Default)]
struct Book {
    held: VecDeque<Pod>,
    released: HashSet<String>,
    acked: u64,
    /// DELs that ran without the daemon (the node must reclaim them).
    unreleased_dels: u64,
}

#[derive(Default)]
struct GateState {
    pause: bool,
    paused: usize,
    stop: bool,
}

/// Pauses every slot between two operations, and lets them go again.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    /// A slot's checkpoint: returns false once the drill stops.
    fn checkpoint(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        if s.pause && !s.stop {
            s.paused += 1;
            self.changed.notify_all();
            while s.pause && !s.stop {
                s = self.changed.wait(s).unwrap();
            }
            s.paused -= 1;
        }
        !s.stop
    }

    fn pause(&self, slots: usize) {
        let mut s = self.state.lock().unwrap();
        s.pause = true;
        while s.paused < slots {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn resume(&self) {
        self.state.lock().unwrap().pause = false;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.state.lock().unwrap().stop = true;
        self.changed.notify_all();
    }
}

struct Slot {
    index: usize,
    book: Arc<Mutex<Book>>,
    gate: Arc<Gate>,
    unexpected: Arc<Mutex<Vec<String>>>,
    counter: Arc<AtomicU64>,
}

/// How a DEL ended, from the daemon's point of view.
#[derive(PartialEq, Eq, Debug)]
enum DelOutcome {
    /// The daemon answered the release (204).
    Released,
    /// The plugin tore down without the daemon; the lease (if any) is the node's to reclaim.
    WithoutDaemon,
    /// The daemon had no lease.
    NoLease,
}

/// The CNI path: a pod is a namespace + ADD; its end is DEL + `ip netns del`.
struct CniSlot<'a> {
    node: &'a Node,
    conf: Value,
    log: PathBuf,
    log_at: u64,
}

impl CniSlot<'_> {
    fn conf(&self, prev: Option<&Value>) -> Value {
        let mut c = self.conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// The plugin log's lines since the last call.
    fn new_log(&mut self) -> String {
        let Ok(mut f) = fs::File::open(&self.log) else { return String::new() };
        let _ = f.seek(SeekFrom::Start(self.log_at));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        self.log_at += s.len() as u64;
        s
    }

    /// DEL until the plugin succeeds (a runtime retries it), then the namespace goes.
    fn del(
        &mut self,
        id: &str,
        netns: Option<Netns>,
        prev: Option<&Value>,
        unexpected: &Mutex<Vec<String>>,
    ) -> DelOutcome {
        let path = netns.as_ref().map(Netns::path).unwrap_or_default();
        let conf = self.conf(prev);
        let mut tries = 0;
        loop {
            let e = self.node.cni("DEL", id, &path, &conf);
            if e.status.success() {
                break;
            }
            tries += 1;
            if tries == 50 {
                unexpected
                    .lock()
                    .unwrap()
                    .push(format!("DEL {id} keeps failing: {}", String::from_utf8_lossy(&e.stdout)));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(ns) = netns {
            ns.delete();
        }
        let log = self.new_log();
        let mine = |what: &str| log.lines().any(|l| l.contains(&format!(" DEL {id} ")) && l.contains(what));
        if mine(" released") {
            DelOutcome::Released
        } else if mine("without the daemon") || mine("releasing the lease failed") {
            DelOutcome::WithoutDaemon
        } else {
            DelOutcome::NoLease
        }
    }
}

fn cni_code(e: &Exec) -> Option<u64> {
    serde_json::from_slice::<Value>(&e.stdout).ok()?.get("code")?.as_u64()
}

fn run_cni_slot(slot: Slot, node: &Node, base_conf: &Value, dir: &Path) {
    let log = dir.join(format!("cni-slot-{}.log", slot.index));
    let mut conf = base_conf.clone();
    conf["logFile"] = json!(log);
    conf["logLevel"] = json!("info");
    let mut cni = CniSlot { node, conf, log, log_at: 0 };
    let pid = std::process::id();
    while slot.gate.checkpoint() {
        let n = slot.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("drill{pid}s{}n{n}", slot.index);
        let netns = Netns::add(format!("enpd-{pid}-{n}"));
        let add = node.cni("ADD", &id, &netns.path(), &cni.conf(None));
        if add.status.success() {
            let result = add.json("ADD");
            let ip = result["ips"][0]["address"].as_str().unwrap_or("").trim_end_matches("/32").to_string();
            let host_veth = result["interfaces"]
                .as_array()
                .and_then(|ifs| ifs.iter().find(|i| i.get("sandbox").is_none_or(Value::is_null)))
                .and_then(|i| i["name"].as_str())
                .map(str::to_string);
            let mut book = slot.book.lock().unwrap();
            book.acked += 1;
            book.held.push_back(Pod { id, ip, host_veth, result, netns: Some(netns) });
        } else {
            if cni_code(&add) != Some(11) {
                slot.unexpected.lock().unwrap().push(format!(
                    "ADD {id} failed: {}{}",
                    String::from_utf8_lossy(&add.stdout),
                    String::from_utf8_lossy(&add.stderr)
                ));
            }
            // The runtime cleans up a failed ADD with a DEL.
            let outcome = cni.del(&id, Some(netns), None, &slot.unexpected);
            let mut book = slot.book.lock().unwrap();
            match outcome {
                DelOutcome::Released => {
                    book.acked += 1;
                    book.released.insert(id);
                }
                DelOutcome::WithoutDaemon => book.unreleased_dels += 1,
                DelOutcome::NoLease => {}
            }
            drop(book);
            // A runtime backs off before it tries the pod again.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let oldest = {
            let mut book = slot.book.lock().unwrap();
            if book.held.len() > HELD_PER_SLOT { book.held.pop_front() } else { None }
        };
        if let Some(mut pod) = oldest {
            let netns = pod.netns.take();
            let outcome = cni.del(&pod.id, netns, Some(&pod.result), &slot.unexpected);
            let mut book = slot.book.lock().unwrap();
            match outcome {
                DelOutcome::Released => {
                    book.acked += 1;
                    book.released.insert(pod.id);
                }
                DelOutcome::WithoutDaemon => book.unreleased_dels += 1,
                DelOutcome::NoLease => {
                    slot.unexpected.lock().unwrap().push(format!("DEL {}: the daemon had no lease", pod.id))
                }
            }
        }
    }
}

/// The API path (not root): a pod is a lease request; its end is a release, retried until the
/// daemon answers (nothing on the node would reclaim an API lease).
fn run_api_slot(slot: Slot, socket: &Path) {
    let rt = runtime();
    let pid = std::process::id();
    let release = |id: &str| -> bool {
        let path = format!("/v1/leases/{NETWORK}/{id}/{IFNAME}");
        loop {
            let status = rt.block_on(async { Client::new(socket).delete(&path).await.map(|r| r.status.as_u16()) });
            match status {
                Ok(204) => return true,
                Ok(404) => return false,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    };
    while slot.gate.checkpoint() {
        let n = slot.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("drill{pid}s{}n{n}", slot.index);
        let req =
            json!({"network": NETWORK, "container_id": id, "ifname": IFNAME, "pod_namespace": "drill", "pod_name": id});
        let reply = rt.block_on(async { Client::new(socket).post_json("/v1/leases", &req).await });
        match reply {
            Ok(r) if r.status.is_success() => {
                let lease: Value = r.json().expect("a lease");
                let ip = lease["ip"].as_str().unwrap_or("").to_string();
                let mut book = slot.book.lock().unwrap();
                book.acked += 1;
                book.held.push_back(Pod { id, ip, host_veth: None, result: lease, netns: None });
            }
            _ => {
                if release(&id) {
                    let mut book = slot.book.lock().unwrap();
                    book.acked += 1;
                    book.released.insert(id);
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        }
        let oldest = {
            let mut book = slot.book.lock().unwrap();
            if book.held.len() > HELD_PER_SLOT { book.held.pop_front() } else { None }
        };
        if let Some(pod) = oldest {
            let acked = release(&pod.id);
            let mut book = slot.book.lock().unwrap();
            if acked {
                book.acked += 1;
                book.released.insert(pod.id);
            } else {
                slot.unexpected.lock().unwrap().push(format!("release {}: the daemon had no lease", pod.id));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks after a restart.
// ---------------------------------------------------------------------------------------------

/// Checks the ledger (and the node) against what the paused slots know; returns violations.
fn verify(
    daemon: &Daemon,
    rt: &tokio::runtime::Runtime,
    books: &[Arc<Mutex<Book>>],
    node: Option<&Node>,
) -> Vec<String> {
    let mut held: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut released: HashSet<String> = HashSet::new();
    for b in books {
        let b = b.lock().unwrap();
        for p in &b.held {
            held.insert(p.id.clone(), (p.ip.clone(), p.host_veth.clone()));
        }
        released.extend(b.released.iter().cloned());
    }
    let mut violations = Vec::new();
    let started = Instant::now();
    let mut first = true;
    loop {
        let leases = daemon.leases(rt);
        let mut pending = Vec::new();
        let mut by_ip: HashMap<String, Vec<String>> = HashMap::new();
        let mut present: HashMap<String, String> = HashMap::new();
        for l in &leases {
            let id = l["container_id"].as_str().unwrap_or("").to_string();
            let ip = l["ip"].as_str().unwrap_or("").to_string();
            by_ip.entry(ip.clone()).or_default().push(id.clone());
            present.insert(id.clone(), ip);
            if first && released.contains(&id) {
                violations.push(format!("{id}: its release was acknowledged, yet the lease is back"));
            } else if !held.contains_key(&id) && !released.contains(&id) {
                pending.push(format!("{id}: a lease no live pod holds was not reconciled away"));
            }
        }
        if first {
            for (ip, ids) in &by_ip {
                if ids.len() > 1 {
                    violations.push(format!("{ip} is leased to {ids:?}"));
                }
            }
            for (id, (ip, _)) in &held {
                match present.get(id) {
                    None => violations.push(format!("{id}: its acknowledged lease ({ip}) is missing")),
                    Some(got) if got != ip => {
                        violations.push(format!("{id}: acknowledged {ip}, the ledger says {got}"))
                    }
                    _ => {}
                }
            }
        }
        first = false;
        if let Some(node) = node {
            let want: HashMap<String, String> =
                held.values().filter_map(|(ip, veth)| Some((ip.clone(), veth.clone()?))).collect();
            pending.extend(node.disagreements(&want));
        }
        if pending.is_empty() {
            return violations;
        }
        if started.elapsed() > SETTLE_DEADLINE {
            violations.extend(pending);
            return violations;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The drill.
// ---------------------------------------------------------------------------------------------

struct Figures {
    kills: usize,
    acked: u64,
    unreleased_dels: u64,
    violations: Vec<String>,
    unexpected: Vec<String>,
    ready: Vec<Duration>,
    sigterm: (bool, Duration),
}

fn churn_drill(o: &Opts, bins: &enipool_benches::harness::Binaries, dir: &Path, seed: u64) -> Figures {
    let rt = runtime();
    let node = o.cni.then(|| Node::new(&bins.plugin, "churn"));
    let extra = node_flags(node.as_ref());
    let mut daemon = Daemon::new(&bins.daemon, dir, &extra);
    daemon.start(&rt);
    let state = dir.join("cni-state");
    fs::create_dir_all(&state).expect("state dir");
    let conf = json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "enipool-cni", "socket": daemon.socket(), "stateDir": state});

    let gate = Arc::new(Gate::default());
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));
    let books: Vec<Arc<Mutex<Book>>> = (0..o.slots).map(|_| Arc::new(Mutex::new(Book::default()))).collect();
    let mut rng = Rng(seed | 1);
    let mut figures = Figures {
        kills: 0,
        acked: 0,
        unreleased_dels: 0,
        violations: Vec::new(),
        unexpected: Vec::new(),
        ready: Vec::new(),
        sigterm: (false, Duration::ZERO),
    };
    std::thread::scope(|s| {
        for (index, book) in books.iter().enumerate() {
            let slot = Slot {
                index,
                book: Arc::clone(book),
                gate: Arc::clone(&gate),
                unexpected: Arc::clone(&unexpected),
                counter: Arc::clone(&counter),
            };
            let (node, conf, socket) = (node.as_ref(), &conf, daemon.socket());
            s.spawn(move || match node {
                Some(node) => run_cni_slot(slot, node, conf, dir),
                None => run_api_slot(slot, &socket),
            });
        }
        for k in 0..o.kills {
            // A random moment in the churn.
            std::thread::sleep(Duration::from_millis(rng.between(20, 250)));
            if k + 1 == o.kills {
                figures.sigterm = daemon.terminate();
            } else {
                daemon.kill();
            }
            figures.kills += 1;
            figures.ready.push(daemon.start(&rt));
            gate.pause(o.slots);
            let v = verify(&daemon, &rt, &books, node.as_ref());
            for x in &v {
                eprintln!("drill: VIOLATION after stop {}: {x}", k + 1);
            }
            figures.violations.extend(v);
            gate.resume();
        }
        gate.stop();
    });
    for b in &books {
        let b = b.lock().unwrap();
        figures.acked += b.acked;
        figures.unreleased_dels += b.unreleased_dels;
    }
    figures.unexpected = unexpected.lock().unwrap().clone();
    // The slots' pods: DEL them while the daemon runs, then nothing of ours may be left.
    if let Some(node) = &node {
        let mut cni = CniSlot { node, conf: conf.clone(), log: dir.join("cni-final.log"), log_at: 0 };
        cni.conf["logFile"] = json!(cni.log);
        for b in &books {
            let pods: Vec<Pod> = b.lock().unwrap().held.drain(..).collect();
            for mut p in pods {
                let netns = p.netns.take();
                cni.del(&p.id, netns, Some(&p.result), &unexpected);
            }
        }
        // The kernel removes a veth pair shortly after its namespace goes: poll, bounded.
        let deleted = Instant::now();
        loop {
            let left = node.disagreements(&HashMap::new());
            if left.is_empty() {
                break;
            }
            assert!(deleted.elapsed() < SETTLE_DEADLINE, "after every pod's DEL the node still holds: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    figures
}

/// Restart-to-ready with `RECOVERY_LEASES` live leases, each recording a live pod namespace.
fn recovery(o: &Opts, bins: &enipool_benches::harness::Binaries, dir: &Path) -> (Vec<Duration>, Vec<String>) {
    let rt = runtime();
    let node = o.cni.then(|| Node::new(&bins.plugin, "recovery"));
    let pods: Vec<Netns> = if o.cni {
        (0..4).map(|i| Netns::add(format!("enpd-rec-{}-{i}", std::process::id()))).collect()
    } else {
        Vec::new()
    };
    let extra = node_flags(node.as_ref());
    let mut daemon = Daemon::new(&bins.daemon, dir, &extra);
    daemon.start(&rt);
    rt.block_on(async {
        let mut client = Client::new(daemon.socket());
        for i in 0..RECOVERY_LEASES {
            let netns = pods.get(i % pods.len().max(1)).map(Netns::path);
            let req = json!({"network": NETWORK, "container_id": format!("recovery-{i}"), "ifname": IFNAME,
                "pod_namespace": "drill", "pod_name": format!("recovery-{i}"), "netns": netns});
            let r = client.post_json("/v1/leases", &req).await.expect("lease request");
            assert!(r.status.is_success(), "lease {i}: {}", String::from_utf8_lossy(&r.body));
        }
    });
    let mut times = Vec::new();
    let mut violations = Vec::new();
    for _ in 0..o.recovery_restarts {
        daemon.kill();
        times.push(daemon.start(&rt));
        let n = daemon.leases(&rt).len();
        if n != RECOVERY_LEASES {
            violations.push(format!("recovery: {n} leases after a restart, not {RECOVERY_LEASES}"));
        }
    }
    (times, violations)
}

fn main() {
    let o = opts();
    let seed = std::env::var("ENIPOOL_DRILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let bins = build_binaries(o.release);
    let dir = scratch_dir("drill");
    println!(
        "drill ({}): {} stops (the last a SIGTERM), {} pod slots x {HELD_PER_SLOT} live pods, {} path, \
         {INSTANCE_TYPE} static provider, cooldown {COOLDOWN}, grace {GRACE}, seed {seed} (ENIPOOL_DRILL_SEED), \
         load {}",
        if o.release { "release" } else { "test profile" },
        o.kills,
        o.slots,
        if o.cni { "CNI (enipool-cni in real namespaces)" } else { "API-only (not root)" },
        load_average()
    );
    let churn_dir = dir.path().join("churn");
    fs::create_dir_all(&churn_dir).unwrap();
    let f = churn_drill(&o, &bins, &churn_dir, seed);
    let recovery_dir = dir.path().join("recovery");
    fs::create_dir_all(&recovery_dir).unwrap();
    let (mut rec, rec_violations) = recovery(&o, &bins, &recovery_dir);

    let mut ready = f.ready.clone();
    let p = |v: &mut [Duration], q: f64| fmt_duration(percentile(v, q));
    println!("  stops: {} ({} SIGKILL, 1 SIGTERM)", f.kills, f.kills - 1);
    println!("  operations acknowledged: {} (ADD and DEL the daemon answered)", f.acked);
    println!(
        "  DELs that ran while the daemon was down (what lease they left is node reconciliation's): {}",
        f.unreleased_dels
    );
    println!(
        "  restart-to-ready during churn: p50 {} p99 {} (n={})",
        p(&mut ready, 50.0),
        p(&mut ready, 99.0),
        ready.len()
    );
    println!(
        "  SIGTERM: exit {} in {} (limit {})",
        if f.sigterm.0 { "0" } else { "NOT 0" },
        fmt_duration(f.sigterm.1),
        fmt_duration(SIGTERM_LIMIT)
    );
    let rec_p50 = percentile(&mut rec, 50.0);
    let rec_p99 = percentile(&mut rec, 99.0);
    println!(
        "  restart-to-ready with {RECOVERY_LEASES} live leases: p50 {} p99 {} (n={}), target <= {}: {}",
        fmt_duration(rec_p50),
        fmt_duration(rec_p99),
        rec.len(),
        fmt_duration(RECOVERY_TARGET),
        if rec_p99 <= RECOVERY_TARGET { "met" } else { "NOT met" }
    );
    let mut violations = f.violations;
    violations.extend(rec_violations);
    if !f.sigterm.0 || f.sigterm.1 > SIGTERM_LIMIT {
        violations.push(format!("SIGTERM: exited 0: {}, after {:?}", f.sigterm.0, f.sigterm.1));
    }
    println!("  violations: {}", violations.len());
    println!("  unexpected plugin failures: {}", f.unexpected.len());
    for u in f.unexpected.iter().take(10) {
        println!("    {u}");
    }
    println!("  reproduce: {COMMAND}   (CI: cargo test -p enipool-benches --bench drill)");
    assert!(violations.is_empty(), "the drill found violations: {violations:#?}");
    assert!(f.unexpected.is_empty(), "the plugin failed in ways a restart does not explain: {:#?}", f.unexpected);
}

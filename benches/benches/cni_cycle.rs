//! Issue 4 item 10: a pod's full ADD and full DEL through the `enipool-cni` binary in real network
//! namespaces, against the reference `ptp` + `host-local` plugins (Debian's
//! containernetworking-plugins, `/usr/lib/cni`) on the same machine, in the same run, interleaved.
//!
//! Every run does what a runtime does: `ip netns add` a pod namespace, ADD, DEL (with the ADD
//! result as prevResult), `ip netns del`. ADD and DEL are timed from spawn to exit. The whole
//! cycle is timed from before `ip netns add` until the pod's host veth has left the node
//! namespace, so kernel work a plugin leaves to the namespace teardown (ours leaves the veth to
//! go with the pod netns; ptp deletes it, synchronously, in DEL) is still counted.
//!
//! Everything happens inside a "node" namespace made here (an uplink holding 10.0.0.10/20, like
//! the plugin's tests): both plugins are exec'd directly, as a runtime on the node execs them,
//! from a harness thread that has entered the node namespace (an exec through `nsenter` would add
//! its own ~3.7 ms to both sides, which no plugin can win back). The machine's root namespace is
//! never changed; `enipoold` (static provider) runs beside it and only serves its unix socket
//! (and a loopback port the OS picks). Every namespace made here is deleted by a Drop guard, also
//! when the harness panics.
//!
//! `cargo bench -p enipool-benches --bench cni_cycle` is the full measurement (release binaries,
//! [`FULL_RUNS`] runs of each plugin). Without `--bench` (as `cargo test --benches` runs it) it is
//! a smoke run of [`SMOKE_RUNS`] runs each in the test profile, skipped when not root.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enipool_api::Pool;
use enipool_api::client::Client;
use enipool_benches::harness::{Binaries, Exec, Netns, PATH, build_binaries, find_program};
use enipool_benches::{fmt_duration, full_mode, load_average, percentile, scratch_dir};
use serde_json::{Value, json};

const FULL_RUNS: usize = 100;
const SMOKE_RUNS: usize = 3;
/// Extra, separately reported runs of ours with the debug log on, for the ADD phase breakdown.
const FULL_PHASE_RUNS: usize = 20;
const SMOKE_PHASE_RUNS: usize = 1;
/// VERSION execs (and each baseline exec) per plugin.
const FULL_EXECS: usize = 200;
const SMOKE_EXECS: usize = 5;

const CNI_PATH: &str = "/usr/lib/cni";
const PTP: &str = "/usr/lib/cni/ptp";
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const NETWORK: &str = "enipool-bench";
const NODE_IP_CIDR: &str = "10.0.0.10/20";
const UPLINK: &str = "up0";
const IFNAME: &str = "eth0";
const COMMAND: &str = "cargo bench -p enipool-benches --bench cni_cycle";
/// How long the host veth may take to leave the node after `ip netns del`.
const VETH_GONE_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The link probe.
// ---------------------------------------------------------------------------------------------

/// Asks the kernel whether a link exists in the node namespace (SIOCGIFINDEX on a socket made
/// inside it): a few microseconds, no exec, so polling it does not slow the teardown it watches.
struct LinkProbe {
    socket: OwnedFd,
}

impl LinkProbe {
    fn new(node: &Netns) -> LinkProbe {
        let fd = node.on_thread(|| {
            // SAFETY: a plain socket call; the fd is owned below.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
        });
        assert!(fd >= 0, "socket in the node namespace: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh socket nobody else owns.
        LinkProbe { socket: unsafe { OwnedFd::from_raw_fd(fd) } }
    }

    fn exists(&self, name: &str) -> bool {
        assert!(name.len() < libc::IFNAMSIZ, "interface name {name:?} is too long");
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFINDEX reads the name and writes the index into the ifreq we own.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req) };
        if rc == 0 {
            return true;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "SIOCGIFINDEX {name}: {err}");
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.
// ---------------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts enipoold (static provider, no cooldown) with its data and socket in `dir` and waits
    /// (bounded) until its pool holds free IPs and wants no more, so nothing grows during the runs.
    fn start(bin: &Path, dir: &Path) -> (Daemon, Pool) {
        let socket = dir.join("enipoold.sock");
        let log = dir.join("enipoold.log");
        let log_file = fs::File::create(&log).expect("daemon log");
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", PATH)
            .args(["--provider", "static", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--ip-cooldown-period", "0", "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut daemon = Daemon { child, socket, log };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("enipoold exited ({status}): {}", fs::read_to_string(&daemon.log).unwrap_or_default());
            }
            let pool = rt.block_on(async {
                let reply = Client::new(&daemon.socket).get("/v1/pool").await.ok()?;
                reply.json::<Pool>().ok()
            });
            if let Some(pool) = pool
                && pool.free > 0
                && pool.deficit == 0
            {
                return (daemon, pool);
            }
            assert!(
                Instant::now() < deadline,
                "enipoold's pool had no free IPs within 30 s: {}",
                fs::read_to_string(&daemon.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node and the two plugins.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plugin {
    Ours,
    Ptp,
}

impl Plugin {
    fn tag(self) -> &'static str {
        match self {
            Plugin::Ours => "o",
            Plugin::Ptp => "p",
        }
    }
}

/// The "node": its namespace (uplink 10.0.0.10/20 to an "external" namespace), the daemon, the
/// plugins' configs. Fields drop in order: the daemon first, then the namespaces.
struct Node {
    _daemon: Daemon,
    plugin: PathBuf,
    probe: LinkProbe,
    ours_conf: Value,
    ptp_conf: Value,
    /// Where the phase runs' debug log goes.
    phase_log: PathBuf,
    pid: u32,
    node: Netns,
    _ext: Netns,
}

/// `program` with exactly the runtime's environment (PATH, then what the caller adds).
fn runtime_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", PATH);
    cmd
}

/// Wall times of one run.
#[derive(Clone, Copy, Debug)]
struct Cycle {
    netns_add: Duration,
    add: Duration,
    del: Duration,
    netns_del: Duration,
    /// From the return of `ip netns del` to the host veth's leaving the node.
    veth_gone: Duration,
    total: Duration,
}

impl Node {
    fn new(bins: &Binaries, dir: &Path) -> (Node, Pool) {
        let pid = std::process::id();
        let node = Netns::add(format!("enpb-node-{pid}"));
        let ext = Netns::add(format!("enpb-ext-{pid}"));
        node.ip(&["link", "set", "lo", "up"]);
        node.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", "dn0", "netns", &ext.name]);
        node.ip(&["addr", "add", NODE_IP_CIDR, "dev", UPLINK]);
        node.ip(&["link", "set", UPLINK, "up"]);
        node.ip(&["route", "add", "default", "via", "10.0.0.1"]);
        ext.ip(&["addr", "add", "10.0.0.1/20", "dev", "dn0"]);
        ext.ip(&["link", "set", "dn0", "up"]);
        // The node forwards (ptp turns it on itself; ours expects the node to have it on).
        node.on_thread(|| fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("net.ipv4.ip_forward=1 in the node namespace");
        let probe = LinkProbe::new(&node);
        assert!(probe.exists(UPLINK), "the link probe does not see the node's uplink");

        let (daemon, pool) = Daemon::start(&bins.daemon, dir);
        let state = dir.join("cni-state");
        fs::create_dir_all(&state).expect("state dir");
        let ours_conf = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "enipool-cni",
            "socket": daemon.socket,
            "stateDir": state,
        });
        let ptp_conf = json!({
            "cniVersion": "1.0.0",
            "name": "ptpbench",
            "type": "ptp",
            "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.90.0.0/16"}]], "dataDir": dir.join("host-local")},
        });
        let n = Node {
            _daemon: daemon,
            plugin: bins.plugin.clone(),
            probe,
            ours_conf,
            ptp_conf,
            phase_log: dir.join("enipool-cni-debug.log"),
            pid,
            node,
            _ext: ext,
        };
        (n, pool)
    }

    /// Runs `cmd`, exec'd from a thread in the node namespace (the child starts there), timed
    /// from spawn to exit.
    fn exec_in_node(&self, cmd: &mut Command, stdin: &[u8]) -> Exec {
        self.node.on_thread(|| Exec::run(cmd, stdin))
    }

    fn cni(&self, plugin: Plugin, command: &str, id: &str, pod: &str, netns: &str, conf: &Value) -> Exec {
        let binary = match plugin {
            Plugin::Ours => self.plugin.as_path(),
            Plugin::Ptp => Path::new(PTP),
        };
        let mut cmd = runtime_command(binary);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"))
            .env("CNI_PATH", CNI_PATH);
        self.exec_in_node(&mut cmd, conf.to_string().as_bytes()).ok(&format!("{plugin:?} {command} {id}"))
    }

    /// One pod as a runtime drives it: netns add, ADD, DEL (prevResult from ADD), netns del; the
    /// clock stops once the pod's host veth has left the node. `debug_log` turns our plugin's
    /// debug log on (the phase runs).
    fn cycle(&self, plugin: Plugin, run: usize, debug_log: bool) -> Cycle {
        let pod = format!("pod-{}-{run}-{}", self.pid, plugin.tag());
        let id = format!("{:08x}{:08x}{:048x}", self.pid, run, u8::from(plugin == Plugin::Ptp));
        let mut conf = match plugin {
            Plugin::Ours => self.ours_conf.clone(),
            Plugin::Ptp => self.ptp_conf.clone(),
        };
        if debug_log {
            conf["logFile"] = json!(self.phase_log);
            conf["logLevel"] = json!("debug");
        }

        let start = Instant::now();
        let ns = Netns::add(format!("enpb-pod-{}-{run}-{}", self.pid, plugin.tag()));
        let netns_add = start.elapsed();
        let netns = ns.path();
        let add = self.cni(plugin, "ADD", &id, &pod, &netns, &conf);
        let result = add.json("ADD");
        let host_veth = result["interfaces"]
            .as_array()
            .and_then(|ifs| ifs.iter().find(|i| i.get("sandbox").is_none_or(Value::is_null)))
            .and_then(|i| i["name"].as_str())
            .unwrap_or_else(|| panic!("{plugin:?} ADD result names no host interface: {result}"))
            .to_string();
        conf["prevResult"] = result;
        let del = self.cni(plugin, "DEL", &id, &pod, &netns, &conf);
        let before_del = Instant::now();
        ns.delete();
        let netns_del = before_del.elapsed();
        let deleted = Instant::now();
        while self.probe.exists(&host_veth) {
            assert!(
                deleted.elapsed() < VETH_GONE_DEADLINE,
                "{plugin:?}: host veth {host_veth} still in the node {VETH_GONE_DEADLINE:?} after netns del"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        let total = start.elapsed();
        Cycle { netns_add, add: add.took, del: del.took, netns_del, veth_gone: deleted.elapsed(), total }
    }

    /// Host veths left in the node, the uplink aside.
    fn leftover_veths(&self) -> Vec<String> {
        self.node
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != UPLINK)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The ADD phases from our plugin's debug log.
// ---------------------------------------------------------------------------------------------

/// A `Duration`'s Debug form (`1.234ms`, `812.5µs`, `2.1s`, `950ns`).
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim().trim_end_matches([',', ')']);
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| Duration::from_secs_f64(v * scale))
}

/// What one ADD's debug lines say, inside the process (from after config parsing and the async
/// runtime's start to just before the result is printed).
#[derive(Default, Clone, Copy)]
struct AddPhases {
    inside: Option<Duration>,
    prepare: Option<Duration>,
    lease: Option<Duration>,
    wire: Option<Duration>,
    snat: Option<Duration>,
}

fn parse_phases(log: &str) -> Vec<AddPhases> {
    let mut out = Vec::new();
    let mut cur = AddPhases::default();
    for line in log.lines() {
        if let Some(rest) = line.split(" wired in ").nth(1) {
            cur.wire = parse_debug_duration(rest);
        } else if let Some(rest) = line.split(" SNAT ensured in ").nth(1) {
            cur.snat = parse_debug_duration(rest);
        } else if let Some(rest) = line.split(" ADD took ").nth(1) {
            // `ADD took 3.1ms (netns and sockets 1.2ms, lease 800µs while the veth was made)`
            let mut words = rest.split_whitespace();
            cur.inside = words.next().and_then(parse_debug_duration);
            let rest: Vec<&str> = words.collect();
            cur.prepare =
                rest.iter().position(|w| *w == "sockets").and_then(|i| parse_debug_duration(rest.get(i + 1)?));
            cur.lease = rest.iter().position(|w| *w == "lease").and_then(|i| parse_debug_duration(rest.get(i + 1)?));
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Figures.
// ---------------------------------------------------------------------------------------------

struct Stat {
    median: Duration,
    p90: Duration,
}

fn stat(samples: &[Duration]) -> Stat {
    let mut v = samples.to_vec();
    Stat { median: percentile(&mut v, 50.0), p90: percentile(&mut v, 90.0) }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64()
}

fn times(cycles: &[Cycle], f: impl Fn(&Cycle) -> Duration) -> Vec<Duration> {
    cycles.iter().map(f).collect()
}

/// Why this machine cannot run the harness, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veths)".into());
    }
    for p in ["ip"] {
        if find_program(p).is_none() {
            return Some(format!("`{p}` is not installed"));
        }
    }
    for p in [PTP, HOST_LOCAL] {
        if !Path::new(p).is_file() {
            return Some(format!("{p} is missing (apt-get install containernetworking-plugins)"));
        }
    }
    None
}

fn peer_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "version unknown".into())
}

fn main() {
    let full = full_mode();
    if let Some(why) = missing_prerequisite() {
        if full {
            eprintln!("cni_cycle: cannot run: {why}");
            std::process::exit(1);
        }
        println!("cni_cycle (smoke mode): skipped: {why}");
        return;
    }
    let (runs, phase_runs, execs) =
        if full { (FULL_RUNS, FULL_PHASE_RUNS, FULL_EXECS) } else { (SMOKE_RUNS, SMOKE_PHASE_RUNS, SMOKE_EXECS) };
    let bins = build_binaries(full);
    let dir = scratch_dir("cni-cycle");
    let (node, pool) = Node::new(&bins, dir.path());
    println!(
        "cni_cycle ({}): {runs} interleaved runs each of enipool-cni ({} build) and ptp + host-local \
         (containernetworking-plugins {}), load average {}",
        if full { "full run" } else { "smoke mode" },
        if full { "release" } else { "debug" },
        peer_version(),
        load_average()
    );
    println!(
        "node netns {} (uplink {NODE_IP_CIDR}); enipoold: static provider, {}, {} free IPs, cooldown 0; \
         plugins exec'd directly from a thread in the node netns, cniVersion 1.0.0, DEL with prevResult",
        node.node.name, pool.instance_type, pool.free
    );

    // Warm-up, not counted: our first ADD creates the node-wide SNAT chain (iptables-restore),
    // and both plugins' binaries get into the page cache.
    let warm_ours = node.cycle(Plugin::Ours, 0, false);
    let warm_ptp = node.cycle(Plugin::Ptp, 0, false);
    println!(
        "warm-up (not counted): first ADD ours {} (creates the SNAT chain), ptp {}",
        fmt_duration(warm_ours.add),
        fmt_duration(warm_ptp.add)
    );

    let mut ours = Vec::with_capacity(runs);
    let mut ptp = Vec::with_capacity(runs);
    for run in 1..=runs {
        // Alternate who goes first, so neither always runs right after the other's teardown.
        let order = if run % 2 == 0 { [Plugin::Ours, Plugin::Ptp] } else { [Plugin::Ptp, Plugin::Ours] };
        for p in order {
            let c = node.cycle(p, run, false);
            match p {
                Plugin::Ours => ours.push(c),
                Plugin::Ptp => ptp.push(c),
            }
        }
    }

    // VERSION start-to-exit (direct exec, as the runtime does it) and the exec baselines,
    // interleaved too.
    let version_stdin = br#"{"cniVersion":"1.1.0"}"#;
    let true_bin = find_program("true").unwrap_or_else(|| PathBuf::from("/bin/true"));
    let (mut v_ours, mut v_ptp, mut b_true, mut b_true_node) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..execs {
        for (bin, out) in [(bins.plugin.as_path(), &mut v_ours), (Path::new(PTP), &mut v_ptp)] {
            let mut cmd = Command::new(bin);
            cmd.env_clear().env("PATH", PATH).env("CNI_COMMAND", "VERSION");
            let e = Exec::run(&mut cmd, version_stdin).ok("VERSION");
            assert!(e.json("VERSION")["supportedVersions"].is_array(), "{}", String::from_utf8_lossy(&e.stdout));
            out.push(e.took);
        }
        b_true.push(Exec::run(Command::new(&true_bin).env_clear(), b"").ok("true").took);
        b_true_node.push(node.exec_in_node(&mut runtime_command(&true_bin), b"").ok("true in the node").took);
    }

    // The ADD phases, from extra runs of ours with the debug log on (not in the table above).
    let mut phase_adds = Vec::new();
    for run in 0..phase_runs {
        phase_adds.push(node.cycle(Plugin::Ours, 10_000 + run, true).add);
    }
    let phases = parse_phases(&fs::read_to_string(&node.phase_log).unwrap_or_default());
    // So a change of the plugin's log lines shows here, not as a silently missing breakdown.
    assert!(
        phases.len() == phase_runs && phases.iter().all(|p| p.inside.is_some() && p.lease.is_some()),
        "the plugin's debug log no longer has the ADD phase lines this harness reads ({})",
        node.phase_log.display()
    );

    let left = node.leftover_veths();
    assert!(left.is_empty(), "host veths left in the node after all runs: {left:?}");

    // ---- the table ----
    println!();
    println!(
        "| per pod (wall, spawn to exit) | enipool-cni median | p90 | ptp + host-local median | p90 | ours / theirs |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, f: &dyn Fn(&Cycle) -> Duration| {
        let o = stat(&times(&ours, f));
        let t = stat(&times(&ptp, f));
        println!(
            "| {name} | {} ms | {} ms | {} ms | {} ms | {:.2}x |",
            ms(o.median),
            ms(o.p90),
            ms(t.median),
            ms(t.p90),
            ratio(o.median, t.median)
        );
        ratio(o.median, t.median)
    };
    let add_ratio = row("ADD", &|c| c.add);
    let del_ratio = row("DEL", &|c| c.del);
    let cycle_ratio = row("whole cycle (netns add + ADD + DEL + netns del + host veth gone)", &|c| c.total);
    row("  of which `ip netns add`", &|c| c.netns_add);
    row("  of which `ip netns del`", &|c| c.netns_del);
    row("  of which waiting for the host veth to go", &|c| c.veth_gone);
    let vo = stat(&v_ours);
    let vt = stat(&v_ptp);
    println!(
        "| VERSION start-to-exit (direct exec, {execs}x) | {} ms | {} ms | {} ms | {} ms | {:.2}x |",
        ms(vo.median),
        ms(vo.p90),
        ms(vt.median),
        ms(vt.p90),
        ratio(vo.median, vt.median)
    );
    let bt = stat(&b_true);
    let bn = stat(&b_true_node);
    println!("| baseline: exec `/bin/true` | {} ms | {} ms | | | |", ms(bt.median), ms(bt.p90));
    println!(
        "| baseline: exec `/bin/true` from the node netns thread, as every ADD/DEL above | {} ms | {} ms | | | |",
        ms(bn.median),
        ms(bn.p90)
    );

    if !phases.is_empty() {
        let med = |f: &dyn Fn(&AddPhases) -> Option<Duration>| -> String {
            let mut v: Vec<Duration> = phases.iter().filter_map(f).collect();
            if v.is_empty() { "-".into() } else { format!("{} ms", ms(percentile(&mut v, 50.0))) }
        };
        let wall = stat(&phase_adds).median;
        let inside: Vec<Duration> = phases.iter().filter_map(|p| p.inside).collect();
        let outside = if inside.is_empty() { None } else { wall.checked_sub(stat(&inside).median) };
        println!();
        println!(
            "our ADD by phase ({} extra run(s) with logLevel debug, medians from the plugin's log): wall {} ms; \
             outside the plugin's clock (exec, stdin, config, async runtime, exit) {}; \
             inside {} = netns + sockets + pod ifname check {}, lease (the veth made meanwhile) {}, wire {}, SNAT marker check {}",
            phases.len(),
            ms(wall),
            outside.map_or("-".into(), |d| format!("{} ms", ms(d))),
            med(&|p| p.inside),
            med(&|p| p.prepare),
            med(&|p| p.lease),
            med(&|p| p.wire),
            med(&|p| p.snat),
        );
    }

    println!();
    println!("| target | measured | target | |");
    println!("|---|---|---|---|");
    let check = |name: &str, measured: String, target: &str, met: bool| {
        println!("| {name} | {measured} | {target} | {} |", if met { "met" } else { "NOT met" });
    };
    check("ADD median, ours / ptp", format!("{add_ratio:.2}x"), "<= 0.25x", add_ratio <= 0.25);
    check("DEL median, ours / ptp", format!("{del_ratio:.2}x"), "<= 0.1x", del_ratio <= 0.1);
    check("whole cycle median, ours / ptp", format!("{cycle_ratio:.2}x"), "<= 0.75x", cycle_ratio <= 0.75);
    check(
        "VERSION start-to-exit median",
        format!("{} ms", ms(vo.median)),
        "<= 2 ms",
        vo.median <= Duration::from_millis(2),
    );
    println!();
    println!("load average at the end {}", load_average());
    println!("command: {COMMAND}");
    if !full {
        println!("(smoke mode: {runs} runs each of debug binaries; the figures mean nothing)");
    }
}

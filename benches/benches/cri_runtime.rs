//! Pod sandboxes through a real container runtime: RunPodSandbox and StopPodSandbox +
//! RemovePodSandbox latency through containerd's CRI with enipool-cni, with the reference
//! plugins (`ptp` + `host-local`), each with `portmap` chained, and with a network whose only
//! plugin answers a minimal result at once (`cni-noop`: the runtime's own share). The three
//! networks run on one containerd, interleaved (one runtime handler each), sequentially and in
//! waves of 10 concurrent calls. Each plugin sits behind `cni-timer`, which records every call as
//! containerd makes it, so each network's CNI time per sandbox (ADD and both DELs) is measured
//! directly, not only as a difference of noisy CRI latencies.
//!
//! `cargo bench -p enipool-benches --bench cri_runtime` (as root; release binaries). Under
//! `cargo test --benches` it runs a few sandboxes per network in the test profile.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use enipool_benches::harness::build_binaries;
use enipool_benches::{fmt_duration, full_mode, load_average, percentile};
use enipool_cri::client::{Cri, PodSpec};
use enipool_cri::node::{Node, OUR_NETWORK, PeerNetwork};

/// Sandboxes per network, sequential rounds and concurrent waves (of [`WAVE`]).
const FULL_ROUNDS: usize = 60;
const FULL_WAVES: usize = 6;
const SMOKE_ROUNDS: usize = 2;
const SMOKE_WAVES: usize = 1;
const WAVE: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Net {
    Noop,
    Ours,
    Reference,
}

const NETS: [Net; 3] = [Net::Noop, Net::Ours, Net::Reference];

/// Every order of the three networks: rounds and waves take them in turn, so each network
/// follows each other one equally often (what the one before leaves, e.g. a kernel still
/// removing veths, lands on each alike).
const ORDERS: [[Net; 3]; 6] = [
    [Net::Noop, Net::Ours, Net::Reference],
    [Net::Noop, Net::Reference, Net::Ours],
    [Net::Ours, Net::Noop, Net::Reference],
    [Net::Ours, Net::Reference, Net::Noop],
    [Net::Reference, Net::Noop, Net::Ours],
    [Net::Reference, Net::Ours, Net::Noop],
];

/// The n-th network in the rotation through [`ORDERS`].
fn nth_net(n: usize) -> Net {
    ORDERS[(n / NETS.len()) % ORDERS.len()][n % NETS.len()]
}

impl Net {
    fn label(self) -> &'static str {
        match self {
            Net::Noop => "do-nothing (cni-noop)",
            Net::Ours => "enipool-cni + portmap",
            Net::Reference => "ptp + host-local + portmap",
        }
    }

    /// The timed plugins in its chain: each makes an ADD and two DELs per sandbox.
    fn plugins(self) -> &'static [&'static str] {
        match self {
            Net::Noop => &["cni-noop"],
            Net::Ours => &["enipool-cni", "portmap"],
            Net::Reference => &["portmap", "ptp"],
        }
    }

    /// The network name in its conflist, as the timer records it.
    fn network(self) -> &'static str {
        match self {
            Net::Noop => PeerNetwork::Noop.handler(),
            Net::Ours => OUR_NETWORK,
            Net::Reference => PeerNetwork::Reference.handler(),
        }
    }

    fn pod(self, name: &str) -> PodSpec {
        let mut pod = PodSpec::new(name);
        pod.runtime_handler = match self {
            Net::Ours => String::new(),
            Net::Noop => PeerNetwork::Noop.handler().into(),
            Net::Reference => PeerNetwork::Reference.handler().into(),
        };
        pod
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    Sequential,
    Concurrent,
}

#[derive(Debug)]
struct Sample {
    net: Net,
    mode: Mode,
    id: String,
    run: Duration,
    stop_remove: Duration,
}

fn start(cri: &Cri, pod: &PodSpec) -> (String, Duration) {
    let t = Instant::now();
    let id = cri.run_pod(pod).unwrap_or_else(|e| panic!("RunPodSandbox {} ({:?}): {e}", pod.name, pod.runtime_handler));
    (id, t.elapsed())
}

fn stop_remove(cri: &Cri, id: &str) -> Duration {
    let t = Instant::now();
    cri.stop(id).unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
    cri.remove(id).unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    t.elapsed()
}

/// Waits until the kernel has removed every host veth of the sandboxes before (ours go with
/// their namespace, asynchronously), so no sample pays for the one before it.
fn settle(node: &Node) {
    enipool_cri::wait_for("the node's host veths to go", Duration::from_secs(30), || {
        node.host_veths().is_empty().then_some(())
    });
}

/// One sandbox after another, the networks taking turns through every order.
fn sequential(node: &Node, rounds: usize, samples: &mut Vec<Sample>, tag: &str) {
    let cri = node.cri();
    for round in 0..rounds {
        for k in 0..NETS.len() {
            let net = nth_net(round * NETS.len() + k);
            settle(node);
            let (id, run) = start(cri, &net.pod(&format!("{tag}-seq-{round}-{k}")));
            let stop_remove = stop_remove(cri, &id);
            samples.push(Sample { net, mode: Mode::Sequential, id, run, stop_remove });
        }
    }
}

/// Waves of [`WAVE`] concurrent RunPodSandbox calls on one network, then as many concurrent
/// Stop + Remove; the networks take turns wave by wave, through every order.
fn concurrent(node: &Node, waves: usize, samples: &mut Vec<Sample>, tag: &str) {
    let cri = node.cri();
    for wave in 0..waves * NETS.len() {
        let net = nth_net(wave);
        settle(node);
        let started: Vec<(String, Duration)> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..WAVE).map(|i| s.spawn(move || start(cri, &net.pod(&format!("{tag}-conc-{wave}-{i}"))))).collect();
            handles.into_iter().map(|h| h.join().expect("start thread")).collect()
        });
        let removed: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = started.iter().map(|(id, _)| s.spawn(move || stop_remove(cri, id))).collect();
            handles.into_iter().map(|h| h.join().expect("remove thread")).collect()
        });
        for ((id, run), stop_remove) in started.into_iter().zip(removed) {
            samples.push(Sample { net, mode: Mode::Concurrent, id, run, stop_remove });
        }
    }
}

fn p50_p90(mut v: Vec<Duration>) -> (Duration, Duration) {
    (percentile(&mut v, 50.0), percentile(&mut v, 90.0))
}

fn version_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Why this machine cannot run the benchmark, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, containerd)".into());
    }
    for p in ["containerd", "runc", "ctr", "nsenter", "gcc"] {
        if enipool_benches::harness::find_program(p).is_none() {
            return Some(format!("`{p}` is not installed (scripts/test installs it)"));
        }
    }
    None
}

fn main() {
    let full = full_mode();
    if let Some(why) = missing_prerequisite() {
        if full {
            eprintln!("cri_runtime: cannot run: {why}");
            std::process::exit(1);
        }
        println!("cri_runtime (smoke mode): skipped: {why}");
        return;
    }
    let (rounds, waves) = if full { (FULL_ROUNDS, FULL_WAVES) } else { (SMOKE_ROUNDS, SMOKE_WAVES) };
    // enipool_cri finds the binaries next to this one: build them for this profile first. The
    // plugin is the statically linked build the image ships.
    let plugin = build_binaries(full).plugin;
    // The daemon's own periods, not the test harness's short ones (a 50 ms pool tick competes
    // with lease calls); cooldown 0 so that the pool never runs dry between sandboxes.
    let daemon_periods = ["--pool-tick", "5s", "--checkpoint-interval", "1s", "--allocation-wait", "2s"];
    let node = Node::with_plugin(&daemon_periods, &[PeerNetwork::Reference, PeerNetwork::Noop], &plugin);
    let cri = node.cri();
    let (_, containerd_version) = cri.version().expect("CRI Version");
    println!(
        "cri_runtime ({}): containerd {containerd_version}, {}, containernetworking-plugins {}, {} enipool-cni \
         (statically linked) and enipoold (static provider, default periods, cooldown 0); load average {}",
        if full { "full run" } else { "smoke mode" },
        version_of("runc", &["--version"]),
        version_of("dpkg-query", &["-W", "-f", "${Version}", "containernetworking-plugins"]),
        if full { "release" } else { "debug" },
        load_average()
    );
    println!(
        "{} sandboxes per network sequentially, {} in waves of {WAVE} concurrent calls; networks interleaved on one \
         containerd (one runtime handler each); pods without hostPorts",
        rounds,
        waves * WAVE
    );

    // Warm-up, not counted: the first sandbox of each network makes node-wide state (our SNAT
    // chain, portmap's chains, host-local's dir) and the pool grows to a wave's size.
    let mut warm = Vec::new();
    concurrent(&node, 1, &mut warm, "warm");
    let warm_ids: std::collections::HashSet<String> = warm.into_iter().map(|s| s.id).collect();

    let mut samples = Vec::new();
    sequential(&node, rounds, &mut samples, "bench");
    concurrent(&node, waves, &mut samples, "bench");

    // CNI time per sandbox: every recorded call of the sandbox's network (ADD and both DELs, of
    // each plugin in its chain).
    let mut cni_time: HashMap<&str, Duration> = HashMap::new();
    let mut add_time: HashMap<&str, Duration> = HashMap::new();
    let mut seen: HashMap<&str, Vec<(&str, &str, bool)>> = HashMap::new();
    let calls = node.calls();
    for c in &calls {
        if warm_ids.contains(&c.container_id) {
            continue;
        }
        assert_eq!(c.exit, 0, "a plugin call failed: {c:?}");
        *cni_time.entry(c.container_id.as_str()).or_default() += Duration::from_micros(c.micros);
        if c.command == "ADD" {
            *add_time.entry(c.container_id.as_str()).or_default() += Duration::from_micros(c.micros);
        }
        seen.entry(c.container_id.as_str()).or_default().push((c.network.as_str(), c.plugin.as_str(), c.with_netns));
    }
    // Every sample's calls are all there (a missing record would count as no time): each
    // plugin of its network made an ADD and a DEL with the netns, and a DEL without.
    for sample in &samples {
        let mut got = seen.get(sample.id.as_str()).cloned().unwrap_or_default();
        got.sort_unstable();
        let mut want: Vec<(&str, &str, bool)> = sample
            .net
            .plugins()
            .iter()
            .flat_map(|p| {
                [(sample.net.network(), *p, true), (sample.net.network(), *p, true), (sample.net.network(), *p, false)]
            })
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "{}: the plugin calls of sandbox {}", sample.net.label(), sample.id);
    }

    println!();
    println!(
        "| network | mode | RunPodSandbox p50 | p90 | Stop+Remove p50 | p90 | CNI time per sandbox p50 | p90 | of it ADD p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cni_p50: HashMap<(Net, Mode), Duration> = HashMap::new();
    let mut add_p50: HashMap<(Net, Mode), Duration> = HashMap::new();
    let mut run_p50: HashMap<(Net, Mode), Duration> = HashMap::new();
    for mode in [Mode::Sequential, Mode::Concurrent] {
        for net in NETS {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.net == net && s.mode == mode).collect();
            let (run50, run90) = p50_p90(mine.iter().map(|s| s.run).collect());
            let (sr50, sr90) = p50_p90(mine.iter().map(|s| s.stop_remove).collect());
            let (cni50, cni90) =
                p50_p90(mine.iter().map(|s| cni_time.get(s.id.as_str()).copied().unwrap_or_default()).collect());
            let (adds50, _) =
                p50_p90(mine.iter().map(|s| add_time.get(s.id.as_str()).copied().unwrap_or_default()).collect());
            cni_p50.insert((net, mode), cni50);
            add_p50.insert((net, mode), adds50);
            run_p50.insert((net, mode), run50);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                net.label(),
                if mode == Mode::Sequential { "sequential" } else { "10 concurrent" },
                fmt_duration(run50),
                fmt_duration(run90),
                fmt_duration(sr50),
                fmt_duration(sr90),
                fmt_duration(cni50),
                fmt_duration(cni90),
                fmt_duration(adds50),
            );
        }
    }
    // Where each network's CNI time goes: each plugin's calls, by kind, sequential sandboxes.
    println!();
    println!("| network | plugin | ADD p50 | DEL on stop p50 | DEL on remove (no netns) p50 |");
    println!("|---|---|---|---|---|");
    let sequential_ids: std::collections::HashSet<&str> =
        samples.iter().filter(|s| s.mode == Mode::Sequential).map(|s| s.id.as_str()).collect();
    for net in NETS {
        let mut plugins: Vec<&str> =
            calls.iter().filter(|c| c.network == net.network()).map(|c| c.plugin.as_str()).collect();
        plugins.sort_unstable();
        plugins.dedup();
        for plugin in plugins {
            let kind = |command: &str, with_netns: bool| {
                let v: Vec<Duration> = calls
                    .iter()
                    .filter(|c| sequential_ids.contains(c.container_id.as_str()))
                    .filter(|c| c.network == net.network() && c.plugin == plugin)
                    .filter(|c| c.command == command && c.with_netns == with_netns)
                    .map(|c| Duration::from_micros(c.micros))
                    .collect();
                if v.is_empty() { "-".to_string() } else { fmt_duration(p50_p90(v).0) }
            };
            println!(
                "| {} | {plugin} | {} | {} | {} |",
                net.label(),
                kind("ADD", true),
                kind("DEL", true),
                kind("DEL", false)
            );
        }
    }

    println!();
    for mode in [Mode::Sequential, Mode::Concurrent] {
        let ours = cni_p50[&(Net::Ours, mode)];
        let reference = cni_p50[&(Net::Reference, mode)];
        let share = |net| run_p50[&(net, mode)].saturating_sub(run_p50[&(Net::Noop, mode)]);
        let ratio = ours.as_secs_f64() / reference.as_secs_f64().max(1e-9);
        let add_ratio =
            add_p50[&(Net::Ours, mode)].as_secs_f64() / add_p50[&(Net::Reference, mode)].as_secs_f64().max(1e-9);
        println!(
            "{}: our CNI time per sandbox {} vs the reference's {} (ratio {ratio:.2}; target <= 0.50: {}; ADD \
             alone {add_ratio:.2}); RunPodSandbox over the do-nothing network: ours +{}, reference +{}",
            if mode == Mode::Sequential { "sequential" } else { "10 concurrent" },
            fmt_duration(ours),
            fmt_duration(reference),
            if ratio <= 0.5 { "met" } else { "NOT met" },
            fmt_duration(share(Net::Ours)),
            fmt_duration(share(Net::Reference)),
        );
    }
    println!("load average at the end {}", load_average());
}

//! A node as a cluster has it: a network namespace with an uplink to an "external" namespace
//! (10.0.0.10/20 is the static provider's primary IP; 10.0.0.1 is the subnet gateway, and
//! 203.0.113.1 stands outside the VPC), enipoold (static provider) doing its node side there and
//! installing the conflist into containerd's conf dir once ready, and containerd in the node.
//!
//! The daemon itself runs in the root namespace but changes nothing there: it serves a unix
//! socket in the temp dir and a loopback port, and does its node work through `--host-netns`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::containerd::{CniDirs, Containerd};
use crate::netns::Netns;
use crate::{spawn_tied, wait_for, workspace_bin};

pub const NODE_IP: &str = "10.0.0.10";
pub const GATEWAY_IP: &str = "10.0.0.1";
pub const EXTERNAL_IP: &str = "203.0.113.1";
/// The conflist the daemon installs: deploy/'s, with the paths of this node.
pub const CONFLIST_NAME: &str = "10-enipool.conflist";
/// libcni's result cache, where containerd keeps each sandbox's ADD result until its last DEL.
pub const RESULT_CACHE: &str = "/var/lib/cni/results";
/// The reference plugins containerd needs in the bin dir (`loopback` for every sandbox).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Our network's name (deploy/'s conflist).
pub const OUR_NETWORK: &str = "aws-cni";

/// Networks beside ours on the same containerd, for comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerNetwork {
    /// The reference plugins: `ptp` + `host-local`, then `portmap` as in ours (no masquerade:
    /// our SNAT is one node-wide chain, made once, not a per-pod cost).
    Reference,
    /// `cni-noop` alone: the runtime's own share of each call.
    Noop,
}

impl PeerNetwork {
    /// The runtime handler, which is also the network's name.
    pub fn handler(self) -> &'static str {
        match self {
            PeerNetwork::Reference => "reference",
            PeerNetwork::Noop => "noop",
        }
    }

    fn conflist(self, dir: &Path) -> Value {
        let plugins = match self {
            PeerNetwork::Reference => serde_json::json!([
                {"type": "ptp", "ipMasq": false, "ipam": {
                    "type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": dir.join("host-local"),
                }},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ]),
            PeerNetwork::Noop => serde_json::json!([{"type": "cni-noop"}]),
        };
        serde_json::json!({"cniVersion": "1.0.0", "name": self.handler(), "plugins": plugins})
    }
}

/// A running enipoold (static provider) whose node is the test's namespace.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    data: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    fn start(dir: &Path, args: Vec<String>) -> Daemon {
        let mut d = Daemon {
            child: None,
            socket: dir.join("enipool.sock"),
            data: dir.join("data"),
            log: dir.join("enipoold.log"),
            args,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("enipoold.log");
        let mut cmd = Command::new(workspace_bin("enipoold"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["--provider", "static", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(spawn_tied(&mut cmd, "enipoold"));
        wait_for("enipoold to be ready", Duration::from_secs(30), || (self.get("/readyz").0 == 200).then_some(()));
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again on the same data and socket.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again after [`Daemon::kill`] (does nothing while it runs).
    pub fn respawn(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// GET over the socket: (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut c = enipool_api::client::Client::new(&self.socket);
            match c.get(path).await {
                Ok(reply) => (reply.status.as_u16(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            }
        })
    }

    pub fn leases(&self) -> Vec<Value> {
        let (status, v) = self.get("/v1/leases");
        assert_eq!(status, 200, "GET /v1/leases: {v}");
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid; SIGTERM lets it close the ledger.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// The node. Its Drop shuts containerd down first (it removes its sandboxes, whose DELs need
/// the daemon); then the fields drop in order: the daemon, then the namespaces.
#[derive(Debug)]
pub struct Node {
    pub containerd: Containerd,
    pub daemon: Option<Daemon>,
    pub ext: Netns,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// A node whose daemon is up and whose conflist containerd has loaded.
    pub fn new(daemon_args: &[&str]) -> Node {
        Node::with_peers(daemon_args, &[])
    }

    /// [`Node::new`], plus `peers`, each a network of its own that a sandbox picks by its
    /// runtime handler (ours is the default handler's).
    pub fn with_peers(daemon_args: &[&str], peers: &[PeerNetwork]) -> Node {
        Node::with_plugin(daemon_args, peers, &workspace_bin("enipool-cni"))
    }

    /// [`Node::with_peers`] with `plugin` installed as enipool-cni: the benchmark measures the
    /// statically linked build the image ships (`scripts/build-plugin`).
    pub fn with_plugin(daemon_args: &[&str], peers: &[PeerNetwork], plugin: &Path) -> Node {
        let mut node = Node::bare(peers, plugin);
        node.start_daemon(daemon_args);
        wait_for("containerd's network to be ready", Duration::from_secs(30), || {
            node.cri().network_ready().ok().filter(|r| *r)
        });
        node
    }

    /// The namespaces and containerd, but no daemon yet: the conf dir is empty.
    pub fn without_daemon() -> Node {
        Node::bare(&[], &workspace_bin("enipool-cni"))
    }

    fn bare(peers: &[PeerNetwork], plugin: &Path) -> Node {
        let ns = Netns::new("node");
        let ext = Netns::new("ext");
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", &ext.name]);
        ns.ip(&["addr", "add", &format!("{NODE_IP}/20"), "dev", "up0"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["route", "add", "default", "via", GATEWAY_IP]);
        ext.ip(&["addr", "add", &format!("{GATEWAY_IP}/20"), "dev", "dn0"]);
        ext.ip(&["addr", "add", &format!("{EXTERNAL_IP}/32"), "dev", "lo"]);
        ext.ip(&["link", "set", "dn0", "up"]);
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);

        let dir = tempfile::Builder::new().prefix("enipool-node-").tempdir().expect("tempdir");
        let cni = CniDirs {
            bin_dir: dir.path().join("cni-bin"),
            conf_dir: dir.path().join("net.d"),
            handlers: peers
                .iter()
                .map(|p| (p.handler().to_string(), dir.path().join(format!("net.d-{}", p.handler()))))
                .collect(),
        };
        std::fs::create_dir_all(&cni.bin_dir).expect("bin dir");
        std::fs::create_dir_all(&cni.conf_dir).expect("conf dir");
        for (peer, (_, conf_dir)) in peers.iter().zip(&cni.handlers) {
            std::fs::create_dir_all(conf_dir).expect("conf dir");
            let conflist = peer.conflist(dir.path()).to_string();
            std::fs::write(conf_dir.join(format!("10-{}.conflist", peer.handler())), conflist).expect("peer conflist");
        }
        install_plugins(
            &cni.bin_dir,
            &[
                ("enipool-cni", plugin.to_path_buf()),
                ("cni-noop", workspace_bin("cni-noop")),
                ("portmap", reference_plugin("portmap")),
                ("ptp", reference_plugin("ptp")),
            ],
        );
        write_conflist(dir.path());
        let containerd = Containerd::start(&ns.path(), &cni);
        Node { containerd, daemon: None, ext, ns, dir }
    }

    /// Starts enipoold with the harness's settings and `extra`; it installs the conflist into
    /// containerd's conf dir once ready.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        let dir = self.dir.path();
        // Short periods for tests; a setting given in `extra` wins (clap refuses a flag twice).
        let mut args: Vec<String> = Vec::new();
        for (flag, value) in [
            ("--ip-cooldown-period", "0"),
            ("--pool-tick", "50ms"),
            ("--allocation-wait", "300ms"),
            ("--checkpoint-interval", "200ms"),
            ("--shutdown-grace", "1s"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(["--host-netns".into(), self.ns.path()]);
        args.extend(["--cni-conf-dir".into(), dir.join("net.d").to_string_lossy().into_owned()]);
        args.extend(["--cni-conflist".into(), dir.join(CONFLIST_NAME).to_string_lossy().into_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.daemon = Some(Daemon::start(dir, args));
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the node's daemon is running")
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("the node's daemon is running")
    }

    pub fn cri(&self) -> &crate::client::Cri {
        self.containerd.cri()
    }

    /// Every plugin call containerd made so far, as the timer recorded it.
    pub fn calls(&self) -> Vec<crate::timing::Call> {
        crate::timing::read_calls(&self.bin_dir())
    }

    /// containerd's CNI bin dir (where the timer writes its records).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    /// The plugin's state dir (deploy's `/run/enipool`).
    pub fn plugin_state_dir(&self) -> PathBuf {
        self.dir.path().join("plugin-state")
    }

    /// The plugin's log, for failure messages.
    pub fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("enipool-cni.log")).unwrap_or_default()
    }

    /// Host veths in the node (the uplink aside).
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "up0")
            .collect()
    }

    /// `ip rule` lines that name a pod address (ours are at priorities 512 and 1536).
    pub fn pod_rules(&self) -> Vec<String> {
        self.ns
            .ip(&["rule", "show"])
            .lines()
            .filter(|l| l.starts_with("512:") || l.starts_with("1536:"))
            .map(str::to_string)
            .collect()
    }

    /// iptables-save of the node namespace.
    pub fn iptables_save(&self) -> String {
        self.ns.exec_ok(&["iptables-save"])
    }

    /// Everything worth seeing when a scenario fails.
    pub fn logs(&self) -> String {
        format!(
            "--- containerd\n{}\n--- enipoold\n{}\n--- enipool-cni\n{}",
            tail(&self.containerd.log()),
            tail(&self.daemon.as_ref().map(Daemon::log).unwrap_or_default()),
            tail(&self.plugin_log())
        )
    }
}

impl Drop for Node {
    /// containerd goes first (its sandboxes' DELs need the daemon). Then what a failed removal
    /// can leave outside the temp dirs: the pod namespaces containerd made for this node's
    /// sandboxes and libcni's cached results of them, found through the recorded plugin calls.
    fn drop(&mut self) {
        self.containerd.shut_down();
        let calls = self.calls();
        let mut netns: Vec<&str> = calls.iter().map(|c| c.netns.as_str()).filter(|p| p.contains("/cni-")).collect();
        netns.sort_unstable();
        netns.dedup();
        for path in netns {
            if let Ok(c) = std::ffi::CString::new(path) {
                // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_file(path);
        }
        let ids: std::collections::BTreeSet<&str> = calls.iter().map(|c| c.container_id.as_str()).collect();
        for entry in std::fs::read_dir(RESULT_CACHE).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| !id.is_empty() && name.contains(id)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Puts each of `timed` (name, binary) into `bin_dir` behind the `cni-timer` wrapper
/// (`bin/NAME` is the wrapper, `bin/real/NAME` the plugin: every call is recorded, see
/// [`crate::timing`]), and the reference `loopback` (containerd runs it for every sandbox) and
/// `host-local` (ptp's IPAM) as they are.
pub fn install_plugins(bin_dir: &Path, timed: &[(&str, PathBuf)]) {
    let link = |from: &Path, to: &Path| {
        std::os::unix::fs::symlink(from, to)
            .unwrap_or_else(|e| panic!("linking {} to {}: {e}", to.display(), from.display()))
    };
    std::fs::create_dir_all(bin_dir.join("real")).expect("bin dir");
    for name in ["loopback", "host-local"] {
        link(&Path::new(REFERENCE_PLUGINS).join(name), &bin_dir.join(name));
    }
    let timer = workspace_bin("cni-timer");
    for (name, binary) in timed {
        link(binary, &bin_dir.join("real").join(name));
        link(&timer, &bin_dir.join(name));
    }
}

/// A reference plugin's binary.
pub fn reference_plugin(name: &str) -> PathBuf {
    Path::new(REFERENCE_PLUGINS).join(name)
}

/// deploy/10-enipool.conflist with this node's socket, state dir and log file (its log level as
/// shipped, so the benchmark measures what nodes run); the daemon
/// installs it (`--cni-conflist`).
fn write_conflist(dir: &Path) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(CONFLIST_NAME);
    let text = std::fs::read_to_string(&deploy).unwrap_or_else(|e| panic!("{}: {e}", deploy.display()));
    let mut conflist: Value = serde_json::from_str(&text).expect("deploy's conflist is JSON");
    let ours = &mut conflist["plugins"][0];
    ours["socket"] = dir.join("enipool.sock").to_string_lossy().into();
    ours["stateDir"] = dir.join("plugin-state").to_string_lossy().into();
    ours["logFile"] = dir.join("enipool-cni.log").to_string_lossy().into();
    std::fs::write(dir.join(CONFLIST_NAME), serde_json::to_string_pretty(&conflist).expect("JSON"))
        .expect("writing the conflist");
}

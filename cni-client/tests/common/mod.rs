//! Test harness: namespaces that clean themselves up, a real enipoold (static provider) and the
//! real plugin binary exec'd inside a test-made "node" namespace the way a runtime execs it.
//! Nothing here touches the machine's root network namespace: every `ip` command names a
//! namespace we created, and the plugin runs inside the node namespace (setns in pre_exec).
//! The daemon itself stays in the root namespace but only serves a unix socket in a temp dir (and
//! a loopback port the OS picks); it changes no network state.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_enipool-cni");
pub const NETWORK: &str = "enipool-test";
pub const NODE_IP: &str = "10.0.0.10";
pub const EXTERNAL_IP: &str = "203.0.113.1";

pub use enipool_cri::netns::Netns;
pub use enipool_cri::{run, wait_for};

pub fn ip(args: &[&str]) -> String {
    String::from_utf8(run(Command::new("ip").args(args)).stdout).unwrap()
}

/// The enipoold binary, built if missing (it lives in another package of the workspace).
fn enipoold() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> -> target/debug
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = dir.join("enipoold");
    if !bin.exists() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        run(Command::new(cargo)
            .args(["build", "-p", "enipool-server", "--bin", "enipoold"])
            .current_dir(env!("CARGO_MANIFEST_DIR")));
    }
    assert!(bin.exists(), "{} is missing after cargo build", bin.display());
    bin
}

/// A running enipoold with the static provider, its data and socket in a temp dir.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Given on every start (`--host-netns` of the node).
    base: Vec<String>,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with_base(Vec::new(), extra)
    }

    fn start_with_base(base: Vec<String>, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("enipool.sock");
        let mut d = Daemon { child: None, dir, socket, base };
        d.spawn(extra);
        d
    }

    /// The daemon's data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self, extra: &[&str]) {
        let data = self.dir.path().join("data");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("enipoold.log")).unwrap();
        let child = Command::new(enipoold())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["--provider", "static", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&data)
            .args(["--ip-cooldown-period", "0", "--pool-tick", "50ms", "--allocation-wait", "300ms"])
            .args(["--checkpoint-interval", "200ms", "--shutdown-grace", "1s"])
            .args(&self.base)
            // GC spares leases younger than the grace; tests that want that give their own.
            .args(if extra.contains(&"--node-reconcile-grace") { &[][..] } else { &["--node-reconcile-grace", "0"] })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the daemon and starts it again on the same data and socket with other settings.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.spawn(extra);
    }

    fn wait_ready(&self) {
        wait_for("enipoold to be ready", Duration::from_secs(30), || {
            let (exit, _) = self.plugin_status();
            (exit == 0).then_some(())
        });
    }

    fn plugin_status(&self) -> (i32, Value) {
        let conf = json!({"cniVersion": "1.1.0", "name": NETWORK, "type": "enipool-cni", "socket": self.socket});
        let out = Command::new(PLUGIN)
            .env_clear()
            .env("CNI_COMMAND", "STATUS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(conf.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }

    /// GET over the socket (the API client of enipool-api).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = enipool_api::client::Client::new(&self.socket);
            let reply = c.get(path).await.unwrap();
            (reply.status.as_u16(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
        })
    }

    /// DELETE over the socket; returns the status.
    pub fn delete(&self, path: &str) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = enipool_api::client::Client::new(&self.socket);
            c.delete(path).await.unwrap().status.as_u16()
        })
    }

    pub fn leases(&self) -> Vec<Value> {
        let (status, v) = self.get("/v1/leases");
        assert_eq!(status, 200);
        v.as_array().unwrap().clone()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node: its own network namespace with an uplink (10.0.0.10/20, the static provider's primary
/// IP) to an "external" namespace (10.0.0.1, the subnet gateway, plus 203.0.113.1 outside the
/// VPC), IP forwarding on, and a daemon.
pub struct Node {
    pub daemon: Daemon,
    pub state: tempfile::TempDir,
    // Dropped after the pods that live in them (fields drop in order): ext then node.
    pub ext: Netns,
    pub ns: Netns,
}

pub struct Plugin {
    pub exit: i32,
    pub out: Value,
    pub raw: String,
}

impl Node {
    pub fn new(daemon_args: &[&str]) -> Node {
        let ns = Netns::new("node");
        // The daemon's node side (reconciliation, rebuilding leases) happens in the node too.
        let daemon = Daemon::start_with_base(vec!["--host-netns".into(), ns.path()], daemon_args);
        let ext = Netns::new("ext");
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", &ext.name]);
        ns.ip(&["addr", "add", &format!("{NODE_IP}/20"), "dev", "up0"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["route", "add", "default", "via", "10.0.0.1"]);
        ext.ip(&["addr", "add", "10.0.0.1/20", "dev", "dn0"]);
        ext.ip(&["addr", "add", &format!("{EXTERNAL_IP}/32"), "dev", "lo"]);
        ext.ip(&["link", "set", "dn0", "up"]);
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        Node { daemon, state: tempfile::tempdir().unwrap(), ext, ns }
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "enipool-cni",
            "socket": self.daemon.socket,
            "stateDir": self.state.path(),
            "logFile": self.state.path().join("cni.log"),
            "logLevel": "debug",
        })
    }

    /// Execs `binary` inside the node namespace with exactly `env` and `stdin`, as a runtime does.
    pub fn exec_plugin(
        &self,
        binary: &str,
        env: &[(&str, String)],
        stdin: &[u8],
        extra_env: &[(&str, &str)],
    ) -> Plugin {
        let node = File::open(self.ns.path()).unwrap();
        let fd = node.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        // SAFETY: setns is async-signal-safe; the fd stays open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(node);
        let raw = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{binary} panicked: {stderr}");
        let out_v = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{binary} printed non-JSON ({e}): {raw:?} {stderr}"))
        };
        Plugin { exit: out.status.code().unwrap_or(-1), out: out_v, raw }
    }

    pub fn cni_env(command: &str, pod: &Pod) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", pod.netns_path.clone()),
            ("CNI_IFNAME", pod.ifname.clone()),
            ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}", pod.name)),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ]
    }

    pub fn cni(&self, command: &str, pod: &Pod, conf: &Value) -> Plugin {
        self.exec_plugin(PLUGIN, &Self::cni_env(command, pod), conf.to_string().as_bytes(), &[])
    }

    pub fn add(&self, pod: &Pod) -> Value {
        let r = self.cni("ADD", pod, &self.conf("1.0.0"));
        assert_eq!(r.exit, 0, "ADD {}: {}", pod.name, r.raw);
        r.out
    }

    /// CHECK with `result` as prevResult must pass.
    pub fn check_ok(&self, pod: &Pod, result: &Value) {
        let mut conf = self.conf("1.0.0");
        conf["prevResult"] = result.clone();
        let c = self.cni("CHECK", pod, &conf);
        assert_eq!(c.exit, 0, "CHECK {}: {}", pod.name, c.raw);
    }

    pub fn del(&self, pod: &Pod, prev: Option<&Value>) {
        let mut conf = self.conf("1.0.0");
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let r = self.cni("DEL", pod, &conf);
        assert_eq!(r.exit, 0, "DEL {}: {}", pod.name, r.raw);
        assert_eq!(r.out, Value::Null, "DEL prints nothing on success");
    }

    /// Host veths in the node (the uplink aside).
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n != "up0")
            .collect()
    }

    pub fn wait_no_host_veths(&self) {
        wait_for("host veths to disappear", Duration::from_secs(20), || self.host_veths().is_empty().then_some(()));
    }

    /// Everything the node's network state consists of, as text.
    pub fn snapshot(&self) -> String {
        // The uplink's IPv6 duplicate address detection finishes on its own time; wait for it so
        // it does not show up as a change.
        wait_for("IPv6 DAD on the node", Duration::from_secs(20), || {
            (!self.ns.ip(&["addr", "show"]).contains("tentative")).then_some(())
        });
        let mut s = String::new();
        for args in [
            &["-d", "link", "show"][..],
            &["addr", "show"],
            &["route", "show", "table", "all"],
            &["rule", "show"],
            &["neigh", "show"],
        ] {
            s.push_str(&format!("## ip {}\n{}", args.join(" "), self.ns.ip(args)));
        }
        s.push_str("## iptables-save\n");
        s.push_str(&self.iptables_save());
        s
    }

    /// iptables-save without its comment lines and with counters zeroed.
    pub fn iptables_save(&self) -> String {
        let raw = self.ns.exec_ok(&["iptables-save"]);
        raw.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.rfind(" [") {
                Some(i) if l.starts_with(':') => format!("{} [0:0]", &l[..i]),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A pod: its namespace (as the runtime makes it) and its CNI identity.
pub struct Pod {
    pub name: String,
    pub container_id: String,
    pub ifname: String,
    pub netns_path: String,
    pub ns: Option<Netns>,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        let ns = Netns::new("pod");
        Pod {
            name: name.to_string(),
            // The namespace's unique suffix (pid and counter) keeps IDs apart across tests.
            container_id: format!("{name}-{}", ns.name.rsplitn(3, '-').take(2).collect::<Vec<_>>().join("-")),
            ifname: "eth0".into(),
            netns_path: ns.path(),
            ns: Some(ns),
        }
    }

    pub fn ns(&self) -> &Netns {
        self.ns.as_ref().unwrap()
    }

    /// The runtime deletes the pod's namespace after DEL.
    pub fn delete_netns(&mut self) {
        self.ns.take();
    }
}

/// The pod IP in a result.
pub fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

/// The host veth's name in an ADD result.
pub fn host_veth_of(result: &Value) -> String {
    result["interfaces"][0]["name"].as_str().unwrap().to_string()
}

//! A private containerd (Debian's 1.6) for one test: its own config, root, state, socket, runc
//! root and CNI dirs under a temp dir, started inside the node namespace so every CNI plugin it
//! execs lands there too. The settings these machines need are in
//! `../shared/reference/cni-and-environment.md`: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE),
//! the cgroupfs driver with a relative cgroup parent, the v1 runtime's root moved, not disabled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::client::Cri;
use crate::image::{SANDBOX_IMAGE, sandbox_image_tar};
use crate::{run, spawn_tied, wait_for};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where containerd finds its CNI plugins and configs.
#[derive(Clone, Debug)]
pub struct CniDirs {
    pub bin_dir: PathBuf,
    /// The default network's conf dir (the one kubelet's node uses).
    pub conf_dir: PathBuf,
    /// More runtime handlers, each with a conf dir of its own (containerd 1.6's per-handler
    /// `cni_conf_dir`): one RunPodSandbox picks its network by `runtime_handler`.
    pub handlers: Vec<(String, PathBuf)>,
}

#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    node_netns: String,
    child: Option<Child>,
    cri: Cri,
    pub socket: PathBuf,
    cgroup_parent: String,
    shut_down: bool,
}

impl Containerd {
    /// Starts containerd in the namespace at `node_netns` and imports the sandbox image.
    pub fn start(node_netns: &str, cni: &CniDirs) -> Containerd {
        let dir = tempfile::Builder::new().prefix("enipool-cri-").tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let cgroup_parent = format!("enipool-cri-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        std::fs::write(dir.path().join("config.toml"), config_toml(dir.path(), &socket, cni)).expect("config.toml");
        let cri = Cri::new(&socket, &cgroup_parent, &dir.path().join("pod-logs"));
        let mut c = Containerd {
            dir,
            node_netns: node_netns.into(),
            child: None,
            cri,
            socket,
            cgroup_parent,
            shut_down: false,
        };
        c.spawn();
        run(Command::new("ctr")
            .arg("--address")
            .arg(&c.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(sandbox_image_tar()));
        c
    }

    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .expect("containerd.log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node_netns))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(spawn_tied(&mut cmd, "containerd"));
        wait_for("containerd's CRI to answer", Duration::from_secs(30), || self.cri.version().ok());
    }

    /// SIGTERM, then wait (SIGKILL after 10 s): the shims, and so the sandboxes and their
    /// networks, keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops containerd and starts it again on the same root, state and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Shim processes of this containerd (they are started with its socket path).
    fn shims(&self) -> Vec<i32> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
        procs
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Containerd {
    /// Removes every sandbox through CRI (so each gets its DELs; given up after a minute in all),
    /// stops containerd, then clears what could survive it: every process left in the
    /// sandboxes' cgroup parent (pause processes outlive a killed shim), the shims, mounts below
    /// the temp dir, and the cgroup parent itself. Once; dropping calls it too.
    pub fn shut_down(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        if self.child.is_some() {
            let deadline = Instant::now() + Duration::from_secs(60);
            for s in self.cri.list().unwrap_or_default() {
                if Instant::now() > deadline {
                    break;
                }
                let _ = self.cri.stop(&s.id);
                let _ = self.cri.remove(&s.id);
            }
        }
        self.stop();
        let cgroups = cgroup_dirs(&self.cgroup_parent);
        for pid in self.shims().into_iter().chain(cgroups.iter().flat_map(|d| procs_below(d))) {
            // SAFETY: a shim of our own containerd (found by its socket path) or a process in
            // our sandboxes' cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // Killed processes leave their cgroup once reaped: give that a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while cgroups.iter().any(|d| !procs_below(d).is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in cgroups {
            remove_cgroup_tree(&dir);
        }
    }
}

/// Where runc puts a relative cgroup parent: below containerd's own cgroup (this process's,
/// since containerd is our child) in each hierarchy mounted under /sys/fs/cgroup (v1 and, on a
/// hybrid host, the v2 hierarchy at /sys/fs/cgroup/unified).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let unified = Path::new("/sys/fs/cgroup/unified");
    own.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let mount = match controllers {
                "" if unified.is_dir() => unified.to_path_buf(),
                "" => PathBuf::from("/sys/fs/cgroup"),
                c => PathBuf::from("/sys/fs/cgroup").join(c.split(',').next()?.trim_start_matches("name=")),
            };
            Some(mount.join(path.trim_start_matches('/')).join(parent))
        })
        .filter(|d| d.is_dir())
        .collect()
}

/// Every process in the cgroup tree at `dir`.
fn procs_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if sub.path().is_dir() {
            pids.extend(procs_below(&sub.path()));
        }
    }
    pids
}

/// Removes a cgroup tree (children first); a cgroup with processes left stays.
fn remove_cgroup_tree(dir: &Path) {
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if sub.path().is_dir() {
            remove_cgroup_tree(&sub.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn config_toml(dir: &Path, socket: &Path, cni: &CniDirs) -> String {
    let d = dir.display();
    let runtime = |name: &str, conf_dir: Option<&Path>| {
        let mut s = format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]\n  runtime_type = \"io.containerd.runc.v2\"\n"
        );
        if let Some(conf) = conf_dir {
            s.push_str(&format!("  cni_conf_dir = \"{}\"\n  cni_max_conf_num = 1\n", conf.display()));
        }
        s.push_str(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}.options]\n  Root = \"{d}/runc\"\n  SystemdCgroup = false\n"
        ));
        s
    };
    let mut toml = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{d}/runtime-v1"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"
  max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
"#,
        socket = socket.display(),
        bin = cni.bin_dir.display(),
        conf = cni.conf_dir.display(),
    );
    toml.push_str(&runtime("runc", None));
    for (name, conf_dir) in &cni.handlers {
        toml.push_str(&runtime(name, Some(conf_dir)));
    }
    toml
}

//! A private containerd (Debian's 1.6) for one test: its own config, root, state, socket, runc
//! root and CNI dirs under a temp dir, started inside the node namespace so every CNI plugin it
//! execs lands there too. The settings these machines need are in
//! `../shared/reference/cni-and-environment.md`: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE),
//! the cgroupfs driver with a relative cgroup parent, the v1 runtime's root moved, not disabled.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::client::Cri;
use crate::image::{SANDBOX_IMAGE, sandbox_image_tar};
use crate::{run, wait_for};

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
}

impl Containerd {
    /// Starts containerd in the namespace at `node_netns` and imports the sandbox image.
    pub fn start(node_netns: &str, cni: &CniDirs) -> Containerd {
        let dir = tempfile::Builder::new().prefix("enipool-cri-").tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let cgroup_parent = format!("enipool-cri-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        std::fs::write(dir.path().join("config.toml"), config_toml(dir.path(), &socket, cni)).expect("config.toml");
        let cri = Cri::new(&socket, &cgroup_parent, &dir.path().join("pod-logs"));
        let mut c = Containerd { dir, node_netns: node_netns.into(), child: None, cri, socket, cgroup_parent };
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
        // SAFETY: prctl is async-signal-safe. containerd dies with the test process that started
        // it (nsenter execs containerd in place, and the death signal survives exec).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawning containerd"));
        wait_for("containerd's CRI to answer", Duration::from_secs(30), || self.cri.version().ok());
    }

    /// SIGTERM, then wait: the shims, and so the sandboxes and their networks, keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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
    /// Removes every sandbox through CRI (so each gets its DELs), stops containerd, then clears
    /// what could survive it: shims, mounts below the temp dir, the sandboxes' cgroup parent.
    fn drop(&mut self) {
        if self.child.is_some() {
            for s in self.cri.list().unwrap_or_default() {
                let _ = self.cri.stop(&s.id);
                let _ = self.cri.remove(&s.id);
            }
        }
        self.stop();
        for pid in self.shims() {
            // SAFETY: a shim of our own containerd, found by its socket path.
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
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&self.cgroup_parent));
            }
        }
    }
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

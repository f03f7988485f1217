//! The plugin under a real container runtime: a private containerd, started by the test inside a
//! node network namespace the test made, driven through the CRI `runtime.v1` API exactly as
//! kubelet drives it (RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox,
//! ListPodSandbox). containerd then execs the CNI plugins itself, with its own habits:
//! `K8S_POD_*` in `CNI_ARGS`, a DEL with prevResult on stop, a second DEL without netns or
//! prevResult on remove, a DEL right after a failed ADD, `loopback` and `portmap` chained.
//!
//! - [`netns`]: namespaces the test makes and deletes.
//! - [`image`]: the sandbox image, built locally (a static "pause" binary as an OCI image tar).
//! - [`containerd`]: the private containerd (own config, root, state, socket, runc root, CNI
//!   bin and conf dirs under a temp dir), restartable, cleaned up on drop.
//! - [`client`]: the CRI client, blocking, safe to share between threads.
//! - [`node`]: a node: its namespace with an uplink, enipoold installing the conflist, and
//!   containerd.
//! - [`timing`]: the records the `cni-timer` wrapper writes for each plugin call.
//!
//! Nothing here touches the machine's root network namespace: containerd, and so every plugin
//! it execs, runs in the node namespace (`nsenter --net`). What containerd 1.6 keeps outside the
//! temp dir (`/var/run/netns/cni-*`, `/var/lib/cni/results`, shim sockets) is per sandbox; the
//! harness removes its sandboxes before it stops containerd and checks those paths in tests.
//!
//! Feature `runtime` (containerd, the client, the node) is what the scenarios and the benchmark
//! use; without it the crate is [`netns`], [`timing`] and the helpers below, which the plugin's
//! own tests share without building the CRI client.
//!
//! Test support: setup failures panic with what failed; CRI calls return `tonic::Status`
//! because tests assert on refusals.

#[cfg(feature = "runtime")]
pub mod client;
#[cfg(feature = "runtime")]
pub mod containerd;
#[cfg(feature = "runtime")]
pub mod image;
pub mod netns;
#[cfg(feature = "runtime")]
pub mod node;
pub mod timing;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Polls `f` until it returns Some, or panics naming `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Spawns `cmd` tied to the spawning thread: the kernel SIGKILLs it when that thread ends
/// (PR_SET_PDEATHSIG, which survives exec, nsenter's included), so a test that dies leaves no
/// containerd or enipoold behind. Spawn from the test's own thread, not a short-lived one.
pub fn spawn_tied(cmd: &mut Command, what: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"))
}

/// A binary of this workspace, from the target dir the running test or bench was built into
/// (built by scripts/test before the tests run; built here if missing).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> -> target/debug
    let dir = exe.parent().and_then(std::path::Path::parent).expect("target dir").to_path_buf();
    let bin = dir.join(name);
    if !bin.exists() {
        // All of the workspace's binaries, as scripts/test builds them: building one package
        // unifies dependency features differently and would rebuild aws-sdk-ec2.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["build", "--workspace", "--bins"]).current_dir(env!("CARGO_MANIFEST_DIR")));
    }
    assert!(bin.exists(), "{} is missing after cargo build", bin.display());
    bin
}

//! Network namespaces the test makes (`ip netns add`), deleted on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::run;

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("enc-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> ...`, panicking unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(Command::new("ip").arg("-n").arg(&self.name).args(args)).stdout).into_owned()
    }

    /// `args` run inside this namespace, whatever their exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        exec_in(&self.path(), args)
    }

    /// `args` run inside this namespace, panicking unless they succeed.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ping from inside this namespace (2 s timeout).
    pub fn ping(&self, dst: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", dst]).status.success()
    }

    /// Deletes the namespace now (as a runtime does after DEL).
    pub fn delete(self) {
        drop(self)
    }

    /// Runs `f` on a dedicated thread inside this namespace.
    pub fn on_thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        on_thread_in(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `args` run in the network namespace at `path` (`nsenter --net`, which, unlike `ip netns
/// exec`, keeps the mount namespace: containerd needs the real cgroup mounts).
pub fn exec_in(path: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"))
}

/// Runs `f` on a dedicated thread that has entered the network namespace at `path` (netlink
/// and sockets bind to the namespace of the thread that opens them).
pub fn on_thread_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::spawn(move || {
        // SAFETY: only this dedicated thread switches namespace; the fd is valid while `file` lives.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        f()
    })
}

//! What the harnesses that drive real processes share: setup commands, network namespaces made
//! here (deleted by a Drop guard, also when a harness panics), timed execs, and the workspace's
//! binaries built for the profile the harness runs in.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The only PATH the daemon and the plugins get.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a setup command; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip <args>`
pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// A network namespace made here (`ip netns add`), deleted when dropped unless already deleted.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    deleted: bool,
}

impl Netns {
    pub fn add(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        Netns { name, deleted: false }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip netns del` now (as the runtime does right after DEL).
    pub fn delete(mut self) {
        self.deleted = true;
        ip(&["netns", "del", &self.name]);
    }

    /// Runs `f` on a short-lived thread that has entered this namespace.
    pub fn on_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = fs::File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path()));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: only this dedicated thread switches namespace, and it ends right after.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
        }
    }
}

/// Where a program lives, for exec without a PATH lookup.
pub fn find_program(name: &str) -> Option<PathBuf> {
    PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// One exec, timed from spawn to exit (stdin written, stdout and stderr read).
#[derive(Debug)]
pub struct Exec {
    pub took: Duration,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Exec {
    pub fn run(cmd: &mut Command, stdin: &[u8]) -> Exec {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut input = child.stdin.take().expect("stdin");
        // A config is far smaller than a pipe buffer: this never waits for the child.
        input.write_all(stdin).unwrap_or_else(|e| panic!("writing stdin of {cmd:?}: {e}"));
        drop(input);
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Exec { took: t.elapsed(), status: out.status, stdout: out.stdout, stderr: out.stderr }
    }

    pub fn ok(self, what: &str) -> Exec {
        assert!(
            self.status.success(),
            "{what} failed ({}): {}{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        );
        self
    }

    pub fn json(&self, what: &str) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("{what} printed non-JSON ({e}): {}", String::from_utf8_lossy(&self.stdout)))
    }
}

#[derive(Debug)]
pub struct Binaries {
    pub plugin: PathBuf,
    pub daemon: PathBuf,
}

/// `target/<profile>/{enipool-cni,enipoold}`, built by cargo for the profile this harness runs in.
pub fn build_binaries(release: bool) -> Binaries {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/deps/cni_cycle-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The whole workspace's binaries, as scripts/test builds them: building a subset of the
    // packages unifies dependency features differently and would rebuild aws-sdk-ec2.
    build.args(["build", "--quiet", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build of enipoold and enipool-cni failed");
    let bins = Binaries { plugin: profile_dir.join("enipool-cni"), daemon: profile_dir.join("enipoold") };
    for b in [&bins.plugin, &bins.daemon] {
        assert!(b.is_file(), "{} is missing after cargo build", b.display());
    }
    bins
}

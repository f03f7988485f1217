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

/// `target/<profile>/enipoold` and the plugin as the image ships it (`scripts/build-plugin`:
/// statically linked against musl, under `target/<arch>-unknown-linux-musl/<debug or plugin>/`),
/// built for the profile this harness runs in.
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut static_build = Command::new(workspace.join("scripts/build-plugin"));
    if release {
        static_build.arg("--release");
    }
    let out = static_build.output().expect("running scripts/build-plugin");
    assert!(out.status.success(), "scripts/build-plugin failed: {}", String::from_utf8_lossy(&out.stderr));
    let plugin = workspace.join(String::from_utf8_lossy(&out.stdout).trim());
    let bins = Binaries { plugin, daemon: profile_dir.join("enipoold") };
    for b in [&bins.plugin, &bins.daemon] {
        assert!(b.is_file(), "{} is missing after cargo build", b.display());
    }
    assert_eq!(
        has_interpreter(&bins.plugin),
        Ok(false),
        "{} is not statically linked (it names a dynamic loader)",
        bins.plugin.display()
    );
    bins
}

/// Whether an ELF64 executable names a program interpreter (`PT_INTERP`): a dynamically linked
/// one does; a static or static-pie one does not.
pub fn has_interpreter(path: &Path) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let word = |at: usize, len: usize| -> Result<u64, String> {
        let bytes = elf.get(at..at + len).ok_or_else(|| format!("{}: truncated ELF", path.display()))?;
        Ok(bytes.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err(format!("{}: not an ELF64 file", path.display()));
    }
    let (phoff, phentsize, phnum) = (word(0x20, 8)?, word(0x36, 2)?, word(0x38, 2)?);
    for i in 0..phnum {
        let header = usize::try_from(phoff + i * phentsize).map_err(|e| e.to_string())?;
        if word(header, 4)? == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::has_interpreter;

    #[test]
    fn a_dynamically_linked_executable_names_its_interpreter() {
        // This test binary is linked as cargo links it by default: dynamically.
        assert_eq!(has_interpreter(&std::env::current_exe().unwrap()), Ok(true));
    }

    #[test]
    fn non_elf_and_truncated_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(has_interpreter(&text).unwrap_err().contains("not an ELF64 file"));
        let truncated = dir.path().join("truncated");
        std::fs::write(&truncated, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(has_interpreter(&truncated).unwrap_err().contains("truncated ELF"));
        assert!(has_interpreter(&dir.path().join("missing")).is_err());
    }
}

//! Network namespaces a test makes (needs root and `ip`): the "node" a test works in, so
//! nothing touches the machine's root namespace.

use std::process::Command;

/// A network namespace the test made (`ip netns add`), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new() -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("enipool-h{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// `ip -n <ns> args...`, its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Like `ip`, whatever the exit status (a table that does not exist yet, say).
    pub fn try_ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", self.0.as_str()]).args(args).output().expect("running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn read(&self, path: &str) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.0, "cat", path]).output().expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

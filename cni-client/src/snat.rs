//! The node-wide SNAT chain (iptables, nat table), as the reference plugin lays it out but under
//! our own chain name so both can coexist during a migration:
//!
//! ```text
//! -A POSTROUTING -m comment --comment "enipool SNAT" -j ENIPOOL-SNAT
//! -A ENIPOOL-SNAT -d <excluded CIDR> -m comment --comment "enipool SNAT" -j RETURN     (each)
//! -A ENIPOOL-SNAT ! -o vlan+ -m comment --comment "enipool SNAT" -m addrtype ! --dst-type LOCAL -j SNAT --to-source <node IP> [--random-fully|--random]
//! ```
//!
//! `ensure` reads the nat table with iptables-save and, when the chain differs, rewrites it in one
//! atomic `iptables-restore --noflush` (a declared chain is flushed and refilled; other chains are
//! untouched). It runs under an exclusive file lock, so concurrent ADDs never duplicate the jump.
//! A marker file (per network namespace, keyed by its never-reused cookie) records the applied
//! rules; while it matches and is younger than [`MARKER_MAX_AGE`], ADD execs nothing.
//! The iptables binaries are executed with an argument vector, never through a shell.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::protocol::{CniError, code};

pub const CHAIN: &str = "ENIPOOL-SNAT";
const COMMENT: &str = "enipool SNAT";
/// How long ADD trusts the marker before it looks at the kernel again.
pub const MARKER_MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Randomize {
    /// `--random-fully`
    Prng,
    /// `--random`
    HashRandom,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatSpec {
    pub node_ip: Ipv4Addr,
    pub excluded: Vec<Ipv4Net>,
    pub randomize: Randomize,
}

impl SnatSpec {
    /// From the lease's settings; a bad value is the daemon's fault (code 103).
    pub fn from_lease(s: &enipool_api::SnatSettings) -> Result<SnatSpec, CniError> {
        let bad =
            |what: &str, v: &str| CniError::new(code::DAEMON, format!("enipoold sent an invalid SNAT {what}: {v:?}"));
        let node_ip: std::net::Ipv4Addr = s.node_ip.parse().map_err(|_| bad("node_ip", &s.node_ip))?;
        // Never program the node-wide chain from settings that cannot be the node's: SNAT to
        // 0.0.0.0, or every destination (the VPC's too) SNATed.
        if node_ip.is_unspecified() || node_ip.is_broadcast() || node_ip.is_multicast() {
            return Err(bad("node_ip", &s.node_ip));
        }
        if s.excluded_cidrs.is_empty() {
            return Err(bad("exclusion list (empty: the VPC's own CIDRs must be in it)", ""));
        }
        let mut excluded = Vec::new();
        for c in &s.excluded_cidrs {
            let net: Ipv4Net = c.parse().map_err(|_| bad("excluded CIDR", c))?;
            let net = net.trunc();
            if !excluded.contains(&net) {
                excluded.push(net);
            }
        }
        let randomize = match s.randomize.as_str() {
            "prng" => Randomize::Prng,
            "hashrandom" => Randomize::HashRandom,
            "none" => Randomize::None,
            other => return Err(bad("randomize", other)),
        };
        Ok(SnatSpec { node_ip, excluded, randomize })
    }

    /// The chain's rules exactly as iptables-save prints them.
    pub fn chain_rules(&self) -> Vec<String> {
        let mut rules: Vec<String> = self
            .excluded
            .iter()
            .map(|n| format!("-A {CHAIN} -d {n} -m comment --comment \"{COMMENT}\" -j RETURN"))
            .collect();
        let random = match self.randomize {
            Randomize::Prng => " --random-fully",
            Randomize::HashRandom => " --random",
            Randomize::None => "",
        };
        rules.push(format!(
            "-A {CHAIN} ! -o vlan+ -m comment --comment \"{COMMENT}\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {}{random}",
            self.node_ip
        ));
        rules
    }
}

fn jump_rule() -> String {
    format!("-A POSTROUTING -m comment --comment \"{COMMENT}\" -j {CHAIN}")
}

/// What the nat table holds of ours.
#[derive(Debug, PartialEq, Eq)]
pub struct Current {
    pub chain_exists: bool,
    pub rules: Vec<String>,
    pub jumps: usize,
}

pub fn parse_save(save: &str) -> Current {
    let mut in_nat = false;
    let mut cur = Current { chain_exists: false, rules: Vec::new(), jumps: 0 };
    let chain_decl = format!(":{CHAIN} ");
    let chain_rule = format!("-A {CHAIN} ");
    let jump = jump_rule();
    for line in save.lines() {
        let line = line.trim_end();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if line.starts_with(&chain_decl) {
            cur.chain_exists = true;
        } else if line.starts_with(&chain_rule) {
            cur.rules.push(line.to_string());
        } else if line == jump {
            cur.jumps += 1;
        }
    }
    cur
}

/// The iptables-restore input that makes `cur` into `spec`, or None when nothing is to change.
pub fn restore_input(spec: &SnatSpec, cur: &Current) -> Option<String> {
    let want = spec.chain_rules();
    if cur.chain_exists && cur.rules == want && cur.jumps == 1 {
        return None;
    }
    let mut s = format!("*nat\n:{CHAIN} - [0:0]\n");
    for r in &want {
        s.push_str(r);
        s.push('\n');
    }
    let jump = jump_rule();
    if cur.jumps == 0 {
        s.push_str(&jump);
        s.push('\n');
    }
    for _ in 1..cur.jumps {
        s.push_str(&jump.replacen("-A ", "-D ", 1));
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Finds an iptables tool in the usual places (runtimes often exec plugins with a minimal PATH).
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn run(name: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CniError> {
    let fail = |e: String| CniError::new(code::IPTABLES, format!("{name} {}: {e}", args.join(" ")));
    let mut child = Command::new(tool(name))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that rejects its input may close stdin early; its exit status and stderr say
        // why, so a broken pipe here is not the error to report.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    String::from_utf8(out.stdout).map_err(|e| fail(e.to_string()))
}

pub use crate::config::Iptables;

fn save_tool(iptables: Iptables) -> &'static str {
    match iptables {
        Iptables::Auto => "iptables-save",
        Iptables::Legacy => "iptables-legacy-save",
        Iptables::Nft => "iptables-nft-save",
    }
}

fn restore_tool(iptables: Iptables) -> &'static str {
    match iptables {
        Iptables::Auto => "iptables-restore",
        Iptables::Legacy => "iptables-legacy-restore",
        Iptables::Nft => "iptables-nft-restore",
    }
}

pub fn read_current(iptables: Iptables) -> Result<Current, CniError> {
    Ok(parse_save(&run(save_tool(iptables), &["-t", "nat"], None)?))
}

/// The file lock that serialises SNAT changes on the node.
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    /// Waits at most `timeout` for the lock; then code 11 (a process holding it that long is
    /// stuck; the runtime retries the ADD).
    fn take(dir: &Path, timeout: std::time::Duration) -> Result<Lock, CniError> {
        let path = dir.join("snat.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("opening {}: {e}", path.display())))?;
        use std::os::fd::AsRawFd;
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on an fd we own; the lock is released when the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(CniError::new(code::IO_FAILURE, format!("locking {}: {e}", path.display())));
            }
            if started.elapsed() >= timeout {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("{} is held by another process for more than {timeout:?} (lockTimeout)", path.display()),
                ));
            }
            // flock has no timed wait; the lock is held for milliseconds when all is well.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn marker_path(dir: &Path) -> Result<PathBuf, CniError> {
    let cookie = enipool_nodenet::netns::current_netns_cookie()
        .map_err(|e| CniError::new(code::KERNEL, format!("reading this network namespace's cookie: {e}")))?;
    Ok(dir.join(format!("snat-{cookie:016x}")))
}

fn marker_is_fresh(path: &Path, want: &str) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    let fresh = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age < MARKER_MAX_AGE);
    fresh && std::fs::read_to_string(path).is_ok_and(|s| s == want)
}

fn write_marker(path: &Path, content: &str) -> Result<(), CniError> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| CniError::new(code::IO_FAILURE, format!("writing {}: {e}", path.display()));
    std::fs::write(&tmp, content).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Makes the node's nat table hold exactly our chain for `spec` and one jump to it.
pub fn ensure(
    spec: &SnatSpec,
    state_dir: &Path,
    iptables: Iptables,
    lock_timeout: std::time::Duration,
) -> Result<(), CniError> {
    let want = spec.chain_rules().join("\n");
    let marker = marker_path(state_dir)?;
    if marker_is_fresh(&marker, &want) {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("creating {}: {e}", state_dir.display())))?;
    let _lock = Lock::take(state_dir, lock_timeout)?;
    // Another ADD may have done it while we waited for the lock.
    if marker_is_fresh(&marker, &want) {
        return Ok(());
    }
    let cur = read_current(iptables)?;
    if let Some(input) = restore_input(spec, &cur) {
        // A bounded wait for the xtables lock (iptables-legacy; nf_tables has none): exit
        // status 4 with the lock named is "held too long", code 11.
        let secs = lock_timeout.as_secs_f64().ceil().max(1.0).to_string();
        run(restore_tool(iptables), &["--noflush", "--wait", &secs], Some(&input)).map_err(|e| {
            if e.msg.contains("xtables lock") { CniError::new(code::TRY_AGAIN_LATER, e.msg) } else { e }
        })?;
    }
    write_marker(&marker, &want)
}

/// CHECK: what differs between the nat table and `spec`.
pub fn check(spec: &SnatSpec, iptables: Iptables) -> Result<Vec<String>, CniError> {
    let cur = read_current(iptables)?;
    let mut bad = Vec::new();
    if !cur.chain_exists {
        bad.push(format!("iptables nat chain {CHAIN} is missing"));
    } else if cur.rules != spec.chain_rules() {
        bad.push(format!("iptables nat chain {CHAIN} holds {:?}, expected {:?}", cur.rules, spec.chain_rules()));
    }
    if cur.jumps != 1 {
        bad.push(format!("POSTROUTING jumps to {CHAIN} {} times, expected once", cur.jumps));
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SnatSpec {
        SnatSpec {
            node_ip: Ipv4Addr::new(10, 0, 0, 10),
            excluded: vec!["10.0.0.0/16".parse().unwrap()],
            randomize: Randomize::Prng,
        }
    }

    #[test]
    fn rules_render_like_the_reference() {
        assert_eq!(
            spec().chain_rules(),
            vec![
                "-A ENIPOOL-SNAT -d 10.0.0.0/16 -m comment --comment \"enipool SNAT\" -j RETURN".to_string(),
                "-A ENIPOOL-SNAT ! -o vlan+ -m comment --comment \"enipool SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully".to_string(),
            ]
        );
    }

    #[test]
    fn settings_are_normalised() {
        let s = SnatSpec::from_lease(&enipool_api::SnatSettings {
            enabled: true,
            node_ip: "10.0.0.10".into(),
            excluded_cidrs: vec!["10.0.5.1/16".into(), "10.0.0.0/16".into()],
            randomize: "hashrandom".into(),
        })
        .unwrap();
        assert_eq!(s.excluded, vec!["10.0.0.0/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(s.randomize, Randomize::HashRandom);
        let bad = enipool_api::SnatSettings {
            enabled: true,
            node_ip: "x".into(),
            excluded_cidrs: vec![],
            randomize: "prng".into(),
        };
        assert_eq!(SnatSpec::from_lease(&bad).unwrap_err().code, code::DAEMON);
    }

    /// What a daemon with a placeholder identity sent before it learnt to send nothing: a node IP
    /// of 0.0.0.0 and no VPC CIDRs. Programming that would SNAT every pod's traffic, the VPC's
    /// included, to 0.0.0.0.
    #[test]
    fn settings_that_cannot_be_the_nodes_are_refused() {
        let good = enipool_api::SnatSettings {
            enabled: true,
            node_ip: "10.0.0.10".into(),
            excluded_cidrs: vec!["10.0.0.0/16".into()],
            randomize: "prng".into(),
        };
        assert!(SnatSpec::from_lease(&good).is_ok());
        for node_ip in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
            let s = enipool_api::SnatSettings { node_ip: node_ip.into(), ..good.clone() };
            let e = SnatSpec::from_lease(&s).unwrap_err();
            assert_eq!(e.code, code::DAEMON, "{node_ip}");
            assert!(e.msg.contains("node_ip"), "{}", e.msg);
        }
        let none_excluded = enipool_api::SnatSettings { excluded_cidrs: vec![], ..good };
        assert_eq!(SnatSpec::from_lease(&none_excluded).unwrap_err().code, code::DAEMON);
    }

    #[test]
    fn restore_input_only_when_different() {
        let s = spec();
        let fresh = parse_save("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n");
        let input = restore_input(&s, &fresh).unwrap();
        assert!(input.contains(":ENIPOOL-SNAT - [0:0]"));
        assert!(input.contains("-A POSTROUTING -m comment --comment \"enipool SNAT\" -j ENIPOOL-SNAT"));

        let applied = format!(
            "*filter\n-A FORWARD -j ACCEPT\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n:ENIPOOL-SNAT - [0:0]\n{}\n{}\nCOMMIT\n",
            jump_rule(),
            s.chain_rules().join("\n")
        );
        assert_eq!(restore_input(&s, &parse_save(&applied)), None);

        let mut other = s.clone();
        other.excluded.push("192.168.0.0/16".parse().unwrap());
        let input = restore_input(&other, &parse_save(&applied)).unwrap();
        assert!(!input.contains("-A POSTROUTING"), "the jump exists and is not added twice");
        assert!(input.contains("192.168.0.0/16"));

        let doubled = applied.replace(&jump_rule(), &format!("{}\n{}", jump_rule(), jump_rule()));
        let input = restore_input(&s, &parse_save(&doubled)).unwrap();
        assert_eq!(input.matches("-D POSTROUTING").count(), 1);
    }
}

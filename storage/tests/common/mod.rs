//! Helpers shared by the storage integration tests (each test file uses a different subset).
#![allow(dead_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use enipool_storage::*;

/// An ENI record whose only varying parts are its id, primary address and attachment.
pub fn eni(id: &str, device_number: u32, primary_ip: Ipv4Addr, attached: bool) -> EniRecord {
    EniRecord {
        id: id.into(),
        device_number,
        subnet_cidr: "10.0.0.0/16".parse().expect("a valid CIDR"),
        subnet_gateway: Ipv4Addr::new(10, 0, 255, 254),
        primary_ip,
        route_table: 100 + device_number,
        attached,
    }
}

/// `n` consecutive addresses starting at `first`.
pub fn ips_from(first: Ipv4Addr, n: u32) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::from(u32::from(first) + i)).collect()
}

pub fn meta(namespace: &str, name: &str) -> LeaseMeta {
    LeaseMeta {
        pod_namespace: Some(namespace.into()),
        pod_name: Some(name.into()),
        netns: Some(format!("/var/run/netns/{name}")),
        host_veth: Some(format!("veth{name}")),
    }
}

/// Everything a ledger shows through its read API, for comparing two ledgers or one ledger at
/// two moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub enis: Vec<EniRecord>,
    pub addresses: Vec<AddressRecord>,
    pub leases: Vec<Lease>,
    pub stats: Stats,
}

pub fn observe(ledger: &Ledger) -> Observed {
    Observed {
        enis: ledger.enis(),
        addresses: ledger.addresses(None),
        leases: ledger.leases(&LeaseFilter::default()),
        stats: ledger.stats(),
    }
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy's directory");
    for entry in fs::read_dir(from).expect("read the directory to copy") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// The write-ahead-log segments of the ledger in `dir`, oldest first.
pub fn wal_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = fs::read_dir(dir.join("wal"))
        .expect("the ledger has a wal directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Waits until nothing in this process holds sled's file lock on `<dir>/sled/db` any more.
///
/// Works around a library bug: `Ledger::close` (and dropping a ledger, or a plain `sled::Db`)
/// can return while a sled 0.34 thread-pool job still holds the store's file open, so an
/// immediate `Ledger::open` of the same directory sometimes fails with
/// `OpenError::Io { .. could not acquire lock on "<dir>/sled/db" .. WouldBlock }`. Seen in
/// `model::ledger_matches_the_model` under load; tests that reopen a directory call this first so
/// they test what they are about, and say on stderr when they had to wait.
pub fn wait_until_store_unlocked(dir: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = fs::File::open(dir.join("sled").join("db")) else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut waited = false;
    loop {
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            if waited {
                eprintln!(
                    "note: {} was still locked by a closed ledger's store (see common::wait_until_store_unlocked)",
                    dir.display()
                );
            }
            return;
        }
        waited = true;
        assert!(std::time::Instant::now() < deadline, "{} stays locked after its ledger was closed", dir.display());
        std::thread::yield_now();
    }
}

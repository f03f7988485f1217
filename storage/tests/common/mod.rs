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

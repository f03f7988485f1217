use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::model::LeaseKey;

/// Why a ledger could not be opened. Every variant names the path, so an operator knows which
/// directory to look at.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use ledger directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ledger at {path} is locked by another process ({source})")]
    Locked { path: PathBuf, source: std::io::Error },
    #[error("ledger at {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} is not an enipool ledger: {detail}")]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "ledger at {path} has schema version {found}, newer than this build supports ({supported}); upgrade enipool or point it at another directory"
    )]
    NewerVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("ledger at {path} breaks an invariant: {detail}")]
    Invariant { path: PathBuf, detail: String },
}

/// Why a ledger operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no free address (every address is leased or cooling down)")]
    NoFreeAddress,
    #[error("ENI {0} is already known")]
    EniExists(String),
    #[error("ENI {0} is not known")]
    UnknownEni(String),
    #[error("address {0} is already known")]
    AddressExists(Ipv4Addr),
    #[error("address {0} is not known")]
    UnknownAddress(Ipv4Addr),
    #[error("address {ip} belongs to ENI {actual}, not {requested}")]
    WrongEni { ip: Ipv4Addr, requested: String, actual: String },
    #[error("address {0} is the primary address of an ENI and is never leased")]
    PrimaryAddress(Ipv4Addr),
    #[error("address {ip} is in use ({state}); it can be removed once it is free")]
    AddressInUse { ip: Ipv4Addr, state: &'static str },
    #[error("ENI {eni} still has {leased} leased and {cooling} cooling addresses")]
    EniInUse { eni: String, leased: usize, cooling: usize },
    #[error("prefix {0} is not known")]
    UnknownPrefix(ipnet::Ipv4Net),
    #[error("prefix {prefix} overlaps {with}, which is already known")]
    PrefixOverlaps { prefix: ipnet::Ipv4Net, with: String },
    #[error("address {ip} lies in prefix {prefix}: it comes and goes with the prefix")]
    InPrefix { ip: Ipv4Addr, prefix: ipnet::Ipv4Net },
    #[error("lease key {0} contains a NUL byte")]
    InvalidKey(LeaseKey),
    #[error("ledger storage failed: {0}")]
    Storage(String),
    #[error("ledger is unusable after an earlier write failure ({0}); restart the daemon to recover from disk")]
    Poisoned(String),
}

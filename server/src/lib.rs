//! enipoold: the node daemon. It leases VPC IPs to pods over an HTTP API on a unix socket, keeps
//! a warm pool of ENIs and secondary IPs through a `Provider`, and records every lease in the
//! crash-safe ledger (`enipool-storage`) before acknowledging it.

pub mod api;
pub mod app;
pub mod cli;
pub mod cni_conf;
/// The unix-socket client lives with the API contract; re-exported for the CLI and tests.
pub use enipool_api::client;
pub mod config;
pub mod daemon;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod provider;
pub mod serve;
pub mod status_page;

/// Takes a std mutex even if a thread panicked while holding it. Every critical section in the
/// daemon replaces or inserts whole values, so a poisoned lock still guards consistent data, and
/// one panicked request must not take every later one down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! enipoold: the node daemon. It leases VPC IPs to pods over an HTTP API on a unix socket, keeps
//! a warm pool of ENIs and secondary IPs through a `Provider`, and records every lease in the
//! crash-safe ledger (`enipool-storage`) before acknowledging it.
//!
//! One folder per concern, each with its own module doc:
//! - [`api`]: the HTTP API (errors and the JSON extractor, one file per resource, the status
//!   page rendered from the same views as `/v1/pool` and `/v1/enis`);
//! - [`pool`]: the pool manager (plan, loop, provider sync);
//! - [`node`]: the node side (ENI host setup, node reconciliation, the CNI conflist);
//! - [`config`]: clap arguments, their resolution into a [`config::Config`], and the defaults;
//! - [`startup`]: start-up, listeners and shutdown;
//! - [`operator`]: the operator's client commands (`enipoold status`, `enipoold leases`);
//! - [`app`]: the state every part shares, and the pool manager's own state behind methods.

pub mod api;
pub mod app;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod pool;
pub mod provider;
pub mod serve;
pub mod startup;

/// The unix-socket client lives with the API contract; re-exported for the operator commands
/// and tests.
pub use enipool_api::client;

/// Takes a std mutex even if a thread panicked while holding it. Every critical section in the
/// daemon replaces or inserts whole values, so a poisoned lock still guards consistent data, and
/// one panicked request must not take every later one down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! enipool's crash-safe lease ledger.
//!
//! The ledger records the node's ENIs, their secondary addresses, and which pod holds which
//! address. It is the one thing that must never hand one IP to two pods, across restarts and
//! crashes. See `ARCHITECTURE.md` for why it is sled plus a write-ahead log.
//!
//! Guarantees:
//! - Every mutating call returns only once its effect is on disk (an fdatasync of the
//!   write-ahead log covers it); concurrent callers share syncs.
//! - Each operation is one write-ahead log record, applied to the in-memory mirror under one lock,
//!   so the key->IP index (leases) and the IP->key index (address states) always agree; a
//!   checkpoint writes every key changed since the last one into sled in one transaction across
//!   the trees.
//! - A released address cools down for the configured period, persisted, and is never handed out
//!   while cooling. Among free addresses the one released longest ago goes first.
//! - Opening checks the schema version and every invariant, and reports a corrupt, foreign or
//!   newer ledger as an [`OpenError`] naming the path; it does not panic.

mod clock;
mod error;
mod ledger;
mod model;
mod wal;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{LedgerError, OpenError};
pub use ledger::{Ledger, LedgerConfig, LedgerHealth, RecoveryReport, SCHEMA_VERSION};
pub use model::*;
pub use wal::SyncObserver;

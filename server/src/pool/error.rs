//! Why a pool step or a sync with the provider failed.

use enipool_storage::LedgerError;

use crate::app::{LedgerCallError, TaskDied};
use crate::node::eni_setup::HostError;
use crate::provider::ProviderError;

/// Why a pool step or a sync with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    TaskDied(#[from] TaskDied),
    /// The provider and the ledger disagree in a way the sync does not guess about.
    #[error("{0}")]
    Disagreement(String),
    /// The node's pods could not be read before adopting IPs (adopting without them could hand
    /// a live pod's IP to another).
    #[error("reading the node's pods before adopting IPs: {0}")]
    NodeUnreadable(HostError),
}

impl From<LedgerCallError> for PoolError {
    fn from(e: LedgerCallError) -> PoolError {
        match e {
            LedgerCallError::Ledger(e) => PoolError::Ledger(e),
            LedgerCallError::TaskDied(e) => PoolError::TaskDied(e),
        }
    }
}

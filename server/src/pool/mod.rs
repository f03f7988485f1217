//! The pool manager: keeps enough free IPs (and ENIs) warm, and gives back what is in excess.
//!
//! It is one background task, woken by every allocation and by a periodic tick. It never holds
//! anything an allocation waits on: allocations go straight to the ledger, and only when the
//! ledger has no free IP does an allocation wait (bounded) for this task to grow the pool.
//!
//! [`plan`] is the arithmetic, [`manager`] the loop, [`sync`] the reconciliation with the
//! provider. The manager's own state (provider events, the growth pause, ENI MACs, which ENIs'
//! node side is done) is [`crate::app::PoolState`], reached through `App::pool`.

mod error;
pub mod manager;
pub mod plan;
pub mod sync;

pub use error::PoolError;
pub use manager::{prepare_node, run, step};
pub use plan::{Mode, Plan, mode_now, plan, plan_now};
pub use sync::{eni_record, sync_with_provider};

//! The node side: what the daemon does to the node's kernel and files, over `enipool-nodenet`.
//!
//! - [`eni_setup`]: each secondary ENI's interface, address, route table and rule, and the
//!   node-wide sysctls (`enipoold node-sysctls`, and the check every pool tick).
//! - [`reconcile`]: leases of pods whose namespace is gone, orphan veths and rules, and leases
//!   rebuilt from the pods the node shows.
//! - [`cni_conf`]: the CNI conflist, installed once the daemon is ready.

pub mod cni_conf;
pub mod eni_setup;
pub mod reconcile;

pub use reconcile::{
    NodeAttachment, NodeReport, RebuildReport, read_attachments, rebuild, reconcile, reconcile_with, run,
};

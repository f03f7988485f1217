//! Where ENIs and secondary IPs come from. enipoold's pool manager drives a `Provider`; the
//! built-in `static` provider (in enipoold) simulates an instance locally, the EC2 provider
//! (crate `enipool-ec2`) calls AWS. This crate is small on purpose: both depend on it, and the
//! EC2 provider must not depend on the daemon.

use std::net::Ipv4Addr;

use async_trait::async_trait;

pub mod ec2_config;
pub mod instance_types;
use ipnet::Ipv4Net;

/// ENI and address limits of an instance type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_enis: u32,
    /// IPv4 addresses per ENI, the ENI's own primary address included.
    pub ipv4_per_eni: u32,
}

impl Limits {
    /// Addresses per ENI that pods can get (the primary is never leased).
    pub fn pod_ips_per_eni(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }
}

/// Built-in limits, so start-up needs no API call for common types (see [`instance_types`]).
pub fn builtin_limits(instance_type: &str) -> Option<Limits> {
    instance_types::builtin_type(instance_type).map(|f| f.limits)
}

/// Who we are: the instance and its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub limits: Limits,
    pub primary_eni_id: String,
    /// The node's primary IP: the SNAT source.
    pub primary_ip: Ipv4Addr,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The instance's availability zone, where the provider knows it.
    pub zone: Option<String>,
}

/// An ENI as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEni {
    pub id: String,
    pub device_number: u32,
    pub primary: bool,
    pub subnet_cidr: Ipv4Net,
    pub subnet_gateway: Ipv4Addr,
    /// The subnet's id and zone, where the provider knows them.
    pub subnet_id: Option<String>,
    pub zone: Option<String>,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// IPv4 prefixes delegated to the ENI (EC2's /28s); each takes one address slot.
    pub prefixes: Vec<Ipv4Net>,
    /// The ENI's MAC address (lower case), by which the node finds its interface.
    pub mac: Option<String>,
}

/// What a new ENI comes with beside its primary address, in the same call that creates it (so a
/// new ENI costs no separate assign). Either kind takes one of the ENI's address slots per unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// This many secondary IPs.
    Ips(u32),
    /// This many IPv4 prefixes (/28s).
    Prefixes(u32),
}

impl Fill {
    /// Nothing beside the primary address.
    pub const NOTHING: Fill = Fill::Ips(0);

    /// The address slots it takes.
    pub fn slots(self) -> u32 {
        match self {
            Fill::Ips(n) | Fill::Prefixes(n) => n,
        }
    }
}

/// A subnet new ENIs may go to, as the provider last described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateSubnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub zone: String,
    /// Free addresses, as EC2 last counted them.
    pub free: u64,
    /// The node's own subnet (else one found by its tag).
    pub node: bool,
    /// Why it is not being tried, while it is not (it answered "exhausted", say).
    pub skipped: Option<String>,
    /// How many times it refused a new ENI (exhausted, or no free /28) since start-up.
    pub refusals: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Failed(String),
    /// The subnet has no free addresses left: growth should pause.
    #[error("subnet exhausted: {0}")]
    SubnetExhausted(String),
    /// The subnet has no free aligned /28 left for a prefix (EC2's InsufficientCidrBlocks); single
    /// addresses may still be there.
    #[error("no free prefix in the subnet: {0}")]
    NoCidrBlocks(String),
    #[error("limit reached: {0}")]
    Limit(String),
}

#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Identity and limits; called once at start-up.
    async fn init(&self) -> Result<InstanceInfo, ProviderError>;
    /// Every ENI attached to this instance, with its secondary IPs.
    async fn list_enis(&self) -> Result<Vec<ProviderEni>, ProviderError>;
    /// Creates an ENI with `fill`'s secondary IPs or prefixes and attaches it at `device_number`;
    /// all or nothing, as EC2's CreateNetworkInterface is.
    async fn create_eni(&self, device_number: u32, fill: Fill) -> Result<ProviderEni, ProviderError>;
    /// Assigns up to `count` new secondary IPs to an ENI; returns them.
    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, ProviderError>;
    /// Removes secondary IPs from an ENI.
    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ProviderError>;
    /// Delegates `count` new IPv4 prefixes (/28) to an ENI; returns them. Each takes one of the
    /// ENI's address slots.
    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, ProviderError>;
    /// Gives prefixes of an ENI back.
    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), ProviderError>;
    /// Detaches and deletes a (non-primary) ENI.
    async fn delete_eni(&self, eni_id: &str) -> Result<(), ProviderError>;
    /// The subnets new ENIs may go to, best first, as last described (empty when the provider
    /// has one subnet only or has not looked yet).
    fn candidate_subnets(&self) -> Vec<CandidateSubnet> {
        Vec::new()
    }
    /// Deletes ENIs left behind (ours, detached, old enough), by this node or a dead one;
    /// returns their ids. Providers without leaks need not implement it.
    async fn sweep_leaked_enis(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
}

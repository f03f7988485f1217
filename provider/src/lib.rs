//! Where ENIs and secondary IPs come from. enipoold's pool manager drives a `Provider`; the
//! built-in `static` provider (in enipoold) simulates an instance locally, the EC2 provider
//! (crate `enipool-ec2`) calls AWS. This crate is small on purpose: both depend on it, and the
//! EC2 provider must not depend on the daemon.

use std::net::Ipv4Addr;

use async_trait::async_trait;

pub mod ec2_config;
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

/// Built-in limits, so start-up needs no API call for common types (from EC2's published table).
pub fn builtin_limits(instance_type: &str) -> Option<Limits> {
    let (max_enis, ipv4_per_eni) = match instance_type {
        "t3.nano" | "t3.micro" => (2, 2),
        "t3.small" => (3, 4),
        "t3.medium" => (3, 6),
        "t3.large" => (3, 12),
        "t3.xlarge" | "t3.2xlarge" => (4, 15),
        "m5.large" | "c5.large" | "r5.large" => (3, 10),
        "m5.xlarge" | "c5.xlarge" | "r5.xlarge" => (4, 15),
        "m5.2xlarge" | "c5.2xlarge" | "r5.2xlarge" => (4, 15),
        "m5.4xlarge" | "c5.4xlarge" | "r5.4xlarge" => (8, 30),
        "m5.8xlarge" | "m5.12xlarge" | "c5.9xlarge" | "c5.12xlarge" | "r5.8xlarge" | "r5.12xlarge" => (8, 30),
        "m5.16xlarge" | "m5.24xlarge" | "c5.18xlarge" | "c5.24xlarge" | "r5.16xlarge" | "r5.24xlarge" => (15, 50),
        _ => return None,
    };
    Some(Limits { max_enis, ipv4_per_eni })
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
}

/// An ENI as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEni {
    pub id: String,
    pub device_number: u32,
    pub primary: bool,
    pub subnet_cidr: Ipv4Net,
    pub subnet_gateway: Ipv4Addr,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// The ENI's MAC address (lower case), by which the node finds its interface.
    pub mac: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Failed(String),
    /// The subnet has no free addresses left: growth should pause.
    #[error("subnet exhausted: {0}")]
    SubnetExhausted(String),
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
    /// Creates an ENI and attaches it at `device_number` (no secondary IPs yet).
    async fn create_eni(&self, device_number: u32) -> Result<ProviderEni, ProviderError>;
    /// Assigns up to `count` new secondary IPs to an ENI; returns them.
    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, ProviderError>;
    /// Removes secondary IPs from an ENI.
    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ProviderError>;
    /// Detaches and deletes a (non-primary) ENI.
    async fn delete_eni(&self, eni_id: &str) -> Result<(), ProviderError>;
    /// Deletes ENIs left behind (ours, detached, old enough), by this node or a dead one;
    /// returns their ids. Providers without leaks need not implement it.
    async fn sweep_leaked_enis(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
}

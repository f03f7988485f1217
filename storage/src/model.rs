//! The records the ledger keeps. They are what sled stores (postcard-encoded) and what the
//! write-ahead log carries, so a change here is a schema change: bump `SCHEMA_VERSION` and add a
//! migration in `ledger.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Wall-clock, because cooldowns must survive a restart.
pub type UnixMillis = u64;

/// What a lease is keyed by, as the CNI spec requires: one attachment of one container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl LeaseKey {
    pub fn new(network: impl Into<String>, container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        LeaseKey { network: network.into(), container_id: container_id.into(), ifname: ifname.into() }
    }

    /// The sled key: the three parts joined by NUL, which none of them may contain
    /// (the daemon validates that before a key reaches the ledger).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.network.len() + self.container_id.len() + self.ifname.len() + 2);
        out.extend_from_slice(self.network.as_bytes());
        out.push(0);
        out.extend_from_slice(self.container_id.as_bytes());
        out.push(0);
        out.extend_from_slice(self.ifname.as_bytes());
        out
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// An elastic network interface of this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    pub id: String,
    pub device_number: u32,
    pub subnet_cidr: Ipv4Net,
    pub subnet_gateway: Ipv4Addr,
    /// Never leased to a pod: the ENI's own address.
    pub primary_ip: Ipv4Addr,
    pub route_table: u32,
    pub attached: bool,
}

/// An IPv4 prefix (EC2's /28, 16 addresses) delegated to an ENI. Each of its addresses is an
/// address record of that ENI, leased one by one like a secondary IP. (Added in schema 3.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRecord {
    pub cidr: Ipv4Net,
    pub eni_id: String,
    pub state: PrefixState,
}

/// Where a prefix stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixState {
    /// The provider has it: its addresses are handed out.
    Active,
    /// The provider no longer lists it, but leases still name some of its addresses (each
    /// `Lost`). Nothing of it is handed out and it is never given back: it goes when its last
    /// lease does, or is active again if the provider lists it again.
    Lost,
}

impl PrefixRecord {
    /// The addresses of the prefix, all of which pods may use (EC2 reserves none inside it).
    pub fn addresses(&self) -> ipnet::Ipv4AddrRange {
        ipnet::Ipv4AddrRange::new(self.cidr.network(), self.cidr.broadcast())
    }
}

/// Where one secondary address stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressState {
    Free,
    Leased {
        key: LeaseKey,
    },
    /// Released; not handed out again before `until`. Once `until` has passed the address is
    /// free even if the record still says cooling (expiry rewrites it lazily).
    Cooling {
        until: UnixMillis,
    },
    /// The provider (EC2) no longer has this address, but the lease of `key` still names it.
    /// Never handed out again: releasing the lease removes the address. (Added in schema 2.)
    Lost {
        key: LeaseKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub state: AddressState,
    /// When the address was last released; `None` if it never was. Allocation prefers the
    /// address released longest ago, so a crash-looping pod does not get a just-freed IP.
    pub last_released: Option<UnixMillis>,
}

/// The state of an address as seen at a given instant (cooling that has expired reads as free).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EffectiveState {
    Free,
    Leased,
    Cooling,
    /// Leased, but the provider no longer has the address.
    Lost,
}

impl AddressRecord {
    pub fn effective_state(&self, now: UnixMillis) -> EffectiveState {
        match self.state {
            AddressState::Free => EffectiveState::Free,
            AddressState::Leased { .. } => EffectiveState::Leased,
            AddressState::Cooling { until } if until > now => EffectiveState::Cooling,
            AddressState::Cooling { .. } => EffectiveState::Free,
            AddressState::Lost { .. } => EffectiveState::Lost,
        }
    }
}

/// What the caller tells us about the pod behind a lease. The netns path and host veth name are
/// what the node needs to find the lease again after a restart; a lease made through the API
/// alone has neither.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseMeta {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub netns: Option<String>,
    pub host_veth: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: LeaseKey,
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub meta: LeaseMeta,
    pub created_at: UnixMillis,
}

/// The answer to `allocate`: the lease, and whether this call made it (false: the key already
/// had it, and the same lease comes back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub lease: Lease,
    pub created: bool,
}

/// Filters for `Ledger::leases`; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    pub network: Option<String>,
    pub pod_namespace: Option<String>,
    pub eni_id: Option<String>,
}

impl LeaseFilter {
    pub fn matches(&self, lease: &Lease) -> bool {
        self.network.as_ref().is_none_or(|n| *n == lease.key.network)
            && self.pod_namespace.as_ref().is_none_or(|ns| lease.meta.pod_namespace.as_ref() == Some(ns))
            && self.eni_id.as_ref().is_none_or(|e| *e == lease.eni_id)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: usize,
    pub free: usize,
    pub leased: usize,
    pub cooling: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.free += other.free;
        self.leased += other.leased;
        self.cooling += other.cooling;
    }

    /// Counts an address; a lost one is not held (the provider no longer has it): see `Stats::lost`.
    pub(crate) fn count(&mut self, state: EffectiveState) {
        if state == EffectiveState::Lost {
            return;
        }
        self.total += 1;
        match state {
            EffectiveState::Free => self.free += 1,
            EffectiveState::Leased => self.leased += 1,
            EffectiveState::Cooling => self.cooling += 1,
            EffectiveState::Lost => {}
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub enis: usize,
    /// Held addresses (lost ones excluded).
    pub addresses: Counts,
    pub per_eni: BTreeMap<String, Counts>,
    /// Leased addresses the provider no longer has (`AddressState::Lost`).
    pub lost: usize,
    /// Prefixes held (active), and how many of them have all their addresses free: the
    /// prefix-mode pool's units.
    pub prefixes: usize,
    pub free_prefixes: usize,
    pub per_eni_prefixes: BTreeMap<String, usize>,
    /// The addresses inside active prefixes (a subset of `addresses`).
    pub prefix_addresses: Counts,
}

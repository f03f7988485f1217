//! enipool's HTTP API contract: the v1 wire types, their utoipa schemas, the input rules both
//! the daemon and the plugin enforce, and the stable problem types. The daemon generates the
//! OpenAPI document from these and its routes; `openapi/openapi.json` is that document, committed,
//! and a test fails when the two differ.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[cfg(feature = "client")]
pub mod client;

/// Largest request body the daemon reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest `POST /v1/gc` body: the runtime lists every valid attachment of the node (tens of
/// thousands of the longest ones fit; the plugin reads at most 4 MiB of stdin too).
pub const MAX_GC_BODY_BYTES: usize = 4 << 20;

/// Ask for a lease. The key is (network, container_id, ifname); asking again with the same key
/// returns the same lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// CNI network name: starts with a letter or digit, then letters, digits, `_`, `.`, `-`.
    #[schema(example = "aws-cni")]
    pub network: String,
    /// `[A-Za-z0-9][A-Za-z0-9_.-]{0,253}`
    #[schema(example = "3f2a9c0d1e5b")]
    pub container_id: String,
    /// 1-15 bytes, no `/`, whitespace or NUL.
    #[schema(example = "eth0")]
    pub ifname: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The pod's network namespace path; lets the daemon find dead pods after a restart.
    #[serde(default)]
    pub netns: Option<String>,
    /// The host-side veth name the plugin will create.
    #[serde(default)]
    pub host_veth: Option<String>,
}

/// How the node source-NATs pod traffic leaving the VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnatSettings {
    /// False when SNAT is done outside the node (AWS_VPC_K8S_CNI_EXTERNALSNAT), and while the
    /// daemon does not know the node's identity yet (first start with EC2 unreachable): the
    /// plugin then leaves the node's SNAT chain as it is.
    pub enabled: bool,
    /// The node's primary IP: the SNAT source.
    pub node_ip: String,
    /// Destinations never SNATed (the VPC CIDRs plus configured exclusions).
    pub excluded_cidrs: Vec<String>,
    /// `prng` (--random-fully), `hashrandom` (--random) or `none`.
    pub randomize: String,
}

/// A lease and everything the plugin needs to wire the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub netns: Option<String>,
    pub host_veth: Option<String>,
    /// When the lease was made, Unix milliseconds.
    pub created_at: u64,
    /// The pod's IPv4 address.
    #[schema(example = "10.0.1.23")]
    pub ip: String,
    /// Always 32: pods get a host route, not a subnet.
    pub prefix_length: u8,
    pub eni_id: String,
    pub device_number: u32,
    /// Policy-routing table for traffic from this IP (main table for the primary ENI).
    pub route_table: u32,
    pub subnet_cidr: String,
    pub subnet_gateway: String,
    pub vpc_cidrs: Vec<String>,
    /// The pod's default gateway, 169.254.1.1.
    pub gateway: String,
    pub mtu: u32,
    pub snat: SnatSettings,
}

/// One attachment still in use, for garbage collection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// Release every lease of `network` that is not in `valid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    pub network: String,
    pub valid: Vec<Attachment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReply {
    /// The leases released (their IPs are now cooling down).
    pub released: Vec<Lease>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressState {
    Free,
    Leased,
    Cooling,
    /// Still leased, but the provider (EC2) no longer has the address: never handed out again;
    /// it goes when its lease is released.
    Lost,
}

impl AddressState {
    /// The state's name, as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressState::Free => "free",
            AddressState::Leased => "leased",
            AddressState::Cooling => "cooling",
            AddressState::Lost => "lost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub ip: String,
    pub state: AddressState,
    /// `network/container_id/ifname` of the lease, when leased.
    pub lease: Option<String>,
    /// Unix milliseconds at which cooling ends, when cooling.
    pub cooling_until: Option<u64>,
    /// Unix milliseconds of the last release, if any.
    pub last_released: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Eni {
    pub id: String,
    pub device_number: u32,
    /// The instance's primary ENI: never detached.
    pub primary: bool,
    pub attached: bool,
    pub primary_ip: String,
    pub subnet_cidr: String,
    pub subnet_gateway: String,
    pub route_table: u32,
    /// Every address the ENI serves pods from: its secondary IPs and its prefixes' addresses.
    pub addresses: Vec<Address>,
    /// The IPv4 prefixes (/28) delegated to the ENI; their addresses are in `addresses` too.
    #[serde(default)]
    pub prefixes: Vec<Prefix>,
    /// The ENI's subnet id and availability zone, where the provider says.
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
}

/// A subnet new ENIs may go to (subnet discovery: the node's own and those tagged
/// `kubernetes.io/role/cni`), best first, as the provider last described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subnet {
    pub id: String,
    pub cidr: String,
    pub zone: String,
    /// Free addresses, as EC2 last counted them.
    pub free: u64,
    /// The node's own subnet (else one found by its tag).
    pub node: bool,
    /// Why it is not tried for new ENIs now (it answered "exhausted", say), while it is not.
    pub skipped: Option<String>,
    /// How many times it refused a new ENI since start-up.
    pub refusals: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrefixState {
    Active,
    /// The provider (EC2) no longer lists the prefix while pods still use addresses in it: kept,
    /// never given back nor handed out, until those pods go or the provider lists it again.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Prefix {
    pub cidr: String,
    pub state: PrefixState,
    /// How many of its 16 addresses are leased.
    pub leased: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WarmTargets {
    pub warm_eni_target: u32,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub max_eni: u32,
    /// Seconds a released IP cools down before reuse.
    pub ip_cooldown_seconds: f64,
    /// Wholly free prefixes kept in prefix mode (WARM_PREFIX_TARGET; 1 unless WARM_IP_TARGET or
    /// MINIMUM_IP_TARGET is set).
    #[serde(default)]
    pub warm_prefix_target: Option<u32>,
    /// The pool never grows beyond what this many pods need (MAX_PODS).
    #[serde(default)]
    pub max_pods: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderEvent {
    /// e.g. `assign_ips`, `create_eni`, `unassign_ips`, `delete_eni`.
    pub action: String,
    /// Unix milliseconds.
    pub at: u64,
    pub detail: String,
}

/// The pool as the daemon sees it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub instance_id: String,
    pub instance_type: String,
    pub provider: String,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub enis: u32,
    pub total: u32,
    pub free: u32,
    pub leased: u32,
    pub cooling: u32,
    pub targets: WarmTargets,
    /// How many IPs the pool manager wants to hold now.
    pub desired_total: u32,
    /// IPs the pool lacks to reach its target (0 when not short).
    pub deficit: u32,
    /// IPs the pool holds beyond its target that it may release.
    pub excess: u32,
    /// Allocations refused since start because no IP was free.
    pub exhausted_allocations: u64,
    pub last_provider_action: Option<ProviderEvent>,
    pub last_provider_error: Option<ProviderEvent>,
    /// Leased addresses the provider (EC2) no longer has (not counted in `total`).
    #[serde(default)]
    pub lost: u32,
    /// Set while growth is paused because the provider reported the subnet out of addresses.
    #[serde(default)]
    pub growth_paused: Option<GrowthPause>,
    /// Whether the leaked-ENI sweep runs: only with the EC2 provider, a cluster name
    /// (`--cluster-name`: without one, this cluster's ENIs cannot be told from another's, so none
    /// is swept) and a non-zero `--leaked-eni-interval`.
    pub leaked_eni_sweep: bool,
    /// How the pool grows now: `ips` (secondary IPs), `prefixes` (/28 prefixes,
    /// ENABLE_PREFIX_DELEGATION), or `prefix-fallback` (prefix mode growing by single IPs while
    /// EC2 has no free /28; see `prefix_fallback`).
    #[serde(default)]
    pub mode: String,
    /// Prefixes held (active), and how many of them are wholly free.
    #[serde(default)]
    pub prefixes: u32,
    #[serde(default)]
    pub free_prefixes: u32,
    /// In prefix mode: the plan in prefixes (the address figures above are 16 times these).
    #[serde(default)]
    pub prefix_plan: Option<PrefixPlan>,
    /// Set while prefix mode grows by single IPs: EC2 answered InsufficientCidrBlocks (no free
    /// aligned /28 in the subnet). Prefixes are tried again at `until`.
    #[serde(default)]
    pub prefix_fallback: Option<GrowthPause>,
    /// Where new ENIs may go, best first (empty until the provider first looked, and with the
    /// static provider).
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// Why the pool does not grow at all, if it does not (custom networking with no entry for
    /// the instance's zone); /readyz says the same.
    #[serde(default)]
    pub growth_blocked: Option<String>,
}

/// The prefix-mode plan, in prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrefixPlan {
    pub desired: u32,
    pub deficit: u32,
    pub excess: u32,
}

/// Growth is paused (the provider said the subnet has no free addresses left), or prefix mode
/// falls back to single IPs (no free /28 left).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrowthPause {
    /// The provider's error.
    pub reason: String,
    /// When growth resumes, Unix milliseconds.
    pub until: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `failed` when the daemon cannot do its job without a restart.
    pub status: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready, when not.
    pub reason: Option<String>,
}

/// An RFC 9457 problem document. `type` is stable; match on it, not on `title` or `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "urn:enipool:problem:pool-exhausted")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, for input errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The stable problem types.
pub mod problem {
    pub const INVALID_BODY: &str = "urn:enipool:problem:invalid-body";
    pub const INVALID_FIELD: &str = "urn:enipool:problem:invalid-field";
    pub const BODY_TOO_LARGE: &str = "urn:enipool:problem:body-too-large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "urn:enipool:problem:unsupported-media-type";
    pub const NOT_FOUND: &str = "urn:enipool:problem:not-found";
    pub const METHOD_NOT_ALLOWED: &str = "urn:enipool:problem:method-not-allowed";
    pub const READ_ONLY_LISTENER: &str = "urn:enipool:problem:read-only-listener";
    pub const POOL_EXHAUSTED: &str = "urn:enipool:problem:pool-exhausted";
    pub const SHUTTING_DOWN: &str = "urn:enipool:problem:shutting-down";
    pub const NOT_READY: &str = "urn:enipool:problem:not-ready";
    pub const INTERNAL: &str = "urn:enipool:problem:internal";
    /// The ledger stopped taking writes (a disk write or sync failed): nothing more is leased
    /// or released until the daemon restarts and recovers from disk.
    pub const LEDGER_FAILED: &str = "urn:enipool:problem:ledger-failed";
}

/// Why a request field is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most `max` bytes.
fn check_id(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    let err = |reason: String| Err(FieldError { field, reason });
    if value.is_empty() {
        return err("must not be empty".into());
    }
    if value.len() > max {
        return err(format!("is {} bytes, at most {max} allowed", value.len()));
    }
    let mut chars = value.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return err("must start with a letter or digit".into());
    }
    if let Some(bad) = chars.find(|&c| !is_id_char(c)) {
        return err(format!("contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

/// A CNI network name.
pub fn check_network(value: &str) -> Result<(), FieldError> {
    check_id("network", value, 255)
}

/// A container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,253}`.
pub fn check_container_id(value: &str) -> Result<(), FieldError> {
    check_id("container_id", value, 254)
}

/// An interface name as Linux allows it: 1-15 bytes, no `/`, whitespace or NUL, not `.`/`..`.
pub fn check_ifname(value: &str) -> Result<(), FieldError> {
    let err = |reason: &str| Err(FieldError { field: "ifname", reason: reason.into() });
    if value.is_empty() {
        return err("must not be empty");
    }
    if value.len() > 15 {
        return err("must be at most 15 bytes");
    }
    if value == "." || value == ".." {
        return err("must not be '.' or '..'");
    }
    if value.chars().any(|c| c == '/' || c == '\0' || c.is_whitespace() || c == ':') {
        return err("must not contain '/', ':', whitespace or NUL");
    }
    Ok(())
}

/// Optional free-text fields: bounded, no NUL or control characters.
fn check_text(field: &'static str, value: &Option<String>, max: usize) -> Result<(), FieldError> {
    match value {
        Some(v) if v.len() > max => Err(FieldError { field, reason: format!("must be at most {max} bytes") }),
        Some(v) if v.chars().any(char::is_control) => {
            Err(FieldError { field, reason: "must not contain control characters".into() })
        }
        _ => Ok(()),
    }
}

impl LeaseRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_network(&self.network)?;
        check_container_id(&self.container_id)?;
        check_ifname(&self.ifname)?;
        check_text("pod_namespace", &self.pod_namespace, 253)?;
        check_text("pod_name", &self.pod_name, 253)?;
        check_text("netns", &self.netns, 4096)?;
        if let Some(v) = &self.host_veth {
            check_ifname(v).map_err(|e| FieldError { field: "host_veth", reason: e.reason })?;
        }
        Ok(())
    }
}

impl GcRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_network(&self.network)?;
        for a in &self.valid {
            check_container_id(&a.container_id).map_err(|e| FieldError { field: "valid[].container_id", ..e })?;
            check_ifname(&a.ifname).map_err(|e| FieldError { field: "valid[].ifname", ..e })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_pattern() {
        assert!(check_container_id("a").is_ok());
        assert!(check_container_id(&"a".repeat(254)).is_ok());
        assert_eq!(check_container_id(&"a".repeat(255)).unwrap_err().field, "container_id");
        assert!(check_container_id("-abc").is_err());
        assert!(check_container_id("ab/c").is_err());
        assert!(check_container_id("").is_err());
        assert!(check_network("aws-cni.v1_x").is_ok());
        assert!(check_network("bad name").is_err());
    }

    #[test]
    fn ifnames_follow_linux_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        for bad in ["", ".", "..", "a/b", "a b", "a\0b", "a:b"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn problem_documents_serialize_type_as_type() {
        let p = Problem {
            problem_type: problem::POOL_EXHAUSTED.into(),
            title: "t".into(),
            status: 503,
            detail: "d".into(),
            field: None,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], problem::POOL_EXHAUSTED);
        assert!(v.get("field").is_none());
    }
}

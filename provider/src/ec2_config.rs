//! The EC2 provider's settings: the daemon's configuration holds them, and `enipool-ec2` runs
//! with them. They live here, not beside the SDK, so no build that does not need aws-sdk-ec2
//! pulls it in to read a setting.

use std::collections::BTreeMap;
use std::time::Duration;

/// How the provider finds its instance and talks to EC2.
#[derive(Clone, Debug)]
pub struct Ec2Config {
    /// This instance; when set, identity comes from DescribeInstances and no metadata service is
    /// needed.
    pub instance_id: Option<String>,
    /// Overrides the instance type EC2 reports (limits are looked up for it).
    pub instance_type: Option<String>,
    /// The instance metadata service, used when `instance_id` is not set.
    pub imds_endpoint: String,
    /// EC2 endpoint; when unset the SDK's own (AWS_ENDPOINT_URL_EC2, or the region's).
    pub ec2_endpoint: Option<String>,
    /// Tagged on ENIs we create. The leaked-ENI sweep deletes only ENIs with this tag and our
    /// description; without a cluster name it deletes none (another cluster's ENIs, or ENIs
    /// someone else tagged, cannot be told from ours), except those this process detached.
    pub cluster_name: Option<String>,
    pub calls: CallPolicy,
    /// How long DeleteNetworkInterface is retried while the ENI is still detaching.
    pub detach_wait: Duration,
    /// Detached ENIs of ours older than this are deleted by the sweep.
    pub leaked_eni_age: Duration,
    /// How long our own changes are overlaid on listings (EC2 reads are eventually consistent).
    pub consistency_window: Duration,
    /// ENABLE_SUBNET_DISCOVERY: new ENIs may go to any subnet of the node's VPC and zone tagged
    /// `kubernetes.io/role/cni` (not `0`, not another cluster's), or the node's own, whichever
    /// has most free addresses; without it, the node's subnet only.
    pub subnet_discovery: bool,
    /// A subnet that answered "exhausted" (or, for prefixes, "no free /28") is not tried again
    /// for this long.
    pub subnet_skip: Duration,
    /// Security groups of new ENIs; empty: the primary ENI's.
    pub security_groups: Vec<String>,
    /// ADDITIONAL_ENI_TAGS: tagged on new ENIs beside our own, which they cannot override.
    pub additional_tags: BTreeMap<String, String>,
    /// Custom networking (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG), by availability zone: new ENIs go
    /// to the zone's subnet with its security groups (no discovery), and the primary ENI serves
    /// no pods. `None`: off.
    pub custom_network: Option<BTreeMap<String, ZoneEniConfig>>,
}

/// One zone's ENIConfig equivalent: where pod ENIs go in that zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneEniConfig {
    pub subnet: String,
    /// Empty: the primary ENI's.
    pub security_groups: Vec<String>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            instance_id: None,
            instance_type: None,
            imds_endpoint: "http://169.254.169.254".into(),
            ec2_endpoint: None,
            cluster_name: None,
            calls: CallPolicy::default(),
            detach_wait: Duration::from_secs(30),
            leaked_eni_age: Duration::from_secs(300),
            consistency_window: Duration::from_secs(30),
            subnet_discovery: true,
            subnet_skip: Duration::from_secs(300),
            security_groups: Vec::new(),
            additional_tags: BTreeMap::new(),
            custom_network: None,
        }
    }
}

/// Retries, backoff, timeout and rate limit of EC2 calls. Every period is configurable.
#[derive(Clone, Debug, PartialEq)]
pub struct CallPolicy {
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one, capped at `backoff_max`,
    /// and jittered (a uniform pick between half of it and all of it).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Client-side rate limit: calls per second, sustained...
    pub rate_per_second: f64,
    /// ...with bursts of up to this many.
    pub burst: u32,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            max_attempts: 8,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
            rate_per_second: 10.0,
            burst: 20,
        }
    }
}

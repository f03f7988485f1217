//! enipoold's configuration. Every setting is a flag, an environment variable and a key of the
//! `--config` TOML file; precedence is flag, then environment, then file, then default. Pool
//! knobs carry the reference daemon's environment names (WARM_ENI_TARGET, ...), the rest are
//! ENIPOOL_*. Every period the daemon waits on is here, so tests set them short.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use enipool_provider::ec2_config::{CallPolicy, Ec2Config, ZoneEniConfig};
use ipnet::Ipv4Net;
use serde::Deserialize;

pub mod defaults;

pub const DEFAULT_SOCKET: &str = "/run/enipool/enipool.sock";
/// Where the image ships the conflist (`deploy/10-enipool.conflist`).
pub const DEFAULT_CONFLIST: &str = "/etc/enipool/10-enipool.conflist";

/// A setting that cannot be used, and why; or a `--config` file that cannot be read. The cause is
/// part of the message and not an error `source`, so a printer that walks causes (`{:#}`) does not
/// print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `setting` is the flag (`--pool-tick`).
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("reading config file {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {}: {error}", .path.display())]
    Parse { path: PathBuf, error: toml::de::Error },
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.to_string(), reason: reason.into() }
}

/// One `[eni-config.<zone>]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EniConfigTable {
    pub subnet: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// Custom networking's per-zone choices, checked: on, it needs the EC2 provider and at least one
/// zone; each zone a subnet id and security group ids.
fn custom_network(
    on: bool,
    tables: Option<std::collections::BTreeMap<String, EniConfigTable>>,
    provider: &ProviderKind,
) -> Result<Option<std::collections::BTreeMap<String, ZoneEniConfig>>, ConfigError> {
    let setting = "--custom-network";
    if !on {
        return Ok(None);
    }
    if *provider != ProviderKind::Ec2 {
        return Err(invalid(setting, "custom networking needs --provider ec2 (the static provider has one subnet)"));
    }
    let tables = tables.unwrap_or_default();
    if tables.is_empty() {
        return Err(invalid(
            setting,
            "needs an [eni-config.<zone>] table with a subnet for the instance's zone in the --config file",
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    for (zone, t) in tables {
        if !t.subnet.starts_with("subnet-") {
            return Err(invalid(
                setting,
                format!("[eni-config.{zone}] subnet {:?} is not a subnet id (subnet-...)", t.subnet),
            ));
        }
        let groups = security_groups(Some(&t.security_groups.join(",")))
            .map_err(|e| invalid(setting, format!("[eni-config.{zone}] security-groups: {e}")))?;
        out.insert(zone, ZoneEniConfig { subnet: t.subnet, security_groups: groups });
    }
    Ok(Some(out))
}

/// `--eni-security-groups`: comma-separated `sg-` ids.
fn security_groups(v: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let groups: Vec<String> =
        v.unwrap_or("").split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
    if let Some(bad) = groups.iter().find(|g| !g.starts_with("sg-") || g.len() > 64) {
        return Err(invalid("--eni-security-groups", format!("{bad:?} is not a security group id (sg-...)")));
    }
    // EC2 allows five security groups per ENI by default (up to 16 with a raised quota).
    if groups.len() > 16 {
        return Err(invalid("--eni-security-groups", format!("{} groups; an ENI takes at most 16", groups.len())));
    }
    Ok(groups)
}

/// ADDITIONAL_ENI_TAGS: a JSON object of strings, within EC2's tag limits, none of our keys.
fn additional_eni_tags(v: Option<&str>) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let setting = "--additional-eni-tags";
    let Some(text) = v.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(Default::default()) };
    let tags: std::collections::BTreeMap<String, String> = serde_json::from_str(text)
        .map_err(|e| invalid(setting, format!("not a JSON object of strings like {{\"team\":\"a\"}}: {e}")))?;
    for (k, v) in &tags {
        if k.starts_with("enipool.io/") {
            return Err(invalid(
                setting,
                format!("{k:?}: keys under enipool.io/ are ours (the sweep and the IAM policy rely on them)"),
            ));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(setting, format!("{k:?}: EC2 reserves keys starting with aws:")));
        }
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(invalid(
                setting,
                format!("{k:?}: EC2 takes keys of 1 to 128 characters and values of up to 256"),
            ));
        }
    }
    // EC2 takes 50 tags per resource; three are ours.
    if tags.len() > 47 {
        return Err(invalid(setting, format!("{} tags; with our 3, more than EC2's 50 per ENI", tags.len())));
    }
    Ok(tags)
}

/// A setting's help: what it does, then `[default: X]` from [`defaults`], so the help and
/// `resolve` cannot disagree.
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

#[derive(Parser, Debug)]
#[command(
    name = "enipoold",
    version,
    about = "enipool's node daemon: leases VPC IPs to pods and keeps the ENI pool warm."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the pool: ENIs, counts, targets, last provider action and error.
    Status(ClientArgs),
    /// List leases.
    Leases(ClientArgs),
    /// Print the OpenAPI document this build serves (the source of openapi/openapi.json).
    Openapi,
    /// Set the node-wide sysctls pods need: net.ipv4.ip_forward=1 and rp_filter=2 (loose) on the
    /// primary interface. Run as root in the node's network namespace with a writable /proc/sys,
    /// as the DaemonSet's privileged init container does; the daemon itself only checks them.
    NodeSysctls(NodeSysctlsArgs),
    /// Print kubelet's --max-pods for an instance type: pod addresses per ENI (16 per slot with
    /// prefix delegation) times the ENIs pods may use, plus 2, capped at 110 below 30 vCPUs and 250
    /// from 30 up (the reference VPC CNI's max-pods-calculator.sh), from the built-in table.
    MaxPods(MaxPodsArgs),
}

#[derive(Args, Debug)]
pub struct MaxPodsArgs {
    /// The instance type; one missing from the built-in table is an error that names it.
    #[arg(long)]
    pub instance_type: String,
    /// With prefix delegation (a /28 per ENI slot; Nitro types only).
    #[arg(long)]
    pub prefix_delegation: bool,
    /// With custom networking (the primary ENI serves no pods).
    #[arg(long)]
    pub custom_networking: bool,
}

#[derive(Args, Debug)]
pub struct NodeSysctlsArgs {
    /// The primary interface. [default: the interface of the main table's IPv4 default route with the lowest metric]
    #[arg(long, env = "ENIPOOL_PRIMARY_INTERFACE")]
    pub interface: Option<String>,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The daemon's unix socket.
    #[arg(long, env = "ENIPOOL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Daemon settings as given on the command line or in the environment; `None` means "not given
/// here", so the file or the default decides.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonArgs {
    /// TOML file with any of these settings (keys are the long flag names).
    #[arg(long, env = "ENIPOOL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    #[arg(long, env = "ENIPOOL_SOCKET", help = with_default("Unix socket serving every route, mutating ones included.", defaults::SOCKET))]
    pub socket: Option<PathBuf>,
    #[arg(long, env = "ENIPOOL_LISTEN", help = with_default("Loopback TCP address for read-only routes, /metrics, /openapi.json and /docs.", defaults::LISTEN))]
    pub listen: Option<String>,
    #[arg(long, env = "ENIPOOL_METRICS_LISTEN", help = with_default("Address serving /metrics alone, for Prometheus off the node; \"off\" disables it.", defaults::METRICS_LISTEN))]
    pub metrics_listen: Option<String>,
    #[arg(long, env = "ENIPOOL_DATA_DIR", help = with_default("Directory holding the ledger (and the static provider's simulated instance).", defaults::DATA_DIR))]
    pub data_dir: Option<PathBuf>,

    #[arg(long, env = "ENIPOOL_PROVIDER", help = with_default("Where ENIs and IPs come from: \"static\" (simulated, no AWS) or \"ec2\".", defaults::PROVIDER))]
    pub provider: Option<String>,
    /// Instance type the static provider simulates (limits from the built-in table); with ec2, overrides the type EC2 reports. [default: m5.large (static), EC2's (ec2)]
    #[arg(long, env = "ENIPOOL_INSTANCE_TYPE")]
    pub instance_type: Option<String>,
    #[arg(long, env = "ENIPOOL_VPC_CIDR", help = with_default("VPC CIDR the static provider carves its subnet from.", defaults::VPC_CIDR))]
    pub vpc_cidr: Option<String>,
    #[arg(long, env = "ENIPOOL_STATIC_LATENCY", help = with_default("Latency the static provider adds to every call, to watch pool behaviour (e.g. 200ms).", defaults::STATIC_LATENCY))]
    pub static_latency: Option<String>,

    /// ec2: this instance's id; identity then comes from DescribeInstances, not the metadata service. [default: from the metadata service]
    #[arg(long, env = "ENIPOOL_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[arg(long, env = "ENIPOOL_IMDS_ENDPOINT", help = with_default("ec2: the instance metadata service (IMDSv2), read when --instance-id is not given.", defaults::IMDS_ENDPOINT))]
    pub imds_endpoint: Option<String>,
    /// ec2: the EC2 API endpoint. [default: AWS_ENDPOINT_URL_EC2, else the region's]
    #[arg(long, env = "ENIPOOL_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,
    /// ec2: cluster name, tagged on the ENIs we create. The leaked-ENI sweep runs only with it, and deletes only ENIs with this tag and our description; without it the sweep is off (start-up warns, `/v1/pool` says `leaked_eni_sweep: false`). [default: none]
    #[arg(long, env = "ENIPOOL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    #[arg(long, env = "ENIPOOL_EC2_MAX_ATTEMPTS", help = with_default("ec2: attempts per EC2 call, the first included; throttling, 5xx and timeouts are retried.", defaults::EC2_MAX_ATTEMPTS))]
    pub ec2_max_attempts: Option<u32>,
    #[arg(long, env = "ENIPOOL_EC2_BACKOFF_BASE", help = with_default("ec2: backoff before the first retry, doubled for each further one, jittered.", defaults::EC2_BACKOFF_BASE))]
    pub ec2_backoff_base: Option<String>,
    #[arg(long, env = "ENIPOOL_EC2_BACKOFF_MAX", help = with_default("ec2: cap on the backoff between retries.", defaults::EC2_BACKOFF_MAX))]
    pub ec2_backoff_max: Option<String>,
    #[arg(long, env = "ENIPOOL_EC2_TIMEOUT", help = with_default("ec2: how long one EC2 request may take.", defaults::EC2_TIMEOUT))]
    pub ec2_timeout: Option<String>,
    #[arg(long, env = "ENIPOOL_EC2_RATE_LIMIT", help = with_default("ec2: client-side rate limit, EC2 calls per second (0: none).", defaults::EC2_RATE_LIMIT))]
    pub ec2_rate_limit: Option<f64>,
    #[arg(long, env = "ENIPOOL_EC2_BURST", help = with_default("ec2: calls allowed in a burst above the rate limit.", defaults::EC2_BURST))]
    pub ec2_burst: Option<u32>,
    #[arg(long, env = "ENIPOOL_EC2_DETACH_WAIT", help = with_default("ec2: how long deleting a just-detached ENI is retried while it is still detaching.", defaults::EC2_DETACH_WAIT))]
    pub ec2_detach_wait: Option<String>,
    #[arg(long, env = "ENIPOOL_EC2_CONSISTENCY_WINDOW", help = with_default("ec2: how long our own changes are trusted over EC2's (eventually consistent) reads.", defaults::EC2_CONSISTENCY_WINDOW))]
    pub ec2_consistency_window: Option<String>,
    #[arg(long, env = "ENIPOOL_SUBNET_EXHAUSTED_PAUSE", help = with_default("How long growth pauses after the provider reports the subnet exhausted (with subnet discovery: every candidate subnet).", defaults::SUBNET_EXHAUSTED_PAUSE))]
    pub subnet_exhausted_pause: Option<String>,
    #[arg(long, env = "ENABLE_SUBNET_DISCOVERY", help = with_default("ec2: new ENIs go to the subnet with most free addresses among the node's own and those of its VPC and zone tagged kubernetes.io/role/cni (not 0, not another cluster's); else to the node's subnet only (reference name).", defaults::SUBNET_DISCOVERY))]
    pub subnet_discovery: Option<bool>,
    #[arg(long, env = "ENIPOOL_SUBNET_SKIP", help = with_default("ec2: how long a subnet that answered exhausted (or, for prefixes, had no free /28) is not tried for new ENIs; the next candidate is tried at once.", defaults::SUBNET_SKIP))]
    pub subnet_skip: Option<String>,
    /// ec2: security groups of the ENIs we create, comma-separated (sg-...). [default: the primary ENI's]
    #[arg(long, env = "ENIPOOL_ENI_SECURITY_GROUPS")]
    pub eni_security_groups: Option<String>,
    #[arg(long, env = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", help = with_default("ec2: custom networking: new ENIs go to the subnet (and security groups) the --config file's [eni-config.<zone>] table gives for the instance's zone, and the primary ENI serves no pods (reference name).", defaults::CUSTOM_NETWORK))]
    pub custom_network: Option<bool>,
    /// Custom networking, per availability zone (the --config file's `[eni-config.<zone>]`
    /// tables, the equivalent of the reference's ENIConfig): `subnet`, `security-groups`.
    #[arg(skip)]
    pub eni_config: Option<std::collections::BTreeMap<String, EniConfigTable>>,
    /// ec2: tags for the ENIs we create beside our own, a JSON object of strings, e.g. {"team":"a"}; keys may not start with enipool.io/ or aws: (reference name). [default: none]
    #[arg(long, env = "ADDITIONAL_ENI_TAGS")]
    pub additional_eni_tags: Option<String>,
    #[arg(long, env = "ENIPOOL_LEAKED_ENI_AGE", help = with_default("Detached ENIs of ours older than this are deleted by the leaked-ENI sweep.", defaults::LEAKED_ENI_AGE))]
    pub leaked_eni_age: Option<String>,
    #[arg(long, env = "ENIPOOL_LEAKED_ENI_INTERVAL", help = with_default("How often the leaked-ENI sweep runs (VPC-wide); 0 disables it.", defaults::LEAKED_ENI_INTERVAL))]
    pub leaked_eni_interval: Option<String>,
    #[arg(long, env = "ENIPOOL_RECONCILE_INTERVAL", help = with_default("How often the ledger is reconciled with the provider after start-up.", defaults::RECONCILE_INTERVAL))]
    pub reconcile_interval: Option<String>,

    /// Set up the node side of each secondary ENI (interface by MAC, MTU, up, route table, rule) and check the node's ip_forward and rp_filter (not ready while they are wrong). [default: true with ec2, false with static]
    #[arg(long, env = "ENIPOOL_ENI_HOST_SETUP")]
    pub eni_host_setup: Option<bool>,
    /// Network namespace (a path like /run/netns/node) to do the ENIs' node side in, instead of the daemon's own. [default: the daemon's]
    #[arg(long, env = "ENIPOOL_HOST_NETNS")]
    pub host_netns: Option<PathBuf>,
    #[arg(long, env = "ENIPOOL_NODE_RECONCILE_INTERVAL", help = with_default("How often leases are reconciled with the node after the start-up pass: a lease whose pod network namespace is gone is released (into cooldown); 0: only at start-up.", defaults::NODE_RECONCILE_INTERVAL))]
    pub node_reconcile_interval: Option<String>,
    #[arg(long, env = "ENIPOOL_NODE_RECONCILE_GRACE", help = with_default("Node reconciliation leaves leases younger than this alone (an ADD may be in flight).", defaults::NODE_RECONCILE_GRACE))]
    pub node_reconcile_grace: Option<String>,
    #[arg(long, env = "ENIPOOL_NODE_CLEANUP", help = with_default("Node reconciliation also removes host veths and policy rules of ours that no lease accounts for (in --host-netns, else the daemon's namespace).", defaults::NODE_CLEANUP))]
    pub node_cleanup: Option<bool>,
    #[arg(long, env = "AWS_VPC_ENI_MTU", help = with_default("MTU of secondary ENIs' interfaces (reference name).", defaults::ENI_MTU))]
    pub eni_mtu: Option<u32>,

    #[arg(long, env = "WARM_ENI_TARGET", help = with_default("Keep this many spare ENIs' worth of free IPs (reference name).", defaults::WARM_ENI_TARGET))]
    pub warm_eni_target: Option<u32>,
    /// Keep this many free IPs; overrides WARM_ENI_TARGET (reference name). [default: unset]
    #[arg(long, env = "WARM_IP_TARGET")]
    pub warm_ip_target: Option<u32>,
    /// Never hold fewer IPs than this (reference name). [default: unset]
    #[arg(long, env = "MINIMUM_IP_TARGET")]
    pub minimum_ip_target: Option<u32>,
    /// Cap on ENIs, below the instance type's limit (reference name). [default: the type's limit]
    #[arg(long, env = "MAX_ENI")]
    pub max_eni: Option<u32>,
    #[arg(long, env = "ENABLE_PREFIX_DELEGATION", help = with_default("Grow the pool by /28 prefixes (16 addresses per ENI slot; Nitro types only) instead of single IPs (reference name).", defaults::PREFIX_DELEGATION))]
    pub prefix_delegation: Option<bool>,
    /// With prefix delegation: keep this many wholly free prefixes; WARM_IP_TARGET and MINIMUM_IP_TARGET override it, met in whole prefixes (reference name). [default: 1 unless WARM_IP_TARGET or MINIMUM_IP_TARGET is set]
    #[arg(long, env = "WARM_PREFIX_TARGET")]
    pub warm_prefix_target: Option<u32>,
    /// The pool never grows beyond what this many pods need (kubelet's --max-pods; `enipoold max-pods` works it out). [default: unset]
    #[arg(long, env = "MAX_PODS")]
    pub max_pods: Option<u32>,
    #[arg(long, env = "ENIPOOL_PREFIX_FALLBACK_PAUSE", help = with_default("With prefix delegation: after EC2 has no free /28 left (InsufficientCidrBlocks), grow with single IPs for this long before trying prefixes again.", defaults::PREFIX_FALLBACK_PAUSE))]
    pub prefix_fallback_pause: Option<String>,
    #[arg(long, env = "ENIPOOL_PREFIX_BURST_WINDOW", help = with_default("With prefix delegation: growth within this long of the last growth asks for twice as many prefixes as the last did (pods are arriving in a burst), and nothing is given back meanwhile; 0 turns it off.", defaults::PREFIX_BURST_WINDOW))]
    pub prefix_burst_window: Option<String>,
    #[arg(long, env = "IP_COOLDOWN_PERIOD", help = with_default("How long a released IP cools down before reuse; bare numbers are seconds (reference name).", defaults::IP_COOLDOWN_PERIOD))]
    pub ip_cooldown_period: Option<String>,

    #[arg(long, env = "POD_MTU", help = with_default("MTU of pod interfaces (reference name).", defaults::POD_MTU))]
    pub pod_mtu: Option<u32>,
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXTERNALSNAT", help = with_default("Leave SNAT to something outside the node (reference name).", defaults::EXTERNAL_SNAT))]
    pub external_snat: Option<bool>,
    /// Comma-separated CIDRs never SNATed, besides the VPC's (reference name). [default: none]
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS")]
    pub exclude_snat_cidrs: Option<String>,
    #[arg(long, env = "AWS_VPC_K8S_CNI_RANDOMIZESNAT", help = with_default("SNAT port randomisation: prng (--random-fully), hashrandom (--random) or none (reference name).", defaults::RANDOMIZE_SNAT))]
    pub randomize_snat: Option<String>,

    #[arg(long, env = "ENIPOOL_POOL_TICK", help = with_default("How often the pool manager re-checks the pool without being woken.", defaults::POOL_TICK))]
    pub pool_tick: Option<String>,
    #[arg(long, env = "ENIPOOL_POOL_WAKE_DELAY", help = with_default("How long the pool manager waits, once an allocation or release wakes it, before it looks at the pool: a burst of pods is one look.", defaults::POOL_WAKE_DELAY))]
    pub pool_wake_delay: Option<String>,
    #[arg(long, env = "ENIPOOL_SHRINK_INTERVAL", help = with_default("Least time between two releases of excess IPs or ENIs.", defaults::SHRINK_INTERVAL))]
    pub shrink_interval: Option<String>,
    #[arg(long, env = "ENIPOOL_ALLOCATION_WAIT", help = with_default("How long an allocation waits for the pool to grow when no IP is free, before 503.", defaults::ALLOCATION_WAIT))]
    pub allocation_wait: Option<String>,
    #[arg(long, env = "ENIPOOL_CHECKPOINT_INTERVAL", help = with_default("How often the ledger checkpoints into sled and trims its log.", defaults::CHECKPOINT_INTERVAL))]
    pub checkpoint_interval: Option<String>,
    #[arg(long, env = "ENIPOOL_MAX_CONNECTIONS", help = with_default("Most connections each listener (socket, loopback TCP, metrics) holds open at once; past it the daemon stops accepting on that listener.", defaults::MAX_CONNECTIONS))]
    pub max_connections: Option<usize>,
    #[arg(long, env = "ENIPOOL_HEADER_READ_TIMEOUT", help = with_default("A connection must send a request's head within this.", defaults::HEADER_READ_TIMEOUT))]
    pub header_read_timeout: Option<String>,
    #[arg(long, env = "ENIPOOL_IDLE_TIMEOUT", help = with_default("A connection with no request in flight and nothing sent for this long is closed.", defaults::IDLE_TIMEOUT))]
    pub idle_timeout: Option<String>,
    #[arg(long, env = "ENIPOOL_SHUTDOWN_GRACE", help = with_default("How long SIGTERM waits for in-flight requests.", defaults::SHUTDOWN_GRACE))]
    pub shutdown_grace: Option<String>,
    #[arg(long, env = "ENIPOOL_LOG", help = with_default("Log filter (tracing EnvFilter syntax).", defaults::LOG))]
    pub log: Option<String>,
    /// Tests only: the ledger's write-ahead-log segment size in bytes, so a test can reach a
    /// segment switch (where a full disk shows) quickly. [default: 4 MiB]
    #[arg(long, hide = true)]
    pub wal_segment_bytes: Option<u64>,

    /// Directory the runtime reads CNI configs from (e.g. /etc/cni/net.d); once ready, the daemon installs --cni-conflist there, so the node turns Ready only when pods can get IPs. [default: none: nothing is written]
    #[arg(long, env = "ENIPOOL_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    #[arg(long, env = "ENIPOOL_CNI_CONFLIST", help = with_default("The conflist installed into --cni-conf-dir, under its own file name.", defaults::CNI_CONFLIST))]
    pub cni_conflist: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Static,
    Ec2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatRandomize {
    Prng,
    HashRandom,
    None,
}

impl SnatRandomize {
    pub fn as_str(self) -> &'static str {
        match self {
            SnatRandomize::Prng => "prng",
            SnatRandomize::HashRandom => "hashrandom",
            SnatRandomize::None => "none",
        }
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub provider: ProviderKind,
    pub instance_type: String,
    pub vpc_cidr: Ipv4Net,
    pub static_latency: Duration,
    /// The EC2 provider's settings, `--leaked-eni-age` included.
    pub ec2: Ec2Config,
    pub subnet_exhausted_pause: Duration,
    pub leaked_eni_interval: Duration,
    pub reconcile_interval: Duration,
    pub eni_host_setup: bool,
    pub host_netns: Option<PathBuf>,
    pub node_reconcile_interval: Duration,
    pub node_reconcile_grace: Duration,
    pub node_cleanup: bool,
    pub eni_mtu: u32,
    pub warm_eni_target: u32,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub max_eni: Option<u32>,
    pub prefix_delegation: bool,
    pub warm_prefix_target: Option<u32>,
    pub max_pods: Option<u32>,
    pub prefix_fallback_pause: Duration,
    pub prefix_burst_window: Duration,
    pub ip_cooldown: Duration,
    pub pod_mtu: u32,
    pub external_snat: bool,
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    pub randomize_snat: SnatRandomize,
    pub pool_tick: Duration,
    pub pool_wake_delay: Duration,
    pub shrink_interval: Duration,
    pub allocation_wait: Duration,
    pub checkpoint_interval: Duration,
    pub shutdown_grace: Duration,
    pub listener_limits: crate::serve::Limits,
    pub log: String,
    pub wal_segment_bytes: u64,
    /// Off when None (see `cni_conf`).
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_conflist: PathBuf,
}

/// The longest period a setting may give.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `30`, `1.5` (seconds), `250ms`, `30s`, `2m`, `1h`; at most a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 =
        number.trim().parse().map_err(|e| format!("{s:?} is not a duration (e.g. 30, 30s, 250ms): {e}"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{s:?} must be a non-negative duration"));
    }
    // Capped well below Duration's range: from_secs_f64 panics past it (1e23 seconds), and a
    // deadline `Instant::now() + d` panics past the clock's (about 9e18 seconds).
    let seconds = value * scale;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!("{s:?} is longer than a year, the longest period this daemon waits"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl DaemonArgs {
    /// Fills every field this one leaves unset from `other` (the file).
    fn or(self, other: DaemonArgs) -> DaemonArgs {
        macro_rules! pick {
            ($($f:ident),*) => { DaemonArgs { config: self.config, $($f: self.$f.or(other.$f)),* } };
        }
        pick!(
            socket,
            listen,
            metrics_listen,
            data_dir,
            provider,
            instance_type,
            vpc_cidr,
            static_latency,
            instance_id,
            imds_endpoint,
            ec2_endpoint,
            cluster_name,
            ec2_max_attempts,
            ec2_backoff_base,
            ec2_backoff_max,
            ec2_timeout,
            ec2_rate_limit,
            ec2_burst,
            ec2_detach_wait,
            ec2_consistency_window,
            subnet_exhausted_pause,
            subnet_discovery,
            subnet_skip,
            eni_security_groups,
            additional_eni_tags,
            custom_network,
            eni_config,
            leaked_eni_age,
            leaked_eni_interval,
            reconcile_interval,
            eni_host_setup,
            host_netns,
            node_reconcile_interval,
            node_reconcile_grace,
            node_cleanup,
            eni_mtu,
            warm_eni_target,
            warm_ip_target,
            minimum_ip_target,
            max_eni,
            prefix_delegation,
            warm_prefix_target,
            max_pods,
            prefix_fallback_pause,
            prefix_burst_window,
            ip_cooldown_period,
            pod_mtu,
            external_snat,
            exclude_snat_cidrs,
            randomize_snat,
            pool_tick,
            pool_wake_delay,
            shrink_interval,
            allocation_wait,
            checkpoint_interval,
            shutdown_grace,
            max_connections,
            header_read_timeout,
            idle_timeout,
            log,
            wal_segment_bytes,
            cni_conf_dir,
            cni_conflist
        )
    }

    /// Merges the file named by `--config` (if any) under these settings and applies defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let from_file = match &self.config {
            Some(path) => read_file(path)?,
            None => DaemonArgs::default(),
        };
        let a = self.or(from_file);
        let duration = |name: &str, v: Option<String>, default: &str| -> Result<Duration, ConfigError> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|reason| invalid(&format!("--{name}"), reason))
        };
        let addr = |name: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|e| {
                invalid(&format!("--{name}"), format!("{v:?} is not an address like 127.0.0.1:61779: {e}"))
            })
        };
        let listen = addr("listen", a.listen.as_deref().unwrap_or(defaults::LISTEN))?;
        let metrics_listen = match a.metrics_listen.as_deref().unwrap_or(defaults::METRICS_LISTEN) {
            "off" | "" => None,
            v => Some(addr("metrics-listen", v)?),
        };
        let provider = match a.provider.as_deref().unwrap_or(defaults::PROVIDER) {
            "static" => ProviderKind::Static,
            "ec2" if cfg!(feature = "ec2") => ProviderKind::Ec2,
            "ec2" => {
                return Err(invalid(
                    "--provider",
                    "this enipoold was built without the EC2 provider (cargo feature `ec2`, on by default; \
                     the image has it): build it without --no-default-features",
                ));
            }
            other => return Err(invalid("--provider", format!("{other:?} is not a provider (static or ec2)"))),
        };
        let vpc_cidr: Ipv4Net = a
            .vpc_cidr
            .as_deref()
            .unwrap_or(defaults::VPC_CIDR)
            .parse()
            .map_err(|e| invalid("--vpc-cidr", format!("not an IPv4 CIDR like 10.0.0.0/16: {e}")))?;
        if vpc_cidr.prefix_len() > 24 {
            return Err(invalid("--vpc-cidr", format!("{vpc_cidr} is too small; use a /24 or larger")));
        }
        let exclude_snat_cidrs = a
            .exclude_snat_cidrs
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|e| invalid("--exclude-snat-cidrs", format!("{s:?} is not an IPv4 CIDR: {e}"))))
            .collect::<Result<Vec<Ipv4Net>, ConfigError>>()?;
        let randomize_snat = match a.randomize_snat.as_deref().unwrap_or(defaults::RANDOMIZE_SNAT) {
            "prng" => SnatRandomize::Prng,
            "hashrandom" => SnatRandomize::HashRandom,
            "none" => SnatRandomize::None,
            other => {
                return Err(invalid("--randomize-snat", format!("{other:?} is not one of prng, hashrandom, none")));
            }
        };
        let pod_mtu = a.pod_mtu.unwrap_or(defaults::POD_MTU);
        if !(576..=9001).contains(&pod_mtu) {
            return Err(invalid("--pod-mtu", format!("{pod_mtu} is outside 576..=9001")));
        }
        if a.max_eni == Some(0) {
            return Err(invalid("--max-eni", "must be at least 1 (the primary ENI)"));
        }
        if a.max_pods == Some(0) {
            return Err(invalid("--max-pods", "must be at least 1"));
        }
        // The reference does not support zero targets in prefix mode: nothing would ever be warm.
        let ip_targets_set = a.warm_ip_target.is_some() || a.minimum_ip_target.is_some();
        let zero_targets = a.warm_prefix_target.unwrap_or(if ip_targets_set { 0 } else { 1 }) == 0
            && a.warm_ip_target.unwrap_or(0) == 0
            && a.minimum_ip_target.unwrap_or(0) == 0;
        if a.prefix_delegation == Some(true) && zero_targets {
            return Err(invalid(
                "--warm-prefix-target",
                "with prefix delegation, set one of WARM_PREFIX_TARGET, WARM_IP_TARGET, MINIMUM_IP_TARGET above zero (as the reference requires)",
            ));
        }
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let ec2_max_attempts = a.ec2_max_attempts.unwrap_or(defaults::EC2_MAX_ATTEMPTS);
        if ec2_max_attempts == 0 {
            return Err(invalid("--ec2-max-attempts", "must be at least 1"));
        }
        let ec2_rate_limit = a.ec2_rate_limit.unwrap_or(defaults::EC2_RATE_LIMIT);
        if !ec2_rate_limit.is_finite() || ec2_rate_limit < 0.0 {
            return Err(invalid(
                "--ec2-rate-limit",
                format!("{ec2_rate_limit} is not a rate (calls per second, 0 for none)"),
            ));
        }
        let ec2 = Ec2Config {
            instance_id: non_empty(a.instance_id),
            instance_type: non_empty(a.instance_type.clone()),
            imds_endpoint: a.imds_endpoint.unwrap_or_else(|| defaults::IMDS_ENDPOINT.into()),
            ec2_endpoint: non_empty(a.ec2_endpoint),
            cluster_name: non_empty(a.cluster_name),
            calls: CallPolicy {
                max_attempts: ec2_max_attempts,
                backoff_base: duration("ec2-backoff-base", a.ec2_backoff_base, defaults::EC2_BACKOFF_BASE)?,
                backoff_max: duration("ec2-backoff-max", a.ec2_backoff_max, defaults::EC2_BACKOFF_MAX)?,
                timeout: duration("ec2-timeout", a.ec2_timeout, defaults::EC2_TIMEOUT)?,
                rate_per_second: ec2_rate_limit,
                burst: a.ec2_burst.unwrap_or(defaults::EC2_BURST),
            },
            detach_wait: duration("ec2-detach-wait", a.ec2_detach_wait, defaults::EC2_DETACH_WAIT)?,
            leaked_eni_age: duration("leaked-eni-age", a.leaked_eni_age, defaults::LEAKED_ENI_AGE)?,
            consistency_window: duration(
                "ec2-consistency-window",
                a.ec2_consistency_window,
                defaults::EC2_CONSISTENCY_WINDOW,
            )?,
            subnet_discovery: a.subnet_discovery.unwrap_or(defaults::SUBNET_DISCOVERY),
            subnet_skip: duration("subnet-skip", a.subnet_skip, defaults::SUBNET_SKIP)?,
            security_groups: security_groups(a.eni_security_groups.as_deref())?,
            additional_tags: additional_eni_tags(a.additional_eni_tags.as_deref())?,
            custom_network: custom_network(
                a.custom_network.unwrap_or(defaults::CUSTOM_NETWORK),
                a.eni_config,
                &provider,
            )?,
        };
        let eni_mtu = a.eni_mtu.unwrap_or(defaults::ENI_MTU);
        if !(576..=9001).contains(&eni_mtu) {
            return Err(invalid("--eni-mtu", format!("{eni_mtu} is outside 576..=9001")));
        }
        if ec2.calls.timeout.is_zero() {
            return Err(invalid("--ec2-timeout", "must be more than 0"));
        }
        Ok(Config {
            socket: a.socket.unwrap_or_else(|| defaults::SOCKET.into()),
            listen,
            metrics_listen,
            data_dir: a.data_dir.unwrap_or_else(|| defaults::DATA_DIR.into()),
            provider,
            instance_type: a.instance_type.unwrap_or_else(|| "m5.large".into()),
            vpc_cidr,
            static_latency: duration("static-latency", a.static_latency, defaults::STATIC_LATENCY)?,
            ec2,
            subnet_exhausted_pause: duration(
                "subnet-exhausted-pause",
                a.subnet_exhausted_pause,
                defaults::SUBNET_EXHAUSTED_PAUSE,
            )?,
            leaked_eni_interval: duration("leaked-eni-interval", a.leaked_eni_interval, defaults::LEAKED_ENI_INTERVAL)?,
            reconcile_interval: duration("reconcile-interval", a.reconcile_interval, defaults::RECONCILE_INTERVAL)?,
            eni_host_setup: a.eni_host_setup.unwrap_or(provider == ProviderKind::Ec2),
            host_netns: a.host_netns,
            node_reconcile_interval: duration(
                "node-reconcile-interval",
                a.node_reconcile_interval,
                defaults::NODE_RECONCILE_INTERVAL,
            )?,
            node_reconcile_grace: duration(
                "node-reconcile-grace",
                a.node_reconcile_grace,
                defaults::NODE_RECONCILE_GRACE,
            )?,
            node_cleanup: a.node_cleanup.unwrap_or(defaults::NODE_CLEANUP),
            eni_mtu,
            warm_eni_target: a.warm_eni_target.unwrap_or(defaults::WARM_ENI_TARGET),
            warm_ip_target: a.warm_ip_target,
            minimum_ip_target: a.minimum_ip_target,
            max_eni: a.max_eni,
            prefix_delegation: a.prefix_delegation.unwrap_or(defaults::PREFIX_DELEGATION),
            warm_prefix_target: a.warm_prefix_target,
            max_pods: a.max_pods,
            prefix_fallback_pause: duration(
                "prefix-fallback-pause",
                a.prefix_fallback_pause,
                defaults::PREFIX_FALLBACK_PAUSE,
            )?,
            prefix_burst_window: duration("prefix-burst-window", a.prefix_burst_window, defaults::PREFIX_BURST_WINDOW)?,
            ip_cooldown: duration("ip-cooldown-period", a.ip_cooldown_period, defaults::IP_COOLDOWN_PERIOD)?,
            pod_mtu,
            external_snat: a.external_snat.unwrap_or(defaults::EXTERNAL_SNAT),
            exclude_snat_cidrs,
            randomize_snat,
            pool_tick: duration("pool-tick", a.pool_tick, defaults::POOL_TICK)?,
            pool_wake_delay: duration("pool-wake-delay", a.pool_wake_delay, defaults::POOL_WAKE_DELAY)?,
            shrink_interval: duration("shrink-interval", a.shrink_interval, defaults::SHRINK_INTERVAL)?,
            allocation_wait: duration("allocation-wait", a.allocation_wait, defaults::ALLOCATION_WAIT)?,
            checkpoint_interval: duration("checkpoint-interval", a.checkpoint_interval, defaults::CHECKPOINT_INTERVAL)?,
            shutdown_grace: duration("shutdown-grace", a.shutdown_grace, defaults::SHUTDOWN_GRACE)?,
            listener_limits: crate::serve::Limits {
                max_connections: a.max_connections.unwrap_or(defaults::MAX_CONNECTIONS).max(1),
                header_read_timeout: duration(
                    "header-read-timeout",
                    a.header_read_timeout,
                    defaults::HEADER_READ_TIMEOUT,
                )?,
                idle_timeout: duration("idle-timeout", a.idle_timeout, defaults::IDLE_TIMEOUT)?,
            },
            log: a.log.unwrap_or_else(|| defaults::LOG.into()),
            wal_segment_bytes: a.wal_segment_bytes.unwrap_or(4 << 20).max(4096),
            cni_conf_dir: a.cni_conf_dir.filter(|d| !d.as_os_str().is_empty()),
            cni_conflist: a.cni_conflist.unwrap_or_else(|| defaults::CNI_CONFLIST.into()),
        })
    }
}

fn read_file(path: &Path) -> Result<DaemonArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse { path: path.to_path_buf(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default the help text states as a value is the one `resolve()` uses: giving that
    /// value explicitly resolves to the same configuration as giving nothing. (docs/operator.md
    /// is checked against the help text in tests/operator_docs.rs.)
    #[test]
    fn every_default_the_help_states_is_the_one_resolve_uses() {
        use clap::{CommandFactory, Parser};
        // Defaults that are not one value: they depend on another setting or on the machine,
        // or mean "unset"; their own tests cover them.
        const NOT_A_VALUE: &[&str] = &[
            "config",
            "instance-type",
            "instance-id",
            "ec2-endpoint",
            "cluster-name",
            "eni-security-groups",
            "additional-eni-tags",
            "eni-host-setup",
            "host-netns",
            "warm-ip-target",
            "minimum-ip-target",
            "max-eni",
            "warm-prefix-target",
            "max-pods",
            "exclude-snat-cidrs",
            "cni-conf-dir",
            "wal-segment-bytes",
        ];
        let resolved = |argv: &[&str]| -> String {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            format!("{:?}", cli.daemon.resolve().unwrap_or_else(|e| panic!("{argv:?}: {e:#}")))
        };
        let nothing_given = resolved(&["enipoold"]);
        let mut checked = Vec::new();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some((_, default)) = help.rsplit_once("[default: ") else { continue };
            let default = default.trim_end_matches(']');
            if NOT_A_VALUE.contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            assert_eq!(
                resolved(&["enipoold", &flag, default]),
                nothing_given,
                "{flag}: the help says [default: {default}], resolve() uses another"
            );
            checked.push(long.to_string());
        }
        assert!(checked.len() >= 30, "checked only {checked:?}");
        // The exceptions are real flags (the list cannot hide a renamed one).
        let longs: Vec<String> =
            Cli::command().get_arguments().filter_map(|a| a.get_long().map(String::from)).collect();
        for name in NOT_A_VALUE {
            assert!(longs.iter().any(|l| l == name), "--{name} is not a flag any more");
        }
    }

    #[test]
    fn durations_accept_bare_seconds_and_units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        // Past Duration's range: an error, not a panic.
        assert!(parse_duration("100000000000000000000000").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        // Far below Duration's range, yet past what a deadline (Instant + d) can hold.
        assert!(parse_duration("10000000000000000000").is_err());
        assert!(parse_duration("8761h").is_err());
        assert_eq!(parse_duration("8760h").unwrap(), Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("enipool.toml");
        std::fs::write(&file, "warm-ip-target = 7\npool-tick = \"50ms\"\ninstance-type = \"c5.4xlarge\"\n").unwrap();
        let args = DaemonArgs { config: Some(file), warm_ip_target: Some(3), ..DaemonArgs::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.warm_ip_target, Some(3));
        assert_eq!(c.pool_tick, Duration::from_millis(50));
        assert_eq!(c.instance_type, "c5.4xlarge");
        assert_eq!(c.warm_eni_target, 1);
    }

    #[test]
    fn prefix_settings_and_what_is_refused() {
        let c = DaemonArgs::default().resolve().unwrap();
        assert!(!c.prefix_delegation);
        assert_eq!((c.warm_prefix_target, c.max_pods), (None, None));
        assert_eq!(c.prefix_fallback_pause, Duration::from_secs(120));
        let refused = |a: DaemonArgs, flag: &str| {
            let e = a.resolve().expect_err("refused");
            assert!(e.to_string().contains(flag), "{e}");
        };
        // Zero targets in prefix mode are refused, as the reference refuses them.
        let zero = DaemonArgs { prefix_delegation: Some(true), warm_prefix_target: Some(0), ..DaemonArgs::default() };
        refused(zero, "--warm-prefix-target");
        let with_ip = DaemonArgs {
            prefix_delegation: Some(true),
            warm_prefix_target: Some(0),
            minimum_ip_target: Some(20),
            ..DaemonArgs::default()
        };
        assert!(with_ip.resolve().is_ok(), "MINIMUM_IP_TARGET keeps something warm");
        // WARM_IP_TARGET=0 alone leaves nothing warm either (it overrides WARM_PREFIX_TARGET).
        let zero_ip = DaemonArgs { prefix_delegation: Some(true), warm_ip_target: Some(0), ..DaemonArgs::default() };
        refused(zero_ip, "--warm-prefix-target");
        refused(DaemonArgs { max_pods: Some(0), ..DaemonArgs::default() }, "--max-pods");
        let pause = DaemonArgs { prefix_fallback_pause: Some("never".into()), ..DaemonArgs::default() };
        refused(pause, "prefix-fallback-pause");
    }

    #[test]
    fn ec2_settings_defaults_and_precedence() {
        let c = DaemonArgs::default().resolve().unwrap();
        assert_eq!(c.subnet_exhausted_pause, Duration::from_secs(120));
        assert_eq!(c.ec2.leaked_eni_age, Duration::from_secs(300));
        assert_eq!(c.reconcile_interval, Duration::from_secs(60));
        assert_eq!(c.ec2.imds_endpoint, "http://169.254.169.254");
        assert_eq!((c.ec2.instance_id.clone(), c.ec2.instance_type.clone()), (None, None), "EC2 decides unless given");
        assert_eq!(c.ec2.calls.max_attempts, 8);
        assert_eq!(c.ec2.ec2_endpoint, None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("enipool.toml");
        std::fs::write(&file, "ec2-timeout = \"2s\"\ncluster-name = \"prod\"\nleaked-eni-age = \"1m\"\n").unwrap();
        let args = DaemonArgs {
            config: Some(file),
            cluster_name: Some("staging".into()),
            instance_id: Some("i-1".into()),
            ..DaemonArgs::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.ec2.cluster_name.as_deref(), Some("staging"));
        assert_eq!(c.ec2.calls.timeout, Duration::from_secs(2));
        assert_eq!(c.ec2.leaked_eni_age, Duration::from_secs(60));
        assert_eq!(c.ec2.instance_id.as_deref(), Some("i-1"));

        for bad in [
            DaemonArgs { ec2_max_attempts: Some(0), ..DaemonArgs::default() },
            DaemonArgs { ec2_rate_limit: Some(-1.0), ..DaemonArgs::default() },
            DaemonArgs { ec2_timeout: Some("0".into()), ..DaemonArgs::default() },
            DaemonArgs { subnet_exhausted_pause: Some("soon".into()), ..DaemonArgs::default() },
        ] {
            assert!(bad.resolve().is_err());
        }
    }

    #[test]
    fn where_new_enis_go_is_checked_before_start() {
        let c = DaemonArgs {
            eni_security_groups: Some(" sg-1, sg-2 ".into()),
            additional_eni_tags: Some(r#"{"team":"a","cost-centre":"42"}"#.into()),
            subnet_skip: Some("90s".into()),
            ..DaemonArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.ec2.security_groups, ["sg-1", "sg-2"]);
        assert_eq!(c.ec2.additional_tags.get("team").map(String::as_str), Some("a"));
        assert_eq!(c.ec2.subnet_skip, Duration::from_secs(90));
        assert!(c.ec2.subnet_discovery, "on by default, as in the reference since v1.18");
        for (args, says) in [
            (
                DaemonArgs { eni_security_groups: Some("default".into()), ..DaemonArgs::default() },
                "not a security group id",
            ),
            (DaemonArgs { additional_eni_tags: Some("team=a".into()), ..DaemonArgs::default() }, "JSON object"),
            (DaemonArgs { additional_eni_tags: Some(r#"{"n":1}"#.into()), ..DaemonArgs::default() }, "JSON object"),
            (
                DaemonArgs {
                    additional_eni_tags: Some(r#"{"enipool.io/instance-id":"x"}"#.into()),
                    ..DaemonArgs::default()
                },
                "are ours",
            ),
            (DaemonArgs { additional_eni_tags: Some(r#"{"aws:x":"y"}"#.into()), ..DaemonArgs::default() }, "reserves"),
        ] {
            let err = format!("{:#}", args.resolve().unwrap_err());
            assert!(err.contains(says), "{err}");
        }
        let many: std::collections::BTreeMap<String, String> = (0..48).map(|i| (format!("k{i}"), "v".into())).collect();
        let too_many =
            DaemonArgs { additional_eni_tags: Some(serde_json::to_string(&many).unwrap()), ..DaemonArgs::default() };
        assert!(format!("{:#}", too_many.resolve().unwrap_err()).contains("50 per ENI"));
    }

    #[test]
    fn custom_networking_takes_a_table_per_zone_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("enipool.toml");
        std::fs::write(
            &file,
            "provider = \"ec2\"\ncustom-network = true\n\
             [eni-config.us-east-1a]\nsubnet = \"subnet-a\"\nsecurity-groups = [\"sg-1\"]\n\
             [eni-config.us-east-1b]\nsubnet = \"subnet-b\"\n",
        )
        .unwrap();
        let c = DaemonArgs { config: Some(file.clone()), ..DaemonArgs::default() }.resolve().unwrap();
        let zones = c.ec2.custom_network.expect("on");
        assert_eq!(
            zones["us-east-1a"],
            ZoneEniConfig { subnet: "subnet-a".into(), security_groups: vec!["sg-1".into()] }
        );
        assert!(zones["us-east-1b"].security_groups.is_empty(), "the primary ENI's");
        // Off by default, whatever the file's tables say.
        std::fs::write(&file, "[eni-config.us-east-1a]\nsubnet = \"subnet-a\"\n").unwrap();
        assert!(
            DaemonArgs { config: Some(file.clone()), ..DaemonArgs::default() }
                .resolve()
                .unwrap()
                .ec2
                .custom_network
                .is_none()
        );
        for (text, says) in [
            ("provider = \"ec2\"\ncustom-network = true\n", "[eni-config.<zone>]"),
            ("custom-network = true\n[eni-config.z]\nsubnet = \"subnet-a\"\n", "--provider ec2"),
            ("provider = \"ec2\"\ncustom-network = true\n[eni-config.z]\nsubnet = \"sn-a\"\n", "not a subnet id"),
            (
                "provider = \"ec2\"\ncustom-network = true\n[eni-config.z]\nsubnet = \"subnet-a\"\nsecurity-groups = [\"x\"]\n",
                "security-groups",
            ),
            ("provider = \"ec2\"\ncustom-network = true\n[eni-config.z]\nsubnet = \"subnet-a\"\nsgs = 1\n", "sgs"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = DaemonArgs { config: Some(file.clone()), ..DaemonArgs::default() }.resolve().unwrap_err();
            assert!(format!("{err:#}").contains(says), "{text}: {err:#}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("enipool.toml");
        std::fs::write(&file, "warm-ip-targte = 7\n").unwrap();
        let err = DaemonArgs { config: Some(file), ..DaemonArgs::default() }.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("warm-ip-targte"), "{err:#}");
    }
}

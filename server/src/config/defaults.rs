//! Every default of a daemon setting that is one value, defined once: the `--help` text states
//! it ([`super::with_default`]) and `DaemonArgs::resolve` uses it. Defaults that depend on
//! another setting or on the machine are prose in the help and logic in `resolve`.

/// `--socket`.
pub const SOCKET: &str = super::DEFAULT_SOCKET;
/// `--listen`.
pub const LISTEN: &str = "127.0.0.1:61779";
/// `--metrics-listen`.
pub const METRICS_LISTEN: &str = "0.0.0.0:61778";
/// `--data-dir`.
pub const DATA_DIR: &str = "/var/lib/enipool";
/// `--provider`.
pub const PROVIDER: &str = "static";
/// `--vpc-cidr`.
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// `--static-latency`.
pub const STATIC_LATENCY: &str = "0";
/// `--imds-endpoint`.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// `--ec2-max-attempts`.
pub const EC2_MAX_ATTEMPTS: u32 = 8;
/// `--ec2-backoff-base`.
pub const EC2_BACKOFF_BASE: &str = "200ms";
/// `--ec2-backoff-max`.
pub const EC2_BACKOFF_MAX: &str = "20s";
/// `--ec2-timeout`.
pub const EC2_TIMEOUT: &str = "10s";
/// `--ec2-rate-limit`.
pub const EC2_RATE_LIMIT: f64 = 10.0;
/// `--ec2-burst`.
pub const EC2_BURST: u32 = 20;
/// `--ec2-detach-wait`.
pub const EC2_DETACH_WAIT: &str = "30s";
/// `--ec2-consistency-window`.
pub const EC2_CONSISTENCY_WINDOW: &str = "30s";
/// `--subnet-exhausted-pause`.
pub const SUBNET_EXHAUSTED_PAUSE: &str = "120s";
pub const SUBNET_DISCOVERY: bool = true;
pub const SUBNET_SKIP: &str = "5m";
pub const CUSTOM_NETWORK: bool = false;
/// `--leaked-eni-age`.
pub const LEAKED_ENI_AGE: &str = "5m";
/// `--leaked-eni-interval`.
pub const LEAKED_ENI_INTERVAL: &str = "10m";
/// `--reconcile-interval`.
pub const RECONCILE_INTERVAL: &str = "60s";
/// `--node-reconcile-interval`.
pub const NODE_RECONCILE_INTERVAL: &str = "60s";
/// `--node-reconcile-grace`.
pub const NODE_RECONCILE_GRACE: &str = "30s";
/// `--node-cleanup`.
pub const NODE_CLEANUP: bool = true;
/// `--eni-mtu`.
pub const ENI_MTU: u32 = 9001;
/// `--warm-eni-target`.
pub const WARM_ENI_TARGET: u32 = 1;
pub const PREFIX_DELEGATION: bool = false;
pub const PREFIX_FALLBACK_PAUSE: &str = "120s";
pub const PREFIX_BURST_WINDOW: &str = "5s";
/// `--ip-cooldown-period`.
pub const IP_COOLDOWN_PERIOD: &str = "30";
/// `--pod-mtu`.
pub const POD_MTU: u32 = 9001;
/// `--external-snat`.
pub const EXTERNAL_SNAT: bool = false;
/// `--randomize-snat`.
pub const RANDOMIZE_SNAT: &str = "prng";
/// `--pool-tick`.
pub const POOL_TICK: &str = "5s";
/// `--pool-wake-delay`: every allocation and release wakes the manager, whose look at the pool
/// walks the ledger under its lock; at thousands of looks a second perf put that walk
/// (`Ledger::stats`) at the top of the daemon's workers.
pub const POOL_WAKE_DELAY: &str = "5ms";
/// `--shrink-interval`.
pub const SHRINK_INTERVAL: &str = "30s";
/// `--allocation-wait`.
pub const ALLOCATION_WAIT: &str = "2s";
/// `--checkpoint-interval`.
pub const CHECKPOINT_INTERVAL: &str = "1s";
/// `--max-connections`.
pub const MAX_CONNECTIONS: usize = 256;
/// `--header-read-timeout`.
pub const HEADER_READ_TIMEOUT: &str = "10s";
/// `--idle-timeout`.
pub const IDLE_TIMEOUT: &str = "60s";
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: &str = "5s";
/// `--log`.
pub const LOG: &str = "info";
/// `--cni-conflist`.
pub const CNI_CONFLIST: &str = super::DEFAULT_CONFLIST;

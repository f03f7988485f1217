//! enipoold's EC2 provider: the node's ENIs and secondary IPs through aws-sdk-ec2.
//!
//! - Identity: with `instance_id` set, from DescribeInstances (+ DescribeSubnets, DescribeVpcs);
//!   else from the instance metadata service (IMDSv2) at `imds_endpoint`.
//! - Limits: the built-in table, else DescribeInstanceTypes. We enforce them ourselves.
//! - ENIs: DescribeNetworkInterfaces filtered by `attachment.instance-id`.
//! - Grow: AssignPrivateIpAddresses; CreateNetworkInterface -> AttachNetworkInterface ->
//!   ModifyNetworkInterfaceAttribute(DeleteOnTermination), rolled back on failure part-way.
//! - Shrink: UnassignPrivateIpAddresses; DetachNetworkInterface -> DeleteNetworkInterface (never
//!   the primary). A detached ENI whose delete failed is retried by the leaked-ENI sweep.
//! - Every call goes through [`call::Caller`]: rate limit, timeout, retries with backoff + jitter.
//!
//! All mutations and listings are serialised by one lock, so a listing never interleaves with a
//! change we are making. What we changed recently is overlaid on listings for
//! `consistency_window`, so an eventually consistent read neither re-adds an IP we removed nor
//! drops one we just added.

pub mod call;
pub mod imds;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterface, NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
};
use enipool_provider::{
    CandidateSubnet, Fill, InstanceInfo, Limits, Provider, ProviderEni, ProviderError, builtin_limits, instance_types,
};
use ipnet::Ipv4Net;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;
use tracing::{info, warn};

pub use call::{CallError, CallObserver, backoff};
/// The provider's settings live in `enipool-provider`, so the daemon's configuration holds them
/// without the SDK.
pub use enipool_provider::ec2_config::{CallPolicy, Ec2Config};

/// Tag keys on the ENIs we create.
pub const TAG_INSTANCE_ID: &str = "enipool.io/instance-id";
pub const TAG_CREATED_AT: &str = "enipool.io/created-at";
pub const TAG_CLUSTER: &str = "enipool.io/cluster-name";
/// Every tag key of ours starts with this; ADDITIONAL_ENI_TAGS may not.
pub const OWN_TAG_PREFIX: &str = "enipool.io/";
/// The description of every ENI we create: `enipool-<instance id>`.
pub const DESCRIPTION_PREFIX: &str = "enipool-";

/// Who we are, once `init` succeeded.
#[derive(Clone, Debug)]
struct Identity {
    instance_id: String,
    instance_type: String,
    limits: Limits,
    primary_eni_id: String,
    primary_ip: Ipv4Addr,
    subnet_id: String,
    security_groups: Vec<String>,
    vpc_id: String,
    vpc_cidrs: Vec<Ipv4Net>,
    /// The instance's availability zone, where EC2 or the metadata service says.
    zone: Option<String>,
}

#[derive(Debug)]
struct Ready {
    client: Client,
    id: Identity,
}

/// One of our ENIs as we last saw or made it.
#[derive(Clone, Debug)]
struct EniView {
    id: String,
    device_index: u32,
    attachment_id: Option<String>,
    subnet_id: String,
    primary_ip: Ipv4Addr,
    mac: Option<String>,
    secondaries: BTreeSet<Ipv4Addr>,
    prefixes: BTreeSet<Ipv4Net>,
}

impl EniView {
    /// Address slots taken beside the primary: each secondary IP and each prefix take one.
    fn slots_used(&self) -> u32 {
        (self.secondaries.len() + self.prefixes.len()) as u32
    }
}

#[derive(Debug, Default)]
struct Cache {
    loaded: bool,
    enis: BTreeMap<String, EniView>,
    subnets: HashMap<String, Ipv4Net>,
    zones: HashMap<String, String>,
    /// Subnets not tried for new ENIs until the instant, and why.
    skipped: HashMap<String, Skipped>,
    /// How many times each subnet refused a new ENI.
    refusals: HashMap<String, u64>,

    /// Our own recent changes, with when we made them.
    added_ips: HashMap<Ipv4Addr, (String, Instant)>,
    removed_ips: HashMap<Ipv4Addr, Instant>,
    added_prefixes: HashMap<Ipv4Net, (String, Instant)>,
    removed_prefixes: HashMap<Ipv4Net, Instant>,
    created_enis: HashMap<String, Instant>,
    deleted_enis: HashMap<String, Instant>,
    /// Detached by us, delete failed: the sweep retries these whatever their age.
    pending_delete: BTreeSet<String>,
}

/// A subnet that answered "exhausted" or "no free /28".
#[derive(Clone, Debug)]
struct Skipped {
    until: Instant,
    reason: String,
    /// It had no free /28 but may still have addresses: skipped for prefixes only.
    prefixes_only: bool,
}

impl Skipped {
    fn applies_to(&self, fill: Fill) -> bool {
        !self.prefixes_only || matches!(fill, Fill::Prefixes(_))
    }
}

/// The tag that makes a subnet a candidate for pod ENIs (`0`: not one), as the reference spells it.
pub const TAG_SUBNET_ROLE: &str = "kubernetes.io/role/cni";
/// A subnet tagged `kubernetes.io/cluster/<name>` belongs to that cluster (or clusters).
pub const TAG_SUBNET_CLUSTER_PREFIX: &str = "kubernetes.io/cluster/";

/// What one UnassignPrivateIpAddresses gives back.
#[derive(Clone, Copy)]
enum Unassigned<'a> {
    Ips(&'a [Ipv4Addr]),
    Prefixes(&'a [Ipv4Net]),
}

#[derive(Debug)]
pub struct Ec2Provider {
    config: Ec2Config,
    caller: call::Caller,
    ready: OnceCell<Ready>,
    cache: Mutex<Cache>,
    /// The last subnet discovery's answer, best first, with what was skipped and why: for
    /// `/v1/pool`, which must not wait for a create holding the cache.
    candidates: std::sync::Mutex<Vec<CandidateSubnet>>,
    /// Until when each shown skip holds: a skip that ended is not shown.
    shown_skips: std::sync::Mutex<HashMap<String, Instant>>,
}

fn failed(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(e.to_string())
}

/// Maps a call's error to what the pool manager acts on.
fn provider_error(e: CallError) -> ProviderError {
    match e.code.as_str() {
        "InsufficientFreeAddressesInSubnet" => ProviderError::SubnetExhausted(e.to_string()),
        // Free addresses may remain, only no aligned /28: prefixes cannot grow, addresses can.
        "InsufficientCidrBlocks" => ProviderError::NoCidrBlocks(e.to_string()),
        _ => ProviderError::Failed(e.to_string()),
    }
}

fn parse_ip(what: &str, v: Option<&str>) -> Result<Ipv4Addr, ProviderError> {
    let v = v.ok_or_else(|| failed(format!("EC2 gave no {what}")))?;
    v.parse().map_err(|_| failed(format!("EC2 gave {what} {v:?}, not an IPv4 address")))
}

fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

impl Ec2Provider {
    pub fn new(config: Ec2Config, observer: Option<Arc<dyn CallObserver>>) -> Ec2Provider {
        let caller = call::Caller::new(config.calls.clone(), observer);
        Ec2Provider {
            config,
            caller,
            ready: OnceCell::new(),
            cache: Mutex::new(Cache::default()),
            candidates: std::sync::Mutex::new(Vec::new()),
            shown_skips: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn ready(&self) -> Result<&Ready, ProviderError> {
        self.ready.get().ok_or_else(|| failed("the EC2 provider is not initialised yet"))
    }

    async fn client(&self, region_hint: Option<String>) -> Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = &self.config.ec2_endpoint {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_ec2::config::Builder::from(&sdk)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(self.config.calls.timeout)
                    .build(),
            );
        if sdk.region().is_none()
            && let Some(r) = region_hint
        {
            b = b.region(aws_sdk_ec2::config::Region::new(r));
        }
        Client::from_conf(b.build())
    }

    async fn identify(&self) -> Result<Ready, ProviderError> {
        let c = &self.config;
        match &c.instance_id {
            Some(instance_id) => {
                let client = self.client(None).await;
                let id = self.describe_identity(&client, instance_id).await?;
                Ok(Ready { client, id })
            }
            None => {
                let m = imds::identity(&c.imds_endpoint, c.calls.timeout).await.map_err(failed)?;
                let client = self.client(m.region.clone()).await;
                let instance_type = c.instance_type.clone().unwrap_or(m.instance_type);
                let limits = self.limits(&client, &instance_type).await?;
                self.cache.lock().await.subnets.insert(m.subnet_id.clone(), m.subnet_cidr);
                let zone = match m.zone {
                    Some(z) => Some(z),
                    // The node's subnet is in the instance's zone.
                    None => self.subnet_zone(&client, &m.subnet_id).await?,
                };
                let id = Identity {
                    instance_id: m.instance_id,
                    instance_type,
                    limits,
                    primary_eni_id: m.primary_eni_id,
                    primary_ip: m.primary_ip,
                    subnet_id: m.subnet_id,
                    security_groups: m.security_groups,
                    vpc_id: m.vpc_id,
                    vpc_cidrs: m.vpc_cidrs,
                    zone,
                };
                Ok(Ready { client, id })
            }
        }
    }

    async fn describe_identity(&self, client: &Client, instance_id: &str) -> Result<Identity, ProviderError> {
        let out = self
            .caller
            .call("DescribeInstances", || client.describe_instances().instance_ids(instance_id).send())
            .await
            .map_err(provider_error)?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| failed(format!("DescribeInstances does not know {instance_id}")))?;
        let instance_type = match &self.config.instance_type {
            Some(t) => t.clone(),
            None => instance
                .instance_type()
                .map(|t| t.as_str().to_string())
                .ok_or_else(|| failed(format!("{instance_id} has no instance type")))?,
        };
        let primary = instance
            .network_interfaces()
            .iter()
            .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .ok_or_else(|| failed(format!("{instance_id} has no ENI at device index 0")))?;
        let primary_eni_id =
            primary.network_interface_id().ok_or_else(|| failed("the primary ENI has no id"))?.to_string();
        let primary_ip = parse_ip("primary private IP", primary.private_ip_address())?;
        let subnet_id = primary
            .subnet_id()
            .or(instance.subnet_id())
            .ok_or_else(|| failed(format!("{instance_id} has no subnet")))?
            .to_string();
        let vpc_id = primary
            .vpc_id()
            .or(instance.vpc_id())
            .ok_or_else(|| failed(format!("{instance_id} has no VPC")))?
            .to_string();
        let security_groups = primary.groups().iter().filter_map(|g| g.group_id().map(String::from)).collect();
        let vpcs = self
            .caller
            .call("DescribeVpcs", || client.describe_vpcs().vpc_ids(&vpc_id).send())
            .await
            .map_err(provider_error)?;
        let mut vpc_cidrs = Vec::new();
        for vpc in vpcs.vpcs() {
            let associated = vpc.cidr_block_association_set().iter().filter_map(|a| a.cidr_block());
            for cidr in vpc.cidr_block().into_iter().chain(associated) {
                if let Ok(net) = cidr.parse::<Ipv4Net>()
                    && !vpc_cidrs.contains(&net)
                {
                    vpc_cidrs.push(net);
                }
            }
        }
        if vpc_cidrs.is_empty() {
            return Err(failed(format!("DescribeVpcs gave no IPv4 CIDR for {vpc_id}")));
        }
        self.subnet_cidr(client, &subnet_id).await?;
        let limits = self.limits(client, &instance_type).await?;
        let zone = instance.placement().and_then(|p| p.availability_zone()).map(String::from);
        Ok(Identity {
            zone,
            instance_id: instance_id.to_string(),
            instance_type,
            limits,
            primary_eni_id,
            primary_ip,
            subnet_id,
            security_groups,
            vpc_id,
            vpc_cidrs,
        })
    }

    async fn limits(&self, client: &Client, instance_type: &str) -> Result<Limits, ProviderError> {
        if let Some(l) = builtin_limits(instance_type) {
            return Ok(l);
        }
        let out = self
            .caller
            .call("DescribeInstanceTypes", || {
                client.describe_instance_types().instance_types(InstanceType::from(instance_type)).send()
            })
            .await
            .map_err(provider_error)?;
        let info = out
            .instance_types()
            .iter()
            .find_map(|t| t.network_info())
            .ok_or_else(|| failed(format!("DescribeInstanceTypes does not know {instance_type}")))?;
        match (info.maximum_network_interfaces(), info.ipv4_addresses_per_interface()) {
            (Some(e), Some(i)) if e > 0 && i > 0 => Ok(Limits { max_enis: e as u32, ipv4_per_eni: i as u32 }),
            other => Err(failed(format!("DescribeInstanceTypes gave no usable limits for {instance_type}: {other:?}"))),
        }
    }

    /// The availability zone of a subnet, from DescribeSubnets.
    async fn subnet_zone(&self, client: &Client, subnet_id: &str) -> Result<Option<String>, ProviderError> {
        let out = self
            .caller
            .call("DescribeSubnets", || client.describe_subnets().subnet_ids(subnet_id).send())
            .await
            .map_err(provider_error)?;
        let zone = out.subnets().first().and_then(|s| s.availability_zone()).map(String::from);
        if let Some(z) = &zone {
            self.cache.lock().await.zones.insert(subnet_id.to_string(), z.clone());
        }
        Ok(zone)
    }

    /// The CIDR of a subnet, from the cache or DescribeSubnets.
    async fn subnet_cidr(&self, client: &Client, subnet_id: &str) -> Result<Ipv4Net, ProviderError> {
        if let Some(c) = self.cache.lock().await.subnets.get(subnet_id) {
            return Ok(*c);
        }
        let out = self
            .caller
            .call("DescribeSubnets", || client.describe_subnets().subnet_ids(subnet_id).send())
            .await
            .map_err(provider_error)?;
        let subnet = out.subnets().first();
        let cidr = subnet
            .and_then(|s| s.cidr_block())
            .ok_or_else(|| failed(format!("DescribeSubnets gave no CIDR for {subnet_id}")))?;
        let net: Ipv4Net = cidr.parse().map_err(|_| failed(format!("subnet {subnet_id} has CIDR {cidr:?}")))?;
        let mut cache = self.cache.lock().await;
        cache.subnets.insert(subnet_id.to_string(), net);
        if let Some(zone) = subnet.and_then(|s| s.availability_zone()) {
            cache.zones.insert(subnet_id.to_string(), zone.to_string());
        }
        Ok(net)
    }

    /// Every ENI attached to the instance, as EC2 says now.
    async fn describe_attached(&self, r: &Ready) -> Result<Vec<EniView>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .caller
                .call("DescribeNetworkInterfaces", || {
                    r.client
                        .describe_network_interfaces()
                        .filters(Filter::builder().name("attachment.instance-id").values(&r.id.instance_id).build())
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(provider_error)?;
            for n in page.network_interfaces() {
                out.push(view(n)?);
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Lists, overlays our recent changes, and replaces the cache with the result.
    async fn refresh(&self, r: &Ready, cache: &mut Cache) -> Result<(), ProviderError> {
        let described = self.describe_attached(r).await?;
        let window = self.config.consistency_window;
        let now = Instant::now();
        cache.added_ips.retain(|_, (_, at)| now.duration_since(*at) < window);
        cache.removed_ips.retain(|_, at| now.duration_since(*at) < window);
        cache.added_prefixes.retain(|_, (_, at)| now.duration_since(*at) < window);
        cache.removed_prefixes.retain(|_, at| now.duration_since(*at) < window);
        cache.created_enis.retain(|_, at| now.duration_since(*at) < window);
        cache.deleted_enis.retain(|_, at| now.duration_since(*at) < window);
        let mut enis: BTreeMap<String, EniView> = BTreeMap::new();
        for mut e in described {
            if cache.deleted_enis.contains_key(&e.id) {
                continue;
            }
            e.secondaries.retain(|ip| !cache.removed_ips.contains_key(ip));
            e.prefixes.retain(|p| !cache.removed_prefixes.contains_key(p));
            enis.insert(e.id.clone(), e);
        }
        for id in cache.created_enis.keys() {
            if !enis.contains_key(id)
                && let Some(e) = cache.enis.get(id)
            {
                enis.insert(id.clone(), e.clone());
            }
        }
        for (ip, (eni, _)) in &cache.added_ips {
            if let Some(e) = enis.get_mut(eni) {
                e.secondaries.insert(*ip);
            }
        }
        for (prefix, (eni, _)) in &cache.added_prefixes {
            if let Some(e) = enis.get_mut(eni) {
                e.prefixes.insert(*prefix);
            }
        }
        cache.enis = enis;
        cache.loaded = true;
        Ok(())
    }

    async fn to_provider(&self, r: &Ready, e: &EniView) -> Result<ProviderEni, ProviderError> {
        let subnet = self.subnet_cidr(&r.client, &e.subnet_id).await?;
        Ok(ProviderEni {
            id: e.id.clone(),
            device_number: e.device_index,
            primary: e.id == r.id.primary_eni_id,
            subnet_cidr: subnet,
            subnet_gateway: gateway(subnet),
            subnet_id: Some(e.subnet_id.clone()),
            zone: self.cache.lock().await.zones.get(&e.subnet_id).cloned(),
            primary_ip: e.primary_ip,
            secondary_ips: e.secondaries.iter().copied().collect(),
            prefixes: e.prefixes.iter().copied().collect(),
            mac: e.mac.clone(),
        })
    }

    async fn ensure_loaded(&self, r: &Ready, cache: &mut Cache) -> Result<(), ProviderError> {
        if !cache.loaded {
            self.refresh(r, cache).await?;
        }
        Ok(())
    }

    /// Detaches (if attached) and deletes an ENI; a delete refused because the detach is still
    /// in progress is retried for `detach_wait`.
    async fn detach_and_delete(&self, r: &Ready, eni_id: &str, attachment_id: Option<&str>) -> Result<(), CallError> {
        if let Some(att) = attachment_id {
            let detached = self
                .caller
                .call("DetachNetworkInterface", || r.client.detach_network_interface().attachment_id(att).send())
                .await;
            if let Err(e) = detached
                && !e.code.starts_with("InvalidAttachmentID.NotFound")
            {
                return Err(e);
            }
        }
        self.delete(r, eni_id).await
    }

    async fn delete(&self, r: &Ready, eni_id: &str) -> Result<(), CallError> {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            let outcome = self
                .caller
                .call("DeleteNetworkInterface", || {
                    r.client.delete_network_interface().network_interface_id(eni_id).send()
                })
                .await;
            match outcome {
                Ok(_) => return Ok(()),
                Err(e) if e.code == "InvalidNetworkInterfaceID.NotFound" => return Ok(()),
                Err(e) if e.code == "InvalidNetworkInterface.InUse" && started.elapsed() < self.config.detach_wait => {
                    retry += 1;
                    tokio::time::sleep(backoff(&self.caller.policy, retry)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// UnassignPrivateIpAddresses for secondary IPs or prefixes of one ENI; what went is taken
    /// off the cache and overlaid as removed for the consistency window.
    async fn unassign(&self, eni_id: &str, what: Unassigned<'_>) -> Result<(), ProviderError> {
        let r = self.ready()?;
        let list: Vec<String> = match what {
            Unassigned::Ips(ips) => ips.iter().map(|ip| ip.to_string()).collect(),
            Unassigned::Prefixes(prefixes) => prefixes.iter().map(|p| p.to_string()).collect(),
        };
        if list.is_empty() {
            return Ok(());
        }
        let mut cache = self.cache.lock().await;
        self.caller
            .call("UnassignPrivateIpAddresses", || {
                let request = r.client.unassign_private_ip_addresses().network_interface_id(eni_id);
                match what {
                    Unassigned::Ips(_) => request.set_private_ip_addresses(Some(list.clone())),
                    Unassigned::Prefixes(_) => request.set_ipv4_prefixes(Some(list.clone())),
                }
                .send()
            })
            .await
            .map_err(provider_error)?;
        let now = Instant::now();
        let cache = &mut *cache;
        match what {
            Unassigned::Ips(ips) => {
                for ip in ips {
                    if let Some(e) = cache.enis.get_mut(eni_id) {
                        e.secondaries.remove(ip);
                    }
                    cache.added_ips.remove(ip);
                    cache.removed_ips.insert(*ip, now);
                }
            }
            Unassigned::Prefixes(prefixes) => {
                for p in prefixes {
                    if let Some(e) = cache.enis.get_mut(eni_id) {
                        e.prefixes.remove(p);
                    }
                    cache.added_prefixes.remove(p);
                    cache.removed_prefixes.insert(*p, now);
                }
            }
        }
        Ok(())
    }

    /// Where a new ENI with `fill` may go, best first, skipped ones marked (and not tried).
    /// Without subnet discovery: the node's subnet, with no call. With it: one
    /// DescribeSubnets of the node's VPC and zone per new ENI; the candidates are the node's
    /// subnet and those tagged `kubernetes.io/role/cni` (not `0`) that no other cluster's tag
    /// claims, most free addresses first.
    async fn candidates(
        &self,
        r: &Ready,
        cache: &mut Cache,
        fill: Fill,
    ) -> Result<Vec<CandidateSubnet>, ProviderError> {
        let now = Instant::now();
        cache.skipped.retain(|_, s| s.until > now);
        let node_subnet = &r.id.subnet_id;
        let skipped_why =
            |cache: &Cache, id: &str| cache.skipped.get(id).filter(|s| s.applies_to(fill)).map(|s| s.reason.clone());
        if let Some(zones) = &self.config.custom_network {
            let zone = r.id.zone.clone().or_else(|| cache.zones.get(node_subnet).cloned()).unwrap_or_default();
            let choice = zones.get(&zone).ok_or_else(|| {
                failed(format!(
                    "custom networking: the config file has no [eni-config.{zone}] table for this instance's zone"
                ))
            })?;
            let out = self
                .caller
                .call("DescribeSubnets", || r.client.describe_subnets().subnet_ids(&choice.subnet).send())
                .await
                .map_err(provider_error)?;
            let sn = out
                .subnets()
                .first()
                .ok_or_else(|| failed(format!("custom networking: EC2 does not know {}", choice.subnet)))?;
            let cidr: Ipv4Net = sn
                .cidr_block()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| failed(format!("DescribeSubnets gave no CIDR for {}", choice.subnet)))?;
            let sn_zone = sn.availability_zone().unwrap_or_default().to_string();
            if sn_zone != zone {
                return Err(failed(format!(
                    "custom networking: [eni-config.{zone}] names {}, which is in {sn_zone}: an ENI attaches only in its instance's zone",
                    choice.subnet
                )));
            }
            cache.subnets.insert(choice.subnet.clone(), cidr);
            cache.zones.insert(choice.subnet.clone(), sn_zone.clone());
            let only = vec![CandidateSubnet {
                id: choice.subnet.clone(),
                cidr,
                zone: sn_zone,
                free: sn.available_ip_address_count().unwrap_or(0).max(0) as u64,
                node: choice.subnet == *node_subnet,
                skipped: skipped_why(cache, &choice.subnet),
                refusals: cache.refusals.get(&choice.subnet).copied().unwrap_or(0),
            }];
            *self.candidates.lock().unwrap_or_else(|e| e.into_inner()) = only.clone();
            return Ok(only);
        }
        if !self.config.subnet_discovery {
            let cidr = cache.subnets.get(node_subnet).copied().unwrap_or_default();
            let only = vec![CandidateSubnet {
                id: node_subnet.clone(),
                cidr,
                zone: cache.zones.get(node_subnet).cloned().or(r.id.zone.clone()).unwrap_or_default(),
                free: 0,
                node: true,
                skipped: skipped_why(cache, node_subnet),
                refusals: cache.refusals.get(node_subnet).copied().unwrap_or(0),
            }];
            *self.candidates.lock().unwrap_or_else(|e| e.into_inner()) = only.clone();
            return Ok(only);
        }
        let zone = r.id.zone.clone().or_else(|| cache.zones.get(node_subnet).cloned());
        let mut filters = vec![Filter::builder().name("vpc-id").values(&r.id.vpc_id).build()];
        if let Some(z) = &zone {
            filters.push(Filter::builder().name("availability-zone").values(z).build());
        }
        let mut described = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .caller
                .call("DescribeSubnets", || {
                    r.client.describe_subnets().set_filters(Some(filters.clone())).set_next_token(token.clone()).send()
                })
                .await
                .map_err(provider_error)?;
            described.extend(page.subnets().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        let zone = zone.or_else(|| {
            described
                .iter()
                .find(|s| s.subnet_id() == Some(node_subnet))
                .and_then(|s| s.availability_zone())
                .map(String::from)
        });
        let mut out = Vec::new();
        for sn in &described {
            let (Some(id), Some(cidr)) = (sn.subnet_id(), sn.cidr_block().and_then(|c| c.parse::<Ipv4Net>().ok()))
            else {
                continue;
            };
            let node = id == node_subnet;
            if !node && !self.is_pod_subnet(sn, zone.as_deref()) {
                continue;
            }
            cache.subnets.insert(id.to_string(), cidr);
            let sn_zone = sn.availability_zone().unwrap_or_default().to_string();
            cache.zones.insert(id.to_string(), sn_zone.clone());
            out.push(CandidateSubnet {
                id: id.to_string(),
                cidr,
                zone: sn_zone,
                free: sn.available_ip_address_count().unwrap_or(0).max(0) as u64,
                node,
                skipped: skipped_why(cache, id),
                refusals: cache.refusals.get(id).copied().unwrap_or(0),
            });
        }
        if !out.iter().any(|c| c.node) {
            // Not in the answer (described before it was available, say): still a candidate.
            out.push(CandidateSubnet {
                id: node_subnet.clone(),
                cidr: cache.subnets.get(node_subnet).copied().unwrap_or_default(),
                zone: zone.clone().unwrap_or_default(),
                free: 0,
                node: true,
                skipped: skipped_why(cache, node_subnet),
                refusals: cache.refusals.get(node_subnet).copied().unwrap_or(0),
            });
        }
        // Most free first; on a tie, the node's own subnet.
        out.sort_by(|a, b| b.free.cmp(&a.free).then(b.node.cmp(&a.node)).then(a.id.cmp(&b.id)));
        *self.candidates.lock().unwrap_or_else(|e| e.into_inner()) = out.clone();
        Ok(out)
    }

    /// A subnet (not the node's) that pod ENIs may use: in the node's zone, tagged
    /// `kubernetes.io/role/cni` with any value but `0`, and claimed by no other cluster
    /// (`kubernetes.io/cluster/<name>` tags name the clusters it serves; ours must be among
    /// them when there are any, so a node without a cluster name uses no claimed subnet).
    fn is_pod_subnet(&self, sn: &aws_sdk_ec2::types::Subnet, zone: Option<&str>) -> bool {
        if zone.is_some_and(|z| sn.availability_zone() != Some(z)) {
            return false;
        }
        if sn.state().is_some_and(|st| st.as_str() != "available") {
            return false;
        }
        let tag = |key: &str| sn.tags().iter().find(|t| t.key() == Some(key)).map(|t| t.value().unwrap_or_default());
        match tag(TAG_SUBNET_ROLE) {
            None | Some("0") => return false,
            Some(_) => {}
        }
        let mut clusters = sn.tags().iter().filter_map(|t| t.key()?.strip_prefix(TAG_SUBNET_CLUSTER_PREFIX)).peekable();
        if clusters.peek().is_none() {
            return true;
        }
        let ours = self.config.cluster_name.as_deref();
        clusters.any(|c| Some(c) == ours)
    }

    /// Skips a subnet for new ENIs for `--subnet-skip` because of `why` (for prefixes only, if
    /// it had addresses but no free /28), and shows it so, with its refusal count if it changed.
    fn skip_subnet(
        &self,
        cache: &mut Cache,
        subnet_id: &str,
        why: &ProviderError,
        prefixes_only: bool,
        refusals: Option<u64>,
    ) {
        let until = Instant::now() + self.config.subnet_skip;
        let at = DateTime::from(SystemTime::now()).fmt(DateTimeFormat::DateTime).unwrap_or_default();
        let reason = format!("{why} (at {at})");
        let mut shown = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = shown.iter_mut().find(|c| c.id == subnet_id) {
            c.skipped = Some(reason.clone());
            c.refusals = refusals.unwrap_or(c.refusals);
        }
        drop(shown);
        self.shown_skips.lock().unwrap_or_else(|e| e.into_inner()).insert(subnet_id.to_string(), until);
        cache.skipped.insert(subnet_id.to_string(), Skipped { until, reason, prefixes_only });
    }

    /// Creates, attaches and sets up an ENI with `fill` in `subnet_id`; rolls back what it made
    /// if a later step fails.
    async fn create_in(
        &self,
        r: &Ready,
        cache: &mut Cache,
        subnet_id: &str,
        device_number: u32,
        fill: Fill,
    ) -> Result<EniView, ProviderError> {
        let description = format!("{DESCRIPTION_PREFIX}{}", r.id.instance_id);
        let tags = self.tags(r);
        let groups = self.security_groups_for(r, subnet_id);
        let (secondary_ips, prefixes) = match fill {
            Fill::Ips(0) | Fill::Prefixes(0) => (None, None),
            Fill::Ips(n) => (Some(n as i32), None),
            Fill::Prefixes(n) => (None, Some(n as i32)),
        };
        let created = self
            .caller
            .call("CreateNetworkInterface", || {
                r.client
                    .create_network_interface()
                    .set_secondary_private_ip_address_count(secondary_ips)
                    .set_ipv4_prefix_count(prefixes)
                    .subnet_id(subnet_id)
                    .set_groups(Some(groups.clone()))
                    .description(&description)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::NetworkInterface)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    )
                    .send()
            })
            .await
            .map_err(provider_error)?;
        let eni = created.network_interface().ok_or_else(|| failed("CreateNetworkInterface returned no ENI"))?;
        let mut v = view(eni)?;
        let eni_id = v.id.clone();
        let attached = self
            .caller
            .call("AttachNetworkInterface", || {
                r.client
                    .attach_network_interface()
                    .network_interface_id(&eni_id)
                    .instance_id(&r.id.instance_id)
                    .device_index(device_number as i32)
                    .send()
            })
            .await;
        let attachment_id = match attached {
            Ok(a) => a.attachment_id().map(String::from),
            Err(e) => {
                // Roll back: an ENI that never attached is deleted now.
                if let Err(del) = self.delete(r, &eni_id).await {
                    warn!(eni = %eni_id, error = %del, "could not delete an ENI that failed to attach; the sweep will");
                    cache.pending_delete.insert(eni_id.clone());
                }
                return Err(provider_error(e));
            }
        };
        let Some(attachment_id) = attachment_id else {
            let _ = self.detach_and_delete(r, &eni_id, None).await;
            return Err(failed(format!("AttachNetworkInterface gave no attachment id for {eni_id}")));
        };
        let modified = self
            .caller
            .call("ModifyNetworkInterfaceAttribute", || {
                r.client
                    .modify_network_interface_attribute()
                    .network_interface_id(&eni_id)
                    .attachment(
                        NetworkInterfaceAttachmentChanges::builder()
                            .attachment_id(&attachment_id)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .send()
            })
            .await;
        if let Err(e) = modified {
            if let Err(del) = self.detach_and_delete(r, &eni_id, Some(&attachment_id)).await {
                warn!(eni = %eni_id, error = %del, "could not roll back an ENI; the sweep will delete it");
                cache.pending_delete.insert(eni_id.clone());
            }
            return Err(provider_error(e));
        }
        v.device_index = device_number;
        v.attachment_id = Some(attachment_id);
        let now = Instant::now();
        // A listing soon after may show the ENI without what it was created with.
        for ip in &v.secondaries {
            cache.added_ips.insert(*ip, (eni_id.clone(), now));
        }
        for p in &v.prefixes {
            cache.added_prefixes.insert(*p, (eni_id.clone(), now));
        }
        cache.created_enis.insert(eni_id.clone(), now);
        cache.enis.insert(eni_id.clone(), v.clone());
        Ok(v)
    }

    /// The security groups of a new ENI in `subnet_id`: its zone's under custom networking,
    /// else `--eni-security-groups`, else the primary ENI's.
    fn security_groups_for(&self, r: &Ready, subnet_id: &str) -> Vec<String> {
        let custom = self
            .config
            .custom_network
            .as_ref()
            .and_then(|zones| zones.values().find(|z| z.subnet == subnet_id && !z.security_groups.is_empty()));
        match custom {
            Some(z) => z.security_groups.clone(),
            None if !self.config.security_groups.is_empty() => self.config.security_groups.clone(),
            None => r.id.security_groups.clone(),
        }
    }

    /// EC2 delegates prefixes to Nitro types only: refused here rather than by EC2.
    fn check_nitro(&self, r: &Ready) -> Result<(), ProviderError> {
        if instance_types::builtin_type(&r.id.instance_type).is_some_and(|t| !t.nitro) {
            return Err(failed(format!(
                "{} is not a Nitro instance type: EC2 delegates prefixes to Nitro types only",
                r.id.instance_type
            )));
        }
        Ok(())
    }

    /// Our tags, then ADDITIONAL_ENI_TAGS except any of ours (the configuration refuses those
    /// already; this keeps the sweep's and the IAM policy's tags ours whatever it is given).
    fn tags(&self, r: &Ready) -> Vec<Tag> {
        let now = DateTime::from(SystemTime::now()).fmt(DateTimeFormat::DateTime).unwrap_or_default();
        let mut tags = vec![
            Tag::builder().key(TAG_INSTANCE_ID).value(&r.id.instance_id).build(),
            Tag::builder().key(TAG_CREATED_AT).value(now).build(),
        ];
        if let Some(c) = &self.config.cluster_name {
            tags.push(Tag::builder().key(TAG_CLUSTER).value(c).build());
        }
        for (k, v) in &self.config.additional_tags {
            if !k.starts_with(OWN_TAG_PREFIX) {
                tags.push(Tag::builder().key(k).value(v).build());
            }
        }
        tags
    }
}

/// The error when no candidate subnet took a new ENI: "no free /28" if any subnet may still
/// have single addresses (so the pool falls back to them), else "exhausted", naming each subnet
/// and why.
fn no_subnet_fits(candidates: &[CandidateSubnet], refused: Vec<ProviderError>, blocks_only: bool) -> ProviderError {
    let why: Vec<String> =
        candidates.iter().map(|c| format!("{} ({})", c.id, c.skipped.as_deref().unwrap_or("not tried"))).collect();
    let no_blocks = refused.iter().any(|e| matches!(e, ProviderError::NoCidrBlocks(_))) || blocks_only;
    let text = format!("no candidate subnet took a new ENI: {}", why.join(", "));
    if no_blocks { ProviderError::NoCidrBlocks(text) } else { ProviderError::SubnetExhausted(text) }
}

/// Our view of one described ENI.
fn view(n: &NetworkInterface) -> Result<EniView, ProviderError> {
    let id = n.network_interface_id().ok_or_else(|| failed("EC2 listed an ENI without an id"))?.to_string();
    let primary_ip = parse_ip(&format!("primary IP of {id}"), n.private_ip_address())?;
    let mut secondaries = BTreeSet::new();
    for a in n.private_ip_addresses() {
        let ip = parse_ip(&format!("private IP of {id}"), a.private_ip_address())?;
        if a.primary() != Some(true) && ip != primary_ip {
            secondaries.insert(ip);
        }
    }
    let mut prefixes = BTreeSet::new();
    for p in n.ipv4_prefixes() {
        let text = p.ipv4_prefix().unwrap_or_default();
        prefixes.insert(text.parse().map_err(|e| failed(format!("prefix {text:?} of {id}: {e}")))?);
    }
    let att = n.attachment();
    Ok(EniView {
        prefixes,
        device_index: att.and_then(|a| a.device_index()).unwrap_or(0).max(0) as u32,
        attachment_id: att.and_then(|a| a.attachment_id()).map(String::from),
        subnet_id: n.subnet_id().ok_or_else(|| failed(format!("{id} has no subnet")))?.to_string(),
        primary_ip,
        mac: n.mac_address().map(|m| m.to_ascii_lowercase()),
        secondaries,
        id,
    })
}

fn tag<'a>(n: &'a NetworkInterface, key: &str) -> Option<&'a str> {
    n.tag_set().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

#[async_trait]
impl Provider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    async fn init(&self) -> Result<InstanceInfo, ProviderError> {
        let r = self.ready.get_or_try_init(|| self.identify()).await?;
        let id = &r.id;
        info!(instance = %id.instance_id, r#type = %id.instance_type, limits = ?id.limits, "EC2 identity");
        // Where new ENIs would go, so /v1/pool shows it from the start, not from the first new
        // ENI: one DescribeSubnets (none without discovery or custom networking).
        if self.candidates.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            let mut cache = self.cache.lock().await;
            if let Err(e) = self.candidates(r, &mut cache, Fill::NOTHING).await {
                warn!(error = %e, "could not look at the subnets new ENIs may go to; the first new ENI will");
            }
        }
        Ok(InstanceInfo {
            instance_id: id.instance_id.clone(),
            instance_type: id.instance_type.clone(),
            limits: id.limits,
            primary_eni_id: id.primary_eni_id.clone(),
            primary_ip: id.primary_ip,
            vpc_cidrs: id.vpc_cidrs.clone(),
            zone: id.zone.clone(),
        })
    }

    async fn list_enis(&self) -> Result<Vec<ProviderEni>, ProviderError> {
        let r = self.ready()?;
        let mut cache = self.cache.lock().await;
        self.refresh(r, &mut cache).await?;
        let views: Vec<EniView> = cache.enis.values().cloned().collect();
        drop(cache);
        let mut out = Vec::with_capacity(views.len());
        for v in &views {
            out.push(self.to_provider(r, v).await?);
        }
        out.sort_by_key(|e| e.device_number);
        Ok(out)
    }

    async fn create_eni(&self, device_number: u32, fill: Fill) -> Result<ProviderEni, ProviderError> {
        let r = self.ready()?;
        if let Fill::Prefixes(n) = fill
            && n > 0
        {
            self.check_nitro(r)?;
        }
        let room = r.id.limits.pod_ips_per_eni();
        if fill.slots() > room {
            return Err(ProviderError::Limit(format!(
                "a new ENI has room for {room} secondary IPs or prefixes, {} asked",
                fill.slots()
            )));
        }
        let mut guard = self.cache.lock().await;
        let cache = &mut *guard;
        self.ensure_loaded(r, cache).await?;
        let limits = r.id.limits;
        if cache.enis.len() as u32 >= limits.max_enis {
            return Err(ProviderError::Limit(format!("{} allows {} ENIs", r.id.instance_type, limits.max_enis)));
        }
        if device_number >= limits.max_enis {
            return Err(ProviderError::Limit(format!(
                "device index {device_number} is beyond {}'s {} ENIs",
                r.id.instance_type, limits.max_enis
            )));
        }
        if cache.enis.values().any(|e| e.device_index == device_number) {
            return Err(failed(format!("device index {device_number} is in use")));
        }
        let candidates = self.candidates(r, cache, fill).await?;
        let mut refused: Vec<ProviderError> = Vec::new();
        for subnet in candidates.iter().filter(|c| c.skipped.is_none()) {
            match self.create_in(r, cache, &subnet.id, device_number, fill).await {
                Ok(v) => {
                    drop(guard);
                    return self.to_provider(r, &v).await;
                }
                Err(e @ (ProviderError::SubnetExhausted(_) | ProviderError::NoCidrBlocks(_))) => {
                    // Not tried again for a while; the next subnet is tried now.
                    warn!(subnet = %subnet.id, error = %e, skip = ?self.config.subnet_skip, "a new ENI did not fit in the subnet; trying the next");
                    let refusals = cache.refusals.entry(subnet.id.clone()).or_default();
                    *refusals += 1;
                    let refusals = *refusals;
                    self.skip_subnet(
                        cache,
                        &subnet.id,
                        &e,
                        matches!(e, ProviderError::NoCidrBlocks(_)),
                        Some(refusals),
                    );
                    refused.push(e);
                }
                // Another failure in one subnet (a policy that allows only some, a subnet gone)
                // must not keep the others from being tried: skipped too, while one remains.
                Err(e) if candidates.iter().rfind(|c| c.skipped.is_none()).is_some_and(|l| l.id != subnet.id) => {
                    warn!(subnet = %subnet.id, error = %e, "creating an ENI in the subnet failed; trying the next");
                    self.skip_subnet(cache, &subnet.id, &e, false, None);
                }
                Err(e) => return Err(e),
            }
        }
        // "No free /28" only answers a prefix request, and only from subnets still candidates.
        let blocks_only = matches!(fill, Fill::Prefixes(_))
            && candidates.iter().any(|c| cache.skipped.get(&c.id).is_some_and(|s| s.prefixes_only));
        Err(no_subnet_fits(&self.candidates.lock().unwrap_or_else(|e| e.into_inner()), refused, blocks_only))
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, ProviderError> {
        let r = self.ready()?;
        let mut guard = self.cache.lock().await;
        let cache = &mut *guard;
        self.ensure_loaded(r, cache).await?;
        if !cache.enis.contains_key(eni_id) {
            self.refresh(r, cache).await?;
        }
        let eni = cache.enis.get(eni_id).ok_or_else(|| failed(format!("{eni_id} is not attached to this instance")))?;
        let room = r.id.limits.pod_ips_per_eni().saturating_sub(eni.slots_used());
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > room {
            return Err(ProviderError::Limit(format!("{eni_id} has room for {room} more addresses, {count} asked")));
        }
        let before: BTreeSet<Ipv4Addr> = eni.secondaries.iter().copied().chain([eni.primary_ip]).collect();
        let out = self
            .caller
            .call("AssignPrivateIpAddresses", || {
                r.client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .secondary_private_ip_address_count(count as i32)
                    .send()
            })
            .await
            .map_err(provider_error)?;
        // EC2 answers with the new addresses; moto with all of them: keep what is new.
        let mut new: Vec<Ipv4Addr> = Vec::new();
        for a in out.assigned_private_ip_addresses() {
            let ip = parse_ip("assigned IP", a.private_ip_address())?;
            if !before.contains(&ip) && !new.contains(&ip) {
                new.push(ip);
            }
        }
        // An address EC2 shows on another of our ENIs too (moto draws at random) is given back.
        let elsewhere: Vec<Ipv4Addr> = new
            .iter()
            .copied()
            .filter(|ip| {
                cache.enis.values().any(|e| e.id != eni_id && (e.primary_ip == *ip || e.secondaries.contains(ip)))
            })
            .collect();
        if !elsewhere.is_empty() {
            warn!(eni = %eni_id, ?elsewhere, "EC2 assigned addresses another ENI holds; giving them back");
            let back: Vec<String> = elsewhere.iter().map(|ip| ip.to_string()).collect();
            let _ = self
                .caller
                .call("UnassignPrivateIpAddresses", || {
                    r.client
                        .unassign_private_ip_addresses()
                        .network_interface_id(eni_id)
                        .set_private_ip_addresses(Some(back.clone()))
                        .send()
                })
                .await;
            new.retain(|ip| !elsewhere.contains(ip));
        }
        let now = Instant::now();
        if let Some(e) = cache.enis.get_mut(eni_id) {
            e.secondaries.extend(new.iter().copied());
        }
        for ip in &new {
            cache.removed_ips.remove(ip);
            cache.added_ips.insert(*ip, (eni_id.to_string(), now));
        }
        Ok(new)
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, ProviderError> {
        let r = self.ready()?;
        self.check_nitro(r)?;
        let mut guard = self.cache.lock().await;
        let cache = &mut *guard;
        self.ensure_loaded(r, cache).await?;
        if !cache.enis.contains_key(eni_id) {
            self.refresh(r, cache).await?;
        }
        let eni = cache.enis.get(eni_id).ok_or_else(|| failed(format!("{eni_id} is not attached to this instance")))?;
        let room = r.id.limits.pod_ips_per_eni().saturating_sub(eni.slots_used());
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > room {
            return Err(ProviderError::Limit(format!("{eni_id} has room for {room} more prefixes, {count} asked")));
        }
        let before = eni.prefixes.clone();
        let out = self
            .caller
            .call("AssignPrivateIpAddresses", || {
                r.client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .ipv4_prefix_count(count as i32)
                    .send()
            })
            .await
            .map_err(provider_error)?;
        let mut new: Vec<Ipv4Net> = Vec::new();
        for p in out.assigned_ipv4_prefixes() {
            let text = p.ipv4_prefix().unwrap_or_default();
            let prefix: Ipv4Net = text.parse().map_err(|e| failed(format!("assigned prefix {text:?}: {e}")))?;
            if !before.contains(&prefix) && !new.contains(&prefix) {
                new.push(prefix);
            }
        }
        let now = Instant::now();
        if let Some(e) = cache.enis.get_mut(eni_id) {
            e.prefixes.extend(new.iter().copied());
        }
        for p in &new {
            cache.removed_prefixes.remove(p);
            cache.added_prefixes.insert(*p, (eni_id.to_string(), now));
        }
        Ok(new)
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), ProviderError> {
        self.unassign(eni_id, Unassigned::Prefixes(prefixes)).await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ProviderError> {
        self.unassign(eni_id, Unassigned::Ips(ips)).await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), ProviderError> {
        let r = self.ready()?;
        if eni_id == r.id.primary_eni_id {
            return Err(failed("the primary ENI is never deleted"));
        }
        let mut guard = self.cache.lock().await;
        let cache = &mut *guard;
        self.ensure_loaded(r, cache).await?;
        if !cache.enis.contains_key(eni_id) {
            self.refresh(r, cache).await?;
        }
        let Some(eni) = cache.enis.get(eni_id).cloned() else {
            return Err(failed(format!("{eni_id} is not attached to this instance")));
        };
        if eni.device_index == 0 {
            return Err(failed("the ENI at device index 0 is never deleted"));
        }
        if let Some(att) = &eni.attachment_id {
            self.caller
                .call("DetachNetworkInterface", || r.client.detach_network_interface().attachment_id(att).send())
                .await
                .map_err(provider_error)?;
        }
        // Detached: from here on the ENI is no longer ours to use, whatever happens to the delete.
        let now = Instant::now();
        cache.enis.remove(eni_id);
        cache.created_enis.remove(eni_id);
        cache.deleted_enis.insert(eni_id.to_string(), now);
        cache.added_ips.retain(|_, (e, _)| e != eni_id);
        if let Err(e) = self.delete(r, eni_id).await {
            warn!(eni = %eni_id, error = %e, "detached but not deleted; the leaked-ENI sweep will delete it");
            cache.pending_delete.insert(eni_id.to_string());
        }
        Ok(())
    }

    fn candidate_subnets(&self) -> Vec<CandidateSubnet> {
        let mut shown = self.candidates.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let skips = self.shown_skips.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for c in &mut shown {
            if skips.get(&c.id).is_none_or(|until| *until <= now) {
                c.skipped = None;
            }
        }
        shown
    }

    async fn sweep_leaked_enis(&self) -> Result<Vec<String>, ProviderError> {
        let r = self.ready()?;
        let mut deleted = Vec::new();
        let pending: Vec<String> = self.cache.lock().await.pending_delete.iter().cloned().collect();
        for id in pending {
            match self.delete(r, &id).await {
                Ok(()) => {
                    self.cache.lock().await.pending_delete.remove(&id);
                    deleted.push(id);
                }
                Err(e) => warn!(eni = %id, error = %e, "still cannot delete a detached ENI"),
            }
        }
        // Without a cluster name nothing tells this cluster's ENIs from another's (or from one
        // someone tagged to have it deleted): only what this process detached goes.
        let Some(cluster) = &self.config.cluster_name else { return Ok(deleted) };
        let filters = vec![
            Filter::builder().name("vpc-id").values(&r.id.vpc_id).build(),
            Filter::builder().name("tag-key").values(TAG_INSTANCE_ID).build(),
            Filter::builder().name(format!("tag:{TAG_CLUSTER}")).values(cluster).build(),
        ];
        let mut candidates = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .caller
                .call("DescribeNetworkInterfaces", || {
                    r.client
                        .describe_network_interfaces()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(provider_error)?;
            let now = SystemTime::now();
            for n in page.network_interfaces() {
                let Some(id) = n.network_interface_id() else { continue };
                let available = n.status().map(|s| s.as_str()) == Some("available")
                    && n.attachment().is_none_or(|a| a.instance_id().is_none());
                // Our description too: a tag alone can be put on any ENI by whoever may tag.
                let ours = n.description().is_some_and(|d| d.starts_with(DESCRIPTION_PREFIX));
                if !available || !ours || deleted.iter().any(|d| d == id) {
                    continue;
                }
                let created = tag(n, TAG_CREATED_AT).and_then(|t| DateTime::from_str(t, DateTimeFormat::DateTime).ok());
                let Some(created) = created.and_then(|c| SystemTime::try_from(c).ok()) else {
                    warn!(eni = %id, "an ENI with our tag but no readable creation time; left alone");
                    continue;
                };
                if now.duration_since(created).unwrap_or_default() >= self.config.leaked_eni_age {
                    candidates.push(id.to_string());
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        for id in candidates {
            match self.delete(r, &id).await {
                Ok(()) => {
                    info!(eni = %id, "deleted a leaked ENI");
                    deleted.push(id);
                }
                Err(e) => warn!(eni = %id, error = %e, "could not delete a leaked ENI"),
            }
        }
        Ok(deleted)
    }
}

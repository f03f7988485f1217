//! The built-in provider: one simulated instance carved from a VPC CIDR, with no AWS account.
//! Its "cloud" (which ENIs exist and which IPs they hold) persists in
//! `<data-dir>/static-instance.json`, written whole with fsync and rename, so it is consistent
//! across restarts just as EC2 would be. An optional latency makes pool behaviour visible.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use enipool_provider::{Fill, InstanceInfo, Limits, Provider, ProviderEni, ProviderError, builtin_limits};

const STATE_FILE: &str = "static-instance.json";
/// The simulated instance's one subnet and zone, as /v1/enis shows them.
const STATIC_SUBNET_ID: &str = "subnet-static";
const STATIC_ZONE: &str = "static-1a";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SimEni {
    id: String,
    device_number: u32,
    primary_ip: Ipv4Addr,
    secondary_ips: Vec<Ipv4Addr>,
    /// Delegated /28s (absent in state files written before prefixes).
    #[serde(default)]
    prefixes: Vec<Ipv4Net>,
}

impl SimEni {
    fn slots_used(&self) -> usize {
        self.secondary_ips.len() + self.prefixes.len()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SimInstance {
    instance_id: String,
    instance_type: String,
    vpc_cidr: Ipv4Net,
    subnet_cidr: Ipv4Net,
    next_eni_serial: u64,
    enis: Vec<SimEni>,
}

#[derive(Debug)]
pub struct StaticProvider {
    path: PathBuf,
    limits: Limits,
    latency: Duration,
    state: Mutex<SimInstance>,
}

fn failed(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(e.to_string())
}

impl StaticProvider {
    /// Loads the simulated instance from `data_dir`, or creates it.
    pub fn open(
        data_dir: &Path,
        instance_type: &str,
        vpc_cidr: Ipv4Net,
        latency: Duration,
    ) -> Result<Self, ProviderError> {
        let limits = builtin_limits(instance_type).ok_or_else(|| {
            failed(format!("--instance-type {instance_type}: not in the static provider's built-in table"))
        })?;
        let path = data_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: SimInstance = serde_json::from_slice(&bytes)
                    .map_err(|e| failed(format!("{}: not a static-provider instance: {e}", path.display())))?;
                if s.instance_type != instance_type || s.vpc_cidr != vpc_cidr {
                    return Err(failed(format!(
                        "{} simulates a {} in {}; start with --instance-type {} --vpc-cidr {} or use another --data-dir",
                        path.display(),
                        s.instance_type,
                        s.vpc_cidr,
                        s.instance_type,
                        s.vpc_cidr
                    )));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A /20 (or the whole VPC if smaller) holds the biggest instance's 750 addresses.
                let subnet_cidr = if vpc_cidr.prefix_len() < 20 {
                    Ipv4Net::new(vpc_cidr.network(), 20).expect("20 is a valid prefix")
                } else {
                    vpc_cidr
                };
                let primary_ip = Ipv4Addr::from(u32::from(subnet_cidr.network()) + 10);
                let s = SimInstance {
                    instance_id: "i-0000000000000static".into(),
                    instance_type: instance_type.into(),
                    vpc_cidr,
                    subnet_cidr,
                    next_eni_serial: 2,
                    enis: vec![SimEni {
                        id: eni_id(1),
                        device_number: 0,
                        primary_ip,
                        secondary_ips: Vec::new(),
                        prefixes: Vec::new(),
                    }],
                };
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| failed(format!("creating {}: {e}", data_dir.display())))?;
                save(&path, &s).map_err(|e| failed(format!("writing {}: {e}", path.display())))?;
                s
            }
            Err(e) => return Err(failed(format!("reading {}: {e}", path.display()))),
        };
        Ok(StaticProvider { path, limits, latency, state: Mutex::new(state) })
    }

    async fn delay(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// Changes one ENI of the simulated instance, durably (written whole before it counts).
    async fn change_eni(&self, eni_id: &str, change: impl FnOnce(&mut SimEni)) -> Result<(), ProviderError> {
        self.delay().await;
        let mut s = self.state.lock().await;
        let idx = s.enis.iter().position(|e| e.id == eni_id).ok_or_else(|| failed(format!("no ENI {eni_id}")))?;
        let mut next = s.clone();
        change(&mut next.enis[idx]);
        save(&self.path, &next).map_err(failed)?;
        *s = next;
        Ok(())
    }

    fn view(s: &SimInstance, e: &SimEni) -> ProviderEni {
        ProviderEni {
            id: e.id.clone(),
            device_number: e.device_number,
            primary: e.device_number == 0,
            subnet_cidr: s.subnet_cidr,
            subnet_gateway: Ipv4Addr::from(u32::from(s.subnet_cidr.network()) + 1),
            subnet_id: Some(STATIC_SUBNET_ID.into()),
            zone: Some(STATIC_ZONE.into()),
            primary_ip: e.primary_ip,
            secondary_ips: e.secondary_ips.clone(),
            prefixes: e.prefixes.clone(),
            mac: Some(eni_mac(&e.id)),
        }
    }
}

fn eni_id(serial: u64) -> String {
    format!("eni-{serial:017x}")
}

/// Every ENI has a MAC, as on EC2: a locally administered one from the ENI's serial, so a test
/// (or a developer) can give an interface that MAC and watch the daemon set up its node side.
fn eni_mac(id: &str) -> String {
    let serial = id.strip_prefix("eni-").and_then(|hex| u64::from_str_radix(hex, 16).ok()).unwrap_or(0);
    let b = serial.to_be_bytes();
    format!("02:e0:{:02x}:{:02x}:{:02x}:{:02x}", b[4], b[5], b[6], b[7])
}

fn save(path: &Path, s: &SimInstance) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(s).expect("serializable"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn used_addresses(s: &SimInstance) -> BTreeSet<Ipv4Addr> {
    s.enis.iter().flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied())).collect()
}

/// The lowest `count` addresses of the subnet in use by nobody, outside every prefix (AWS
/// reserves the first four and the last address of a subnet).
fn free_addresses(s: &SimInstance, count: usize) -> Vec<Ipv4Addr> {
    let used = used_addresses(s);
    let in_prefix = |ip: &Ipv4Addr| s.enis.iter().any(|e| e.prefixes.iter().any(|p| p.contains(ip)));
    let first = u32::from(s.subnet_cidr.network()) + 4;
    let last = u32::from(s.subnet_cidr.broadcast()) - 1;
    (first..=last).map(Ipv4Addr::from).filter(|ip| !used.contains(ip) && !in_prefix(ip)).take(count).collect()
}

/// The lowest `count` /28s of the subnet that overlap no address or prefix in use nor a reserved
/// address, as EC2 picks prefixes.
fn free_prefixes(s: &SimInstance, count: usize) -> Vec<Ipv4Net> {
    let used = used_addresses(s);
    let subnet = s.subnet_cidr;
    let Ok(blocks) = subnet.subnets(28) else { return Vec::new() };
    blocks
        .filter(|b| b.network() != subnet.network() && b.broadcast() != subnet.broadcast())
        .filter(|b| !used.iter().any(|ip| b.contains(ip)))
        .filter(|b| !s.enis.iter().any(|e| e.prefixes.contains(b)))
        .take(count)
        .collect()
}

/// EC2 delegates prefixes to Nitro types only.
fn check_nitro(s: &SimInstance) -> Result<(), ProviderError> {
    if enipool_provider::instance_types::builtin_type(&s.instance_type).is_some_and(|t| !t.nitro) {
        return Err(failed(format!(
            "{} is not a Nitro instance type: EC2 delegates prefixes to Nitro types only",
            s.instance_type
        )));
    }
    Ok(())
}

#[async_trait]
impl Provider for StaticProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn init(&self) -> Result<InstanceInfo, ProviderError> {
        self.delay().await;
        let s = self.state.lock().await;
        let primary = s.enis.iter().find(|e| e.device_number == 0).ok_or_else(|| failed("no primary ENI"))?;
        Ok(InstanceInfo {
            instance_id: s.instance_id.clone(),
            instance_type: s.instance_type.clone(),
            limits: self.limits,
            primary_eni_id: primary.id.clone(),
            primary_ip: primary.primary_ip,
            vpc_cidrs: vec![s.vpc_cidr],
            zone: Some(STATIC_ZONE.into()),
        })
    }

    async fn list_enis(&self) -> Result<Vec<ProviderEni>, ProviderError> {
        self.delay().await;
        let s = self.state.lock().await;
        Ok(s.enis.iter().map(|e| Self::view(&s, e)).collect())
    }

    async fn create_eni(&self, device_number: u32, fill: Fill) -> Result<ProviderEni, ProviderError> {
        self.delay().await;
        let mut s = self.state.lock().await;
        if s.enis.len() as u32 >= self.limits.max_enis {
            return Err(ProviderError::Limit(format!("{} allows {} ENIs", s.instance_type, self.limits.max_enis)));
        }
        if s.enis.iter().any(|e| e.device_number == device_number) {
            return Err(failed(format!("device index {device_number} is in use")));
        }
        let room = self.limits.pod_ips_per_eni();
        if fill.slots() > room {
            return Err(ProviderError::Limit(format!(
                "a new ENI has room for {room} secondary IPs or prefixes, {} asked",
                fill.slots()
            )));
        }
        if matches!(fill, Fill::Prefixes(n) if n > 0) {
            check_nitro(&s)?;
        }
        // Prefixes first, as EC2 picks them: the addresses then come from outside them.
        let (prefixes, secondaries) = match fill {
            Fill::Prefixes(n) => {
                let prefixes = free_prefixes(&s, n as usize);
                if prefixes.len() < n as usize {
                    return Err(ProviderError::NoCidrBlocks(format!("subnet {} has no free /28 left", s.subnet_cidr)));
                }
                (prefixes, 0)
            }
            Fill::Ips(n) => (Vec::new(), n as usize),
        };
        let addresses: Vec<Ipv4Addr> = free_addresses(&s, secondaries + 1 + prefixes.len() * 16)
            .into_iter()
            .filter(|ip| !prefixes.iter().any(|p| p.contains(ip)))
            .take(secondaries + 1)
            .collect();
        if addresses.len() < secondaries + 1 {
            return Err(ProviderError::SubnetExhausted(format!("subnet {} is full", s.subnet_cidr)));
        }
        let serial = s.next_eni_serial;
        let mut next = s.clone();
        next.next_eni_serial += 1;
        next.enis.push(SimEni {
            id: eni_id(serial),
            device_number,
            primary_ip: addresses[0],
            secondary_ips: addresses[1..].to_vec(),
            prefixes,
        });
        save(&self.path, &next).map_err(failed)?;
        *s = next;
        let eni = s.enis.last().expect("just pushed");
        Ok(Self::view(&s, eni))
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, ProviderError> {
        self.delay().await;
        let mut s = self.state.lock().await;
        let idx = s.enis.iter().position(|e| e.id == eni_id).ok_or_else(|| failed(format!("no ENI {eni_id}")))?;
        let room = (self.limits.pod_ips_per_eni() as usize).saturating_sub(s.enis[idx].slots_used());
        if count as usize > room {
            return Err(ProviderError::Limit(format!("{eni_id} has room for {room} more addresses, {count} asked")));
        }
        let ips = free_addresses(&s, count as usize);
        if ips.len() < count as usize {
            return Err(ProviderError::SubnetExhausted(format!("subnet {} is full", s.subnet_cidr)));
        }
        let mut next = s.clone();
        next.enis[idx].secondary_ips.extend(&ips);
        save(&self.path, &next).map_err(failed)?;
        *s = next;
        Ok(ips)
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, ProviderError> {
        self.delay().await;
        let mut s = self.state.lock().await;
        check_nitro(&s)?;
        let idx = s.enis.iter().position(|e| e.id == eni_id).ok_or_else(|| failed(format!("no ENI {eni_id}")))?;
        let room = (self.limits.pod_ips_per_eni() as usize).saturating_sub(s.enis[idx].slots_used());
        if count as usize > room {
            return Err(ProviderError::Limit(format!("{eni_id} has room for {room} more prefixes, {count} asked")));
        }
        let prefixes = free_prefixes(&s, count as usize);
        if prefixes.len() < count as usize {
            return Err(ProviderError::NoCidrBlocks(format!("subnet {} has no free /28 left", s.subnet_cidr)));
        }
        let mut next = s.clone();
        next.enis[idx].prefixes.extend(&prefixes);
        save(&self.path, &next).map_err(failed)?;
        *s = next;
        Ok(prefixes)
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), ProviderError> {
        self.change_eni(eni_id, |e| e.prefixes.retain(|p| !prefixes.contains(p))).await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ProviderError> {
        self.change_eni(eni_id, |e| e.secondary_ips.retain(|ip| !ips.contains(ip))).await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), ProviderError> {
        self.delay().await;
        let mut s = self.state.lock().await;
        let eni = s.enis.iter().find(|e| e.id == eni_id).ok_or_else(|| failed(format!("no ENI {eni_id}")))?;
        if eni.device_number == 0 {
            return Err(failed("the primary ENI is never deleted"));
        }
        let mut next = s.clone();
        next.enis.retain(|e| e.id != eni_id);
        save(&self.path, &next).map_err(failed)?;
        *s = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(dir: &Path) -> StaticProvider {
        StaticProvider::open(dir, "t3.small", "10.0.0.0/16".parse().unwrap(), Duration::ZERO).unwrap()
    }

    #[tokio::test]
    async fn prefixes_are_free_aligned_blocks_that_take_one_slot_each() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path());
        let primary = p.init().await.unwrap().primary_eni_id;
        // t3.small: 3 slots beside the primary (10.0.0.10, in the first block).
        let prefixes = p.assign_prefixes(&primary, 2).await.unwrap();
        assert_eq!(prefixes, ["10.0.0.16/28".parse::<Ipv4Net>().unwrap(), "10.0.0.32/28".parse().unwrap()]);
        let ips = p.assign_ips(&primary, 1).await.unwrap();
        assert_eq!(ips, [Ipv4Addr::new(10, 0, 0, 4)], "outside every prefix");
        assert!(matches!(p.assign_prefixes(&primary, 1).await, Err(ProviderError::Limit(_))));
        p.unassign_prefixes(&primary, &prefixes[..1]).await.unwrap();
        let eni = p.create_eni(1, Fill::NOTHING).await.unwrap();
        assert!(!prefixes[1].contains(&eni.primary_ip));
        // Durable: a restart lists the same.
        let again = provider(dir.path());
        let listed = again.list_enis().await.unwrap();
        assert_eq!(listed[0].prefixes, prefixes[1..]);
    }

    #[tokio::test]
    async fn a_new_eni_comes_with_its_fill_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path());
        p.init().await.unwrap();
        // t3.small: 3 ENIs, 3 slots each beside the primary.
        assert!(matches!(p.create_eni(1, Fill::Ips(4)).await, Err(ProviderError::Limit(_))));
        let with_ips = p.create_eni(1, Fill::Ips(3)).await.unwrap();
        assert_eq!(with_ips.secondary_ips.len(), 3);
        let with_prefixes = p.create_eni(2, Fill::Prefixes(2)).await.unwrap();
        assert_eq!(with_prefixes.prefixes.len(), 2);
        assert!(with_prefixes.secondary_ips.is_empty());
        assert!(!with_prefixes.prefixes.iter().any(|q| q.contains(&with_prefixes.primary_ip)));
        let listed = provider(dir.path()).list_enis().await.unwrap();
        assert_eq!(listed[1].secondary_ips, with_ips.secondary_ips);
        assert_eq!(listed[2].prefixes, with_prefixes.prefixes);
    }

    #[tokio::test]
    async fn a_new_eni_without_room_for_its_prefixes_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        // A /26: its first and last /28 hold reserved addresses (and the primary, .10): two left.
        let p = StaticProvider::open(dir.path(), "t3.small", "10.0.0.0/26".parse().unwrap(), Duration::ZERO).unwrap();
        p.init().await.unwrap();
        let r = p.create_eni(1, Fill::Prefixes(3)).await;
        assert!(matches!(r, Err(ProviderError::NoCidrBlocks(_))), "{r:?}");
        assert_eq!(p.list_enis().await.unwrap().len(), 1, "nothing made");
    }

    #[tokio::test]
    async fn a_state_file_from_before_prefixes_loads() {
        let dir = tempfile::tempdir().unwrap();
        drop(provider(dir.path()));
        let path = dir.path().join(STATE_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["enis"][0].as_object_mut().unwrap().remove("prefixes");
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(provider(dir.path()).list_enis().await.unwrap()[0].prefixes.is_empty());
    }
}

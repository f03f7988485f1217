//! The instance identity a provider's `init` returned, cached in the data dir
//! (`instance.json`, written whole with fsync and rename), so a daemon that starts while EC2 is
//! unreachable still answers leases with the right node IP and VPC CIDRs.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Config;
use crate::provider::{InstanceInfo, Limits, builtin_limits};

const FILE: &str = "instance.json";

#[derive(Serialize, Deserialize)]
struct Cached {
    instance_id: String,
    instance_type: String,
    max_enis: u32,
    ipv4_per_eni: u32,
    primary_eni_id: String,
    primary_ip: Ipv4Addr,
    vpc_cidrs: Vec<Ipv4Net>,
    /// Absent in caches written before zones were known.
    #[serde(default)]
    zone: Option<String>,
}

/// What the last run learnt, if anything readable.
pub fn load(data_dir: &Path) -> Option<InstanceInfo> {
    let path = data_dir.join(FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Cached>(&bytes) {
        Ok(c) => Some(InstanceInfo {
            instance_id: c.instance_id,
            instance_type: c.instance_type,
            limits: Limits { max_enis: c.max_enis, ipv4_per_eni: c.ipv4_per_eni },
            primary_eni_id: c.primary_eni_id,
            primary_ip: c.primary_ip,
            vpc_cidrs: c.vpc_cidrs,
            zone: c.zone,
        }),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring an unreadable identity cache");
            None
        }
    }
}

pub fn save(data_dir: &Path, info: &InstanceInfo) -> std::io::Result<()> {
    let c = Cached {
        instance_id: info.instance_id.clone(),
        instance_type: info.instance_type.clone(),
        max_enis: info.limits.max_enis,
        ipv4_per_eni: info.limits.ipv4_per_eni,
        primary_eni_id: info.primary_eni_id.clone(),
        primary_ip: info.primary_ip,
        vpc_cidrs: info.vpc_cidrs.clone(),
        zone: info.zone.clone(),
    };
    let path = data_dir.join(FILE);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&c).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Who we are before the provider said so, on a first start: only what the flags tell.
pub fn placeholder(config: &Config) -> InstanceInfo {
    let instance_type = config.ec2.instance_type.clone().unwrap_or_else(|| "unknown".into());
    InstanceInfo {
        instance_id: config.ec2.instance_id.clone().unwrap_or_else(|| "unknown".into()),
        limits: builtin_limits(&instance_type).unwrap_or(Limits { max_enis: 0, ipv4_per_eni: 0 }),
        instance_type,
        primary_eni_id: String::new(),
        primary_ip: Ipv4Addr::UNSPECIFIED,
        vpc_cidrs: Vec::new(),
        zone: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let info = InstanceInfo {
            instance_id: "i-1".into(),
            instance_type: "m5.large".into(),
            limits: Limits { max_enis: 3, ipv4_per_eni: 10 },
            primary_eni_id: "eni-1".into(),
            primary_ip: "10.0.0.5".parse().unwrap(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            zone: Some("us-east-1a".into()),
        };
        save(dir.path(), &info).unwrap();
        assert_eq!(load(dir.path()), Some(info));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(load(dir.path()).is_none());
    }
}

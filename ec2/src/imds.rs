//! The node's identity from the instance metadata service, IMDSv2 (a session token first, then
//! every read with it), at a configurable endpoint.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds::client::Client as ImdsClient;
use ipnet::Ipv4Net;

/// What the metadata service says about this instance and its primary ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataIdentity {
    pub instance_id: String,
    pub instance_type: String,
    pub region: Option<String>,
    pub mac: String,
    pub primary_eni_id: String,
    pub primary_ip: Ipv4Addr,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub security_groups: Vec<String>,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub zone: Option<String>,
}

/// Reads the identity; `timeout` bounds each request (the client retries a few times itself).
pub async fn identity(endpoint: &str, timeout: Duration) -> Result<MetadataIdentity, String> {
    let client = ImdsClient::builder()
        .endpoint(endpoint)
        .map_err(|e| format!("--imds-endpoint {endpoint:?}: {e}"))?
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .max_attempts(2)
        .build();
    let get = async |path: &str| -> Result<String, String> {
        client.get(format!("/latest/meta-data/{path}")).await.map(|v| v.as_ref().trim().to_string()).map_err(|e| {
            format!("instance metadata {path} at {endpoint}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e))
        })
    };
    let ipv4 = |path: &str, v: &str| -> Result<Ipv4Addr, String> {
        v.parse().map_err(|_| format!("instance metadata {path}: {v:?} is not an IPv4 address"))
    };
    let net = |path: &str, v: &str| -> Result<Ipv4Net, String> {
        v.trim().parse().map_err(|_| format!("instance metadata {path}: {v:?} is not an IPv4 CIDR"))
    };
    let instance_id = get("instance-id").await?;
    let instance_type = get("instance-type").await?;
    let mac = get("mac").await?.to_ascii_lowercase();
    let base = format!("network/interfaces/macs/{mac}");
    let primary_eni_id = get(&format!("{base}/interface-id")).await?;
    let local = get("local-ipv4").await?;
    let primary_ip = ipv4("local-ipv4", &local)?;
    let subnet_id = get(&format!("{base}/subnet-id")).await?;
    let cidr = get(&format!("{base}/subnet-ipv4-cidr-block")).await?;
    let subnet_cidr = net("subnet-ipv4-cidr-block", &cidr)?;
    let security_groups = get(&format!("{base}/security-group-ids"))
        .await?
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let vpc_id = get(&format!("{base}/vpc-id")).await?;
    let vpc_cidrs = get(&format!("{base}/vpc-ipv4-cidr-blocks"))
        .await?
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| net("vpc-ipv4-cidr-blocks", s))
        .collect::<Result<Vec<_>, _>>()?;
    let region = get("placement/region").await.ok().filter(|r| !r.is_empty());
    let zone = get("placement/availability-zone").await.ok().filter(|z| !z.is_empty());
    Ok(MetadataIdentity {
        instance_id,
        instance_type,
        region,
        mac,
        primary_eni_id,
        primary_ip,
        subnet_id,
        subnet_cidr,
        security_groups,
        vpc_id,
        vpc_cidrs,
        zone,
    })
}

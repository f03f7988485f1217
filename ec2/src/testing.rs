//! Test support (feature `testing`): a real moto EC2 server behind a fault layer, a fake
//! instance-metadata service, and an instance made in moto for the provider to be. Each is a
//! separate Python process on a free loopback port, killed when dropped. Only tests use this.
//!
//! moto comes from the virtualenv that `scripts/test` makes (`<repo>/.venv`, or the directory
//! of `$ENIPOOL_MOTO_SERVER`); without it every moto test fails, saying how to make it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceType, NetworkInterface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use aws_sdk_ec2;

/// The region every test uses.
pub const REGION: &str = "us-east-1";
/// The VPC of every test instance, and the subnet `World::make` puts it in.
pub const VPC_CIDR: &str = "10.0.0.0/16";
pub const SUBNET_CIDR: &str = "10.0.0.0/16";
/// The size of an IPv4 prefix EC2 delegates: /28, 16 addresses.
pub const PREFIX_LEN: u8 = 28;
/// How long a helper process may take to start.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The environment a process talking to moto gets: no real metadata service, dummy credentials,
/// a region.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
}

/// Sets `aws_env()` in this process, for tests that run the provider in-process. Call it first
/// thing in the test (nextest runs each test in its own process).
pub fn set_aws_env() {
    for (k, v) in aws_env() {
        // SAFETY: called at the start of a test, before it starts threads that read the
        // environment; nextest gives every test its own process.
        unsafe { std::env::set_var(k, v) };
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("AWS_PROFILE") };
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ec2/ has a parent").to_path_buf()
}

/// The virtualenv's python, which has moto installed.
pub fn venv_python() -> PathBuf {
    let bin = match std::env::var_os("ENIPOOL_MOTO_SERVER") {
        Some(p) => PathBuf::from(p).parent().map(Path::to_path_buf).unwrap_or_default(),
        None => repo_root().join(".venv/bin"),
    };
    let python = bin.join("python3");
    if !bin.join("moto_server").exists() || !python.exists() {
        panic!(
            "moto is not installed at {}: the EC2 tests need a real moto server. Run scripts/test (it makes the \
             virtualenv), or: python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5' \
             (or point ENIPOOL_MOTO_SERVER at a moto_server inside such a virtualenv)",
            bin.display()
        );
    }
    python
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `python script args...` and waits for its `listening HOST:PORT` line.
fn start_script(script: &str, args: &[&str]) -> (ChildGuard, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(script);
    let mut child = Command::new(venv_python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // ENIPOOL_TEST_SERVER_LOGS=1 shows the helpers' request logs and tracebacks.
        .stderr(if std::env::var_os("ENIPOOL_TEST_SERVER_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    loop {
        let left = START_DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening ") {
                    return (guard, addr.trim().to_string());
                }
            }
            Err(e) => panic!("{script} did not say where it listens within {START_DEADLINE:?} ({e})"),
        }
    }
}

/// One HTTP/1.0 request to a loopback helper; returns status and body.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Calls EC2 saw, by action, as the fault layer counted them.
#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub calls: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    /// Requests answered with an earlier answer (the `stale` fault), by action.
    pub stale: BTreeMap<String, u64>,
    pub hanging: u64,
}

/// EC2 actions that change something.
pub const MUTATING: &[&str] = &[
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
];

impl Calls {
    pub fn of(&self, action: &str) -> u64 {
        self.calls.get(action).copied().unwrap_or(0)
    }

    pub fn mutating(&self) -> u64 {
        MUTATING.iter().map(|a| self.of(a)).sum()
    }
}

/// moto's EC2 server behind the fault layer (`tests/support/fake_ec2.py`) and the subnet model
/// (`tests/support/subnet_model.py`): the model picks every IPv4 address and /28 prefix (lowest
/// free first, the subnet's five reserved addresses excluded), serves prefix delegation, which moto
/// lacks, with EC2's limits and errors (`InsufficientFreeAddressesInSubnet`,
/// `InsufficientCidrBlocks`, `PrivateIpAddressLimitExceeded`), and lists prefixes wherever EC2
/// does. `tests/subnet_model.rs` holds it to EC2's documented behaviour.
#[derive(Debug)]
pub struct FakeEc2 {
    _child: ChildGuard,
    pub addr: String,
}

impl FakeEc2 {
    pub async fn start() -> FakeEc2 {
        let (child, addr) = start_script("fake_ec2.py", &[]);
        let ec2 = FakeEc2 { _child: child, addr };
        // It prints once bound; make sure it answers.
        let started = Instant::now();
        while ec2.try_calls().await.is_none() {
            assert!(started.elapsed() < START_DEADLINE, "moto did not answer at {}", ec2.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ec2
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SDK client straight to moto, for setting up and inspecting the world. It goes through
    /// the fault layer too (its calls are counted); set faults after setting up.
    pub fn client(&self) -> Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .endpoint_url(self.endpoint())
            .build();
        Client::from_conf(conf)
    }

    /// Makes `action` ("*" for all) fail `times` times (-1: until cleared) with `kind`:
    /// throttle, 500, invalid, subnet, cidr or hang; or, with `stale`, answers a Describe* request
    /// with the answer the same request last got before this call (a request never answered
    /// before passes through).
    pub async fn inject(&self, action: &str, kind: &str, times: i64) {
        let body = format!(r#"{{"action": "{action}", "kind": "{kind}", "times": {times}}}"#);
        let (status, text) = http(&self.addr, "POST", "/_fault/inject", &body).await.expect("fault layer");
        assert_eq!(status, 200, "injecting {body}: {text}");
    }

    /// Remembers the latest answers as they are now, under `name`, for `inject_stale_from`.
    pub async fn mark(&self, name: &str) {
        let (status, text) =
            http(&self.addr, "POST", "/_fault/mark", &format!(r#"{{"name": "{name}"}}"#)).await.expect("fault layer");
        assert_eq!(status, 200, "marking {name}: {text}");
    }

    /// Like `inject(action, "stale", times)`, answering with the answers remembered by `mark(name)`.
    pub async fn inject_stale_from(&self, action: &str, name: &str, times: i64) {
        let body = format!(r#"{{"action": "{action}", "kind": "stale", "times": {times}, "from_mark": "{name}"}}"#);
        let (status, text) = http(&self.addr, "POST", "/_fault/inject", &body).await.expect("fault layer");
        assert_eq!(status, 200, "injecting {body}: {text}");
    }

    pub async fn clear(&self) {
        http(&self.addr, "POST", "/_fault/clear", "").await.expect("fault layer");
    }

    pub async fn release(&self) {
        http(&self.addr, "POST", "/_fault/release", "").await.expect("fault layer");
    }

    async fn try_calls(&self) -> Option<Calls> {
        let (status, body) = http(&self.addr, "GET", "/_fault/calls", "").await.ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let map = |k: &str| -> BTreeMap<String, u64> {
            v[k].as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
                .unwrap_or_default()
        };
        Some(Calls {
            calls: map("calls"),
            failed: map("failed"),
            stale: map("stale"),
            hanging: v["hanging"].as_u64().unwrap_or(0),
        })
    }

    /// The parameters of the last requests of `action` that reached the fault layer.
    pub async fn requests(&self, action: &str) -> Vec<BTreeMap<String, String>> {
        let (_, body) = http(&self.addr, "GET", "/_fault/requests", "").await.expect("fault layer");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v[action]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        r.as_object()
                            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn calls(&self) -> Calls {
        self.try_calls().await.expect("the fault layer answers /_fault/calls")
    }
}

/// An instance made in moto, and its network.
#[derive(Clone, Debug)]
pub struct World {
    pub vpc_id: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub security_group: String,
    pub instance_id: String,
    pub instance_type: String,
    pub primary_eni_id: String,
    pub primary_ip: String,
    pub mac: String,
    /// The instance's availability zone (its subnet's).
    pub zone: String,
}

impl World {
    /// A /16 VPC and subnet, a security group, and one running instance of `instance_type`.
    pub async fn make(client: &Client, instance_type: &str) -> World {
        World::make_in(client, instance_type, SUBNET_CIDR).await
    }

    /// As `make`, with the subnet `subnet_cidr` (inside `VPC_CIDR`): small ones run out.
    pub async fn make_in(client: &Client, instance_type: &str, subnet_cidr: &str) -> World {
        let vpc = client.create_vpc().cidr_block(VPC_CIDR).send().await.expect("CreateVpc");
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
        let subnet = client.create_subnet().vpc_id(&vpc_id).cidr_block(subnet_cidr).send().await.expect("CreateSubnet");
        let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string();
        let sg = client
            .create_security_group()
            .group_name("enipool-test")
            .description("enipool test nodes")
            .vpc_id(&vpc_id)
            .send()
            .await
            .expect("CreateSecurityGroup");
        let security_group = sg.group_id().expect("group id").to_string();
        let run = client
            .run_instances()
            .image_id("ami-12345678")
            .instance_type(InstanceType::from(instance_type))
            .subnet_id(&subnet_id)
            .security_group_ids(&security_group)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("RunInstances");
        let inst = run.instances().first().expect("an instance");
        let instance_id = inst.instance_id().expect("instance id").to_string();
        let nic = inst
            .network_interfaces()
            .iter()
            .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .expect("a primary ENI");
        World {
            vpc_id,
            subnet_id,
            subnet_cidr: subnet_cidr.to_string(),
            security_group,
            instance_id,
            instance_type: instance_type.to_string(),
            primary_eni_id: nic.network_interface_id().expect("eni id").to_string(),
            primary_ip: nic.private_ip_address().expect("primary ip").to_string(),
            mac: nic.mac_address().expect("mac").to_ascii_lowercase(),
            zone: inst.placement().and_then(|p| p.availability_zone()).expect("a zone").to_string(),
        }
    }

    /// Every ENI in the VPC, as moto has it now.
    pub async fn enis(&self, client: &Client) -> Vec<NetworkInterface> {
        let out = client
            .describe_network_interfaces()
            .filters(aws_sdk_ec2::types::Filter::builder().name("vpc-id").values(&self.vpc_id).build())
            .send()
            .await
            .expect("DescribeNetworkInterfaces");
        out.network_interfaces().to_vec()
    }

    /// ENIs attached to the instance: (id, device index, secondary IPs), by device index.
    pub async fn attached(&self, client: &Client) -> Vec<(String, i32, Vec<String>)> {
        let mut v: Vec<(String, i32, Vec<String>)> = self
            .enis(client)
            .await
            .iter()
            .filter(|n| n.attachment().and_then(|a| a.instance_id()) == Some(self.instance_id.as_str()))
            .map(|n| {
                let mut ips: Vec<String> = n
                    .private_ip_addresses()
                    .iter()
                    .filter(|a| a.primary() != Some(true))
                    .filter_map(|a| a.private_ip_address().map(String::from))
                    .collect();
                ips.sort();
                (
                    n.network_interface_id().unwrap_or_default().to_string(),
                    n.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
                    ips,
                )
            })
            .collect();
        v.sort_by_key(|e| e.1);
        v
    }

    /// The IPv4 prefixes of each ENI attached to the instance: (id, prefixes sorted), by device
    /// index.
    pub async fn attached_prefixes(&self, client: &Client) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<(i32, String, Vec<String>)> = self
            .enis(client)
            .await
            .iter()
            .filter(|n| n.attachment().and_then(|a| a.instance_id()) == Some(self.instance_id.as_str()))
            .map(|n| {
                let mut prefixes: Vec<String> =
                    n.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix().map(String::from)).collect();
                prefixes.sort();
                (
                    n.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
                    n.network_interface_id().unwrap_or_default().to_string(),
                    prefixes,
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, id, p)| (id, p)).collect()
    }

    /// The metadata a real instance would serve for this one.
    pub fn metadata(&self) -> serde_json::Value {
        let base = format!("network/interfaces/macs/{}", self.mac);
        serde_json::json!({
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "mac": self.mac,
            "local-ipv4": self.primary_ip,
            "placement/region": REGION,
            "placement/availability-zone": self.zone,
            format!("{base}/interface-id"): self.primary_eni_id,
            format!("{base}/subnet-id"): self.subnet_id,
            format!("{base}/subnet-ipv4-cidr-block"): self.subnet_cidr,
            format!("{base}/security-group-ids"): self.security_group,
            format!("{base}/vpc-id"): self.vpc_id,
            format!("{base}/vpc-ipv4-cidr-blocks"): VPC_CIDR,
        })
    }
}

/// The fake metadata service (`tests/support/fake_imds.py`), serving a `World`'s identity.
#[derive(Debug)]
pub struct FakeImds {
    _child: ChildGuard,
    _file: tempfile::NamedTempFile,
    pub addr: String,
}

impl FakeImds {
    pub async fn start(world: &World) -> FakeImds {
        FakeImds::serving(world.metadata()).await
    }

    /// Serves `metadata` (paths below /latest/meta-data/ to their text), e.g. a world's with a
    /// path left out.
    pub async fn serving(metadata: serde_json::Value) -> FakeImds {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), metadata.to_string()).expect("writing metadata");
        let (child, addr) = start_script("fake_imds.py", &[file.path().to_str().expect("UTF-8 temp path")]);
        FakeImds { _child: child, _file: file, addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (token requests, reads served, reads refused for lack of a token).
    pub async fn stats(&self) -> (u64, u64, u64) {
        let (_, body) = http(&self.addr, "GET", "/_calls", "").await.expect("fake IMDS");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (v["tokens"].as_u64().unwrap_or(0), v["gets"].as_u64().unwrap_or(0), v["refused"].as_u64().unwrap_or(0))
    }
}

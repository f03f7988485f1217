//! The node side of secondary ENIs, and pods the plugin wires on them, against moto, in a
//! network namespace the test makes: veths carrying the MACs moto gave the ENIs stand in for the
//! ENIs' interfaces. enipoold runs in the test's namespace (to reach moto on loopback) and does
//! the node side in the test's node namespace (`--host-netns`); the plugin runs in the node
//! namespace as a runtime runs it. Needs root and `ip`; nothing touches the root namespace.

use std::time::Duration;

use crate::common::netns::Netns;
use crate::common::{Daemon, eni_node_side_is_set_up, eventually, pool_settles};
use enipool_ec2::testing::{FakeEc2, World};

#[tokio::test]
async fn each_secondary_enis_node_side_is_set_up_when_its_interface_appears() {
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make(&client, "m5.large").await;
    let ns = Netns::new();
    // The primary ENI's interface.
    ns.ip(&["link", "add", "eth0", "address", &world.mac, "type", "veth", "peer", "name", "eth0-peer"]);

    let tmp = tempfile::TempDir::new().unwrap();
    let endpoint = ec2.endpoint();
    let netns = ns.path();
    let flags: Vec<(&str, &str)> = vec![
        ("--provider", "ec2"),
        ("--instance-id", world.instance_id.as_str()),
        ("--ec2-endpoint", endpoint.as_str()),
        ("--ec2-backoff-base", "10ms"),
        ("--ec2-rate-limit", "0"),
        ("--ec2-consistency-window", "0"),
        ("--leaked-eni-interval", "0"),
        ("--eni-host-setup", "true"),
        ("--host-netns", netns.as_str()),
        ("--eni-mtu", "9001"),
    ];
    let d = Daemon::start_in(tmp.path(), &flags).await;
    let api = d.unix();
    eventually("ip_forward=1 and rp_filter=2 on the primary interface", async || {
        let (fwd, rp) = (ns.read("/proc/sys/net/ipv4/ip_forward"), ns.read("/proc/sys/net/ipv4/conf/eth0/rp_filter"));
        if fwd == "1" && rp == "2" { Ok(()) } else { Err(format!("ip_forward={fwd} rp_filter={rp}")) }
    })
    .await;

    // A second ENI; its interface appears only later (EC2 attaches asynchronously).
    api.lease("pod").await;
    pool_settles(&api, &[("enis", 2), ("leased", 1)], Duration::from_millis(100)).await;
    let eni = api.enis().await.into_iter().find(|e| e["device_number"] == 1).expect("the second ENI");
    let eni_id = eni["id"].as_str().unwrap().to_string();
    let eni_ip = eni["primary_ip"].as_str().unwrap().to_string();
    assert_eq!(eni["route_table"], 2);
    let mac = world
        .enis(&client)
        .await
        .iter()
        .find(|n| n.network_interface_id() == Some(eni_id.as_str()))
        .and_then(|n| n.mac_address().map(str::to_ascii_lowercase))
        .expect("moto's MAC of the ENI");
    ns.ip(&["link", "add", "eth1", "address", &mac, "type", "veth", "peer", "name", "eth1-peer"]);

    eni_node_side_is_set_up(&ns, "eth1", &eni_ip).await;
    let rule = format!("from {eni_ip} lookup 2");

    // A restart sets it up again without duplicating anything.
    let d = d.restart().await;
    let api = d.unix();
    pool_settles(&api, &[("enis", 2), ("leased", 1)], Duration::from_millis(100)).await;
    let rules = ns.ip(&["rule", "show"]);
    assert_eq!(rules.matches(&rule).count(), 1, "{rules}");
    assert_eq!(ns.ip(&["route", "show", "table", "2"]).lines().count(), 2);
}

/// The plugin binary, beside enipoold in the target dir (built if missing: it is another
/// package of the workspace).
fn plugin() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_enipoold")).parent().unwrap().to_path_buf();
    let bin = dir.join("enipool-cni");
    if !bin.exists() {
        let status = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "-p", "enipool-cni", "--bin", "enipool-cni"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success() && bin.exists(), "{} is missing after cargo build", bin.display());
    }
    bin
}

/// Runs the plugin inside `node` as a runtime does (`ip netns exec`), with `command` for `pod`
/// and the conf on stdin; exit code and stdout.
fn cni(node: &Netns, conf: &serde_json::Value, command: &str, container_id: &str, pod: &Netns) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &node.0])
        .arg(plugin())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"))
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the plugin");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the plugin panicked: {stderr}");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn pods_on_a_secondary_enis_prefix_are_wired_through_its_table_and_rebuilt() {
    // A t3.nano ENI has one slot beside its primary: one prefix. Sixteen leases fill the
    // primary's; the next prefix comes on a second ENI, and pods the plugin wires get its
    // addresses, one /32 each, their traffic leaving by that ENI's route table. An emptied
    // ledger rebuilds their leases from the node when EC2's listing brings the prefix back.
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make(&client, "t3.nano").await;
    let ns = Netns::new();
    ns.ip(&["link", "add", "eth0", "address", &world.mac, "type", "veth", "peer", "name", "eth0-peer"]);
    ns.ip(&["addr", "add", &format!("{}/16", world.primary_ip), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth0-peer", "up"]);

    let tmp = tempfile::TempDir::new().unwrap();
    let endpoint = ec2.endpoint();
    let netns = ns.path();
    let flags: Vec<(&str, &str)> = vec![
        ("--provider", "ec2"),
        ("--instance-id", world.instance_id.as_str()),
        ("--ec2-endpoint", endpoint.as_str()),
        ("--ec2-backoff-base", "10ms"),
        ("--ec2-rate-limit", "0"),
        ("--ec2-consistency-window", "0"),
        ("--leaked-eni-interval", "0"),
        ("--eni-host-setup", "true"),
        ("--host-netns", netns.as_str()),
        ("--eni-mtu", "9001"),
        ("--prefix-delegation", "true"),
    ];
    let d = Daemon::start_in(tmp.path(), &flags).await;
    let api = d.unix();
    for i in 0..16 {
        api.lease(&format!("filler{i:02}")).await;
    }
    let p = pool_settles(&api, &[("enis", 2), ("prefixes", 2), ("leased", 16)], Duration::from_millis(100)).await;
    assert_eq!(p["mode"], "prefixes");
    let eni = api.enis().await.into_iter().find(|e| e["device_number"] == 1).expect("the second ENI");
    let eni_id = eni["id"].as_str().unwrap().to_string();
    let prefix: ipnet::Ipv4Net = eni["prefixes"][0]["cidr"].as_str().unwrap().parse().unwrap();
    let mac = world
        .enis(&client)
        .await
        .iter()
        .find(|n| n.network_interface_id() == Some(eni_id.as_str()))
        .and_then(|n| n.mac_address().map(str::to_ascii_lowercase))
        .expect("moto's MAC of the ENI");
    ns.ip(&["link", "add", "eth1", "address", &mac, "type", "veth", "peer", "name", "eth1-peer"]);
    eni_node_side_is_set_up(&ns, "eth1", eni["primary_ip"].as_str().unwrap()).await;

    let state = tempfile::TempDir::new().unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "aws-cni", "type": "enipool-cni",
        "socket": d.socket, "stateDir": state.path(), "logFile": state.path().join("cni.log"),
    });
    let pods: Vec<(String, Netns)> =
        (0..2).map(|i| (format!("pod-{i}-{}", std::process::id()), Netns::new())).collect();
    let mut ips = Vec::new();
    for (id, pod) in &pods {
        let (exit, out) = cni(&ns, &conf, "ADD", id, pod);
        assert_eq!(exit, 0, "ADD {id}: {out}");
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        let (ip, len) = result["ips"][0]["address"].as_str().unwrap().split_once('/').unwrap();
        assert_eq!(len, "32", "one /32 per pod: {result}");
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(prefix.contains(&ip), "{ip} in the second ENI's prefix {prefix}");
        let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_string();
        // Its traffic out of the VPC leaves by the second ENI's table, as the kernel routes it.
        let via = ns.ip(&["route", "get", "203.0.113.1", "from", &ip.to_string(), "iif", &host_veth]);
        assert!(via.contains("dev eth1") && via.contains("table 2"), "{via}");
        ips.push(ip);
    }
    let ping = |from: &Netns, to: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &from.0, "ping", "-c", "1", "-W", "2", to])
            .status()
            .unwrap()
            .success()
    };
    assert!(ping(&pods[0].1, &world.primary_ip), "a pod reaches the node");
    assert!(ping(&pods[0].1, &ips[1].to_string()), "a pod reaches the other");

    // An emptied ledger: the two pods' leases come back from the node, on the same addresses.
    let mut d = d;
    assert!(d.terminate(Duration::from_secs(5)).await.success());
    std::fs::remove_dir_all(tmp.path().join("ledger")).unwrap();
    let d = Daemon::start_in(tmp.path(), &flags).await;
    let api = d.unix();
    for ((id, _), ip) in pods.iter().zip(&ips) {
        let l = api.get(&format!("/v1/leases/aws-cni/{id}/eth0")).await.expect(200).json();
        assert_eq!(l["ip"], ip.to_string(), "{l}");
    }
    let p = pool_settles(&api, &[("enis", 2), ("leased", 2), ("lost", 0)], Duration::from_millis(100)).await;
    assert!(p["prefixes"].as_u64() >= Some(2), "{p}");
    for (id, pod) in &pods {
        let (exit, out) = cni(&ns, &conf, "DEL", id, pod);
        assert_eq!(exit, 0, "DEL {id}: {out}");
    }
    // (The fillers had no pods on the node: the emptied ledger forgot them.) One warm prefix
    // is all that is left to keep; the second ENI goes.
    pool_settles(&api, &[("enis", 1), ("prefixes", 1), ("leased", 0)], Duration::from_millis(100)).await;
}

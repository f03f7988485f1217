//! The node side of secondary ENIs, against moto, in a network namespace the test makes: veths
//! carrying the MACs moto gave the ENIs stand in for the ENIs' interfaces. enipoold runs in the
//! test's namespace (to reach moto on loopback) and does the node side in the test's node
//! namespace (`--host-netns`). Needs root and `ip`; nothing touches the root namespace.

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

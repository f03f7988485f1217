//! The test EC2 server's subnet model (`tests/support/subnet_model.py`) held to EC2's documented
//! behaviour for secondary IPs and /28 prefixes, through the real aws-sdk-ec2, which so parses
//! every answer the model gives. One moto server per test.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use enipool_ec2::testing::aws_sdk_ec2::Client;
use enipool_ec2::testing::aws_sdk_ec2::error::ProvideErrorMetadata;
use enipool_ec2::testing::{FakeEc2, PREFIX_LEN, World, set_aws_env};
use ipnet::Ipv4Net;

async fn setup(instance_type: &str, subnet: &str) -> (FakeEc2, Client, World) {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, instance_type, subnet).await;
    (ec2, client, world)
}

/// The error code of a failed call; panics if it succeeded.
fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected an EC2 error, got {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("an error without a code: {e:?}")).to_string(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Assigns `n` secondary IPs; the addresses the answer names.
async fn assign_ips(client: &Client, eni: &str, n: i32) -> Vec<String> {
    let out = client
        .assign_private_ip_addresses()
        .network_interface_id(eni)
        .secondary_private_ip_address_count(n)
        .send()
        .await
        .unwrap_or_else(|e| panic!("assigning {n} IPs to {eni}: {e:?}"));
    assert!(out.assigned_ipv4_prefixes().is_empty(), "{out:?}");
    out.assigned_private_ip_addresses().iter().map(|a| a.private_ip_address().expect("address").to_string()).collect()
}

/// Assigns `n` prefixes; the prefixes the answer names.
async fn assign_prefixes(client: &Client, eni: &str, n: i32) -> Vec<String> {
    let out = client
        .assign_private_ip_addresses()
        .network_interface_id(eni)
        .ipv4_prefix_count(n)
        .send()
        .await
        .unwrap_or_else(|e| panic!("assigning {n} prefixes to {eni}: {e:?}"));
    assert!(out.assigned_private_ip_addresses().is_empty(), "{out:?}");
    assert_eq!(out.network_interface_id(), Some(eni));
    out.assigned_ipv4_prefixes().iter().map(|p| p.ipv4_prefix().expect("prefix").to_string()).collect()
}

/// Every address and prefix each ENI of the VPC holds, as DescribeNetworkInterfaces lists them.
async fn holdings(client: &Client, world: &World) -> (Vec<Ipv4Addr>, Vec<Ipv4Net>) {
    let mut ips = Vec::new();
    let mut prefixes = Vec::new();
    for n in world.enis(client).await {
        ips.extend(n.private_ip_addresses().iter().filter_map(|a| a.private_ip_address()).map(ip));
        prefixes.extend(n.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix()).map(net));
    }
    (ips, prefixes)
}

/// What EC2 promises of a subnet's holdings: no address twice, none reserved, every prefix an
/// aligned /28 inside the subnet, and nothing overlapping anything else.
fn assert_disjoint(subnet: Ipv4Net, ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) {
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "an address held twice: {ips:?}");
    let first = u32::from(subnet.network());
    for a in ips {
        assert!(subnet.contains(a), "{a} outside {subnet}");
        let offset = u32::from(*a) - first;
        assert!(offset > 3 && *a != subnet.broadcast(), "{a} is reserved in {subnet}");
        assert!(!prefixes.iter().any(|p| p.contains(a)), "{a} inside a prefix: {prefixes:?}");
    }
    for (i, p) in prefixes.iter().enumerate() {
        assert_eq!(p.prefix_len(), PREFIX_LEN, "{p}");
        assert_eq!(p.network(), p.trunc().network(), "{p} aligned");
        assert!(subnet.contains(&p.network()) && subnet.contains(&p.broadcast()), "{p} inside {subnet}");
        assert!(p.network() != subnet.network() && p.broadcast() != subnet.broadcast(), "{p} holds reserved addresses");
        assert!(
            prefixes[i + 1..].iter().all(|q| !q.contains(&p.network()) && !p.contains(&q.network())),
            "{p} overlaps"
        );
    }
}

#[tokio::test]
async fn secondary_ips_are_the_lowest_free_addresses_and_only_new_ones_are_answered() {
    let (_ec2, client, world) = setup("m5.large", "10.0.1.0/24").await;
    // .0 to .3 are reserved: the instance got the first usable address.
    assert_eq!(world.primary_ip, "10.0.1.4");
    let eni = world.primary_eni_id.as_str();
    assert_eq!(assign_ips(&client, eni, 3).await, ["10.0.1.5", "10.0.1.6", "10.0.1.7"]);
    client
        .unassign_private_ip_addresses()
        .network_interface_id(eni)
        .private_ip_addresses("10.0.1.6")
        .send()
        .await
        .expect("unassign");
    assert_eq!(assign_ips(&client, eni, 2).await, ["10.0.1.6", "10.0.1.8"], "the lowest free first");
    assert_eq!(world.attached(&client).await[0].2, ["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8"]);
    // An address in use, reserved, or outside the subnet is refused by name.
    let explicit =
        |a: &str| client.assign_private_ip_addresses().network_interface_id(eni).private_ip_addresses(a).send();
    assert_eq!(code(explicit("10.0.1.5").await), "InvalidIPAddress.InUse");
    assert_eq!(code(explicit("10.0.1.2").await), "InvalidParameterValue");
    assert_eq!(code(explicit("10.0.1.255").await), "InvalidParameterValue");
    assert_eq!(code(explicit("10.0.2.9").await), "InvalidParameterValue");
    assert_eq!(explicit("10.0.1.200").await.expect("a free address").assigned_private_ip_addresses().len(), 1);
}

#[tokio::test]
async fn prefixes_are_free_aligned_blocks_listed_wherever_ec2_lists_them() {
    let (_ec2, client, world) = setup("m5.large", "10.0.1.0/24").await;
    let eni = world.primary_eni_id.as_str();
    assert_eq!(assign_ips(&client, eni, 1).await, ["10.0.1.5"]);
    // The first block holds reserved addresses and ours: the prefixes start at .16.
    assert_eq!(assign_prefixes(&client, eni, 2).await, ["10.0.1.16/28", "10.0.1.32/28"]);
    // Secondary IPs drawn afterwards go round the prefixes.
    let more = assign_ips(&client, eni, 5).await;
    assert_eq!(more, ["10.0.1.6", "10.0.1.7", "10.0.1.8", "10.0.1.9", "10.0.1.10"]);
    // So does a new ENI's primary, and its own prefixes are the next free blocks.
    let made = client
        .create_network_interface()
        .subnet_id(&world.subnet_id)
        .ipv4_prefix_count(2)
        .send()
        .await
        .expect("CreateNetworkInterface with prefixes");
    let made = made.network_interface().expect("the new ENI");
    assert_eq!(made.private_ip_address(), Some("10.0.1.11"));
    let made_prefixes: Vec<&str> = made.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix()).collect();
    assert_eq!(made_prefixes, ["10.0.1.48/28", "10.0.1.64/28"]);

    // Listed by DescribeNetworkInterfaces and by DescribeInstances.
    assert_eq!(world.attached_prefixes(&client).await[0].1, ["10.0.1.16/28", "10.0.1.32/28"]);
    let instances =
        client.describe_instances().instance_ids(&world.instance_id).send().await.expect("DescribeInstances");
    let nic = instances.reservations()[0].instances()[0]
        .network_interfaces()
        .iter()
        .find(|n| n.network_interface_id() == Some(eni))
        .cloned()
        .expect("the primary ENI");
    let listed: Vec<&str> = nic.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix()).collect();
    assert_eq!(listed, ["10.0.1.16/28", "10.0.1.32/28"]);
    let (ips, prefixes) = holdings(&client, &world).await;
    assert_eq!(prefixes.len(), 4);
    assert_disjoint(net(&world.subnet_cidr), &ips, &prefixes);

    // DescribeSubnets counts each prefix as its 16 addresses.
    let subnets = client.describe_subnets().subnet_ids(&world.subnet_id).send().await.expect("DescribeSubnets");
    let free = subnets.subnets()[0].available_ip_address_count();
    assert_eq!(free, Some(256 - 5 - ips.len() as i32 - 16 * 4), "{ips:?}");

    // Explicit prefixes: free, aligned /28s inside the subnet only.
    let explicit = |p: &str| client.assign_private_ip_addresses().network_interface_id(eni).ipv4_prefixes(p).send();
    assert_eq!(code(explicit("10.0.1.40/28").await), "InvalidParameterValue", "misaligned");
    assert_eq!(code(explicit("10.0.1.32/28").await), "InvalidParameterValue", "in use");
    assert_eq!(code(explicit("10.0.1.0/28").await), "InvalidParameterValue", "holds our addresses");
    assert_eq!(code(explicit("10.0.1.96/27").await), "InvalidParameterValue", "not a /28");
    assert_eq!(code(explicit("10.0.2.16/28").await), "InvalidParameterValue", "outside the subnet");
    assert_eq!(code(explicit("10.0.1.240/28").await), "InvalidParameterValue", "holds the broadcast address");
    let out = explicit("10.0.1.128/28").await.expect("a free block");
    assert_eq!(out.assigned_ipv4_prefixes()[0].ipv4_prefix(), Some("10.0.1.128/28"));
    // One kind per call, as EC2 requires.
    let both = client
        .assign_private_ip_addresses()
        .network_interface_id(eni)
        .secondary_private_ip_address_count(1)
        .ipv4_prefix_count(1)
        .send()
        .await;
    assert_eq!(code(both), "InvalidParameterCombination");
}

#[tokio::test]
async fn a_fragmented_subnet_has_addresses_but_no_free_block_then_runs_out() {
    // A /26: blocks .0 and .48 hold reserved addresses, so only .16 and .32 can be prefixes.
    let (ec2, client, world) = setup("m5.large", "10.0.1.0/26").await;
    let eni = world.primary_eni_id.as_str();
    for a in ["10.0.1.20", "10.0.1.40"] {
        client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .private_ip_addresses(a)
            .send()
            .await
            .expect("an address in each block");
    }
    let prefix = client.assign_private_ip_addresses().network_interface_id(eni).ipv4_prefix_count(1).send().await;
    assert_eq!(code(prefix), "InsufficientCidrBlocks");
    let with_prefix = client.create_network_interface().subnet_id(&world.subnet_id).ipv4_prefix_count(1).send().await;
    assert_eq!(code(with_prefix), "InsufficientCidrBlocks");
    // /32s are still there.
    assert_eq!(assign_ips(&client, eni, 1).await, ["10.0.1.5"]);

    // Fill the subnet: 59 usable addresses, 4 held; an unattached ENI has no slot limit.
    let left = 59 - 4;
    let filler = client
        .create_network_interface()
        .subnet_id(&world.subnet_id)
        .secondary_private_ip_address_count(left - 1)
        .send()
        .await
        .expect("an ENI taking the rest");
    assert_eq!(filler.network_interface().expect("ENI").private_ip_addresses().len(), left as usize);
    let (ips, prefixes) = holdings(&client, &world).await;
    assert_eq!(ips.len(), 59);
    assert_disjoint(net(&world.subnet_cidr), &ips, &prefixes);
    let subnets = client.describe_subnets().subnet_ids(&world.subnet_id).send().await.expect("DescribeSubnets");
    assert_eq!(subnets.subnets()[0].available_ip_address_count(), Some(0));

    let full = client
        .assign_private_ip_addresses()
        .network_interface_id(eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await;
    assert_eq!(code(full), "InsufficientFreeAddressesInSubnet");
    assert_eq!(
        code(client.create_network_interface().subnet_id(&world.subnet_id).send().await),
        "InsufficientFreeAddressesInSubnet"
    );
    let run = client
        .run_instances()
        .image_id("ami-12345678")
        .instance_type("m5.large".into())
        .subnet_id(&world.subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await;
    assert_eq!(code(run), "InsufficientFreeAddressesInSubnet");
    // Nothing a refused call asked for was kept.
    assert_eq!(holdings(&client, &world).await.0.len(), 59);

    // The injected fault answers the same code the model does.
    ec2.inject("AssignPrivateIpAddresses", "cidr", 1).await;
    let injected = client.assign_private_ip_addresses().network_interface_id(eni).ipv4_prefix_count(1).send().await;
    assert_eq!(code(injected), "InsufficientCidrBlocks");
}

#[tokio::test]
async fn each_address_and_prefix_takes_one_slot_of_the_types_limit() {
    // t3.small: 4 IPv4 addresses per interface, the primary among them.
    let (_ec2, client, world) = setup("t3.small", "10.0.1.0/24").await;
    let eni = world.primary_eni_id.as_str();
    assert_eq!(assign_prefixes(&client, eni, 2).await.len(), 2);
    assert_eq!(assign_ips(&client, eni, 1).await.len(), 1);
    let over = client.assign_private_ip_addresses().network_interface_id(eni).ipv4_prefix_count(1).send().await;
    assert_eq!(code(over), "PrivateIpAddressLimitExceeded");
    let over = client
        .assign_private_ip_addresses()
        .network_interface_id(eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await;
    assert_eq!(code(over), "PrivateIpAddressLimitExceeded");

    // Unassigning is all or nothing, and names what is not there.
    let held = world.attached_prefixes(&client).await[0].1.clone();
    let partly = client
        .unassign_private_ip_addresses()
        .network_interface_id(eni)
        .ipv4_prefixes(&held[0])
        .ipv4_prefixes("10.0.1.208/28")
        .send()
        .await;
    assert_eq!(code(partly), "InvalidParameterValue");
    assert_eq!(world.attached_prefixes(&client).await[0].1, held, "nothing was unassigned");
    let primary = client
        .unassign_private_ip_addresses()
        .network_interface_id(eni)
        .private_ip_addresses(&world.primary_ip)
        .send()
        .await;
    assert_eq!(code(primary), "InvalidParameterValue", "the primary is not a secondary address");

    client
        .unassign_private_ip_addresses()
        .network_interface_id(eni)
        .ipv4_prefixes(&held[0])
        .send()
        .await
        .expect("unassign a prefix");
    assert_eq!(world.attached_prefixes(&client).await[0].1, [held[1].clone()]);
    // Its slot is free again, and so is its block: the lowest free one.
    assert_eq!(assign_prefixes(&client, eni, 1).await, [held[0].clone()]);
}

#[tokio::test]
async fn the_stale_fault_answers_a_listing_as_it_was() {
    let (ec2, client, world) = setup("m5.large", "10.0.1.0/24").await;
    let eni = world.primary_eni_id.as_str();
    let before = world.enis(&client).await;
    assert!(before.iter().all(|n| n.ipv4_prefixes().is_empty()));
    let added = assign_prefixes(&client, eni, 1).await;
    ec2.inject("DescribeNetworkInterfaces", "stale", -1).await;
    // The same request: the answer it had before the prefix came.
    let stale = world.enis(&client).await;
    assert_eq!(stale, before);
    assert_eq!(ec2.calls().await.stale.get("DescribeNetworkInterfaces"), Some(&1));
    // A request never answered before has nothing older to give: it is answered as things are.
    let by_id = client.describe_network_interfaces().network_interface_ids(eni).send().await.expect("describe by id");
    let listed: Vec<&str> =
        by_id.network_interfaces()[0].ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix()).collect();
    assert_eq!(listed, added.iter().map(String::as_str).collect::<Vec<_>>());
    ec2.clear().await;
    assert_eq!(world.attached_prefixes(&client).await[0].1, added);
}

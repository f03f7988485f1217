//! Where new ENIs go, against moto and the subnet model: subnet discovery by the reference's
//! tags, the emptiest candidate first, a subnet that answers "exhausted" (or "no free /28")
//! skipped for a while and the next one tried; security groups and tags of new ENIs.

use std::time::Duration;

use enipool_ec2::testing::{FakeEc2, World, aws_sdk_ec2, set_aws_env};
use enipool_ec2::{Ec2Config, Ec2Provider};
use enipool_provider::{Fill, Provider, ProviderError};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

const CLUSTER: &str = "blue";

fn config(world: &World, ec2: &FakeEc2) -> Ec2Config {
    Ec2Config {
        instance_id: Some(world.instance_id.clone()),
        ec2_endpoint: Some(ec2.endpoint()),
        cluster_name: Some(CLUSTER.into()),
        calls: enipool_ec2::CallPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            rate_per_second: 0.0,
            burst: 1,
        },
        detach_wait: Duration::from_secs(2),
        leaked_eni_age: Duration::ZERO,
        consistency_window: Duration::ZERO,
        ..Ec2Config::default()
    }
}

/// A subnet of the world's VPC, in `zone` (the world's when `None`), with `tags`.
async fn subnet(client: &Client, world: &World, cidr: &str, zone: Option<&str>, tags: &[(&str, &str)]) -> String {
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
    // EC2 refuses a tag specification without tags.
    let spec = (!tags.is_empty())
        .then(|| vec![TagSpecification::builder().resource_type(ResourceType::Subnet).set_tags(Some(tags)).build()]);
    let made = client
        .create_subnet()
        .vpc_id(&world.vpc_id)
        .cidr_block(cidr)
        .availability_zone(zone.unwrap_or(&world.zone))
        .set_tag_specifications(spec)
        .send()
        .await
        .expect("CreateSubnet");
    made.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string()
}

/// A security group for pod ENIs in the world's VPC.
async fn pod_security_group(client: &Client, world: &World) -> String {
    let made = client
        .create_security_group()
        .group_name("pods")
        .description("pod ENIs")
        .vpc_id(&world.vpc_id)
        .send()
        .await
        .expect("CreateSecurityGroup");
    made.group_id().expect("group id").to_string()
}

/// Someone else's ENI in `subnet_id` holding `secondaries` addresses beside its primary.
async fn foreign_eni(client: &Client, subnet_id: &str, secondaries: i32) -> String {
    let made = client
        .create_network_interface()
        .subnet_id(subnet_id)
        .secondary_private_ip_address_count(secondaries)
        .send()
        .await
        .expect("a foreign ENI");
    made.network_interface().and_then(|n| n.network_interface_id()).unwrap().to_string()
}

/// The subnet EC2 has the ENI in.
async fn subnet_of(client: &Client, world: &World, eni_id: &str) -> String {
    let enis = world.enis(client).await;
    let eni = enis.iter().find(|n| n.network_interface_id() == Some(eni_id)).expect("the ENI in EC2");
    eni.subnet_id().unwrap().to_string()
}

fn other_zone(zone: &str) -> String {
    let (head, last) = zone.split_at(zone.len() - 1);
    format!("{head}{}", if last == "a" { "b" } else { "a" })
}

#[tokio::test]
async fn discovery_picks_the_emptiest_tagged_subnet_of_the_zone_and_ignores_the_rest() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    let role = ("kubernetes.io/role/cni", "1");
    let small = subnet(&client, &world, "10.0.1.0/25", None, &[role]).await;
    let ours = subnet(&client, &world, "10.0.4.0/22", None, &[role, ("kubernetes.io/cluster/blue", "shared")]).await;
    // Bigger than all of these, and each out for its own reason.
    subnet(&client, &world, "10.0.8.0/21", None, &[("kubernetes.io/role/cni", "0")]).await;
    subnet(&client, &world, "10.0.16.0/21", None, &[role, ("kubernetes.io/cluster/green", "owned")]).await;
    subnet(&client, &world, "10.0.24.0/21", Some(&other_zone(&world.zone)), &[role]).await;
    subnet(&client, &world, "10.0.32.0/21", None, &[("team", "a")]).await;

    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    // Looked at from the start, before any ENI is made.
    let first: Vec<String> = p.candidate_subnets().into_iter().map(|c| c.id).collect();
    assert_eq!(first, [ours.clone(), world.subnet_id.clone(), small.clone()]);
    let eni = p.create_eni(1, Fill::Ips(2)).await.expect("create");
    assert_eq!(eni.subnet_id.as_deref(), Some(ours.as_str()));
    assert_eq!(subnet_of(&client, &world, &eni.id).await, ours, "EC2 has it there");
    assert_eq!(eni.subnet_cidr.to_string(), "10.0.4.0/22");
    assert_eq!(eni.subnet_gateway.to_string(), "10.0.4.1");
    assert_eq!(eni.zone.as_deref(), Some(world.zone.as_str()));
    assert!(eni.secondary_ips.iter().all(|ip| eni.subnet_cidr.contains(ip)));

    // Best first: ours (1,019 free), the node's (250), the small one (123).
    let shown: Vec<(String, u64, bool)> = p.candidate_subnets().into_iter().map(|c| (c.id, c.free, c.node)).collect();
    assert_eq!(shown, [(ours.clone(), 1019, false), (world.subnet_id.clone(), 250, true), (small.clone(), 123, false)]);
    let asked = ec2.requests("DescribeSubnets").await;
    let filters = asked.last().unwrap();
    assert_eq!(filters.get("Filter.1.Name").map(String::as_str), Some("vpc-id"));
    assert_eq!(filters.get("Filter.2.Value.1"), Some(&world.zone), "{filters:?}");

    // The ENI's listing names its subnet too (after a restart, say).
    let again = Ec2Provider::new(config(&world, &ec2), None);
    again.init().await.unwrap();
    let listed = again.list_enis().await.unwrap();
    let listed = listed.iter().find(|e| e.id == eni.id).unwrap();
    assert_eq!((listed.subnet_id.as_deref(), listed.subnet_cidr), (Some(ours.as_str()), eni.subnet_cidr));
}

#[tokio::test]
async fn without_discovery_new_enis_go_to_the_nodes_subnet_with_no_describe() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    subnet(&client, &world, "10.0.4.0/22", None, &[("kubernetes.io/role/cni", "1")]).await;
    let p = Ec2Provider::new(Ec2Config { subnet_discovery: false, ..config(&world, &ec2) }, None);
    p.init().await.expect("init");
    let before = ec2.calls().await.of("DescribeSubnets");
    let eni = p.create_eni(1, Fill::Ips(1)).await.expect("create");
    assert_eq!(subnet_of(&client, &world, &eni.id).await, world.subnet_id);
    assert_eq!(ec2.calls().await.of("DescribeSubnets"), before);
}

#[tokio::test]
async fn a_subnet_that_answers_exhausted_is_skipped_for_a_while_and_the_next_is_tried() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    let tagged = subnet(&client, &world, "10.0.4.0/23", None, &[("kubernetes.io/role/cni", "1")]).await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let first = p.create_eni(1, Fill::Ips(1)).await.expect("create");
    assert_eq!(first.subnet_id.as_deref(), Some(tagged.as_str()));
    // Another node takes the rest of it; our next look at the subnets is an earlier answer
    // (EC2's counts lag), so it is still the emptiest.
    let free_left = 507 - 2 - 1;
    foreign_eni(&client, &tagged, free_left - 1).await;
    ec2.inject("DescribeSubnets", "stale", -1).await;
    let second = p.create_eni(2, Fill::Ips(3)).await.expect("the next subnet takes it");
    assert_eq!(second.subnet_id.as_deref(), Some(world.subnet_id.as_str()));
    let created = ec2.requests("CreateNetworkInterface").await;
    // Ours: those with our description (the other node's has none).
    let in_tagged = |reqs: &[std::collections::BTreeMap<String, String>]| {
        reqs.iter()
            .filter(|r| {
                r.get("SubnetId") == Some(&tagged) && r.get("Description").is_some_and(|d| d.starts_with("enipool-"))
            })
            .count()
    };
    assert_eq!(in_tagged(&created), 2, "the first ENI, and the one it refused");
    let shown = p.candidate_subnets();
    let why = shown.iter().find(|c| c.id == tagged).and_then(|c| c.skipped.clone()).expect("shown as skipped");
    assert!(why.contains("InsufficientFreeAddressesInSubnet"), "{why}");

    // Within the skip period it is not asked again.
    p.delete_eni(&second.id).await.expect("delete");
    let third = p.create_eni(2, Fill::Ips(1)).await.expect("create");
    assert_eq!(third.subnet_id.as_deref(), Some(world.subnet_id.as_str()));
    assert_eq!(in_tagged(&ec2.requests("CreateNetworkInterface").await), 2);

    // When none fits: exhausted, naming each subnet and why.
    let skip_all = Ec2Provider::new(config(&world, &ec2), None);
    skip_all.init().await.unwrap();
    let node_free = 251 - 1 - 1 - 1 - 1;
    foreign_eni(&client, &world.subnet_id, node_free - 1).await;
    ec2.clear().await;
    skip_all.delete_eni(&third.id).await.expect("delete");
    let r = skip_all.create_eni(2, Fill::Ips(9)).await;
    match r {
        Err(ProviderError::SubnetExhausted(m)) => {
            assert!(m.contains(&tagged) && m.contains(&world.subnet_id), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_free_block_skips_a_subnet_for_prefixes_only() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/25").await;
    let fragmented = subnet(&client, &world, "10.0.2.0/24", None, &[("kubernetes.io/role/cni", "1")]).await;
    // An address in each /28 that could be a prefix: the most free addresses, no free block.
    for block in 1..15u32 {
        client
            .create_network_interface()
            .subnet_id(&fragmented)
            .private_ip_address(format!("10.0.2.{}", block * 16 + 4))
            .send()
            .await
            .expect("a blocker ENI");
    }
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let with_prefix = p.create_eni(1, Fill::Prefixes(1)).await.expect("the node's subnet has blocks");
    assert_eq!(with_prefix.subnet_id.as_deref(), Some(world.subnet_id.as_str()));
    let why = p.candidate_subnets().into_iter().find(|c| c.id == fragmented).and_then(|c| c.skipped).unwrap();
    assert!(why.contains("InsufficientCidrBlocks"), "{why}");
    // Single addresses still go there: it has the most.
    let with_ips = p.create_eni(2, Fill::Ips(2)).await.expect("create");
    assert_eq!(with_ips.subnet_id.as_deref(), Some(fragmented.as_str()));
}

#[tokio::test]
async fn new_enis_carry_the_configured_security_groups_and_extra_tags_beside_ours() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make(&client, "m5.large").await;
    let sg = pod_security_group(&client, &world).await;
    let extra = [("team".to_string(), "a".to_string()), ("enipool.io/instance-id".to_string(), "forged".to_string())];
    let cfg = Ec2Config {
        security_groups: vec![sg.clone()],
        additional_tags: extra.into_iter().collect(),
        ..config(&world, &ec2)
    };
    let p = Ec2Provider::new(cfg, None);
    p.init().await.expect("init");
    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");
    let enis = world.enis(&client).await;
    let made = enis.iter().find(|n| n.network_interface_id() == Some(eni.id.as_str())).unwrap();
    // As asked for; moto then lists an attached ENI with its instance's groups too (EC2 does
    // not), so the listing is checked for ours only.
    let asked = ec2.requests("CreateNetworkInterface").await;
    let asked = asked.last().unwrap();
    assert_eq!(asked.get("SecurityGroupId.1"), Some(&sg), "{asked:?}");
    assert!(!asked.contains_key("SecurityGroupId.2"), "{asked:?}");
    assert!(made.groups().iter().any(|g| g.group_id() == Some(sg.as_str())));
    let tag = |k: &str| made.tag_set().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(String::from);
    assert_eq!(tag("team").as_deref(), Some("a"));
    assert_eq!(tag("enipool.io/instance-id"), Some(world.instance_id.clone()), "ours, not overridden");
    assert_eq!(tag("enipool.io/cluster-name").as_deref(), Some(CLUSTER));
}

#[tokio::test]
async fn custom_networking_puts_new_enis_in_the_zones_subnet_with_its_groups() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    let pods = subnet(&client, &world, "10.0.64.0/20", None, &[]).await;
    // Bigger and tagged: discovery would pick it; custom networking does not look.
    subnet(&client, &world, "10.0.128.0/18", None, &[("kubernetes.io/role/cni", "1")]).await;
    let elsewhere = subnet(&client, &world, "10.0.32.0/20", Some(&other_zone(&world.zone)), &[]).await;
    let sg = pod_security_group(&client, &world).await;
    let zones = |subnet: &str, groups: Vec<String>| {
        let z = enipool_provider::ec2_config::ZoneEniConfig { subnet: subnet.into(), security_groups: groups };
        Some([(world.zone.clone(), z)].into_iter().collect())
    };
    let p =
        Ec2Provider::new(Ec2Config { custom_network: zones(&pods, vec![sg.clone()]), ..config(&world, &ec2) }, None);
    assert_eq!(p.init().await.expect("init").zone.as_deref(), Some(world.zone.as_str()));
    let eni = p.create_eni(1, Fill::Ips(3)).await.expect("create");
    assert_eq!(subnet_of(&client, &world, &eni.id).await, pods);
    assert_eq!(eni.subnet_cidr.to_string(), "10.0.64.0/20");
    let asked = ec2.requests("CreateNetworkInterface").await;
    assert_eq!(asked.last().unwrap().get("SecurityGroupId.1"), Some(&sg));
    let shown = p.candidate_subnets();
    assert_eq!(shown.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [pods.as_str()]);

    // A subnet of another zone: refused before creating anything.
    let wrong = Ec2Provider::new(Ec2Config { custom_network: zones(&elsewhere, vec![]), ..config(&world, &ec2) }, None);
    wrong.init().await.unwrap();
    let creates = ec2.calls().await.of("CreateNetworkInterface");
    let r = wrong.create_eni(2, Fill::Ips(1)).await;
    assert!(matches!(r, Err(ProviderError::Failed(ref m)) if m.contains("zone")), "{r:?}");
    // No table for this zone.
    let none = Ec2Provider::new(
        Ec2Config {
            custom_network: Some(
                [(
                    other_zone(&world.zone),
                    enipool_provider::ec2_config::ZoneEniConfig { subnet: elsewhere.clone(), security_groups: vec![] },
                )]
                .into_iter()
                .collect(),
            ),
            ..config(&world, &ec2)
        },
        None,
    );
    none.init().await.unwrap();
    let r = none.create_eni(2, Fill::Ips(1)).await;
    assert!(
        matches!(r, Err(ProviderError::Failed(ref m)) if m.contains(&format!("[eni-config.{}]", world.zone))),
        "{r:?}"
    );
    assert_eq!(ec2.calls().await.of("CreateNetworkInterface"), creates, "nothing created");
}

#[tokio::test]
async fn a_subnet_that_fails_otherwise_is_skipped_while_another_candidate_remains() {
    // A policy that allows only some subnets, say: one candidate's create fails with a plain
    // error. The next is tried; with no next, the error is the answer and nothing is skipped.
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    let tagged = subnet(&client, &world, "10.0.4.0/22", None, &[("kubernetes.io/role/cni", "1")]).await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    ec2.inject("CreateNetworkInterface", "invalid", 1).await;
    let eni = p.create_eni(1, Fill::Ips(1)).await.expect("the next candidate");
    assert_eq!(eni.subnet_id.as_deref(), Some(world.subnet_id.as_str()));
    let shown = p.candidate_subnets();
    assert!(shown.iter().find(|c| c.id == tagged).and_then(|c| c.skipped.clone()).is_some(), "{shown:?}");

    let only = Ec2Provider::new(Ec2Config { subnet_discovery: false, ..config(&world, &ec2) }, None);
    only.init().await.unwrap();
    ec2.inject("CreateNetworkInterface", "invalid", 1).await;
    assert!(matches!(only.create_eni(2, Fill::Ips(1)).await, Err(ProviderError::Failed(_))));
    assert!(only.candidate_subnets().iter().all(|c| c.skipped.is_none()), "the one subnet is not skipped");
    only.create_eni(2, Fill::Ips(1)).await.expect("tried again at once");
}

#[tokio::test]
async fn a_skip_ends_after_its_period_and_the_subnet_is_asked_again() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    let world = World::make_in(&client, "m5.large", "10.0.0.0/24").await;
    let tagged = subnet(&client, &world, "10.0.4.0/23", None, &[("kubernetes.io/role/cni", "1")]).await;
    let skip = Duration::from_millis(300);
    let p = Ec2Provider::new(Ec2Config { subnet_skip: skip, ..config(&world, &ec2) }, None);
    p.init().await.expect("init");
    p.create_eni(1, Fill::Ips(1)).await.expect("create");
    foreign_eni(&client, &tagged, 507 - 2 - 1 - 1).await;
    ec2.inject("DescribeSubnets", "stale", -1).await;
    let ours_in_tagged = || async {
        ec2.requests("CreateNetworkInterface")
            .await
            .iter()
            .filter(|r| {
                r.get("SubnetId") == Some(&tagged) && r.get("Description").is_some_and(|d| d.starts_with("enipool-"))
            })
            .count()
    };
    let second = p.create_eni(2, Fill::Ips(1)).await.expect("the node's subnet");
    assert_eq!(ours_in_tagged().await, 2);
    assert!(p.candidate_subnets().iter().any(|c| c.id == tagged && c.skipped.is_some()));
    // Shown as skipped until the period ends, then not; then it is asked again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.candidate_subnets().iter().any(|c| c.skipped.is_some()) {
        assert!(std::time::Instant::now() < deadline, "the skip did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.delete_eni(&second.id).await.expect("delete");
    p.create_eni(2, Fill::Ips(1)).await.expect("the node's subnet again");
    assert_eq!(ours_in_tagged().await, 3, "asked again once the skip ended");
}

//! The EC2 provider against a real moto server (behind the fault layer), one server per test.

use std::time::{Duration, Instant};

use enipool_ec2::testing::{FakeEc2, FakeImds, World, set_aws_env};
use enipool_ec2::{CallPolicy, Ec2Config, Ec2Provider, TAG_CLUSTER, TAG_CREATED_AT, TAG_INSTANCE_ID};
use enipool_provider::{Fill, Limits, Provider, ProviderError};

fn policy() -> CallPolicy {
    CallPolicy {
        max_attempts: 5,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        rate_per_second: 0.0,
        burst: 1,
    }
}

fn config(world: &World, ec2: &FakeEc2) -> Ec2Config {
    Ec2Config {
        instance_id: Some(world.instance_id.clone()),
        instance_type: None,
        imds_endpoint: "http://127.0.0.1:9".into(),
        ec2_endpoint: Some(ec2.endpoint()),
        cluster_name: None,
        calls: policy(),
        detach_wait: Duration::from_secs(2),
        leaked_eni_age: Duration::ZERO,
        consistency_window: Duration::ZERO,
        ..Ec2Config::default()
    }
}

/// An ENI `p` (initialised) creates at device 1 and then leaves detached, as a node killed
/// between Detach and Delete does; its id.
async fn create_and_leave_detached(p: &Ec2Provider, world: &World, client: &aws_sdk_ec2::Client) -> String {
    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");
    let att = world
        .enis(client)
        .await
        .iter()
        .find(|n| n.network_interface_id() == Some(eni.id.as_str()))
        .and_then(|n| n.attachment().and_then(|a| a.attachment_id()).map(String::from))
        .expect("the new ENI is attached");
    client.detach_network_interface().attachment_id(att).send().await.expect("detach");
    eni.id
}

async fn setup(instance_type: &str) -> (FakeEc2, World) {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let world = World::make(&ec2.client(), instance_type).await;
    (ec2, world)
}

#[tokio::test]
async fn identity_from_describe_instances() {
    let (ec2, world) = setup("m5.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    let info = p.init().await.expect("init");
    assert_eq!(info.instance_id, world.instance_id);
    assert_eq!(info.instance_type, "m5.large");
    assert_eq!(info.limits, Limits { max_enis: 3, ipv4_per_eni: 10 });
    assert_eq!(info.primary_eni_id, world.primary_eni_id);
    assert_eq!(info.primary_ip.to_string(), world.primary_ip);
    assert_eq!(info.vpc_cidrs, vec!["10.0.0.0/16".parse().unwrap()]);
    // The built-in table answered: no DescribeInstanceTypes.
    assert_eq!(ec2.calls().await.of("DescribeInstanceTypes"), 0);
    let enis = p.list_enis().await.expect("list");
    assert_eq!(enis.len(), 1, "{enis:?}");
    assert!(enis[0].primary);
    assert_eq!(enis[0].device_number, 0);
    assert_eq!(enis[0].mac.as_deref(), Some(world.mac.as_str()));
    assert_eq!(enis[0].subnet_gateway.to_string(), "10.0.0.1");
}

#[tokio::test]
async fn identity_from_the_metadata_service_with_a_token() {
    let (ec2, world) = setup("m5.large").await;
    let imds = FakeImds::start(&world).await;
    let c = Ec2Config { instance_id: None, imds_endpoint: imds.endpoint(), ..config(&world, &ec2) };
    let p = Ec2Provider::new(c, None);
    let info = p.init().await.expect("init");
    assert_eq!(info.instance_id, world.instance_id);
    assert_eq!(info.primary_eni_id, world.primary_eni_id);
    assert_eq!(info.limits.max_enis, 3);
    let (tokens, gets, refused) = imds.stats().await;
    assert!(tokens >= 1 && gets >= 8, "tokens {tokens}, gets {gets}");
    assert_eq!(refused, 0, "every read carried the IMDSv2 token");
    // No DescribeInstances needed.
    assert_eq!(ec2.calls().await.of("DescribeInstances"), 0);
    assert_eq!(p.list_enis().await.expect("list").len(), 1);
    assert_eq!(info.zone.as_deref(), Some(world.zone.as_str()));
}

#[tokio::test]
async fn the_zone_comes_from_the_nodes_subnet_when_the_metadata_service_has_none() {
    // Custom networking needs the zone; a metadata service without placement/availability-zone
    // must not leave it unknown.
    let (ec2, world) = setup("m5.large").await;
    let mut metadata = world.metadata();
    metadata.as_object_mut().unwrap().remove("placement/availability-zone");
    let imds = FakeImds::serving(metadata).await;
    let p =
        Ec2Provider::new(Ec2Config { instance_id: None, imds_endpoint: imds.endpoint(), ..config(&world, &ec2) }, None);
    let info = p.init().await.expect("init");
    assert_eq!(info.zone.as_deref(), Some(world.zone.as_str()));
}

#[tokio::test]
async fn unknown_types_get_limits_from_describe_instance_types() {
    let (ec2, world) = setup("m6i.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    let info = p.init().await.expect("init");
    assert_eq!(info.limits, Limits { max_enis: 3, ipv4_per_eni: 10 });
    assert_eq!(ec2.calls().await.of("DescribeInstanceTypes"), 1);
}

#[tokio::test]
async fn grows_and_shrinks_within_the_type_limits() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let p = Ec2Provider::new(Ec2Config { cluster_name: Some("prod".into()), ..config(&world, &ec2) }, None);
    p.init().await.expect("init");

    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");
    assert_eq!(eni.device_number, 1);
    assert!(!eni.primary && eni.secondary_ips.is_empty());
    let moto = world.enis(&client).await;
    let made = moto.iter().find(|n| n.network_interface_id() == Some(eni.id.as_str())).expect("in moto");
    assert_eq!(made.description(), Some(format!("enipool-{}", world.instance_id).as_str()));
    let att = made.attachment().expect("attached");
    assert_eq!(att.instance_id(), Some(world.instance_id.as_str()));
    assert_eq!(att.device_index(), Some(1));
    // moto ignores DeleteOnTermination; what we asked for is in the request.
    let modify = ec2.requests("ModifyNetworkInterfaceAttribute").await;
    assert_eq!(modify.len(), 1, "{modify:?}");
    assert_eq!(modify[0].get("NetworkInterfaceId"), Some(&eni.id));
    assert_eq!(modify[0].get("Attachment.DeleteOnTermination").map(String::as_str), Some("true"));
    assert_eq!(modify[0].get("Attachment.AttachmentId").map(String::as_str), att.attachment_id());
    let tag = |k: &str| made.tag_set().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(String::from);
    assert_eq!(tag(TAG_INSTANCE_ID).as_deref(), Some(world.instance_id.as_str()));
    assert_eq!(tag(TAG_CLUSTER).as_deref(), Some("prod"));
    assert!(tag(TAG_CREATED_AT).is_some_and(|t| t.ends_with('Z')), "{:?}", tag(TAG_CREATED_AT));
    assert_eq!(
        made.groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(),
        vec![world.security_group.as_str()]
    );
    assert_eq!(made.subnet_id(), Some(world.subnet_id.as_str()));

    let ips = p.assign_ips(&eni.id, 9).await.expect("assign");
    assert_eq!(ips.len(), 9);
    let attached = world.attached(&client).await;
    assert_eq!(attached[1].2.len(), 9, "{attached:?}");
    // 10 IPv4 per ENI on an m5.large: the primary and 9 secondaries. We refuse the 10th.
    assert!(matches!(p.assign_ips(&eni.id, 1).await, Err(ProviderError::Limit(_))));
    p.create_eni(2, Fill::NOTHING).await.expect("third ENI");
    assert!(
        matches!(p.create_eni(3, Fill::NOTHING).await, Err(ProviderError::Limit(_))),
        "a fourth ENI is beyond the limit"
    );
    assert_eq!(world.attached(&client).await.len(), 3);

    p.unassign_ips(&eni.id, &ips[..2]).await.expect("unassign");
    assert_eq!(world.attached(&client).await[1].2.len(), 7);
    let listed = p.list_enis().await.expect("list");
    assert_eq!(listed.iter().find(|e| e.id == eni.id).unwrap().secondary_ips.len(), 7);

    assert!(p.delete_eni(&world.primary_eni_id).await.is_err(), "never the primary");
    p.delete_eni(&eni.id).await.expect("delete");
    assert!(world.enis(&client).await.iter().all(|n| n.network_interface_id() != Some(eni.id.as_str())));
    let calls = ec2.calls().await;
    assert_eq!(calls.of("DetachNetworkInterface"), 1);
    assert_eq!(calls.of("DeleteNetworkInterface"), 1);
    assert_eq!(p.list_enis().await.unwrap().len(), 2);
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_but_bad_requests_are_not() {
    let (ec2, world) = setup("m5.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");

    ec2.inject("AssignPrivateIpAddresses", "throttle", 2).await;
    ec2.inject("AssignPrivateIpAddresses", "500", 1).await;
    let before = ec2.calls().await.of("AssignPrivateIpAddresses");
    assert_eq!(p.assign_ips(&eni.id, 3).await.expect("assign after retries").len(), 3);
    assert_eq!(ec2.calls().await.of("AssignPrivateIpAddresses") - before, 4);

    ec2.inject("AssignPrivateIpAddresses", "invalid", 1).await;
    let err = p.assign_ips(&eni.id, 1).await.expect_err("invalid is final");
    assert!(err.to_string().contains("InvalidParameterValue"), "{err}");
    assert_eq!(ec2.calls().await.of("AssignPrivateIpAddresses") - before, 5);

    // Bounded: throttled for good gives up after max_attempts.
    ec2.inject("AssignPrivateIpAddresses", "throttle", -1).await;
    let err = p.assign_ips(&eni.id, 1).await.expect_err("gives up");
    assert!(err.to_string().contains("RequestLimitExceeded") && err.to_string().contains("5 attempts"), "{err}");
    ec2.clear().await;
    assert_eq!(world.attached(&ec2.client()).await[1].2.len(), 3, "nothing assigned by the failed calls");
}

#[tokio::test]
async fn subnet_exhaustion_is_reported_as_such() {
    let (ec2, world) = setup("m5.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");
    ec2.inject("AssignPrivateIpAddresses", "subnet", 1).await;
    assert!(matches!(p.assign_ips(&eni.id, 2).await, Err(ProviderError::SubnetExhausted(_))));
    ec2.inject("CreateNetworkInterface", "subnet", 1).await;
    assert!(matches!(p.create_eni(2, Fill::NOTHING).await, Err(ProviderError::SubnetExhausted(_))));
}

#[tokio::test]
async fn an_eni_that_fails_to_attach_is_deleted() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    ec2.inject("AttachNetworkInterface", "invalid", 1).await;
    assert!(p.create_eni(1, Fill::NOTHING).await.is_err());
    let calls = ec2.calls().await;
    assert_eq!(calls.of("CreateNetworkInterface"), 1);
    assert_eq!(calls.of("DeleteNetworkInterface"), 1);
    assert_eq!(world.enis(&client).await.len(), 1, "only the primary ENI is left");

    // Failing after the attach (DeleteOnTermination) rolls back too: detach, then delete.
    ec2.inject("ModifyNetworkInterfaceAttribute", "invalid", 1).await;
    assert!(p.create_eni(1, Fill::NOTHING).await.is_err());
    assert_eq!(world.enis(&client).await.len(), 1, "only the primary ENI is left");
    // And the device index is free again.
    p.create_eni(1, Fill::NOTHING).await.expect("create after the rollbacks");
}

#[tokio::test]
async fn a_hung_call_times_out_and_is_retried() {
    let (ec2, world) = setup("m5.large").await;
    let c = Ec2Config {
        calls: CallPolicy { timeout: Duration::from_millis(300), max_attempts: 2, ..policy() },
        ..config(&world, &ec2)
    };
    let p = Ec2Provider::new(c, None);
    p.init().await.expect("init");
    ec2.inject("DescribeNetworkInterfaces", "hang", 1).await;
    let started = Instant::now();
    assert_eq!(p.list_enis().await.expect("second attempt").len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    ec2.inject("DescribeNetworkInterfaces", "hang", 2).await;
    let err = p.list_enis().await.expect_err("both attempts hang");
    assert!(err.to_string().contains("Timeout"), "{err}");
    ec2.release().await;
}

#[tokio::test]
async fn the_sweep_deletes_our_detached_enis_and_nothing_else() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let p = Ec2Provider::new(Ec2Config { cluster_name: Some("prod".into()), ..config(&world, &ec2) }, None);
    p.init().await.expect("init");
    // Ours, left detached (a node killed between Detach and Delete).
    let leaked = create_and_leave_detached(&p, &world, &client).await;
    // Ours and attached: kept.
    let live = p.create_eni(2, Fill::NOTHING).await.expect("create");
    // Someone else's, detached: kept.
    let foreign = client.create_network_interface().subnet_id(&world.subnet_id).send().await.unwrap();
    let foreign = foreign.network_interface().unwrap().network_interface_id().unwrap().to_string();
    // Another cluster's: kept.
    let other = Ec2Provider::new(Ec2Config { cluster_name: Some("staging".into()), ..config(&world, &ec2) }, None);
    other.init().await.unwrap();
    let _ = other.list_enis().await.unwrap();

    let swept = p.sweep_leaked_enis().await.expect("sweep");
    assert_eq!(swept, vec![leaked.clone()]);
    let left: Vec<String> =
        world.enis(&client).await.iter().filter_map(|n| n.network_interface_id().map(String::from)).collect();
    assert!(!left.contains(&leaked));
    assert!(left.contains(&live.id) && left.contains(&foreign), "{left:?}");

    // Younger than the age: kept.
    let young = Ec2Provider::new(
        Ec2Config {
            cluster_name: Some("prod".into()),
            leaked_eni_age: Duration::from_secs(3600),
            ..config(&world, &ec2)
        },
        None,
    );
    young.init().await.unwrap();
    let eni = young.create_eni(1, Fill::NOTHING).await.unwrap();
    let att = world
        .enis(&client)
        .await
        .iter()
        .find(|n| n.network_interface_id() == Some(eni.id.as_str()))
        .unwrap()
        .attachment()
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string();
    client.detach_network_interface().attachment_id(att).send().await.unwrap();
    assert!(young.sweep_leaked_enis().await.unwrap().is_empty());
}

/// The sweep deletes only what this cluster made: with no cluster name, nothing (another
/// cluster's ENIs carry our tag key too); with one, not an ENI that carries our tags without our
/// description (anyone allowed to tag an ENI could otherwise get it deleted).
#[tokio::test]
async fn the_sweep_deletes_only_this_clusters_enis() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let detached = |p: Ec2Provider| {
        let (client, world) = (client.clone(), &world);
        async move {
            p.init().await.expect("init");
            create_and_leave_detached(&p, world, &client).await
        }
    };
    // Another cluster's leaked ENI, with our tag key.
    let others =
        detached(Ec2Provider::new(Ec2Config { cluster_name: Some("staging".into()), ..config(&world, &ec2) }, None))
            .await;
    // A nameless sweeper deletes nothing, not even what looks like its own.
    let nameless = Ec2Provider::new(config(&world, &ec2), None);
    let own = detached(Ec2Provider::new(config(&world, &ec2), None)).await;
    nameless.init().await.unwrap();
    assert!(nameless.sweep_leaked_enis().await.unwrap().is_empty());
    // Someone tags an ENI of theirs with our tags, cluster included: not ours by description.
    let planted =
        client.create_network_interface().subnet_id(&world.subnet_id).description("theirs").send().await.unwrap();
    let planted = planted.network_interface().unwrap().network_interface_id().unwrap().to_string();
    client
        .create_tags()
        .resources(&planted)
        .tags(aws_sdk_ec2::types::Tag::builder().key(enipool_ec2::TAG_INSTANCE_ID).value("i-0").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key(enipool_ec2::TAG_CLUSTER).value("prod").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key(enipool_ec2::TAG_CREATED_AT).value("2020-01-01T00:00:00Z").build())
        .send()
        .await
        .unwrap();
    let prod =
        detached(Ec2Provider::new(Ec2Config { cluster_name: Some("prod".into()), ..config(&world, &ec2) }, None)).await;
    let sweeper = Ec2Provider::new(Ec2Config { cluster_name: Some("prod".into()), ..config(&world, &ec2) }, None);
    sweeper.init().await.unwrap();
    assert_eq!(sweeper.sweep_leaked_enis().await.unwrap(), vec![prod.clone()]);
    let left: Vec<String> =
        world.enis(&client).await.iter().filter_map(|n| n.network_interface_id().map(String::from)).collect();
    for kept in [&others, &own, &planted] {
        assert!(left.contains(kept), "{kept} was swept: {left:?}");
    }
}

#[tokio::test]
async fn a_stale_listing_neither_re_adds_what_we_removed_nor_drops_what_we_added() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let windowed = Ec2Config { consistency_window: Duration::from_secs(600), ..config(&world, &ec2) };
    let p = Ec2Provider::new(windowed, None);
    p.init().await.expect("init");
    let eni = p.create_eni(1, Fill::NOTHING).await.expect("create");
    let ips = p.assign_ips(&eni.id, 3).await.expect("assign");
    let added = p.assign_ips(&eni.id, 1).await.expect("assign")[0];
    p.unassign_ips(&eni.id, &ips[..1]).await.expect("unassign");
    // EC2 still shows the removed IP (as an eventually consistent read could)...
    client
        .assign_private_ip_addresses()
        .network_interface_id(&eni.id)
        .private_ip_addresses(ips[0].to_string())
        .send()
        .await
        .unwrap();
    // ...and does not show yet the IP we just added.
    client
        .unassign_private_ip_addresses()
        .network_interface_id(&eni.id)
        .private_ip_addresses(added.to_string())
        .send()
        .await
        .unwrap();
    let listed = p.list_enis().await.unwrap();
    let ours = &listed.iter().find(|e| e.id == eni.id).unwrap().secondary_ips;
    assert!(!ours.contains(&ips[0]), "re-added an IP we removed: {ours:?}");
    assert!(ours.contains(&added), "dropped an IP we added: {ours:?}");

    // Without the window, EC2's word stands.
    let plain = Ec2Provider::new(config(&world, &ec2), None);
    plain.init().await.unwrap();
    let listed = plain.list_enis().await.unwrap();
    let ours = &listed.iter().find(|e| e.id == eni.id).unwrap().secondary_ips;
    assert!(ours.contains(&ips[0]) && !ours.contains(&added), "{ours:?}");
}

#[tokio::test]
async fn prefixes_grow_and_shrink_within_the_enis_slots() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let primary = world.primary_eni_id.clone();
    let prefixes = p.assign_prefixes(&primary, 2).await.expect("two prefixes");
    assert_eq!(prefixes.len(), 2);
    for q in &prefixes {
        assert_eq!(q.prefix_len(), 28, "{q}");
        assert_eq!(q.trunc(), *q, "{q} aligned");
    }
    let asked = ec2.requests("AssignPrivateIpAddresses").await;
    assert_eq!(asked.last().and_then(|r| r.get("Ipv4PrefixCount")).map(String::as_str), Some("2"));
    let listed = p.list_enis().await.expect("list");
    assert_eq!(listed[0].prefixes, prefixes);
    assert!(listed[0].secondary_ips.is_empty());
    assert_eq!(world.attached_prefixes(&client).await[0].1, prefixes.iter().map(|q| q.to_string()).collect::<Vec<_>>());

    // An m5.large ENI has 9 slots beside its primary; each prefix takes one.
    assert!(matches!(p.assign_ips(&primary, 8).await, Err(ProviderError::Limit(_))));
    assert_eq!(p.assign_ips(&primary, 6).await.expect("six IPs").len(), 6);
    assert!(matches!(p.assign_prefixes(&primary, 2).await, Err(ProviderError::Limit(_))));
    let third = p.assign_prefixes(&primary, 1).await.expect("the last slot");
    let mutating = ec2.calls().await.mutating();

    p.unassign_prefixes(&primary, &prefixes[..1]).await.expect("unassign");
    let asked = ec2.requests("UnassignPrivateIpAddresses").await;
    assert_eq!(asked.last().and_then(|r| r.get("Ipv4Prefix.1")), Some(&prefixes[0].to_string()));
    assert_eq!(ec2.calls().await.mutating(), mutating + 1);
    let mut left = vec![prefixes[1], third[0]];
    left.sort();
    assert_eq!(p.list_enis().await.unwrap()[0].prefixes, left);
}

#[tokio::test]
async fn no_free_block_is_not_an_exhausted_subnet() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    // A /26: only .16/28 and .32/28 can be prefixes; one address in each leaves none.
    let world = World::make_in(&client, "m5.large", "10.0.1.0/26").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    for a in ["10.0.1.20", "10.0.1.40"] {
        client
            .assign_private_ip_addresses()
            .network_interface_id(&world.primary_eni_id)
            .private_ip_addresses(a)
            .send()
            .await
            .unwrap();
    }
    let r = p.assign_prefixes(&world.primary_eni_id, 1).await;
    assert!(matches!(r, Err(ProviderError::NoCidrBlocks(ref m)) if m.contains("InsufficientCidrBlocks")), "{r:?}");
    assert_eq!(p.assign_ips(&world.primary_eni_id, 1).await.expect("/32s are still there").len(), 1);
    // Fill the 55 addresses left (an ENI of someone else's): now the subnet is exhausted.
    client
        .create_network_interface()
        .subnet_id(&world.subnet_id)
        .secondary_private_ip_address_count(54)
        .send()
        .await
        .unwrap();
    let r = p.assign_ips(&world.primary_eni_id, 1).await;
    assert!(matches!(r, Err(ProviderError::SubnetExhausted(_))), "{r:?}");
}

#[tokio::test]
async fn prefix_delegation_is_refused_on_types_that_are_not_nitro() {
    let (ec2, world) = setup("m4.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let before = ec2.calls().await.of("AssignPrivateIpAddresses");
    let r = p.assign_prefixes(&world.primary_eni_id, 1).await;
    assert!(matches!(r, Err(ProviderError::Failed(ref m)) if m.contains("m4.large") && m.contains("Nitro")), "{r:?}");
    assert_eq!(ec2.calls().await.of("AssignPrivateIpAddresses"), before, "refused before asking EC2");
}

#[tokio::test]
async fn a_stale_listing_neither_drops_a_prefix_we_added_nor_re_adds_one_we_removed() {
    let (ec2, world) = setup("m5.large").await;
    let windowed = Ec2Config { consistency_window: Duration::from_secs(600), ..config(&world, &ec2) };
    let p = Ec2Provider::new(windowed, None);
    p.init().await.expect("init");
    let primary = world.primary_eni_id.clone();
    let kept = p.assign_prefixes(&primary, 1).await.expect("assign")[0];
    assert_eq!(p.list_enis().await.unwrap()[0].prefixes, [kept], "listed as EC2 has it");
    // Every listing from now on is that one, which shows `kept` and not `added`.
    ec2.inject("DescribeNetworkInterfaces", "stale", -1).await;
    let added = p.assign_prefixes(&primary, 1).await.expect("assign")[0];
    p.unassign_prefixes(&primary, &[kept]).await.expect("unassign");
    let listed = p.list_enis().await.unwrap();
    assert_eq!(listed[0].prefixes, [added], "neither dropped what we added nor re-added what we removed");
    assert!(
        ec2.calls().await.stale.get("DescribeNetworkInterfaces").copied().unwrap_or(0) >= 1,
        "the listing was stale"
    );
}

#[tokio::test]
async fn a_new_eni_comes_with_its_ips_or_prefixes_in_the_one_create_call() {
    let (ec2, world) = setup("m5.large").await;
    let client = ec2.client();
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let before = ec2.calls().await.mutating();
    let with_ips = p.create_eni(1, Fill::Ips(3)).await.expect("create with IPs");
    assert_eq!(with_ips.secondary_ips.len(), 3, "{with_ips:?}");
    let asked = ec2.requests("CreateNetworkInterface").await;
    assert_eq!(asked.last().and_then(|r| r.get("SecondaryPrivateIpAddressCount")).map(String::as_str), Some("3"));
    // Create, attach, and delete-on-termination: no separate assign.
    assert_eq!(ec2.calls().await.mutating(), before + 3);
    assert_eq!(ec2.calls().await.of("AssignPrivateIpAddresses"), 0);

    let with_prefixes = p.create_eni(2, Fill::Prefixes(2)).await.expect("create with prefixes");
    assert_eq!(with_prefixes.prefixes.len(), 2, "{with_prefixes:?}");
    assert!(with_prefixes.secondary_ips.is_empty());
    let asked = ec2.requests("CreateNetworkInterface").await;
    assert_eq!(asked.last().and_then(|r| r.get("Ipv4PrefixCount")).map(String::as_str), Some("2"));
    assert!(!with_prefixes.prefixes.iter().any(|q| q.contains(&with_prefixes.primary_ip)));
    // As EC2 records them, and as the provider lists them.
    let recorded = world.attached_prefixes(&client).await;
    let on_new = recorded.iter().find(|(id, _)| *id == with_prefixes.id).map(|(_, q)| q.clone());
    assert_eq!(on_new, Some(with_prefixes.prefixes.iter().map(|q| q.to_string()).collect::<Vec<_>>()));
    let listed = p.list_enis().await.unwrap();
    assert_eq!(listed.iter().find(|e| e.id == with_ips.id).unwrap().secondary_ips, with_ips.secondary_ips);
    assert_eq!(listed.iter().find(|e| e.id == with_prefixes.id).unwrap().prefixes, with_prefixes.prefixes);
}

#[tokio::test]
async fn a_new_eni_is_refused_what_it_cannot_hold_before_ec2_is_asked() {
    let (ec2, world) = setup("m4.large").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    let r = p.create_eni(1, Fill::Prefixes(1)).await;
    assert!(matches!(r, Err(ProviderError::Failed(ref m)) if m.contains("Nitro")), "{r:?}");
    // An m4.large ENI has 10 addresses: 9 beside its primary.
    let r = p.create_eni(1, Fill::Ips(10)).await;
    assert!(matches!(r, Err(ProviderError::Limit(_))), "{r:?}");
    assert_eq!(ec2.calls().await.of("CreateNetworkInterface"), 0);
    assert_eq!(p.create_eni(1, Fill::Ips(9)).await.expect("a full ENI").secondary_ips.len(), 9);
}

#[tokio::test]
async fn a_new_eni_in_a_fragmented_subnet_is_no_cidr_blocks_and_leaves_nothing() {
    set_aws_env();
    let ec2 = FakeEc2::start().await;
    let client = ec2.client();
    // A /26: only .16/28 and .32/28 can be prefixes; one address in each leaves none.
    let world = World::make_in(&client, "m5.large", "10.0.1.0/26").await;
    let p = Ec2Provider::new(config(&world, &ec2), None);
    p.init().await.expect("init");
    for a in ["10.0.1.20", "10.0.1.40"] {
        client
            .assign_private_ip_addresses()
            .network_interface_id(&world.primary_eni_id)
            .private_ip_addresses(a)
            .send()
            .await
            .unwrap();
    }
    let r = p.create_eni(1, Fill::Prefixes(1)).await;
    assert!(matches!(r, Err(ProviderError::NoCidrBlocks(_))), "{r:?}");
    assert_eq!(world.enis(&client).await.len(), 1, "no ENI left behind");
    assert_eq!(p.create_eni(1, Fill::Ips(2)).await.expect("single IPs still come").secondary_ips.len(), 2);
}

//! enipoold with `--provider ec2` against a real moto EC2 server (behind the fault layer that
//! counts every call and fails chosen ones), one moto per test: cold start, churn economy,
//! throttling, a crash between Detach and Delete, restarts, EC2 unreachable, subnet exhaustion.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{Api, Daemon, NET, eventually, lease_request, metric, pool_settles, pool_summary};
use enipool_api::problem;
use enipool_ec2::testing::{Calls, FakeEc2, FakeImds, MUTATING, World, aws_sdk_ec2::Client};

/// A few pool ticks in which nothing may change once settled.
const HOLD: Duration = Duration::from_millis(200);
/// An m5.large: 3 ENIs x (10 - 1) pod IPs.
const PER_ENI: u64 = 9;

struct Node {
    ec2: FakeEc2,
    world: World,
    client: Client,
}

impl Node {
    async fn start(instance_type: &str) -> Node {
        Node::start_in(instance_type, enipool_ec2::testing::SUBNET_CIDR).await
    }

    /// A node in a subnet of `subnet_cidr` (small ones run out, or fragment).
    async fn start_in(instance_type: &str, subnet_cidr: &str) -> Node {
        let ec2 = FakeEc2::start().await;
        let client = ec2.client();
        let world = World::make_in(&client, instance_type, subnet_cidr).await;
        Node { ec2, world, client }
    }

    /// The daemon's flags for this node: every EC2 period short.
    fn flags(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = [
            ("--provider", "ec2"),
            ("--instance-id", self.world.instance_id.as_str()),
            ("--ec2-max-attempts", "6"),
            ("--ec2-backoff-base", "10ms"),
            ("--ec2-backoff-max", "80ms"),
            ("--ec2-timeout", "5s"),
            ("--ec2-rate-limit", "0"),
            ("--ec2-detach-wait", "1s"),
            ("--ec2-consistency-window", "0"),
            ("--subnet-exhausted-pause", "120s"),
            ("--leaked-eni-age", "0"),
            ("--leaked-eni-interval", "100ms"),
            // The sweep runs only with a cluster name.
            ("--cluster-name", "test-cluster"),
            ("--reconcile-interval", "200ms"),
            // The node side of ENIs has its own test (moto_host.rs), in a namespace it made.
            ("--eni-host-setup", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        f.push(("--ec2-endpoint".into(), self.ec2.endpoint()));
        for (k, v) in extra {
            match f.iter_mut().find(|(a, _)| a == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => f.push((k.to_string(), v.to_string())),
            }
        }
        f
    }

    async fn daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        let f = self.flags(extra);
        Daemon::start(&as_refs(&f)).await
    }

    async fn calls(&self) -> Calls {
        self.ec2.calls().await
    }

    /// The ledger's ENIs and IPs equal EC2's for this instance, and the VPC holds no other ENI
    /// (nothing leaked).
    async fn matches_ec2(&self, api: &Api) -> Result<(), String> {
        let mut ledger: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in api.enis().await {
            let mut ips: Vec<String> =
                e["addresses"].as_array().unwrap().iter().map(|a| a["ip"].as_str().unwrap().to_string()).collect();
            ips.sort();
            ledger.insert(e["id"].as_str().unwrap().to_string(), ips);
        }
        let ec2: BTreeMap<String, Vec<String>> =
            self.world.attached(&self.client).await.into_iter().map(|(id, _, ips)| (id, ips)).collect();
        if ledger != ec2 {
            return Err(format!("ledger {ledger:?} != EC2 {ec2:?}"));
        }
        let all = self.world.enis(&self.client).await.len();
        if all != ec2.len() {
            return Err(format!("{} ENIs in the VPC, {} attached: leaked", all, ec2.len()));
        }
        Ok(())
    }

    /// The ledger's prefixes, per ENI, equal EC2's.
    async fn prefixes_match_ec2(&self, api: &Api) -> Result<(), String> {
        let mut ledger: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in api.enis().await {
            let mut q: Vec<String> =
                e["prefixes"].as_array().unwrap().iter().map(|p| p["cidr"].as_str().unwrap().to_string()).collect();
            q.sort();
            ledger.insert(e["id"].as_str().unwrap().to_string(), q);
        }
        let ec2: BTreeMap<String, Vec<String>> = self.world.attached_prefixes(&self.client).await.into_iter().collect();
        if ledger != ec2 { Err(format!("ledger {ledger:?} != EC2 {ec2:?}")) } else { Ok(()) }
    }

    async fn assert_prefixes_match_ec2(&self, api: &Api) {
        eventually("the ledger's prefixes to match EC2's", async || self.prefixes_match_ec2(api).await).await;
    }

    async fn assert_matches_ec2(&self, api: &Api) {
        eventually("the ledger to match EC2 with nothing leaked", async || self.matches_ec2(api).await).await;
    }
}

/// Waits until /readyz answers 503 with a reason containing `containing`; the reason.
async fn not_ready_because(api: &Api, containing: &str) -> String {
    eventually(&format!("/readyz to say why it is not ready ({containing})"), async || {
        let r = api.get("/readyz").await;
        let v = r.json();
        match v["reason"].as_str() {
            Some(reason) if r.status == 503 && reason.contains(containing) => Ok(reason.to_string()),
            _ => Err(format!("{} {v}", r.status)),
        }
    })
    .await
}

fn as_refs(f: &[(String, String)]) -> Vec<(&str, &str)> {
    f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn metrics_text(api: &Api) -> String {
    api.get("/metrics").await.expect(200).text()
}

#[tokio::test]
async fn cold_start_reaches_warm_eni_target_within_the_m5_large_limits() {
    let node = Node::start("m5.large").await;
    let d = node.daemon(&[]).await;
    let api = d.unix();
    let p = pool_settles(&api, &[("enis", 1), ("total", PER_ENI), ("free", PER_ENI)], HOLD).await;
    assert_eq!(p["provider"], "ec2");
    assert_eq!(p["instance_id"], node.world.instance_id.as_str());
    assert_eq!((p["max_enis"].as_u64(), p["ipv4_per_eni"].as_u64()), (Some(3), Some(10)));
    node.assert_matches_ec2(&api).await;
    let enis = api.enis().await;
    assert_eq!(enis[0]["id"], node.world.primary_eni_id.as_str());
    assert_eq!(enis[0]["primary"], true);

    // Every pod the instance can hold: 3 ENIs x 9, never more.
    let mut leases = Vec::new();
    for i in 0..27 {
        leases.push(api.lease(&format!("pod{i}")).await);
    }
    pool_settles(&api, &[("enis", 3), ("total", 3 * PER_ENI), ("leased", 27), ("free", 0)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    let r = api.post("/v1/leases", &lease_request(NET, "one-too-many", "eth0")).await;
    r.assert_problem(503, problem::POOL_EXHAUSTED, None);
    let attached = node.world.attached(&node.client).await;
    assert_eq!(attached.len(), 3, "{attached:?}");
    assert!(attached.iter().all(|(_, _, ips)| ips.len() as u64 <= PER_ENI), "{attached:?}");
    assert_eq!(attached.iter().map(|e| e.1).collect::<Vec<_>>(), vec![0, 1, 2]);
    let calls = node.calls().await;
    assert_eq!(calls.of("CreateNetworkInterface"), 2, "{calls:?}");
    // The ledger's lease answers carry the node's identity from EC2.
    assert_eq!(leases[0]["snat"]["node_ip"], node.world.primary_ip.as_str());
    assert_eq!(leases[0]["vpc_cidrs"][0], "10.0.0.0/16");
    let sec = leases.iter().find(|l| l["device_number"] == 1).expect("a lease on the second ENI");
    assert_eq!(sec["route_table"], 2);
    assert_eq!(sec["subnet_gateway"], "10.0.0.1");
}

#[tokio::test]
async fn cold_start_reaches_warm_ip_target_with_identity_from_the_metadata_service() {
    let node = Node::start("m5.large").await;
    let imds = FakeImds::start(&node.world).await;
    let mut f = node.flags(&[("--warm-ip-target", "5"), ("--minimum-ip-target", "10")]);
    f.retain(|(k, _)| k != "--instance-id");
    f.push(("--imds-endpoint".into(), imds.endpoint()));
    let d = Daemon::start(&as_refs(&f)).await;
    let api = d.unix();
    // 10 IPs: 9 on the primary ENI and 1 on a second.
    pool_settles(&api, &[("enis", 2), ("total", 10), ("free", 10)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    let p = api.pool().await;
    assert_eq!(p["instance_id"], node.world.instance_id.as_str());
    let (tokens, _, refused) = imds.stats().await;
    assert!(tokens >= 1 && refused == 0);
    assert_eq!(node.calls().await.of("DescribeInstances"), 0, "identity came from the metadata service");
    for i in 0..8 {
        api.lease(&format!("pod{i}")).await;
    }
    // 8 in use + 5 warm.
    pool_settles(&api, &[("enis", 2), ("total", 13), ("leased", 8)], HOLD).await;
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn steady_churn_makes_at_most_one_mutating_call_per_25_allocations() {
    let node = Node::start("m5.large").await;
    let d = node.daemon(&[]).await;
    let api = d.unix();
    // A few long-lived pods, then steady churn of short-lived ones beside them.
    for i in 0..4 {
        api.lease(&format!("resident{i}")).await;
    }
    pool_settles(&api, &[("enis", 2), ("leased", 4)], HOLD).await;
    let before = node.calls().await;
    let mut live: Vec<String> = Vec::new();
    for i in 0..500 {
        let id = format!("churn{i}");
        api.lease(&id).await;
        live.push(id);
        if live.len() > 3 {
            let gone = live.remove(0);
            api.release(&gone).await;
        }
    }
    for id in live {
        api.release(&id).await;
    }
    pool_settles(&api, &[("leased", 4)], HOLD).await;
    let after = node.calls().await;
    let mutating = after.mutating() - before.mutating();
    assert!(mutating <= 500 / 25, "{mutating} mutating EC2 calls for 500 allocations: {after:?}");
    assert_eq!(api.pool().await["exhausted_allocations"], 0);
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn throttling_on_every_mutating_action_converges_without_leaks() {
    let node = Node::start("m5.large").await;
    for action in MUTATING {
        node.ec2.inject(action, "throttle", 2).await;
    }
    let d = node.daemon(&[]).await;
    let api = d.unix();
    pool_settles(&api, &[("enis", 1), ("total", PER_ENI)], HOLD).await;
    // Grow by an ENI (Create, Attach, Modify, Assign), then give it back (Detach, Delete).
    api.lease("pod").await;
    pool_settles(&api, &[("enis", 2), ("total", 2 * PER_ENI), ("leased", 1)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    api.release("pod").await;
    pool_settles(&api, &[("enis", 1), ("total", PER_ENI), ("leased", 0)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    let calls = node.calls().await;
    for action in MUTATING.iter().filter(|a| **a != "UnassignPrivateIpAddresses") {
        assert_eq!(calls.failed.get(*action).copied(), Some(2), "{action} was throttled twice: {calls:?}");
    }
    let text = metrics_text(&api).await;
    let throttled =
        metric(&text, r#"enipool_ec2_errors_total{action="AttachNetworkInterface",code="RequestLimitExceeded"}"#);
    assert_eq!(throttled, Some(2.0), "metrics by action and code");

    // WARM_IP_TARGET releases single IPs: UnassignPrivateIpAddresses throttled too.
    drop(d);
    let node = Node::start("m5.large").await;
    node.ec2.inject("UnassignPrivateIpAddresses", "throttle", 2).await;
    let d = node.daemon(&[("--warm-ip-target", "2"), ("--minimum-ip-target", "3")]).await;
    let api = d.unix();
    pool_settles(&api, &[("total", 3)], HOLD).await;
    for i in 0..5 {
        api.lease(&format!("pod{i}")).await;
    }
    pool_settles(&api, &[("total", 7), ("leased", 5)], HOLD).await;
    for i in 0..5 {
        api.release(&format!("pod{i}")).await;
    }
    pool_settles(&api, &[("total", 3), ("leased", 0)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    assert_eq!(node.calls().await.failed.get("UnassignPrivateIpAddresses").copied(), Some(2));
}

#[tokio::test]
async fn allocations_with_a_free_ip_never_wait_for_a_stuck_ec2_call() {
    let node = Node::start("m5.large").await;
    let d = node.daemon(&[("--allocation-wait", "2s")]).await;
    let api = d.unix();
    pool_settles(&api, &[("enis", 1), ("total", PER_ENI)], HOLD).await;
    // The next growth (a second ENI) hangs inside CreateNetworkInterface.
    node.ec2.inject("CreateNetworkInterface", "hang", 1).await;
    api.lease("first").await;
    eventually("CreateNetworkInterface to hang", async || {
        let c = node.calls().await;
        if c.hanging == 1 { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    for i in 0..(PER_ENI - 1) {
        let started = Instant::now();
        api.lease(&format!("pod{i}")).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "an allocation with free IPs waited {took:?}");
    }
    node.ec2.release().await;
    pool_settles(&api, &[("enis", 2), ("leased", PER_ENI)], HOLD).await;
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn a_daemon_killed_between_detach_and_delete_leaks_nothing_for_long() {
    let node = Node::start("m5.large").await;
    let tmp = tempfile::TempDir::new().unwrap();
    let f = node.flags(&[("--leaked-eni-interval", "0")]);
    let d = Daemon::start_in(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    api.lease("pod").await;
    pool_settles(&api, &[("enis", 2), ("leased", 1)], HOLD).await;
    // Giving the second ENI back: Detach succeeds, Delete hangs; the daemon dies there.
    node.ec2.inject("DeleteNetworkInterface", "hang", 1).await;
    api.release("pod").await;
    eventually("DeleteNetworkInterface to hang", async || {
        let c = node.calls().await;
        if c.hanging == 1 { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    drop(d); // SIGKILL
    node.ec2.release().await;
    let leaked: Vec<String> = node
        .world
        .enis(&node.client)
        .await
        .iter()
        .filter(|n| n.status().map(|s| s.as_str()) == Some("available"))
        .filter_map(|n| n.network_interface_id().map(String::from))
        .collect();
    assert_eq!(leaked.len(), 1, "the detached ENI is left behind");

    // A new daemon's sweep (our tag, detached, older than --leaked-eni-age) deletes it.
    let f = node.flags(&[("--leaked-eni-age", "0"), ("--leaked-eni-interval", "100ms")]);
    let d = Daemon::start_in(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    pool_settles(&api, &[("enis", 1), ("total", PER_ENI)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    let text = metrics_text(&api).await;
    assert_eq!(metric(&text, "enipool_leaked_enis_deleted_total"), Some(1.0));
}

#[tokio::test]
async fn restart_with_live_leases_changes_nothing_in_ec2() {
    let node = Node::start("m5.large").await;
    let tmp = tempfile::TempDir::new().unwrap();
    let f = node.flags(&[]);
    let d = Daemon::start_in(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    let mut leases = Vec::new();
    for i in 0..12 {
        leases.push(api.lease(&format!("pod{i:02}")).await);
    }
    pool_settles(&api, &[("enis", 3), ("leased", 12)], HOLD).await;
    node.assert_matches_ec2(&api).await;
    let ec2_before = node.world.attached(&node.client).await;
    let mutating_before = node.calls().await.mutating();

    // A clean restart, then a crash and another start.
    let d = d.restart().await;
    let api = d.unix();
    assert_eq!(api.leases("").await, leases, "every lease, on its IP");
    pool_settles(&api, &[("enis", 3), ("leased", 12)], HOLD).await;
    drop(d); // SIGKILL
    let d = Daemon::start_in(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    assert_eq!(api.leases("").await, leases);
    pool_settles(&api, &[("enis", 3), ("leased", 12)], HOLD).await;
    assert_eq!(node.world.attached(&node.client).await, ec2_before, "EC2 as it was");
    assert_eq!(node.calls().await.mutating(), mutating_before, "no mutating EC2 call after the restarts");
    // Nothing is handed out twice.
    let fresh = api.lease("fresh").await;
    assert!(leases.iter().all(|l| l["ip"] != fresh["ip"]));
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn ec2_unreachable_at_start_up_serves_the_ledger_and_says_why_not_ready() {
    let node = Node::start("m5.large").await;
    let tmp = tempfile::TempDir::new().unwrap();
    let f = node.flags(&[]);
    let d = Daemon::start_in(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    let lease = api.lease("before").await;
    pool_settles(&api, &[("enis", 2), ("leased", 1)], HOLD).await;
    let mut d = d;
    assert!(d.terminate(Duration::from_secs(5)).await.success());

    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("http://{closed}");
    let f = node.flags(&[("--ec2-endpoint", dead.as_str()), ("--ec2-max-attempts", "2")]);
    let d = Daemon::start_in_unready(tmp.path(), &as_refs(&f)).await;
    let api = d.unix();
    let reason = not_ready_because(&api, "provider init failed").await;
    assert!(reason.contains("Unreachable") || reason.contains("DescribeInstances"), "{reason}");
    // What the ledger holds is served: the lease, with the cached identity, and a new lease.
    let path = format!("/v1/leases/{NET}/before/eth0");
    assert_eq!(api.get(&path).await.expect(200).json(), lease);
    let fresh = api.lease("during-outage").await;
    assert_ne!(fresh["ip"], lease["ip"]);
    assert_eq!(fresh["snat"]["node_ip"], node.world.primary_ip.as_str());
    let p = api.pool().await;
    assert_eq!(p["instance_id"], node.world.instance_id.as_str(), "{}", pool_summary(&p));
    assert_eq!(api.get("/readyz").await.status, 503);
}

#[tokio::test]
async fn subnet_exhaustion_pauses_growth_and_says_so() {
    let node = Node::start("m5.large").await;
    // The primary ENI's subnet refuses, and so does a new ENI in it (the one candidate): growth
    // pauses. (Had either gone through, the pool would not pause: see the fall-over test.)
    node.ec2.inject("AssignPrivateIpAddresses", "subnet", 1).await;
    node.ec2.inject("CreateNetworkInterface", "subnet", 1).await;
    let d = node.daemon(&[("--subnet-exhausted-pause", "3s"), ("--allocation-wait", "300ms")]).await;
    let api = d.unix();
    let p = eventually("growth to pause", async || {
        let p = api.pool().await;
        if p["growth_paused"].is_object() { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    let reason = p["growth_paused"]["reason"].as_str().unwrap();
    assert!(reason.contains("InsufficientFreeAddressesInSubnet"), "{reason}");
    let r = api.post("/v1/leases", &lease_request(NET, "pod", "eth0")).await;
    let problem = r.assert_problem(503, problem::POOL_EXHAUSTED, None);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("growth paused") && detail.contains("InsufficientFreeAddressesInSubnet"), "{detail}");
    assert_eq!(metric(&metrics_text(&api).await, "enipool_growth_pauses_total"), Some(1.0));
    // Paused: no further assign or create until the pause ends; then the pool fills.
    assert_eq!(node.calls().await.of("AssignPrivateIpAddresses"), 1);
    assert_eq!(node.calls().await.of("CreateNetworkInterface"), 1);
    pool_settles(&api, &[("enis", 1), ("total", PER_ENI)], HOLD).await;
    assert!(api.pool().await["growth_paused"].is_null());
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn reconciliation_marks_lost_leases_and_adopts_unknown_ips() {
    let node = Node::start("m5.large").await;
    // The sweep off: this test detaches and deletes an ENI itself, and a sweep between the two
    // calls would delete it first (detached, ours, older than --leaked-eni-age 0).
    let d = node.daemon(&[("--ip-cooldown-period", "1s"), ("--leaked-eni-interval", "0")]).await;
    let api = d.unix();
    let lost = api.lease("lost").await;
    pool_settles(&api, &[("enis", 2), ("leased", 1)], HOLD).await;
    let primary = node.world.primary_eni_id.clone();
    assert_eq!(lost["eni_id"], primary.as_str());
    let free_ip = api.enis().await.iter().find(|e| e["primary"] == true).unwrap()["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "free")
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .expect("a free IP on the primary ENI");

    // Someone else takes a leased and a free IP off the primary ENI.
    let lost_ip = lost["ip"].as_str().unwrap().to_string();
    node.client
        .unassign_private_ip_addresses()
        .network_interface_id(&primary)
        .private_ip_addresses(&lost_ip)
        .private_ip_addresses(&free_ip)
        .send()
        .await
        .unwrap();
    // ...and keeps the leased one: an ENI of someone else's holds it now.
    let someone_else = node
        .client
        .create_network_interface()
        .subnet_id(&node.world.subnet_id)
        .private_ip_address(&lost_ip)
        .send()
        .await
        .expect("someone else's ENI");
    let someone_else = someone_else.network_interface().and_then(|n| n.network_interface_id()).unwrap().to_string();
    eventually("the lease to be marked lost", async || {
        let p = api.pool().await;
        if p["lost"] == 1 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    let addresses: Vec<serde_json::Value> =
        api.enis().await.iter().flat_map(|e| e["addresses"].as_array().unwrap().clone()).collect();
    let state_of = |ip: &str| addresses.iter().find(|a| a["ip"] == ip).map(|a| a["state"].clone());
    assert_eq!(state_of(&lost_ip), Some("lost".into()));
    assert_eq!(state_of(&free_ip), None, "a free IP EC2 no longer has is dropped");
    // The counter follows the ledger's change (bounded).
    let text = eventually("the lost-lease counter", async || {
        let text = metrics_text(&api).await;
        if metric(&text, "enipool_leases_lost_total") == Some(1.0) { Ok(text) } else { Err(text) }
    })
    .await;
    assert_eq!(metric(&text, "enipool_ips_lost"), Some(1.0));
    assert_eq!(metric(&text, "enipool_leases"), Some(1.0), "a lost lease is still a live lease");
    // The lease stands (the pod still has it); the IP is never handed out again.
    api.get(&format!("/v1/leases/{NET}/lost/eth0")).await.expect(200);
    let mut others = Vec::new();
    for i in 0..12 {
        let l = api.lease(&format!("pod{i:02}")).await;
        assert_ne!(l["ip"], lost_ip.as_str(), "a lost IP was handed out");
        others.push(l);
    }
    // Released: the lost address goes with its lease.
    api.release("lost").await;
    assert_eq!(api.pool().await["lost"], 0);
    assert!(
        api.enis().await.iter().all(|e| e["addresses"].as_array().unwrap().iter().all(|a| a["ip"] != lost_ip.as_str()))
    );
    node.client.delete_network_interface().network_interface_id(&someone_else).send().await.unwrap();

    // An IP EC2 has and the ledger lacks is adopted, cooling first.
    // EC2 holds the ENI to its 9 secondary IPs: the free one goes first, and if the pool grew
    // back into its slot before the stranger came, another free one goes.
    let stranger = "10.0.250.250";
    eventually("the stranger IP to take a free IP's place", async || {
        let replaced = api.enis().await.iter().find(|e| e["primary"] == true).unwrap()["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["state"] == "free")
            .map(|a| a["ip"].as_str().unwrap().to_string())
            .expect("a free IP on the primary ENI");
        let _ = node
            .client
            .unassign_private_ip_addresses()
            .network_interface_id(&primary)
            .private_ip_addresses(&replaced)
            .send()
            .await;
        node.client
            .assign_private_ip_addresses()
            .network_interface_id(&primary)
            .private_ip_addresses(stranger)
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    let seen = eventually("the stranger IP to be adopted", async || {
        let enis = api.enis().await;
        let a = enis.iter().flat_map(|e| e["addresses"].as_array().unwrap().clone()).find(|a| a["ip"] == stranger);
        a.ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_eq!(seen["state"], "cooling", "{seen}");

    // An ENI EC2 no longer has (detached and deleted behind our back): its leases are lost,
    // nothing more is allocated from it, and the pool replaces it.
    let victim = others.iter().find(|l| l["device_number"] == 1).expect("a lease on the second ENI").clone();
    let victim_eni = victim["eni_id"].as_str().unwrap().to_string();
    let att = node
        .world
        .enis(&node.client)
        .await
        .iter()
        .find(|n| n.network_interface_id() == Some(victim_eni.as_str()))
        .and_then(|n| n.attachment().and_then(|a| a.attachment_id()).map(String::from))
        .unwrap();
    node.client.detach_network_interface().attachment_id(att).send().await.unwrap();
    node.client.delete_network_interface().network_interface_id(&victim_eni).send().await.unwrap();
    let on_victim = others.iter().filter(|l| l["eni_id"] == victim_eni.as_str()).count();
    eventually("the vanished ENI's leases to be lost", async || {
        let p = api.pool().await;
        if p["lost"] == on_victim as u64 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    let eni = api.enis().await.into_iter().find(|e| e["id"] == victim_eni.as_str()).expect("kept while leases name it");
    assert_eq!(eni["attached"], false);
    for i in 0..3 {
        let l = api.lease(&format!("after{i}")).await;
        assert_ne!(l["eni_id"], victim_eni.as_str());
    }
    // Every lease released: the ledger ends up exactly as EC2, nothing leaked.
    for l in &others {
        api.release(l["container_id"].as_str().unwrap()).await;
    }
    for i in 0..3 {
        api.release(&format!("after{i}")).await;
    }
    eventually("the lost ENI to be dropped", async || {
        let p = api.pool().await;
        let enis = api.enis().await;
        if p["lost"] == 0 && enis.iter().all(|e| e["id"] != victim_eni.as_str()) {
            Ok(())
        } else {
            Err(pool_summary(&p))
        }
    })
    .await;
    pool_settles(&api, &[("leased", 0)], HOLD).await;
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn a_lost_lease_whose_ip_ec2_assigns_again_is_leased_again() {
    // EC2 takes a leased IP and a free one off the primary ENI. Reconciliation marks the lease
    // lost and drops the free IP; the pool grows back, and EC2, which hands out the lowest free
    // addresses, assigns the lost IP to the same ENI again. The pod never stopped using it: its
    // lease is whole again. (Before, the ledger refused the address as already known and the
    // pool stopped growing.)
    let node = Node::start("m5.large").await;
    // Both ENIs full (2 x 9 addresses, one leased): any address EC2 takes away is grown back.
    let d = node.daemon(&[("--ip-cooldown-period", "1s"), ("--warm-ip-target", "17")]).await;
    let api = d.unix();
    let pod = api.lease("pod").await;
    pool_settles(&api, &[("enis", 2), ("leased", 1)], HOLD).await;
    let primary = node.world.primary_eni_id.clone();
    assert_eq!(pod["eni_id"], primary.as_str());
    let lost_ip = pod["ip"].as_str().unwrap().to_string();
    let free_ip = api.enis().await.iter().find(|e| e["primary"] == true).unwrap()["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "free")
        .map(|a| a["ip"].as_str().unwrap().parse::<std::net::Ipv4Addr>().unwrap())
        .max()
        .expect("a free IP on the primary ENI")
        .to_string();
    node.client
        .unassign_private_ip_addresses()
        .network_interface_id(&primary)
        .private_ip_addresses(&lost_ip)
        .private_ip_addresses(&free_ip)
        .send()
        .await
        .unwrap();
    eventually("the lease to be lost, then recovered", async || {
        let text = metrics_text(&api).await;
        let p = api.pool().await;
        if metric(&text, "enipool_leases_lost_total") == Some(1.0) && p["lost"] == 0 {
            Ok(())
        } else {
            Err(format!("lost total {:?}, {}", metric(&text, "enipool_leases_lost_total"), pool_summary(&p)))
        }
    })
    .await;
    let again = api.get(&format!("/v1/leases/{NET}/pod/eth0")).await.expect(200).json();
    assert_eq!((again["ip"].as_str(), again["eni_id"].as_str()), (Some(lost_ip.as_str()), Some(primary.as_str())));
    let state = api
        .enis()
        .await
        .iter()
        .flat_map(|e| e["addresses"].as_array().unwrap().clone())
        .find(|a| a["ip"] == lost_ip.as_str())
        .map(|a| a["state"].clone());
    assert_eq!(state, Some("leased".into()));
    pool_settles(&api, &[("enis", 2), ("leased", 1), ("lost", 0)], HOLD).await;
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn a_prefix_pods_use_is_kept_through_a_restart_on_a_stale_listing() {
    // The reference once released prefixes live pods used after a restart on an incomplete
    // listing (aws/amazon-vpc-cni-k8s #3824). Here pods get addresses from the daemon's prefix,
    // and the daemon restarts while EC2's listing is one from before any prefix: the leases are
    // marked lost, the prefix is never given back nor its addresses handed out, and once the
    // listing is current again the leases are whole.
    let node = Node::start("m5.large").await;
    let d = node.daemon(&[("--ip-cooldown-period", "0"), ("--warm-ip-target", "1")]).await;
    pool_settles(&d.unix(), &[("enis", 1), ("total", 1), ("prefixes", 0)], HOLD).await;
    // The daemon's last listing, from before any prefix.
    node.ec2.mark("before any prefix").await;
    let d = d.restart_with(&[("--prefix-delegation", "true"), ("--warm-ip-target", "16")]).await;
    let api = d.unix();
    // A prefix comes; the secondary IP from before goes back.
    eventually("a prefix and no secondary IP", async || {
        let p = api.pool().await;
        if p["mode"] == "prefixes" && p["prefixes"] == 1 && p["total"] == 16 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    let prefix: ipnet::Ipv4Net = node.world.attached_prefixes(&node.client).await[0].1[0].parse().unwrap();
    let mut in_prefix = Vec::new();
    for i in 0..3 {
        let l = api.lease(&format!("pod{i}")).await;
        let ip: std::net::Ipv4Addr = l["ip"].as_str().unwrap().parse().unwrap();
        assert!(prefix.contains(&ip), "{ip} outside {prefix}");
        in_prefix.push(l);
    }

    // (The stale listing also shows the secondary IP given back since; it is adopted cooling,
    // and the cooldown keeps it from a pod until a current listing drops it.) Injected only once
    // the old daemon has exited: a sync of its while it shut down once took the stale listing,
    // and with its cooldown of 0 (and no consistency window, as in every test here) adopted that
    // IP free, so the new daemon leased it to pod-new (CI, 2026-12-03).
    let stale = node.ec2.inject_stale_from("DescribeNetworkInterfaces", "before any prefix", -1);
    let d = d.restart_with_after(&[("--ip-cooldown-period", "60s")], stale).await;
    let api = d.unix();
    eventually("the stale listing to be seen", async || {
        let p = api.pool().await;
        if p["lost"] == 3 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    for l in &in_prefix {
        api.get(&format!("/v1/leases/{NET}/{}/eth0", l["container_id"].as_str().unwrap())).await.expect(200);
    }
    let more = api.lease("pod-new").await;
    let ip: std::net::Ipv4Addr = more["ip"].as_str().unwrap().parse().unwrap();
    assert!(!prefix.contains(&ip), "an address of the lost prefix was handed out: {ip}");
    let unassigned = node.ec2.requests("UnassignPrivateIpAddresses").await;
    assert!(
        unassigned.iter().all(|r| !r.keys().any(|k| k.starts_with("Ipv4Prefix"))),
        "a prefix was given back: {unassigned:?}"
    );
    let held = node.world.attached_prefixes(&node.client).await;
    assert!(held[0].1.contains(&prefix.to_string()), "EC2 still has it: {held:?}");

    node.ec2.clear().await;
    eventually("the prefix's leases to be whole again", async || {
        let p = api.pool().await;
        if p["lost"] == 0 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    for l in &in_prefix {
        let now =
            api.get(&format!("/v1/leases/{NET}/{}/eth0", l["container_id"].as_str().unwrap())).await.expect(200).json();
        assert_eq!(now["ip"], l["ip"], "the same address");
    }
}

#[tokio::test]
async fn prefix_mode_falls_back_to_single_ips_while_no_block_is_free_and_returns() {
    // Someone else's ENIs hold an address in every /28 of the /24 that could be a prefix: EC2
    // answers InsufficientCidrBlocks, though single addresses abound.
    let node = Node::start_in("m5.large", "10.0.1.0/24").await;
    let mut blockers = Vec::new();
    for block in 1..15u32 {
        let made = node
            .client
            .create_network_interface()
            .subnet_id(&node.world.subnet_id)
            .private_ip_address(format!("10.0.1.{}", block * 16 + 4))
            .send()
            .await
            .expect("a blocker ENI");
        blockers.push(made.network_interface().and_then(|n| n.network_interface_id()).unwrap().to_string());
    }
    let d = node
        .daemon(&[
            ("--prefix-delegation", "true"),
            ("--prefix-fallback-pause", "300ms"),
            ("--ip-cooldown-period", "0"),
            ("--shrink-interval", "50ms"),
        ])
        .await;
    let api = d.unix();
    // Pods do not wait for a prefix that cannot come: single IPs, one prefix's worth.
    let p = eventually("the fallback to single IPs", async || {
        let p = api.pool().await;
        if p["mode"] == "prefix-fallback" && p["total"] == 16 { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    assert!(p["prefix_fallback"]["reason"].as_str().unwrap().contains("InsufficientCidrBlocks"), "{p}");
    assert_eq!(p["prefixes"], 0);
    let text = metrics_text(&api).await;
    assert!(metric(&text, "enipool_prefix_fallbacks_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(metric(&text, "enipool_growth_pauses_total"), Some(0.0), "not an exhausted subnet");
    let pods: Vec<_> = futures_lease(&api, 3).await;

    // Blocks free up; once the pause is over, prefixes again, and the single IPs go back as
    // they are freed.
    for id in &blockers {
        node.client.delete_network_interface().network_interface_id(id).send().await.unwrap();
    }
    eventually("prefixes again", async || {
        let p = api.pool().await;
        if p["mode"] == "prefixes" && p["prefixes"].as_u64() >= Some(1) { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    for l in &pods {
        api.release(l["container_id"].as_str().unwrap()).await;
    }
    eventually("the single IPs to go back", async || {
        let p = api.pool().await;
        let prefixes = p["prefixes"].as_u64().unwrap_or(0);
        if p["total"].as_u64() == Some(16 * prefixes) && prefixes >= 1 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    // The ledger lets them go before the call that gives them back to EC2 returns.
    eventually("no secondary IP left in EC2", async || {
        let attached = node.world.attached(&node.client).await;
        if attached.iter().all(|(_, _, ips)| ips.is_empty()) { Ok(()) } else { Err(format!("{attached:?}")) }
    })
    .await;
    assert!(!node.world.attached_prefixes(&node.client).await.iter().all(|(_, p)| p.is_empty()));
}

async fn futures_lease(api: &Api, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(api.lease(&format!("pod{i}")).await);
    }
    out
}

#[tokio::test]
async fn pods_arriving_in_a_burst_cost_few_prefix_calls() {
    // 0 -> 110 pods on an m5.large in prefix mode, as fast as they come: growth within the burst
    // window doubles what the last one asked for, so 8 prefixes take 4 calls (1 warm, then 1, 2,
    // 4), not 8; nothing is given back during the burst, and what is in excess after it goes.
    let node = Node::start("m5.large").await;
    let d = node.daemon(&[("--prefix-delegation", "true"), ("--prefix-burst-window", "2s")]).await;
    let api = d.unix();
    eventually("the warm prefix", async || {
        let p = api.pool().await;
        if p["prefixes"] == 1 && p["deficit"] == 0 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    let before = node.calls().await.of("AssignPrivateIpAddresses");
    for i in 0..110 {
        api.lease(&format!("pod{i:03}")).await;
    }
    let p = eventually("110 pods and one free prefix", async || {
        let p = api.pool().await;
        if p["leased"] == 110 && p["deficit"] == 0 && p["excess"] == 0 { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    assert_eq!(p["prefixes"], 8, "{}", pool_summary(&p));
    let calls = node.calls().await.of("AssignPrivateIpAddresses") - before;
    assert!(calls <= 3, "{calls} Assign calls for 7 prefixes");
    assert_eq!(p["exhausted_allocations"], 0, "no pod waited for EC2 while an address was free");
}

#[tokio::test]
async fn prefix_mode_in_a_subnet_running_out_falls_back_then_pauses_growth() {
    // A /27 has no /28 that can be a prefix (one holds the network and reserved addresses, the
    // other the broadcast address): single IPs at once, until the subnet is out of them; then
    // growth pauses and says why, and pods beyond what the subnet holds are refused, not hung.
    let node = Node::start_in("m5.large", "10.0.1.0/27").await;
    let d = node
        .daemon(&[("--prefix-delegation", "true"), ("--prefix-fallback-pause", "600s"), ("--allocation-wait", "300ms")])
        .await;
    let api = d.unix();
    eventually("the fallback to single IPs", async || {
        let p = api.pool().await;
        if p["mode"] == "prefix-fallback" && p["deficit"] == 0 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    // 27 usable addresses: the instance's and two more ENIs', 24 for pods at most; fewer when the
    // last request asks for more than the subnet has left (EC2 grants all or nothing).
    let mut served = 0;
    for i in 0..30 {
        let r = api.post_unchecked("/v1/leases", &lease_request(NET, &format!("pod{i:02}"), "eth0")).await;
        if r.status == 201 {
            served += 1;
        } else {
            r.assert_problem(503, problem::POOL_EXHAUSTED, None);
        }
    }
    assert!((18..=24).contains(&served), "{served} pods served");
    let p = eventually("growth to pause for the exhausted subnet", async || {
        let p = api.pool().await;
        if !p["growth_paused"].is_null() { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    assert!(p["growth_paused"]["reason"].as_str().unwrap().contains("InsufficientFreeAddressesInSubnet"), "{p}");
    assert_eq!(p["mode"], "prefix-fallback");
}

#[tokio::test]
async fn prefix_mode_makes_enis_with_their_prefixes_and_mode_off_drains_them_once_free() {
    // A t3.small ENI has 3 slots beside its primary: past 48 pods the pool needs a second ENI,
    // which comes with its prefixes in the CreateNetworkInterface call. Then the mode goes off:
    // the prefixes keep serving their pods, and go back to EC2 as they are wholly free.
    let node = Node::start("t3.small").await;
    let d = node.daemon(&[("--prefix-delegation", "true"), ("--shrink-interval", "50ms")]).await;
    let api = d.unix();
    let mut pods = Vec::new();
    for i in 0..50 {
        pods.push(api.lease(&format!("pod{i:02}")).await);
    }
    let p = eventually("two ENIs and no deficit", async || {
        let p = api.pool().await;
        if p["enis"] == 2 && p["deficit"] == 0 { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    assert_eq!(p["total"], 16 * p["prefixes"].as_u64().unwrap(), "prefixes only: {}", pool_summary(&p));
    let second = node.world.attached(&node.client).await.into_iter().find(|(_, device, _)| *device == 1).unwrap().0;
    let created = node.ec2.requests("CreateNetworkInterface").await;
    assert_eq!(created.len(), 1);
    let asked: u64 = created[0].get("Ipv4PrefixCount").expect("prefixes asked for on create").parse().unwrap();
    assert!(asked >= 1, "{created:?}");
    // What the new ENI holds came with it, or in later growth.
    let assigned_later: u64 = node
        .ec2
        .requests("AssignPrivateIpAddresses")
        .await
        .iter()
        .filter(|r| r.get("NetworkInterfaceId") == Some(&second))
        .map(|r| r.get("Ipv4PrefixCount").expect("prefixes only").parse::<u64>().unwrap())
        .sum();
    let on_second = node.world.attached_prefixes(&node.client).await.into_iter().find(|(id, _)| *id == second).unwrap();
    assert_eq!(on_second.1.len() as u64, asked + assigned_later, "{on_second:?}");
    node.assert_prefixes_match_ec2(&api).await;

    let d = d.restart_with(&[("--prefix-delegation", "false"), ("--warm-ip-target", "2")]).await;
    let api = d.unix();
    eventually("secondary-IP mode", async || {
        let p = api.pool().await;
        if p["mode"] == "ips" && p["deficit"] == 0 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    for l in &pods {
        let now =
            api.get(&format!("/v1/leases/{NET}/{}/eth0", l["container_id"].as_str().unwrap())).await.expect(200).json();
        assert_eq!(now["ip"], l["ip"], "a pod keeps its prefix address");
    }
    for l in &pods {
        api.release(l["container_id"].as_str().unwrap()).await;
    }
    eventually("every prefix given back", async || {
        let held = node.world.attached_prefixes(&node.client).await;
        let p = api.pool().await;
        if held.iter().all(|(_, q)| q.is_empty()) && p["prefixes"] == 0 {
            Ok(())
        } else {
            Err(format!("EC2 {held:?}, pool {}", pool_summary(&p)))
        }
    })
    .await;
    pool_settles(&api, &[("prefixes", 0), ("leased", 0), ("free", 2)], HOLD).await;
    node.assert_matches_ec2(&api).await;
}

#[tokio::test]
async fn a_full_node_subnet_falls_over_to_a_tagged_one_and_says_where() {
    // Someone else's ENI takes every address left in the node's /27; a subnet of the same zone
    // is tagged kubernetes.io/role/cni. The primary ENI's subnet refuses; the pool does not
    // pause but puts a new ENI in the tagged subnet, and /v1/pool, /v1/enis and the metrics
    // say so.
    let node = Node::start_in("m5.large", "10.0.0.0/27").await;
    let client = &node.client;
    let tagged = plain_subnet(&node, "10.0.4.0/24").await;
    client.create_tags().resources(&tagged).tags(role_tag()).send().await.unwrap();
    // 27 usable addresses: the instance's, and 26 for the other ENI (its primary and 25).
    client
        .create_network_interface()
        .subnet_id(&node.world.subnet_id)
        .secondary_private_ip_address_count(25)
        .send()
        .await
        .expect("filling the node's subnet");
    let d = node.daemon(&[("--warm-ip-target", "5"), ("--warm-eni-target", "0")]).await;
    let api = d.unix();
    let p = eventually("five free IPs on an ENI in the tagged subnet", async || {
        let p = api.pool().await;
        if p["free"] == 5 && p["deficit"] == 0 { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    assert!(p["growth_paused"].is_null(), "no pause: {p}");
    let subnets = p["subnets"].as_array().unwrap();
    assert_eq!(subnets[0]["id"], tagged.as_str(), "the emptiest first: {subnets:?}");
    let node_subnet = subnets.iter().find(|s| s["node"] == true).expect("the node's subnet listed");
    assert_eq!(node_subnet["free"], 0);
    let enis = api.enis().await;
    let new = enis.iter().find(|e| e["device_number"] == 1).expect("a second ENI");
    assert_eq!(new["subnet_id"], tagged.as_str());
    assert_eq!(new["zone"], node.world.zone.as_str());
    assert_eq!(new["subnet_cidr"], "10.0.4.0/24");
    let primary = enis.iter().find(|e| e["primary"] == true).unwrap();
    assert_eq!(primary["subnet_id"], node.world.subnet_id.as_str());
    let l = api.lease("pod").await;
    assert!(l["ip"].as_str().unwrap().starts_with("10.0.4."), "{l}");
    // More pods, more growth: the refusing subnet's ENI is not asked again within the skip
    // period (one failing call per growth otherwise).
    for i in 0..6 {
        api.lease(&format!("more{i}")).await;
    }
    eventually("the pool to catch up", async || {
        let p = api.pool().await;
        if p["leased"] == 7 && p["deficit"] == 0 { Ok(()) } else { Err(pool_summary(&p)) }
    })
    .await;
    let on_primary = node
        .ec2
        .requests("AssignPrivateIpAddresses")
        .await
        .iter()
        .filter(|r| r.get("NetworkInterfaceId") == Some(&node.world.primary_eni_id))
        .count();
    assert_eq!(on_primary, 1, "the full subnet's ENI was asked once");
    let text = metrics_text(&api).await;
    assert_eq!(
        metric(&text, &format!("enipool_subnet_free_addresses{{subnet=\"{}\"}}", node.world.subnet_id)),
        Some(0.0)
    );
    assert!(metric(&text, &format!("enipool_subnet_free_addresses{{subnet=\"{tagged}\"}}")).unwrap() > 200.0);
    let args = enipool_server::config::ClientArgs { socket: d.socket.clone(), json: false };
    let status = enipool_server::operator::status(&args).await.expect("enipoold status");
    assert!(status.contains("subnets for new ENIs") && status.contains(&tagged), "{status}");
    let page = d.tcp().get("/status?refresh=0").await.text();
    assert!(page.contains(&format!("data-subnet-id=\"{tagged}\"")), "the page's subnet table");
    assert!(page.contains(&format!("(<code>{tagged}</code>, {})", node.world.zone)), "the ENI's subnet and zone");
}

fn role_tag() -> enipool_ec2::testing::aws_sdk_ec2::types::Tag {
    enipool_ec2::testing::aws_sdk_ec2::types::Tag::builder().key("kubernetes.io/role/cni").value("1").build()
}

/// A config file with one `[eni-config.<zone>]` table.
fn eni_config_file(dir: &std::path::Path, zone: &str, subnet: &str) -> String {
    let path = dir.join("enipool.toml");
    std::fs::write(&path, format!("[eni-config.{zone}]\nsubnet = \"{subnet}\"\n")).unwrap();
    path.to_str().unwrap().to_string()
}

async fn plain_subnet(node: &Node, cidr: &str) -> String {
    node.client
        .create_subnet()
        .vpc_id(&node.world.vpc_id)
        .cidr_block(cidr)
        .availability_zone(&node.world.zone)
        .send()
        .await
        .unwrap()
        .subnet()
        .and_then(|s| s.subnet_id())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn custom_networking_serves_pods_from_the_zones_subnet_only() {
    // The primary ENI holds a secondary IP from before; with custom networking on, the pool
    // grows on a new ENI in the zone's subnet, pods get addresses there, and the primary's IP
    // goes back once free.
    let node = Node::start_in("m5.large", "10.0.0.0/24").await;
    let pods = plain_subnet(&node, "10.0.64.0/20").await;
    node.client
        .assign_private_ip_addresses()
        .network_interface_id(&node.world.primary_eni_id)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = eni_config_file(dir.path(), &node.world.zone, &pods);
    let d = node
        .daemon(&[
            ("--config", &file),
            ("--custom-network", "true"),
            ("--warm-ip-target", "3"),
            ("--ip-cooldown-period", "0"),
        ])
        .await;
    let api = d.unix();
    // At once, while the primary's old IP may still be free: never handed out.
    let first = api.lease("first").await;
    let ip: std::net::Ipv4Addr = first["ip"].as_str().unwrap().parse().unwrap();
    assert!("10.0.64.0/20".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip), "{first}");
    api.release("first").await;
    eventually("three free IPs on an ENI in the pods' subnet, none on the primary", async || {
        let p = api.pool().await;
        let enis = api.enis().await;
        let primary = enis.iter().find(|e| e["primary"] == true).unwrap();
        let on_primary = primary["addresses"].as_array().unwrap().len();
        if p["free"] == 3 && p["deficit"] == 0 && on_primary == 0 {
            Ok(())
        } else {
            Err(format!("{} on primary {on_primary}", pool_summary(&p)))
        }
    })
    .await;
    let enis = api.enis().await;
    let second = enis.iter().find(|e| e["device_number"] == 1).expect("a second ENI");
    assert_eq!(second["subnet_id"], pods.as_str());
    let l = api.lease("pod").await;
    let ip: std::net::Ipv4Addr = l["ip"].as_str().unwrap().parse().unwrap();
    assert!("10.0.64.0/20".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip), "{l}");
    eventually("the primary's secondary IP given back to EC2", async || {
        let attached = node.world.attached(&node.client).await;
        let primary = attached.iter().find(|(id, _, _)| *id == node.world.primary_eni_id).unwrap();
        if primary.2.is_empty() { Ok(()) } else { Err(format!("{primary:?}")) }
    })
    .await;
    let p = api.pool().await;
    assert_eq!(p["subnets"][0]["id"], pods.as_str(), "{p}");
    assert!(p["growth_blocked"].is_null());
}

#[tokio::test]
async fn custom_networking_without_a_table_for_the_zone_does_not_grow_and_says_why() {
    let node = Node::start_in("m5.large", "10.0.0.0/24").await;
    let pods = plain_subnet(&node, "10.0.64.0/20").await;
    let dir = tempfile::tempdir().unwrap();
    let file = eni_config_file(dir.path(), "elsewhere-1z", &pods);
    let flags = node.flags(&[("--config", &file), ("--custom-network", "true"), ("--allocation-wait", "200ms")]);
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in_unready(data.path(), &as_refs(&flags)).await;
    let api = d.unix();
    let why = not_ready_because(&api, "eni-config").await;
    assert!(why.contains(&format!("[eni-config.{}]", node.world.zone)), "{why}");
    let p = api.pool().await;
    assert_eq!(p["growth_blocked"].as_str(), Some(why.as_str()));
    let page = d.tcp().get("/status?refresh=0").await.text();
    assert!(page.contains("id=\"growth-blocked\""), "the page says it");
    let args = enipool_server::config::ClientArgs { socket: d.socket.clone(), json: false };
    let status = enipool_server::operator::status(&args).await.expect("enipoold status");
    assert!(status.contains("growth blocked: custom networking"), "{status}");
    let r = api.post_unchecked("/v1/leases", &lease_request(NET, "pod", "eth0")).await;
    r.assert_problem(503, problem::POOL_EXHAUSTED, None);
    let calls = node.calls().await;
    assert_eq!((calls.of("CreateNetworkInterface"), calls.of("AssignPrivateIpAddresses")), (0, 0), "nothing grown");
}

#[tokio::test]
async fn custom_networking_switched_on_at_the_eni_limit_makes_room_in_the_zones_subnet() {
    // A t3.nano has two ENIs of one pod address each, both in the node's subnet when custom
    // networking is switched on. The pool must empty and delete the old secondary ENI (once its
    // pod is gone) to make room for one in the zone's subnet, whatever the deficit says.
    let node = Node::start_in("t3.nano", "10.0.0.0/24").await;
    let pods = plain_subnet(&node, "10.0.64.0/20").await;
    let d = node.daemon(&[("--warm-ip-target", "2"), ("--ip-cooldown-period", "0")]).await;
    let api = d.unix();
    pool_settles(&api, &[("enis", 2), ("total", 2)], HOLD).await;
    let old = api.lease("old").await;
    let dir = tempfile::tempdir().unwrap();
    let file = eni_config_file(dir.path(), &node.world.zone, &pods);
    let d = d.restart_with(&[("--config", &file), ("--custom-network", "true")]).await;
    let api = d.unix();
    let again = api.get(&format!("/v1/leases/{NET}/old/eth0")).await.expect(200).json();
    assert_eq!(again["ip"], old["ip"], "the old pod keeps its address");
    api.release("old").await;
    eventually("an ENI in the zone's subnet, nothing left on the primary", async || {
        let enis = api.enis().await;
        let primary = enis.iter().find(|e| e["primary"] == true).unwrap();
        let second = enis.iter().find(|e| e["device_number"] == 1);
        let on_primary = primary["addresses"].as_array().unwrap().len();
        match second {
            Some(e)
                if e["subnet_id"] == pods.as_str()
                    && on_primary == 0
                    && !e["addresses"].as_array().unwrap().is_empty() =>
            {
                Ok(())
            }
            _ => Err(format!("{enis:?}")),
        }
    })
    .await;
    let l = api.lease("new").await;
    let ip: std::net::Ipv4Addr = l["ip"].as_str().unwrap().parse().unwrap();
    assert!("10.0.64.0/20".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip), "{l}");
    node.assert_matches_ec2(&api).await;
}

//! Reconciliation with the node: a lease whose pod network namespace is gone is released (into
//! cooldown), at start-up and periodically; a lease made through the API alone, a young one, and
//! one whose namespace the daemon cannot judge are kept; host veths and pod rules of ours that
//! no lease accounts for are removed, everyone else's are left. Needs root and `ip` (real
//! namespaces); the node side happens in a namespace the test made (`--host-netns`).

use std::time::Duration;

use crate::common::netns::Netns;
use crate::common::{Daemon, NET, eventually, metric};
use enipool_nodenet::alias::host_veth_alias;
use serde_json::{Value, json};

fn request(container_id: &str, netns: Option<&str>, host_veth: Option<&str>) -> Value {
    json!({"network": NET, "container_id": container_id, "ifname": "eth0", "pod_namespace": "default",
        "pod_name": container_id, "netns": netns, "host_veth": host_veth})
}

fn lease_path(container_id: &str) -> String {
    format!("/v1/leases/{NET}/{container_id}/eth0")
}

#[tokio::test]
async fn at_start_up_leases_of_gone_pods_are_released_and_no_others() {
    let tmp = tempfile::TempDir::new().unwrap();
    let alive = Netns::new();
    let netns_dir = tmp.path().join("netns");
    std::fs::create_dir(&netns_dir).unwrap();
    let gone = netns_dir.join("cni-gone");
    // What a live pod's namespace looks like when /run/netns is mounted without propagation.
    let plain_file = netns_dir.join("cni-not-propagated");
    std::fs::write(&plain_file, "").unwrap();
    let flags = [("--node-reconcile-grace", "0"), ("--node-reconcile-interval", "0"), ("--ip-cooldown-period", "1h")];
    let data = tmp.path().join("data");
    let d = Daemon::start_in(&data, &flags).await;
    let api = d.unix();
    let mut kept = Vec::new();
    for (id, netns) in [
        ("alive", Some(alive.path())),
        ("api-only", None),
        ("proc-path", Some("/proc/999999999/ns/net".to_string())),
        ("invisible-dir", Some("/nonexistent-enipool-dir/cni-1".to_string())),
        ("plain-file", Some(plain_file.to_str().unwrap().to_string())),
    ] {
        kept.push(api.post("/v1/leases", &request(id, netns.as_deref(), None)).await.expect(201).json());
    }
    let gone_lease = api.post("/v1/leases", &request("gone", gone.to_str(), Some("enigone"))).await.expect(201).json();
    // Interval 0: no pass while it runs.
    assert_eq!(api.leases("").await.len(), 6);

    let d = d.restart().await;
    let api = d.unix();
    for lease in &kept {
        let id = lease["container_id"].as_str().unwrap();
        assert_eq!(&api.get(&lease_path(id)).await.expect(200).json(), lease, "{id} was kept as it was");
    }
    api.get(&lease_path("gone")).await.expect(404);
    assert_eq!(api.pool().await["cooling"], 1, "released into cooldown");
    for i in 0..4 {
        let new = api.lease(&format!("new-{i}")).await;
        assert_ne!(new["ip"], gone_lease["ip"], "the cooling IP was handed out");
    }
}

#[tokio::test]
async fn a_lease_younger_than_the_grace_period_is_left_alone() {
    let tmp = tempfile::TempDir::new().unwrap();
    let missing = tmp.path().join("cni-in-flight");
    let flags = [("--node-reconcile-grace", "1h"), ("--node-reconcile-interval", "20ms")];
    let d = Daemon::start_in(&tmp.path().join("data"), &flags).await;
    let api = d.unix();
    let lease = api.post("/v1/leases", &request("in-flight", missing.to_str(), None)).await.expect(201).json();
    let d = d.restart().await;
    let api = d.unix();
    // Periodic passes have run (the counter of passes that released nothing stays, the lease too).
    crate::common::holds("the young lease stays", Duration::from_millis(200), async || {
        let r = api.get(&lease_path("in-flight")).await;
        if r.status == 200 && r.json() == lease { Ok(()) } else { Err(format!("{} {}", r.status, r.text())) }
    })
    .await;
}

#[tokio::test]
async fn the_periodic_pass_releases_a_pod_whose_namespace_was_deleted() {
    let pod = Netns::new();
    let flags =
        [("--node-reconcile-grace", "0"), ("--node-reconcile-interval", "20ms"), ("--metrics-listen", "127.0.0.1:0")];
    let d = Daemon::start(&flags).await;
    let api = d.unix();
    api.post("/v1/leases", &request("pod", Some(&pod.path()), None)).await.expect(201);
    crate::common::holds("a live pod's lease stays", Duration::from_millis(150), async || {
        let status = api.get(&lease_path("pod")).await.status;
        if status == 200 { Ok(()) } else { Err(format!("GET answered {status}")) }
    })
    .await;
    drop(pod); // ip netns del
    eventually("the dead pod's lease to be released", async || {
        let status = api.get(&lease_path("pod")).await.status;
        if status == 404 { Ok(()) } else { Err(format!("GET answered {status}")) }
    })
    .await;
    // The pass counts what it released when it ends, just after the release is visible.
    let metrics = d.metrics_listener();
    eventually("the release to be counted", async || {
        let text = metrics.get("/metrics").await.expect(200).text();
        match metric(&text, "enipool_node_leases_released_total") {
            Some(1.0) => Ok(()),
            other => Err(format!("enipool_node_leases_released_total {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn orphan_host_veths_and_pod_rules_of_ours_are_removed_and_no_one_elses() {
    let tmp = tempfile::TempDir::new().unwrap();
    let node = Netns::new();
    let node_path = node.path();
    let flags = [
        ("--host-netns", node_path.as_str()),
        ("--node-cleanup", "true"),
        ("--node-reconcile-grace", "0"),
        ("--node-reconcile-interval", "0"),
    ];
    let d = Daemon::start_in(&tmp.path().join("data"), &flags).await;
    let api = d.unix();
    let lease = api.post("/v1/leases", &request("kept", None, Some("enikept"))).await.expect(201).json();
    let ip = lease["ip"].as_str().unwrap().to_string();

    let veth = |name: &str, alias: &str| {
        node.ip(&["link", "add", name, "type", "veth", "peer", "name", &format!("{name}p")]);
        node.ip(&["link", "set", "dev", name, "alias", alias]);
    };
    veth("enikept", &host_veth_alias(NET, "kept", "eth0"));
    veth("eniorphan", &host_veth_alias(NET, "dead-pod", "eth0"));
    veth("othersveth", "someone else's");
    let rule = |args: &[&str]| {
        let mut all = vec!["rule", "add"];
        all.extend_from_slice(args);
        node.ip(&all);
    };
    rule(&["to", &ip, "lookup", "main", "priority", "512", "protocol", "211"]);
    rule(&["from", &ip, "lookup", "2", "priority", "1536", "protocol", "211"]);
    rule(&["to", "10.9.9.9", "lookup", "main", "priority", "512", "protocol", "211"]);
    rule(&["from", "10.9.9.9", "lookup", "2", "priority", "1536", "protocol", "211"]);
    rule(&["to", "10.9.9.8", "lookup", "main", "priority", "512"]);
    rule(&["from", "10.9.9.7", "lookup", "3", "priority", "1535", "protocol", "211"]);

    let d = d.restart().await; // the start-up pass runs before ready
    let links = node.ip(&["-o", "link", "show"]);
    assert!(links.contains("enikept@"), "{links}");
    assert!(links.contains("othersveth@"), "{links}");
    assert!(!links.contains("eniorphan"), "{links}");
    let rules = node.ip(&["rule", "show"]);
    let has = |needle: &str| rules.lines().any(|l| l.contains(needle));
    assert!(has(&format!("512:\tfrom all to {ip} lookup main proto 211")), "{rules}");
    assert!(has(&format!("1536:\tfrom {ip} lookup 2 proto 211")), "{rules}");
    assert!(!rules.contains("10.9.9.9"), "{rules}");
    assert!(has("512:\tfrom all to 10.9.9.8 lookup main"), "{rules}");
    assert!(has("1535:\tfrom 10.9.9.7 lookup 3 proto 211"), "{rules}");
    assert_eq!(d.unix().get(&lease_path("kept")).await.expect(200).json(), lease);
}

/// While the provider cannot be listed the ledger may lack leases the provider sync would
/// rebuild, so the node passes run without cleanup: a dead pod's lease is still released, but
/// no veth or rule is deleted. (Before, the start-up pass cleaned up first thing.)
#[tokio::test]
async fn while_the_provider_is_unreachable_nothing_is_cleaned_up() {
    let tmp = tempfile::TempDir::new().unwrap();
    let node = Netns::new();
    let node_path = node.path();
    let data = tmp.path().join("data");
    let gone = tmp.path().join("cni-gone");
    let d = Daemon::start_in(&data, &[("--node-reconcile-interval", "0")]).await;
    d.unix().post("/v1/leases", &request("gone", gone.to_str(), None)).await.expect(201);
    let mut d = d;
    assert!(d.terminate(Duration::from_secs(5)).await.success());

    node.ip(&["link", "add", "eniorphan", "type", "veth", "peer", "name", "eniorphanp"]);
    node.ip(&["link", "set", "dev", "eniorphan", "alias", &host_veth_alias(NET, "dead-pod", "eth0")]);
    node.ip(&["rule", "add", "to", "10.9.9.9", "lookup", "main", "priority", "512", "protocol", "211"]);

    let dead = crate::common::unreachable_endpoint();
    let mut flags = crate::common::unreachable_ec2(&dead);
    flags.extend([
        ("--host-netns", node_path.as_str()),
        ("--node-cleanup", "true"),
        ("--node-reconcile-grace", "0"),
        ("--node-reconcile-interval", "20ms"),
    ]);
    let d = Daemon::start_in_unready(&data, &flags).await;
    let api = d.unix();
    eventually("the dead pod's lease to be released", async || {
        let status = api.get(&lease_path("gone")).await.status;
        if status == 404 { Ok(()) } else { Err(format!("GET answered {status}")) }
    })
    .await;
    crate::common::holds(
        "the orphan veth and rule to stay while the provider is unreachable",
        Duration::from_millis(200),
        async || {
            let r = api.get("/readyz").await;
            if r.status != 503 {
                return Err(format!("/readyz {} {}", r.status, r.text()));
            }
            let links = node.ip(&["-o", "link", "show"]);
            let rules = node.ip(&["rule", "show"]);
            if links.contains("eniorphan@") && rules.contains("10.9.9.9") {
                Ok(())
            } else {
                Err(format!("{links}\n{rules}"))
            }
        },
    )
    .await;
}

/// Until the node has been read, a lease's absence proves nothing: a daemon that cannot read it
/// leases nothing, answers lease lookups 503, and says why in /readyz.
#[tokio::test]
async fn a_node_that_cannot_be_read_fails_closed() {
    let tmp = tempfile::TempDir::new().unwrap();
    let missing = tmp.path().join("no-such-netns");
    let flags = [("--host-netns", missing.to_str().unwrap()), ("--allocation-wait", "100ms")];
    let d = Daemon::start_in_unready(&tmp.path().join("data"), &flags).await;
    let api = d.unix();
    eventually("/readyz to say the node cannot be read", async || {
        let r = api.get("/readyz").await;
        match r.json()["reason"].as_str() {
            Some(why) if r.status == 503 && why.contains("reading the node's pods failed") => Ok(()),
            _ => Err(format!("{} {}", r.status, r.text())),
        }
    })
    .await;
    api.post_unchecked("/v1/leases", &request("pod", None, None)).await.assert_problem(
        503,
        enipool_api::problem::NOT_READY,
        None,
    );
    api.get(&lease_path("pod")).await.assert_problem(503, enipool_api::problem::NOT_READY, None);
}

//! Leases outlive the daemon: a clean stop (SIGTERM) and a crash (SIGKILL) both come back with
//! every acknowledged lease, on the same IP, and that IP is not handed out again.

use std::time::{Duration, Instant};

use crate::common::{Daemon, NET, eventually, lease_request, metric, pool_settles};
use enipool_api::problem;
use hyper::Method;
use serde_json::json;

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_keeps_the_leases() {
    let d = Daemon::start(&[]).await;
    let api = d.unix();
    let request = json!({"network": NET, "container_id": "survivor", "ifname": "eth0", "pod_namespace": "default",
        "pod_name": "web-0", "netns": "/var/run/netns/cni-1", "host_veth": "enisurvivor"});
    let lease = api.post("/v1/leases", &request).await.expect(201).json();
    api.lease("released").await;
    api.release("released").await;
    let before = pool_settles(&api, &[("leased", 1), ("total", 18)], Duration::from_millis(60)).await;
    let socket = d.socket.clone();

    // SIGTERM: exit 0 within 5 s, the socket file removed (both checked by restart).
    let d = d.restart().await;
    assert_eq!(d.socket, socket);
    let api = d.unix();
    let path = format!("/v1/leases/{NET}/survivor/eth0");
    assert_eq!(api.get(&path).await.expect(200).json(), lease, "the lease as it was, same IP");
    assert_eq!(api.leases("").await, vec![lease.clone()]);
    api.get(&format!("/v1/leases/{NET}/released/eth0")).await.assert_problem(404, problem::NOT_FOUND, None);
    let after = pool_settles(&api, &[("leased", 1), ("total", 18)], Duration::from_millis(60)).await;
    assert_eq!(
        (after["enis"].clone(), after["instance_id"].clone()),
        (before["enis"].clone(), before["instance_id"].clone())
    );

    // The same key is still answered with its lease; new pods never get its IP.
    assert_eq!(api.post("/v1/leases", &request).await.expect(200).json(), lease);
    for i in 0..5 {
        let other = api.lease(&format!("new{i}")).await;
        assert_ne!(other["ip"], lease["ip"], "the restarted daemon handed out a leased IP");
    }
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_lease() {
    let tmp = tempfile::TempDir::new().unwrap();
    let d = Daemon::start_in(tmp.path(), &[]).await;
    let api = d.unix();
    let mut leases = Vec::new();
    for i in 0..5 {
        leases.push(api.post("/v1/leases", &lease_request(NET, &format!("pod{i}"), "eth0")).await.expect(201).json());
    }
    api.release("pod4").await;
    let kept = &leases[..4];
    drop(d); // SIGKILL: no final checkpoint

    let d = Daemon::start_in(tmp.path(), &[]).await;
    let api = d.unix();
    assert_eq!(api.leases("").await, kept.to_vec(), "every acknowledged lease, and the acknowledged release");
    let fresh = api.lease("fresh").await;
    assert!(kept.iter().all(|l| l["ip"] != fresh["ip"]), "{} was still leased", fresh["ip"]);
}

/// SIGTERM while a lease request waits for an IP: that request is answered (503 shutting-down,
/// which the plugin maps to "try again later"), a new connection fails at once (the socket is
/// gone) instead of hanging, and the daemon exits 0 within 5 s.
#[tokio::test]
async fn sigterm_answers_the_request_in_flight_and_refuses_new_ones_at_once() {
    let flags = [("--max-eni", "1"), ("--allocation-wait", "30s"), ("--metrics-listen", "127.0.0.1:0")];
    let mut d = Daemon::start(&flags).await;
    let api = d.unix();
    // An m5.large's primary ENI: 9 pod IPs, and --max-eni 1 means no more.
    for i in 0..9 {
        api.lease(&format!("pod{i}")).await;
    }
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { api.post("/v1/leases", &lease_request(NET, "waiting", "eth0")).await })
    };
    let metrics = d.metrics_listener();
    eventually("the tenth request to wait for an IP", async || {
        let text = metrics.get("/metrics").await.text();
        match metric(&text, "enipool_allocations_waiting") {
            Some(1.0) => Ok(()),
            other => Err(format!("allocations waiting: {other:?}")),
        }
    })
    .await;

    let signalled = Instant::now();
    d.signal_term();
    let answer = waiting.await.unwrap();
    answer.assert_problem(503, problem::SHUTTING_DOWN, None);
    eventually("the socket to go", async || if d.socket.exists() { Err("still there".into()) } else { Ok(()) }).await;
    let new = api.try_send(Method::GET, "/v1/pool", &[], None).await;
    assert!(new.is_err(), "a new connection during shutdown was answered: {:?}", new.map(|r| r.status));
    let status = d.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

/// A first start with EC2 unreachable has only a placeholder identity (node IP 0.0.0.0, no VPC
/// CIDRs): leases answered then must not carry it into the node's SNAT. (Before, they carried
/// `node_ip 0.0.0.0` and no exclusions with SNAT enabled, and the plugin rewrote the node-wide
/// chain with them.)
#[tokio::test]
async fn a_placeholder_identity_never_reaches_the_nodes_snat() {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    // A ledger with addresses to hand out, and no identity cache (the static provider keeps none).
    let mut d = Daemon::start_in(&data, &[]).await;
    assert_eq!(d.unix().lease("before").await["snat"]["enabled"], true);
    assert!(d.terminate(Duration::from_secs(5)).await.success());
    assert!(!data.join("instance.json").exists());

    let dead = crate::common::unreachable_endpoint();
    let d = Daemon::start_in_unready(&data, &crate::common::unreachable_ec2(&dead)).await;
    let lease = d.unix().post("/v1/leases", &lease_request(NET, "during-outage", "eth0")).await.expect(201).json();
    assert_eq!(lease["snat"]["enabled"], false, "{lease}");
}

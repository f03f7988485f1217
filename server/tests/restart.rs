//! Leases outlive the daemon: a clean stop (SIGTERM) and a crash (SIGKILL) both come back with
//! every acknowledged lease, on the same IP, and that IP is not handed out again.

mod common;

use std::time::Duration;

use common::{Daemon, NET, lease_request, pool_settles};
use enipool_api::problem;
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

//! Restarts under a real runtime. enipoold SIGKILLed and restarted while containerd starts and
//! removes pods: every sandbox that started has a unique address its lease holds, and every
//! removed sandbox's address comes back after its cooldown. containerd restarted while pods
//! run: the pods keep their network and are removed cleanly afterwards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use enipool_cri::client::{Cri, PodSpec};
use enipool_cri::node::{NODE_IP, Node};
use enipool_cri::timing::{now_us, read_calls};
use enipool_cri::wait_for;

use crate::*;

/// A sandbox that started: its ID and the address containerd reported.
type Started = (String, String);

/// What kubelet does when a call fails: try again until it succeeds. Each failed RunPodSandbox
/// leaves at most a not-ready sandbox, which is stopped and removed before the next attempt.
fn run_until_started(cri: &Cri, pod: &PodSpec) -> String {
    wait_for(&format!("{} to start", pod.name), Duration::from_secs(60), || match cri.run_pod(pod) {
        Ok(id) => Some(id),
        Err(_) => {
            for s in cri.list().unwrap_or_default().into_iter().filter(|s| s.name == pod.name) {
                remove_until_gone(cri, &s.id);
            }
            None
        }
    })
}

fn remove_until_gone(cri: &Cri, id: &str) {
    wait_for(&format!("{id} to be removed"), Duration::from_secs(60), || {
        (cri.stop(id).is_ok() && cri.remove(id).is_ok()).then_some(())
    });
}

#[test]
fn daemon_sigkilled_while_containerd_starts_and_removes_pods_loses_and_doubles_nothing() {
    // A DEL that finds the daemon down succeeds and leaves the lease to node reconciliation
    // (which reclaims leases whose namespace is gone, once older than the grace): short here.
    let mut node =
        Node::new(&["--ip-cooldown-period", "1", "--node-reconcile-interval", "200ms", "--node-reconcile-grace", "1s"]);
    let started = AtomicUsize::new(0);
    let (kept, removed): (Vec<Started>, Vec<Started>) = std::thread::scope(|s| {
        let cri = node.containerd.cri();
        let started = &started;
        let churners: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    let (mut kept, mut removed) = (Vec::new(), Vec::new());
                    for i in 0..12 {
                        let id = run_until_started(cri, &PodSpec::new(&format!("churn-{t}-{i}")));
                        let ip = cri.status(&id).expect("PodSandboxStatus").ip;
                        started.fetch_add(1, Ordering::SeqCst);
                        if i % 2 == 0 {
                            kept.push((id, ip));
                        } else {
                            remove_until_gone(cri, &id);
                            removed.push((id, ip));
                        }
                    }
                    (kept, removed)
                })
            })
            .collect();
        let bin_dir = node.dir.path().join("cni-bin");
        let daemon = node.daemon.as_mut().expect("daemon");
        for at in [4, 10, 16] {
            wait_for("the churn to progress", Duration::from_secs(120), || {
                (started.load(Ordering::SeqCst) >= at).then_some(())
            });
            daemon.kill();
            // Down until containerd has run the plugin at least once meanwhile.
            let killed_at = now_us();
            wait_for("a plugin call while enipoold is down", Duration::from_secs(60), || {
                read_calls(&bin_dir).iter().any(|c| c.plugin == "enipool-cni" && c.started_us > killed_at).then_some(())
            });
            daemon.respawn();
        }
        churners.into_iter().map(|h| h.join().expect("churn thread")).fold(
            (Vec::new(), Vec::new()),
            |(mut k, mut r), (k2, r2)| {
                k.extend(k2);
                r.extend(r2);
                (k, r)
            },
        )
    });

    let kept_ips: BTreeSet<&String> = kept.iter().map(|(_, ip)| ip).collect();
    assert_eq!(kept_ips.len(), kept.len(), "every running sandbox has its own address: {kept:?}");
    for (id, ip) in &kept {
        let lease = lease_of(&node, id).unwrap_or_else(|| panic!("no lease for running sandbox {id}\n{}", node.logs()));
        assert_eq!(lease["ip"], ip.as_str(), "the lease holds the address containerd reports");
        assert!(node.cri().status(id).unwrap().ready);
    }
    let removed_ids: Vec<String> = removed.iter().map(|(id, _)| id.clone()).collect();
    wait_for("removed sandboxes' leases to go (their DEL, or reconciliation)", Duration::from_secs(30), || {
        let leases = node.daemon().leases();
        (!leases.iter().any(|l| removed_ids.iter().any(|id| l["container_id"] == *id))).then_some(())
    });
    // Each removed sandbox's address is back once cooled, unless a later pod holds it again.
    let returning: BTreeSet<&String> = removed.iter().map(|(_, ip)| ip).filter(|ip| !kept_ips.contains(ip)).collect();
    wait_for("removed addresses to come back after their cooldown", Duration::from_secs(30), || {
        let states = address_states(&node);
        returning.iter().all(|ip| states.get(*ip).is_some_and(|s| s == "free")).then_some(())
    });
    assert!(!address_states(&node).values().any(|s| s == "lost"), "nothing lost");

    let mut netns = Vec::new();
    for (id, _) in &kept {
        netns.push(node.cri().status(id).unwrap().netns_path);
        remove_pod(&node, id);
    }
    let all: Vec<String> = kept.iter().map(|(id, _)| id.clone()).chain(removed_ids).collect();
    assert_nothing_left(&node, &all, &netns);
}

#[test]
fn containerd_restarted_while_pods_run_keeps_their_network_and_removes_them_cleanly() {
    let mut node = Node::new(&[]);
    let ids: Vec<String> = (0..3).map(|i| run_pod(&node, &PodSpec::new(&format!("steady-{i}")))).collect();
    let before: Vec<_> = ids.iter().map(|id| node.cri().status(id).unwrap()).collect();

    node.containerd.restart();

    for (id, was) in ids.iter().zip(&before) {
        let now = node.cri().status(id).unwrap();
        assert!(now.ready, "{id} still runs");
        assert_eq!(now.ip, was.ip, "{id} kept its address");
        assert_eq!(lease_of(&node, id).unwrap()["ip"], was.ip.as_str());
        assert!(ping(&node.ns.path(), &was.ip), "node to {id}");
    }
    assert!(ping(&before[0].netns_path, &before[1].ip), "pod to pod");
    assert!(ping(&before[2].netns_path, NODE_IP), "pod to node");

    for id in &ids {
        remove_pod(&node, id);
    }
    let netns: Vec<String> = before.into_iter().map(|s| s.netns_path).collect();
    assert_nothing_left(&node, &ids, &netns);
}

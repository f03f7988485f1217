//! containerd's two DELs: StopPodSandbox runs DEL with the netns and a prevResult;
//! RemovePodSandbox (or a second stop) runs DEL again with an empty CNI_NETNS and no prevResult.
//! Both succeed and nothing is left.

use enipool_cri::client::PodSpec;
use enipool_cri::node::Node;

use crate::*;

fn call(command: &str, with_netns: bool) -> (String, bool, i32) {
    (command.to_string(), with_netns, 0)
}

#[test]
fn stop_then_remove_runs_two_dels_and_leaks_nothing() {
    let node = Node::new(&[]);
    let id = run_pod(&node, &PodSpec::new("stop-remove"));
    let status = node.cri().status(&id).unwrap();
    assert!(lease_of(&node, &id).is_some());
    assert!(cached_results(&id).contains(&format!("aws-cni-{id}-eth0")), "containerd cached our ADD result");

    let ip = status.ip.clone();
    let routes = node.ns.ip(&["route", "show", "table", "all"]);
    assert!(routes.contains(&format!("{ip} ")), "the host route of {ip} while it runs: {routes}");
    node.cri().stop(&id).unwrap();
    assert!(lease_of(&node, &id).is_none(), "the first DEL released the lease");
    // Our DEL removed the host route and rules itself (the veth goes with the namespace).
    let routes = node.ns.ip(&["route", "show", "table", "all"]);
    assert!(!routes.contains(&format!("{ip} ")), "no host route of {ip} after stop: {routes}");
    let rules = node.pod_rules();
    assert!(!rules.iter().any(|r| r.contains(&format!("{ip} "))), "no rule of {ip} after stop: {rules:?}");
    assert_eq!(our_calls(&node, &id), vec![call("ADD", true), call("DEL", true)]);

    node.cri().remove(&id).unwrap();
    assert_eq!(
        our_calls(&node, &id),
        vec![call("ADD", true), call("DEL", true), call("DEL", false)],
        "the second DEL came without a netns, and succeeded"
    );
    assert_nothing_left(&node, std::slice::from_ref(&id), &[status.netns_path]);
}

#[test]
fn stop_twice_then_remove_leaks_nothing() {
    let node = Node::new(&[]);
    let id = run_pod(&node, &PodSpec::new("stop-twice"));
    let status = node.cri().status(&id).unwrap();
    node.cri().stop(&id).unwrap();
    node.cri().stop(&id).unwrap();
    assert!(!node.cri().status(&id).unwrap().ready);
    node.cri().remove(&id).unwrap();
    assert_eq!(
        our_calls(&node, &id),
        vec![call("ADD", true), call("DEL", true), call("DEL", false), call("DEL", false)],
        "the second stop and the remove each ran a DEL without a netns, and both succeeded"
    );
    assert_nothing_left(&node, std::slice::from_ref(&id), &[status.netns_path]);
}

//! A failed ADD under containerd: the pool is exhausted on a small static instance. containerd
//! runs DEL right after the failed ADD; containerd removes the refused sandbox, which holds no lease and
//! left no kernel state, and the error containerd reports names the cause.

use enipool_cri::client::PodSpec;
use std::time::Duration;

use enipool_cri::node::Node;
use enipool_cri::wait_for;

use crate::*;

#[test]
fn an_exhausted_pool_fails_the_sandbox_naming_the_cause_and_leaves_nothing() {
    // t3.micro: 2 ENIs x 2 IPv4, so two pod addresses in all.
    let node = Node::new(&["--instance-type", "t3.micro"]);
    let first = run_pod(&node, &PodSpec::new("first"));
    // The second address is on the second ENI, which the pool attaches once the first is taken:
    // let it, so that only the third pod can find the pool empty.
    wait_for("the second ENI's address in the pool", Duration::from_secs(30), || {
        address_states(&node).values().any(|s| s == "free").then_some(())
    });
    let second = run_pod(&node, &PodSpec::new("second"));
    let veths = node.host_veths();
    let rules = node.pod_rules();
    assert_eq!(veths.len(), 2);

    let err = node.cri().run_pod(&PodSpec::new("third")).expect_err("no address left");
    let message = err.message();
    assert!(
        message.contains("enipool-cni") && message.contains("exhausted"),
        "names the plugin and the cause: {message}"
    );

    let listed = node.cri().list().unwrap();
    assert!(listed.iter().all(|s| s.name != "third"), "containerd removed the refused sandbox: {listed:?}");
    let third = node
        .calls()
        .into_iter()
        .find(|c| c.plugin == "enipool-cni" && c.command == "ADD" && c.exit != 0)
        .expect("the failed ADD was recorded")
        .container_id;
    assert!(lease_of(&node, &third).is_none(), "no lease for the refused pod");
    assert_eq!(node.host_veths(), veths, "no veth of the refused pod");
    assert_eq!(node.pod_rules(), rules, "no rule of the refused pod");
    let calls = our_calls(&node, &third);
    assert_eq!(calls.len(), 2, "ADD, then DEL at once: {calls:?}");
    assert!(calls[0].0 == "ADD" && calls[0].2 != 0, "{calls:?}");
    assert_eq!((calls[1].0.as_str(), calls[1].2), ("DEL", 0));
    assert!(cached_results(&third).is_empty(), "a failed ADD caches nothing");

    let (a, b) = (node.cri().status(&first).unwrap(), node.cri().status(&second).unwrap());
    remove_pod(&node, &first);
    remove_pod(&node, &second);
    assert_nothing_left(&node, &[first, second, third], &[a.netns_path, b.netns_path]);
}

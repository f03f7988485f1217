//! Host veth names: the usual name is a 44-bit hash of the pod's namespace and name, so two live
//! pods can share it (a chosen collision, or a pod name wired again while an old sandbox still
//! runs). ADD never unplugs a live pod for its name: an interface holding it is replaced only when
//! it is ours and its attachment is gone; otherwise the new pod is wired under another name, which
//! its lease records, so DEL and CHECK still find it. Run as root.

mod common;

use common::*;
use serde_json::{Value, json};

fn lease_veth(node: &Node, pod: &Pod) -> Value {
    let (status, lease) = node.daemon.get(&format!("/v1/leases/{NETWORK}/{}/{}", pod.container_id, pod.ifname));
    assert_eq!(status, 200, "{lease}");
    lease["host_veth"].clone()
}

/// Two live sandboxes of one pod name (the old one still runs): the second ADD wires under another
/// name and the first pod keeps working; each DEL touches only its own pod.
#[test]
fn a_second_pod_with_the_same_name_does_not_unplug_the_first() {
    let node = Node::new(&[]);
    let first = Pod::new("web-0");
    let second = Pod::new("web-0");
    let r1 = node.add(&first);
    let r2 = node.add(&second);
    let (v1, v2) = (host_veth_of(&r1), host_veth_of(&r2));
    assert_ne!(v1, v2, "the second pod got a name of its own");
    assert!(node.host_veths().contains(&v1), "the first pod's veth is still there");
    assert_eq!(lease_veth(&node, &second), json!(v2), "the lease records the name actually used");
    assert!(first.ns().ping(NODE_IP), "the first pod still answers");
    assert!(second.ns().ping(&result_ip(&r1)), "and the pods reach each other");
    node.check_ok(&first, &r1);
    node.check_ok(&second, &r2);

    node.del(&second, Some(&r2));
    node.check_ok(&first, &r1);
    assert!(first.ns().ping(NODE_IP));
    node.del(&first, Some(&r1));
}

/// The same pod name after the old sandbox's DEL, its namespace still lingering: the old veth is
/// ours and its attachment is gone, so the new pod takes the usual name back.
#[test]
fn a_dead_pods_veth_of_the_same_name_is_replaced() {
    let node = Node::new(&[]);
    let old = Pod::new("sts-0");
    let r_old = node.add(&old);
    node.del(&old, Some(&r_old));
    assert!(node.host_veths().contains(&host_veth_of(&r_old)), "our DEL leaves the veth to the netns deletion");
    let new = Pod::new("sts-0");
    let r_new = node.add(&new);
    assert_eq!(host_veth_of(&r_new), host_veth_of(&r_old), "the usual name, taken back from the dead pod");
    node.check_ok(&new, &r_new);
    assert!(new.ns().ping(NODE_IP));
    node.del(&new, Some(&r_new));
}

/// An interface that is not ours holding the usual name is left alone.
#[test]
fn an_interface_not_ours_keeps_its_name() {
    let node = Node::new(&[]);
    let probe = Pod::new("probe");
    let usual = host_veth_of(&node.add(&probe));
    node.del(&probe, None);
    drop(probe);
    node.wait_no_host_veths();
    node.ns.ip(&["link", "add", &usual, "type", "veth", "peer", "name", "othersp"]);
    let pod = Pod::new("probe");
    let r = node.add(&pod);
    assert_ne!(host_veth_of(&r), usual);
    assert!(node.host_veths().contains(&usual), "someone else's interface is still there");
    node.check_ok(&pod, &r);
    node.del(&pod, Some(&r));
}

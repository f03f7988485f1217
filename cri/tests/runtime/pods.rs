//! Pods started by containerd get their address from us: PodSandboxStatus reports it, the lease
//! names the pod from CNI_ARGS, and the pods reach each other, the node and (SNATed) the
//! outside; a hostPort (portmap, chained after us) reaches the pod.

use enipool_cri::client::PodSpec;
use enipool_cri::node::{EXTERNAL_IP, NODE_IP, Node};

use crate::*;

#[test]
fn pods_get_our_addresses_and_reach_each_other_the_node_the_outside_and_a_host_port() {
    let node = Node::new(&[]);
    let mut web = PodSpec::new("web-0");
    web.namespace = "team-a".into();
    web.host_ports = vec![(8080, 80)];
    let client = PodSpec::new("client-0");
    let web_id = run_pod(&node, &web);
    let client_id = run_pod(&node, &client);

    let web_status = node.cri().status(&web_id).unwrap();
    let client_status = node.cri().status(&client_id).unwrap();
    assert!(web_status.ready && client_status.ready);
    assert_ne!(web_status.ip, client_status.ip);
    for (id, status, pod) in [(&web_id, &web_status, &web), (&client_id, &client_status, &client)] {
        let lease = lease_of(&node, id).unwrap_or_else(|| panic!("no lease for {}", pod.name));
        assert_eq!(lease["ip"], status.ip.as_str(), "PodSandboxStatus reports our lease's address");
        assert_eq!(lease["pod_namespace"], pod.namespace.as_str(), "from K8S_POD_NAMESPACE");
        assert_eq!(lease["pod_name"], pod.name.as_str(), "from K8S_POD_NAME");
        assert_eq!(lease["netns"], status.netns_path.as_str());
    }

    assert!(ping(&client_status.netns_path, &web_status.ip), "pod to pod\n{}", node.logs());
    assert!(ping(&client_status.netns_path, NODE_IP), "pod to node");
    assert!(ping(&node.ns.path(), &client_status.ip), "node to pod");

    // Outside the VPC, the pod is seen as the node (SNAT).
    let (port, server) = serve_peer_address(&node.ext.path(), &format!("{EXTERNAL_IP}:0"));
    let seen = connect_from(&client_status.netns_path, &format!("{EXTERNAL_IP}:{port}"));
    assert_eq!(seen, NODE_IP, "the outside sees the node's address");
    assert_eq!(server.join().unwrap().ip().to_string(), NODE_IP);

    // hostPort 8080 on the node reaches the web pod's port 80 (portmap's DNAT).
    let (_, server) = serve_peer_address(&web_status.netns_path, "0.0.0.0:80");
    let seen = connect_from(&node.ext.path(), &format!("{NODE_IP}:8080"));
    assert_eq!(seen, "10.0.0.1", "the pod sees the caller (the subnet gateway's address)");
    server.join().unwrap();

    for id in [&web_id, &client_id] {
        node.cri().stop(id).unwrap();
        node.cri().remove(id).unwrap();
    }
    assert_nothing_left(&node, &[web_id, client_id], &[web_status.netns_path, client_status.netns_path]);
    assert!(!node.iptables_save().contains("8080"), "portmap's rules went with the pod");
}

//! The plugin in real namespaces: pods wired by ADD reach each other, the node and (through SNAT)
//! the outside; CHECK and DEL agree with what ADD did. Run as root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn lease_of<'a>(leases: &'a [Value], container_id: &str) -> Option<&'a Value> {
    leases.iter().find(|l| l["container_id"] == container_id)
}

#[test]
fn two_pods_reach_each_other_and_the_node() {
    let node = Node::new(&[]);
    let a = Pod::new("alpha");
    let b = Pod::new("bravo");
    let ra = node.add(&a);
    let rb = node.add(&b);
    let (ipa, ipb) = (result_ip(&ra), result_ip(&rb));
    assert_ne!(ipa, ipb);

    // The result is shaped per spec and points at what exists.
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["interfaces"][1]["name"], "eth0");
    assert_eq!(ra["interfaces"][1]["sandbox"], a.netns_path.as_str());
    assert!(ra["interfaces"][0].get("sandbox").is_none(), "the host veth has no sandbox");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert!(ra["ips"][0].get("version").is_none(), "1.x results carry no ip version");
    let host_veth = ra["interfaces"][0]["name"].as_str().unwrap();
    assert!(host_veth.starts_with("eni") && host_veth.len() == 14, "{host_veth}");
    assert!(node.host_veths().contains(&host_veth.to_string()));

    // The daemon holds both leases, with the netns and host veth we sent.
    let leases = node.daemon.leases();
    let la = lease_of(&leases, &a.container_id).expect("a's lease");
    assert_eq!(la["ip"], ipa.as_str());
    assert_eq!(la["host_veth"], host_veth);
    assert_eq!(la["pod_name"], "alpha");
    assert_eq!(la["netns"], a.netns_path.as_str());

    // Pod-side state as the reference plugin lays it out.
    let routes = a.ns().ip(&["route", "show"]);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0 scope link"), "{routes}");
    let neigh = a.ns().ip(&["neigh", "show"]);
    assert!(neigh.contains("169.254.1.1 dev eth0 lladdr") && neigh.contains("PERMANENT"), "{neigh}");
    assert!(a.ns().ip(&["addr", "show", "eth0"]).contains(&format!("inet {ipa}/32")));
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(rules.contains(&format!("512:\tfrom all to {ipa} lookup main")), "{rules}");

    assert!(a.ns().ping(&ipb), "pod a -> pod b");
    assert!(b.ns().ping(&ipa), "pod b -> pod a");
    assert!(a.ns().ping(NODE_IP), "pod a -> node");
    assert!(node.ns.ping(&ipb), "node -> pod b");

    // CHECK agrees with the state ADD made.
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = ra.clone();
    let check = node.cni("CHECK", &a, &conf);
    assert_eq!(check.exit, 0, "CHECK: {}", check.raw);

    // DEL releases, removes the host route and rule, and is idempotent.
    node.del(&a, Some(&ra));
    node.del(&a, Some(&ra));
    node.del(&a, None);
    let leases = node.daemon.leases();
    assert!(lease_of(&leases, &a.container_id).is_none());
    assert!(lease_of(&leases, &b.container_id).is_some(), "b is untouched");
    assert!(!node.ns.ip(&["rule", "show"]).contains(&format!("to {ipa} ")));
    assert!(!node.ns.ip(&["route", "show"]).contains(&format!("{ipa} dev")));
    assert!(b.ns().ping(NODE_IP), "pod b still works");

    // CHECK after DEL names what is missing.
    let check = node.cni("CHECK", &a, &conf);
    assert_eq!(check.out["code"], 104, "{}", check.raw);
    node.del(&b, Some(&rb));
    assert!(node.daemon.leases().is_empty());
}

#[test]
fn a_pod_reaches_the_outside_through_snat_with_the_node_ip() {
    let node = Node::new(&[]);
    let pod = Pod::new("web");
    let r = node.add(&pod);
    let ip = result_ip(&r);

    let listener = node.ext.on_thread(|| {
        let l = TcpListener::bind((EXTERNAL_IP, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    });
    let (listener, port) = listener.join().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(peer.ip().to_string().as_bytes()).unwrap();
        peer
    });
    let client = pod.ns().on_thread(move || {
        let addr: SocketAddr = format!("{EXTERNAL_IP}:{port}").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let mut seen = String::new();
        s.read_to_string(&mut seen).unwrap();
        seen
    });
    let seen_by_client = client.join().unwrap();
    let peer = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), NODE_IP, "the external side sees the node's primary IP");
    assert_eq!(seen_by_client, NODE_IP);
    assert_ne!(ip, NODE_IP);

    // Inside the VPC there is no SNAT: the node sees the pod's own address.
    let save = node.iptables_save();
    assert!(save.contains("-A ENIPOOL-SNAT -d 10.0.0.0/16 -m comment --comment \"enipool SNAT\" -j RETURN"), "{save}");
    assert_eq!(save.matches("-j ENIPOOL-SNAT").count(), 1, "{save}");
    node.del(&pod, Some(&r));
}

#[test]
fn adding_an_existing_interface_fails_and_keeps_the_first_lease() {
    let node = Node::new(&[]);
    let pod = Pod::new("dup");
    let r = node.add(&pod);
    let again = node.cni("ADD", &pod, &node.conf("1.0.0"));
    assert_eq!(again.exit, 1);
    assert_eq!(again.out["code"], 102, "{}", again.raw);
    assert!(again.out["msg"].as_str().unwrap().contains("already exists"));
    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 1, "the first ADD's lease survives");
    assert_eq!(leases[0]["ip"], result_ip(&r).as_str());
    assert!(pod.ns().ping(NODE_IP));
    node.del(&pod, Some(&r));
}

#[test]
fn del_succeeds_when_the_netns_is_gone() {
    let node = Node::new(&[]);
    let mut pod = Pod::new("gone");
    let r = node.add(&pod);
    let ip = result_ip(&r);
    pod.delete_netns();
    node.wait_no_host_veths();
    node.del(&pod, Some(&r));
    assert!(node.daemon.leases().is_empty());
    assert!(!node.ns.ip(&["rule", "show"]).contains(&ip));
    // Also with no prevResult at all.
    node.del(&pod, None);
}

#[test]
fn version_and_status() {
    let node = Node::new(&[]);
    let v = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "VERSION".to_string())], br#"{"cniVersion":"1.1.0"}"#, &[]);
    assert_eq!(v.exit, 0);
    assert_eq!(v.out["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
    let s = node.exec_plugin(
        PLUGIN,
        &[("CNI_COMMAND", "STATUS".to_string())],
        node.conf("1.1.0").to_string().as_bytes(),
        &[],
    );
    assert_eq!((s.exit, s.out.clone()), (0, Value::Null), "{}", s.raw);
}

#[test]
fn results_in_0_4_0_and_1_1_0() {
    let node = Node::new(&[]);
    let pod = Pod::new("old");
    let r = node.cni("ADD", &pod, &node.conf("0.4.0"));
    assert_eq!(r.exit, 0, "{}", r.raw);
    assert_eq!(r.out["cniVersion"], "0.4.0");
    assert_eq!(r.out["ips"][0]["version"], "4");
    let mut conf = node.conf("0.4.0");
    conf["prevResult"] = r.out.clone();
    assert_eq!(node.cni("CHECK", &pod, &conf).exit, 0);
    assert_eq!(node.cni("DEL", &pod, &conf).exit, 0);

    let pod = Pod::new("new");
    let r = node.cni("ADD", &pod, &node.conf("1.1.0"));
    assert_eq!(r.exit, 0, "{}", r.raw);
    assert_eq!(r.out["cniVersion"], "1.1.0");
    assert_eq!(r.out["interfaces"][1]["mtu"], 9001);
    assert!(pod.ns().ip(&["link", "show", "eth0"]).contains("mtu 9001"));
    let mut conf = node.conf("1.1.0");
    conf["prevResult"] = r.out.clone();
    assert_eq!(node.cni("DEL", &pod, &conf).exit, 0);
}

#[test]
fn check_names_each_mismatch() {
    let node = Node::new(&[]);
    let pod = Pod::new("drift");
    let r = node.add(&pod);
    let ip = result_ip(&r);
    // Someone removes the pod's static neighbour and the host's rule.
    pod.ns().ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"]);
    node.ns.ip(&["rule", "del", "to", &ip, "lookup", "main", "prio", "512"]);
    node.ns.exec_ok(&["iptables", "-t", "nat", "-F", "ENIPOOL-SNAT"]);
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = r.clone();
    let check = node.cni("CHECK", &pod, &conf);
    assert_eq!(check.out["code"], 104, "{}", check.raw);
    let msg = check.out["msg"].as_str().unwrap();
    assert!(msg.contains("3 mismatch"), "{msg}");
    assert!(msg.contains("neighbour 169.254.1.1 is missing"), "{msg}");
    assert!(msg.contains(&format!("rule to {ip} lookup 254 prio 512 is missing")), "{msg}");
    assert!(msg.contains("ENIPOOL-SNAT holds"), "{msg}");
    node.del(&pod, Some(&r));
}

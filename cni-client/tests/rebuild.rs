//! A daemon that starts on a ledger which lost leases (emptied, moved aside after corruption)
//! on a node with live pods rebuilds their leases from the node and the provider before it hands
//! out anything and before any cleanup: the pods keep their network, their leases are listed,
//! their DELs release them, and new pods never get their IPs. Run as root.

mod common;

use common::*;
use enipool_nodenet::alias::{attachment_tag, network_tag};
use serde_json::{Value, json};

fn lease_with_ip<'a>(leases: &'a [Value], ip: &str) -> &'a Value {
    leases.iter().find(|l| l["ip"] == ip).unwrap_or_else(|| panic!("no lease of {ip} in {leases:?}"))
}

#[test]
fn an_empty_ledger_rebuilds_the_leases_of_live_pods() {
    let mut node = Node::new(&[]);
    let (a, b) = (Pod::new("alpha"), Pod::new("beta"));
    let (ra, rb) = (node.add(&a), node.add(&b));
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    // beta was wired by a plugin from before the alias named the attachment in clear.
    let old_alias = format!("enipool {} {}", network_tag(NETWORK), attachment_tag(NETWORK, &b.container_id, &b.ifname));
    node.ns.ip(&["link", "set", "dev", &host_veth_of(&rb), "alias", &old_alias]);

    node.daemon.stop();
    // The operator moves the ledger aside; the provider's own state stays, as EC2's would.
    std::fs::remove_dir_all(node.daemon.data().join("ledger")).unwrap();
    node.daemon.restart(&[]);

    let veths = node.host_veths();
    assert!(
        veths.contains(&host_veth_of(&ra)) && veths.contains(&host_veth_of(&rb)),
        "no pod was unplugged: {veths:?}"
    );
    assert!(a.ns().ping(NODE_IP), "alpha still answers");
    assert!(b.ns().ping(&ip_a), "and beta reaches alpha");
    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 2, "{leases:?}");
    let la = lease_with_ip(&leases, &ip_a);
    assert_eq!(
        (&la["network"], &la["container_id"], &la["ifname"]),
        (&json!(NETWORK), &json!(a.container_id), &json!("eth0")),
        "alpha's lease is back under its own key"
    );
    assert_eq!(la["netns"], json!(a.netns_path), "with its pod's namespace");
    assert_eq!(la["host_veth"], json!(host_veth_of(&ra)));
    let lb = lease_with_ip(&leases, &ip_b);
    assert_eq!(lb["container_id"], json!(format!("sha1-{}", attachment_tag(NETWORK, &b.container_id, "eth0"))));
    assert_eq!(lb["netns"], json!(b.netns_path));
    // CHECK finds both, beta's through its hashed key.
    node.check_ok(&a, &ra);
    node.check_ok(&b, &rb);

    // A churn of new pods never gets their IPs (the m5.large's 27 IPs, cycled through).
    for i in 0..30 {
        let mut p = Pod::new(&format!("churn-{i}"));
        let r = node.add(&p);
        let ip = result_ip(&r);
        assert!(ip != ip_a && ip != ip_b, "a new pod got {ip}, a live pod's IP");
        node.del(&p, Some(&r));
        p.delete_netns();
    }
    assert!(a.ns().ping(&ip_b));

    // Their DELs release them.
    node.del(&a, Some(&ra));
    node.del(&b, Some(&rb));
    assert_eq!(node.daemon.leases(), Vec::<Value>::new());
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(!rules.contains(&ip_a) && !rules.contains(&ip_b), "{rules}");
}

/// A lease the ledger lost while its IP stays known (released by hand, an old copy restored):
/// the start-up pass gives it back from the node before anything else can lease the IP.
#[test]
fn a_lost_lease_of_a_known_ip_is_rebuilt_at_start_up() {
    let mut node = Node::new(&["--instance-type", "t3.micro"]);
    let pod = Pod::new("kept");
    let r = node.add(&pod);
    let ip = result_ip(&r);
    let path = format!("/v1/leases/{NETWORK}/{}/eth0", pod.container_id);
    assert_eq!(node.daemon.delete(&path), 204);
    assert_eq!(node.daemon.leases(), Vec::<Value>::new(), "the ledger forgot the pod");
    node.daemon.restart(&["--instance-type", "t3.micro"]);
    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["ip"], json!(ip));
    // t3.micro: two pod IPs in all. The other one is the only one left to hand out.
    let other = Pod::new("other");
    let r_other = node.add(&other);
    assert_ne!(result_ip(&r_other), ip);
    assert!(pod.ns().ping(NODE_IP));
    node.del(&other, Some(&r_other));
    node.del(&pod, Some(&r));
}

/// Prefix delegation: pods on a prefix's addresses are wired as any other (one /32 each), and an
/// emptied ledger rebuilds their leases when the provider's prefix is adopted again.
#[test]
fn pods_on_prefix_addresses_are_wired_and_rebuilt_like_any_other() {
    let mut node = Node::new(&["--prefix-delegation", "true"]);
    let (a, b) = (Pod::new("alpha"), Pod::new("beta"));
    let (ra, rb) = (node.add(&a), node.add(&b));
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    let (_, pool) = node.daemon.get("/v1/pool");
    assert_eq!(pool["mode"], "prefixes", "{pool}");
    let (_, enis) = node.daemon.get("/v1/enis");
    let held: Vec<&str> = enis[0]["addresses"].as_array().unwrap().iter().map(|x| x["ip"].as_str().unwrap()).collect();
    assert_eq!(held.len() % 16, 0, "only prefixes' addresses: {held:?}");
    assert!(held.contains(&ip_a.as_str()) && held.contains(&ip_b.as_str()));
    assert!(a.ns().ping(&ip_b), "alpha reaches beta");
    assert!(b.ns().ping(NODE_IP), "beta reaches the node");
    node.check_ok(&a, &ra);

    node.daemon.stop();
    std::fs::remove_dir_all(node.daemon.data().join("ledger")).unwrap();
    node.daemon.restart(&["--prefix-delegation", "true"]);
    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_eq!(lease_with_ip(&leases, &ip_a)["container_id"], json!(a.container_id));
    assert_eq!(lease_with_ip(&leases, &ip_b)["netns"], json!(b.netns_path));
    for i in 0..20 {
        let mut p = Pod::new(&format!("churn-{i}"));
        let r = node.add(&p);
        let ip = result_ip(&r);
        assert!(ip != ip_a && ip != ip_b, "a new pod got {ip}, a live pod's IP");
        node.del(&p, Some(&r));
        p.delete_netns();
    }
    assert!(a.ns().ping(&ip_b));
    node.del(&a, Some(&ra));
    node.del(&b, Some(&rb));
    assert_eq!(node.daemon.leases(), Vec::<Value>::new());
}

//! Whole pod lifecycles as a runtime drives them, and garbage collection.

mod common;

use common::*;
use serde_json::json;

/// 100 times: create the pod netns, ADD, DEL, delete the netns. Afterwards the node's links,
/// addresses, routes, rules, neighbours and iptables are exactly as before, except for the
/// node-wide SNAT chain the first ADD created; and the daemon holds no lease.
#[test]
fn a_hundred_add_del_cycles_leave_the_node_as_it_was() {
    let node = Node::new(&[]);
    let before = node.snapshot();
    assert_eq!(node.iptables_save(), "", "a fresh node has no iptables state");

    for i in 0..100 {
        let mut pod = Pod::new(&format!("cycle{i}"));
        let r = node.add(&pod);
        node.del(&pod, Some(&r));
        pod.delete_netns();
    }
    node.wait_no_host_veths();
    assert!(node.daemon.leases().is_empty(), "{:?}", node.daemon.leases());

    let snat = "*nat\n\
        :PREROUTING ACCEPT [0:0]\n\
        :INPUT ACCEPT [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n\
        :ENIPOOL-SNAT - [0:0]\n\
        -A POSTROUTING -m comment --comment \"enipool SNAT\" -j ENIPOOL-SNAT\n\
        -A ENIPOOL-SNAT -d 10.0.0.0/16 -m comment --comment \"enipool SNAT\" -j RETURN\n\
        -A ENIPOOL-SNAT ! -o vlan+ -m comment --comment \"enipool SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully\n\
        COMMIT";
    let after = node.snapshot();
    let expected = format!("{before}{snat}");
    if after != expected {
        let diff: Vec<String> = after
            .lines()
            .zip(expected.lines().chain(std::iter::repeat("<missing>")))
            .filter(|(a, e)| a != e)
            .map(|(a, e)| format!("now: {a}\n was: {e}"))
            .take(10)
            .collect();
        panic!("the node changed:\n{}\n--- after ---\n{after}", diff.join("\n"));
    }
}

/// GC releases the leases of attachments not in cni.dev/valid-attachments and removes their host
/// veths and rules; valid attachments keep working.
#[test]
fn gc_removes_what_is_not_valid() {
    let node = Node::new(&[]);
    let keep = Pod::new("keep");
    let stale = Pod::new("stale");
    let rk = node.add(&keep);
    let rs = node.add(&stale);
    let stale_ip = result_ip(&rs);
    let stale_veth = rs["interfaces"][0]["name"].as_str().unwrap().to_string();

    // The daemon's own rule for a secondary ENI's primary IP (host.rs): same protocol, not a pod's.
    node.ns.ip(&["rule", "add", "from", "10.0.3.7", "lookup", "3", "priority", "1535", "protocol", "211"]);

    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let gc = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "GC".to_string())], conf.to_string().as_bytes(), &[]);
    assert_eq!(gc.exit, 0, "GC: {}", gc.raw);
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(rules.contains("1535:\tfrom 10.0.3.7 lookup 3 proto 211"), "GC left the daemon's ENI rule: {rules}");

    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["container_id"], keep.container_id.as_str());
    assert!(!node.host_veths().contains(&stale_veth), "GC deletes the stale host veth");
    assert!(!node.ns.ip(&["rule", "show"]).contains(&stale_ip), "GC deletes the stale rules");

    let mut check = node.conf("1.0.0");
    check["prevResult"] = rk.clone();
    let c = node.cni("CHECK", &keep, &check);
    assert_eq!(c.exit, 0, "the valid pod is intact: {}", c.raw);
    assert!(keep.ns().ping(NODE_IP));
    node.del(&keep, Some(&rk));
}

/// A GC whose valid list predates an ADD (the runtime listed its attachments, then a pod was
/// added) neither releases the new pod's lease nor unplugs it: the daemon spares leases younger
/// than its grace period and the plugin keeps the veths of attachments the daemon still leases.
#[test]
fn gc_racing_an_add_leaves_the_new_pod_alone() {
    let node = Node::new(&["--node-reconcile-grace", "1h"]);
    let pod = Pod::new("just-added");
    let r = node.add(&pod);
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let gc = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "GC".to_string())], conf.to_string().as_bytes(), &[]);
    assert_eq!(gc.exit, 0, "GC: {}", gc.raw);
    assert_eq!(node.daemon.leases().len(), 1, "the young lease is kept");
    let mut check = node.conf("1.0.0");
    check["prevResult"] = r.clone();
    let c = node.cni("CHECK", &pod, &check);
    assert_eq!(c.exit, 0, "the new pod is intact: {}", c.raw);
    assert!(pod.ns().ping(NODE_IP));
    node.del(&pod, Some(&r));
}

/// GC with 1,000 valid attachments (the daemon's other bodies are capped at 64 KiB; this list is
/// about 110 KiB) works end to end.
#[test]
fn gc_with_a_thousand_valid_attachments() {
    let node = Node::new(&[]);
    let keep = Pod::new("keep");
    let stale = Pod::new("stale");
    let rk = node.add(&keep);
    node.add(&stale);
    let mut valid: Vec<serde_json::Value> =
        (0..999).map(|i| json!({"containerID": format!("{i:064x}"), "ifname": "eth0"})).collect();
    valid.push(json!({"containerID": keep.container_id, "ifname": "eth0"}));
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!(valid);
    let gc = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "GC".to_string())], conf.to_string().as_bytes(), &[]);
    assert_eq!(gc.exit, 0, "GC: {}", gc.raw);
    let leases = node.daemon.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["container_id"], keep.container_id.as_str());
    node.del(&keep, Some(&rk));
}

/// A late repeated DEL of a pod whose IP now belongs to another pod leaves the new pod's rule and
/// route alone: DEL trusts the daemon's lease, not the old prevResult.
#[test]
fn a_late_repeated_del_does_not_touch_the_ips_new_owner() {
    // t3.micro: two pod IPs in all, so a released IP is handed out again at once (no cooldown).
    let node = Node::new(&["--instance-type", "t3.micro"]);
    let (old, filler, new) = (Pod::new("old"), Pod::new("filler"), Pod::new("new"));
    let r_old = node.add(&old);
    let r_filler = node.add(&filler);
    node.del(&old, Some(&r_old));
    let r_new = node.add(&new);
    let ip = result_ip(&r_new);
    assert_eq!(ip, result_ip(&r_old), "the only free IP was the old pod's");

    node.del(&old, Some(&r_old));
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(rules.contains(&format!("to {ip} lookup main")), "the new owner's rule survives: {rules}");
    assert!(filler.ns().ping(&ip), "and the new owner is reachable");
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = r_new.clone();
    assert_eq!(node.cni("CHECK", &new, &conf).exit, 0);
    node.del(&new, Some(&r_new));
    node.del(&filler, Some(&r_filler));
}

/// The same late DEL while the daemon is down: it cannot ask the daemon whose the IP is, so it
/// removes the route and rules only if the IP's host route still goes out of a veth of this very
/// attachment. Here it goes to the new owner's veth: nothing is touched.
#[test]
fn a_late_del_without_the_daemon_does_not_touch_the_ips_new_owner() {
    let mut node = Node::new(&["--instance-type", "t3.micro"]);
    let (mut old, filler, new) = (Pod::new("old"), Pod::new("filler"), Pod::new("new"));
    let r_old = node.add(&old);
    let r_filler = node.add(&filler);
    node.del(&old, Some(&r_old));
    old.delete_netns();
    let r_new = node.add(&new);
    let ip = result_ip(&r_new);
    assert_eq!(ip, result_ip(&r_old), "the only free IP was the old pod's");
    let rules_before = node.ns.ip(&["rule", "show"]);

    node.daemon.stop();
    node.del(&old, Some(&r_old));
    let rules = node.ns.ip(&["rule", "show"]);
    assert_eq!(rules, rules_before, "the new owner's rules survive");
    assert!(rules.contains(&format!("to {ip} lookup main")), "{rules}");
    assert!(filler.ns().ping(&ip), "and the new owner is reachable");
    assert!(new.ns().ping(NODE_IP));

    // Its own late DEL while the daemon is down does remove what is its own.
    node.del(&new, Some(&r_new));
    assert!(!node.ns.ip(&["rule", "show"]).contains(&format!("to {ip} lookup main")));
    node.daemon.restart(&["--instance-type", "t3.micro"]);
    node.del(&filler, Some(&r_filler));
}

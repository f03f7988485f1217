//! What goes wrong: bad input, a missing or bad namespace, a daemon that is down, a full pool, a
//! failure after the lease. Each answers the right code, panics nowhere, and leaves no interface,
//! route, rule or lease behind.

mod common;

use common::*;
use serde_json::Value;

/// Nothing of a pod is left on the node: no host veth, no host route or rule of ours, no lease.
fn assert_node_clean(node: &Node) {
    assert!(node.host_veths().is_empty(), "host veths left: {:?}", node.host_veths());
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(!rules.contains("512:") && !rules.contains("1536:"), "rules left: {rules}");
    let routes = node.ns.ip(&["route", "show", "table", "all", "proto", "211"]);
    assert!(routes.trim().is_empty(), "routes left: {routes}");
    assert!(node.daemon.leases().is_empty(), "leases left: {:?}", node.daemon.leases());
}

fn assert_error(r: &Plugin, code: u64, msg_part: &str) {
    assert_eq!(r.exit, 1, "{}", r.raw);
    assert_eq!(r.out["code"], code, "{}", r.raw);
    assert!(r.out["cniVersion"].is_string(), "{}", r.raw);
    let msg = r.out["msg"].as_str().unwrap();
    assert!(msg.contains(msg_part), "{msg:?} should mention {msg_part:?}");
}

#[test]
fn bad_input_is_refused_before_anything_happens() {
    let node = Node::new(&[]);
    let pod = Pod::new("bad");
    let env = Node::cni_env("ADD", &pod);

    let r = node.exec_plugin(PLUGIN, &env, b"{\"cniVersion\": \"1.0.0\", ", &[]);
    assert_error(&r, 6, "not JSON");

    let r = node.exec_plugin(PLUGIN, &env, &[0xff, 0xfe, 0x00], &[]);
    assert_error(&r, 6, "not JSON");

    let mut conf = node.conf("1.0.0");
    conf["vethPrefix"] = "toolong".into();
    assert_error(&node.cni("ADD", &pod, &conf), 7, "vethPrefix");

    let mut conf = node.conf("1.0.0");
    conf["cniVersion"] = "0.3.1".into();
    assert_error(&node.cni("ADD", &pod, &conf), 1, "0.3.1");

    for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let env: Vec<_> = env.iter().filter(|(k, _)| *k != missing).cloned().collect();
        let r = node.exec_plugin(PLUGIN, &env, node.conf("1.0.0").to_string().as_bytes(), &[]);
        assert_error(&r, 4, missing);
    }

    let mut bad_args = env.clone();
    bad_args[4].1 = "K8S_POD_NAME=x;SURPRISE=1".into();
    assert_error(&node.exec_plugin(PLUGIN, &bad_args, node.conf("1.0.0").to_string().as_bytes(), &[]), 4, "SURPRISE");

    let mut bad_netns = env.clone();
    bad_netns[2].1 = "/run/netns/enp-does-not-exist".into();
    assert_error(&node.exec_plugin(PLUGIN, &bad_netns, node.conf("1.0.0").to_string().as_bytes(), &[]), 3, "CNI_NETNS");

    bad_netns[2].1 = "/etc/hostname".into();
    assert_error(&node.exec_plugin(PLUGIN, &bad_netns, node.conf("1.0.0").to_string().as_bytes(), &[]), 4, "CNI_NETNS");

    assert_node_clean(&node);
    assert!(!pod.ns().ip(&["link", "show"]).contains("eth0"), "no pod interface");
}

#[test]
fn a_daemon_that_is_down_is_try_again_later_and_del_still_cleans_up() {
    let mut node = Node::new(&[]);
    let pod = Pod::new("early");
    let r = node.add(&pod);
    let ip = result_ip(&r);
    node.daemon.stop();

    let late = Pod::new("late");
    let add = node.cni("ADD", &late, &node.conf("1.0.0"));
    assert_error(&add, 11, "unreachable");
    assert!(!late.ns().ip(&["link", "show"]).contains("eth0"));

    let status = node.exec_plugin(
        PLUGIN,
        &[("CNI_COMMAND", "STATUS".to_string())],
        node.conf("1.1.0").to_string().as_bytes(),
        &[],
    );
    assert_error(&status, 50, "unreachable");

    // DEL without the daemon: exit 0, and the host route and rule are gone.
    node.del(&pod, Some(&r));
    assert!(!node.ns.ip(&["rule", "show"]).contains(&ip), "rule left");
    assert!(!node.ns.ip(&["route", "show"]).contains(&ip), "route left");
}

#[test]
fn a_failure_after_the_lease_undoes_everything() {
    let node = Node::new(&[]);
    let pod = Pod::new("doomed");
    let r = node.exec_plugin(
        PLUGIN,
        &Node::cni_env("ADD", &pod),
        node.conf("1.0.0").to_string().as_bytes(),
        &[("ENIPOOL_CNI_TEST_FAIL_AT", "after-wire")],
    );
    assert_error(&r, 100, "injected");
    assert_node_clean(&node);
    assert!(!pod.ns().ip(&["link", "show"]).contains("eth0"), "the pod end went with the pair");
    // And the same pod can be added afterwards.
    let ok = node.add(&pod);
    node.del(&pod, Some(&ok));
}

/// The fault hook above exists only in builds with debug assertions: a plugin built without
/// them (the `nohooks` profile, the dev profile less debug assertions, as release has none)
/// ignores ENIPOOL_CNI_TEST_FAIL_AT and wires the pod.
#[test]
fn builds_without_debug_assertions_have_no_fault_hook() {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    run(std::process::Command::new(cargo)
        .args(["build", "--locked", "-p", "enipool-cni", "--bin", "enipool-cni", "--profile", "nohooks"])
        .current_dir(manifest_dir));
    // target/debug/deps/<test> -> target/nohooks/enipool-cni
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(std::path::Path::parent).and_then(std::path::Path::parent).unwrap();
    let hookless = target.join("nohooks").join("enipool-cni");
    let node = Node::new(&[]);
    let pod = Pod::new("hookless");
    let r = node.exec_plugin(
        hookless.to_str().unwrap(),
        &Node::cni_env("ADD", &pod),
        node.conf("1.0.0").to_string().as_bytes(),
        &[("ENIPOOL_CNI_TEST_FAIL_AT", "after-wire")],
    );
    assert_eq!(r.exit, 0, "the hook was pulled: {}", r.raw);
    node.del(&pod, Some(&r.out));
}

#[test]
fn a_full_pool_is_try_again_later_and_secondary_enis_get_a_from_rule() {
    // t3.micro: 2 ENIs x 2 IPv4, so one pod IP per ENI, two in all.
    let node = Node::new(&["--instance-type", "t3.micro"]);
    let (mut a, mut b, c) = (Pod::new("one"), Pod::new("two"), Pod::new("three"));
    let ra = node.add(&a);
    let rb = node.add(&b);
    let leases = node.daemon.leases();
    let secondary: Vec<&Value> = leases.iter().filter(|l| l["route_table"] != 254).collect();
    assert_eq!(secondary.len(), 1, "one pod on the secondary ENI: {leases:?}");
    let (sip, table) = (secondary[0]["ip"].as_str().unwrap(), secondary[0]["route_table"].as_u64().unwrap());
    let rules = node.ns.ip(&["rule", "show"]);
    assert!(rules.contains(&format!("1536:\tfrom {sip} lookup {table}")), "{rules}");
    assert!(rules.contains(&format!("512:\tfrom all to {sip} lookup main")), "{rules}");

    let full = node.cni("ADD", &c, &node.conf("1.0.0"));
    assert_error(&full, 11, "exhausted");
    assert!(!c.ns().ip(&["link", "show"]).contains("eth0"));

    node.del(&a, Some(&ra));
    node.del(&b, Some(&rb));
    a.delete_netns();
    b.delete_netns();
    node.wait_no_host_veths();
    assert_node_clean(&node);
}

#[test]
fn check_needs_a_prev_result_and_gc_needs_valid_attachments() {
    let node = Node::new(&[]);
    let pod = Pod::new("strict");
    let r = node.add(&pod);
    assert_error(&node.cni("CHECK", &pod, &node.conf("1.0.0")), 7, "prevResult");
    let gc =
        node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "GC".to_string())], node.conf("1.1.0").to_string().as_bytes(), &[]);
    assert_error(&gc, 7, "cni.dev/valid-attachments");
    assert_eq!(node.daemon.leases().len(), 1, "a refused GC releases nothing");
    node.del(&pod, Some(&r));
}

#[test]
fn gc_without_the_daemon_still_cleans_the_kernel_and_says_try_again() {
    let mut node = Node::new(&[]);
    let pod = Pod::new("orphan");
    let r = node.add(&pod);
    let ip = result_ip(&r);
    node.daemon.stop();
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = serde_json::json!([]);
    let gc = node.exec_plugin(PLUGIN, &[("CNI_COMMAND", "GC".to_string())], conf.to_string().as_bytes(), &[]);
    assert_error(&gc, 11, "unreachable");
    assert!(node.host_veths().is_empty(), "the orphan's host veth is gone");
    assert!(!node.ns.ip(&["rule", "show"]).contains(&ip), "and its rules");
}

//! The node-wide SNAT chain: made once however many ADDs race, and rewritten when the daemon's
//! exclusions change.

mod common;

use common::*;

fn jumps(node: &Node) -> usize {
    node.iptables_save().matches("-A POSTROUTING -m comment --comment \"enipool SNAT\" -j ENIPOOL-SNAT").count()
}

#[test]
fn concurrent_adds_make_one_chain_and_one_jump() {
    let node = Node::new(&[]);
    let pods: Vec<Pod> = (0..8).map(|i| Pod::new(&format!("race{i}"))).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| node.add(p))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(jumps(&node), 1, "{}", node.iptables_save());
    assert_eq!(node.iptables_save().matches("--to-source 10.0.0.10").count(), 1);
    let mut ips: Vec<String> = results.iter().map(result_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8, "eight distinct IPs");
    for (p, r) in pods.iter().zip(&results) {
        node.del(p, Some(r));
    }
}

#[test]
fn changed_exclusions_are_reconciled_on_the_next_add() {
    let mut node = Node::new(&[]);
    let a = Pod::new("before");
    let ra = node.add(&a);
    assert!(!node.iptables_save().contains("192.168.0.0/16"));

    node.daemon.restart(&["--exclude-snat-cidrs", "192.168.0.0/16", "--randomize-snat", "hashrandom"]);
    let b = Pod::new("after");
    let rb = node.add(&b);
    let save = node.iptables_save();
    assert!(
        save.contains("-A ENIPOOL-SNAT -d 192.168.0.0/16 -m comment --comment \"enipool SNAT\" -j RETURN"),
        "{save}"
    );
    assert!(
        save.contains("--to-source 10.0.0.10 --random\n") || save.ends_with("--to-source 10.0.0.10 --random"),
        "{save}"
    );
    assert!(!save.contains("--random-fully"), "{save}");
    assert_eq!(jumps(&node), 1, "{save}");
    node.del(&a, Some(&ra));
    node.del(&b, Some(&rb));
}

#[test]
fn external_snat_leaves_iptables_alone() {
    let node = Node::new(&["--external-snat", "true"]);
    let pod = Pod::new("nosnat");
    let r = node.add(&pod);
    assert_eq!(node.iptables_save(), "", "no SNAT chain when SNAT is external");
    node.del(&pod, Some(&r));
}

/// A process stuck holding the plugin's SNAT lock does not hang ADD: after `lockTimeout` it
/// fails with code 11 and releases its lease; once the lock is free, ADD works.
#[test]
fn a_held_snat_lock_is_a_bounded_wait_ending_in_try_again() {
    use std::os::fd::AsRawFd;
    let node = Node::new(&[]);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(node.state.path().join("snat.lock"))
        .unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let pod = Pod::new("waits");
    let mut conf = node.conf("1.0.0");
    conf["lockTimeout"] = serde_json::json!(0.3);
    let r = node.cni("ADD", &pod, &conf);
    assert_eq!((r.exit, r.out["code"].as_u64()), (1, Some(11)), "{}", r.raw);
    assert!(r.out["msg"].as_str().unwrap().contains("lockTimeout"), "{}", r.raw);
    assert_eq!(node.daemon.leases().len(), 0, "the lease was released");
    drop(lock);
    let r = node.cni("ADD", &pod, &conf);
    assert_eq!(r.exit, 0, "{}", r.raw);
    node.del(&pod, Some(&r.out));
}

/// The iptables lock (iptables-legacy; nf_tables has none) is a bounded wait too: with
/// `iptablesMode: legacy` and the xtables lock held (`XTABLES_LOCKFILE`, a file of the test's),
/// ADD fails after `lockTimeout` with code 11 and releases its lease, instead of waiting forever.
#[test]
fn a_held_xtables_lock_is_a_bounded_wait_ending_in_try_again() {
    use std::os::fd::AsRawFd;
    let node = Node::new(&[]);
    let lock_path = node.state.path().join("xtables.lock");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let pod = Pod::new("legacy");
    let mut conf = node.conf("1.0.0");
    conf["iptablesMode"] = serde_json::json!("legacy");
    conf["lockTimeout"] = serde_json::json!(1);
    let env = Node::cni_env("ADD", &pod);
    let lockfile = lock_path.to_str().unwrap();
    let r = node.exec_plugin(PLUGIN, &env, conf.to_string().as_bytes(), &[("XTABLES_LOCKFILE", lockfile)]);
    assert_eq!((r.exit, r.out["code"].as_u64()), (1, Some(11)), "{}", r.raw);
    assert!(r.out["msg"].as_str().unwrap().contains("xtables lock"), "{}", r.raw);
    assert_eq!(node.daemon.leases().len(), 0, "the lease was released");
    drop(lock);
    let r = node.exec_plugin(PLUGIN, &env, conf.to_string().as_bytes(), &[("XTABLES_LOCKFILE", lockfile)]);
    assert_eq!(r.exit, 0, "{}", r.raw);
    assert!(node.ns.exec_ok(&["iptables-legacy-save", "-t", "nat"]).contains("ENIPOOL-SNAT"), "the chain is in legacy");
    let mut del = conf.clone();
    del["prevResult"] = r.out.clone();
    let d = node.exec_plugin(PLUGIN, &Node::cni_env("DEL", &pod), del.to_string().as_bytes(), &[]);
    assert_eq!(d.exit, 0, "{}", d.raw);
}

//! The daemon as the DaemonSet runs it: not privileged, CAP_NET_ADMIN its only capability,
//! /proc/sys read-only, in the node's network namespace (one the test made). The node-wide
//! sysctls are the init container's job (`enipoold node-sysctls`, run with full privileges):
//! until they are right the daemon is not ready and says what to run; once they are, it sets up
//! a secondary ENI's node side (link, address, route table, rule) with that one capability.
//! deploy.rs checks that the manifest grants exactly this.

use std::process::Command;

use crate::common::container::{CAP_NET_ADMIN, Confinement, capabilities, no_new_privs};
use crate::common::netns::Netns;
use crate::common::{M5_LARGE_PER_ENI, eni_node_side_is_set_up, eventually};

/// The static provider's MAC of its ENI with this serial (1 is the primary).
fn static_mac(serial: u8) -> String {
    format!("02:e0:00:00:00:{serial:02x}")
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "sysctl", "-q", "-w", &format!("{key}={value}")])
        .output()
        .expect("running sysctl");
    assert!(out.status.success(), "sysctl {key}={value}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_daemon_needs_only_net_admin_once_the_init_step_has_set_the_sysctls() {
    let ns = Netns::new();
    ns.ip(&["link", "set", "lo", "up"]);
    // The primary ENI's interface, with the node's address and default route.
    ns.ip(&["link", "add", "eth0", "address", &static_mac(1), "type", "veth", "peer", "name", "eth0-peer"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth0-peer", "up"]);
    ns.ip(&["addr", "add", "10.0.0.10/20", "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", "10.0.0.1", "dev", "eth0"]);
    // A node as it boots: no forwarding, strict reverse-path filtering.
    sysctl(&ns, "net.ipv4.ip_forward", "0");
    sysctl(&ns, "net.ipv4.conf.all.rp_filter", "1");
    sysctl(&ns, "net.ipv4.conf.eth0.rp_filter", "1");

    let tmp = tempfile::Builder::new().prefix("enipoold-test-").tempdir().unwrap();
    let confinement = Confinement::new(&ns.path(), &[CAP_NET_ADMIN]);
    let flags = [("--eni-host-setup", "true"), ("--eni-mtu", "9001"), ("--node-cleanup", "true")];
    let d = crate::common::Daemon::start_in_confined(tmp.path(), &flags, confinement).await;
    let pid = d.pid();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(capabilities(pid, set), 1 << CAP_NET_ADMIN, "{set} of the daemon: CAP_NET_ADMIN alone");
    }
    assert_eq!(capabilities(pid, "CapInh"), 0);
    assert!(no_new_privs(pid), "no new privileges");

    // It cannot write /proc/sys: not ready, and it says why and what to run.
    let api = d.unix();
    let reason = eventually("/readyz to say the node is not prepared", async || {
        let r = api.get("/readyz").await;
        let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
        if r.status == 503 && reason.contains("not prepared") {
            Ok(reason)
        } else {
            Err(format!("{} {reason}", r.status))
        }
    })
    .await;
    for part in
        ["net.ipv4.ip_forward=0", "net.ipv4.conf.eth0.rp_filter=1", "node-sysctls --interface eth0", "Read-only"]
    {
        assert!(reason.contains(part), "the reason names {part:?}: {reason}");
    }
    assert_eq!(ns.read("/proc/sys/net/ipv4/ip_forward"), "0", "the confined daemon wrote nothing");

    // The init container's step, with full privileges, finds eth0 by the default route.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_enipoold"), "node-sysctls"])
        .output()
        .expect("running enipoold node-sysctls");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node-sysctls failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("net.ipv4.conf.eth0.rp_filter=2"), "{said}");
    assert_eq!(ns.read("/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(ns.read("/proc/sys/net/ipv4/conf/eth0/rp_filter"), "2");
    d.wait_ready().await;

    // A second ENI, and its interface: its node side is done with CAP_NET_ADMIN alone.
    for i in 0..=M5_LARGE_PER_ENI {
        api.lease(&format!("pod{i}")).await;
    }
    let second = eventually("a second ENI", async || {
        let enis = api.enis().await;
        enis.into_iter().find(|e| e["device_number"] == 1).ok_or_else(|| "one ENI".to_string())
    })
    .await;
    assert_eq!(second["id"], "eni-00000000000000002");
    let eni_ip = second["primary_ip"].as_str().unwrap().to_string();
    ns.ip(&["link", "add", "eth1", "address", &static_mac(2), "type", "veth", "peer", "name", "eth1-peer"]);
    eni_node_side_is_set_up(&ns, "eth1", &eni_ip).await;
    assert_eq!(capabilities(pid, "CapEff"), 1 << CAP_NET_ADMIN, "still CAP_NET_ADMIN alone");

    // Readiness follows the node after start-up too: forwarding turned off underneath the
    // daemon makes it not ready, and the init step's command makes it ready again.
    sysctl(&ns, "net.ipv4.ip_forward", "0");
    eventually("/readyz to turn 503 once forwarding is off", async || {
        let r = api.get("/readyz").await;
        let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
        if r.status == 503 && reason.contains("net.ipv4.ip_forward=0") {
            Ok(())
        } else {
            Err(format!("{} {reason}", r.status))
        }
    })
    .await;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_enipoold"), "node-sysctls", "--interface", "eth0"])
        .output()
        .expect("running enipoold node-sysctls");
    assert!(out.status.success(), "node-sysctls --interface eth0: {}", String::from_utf8_lossy(&out.stderr));
    d.wait_ready().await;
}

//! The plugin under a real container runtime: containerd (Debian's 1.6) started by the test in a
//! node namespace, driven through CRI as kubelet drives it, execs enipool-cni from the conflist
//! enipoold installs. One test binary; each scenario its own module.

mod failures;
mod install;
mod pods;
mod restarts;
mod teardown;
mod waves;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use enipool_cri::client::PodSpec;
use enipool_cri::netns::{exec_in, on_thread_in};
use enipool_cri::node::{Node, RESULT_CACHE};
use serde_json::Value;

/// Runs a sandbox, panicking with the node's logs if containerd refuses it.
pub fn run_pod(node: &Node, pod: &PodSpec) -> String {
    node.cri().run_pod(pod).unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}\n{}", pod.name, node.logs()))
}

/// The lease holding the sandbox `id` (containerd's sandbox ID is CNI_CONTAINERID).
pub fn lease_of(node: &Node, id: &str) -> Option<Value> {
    node.daemon().leases().into_iter().find(|l| l["container_id"] == id)
}

/// libcni result-cache files for `id`.
pub fn cached_results(id: &str) -> Vec<String> {
    std::fs::read_dir(RESULT_CACHE)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.contains(id)).collect())
        .unwrap_or_default()
}

/// Nothing of the sandboxes `ids` (whose namespaces were `netns_paths`) is left: no sandbox,
/// lease, host veth, pod rule, pod namespace or cached result.
pub fn assert_nothing_left(node: &Node, ids: &[String], netns_paths: &[String]) {
    let listed = node.cri().list().expect("ListPodSandbox");
    let sandboxes: Vec<_> = listed.iter().filter(|s| ids.contains(&s.id)).collect();
    assert!(sandboxes.is_empty(), "sandboxes left: {sandboxes:?}");
    let leases: Vec<Value> =
        node.daemon().leases().into_iter().filter(|l| ids.iter().any(|id| l["container_id"] == *id)).collect();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    // The kernel removes a host veth asynchronously, shortly after its pod namespace is deleted.
    enipool_cri::wait_for("host veths to go with their namespaces", Duration::from_secs(20), || {
        node.host_veths().is_empty().then_some(())
    });
    assert_eq!(node.pod_rules(), Vec::<String>::new(), "pod rules left");
    assert!(netns_paths.iter().all(|p| p.starts_with("/var/run/netns/cni-")), "{netns_paths:?}");
    // ...and every namespace containerd gave a plugin for these sandboxes, refused ones included.
    let used: Vec<String> =
        node.calls().into_iter().filter(|c| ids.contains(&c.container_id) && c.with_netns).map(|c| c.netns).collect();
    let namespaces: Vec<&String> = netns_paths.iter().chain(&used).filter(|p| Path::new(p).exists()).collect();
    assert!(namespaces.is_empty(), "pod namespaces left: {namespaces:?}");
    let cached: Vec<String> = ids.iter().flat_map(|id| cached_results(id)).collect();
    assert!(cached.is_empty(), "result-cache entries left: {cached:?}");
}

pub fn ping(from_netns: &str, dst: &str) -> bool {
    exec_in(from_netns, &["ping", "-c", "1", "-W", "2", dst]).status.success()
}

/// Accepts one TCP connection on `bind` inside `netns` and answers with the peer's address;
/// returns the port and the thread that yields the peer.
pub fn serve_peer_address(netns: &str, bind: &str) -> (u16, std::thread::JoinHandle<SocketAddr>) {
    let bind = bind.to_string();
    let listener = on_thread_in(netns, move || TcpListener::bind(bind).expect("bind")).join().expect("bind thread");
    let port = listener.local_addr().expect("local addr").port();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, peer) = listener.accept().expect("accept");
        s.write_all(peer.ip().to_string().as_bytes()).expect("write");
        peer
    });
    (port, server)
}

/// Connects to `addr` from inside `netns` and returns what the server said.
pub fn connect_from(netns: &str, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("address");
    on_thread_in(netns, move || {
        use std::io::Read;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{addr}: {e}"));
        let mut seen = String::new();
        s.read_to_string(&mut seen).expect("read");
        seen
    })
    .join()
    .expect("client thread")
}

/// enipool-cni's calls for sandbox `id` as containerd made them: (command, with netns, exit).
pub fn our_calls(node: &Node, id: &str) -> Vec<(String, bool, i32)> {
    node.calls()
        .into_iter()
        .filter(|c| c.plugin == "enipool-cni" && c.container_id == id)
        .map(|c| (c.command, c.with_netns, c.exit))
        .collect()
}

/// Stop then Remove, as kubelet removes a pod.
pub fn remove_pod(node: &Node, id: &str) {
    node.cri().stop(id).unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}\n{}", node.logs()));
    node.cri().remove(id).unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}\n{}", node.logs()));
}

/// Each pool address and its state (free, leased, cooling, lost), from `/v1/enis`.
pub fn address_states(node: &Node) -> BTreeMap<String, String> {
    let (status, enis) = node.daemon().get("/v1/enis");
    assert_eq!(status, 200);
    enis.as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .map(|a: Value| {
            (a["ip"].as_str().unwrap_or_default().to_string(), a["state"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

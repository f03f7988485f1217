//! The real install path: enipoold installs its conflist into containerd's conf dir once ready;
//! until then containerd reports the network not ready and starts no pod.

use enipool_cri::client::PodSpec;
use enipool_cri::node::{CONFLIST_NAME, Node};
use enipool_cri::wait_for;
use std::time::Duration;

use crate::*;

#[test]
fn containerd_starts_no_pod_before_the_conflist_and_starts_them_once_it_is_there() {
    let mut node = Node::without_daemon();
    assert!(!node.cri().network_ready().unwrap(), "no conflist yet");
    let early = node.cri().run_pod(&PodSpec::new("early")).expect_err("no network config yet");
    assert!(early.message().contains("cni"), "containerd names the missing CNI config: {early}");
    // containerd 1.6 keeps a refused sandbox, not ready, until kubelet removes it (which
    // fails too while there is no network config: kubelet retries it below).
    let refused = node.cri().list().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(!refused[0].ready, "the refused sandbox does not run: {refused:?}");

    node.start_daemon(&[]);
    let installed = node.dir.path().join("net.d").join(CONFLIST_NAME);
    wait_for("the conflist in containerd's conf dir", Duration::from_secs(30), || installed.exists().then_some(()));
    wait_for("containerd's network to be ready", Duration::from_secs(30), || {
        node.cri().network_ready().ok().filter(|r| *r)
    });
    for s in &refused {
        node.cri().stop(&s.id).unwrap();
        node.cri().remove(&s.id).unwrap();
    }
    let id = run_pod(&node, &PodSpec::new("late"));
    let status = node.cri().status(&id).unwrap();
    let lease = lease_of(&node, &id).expect("the pod's lease");
    assert_eq!(lease["ip"], status.ip.as_str());
    node.cri().stop(&id).unwrap();
    node.cri().remove(&id).unwrap();
    let mut ids: Vec<String> = refused.into_iter().map(|s| s.id).collect();
    ids.push(id);
    assert_nothing_left(&node, &ids, &[status.netns_path]);
}

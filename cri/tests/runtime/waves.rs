//! 100 sandboxes started and removed in waves of 10 concurrent CRI calls: every wave's pods get
//! distinct addresses, and at the end no lease, veth, rule, namespace or cached result is left.

use std::collections::BTreeSet;

use enipool_cri::client::PodSpec;
use enipool_cri::node::Node;

use crate::*;

#[test]
fn a_hundred_sandboxes_in_waves_of_ten_leave_nothing_behind() {
    let node = Node::new(&[]);
    let (mut all_ids, mut all_netns) = (Vec::new(), Vec::new());
    for wave in 0..10 {
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    let node = &node;
                    s.spawn(move || run_pod(node, &PodSpec::new(&format!("wave{wave}-{i}"))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("run thread")).collect()
        });
        let statuses: Vec<_> = ids.iter().map(|id| node.cri().status(id).unwrap()).collect();
        let ips: BTreeSet<&String> = statuses.iter().map(|s| &s.ip).collect();
        assert_eq!(ips.len(), 10, "wave {wave}: ten distinct addresses");
        for (id, status) in ids.iter().zip(&statuses) {
            assert_eq!(lease_of(&node, id).expect("lease")["ip"], status.ip.as_str());
        }
        std::thread::scope(|s| {
            for id in &ids {
                let node = &node;
                s.spawn(move || remove_pod(node, id));
            }
        });
        all_netns.extend(statuses.into_iter().map(|s| s.netns_path));
        all_ids.extend(ids);
    }
    assert_eq!(all_ids.len(), 100);
    assert_nothing_left(&node, &all_ids, &all_netns);
}

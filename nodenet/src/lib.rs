//! The node's kernel state as enipool sees it, in one place for the daemon (ENI host setup, node
//! reconciliation) and the CNI plugin (pod wiring, CHECK, GC), as netavark keeps one netlink
//! module under all its drivers:
//!
//! - [`netns`]: network namespace files: opening one (the nsfs check), judging a recorded path
//!   (alive, gone, or undecidable), the namespace cookie.
//! - [`netlink`]: netlink handles bound to a namespace (a socket belongs to the namespace of the
//!   thread that opened it, so a runtime thread never switches), errno mapping, and the list and
//!   delete calls every user makes, with "already gone" and "already there" as success.
//! - [`view`]: links, routes and rules read into plain values, and the one answer to "is this
//!   ours, and for which attachment?".
//! - [`alias`]: the alias on a host veth of ours, naming its attachment.
//!
//! What the plugin installs and the daemon reconciles is agreed here, not in either: our routing
//! protocol, the rule priorities, the pods' gateway and the alias format. Nothing in this crate
//! decides policy (what to delete, when); it reads, names and writes.

pub mod alias;
pub mod netlink;
pub mod netns;
pub mod view;

use std::net::Ipv4Addr;

/// Routing protocol number on our host routes and rules (`ip route ... proto 211`), so they can
/// be told apart from anyone else's.
pub const PROTO: u8 = 211;
/// `rule to <pod IP> lookup main`: traffic to a pod stays on the node.
pub const RULE_TO_PRIORITY: u32 = 512;
/// `rule from <ENI primary IP> lookup <ENI table>`: the daemon's, one per secondary ENI.
pub const ENI_RULE_PRIORITY: u32 = 1535;
/// `rule from <pod IP> lookup <ENI table>`: traffic from a pod on a secondary ENI leaves by it.
pub const RULE_FROM_PRIORITY: u32 = 1536;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// The pods' default gateway, answered by the host veth through a static neighbour entry. The
/// daemon hands it out in every lease (`gateway`); the plugin wires what the lease says.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// `aa:bb:cc:dd:ee:ff`, as EC2 and `ip link` print MACs.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn macs_print_as_ip_link_prints_them() {
        assert_eq!(super::format_mac(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }
}

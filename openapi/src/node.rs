//! What the CNI plugin leaves on the node and the daemon reconciles, agreed between the two:
//! the alias of a host veth (naming its attachment), and the priorities and routing protocol of
//! the policy rules and routes. Neither side asks the other to recognise what is ours.

use sha1::{Digest, Sha1};

/// Routing protocol number on our host routes and rules (`ip route ... proto 211`), so they can
/// be told apart from anyone else's.
pub const PROTO: u8 = 211;
/// `rule to <pod IP> lookup main`: traffic to a pod stays on the node.
pub const RULE_TO_PRIORITY: u32 = 512;
/// `rule from <pod IP> lookup <ENI table>`: traffic from a pod on a secondary ENI leaves by it.
pub const RULE_FROM_PRIORITY: u32 = 1536;
/// Every host veth alias of ours starts with this.
pub const ALIAS_PREFIX: &str = "enipool ";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The alias on a host veth of ours: `enipool <sha1(network)[..16]> <sha1(network/container/ifname)>`.
/// The plugin's GC and the daemon's node reconciliation recognise our veths, and whose they are,
/// by it.
pub fn host_veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}{} {}", network_tag(network), attachment_tag(network, container_id, ifname))
}

/// The part of every alias in `network` after [`ALIAS_PREFIX`] and before the attachment.
pub fn network_tag(network: &str) -> String {
    hex(&Sha1::digest(network.as_bytes()))[..16].to_string()
}

/// The last part of an alias: the attachment's own.
pub fn attachment_tag(network: &str, container_id: &str, ifname: &str) -> String {
    hex(&Sha1::digest(format!("{network}/{container_id}/{ifname}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_names_its_network_and_attachment() {
        let a = host_veth_alias("net", "cid", "eth0");
        assert!(a.starts_with(ALIAS_PREFIX));
        assert_eq!(a.split(' ').nth(1).unwrap(), network_tag("net"));
        assert_ne!(a, host_veth_alias("net", "cid", "eth1"));
        assert_ne!(a, host_veth_alias("other", "cid", "eth0"));
        // Fits IFALIASZ (256) with room to spare.
        assert_eq!(a.len(), ALIAS_PREFIX.len() + 16 + 1 + 40);
    }
}

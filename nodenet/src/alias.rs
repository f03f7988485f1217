//! The alias on a host veth of ours: it names the attachment the veth serves, so the plugin's
//! GC and the daemon's node reconciliation recognise our veths, and whose they are, without
//! asking each other.

use sha1::{Digest, Sha1};

/// Every host veth alias of ours starts with this.
pub const ALIAS_PREFIX: &str = "enipool ";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest alias the kernel keeps (IFALIASZ 256, NUL included).
pub const MAX_ALIAS_LEN: usize = 255;

/// The alias on a host veth of ours:
/// `enipool <sha1(network)[..16]> <sha1(network/container/ifname)> <network>/<container>/<ifname>`.
/// The plugin's GC and the daemon's node reconciliation recognise our veths, and whose they are,
/// by it; the attachment in clear lets a daemon that lost its ledger rebuild the lease under its
/// real key. It is left out when the alias would not fit (very long names), and veths made
/// before it existed have only the two hashes.
pub fn host_veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let hashed = format!("{ALIAS_PREFIX}{} {}", network_tag(network), attachment_tag(network, container_id, ifname));
    let full = format!("{hashed} {network}/{container_id}/{ifname}");
    if full.len() <= MAX_ALIAS_LEN { full } else { hashed }
}

/// A lease rebuilt from a host veth whose alias holds only the hashes (made by a plugin from
/// before the attachment was written in clear) is keyed `sha1-<network tag>` /
/// `sha1-<attachment tag>` / `-`: the daemon finds it under that key when the real key misses.
pub const HASHED_KEY_PREFIX: &str = "sha1-";
pub const HASHED_KEY_IFNAME: &str = "-";

/// The key (network, container id, ifname) a lease rebuilt from hashes only is kept under.
pub fn hashed_key(network_tag: &str, attachment_tag: &str) -> (String, String, String) {
    (
        format!("{HASHED_KEY_PREFIX}{network_tag}"),
        format!("{HASHED_KEY_PREFIX}{attachment_tag}"),
        HASHED_KEY_IFNAME.to_string(),
    )
}

/// The hashed key the attachment (network, container id, ifname) would have been rebuilt under.
pub fn hashed_key_of(network: &str, container_id: &str, ifname: &str) -> (String, String, String) {
    hashed_key(&network_tag(network), &attachment_tag(network, container_id, ifname))
}

/// The attachment tag of a lease key, hashed keys included.
pub fn key_attachment_tag(network: &str, container_id: &str, ifname: &str) -> String {
    match container_id.strip_prefix(HASHED_KEY_PREFIX) {
        Some(tag) if ifname == HASHED_KEY_IFNAME && network.starts_with(HASHED_KEY_PREFIX) => tag.to_string(),
        _ => attachment_tag(network, container_id, ifname),
    }
}

/// What an alias of ours says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasInfo {
    pub network_tag: String,
    pub attachment_tag: String,
    /// (network, container id, ifname), when the alias carries it (and it matches the tags).
    pub attachment: Option<(String, String, String)>,
}

impl AliasInfo {
    /// Whether this alias names the attachment (network, container id, ifname).
    pub fn names(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        self.attachment_tag == attachment_tag(network, container_id, ifname)
    }

    /// Whether this alias belongs to `network`.
    pub fn in_network(&self, network: &str) -> bool {
        self.network_tag == network_tag(network)
    }
}

/// Reads an alias of ours (either form); None for anyone else's.
pub fn parse_alias(alias: &str) -> Option<AliasInfo> {
    let mut parts = alias.strip_prefix(ALIAS_PREFIX)?.split(' ');
    let network_tag = parts.next()?;
    let attachment_tag = parts.next()?;
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(network_tag, 16) || !is_hex(attachment_tag, 40) {
        return None;
    }
    let attachment = parts.next().and_then(|clear| {
        let mut it = clear.splitn(3, '/');
        let (n, c, i) = (it.next()?, it.next()?, it.next()?);
        (network_tag == self::network_tag(n) && attachment_tag == self::attachment_tag(n, c, i))
            .then(|| (n.to_string(), c.to_string(), i.to_string()))
    });
    if parts.next().is_some() {
        return None;
    }
    Some(AliasInfo { network_tag: network_tag.into(), attachment_tag: attachment_tag.into(), attachment })
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
        let info = parse_alias(&a).unwrap();
        assert!(info.names("net", "cid", "eth0") && info.in_network("net"));
        assert!(!info.names("net", "cid", "eth1") && !info.in_network("other"));
        assert_eq!(info.attachment, Some(("net".into(), "cid".into(), "eth0".into())));
    }

    #[test]
    fn long_attachments_keep_only_the_hashes_and_old_aliases_still_parse() {
        let long = host_veth_alias(&"n".repeat(200), &"c".repeat(100), "eth0");
        assert!(long.len() <= MAX_ALIAS_LEN);
        let info = parse_alias(&long).unwrap();
        assert_eq!(info.attachment, None);
        assert!(info.names(&"n".repeat(200), &"c".repeat(100), "eth0"));
        // What plugins before the attachment in clear wrote.
        let old = format!("{ALIAS_PREFIX}{} {}", network_tag("net"), attachment_tag("net", "cid", "eth0"));
        let info = parse_alias(&old).unwrap();
        assert!(info.names("net", "cid", "eth0") && info.attachment.is_none());
    }

    #[test]
    fn hashed_keys_carry_the_attachment_tag() {
        let (n, c, i) = hashed_key_of("net", "cid", "eth0");
        assert_eq!(key_attachment_tag(&n, &c, &i), attachment_tag("net", "cid", "eth0"));
        assert_eq!(key_attachment_tag("net", "cid", "eth0"), attachment_tag("net", "cid", "eth0"));
        // The parts are valid API path segments.
        assert!(enipool_api::check_network(&n).is_ok() && enipool_api::check_container_id(&c).is_ok());
        assert!(enipool_api::check_ifname(&i).is_ok());
    }

    #[test]
    fn aliases_not_ours_or_forged_are_refused() {
        assert_eq!(parse_alias("someone else's"), None);
        assert_eq!(parse_alias("enipool zz 12"), None);
        // A clear attachment that does not hash to the tags is ignored, not believed.
        let a = host_veth_alias("net", "cid", "eth0").replace("net/cid/eth0", "net/other/eth0");
        assert_eq!(parse_alias(&a).unwrap().attachment, None);
    }

    #[test]
    fn aliases_separate_networks_and_attachments() {
        let a = host_veth_alias("net", "c1", "eth0");
        assert!(a.starts_with(ALIAS_PREFIX));
        assert_ne!(a, host_veth_alias("net", "c2", "eth0"));
        assert_ne!(a, host_veth_alias("net2", "c1", "eth0"));
        assert!(a.len() < 128);
    }
}

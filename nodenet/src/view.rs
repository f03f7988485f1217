//! Links, routes and rules read into plain values, and the one answer to "is this ours?": a host
//! veth of ours carries our alias ([`crate::alias`]); a host route of ours is `<pod IP>/32` in
//! the main table with our protocol; a pod rule of ours is `to <IP>` at 512 or `from <IP>` at
//! 1536 with our protocol (the daemon's ENI rules at 1535 carry the protocol too, and are not
//! pod rules).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use crate::alias::{AliasInfo, parse_alias};
use crate::{MAIN_TABLE, PROTO, RULE_FROM_PRIORITY, RULE_TO_PRIORITY};

/// What we know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub alias: Option<String>,
    pub is_veth: bool,
    /// For a veth: the namespace id of its peer's namespace, as the reading socket's namespace
    /// numbers it.
    pub peer_netns_id: Option<i32>,
}

impl Link {
    pub fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            alias: None,
            is_veth: false,
            peer_netns_id: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::LinkNetNsId(id) => l.peer_netns_id = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    l.is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        l
    }

    /// What our alias on this link says; None when it carries no alias of ours.
    pub fn our_alias(&self) -> Option<AliasInfo> {
        self.alias.as_deref().and_then(parse_alias)
    }

    /// A veth of ours: a veth with our alias.
    pub fn our_veth(&self) -> Option<AliasInfo> {
        if self.is_veth { self.our_alias() } else { None }
    }

    /// Whether this link has `mac` (any case), and is not a loopback.
    pub fn has_mac(&self, mac: &str) -> bool {
        self.mac.len() == 6 && !self.loopback && crate::format_mac(&self.mac) == mac.to_ascii_lowercase()
    }
}

/// One IPv4 route as we compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteView {
    pub dst: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: RouteProtocol,
    pub kind: RouteType,
    /// The route's metric (`Priority`); None when the kernel reports none.
    pub metric: Option<u32>,
}

impl RouteView {
    pub fn from_message(m: &RouteMessage) -> RouteView {
        let mut v = RouteView {
            dst: None,
            prefix_len: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
            table: u32::from(m.header.table),
            protocol: m.header.protocol,
            kind: m.header.kind,
            metric: None,
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => v.dst = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => v.gateway = Some(*ip),
                RouteAttribute::Oif(i) => v.oif = Some(*i),
                RouteAttribute::Table(t) => v.table = *t,
                RouteAttribute::Priority(p) => v.metric = Some(*p),
                _ => {}
            }
        }
        v
    }

    /// A host route of ours: `<pod IP>/32` in the main table, our protocol, unicast. Returns the
    /// pod IP; the route goes out of the pod's host veth ([`RouteView::oif`]).
    pub fn our_host_route(&self) -> Option<Ipv4Addr> {
        let ours = self.protocol == RouteProtocol::Other(PROTO) && self.kind == RouteType::Unicast;
        (ours && self.prefix_len == 32 && self.table == MAIN_TABLE).then_some(self.dst).flatten()
    }
}

/// One IPv4 `lookup` rule with a single /32 selector, as we compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleView {
    pub priority: u32,
    /// `from <ip>` when true, `to <ip>` when false.
    pub from: bool,
    pub ip: Ipv4Addr,
    pub table: u32,
    /// Carries our routing protocol.
    pub ours: bool,
}

impl RuleView {
    /// None for anything but an IPv4 lookup rule with exactly one /32 selector.
    pub fn from_message(m: &RuleMessage) -> Option<RuleView> {
        if m.header.family != AddressFamily::Inet || m.header.action != RuleAction::ToTable {
            return None;
        }
        let mut priority = 0;
        let mut table = u32::from(m.header.table);
        let mut src = None;
        let mut dst = None;
        let mut ours = false;
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => priority = *p,
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Source(IpAddr::V4(ip)) => src = Some(*ip),
                RuleAttribute::Destination(IpAddr::V4(ip)) => dst = Some(*ip),
                RuleAttribute::Protocol(p) => ours = *p == RouteProtocol::Other(PROTO),
                _ => {}
            }
        }
        match (src, dst, m.header.src_len, m.header.dst_len) {
            (Some(ip), None, 32, 0) => Some(RuleView { priority, from: true, ip, table, ours }),
            (None, Some(ip), 0, 32) => Some(RuleView { priority, from: false, ip, table, ours }),
            _ => None,
        }
    }

    /// At a pod rule's priority (512 or 1536), ours or the reference plugin's.
    pub fn at_pod_priority(&self) -> bool {
        self.priority == RULE_TO_PRIORITY || self.priority == RULE_FROM_PRIORITY
    }

    /// A pod rule of ours (see the module's doc).
    pub fn our_pod_rule(&self) -> bool {
        self.ours && self.at_pod_priority()
    }
}

/// `<ip>/32 dev <oif> scope link proto 211` in the main table: the host route to a pod.
pub fn host_route(ip: Ipv4Addr, oif: u32) -> RouteMessage {
    use netlink_packet_route::route::RouteScope;
    rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(oif)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(PROTO))
        .build()
}

/// The policy rules a pod IP needs on the host: `to <ip> lookup main` at 512 and, on a secondary
/// ENI (`route_table` other than main), `from <ip> lookup <route_table>` at 1536.
pub fn pod_rules(ip: Ipv4Addr, route_table: u32) -> Vec<RuleMessage> {
    let mut rules = vec![rule(RULE_TO_PRIORITY, ip, false, MAIN_TABLE)];
    if route_table != MAIN_TABLE {
        rules.push(rule(RULE_FROM_PRIORITY, ip, true, route_table));
    }
    rules
}

/// `from|to <ip>/32 lookup <table> priority <priority> proto 211`.
pub fn rule(priority: u32, ip: Ipv4Addr, from: bool, table: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    // Without an action the kernel refuses lookups with EINVAL.
    m.header.action = RuleAction::ToTable;
    if table > 255 {
        m.header.table = 0;
        m.attributes.push(RuleAttribute::Table(table));
    } else {
        m.header.table = table as u8;
    }
    if from {
        m.header.src_len = 32;
        m.attributes.push(RuleAttribute::Source(IpAddr::V4(ip)));
    } else {
        m.header.dst_len = 32;
        m.attributes.push(RuleAttribute::Destination(IpAddr::V4(ip)));
    }
    m.attributes.push(RuleAttribute::Priority(priority));
    m.attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(PROTO)));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ENI_RULE_PRIORITY;

    #[test]
    fn rules_round_trip_through_the_view() {
        let ip = Ipv4Addr::new(10, 0, 1, 5);
        let views: Vec<_> = pod_rules(ip, 2).iter().filter_map(RuleView::from_message).collect();
        assert_eq!(
            views,
            vec![
                RuleView { priority: 512, from: false, ip, table: 254, ours: true },
                RuleView { priority: 1536, from: true, ip, table: 2, ours: true },
            ]
        );
        assert!(views.iter().all(RuleView::our_pod_rule));
        assert_eq!(pod_rules(ip, MAIN_TABLE).len(), 1);
        // A large table goes in the attribute, not the one-byte header field.
        assert_eq!(RuleView::from_message(&rule(RULE_FROM_PRIORITY, ip, true, 1000)).unwrap().table, 1000);
    }

    #[test]
    fn the_daemons_eni_rules_are_ours_but_not_pod_rules() {
        let ip = Ipv4Addr::new(10, 0, 2, 9);
        let eni = RuleView::from_message(&rule(ENI_RULE_PRIORITY, ip, true, 3)).unwrap();
        assert!(eni.ours && !eni.our_pod_rule());
        let mut foreign = rule(RULE_TO_PRIORITY, ip, false, MAIN_TABLE);
        foreign.attributes.retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        let foreign = RuleView::from_message(&foreign).unwrap();
        assert!(foreign.at_pod_priority() && !foreign.our_pod_rule());
    }

    #[test]
    fn a_host_route_is_ours_only_with_our_protocol_in_the_main_table() {
        let ip = Ipv4Addr::new(10, 0, 1, 5);
        let mut m = host_route(ip, 7);
        assert_eq!(RouteView::from_message(&m).our_host_route(), Some(ip));
        assert_eq!(RouteView::from_message(&m).oif, Some(7));
        m.header.protocol = RouteProtocol::Boot;
        assert_eq!(RouteView::from_message(&m).our_host_route(), None);
        let mut other_table = host_route(ip, 7);
        other_table.header.table = 3;
        assert_eq!(RouteView::from_message(&other_table).our_host_route(), None);
    }
}

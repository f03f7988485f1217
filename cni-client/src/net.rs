//! The kernel side of a pod, over rtnetlink: the veth pair, the pod's address, routes and static
//! neighbour, and the host's route and policy rules. Everything the host side installs carries
//! our routing protocol number ([`PROTO`]) or, for the host veth, our alias, so DEL, CHECK and GC
//! touch only what is ours even beside another plugin using the same veth prefix.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, address::AddressAttribute};
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha1::{Digest, Sha1};

use crate::protocol::{CniError, code};

/// The pods' default gateway, answered by the host veth through a static neighbour entry.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub use enipool_api::node::{
    AliasInfo, PROTO, RULE_FROM_PRIORITY, RULE_TO_PRIORITY, attachment_tag, host_veth_alias, parse_alias,
};
pub const MAIN_TABLE: u32 = 254;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<prefix>` + the first 11 hex digits of sha1("namespace.podname"), or of the container id when
/// the runtime gave no pod name: the reference plugin's naming, so operators' tooling still works.
pub fn host_veth_name(prefix: &str, pod: Option<(&str, &str)>, container_id: &str) -> String {
    let mut h = Sha1::new();
    match pod {
        Some((ns, name)) => h.update(format!("{ns}.{name}").as_bytes()),
        None => h.update(container_id.as_bytes()),
    }
    let digest = hex(&h.finalize());
    format!("{prefix}{}", &digest[..11])
}

/// The `n`th other name for an attachment whose usual host veth name is taken by another live
/// pod (the name is a 44-bit hash of the pod's name, so two pods can share it): deterministic,
/// so a repeated ADD of the same attachment picks the same one.
pub fn alternate_host_veth_name(prefix: &str, network: &str, container_id: &str, ifname: &str, n: u32) -> String {
    let digest = hex(&Sha1::digest(format!("{network}/{container_id}/{ifname}#{n}").as_bytes()));
    format!("{prefix}{}", &digest[..11])
}

/// Who holds an interface name on the host.
#[derive(Debug)]
pub enum NameHolder {
    Nobody,
    /// A veth of ours, with what its alias says.
    Ours {
        index: u32,
        alias: AliasInfo,
    },
    /// Anything else: another plugin's veth, a device, a veth of ours without its alias.
    Foreign,
}

pub async fn name_holder(h: &Handle, name: &str) -> Result<NameHolder, CniError> {
    let link = link_by_name(h, name).await.map_err(kernel("looking up a host interface"))?;
    Ok(match link {
        None => NameHolder::Nobody,
        Some(l) => match l.alias.as_deref().and_then(parse_alias) {
            Some(alias) if l.is_veth => NameHolder::Ours { index: l.index, alias },
            _ => NameHolder::Foreign,
        },
    })
}

/// A random unicast, locally administered MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// What we know about one link.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub alias: Option<String>,
    pub is_veth: bool,
    pub name: String,
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        mac: Vec::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
        is_veth: false,
        name: String::new(),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(mac) => l.mac = mac.clone(),
            LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                l.is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    l
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(to_link(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn all_links(h: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(to_link).collect())
}

/// Deletes a link; one that is already gone is fine.
pub async fn delete_link(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

fn host_route(ip: Ipv4Addr, oif: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(oif)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(PROTO))
        .build()
}

/// The policy rules a pod IP needs on the host.
fn desired_rules(ip: Ipv4Addr, route_table: u32) -> Vec<RuleMessage> {
    let mut rules = vec![rule(RULE_TO_PRIORITY, ip, false, MAIN_TABLE)];
    if route_table != MAIN_TABLE {
        rules.push(rule(RULE_FROM_PRIORITY, ip, true, route_table));
    }
    rules
}

fn rule(priority: u32, ip: Ipv4Addr, from: bool, table: u32) -> RuleMessage {
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

/// A rule as we compare them: (priority, from?, ip, table, ours?).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleView {
    pub priority: u32,
    pub from: bool,
    pub ip: Ipv4Addr,
    pub table: u32,
    pub ours: bool,
}

fn view_rule(m: &RuleMessage) -> Option<RuleView> {
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
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == PROTO,
            _ => {}
        }
    }
    match (src, dst, m.header.src_len, m.header.dst_len) {
        (Some(ip), None, 32, 0) => Some(RuleView { priority, from: true, ip, table, ours }),
        (None, Some(ip), 0, 32) => Some(RuleView { priority, from: false, ip, table, ours }),
        _ => None,
    }
}

async fn rules(h: &Handle) -> Result<Vec<(RuleMessage, Option<RuleView>)>, rtnetlink::Error> {
    let msgs: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await?;
    Ok(msgs.into_iter().map(|m| (view_rule(&m), m)).map(|(v, m)| (m, v)).collect())
}

async fn delete_rule(h: &Handle, m: RuleMessage) -> Result<(), rtnetlink::Error> {
    match h.rule().del(m).execute().await {
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Everything a pod needs, as decided from the lease.
pub struct PodSpec<'a> {
    pub ifname: &'a str,
    pub host_veth: &'a str,
    /// A host veth of ours holding `host_veth`'s name whose attachment is gone (decided before
    /// the lease): deleted first. Nothing else of that name is ever deleted.
    pub stale_veth: Option<u32>,
    pub alias: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    pub route_table: u32,
    pub netns_fd: std::os::fd::RawFd,
}

/// What ADD has done so far, so a failure can undo it.
#[derive(Default)]
pub struct Undo {
    host_veth: Option<u32>,
    rules: Vec<RuleMessage>,
    created_veth_name: Option<String>,
}

impl Undo {
    /// Removes what was done: the veth pair (its pod end, addresses, routes and neighbour go with
    /// it) and the rules we added. Best effort; errors are returned for the log.
    pub async fn run(self, host: &Handle) -> Vec<String> {
        let mut errors = Vec::new();
        for r in self.rules {
            if let Err(e) = delete_rule(host, r).await {
                errors.push(format!("deleting a rule: {e}"));
            }
        }
        let index = match (self.host_veth, &self.created_veth_name) {
            (Some(i), _) => Some(i),
            (None, Some(name)) => link_by_name(host, name).await.ok().flatten().map(|l| l.index),
            _ => None,
        };
        if let Some(i) = index
            && let Err(e) = delete_link(host, i).await
        {
            errors.push(format!("deleting the host veth: {e}"));
        }
        errors
    }
}

pub struct Wired {
    pub host_mac: [u8; 6],
    pub pod_mac: Vec<u8>,
}

fn kernel(what: &str) -> impl FnOnce(rtnetlink::Error) -> CniError + '_ {
    move |e| CniError::kernel(what, e)
}

/// Fails with code 102 when the pod already has `ifname` (ADD must not reuse an interface).
pub async fn ensure_absent_in_pod(pod: &Handle, ifname: &str, netns: &str) -> Result<(), CniError> {
    match link_by_name(pod, ifname).await.map_err(kernel("looking up the pod interface"))? {
        Some(_) => Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {ifname:?} already exists in network namespace {netns}"),
        )),
        None => Ok(()),
    }
}

/// Wires a pod: veth pair created with its peer already in the pod's namespace (one request),
/// pod address, routes and neighbour, host route and rules. Records progress in `undo`.
pub async fn wire(host: &Handle, pod: &Handle, spec: &PodSpec<'_>, undo: &mut Undo) -> Result<Wired, CniError> {
    // A stale host veth of ours with this name (a re-created StatefulSet pod whose old netns
    // lingers after its DEL), found dead before the lease; only that very link is deleted.
    if let Some(stale) = spec.stale_veth
        && link_by_name(host, spec.host_veth).await.map_err(kernel("looking up the host veth"))?.map(|l| l.index)
            == Some(stale)
    {
        delete_link(host, stale).await.map_err(kernel("deleting a stale host veth"))?;
    }
    let host_mac = random_mac();
    // The peer cannot be set up in the creating request: the kernel opens it before it is paired
    // (ENOTCONN). It is brought up in the pod namespace below.
    let peer = LinkUnspec::new_with_name(spec.ifname).mtu(spec.mtu).setns_by_fd(spec.netns_fd).build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host_veth.to_string())
        .mtu(spec.mtu)
        .address(host_mac.to_vec())
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    match host.link().add(veth).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            return Err(CniError::new(
                code::INTERFACE_EXISTS,
                format!("creating veth {} / {}: an interface of that name already exists", spec.host_veth, spec.ifname),
            ));
        }
        Err(e) => return Err(CniError::kernel("creating the veth pair", e)),
    }
    undo.created_veth_name = Some(spec.host_veth.to_string());
    let host_link = link_by_name(host, spec.host_veth)
        .await
        .map_err(kernel("looking up the new host veth"))?
        .ok_or_else(|| CniError::new(code::KERNEL, format!("host veth {} vanished after creation", spec.host_veth)))?;
    undo.host_veth = Some(host_link.index);
    host.link()
        .set(LinkUnspec::new_with_index(host_link.index).alias(spec.alias.clone()).build())
        .execute()
        .await
        .map_err(kernel("setting the host veth alias"))?;

    // Pod side.
    let pod_link = link_by_name(pod, spec.ifname)
        .await
        .map_err(kernel("looking up the pod interface"))?
        .ok_or_else(|| CniError::new(code::KERNEL, format!("{} is not in the pod namespace", spec.ifname)))?;
    let pi = pod_link.index;
    pod.link()
        .set(LinkUnspec::new_with_index(pi).up().build())
        .execute()
        .await
        .map_err(kernel("setting the pod interface up"))?;
    pod.address().add(pi, IpAddr::V4(spec.ip), 32).execute().await.map_err(kernel("adding the pod address"))?;
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(pi)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Boot)
        .build();
    pod.route().add(gw_route).replace().execute().await.map_err(kernel("adding the pod's gateway route"))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(pi)
        .protocol(RouteProtocol::Boot)
        .build();
    pod.route().add(default).replace().execute().await.map_err(kernel("adding the pod's default route"))?;
    pod.neighbours()
        .add(pi, IpAddr::V4(POD_GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(kernel("adding the pod's gateway neighbour"))?;

    // Host side.
    host.route()
        .add(host_route(spec.ip, host_link.index))
        .replace()
        .execute()
        .await
        .map_err(kernel("adding the host route"))?;
    let desired = desired_rules(spec.ip, spec.route_table);
    let desired_views: Vec<RuleView> = desired.iter().filter_map(view_rule).collect();
    for (m, v) in rules(host).await.map_err(kernel("listing rules"))? {
        // Stale rules for this IP (an earlier pod that was never deleted), ours or the
        // reference plugin's at the same priorities.
        if let Some(v) = v
            && v.ip == spec.ip
            && (v.priority == RULE_TO_PRIORITY || v.priority == RULE_FROM_PRIORITY)
            && !desired_views.iter().any(|d| d.priority == v.priority && d.from == v.from && d.table == v.table)
        {
            delete_rule(host, m).await.map_err(kernel("deleting a stale rule"))?;
        }
    }
    for r in desired {
        let mut req = host.rule().add().v4();
        *req.message_mut() = r.clone();
        match req.execute().await {
            Ok(()) => undo.rules.push(r),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(CniError::kernel("adding a rule", e)),
        }
    }
    Ok(Wired { host_mac, pod_mac: pod_link.mac })
}

/// DEL's host side: the host route (when the host veth still exists) and, when `remove_rules`,
/// our rules for `ip`. The veth itself is left to go away with the pod's namespace.
pub async fn unwire_host(host: &Handle, host_veth: &str, ip: Ipv4Addr, remove_rules: bool) -> Result<(), CniError> {
    if let Some(link) = link_by_name(host, host_veth).await.map_err(kernel("looking up the host veth"))? {
        match host.route().del(host_route(ip, link.index)).execute().await {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => {}
            Err(e) => return Err(CniError::kernel("deleting the host route", e)),
        }
    }
    if remove_rules {
        for (m, v) in rules(host).await.map_err(kernel("listing rules"))? {
            if let Some(v) = v
                && v.ours
                && v.ip == ip
                && (v.priority == RULE_TO_PRIORITY || v.priority == RULE_FROM_PRIORITY)
            {
                delete_rule(host, m).await.map_err(kernel("deleting a rule"))?;
            }
        }
    }
    Ok(())
}

/// The link our host route for `ip` (protocol 211, /32, main table) goes out of, if there is one.
async fn host_route_link(h: &Handle, ip: Ipv4Addr) -> Result<Option<Link>, rtnetlink::Error> {
    let oif = routes(h).await?.iter().find_map(|m| match route_view(m) {
        (Some(dst), 32, _, Some(oif), MAIN_TABLE) if dst == ip && u8::from(m.header.protocol) == PROTO => Some(oif),
        _ => None,
    });
    let Some(oif) = oif else { return Ok(None) };
    let mut s = h.link().get().match_index(oif).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(to_link)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// DEL without the daemon's lease (the daemon is down, or holds no lease): removes the host route
/// of `ip` and our pod rules for it only when that route still goes out of a veth whose alias
/// names this attachment. Otherwise the IP is someone else's by now (or an earlier DEL already
/// ran), and nothing is touched. Returns whether it removed anything.
pub async fn unwire_host_if_ours(
    host: &Handle,
    ip: Ipv4Addr,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<bool, CniError> {
    let Some(link) = host_route_link(host, ip).await.map_err(kernel("looking up the host route"))? else {
        return Ok(false);
    };
    let ours = link.alias.as_deref().and_then(parse_alias).is_some_and(|a| a.names(network, container_id, ifname));
    if !ours {
        return Ok(false);
    }
    unwire_host(host, &link.name, ip, true).await?;
    Ok(true)
}

/// What CHECK expects.
pub struct Expected<'a> {
    pub ifname: &'a str,
    pub host_veth: &'a str,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    pub route_table: u32,
}

fn route_view(m: &RouteMessage) -> (Option<Ipv4Addr>, u8, Option<Ipv4Addr>, Option<u32>, u32) {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (dst, m.header.destination_prefix_length, gw, oif, table)
}

async fn routes(h: &Handle) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await
}

/// CHECK: compares the pod's and the host's actual state with `e`; returns every mismatch.
pub async fn check(host: &Handle, pod: &Handle, e: &Expected<'_>) -> Result<Vec<String>, CniError> {
    let mut bad = Vec::new();
    let host_link = link_by_name(host, e.host_veth).await.map_err(kernel("looking up the host veth"))?;
    let Some(pod_link) = link_by_name(pod, e.ifname).await.map_err(kernel("looking up the pod interface"))? else {
        bad.push(format!("interface {} is missing from the pod namespace", e.ifname));
        return Ok(bad);
    };
    if !pod_link.up {
        bad.push(format!("pod interface {} is down", e.ifname));
    }
    if pod_link.mtu != e.mtu {
        bad.push(format!("pod interface {} has MTU {}, the lease says {}", e.ifname, pod_link.mtu, e.mtu));
    }
    let addrs: Vec<_> = pod
        .address()
        .get()
        .set_link_index_filter(pod_link.index)
        .execute()
        .try_collect()
        .await
        .map_err(kernel("listing pod addresses"))?;
    let has_ip = addrs.iter().any(|a| {
        a.header.prefix_len == 32
            && a.attributes.iter().any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == e.ip))
    });
    if !has_ip {
        bad.push(format!("pod interface {} lacks address {}/32", e.ifname, e.ip));
    }
    let pod_routes = routes(pod).await.map_err(kernel("listing pod routes"))?;
    let views: Vec<_> = pod_routes.iter().map(route_view).collect();
    let pi = Some(pod_link.index);
    if !views.contains(&(Some(POD_GATEWAY), 32, None, pi, MAIN_TABLE)) {
        bad.push(format!("pod route {POD_GATEWAY}/32 dev {} scope link is missing", e.ifname));
    }
    if !views.iter().any(|v| v.0.is_none() && v.1 == 0 && v.2 == Some(POD_GATEWAY) && v.3 == pi && v.4 == MAIN_TABLE) {
        bad.push(format!("pod default route via {POD_GATEWAY} dev {} is missing", e.ifname));
    }
    let neigh_req = pod.neighbours().get().set_address_family(AddressFamily::Inet);
    let neighbours: Vec<NeighbourMessage> =
        neigh_req.execute().try_collect().await.map_err(kernel("listing pod neighbours"))?;
    let gw_neigh = neighbours.iter().find(|n| {
        n.header.ifindex == pod_link.index
            && n.attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if ip == &POD_GATEWAY))
    });
    match (gw_neigh, &host_link) {
        (None, _) => bad.push(format!("pod neighbour {POD_GATEWAY} is missing")),
        (Some(n), host_link) => {
            if n.header.state != NeighbourState::Permanent {
                bad.push(format!("pod neighbour {POD_GATEWAY} is {:?}, not permanent", n.header.state));
            }
            let lladdr = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
                _ => None,
            });
            if let Some(h) = host_link
                && lladdr.as_deref() != Some(h.mac.as_slice())
            {
                bad.push(format!(
                    "pod neighbour {POD_GATEWAY} points to {}, the host veth's MAC is {}",
                    lladdr.as_deref().map(format_mac).unwrap_or_default(),
                    format_mac(&h.mac)
                ));
            }
        }
    }
    let Some(host_link) = host_link else {
        bad.push(format!("host veth {} is missing", e.host_veth));
        return Ok(bad);
    };
    if !host_link.up {
        bad.push(format!("host veth {} is down", e.host_veth));
    }
    let host_routes = routes(host).await.map_err(kernel("listing host routes"))?;
    if !host_routes.iter().map(route_view).any(|v| v == (Some(e.ip), 32, None, Some(host_link.index), MAIN_TABLE)) {
        bad.push(format!("host route {}/32 dev {} is missing", e.ip, e.host_veth));
    }
    let actual: Vec<RuleView> =
        rules(host).await.map_err(kernel("listing rules"))?.into_iter().filter_map(|r| r.1).collect();
    for want in desired_rules(e.ip, e.route_table).iter().filter_map(view_rule) {
        if !actual.contains(&want) {
            let dir = if want.from { "from" } else { "to" };
            bad.push(format!("rule {dir} {} lookup {} prio {} is missing", want.ip, want.table, want.priority));
        }
    }
    Ok(bad)
}

/// GC's first step, before the daemon is asked: our host veths of `network` as they are now. A
/// veth made after this snapshot belongs to an ADD whose lease the daemon's answer covers, so
/// it is never among what `gc` deletes.
pub async fn gc_snapshot(host: &Handle, network: &str) -> Result<Vec<(Link, AliasInfo)>, CniError> {
    Ok(all_links(host)
        .await
        .map_err(kernel("listing links"))?
        .into_iter()
        .filter(|l| l.is_veth)
        .filter_map(|l| {
            let info = l.alias.as_deref().and_then(parse_alias)?;
            info.in_network(network).then_some((l, info))
        })
        .collect())
}

/// GC's kernel side: deletes the veths of `snapshot` whose attachment tag is not in `keep`, then
/// our pod rules (priorities 512 and 1536: the plugin's own; the daemon's ENI rules at 1535
/// carry the same protocol and are not ours to touch) whose IP has no host route of ours left
/// (routes go with their veth). Rules are listed before routes: an ADD adds its route before its
/// rules, so a rule listed here whose route is not listed after is no ADD's in flight. Returns
/// what it did.
pub async fn gc(
    host: &Handle,
    snapshot: &[(Link, AliasInfo)],
    keep: &std::collections::HashSet<String>,
) -> Result<Vec<String>, CniError> {
    let mut done = Vec::new();
    for (link, info) in snapshot {
        if !keep.contains(&info.attachment_tag) {
            delete_link(host, link.index).await.map_err(kernel("deleting a stale host veth"))?;
            done.push(format!("deleted host veth {}", link.name));
        }
    }
    let listed_rules = rules(host).await.map_err(kernel("listing rules"))?;
    let live: Vec<Ipv4Addr> = routes(host)
        .await
        .map_err(kernel("listing routes"))?
        .iter()
        .filter(|m| u8::from(m.header.protocol) == PROTO && m.header.kind == RouteType::Unicast)
        .filter_map(|m| match route_view(m) {
            (Some(ip), 32, _, _, t) if t == u32::from(RouteHeader::RT_TABLE_MAIN) => Some(ip),
            _ => None,
        })
        .collect();
    for (m, v) in listed_rules {
        if let Some(v) = v
            && v.ours
            && (v.priority == RULE_TO_PRIORITY || v.priority == RULE_FROM_PRIORITY)
            && !live.contains(&v.ip)
        {
            delete_rule(host, m).await.map_err(kernel("deleting a stale rule"))?;
            done.push(format!("deleted rule {} {} prio {}", if v.from { "from" } else { "to" }, v.ip, v.priority));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_match_the_reference() {
        // The reference: prefix + hex(sha1("namespace.podname"))[:11].
        let digest = hex(&Sha1::digest(b"default.nginx"));
        assert_eq!(host_veth_name("eni", Some(("default", "nginx")), "cid"), format!("eni{}", &digest[..11]));
        assert_eq!(host_veth_name("eni", None, "abc").len(), 14);
        assert!(host_veth_name("abcd", None, "abc").len() <= 15);
        assert_ne!(host_veth_name("eni", None, "a"), host_veth_name("eni", None, "b"));
    }

    #[test]
    fn sha1_is_sha1() {
        assert_eq!(hex(&Sha1::digest(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(format_mac(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }

    #[test]
    fn rules_round_trip_through_the_view() {
        let ip = Ipv4Addr::new(10, 0, 1, 5);
        let views: Vec<_> = desired_rules(ip, 2).iter().filter_map(view_rule).collect();
        assert_eq!(
            views,
            vec![
                RuleView { priority: 512, from: false, ip, table: 254, ours: true },
                RuleView { priority: 1536, from: true, ip, table: 2, ours: true },
            ]
        );
        assert_eq!(desired_rules(ip, MAIN_TABLE).len(), 1);
    }

    #[test]
    fn aliases_separate_networks_and_attachments() {
        let a = host_veth_alias("net", "c1", "eth0");
        assert!(a.starts_with(enipool_api::node::ALIAS_PREFIX));
        assert_ne!(a, host_veth_alias("net", "c2", "eth0"));
        assert_ne!(a, host_veth_alias("net2", "c1", "eth0"));
        assert!(a.len() < 128);
    }
}

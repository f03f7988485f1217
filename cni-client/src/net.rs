//! The kernel side of a pod, over rtnetlink: the veth pair, the pod's address, routes and static
//! neighbour, and the host's route and policy rules. Everything the host side installs carries
//! our routing protocol number or, for the host veth, our alias (both agreed in
//! `enipool-nodenet`), so DEL, CHECK and GC touch only what is ours even beside another plugin
//! using the same veth prefix.

use std::net::{IpAddr, Ipv4Addr};

use enipool_nodenet::alias::AliasInfo;
use enipool_nodenet::netlink::{
    self, Handle, add_rule, delete_link, delete_route, delete_rule, errno, link_by_index, link_by_name, routes, rules,
};
use enipool_nodenet::view::{Link, RouteView, RuleView, host_route, pod_rules};
use enipool_nodenet::{MAIN_TABLE, format_mac};
use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, address::AddressAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha1::{Digest, Sha1};

use crate::protocol::{CniError, code};

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
        Some(l) => match l.our_veth() {
            Some(alias) => NameHolder::Ours { index: l.index, alias },
            None => NameHolder::Foreign,
        },
    })
}

/// A random unicast, locally administered MAC. Straight from the kernel's random source: six
/// bytes do not need a seeded generator, whose set-up probes the CPU with CPUID (a trap to the
/// hypervisor on a VM) at every start of the plugin.
pub fn random_mac() -> Result<[u8; 6], CniError> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("reading random bytes for the veth's MAC: {e}")))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// The veth pair to create: what is known before the lease.
pub struct VethSpec<'a> {
    pub ifname: &'a str,
    pub host_veth: &'a str,
    /// A host veth of ours holding `host_veth`'s name whose attachment is gone (decided before
    /// the lease, and confirmed after it): deleted first. Nothing else of that name is deleted.
    pub stale_veth: Option<u32>,
    pub netns_fd: std::os::fd::RawFd,
}

/// Everything else a pod needs, as decided from the lease.
pub struct PodSpec {
    pub alias: String,
    pub ip: Ipv4Addr,
    /// The pod's default gateway, as the lease says (169.254.1.1).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub route_table: u32,
}

/// A veth pair just created: both ends' indexes and MACs.
pub struct Veth {
    host_index: u32,
    pod_index: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: Vec<u8>,
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

/// Creates the veth pair, its peer already in the pod's namespace (one request), and finds both
/// ends. The host end carries no alias yet: until [`wire`] sets it, neither the daemon's node
/// cleanup nor another ADD takes the veth for ours, so this may run while the lease is on the
/// wire. Records the veth in `undo`.
pub async fn create_veth(host: &Handle, pod: &Handle, spec: &VethSpec<'_>, undo: &mut Undo) -> Result<Veth, CniError> {
    // A stale host veth of ours with this name (a re-created StatefulSet pod whose old netns
    // lingers after its DEL), found dead before the lease; only that very link is deleted.
    if let Some(stale) = spec.stale_veth
        && link_by_name(host, spec.host_veth).await.map_err(kernel("looking up the host veth"))?.map(|l| l.index)
            == Some(stale)
    {
        delete_link(host, stale).await.map_err(kernel("deleting a stale host veth"))?;
    }
    let host_mac = random_mac()?;
    // Both ends are made down and brought up by `wire`, the pod's first (the kernel refuses to
    // open the peer in the creating request: ENOTCONN). A host end made up, its peer still down,
    // loses its carrier just after registration; the next look at it (our lookup below, or the
    // kernel's link watcher) then deactivates its queues, which waits for an expedited RCU grace
    // period while holding the routing lock: 0.3-0.4 ms here, which nothing else of ADD overlaps.
    // One queue each way per end: the kernel's default for a veth is one per possible CPU (96 on
    // an m5.24xlarge), each with its sysfs directory made at creation and removed at deletion,
    // and a pod's veth without XDP gains nothing from them (ptp's and the VPC CNI's keep the
    // default).
    let peer = LinkUnspec::new_with_name(spec.ifname)
        .setns_by_fd(spec.netns_fd)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host_veth.to_string())
        .address(host_mac.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
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
    let pod_link = link_by_name(pod, spec.ifname)
        .await
        .map_err(kernel("looking up the pod interface"))?
        .ok_or_else(|| CniError::new(code::KERNEL, format!("{} is not in the pod namespace", spec.ifname)))?;
    Ok(Veth { host_index: host_link.index, pod_index: pod_link.index, host_mac, pod_mac: pod_link.mac })
}

/// Wires a pod on its new veth pair: both ends up with the lease's MTU, the pod's first, so the
/// host end comes up with its carrier (see [`create_veth`]), and the host end's alias (from here
/// on the veth is ours); the pod's address, routes and neighbour, the host route and rules.
/// Records progress in `undo`.
pub async fn wire(host: &Handle, pod: &Handle, veth: &Veth, spec: &PodSpec, undo: &mut Undo) -> Result<(), CniError> {
    let pi = veth.pod_index;
    pod.link()
        .set(LinkUnspec::new_with_index(pi).mtu(spec.mtu).up().build())
        .execute()
        .await
        .map_err(kernel("setting the pod interface up"))?;
    host.link()
        .set(LinkUnspec::new_with_index(veth.host_index).alias(spec.alias.clone()).mtu(spec.mtu).up().build())
        .execute()
        .await
        .map_err(kernel("setting the host veth up with its alias and MTU"))?;

    // Pod side.
    pod.address().add(pi, IpAddr::V4(spec.ip), 32).execute().await.map_err(kernel("adding the pod address"))?;
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(spec.gateway, 32)
        .output_interface(pi)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Boot)
        .build();
    pod.route().add(gw_route).replace().execute().await.map_err(kernel("adding the pod's gateway route"))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(spec.gateway)
        .output_interface(pi)
        .protocol(RouteProtocol::Boot)
        .build();
    pod.route().add(default).replace().execute().await.map_err(kernel("adding the pod's default route"))?;
    pod.neighbours()
        .add(pi, IpAddr::V4(spec.gateway))
        .link_layer_address(&veth.host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(kernel("adding the pod's gateway neighbour"))?;

    // Host side.
    host.route()
        .add(host_route(spec.ip, veth.host_index))
        .replace()
        .execute()
        .await
        .map_err(kernel("adding the host route"))?;
    let desired = pod_rules(spec.ip, spec.route_table);
    let desired_views: Vec<RuleView> = desired.iter().filter_map(RuleView::from_message).collect();
    for (m, v) in rules(host).await.map_err(kernel("listing rules"))? {
        // Stale rules for this IP (an earlier pod that was never deleted), ours or the
        // reference plugin's at the same priorities.
        if let Some(v) = v
            && v.ip == spec.ip
            && v.at_pod_priority()
            && !desired_views.iter().any(|d| d.priority == v.priority && d.from == v.from && d.table == v.table)
        {
            delete_rule(host, m).await.map_err(kernel("deleting a stale rule"))?;
        }
    }
    for r in desired {
        if add_rule(host, r.clone()).await.map_err(kernel("adding a rule"))? {
            undo.rules.push(r);
        }
    }
    Ok(())
}

/// DEL's host side: the host route (when the host veth still exists) and, when `remove_rules`,
/// our rules for `ip`. The veth itself is left to go away with the pod's namespace.
pub async fn unwire_host(host: &Handle, host_veth: &str, ip: Ipv4Addr, remove_rules: bool) -> Result<(), CniError> {
    if let Some(link) = link_by_name(host, host_veth).await.map_err(kernel("looking up the host veth"))? {
        delete_route(host, host_route(ip, link.index)).await.map_err(kernel("deleting the host route"))?;
    }
    if remove_rules {
        for (m, v) in rules(host).await.map_err(kernel("listing rules"))? {
            if let Some(v) = v
                && v.our_pod_rule()
                && v.ip == ip
            {
                delete_rule(host, m).await.map_err(kernel("deleting a rule"))?;
            }
        }
    }
    Ok(())
}

/// The link our host route for `ip` goes out of, if there is one.
async fn host_route_link(h: &Handle, ip: Ipv4Addr) -> Result<Option<Link>, netlink::Error> {
    let oif = routes(h).await?.iter().map(RouteView::from_message).find_map(|v| match v.our_host_route() {
        Some(dst) if dst == ip => v.oif,
        _ => None,
    });
    match oif {
        Some(oif) => link_by_index(h, oif).await,
        None => Ok(None),
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
    if !link.our_alias().is_some_and(|a| a.names(network, container_id, ifname)) {
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
    /// The pod's default gateway, as the lease says.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub route_table: u32,
}

/// CHECK: compares the pod's and the host's actual state with `e`; returns every mismatch.
pub async fn check(host: &Handle, pod: &Handle, e: &Expected<'_>) -> Result<Vec<String>, CniError> {
    let mut bad = Vec::new();
    let gw = e.gateway;
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
    let pod_routes: Vec<RouteView> =
        routes(pod).await.map_err(kernel("listing pod routes"))?.iter().map(RouteView::from_message).collect();
    let pi = Some(pod_link.index);
    let in_main_via_pod_link = |v: &&RouteView| v.oif == pi && v.table == MAIN_TABLE;
    if !pod_routes
        .iter()
        .filter(in_main_via_pod_link)
        .any(|v| v.dst == Some(gw) && v.prefix_len == 32 && v.gateway.is_none())
    {
        bad.push(format!("pod route {gw}/32 dev {} scope link is missing", e.ifname));
    }
    if !pod_routes
        .iter()
        .filter(in_main_via_pod_link)
        .any(|v| v.dst.is_none() && v.prefix_len == 0 && v.gateway == Some(gw))
    {
        bad.push(format!("pod default route via {gw} dev {} is missing", e.ifname));
    }
    let neigh_req = pod.neighbours().get().set_address_family(AddressFamily::Inet);
    let neighbours: Vec<NeighbourMessage> =
        neigh_req.execute().try_collect().await.map_err(kernel("listing pod neighbours"))?;
    let gw_neigh = neighbours.iter().find(|n| {
        n.header.ifindex == pod_link.index
            && n.attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if *ip == gw))
    });
    match (gw_neigh, &host_link) {
        (None, _) => bad.push(format!("pod neighbour {gw} is missing")),
        (Some(n), host_link) => {
            if n.header.state != NeighbourState::Permanent {
                bad.push(format!("pod neighbour {gw} is {:?}, not permanent", n.header.state));
            }
            let lladdr = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
                _ => None,
            });
            if let Some(h) = host_link
                && lladdr.as_deref() != Some(h.mac.as_slice())
            {
                bad.push(format!(
                    "pod neighbour {gw} points to {}, the host veth's MAC is {}",
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
    let routed = host_routes.iter().map(RouteView::from_message).any(|v| {
        v.dst == Some(e.ip)
            && v.prefix_len == 32
            && v.gateway.is_none()
            && v.oif == Some(host_link.index)
            && v.table == MAIN_TABLE
    });
    if !routed {
        bad.push(format!("host route {}/32 dev {} is missing", e.ip, e.host_veth));
    }
    let actual: Vec<RuleView> =
        rules(host).await.map_err(kernel("listing rules"))?.into_iter().filter_map(|r| r.1).collect();
    for want in pod_rules(e.ip, e.route_table).iter().filter_map(RuleView::from_message) {
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
    Ok(netlink::links(host)
        .await
        .map_err(kernel("listing links"))?
        .into_iter()
        .filter_map(|l| {
            let info = l.our_veth()?;
            info.in_network(network).then_some((l, info))
        })
        .collect())
}

/// GC's kernel side: deletes the veths of `snapshot` whose attachment tag is not in `keep`, then
/// our pod rules (the daemon's ENI rules carry the same protocol and are not ours to touch)
/// whose IP has no host route of ours left (routes go with their veth). Rules are listed before
/// routes: an ADD adds its route before its rules, so a rule listed here whose route is not
/// listed after is no ADD's in flight. Returns what it did.
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
        .filter_map(|m| RouteView::from_message(m).our_host_route())
        .collect();
    for (m, v) in listed_rules {
        if let Some(v) = v
            && v.our_pod_rule()
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
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let m = random_mac().unwrap();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
            seen.insert(m);
        }
        assert!(seen.len() > 95, "random: {} distinct of 100", seen.len());
    }
}

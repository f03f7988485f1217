//! The node side of secondary ENIs, done when an ENI appears: find its interface by MAC, set the
//! MTU and bring it up, give it the ENI's primary IP (/32), a route table of its own (device
//! number + 1) with `default via <subnet gateway>`, and `rule from <ENI primary IP> lookup
//! <table>`. Needs CAP_NET_ADMIN only.
//!
//! Node-wide, two sysctls: ip_forward=1 and rp_filter not strict on the primary interface (replies
//! to pods on secondary ENIs leave by another interface). In a DaemonSet the daemon's /proc/sys
//! is read-only: `enipoold node-sysctls` ([`apply_node_sysctls`]) writes them from the
//! privileged init container, and the daemon only checks them ([`NodeSysctls`]), writing them
//! itself only where it can (a daemon run as root on a plain host).
//!
//! Everything runs on a dedicated thread that has entered the host network namespace (the
//! daemon's own, or `--host-netns` in tests), with its own netlink socket: the namespace of a
//! shared runtime thread is never switched. Every step is idempotent (replace semantics).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

/// Priority of the `from <ENI primary IP>` rules (the pods' own `from` rules use 1536).
pub const ENI_RULE_PRIORITY: u32 = 1535;
/// Routing protocol tag of what we add (as the CNI plugin does).
const PROTO: RouteProtocol = RouteProtocol::Other(211);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No interface has the ENI's MAC yet (EC2 attaches asynchronously): try again later.
    #[error("no interface with MAC {0} yet")]
    NotFound(String),
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    /// The node-wide sysctls are wrong and this process cannot write them (a container's
    /// read-only /proc/sys): the node is not prepared, and pods would get no traffic.
    #[error(
        "the node is not prepared: {detail}. Run `enipoold node-sysctls --interface {interface}` as root \
         on the node (the DaemonSet's init container runs `enipoold node-sysctls`, which takes the \
         interface of the default route unless ENIPOOL_PRIMARY_INTERFACE is set)"
    )]
    NodeNotPrepared { interface: String, detail: String },
}

pub(crate) fn failed(what: &str, e: impl std::fmt::Display) -> HostError {
    HostError::Failed { what: what.to_string(), detail: e.to_string() }
}

/// One secondary ENI's host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniHost {
    pub eni_id: String,
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub table: u32,
    pub mtu: u32,
}

/// Where the host side is done.
#[derive(Clone, Debug, Default)]
pub struct HostNet {
    /// A network namespace to do it in (tests); `None`: the daemon's own.
    pub netns: Option<PathBuf>,
}

impl HostNet {
    /// Runs `f` on a fresh thread inside the host namespace, with a netlink handle there.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, HostError>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, HostError>>,
    {
        let netns = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("enipool-host".into())
            .spawn(move || {
                let result = (|| {
                    if let Some(ns) = &netns {
                        enter_netns(ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| failed("starting the host thread's runtime", e))?;
                    rt.block_on(async move {
                        let (conn, handle, _) =
                            rtnetlink::new_connection().map_err(|e| failed("opening a netlink socket", e))?;
                        tokio::spawn(conn);
                        f(handle).await
                    })
                })();
                let _ = tx.send(result);
            })
            .map_err(|e| failed("starting the host thread", e))?;
        rx.await.map_err(|_| failed("the host thread", "ended without an answer"))?
    }

    /// Checks the node-wide sysctls with the interface that has `primary_mac` as the primary one;
    /// writes what is wrong if it can. Returns the interface's name.
    pub async fn setup_node(&self, primary_mac: &str) -> Result<String, HostError> {
        let mac = primary_mac.to_string();
        self.run(move |h| async move {
            let (_, name) = link_by_mac(&h, &mac).await?.ok_or(HostError::NotFound(mac.clone()))?;
            let sysctls = NodeSysctls::read(&name)?;
            if !sysctls.is_ready() {
                sysctls.apply().map_err(|e| HostError::NodeNotPrepared {
                    interface: name.clone(),
                    detail: format!("{sysctls}; {e}"),
                })?;
            }
            Ok(name)
        })
        .await
    }
}

/// `enipoold node-sysctls`: ip_forward=1 and rp_filter=2 on `interface`, or, unset, on the
/// interface of the main table's IPv4 default route (the primary ENI's on EC2). Runs in the
/// calling thread's network namespace; returns what it found and set.
pub async fn apply_node_sysctls(interface: Option<String>) -> Result<NodeSysctls, HostError> {
    let name = match interface {
        Some(name) => name,
        None => {
            let (conn, h, _) = rtnetlink::new_connection().map_err(|e| failed("opening a netlink socket", e))?;
            tokio::spawn(conn);
            default_route_interface(&h).await?
        }
    };
    let before = NodeSysctls::read(&name)?;
    before.apply()?;
    Ok(before)
}

/// The node-wide sysctls pods need, as read: forwarding on, and reverse-path filtering on the
/// primary interface not strict. The kernel applies the larger of `conf/all` and the
/// interface's own rp_filter, so both are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSysctls {
    pub interface: String,
    pub ip_forward: String,
    pub rp_filter_all: String,
    pub rp_filter: String,
}

impl NodeSysctls {
    pub fn read(interface: &str) -> Result<NodeSysctls, HostError> {
        // `all` and `default` are not interfaces: writing them would change every interface.
        if interface.is_empty() || interface.contains('/') || [".", "..", "all", "default"].contains(&interface) {
            return Err(failed("the primary interface", format!("{interface:?} is not an interface name")));
        }
        Ok(NodeSysctls {
            interface: interface.to_string(),
            ip_forward: read_sysctl(IP_FORWARD)?,
            rp_filter_all: read_sysctl(&rp_filter_path("all"))?,
            rp_filter: read_sysctl(&rp_filter_path(interface))?,
        })
    }

    /// Forwarding on, and the effective rp_filter (the larger of the two) not 1 (strict).
    pub fn is_ready(&self) -> bool {
        let effective = self.rp_filter_all.parse::<u8>().unwrap_or(1).max(self.rp_filter.parse::<u8>().unwrap_or(1));
        self.ip_forward == "1" && effective != 1
    }

    /// Writes ip_forward=1 and rp_filter=2 (loose) on the interface.
    fn apply(&self) -> Result<(), HostError> {
        write_sysctl(IP_FORWARD, "1")?;
        write_sysctl(&rp_filter_path(&self.interface), "2")
    }
}

impl std::fmt::Display for NodeSysctls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "net.ipv4.ip_forward={} (want 1), net.ipv4.conf.{}.rp_filter={} with conf.all.rp_filter={} (want loose: 2)",
            self.ip_forward, self.interface, self.rp_filter, self.rp_filter_all
        )
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn rp_filter_path(interface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{interface}/rp_filter")
}

fn read_sysctl(path: &str) -> Result<String, HostError> {
    std::fs::read_to_string(path).map(|v| v.trim().to_string()).map_err(|e| failed(&format!("reading {path}"), e))
}

/// The output interface of the main table's IPv4 default route.
async fn default_route_interface(h: &Handle) -> Result<String, HostError> {
    use netlink_packet_route::route::{RouteAttribute, RouteMessage};
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().table_id(254).build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| failed("listing routes", e))?;
    // The default route the kernel uses: the lowest metric. A multipath or nexthop-object route
    // names no single interface: then the operator says which (--interface).
    let index = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0 && r.header.table == 254)
        .filter_map(|r| {
            let oif = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })?;
            let metric =
                r.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None });
            Some((metric.unwrap_or(0), oif))
        })
        .min()
        .map(|(_, oif)| oif)
        .ok_or_else(|| {
            failed(
                "finding the primary interface",
                "no IPv4 default route through a single interface in the main table; give --interface \
                 (ENIPOOL_PRIMARY_INTERFACE)",
            )
        })?;
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| failed("reading an interface", e))?;
    links
        .iter()
        .flat_map(|m| m.attributes.iter())
        .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        .ok_or_else(|| failed("finding the primary interface", format!("interface {index} has no name")))
}

impl HostNet {
    /// Sets up one secondary ENI; returns its interface name.
    pub async fn setup_eni(&self, eni: EniHost) -> Result<String, HostError> {
        self.run(move |h| async move {
            let (index, name) = link_by_mac(&h, &eni.mac).await?.ok_or(HostError::NotFound(eni.mac.clone()))?;
            h.link()
                .set(LinkUnspec::new_with_index(index).mtu(eni.mtu).up().build())
                .execute()
                .await
                .map_err(|e| failed(&format!("setting {name} up with MTU {}", eni.mtu), e))?;
            match h.address().add(index, IpAddr::V4(eni.primary_ip), 32).execute().await {
                Err(e) if errno(&e) != Some(libc::EEXIST) => {
                    return Err(failed(&format!("adding {}/32 to {name}", eni.primary_ip), e));
                }
                _ => {}
            }
            let gw = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(eni.gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .table_id(eni.table)
                .protocol(PROTO)
                .build();
            h.route()
                .add(gw)
                .replace()
                .execute()
                .await
                .map_err(|e| failed(&format!("routing the gateway {} in table {}", eni.gateway, eni.table), e))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(eni.gateway)
                .output_interface(index)
                .table_id(eni.table)
                .protocol(PROTO)
                .build();
            h.route()
                .add(default)
                .replace()
                .execute()
                .await
                .map_err(|e| failed(&format!("the default route of table {}", eni.table), e))?;
            ensure_rule(&h, eni.primary_ip, eni.table).await?;
            Ok(name)
        })
        .await
    }
}

pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn enter_netns(path: &Path) -> Result<(), HostError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(|e| failed(&format!("opening {}", path.display()), e))?;
    // SAFETY: setns(2) on an fd we own, on this dedicated thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(failed(&format!("entering {}", path.display()), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), HostError> {
    std::fs::write(path, value).map_err(|e| failed(&format!("writing {value} to {path}"), e))
}

fn mac_of(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            Some(b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":"))
        }
        _ => None,
    })
}

/// The (index, name) of the interface with this MAC.
async fn link_by_mac(h: &Handle, mac: &str) -> Result<Option<(u32, String)>, HostError> {
    let links: Vec<LinkMessage> =
        h.link().get().execute().try_collect().await.map_err(|e| failed("listing interfaces", e))?;
    let want = mac.to_ascii_lowercase();
    Ok(links
        .iter()
        .find(|m| mac_of(m).as_deref() == Some(want.as_str()) && !m.header.flags.contains(LinkFlags::Loopback))
        .map(|m| {
            let name = m
                .attributes
                .iter()
                .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
                .unwrap_or_default();
            (m.header.index, name)
        }))
}

/// `from <ip>/32 lookup <table>` at our priority, exactly once.
async fn ensure_rule(h: &Handle, ip: Ipv4Addr, table: u32) -> Result<(), HostError> {
    let rules: Vec<_> =
        h.rule().get(IpVersion::V4).execute().try_collect().await.map_err(|e| failed("listing rules", e))?;
    for m in rules {
        let prio = m.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None });
        let from = m.attributes.iter().any(|a| matches!(a, RuleAttribute::Source(s) if *s == IpAddr::V4(ip)));
        let tbl = m
            .attributes
            .iter()
            .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
            .unwrap_or(u32::from(m.header.table));
        if prio == Some(ENI_RULE_PRIORITY) && from {
            if tbl == table {
                return Ok(());
            }
            // A stale rule for this IP (an earlier ENI with another device number).
            match h.rule().del(m).execute().await {
                Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(failed("deleting a stale rule", e)),
                _ => {}
            }
        }
    }
    let mut req = h
        .rule()
        .add()
        .v4()
        .source_prefix(ip, 32)
        .table_id(table)
        .priority(ENI_RULE_PRIORITY)
        .action(RuleAction::ToTable);
    req.message_mut().attributes.push(RuleAttribute::Protocol(PROTO));
    match req.execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => {
            Err(failed(&format!("adding the rule from {ip} lookup {table}"), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::NodeSysctls;

    fn node(ip_forward: &str, all: &str, interface: &str) -> NodeSysctls {
        NodeSysctls {
            interface: "eth0".into(),
            ip_forward: ip_forward.into(),
            rp_filter_all: all.into(),
            rp_filter: interface.into(),
        }
    }

    #[test]
    fn the_kernel_applies_the_larger_of_all_and_the_interfaces_rp_filter() {
        // max(all, interface): 2 (loose) wins over 1 (strict), 1 over 0 (off).
        // `all` and `default` are refused as interfaces (they would change every interface).
        assert!(NodeSysctls::read("all").is_err() && NodeSysctls::read("default").is_err());
        assert!(node("1", "1", "2").is_ready());
        assert!(node("1", "2", "0").is_ready());
        assert!(node("1", "0", "0").is_ready());
        assert!(!node("1", "0", "1").is_ready());
        assert!(!node("1", "1", "0").is_ready());
        assert!(!node("0", "2", "2").is_ready(), "no forwarding");
        assert!(!node("1", "?", "?").is_ready(), "values that are not numbers count as strict");
    }
}

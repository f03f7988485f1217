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
use std::path::PathBuf;

use enipool_nodenet::netlink::{self, Handle, ThreadError, add_rule, delete_rule, errno, link_by_mac};
use enipool_nodenet::view::{RouteView, rule};
use enipool_nodenet::{ENI_RULE_PRIORITY, MAIN_TABLE, PROTO};
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

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

impl From<ThreadError> for HostError {
    fn from(e: ThreadError) -> HostError {
        failed("the host netlink thread", e)
    }
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
        netlink::on_own_thread(self.netns.as_deref(), f).await
    }

    /// Checks the node-wide sysctls with the interface that has `primary_mac` as the primary one;
    /// writes what is wrong if it can. Returns the interface's name.
    pub async fn setup_node(&self, primary_mac: &str) -> Result<String, HostError> {
        let mac = primary_mac.to_string();
        self.run(move |h| async move {
            let name = host_link_by_mac(&h, &mac).await?.1;
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
            let h = netlink::connect().map_err(|e| failed("opening a netlink socket", e))?;
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
    let routes = netlink::routes(h).await.map_err(|e| failed("listing routes", e))?;
    // The default route the kernel uses: the lowest metric. A multipath or nexthop-object route
    // names no single interface: then the operator says which (--interface).
    let index = routes
        .iter()
        .map(RouteView::from_message)
        .filter(|r| r.prefix_len == 0 && r.table == MAIN_TABLE)
        .filter_map(|r| Some((r.metric.unwrap_or(0), r.oif?)))
        .min()
        .map(|(_, oif)| oif)
        .ok_or_else(|| {
            failed(
                "finding the primary interface",
                "no IPv4 default route through a single interface in the main table; give --interface \
                 (ENIPOOL_PRIMARY_INTERFACE)",
            )
        })?;
    let link = netlink::link_by_index(h, index).await.map_err(|e| failed("reading an interface", e))?;
    link.map(|l| l.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| failed("finding the primary interface", format!("interface {index} has no name")))
}

/// The (index, name) of the interface with this MAC; `NotFound` while there is none.
async fn host_link_by_mac(h: &Handle, mac: &str) -> Result<(u32, String), HostError> {
    let link = link_by_mac(h, mac).await.map_err(|e| failed("listing interfaces", e))?;
    link.map(|l| (l.index, l.name)).ok_or_else(|| HostError::NotFound(mac.to_string()))
}

impl HostNet {
    /// Sets up one secondary ENI; returns its interface name.
    pub async fn setup_eni(&self, eni: EniHost) -> Result<String, HostError> {
        self.run(move |h| async move {
            let (index, name) = host_link_by_mac(&h, &eni.mac).await?;
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
                .protocol(RouteProtocol::Other(PROTO))
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
                .protocol(RouteProtocol::Other(PROTO))
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

fn write_sysctl(path: &str, value: &str) -> Result<(), HostError> {
    std::fs::write(path, value).map_err(|e| failed(&format!("writing {value} to {path}"), e))
}

/// `from <ip>/32 lookup <table>` at our priority, exactly once.
async fn ensure_rule(h: &Handle, ip: Ipv4Addr, table: u32) -> Result<(), HostError> {
    let rules = netlink::rules(h).await.map_err(|e| failed("listing rules", e))?;
    for (m, v) in rules {
        let Some(v) = v else { continue };
        if v.priority == ENI_RULE_PRIORITY && v.from && v.ip == ip {
            if v.table == table {
                return Ok(());
            }
            // A stale rule for this IP (an earlier ENI with another device number).
            delete_rule(h, m).await.map_err(|e| failed("deleting a stale rule", e))?;
        }
    }
    add_rule(h, rule(ENI_RULE_PRIORITY, ip, true, table))
        .await
        .map_err(|e| failed(&format!("adding the rule from {ip} lookup {table}"), e))?;
    Ok(())
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

//! The six CNI commands. `run` is the whole plugin minus process I/O: environment and stdin in,
//! stdout bytes and exit code out, so tests can feed it anything.

use std::net::Ipv4Addr;

use enipool_api::{self as api, FieldError};
use enipool_nodenet::alias::{AliasInfo, attachment_tag, host_veth_alias, key_attachment_tag};
use enipool_nodenet::format_mac;
use enipool_nodenet::netlink;
use enipool_nodenet::netns::{NetNs, NetnsState, OpenError, netns_state};
use serde_json::Value;

use crate::config::{self, LogLevel, NetConf};
use crate::daemon_client::Daemon;
use crate::net::{self, PodSpec, Undo, VethSpec};
use crate::protocol::{self, CniArgs, CniError, CniResult, Command, Env, Interface, IpConfig, Route, code};
use crate::{log, snat};

pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit: u8,
}

/// Test-only fault injection: the step after which ADD fails as if the kernel had refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailAt {
    AfterWire,
}

impl FailAt {
    /// Only builds with debug assertions read the hook (main.rs `test_fault`).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn parse(s: &str) -> Option<FailAt> {
        match s {
            "after-wire" => Some(FailAt::AfterWire),
            _ => None,
        }
    }
}

pub fn run(env: &Env, stdin: &[u8], fail_at: Option<FailAt>) -> Outcome {
    let version =
        config::sniff_version(stdin).filter(|v| protocol::is_supported(v)).unwrap_or(protocol::LATEST_VERSION.into());
    match run_command(env, stdin, fail_at) {
        Ok(None) => Outcome { stdout: Vec::new(), exit: 0 },
        Ok(Some(v)) => {
            let mut stdout = serde_json::to_vec(&v).unwrap_or_default();
            stdout.push(b'\n');
            Outcome { stdout, exit: 0 }
        }
        Err(e) => {
            log::log(LogLevel::Error, &e.to_string());
            let mut stdout = serde_json::to_vec(&e.to_json(&version)).unwrap_or_default();
            stdout.push(b'\n');
            Outcome { stdout, exit: 1 }
        }
    }
}

fn run_command(env: &Env, stdin: &[u8], fail_at: Option<FailAt>) -> Result<Option<Value>, CniError> {
    let command = env.command()?;
    if command == Command::Version {
        return Ok(Some(protocol::version_info(config::sniff_version(stdin).as_deref())));
    }
    let conf = config::parse(stdin)?;
    let container = env.optional("CNI_CONTAINERID").ok().flatten().unwrap_or("-");
    log::init(conf.log_file.clone(), conf.log_max_bytes, conf.log_level, env.required("CNI_COMMAND")?, container);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::INTERNAL, format!("cannot start the async runtime: {e}")))?;
    match (command, &conf.prev_result_error) {
        (Command::Add | Command::Check, _) => {
            conf.checked_prev_result()?;
        }
        (Command::Del, Some(why)) => log::warn(&format!("DEL: ignoring prevResult, which {why}")),
        _ => {}
    }
    let result = rt.block_on(async {
        match command {
            Command::Add => add(env, &conf, fail_at).await.map(Some),
            Command::Del => del(env, &conf).await.map(|()| None),
            Command::Check => check(env, &conf).await.map(|()| None),
            Command::Status => status(&conf).await.map(|()| None),
            Command::Gc => gc(&conf).await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    });
    // The process exits right after printing: the kernel frees the runtime's sockets and buffers
    // at exit faster than its destructors (-0.14 ms of ADD's 2.6 ms, alternating runs).
    std::mem::forget(rt);
    result
}

/// The CNI_* variables every per-attachment command needs, checked.
struct Attachment<'a> {
    container_id: &'a str,
    ifname: &'a str,
    args: CniArgs,
}

fn env_field(name: &str) -> impl FnOnce(FieldError) -> CniError + '_ {
    move |e| CniError::env(format!("{name}: {}", e.reason))
}

fn attachment(env: &Env) -> Result<Attachment<'_>, CniError> {
    let container_id = env.required("CNI_CONTAINERID")?;
    api::check_container_id(container_id).map_err(env_field("CNI_CONTAINERID"))?;
    let ifname = env.required("CNI_IFNAME")?;
    api::check_ifname(ifname).map_err(env_field("CNI_IFNAME"))?;
    let args = protocol::parse_cni_args(env.optional("CNI_ARGS")?.unwrap_or(""))?;
    Ok(Attachment { container_id, ifname, args })
}

fn host_veth_for(conf: &NetConf, a: &Attachment<'_>) -> String {
    let pod = match (&a.args.pod_namespace, &a.args.pod_name) {
        (Some(ns), Some(name)) => Some((ns.as_str(), name.as_str())),
        _ => None,
    };
    net::host_veth_name(&conf.veth_prefix, pod, a.container_id)
}

async fn host_netlink() -> Result<netlink::Handle, CniError> {
    netlink::connect().map_err(|e| CniError::kernel("opening a netlink socket", e))
}

fn pod_netlink(ns: &NetNs) -> Result<netlink::Handle, CniError> {
    netlink::connect_in(ns)
        .map_err(|e| CniError::kernel(format!("opening a netlink socket in {}", ns.path().display()), e))
}

/// Opens CNI_NETNS. A path that does not exist is code 3 (the container is gone); a path that
/// is not a network namespace is code 4 (CNI_NETNS is invalid).
fn open_netns(path: &str) -> Result<NetNs, CniError> {
    NetNs::open(path).map_err(|e| match e {
        OpenError::Missing(_) => CniError::new(code::UNKNOWN_CONTAINER, format!("CNI_NETNS {e}")),
        _ => CniError::env(format!("CNI_NETNS {e}")),
    })
}

/// The gateway the lease gives the pod (169.254.1.1).
fn lease_gateway(lease: &api::Lease) -> Result<Ipv4Addr, CniError> {
    lease
        .gateway
        .parse()
        .map_err(|_| CniError::new(code::DAEMON, format!("enipoold leased an invalid gateway {:?}", lease.gateway)))
}

fn lease_ip(lease: &api::Lease) -> Result<Ipv4Addr, CniError> {
    lease.ip.parse().map_err(|_| CniError::new(code::DAEMON, format!("enipoold leased an invalid IP {:?}", lease.ip)))
}

async fn add(env: &Env, conf: &NetConf, fail_at: Option<FailAt>) -> Result<Value, CniError> {
    let a = attachment(env)?;
    let netns_path = env.required("CNI_NETNS")?;
    let network = conf.network()?;
    let mut request = api::LeaseRequest {
        network: network.to_string(),
        container_id: a.container_id.to_string(),
        ifname: a.ifname.to_string(),
        pod_namespace: a.args.pod_namespace.clone(),
        pod_name: a.args.pod_name.clone(),
        netns: Some(netns_path.to_string()),
        host_veth: Some(host_veth_for(conf, &a)),
    };
    request.validate().map_err(|e| match e.field {
        "network" => CniError::config("name", e.reason),
        "pod_namespace" | "pod_name" => CniError::env(format!("CNI_ARGS: {e}")),
        _ => CniError::env(format!("{e}")),
    })?;

    // Everything that can be refused without side effects comes before the lease (and the veth).
    let started = std::time::Instant::now();
    let ns = open_netns(netns_path)?;
    let mut daemon = Daemon::new(&conf.socket);
    // Connected now, the connection task is idle and ready by the time the lease is sent.
    daemon.connect().await?;
    let host = host_netlink().await?;
    let pod = pod_netlink(&ns)?;
    net::ensure_absent_in_pod(&pod, a.ifname, netns_path).await?;
    let (host_veth, stale) = choose_host_veth(&host, &mut daemon, conf, &a, network).await?;
    request.host_veth = Some(host_veth.clone());

    let prepared = started.elapsed();
    let mut undo = Undo::default();
    let veth_spec = VethSpec { ifname: a.ifname, host_veth: &host_veth, stale_veth: None, netns_fd: ns.fd() };
    // The veth pair is made while the lease is on the wire (the lease is mostly the daemon's
    // fdatasync): unaliased until wired, no one else takes it for ours meanwhile. A stale veth
    // holding the name may only go once the lease is held (see below), so then it waits.
    let (lease, early_veth) = if stale.is_none() {
        let create = async {
            // The runtime has one thread and the kernel creates the veth inside the request's
            // send: let the connection task write the lease request first. The write wakes the
            // daemon onto this CPU (a socket wake-up is a "sync" one: the scheduler expects the
            // writer to sleep next), where it would wait out the whole creation; the other CPU,
            // idle, takes ~0.5 ms to wake on a VM. So give the CPU up once: the daemon reads the
            // request and starts its fdatasync, and the creation runs during the sync.
            tokio::task::yield_now().await;
            std::thread::yield_now();
            net::create_veth(&host, &pod, &veth_spec, &mut undo).await
        };
        let (lease, veth) = tokio::join!(daemon.lease(&request), create);
        (lease, Some(veth))
    } else {
        (daemon.lease(&request).await, None)
    };
    let lease = match lease {
        Ok(lease) => lease,
        Err(e) => {
            for problem in undo.run(&host).await {
                log::warn(&format!("rollback: {problem}"));
            }
            return Err(e);
        }
    };
    let leased = started.elapsed();
    log::info(&format!(
        "leased {} on {} (table {}) for {network}/{}",
        lease.ip, lease.eni_id, lease.route_table, a.ifname
    ));

    let outcome = async {
        let ip = lease_ip(&lease)?;
        let gateway = lease_gateway(&lease)?;
        if !(68..=65535).contains(&lease.mtu) {
            return Err(CniError::new(code::DAEMON, format!("enipoold sent an invalid MTU {}", lease.mtu)));
        }
        let snat = if lease.snat.enabled { Some(snat::SnatSpec::from_lease(&lease.snat)?) } else { None };
        let veth = match early_veth {
            Some(veth) => veth?,
            None => {
                // The dead pod whose veth we replace must still be dead now that we hold a
                // lease (its lease may have been rebuilt meanwhile by a daemon that was starting).
                if let Some((_, alias)) = &stale
                    && !alias.names(network, a.container_id, a.ifname)
                    && !attachment_gone(&mut daemon, alias).await?
                {
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "host veth {host_veth} belongs to a live pod after all; try again (another name is chosen)"
                        ),
                    ));
                }
                let spec = VethSpec { stale_veth: stale.as_ref().map(|(index, _)| *index), ..veth_spec };
                net::create_veth(&host, &pod, &spec, &mut undo).await?
            }
        };
        let spec = PodSpec {
            alias: host_veth_alias(network, a.container_id, a.ifname),
            ip,
            gateway,
            mtu: lease.mtu,
            route_table: lease.route_table,
        };
        net::wire(&host, &pod, &veth, &spec, &mut undo).await?;
        log::debug(&format!("wired in {:?}", started.elapsed() - leased));
        if fail_at == Some(FailAt::AfterWire) {
            return Err(CniError::new(code::KERNEL, "injected failure after wiring (ENIPOOL_CNI_TEST_FAIL_AT)"));
        }
        if let Some(s) = &snat {
            let before = started.elapsed();
            snat::ensure(s, &conf.state_dir, conf.iptables, conf.lock_timeout)?;
            log::debug(&format!("SNAT ensured in {:?}", started.elapsed() - before));
        }
        Ok((ip, gateway, veth))
    }
    .await;
    let (ip, gateway, veth) = match outcome {
        Ok(v) => v,
        Err(e) => {
            for problem in undo.run(&host).await {
                log::warn(&format!("rollback: {problem}"));
            }
            if let Err(re) = daemon.release(network, a.container_id, a.ifname).await {
                log::warn(&format!("rollback: releasing the lease: {re}"));
                return Err(e.with_details(format!("and the lease of {} could not be released: {}", lease.ip, re.msg)));
            }
            return Err(e);
        }
    };
    log::debug(&format!(
        "ADD took {:?} (netns and sockets {prepared:?}, lease {:?} while the veth was made)",
        started.elapsed(),
        leased - prepared
    ));
    let ours = CniResult {
        interfaces: vec![
            Interface { name: host_veth.clone(), mac: format_mac(&veth.host_mac), mtu: Some(lease.mtu), sandbox: None },
            Interface {
                name: a.ifname.to_string(),
                mac: format_mac(&veth.pod_mac),
                mtu: Some(lease.mtu),
                sandbox: Some(netns_path.to_string()),
            },
        ],
        ips: vec![IpConfig { address: format!("{ip}/32"), gateway: Some(gateway.to_string()), interface: Some(1) }],
        routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some(gateway.to_string()) }],
    };
    Ok(protocol::encode_result(&ours, &conf.cni_version, conf.prev_result.as_ref()))
}

/// The host veth name for this attachment, chosen before the lease so that the lease records it,
/// and a dead veth of ours holding that name (its index and alias), to delete first. An interface holding the usual
/// name is replaced only when it is ours and its attachment is gone (the daemon holds no lease
/// for it, or that lease's pod namespace is gone), or when it is this very attachment's (the
/// runtime is adding it again, and its pod side is gone: `ensure_absent_in_pod` passed).
/// Anything else (a live pod that shares the 44-bit name, another plugin's interface) keeps its
/// name, and this pod gets another.
async fn choose_host_veth(
    host: &netlink::Handle,
    daemon: &mut Daemon,
    conf: &NetConf,
    a: &Attachment<'_>,
    network: &str,
) -> Result<(String, Option<(u32, AliasInfo)>), CniError> {
    const ALTERNATES: u32 = 8;
    let usual = host_veth_for(conf, a);
    let alternates = (1..=ALTERNATES)
        .map(|n| net::alternate_host_veth_name(&conf.veth_prefix, network, a.container_id, a.ifname, n));
    for name in std::iter::once(usual).chain(alternates) {
        match net::name_holder(host, &name).await? {
            net::NameHolder::Nobody => return Ok((name, None)),
            net::NameHolder::Ours { index, alias } => {
                if alias.names(network, a.container_id, a.ifname) || attachment_gone(daemon, &alias).await? {
                    log::info(&format!("host veth {name} is left by a pod that is gone; replacing it"));
                    return Ok((name, Some((index, alias))));
                }
                log::info(&format!("host veth name {name} is held by a live pod; trying another"));
            }
            net::NameHolder::Foreign => log::info(&format!("host interface {name} is not ours; trying another name")),
        }
    }
    Err(CniError::new(
        code::INTERFACE_EXISTS,
        format!("every host veth name this pod may use is held by a live interface ({} tried)", ALTERNATES + 1),
    ))
}

/// Whether the attachment a veth of ours names is gone: no lease, or a lease whose pod network
/// namespace no longer exists. An alias without the attachment in clear (an older plugin's)
/// cannot be judged: the veth is then treated as live.
async fn attachment_gone(daemon: &mut Daemon, alias: &AliasInfo) -> Result<bool, CniError> {
    let Some((network, container_id, ifname)) = &alias.attachment else { return Ok(false) };
    Ok(match daemon.get_lease(network, container_id, ifname).await? {
        None => true,
        Some(lease) => lease.netns.as_deref().is_some_and(|p| netns_state(std::path::Path::new(p)) == NetnsState::Gone),
    })
}

/// Our IPv4 address and host veth as a prevResult records them (best effort: DEL must not fail on
/// a prevResult it cannot read).
fn from_prev_result(conf: &NetConf, ifname: &str) -> (Option<Ipv4Addr>, Option<String>) {
    let Some(prev) = conf.prev_result.as_ref().and_then(|p| protocol::decode_prev_result(p).ok()) else {
        return (None, None);
    };
    let ours = |ip: &IpConfig| {
        ip.interface.and_then(|i| prev.interfaces.get(i)).is_none_or(|i| i.name == ifname && i.sandbox.is_some())
    };
    let parse = |ip: &IpConfig| ip.address.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok());
    let ip = prev.ips.iter().filter(|ip| ours(ip)).find_map(parse);
    let veth = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name.starts_with(&conf.veth_prefix))
        .map(|i| i.name.clone());
    (ip, veth)
}

async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let started = std::time::Instant::now();
    let a = attachment(env)?;
    let network = conf.network()?;
    let (prev_ip, prev_veth) = from_prev_result(conf, a.ifname);
    let mut daemon = Daemon::new(&conf.socket);
    // The daemon's lease is the truth about the IP. Without it (no lease, or the daemon is down)
    // only what provably is this attachment's goes: the host route of prevResult's IP and our
    // rules for it, when that route still goes out of a veth whose alias names this attachment.
    // Otherwise the first DEL already removed them, or the IP is someone else's by now.
    let (lease, daemon_down) = match daemon.get_lease(network, a.container_id, a.ifname).await {
        Ok(lease) => (lease, None),
        Err(e) if e.code == code::TRY_AGAIN_LATER => (None, Some(e)),
        Err(e) => return Err(e),
    };
    let Some(lease) = lease else {
        if let Some(ip) = prev_ip {
            let host = host_netlink().await?;
            if net::unwire_host_if_ours(&host, ip, network, a.container_id, a.ifname).await? {
                log::info(&format!("removed the host route and rules of {ip} (no lease to release)"));
            }
        }
        if let Some(e) = daemon_down {
            log::warn(&format!("DEL without the daemon (it reclaims the lease later): {e}"));
        }
        return Ok(());
    };
    let looked_up = started.elapsed();
    let ip = lease_ip(&lease)?;
    let host_veth = lease.host_veth.clone().or(prev_veth).unwrap_or_else(|| host_veth_for(conf, &a));
    let host = host_netlink().await?;
    net::unwire_host(&host, &host_veth, ip, true).await?;
    let unwired = started.elapsed();
    match daemon.release(network, a.container_id, a.ifname).await {
        Ok(()) => log::info(&format!("released {ip}")),
        Err(e) if e.code == code::TRY_AGAIN_LATER => {
            log::warn(&format!("releasing the lease failed; the daemon reclaims it later: {e}"));
        }
        Err(e) => return Err(e),
    }
    log::debug(&format!(
        "DEL took {:?} (lease lookup {looked_up:?}, host unwired after {unwired:?})",
        started.elapsed()
    ));
    Ok(())
}

async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let a = attachment(env)?;
    let netns_path = env.required("CNI_NETNS")?;
    let network = conf.network()?;
    if conf.prev_result.is_none() {
        return Err(CniError::config("prevResult", "is required for CHECK"));
    }
    let (prev_ip, prev_veth) = from_prev_result(conf, a.ifname);
    let prev_ip = prev_ip.ok_or_else(|| CniError::config("prevResult", "holds no IPv4 address of this interface"))?;
    let ns = open_netns(netns_path)?;
    let mut daemon = Daemon::new(&conf.socket);
    let Some(lease) = daemon.get_lease(network, a.container_id, a.ifname).await? else {
        return Err(CniError::new(
            code::CHECK_MISMATCH,
            format!("CHECK: enipoold holds no lease for {network}/{}/{}", a.container_id, a.ifname),
        ));
    };
    let ip = lease_ip(&lease)?;
    let gateway = lease_gateway(&lease)?;
    let host_veth = lease.host_veth.clone().or(prev_veth).unwrap_or_else(|| host_veth_for(conf, &a));
    let mut bad = Vec::new();
    if ip != prev_ip {
        bad.push(format!("prevResult has {prev_ip}, enipoold's lease has {ip}"));
    }
    let host = host_netlink().await?;
    let pod = pod_netlink(&ns)?;
    let expected = net::Expected {
        ifname: a.ifname,
        host_veth: &host_veth,
        ip: prev_ip,
        gateway,
        mtu: lease.mtu,
        route_table: lease.route_table,
    };
    bad.extend(net::check(&host, &pod, &expected).await?);
    if lease.snat.enabled {
        bad.extend(snat::check(&snat::SnatSpec::from_lease(&lease.snat)?, conf.iptables)?);
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(CniError::new(code::CHECK_MISMATCH, format!("CHECK found {} mismatch(es): {}", bad.len(), bad.join("; "))))
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    let mut daemon = Daemon::new(&conf.socket);
    match daemon.readiness().await {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(CniError::new(code::NOT_READY, format!("enipoold is not ready: {reason}"))),
        Err(e) => Err(CniError::new(code::NOT_READY, e.msg)),
    }
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let network = conf.network()?;
    let key = "cni.dev/valid-attachments";
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| CniError::config(key, "is required for GC"))?;
    let mut pairs = Vec::with_capacity(valid.len());
    for v in valid {
        api::check_container_id(&v.container_id).map_err(|e| CniError::config(key, e))?;
        api::check_ifname(&v.ifname).map_err(|e| CniError::config(key, e))?;
        pairs.push((v.container_id.clone(), v.ifname.clone()));
    }
    let request = api::GcRequest {
        network: network.to_string(),
        valid: pairs.iter().map(|(c, i)| api::Attachment { container_id: c.clone(), ifname: i.clone() }).collect(),
    };
    let host = host_netlink().await?;
    let snapshot = net::gc_snapshot(&host, network).await?;
    let mut daemon = Daemon::new(&conf.socket);
    let daemon_result = daemon.gc(&request).await;
    // Attachments the daemon still leases are kept too: it spares leases younger than its grace
    // period (an ADD the runtime has not listed yet), and their pods are wired.
    let mut keep: std::collections::HashSet<String> =
        pairs.iter().map(|(c, i)| attachment_tag(network, c, i)).collect();
    match &daemon_result {
        Ok(reply) => {
            log::info(&format!("GC: enipoold released {} lease(s)", reply.released.len()));
            match daemon.leases(network).await {
                Ok(leases) => {
                    keep.extend(leases.iter().map(|l| key_attachment_tag(&l.network, &l.container_id, &l.ifname)))
                }
                Err(e) => {
                    log::warn(&format!("GC: listing leases: {e}; leaving the kernel alone"));
                    return Err(e);
                }
            }
        }
        Err(e) => log::warn(&format!("GC: {e}")),
    }
    for done in net::gc(&host, &snapshot, &keep).await? {
        log::info(&format!("GC: {done}"));
    }
    daemon_result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_pods_gateway_is_the_one_the_lease_names() {
        let lease = |gateway: &str| -> api::Lease {
            serde_json::from_value(serde_json::json!({
                "network": "n", "container_id": "c", "ifname": "eth0", "pod_namespace": null,
                "pod_name": null, "netns": null, "host_veth": null, "created_at": 0, "ip": "10.0.0.5",
                "prefix_length": 32, "eni_id": "eni-1", "device_number": 1, "route_table": 2,
                "subnet_cidr": "10.0.0.0/24", "subnet_gateway": "10.0.0.1", "vpc_cidrs": [],
                "gateway": gateway, "mtu": 9001,
                "snat": {"enabled": false, "node_ip": "", "excluded_cidrs": [], "randomize": "none"}
            }))
            .unwrap()
        };
        assert_eq!(lease_gateway(&lease("169.254.1.1")).unwrap(), Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(lease_gateway(&lease("169.254.7.7")).unwrap(), Ipv4Addr::new(169, 254, 7, 7));
        assert_eq!(lease_gateway(&lease("not an address")).unwrap_err().code, code::DAEMON);
    }

    #[test]
    fn non_namespaces_are_refused_with_the_right_codes() {
        assert_eq!(open_netns("/nonexistent/netns").err().unwrap().code, code::UNKNOWN_CONTAINER);
        assert_eq!(open_netns("/etc/hostname").err().unwrap().code, code::INVALID_ENV);
        assert!(open_netns("/proc/self/ns/net").is_ok());
    }

    fn out(env: &[(&str, &str)], stdin: &str) -> (Value, u8) {
        let o = run(&Env::from_pairs(env.iter().copied()), stdin.as_bytes(), None);
        let v = if o.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&o.stdout).unwrap() };
        (v, o.exit)
    }

    #[test]
    fn version_needs_no_config() {
        let (v, exit) = out(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(exit, 0);
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let (v, _) = out(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn env_and_config_errors_have_spec_codes() {
        let conf = r#"{"cniVersion":"1.0.0","name":"net","type":"enipool-cni","socket":"/nonexistent/s.sock"}"#;
        let (v, exit) = out(&[], conf);
        assert_eq!((v["code"].as_u64(), exit), (Some(4), 1));
        assert_eq!(v["cniVersion"], "1.0.0", "errors answer in the request's version");
        let (v, _) = out(&[("CNI_COMMAND", "ADD")], conf);
        assert_eq!(v["code"], 4, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
        let add = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
        let (v, _) = out(&add, "{oops");
        assert_eq!(v["code"], 6);
        assert_eq!(v["cniVersion"], protocol::LATEST_VERSION);
        let (v, _) = out(&add, r#"{"cniVersion":"1.0.0","name":"net","vethPrefix":"waytoolong"}"#);
        assert_eq!(v["code"], 7);
        let (v, _) = out(&add, conf);
        assert_eq!(v["code"], 3, "a missing netns: {v}");
        let mut bad_args = add.to_vec();
        bad_args.push(("CNI_ARGS", "K8S_POD_NAME=p;NOPE=1"));
        let (v, _) = out(&bad_args, conf);
        assert_eq!(v["code"], 4, "{v}");
        let mut bad_id = add.to_vec();
        bad_id[1] = ("CNI_CONTAINERID", "../etc");
        let (v, _) = out(&bad_id, conf);
        assert_eq!(v["code"], 4, "{v}");
    }

    /// A CNI_NETNS that is a FIFO (opening it would wait for a writer forever), a directory or a
    /// plain file: ADD and CHECK fail at once with code 4, DEL carries on and exits 0.
    #[test]
    fn a_netns_that_is_not_a_namespace_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.7/32","interface":0}]}"#;
        let conf =
            format!(r#"{{"cniVersion":"1.0.0","name":"net","socket":"/nonexistent/s.sock","prevResult":{prev}}}"#);
        for path in [&fifo, dir.path(), &plain] {
            let path = path.to_str().unwrap();
            for command in ["ADD", "CHECK", "DEL"] {
                let env =
                    [("CNI_COMMAND", command), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", path)];
                let (v, exit) = out(&env, &conf);
                if command == "DEL" {
                    assert_eq!((&v, exit), (&Value::Null, 0), "DEL with {path}");
                } else {
                    assert_eq!(v["code"], 4, "{command} with {path}: {v}");
                    assert!(v["msg"].as_str().unwrap().contains("not a network namespace"), "{v}");
                }
            }
        }
    }

    /// DEL must clean up whatever prevResult holds; ADD and CHECK refuse a malformed one.
    #[test]
    fn a_malformed_prev_result_fails_add_but_not_del() {
        let conf = r#"{"cniVersion":"1.0.0","name":"net","socket":"/nonexistent/s.sock","prevResult":[1,2]}"#;
        let env = |cmd| {
            [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/nonexistent")]
        };
        let (v, exit) = out(&env("DEL"), conf);
        assert_eq!((v, exit), (Value::Null, 0), "DEL carries on (the daemon is unreachable: nothing to do)");
        let (v, _) = out(&env("ADD"), conf);
        assert_eq!(v["code"], 7, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("prevResult"), "{v}");
    }

    #[test]
    fn status_without_a_daemon_is_50() {
        let conf = r#"{"cniVersion":"1.1.0","name":"net","socket":"/nonexistent/s.sock"}"#;
        let (v, exit) = out(&[("CNI_COMMAND", "STATUS")], conf);
        assert_eq!((v["code"].as_u64(), exit), (Some(50), 1), "{v}");
        assert!(v["msg"].as_str().unwrap().contains("unreachable"), "{v}");
    }

    #[test]
    fn prev_result_gives_del_its_ip_and_veth() {
        let conf = config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0",
            "interfaces":[{"name":"eniabc","mac":"02:00:00:00:00:01"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.0.0.7/32","interface":1}]}}"#,
        )
        .unwrap();
        assert_eq!(from_prev_result(&conf, "eth0"), (Some(Ipv4Addr::new(10, 0, 0, 7)), Some("eniabc".to_string())));
        assert_eq!(from_prev_result(&conf, "eth1").0, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Garbage in: always one JSON object out, an error code when exit is non-zero, no panic.
        /// (The socket does not exist, so nothing here touches a daemon or, before it, the kernel
        /// beyond opening namespaces that do not exist.)
        #[test]
        fn garbage_never_panics(
            command in prop::sample::select(vec!["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "add", "\u{0}"]),
            container in "[ -~]{0,20}",
            ifname in "[ -~]{0,20}",
            args in "[ -~]{0,40}",
            stdin in prop::collection::vec(any::<u8>(), 0..200),
            json_stdin in r#"\{("cniVersion":"(1\.0\.0|0\.4\.0|x)",)?("name":"[a-z ]{0,5}",)?("vethPrefix":"[a-z]{0,6}",)?"socket":"/nonexistent/s"\}"#,
            use_json in any::<bool>(),
        ) {
            let env = Env::from_pairs([
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container.as_str()),
                ("CNI_IFNAME", ifname.as_str()),
                ("CNI_ARGS", args.as_str()),
                ("CNI_NETNS", "/nonexistent/netns"),
            ]);
            let input = if use_json { json_stdin.into_bytes() } else { stdin };
            let o = run(&env, &input, None);
            if o.exit == 0 {
                prop_assert!(o.stdout.is_empty() || serde_json::from_slice::<Value>(&o.stdout).is_ok());
            } else {
                let v: Value = serde_json::from_slice(&o.stdout).expect("an error object");
                prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0));
                prop_assert!(v["msg"].is_string());
                prop_assert!(v["cniVersion"].is_string());
            }
        }
    }
}

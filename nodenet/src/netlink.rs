//! Netlink handles bound to a namespace, errno mapping, and the list and delete calls every user
//! makes. A netlink socket belongs to the namespace of the thread that opened it: a socket in
//! another namespace is opened by a thread that enters it for that one call and returns before
//! anything else can run on it (no await in between), so no task ever runs in a namespace that is
//! not its thread's own.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::RuleMessage;
pub use rtnetlink::Handle;
use rtnetlink::{IpVersion, RouteMessageBuilder};

use crate::netns::NetNs;
use crate::view::{Link, RuleView};

/// What a netlink request fails with.
pub type Error = rtnetlink::Error;

/// The errno of a kernel refusal (`EEXIST`, `ENOENT`, ...); None for anything else.
pub fn errno(e: &Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A handle in the calling thread's namespace; its connection runs on the current tokio runtime.
pub fn connect() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A handle whose socket lives in `ns`; its connection runs on the current tokio runtime (the
/// socket keeps its namespace wherever it is polled). The calling thread enters `ns` for the
/// socket(2) call only: a thread of its own cost the plugin's ADD a clone and, on an idle
/// machine, the wake-up of another CPU (~0.2 ms).
pub fn connect_in(ns: &NetNs) -> io::Result<Handle> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    enter(ns.fd())?;
    let made = rtnetlink::new_connection();
    if let Err(e) = enter(home.as_raw_fd()) {
        // Holding the fd of the namespace we came from, with the privilege that just entered
        // another, this cannot fail; if it ever does, nothing more may run on this thread.
        return Err(io::Error::other(format!(
            "returning to the thread's own network namespace failed ({e}): this thread is left in {}",
            ns.path().display()
        )));
    }
    let (conn, handle, _) = made?;
    tokio::spawn(conn);
    Ok(handle)
}

fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) changes only the calling thread's namespace; callers either run it on a
    // thread of their own or return to their namespace before anything else runs on the thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why [`on_own_thread`] could not run its work.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("opening {}: {error}", .path.display())]
    OpenNamespace { path: PathBuf, error: io::Error },
    #[error("entering {}: {error}", .path.display())]
    EnterNamespace { path: PathBuf, error: io::Error },
    #[error("starting the netlink thread: {0}")]
    Start(io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(io::Error),
    #[error("the netlink thread ended without an answer")]
    NoAnswer,
}

/// Runs `f` on a fresh thread, inside `netns` (None: the process's own), with a runtime and a
/// netlink handle of its own. For long-lived processes whose runtime threads must never switch
/// namespace (the daemon); the work is done before the thread ends.
pub async fn on_own_thread<T, E, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<ThreadError> + Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    let netns = netns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("enipool-netlink".into())
        .spawn(move || {
            let result = (|| {
                if let Some(path) = &netns {
                    let file = std::fs::File::open(path)
                        .map_err(|error| ThreadError::OpenNamespace { path: path.clone(), error })?;
                    enter(file.as_raw_fd())
                        .map_err(|error| ThreadError::EnterNamespace { path: path.clone(), error })?;
                }
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ThreadError::Start)?;
                rt.block_on(async move {
                    let handle = connect().map_err(ThreadError::Socket)?;
                    f(handle).await
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(ThreadError::Start)?;
    rx.await.map_err(|_| ThreadError::NoAnswer)?
}

/// Every link.
pub async fn links(h: &Handle) -> Result<Vec<Link>, Error> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// The link of this name, if there is one.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>, Error> {
    first_link(h.link().get().match_name(name.to_string()).execute()).await
}

/// The link of this index, if there is one.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>, Error> {
    first_link(h.link().get().match_index(index).execute()).await
}

async fn first_link(
    mut s: impl futures_util::Stream<Item = Result<LinkMessage, Error>> + Unpin,
) -> Result<Option<Link>, Error> {
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(Link::from_message)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The interface (not a loopback) with this MAC, if there is one.
pub async fn link_by_mac(h: &Handle, mac: &str) -> Result<Option<Link>, Error> {
    Ok(links(h).await?.into_iter().find(|l| l.has_mac(mac)))
}

/// Deletes a link; one already gone is fine.
pub async fn delete_link(h: &Handle, index: u32) -> Result<(), Error> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// Every IPv4 route, of every table.
pub async fn routes(h: &Handle) -> Result<Vec<RouteMessage>, Error> {
    h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await
}

/// Every IPv4 rule, with its view (None for rules of a shape we never make).
pub async fn rules(h: &Handle) -> Result<Vec<(RuleMessage, Option<RuleView>)>, Error> {
    let msgs: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await?;
    Ok(msgs.into_iter().map(|m| (RuleView::from_message(&m), m)).map(|(v, m)| (m, v)).collect())
}

/// Adds a rule; one already there is fine. Returns whether this call added it.
pub async fn add_rule(h: &Handle, m: RuleMessage) -> Result<bool, Error> {
    let mut req = h.rule().add().v4();
    *req.message_mut() = m;
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a rule; one already gone is fine.
pub async fn delete_rule(h: &Handle, m: RuleMessage) -> Result<(), Error> {
    match h.rule().del(m).execute().await {
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Deletes a route; one already gone is fine.
pub async fn delete_route(h: &Handle, m: RouteMessage) -> Result<(), Error> {
    match h.route().del(m).execute().await {
        Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
        r => r,
    }
}

/// The namespace id (as this handle's namespace numbers it) of every namespace mounted in `dir`
/// (`/run/netns`), to its path. Unreadable entries are skipped. A namespace mounted under two
/// names (`ip netns attach` while debugging) is left out: either name could go while the other
/// stays, so neither says whether the namespace lives.
pub async fn netns_paths_by_id(h: &Handle, dir: &Path) -> std::collections::HashMap<i32, String> {
    let mut by_id = std::collections::HashMap::<i32, Vec<String>>::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Default::default() };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file) = std::fs::File::open(&path) else { continue };
        if let Ok(Some(id)) = netns_id(h, &file).await {
            by_id.entry(id).or_default().push(path.to_string_lossy().into_owned());
        }
    }
    by_id
        .into_iter()
        .filter_map(|(id, paths)| match paths.as_slice() {
            [only] => Some((id, only.clone())),
            _ => None,
        })
        .collect()
}

/// RTM_GETNSID for an open namespace file: its id, if one is assigned (a veth peer there has one).
async fn netns_id(h: &Handle, file: &std::fs::File) -> Result<Option<i32>, Error> {
    use futures_util::StreamExt;
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
    use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};

    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(file.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut replies = h.clone().request(req)?;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::mpsc;

    use super::*;

    fn own_namespace() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").expect("own netns").ino()
    }

    /// A fresh namespace, alive while the returned sender is: a thread unshares into it and
    /// waits (no mount, nothing in the machine's namespace changes).
    fn fresh_namespace() -> (NetNs, mpsc::Sender<()>) {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // SAFETY: unshare(2) changes only this thread's namespace; the thread does nothing else.
            let made = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
            let opened = made.then(|| NetNs::open("/proc/thread-self/ns/net").expect("opening the fresh namespace"));
            ready_tx.send(opened).unwrap();
            let _ = done_rx.recv();
        });
        let ns = ready_rx.recv().unwrap().expect("unshare(CLONE_NEWNET) needs root");
        (ns, done_tx)
    }

    #[test]
    fn connect_in_opens_the_socket_there_and_leaves_the_thread_at_home() {
        let (ns, _alive) = fresh_namespace();
        let home = own_namespace();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let names = rt.block_on(async {
            let h = connect_in(&ns).expect("a socket in the fresh namespace");
            links(&h).await.expect("links").into_iter().map(|l| l.name).collect::<Vec<_>>()
        });
        assert_eq!(names, ["lo"], "the socket lists the fresh namespace's links");
        assert_eq!(own_namespace(), home, "the calling thread is back in its own namespace");
    }
}

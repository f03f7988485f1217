//! Network namespaces: opening the pod's, and a netlink socket inside it. A netlink socket
//! belongs to the namespace of the thread that opened it, so the pod-side socket is opened on a
//! dedicated short-lived thread that has setns()'d into the pod's namespace; the runtime's
//! threads never switch namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::protocol::{CniError, code};

/// `NSFS_MAGIC`: the filesystem type of /proc/<pid>/ns/* and of their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `SO_NETNS_COOKIE` (Linux 5.14+): a 64-bit id of a network namespace, never reused while the
/// kernel runs.
const SO_NETNS_COOKIE: libc::c_int = 71;

pub struct NetNs {
    file: File,
    pub path: String,
}

impl NetNs {
    /// Opens CNI_NETNS. A path that does not exist is code 3 (the container is gone); a path that
    /// is not a network namespace is code 4 (CNI_NETNS is invalid).
    /// Never blocks: opened non-blocking (a FIFO would otherwise wait for a writer forever), and
    /// anything but a namespace file (a FIFO, a directory, a plain file) is refused at once.
    pub fn open(path: &str) -> Result<NetNs, CniError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    CniError::new(code::UNKNOWN_CONTAINER, format!("CNI_NETNS {path}: no such network namespace"))
                } else {
                    CniError::env(format!("CNI_NETNS {path}: cannot open: {e}"))
                }
            })?;
        // SAFETY: fstatfs writes into the zeroed struct we own; the fd is valid while `file` lives.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid fd and a struct we own.
        let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(CniError::env(format!("CNI_NETNS {path}: fstatfs: {}", io::Error::last_os_error())));
        }
        #[allow(clippy::unnecessary_cast)]
        if st.f_type as i64 != NSFS_MAGIC {
            return Err(CniError::env(format!("CNI_NETNS {path}: not a network namespace")));
        }
        Ok(NetNs { file, path: path.to_string() })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

pub type Connection =
    rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage, rtnetlink::sys::TokioSocket>;

/// A netlink connection in `ns`, opened on a dedicated thread that entered `ns`. The caller must
/// spawn the returned connection on its runtime.
pub fn netlink_in(ns: &NetNs, rt: &tokio::runtime::Handle) -> io::Result<(Connection, rtnetlink::Handle)> {
    let fd = ns.fd();
    let rt = rt.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _enter = rt.enter();
            // SAFETY: setns only changes this thread's namespace; the thread ends right after.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
    })
}

/// The current network namespace's cookie (SO_NETNS_COOKIE), to key node-wide markers by
/// namespace: unlike an inode number it is never reused.
pub fn current_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket syscalls on an fd we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_namespaces_are_refused_with_the_right_codes() {
        assert_eq!(NetNs::open("/nonexistent/netns").err().unwrap().code, code::UNKNOWN_CONTAINER);
        assert_eq!(NetNs::open("/etc/hostname").err().unwrap().code, code::INVALID_ENV);
        assert!(NetNs::open("/proc/self/ns/net").is_ok());
    }

    #[test]
    fn the_netns_cookie_is_stable() {
        assert_eq!(current_netns_cookie().unwrap(), current_netns_cookie().unwrap());
    }
}

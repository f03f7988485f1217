//! Network namespace files: opening a pod's (refusing anything that is not one, without ever
//! blocking), judging a path a lease recorded, and the namespace cookie.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// statfs(2)'s f_type of /proc/<pid>/ns/* and of their bind mounts (nsfs).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `SO_NETNS_COOKIE` (Linux 5.14+): a 64-bit id of a network namespace, never reused while the
/// kernel runs.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
fn is_nsfs(st: &libc::statfs) -> bool {
    st.f_type as i64 == NSFS_MAGIC
}

/// Why a namespace file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing at the path: the container is gone.
    #[error("{}: no such network namespace", .0.display())]
    Missing(PathBuf),
    #[error("{}: cannot open: {error}", .path.display())]
    Unopenable { path: PathBuf, error: io::Error },
    #[error("{}: fstatfs: {error}", .path.display())]
    Unreadable { path: PathBuf, error: io::Error },
    /// A file, a FIFO, a directory: anything but a mounted namespace.
    #[error("{}: not a network namespace", .0.display())]
    NotANamespace(PathBuf),
}

/// An open network namespace file.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a namespace file. Never blocks: opened non-blocking (a FIFO would otherwise wait
    /// for a writer forever), and anything but a namespace file is refused at once.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, OpenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => OpenError::Missing(path.clone()),
                _ => OpenError::Unopenable { path: path.clone(), error: e },
            })?;
        // SAFETY: fstatfs writes into the zeroed struct we own (zeroed is a valid value of this
        // plain C struct); the fd is valid while `file` lives.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid fd and a struct we own.
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            return Err(OpenError::Unreadable { path, error: io::Error::last_os_error() });
        }
        if !is_nsfs(&st) {
            return Err(OpenError::NotANamespace(path));
        }
        Ok(NetNs { file, path })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a lease's recorded namespace path says about its pod.
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsState {
    Alive,
    Gone,
    /// This process cannot tell; callers treat it as alive.
    Undecidable(String),
}

/// Judges a recorded namespace path: a mounted nsfs file is alive; a missing file in a directory
/// we can see is gone; anything else is undecidable (a `/proc/<pid>` path of a process we may
/// not see, a directory not visible here, a plain file where a mount should be).
pub fn netns_state(path: &Path) -> NetnsState {
    if path.starts_with("/proc") {
        return NetnsState::Undecidable(format!("{}: a process's namespace, which we may not see", path.display()));
    }
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return NetnsState::Undecidable(format!("{}: not a usable path", path.display()));
    };
    // SAFETY: zeroed is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads the NUL-terminated path and writes into the struct we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } == 0 {
        return if is_nsfs(&st) {
            NetnsState::Alive
        } else {
            NetnsState::Undecidable(format!(
                "{}: a file, not a mounted namespace (is /run/netns mounted with HostToContainer propagation?)",
                path.display()
            ))
        };
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::NotFound {
        match path.parent() {
            Some(dir) if dir.is_dir() => NetnsState::Gone,
            _ => NetnsState::Undecidable(format!("{}: its directory is not visible to this process", path.display())),
        }
    } else {
        NetnsState::Undecidable(format!("{}: {err}", path.display()))
    }
}

/// The current network namespace's cookie (SO_NETNS_COOKIE), to key node-wide markers by
/// namespace: unlike an inode number it is never reused.
pub fn current_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket syscalls on an fd we own and close; getsockopt writes at most `len`
    // bytes into the u64 we own.
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
    fn only_namespace_files_open() {
        assert!(matches!(NetNs::open("/nonexistent/netns"), Err(OpenError::Missing(_))));
        assert!(matches!(NetNs::open("/etc/hostname"), Err(OpenError::NotANamespace(_))));
        assert!(NetNs::open("/proc/self/ns/net").is_ok());
    }

    #[test]
    fn the_netns_cookie_is_stable() {
        assert_eq!(current_netns_cookie().unwrap(), current_netns_cookie().unwrap());
    }

    #[test]
    fn a_missing_namespace_in_a_visible_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(netns_state(&dir.path().join("cni-1234")), NetnsState::Gone);
    }

    #[test]
    fn a_plain_file_where_a_namespace_should_be_mounted_is_undecidable() {
        // Without mount propagation a live pod's namespace looks exactly like this.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("cni-1234");
        std::fs::write(&plain, "").unwrap();
        assert!(matches!(netns_state(&plain), NetnsState::Undecidable(_)));
    }

    #[test]
    fn paths_this_process_cannot_see_are_undecidable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(netns_state(&dir.path().join("no-such-dir/cni-1")), NetnsState::Undecidable(_)));
        assert!(matches!(netns_state(Path::new("/proc/999999999/ns/net")), NetnsState::Undecidable(_)));
    }

    #[test]
    fn our_own_namespace_is_alive() {
        // Through /proc this would be undecidable by design; /proc/self/ns/net is still nsfs, so
        // check the magic on a bind-free path: the thread's own namespace file via its fd.
        let f = File::open("/proc/self/ns/net").unwrap();
        let fd_path = format!("/dev/fd/{}", f.as_raw_fd());
        assert_eq!(netns_state(Path::new(&fd_path)), NetnsState::Alive);
    }
}

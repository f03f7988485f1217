//! A process confined as a container runtime starts the DaemonSet's main container: in the
//! node's network namespace, in a mount namespace of its own where /proc/sys is read-only, with
//! no new privileges, and with a capability bounding set of exactly the capabilities the
//! manifest adds (so root, after exec, holds those and no others). The test checks the result in
//! /proc/<pid>/status rather than trusting this code.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// CAP_NET_ADMIN's number (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

pub struct Confinement {
    netns: File,
    keep: Vec<u32>,
    last_cap: u32,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

impl Confinement {
    /// In the network namespace at `netns` (a path like /run/netns/x), keeping only `keep`.
    pub fn new(netns: &str, keep: &[u32]) -> Confinement {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .expect("reading cap_last_cap")
            .trim()
            .parse()
            .expect("cap_last_cap is a number");
        let netns = File::open(netns).unwrap_or_else(|e| panic!("opening {netns}: {e}"));
        Confinement { netns, keep: keep.to_vec(), last_cap }
    }

    /// The confinement, entered by the forked child before exec: system calls only.
    pub fn enter(&self) -> io::Result<()> {
        const ROOT: &CStr = c"/";
        const PROC_SYS: &CStr = c"/proc/sys";
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: plain system calls on this (single-threaded, forked) child; the strings are
        // NUL-terminated constants and the structs live on this stack.
        unsafe {
            check(libc::setns(self.netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here propagates back to the test's mounts.
            check(libc::mount(none, ROOT.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(PROC_SYS.as_ptr(), PROC_SYS.as_ptr(), none, libc::MS_BIND, std::ptr::null()))?;
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            check(libc::mount(none, PROC_SYS.as_ptr(), none, ro, std::ptr::null()))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            for cap in 0..=self.last_cap {
                if !self.keep.contains(&cap) {
                    check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0))?;
                }
            }
            // Root's permitted set after exec is its inheritable set plus the bounding set:
            // empty the inheritable set too.
            let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            check(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int)?;
            for d in &mut data {
                d.inheritable = 0;
            }
            check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int)?;
        }
        Ok(())
    }
}

/// A capability set from /proc/<pid>/status (`CapEff`, `CapPrm`, `CapBnd`...), as a bit mask.
pub fn capabilities(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/<pid>/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).expect("a hex capability mask")
}

/// `NoNewPrivs` from /proc/<pid>/status.
pub fn no_new_privs(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/<pid>/status");
    status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"])
}

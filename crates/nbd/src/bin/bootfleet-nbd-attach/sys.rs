//! The few system calls std does not offer: a generic netlink socket
//! (with multicast membership), detaching into the background, ignoring
//! termination signals, and keeping the helper's memory resident. Each
//! wraps one libc call.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A `NETLINK_GENERIC` socket bound to a kernel-assigned port.
pub(crate) struct NetlinkSocket {
    fd: OwnedFd,
}

impl NetlinkSocket {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and owned exactly once.
        let raw = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_GENERIC)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid (port 0: the kernel
        // assigns one; no groups).
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `address` is a valid sockaddr_nl of `len` bytes.
        let bound = unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), len) };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Receives the multicast group's messages too.
    pub(crate) fn join_group(&self, group: u32) -> io::Result<()> {
        let len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: the option value is a u32 of `len` bytes.
        let done = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&raw const group).cast(),
                len,
            )
        };
        if done < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Sends one request to the kernel.
    pub(crate) fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `message.len()` bytes.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Receives one datagram into `buffer`; its length. `ENOBUFS` means
    /// the kernel dropped messages for this socket.
    pub(crate) fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid and writable for its length.
            let got = unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if got >= 0 {
                return Ok(got as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

/// Forks; the parent exits with status 0 and the child continues in a
/// session of its own, so the caller (the initramfs) goes on while the
/// helper keeps watching.
pub(crate) fn continue_in_background() -> io::Result<()> {
    // SAFETY: the helper is single-threaded here, so the child may run
    // any code after fork(2).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        std::process::exit(0);
    }
    // SAFETY: setsid(2) has no memory arguments.
    unsafe { libc::setsid() };
    Ok(())
}

/// Ignores SIGTERM, SIGINT and SIGHUP: init systems send them to every
/// process at shutdown (and a closing console sends SIGHUP), while the
/// root disk still needs this one; only SIGKILL ends it.
pub(crate) fn ignore_termination_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// Locks the helper's pages in RAM: it must run while the disk it serves
/// is stalled, so it must never wait for memory that disk would free.
pub(crate) fn stay_resident() -> io::Result<()> {
    // SAFETY: mlockall(2) has no memory arguments.
    let done = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if done < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

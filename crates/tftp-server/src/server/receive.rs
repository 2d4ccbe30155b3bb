//! Receiving a datagram without the receive that is bound to fail.
//!
//! Tokio learns that a socket has nothing more to read only when a receive
//! fails with EAGAIN. In a TFTP transfer that costs one syscall per block
//! (about a quarter of the server's): after the ACK that confirms a window,
//! the client cannot send anything until the next window reaches it. The
//! caller knows that, so it says so, and the readiness is cleared along
//! with the datagram instead.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receives the datagram waiting on connected `socket` into `buf`; `None`
/// when there was none after all. When `settles` says nothing can follow
/// this datagram until we send, the socket is marked not ready.
///
/// Safe against lost wake-ups: tokio clears readiness only if no event has
/// arrived since it was observed, so a datagram that lands meanwhile still
/// wakes the task. One that was already queued behind (a duplicate ACK)
/// waits for the next arrival, which our next send provokes, or for the
/// retransmission timeout.
pub fn receive_settling(
    socket: &UdpSocket,
    buf: &mut [u8],
    settles: impl FnOnce(&[u8]) -> bool,
) -> io::Result<Option<usize>> {
    let mut received = None;
    let outcome = socket.try_io(Interest::READABLE, || {
        let len = recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?;
        received = Some(len);
        if settles(&buf[..len]) {
            // Tokio's way to clear readiness: the closure "would block".
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (received, outcome) {
        (Some(len), _) => Ok(Some(len)),
        (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(None),
    }
}

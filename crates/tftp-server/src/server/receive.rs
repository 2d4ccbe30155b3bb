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
/// reached it since the readiness was observed (an event tick guards the
/// clear), so a datagram that lands meanwhile still wakes the task — also
/// when another worker thread runs the I/O driver. One already queued behind
/// the settling datagram (a duplicate ACK) is reported again by our very
/// next send: epoll reports the socket's whole state with the write event.
/// The tests below hold tokio to this.
pub fn receive_settling(
    socket: &UdpSocket,
    buf: &mut [u8],
    settles: impl FnOnce(&[u8]) -> bool,
) -> io::Result<Option<usize>> {
    let mut settled = None;
    let received = socket.try_io(Interest::READABLE, || {
        let len = recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?;
        if settles(&buf[..len]) {
            settled = Some(len);
            // Tokio's way to clear readiness: the closure "would block".
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(len)
    });
    match received {
        Ok(len) => Ok(Some(len)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(settled),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (a, b)
    }

    /// A datagram that arrives while the settling one is being handled must
    /// still wake the receiver, though the clear comes after it: here the
    /// other worker's I/O driver sees it before the clear is attempted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_datagram_arriving_during_the_clear_is_not_lost() {
        let (a, b) = pair().await;
        b.send(b"first").await.unwrap();
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(2), a.readable()).await.unwrap().unwrap();
        let got = receive_settling(&a, &mut buf, |datagram| {
            assert_eq!(datagram, b"first");
            b.try_send(b"second").unwrap();
            // Long enough for the idle worker to take the event.
            std::thread::sleep(Duration::from_millis(50));
            true
        })
        .unwrap();
        assert_eq!(got, Some(5));
        tokio::time::timeout(Duration::from_secs(2), a.readable())
            .await
            .expect("the second datagram must wake the socket")
            .unwrap();
        let got = receive_settling(&a, &mut buf, |_| false).unwrap();
        assert_eq!(got.map(|len| &buf[..len]), Some(&b"second"[..]));
    }

    /// One already queued behind the settling datagram is found again once
    /// we send, without waiting for the peer to send anything new.
    #[tokio::test(flavor = "current_thread")]
    async fn a_queued_datagram_is_found_after_our_next_send() {
        let (a, b) = pair().await;
        b.send(b"one").await.unwrap();
        b.send(b"two").await.unwrap();
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(2), a.readable()).await.unwrap().unwrap();
        assert_eq!(receive_settling(&a, &mut buf, |_| true).unwrap(), Some(3));
        a.send(b"window").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), a.readable())
            .await
            .expect("the queued datagram must be reported after our send")
            .unwrap();
        let got = receive_settling(&a, &mut buf, |_| false).unwrap();
        assert_eq!(got.map(|len| &buf[..len]), Some(&b"two"[..]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_waiting_is_none() {
        let (a, _b) = pair().await;
        let mut buf = [0u8; 16];
        // Not ready yet: tokio does not call the closure.
        assert_eq!(receive_settling(&a, &mut buf, |_| unreachable!()).unwrap(), None);
    }
}

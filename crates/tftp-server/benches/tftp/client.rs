//! The load client: many TFTP downloads from one process, one task each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bootfleet_tftp_server::server::receive_settling;
use bootfleet_tftp_server::wire::{Mode, Packet, Request};
use tokio::net::UdpSocket;

/// Times a download heard nothing for a second and sent its last packet again.
pub(crate) static CLIENT_TIMEOUTS: AtomicUsize = AtomicUsize::new(0);

pub(crate) async fn download(
    server: SocketAddr,
    file: &str,
    blksize: u16,
    windowsize: u16,
) -> Result<u64, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let mut options = vec![("blksize".to_owned(), blksize.to_string()), ("tsize".to_owned(), "0".to_owned())];
    if windowsize > 1 {
        options.push(("windowsize".to_owned(), windowsize.to_string()));
    }
    let request = Packet::Rrq(Request { filename: file.into(), mode: Mode::Octet, options }).encode();
    let send = |bytes: &[u8], to: Option<SocketAddr>| -> Result<(), String> {
        // One datagram per ACK never fills a socket's send buffer; a
        // failure here is an error, not a reason to wait.
        match to {
            Some(to) => socket.try_send_to(bytes, to),
            None => socket.try_send(bytes),
        }
        .map(drop)
        .map_err(|e| e.to_string())
    };
    socket.send_to(&request, server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 70_000];
    let (mut block_size, mut window) = (512usize, 1u16);
    let mut expected: u16 = 1;
    let mut received = 0u64;
    let mut in_window = 0u16;
    let mut connected = false;
    // The request until the server answers, then the last ACK sent.
    let mut last_ack: Vec<u8> = request;
    let ack = |into: &mut Vec<u8>, block: u16| {
        into.clear();
        into.extend_from_slice(&[0, 4]);
        into.extend_from_slice(&block.to_be_bytes());
    };
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut heard = Instant::now();
    let timer = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(timer);
    let mut silent = 0;
    loop {
        tokio::select! {
            ready = socket.readable() => ready.map_err(|e| e.to_string())?,
            () = &mut timer => {
                let now = Instant::now();
                if now > give_up {
                    return Err("took longer than 120 s".into());
                }
                if now < heard + Duration::from_secs(1) {
                    timer.as_mut().reset((heard + Duration::from_secs(1)).into());
                    continue;
                }
                silent += 1;
                CLIENT_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                if silent > 5 {
                    return Err("server stopped answering".into());
                }
                send(&last_ack, (!connected).then_some(server))?;
                timer.as_mut().reset((now + Duration::from_secs(1)).into());
                continue;
            }
        }
        let len = if connected {
            // In-order DATA that we are about to ACK is the last datagram
            // until the server has the ACK.
            let settles = |datagram: &[u8]| match datagram {
                [0, 3, high, low, data @ ..] => {
                    u16::from_be_bytes([*high, *low]) == expected
                        && (in_window + 1 == window || data.len() < block_size)
                }
                _ => false,
            };
            match receive_settling(&socket, &mut buf, settles) {
                Ok(Some(len)) => len,
                Ok(None) => continue,
                Err(e) => return Err(e.to_string()),
            }
        } else {
            match socket.try_recv_from(&mut buf) {
                Ok((len, from)) => {
                    // The first answer names the transfer's port; nothing
                    // else is read from here on.
                    socket.connect(from).await.map_err(|e| e.to_string())?;
                    connected = true;
                    len
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.to_string()),
            }
        };
        heard = Instant::now();
        silent = 0;
        match Packet::parse(&buf[..len]).map_err(|e| e.to_string())? {
            Packet::Oack { options } => {
                for (k, v) in options {
                    match k.as_str() {
                        "blksize" => block_size = v.parse().map_err(|_| "bad blksize")?,
                        "windowsize" => window = v.parse().map_err(|_| "bad windowsize")?,
                        _ => {}
                    }
                }
                ack(&mut last_ack, 0);
                send(&last_ack, None)?;
            }
            Packet::Data { block, data } => {
                if block != expected {
                    // Lost something: ACK the last in-order block (RFC 7440).
                    send(&last_ack, None)?;
                    in_window = 0;
                    continue;
                }
                received += data.len() as u64;
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = data.len() < block_size;
                if last || in_window == window {
                    ack(&mut last_ack, block);
                    send(&last_ack, None)?;
                    in_window = 0;
                }
                if last {
                    return Ok(received);
                }
            }
            Packet::Error { code, message } => return Err(format!("error {code:?}: {message}")),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

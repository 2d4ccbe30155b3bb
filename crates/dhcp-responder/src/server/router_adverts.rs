//! Answers IPv6 router solicitations on the DHCP interfaces with an
//! advertisement that offers nothing (see [`crate::ndp`]), so iPXE stops
//! waiting for IPv6 at once. Off unless `dhcp.router_advertisements = true`:
//! on a link with a real IPv6 router, iPXE should hear that router instead.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::ndp::{empty_router_advertisement, is_router_solicitation};

const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn interface_index(interface: &str) -> anyhow::Result<u32> {
    let path = format!("/sys/class/net/{interface}/ifindex");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().with_context(|| format!("{path} holds {text:?}"))
}

/// A raw ICMPv6 socket on `interface`, in the all-routers group. It is
/// driven through tokio's UDP type, which only issues recvfrom/sendto on
/// the descriptor (the kernel keeps it a raw ICMPv6 socket, and computes
/// the ICMPv6 checksum itself).
fn bind(interface: &str, index: u32) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("opening a raw ICMPv6 socket (needs CAP_NET_RAW)")?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // RFC 4861: neighbour discovery messages carry hop limit 255.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(index)?;
    socket.join_multicast_v6(&ALL_ROUTERS, index)?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Serves one interface until `stop`.
pub(super) async fn serve(interface: String, stop: CancellationToken) -> anyhow::Result<()> {
    let index = interface_index(&interface)?;
    let socket = bind(&interface, index).with_context(|| format!("router advertisements on {interface}"))?;
    tracing::info!(interface = %interface, "answering IPv6 router solicitations (nothing to configure)");
    let advertisement = empty_router_advertisement();
    let mut buf = [0u8; 1500];
    // RFC 4861 6.2.6: multicast answers at most every 3 s (no amplification).
    let mut last_multicast: Option<std::time::Instant> = None;
    loop {
        let (len, from) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!(interface = %interface, error = %e, "receiving ICMPv6 failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !is_router_solicitation(&buf[..len]) {
            continue;
        }
        // Reply to the soliciting node, or to all nodes when it has no
        // address yet (RFC 4861 6.2.6).
        let to = match from {
            SocketAddr::V6(v6) if !v6.ip().is_unspecified() => SocketAddrV6::new(*v6.ip(), 0, 0, index),
            _ => {
                if last_multicast.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3)) {
                    continue;
                }
                last_multicast = Some(std::time::Instant::now());
                SocketAddrV6::new(ALL_NODES, 0, 0, index)
            }
        };
        if let Err(e) = socket.send_to(&advertisement, to).await {
            tracing::warn!(interface = %interface, error = %e, "sending a router advertisement failed (is IPv6 on?)");
        }
    }
}

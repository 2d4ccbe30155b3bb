//! Full mode's replies: the head every reply has, and the pool's and the
//! boot answer's parts an OFFER or ACK adds.

use std::net::Ipv4Addr;

use super::Pool;
use crate::client::{Client, Loader};
use crate::proxy::{ProxyContext, Reply, ReplyType, boot_parts};
use crate::wire::{Request, code};

/// The head of a full-mode reply: message type, server id, relay
/// information echoed.
pub(super) fn reply(kind: ReplyType, yiaddr: Ipv4Addr, request: &Request, boot: &ProxyContext) -> Reply {
    let mut options =
        vec![(code::MESSAGE_TYPE, vec![kind.code()]), (code::SERVER_ID, boot.server_ip.octets().to_vec())];
    if let Some(relay) = request.option(code::RELAY_AGENT_INFO) {
        options.push((code::RELAY_AGENT_INFO, relay.to_vec()));
    }
    Reply { kind, yiaddr, file: String::new(), next_server: Ipv4Addr::UNSPECIFIED, options }
}

/// iPXE's "no proxyDHCP" setting (encapsulated option 175.176 = 1): this
/// answer is complete, do not wait for a proxyDHCP server.
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

/// Adds the pool and boot parts to an OFFER or ACK.
pub(super) fn complete(
    mut reply: Reply,
    request: &Request,
    client: &Client,
    boot: &ProxyContext,
    pool: &Pool,
    lease_secs: Option<u32>,
) -> Reply {
    reply.options.extend(pool.options_for(lease_secs));
    if client.loader != Loader::None {
        if let Ok(parts) = boot_parts(request, client, boot) {
            reply.file = parts.file;
            reply.next_server = parts.next_server;
            reply.options.extend(parts.options);
        }
        if client.loader == Loader::Ipxe {
            reply.options.push((code::IPXE_ENCAP, IPXE_NO_PXEDHCP.to_vec()));
        }
    }
    reply
}

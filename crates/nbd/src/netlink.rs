//! Messages for the Linux kernel's NBD client over generic netlink, sans
//! IO: the requests `bootfleet-nbd-attach` sends (resolve the `nbd`
//! family, connect a device, reconfigure it with a new socket) and the
//! messages it reads back (acknowledgements, errors, the family's ids,
//! and `NBD_CMD_LINK_DEAD`, multicast when a device's connection dies).
//!
//! The layouts are the kernel's (`include/uapi/linux/netlink.h`,
//! `genetlink.h`, `nbd-netlink.h`): netlink headers in host byte order,
//! attributes padded to 4 bytes. Parsing is bounded by the buffer and
//! never panics on what the kernel (or anyone) sends.

/// `NLMSG_ERROR`: an error, or with error 0 an acknowledgement.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `NLM_F_ACK`.
const NLM_F_ACK: u16 = 4;
/// `NLA_F_NESTED`, set on nested attributes (the kernel masks it).
const NLA_F_NESTED: u16 = 1 << 15;
/// Attribute type bits (without the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = !(3 << 14);
const NLMSG_HEADER_LEN: usize = 16;
const GENL_HEADER_LEN: usize = 4;
const NLA_HEADER_LEN: usize = 2 + 2;

/// The generic netlink controller's fixed family id (`GENL_ID_CTRL`).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// The kernel NBD driver's family and multicast group names.
pub const NBD_FAMILY: &str = "nbd";
const NBD_MCAST_GROUP: &str = "nbd_mc_group";
const NBD_GENL_VERSION: u8 = 1;

const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_RECONFIGURE: u8 = 3;
const NBD_CMD_LINK_DEAD: u8 = 4;

const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// The `nbd` family as the controller describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The family id to address requests to.
    pub id: u16,
    /// The multicast group `NBD_CMD_LINK_DEAD` goes to.
    pub link_dead_group: u32,
}

/// How a device is set up (`NBD_CMD_CONNECT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `/dev/nbd<index>`.
    pub index: u32,
    /// The export's size in bytes.
    pub size: u64,
    /// The device's logical block size (a power of two, 512 to 4096).
    pub block_size: u64,
    /// The transmission flags the server sent (`NBD_FLAG_READ_ONLY`
    /// makes the device read-only).
    pub server_flags: u64,
    /// Seconds a request may wait for its reply before the kernel gives
    /// up on the connection and requeues the request (0: never).
    pub request_timeout: u64,
    /// Seconds requests wait for a new connection once every connection
    /// is dead, before they fail (0: they fail at once).
    pub dead_connection_timeout: u64,
}

/// A message read from the netlink socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The request with this sequence number succeeded.
    Ack {
        /// Its sequence number.
        seq: u32,
    },
    /// The request with this sequence number failed.
    Error {
        /// Its sequence number.
        seq: u32,
        /// The positive errno.
        errno: i32,
    },
    /// The controller's description of a family.
    Family {
        /// Sequence number of the request it answers.
        seq: u32,
        /// The family's name.
        name: String,
        /// Its id.
        id: u16,
        /// Its multicast groups: name and id.
        groups: Vec<(String, u32)>,
    },
    /// `NBD_CMD_LINK_DEAD`: a connection of `/dev/nbd<index>` died.
    LinkDead {
        /// The device.
        index: u32,
    },
    /// Anything else (a connect reply, `NLMSG_DONE`, other families).
    Other,
}

/// Why a buffer could not be read as netlink messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetlinkError {
    /// A length field points outside the buffer.
    #[error("truncated netlink message")]
    Truncated,
    /// The controller's reply lacks what the family needs.
    #[error("the kernel has no usable {NBD_FAMILY:?} generic netlink family (is nbd.ko loaded?)")]
    NoNbdFamily,
}

/// `CTRL_CMD_GETFAMILY` for [`NBD_FAMILY`].
pub fn get_family_request(seq: u32) -> Vec<u8> {
    let mut message = Builder::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq);
    let mut name = NBD_FAMILY.as_bytes().to_vec();
    name.push(0);
    message.attribute(CTRL_ATTR_FAMILY_NAME, &name);
    message.finish()
}

/// The `nbd` family from the messages answering [`get_family_request`].
pub fn nbd_family(messages: &[Message]) -> Result<Family, NetlinkError> {
    messages
        .iter()
        .find_map(|message| match message {
            Message::Family { name, id, groups, .. } if name == NBD_FAMILY => groups
                .iter()
                .find(|(group, _)| group == NBD_MCAST_GROUP)
                .map(|(_, group)| Family { id: *id, link_dead_group: *group }),
            _ => None,
        })
        .ok_or(NetlinkError::NoNbdFamily)
}

/// `NBD_CMD_CONNECT`: sets up `/dev/nbd<index>` on the connected,
/// negotiated socket `socket_fd` (the kernel takes its own reference).
pub fn connect_request(family: &Family, seq: u32, config: &DeviceConfig, socket_fd: u32) -> Vec<u8> {
    let mut message = Builder::new(family.id, NBD_CMD_CONNECT, NBD_GENL_VERSION, seq);
    message.attribute(NBD_ATTR_INDEX, &config.index.to_ne_bytes());
    message.attribute(NBD_ATTR_SIZE_BYTES, &config.size.to_ne_bytes());
    message.attribute(NBD_ATTR_BLOCK_SIZE_BYTES, &config.block_size.to_ne_bytes());
    message.attribute(NBD_ATTR_SERVER_FLAGS, &config.server_flags.to_ne_bytes());
    message.attribute(NBD_ATTR_TIMEOUT, &config.request_timeout.to_ne_bytes());
    message.attribute(NBD_ATTR_DEAD_CONN_TIMEOUT, &config.dead_connection_timeout.to_ne_bytes());
    message.sockets(socket_fd);
    message.finish()
}

/// `NBD_CMD_RECONFIGURE`: gives `/dev/nbd<index>` the socket `socket_fd`
/// in place of its dead one. Requests waiting for a connection go out on
/// it; the size and flags stay as connected.
pub fn reconfigure_request(family: &Family, seq: u32, index: u32, socket_fd: u32) -> Vec<u8> {
    let mut message = Builder::new(family.id, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, seq);
    message.attribute(NBD_ATTR_INDEX, &index.to_ne_bytes());
    message.sockets(socket_fd);
    message.finish()
}

/// Reads the messages in one datagram. `nbd_family_id` tells the NBD
/// driver's messages from others (0 before it is known).
pub fn parse_messages(buffer: &[u8], nbd_family_id: u16) -> Result<Vec<Message>, NetlinkError> {
    let mut messages = Vec::new();
    let mut rest = buffer;
    while rest.len() >= NLMSG_HEADER_LEN {
        let len = ne_u32(&rest[0..4]) as usize;
        if len < NLMSG_HEADER_LEN || len > rest.len() {
            return Err(NetlinkError::Truncated);
        }
        let kind = ne_u16(&rest[4..6]);
        let seq = ne_u32(&rest[8..12]);
        let body = &rest[NLMSG_HEADER_LEN..len];
        messages.push(parse_message(kind, seq, body, nbd_family_id)?);
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(messages)
}

fn parse_message(kind: u16, seq: u32, body: &[u8], nbd_family_id: u16) -> Result<Message, NetlinkError> {
    if kind == NLMSG_ERROR {
        let code =
            i32::from_ne_bytes(body.get(0..4).ok_or(NetlinkError::Truncated)?.try_into().unwrap_or([0; 4]));
        return Ok(if code == 0 { Message::Ack { seq } } else { Message::Error { seq, errno: -code } });
    }
    if kind == NLMSG_DONE || body.len() < GENL_HEADER_LEN {
        return Ok(Message::Other);
    }
    let command = body[0];
    let found = attributes(&body[GENL_HEADER_LEN..])?;
    if kind == GENL_ID_CTRL && command == CTRL_CMD_NEWFAMILY {
        let mut name = String::new();
        let mut id = None;
        let mut groups = Vec::new();
        for (kind, value) in found {
            match kind {
                CTRL_ATTR_FAMILY_NAME => name = c_string(value),
                CTRL_ATTR_FAMILY_ID if value.len() >= 2 => id = Some(ne_u16(value)),
                CTRL_ATTR_MCAST_GROUPS => {
                    for (_, group) in attributes(value)? {
                        let mut group_name = String::new();
                        let mut group_id = None;
                        for (kind, value) in attributes(group)? {
                            match kind {
                                CTRL_ATTR_MCAST_GRP_NAME => group_name = c_string(value),
                                CTRL_ATTR_MCAST_GRP_ID if value.len() >= 4 => group_id = Some(ne_u32(value)),
                                _ => {}
                            }
                        }
                        if let Some(group_id) = group_id {
                            groups.push((group_name, group_id));
                        }
                    }
                }
                _ => {}
            }
        }
        return Ok(match id {
            Some(id) => Message::Family { seq, name, id, groups },
            None => Message::Other,
        });
    }
    if kind == nbd_family_id && nbd_family_id != 0 && command == NBD_CMD_LINK_DEAD {
        let index = found.iter().find(|(kind, value)| *kind == NBD_ATTR_INDEX && value.len() >= 4);
        if let Some((_, value)) = index {
            return Ok(Message::LinkDead { index: ne_u32(value) });
        }
    }
    Ok(Message::Other)
}

/// The attributes in `bytes`: type (flags masked off) and value.
fn attributes(bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while rest.len() >= NLA_HEADER_LEN {
        let len = usize::from(ne_u16(&rest[0..2]));
        if len < NLA_HEADER_LEN || len > rest.len() {
            return Err(NetlinkError::Truncated);
        }
        found.push((ne_u16(&rest[2..4]) & NLA_TYPE_MASK, &rest[NLA_HEADER_LEN..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(found)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn ne_u16(bytes: &[u8]) -> u16 {
    u16::from_ne_bytes([bytes[0], bytes[1]])
}

fn ne_u32(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// One generic netlink request, acknowledged.
struct Builder {
    bytes: Vec<u8>,
}

impl Builder {
    fn new(family: u16, command: u8, version: u8, seq: u32) -> Self {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        bytes.extend_from_slice(&family.to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        bytes.extend_from_slice(&[command, version, 0, 0]);
        Self { bytes }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        let len = NLA_HEADER_LEN + value.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(align(self.bytes.len()), 0);
    }

    /// `NBD_ATTR_SOCKETS` { `NBD_SOCK_ITEM` { `NBD_SOCK_FD` } }.
    fn sockets(&mut self, socket_fd: u32) {
        let fd_len = NLA_HEADER_LEN + 4;
        let item_len = NLA_HEADER_LEN + fd_len;
        let sockets_len = NLA_HEADER_LEN + item_len;
        self.bytes.extend_from_slice(&(sockets_len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&(NBD_ATTR_SOCKETS | NLA_F_NESTED).to_ne_bytes());
        self.bytes.extend_from_slice(&(item_len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&(NBD_SOCK_ITEM | NLA_F_NESTED).to_ne_bytes());
        self.attribute(NBD_SOCK_FD, &socket_fd.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

#[cfg(test)]
mod tests;

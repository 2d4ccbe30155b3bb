use super::*;

/// A message as the kernel would send it: header, generic header,
/// attributes (already encoded).
fn kernel_message(kind: u16, seq: u32, command: u8, attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HEADER_LEN + GENL_HEADER_LEN + attributes.len();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(len as u32).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&0u16.to_ne_bytes());
    bytes.extend_from_slice(&seq.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&[command, 1, 0, 0]);
    bytes.extend_from_slice(attributes);
    bytes
}

fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut bytes = ((NLA_HEADER_LEN + value.len()) as u16).to_ne_bytes().to_vec();
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize(align(bytes.len()), 0);
    bytes
}

fn family_reply(seq: u32) -> Vec<u8> {
    let groups = [
        attribute(
            1,
            &[attribute(CTRL_ATTR_MCAST_GRP_ID, &7u32.to_ne_bytes()), attribute(1, b"other\0")].concat(),
        ),
        attribute(
            2 | NLA_F_NESTED,
            &[
                attribute(CTRL_ATTR_MCAST_GRP_NAME, b"nbd_mc_group\0"),
                attribute(CTRL_ATTR_MCAST_GRP_ID, &23u32.to_ne_bytes()),
            ]
            .concat(),
        ),
    ]
    .concat();
    let attributes = [
        attribute(CTRL_ATTR_FAMILY_ID, &37u16.to_ne_bytes()),
        attribute(CTRL_ATTR_FAMILY_NAME, b"nbd\0"),
        attribute(CTRL_ATTR_MCAST_GROUPS | NLA_F_NESTED, &groups),
    ]
    .concat();
    kernel_message(GENL_ID_CTRL, seq, CTRL_CMD_NEWFAMILY, &attributes)
}

fn ack(seq: u32, code: i32) -> Vec<u8> {
    let mut bytes = ((NLMSG_HEADER_LEN + 4 + NLMSG_HEADER_LEN) as u32).to_ne_bytes().to_vec();
    bytes.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    bytes.extend_from_slice(&0u16.to_ne_bytes());
    bytes.extend_from_slice(&seq.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&code.to_ne_bytes());
    bytes.extend_from_slice(&[0; NLMSG_HEADER_LEN]);
    bytes
}

#[test]
fn the_family_request_names_nbd_to_the_controller() {
    let request = get_family_request(9);
    assert_eq!(ne_u32(&request[0..4]) as usize, request.len());
    assert_eq!(ne_u16(&request[4..6]), GENL_ID_CTRL);
    assert_eq!(ne_u16(&request[6..8]), NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(ne_u32(&request[8..12]), 9);
    assert_eq!(request[16], CTRL_CMD_GETFAMILY);
    let attributes = attributes(&request[20..]).unwrap();
    assert_eq!(attributes, [(CTRL_ATTR_FAMILY_NAME, &b"nbd\0"[..])]);
}

#[test]
fn the_family_and_its_link_dead_group_come_from_the_controllers_reply() {
    let datagram = [family_reply(9), ack(9, 0)].concat();
    let messages = parse_messages(&datagram, 0).unwrap();
    assert_eq!(messages[1], Message::Ack { seq: 9 });
    assert_eq!(nbd_family(&messages), Ok(Family { id: 37, link_dead_group: 23 }));
    // Without nbd.ko the controller answers ENOENT and there is no family.
    let messages = parse_messages(&ack(9, -2), 0).unwrap();
    assert_eq!(messages, [Message::Error { seq: 9, errno: 2 }]);
    assert_eq!(nbd_family(&messages), Err(NetlinkError::NoNbdFamily));
}

#[test]
fn connect_carries_the_device_config_and_the_socket_nested_twice() {
    let family = Family { id: 37, link_dead_group: 23 };
    let config = DeviceConfig {
        index: 0,
        size: 8 << 20,
        block_size: 4096,
        server_flags: 3,
        request_timeout: 1,
        dead_connection_timeout: 3600,
    };
    let request = connect_request(&family, 5, &config, 11);
    assert_eq!(ne_u32(&request[0..4]) as usize, request.len());
    assert_eq!(ne_u16(&request[4..6]), 37);
    assert_eq!(request[16], NBD_CMD_CONNECT);
    let found = attributes(&request[20..]).unwrap();
    let value = |kind| found.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v).unwrap();
    assert_eq!(value(NBD_ATTR_INDEX), 0u32.to_ne_bytes());
    assert_eq!(value(NBD_ATTR_SIZE_BYTES), (8u64 << 20).to_ne_bytes());
    assert_eq!(value(NBD_ATTR_BLOCK_SIZE_BYTES), 4096u64.to_ne_bytes());
    assert_eq!(value(NBD_ATTR_SERVER_FLAGS), 3u64.to_ne_bytes());
    assert_eq!(value(NBD_ATTR_TIMEOUT), 1u64.to_ne_bytes());
    assert_eq!(value(NBD_ATTR_DEAD_CONN_TIMEOUT), 3600u64.to_ne_bytes());
    let items = attributes(value(NBD_ATTR_SOCKETS)).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].0, NBD_SOCK_ITEM);
    assert_eq!(attributes(items[0].1).unwrap(), [(NBD_SOCK_FD, &11u32.to_ne_bytes()[..])]);

    let request = reconfigure_request(&family, 6, 0, 12);
    assert_eq!(request[16], NBD_CMD_RECONFIGURE);
    let found = attributes(&request[20..]).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], (NBD_ATTR_INDEX, &0u32.to_ne_bytes()[..]));
    assert_eq!(found[1].0, NBD_ATTR_SOCKETS);
}

#[test]
fn link_dead_names_the_device_only_from_the_nbd_family() {
    let event = kernel_message(37, 0, NBD_CMD_LINK_DEAD, &attribute(NBD_ATTR_INDEX, &2u32.to_ne_bytes()));
    assert_eq!(parse_messages(&event, 37).unwrap(), [Message::LinkDead { index: 2 }]);
    assert_eq!(parse_messages(&event, 38).unwrap(), [Message::Other]);
    assert_eq!(parse_messages(&event, 0).unwrap(), [Message::Other]);
}

#[test]
fn lengths_that_point_outside_the_buffer_are_errors_not_panics() {
    let mut event = kernel_message(37, 0, NBD_CMD_LINK_DEAD, &attribute(NBD_ATTR_INDEX, &2u32.to_ne_bytes()));
    event[0] = 0xff;
    assert_eq!(parse_messages(&event, 37), Err(NetlinkError::Truncated));
    let mut event = kernel_message(37, 0, NBD_CMD_LINK_DEAD, &attribute(NBD_ATTR_INDEX, &2u32.to_ne_bytes()));
    event[20] = 0xff;
    assert_eq!(parse_messages(&event, 37), Err(NetlinkError::Truncated));
    // Every prefix of a valid datagram parses or fails cleanly.
    let datagram = [family_reply(1), ack(1, 0)].concat();
    for end in 0..datagram.len() {
        let _ = parse_messages(&datagram[..end], 37);
    }
    assert_eq!(parse_messages(&[], 37).unwrap(), []);
}

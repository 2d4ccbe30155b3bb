use super::*;
use crate::options::ExportInfo;
use crate::session::{Limits, Output, Purpose, Refusal, Session};
use crate::wire::{OPTION_REPLY_MAGIC, info, option, reply, transmission};

/// Runs the client machine against the crate's own server machine,
/// `lookup` answering the export lookup; returns the client's result.
fn against_server(
    export: &str,
    lookup: impl Fn(&str) -> Result<ExportInfo, Refusal>,
) -> Result<ExportDetails, HandshakeError> {
    let mut server = Session::new(Limits::default());
    let mut client = ClientHandshake::new(export).unwrap();
    let mut to_client = server.greeting();
    for _ in 0..16 {
        // One byte at a time: the machine must reassemble whatever TCP
        // splits.
        let mut progress = Progress::NeedInput;
        for byte in std::mem::take(&mut to_client) {
            progress = client.receive(&[byte])?;
        }
        if let Progress::Done(details) = progress {
            assert!(to_client.is_empty());
            return Ok(details);
        }
        let to_server = client.take_output();
        let mut outputs = Vec::new();
        assert_eq!(server.receive(&to_server, &mut outputs), to_server.len());
        while let Some(output) = (!outputs.is_empty()).then(|| outputs.remove(0)) {
            match output {
                Output::Send(bytes) => to_client.extend_from_slice(&bytes),
                Output::Lookup { name, purpose } => {
                    assert_eq!(purpose, Purpose::Go);
                    let mut more = Vec::new();
                    server.on_lookup(lookup(&name), &mut more);
                    outputs.extend(more);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn go_learns_size_flags_and_block_sizes_from_the_server() {
    let details = against_server("debian/12/root.ext4", |name| {
        assert_eq!(name, "debian/12/root.ext4");
        Ok(ExportInfo::read_only(8 << 20))
    })
    .unwrap();
    assert_eq!(details.size, 8 << 20);
    assert_ne!(details.transmission_flags & transmission::READ_ONLY, 0);
    assert_ne!(details.transmission_flags & transmission::HAS_FLAGS, 0);
    assert_eq!(details.min_block, 1);
    assert!(details.preferred_block >= 512);
    assert_eq!(details.max_payload, Limits::default().max_payload);
}

#[test]
fn a_refused_export_says_why() {
    let refused = against_server("host/52:54:00:00:00:01", |_| Err(Refusal::Policy("no lease".into())));
    let Err(HandshakeError::Refused { export, code, message }) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(export, "host/52:54:00:00:00:01");
    assert_eq!(code, reply::ERR_POLICY);
    assert!(message.contains("no lease"), "{message}");
    let unknown = against_server("nope", |_| Err(Refusal::Unknown));
    assert!(matches!(unknown, Err(HandshakeError::Refused { code: reply::ERR_UNKNOWN, .. })), "{unknown:?}");
}

fn greeting(flags: u16) -> Vec<u8> {
    let mut bytes = b"NBDMAGICIHAVEOPT".to_vec();
    bytes.extend_from_slice(&flags.to_be_bytes());
    bytes
}

fn option_reply(option: u32, kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&kind.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn the_client_sends_its_flags_and_one_go_option() {
    let mut client = ClientHandshake::new("a/1/b").unwrap();
    assert!(client.take_output().is_empty(), "nothing before the greeting");
    assert_eq!(client.receive(&greeting(FLAG_FIXED_NEWSTYLE)).unwrap(), Progress::NeedInput);
    let sent = client.take_output();
    // Client flags: fixed newstyle only (the server offered no zeroes-less
    // mode), then the option.
    assert_eq!(&sent[0..4], &CLIENT_FIXED_NEWSTYLE.to_be_bytes());
    assert_eq!(&sent[4..12], &wire::OPTION_MAGIC.to_be_bytes());
    assert_eq!(&sent[12..16], &option::GO.to_be_bytes());
    assert_eq!(&sent[16..20], &(4u32 + 5 + 2 + 2).to_be_bytes());
    assert_eq!(&sent[20..24], &5u32.to_be_bytes());
    assert_eq!(&sent[24..29], b"a/1/b");
    assert_eq!(&sent[29..33], &[0, 1, 0, info::BLOCK_SIZE as u8]);
    assert_eq!(sent.len(), 33);
}

#[test]
fn servers_that_break_the_protocol_are_errors_not_panics() {
    let cases: Vec<(&str, Vec<u8>, HandshakeError)> = vec![
        (
            "http",
            b"HTTP/1.1 400 Bad Request\r\n".to_vec(),
            HandshakeError::NotNbd { magic: 0x4854_5450_2f31_2e31 },
        ),
        ("oldstyle flags", greeting(0), HandshakeError::NotFixedNewstyle { flags: 0 }),
        (
            "ack without export info",
            [greeting(FLAG_FIXED_NEWSTYLE), option_reply(option::GO, reply::ACK, &[])].concat(),
            HandshakeError::Malformed("NBD_REP_ACK before NBD_INFO_EXPORT"),
        ),
        (
            "reply to another option",
            [greeting(FLAG_FIXED_NEWSTYLE), option_reply(option::LIST, reply::ACK, &[])].concat(),
            HandshakeError::Malformed("a reply to an option not sent"),
        ),
        (
            "short export info",
            [greeting(FLAG_FIXED_NEWSTYLE), option_reply(option::GO, reply::INFO, &[0, 0, 1])].concat(),
            HandshakeError::Malformed("NBD_INFO_EXPORT length"),
        ),
        (
            "block sizes not powers of two",
            [
                greeting(FLAG_FIXED_NEWSTYLE),
                option_reply(option::GO, reply::INFO, &[0, 3, 0, 0, 0, 3, 0, 0, 16, 0, 0, 0, 16, 0]),
            ]
            .concat(),
            HandshakeError::Malformed("NBD_INFO_BLOCK_SIZE values"),
        ),
        (
            "endless reply",
            {
                let mut bytes = greeting(FLAG_FIXED_NEWSTYLE);
                bytes.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
                bytes.extend_from_slice(&option::GO.to_be_bytes());
                bytes.extend_from_slice(&reply::INFO.to_be_bytes());
                bytes.extend_from_slice(&u32::MAX.to_be_bytes());
                bytes
            },
            HandshakeError::Malformed("option reply longer than any valid one"),
        ),
    ];
    for (name, bytes, expected) in cases {
        let mut client = ClientHandshake::new("x").unwrap();
        assert_eq!(client.receive(&bytes), Err(expected), "{name}");
    }
}

#[test]
fn unknown_information_is_skipped_and_defaults_fill_in() {
    let mut export = vec![0, 0];
    export.extend_from_slice(&(1u64 << 30).to_be_bytes());
    export.extend_from_slice(&(transmission::HAS_FLAGS | transmission::READ_ONLY).to_be_bytes());
    let bytes = [
        greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
        option_reply(option::GO, reply::INFO, &[0, 2, b'h', b'i']),
        option_reply(option::GO, reply::INFO, &[0x7f, 0x7f]),
        option_reply(option::GO, reply::INFO, &export),
        option_reply(option::GO, reply::ACK, &[]),
    ]
    .concat();
    let mut client = ClientHandshake::new("x").unwrap();
    let Progress::Done(details) = client.receive(&bytes).unwrap() else { panic!("not done") };
    assert_eq!(
        details,
        ExportDetails {
            size: 1 << 30,
            transmission_flags: transmission::HAS_FLAGS | transmission::READ_ONLY,
            min_block: 1,
            preferred_block: 4096,
            max_payload: 32 << 20,
        }
    );
    assert_eq!(&client.take_output()[0..4], &(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes());
    assert!(client.receive(&[0]).is_err(), "input after the end");
}

#[test]
fn names_longer_than_the_protocol_allows_are_refused_up_front() {
    let long = "x".repeat(wire::MAX_STRING_LEN + 1);
    assert!(matches!(ClientHandshake::new(&long), Err(HandshakeError::NameTooLong { .. })));
}

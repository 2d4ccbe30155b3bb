use super::*;
use crate::wire::{
    CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, OPTION_MAGIC, OPTION_REPLY_MAGIC, be_u64, command, info, option,
    reply, transmission,
};

/// Drives a session the way a client would and collects what it answers.
struct Client {
    session: Session,
    sent: Vec<u8>,
    outputs: Vec<Output>,
}

impl Client {
    fn new(limits: Limits) -> Self {
        let session = Session::new(limits);
        let sent = session.greeting();
        Self { session, sent, outputs: Vec::new() }
    }

    /// Past the greeting and client flags.
    fn negotiating(flags: u32) -> Self {
        let mut client = Self::new(Limits::default());
        assert_eq!(&client.take_sent()[..16], b"NBDMAGICIHAVEOPT");
        client.feed(&flags.to_be_bytes());
        client
    }

    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut out = Vec::new();
        let consumed = self.session.receive(bytes, &mut out);
        self.absorb(out);
        consumed
    }

    fn absorb(&mut self, out: Vec<Output>) {
        for output in out {
            match output {
                Output::Send(bytes) => self.sent.extend_from_slice(&bytes),
                other => self.outputs.push(other),
            }
        }
    }

    fn take_sent(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.sent)
    }

    fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = OPTION_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        assert_eq!(self.feed(&bytes), bytes.len());
    }

    fn lookup(&mut self, result: Result<ExportInfo, Refusal>) {
        let mut out = Vec::new();
        self.session.on_lookup(result, &mut out);
        self.absorb(out);
    }

    /// GO on `name` answered with `export`; leaves the session transmitting.
    fn go(&mut self, export: ExportInfo) {
        self.option(option::GO, &go_data("disk", &[info::BLOCK_SIZE]));
        assert_eq!(self.take_outputs(), [Output::Lookup { name: "disk".into(), purpose: Purpose::Go }]);
        self.lookup(Ok(export));
        let replies = option_replies(&self.take_sent());
        assert_eq!(replies.last().unwrap().1, reply::ACK);
        assert!(self.session.transmitting());
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> usize {
        self.feed(&RequestHeader { flags, kind, cookie, offset, length }.encode())
    }

    fn complete(&mut self, id: u64, result: Result<(), Errno>) -> (Vec<u8>, usize) {
        let mut header = Vec::new();
        let data = self.session.complete(id, result, &mut header);
        (header, data)
    }
}

fn go_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        data.extend_from_slice(&r.to_be_bytes());
    }
    data
}

/// Splits option replies into (option, type, data).
fn option_replies(mut bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut replies = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(be_u64(&bytes[0..8]), OPTION_REPLY_MAGIC);
        let len = be_u32(&bytes[16..20]) as usize;
        replies.push((be_u32(&bytes[8..12]), be_u32(&bytes[12..16]), bytes[20..20 + len].to_vec()));
        bytes = &bytes[20 + len..];
    }
    replies
}

fn writable(size: u64) -> ExportInfo {
    ExportInfo {
        read_only: false,
        multi_conn: false,
        trim: true,
        write_zeroes: true,
        ..ExportInfo::read_only(size)
    }
}

#[test]
fn go_answers_export_and_block_size_then_transmits() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    client.option(option::STRUCTURED_REPLY, &[]);
    assert_eq!(option_replies(&client.take_sent()), [(option::STRUCTURED_REPLY, reply::ACK, vec![])]);
    client.option(option::GO, &go_data("disk", &[info::NAME, info::DESCRIPTION, 77]));
    assert_eq!(client.session.needed(), 0, "waits for the lookup");
    assert_eq!(client.take_outputs(), [Output::Lookup { name: "disk".into(), purpose: Purpose::Go }]);
    let export = ExportInfo { description: "golden".into(), ..ExportInfo::read_only(1 << 20) };
    client.lookup(Ok(export));
    let replies = option_replies(&client.take_sent());
    let flags = transmission::HAS_FLAGS
        | transmission::SEND_FLUSH
        | transmission::READ_ONLY
        | transmission::CAN_MULTI_CONN
        | transmission::SEND_DF;
    let mut export_info = info::EXPORT.to_be_bytes().to_vec();
    export_info.extend_from_slice(&(1u64 << 20).to_be_bytes());
    export_info.extend_from_slice(&flags.to_be_bytes());
    let mut block = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, 32 << 20] {
        block.extend_from_slice(&v.to_be_bytes());
    }
    let mut name = info::NAME.to_be_bytes().to_vec();
    name.extend_from_slice(b"disk");
    let mut description = info::DESCRIPTION.to_be_bytes().to_vec();
    description.extend_from_slice(b"golden");
    assert_eq!(
        replies,
        [
            (option::GO, reply::INFO, export_info),
            (option::GO, reply::INFO, block),
            (option::GO, reply::INFO, name),
            (option::GO, reply::INFO, description),
            (option::GO, reply::ACK, vec![]),
        ]
    );
    assert!(client.session.transmitting());
    assert_eq!(client.session.needed(), REQUEST_HEADER_LEN);
}

#[test]
fn info_describes_without_starting_transmission_and_refusals_are_answered() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.option(option::INFO, &go_data("disk", &[]));
    assert_eq!(client.take_outputs(), [Output::Lookup { name: "disk".into(), purpose: Purpose::Info }]);
    client.lookup(Ok(ExportInfo::read_only(512)));
    assert_eq!(option_replies(&client.take_sent()).last().unwrap().1, reply::ACK);
    assert!(!client.session.transmitting());
    for (refusal, expected) in [
        (Refusal::Unknown, reply::ERR_UNKNOWN),
        (Refusal::Policy("not yours".into()), reply::ERR_POLICY),
        (Refusal::Shutdown, reply::ERR_SHUTDOWN),
    ] {
        client.option(option::GO, &go_data("other", &[]));
        client.take_outputs();
        client.lookup(Err(refusal));
        let replies = option_replies(&client.take_sent());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].1, expected);
        assert_eq!(client.session.needed(), OPTION_HEADER_LEN, "negotiation goes on");
    }
}

#[test]
fn list_sends_one_server_reply_per_export() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.option(option::LIST, &[]);
    assert_eq!(client.take_outputs(), [Output::List]);
    let mut out = Vec::new();
    let long = "x".repeat(5000);
    let exports = [
        Listing { name: "a/1/disk.img".into(), description: String::new() },
        Listing { name: long, description: String::new() },
        Listing { name: "b".into(), description: "desc".into() },
    ];
    client.session.on_list(&exports, &mut out);
    client.absorb(out);
    let replies = option_replies(&client.take_sent());
    assert_eq!(replies.len(), 3, "the over-long name is left out");
    assert_eq!(replies[0].2[4..], *b"a/1/disk.img");
    assert_eq!(replies[1].2, [0, 0, 0, 1, b'b', b'd', b'e', b's', b'c']);
    assert_eq!(replies[2].1, reply::ACK);

    client.option(option::LIST, b"junk");
    assert_eq!(option_replies(&client.take_sent())[0].1, reply::ERR_INVALID);
}

#[test]
fn unknown_and_oversized_options_are_answered_and_skipped() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.option(99, &[1, 2, 3]);
    client.option(5, &[]); // STARTTLS: not supported
    client.option(option::GO, &vec![0u8; MAX_OPTION_DATA + 1]);
    client.option(option::GO, &[0, 0, 0, 9, b'x']);
    client.option(option::STRUCTURED_REPLY, b"x");
    let kinds: Vec<u32> = option_replies(&client.take_sent()).iter().map(|r| r.1).collect();
    assert_eq!(
        kinds,
        [reply::ERR_UNSUP, reply::ERR_UNSUP, reply::ERR_TOO_BIG, reply::ERR_INVALID, reply::ERR_INVALID]
    );
    assert_eq!(client.session.needed(), OPTION_HEADER_LEN);
    assert!(client.take_outputs().is_empty());
}

#[test]
fn export_name_replies_with_or_without_zeroes_and_refusal_closes() {
    for (flags, len) in [(CLIENT_FIXED_NEWSTYLE, 8 + 2 + 124), (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES, 10)]
    {
        let mut client = Client::negotiating(flags);
        client.option(option::EXPORT_NAME, b"disk");
        assert_eq!(
            client.take_outputs(),
            [Output::Lookup { name: "disk".into(), purpose: Purpose::ExportName }]
        );
        client.lookup(Ok(ExportInfo::read_only(4096)));
        let sent = client.take_sent();
        assert_eq!(sent.len(), len);
        assert_eq!(be_u64(&sent[..8]), 4096);
        assert!(client.session.transmitting());
    }
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.option(option::EXPORT_NAME, b"nope");
    client.take_outputs();
    client.lookup(Err(Refusal::Unknown));
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::ExportRefused)]);
    assert!(client.take_sent().is_empty());

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    let mut header = OPTION_MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&option::EXPORT_NAME.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    client.feed(&header);
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::ExportRefused)]);
}

#[test]
fn protocol_violations_close_the_connection() {
    let mut client = Client::negotiating(1 << 5);
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::Protocol("unknown client flags"))]);
    assert_eq!(client.feed(b"more bytes"), 0);

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.feed(&[0u8; 16]);
    assert!(matches!(client.take_outputs()[..], [Output::Close(CloseReason::Protocol(_))]));

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.go(ExportInfo::read_only(4096));
    client.feed(&[0xffu8; REQUEST_HEADER_LEN]);
    assert!(matches!(client.take_outputs()[..], [Output::Close(CloseReason::Protocol(_))]));

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    for _ in 0..Limits::default().max_options {
        client.option(99, &[]);
    }
    assert!(client.take_outputs().is_empty());
    client.option(99, &[]);
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::TooManyOptions)]);
}

#[test]
fn abort_is_acknowledged_and_ends() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.option(option::ABORT, &[]);
    assert_eq!(option_replies(&client.take_sent()), [(option::ABORT, reply::ACK, vec![])]);
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::ClientDone)]);
}

#[test]
fn reads_get_simple_or_structured_replies_with_their_data() {
    let mut simple = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    simple.go(ExportInfo::read_only(1 << 20));
    simple.request(command::READ, 0, 0xabc, 4096, 512);
    let [Output::Execute(command)] = simple.take_outputs()[..] else { panic!() };
    assert_eq!(command.op, Op::Read { offset: 4096, length: 512 });
    let (header, data) = simple.complete(command.id, Ok(()));
    assert_eq!(data, 512);
    assert_eq!(header.len(), wire::SIMPLE_REPLY_LEN);
    assert_eq!(be_u64(&header[8..]), 0xabc);
    assert_eq!(simple.complete(command.id, Ok(())), (vec![], 0), "completing twice does nothing");

    let mut structured = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    structured.option(option::STRUCTURED_REPLY, &[]);
    structured.go(ExportInfo::read_only(1 << 20));
    structured.request(command::READ, 0, 7, 4096, 512);
    let [Output::Execute(command)] = structured.take_outputs()[..] else { panic!() };
    let (header, data) = structured.complete(command.id, Ok(()));
    assert_eq!((header.len(), data), (wire::OFFSET_DATA_HEADER_LEN, 512));
    assert_eq!(&header[4..8], &[0, 1, 0, 1]); // DONE, OFFSET_DATA
    assert_eq!(be_u32(&header[16..20]), 520);
    assert_eq!(be_u64(&header[20..28]), 4096);

    structured.request(command::READ, 0, 8, 0, 0);
    let [Output::Execute(command)] = structured.take_outputs()[..] else { panic!() };
    let (header, data) = structured.complete(command.id, Ok(()));
    assert_eq!((&header[4..8], data), (&[0u8, 1, 0, 0][..], 0), "an empty read ends with NONE");

    structured.request(command::READ, 0, 9, 0, 512);
    let [Output::Execute(command)] = structured.take_outputs()[..] else { panic!() };
    let (header, data) = structured.complete(command.id, Err(Errno::Io));
    assert_eq!((&header[4..8], data), (&[0u8, 1, 0x80, 1][..], 0));
}

#[test]
fn rejected_requests_are_answered_at_once() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.go(ExportInfo::read_only(4096));
    client.request(command::READ, 0, 1, 4000, 512);
    client.request(command::TRIM, 0, 2, 0, 512);
    client.request(99, 0, 3, 0, 0);
    let sent = client.take_sent();
    let errors: Vec<(u32, u64)> = sent.chunks(16).map(|r| (be_u32(&r[4..8]), be_u64(&r[8..16]))).collect();
    assert_eq!(errors, [(22, 1), (1, 2), (22, 3)]);
    assert!(client.take_outputs().is_empty());
    assert_eq!(client.session.in_flight(), 0);
}

#[test]
fn writes_wait_for_their_payload_and_rejected_payloads_are_dropped() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.go(writable(1 << 20));
    client.request(command::WRITE, wire::command_flag::FUA, 5, 512, 1000);
    assert_eq!(client.session.payload_due(), Some(1000));
    assert_eq!(client.session.needed(), 1000);
    assert!(client.take_outputs().is_empty());
    assert_eq!(client.feed(&[7u8; 600]), 600);
    assert_eq!(client.session.payload_due(), None, "partly read");
    client.feed(&[7u8; 400]);
    let [Output::Execute(command)] = client.take_outputs()[..] else { panic!() };
    assert_eq!((command.op, command.fua), (Op::Write { offset: 512, length: 1000 }, true));
    let (header, data) = client.complete(command.id, Ok(()));
    assert_eq!((be_u32(&header[4..8]), data), (0, 0));

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.go(ExportInfo::read_only(1 << 20));
    client.request(command::WRITE, 0, 6, 0, 100_000);
    assert_eq!(client.session.payload_due(), None);
    assert_eq!(client.session.needed(), DISCARD_PIECE as usize, "dropped in pieces");
    client.feed(&vec![1u8; 100_000]);
    assert!(client.take_outputs().is_empty());
    let sent = client.take_sent();
    assert_eq!((be_u32(&sent[4..8]), be_u64(&sent[8..16])), (1, 6));
    assert_eq!(client.session.needed(), REQUEST_HEADER_LEN);
}

#[test]
fn in_flight_limits_stop_reading_until_completions() {
    let limits = Limits { max_in_flight: 3, max_in_flight_bytes: 1 << 20, ..Limits::default() };
    let mut client = Client::new(limits);
    client.take_sent();
    client.feed(&CLIENT_FIXED_NEWSTYLE.to_be_bytes());
    client.go(ExportInfo::read_only(1 << 30));
    for cookie in 0..3 {
        client.request(command::READ, 0, cookie, 0, 4096);
    }
    assert_eq!(client.session.needed(), 0);
    assert_eq!(client.request(command::READ, 0, 3, 0, 4096), 0, "nothing consumed");
    let ids: Vec<u64> = client
        .take_outputs()
        .iter()
        .map(|o| match o {
            Output::Execute(c) => c.id,
            other => panic!("{other:?}"),
        })
        .collect();
    client.complete(ids[0], Ok(()));
    assert_eq!(client.session.needed(), REQUEST_HEADER_LEN);

    // Bytes: one request of 1 MiB fills the byte budget by itself.
    client.complete(ids[1], Ok(()));
    client.complete(ids[2], Ok(()));
    client.request(command::READ, 0, 9, 0, 1 << 20);
    assert_eq!(client.session.needed(), 0);

    let mut none = Client::new(Limits { max_in_flight: 0, ..Limits::default() });
    none.take_sent();
    none.feed(&CLIENT_FIXED_NEWSTYLE.to_be_bytes());
    none.go(ExportInfo::read_only(4096));
    assert_eq!(none.session.needed(), REQUEST_HEADER_LEN, "room for one request at least");
}

#[test]
fn shutdown_answers_eshutdown_and_err_shutdown() {
    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.session.on_shutdown();
    client.option(option::GO, &go_data("disk", &[]));
    assert_eq!(option_replies(&client.take_sent())[0].1, reply::ERR_SHUTDOWN);

    let mut client = Client::negotiating(CLIENT_FIXED_NEWSTYLE);
    client.go(ExportInfo::read_only(4096));
    client.session.on_shutdown();
    client.request(command::READ, 0, 1, 0, 512);
    assert_eq!(be_u32(&client.take_sent()[4..8]), 108);
    client.request(command::DISC, 0, 2, 0, 0);
    assert_eq!(client.take_outputs(), [Output::Close(CloseReason::ClientDone)]);
}

#[test]
fn byte_by_byte_input_gives_the_same_answers_as_whole_messages() {
    let script = {
        let mut bytes = CLIENT_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for (option, data) in [(99u32, vec![1, 2]), (option::STRUCTURED_REPLY, vec![])] {
            bytes.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
            bytes.extend_from_slice(&option.to_be_bytes());
            bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&data);
        }
        bytes
    };
    let mut whole = Client::new(Limits::default());
    whole.feed(&script);
    let mut pieces = Client::new(Limits::default());
    for byte in &script {
        assert_eq!(pieces.feed(std::slice::from_ref(byte)), 1);
    }
    assert_eq!(whole.take_sent(), pieces.take_sent());
    assert!(pieces.session.structured());
}

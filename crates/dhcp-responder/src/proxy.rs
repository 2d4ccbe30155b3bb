//! proxyDHCP (PXE spec §2.2.3): answer boot clients with where to boot
//! from, never with an address, beside an existing DHCP server. Pure:
//! request + context in, reply (or the reason for silence) out.

use std::net::Ipv4Addr;

use crate::client::{Arch, Client, Loader, detect};
use crate::wire::{MessageType, Request, code};

/// PXE vendor sub-option 6, discovery control.
const PXE_DISCOVERY_CONTROL: u8 = 6;

/// Loader file per architecture (PXE clients, over TFTP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaders {
    /// x86 BIOS (e.g. `undionly.kpxe`).
    pub bios: Option<String>,
    /// x64 UEFI (e.g. `ipxe.efi` or `snponly.efi`).
    pub efi_x64: Option<String>,
    /// 32-bit x86 UEFI.
    pub efi_ia32: Option<String>,
    /// ARM64 UEFI.
    pub efi_arm64: Option<String>,
}

impl Loaders {
    /// The loader for an architecture, if one is configured.
    pub fn for_arch(&self, arch: Arch) -> Option<&str> {
        match arch {
            Arch::Bios => self.bios.as_deref(),
            Arch::EfiX64 => self.efi_x64.as_deref(),
            Arch::EfiIa32 => self.efi_ia32.as_deref(),
            Arch::EfiArm64 => self.efi_arm64.as_deref(),
            Arch::EfiArm32 | Arch::Other(_) => None,
        }
    }
}

/// What the rules say about this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Boot it from the network.
    Boot,
    /// Its profile is `ignore`: stay silent.
    Ignore,
    /// No rule assigned an image profile.
    Unknown,
}

/// Everything a proxy answer depends on besides the request.
#[derive(Clone, Debug)]
pub struct ProxyContext {
    /// Our address on the client's network (server identifier).
    pub server_ip: Ipv4Addr,
    /// TFTP server for PXE loaders (next-server / siaddr).
    pub tftp_server: Ipv4Addr,
    /// Loader files for PXE clients.
    pub loaders: Loaders,
    /// Loader URL per architecture for UEFI HTTP boot, by base URL:
    /// `<http_base>/loaders/<file>`.
    pub http_base: String,
    /// The rules' verdict for this host.
    pub verdict: Verdict,
    /// Whether hosts no rule names are booted anyway (default: no).
    pub boot_unknown: bool,
}

/// Why no answer is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// Not a network-boot client: the site's DHCP server handles it.
    NotBootClient,
    /// A message type proxyDHCP does not answer.
    MessageType,
    /// A REQUEST meant for another server.
    OtherServer,
    /// The rules say `ignore`.
    Ignored,
    /// No rule names the host and the policy is not to boot strangers.
    UnknownHost,
    /// No loader configured for the client's architecture.
    NoLoader,
}

/// DHCP message type of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyType {
    /// DHCPOFFER (to DISCOVER).
    Offer,
    /// DHCPACK (to REQUEST, INFORM).
    Ack,
    /// DHCPNAK (to a REQUEST that cannot be granted).
    Nak,
}

impl ReplyType {
    /// The option 53 value.
    pub fn code(self) -> u8 {
        match self {
            Self::Offer => 2,
            Self::Ack => 5,
            Self::Nak => 6,
        }
    }
}

/// A reply to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// OFFER, ACK or NAK.
    pub kind: ReplyType,
    /// Address given (full mode); 0 in proxy mode.
    pub yiaddr: Ipv4Addr,
    /// Boot file (a TFTP name or a URL); empty for none.
    pub file: String,
    /// siaddr (TFTP server for PXE; 0 otherwise).
    pub next_server: Ipv4Addr,
    /// Options in the order written.
    pub options: Vec<(u8, Vec<u8>)>,
}

/// The boot part of an answer: file, next server and the options that go
/// with it (vendor class echo, PXE discovery control, UUID, relay info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootParts {
    /// Boot file or URL.
    pub file: String,
    /// siaddr.
    pub next_server: Ipv4Addr,
    /// Options.
    pub options: Vec<(u8, Vec<u8>)>,
}

/// Where a boot client should boot from (no verdict check here).
pub fn boot_parts(request: &Request, client: &Client, ctx: &ProxyContext) -> Result<BootParts, Silence> {
    let (file, next_server) = boot_file(request, client, ctx)?;
    let mut options = Vec::new();
    match client.loader {
        // UEFI HTTP boot only takes offers that echo its class.
        Loader::Http => options.push((code::VENDOR_CLASS, b"HTTPClient".to_vec())),
        _ => {
            options.push((code::VENDOR_CLASS, b"PXEClient".to_vec()));
            // PXE vendor options: discovery control = 8 (use the boot file
            // in this reply; no boot-server discovery).
            options.push((code::VENDOR_SPECIFIC, vec![PXE_DISCOVERY_CONTROL, 1, 8, code::END]));
        }
    }
    if let Some(uuid) = request.option(code::CLIENT_UUID) {
        options.push((code::CLIENT_UUID, uuid.to_vec()));
    }
    Ok(BootParts { file, next_server, options })
}

/// Decides the proxyDHCP answer to a request.
pub fn decide(request: &Request, ctx: &ProxyContext) -> Result<Reply, Silence> {
    let client = detect(request);
    if client.loader == Loader::None {
        return Err(Silence::NotBootClient);
    }
    let kind = match request.message_type {
        MessageType::Discover => ReplyType::Offer,
        MessageType::Request => {
            if request.server_id().is_some_and(|id| id != ctx.server_ip) {
                return Err(Silence::OtherServer);
            }
            ReplyType::Ack
        }
        _ => return Err(Silence::MessageType),
    };
    match ctx.verdict {
        Verdict::Boot => {}
        Verdict::Ignore => return Err(Silence::Ignored),
        Verdict::Unknown if ctx.boot_unknown => {}
        Verdict::Unknown => return Err(Silence::UnknownHost),
    }
    let boot = boot_parts(request, &client, ctx)?;
    let mut options: Vec<(u8, Vec<u8>)> =
        vec![(code::MESSAGE_TYPE, vec![kind.code()]), (code::SERVER_ID, ctx.server_ip.octets().to_vec())];
    options.extend(boot.options);
    if let Some(relay) = request.option(code::RELAY_AGENT_INFO) {
        options.push((code::RELAY_AGENT_INFO, relay.to_vec()));
    }
    Ok(Reply { kind, yiaddr: Ipv4Addr::UNSPECIFIED, file: boot.file, next_server: boot.next_server, options })
}

fn boot_file(request: &Request, client: &Client, ctx: &ProxyContext) -> Result<(String, Ipv4Addr), Silence> {
    let base = ctx.http_base.trim_end_matches('/');
    match client.loader {
        // iPXE is running: hand it its script, not the loader again. The
        // URL is absolute, but siaddr must be set: iPXE ignores a
        // ProxyDHCPACK without "PXE options" (next-server plus boot file).
        Loader::Ipxe => Ok((format!("{base}/boot.ipxe?mac={}", request.mac_text()), ctx.server_ip)),
        Loader::Http => {
            let file = client.arch.and_then(|a| ctx.loaders.for_arch(a)).ok_or(Silence::NoLoader)?;
            Ok((format!("{base}/loaders/{file}"), Ipv4Addr::UNSPECIFIED))
        }
        Loader::Pxe => {
            let file = client.arch.and_then(|a| ctx.loaders.for_arch(a)).ok_or(Silence::NoLoader)?;
            Ok((file.to_owned(), ctx.tftp_server))
        }
        Loader::None => Err(Silence::NotBootClient),
    }
}

/// Encodes a reply to `request` (BOOTREPLY), padded to the 300-byte BOOTP
/// minimum. dhcproto's encoder writes the header and each option (values
/// over 255 bytes split as RFC 3396 says); the options go in the order the
/// reply lists them (message type first, as clients have long seen it
/// from ISC's servers), and the relay agent information echoed last (RFC
/// 3046 §2.2). The options are not handed to dhcproto's option map: it
/// sorts by code, and an option it holds as an unknown code under a code
/// it knows (82, say) is written twice.
pub fn encode(request: &Request, reply: &Reply, server_ip: Ipv4Addr) -> Vec<u8> {
    use dhcproto::v4::{self, Encodable, Encoder};
    let mut message = v4::Message::new_with_id(
        request.xid,
        request.ciaddr,
        reply.yiaddr,
        reply.next_server,
        request.giaddr,
        &request.mac,
    );
    message.set_opcode(v4::Opcode::BootReply).set_hops(request.hops).set_sname_str(server_ip.to_string());
    if request.broadcast {
        message.set_flags(v4::Flags::default().set_broadcast());
    }
    // The file field holds 127 bytes and a NUL; longer names only in option 67.
    if reply.file.len() < 128 {
        message.set_fname_str(&reply.file);
    }
    let file = (!reply.file.is_empty()).then(|| (code::BOOTFILE_NAME, reply.file.as_bytes().to_vec()));
    let (relay, options): (Vec<_>, Vec<_>) =
        reply.options.iter().chain(file.as_ref()).partition(|(option, _)| *option == code::RELAY_AGENT_INFO);
    let mut bytes = Vec::with_capacity(576);
    let mut encoder = Encoder::new(&mut bytes);
    // Writing to a Vec cannot fail.
    let written = message.encode(&mut encoder).and_then(|()| {
        for (option, value) in options.into_iter().chain(relay) {
            v4::encode_long_opt_bytes((*option).into(), value, &mut encoder)?;
        }
        encoder.write_u8(code::END)
    });
    debug_assert!(written.is_ok(), "{written:?}");
    if bytes.len() < 300 {
        bytes.resize(300, 0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::datagram;
    use crate::wire::{parse_options, sub_options};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn ctx(verdict: Verdict) -> ProxyContext {
        ProxyContext {
            server_ip: SERVER,
            tftp_server: Ipv4Addr::new(198, 18, 0, 2),
            loaders: Loaders {
                bios: Some("undionly.kpxe".into()),
                efi_x64: Some("ipxe.efi".into()),
                efi_ia32: None,
                efi_arm64: Some("arm64/ipxe.efi".into()),
            },
            http_base: "http://198.18.0.3:8080/".into(),
            verdict,
            boot_unknown: false,
        }
    }

    fn request(options: &[(u8, &[u8])]) -> Request {
        Request::parse(&datagram(MAC, options)).unwrap()
    }

    #[test]
    fn each_client_gets_the_right_boot_file() {
        let pxe_bios = request(&[(53, &[1]), (60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])]);
        let pxe_efi = request(&[(53, &[1]), (60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7])]);
        let http = request(&[(53, &[1]), (60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])]);
        let ipxe = request(&[(53, &[1]), (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"\x04iPXE")]);
        let c = ctx(Verdict::Boot);
        let r = decide(&pxe_bios, &c).unwrap();
        assert_eq!((r.file.as_str(), r.next_server), ("undionly.kpxe", Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(decide(&pxe_efi, &c).unwrap().file, "ipxe.efi");
        let r = decide(&http, &c).unwrap();
        assert_eq!(r.file, "http://198.18.0.3:8080/loaders/ipxe.efi");
        assert!(r.options.contains(&(60, b"HTTPClient".to_vec())), "HTTP boot needs the class echoed");
        let r = decide(&ipxe, &c).unwrap();
        assert_eq!(r.file, "http://198.18.0.3:8080/boot.ipxe?mac=52:54:00:00:00:01", "no chainload loop");
    }

    #[test]
    fn silence_has_reasons() {
        let pxe = [(53u8, &[1u8][..]), (60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])];
        assert_eq!(decide(&request(&[(53, &[1])]), &ctx(Verdict::Boot)), Err(Silence::NotBootClient));
        assert_eq!(decide(&request(&pxe), &ctx(Verdict::Ignore)), Err(Silence::Ignored));
        assert_eq!(decide(&request(&pxe), &ctx(Verdict::Unknown)), Err(Silence::UnknownHost));
        let mut open = ctx(Verdict::Unknown);
        open.boot_unknown = true;
        assert!(decide(&request(&pxe), &open).is_ok());
        let arm32 = [(53u8, &[1u8][..]), (60, b"PXEClient:Arch:00010:UNDI:003000"), (93, &[0, 10])];
        assert_eq!(decide(&request(&arm32), &ctx(Verdict::Boot)), Err(Silence::NoLoader));
        let release = [(53u8, &[7u8][..]), (60, b"PXEClient")];
        assert_eq!(decide(&request(&release), &ctx(Verdict::Boot)), Err(Silence::MessageType));
        let other = [(53u8, &[3u8][..]), (60, b"PXEClient:Arch:00000"), (54, &[10, 0, 0, 1])];
        assert_eq!(decide(&request(&other), &ctx(Verdict::Boot)), Err(Silence::OtherServer));
        let ours = [(53u8, &[3u8][..]), (60, b"PXEClient:Arch:00000"), (54, &[198, 18, 0, 1])];
        assert_eq!(decide(&request(&ours), &ctx(Verdict::Boot)).unwrap().kind, ReplyType::Ack);
    }

    #[test]
    fn replies_encode_as_valid_bootp() {
        let req = request(&[
            (53, &[1]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
            (93, &[0, 0]),
            (82, &[1, 4, b'p', b'o', b'r', b't']),
        ]);
        let reply = decide(&req, &ctx(Verdict::Boot)).unwrap();
        let bytes = encode(&req, &reply, SERVER);
        assert!(bytes.len() >= 300);
        assert_eq!((bytes[0], bytes[4..8].to_vec()), (2, req.xid.to_be_bytes().to_vec()));
        assert_eq!(&bytes[16..20], &[0, 0, 0, 0], "proxyDHCP offers no address");
        assert_eq!(&bytes[20..24], &[198, 18, 0, 2], "next-server");
        assert_eq!(&bytes[108..121], b"undionly.kpxe");
        let options = parse_options(&bytes[240..]).unwrap();
        assert_eq!(options[&53], [2]);
        assert_eq!(options[&54], [198, 18, 0, 1]);
        assert_eq!(options[&60], b"PXEClient");
        assert_eq!(sub_options(&options[&43]).unwrap()[&6], [8]);
        assert_eq!(options[&82], [1, 4, b'p', b'o', b'r', b't'], "relay info echoed");
        assert_eq!(options[&67], b"undionly.kpxe");
        // Message type first; relay information last (RFC 3046 §2.2).
        assert_eq!(&bytes[240..243], &[53, 1, 2]);
        let end = bytes.iter().rposition(|b| *b == 255).unwrap();
        assert_eq!(&bytes[end - 8..end], &[82, 6, 1, 4, b'p', b'o', b'r', b't']);
    }

    #[test]
    fn dhcproto_reads_our_replies_as_we_meant_them() {
        use dhcproto::v4::{Decodable, Decoder, DhcpOption, Message, MessageType, Opcode, OptionCode};
        let req = request(&[(53, &[1]), (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE")]);
        let mut reply = decide(&req, &ctx(Verdict::Boot)).unwrap();
        // A boot URL longer than one option holds: split in two (RFC 3396).
        reply.file =
            format!("http://198.18.0.3:8080/boot.ipxe?mac=52:54:00:00:00:01&pad={}", "x".repeat(300));
        reply.yiaddr = Ipv4Addr::new(198, 18, 0, 77);
        let bytes = encode(&req, &reply, SERVER);
        let theirs = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(
            (theirs.opcode(), theirs.xid(), theirs.yiaddr()),
            (Opcode::BootReply, req.xid, reply.yiaddr)
        );
        assert_eq!(theirs.chaddr()[..6], MAC);
        assert_eq!(
            theirs.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Offer))
        );
        assert_eq!(theirs.fname(), None, "too long for the file field");
        let ours = parse_options(&bytes[240..]).unwrap();
        assert_eq!(ours[&67], reply.file.as_bytes(), "the long option, reassembled");
        assert_eq!(
            theirs.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(reply.file.as_bytes().to_vec()))
        );
    }
}

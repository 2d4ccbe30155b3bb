//! `bootfleet probe-dhcp`: act as a network-boot client once — broadcast a
//! DHCPDISCOVER of the chosen kind on one interface and print the
//! proxyDHCP/DHCP answer. A diagnostic: "what does a PXE ROM get here?"

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bootfleet_dhcp_responder::wire::{encode_request, parse_options};
use bootfleet_rules_engine::facts::parse_mac;

use super::say;

/// Which client to imitate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Plain DHCP client (not network-booting).
    Plain,
    /// PXE ROM on BIOS.
    PxeBios,
    /// PXE on UEFI x64.
    PxeEfi,
    /// UEFI HTTP boot, x64.
    Http,
    /// iPXE on BIOS.
    Ipxe,
}

/// Arguments of `bootfleet probe-dhcp`.
#[derive(clap::Args)]
pub(crate) struct ProbeArgs {
    /// Interface to send on.
    #[arg(long)]
    interface: String,
    /// Client MAC to claim.
    #[arg(long)]
    mac: String,
    /// Client kind to imitate.
    #[arg(long, value_enum, default_value_t = Kind::PxeBios)]
    kind: Kind,
    /// How long to wait for an answer, in seconds.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Act as a relay agent with this address: set giaddr and option 82,
    /// send unicast to --dhcp-server, and listen on port 67 for the answer.
    #[arg(long, requires = "dhcp_server")]
    relay: Option<Ipv4Addr>,
    /// The DHCP server to send to when relaying (`--server` names the
    /// rules engine for every command).
    #[arg(long)]
    dhcp_server: Option<Ipv4Addr>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn discover(mac: [u8; 6], xid: u32, kind: Kind, relay: Option<Ipv4Addr>) -> Vec<u8> {
    let (class, arch): (&[u8], &[u8]) = match kind {
        Kind::Plain => (b"bootfleet-probe", &[]),
        Kind::PxeBios | Kind::Ipxe => (b"PXEClient:Arch:00000:UNDI:002001", &[0, 0]),
        Kind::PxeEfi => (b"PXEClient:Arch:00007:UNDI:003016", &[0, 7]),
        Kind::Http => (b"HTTPClient:Arch:00016:UNDI:003001", &[0, 16]),
    };
    let mut options: Vec<(u8, &[u8])> = vec![(53, &[1]), (60, class)];
    if !arch.is_empty() {
        options.push((93, arch));
    }
    if matches!(kind, Kind::Ipxe) {
        options.push((77, b"\x04iPXE"));
    }
    if relay.is_some() {
        // Relay agent information: circuit id "probe".
        options.push((82, &[1, 5, b'p', b'r', b'o', b'b', b'e']));
    }
    let mut datagram = encode_request(mac, xid, relay, &options);
    // The BOOTP minimum, as real ROMs send it.
    datagram.resize(datagram.len().max(300), 0);
    datagram
}

/// Runs the probe; exit status 2 when nothing answered.
#[allow(clippy::print_stdout)]
pub(crate) fn run(args: &ProbeArgs) -> anyhow::Result<i32> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mac_value =
        parse_mac(&args.mac).with_context(|| format!("--mac {:?} is not a MAC address", args.mac))?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&mac_value.to_be_bytes()[2..]);
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket
        .bind_device(Some(args.interface.as_bytes()))
        .with_context(|| format!("binding to interface {}", args.interface))?;
    // A relay listens where servers answer relays: port 67.
    let port = if args.relay.is_some() { 67 } else { 68 };
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| format!("binding port {port}"))?;
    let socket: std::net::UdpSocket = socket.into();
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ 0x5a5a_0000;
    let to = args.dhcp_server.filter(|_| args.relay.is_some()).unwrap_or(Ipv4Addr::BROADCAST);
    socket.send_to(&discover(mac, xid, args.kind, args.relay), (to, 67)).context("sending DHCPDISCOVER")?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout.max(0.1));
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            say("no answer");
            return Ok(2);
        }
        socket.set_read_timeout(Some(left))?;
        let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
        let reply = &buf[..len];
        if len < 240 || reply[0] != 2 || reply[4..8] != xid.to_be_bytes() {
            continue;
        }
        let options = match parse_options(&reply[240..]) {
            Ok(options) => options,
            Err(e) => bail!("malformed answer from {from}: {e}"),
        };
        let ip = |o: usize| Ipv4Addr::new(reply[o], reply[o + 1], reply[o + 2], reply[o + 3]);
        let text = |v: Option<&Vec<u8>>| {
            v.map(|v| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned()).unwrap_or_default()
        };
        let file = text(options.get(&67)).to_owned();
        let file = if file.is_empty() { text(Some(&reply[108..236].to_vec())) } else { file };
        let answer = serde_json::json!({
            "from": from.to_string(),
            "message_type": options.get(&53).and_then(|v| v.first()).copied().unwrap_or(0),
            "yiaddr": ip(16).to_string(),
            "siaddr": ip(20).to_string(),
            "file": file,
            "vendor_class": text(options.get(&60)),
            "server_id": options.get(&54).filter(|v| v.len() == 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]).to_string()),
            "giaddr": ip(24).to_string(),
            "relay_info": options.get(&82).map(|v| v.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        });
        if args.json {
            println!("{answer}");
        } else {
            for (k, v) in answer.as_object().into_iter().flatten() {
                println!("{k}: {v}");
            }
        }
        return Ok(0);
    }
}

//! `bootfleet-nbd-attach`: attaches `/dev/nbd<N>` to the first replica
//! that serves an export, through the kernel's NBD netlink interface, and
//! stays in the background to move it to another replica whenever its
//! connection dies — without an I/O error reaching the machine.
//!
//! How: the device is connected with a request timeout and a dead
//! connection timeout. When a connection dies (the server's TCP reset, or
//! a request unanswered past the request timeout), the kernel marks it
//! dead, multicasts `NBD_CMD_LINK_DEAD`, and holds every request (new
//! ones, and in-flight ones once their timeout requeues them) for up to
//! the dead connection timeout. This helper, subscribed to that group,
//! negotiates the same export with the next replica and hands the socket
//! over with `NBD_CMD_RECONFIGURE`; the held requests then go out on it.
//!
//! Runs in the vDisk initramfs (`boot/initramfs/bootfleet-vdisk.sh`) and
//! keeps running after `switch_root`.

mod sys;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bootfleet_nbd::attach::{self, failover_order};
use bootfleet_nbd::client::{ClientHandshake, ExportDetails, Progress};
use bootfleet_nbd::netlink::{self, DeviceConfig, Family, Message};
use bootfleet_nbd::wire::transmission;

const USAGE: &str = "usage: bootfleet-nbd-attach --replicas IP:PORT[,IP:PORT...] --export NAME
  [--device N] [--read-only] [--same-replica] [--request-timeout SECONDS]
  [--dead-timeout SECONDS] [--connect-timeout SECONDS]";
/// Its console lines read as the vDisk initramfs module's own: one
/// prefix for everything about the machine's root disk.
const LOG: &str = "bootfleet-vdisk:";
/// Seconds a request waits for its reply before the kernel declares the
/// connection dead and requeues it: the longest pause an in-flight
/// request sees when its replica dies without a word.
const DEFAULT_REQUEST_TIMEOUT: u64 = 1;
/// Seconds requests wait for any replica before they fail: a diskless
/// machine has nothing better to do than wait for one.
const DEFAULT_DEAD_TIMEOUT: u64 = 3600;
/// Seconds to connect to and negotiate with one replica.
const DEFAULT_CONNECT_TIMEOUT: u64 = 3;
/// Pauses between rounds over every replica while none serves.
const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

struct Options {
    replicas: Vec<String>,
    export: String,
    device: u32,
    read_only: bool,
    /// Reconnect to the replica that served last only: the export's state
    /// (a `server` write cache) lives there and nowhere else.
    same_replica: bool,
    request_timeout: u64,
    dead_timeout: u64,
    connect_timeout: Duration,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut replicas = None;
        let mut export = None;
        let mut options = Self {
            replicas: Vec::new(),
            export: String::new(),
            device: 0,
            read_only: false,
            same_replica: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            dead_timeout: DEFAULT_DEAD_TIMEOUT,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT),
        };
        while let Some(flag) = args.next() {
            if flag == "--read-only" {
                options.read_only = true;
                continue;
            }
            if flag == "--same-replica" {
                options.same_replica = true;
                continue;
            }
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            let number = || value.parse::<u64>().with_context(|| format!("{flag} {value:?}: not a number"));
            match flag.as_str() {
                "--replicas" => replicas = Some(attach::replica_list(&value)?),
                "--export" => export = Some(value),
                "--device" => options.device = u32::try_from(number()?)?,
                "--request-timeout" => options.request_timeout = number()?,
                "--dead-timeout" => options.dead_timeout = number()?,
                "--connect-timeout" => options.connect_timeout = Duration::from_secs(number()?.max(1)),
                _ => bail!("unknown argument {flag:?}"),
            }
        }
        options.replicas = replicas.context("--replicas is required")?;
        options.export = export.context("--export is required")?;
        for replica in &options.replicas {
            attach::replica_address(replica)?;
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{LOG} bootfleet-nbd-attach: {error:#}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{LOG} bootfleet-nbd-attach: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> anyhow::Result<()> {
    if let Err(error) = sys::stay_resident() {
        eprintln!("{LOG} bootfleet-nbd-attach cannot lock its memory ({error}); going on");
    }
    // The kernel's OOM killer must not pick the process the root disk
    // depends on.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let mut kernel = Kernel::open()?;
    // Subscribed before the device exists, so no death goes unseen.
    let events = sys::NetlinkSocket::open().context("opening a netlink socket")?;
    events.join_group(kernel.family.link_dead_group).context("joining the NBD multicast group")?;

    let (current, stream, details) = first_serving(options)?;
    let mut server_flags = u64::from(details.transmission_flags);
    if options.read_only {
        server_flags |= u64::from(transmission::READ_ONLY);
    }
    let config = DeviceConfig {
        index: options.device,
        size: details.size,
        block_size: attach::device_block_size(&details)?,
        server_flags,
        request_timeout: options.request_timeout,
        dead_connection_timeout: options.dead_timeout,
    };
    let fd = stream.as_raw_fd() as u32;
    kernel
        .request(|family, seq| netlink::connect_request(family, seq, &config, fd))
        .with_context(|| format!("connecting /dev/nbd{}", options.device))?;
    drop(stream);
    eprintln!(
        "{LOG} /dev/nbd{} attached {} from {} ({} bytes)",
        options.device, options.export, options.replicas[current], details.size
    );
    sys::continue_in_background().context("detaching")?;
    sys::ignore_termination_signals();
    watch(options, &mut kernel, &events, current, details.size)
}

/// The first replica, in list order, that serves the export.
fn first_serving(options: &Options) -> anyhow::Result<(usize, TcpStream, ExportDetails)> {
    for (index, replica) in options.replicas.iter().enumerate() {
        match negotiate(replica, &options.export, options.connect_timeout) {
            Ok((stream, details)) => return Ok((index, stream, details)),
            Err(error) => {
                eprintln!(
                    "{LOG} replica {replica} did not serve {}; trying the next ({error:#})",
                    options.export
                );
            }
        }
    }
    bail!("no replica in {} serves {}", options.replicas.join(","), options.export)
}

/// Waits for the device's connection to die and moves it, forever.
fn watch(
    options: &Options,
    kernel: &mut Kernel,
    events: &sys::NetlinkSocket,
    mut current: usize,
    size: u64,
) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let died = match events.receive(&mut buffer) {
            Ok(len) => netlink::parse_messages(&buffer[..len], kernel.family.id)
                .unwrap_or_default()
                .iter()
                .any(|message| matches!(message, Message::LinkDead { index } if *index == options.device)),
            // The kernel dropped messages for us: one may have been a
            // death. Reconfiguring a device with no dead connection is
            // refused harmlessly (ENOSPC).
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => true,
            Err(error) => return Err(error).context("reading NBD events"),
        };
        if died {
            current = reattach(options, kernel, current, size);
        }
    }
}

/// Gives the device a connection to the first replica after `current`
/// that serves the export (retrying rounds until one does); the index.
fn reattach(options: &Options, kernel: &mut Kernel, current: usize, size: u64) -> usize {
    let started = Instant::now();
    eprintln!("{LOG} /dev/nbd{}: the connection to {} died", options.device, options.replicas[current]);
    for round in 0usize.. {
        let order = if options.same_replica {
            vec![current]
        } else {
            failover_order(options.replicas.len(), current)
        };
        for index in order {
            let replica = &options.replicas[index];
            let attempt =
                negotiate(replica, &options.export, options.connect_timeout).and_then(|(stream, details)| {
                    if details.size != size {
                        bail!("serves {} bytes, not {size}: another image", details.size);
                    }
                    let fd = stream.as_raw_fd() as u32;
                    kernel
                        .request(|family, seq| netlink::reconfigure_request(family, seq, options.device, fd))
                });
            match attempt {
                Ok(()) => {
                    eprintln!(
                        "{LOG} /dev/nbd{} reattached {} from {replica} after {} ms",
                        options.device,
                        options.export,
                        started.elapsed().as_millis()
                    );
                    return index;
                }
                Err(error) if is_errno(&error, libc::ENOSPC) => {
                    // No dead connection to replace: a dropped event
                    // that was not a death.
                    return current;
                }
                Err(error) => {
                    eprintln!("{LOG} replica {replica} did not serve {}: {error:#}", options.export)
                }
            }
        }
        std::thread::sleep(RETRY_PAUSES[round.min(RETRY_PAUSES.len() - 1)]);
    }
    unreachable!("the rounds above only end by returning")
}

fn is_errno(error: &anyhow::Error, errno: i32) -> bool {
    error.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(errno)
}

/// Connects to `replica` and negotiates `export`; the socket is ready for
/// the transmission phase (no timeouts left on it: the kernel's recv
/// would otherwise take an idle disk for a dead one).
fn negotiate(replica: &str, export: &str, timeout: Duration) -> anyhow::Result<(TcpStream, ExportDetails)> {
    let address = attach::replica_address(replica)?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).context("connecting")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut handshake = ClientHandshake::new(export)?;
    let mut buffer = [0u8; 4096];
    let details = loop {
        let output = handshake.take_output();
        if !output.is_empty() {
            stream.write_all(&output).context("sending the handshake")?;
        }
        let len = stream.read(&mut buffer).context("reading the handshake")?;
        if len == 0 {
            bail!("closed the connection during the handshake");
        }
        if let Progress::Done(details) = handshake.receive(&buffer[..len])? {
            break details;
        }
    };
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok((stream, details))
}

/// Requests to the kernel's NBD driver, each waited for.
struct Kernel {
    socket: sys::NetlinkSocket,
    family: Family,
    seq: u32,
}

impl Kernel {
    fn open() -> anyhow::Result<Self> {
        let socket = sys::NetlinkSocket::open().context("opening a netlink socket")?;
        socket.send(&netlink::get_family_request(1))?;
        let messages = Self::answer(&socket, 1, 0)
            .context("the kernel has no \"nbd\" generic netlink family (is nbd.ko loaded?)")?;
        let family = netlink::nbd_family(&messages)?;
        Ok(Self { socket, family, seq: 1 })
    }

    /// Sends the request `build` makes and waits for its acknowledgement.
    fn request(&mut self, build: impl FnOnce(&Family, u32) -> Vec<u8>) -> anyhow::Result<()> {
        self.seq += 1;
        self.socket.send(&build(&self.family, self.seq))?;
        Self::answer(&self.socket, self.seq, self.family.id)?;
        Ok(())
    }

    /// The messages up to the acknowledgement of `seq`; its error as an
    /// `io::Error` if it failed.
    fn answer(socket: &sys::NetlinkSocket, seq: u32, family: u16) -> anyhow::Result<Vec<Message>> {
        let mut buffer = vec![0u8; 32 * 1024];
        let mut messages = Vec::new();
        loop {
            let len = socket.receive(&mut buffer)?;
            for message in netlink::parse_messages(&buffer[..len], family)? {
                match message {
                    Message::Ack { seq: acked } if acked == seq => return Ok(messages),
                    Message::Error { seq: failed, errno } if failed == seq => {
                        return Err(std::io::Error::from_raw_os_error(errno).into());
                    }
                    other => messages.push(other),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn the_initramfs_command_line_parses() {
        let options = parse(&[
            "--replicas",
            "198.18.71.11:10809,198.18.71.12",
            "--export",
            "img/1/root.ext4",
            "--device",
            "0",
            "--read-only",
            "--request-timeout",
            "2",
            "--dead-timeout",
            "60",
        ])
        .unwrap();
        assert_eq!(options.replicas, ["198.18.71.11:10809", "198.18.71.12"]);
        assert_eq!(options.export, "img/1/root.ext4");
        assert!(options.read_only && !options.same_replica);
        assert_eq!((options.request_timeout, options.dead_timeout), (2, 60));
        let options = parse(&["--export", "host/x", "--same-replica", "--replicas", "10.0.0.1"]).unwrap();
        assert!(options.same_replica && !options.read_only);
        assert_eq!(options.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let error = |args: &[&str]| format!("{:#}", parse(args).err().expect("refused"));
        assert!(error(&["--export", "x"]).contains("--replicas is required"));
        assert!(error(&["--replicas", "10.0.0.1"]).contains("--export is required"));
        assert!(error(&["--replicas", "name:10809", "--export", "x"]).contains("not IP:PORT"));
        assert!(error(&["--replicas", "10.0.0.1", "--export", "x", "--device"]).contains("needs a value"));
        assert!(
            error(&["--replicas", "10.0.0.1", "--export", "x", "--dead-timeout", "soon"])
                .contains("not a number")
        );
        assert!(
            error(&["--replicas", "10.0.0.1", "--export", "x", "--verbose", "1"])
                .contains("unknown argument")
        );
    }
}

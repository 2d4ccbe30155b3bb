//! The image streamer's HTTP port: slowloris (requests whose headers never
//! end, trickled a line at a time), past the connection cap, and a small
//! HTTP/1.1 client for the attacks that send many requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::boot::{boot, boot_during};
use crate::dhcp::Xorshift;
use crate::lab::{CLIENT_NS, HTTP_MAX_CONNECTIONS, HTTP_PORT, Lab, MAX_HOSTS, SERVER_IP, in_netns, wait_for};

/// Half-sent requests held below the cap while the boots run.
const HELD: usize = 2_000;
/// More, opened once the boots are done, past the cap.
const PAST_CAP: usize = 1_000;
/// `streamer.http_header_timeout` (the default): every half-sent request
/// is closed this long after its first byte, however it trickles.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BOOT_SCRIPTS: usize = 2_000;

/// 2,000 requests whose headers never end, each sending one more header
/// line every second: the streamer holds them (they are under its cap of
/// 2,500) and the real boot's HTTP goes through beside them. Then 1,000
/// more: those past the cap are told `503` with `Retry-After` at once, not
/// left hanging. The header timeout then closes every one of them, and a
/// boot after that succeeds too.
pub(crate) fn slowloris(lab: &Lab) -> String {
    let open = |lab: &Lab| lab.metrics().sum("bootfleet_streamer_http_connections");
    let refused = |lab: &Lab| lab.metrics().sum("bootfleet_streamer_http_connections_refused_total");
    let (open_before, refused_before) = (open(lab), refused(lab));
    let trickling = AtomicBool::new(true);
    let held = in_netns(CLIENT_NS, || half_sent(HELD));
    let refusals = std::thread::scope(|scope| {
        wait_for("the streamer to hold every half-sent request", Duration::from_secs(30), || {
            open(lab) >= open_before + HELD as f64
        });
        let trickler = scope.spawn(|| trickle(&held, &trickling));
        lab.record_boot(boot(lab));
        // The boot went through while every half-sent request was held.
        let still = open(lab) - open_before;
        assert!(still >= HELD as f64, "only {still} half-sent requests were still held after the boot");
        let extra = in_netns(CLIENT_NS, || half_sent(PAST_CAP));
        // The streamer has taken or refused every connection…
        wait_for("the streamer to admit or refuse each connection", Duration::from_secs(30), || {
            open(lab) - open_before + refused(lab) - refused_before >= (HELD + PAST_CAP) as f64
        });
        // …and each refused one reads its answer.
        let refusals = told_503(&extra, (refused(lab) - refused_before) as usize);
        // Every half-sent request, still trickling, is closed by the server
        // once its header time is up (or was refused).
        let closed_within = HEADER_TIMEOUT + Duration::from_secs(20);
        let started = Instant::now();
        for stream in held.iter().chain(&extra) {
            let left = closed_within.saturating_sub(started.elapsed());
            assert!(closed_by_server(stream, left), "a half-sent request was open after {closed_within:?}");
        }
        trickling.store(false, Ordering::Release);
        trickler.join().unwrap();
        refusals
    });
    let past_cap = (HELD + PAST_CAP).saturating_sub(HTTP_MAX_CONNECTIONS);
    assert!(refusals >= past_cap, "{refusals} of the {PAST_CAP} requests past the cap were told 503");
    assert_eq!(refused(lab) - refused_before, refusals as f64, "refusals counted");
    wait_for("the streamer to count them closed", Duration::from_secs(10), || open(lab) <= open_before);
    lab.record_boot(boot(lab));
    format!(
        "{HELD} held under the cap of {HTTP_MAX_CONNECTIONS}; {refusals} of {PAST_CAP} past it told 503; all closed by the header timeout"
    )
}

/// Boot-script requests for random MACs a rule boots (anyone on the boot
/// network can send them): the streamer records such hosts up to
/// `rules.max_hosts` (the `[rules]` setting, not its own default), and
/// keeps a boot status only for hosts with a record.
pub(crate) fn boot_script_flood(lab: &Lab) -> String {
    let mut random = Xorshift(0x5851_f42d_4c95_7f2d ^ u64::from(std::process::id()));
    let macs: Vec<String> = (0..BOOT_SCRIPTS)
        .map(|_| {
            let b = random.next().to_be_bytes();
            format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
        })
        .collect();
    let statuses = boot_during(lab, |begun| {
        in_netns(CLIENT_NS, || {
            let mut connection = Connection::open();
            begun.store(true, Ordering::Release);
            macs.iter()
                .map(|mac| connection.get(&format!("/boot.ipxe?mac={mac}")).unwrap().status)
                .collect::<Vec<_>>()
        })
    });
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(served, BOOT_SCRIPTS, "every host a rule boots gets its script");
    lab.settle();
    let keys = lab.keys();
    let hosts: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("/bootfleet/v1/hosts/")).collect();
    let statuses: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("/bootfleet/v1/boots/")).collect();
    assert!(hosts.len() <= MAX_HOSTS, "{} host records, the cap is {MAX_HOSTS}", hosts.len());
    let unrecorded = statuses.iter().filter(|mac| !hosts.contains(mac)).count();
    assert_eq!(
        unrecorded,
        0,
        "{unrecorded} boot statuses of hosts without a record ({} in all)",
        statuses.len()
    );
    format!(
        "{served} scripts served; {} host records (cap {MAX_HOSTS}), {} boot statuses",
        hosts.len(),
        statuses.len()
    )
}

/// Opens `count` connections, each sending a request line and one header,
/// never the blank line that ends the headers.
fn half_sent(count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream = TcpStream::connect((SERVER_IP, HTTP_PORT)).unwrap();
            let start =
                format!("GET /boot.ipxe?mac=52:54:00:ab:cd:ef&slow={i} HTTP/1.1\r\nHost: {SERVER_IP}\r\n");
            stream.write_all(start.as_bytes()).unwrap();
            stream
        })
        .collect()
}

/// One more header line on every open stream each second, until told to stop.
fn trickle(streams: &[TcpStream], trickling: &AtomicBool) {
    let mut n = 0;
    while trickling.load(Ordering::Acquire) {
        for mut stream in streams {
            // A stream the server closed fails here; that is expected.
            let _ = stream.write_all(format!("X-Slow-{n}: 1\r\n").as_bytes());
        }
        n += 1;
        let next = Instant::now() + Duration::from_secs(1);
        while trickling.load(Ordering::Acquire) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many of `streams` were answered `503` with `Retry-After` (the
/// refusal is written as the connection is accepted), once `refused` of
/// them have an answer to read or 10 s have passed.
fn told_503(streams: &[TcpStream], refused: usize) -> usize {
    let mut answered = vec![None; streams.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.iter().flatten().count() < refused && Instant::now() < deadline {
        for (mut stream, answer) in streams.iter().zip(answered.iter_mut()).filter(|(_, a)| a.is_none()) {
            stream.set_nonblocking(true).unwrap();
            let mut head = [0u8; 128];
            if let Ok(n) = stream.read(&mut head) {
                let text = String::from_utf8_lossy(&head[..n]);
                *answer = Some(text.starts_with("HTTP/1.1 503") && text.contains("Retry-After: 1"));
            }
            stream.set_nonblocking(false).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    answered.iter().filter(|a| **a == Some(true)).count()
}

/// Waits up to `within` for the server to close `stream` (end of stream or
/// a reset, after whatever it sent).
fn closed_by_server(stream: &TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    let mut stream = stream;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left.min(Duration::from_secs(1)))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

/// An HTTP/1.1 response.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection to the streamer.
pub(crate) struct Connection(BufReader<TcpStream>);

impl Connection {
    pub(crate) fn open() -> Self {
        let stream = TcpStream::connect((SERVER_IP, HTTP_PORT)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self(BufReader::new(stream))
    }

    /// `GET path`; the response (bodies by Content-Length or chunked).
    pub(crate) fn get(&mut self, path: &str) -> std::io::Result<Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {SERVER_IP}\r\n\r\n");
        self.0.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.0.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; size + 2];
                self.0.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.0.read_exact(&mut body)?;
        }
        Ok(Response { status, body })
    }
}

//! The one lab every attack shares: `bootfleet up` on a one-member etcd in
//! a server namespace, the attackers in a client namespace, joined by a
//! veth pair in 198.18.80.0/24, and the host that boots for real in a third
//! namespace on a macvlan of the client's end: a machine of its own on the
//! same segment, whose NIC sees broadcasts and its own traffic only, as a
//! switch port would. The lab reads what the attacks measure: the process's
//! resident memory, the store's keys (with etcdctl: the honest count) and
//! the process's metrics.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;

use crate::common::{assets, wait_serving_in};
use crate::measure::{Boots, Metrics, rss_of};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
pub(crate) const SERVER_NS: &str = "bfwA";
pub(crate) const CLIENT_NS: &str = "bfwB";
pub(crate) const SERVER_IF: &str = "bfwA-wB";
pub(crate) const CLIENT_IF: &str = "bfwB-wA";
pub(crate) const BOOT_NS: &str = "bfwC";
pub(crate) const BOOT_IF: &str = "bfwC-boot";
pub(crate) const SERVER_IP: &str = "198.18.80.1";
pub(crate) const CLIENT_IP: &str = "198.18.80.2";
pub(crate) const BOOT_IP: &str = "198.18.80.4";
/// The host that boots for real beside every attack. Its hex letters give
/// the MAC-spelling attack its case variants.
pub(crate) const BOOT_MAC: &str = "52:54:00:ab:cd:ef";
/// Hosts whose boot script carries facts from the query (hostile facts).
pub(crate) const FACTS_KERNEL_MAC: &str = "52:54:00:00:66:01";
pub(crate) const FACTS_SCRIPT_MAC: &str = "52:54:00:00:67:01";
pub(crate) const RULES_URL: &str = "http://127.0.0.1:7070";
pub(crate) const IMAGES_URL: &str = "http://127.0.0.1:7072";
pub(crate) const ADMIN_PORT: u16 = 9100;
pub(crate) const HTTP_PORT: u16 = 8080;
pub(crate) const ADMIN_TOKEN: &str = "hostile-admin-token-0123456789";
pub(crate) const SERVICE_TOKEN: &str = "hostile-service-token-0123456789";
/// `rules.max_hosts` in the lab: small, so that the cap shows.
pub(crate) const MAX_HOSTS: usize = 64;
/// `streamer.http_max_connections` in the lab (the default is 10,000).
pub(crate) const HTTP_MAX_CONNECTIONS: usize = 2_500;
/// The loader PXE clients get, and a file netascii transfers convert.
pub(crate) const LOADER: &str = "undionly.kpxe";
pub(crate) const BIG_TEXT: &str = "big.txt";
/// `bootfleet up`'s log filter in the lab.
const LOG_FILTER: &str = "warn";

/// Everything the lab started; fields drop in order: the process, etcd,
/// then the namespaces (which kill anything left inside by PID).
pub(crate) struct Lab {
    _up: ChildGuard,
    pub(crate) up_pid: u32,
    etcd: EtcdCluster,
    pub(crate) server: Netns,
    pub(crate) client: Netns,
    pub(crate) booter: Netns,
    pub(crate) dir: tempfile::TempDir,
    /// Reports sent by [`Self::settle`] so far.
    settles: AtomicU64,
    /// `bootfleet up`'s log (its stderr).
    pub(crate) log: PathBuf,
    /// Whether the process logs at [`LOG_FILTER`], the level the
    /// attacks' log-line bound assumes.
    pub(crate) log_filter_is_default: bool,
    /// Boots since the last [`Self::take_boots`].
    boots: std::sync::Mutex<Boots>,
}

impl Lab {
    /// Starts the namespaces, etcd and `bootfleet up`, pushes the image
    /// and applies the rules.
    pub(crate) fn start() -> Self {
        let server = Netns::create(SERVER_NS).unwrap();
        let client = Netns::create(CLIENT_NS).unwrap();
        link(&server, &format!("{SERVER_IP}/24"), &client, &format!("{CLIENT_IP}/24")).unwrap();
        client.run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
        let booter = Netns::create(BOOT_NS).unwrap();
        booter.run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
        let macvlan =
            ["link", "add", "link", CLIENT_IF, "name", BOOT_IF, "address", BOOT_MAC, "type", "macvlan"];
        client.ip(&[&macvlan[..], &["mode", "bridge"]].concat()).unwrap();
        client.ip(&["link", "set", BOOT_IF, "netns", BOOT_NS]).unwrap();
        booter.ip(&["addr", "add", &format!("{BOOT_IP}/24"), "dev", BOOT_IF]).unwrap();
        booter.ip(&["link", "set", BOOT_IF, "up"]).unwrap();
        let etcd = EtcdCluster::start_in(1, Some(SERVER_NS)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tftp = dir.path().join("tftp");
        std::fs::create_dir(&tftp).unwrap();
        std::fs::copy(assets().join(LOADER), tftp.join(LOADER)).unwrap();
        std::fs::write(tftp.join(BIG_TEXT), big_text()).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        std::fs::write(dir.path().join("service.token"), SERVICE_TOKEN).unwrap();
        let config = dir.path().join("lab.toml");
        std::fs::write(&config, config_text(dir.path(), &etcd.endpoint(0))).unwrap();
        // BOOTFLEET_HOSTILE_LOG sets the process's log filter (default:
        // warnings, which the attacks' log-line bound is about).
        let filter = std::env::var("BOOTFLEET_HOSTILE_LOG").unwrap_or_else(|_| LOG_FILTER.into());
        let log = dir.path().join("up.log");
        let up = server
            .command(BIN)
            .args(["up", "-c", config.to_str().unwrap(), "--log", &filter])
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let up = ChildGuard(up);
        // `ip netns exec` execs the program: the PID is bootfleet's own.
        let up_pid = up.0.id();
        wait_serving_in(&server, ADMIN_PORT, "dhcp: serving", Duration::from_secs(60));
        let comm = std::fs::read_to_string(format!("/proc/{up_pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "bootfleet", "the PID measured is bootfleet up's");
        let lab = Self {
            _up: up,
            up_pid,
            etcd,
            server,
            client,
            dir,
            settles: AtomicU64::new(0),
            log,
            log_filter_is_default: filter == LOG_FILTER,
            booter,
            boots: Default::default(),
        };
        lab.push_image();
        lab.apply_rules();
        lab
    }

    /// The lab's own copy of a boot file it serves (the loader, or a file
    /// of the image), taken at its start: the shared boot assets may be
    /// rebuilt while the suite runs.
    pub(crate) fn original(&self, name: &str) -> PathBuf {
        if name == LOADER {
            self.dir.path().join("tftp").join(name)
        } else {
            self.dir.path().join("image").join(name)
        }
    }

    /// Records how a boot went.
    pub(crate) fn record_boot(&self, result: Result<(), String>) {
        let mut boots = self.boots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => boots.ok += 1,
            Err(e) => boots.failures.push(e),
        }
    }

    /// The boots recorded since the last call.
    pub(crate) fn take_boots(&self) -> Boots {
        std::mem::take(&mut *self.boots.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Boots recorded since the last [`Self::take_boots`].
    pub(crate) fn boots_so_far(&self) -> usize {
        self.boots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).total()
    }

    /// Runs the bootfleet CLI in the server namespace.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.server.command(BIN).args(args).output().unwrap()
    }

    fn push_image(&self) {
        let image = self.dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        for file in ["vmlinuz", "initrd.img"] {
            std::fs::copy(assets().join(file), image.join(file)).unwrap();
        }
        let token = self.dir.path().join("admin.token");
        let push = self.cli(&[
            "images",
            "push",
            image.to_str().unwrap(),
            "--image",
            "tiny",
            "--version",
            "1",
            "--images-server",
            IMAGES_URL,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
    }

    fn apply_rules(&self) {
        let file = self.dir.path().join("rules.yaml");
        std::fs::write(&file, MANIFEST).unwrap();
        let out = self.cli(&[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--activate",
            "--server",
            RULES_URL,
            "--token",
            ADMIN_TOKEN,
        ]);
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["evaluate", "--mac", BOOT_MAC, "--dry-run", "--server", RULES_URL]);
            if String::from_utf8_lossy(&out.stdout).contains("image=tiny") {
                return;
            }
            assert!(Instant::now() < deadline, "the rules never became active");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lines in `bootfleet up`'s log so far.
    pub(crate) fn log_lines(&self) -> usize {
        std::fs::read(&self.log).map_or(0, |text| text.iter().filter(|b| **b == b'\n').count())
    }

    /// The last `n` lines of `bootfleet up`'s log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The lab's etcd endpoint.
    pub(crate) fn etcd_endpoint(&self) -> String {
        self.etcd.endpoint(0)
    }

    /// The process's resident memory (VmRSS), in bytes.
    pub(crate) fn rss(&self) -> u64 {
        rss_of(self.up_pid)
    }

    /// Every key in the store, counted with etcdctl (nothing but bootfleet
    /// writes to this etcd).
    pub(crate) fn keys(&self) -> Vec<String> {
        let out = self
            .server
            .run("etcdctl", &["--endpoints", &self.etcd.endpoint(0), "get", "", "--from-key", "--keys-only"])
            .unwrap();
        out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// The process's metrics, read from its admin port.
    pub(crate) fn metrics(&self) -> Metrics {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}/metrics");
        Metrics::parse(&self.server.run("curl", &["-sf", "--max-time", "10", &url]).unwrap())
    }

    /// Waits until everything queued so far is in the store, so that a key
    /// count sees all an attack caused: no decision waits for a host record,
    /// and the streamer's boot-report writer has written every report.
    pub(crate) fn settle(&self) {
        wait_for("the host-record queue to empty", Duration::from_secs(30), || {
            self.metrics().sum("bootfleet_rules_host_events_pending_bytes") == 0.0
        });
        // The report writer takes all that is pending and writes it before it
        // takes more. A report sent now, once stored, says the batch it was
        // taken in is being written; a second one, once stored, says that
        // batch — holding everything queued before the first — is done.
        for _ in 0..2 {
            let stage = format!("settle-{}", self.settles.fetch_add(1, Ordering::Relaxed));
            let url = format!("http://{SERVER_IP}:{HTTP_PORT}/report/{BOOT_MAC}/{stage}");
            wait_for("the streamer to take a report for the booted host", Duration::from_secs(30), || {
                self.client.run("curl", &["-sf", "--max-time", "10", "-X", "POST", &url]).is_ok()
            });
            let key = format!("/bootfleet/v1/boots/{BOOT_MAC}");
            wait_for("the report to be written", Duration::from_secs(30), || {
                let args = ["--endpoints", &self.etcd.endpoint(0), "get", &key, "--print-value-only"];
                self.server.run("etcdctl", &args).is_ok_and(|value| value.contains(&stage))
            });
        }
    }

    /// The DHCP responder's requests by outcome and its lease-phase
    /// latencies, for a failed boot's message.
    pub(crate) fn dhcp_outcomes(&self) -> String {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}/metrics");
        let text = self.server.run("curl", &["-sf", "--max-time", "10", &url]).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("bootfleet_dhcp_requests_total")
                    || l.starts_with("bootfleet_dhcp_request_seconds_sum")
            })
            .collect();
        lines.join(", ")
    }

    /// UDP datagrams the server namespace's kernel dropped (receive
    /// errors: a socket's buffer was full).
    pub(crate) fn udp_receive_errors(&self) -> f64 {
        let snmp = self.server.run("cat", &["/proc/net/snmp"]).unwrap();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else { panic!("no Udp lines in {snmp}") };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "InErrors")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no Udp InErrors in {snmp}"))
    }

    /// Adds an address to the client's interface (an attacker's source).
    pub(crate) fn add_client_address(&self, address: &str) {
        self.client.ip(&["addr", "add", &format!("{address}/24"), "dev", CLIENT_IF]).unwrap();
    }
}

/// Polls `done` every 50 ms; panics naming `what` after `within`.
pub(crate) fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `work` on a thread that has entered network namespace `ns`, so
/// every socket it (and any thread or runtime it starts) opens is inside;
/// checks that it is before `work` runs.
pub(crate) fn in_netns<T: Send>(ns: &str, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let path = format!("/run/netns/{ns}");
                let handle = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let inside = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
                assert_eq!(inside, std::fs::metadata(&path).unwrap().ino(), "not inside {ns}");
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A one-thread tokio runtime (for async clients inside [`in_netns`]).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// 8 MiB of text lines (LF endings, a few bare CRs): netascii rewrites
/// both as it streams.
fn big_text() -> Vec<u8> {
    let mut text = Vec::with_capacity(8 << 20);
    let mut line = 0u64;
    while text.len() < 8 << 20 {
        let ending: &[u8] = if line.is_multiple_of(7) { b"\r\n" } else { b"\n" };
        text.extend_from_slice(format!("line {line:08} of a loader's release notes").as_bytes());
        text.extend_from_slice(ending);
        line += 1;
    }
    text
}

/// The rules: every host of the lab boots the tiny image; two boot with
/// the facts of their query in their command line or script.
const MANIFEST: &str = r##"
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 bootfleet.marker=hostile"
  - name: facts-cmdline
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 serial={{facts.serial}} host={{facts.hostname}} rack={{facts.label.rack}} quiet"
  - name: facts-script
    script: "#!ipxe\necho serial {{facts.serial}} host {{facts.hostname}} rack {{facts.label.rack}}\nset rack {{facts.label.rack}}\nsanboot --no-describe --drive 0x80 || exit 1\n"
rules:
  - { name: facts-cmdline, match: { mac: "52:54:00:00:66:*" }, image_profile: facts-cmdline }
  - { name: facts-script, match: { mac: "52:54:00:00:67:*" }, image_profile: facts-script }
  - { name: lab, match: { mac: "52:54:00:*" }, image_profile: tiny }
"##;

fn config_text(dir: &Path, etcd: &str) -> String {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    format!(
        r#"
[store]
backend = "etcd"
etcd_endpoints = ["{etcd}"]
data_dir = "{data}"
[member]
id = "hostile"
[admin]
listen = "127.0.0.1:{ADMIN_PORT}"
[rules]
listen = "127.0.0.1:7070"
admin_token_file = "{admin}"
service_token_file = "{service}"
max_hosts = {MAX_HOSTS}
[tftp]
listen = "{SERVER_IP}:69"
root = "{tftp}"
rules_url = "{RULES_URL}"
http_base = "http://{SERVER_IP}:{HTTP_PORT}"
[streamer]
listen = "{SERVER_IP}:{HTTP_PORT}"
grpc_listen = "127.0.0.1:7072"
data_dir = "{streamer}"
admin_token_file = "{admin}"
loaders_dir = "{tftp}"
http_max_connections = {HTTP_MAX_CONNECTIONS}
[dhcp]
mode = "full"
interfaces = ["{SERVER_IF}"]
server_ip = "{SERVER_IP}"
http_base = "http://{SERVER_IP}:{HTTP_PORT}"
rules_url = "{RULES_URL}"
[[dhcp.pools]]
subnet = "198.18.80.0/24"
start = "198.18.80.100"
end = "198.18.80.150"
lease_time = "10m"
"#,
        data = path("data").display(),
        admin = path("admin.token").display(),
        service = path("service.token").display(),
        tftp = path("tftp").display(),
        streamer = path("streamer").display(),
    )
}

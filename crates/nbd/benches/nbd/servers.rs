//! The servers under test, each a process of its own on 127.0.0.1,
//! serving the same golden file read-only as `golden`, and a
//! copy-on-write overlay over it as `cache/bench` (Bootfleet's `server`
//! write cache, a qcow2 overlay for qemu-nbd, the cow filter for nbdkit).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootfleet_nbd::export::FileExport;
use bootfleet_nbd::metrics::NbdMetrics;
use bootfleet_nbd::overlay::WriteCaches;
use bootfleet_nbd::server::{self, NbdConfig, NbdServer};
use bootfleet_nbd::static_exports::StaticExports;

/// Set in a child of this bench: serve as Bootfleet (value
/// `<port>|<golden>|<cache dir>`).
pub(crate) const SERVE_BOOTFLEET: &str = "NBD_BENCH_SERVE_BOOTFLEET";

/// What a server is started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `golden`, read-only.
    Read,
    /// `cache/bench`, a copy-on-write overlay over the golden file.
    Write,
}

pub(crate) struct Server {
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URI of the export for `role`.
    pub(crate) fn uri(&self, role: Role) -> String {
        match role {
            Role::Read => format!("nbd://127.0.0.1:{}/golden", self.port),
            Role::Write => format!("nbd://127.0.0.1:{}/cache/bench", self.port),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port` (10 s at most).
fn wait_listening(server: Server) -> Option<Server> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", server.port)).is_err() {
        if Instant::now() > deadline {
            println!("({} did not start listening)", server.name);
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

fn spawn(name: &'static str, port: u16, command: &mut Command) -> Option<Server> {
    match command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => wait_listening(Server { name, port, child }),
        Err(e) => {
            println!("({name} not started: {e}; scripts/install-deps.sh test installs it)");
            None
        }
    }
}

pub(crate) fn start_bootfleet(golden: &Path, scratch: &Path) -> Option<Server> {
    let port = free_port();
    let spec = format!("{port}|{}|{}", golden.display(), scratch.join("bootfleet-caches").display());
    let exe = std::env::current_exe().ok()?;
    spawn("bootfleet", port, Command::new(exe).env(SERVE_BOOTFLEET, spec))
}

pub(crate) fn start_qemu_nbd(golden: &Path, scratch: &Path, role: Role) -> Option<Server> {
    let port = free_port();
    let mut command = Command::new("qemu-nbd");
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--persistent", "--shared=16"]);
    command.args(["--cache=writeback", "--aio=threads"]);
    match role {
        Role::Read => {
            command.args(["--read-only", "-x", "golden", "-f", "raw"]).arg(golden);
        }
        Role::Write => {
            let overlay = scratch.join("qemu-overlay.qcow2");
            let _ = std::fs::remove_file(&overlay);
            let created = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(golden)
                .arg(&overlay)
                .status()
                .ok()?;
            if !created.success() {
                return None;
            }
            command.args(["-x", "cache/bench", "-f", "qcow2"]).arg(overlay);
        }
    }
    spawn("qemu-nbd", port, &mut command)
}

pub(crate) fn start_nbdkit(golden: &Path, scratch: &Path, role: Role) -> Option<Server> {
    let port = free_port();
    let mut command = Command::new("nbdkit");
    command.args(["--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", &port.to_string()]);
    // The cow filter keeps its overlay in TMPDIR: the same disk as ours.
    command.env("TMPDIR", scratch);
    match role {
        Role::Read => command.arg("--readonly"),
        Role::Write => command.arg("--filter=cow"),
    };
    command.arg("file").arg(golden);
    spawn("nbdkit", port, &mut command)
}

/// The Bootfleet server, in this (child) process, until killed.
pub(crate) fn serve_bootfleet(spec: &str) {
    let mut parts = spec.split('|');
    let (Some(port), Some(golden), Some(caches)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {SERVE_BOOTFLEET}: {spec}");
    };
    let golden = Path::new(golden);
    let size = std::fs::metadata(golden).unwrap().len();
    let metrics = Arc::new(NbdMetrics::default());
    // Room for a whole copy of the export: the write test fills it.
    let caches = Arc::new(WriteCaches::new(Path::new(caches), size, 4, Arc::clone(&metrics)).unwrap());
    let exports = StaticExports::new()
        .with_file("golden", FileExport::open(golden).unwrap())
        .with_write_cache("cache", FileExport::open(golden).unwrap(), caches);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap();
        let server = NbdServer::new(NbdConfig::default(), Arc::new(exports), metrics);
        let stop = tokio_util::sync::CancellationToken::new();
        server::serve(listener, server, stop, tokio_util::task::TaskTracker::new()).await;
    });
}

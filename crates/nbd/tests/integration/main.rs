//! The NBD server with real clients (libnbd's nbdinfo and nbdcopy, QEMU's
//! qemu-img and qemu-io), and a raw client for what real clients never
//! send. Each test starts its own server in-process on 127.0.0.1.

mod clients;
mod hostile;
mod mirror;
mod overlay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootfleet_nbd::export::{Export, ExportError, Exports, FileExport};
use bootfleet_nbd::metrics::NbdMetrics;
use bootfleet_nbd::options::ExportInfo;
use bootfleet_nbd::overlay::WriteCaches;
use bootfleet_nbd::server::{self, NbdConfig, NbdServer};
use bootfleet_nbd::static_exports::StaticExports;
use bootfleet_test_support::process::ChildGuard;
use bootfleet_test_support::pseudo_random;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Size of the golden image: several MiB and not a multiple of 64 KiB, so
/// the last write-cache cluster is short.
pub(crate) const GOLDEN_SIZE: usize = 12 * 1024 * 1024 + 4096;
/// Per-client write cache cap in the fixture.
pub(crate) const CACHE_CAP: u64 = 2 * 1024 * 1024;

/// A server on 127.0.0.1 with a golden image, stopped on drop.
pub(crate) struct Fixture {
    pub(crate) addr: SocketAddr,
    pub(crate) golden: PathBuf,
    pub(crate) metrics: Arc<NbdMetrics>,
    pub(crate) server: Arc<NbdServer>,
    pub(crate) caches: Arc<WriteCaches>,
    pub(crate) stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Fixture {
    pub(crate) fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A server with `adjust`ed settings. Exports: `golden` (read-only),
    /// `small.img` (read-only, 1 MiB + 1 byte), `uncached` (the golden
    /// image, every read on the blocking pool) and `cache/<client>` (a new
    /// write-cache boot of `<client>` over the golden image).
    pub(crate) fn start_with(adjust: impl FnOnce(&mut NbdConfig)) -> Self {
        Self::start_wrapped(adjust, |exports| Arc::new(exports))
    }

    /// As [`Self::start_with`], the exports seen through `wrap`.
    pub(crate) fn start_wrapped(
        adjust: impl FnOnce(&mut NbdConfig),
        wrap: impl FnOnce(StaticExports) -> Arc<dyn Exports>,
    ) -> Self {
        bootfleet_test_support::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let golden = dir.path().join("golden.img");
        std::fs::write(&golden, pseudo_random(GOLDEN_SIZE, 23)).unwrap();
        let small = dir.path().join("small.img");
        std::fs::write(&small, pseudo_random(1024 * 1024 + 1, 24)).unwrap();
        let metrics = Arc::new(NbdMetrics::default());
        let caches = Arc::new(
            WriteCaches::new(&dir.path().join("caches"), CACHE_CAP, 16, Arc::clone(&metrics)).unwrap(),
        );
        let exports = StaticExports::new()
            .with_file("golden", FileExport::open(&golden).unwrap().with_description("the golden image"))
            .with_file("small.img", FileExport::open(&small).unwrap())
            .with_export("uncached", Arc::new(Uncached(FileExport::open(&golden).unwrap())))
            .with_write_cache("cache", FileExport::open(&golden).unwrap(), Arc::clone(&caches));
        let mut config = NbdConfig::default();
        adjust(&mut config);
        let server = NbdServer::new(config, wrap(exports), Arc::clone(&metrics));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        runtime.spawn(server::serve(listener, Arc::clone(&server), stop.clone(), tracker.clone()));
        Self { addr, golden, metrics, server, caches, stop, tracker, runtime: Some(runtime), dir }
    }

    /// `nbd://` URI of `export`.
    pub(crate) fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// Runs `f` on the server's runtime.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }
}

/// A file export that never says its data is cached, so the server reads
/// it on the blocking pool (what happens when the page cache is cold).
#[derive(Debug)]
struct Uncached(FileExport);

impl Export for Uncached {
    fn info(&self) -> ExportInfo {
        self.0.info()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        self.0.read_at(buf, offset)
    }
}

/// Runs a client to completion within `limit` (killed by PID otherwise);
/// panics if it cannot start or takes too long.
pub(crate) fn run(command: &mut Command, limit: Duration) -> Output {
    let description = format!("{command:?}");
    let child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(
            |e| panic!("cannot start {description}: {e} (scripts/install-deps.sh test installs it)"),
        );
    let mut guard = ChildGuard(child);
    // Drained while it runs, so a chatty client never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(guard.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(guard.0.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{description} took longer than {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Runs a client that must succeed; its stdout.
pub(crate) fn run_ok(command: &mut Command) -> String {
    let description = format!("{command:?}");
    let output = run(command, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "{description} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits (at most 30 s) until `done` holds; panics with `what` otherwise.
pub(crate) fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

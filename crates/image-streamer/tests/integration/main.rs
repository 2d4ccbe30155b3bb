//! The image streamer as a process, with real clients: curl for HTTP, the
//! gRPC client for uploads, and two replicas on a real etcd replicating
//! between each other.

mod durable;
mod gc;
mod hostile;
mod http;
mod nbd;
mod replication;
mod templates;
mod vdisk_replication;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bootfleet_image_streamer::client::{self, ImageClient, LocalFile};
use bootfleet_test_support::free_port;
use bootfleet_test_support::process::{ChildGuard, wait_serving};
pub(crate) use bootfleet_test_support::pseudo_random;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_bootfleet-image-streamer");
pub(crate) const TOKEN: &str = "streamer-test-token-0123456789";

/// One streamer process.
pub(crate) struct Replica {
    pub(crate) guard: ChildGuard,
    pub(crate) http: u16,
    pub(crate) grpc: u16,
    pub(crate) admin: u16,
    pub(crate) data: PathBuf,
}

impl Replica {
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub(crate) async fn client(&self) -> ImageClient {
        client::connect(&format!("http://127.0.0.1:{}", self.grpc), Some(TOKEN)).await.unwrap()
    }
}

/// Starts a replica with `store` flags, files under `dir`, and extra
/// `[streamer]` settings; waits until it serves.
pub(crate) fn start_replica(store: &[&str], dir: &Path, id: &str, settings: &str) -> Replica {
    bootfleet_test_support::init_tracing();
    let (http, grpc, admin) = (free_port(), free_port(), free_port());
    let data = dir.join(format!("streamer-{id}"));
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "[streamer]\nlisten = \"127.0.0.1:{http}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
             admin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\n{settings}\n",
            data.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(store)
        .args(["-c", config.to_str().unwrap(), "--member-id", id, "--log", "info"])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.join(format!("store-{id}")))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    wait_serving(admin, Duration::from_secs(20));
    Replica { guard, http, grpc, admin, data }
}

/// Writes files into `dir/name/` and pushes them as `image/version`.
pub(crate) async fn push(
    replica: &Replica,
    dir: &Path,
    image: &str,
    version: &str,
    files: &[(&str, Vec<u8>)],
) {
    let src = dir.join(format!("src-{image}-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    for (name, data) in files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let local: Vec<LocalFile> = client::scan_dir(&src).unwrap();
    let mut c = replica.client().await;
    for f in &local {
        client::upload(&mut c, f, |_, _| {}).await.unwrap();
    }
    client::commit(&mut c, image, version, "", &local).await.unwrap();
}

/// A curl answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Runs curl with `args` against `url` (no redirects followed).
pub(crate) fn curl(url: &str, args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-D", "/dev/stderr", "-o", "-", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let headers = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer { status, headers, body: out.stdout }
}

//! A write cache mirrored to a second server (the core of the
//! `server-persistent` write cache): qemu-io writes through server A's
//! mirrored export; every write it was told succeeded is on server B too;
//! when B dies, A goes on alone and says so.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bootfleet_nbd::export::{Export, FileExport};
use bootfleet_nbd::metrics::NbdMetrics;
use bootfleet_nbd::mirror::{MirrorError, MirrorLink, MirroredExport};
use bootfleet_nbd::overlay::WriteCaches;
use bootfleet_test_support::pseudo_random;

use crate::{CACHE_CAP, Fixture, GOLDEN_SIZE, run};

/// Server A, exporting `mirrored`: a write cache of its own for `client`
/// over the golden image, mirrored to server B's `cache/<client>`.
struct MirroredServer {
    a: Fixture,
    export: Arc<MirroredExport>,
    _caches: Arc<WriteCaches>,
    _dir: tempfile::TempDir,
}

fn mirrored_server(b: &Fixture, client: &str) -> MirroredServer {
    let dir = tempfile::tempdir().unwrap();
    let caches =
        Arc::new(WriteCaches::new(dir.path(), CACHE_CAP, 4, Arc::new(NbdMetrics::default())).unwrap());
    let golden: Arc<dyn Export> = Arc::new(FileExport::open(&b.golden).unwrap());
    let local = caches.boot(client, golden).unwrap();
    let link = MirrorLink::connect(b.addr, &format!("cache/{client}"), Duration::from_secs(5)).unwrap();
    let export = Arc::new(MirroredExport::new(local, link).unwrap());
    let shared: Arc<dyn Export> = Arc::clone(&export) as _;
    let a = Fixture::start_wrapped(|_| {}, move |exports| Arc::new(exports.with_export("mirrored", shared)));
    MirroredServer { a, export, _caches: caches, _dir: dir }
}

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw"]);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = run(command.arg(uri), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // qemu-io reports failed commands on stdout.
    assert!(output.status.success() && !stdout.contains("failed"), "{output:?}");
    stdout
}

fn read(export: &dyn Export, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    export.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn acknowledged_writes_are_on_the_mirror_too() {
    let b = Fixture::start();
    let server = mirrored_server(&b, "m1");
    qemu_io(
        &server.a.uri("mirrored"),
        &["write -P 0x5a 65536 131072", "write -P 0xa5 -f 1048576 4096", "write -z 2097152 65536", "flush"],
    );
    // qemu-io heard every request succeed: B's copy has them all.
    let mirror = b.caches.current("m1").expect("B has the mirror's cache");
    assert!(read(mirror.as_ref(), 65536, 131072).iter().all(|b| *b == 0x5a));
    assert!(read(mirror.as_ref(), 1048576, 4096).iter().all(|b| *b == 0xa5));
    assert!(read(mirror.as_ref(), 2097152, 65536).iter().all(|b| *b == 0));
    // Around them, both still read the golden image.
    let golden = pseudo_random(GOLDEN_SIZE, 23);
    assert_eq!(read(mirror.as_ref(), 0, 65536), golden[..65536]);
    assert_eq!(read(server.export.as_ref(), 0, 65536), golden[..65536]);
    assert!(read(server.export.as_ref(), 65536, 131072).iter().all(|b| *b == 0x5a));
    assert!(server.export.mirroring());
    assert!(server.export.mirrored_requests() >= 4, "{}", server.export.mirrored_requests());
}

#[test]
fn when_the_mirror_dies_writes_go_on_locally_and_the_export_says_it_is_alone() {
    let b = Fixture::start();
    let server = mirrored_server(&b, "m2");
    let uri = server.a.uri("mirrored");
    qemu_io(&uri, &["write -P 0x11 0 65536", "flush"]);
    drop(b);
    qemu_io(&uri, &["write -P 0x22 65536 65536", "flush"]);
    assert!(!server.export.mirroring(), "the export did not notice its mirror died");
    let stdout = qemu_io(&uri, &["read -P 0x11 0 65536", "read -P 0x22 65536 65536"]);
    assert_eq!(stdout.matches("read 65536/65536 bytes").count(), 2, "{stdout}");
}

#[test]
fn a_mirror_must_be_writable_and_the_same_disk() {
    let b = Fixture::start();
    let read_only = MirrorLink::connect(b.addr, "golden", Duration::from_secs(5));
    assert!(matches!(read_only, Err(MirrorError::ReadOnly)), "{read_only:?}");
    let link = MirrorLink::connect(b.addr, "cache/m3", Duration::from_secs(5)).unwrap();
    let small: Arc<dyn Export> = Arc::new(FileExport::open(&b.dir.path().join("small.img")).unwrap());
    let mismatch = MirroredExport::new(small, link);
    assert!(matches!(mismatch, Err(MirrorError::SizeMismatch { .. })), "{mismatch:?}");
    let unknown = MirrorLink::connect(b.addr, "nope", Duration::from_secs(5));
    assert!(matches!(unknown, Err(MirrorError::Handshake(_))), "{unknown:?}");
}

//! vDisks over NBD from a running streamer (embedded store): libnbd's
//! nbdinfo lists every catalog file the replica holds as
//! `<image>/<version>/<file>`, and nbdcopy copies one byte for byte, with
//! and without multi-conn.

use std::process::Command;
use std::time::{Duration, Instant};

use bootfleet_test_support::free_port;

use crate::{pseudo_random, push, start_replica};

const EMBEDDED: &[&str] = &["--store", "embedded"];

/// Runs an NBD client, bounded by coreutils' `timeout`; (success, stdout, stderr).
fn client(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args(["60", program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/install-deps.sh test installs it)"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Export names in `nbdinfo --list` output (lines `export="name":`).
fn listed(port: u16) -> Vec<String> {
    let (_, stdout, _) = client("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}")]);
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export=\"")?.strip_suffix("\":").map(str::to_owned))
        .collect()
}

#[test]
fn catalog_files_are_listed_and_copied_over_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let replica = start_replica(EMBEDDED, dir.path(), "r1", &format!("nbd_listen = \"127.0.0.1:{port}\""));
    let disk = pseudo_random(6 * 1024 * 1024 + 512, 31);
    let kernel = pseudo_random(100_000, 32);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(push(
        &replica,
        dir.path(),
        "golden",
        "1",
        &[("root.img", disk.clone()), ("vmlinuz", kernel)],
    ));

    // The catalog reaches the streamer through its store watch.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut names = listed(port);
    while names.len() < 2 {
        assert!(Instant::now() < deadline, "never listed: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
        names = listed(port);
    }
    assert_eq!(names, ["golden/1/root.img", "golden/1/vmlinuz"]);

    let uri = format!("nbd://127.0.0.1:{port}/golden/1/root.img");
    let (ok, info, err) = client("nbdinfo", &[&uri]);
    assert!(ok, "{err}");
    assert!(info.contains(&format!("export-size: {}", disk.len())), "{info}");
    assert!(info.contains("is_read_only: true") && info.contains("can_multi_conn: true"), "{info}");

    for connections in ["--connections=4", "--connections=1"] {
        let copy = dir.path().join("copy.img");
        let _ = std::fs::remove_file(&copy);
        let (ok, _, err) = client("nbdcopy", &[connections, &uri, copy.to_str().unwrap()]);
        assert!(ok, "{connections}: {err}");
        assert!(std::fs::read(&copy).unwrap() == disk, "{connections}: the copy differs");
    }

    let (ok, _, err) = client("nbdinfo", &[&format!("nbd://127.0.0.1:{port}/golden/2/root.img")]);
    assert!(!ok && err.contains("No such file or directory"), "an unknown version: {err}");
    let (ok, _, _) = client("nbdinfo", &[&format!("nbd://127.0.0.1:{port}/../etc/passwd")]);
    assert!(!ok);
}

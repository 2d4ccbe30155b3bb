//! The `server` write cache through QEMU's client: writes land in the
//! client's cache, never in the golden image, never in another client's
//! cache, and stop at the per-client cap.

use std::process::Command;
use std::time::Duration;

use bootfleet_nbd::export::Export;

use crate::{CACHE_CAP, Fixture, GOLDEN_SIZE, run, run_ok, sha256_file};

/// qemu-io on `uri` running `commands` in one session.
fn qemu_io(uri: &str, commands: &[&str]) -> std::process::Output {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw"]);
    for c in commands {
        command.args(["-c", c]);
    }
    run(command.arg(uri), Duration::from_secs(60))
}

fn read_cache(fx: &Fixture, client: &str, offset: u64, len: usize) -> Vec<u8> {
    let cache = fx.caches.current(client).expect("the client has a cache");
    let mut buf = vec![0u8; len];
    cache.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn qemu_io_writes_through_the_cache_and_the_golden_image_is_unchanged() {
    let fx = Fixture::start();
    let golden_sha = sha256_file(&fx.golden);
    let golden = std::fs::read(&fx.golden).unwrap();
    let output = qemu_io(
        &fx.uri("cache/52:54:00:00:00:01"),
        &[
            // Unaligned, across a cluster boundary: the base is copied around it.
            "write -P 0xab 65000 1000",
            "read -P 0xab 65000 1000",
            "write -f -P 0xcd 1048576 131072",
            "flush",
            "write -z 2097152 65536",
            "read -P 0 2097152 65536",
            "discard 1048576 65536",
            // The very end of the export (its last cluster is short).
            &format!("write -P 0xef {} 4096", GOLDEN_SIZE - 4096),
            &format!("read -P 0xef {} 4096", GOLDEN_SIZE - 4096),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && !stdout.contains("fail"), "{output:?}");

    assert_eq!(sha256_file(&fx.golden), golden_sha, "the golden file changed");
    // The cache outlives the connection (a reconnect within the boot).
    let around = read_cache(&fx, "52:54:00:00:00:01", 64_000, 3000);
    assert_eq!(&around[..1000], &golden[64_000..65_000], "bytes before the write come from the base");
    assert!(around[1000..2000].iter().all(|b| *b == 0xab));
    assert_eq!(&around[2000..], &golden[66_000..67_000]);
    let trimmed = read_cache(&fx, "52:54:00:00:00:01", 1048576, 65536);
    assert_eq!(trimmed, golden[1048576..1048576 + 65536], "a trimmed cluster reads from the base again");
    assert!(read_cache(&fx, "52:54:00:00:00:01", 1048576 + 65536, 65536).iter().all(|b| *b == 0xcd));
    let metrics = fx.metrics.snapshot();
    assert!(metrics.bytes_written >= 1000 + 131072 + 4096, "{metrics:?}");
    assert!(metrics.overlay_bytes > 0);
}

#[test]
fn clients_do_not_see_each_others_writes_and_a_new_boot_starts_empty() {
    let fx = Fixture::start();
    let golden_sha = sha256_file(&fx.golden);
    let output = qemu_io(&fx.uri("cache/a"), &["write -P 0x11 0 65536"]);
    assert!(output.status.success(), "{output:?}");

    // b copies its whole disk: the golden image, not a's write.
    let copy = fx.dir.path().join("b.img");
    run_ok(Command::new("nbdcopy").arg(fx.uri("cache/b")).arg(&copy));
    assert_eq!(sha256_file(&copy), golden_sha);
    assert!(read_cache(&fx, "a", 0, 65536).iter().all(|b| *b == 0x11), "a's cache still holds its write");

    // a boots again: its cache is new and empty.
    let again = qemu_io(&fx.uri("cache/a"), &["read -P 0x11 0 65536"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("Pattern verification failed"), "{again:?}");
    assert_eq!(read_cache(&fx, "a", 0, 65536), std::fs::read(&fx.golden).unwrap()[..65536]);
}

#[test]
fn a_write_beyond_the_cap_fails_with_enospc_and_the_session_goes_on() {
    let fx = Fixture::start();
    let half = CACHE_CAP / 2;
    let output = qemu_io(
        &fx.uri("cache/full"),
        &[
            &format!("write -P 0x21 0 {half}"),
            // More new clusters than the cap leaves room for.
            &format!("write -P 0x22 {} {CACHE_CAP}", 4 * CACHE_CAP),
            // Clusters already in the cache can still be rewritten.
            &format!("write -P 0x23 0 {half}"),
            &format!("read -P 0x23 0 {half}"),
        ],
    );
    // qemu-io reports failed commands on stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("write failed: No space left on device"), "{output:?}");
    assert_eq!(stdout.matches("failed").count(), 1, "{output:?}");
    assert!(stdout.contains(&format!("read {half}/{half} bytes")), "{output:?}");
    assert!(fx.caches.usage()[0].1 <= CACHE_CAP);
    // The server still serves.
    run_ok(Command::new("nbdinfo").arg(fx.uri("golden")));
}

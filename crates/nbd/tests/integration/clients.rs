//! Read-only exports through libnbd's and QEMU's clients.

use std::process::Command;

use serde_json::Value;

use crate::{Fixture, GOLDEN_SIZE, run_ok, sha256_file};

fn nbdinfo_json(args: &[&str]) -> Value {
    serde_json::from_str(&run_ok(Command::new("nbdinfo").arg("--json").args(args))).unwrap()
}

#[test]
fn nbdinfo_lists_the_exports_and_shows_sizes_and_block_sizes() {
    let fx = Fixture::start();
    let listing = nbdinfo_json(&["--list", &fx.uri("")]);
    assert_eq!(listing["protocol"], "newstyle-fixed");
    assert_eq!(listing["structured"], true);
    let names: Vec<&str> =
        listing["exports"].as_array().unwrap().iter().map(|e| e["export-name"].as_str().unwrap()).collect();
    assert_eq!(names, ["golden", "small.img", "uncached"], "write caches are not listed");
    assert_eq!(listing["exports"][0]["description"], "the golden image");

    let info = nbdinfo_json(&[&fx.uri("small.img")]);
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 1024 * 1024 + 1);
    assert_eq!(export["is_read_only"], true);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_trim"], false);
    assert_eq!(export["block_size_minimum"], 1);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32 * 1024 * 1024);

    let cache = nbdinfo_json(&[&fx.uri("cache/info-only")]);
    let export = &cache["exports"][0];
    assert_eq!(export["export-size"], GOLDEN_SIZE);
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["can_multi_conn"], false, "a per-session cache is not shared");
    assert_eq!(
        (export["can_trim"].clone(), export["can_zero"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );
    assert_eq!(export["block_size_preferred"], 64 * 1024);

    let missing = crate::run(Command::new("nbdinfo").arg(fx.uri("nope")), std::time::Duration::from_secs(30));
    assert!(!missing.status.success());
    // NBD_REP_ERR_UNKNOWN, as libnbd words it.
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such file or directory"), "{missing:?}");
    crate::wait_until("nbdinfo's connections never ended", || fx.server.connections() == 0);
}

#[test]
fn nbdcopy_copies_the_golden_image_with_and_without_multi_conn() {
    let fx = Fixture::start();
    let expected = sha256_file(&fx.golden);
    // `uncached` takes the other read path: the blocking pool.
    for export in ["golden", "uncached"] {
        for connections in [None, Some("--connections=1")] {
            let out = fx.dir.path().join("copy.img");
            let _ = std::fs::remove_file(&out);
            let mut command = Command::new("nbdcopy");
            command.args(connections).arg(fx.uri(export)).arg(&out);
            run_ok(&mut command);
            assert_eq!(sha256_file(&out), expected, "{export} {connections:?}");
        }
    }
    let metrics = fx.metrics.snapshot();
    assert_eq!(metrics.bytes_read, 4 * GOLDEN_SIZE as u64);
    assert!(metrics.sessions_opened >= 4, "{metrics:?}");
    assert_eq!(metrics.request_errors, 0);
}

#[test]
fn qemu_img_compares_the_export_with_the_file() {
    let fx = Fixture::start();
    let export = fx.uri("golden");
    run_ok(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&fx.golden).arg(&export));
    let uncached = fx.uri("uncached");
    run_ok(
        Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&fx.golden).arg(&uncached),
    );
    // And it notices a difference.
    let other = fx.dir.path().join("other.img");
    let mut bytes = std::fs::read(&fx.golden).unwrap();
    bytes[GOLDEN_SIZE - 1] ^= 1;
    std::fs::write(&other, bytes).unwrap();
    let differs = crate::run(
        Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&other).arg(&export),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(differs.status.code(), Some(1), "{differs:?}");
}

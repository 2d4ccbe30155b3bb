//! Image-streamer benchmark against nginx, side by side in one run with
//! wrk on loopback; prints a table.
//!
//! ```sh
//! scripts/fetch-peers.sh     # installs nginx (service not started) and wrk
//! cargo bench -p bootfleet-image-streamer --bench streamer
//! ```
//!
//! Both servers serve the same files: a kernel-sized file (kept in memory by
//! Bootfleet), a 512 MiB disk image (above Bootfleet's memory cache, so it
//! streams from disk; nginx uses sendfile), 4 KiB ranges of the disk image,
//! and boot scripts. Bootfleet renders each script from the rules (every
//! request evaluates the active rule set for one of 10,000 MACs and queues
//! the decision for the host record); nginx serves one static script file,
//! the ceiling for any script server. Every wrk run is bounded in time.
#![allow(clippy::print_stdout, missing_docs)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::admin::Health;
use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_image_streamer::client;
use bootfleet_rules_engine::manifest::{Format, parse};
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::free_port;
use bootfleet_test_support::process::{ChildGuard, wait_serving};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token-0123456789abcdef";
const RUN: &str = "8s";
const RULES: &str = r#"
image_profiles:
  - { name: tiny, kernel: { kernel: bench/1/vmlinuz, initrds: [bench/1/initrd.img], cmdline: "console=ttyS0 marker={{host.marker}} mac={{facts.mac}}" } }
host_profiles:
  - { name: lab, values: { marker: bench } }
rules:
  - { name: lab, match: { mac: "52:54:00:*" }, image_profile: tiny, host_profile: lab }
"#;
const RANDOM_MAC_LUA: &str = r#"
counter = 0
request = function()
  counter = counter + 1
  local n = counter % 10000
  return wrk.format("GET", string.format("/boot.ipxe?mac=52:54:00:00:%02x:%02x", math.floor(n / 256), n % 256))
end
"#;

fn write_pattern(path: &Path, len: usize, seed: u8) {
    let block: Vec<u8> =
        (0..1024 * 1024).map(|i: usize| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        data.extend_from_slice(&block[..block.len().min(len - data.len())]);
    }
    std::fs::write(path, data).unwrap();
}

fn start_nginx(dir: &Path, root: &Path) -> (ChildGuard, u16) {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
               client_body_temp_path {t};\n  proxy_temp_path {t};\n  fastcgi_temp_path {t};\n\
               uwsgi_temp_path {t};\n  scgi_temp_path {t};\n\
               server {{ listen 127.0.0.1:{port}; root {r}; location / {{ }} }}\n}}\n",
            d = dir.display(),
            t = tmp.display(),
            r = root.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/fetch-peers.sh)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (ChildGuard(child), port)
}

fn start_streamer(dir: &Path, endpoint: &str) -> (ChildGuard, u16, u16) {
    let (http, grpc, admin) = (free_port(), free_port(), free_port());
    let config = dir.join("streamer.toml");
    std::fs::write(
        &config,
        format!(
            "[streamer]\nlisten = \"127.0.0.1:{http}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
             admin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\ncache_file_limit_mib = 64\n",
            dir.join("streamer").display()
        ),
    )
    .unwrap();
    let child: Child = Command::new(env!("CARGO_BIN_EXE_bootfleet-image-streamer"))
        .args(["-c", config.to_str().unwrap(), "--store", "etcd", "--etcd-endpoints", endpoint])
        .args(["--log", "warn", "--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    wait_serving(admin, Duration::from_secs(30));
    (guard, http, grpc)
}

/// One workload of the table.
struct Row<'a> {
    name: &'a str,
    conns: u32,
    path: &'a str,
    extra: &'a [&'a str],
    /// MiB/s when true, requests/s otherwise.
    throughput: bool,
}

struct Wrk {
    requests_per_s: f64,
    mib_per_s: f64,
    errors: String,
}

fn wrk(url: &str, connections: u32, extra: &[&str]) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), "-d", RUN, "--timeout", "10s"])
        .args(extra)
        .arg(url)
        .output()
        .expect("wrk is installed (scripts/fetch-peers.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let transfer = value("Transfer/sec:");
    let mib = transfer
        .strip_suffix("GB")
        .map(|v| v.parse::<f64>().unwrap_or(0.0) * 1024.0)
        .or_else(|| transfer.strip_suffix("MB").map(|v| v.parse().unwrap_or(0.0)))
        .or_else(|| transfer.strip_suffix("KB").map(|v| v.parse::<f64>().unwrap_or(0.0) / 1024.0))
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Wrk { requests_per_s: value("Requests/sec:").parse().unwrap_or(0.0), mib_per_s: mib, errors }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_pattern(&src.join("vmlinuz"), 8 * 1024 * 1024, 1);
    write_pattern(&src.join("initrd.img"), 1024 * 1024, 2);
    write_pattern(&src.join("disk.img"), 512 * 1024 * 1024, 3);

    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let (_streamer, http, grpc) = start_streamer(dir.path(), &endpoint);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    runtime.block_on(async {
        let store: SharedStore =
            Arc::new(EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap());
        let state =
            RulesState::start(store, StateOptions { member_id: "bench".into(), history_limit: 5 }, &stop);
        state.ready().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rules_url = format!("http://{}", listener.local_addr().unwrap());
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            bootfleet_rules_engine::server::serve(
                listener,
                state,
                &Health::new(),
                Some(TOKEN.into()),
                serve_stop,
            )
            .await
        });
        let mut images = client::connect(&format!("http://127.0.0.1:{grpc}"), Some(TOKEN)).await.unwrap();
        let files = client::scan_dir(&src).unwrap();
        for f in &files {
            client::upload(&mut images, f, |_, _| {}).await.unwrap();
        }
        client::commit(&mut images, "bench", "1", "", &files).await.unwrap();
        let mut rules = bootfleet_rules_engine::client::connect(&rules_url, Some(TOKEN)).await.unwrap();
        let manifest = parse(RULES, Format::Yaml).unwrap();
        let options = bootfleet_rules_engine::client::ApplyOptions { activate: true, ..Default::default() };
        bootfleet_rules_engine::client::apply_manifest(&mut rules, manifest, options).await.unwrap();
    });
    // Let the streamer's snapshot see the rules.
    std::thread::sleep(Duration::from_secs(2));
    let bootfleet = format!("http://127.0.0.1:{http}");
    let script = Command::new("curl")
        .args(["-s", &format!("{bootfleet}/boot.ipxe?mac=52:54:00:00:00:01")])
        .output()
        .unwrap()
        .stdout;
    assert!(script.starts_with(b"#!ipxe"), "no script: {}", String::from_utf8_lossy(&script));
    // nginx serves the same bytes from a plain directory.
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("images/bench/1")).unwrap();
    for name in ["vmlinuz", "initrd.img", "disk.img"] {
        std::fs::rename(src.join(name), root.join("images/bench/1").join(name)).unwrap();
    }
    std::fs::write(root.join("boot.ipxe"), &script).unwrap();
    let (_nginx, nginx_port) = start_nginx(dir.path(), &root);
    let nginx = format!("http://127.0.0.1:{nginx_port}");
    let lua = dir.path().join("macs.lua");
    std::fs::write(&lua, RANDOM_MAC_LUA).unwrap();
    let range = ["-H", "Range: bytes=104857600-104861695"];

    println!("image streamer vs nginx, wrk -t2 for {RUN} per row, loopback, 2 cores shared with wrk\n");
    println!("{:<44} {:>14} {:>14} {:>12} {:>12}", "workload", "bootfleet", "nginx", "unit", "ratio");
    let rows = [
        Row {
            name: "kernel 8 MiB, whole file, 16 conns",
            conns: 16,
            path: "/images/bench/1/vmlinuz",
            extra: &[],
            throughput: true,
        },
        Row {
            name: "disk 512 MiB, whole file, 4 conns",
            conns: 4,
            path: "/images/bench/1/disk.img",
            extra: &[],
            throughput: true,
        },
        Row {
            name: "disk 512 MiB, 4 KiB ranges, 64 conns",
            conns: 64,
            path: "/images/bench/1/disk.img",
            extra: &range,
            throughput: false,
        },
    ];
    for row in rows {
        let ours = wrk(&format!("{bootfleet}{}", row.path), row.conns, row.extra);
        let theirs = wrk(&format!("{nginx}{}", row.path), row.conns, row.extra);
        let (a, b, unit) = if row.throughput {
            (ours.mib_per_s, theirs.mib_per_s, "MiB/s")
        } else {
            (ours.requests_per_s, theirs.requests_per_s, "req/s")
        };
        println!("{:<44} {a:>14.0} {b:>14.0} {unit:>12} {:>11.2}x", row.name, a / b.max(f64::MIN_POSITIVE));
        for (who, run) in [("bootfleet", &ours), ("nginx", &theirs)] {
            if !run.errors.is_empty() {
                println!("    {who}: {}", run.errors);
            }
        }
    }
    let lua_arg = lua.to_str().unwrap().to_owned();
    let ours = wrk(&format!("{bootfleet}/boot.ipxe"), 64, &["-s", &lua_arg]);
    let theirs = wrk(&format!("{nginx}/boot.ipxe"), 64, &[]);
    println!(
        "{:<44} {:>14.0} {:>14.0} {:>12} {:>11.2}x",
        "boot scripts (rendered vs static), 64 conns",
        ours.requests_per_s,
        theirs.requests_per_s,
        "req/s",
        ours.requests_per_s / theirs.requests_per_s.max(f64::MIN_POSITIVE)
    );
    for (who, run) in [("bootfleet", &ours), ("nginx", &theirs)] {
        if !run.errors.is_empty() {
            println!("    {who}: {}", run.errors);
        }
    }
    stop.cancel();
}

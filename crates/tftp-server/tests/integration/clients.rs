//! Real clients download byte-identical files, with and without options.

use std::path::Path;
use std::process::Command;

use crate::{start, start_with};

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn same(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} ({} bytes) differs from {} ({} bytes)", a.display(), x.len(), b.display(), y.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_atftp_and_curl_download_identical_files() {
    let f = start().await;
    let out = tempfile::tempdir().unwrap();
    let host = f.addr.ip().to_string();
    let port = f.addr.port().to_string();
    let files = ["small.bin", "exact.bin", "empty.bin", "medium.bin", "pxelinux.cfg/default", "alias.bin"];
    let dir = out.path().to_owned();
    let (host2, port2) = (host.clone(), port.clone());
    tokio::task::spawn_blocking(move || {
        for (i, file) in files.iter().enumerate() {
            let local = |tag: &str| format!("{tag}-{i}");
            // tftp-hpa: no options at all.
            run("tftp", &[&host2, &port2, "-m", "binary", "-c", "get", file, &local("hpa")], &dir);
            // atftp: blksize + windowsize (RFC 7440) + tsize.
            run(
                "atftp",
                &[
                    "--option",
                    "blksize 1468",
                    "--option",
                    "windowsize 16",
                    "--option",
                    "tsize 0",
                    "-g",
                    "-r",
                    file,
                    "-l",
                    &local("atftp"),
                    &host2,
                    &port2,
                ],
                &dir,
            );
            // atftp with defaults.
            run("atftp", &["-g", "-r", file, "-l", &local("atftp-plain"), &host2, &port2], &dir);
            // curl: blksize + tsize. Debian's curl 7.88 fails on empty files
            // against any server (tftpd-hpa too: "getpeername() failed"),
            // so it skips that one.
            let url = format!("tftp://{host2}:{port2}/{file}");
            if *file != "empty.bin" {
                run("curl", &["-sS", "--tftp-blksize", "1468", "-o", &local("curl"), &url], &dir);
                run("curl", &["-sS", "--tftp-no-options", "-o", &local("curl-plain"), &url], &dir);
            }
        }
    })
    .await
    .unwrap();
    for (i, file) in files.iter().enumerate() {
        for tag in ["hpa", "atftp", "atftp-plain", "curl", "curl-plain"] {
            if tag.starts_with("curl") && *file == "empty.bin" {
                continue;
            }
            same(&f.root.join(file), &out.path().join(format!("{tag}-{i}")));
        }
    }
}

/// More than 65535 blocks: block numbers roll over (33 MiB at 512 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over_for_large_files() {
    let f = start_with(|c| c.cache_file_limit = 1024 * 1024).await;
    let big = f.root.join("big.bin");
    let data: Vec<u8> = (0..33 * 1024 * 1024 + 5).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (host, port, dir) = (f.addr.ip().to_string(), f.addr.port().to_string(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        run("atftp", &["--option", "windowsize 32", "-g", "-r", "big.bin", "-l", "big", &host, &port], &dir);
    })
    .await
    .unwrap();
    same(&big, &out.path().join("big"));
}

/// netascii: line ends converted on the wire, back by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_round_trips_through_tftp_hpa() {
    let f = start().await;
    let out = tempfile::tempdir().unwrap();
    let (host, port, dir) = (f.addr.ip().to_string(), f.addr.port().to_string(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        run("tftp", &[&host, &port, "-m", "netascii", "-c", "get", "text.txt", "text"], &dir);
    })
    .await
    .unwrap();
    same(&f.root.join("text.txt"), &out.path().join("text"));
}

/// netascii is converted as it streams: a file larger than any copy the
/// server would keep (17 MiB), whose CR LF expansions fall across block
/// boundaries, round-trips through tftp-hpa; tsize counts the converted
/// length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_netascii_files_stream_with_an_exact_tsize() {
    let f = start_with(|c| c.cache_file_limit = 1024 * 1024).await;
    let mut text = Vec::with_capacity(17 * 1024 * 1024 + 64);
    let mut line = 0u32;
    while text.len() < 17 * 1024 * 1024 {
        // Lines of varying length put line ends at every offset in a block;
        // some end in CR LF, some hold a lone CR.
        let len = (line.wrapping_mul(2_654_435_761) >> 23) as usize;
        text.extend((0..len).map(|i| b'a' + (i % 26) as u8));
        text.extend_from_slice(match line % 7 {
            0 => b"\r\n",
            1 => b"\rx\n",
            _ => b"\n",
        });
        line += 1;
    }
    std::fs::write(f.root.join("big.txt"), &text).unwrap();
    let converted = bootfleet_tftp_server::wire::to_netascii(&text).len();
    // tsize first, from a raw request in netascii mode.
    let client = crate::RawClient::new(f.addr).await;
    let request = bootfleet_tftp_server::wire::Packet::Rrq(bootfleet_tftp_server::wire::Request {
        filename: "big.txt".into(),
        mode: bootfleet_tftp_server::wire::Mode::Netascii,
        options: vec![("tsize".into(), "0".into())],
    });
    client.send_raw(&request.encode()).await;
    let (oack, tid) = client.recv().await.unwrap();
    assert_eq!(
        oack,
        bootfleet_tftp_server::wire::Packet::Oack { options: vec![("tsize".into(), converted.to_string())] }
    );
    let abort = bootfleet_tftp_server::wire::Packet::Error {
        code: bootfleet_tftp_server::wire::ErrorCode::OptionRefused,
        message: "size probe".into(),
    };
    client.socket.send_to(&abort.encode(), tid).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (host, port, dir) = (f.addr.ip().to_string(), f.addr.port().to_string(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        run("tftp", &[&host, &port, "-m", "netascii", "-c", "get", "big.txt", "big"], &dir);
    })
    .await
    .unwrap();
    same(&f.root.join("big.txt"), &out.path().join("big"));
}

/// The `tftpd` crate's client (the crate the customer named) downloads from
/// us, lockstep and windowed (its worker acknowledges windows its own way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tftpd_crate_client_downloads_identical_files() {
    let f = start().await;
    let out = tempfile::tempdir().unwrap();
    let (port, dir) = (f.addr.port().to_string(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        for (i, window) in ["1", "16"].iter().enumerate() {
            let local = format!("medium-{i}");
            // Its arguments: the local name, then the remote one.
            let args = [
                &local,
                "medium.bin",
                "-d",
                "-i",
                "127.0.0.1",
                "-p",
                &port,
                "-b",
                "1468",
                "-w",
                window,
                "-rd",
            ]
            .into_iter()
            .map(String::from)
            .chain([dir.to_string_lossy().into_owned(), "-q".into(), "-q".into()]);
            let config = tftpd::ClientConfig::new(args).unwrap();
            let done = tftpd::Client::new(&config).unwrap().run().unwrap();
            assert!(done, "windowsize {window}: the tftpd client gave up");
        }
    })
    .await
    .unwrap();
    for i in 0..2 {
        same(&f.root.join("medium.bin"), &out.path().join(format!("medium-{i}")));
    }
}

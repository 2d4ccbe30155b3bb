//! The real boot that runs beside every attack, step by step as a PXE ROM
//! and iPXE take it, with real clients in the booting host's namespace:
//! busybox udhcpc asks as a PXE ROM and gets a lease with the loader's name, curl
//! fetches the loader over TFTP, udhcpc asks again as iPXE and gets the boot
//! script's URL, curl fetches the script and every file it names (kernel,
//! initrd, the boot report) over HTTP. Files are compared with the originals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{BOOT_IF, BOOT_MAC, HTTP_PORT, LOADER, Lab, SERVER_IP};

/// Boots of the one host start at least this far apart.
const BOOT_EVERY: Duration = Duration::from_secs(2);

/// Runs `attack` on its own thread and boots (each recorded in the lab),
/// again and again, until it has finished: at least once, the first boot
/// starting once the attack says it has begun. The attack bounds its own
/// count and time.
pub(crate) fn boot_during<T: Send>(lab: &Lab, attack: impl FnOnce(&AtomicBool) -> T + Send) -> T {
    let begun = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| attack(&begun));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !begun.load(Ordering::Acquire) && !handle.is_finished() {
            assert!(Instant::now() < deadline, "the attack never began");
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            let started = Instant::now();
            lab.record_boot(boot(lab));
            // One host boots at most every BOOT_EVERY: faster, its own
            // DHCP requests would trip the responder's per-MAC flood limit.
            while !handle.is_finished() && started.elapsed() < BOOT_EVERY {
                std::thread::sleep(Duration::from_millis(20));
            }
            if handle.is_finished() {
                break;
            }
        }
        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One boot of [`BOOT_MAC`]; the error names the step that failed.
pub(crate) fn boot(lab: &Lab) -> Result<(), String> {
    let work = lab.dir.path().join("boot");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let pxe = lease(lab, &[])?;
    let (address, server, file) = (&pxe["ip"], &pxe["siaddr"], &pxe["boot_file"]);
    if !address.starts_with("198.18.80.") || (server.as_str(), file.as_str()) != (SERVER_IP, LOADER) {
        return Err(format!("PXE lease: address {address:?}, boot server {server:?}, file {file:?}"));
    }
    let loader = work.join("loader");
    curl(lab, &format!("tftp://{server}/{file}"), &loader)?;
    same_file(&loader, &lab.original(LOADER), "the loader over TFTP")?;
    // iPXE says who it is with user class "iPXE" (option 77).
    let ipxe = lease(lab, &["-x", "0x4d:69505845"])?;
    let script_url = format!("http://{SERVER_IP}:{HTTP_PORT}/boot.ipxe?mac={BOOT_MAC}");
    if ipxe["boot_file"] != script_url {
        return Err(format!("iPXE lease: file {:?}, want {script_url}", ipxe["boot_file"]));
    }
    let script_file = work.join("boot.ipxe");
    curl(lab, &script_url, &script_file)?;
    let script = std::fs::read_to_string(&script_file).map_err(|e| e.to_string())?;
    let mut fetched = Vec::new();
    for (command, url) in fetches(&script) {
        let path = work.join(&command);
        curl(lab, &url, &path)?;
        match command.as_str() {
            "kernel" => same_file(&path, &lab.original("vmlinuz"), "the kernel")?,
            "initrd" => same_file(&path, &lab.original("initrd.img"), "the initrd")?,
            _ => {}
        }
        fetched.push(command);
    }
    if fetched != ["kernel", "initrd", "imgfetch"] {
        return Err(format!("the script fetched {fetched:?}:\n{script}"));
    }
    Ok(())
}

/// The first URL of each fetching command of an iPXE script (the replica's
/// own; the others are its fallbacks), in order.
fn fetches(script: &str) -> Vec<(String, String)> {
    script
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let command = words.next()?;
            if !matches!(command, "kernel" | "initrd" | "imgfetch" | "chain") {
                return None;
            }
            let url = words.find(|w| w.starts_with("http://"))?;
            Some((command.to_owned(), url.to_owned()))
        })
        .collect()
}

/// udhcpc as a PXE ROM (plus `extra`): the bound lease's variables.
fn lease(lab: &Lab, extra: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let script = lab.dir.path().join("udhcpc-bound.sh");
    if !script.exists() {
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND|ip=$ip|siaddr=$siaddr|boot_file=$boot_file\"\nexit 0\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let mut args = vec!["-i", BOOT_IF, "-f", "-q", "-n", "-t", "6", "-T", "1", "-A", "1", "-s"];
    let script = script.to_str().unwrap_or_default().to_owned();
    args.push(&script);
    args.extend(["-V", "PXEClient:Arch:00000:UNDI:002001"]);
    args.extend_from_slice(extra);
    let out = lab.booter.command("udhcpc").args(&args).output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let Some(bound) = text.lines().find_map(|l| l.strip_prefix("BOUND|")) else {
        let said: Vec<&str> = text.lines().map(|l| l.trim_start_matches("udhcpc: ")).collect();
        return Err(format!(
            "udhcpc {extra:?} got no lease: {}; the responder: {}",
            said.join("; "),
            lab.dhcp_outcomes()
        ));
    };
    Ok(bound
        .split('|')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// curl in the booting host's namespace, to a file; fails on any error status.
fn curl(lab: &Lab, url: &str, to: &std::path::Path) -> Result<(), String> {
    let out = lab
        .booter
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "30", "-o"])
        .arg(to)
        .arg(url)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn same_file(got: &std::path::Path, want: &std::path::Path, what: &str) -> Result<(), String> {
    let (got, want) = (std::fs::read(got).map_err(|e| e.to_string())?, std::fs::read(want).unwrap());
    if got != want {
        return Err(format!("{what}: {} bytes differ from the original's {}", got.len(), want.len()));
    }
    Ok(())
}

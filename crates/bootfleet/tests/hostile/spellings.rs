//! One host's MAC written 1,000 ways — case, separators, groupings,
//! padding, junk — in TFTP file names and in boot-script URLs. TFTP takes
//! one standard form per name, strictly; HTTP reads any spelling of the
//! same twelve digits. Either way one host stays one host: one record, one
//! rendered file per kind, the same script.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::boot::boot_during;
use crate::http::Connection;
use crate::lab::{BOOT_MAC, CLIENT_IP, CLIENT_NS, Lab, in_netns, runtime};
use crate::tftp::{Failed, download};

const SPELLINGS: usize = 1_000;

/// Writes twelve hex digits one way.
type Spell = fn(&[char]) -> String;

/// `digits` in groups of `size` joined by `separator`.
fn group(digits: &[char], size: usize, separator: &str) -> String {
    digits.chunks(size).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(separator)
}

/// Spellings of [`BOOT_MAC`], all distinct, and whether each is the same
/// twelve hex digits (what a lenient reader accepts).
fn spellings() -> Vec<(String, bool)> {
    let hex: Vec<char> = BOOT_MAC.replace(':', "").chars().collect();
    let letters: Vec<usize> = (0..hex.len()).filter(|&i| hex[i].is_ascii_alphabetic()).collect();
    let formats: [(Spell, bool); 16] = [
        (|d| group(d, 2, ":"), true),
        (|d| group(d, 2, "-"), true),
        (|d| group(d, 2, "."), true),
        (|d| group(d, 12, ""), true),
        (|d| group(d, 4, "."), true),
        (|d| group(d, 4, "-"), true),
        (|d| group(d, 4, ":"), true),
        (|d| group(d, 2, ":").replacen(':', "-", 2), true),
        (|d| group(d, 2, ":") + ":", true),
        (|d| group(d, 2, ":").replacen(':', "::", 1), true),
        (|d| format!("  {}  ", group(d, 2, ":")), true),
        // A zero dropped, an extra octet, the hardware type, other
        // separators, a prefix: not twelve hex digits.
        (|d| group(d, 2, ":").replacen("00", "0", 1), false),
        (|d| group(d, 2, ":") + ":00", false),
        (|d| format!("01-{}", group(d, 2, "-")), false),
        (|d| group(d, 2, "_"), false),
        (|d| format!("0x{}", group(d, 12, "")), false),
    ];
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for mask in 0..1u32 << letters.len() {
        let mut digits = hex.clone();
        for (bit, &i) in letters.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                digits[i] = digits[i].to_ascii_uppercase();
            }
        }
        for (format, same) in &formats {
            let text = format(&digits);
            if seen.insert(text.clone()) {
                out.push((text, *same));
            }
        }
    }
    assert!(out.len() >= SPELLINGS, "only {} spellings", out.len());
    out.truncate(SPELLINGS);
    out
}

/// Each spelling as a TFTP name of every kind the server renders, then as
/// `?mac=` of a boot script, while boots run.
pub(crate) fn mac_spellings(lab: &Lab) -> String {
    let all = spellings();
    let evictions = |lab: &Lab| lab.metrics().sum("bootfleet_tftp_rendered_cache_evictions_total");
    let evictions_before = evictions(lab);
    let (tftp, http) = boot_during(lab, |begun| {
        in_netns(CLIENT_NS, || {
            begun.store(true, std::sync::atomic::Ordering::Release);
            let tftp = runtime().block_on(tftp_names(&all));
            (tftp, boot_scripts(&all))
        })
    });
    // TFTP: the standard forms are served, each kind one file whatever
    // the spelling; every other spelling is "file not found".
    let lower_dash = BOOT_MAC.replace(':', "-");
    for kind in ["pxelinux.cfg/01-", "grub.cfg-01-"] {
        let served = &tftp[kind];
        assert!(served.contains_key(&lower_dash), "{kind}{lower_dash} was not served: {:?}", served.keys());
    }
    assert!(tftp["bootfleet/"].contains_key(BOOT_MAC), "bootfleet/{BOOT_MAC}.ipxe was not served");
    let mut accepted = 0;
    for (kind, served) in &tftp {
        let files: BTreeSet<&Vec<u8>> = served.values().collect();
        assert_eq!(files.len(), 1, "{kind}: different files for one host");
        accepted += served.len();
    }
    assert!(accepted <= 6, "TFTP accepted {accepted} spellings: {tftp:?}");
    assert_eq!(evictions(lab), evictions_before, "one host's spellings evicted rendered files");
    // HTTP: every spelling of the same digits gets the same script, the rest 400.
    let scripts: BTreeSet<&Vec<u8>> = http.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    assert_eq!(scripts.len(), 1, "different boot scripts for one host");
    for ((spelling, same), (_, result)) in all.iter().zip(&http) {
        match (same, result) {
            (true, Ok(_)) | (false, Err(400)) => {}
            (_, other) => panic!("?mac={spelling:?}: {:?}", other.as_ref().map(|_| 200)),
        }
    }
    let valid = all.iter().filter(|(_, same)| *same).count();
    format!(
        "{} TFTP names: {accepted} served (standard forms), the rest not found; {valid} HTTP spellings of the digits: one script, {} refused 400",
        3 * all.len(),
        all.len() - valid
    )
}

/// Every spelling under every rendered kind; per kind, the file served for
/// each spelling that was served.
async fn tftp_names(all: &[(String, bool)]) -> BTreeMap<&'static str, BTreeMap<String, Vec<u8>>> {
    let mut served: BTreeMap<&'static str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (spelling, _) in all {
        for (kind, suffix) in [("pxelinux.cfg/01-", ""), ("grub.cfg-01-", ""), ("bootfleet/", ".ipxe")] {
            let name = format!("{kind}{spelling}{suffix}");
            // A socket (a transfer ID) per request: nothing late from one
            // transfer can be taken for the next.
            let socket = UdpSocket::bind((CLIENT_IP, 0)).await.unwrap();
            match download(&socket, &name, Duration::from_secs(1), Duration::from_secs(10)).await {
                Ok((file, _)) => {
                    served.entry(kind).or_default().insert(spelling.clone(), file);
                }
                Err(Failed::Refused(bootfleet_tftp_server::wire::ErrorCode::FileNotFound)) => {
                    served.entry(kind).or_default();
                }
                Err(e) => panic!("TFTP {name:?}: {e}"),
            }
        }
    }
    served
}

/// `GET /boot.ipxe?mac=<spelling>` for every spelling on one keep-alive
/// connection; the script, or the status when it is not 200.
fn boot_scripts(all: &[(String, bool)]) -> Vec<(String, Result<Vec<u8>, u16>)> {
    let mut connection = Connection::open();
    all.iter()
        .map(|(spelling, _)| {
            let query = spelling.replace(' ', "%20");
            let response = connection.get(&format!("/boot.ipxe?mac={query}")).unwrap();
            let result = if response.status == 200 { Ok(response.body) } else { Err(response.status) };
            (spelling.clone(), result)
        })
        .collect()
}

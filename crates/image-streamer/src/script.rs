//! iPXE boot scripts rendered from a rules decision: text in, text out,
//! and a log line for each value left out because it could not be made
//! safe in the script (see `bootfleet_rules_engine::template`).
//!
//! Every file URL lists each replica that serves the file, this replica
//! first, as `cmd URL_A || cmd URL_B || goto failed`, so iPXE falls through
//! to the next replica when one fails; `:failed` ends in `exit 1`, which
//! hands control back to the firmware and its next boot device — the local,
//! cached disk. One template per profile kind; operators may replace any of
//! them (validated when the configuration is loaded). Templates use the
//! profiles' syntax: `{{name}}` for Bootfleet's variables — the ones below
//! and the profile variables (`{{facts.serial}}`, …) — and `${…}` for
//! iPXE's own settings, passed through.

use std::collections::HashMap;

use bootfleet_core::log_limit::LogLimit;
use bootfleet_proto::v1::{Decision, FileRef, VdiskBoot, WriteCache, image_profile};
use bootfleet_rules_engine::facts::Facts;
use bootfleet_rules_engine::manifest::write_cache_name;
use bootfleet_rules_engine::render::{self, Vars};
use bootfleet_rules_engine::template::{self, Loader, Rendered, Value};

/// Profile kinds with a template.
pub const KINDS: [&str; 5] = ["kernel", "script", "sanboot", "local", "vdisk"];

const KERNEL: &str = "#!ipxe
# Bootfleet: {{profile}} for {{mac}} (rule set v{{rule_set_version}})
imgfree
{{fetch_kernel}}
{{fetch_initrds}}
{{report_loaded}}
boot || goto failed
{{failed}}";

const SCRIPT: &str = "#!ipxe
# Bootfleet: {{profile}} for {{mac}} (rule set v{{rule_set_version}})
{{script}}
";

const SANBOOT: &str = "#!ipxe
# Bootfleet: {{profile}} for {{mac}} (rule set v{{rule_set_version}})
{{report_loaded}}
{{sanboot}}
{{failed}}";

const LOCAL: &str = "#!ipxe
# Bootfleet: {{profile}} for {{mac}} (rule set v{{rule_set_version}})
echo Bootfleet: booting from the local disk
exit
";

const FAILED: &str = ":failed
echo Bootfleet: network boot failed; booting from the local disk
exit 1
";

/// Placeholders a template may use, per kind; the first ones are required.
fn placeholders(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    const COMMON: &[&str] = &["profile", "mac", "rule_set_version", "failed", "report_loaded"];
    match kind {
        "kernel" | "vdisk" => (&["fetch_kernel"], &["fetch_initrds", "cmdline"]),
        "script" => (&["script"], &[]),
        "sanboot" => (&["sanboot"], &[]),
        _ => (&[], COMMON),
    }
}

fn allowed(kind: &str, name: &str) -> bool {
    const COMMON: &[&str] = &["profile", "mac", "rule_set_version", "failed", "report_loaded"];
    let (required, optional) = placeholders(kind);
    COMMON.contains(&name) || required.contains(&name) || optional.contains(&name)
}

/// The templates in use.
#[derive(Clone, Debug)]
pub struct Templates {
    by_kind: HashMap<&'static str, String>,
}

impl Default for Templates {
    fn default() -> Self {
        // A vDisk boots a kernel too: its script differs in the command
        // line the kernel gets.
        let by_kind = [
            ("kernel", KERNEL),
            ("script", SCRIPT),
            ("sanboot", SANBOOT),
            ("local", LOCAL),
            ("vdisk", KERNEL),
        ]
        .into_iter()
        .map(|(k, t)| (k, t.to_owned()))
        .collect();
        Self { by_kind }
    }
}

impl Templates {
    /// The defaults with `overrides` (kind → template text) applied; each
    /// override is validated: it starts with `#!ipxe`, uses only known
    /// `{{placeholders}}` and every required one.
    pub fn with_overrides(overrides: &[(String, String)]) -> Result<Self, String> {
        let mut templates = Self::default();
        for (kind, text) in overrides {
            let Some(kind) = KINDS.iter().find(|k| **k == kind) else {
                return Err(format!("unknown template kind {kind:?} (known: {})", KINDS.join(", ")));
            };
            check(kind, text)?;
            templates.by_kind.insert(kind, text.clone());
        }
        Ok(templates)
    }

    fn get(&self, kind: &str) -> &str {
        self.by_kind.get(kind).map_or("", String::as_str)
    }
}

/// Validates one template: `#!ipxe` first, only known variables (this
/// kind's and the profile variables), every required one used.
pub fn check(kind: &str, text: &str) -> Result<(), String> {
    if !text.starts_with("#!ipxe") {
        return Err(format!("{kind} template must start with #!ipxe"));
    }
    let known = |name: &str| allowed(kind, name) || template::is_profile_variable(name);
    let (required, optional) = placeholders(kind);
    let mut expected: Vec<&str> = ["profile", "mac", "rule_set_version", "failed", "report_loaded"].into();
    for name in required.iter().chain(optional) {
        if !expected.contains(name) {
            expected.push(name);
        }
    }
    let expected = format!("{}, or {}", expected.join(", "), template::PROFILE_VARIABLES);
    let used = template::check(text, &known, &expected).map_err(|e| format!("{kind} template: {e}"))?;
    for required in required {
        if !used.contains(required) {
            return Err(format!("{kind} template must use {{{{{required}}}}}"));
        }
    }
    Ok(())
}

/// Where each catalog file can be fetched.
pub trait Sources {
    /// Base URLs of replicas serving `file`, in the order to try.
    fn sources(&self, file: &FileRef) -> Vec<String>;

    /// NBD addresses (`host:port`) of replicas serving `file` over NBD,
    /// least-loaded first.
    fn nbd_sources(&self, file: &FileRef) -> Vec<String>;
}

/// What to answer a boot-script request with.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A script.
    Script(String),
    /// Stay silent (profile `ignore`, or no rule assigned an image profile).
    Silent,
}

/// Everything a script is rendered from.
pub struct Request<'a> {
    /// The decision.
    pub decision: &'a Decision,
    /// The host's facts.
    pub facts: &'a Facts,
    /// This replica's base URL (for reports).
    pub self_url: &'a str,
}

fn url(base: &str, file: &FileRef) -> String {
    render::file_url(base, file)
}

/// `cmd URL_A args || cmd URL_B args || goto failed`.
fn with_failover(command: &str, urls: &[String], args: &str) -> String {
    let attempts: Vec<String> =
        urls.iter().map(|u| format!("{command} {u}{args}").trim_end().to_owned()).collect();
    format!("{} || goto failed", attempts.join(" || "))
}

fn file_urls(sources: &dyn Sources, file: &FileRef, fallback: &str) -> Vec<String> {
    let mut bases = sources.sources(file);
    if bases.is_empty() {
        bases.push(fallback.to_owned());
    }
    bases.iter().map(|b| url(b, file)).collect()
}

/// The kernel and initrd fetches, each from every replica serving it.
fn insert_kernel(
    values: &mut HashMap<&str, Value>,
    sources: &dyn Sources,
    base: &str,
    (kernel, initrds): (&FileRef, &[FileRef]),
    cmdline: String,
) {
    let names: String = (0..initrds.len()).map(|i| format!(" initrd=initrd{i}")).collect();
    let args = format!(" {cmdline}{names}");
    values.insert("cmdline", Value::Script(cmdline));
    values.insert(
        "fetch_kernel",
        Value::Script(with_failover("kernel --name kernel", &file_urls(sources, kernel, base), &args)),
    );
    let initrds: Vec<String> = initrds
        .iter()
        .enumerate()
        .map(|(i, f)| with_failover(&format!("initrd --name initrd{i}"), &file_urls(sources, f, base), ""))
        .collect();
    values.insert("fetch_initrds", Value::Script(initrds.join("\n")));
}

/// The vDisk initramfs's arguments (see `boot/initramfs/bootfleet-vdisk.sh`):
/// the replicas to attach, the export and the write cache. In `client-ram`
/// every replica holding the disk is listed, least-loaded first, and the
/// initramfs may move between them; a `server` cache lives on one replica,
/// so only that one is named. `None` when no replica serves the disk.
fn vdisk_arguments(v: &VdiskBoot, disk: &FileRef, mac: &str, sources: &dyn Sources) -> Option<String> {
    let mut replicas = sources.nbd_sources(disk);
    let cache = write_cache_name(v.write_cache);
    let export = match WriteCache::try_from(v.write_cache) {
        Ok(WriteCache::ClientRam) => format!("{}/{}/{}", disk.image, disk.version, disk.file),
        _ => {
            replicas.truncate(1);
            format!("host/{mac}")
        }
    };
    if replicas.is_empty() {
        return None;
    }
    let fs = if v.root_fs_type.is_empty() { "ext4" } else { v.root_fs_type.as_str() };
    Some(format!(
        "bootfleet.nbd={} bootfleet.export={export} bootfleet.cache={cache} bootfleet.rootfstype={fs}",
        replicas.join(",")
    ))
}

/// The script for a host whose rules need facts its request did not carry
/// (a DHCP server handed iPXE the script URL with the MAC alone): it asks
/// again with every fact iPXE knows, URL-encoded. The MAC stays the one
/// asked for.
pub fn facts_chain(self_url: &str, mac: &str) -> String {
    let base = self_url.trim_end_matches('/');
    format!(
        "#!ipxe\n# Bootfleet: the rules for {mac} need this machine's facts\n\
         chain {base}/boot.ipxe?mac={mac}&uuid=${{uuid}}&serial=${{serial:uristring}}\
         &manufacturer=${{manufacturer:uristring}}&product=${{product:uristring}}\
         &asset=${{asset:uristring}}&platform=${{platform}}&buildarch=${{buildarch}} || goto failed\n{FAILED}"
    )
}

/// Renders the script for a request. Values that cannot be made safe in
/// the script are left out, each with a warning naming the host and the
/// variable.
pub fn render(templates: &Templates, request: &Request<'_>, sources: &dyn Sources) -> Answer {
    let Some(profile) = request.decision.image_profile.as_ref() else { return Answer::Silent };
    let vars = Vars { decision: request.decision, facts: request.facts };
    let mac = request.facts.mac.clone();
    let base = request.self_url.trim_end_matches('/');
    // What rendering left out, logged at the end.
    let mut report = Rendered::default();
    let mut values: HashMap<&str, Value> = HashMap::new();
    values.insert("profile", Value::Text(profile.name.clone()));
    values.insert("mac", Value::Text(mac.clone()));
    values.insert("rule_set_version", Value::Text(request.decision.rule_set_version.to_string()));
    values.insert("failed", Value::Script(FAILED.to_owned()));
    values.insert(
        "report_loaded",
        Value::Script(format!(
            "imgfetch --name bfreport {base}/report/{}/loaded || echo Bootfleet: boot report not delivered\n\
             imgfree bfreport || echo",
            mac.replace(':', "-")
        )),
    );
    let kind = match profile.boot.as_ref() {
        None | Some(image_profile::Boot::Ignore(_)) => return Answer::Silent,
        Some(image_profile::Boot::Kernel(k)) => {
            let Some(kernel) = k.kernel.as_ref() else { return Answer::Silent };
            let cmdline = report.absorb(render::kernel_cmdline(&k.cmdline, Loader::Ipxe, &vars));
            insert_kernel(&mut values, sources, base, (kernel, &k.initrds), cmdline);
            "kernel"
        }
        Some(image_profile::Boot::Script(s)) => {
            let body = report.absorb(render::ipxe_script(&s.script, &vars));
            let body = body.strip_prefix("#!ipxe").unwrap_or(&body).trim_start_matches('\n');
            values.insert("script", Value::Script(body.to_owned()));
            "script"
        }
        Some(image_profile::Boot::Sanboot(s)) => {
            let Some(disk) = s.disk.as_ref() else { return Answer::Silent };
            // iPXE treats several URIs as paths to one disk (multipath).
            let urls = file_urls(sources, disk, base).join(" ");
            values.insert("sanboot", Value::Script(format!("sanboot --no-describe {urls} || goto failed")));
            "sanboot"
        }
        Some(image_profile::Boot::Local(_)) => "local",
        Some(image_profile::Boot::Vdisk(v)) => {
            let (Some(kernel), Some(disk)) = (v.kernel.as_ref(), v.disk.as_ref()) else {
                return Answer::Silent;
            };
            let Some(vdisk) = vdisk_arguments(v, disk, &mac, sources) else {
                let disk = format!("{}/{}/{}", disk.image, disk.version, disk.file);
                return Answer::Script(format!(
                    "#!ipxe\n# Bootfleet: {} for {mac}\necho Bootfleet: no replica serves {disk} over NBD\n{FAILED}",
                    profile.name
                ));
            };
            let user = report.absorb(render::kernel_cmdline(&v.cmdline, Loader::Ipxe, &vars));
            let cmdline = if user.is_empty() { vdisk } else { format!("{user} {vdisk}") };
            insert_kernel(&mut values, sources, base, (kernel, &v.initrds), cmdline);
            "vdisk"
        }
    };
    let lookup = |name: &str| values.get(name).cloned().or_else(|| vars.value(name).map(Value::Text));
    let mut text = report.absorb(template::render_ipxe(templates.get(kind), &lookup));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // Host facts come from the network: whoever sends them must not be
    // able to write the log at will.
    static REJECTED: LogLimit = LogLimit::default_limit();
    static OLD_SPELLING: LogLimit = LogLimit::default_limit();
    for left_out in &report.rejected {
        if let Some(similar_left_out) = REJECTED.admit() {
            tracing::warn!(mac = %mac, profile = %profile.name, variable = %left_out.variable, reason = %left_out.reason, similar_left_out, "value left out of the boot script: it cannot be made safe there");
        }
    }
    for old in &report.old_spellings {
        if let Some(similar_left_out) = OLD_SPELLING.admit() {
            tracing::warn!(mac = %mac, profile = %profile.name, variable = %old, similar_left_out, "profile template uses the old ${{…}} spelling, passed through as text; apply it again with {{{{…}}}}");
        }
    }
    Answer::Script(text)
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{
        HostFacts, HostProfile, IgnoreHost, ImageProfile, KernelBoot, LocalBoot, SanBoot, ScriptBoot,
        VdiskBoot, WriteCache,
    };

    use super::*;

    struct TwoReplicas;
    impl Sources for TwoReplicas {
        fn sources(&self, _file: &FileRef) -> Vec<String> {
            vec!["http://198.18.0.2:8080".into(), "http://198.18.0.3:8080".into()]
        }

        fn nbd_sources(&self, _file: &FileRef) -> Vec<String> {
            vec!["198.18.0.3:10809".into(), "198.18.0.2:10809".into()]
        }
    }

    fn facts() -> Facts {
        Facts::from_proto(&HostFacts { mac: "52:54:00:00:00:01".into(), ..Default::default() }).unwrap()
    }

    fn file(name: &str) -> FileRef {
        FileRef { image: "tiny".into(), version: "1".into(), file: name.into() }
    }

    fn decision(boot: image_profile::Boot) -> Decision {
        Decision {
            image_profile: Some(ImageProfile { name: "p".into(), boot: Some(boot), ..Default::default() }),
            host_profile: Some(HostProfile {
                name: "h".into(),
                values: [("marker".into(), "m1".into())].into(),
                ..Default::default()
            }),
            rule_set_version: 3,
            ..Default::default()
        }
    }

    fn script(boot: image_profile::Boot) -> String {
        let d = decision(boot);
        let f = facts();
        let request = Request { decision: &d, facts: &f, self_url: "http://198.18.0.2:8080/" };
        match render(&Templates::default(), &request, &TwoReplicas) {
            Answer::Script(s) => s,
            Answer::Silent => panic!("silent"),
        }
    }

    const REPORT: &str = "imgfetch --name bfreport http://198.18.0.2:8080/report/52-54-00-00-00-01/loaded \
                          || echo Bootfleet: boot report not delivered\nimgfree bfreport || echo\n";

    #[test]
    fn kernel_script_golden() {
        let s = script(image_profile::Boot::Kernel(KernelBoot {
            kernel: Some(file("vmlinuz")),
            initrds: vec![file("initrd.img")],
            cmdline: "console=ttyS0 marker={{host.marker}}".into(),
        }));
        let expected = format!(
            "#!ipxe\n# Bootfleet: p for 52:54:00:00:00:01 (rule set v3)\nimgfree\n\
             kernel --name kernel http://198.18.0.2:8080/images/tiny/1/vmlinuz console=ttyS0 marker=m1 initrd=initrd0 \
             || kernel --name kernel http://198.18.0.3:8080/images/tiny/1/vmlinuz console=ttyS0 marker=m1 initrd=initrd0 \
             || goto failed\n\
             initrd --name initrd0 http://198.18.0.2:8080/images/tiny/1/initrd.img \
             || initrd --name initrd0 http://198.18.0.3:8080/images/tiny/1/initrd.img || goto failed\n\
             {REPORT}boot || goto failed\n{FAILED}"
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn vdisk_script_golden() {
        let vdisk = |cache: WriteCache| {
            script(image_profile::Boot::Vdisk(VdiskBoot {
                disk: Some(file("root.ext4")),
                kernel: Some(file("vmlinuz")),
                initrds: vec![file("vdisk-initrd.img")],
                cmdline: "console=ttyS0 marker={{host.marker}}".into(),
                write_cache: cache.into(),
                root_fs_type: String::new(),
            }))
        };
        // Any replica serves client-ram, least-loaded first.
        let args = "console=ttyS0 marker=m1 bootfleet.nbd=198.18.0.3:10809,198.18.0.2:10809 \
                    bootfleet.export=tiny/1/root.ext4 bootfleet.cache=client-ram bootfleet.rootfstype=ext4 \
                    initrd=initrd0";
        let expected = format!(
            "#!ipxe\n# Bootfleet: p for 52:54:00:00:00:01 (rule set v3)\nimgfree\n\
             kernel --name kernel http://198.18.0.2:8080/images/tiny/1/vmlinuz {args} \
             || kernel --name kernel http://198.18.0.3:8080/images/tiny/1/vmlinuz {args} || goto failed\n\
             initrd --name initrd0 http://198.18.0.2:8080/images/tiny/1/vdisk-initrd.img \
             || initrd --name initrd0 http://198.18.0.3:8080/images/tiny/1/vdisk-initrd.img || goto failed\n\
             {REPORT}boot || goto failed\n{FAILED}"
        );
        assert_eq!(vdisk(WriteCache::ClientRam), expected);
        // A server cache lives on one replica: the host's own export there.
        let server = vdisk(WriteCache::Server);
        assert!(
            server.contains(
                " bootfleet.nbd=198.18.0.3:10809 bootfleet.export=host/52:54:00:00:00:01 bootfleet.cache=server "
            ),
            "{server}"
        );
    }

    #[test]
    fn the_facts_chain_asks_again_with_every_fact_url_encoded() {
        let chain = facts_chain("http://198.18.0.2:8080/", "52:54:00:00:00:01");
        assert_eq!(
            chain,
            format!(
                "#!ipxe\n# Bootfleet: the rules for 52:54:00:00:00:01 need this machine's facts\n\
                 chain http://198.18.0.2:8080/boot.ipxe?mac=52:54:00:00:00:01&uuid=${{uuid}}\
                 &serial=${{serial:uristring}}&manufacturer=${{manufacturer:uristring}}\
                 &product=${{product:uristring}}&asset=${{asset:uristring}}&platform=${{platform}}\
                 &buildarch=${{buildarch}} || goto failed\n{FAILED}"
            )
        );
        // The request it makes carries the facts: no second chain.
        let query = chain.split_once('?').unwrap().1.split_whitespace().next().unwrap();
        assert!(crate::query::carries_host_facts(query));
        assert!(!crate::query::carries_host_facts("mac=52:54:00:00:00:01"));
    }

    #[test]
    fn sanboot_script_golden() {
        let s = script(image_profile::Boot::Sanboot(SanBoot { disk: Some(file("disk.img")) }));
        let expected = format!(
            "#!ipxe\n# Bootfleet: p for 52:54:00:00:00:01 (rule set v3)\n{REPORT}\
             sanboot --no-describe http://198.18.0.2:8080/images/tiny/1/disk.img \
             http://198.18.0.3:8080/images/tiny/1/disk.img || goto failed\n{FAILED}"
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn script_local_and_silent() {
        let s = script(image_profile::Boot::Script(ScriptBoot {
            script: "#!ipxe\necho hello {{host.marker}}\nexit\n".into(),
        }));
        assert_eq!(s, "#!ipxe\n# Bootfleet: p for 52:54:00:00:00:01 (rule set v3)\necho hello m1\nexit\n\n");
        let s = script(image_profile::Boot::Local(LocalBoot {}));
        assert_eq!(
            s,
            "#!ipxe\n# Bootfleet: p for 52:54:00:00:00:01 (rule set v3)\necho Bootfleet: booting from the local disk\nexit\n"
        );
        let d = decision(image_profile::Boot::Ignore(IgnoreHost {}));
        let f = facts();
        let request = Request { decision: &d, facts: &f, self_url: "http://x" };
        assert_eq!(render(&Templates::default(), &request, &TwoReplicas), Answer::Silent);
        let none = Decision::default();
        let request = Request { decision: &none, facts: &f, self_url: "http://x" };
        assert_eq!(render(&Templates::default(), &request, &TwoReplicas), Answer::Silent);
    }

    #[test]
    fn operator_templates_are_validated_and_used() {
        let custom = "#!ipxe\necho custom {{profile}}\n{{fetch_kernel}}\nboot\n".to_owned();
        let t = Templates::with_overrides(&[("kernel".into(), custom)]).unwrap();
        let d = decision(image_profile::Boot::Kernel(KernelBoot {
            kernel: Some(file("vmlinuz")),
            ..Default::default()
        }));
        let f = facts();
        let request = Request { decision: &d, facts: &f, self_url: "http://x" };
        let Answer::Script(s) = render(&t, &request, &TwoReplicas) else { panic!() };
        assert!(s.starts_with("#!ipxe\necho custom p\nkernel --name kernel http://198.18.0.2:8080/"), "{s}");
        for (kind, text, why) in [
            ("kernel", "echo hi {{fetch_kernel}}", "#!ipxe"),
            ("kernel", "#!ipxe\nboot\n", "must use {{fetch_kernel}}"),
            ("kernel", "#!ipxe\n{{fetch_kernel}} {{nope}}", "unknown variable {{nope}}"),
            ("kernel", "#!ipxe\n{{fetch_kernel", "unclosed"),
            ("floppy", "#!ipxe\n", "unknown template kind"),
        ] {
            let e = Templates::with_overrides(&[(kind.into(), text.into())]).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    /// Operator templates use the profiles' syntax: profile variables are
    /// checked as iPXE words like the streamer's own values, `${…}` is iPXE's.
    #[test]
    fn operator_templates_use_profile_variables_safely() {
        let custom = "#!ipxe\necho {{facts.serial}} on ${net0/mac}\n{{fetch_kernel}}\nboot\n".to_owned();
        let t = Templates::with_overrides(&[("kernel".into(), custom)]).unwrap();
        let d = decision(image_profile::Boot::Kernel(KernelBoot {
            kernel: Some(file("vmlinuz")),
            cmdline: "s={{facts.serial}}".into(),
            ..Default::default()
        }));
        let render_with = |serial: &str| {
            let f = Facts::from_proto(&HostFacts {
                mac: "52:54:00:00:00:01".into(),
                serial: serial.into(),
                ..Default::default()
            })
            .unwrap();
            let request = Request { decision: &d, facts: &f, self_url: "http://x" };
            let Answer::Script(s) = render(&t, &request, &TwoReplicas) else { panic!() };
            s
        };
        assert!(render_with("SN1").starts_with("#!ipxe\necho SN1 on ${net0/mac}\nkernel --name kernel "));
        let s = render_with("SN1 || reboot");
        assert!(s.starts_with("#!ipxe\necho  on ${net0/mac}\nkernel --name kernel "), "{s}");
        assert!(s.contains("/vmlinuz s= || kernel"), "{s}");
        for (text, why) in [
            ("#!ipxe\n{{fetch_kernel}} {{facts.colour}}", "unknown variable {{facts.colour}}"),
            ("#!ipxe\n{{fetch_kernel}} ${host.x}", "write {{host.x}}"),
        ] {
            let e = Templates::with_overrides(&[("kernel".into(), text.into())]).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}

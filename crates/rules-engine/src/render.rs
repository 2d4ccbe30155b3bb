//! Boot configuration rendered from a decision: cmdline/script templates
//! and the loader configurations served over TFTP (pxelinux, GRUB, iPXE).
//! Pure text in, text out; the boot services own I/O, and log the values
//! [`template`] left out because they could not be made safe where they
//! land.
//!
//! Files of the image catalog are fetched over HTTP from
//! `<base>/images/<image>/<version>/<file>` (the image streamer's layout).

use bootfleet_proto::v1::{Decision, FileRef, image_profile};

use crate::facts::Facts;
use crate::template::{self, Loader, Rendered};

/// The values templates may use.
pub struct Vars<'a> {
    /// The decision (host profile values, location labels).
    pub decision: &'a Decision,
    /// The host's facts.
    pub facts: &'a Facts,
}

impl Vars<'_> {
    /// The value of a profile variable (`host.KEY`, `location.KEY`,
    /// `facts.FIELD`), empty when the host or profile has none; `None` for
    /// any other name.
    pub fn value(&self, name: &str) -> Option<String> {
        if !template::is_profile_variable(name) {
            return None;
        }
        if let Some(key) = name.strip_prefix("host.") {
            return Some(
                self.decision
                    .host_profile
                    .as_ref()
                    .and_then(|p| p.values.get(key))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        if let Some(key) = name.strip_prefix("location.") {
            return Some(
                self.decision.location.as_ref().and_then(|l| l.labels.get(key)).cloned().unwrap_or_default(),
            );
        }
        let field = name.strip_prefix("facts.").and_then(crate::facts::Field::parse)?;
        Some(self.facts.get(&field).unwrap_or_default().to_owned())
    }
}

/// A kernel command-line template rendered for `loader`, each value kept
/// inside its argument ([`template`]).
pub fn kernel_cmdline(template: &str, loader: Loader, vars: &Vars<'_>) -> Rendered {
    template::render_kernel_cmdline(template, loader, &|name| vars.value(name))
}

/// An iPXE script template (a `script` profile) rendered, each value
/// checked as an iPXE word ([`template`]).
pub fn ipxe_script(template: &str, vars: &Vars<'_>) -> Rendered {
    template::render_ipxe(template, &|name| vars.value(name).map(template::Value::Text))
}

/// URL of a catalog file under the streamer base URL.
pub fn file_url(base: &str, file: &FileRef) -> String {
    format!("{}/images/{}/{}/{}", base.trim_end_matches('/'), file.image, file.version, file.file)
}

/// What a loader should do, from the decision.
enum Plan {
    Kernel { kernel: String, initrds: Vec<String>, cmdline: Rendered },
    Local,
}

fn plan(base: &str, vars: &Vars<'_>, loader: Loader) -> Option<Plan> {
    match vars.decision.image_profile.as_ref()?.boot.as_ref()? {
        image_profile::Boot::Kernel(k) => Some(Plan::Kernel {
            kernel: file_url(base, k.kernel.as_ref()?),
            initrds: k.initrds.iter().map(|f| file_url(base, f)).collect(),
            cmdline: kernel_cmdline(&k.cmdline, loader, vars),
        }),
        image_profile::Boot::Local(_) => Some(Plan::Local),
        // Scripts, sanboot and NBD need iPXE; ignore means stay silent.
        _ => None,
    }
}

/// A pxelinux configuration (`pxelinux.cfg/01-<mac>`); `None` when the
/// decision is nothing pxelinux can do.
pub fn pxelinux(base: &str, vars: &Vars<'_>) -> Option<Rendered> {
    Some(match plan(base, vars, Loader::Pxelinux)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            let mut out = Rendered::default();
            let cmdline = out.absorb(cmdline);
            let initrd =
                if initrds.is_empty() { String::new() } else { format!("  INITRD {}\n", initrds.join(",")) };
            out.text = format!(
                "DEFAULT bootfleet\nLABEL bootfleet\n  KERNEL {kernel}\n{initrd}  APPEND {cmdline}\n"
            );
            out
        }
        Plan::Local => text("DEFAULT local\nLABEL local\n  LOCALBOOT 0\n"),
    })
}

/// A GRUB configuration (`grub.cfg-01-<mac>`).
pub fn grub(base: &str, vars: &Vars<'_>) -> Option<Rendered> {
    Some(match plan(base, vars, Loader::Grub)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            let mut out = Rendered::default();
            let cmdline = out.absorb(cmdline);
            // GRUB fetches over HTTP with (http,host)/path.
            let grub_path = |url: &str| match url.split_once("://").and_then(|(_, rest)| rest.split_once('/'))
            {
                Some((host, path)) => format!("(http,{host})/{path}"),
                None => url.to_owned(),
            };
            let initrd = initrds.iter().map(|u| grub_path(u)).collect::<Vec<_>>().join(" ");
            let initrd = if initrd.is_empty() { String::new() } else { format!("  initrd {initrd}\n") };
            out.text = format!(
                "set timeout=0\nmenuentry 'bootfleet' {{\n  linux {} {cmdline}\n{initrd}}}\n",
                grub_path(&kernel)
            );
            out
        }
        Plan::Local => text("set timeout=0\nexit\n"),
    })
}

/// An iPXE script for kernel and local decisions.
pub fn ipxe(base: &str, vars: &Vars<'_>) -> Option<Rendered> {
    Some(match plan(base, vars, Loader::Ipxe)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            let mut out = Rendered::default();
            let cmdline = out.absorb(cmdline);
            let mut script = String::from("#!ipxe\n");
            for (i, initrd) in initrds.iter().enumerate() {
                script.push_str(&format!("initrd --name initrd{i} {initrd} || goto failed\n"));
            }
            let names: String = (0..initrds.len()).map(|i| format!(" initrd=initrd{i}")).collect();
            script
                .push_str(&format!("kernel {kernel} {cmdline}{names} || goto failed\nboot || goto failed\n"));
            script.push_str(":failed\necho Bootfleet: network boot failed; trying the local disk\nexit 1\n");
            out.text = script;
            out
        }
        Plan::Local => text("#!ipxe\nexit 1\n"),
    })
}

fn text(text: &str) -> Rendered {
    Rendered { text: text.to_owned(), ..Rendered::default() }
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{HostFacts, HostProfile, ImageProfile, KernelBoot, LocalBoot, Location};

    use super::*;

    fn facts() -> Facts {
        Facts::from_proto(&HostFacts { mac: "52:54:00:00:00:01".into(), ..Default::default() }).unwrap()
    }

    fn kernel_decision() -> Decision {
        let file = |f: &str| Some(FileRef { image: "tiny".into(), version: "1".into(), file: f.into() });
        Decision {
            image_profile: Some(ImageProfile {
                name: "tiny".into(),
                boot: Some(image_profile::Boot::Kernel(KernelBoot {
                    kernel: file("vmlinuz"),
                    initrds: vec![FileRef { image: "tiny".into(), version: "1".into(), file: "initrd.img".into() }],
                    cmdline: "console=ttyS0 marker={{host.marker}} rack={{location.rack}} mac={{facts.mac}} x={{nope.y}} ip=${net0/ip}".into(),
                })),
                ..Default::default()
            }),
            host_profile: Some(HostProfile { name: "h".into(), values: [("marker".into(), "hello".into())].into(), ..Default::default() }),
            location: Some(Location { name: "l".into(), labels: [("rack".into(), "7".into())].into() }),
            ..Default::default()
        }
    }

    #[test]
    fn variables_resolve_and_ipxe_settings_pass_through() {
        let d = kernel_decision();
        let f = facts();
        let vars = Vars { decision: &d, facts: &f };
        let r = ipxe_script(
            "echo a={{host.marker}} b={{host.none}} c={{ facts.mac }} ${net0/mac} {{unclosed",
            &vars,
        );
        assert_eq!(r.text, "echo a=hello b= c=52:54:00:00:00:01 ${net0/mac} {{unclosed");
        assert!(r.rejected.is_empty() && r.old_spellings.is_empty());
        assert_eq!(vars.value("nope.y"), None);
        assert_eq!(vars.value("facts.bogus"), None);
        assert_eq!(vars.value("facts.serial").as_deref(), Some(""));
        // A profile saved in the old spelling is passed through, and reported.
        let r = ipxe_script("echo ${host.marker}", &vars);
        assert_eq!(
            (r.text.as_str(), r.old_spellings.as_slice()),
            ("echo ${host.marker}", &["host.marker".to_owned()][..])
        );
    }

    #[test]
    fn loader_configs_golden() {
        let d = kernel_decision();
        let f = facts();
        let vars = Vars { decision: &d, facts: &f };
        let base = "http://198.18.0.1:8080/";
        assert_eq!(
            pxelinux(base, &vars).unwrap().text,
            "DEFAULT bootfleet\nLABEL bootfleet\n  KERNEL http://198.18.0.1:8080/images/tiny/1/vmlinuz\n  INITRD http://198.18.0.1:8080/images/tiny/1/initrd.img\n  APPEND console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x= ip=${net0/ip}\n"
        );
        assert_eq!(
            grub(base, &vars).unwrap().text,
            "set timeout=0\nmenuentry 'bootfleet' {\n  linux (http,198.18.0.1:8080)/images/tiny/1/vmlinuz console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x= ip=${net0/ip}\n  initrd (http,198.18.0.1:8080)/images/tiny/1/initrd.img\n}\n"
        );
        assert!(ipxe(base, &vars).unwrap().text.contains("kernel http://198.18.0.1:8080/images/tiny/1/vmlinuz console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x= ip=${net0/ip} initrd=initrd0 || goto failed"));
        let local = Decision {
            image_profile: Some(ImageProfile {
                name: "disk".into(),
                boot: Some(image_profile::Boot::Local(LocalBoot {})),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vars = Vars { decision: &local, facts: &f };
        assert_eq!(pxelinux(base, &vars).unwrap().text, "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n");
        assert!(pxelinux(base, &Vars { decision: &Decision::default(), facts: &f }).is_none());
    }

    /// The files served over TFTP, with hostile host values and labels:
    /// every loader reads the lines it should, and the kernel the
    /// arguments, each value inside its own.
    #[test]
    fn loader_files_keep_hostile_values_in_their_arguments() {
        use crate::template::grammar::{grub_cmdline, grub_words, ipxe_script, kernel_args};
        let mut d = kernel_decision();
        if let Some(image_profile::Boot::Kernel(k)) = d.image_profile.as_mut().and_then(|p| p.boot.as_mut()) {
            k.cmdline = "console=ttyS0 m={{host.marker}} r={{location.rack}} s={{facts.serial}}".into();
        }
        d.host_profile.as_mut().unwrap().values.insert("marker".into(), "a b || reboot".into());
        d.location.as_mut().unwrap().labels.insert("rack".into(), "R 7 #2".into());
        let f = Facts::from_proto(&HostFacts {
            mac: "52:54:00:00:00:01".into(),
            serial: "To Be Filled".into(),
            ..Default::default()
        })
        .unwrap();
        let vars = Vars { decision: &d, facts: &f };
        let base = "http://198.18.0.1:8080";
        let reads = |cmdline: &str| -> Vec<String> {
            kernel_args(cmdline)
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
        };
        // pxelinux carries quotes to the kernel as they are.
        let pxe = pxelinux(base, &vars).unwrap();
        assert!(pxe.rejected.is_empty(), "{:?}", pxe.rejected);
        let append = pxe.text.lines().find_map(|l| l.strip_prefix("  APPEND ")).unwrap();
        assert_eq!(reads(append), ["console=ttyS0", "m=a b || reboot", "r=R 7 #2", "s=To Be Filled"]);
        // iPXE cannot carry `||` or a word starting with `#`: those are left out.
        let script = ipxe(base, &vars).unwrap();
        let names: Vec<&str> = script.rejected.iter().map(|r| r.variable.as_str()).collect();
        assert_eq!(names, ["host.marker", "location.rack"]);
        let lines = ipxe_script(&script.text);
        let kernel = lines.iter().flat_map(|l| &l.commands).find(|c| c.words[0] == "kernel").unwrap();
        assert_eq!(kernel.then.as_deref(), Some("||"));
        assert_eq!(
            reads(&kernel.words[2..].join(" ")),
            ["console=ttyS0", "m=", "r=", "s=To Be Filled", "initrd=initrd0"]
        );
        // GRUB cannot carry spaces the same way in every release.
        let cfg = grub(base, &vars).unwrap();
        let names: Vec<&str> = cfg.rejected.iter().map(|r| r.variable.as_str()).collect();
        assert_eq!(names, ["host.marker", "location.rack", "facts.serial"]);
        let linux = cfg.text.lines().find_map(|l| l.strip_prefix("  linux ")).unwrap();
        let words = grub_words(linux).unwrap();
        assert_eq!(reads(&grub_cmdline(&words[1..])), ["console=ttyS0", "m=", "r=", "s="]);
    }
}

//! Boot configuration rendered from a decision: cmdline/script templates
//! and the loader configurations served over TFTP (pxelinux, GRUB, iPXE).
//! Pure text in, text out; the boot services own I/O.
//!
//! Files of the image catalog are fetched over HTTP from
//! `<base>/images/<image>/<version>/<file>` (the image streamer's layout).

use bootfleet_proto::v1::{Decision, FileRef, image_profile};

use crate::facts::Facts;

/// The values templates may use.
pub struct Vars<'a> {
    /// The decision (host profile values, location labels).
    pub decision: &'a Decision,
    /// The host's facts.
    pub facts: &'a Facts,
}

impl Vars<'_> {
    fn lookup(&self, name: &str) -> String {
        if let Some(key) = name.strip_prefix("host.") {
            return self
                .decision
                .host_profile
                .as_ref()
                .and_then(|p| p.values.get(key))
                .cloned()
                .unwrap_or_default();
        }
        if let Some(key) = name.strip_prefix("location.") {
            return self
                .decision
                .location
                .as_ref()
                .and_then(|l| l.labels.get(key))
                .cloned()
                .unwrap_or_default();
        }
        if let Some(field) = name.strip_prefix("facts.")
            && let Some(field) = crate::facts::Field::parse(field)
        {
            return self.facts.get(&field).unwrap_or_default().to_owned();
        }
        String::new()
    }
}

/// Expands `${host.KEY}`, `${location.KEY}` and `${facts.FIELD}`; unknown
/// names expand to nothing (profiles are validated when saved).
pub fn expand(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&vars.lookup(&after[..end]));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// URL of a catalog file under the streamer base URL.
pub fn file_url(base: &str, file: &FileRef) -> String {
    format!("{}/images/{}/{}/{}", base.trim_end_matches('/'), file.image, file.version, file.file)
}

/// What a loader should do, from the decision.
enum Plan {
    Kernel { kernel: String, initrds: Vec<String>, cmdline: String },
    Local,
}

fn plan(base: &str, vars: &Vars<'_>) -> Option<Plan> {
    match vars.decision.image_profile.as_ref()?.boot.as_ref()? {
        image_profile::Boot::Kernel(k) => Some(Plan::Kernel {
            kernel: file_url(base, k.kernel.as_ref()?),
            initrds: k.initrds.iter().map(|f| file_url(base, f)).collect(),
            cmdline: expand(&k.cmdline, vars),
        }),
        image_profile::Boot::Local(_) => Some(Plan::Local),
        // Scripts, sanboot and NBD need iPXE; ignore means stay silent.
        _ => None,
    }
}

/// A pxelinux configuration (`pxelinux.cfg/01-<mac>`); `None` when the
/// decision is nothing pxelinux can do.
pub fn pxelinux(base: &str, vars: &Vars<'_>) -> Option<String> {
    Some(match plan(base, vars)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            let initrd =
                if initrds.is_empty() { String::new() } else { format!("  INITRD {}\n", initrds.join(",")) };
            format!("DEFAULT bootfleet\nLABEL bootfleet\n  KERNEL {kernel}\n{initrd}  APPEND {cmdline}\n")
        }
        Plan::Local => "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n".to_owned(),
    })
}

/// A GRUB configuration (`grub.cfg-01-<mac>`).
pub fn grub(base: &str, vars: &Vars<'_>) -> Option<String> {
    Some(match plan(base, vars)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            // GRUB fetches over HTTP with (http,host)/path.
            let grub_path = |url: &str| match url.split_once("://").and_then(|(_, rest)| rest.split_once('/'))
            {
                Some((host, path)) => format!("(http,{host})/{path}"),
                None => url.to_owned(),
            };
            let initrd = initrds.iter().map(|u| grub_path(u)).collect::<Vec<_>>().join(" ");
            let initrd = if initrd.is_empty() { String::new() } else { format!("  initrd {initrd}\n") };
            format!(
                "set timeout=0\nmenuentry 'bootfleet' {{\n  linux {} {cmdline}\n{initrd}}}\n",
                grub_path(&kernel)
            )
        }
        Plan::Local => "set timeout=0\nexit\n".to_owned(),
    })
}

/// An iPXE script for kernel and local decisions.
pub fn ipxe(base: &str, vars: &Vars<'_>) -> Option<String> {
    Some(match plan(base, vars)? {
        Plan::Kernel { kernel, initrds, cmdline } => {
            let mut script = String::from("#!ipxe\n");
            for (i, initrd) in initrds.iter().enumerate() {
                script.push_str(&format!("initrd --name initrd{i} {initrd} || goto failed\n"));
            }
            let names: String = (0..initrds.len()).map(|i| format!(" initrd=initrd{i}")).collect();
            script
                .push_str(&format!("kernel {kernel} {cmdline}{names} || goto failed\nboot || goto failed\n"));
            script.push_str(":failed\necho Bootfleet: network boot failed; trying the local disk\nexit 1\n");
            script
        }
        Plan::Local => "#!ipxe\nexit 1\n".to_owned(),
    })
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
                    cmdline: "console=ttyS0 marker=${host.marker} rack=${location.rack} mac=${facts.mac} x=${nope.y}".into(),
                })),
                ..Default::default()
            }),
            host_profile: Some(HostProfile { name: "h".into(), values: [("marker".into(), "hello".into())].into(), ..Default::default() }),
            location: Some(Location { name: "l".into(), labels: [("rack".into(), "7".into())].into() }),
            ..Default::default()
        }
    }

    #[test]
    fn templates_expand() {
        let d = kernel_decision();
        let f = facts();
        let vars = Vars { decision: &d, facts: &f };
        assert_eq!(
            expand("a=${host.marker} b=${host.none} c=${facts.mac} ${unclosed", &vars),
            "a=hello b= c=52:54:00:00:00:01 ${unclosed"
        );
    }

    #[test]
    fn loader_configs_golden() {
        let d = kernel_decision();
        let f = facts();
        let vars = Vars { decision: &d, facts: &f };
        let base = "http://198.18.0.1:8080/";
        assert_eq!(
            pxelinux(base, &vars).unwrap(),
            "DEFAULT bootfleet\nLABEL bootfleet\n  KERNEL http://198.18.0.1:8080/images/tiny/1/vmlinuz\n  INITRD http://198.18.0.1:8080/images/tiny/1/initrd.img\n  APPEND console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x=\n"
        );
        assert_eq!(
            grub(base, &vars).unwrap(),
            "set timeout=0\nmenuentry 'bootfleet' {\n  linux (http,198.18.0.1:8080)/images/tiny/1/vmlinuz console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x=\n  initrd (http,198.18.0.1:8080)/images/tiny/1/initrd.img\n}\n"
        );
        assert!(ipxe(base, &vars).unwrap().contains("kernel http://198.18.0.1:8080/images/tiny/1/vmlinuz console=ttyS0 marker=hello rack=7 mac=52:54:00:00:00:01 x= initrd=initrd0 || goto failed"));
        let local = Decision {
            image_profile: Some(ImageProfile {
                name: "disk".into(),
                boot: Some(image_profile::Boot::Local(LocalBoot {})),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vars = Vars { decision: &local, facts: &f };
        assert_eq!(pxelinux(base, &vars).unwrap(), "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n");
        assert!(pxelinux(base, &Vars { decision: &Decision::default(), facts: &f }).is_none());
    }
}

//! The declarative file format operators apply (`bootfleet apply -f`), in
//! YAML or TOML:
//!
//! ```yaml
//! image_profiles:
//!   - name: debian-12
//!     kernel:
//!       kernel: debian/12/vmlinuz          # image/version/file
//!       initrds: [debian/12/initrd.img]
//!       cmdline: "console=ttyS0 role={{host.role}}"
//!   - name: disk
//!     local: true
//! host_profiles:
//!   - name: web
//!     values: { role: web }
//! locations:
//!   - name: ams-r1
//!     labels: { site: ams, rack: "1" }
//! rules:                                     # the whole ordered working set
//!   - name: lab-vms
//!     match: { mac: "52:54:00:*", arch: { in: [bios, efi-x64] } }
//!     image_profile: debian-12
//!     host_profile: web
//! ```
//!
//! A match is a map: `all: [..]`, `any: [..]`, `not: {..}`, `always: true`,
//! or `<field>: <test>` where the test is a string (a glob if it has `*?[`,
//! else equality) or one of `{equals: v}`, `{in: [..]}`, `{glob: p}`,
//! `{cidr: net}`, `{range: [from, to]}`. Several keys in one map must all
//! hold. Errors name the path (`rules[2].match.arch.in[1]`).

use std::collections::BTreeMap;

use bootfleet_proto::v1::{
    Condition, FileRef, HostProfile, IgnoreHost, ImageProfile, KernelBoot, LocalBoot, Location, Match,
    MatchList, Rule, SanBoot, ScriptBoot, StringSet, ValueRange, VdiskBoot, WriteCache, condition,
    image_profile, r#match,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::RulesError;

/// The objects a manifest declares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    /// Image profiles to create or replace.
    pub image_profiles: Vec<ImageProfile>,
    /// Host profiles to create or replace.
    pub host_profiles: Vec<HostProfile>,
    /// Locations to create or replace.
    pub locations: Vec<Location>,
    /// The new working rule set, if the manifest has a `rules` key.
    pub rules: Option<Vec<Rule>>,
}

/// The text format of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl Format {
    /// The format a file name's extension says (YAML unless `.toml`).
    pub fn from_path(path: &std::path::Path) -> Self {
        if path.extension().is_some_and(|e| e == "toml") { Self::Toml } else { Self::Yaml }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestSpec {
    #[serde(default)]
    image_profiles: Vec<ImageProfileSpec>,
    #[serde(default)]
    host_profiles: Vec<HostProfileSpec>,
    #[serde(default)]
    locations: Vec<LocationSpec>,
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageProfileSpec {
    name: String,
    #[serde(default)]
    description: String,
    kernel: Option<KernelSpec>,
    script: Option<String>,
    sanboot: Option<String>,
    vdisk: Option<VdiskSpec>,
    /// The first wave's spelling, refused with a pointer to `vdisk`.
    nbd: Option<Value>,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    ignore: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VdiskSpec {
    disk: String,
    kernel: String,
    #[serde(default)]
    initrds: Vec<String>,
    #[serde(default)]
    cmdline: String,
    write_cache: String,
    #[serde(default)]
    root_fs_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelSpec {
    kernel: String,
    #[serde(default)]
    initrds: Vec<String>,
    #[serde(default)]
    cmdline: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostProfileSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    values: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationSpec {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "match")]
    matches: Value,
    #[serde(default)]
    image_profile: String,
    #[serde(default)]
    host_profile: String,
    #[serde(default)]
    location: String,
}

/// Parses "image/version/file" (the file may contain further slashes).
pub fn parse_file_ref(text: &str, path: &str) -> Result<FileRef, RulesError> {
    let mut parts = text.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(image), Some(version), Some(file))
            if !image.is_empty() && !version.is_empty() && !file.is_empty() =>
        {
            Ok(FileRef { image: image.into(), version: version.into(), file: file.into() })
        }
        _ => Err(RulesError::invalid(path, format!("{text:?} is not IMAGE/VERSION/FILE"))),
    }
}

/// A write cache by its manifest name (PVS's names, hyphenated).
pub fn parse_write_cache(name: &str) -> Option<WriteCache> {
    match name {
        "client-ram" => Some(WriteCache::ClientRam),
        "server" => Some(WriteCache::Server),
        "server-persistent" => Some(WriteCache::ServerPersistent),
        _ => None,
    }
}

/// The manifest name of a write cache (also what the boot script passes
/// to the vDisk initramfs as `bootfleet.cache=`); records stored before
/// write caches had a mode are `server`.
pub fn write_cache_name(cache: i32) -> &'static str {
    match WriteCache::try_from(cache) {
        Ok(WriteCache::ClientRam) => "client-ram",
        Ok(WriteCache::ServerPersistent) => "server-persistent",
        Ok(WriteCache::Server | WriteCache::Unspecified) | Err(_) => "server",
    }
}

/// Parses a manifest.
pub fn parse(text: &str, format: Format) -> Result<Manifest, RulesError> {
    let value: Value = match format {
        Format::Yaml => {
            serde_saphyr::from_str(text).map_err(|e| RulesError::invalid("manifest", e.to_string()))?
        }
        Format::Toml => toml::from_str(text).map_err(|e| RulesError::invalid("manifest", e.to_string()))?,
    };
    let spec: ManifestSpec = serde_path_to_error::deserialize(value)
        .map_err(|e| RulesError::invalid(e.path().to_string(), e.inner().to_string()))?;
    let image_profiles = spec
        .image_profiles
        .into_iter()
        .enumerate()
        .map(|(i, p)| image_profile(p, &format!("image_profiles[{i}]")))
        .collect::<Result<_, _>>()?;
    let host_profiles = spec
        .host_profiles
        .into_iter()
        .map(|p| HostProfile {
            name: p.name,
            description: p.description,
            values: p.values.into_iter().collect(),
        })
        .collect();
    let locations = spec
        .locations
        .into_iter()
        .map(|l| Location { name: l.name, labels: l.labels.into_iter().collect() })
        .collect();
    let rules = spec
        .rules
        .map(|rules| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok(Rule {
                        name: r.name,
                        description: r.description,
                        r#match: Some(match_expr(&r.matches, &format!("rules[{i}].match"))?),
                        image_profile: r.image_profile,
                        host_profile: r.host_profile,
                        location: r.location,
                    })
                })
                .collect::<Result<Vec<_>, RulesError>>()
        })
        .transpose()?;
    Ok(Manifest { image_profiles, host_profiles, locations, rules })
}

fn image_profile(p: ImageProfileSpec, path: &str) -> Result<ImageProfile, RulesError> {
    use image_profile::Boot;
    let mut boots = Vec::new();
    if let Some(k) = p.kernel {
        let kernel = parse_file_ref(&k.kernel, &format!("{path}.kernel.kernel"))?;
        let initrds = k
            .initrds
            .iter()
            .enumerate()
            .map(|(i, f)| parse_file_ref(f, &format!("{path}.kernel.initrds[{i}]")))
            .collect::<Result<_, _>>()?;
        boots.push(Boot::Kernel(KernelBoot { kernel: Some(kernel), initrds, cmdline: k.cmdline }));
    }
    if let Some(script) = p.script {
        boots.push(Boot::Script(ScriptBoot { script }));
    }
    if let Some(disk) = p.sanboot {
        boots.push(Boot::Sanboot(SanBoot { disk: Some(parse_file_ref(&disk, &format!("{path}.sanboot"))?) }));
    }
    if p.nbd.is_some() {
        return Err(RulesError::invalid(
            format!("{path}.nbd"),
            "nbd: became vdisk: { disk: IMAGE/VERSION/FILE, kernel: …, initrds: [the vDisk initramfs], \
             write_cache: client-ram|server }",
        ));
    }
    if let Some(v) = p.vdisk {
        let at = |field: &str| format!("{path}.vdisk.{field}");
        let initrds = v
            .initrds
            .iter()
            .enumerate()
            .map(|(i, f)| parse_file_ref(f, &at(&format!("initrds[{i}]"))))
            .collect::<Result<_, _>>()?;
        let Some(write_cache) = parse_write_cache(&v.write_cache) else {
            return Err(RulesError::invalid(
                at("write_cache"),
                format!("{:?}: use client-ram, server or server-persistent", v.write_cache),
            ));
        };
        boots.push(Boot::Vdisk(VdiskBoot {
            disk: Some(parse_file_ref(&v.disk, &at("disk"))?),
            kernel: Some(parse_file_ref(&v.kernel, &at("kernel"))?),
            initrds,
            cmdline: v.cmdline,
            write_cache: write_cache.into(),
            root_fs_type: v.root_fs_type,
        }));
    }
    if p.local {
        boots.push(Boot::Local(LocalBoot {}));
    }
    if p.ignore {
        boots.push(Boot::Ignore(IgnoreHost {}));
    }
    if boots.len() != 1 {
        return Err(RulesError::invalid(
            path,
            "give exactly one of kernel, script, sanboot, vdisk, local: true, ignore: true",
        ));
    }
    Ok(ImageProfile { name: p.name, description: p.description, boot: boots.pop() })
}

fn string(value: &Value, path: &str) -> Result<String, RulesError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(RulesError::invalid(path, format!("expected a string, found {other}"))),
    }
}

fn strings(value: &Value, path: &str) -> Result<Vec<String>, RulesError> {
    match value {
        Value::Array(items) => {
            items.iter().enumerate().map(|(i, v)| string(v, &format!("{path}[{i}]"))).collect()
        }
        other => Err(RulesError::invalid(path, format!("expected a list, found {other}"))),
    }
}

fn list(value: &Value, path: &str) -> Result<MatchList, RulesError> {
    match value {
        Value::Array(items) => Ok(MatchList {
            items: items
                .iter()
                .enumerate()
                .map(|(i, v)| match_expr(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        }),
        other => Err(RulesError::invalid(path, format!("expected a list of matches, found {other}"))),
    }
}

fn condition(field: &str, test: &Value, path: &str) -> Result<Match, RulesError> {
    use condition::Test;
    let test = match test {
        Value::String(_) | Value::Number(_) => {
            let text = string(test, path)?;
            if text.contains(['*', '?', '[']) { Test::Glob(text) } else { Test::Equals(text) }
        }
        Value::Object(map) if map.len() == 1 => {
            let (kind, arg) = map.iter().next().ok_or_else(|| RulesError::invalid(path, "empty test"))?;
            let at = format!("{path}.{kind}");
            match kind.as_str() {
                "equals" => Test::Equals(string(arg, &at)?),
                "in" => Test::In(StringSet { values: strings(arg, &at)? }),
                "glob" => Test::Glob(string(arg, &at)?),
                "cidr" => Test::Cidr(string(arg, &at)?),
                "range" => {
                    let (from, to) = match arg {
                        Value::Array(items) if items.len() == 2 => {
                            (string(&items[0], &format!("{at}[0]"))?, string(&items[1], &format!("{at}[1]"))?)
                        }
                        Value::Object(m) => (
                            string(m.get("from").unwrap_or(&Value::Null), &format!("{at}.from"))?,
                            string(m.get("to").unwrap_or(&Value::Null), &format!("{at}.to"))?,
                        ),
                        _ => return Err(RulesError::invalid(at, "expected [from, to]")),
                    };
                    Test::Range(ValueRange { from, to })
                }
                other => {
                    return Err(RulesError::invalid(
                        at,
                        format!("unknown test {other:?} (equals, in, glob, cidr, range)"),
                    ));
                }
            }
        }
        _ => {
            return Err(RulesError::invalid(
                path,
                "expected a string or one of {equals|in|glob|cidr|range: …}",
            ));
        }
    };
    Ok(Match {
        expr: Some(r#match::Expr::Condition(Condition { field: field.to_owned(), test: Some(test) })),
    })
}

/// Converts one match map (see the module docs) to the wire form.
pub fn match_expr(value: &Value, path: &str) -> Result<Match, RulesError> {
    let Value::Object(map) = value else {
        return Err(RulesError::invalid(path, "expected a map such as {mac: \"52:54:00:*\"}"));
    };
    let mut items = Vec::new();
    for (key, arg) in map {
        let at = format!("{path}.{key}");
        let expr = match key.as_str() {
            "all" => Match { expr: Some(r#match::Expr::All(list(arg, &at)?)) },
            "any" => Match { expr: Some(r#match::Expr::Any(list(arg, &at)?)) },
            "not" => Match { expr: Some(r#match::Expr::Not(Box::new(match_expr(arg, &at)?))) },
            "always" => match arg {
                Value::Bool(b) => Match { expr: Some(r#match::Expr::Always(*b)) },
                _ => return Err(RulesError::invalid(at, "expected true")),
            },
            field => condition(field, arg, &at)?,
        };
        items.push(expr);
    }
    match items.len() {
        0 => Err(RulesError::invalid(path, "empty match (use always: true for a catch-all)")),
        1 => Ok(items.remove(0)),
        _ => Ok(Match { expr: Some(r#match::Expr::All(MatchList { items })) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
image_profiles:
  - name: debian-12
    kernel:
      kernel: debian/12/vmlinuz
      initrds: [debian/12/initrd.img]
      cmdline: "console=ttyS0 role={{host.role}}"
  - name: disk
    local: true
host_profiles:
  - name: web
    values: { role: web }
locations:
  - name: ams-r1
    labels: { site: ams, rack: "1" }
rules:
  - name: lab-vms
    match: { mac: "52:54:00:*", arch: { in: [bios, efi-x64] } }
    image_profile: debian-12
    host_profile: web
  - name: default
    match: { always: true }
    image_profile: disk
"#;

    #[test]
    fn yaml_example_parses() {
        let m = parse(EXAMPLE, Format::Yaml).unwrap();
        assert_eq!(m.image_profiles.len(), 2);
        assert_eq!(m.host_profiles[0].values["role"], "web");
        let rules = m.rules.unwrap();
        assert_eq!(rules.len(), 2);
        let Some(r#match::Expr::All(all)) = &rules[0].r#match.as_ref().unwrap().expr else {
            panic!("two keys make an all: {:?}", rules[0]);
        };
        assert_eq!(all.items.len(), 2);
        // And the rules compile.
        crate::ruleset::CompiledRuleSet::compile_rules(&rules, 0).unwrap();
    }

    #[test]
    fn toml_works_too() {
        let text = r#"
[[host_profiles]]
name = "db"
values = { role = "db" }

[[rules]]
name = "subnet"
match = { ipv4 = { cidr = "198.18.0.0/15" } }
host_profile = "db"
"#;
        let m = parse(text, Format::Toml).unwrap();
        assert_eq!(m.rules.unwrap()[0].name, "subnet");
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            ("rules: [{name: a, match: {mac: {like: x}}, image_profile: p}]", "rules[0].match.mac.like"),
            (
                "rules: [{name: a, match: {arch: {in: [bios, {x: 1}]}}, image_profile: p}]",
                "rules[0].match.arch.in[1]",
            ),
            ("rules: [{name: a, match: {all: {mac: x}}, image_profile: p}]", "rules[0].match.all"),
            ("rules: [{name: a, match: {}, image_profile: p}]", "rules[0].match"),
            ("rules: [{name: a, image_profile: p}]", "rules[0]"),
            ("image_profiles: [{name: a, kernel: {kernel: vmlinuz}}]", "image_profiles[0].kernel.kernel"),
            ("image_profiles: [{name: a, local: true, ignore: true}]", "image_profiles[0]"),
            ("image_profiles: [{name: a, lcoal: true}]", "image_profiles[0].lcoal"),
            ("colour: red", "colour"),
            ("image_profiles: [{name: a, nbd: d/1/root.ext4}]", "image_profiles[0].nbd"),
            (
                "image_profiles: [{name: a, vdisk: {disk: d/1/r, kernel: d/1/k, write_cache: ram}}]",
                "image_profiles[0].vdisk.write_cache",
            ),
            (
                "image_profiles: [{name: a, vdisk: {disk: r, kernel: d/1/k, write_cache: server}}]",
                "image_profiles[0].vdisk.disk",
            ),
        ];
        for (text, path) in cases {
            match parse(text, Format::Yaml) {
                Err(RulesError::Invalid { field, message }) => {
                    assert!(field == path || field.starts_with(path), "{text}: got {field}: {message}");
                }
                other => panic!("{text}: expected an error at {path}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_vdisk_profile_names_its_disk_kernel_and_write_cache() {
        use bootfleet_proto::v1::WriteCache;
        let text = "image_profiles:\n  - name: desktops\n    vdisk:\n      disk: win/7/root.ext4\n      \
                    kernel: win/7/vmlinuz\n      initrds: [win/7/vdisk-initrd.img]\n      \
                    cmdline: console=ttyS0\n      write_cache: client-ram\n";
        let m = parse(text, Format::Yaml).unwrap();
        let Some(image_profile::Boot::Vdisk(v)) = &m.image_profiles[0].boot else { panic!("{m:?}") };
        assert_eq!(v.disk.as_ref().unwrap().file, "root.ext4");
        assert_eq!(v.initrds.len(), 1);
        assert_eq!(v.write_cache(), WriteCache::ClientRam);
        assert_eq!(write_cache_name(v.write_cache), "client-ram");
        for name in ["client-ram", "server", "server-persistent"] {
            assert_eq!(write_cache_name(parse_write_cache(name).unwrap().into()), name);
        }
    }

    #[test]
    fn a_yaml_syntax_error_names_its_line() {
        let text = "rules:\n  - name: a\n    image_profile: [p\n";
        match parse(text, Format::Yaml) {
            Err(RulesError::Invalid { field, message }) => {
                assert_eq!(field, "manifest");
                assert!(message.contains("line 3") || message.contains(":3:"), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }
}

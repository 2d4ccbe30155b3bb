//! One-line descriptions of rules and decisions for tables.

use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::manifest::write_cache_name;
use pb::{condition, image_profile, r#match};

/// A match expression in compact text: `mac=52:54:00:* & arch in {bios,efi-x64}`.
pub(crate) fn matcher(m: Option<&pb::Match>) -> String {
    let Some(m) = m else { return "-".into() };
    match &m.expr {
        None => "-".into(),
        Some(r#match::Expr::Always(_)) => "always".into(),
        Some(r#match::Expr::All(list)) => join(&list.items, " & "),
        Some(r#match::Expr::Any(list)) => join(&list.items, " | "),
        Some(r#match::Expr::Not(inner)) => format!("!({})", matcher(Some(inner))),
        Some(r#match::Expr::Condition(c)) => {
            let test = match &c.test {
                Some(condition::Test::Equals(v)) => format!("={v}"),
                Some(condition::Test::In(set)) => format!(" in {{{}}}", set.values.join(",")),
                Some(condition::Test::Glob(g)) => format!("~{g}"),
                Some(condition::Test::Cidr(c)) => format!(" in {c}"),
                Some(condition::Test::Range(r)) => format!(" in [{}..{}]", r.from, r.to),
                None => "?".into(),
            };
            format!("{}{test}", c.field)
        }
    }
}

fn join(items: &[pb::Match], sep: &str) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|m| {
            let text = matcher(Some(m));
            if matches!(m.expr, Some(r#match::Expr::All(_) | r#match::Expr::Any(_))) {
                format!("({text})")
            } else {
                text
            }
        })
        .collect();
    parts.join(sep)
}

/// What a rule assigns: `image=debian host=web location=ams`.
pub(crate) fn assigns(rule: &pb::Rule) -> String {
    let mut parts = Vec::new();
    for (label, value) in
        [("image", &rule.image_profile), ("host", &rule.host_profile), ("location", &rule.location)]
    {
        if !value.is_empty() {
            parts.push(format!("{label}={value}"));
        }
    }
    parts.join(" ")
}

/// The kind of boot an image profile does.
pub(crate) fn boot(profile: &pb::ImageProfile) -> String {
    let file = |f: &Option<pb::FileRef>| {
        f.as_ref().map_or("?".into(), |f| format!("{}/{}/{}", f.image, f.version, f.file))
    };
    match &profile.boot {
        Some(image_profile::Boot::Kernel(k)) => format!("kernel {}", file(&k.kernel)),
        Some(image_profile::Boot::Script(_)) => "ipxe script".into(),
        Some(image_profile::Boot::Sanboot(s)) => format!("sanboot {}", file(&s.disk)),
        Some(image_profile::Boot::Vdisk(v)) => format!(
            "vdisk {} ({}, kernel {})",
            file(&v.disk),
            write_cache_name(v.write_cache),
            file(&v.kernel)
        ),
        Some(image_profile::Boot::Local(_)) => "local disk".into(),
        Some(image_profile::Boot::Ignore(_)) => "ignore".into(),
        None => "-".into(),
    }
}

/// A decision in one line.
pub(crate) fn decision(d: Option<&pb::Decision>) -> String {
    let Some(d) = d else { return "-".into() };
    let name = |n: Option<&String>| n.cloned().unwrap_or_else(|| "-".into());
    format!(
        "image={} host={} location={} (v{})",
        name(d.image_profile.as_ref().map(|p| &p.name)),
        name(d.host_profile.as_ref().map(|p| &p.name)),
        name(d.location.as_ref().map(|p| &p.name)),
        d.rule_set_version
    )
}

/// Key/value pairs as `k=v` words in key order (host profile values, labels).
pub(crate) fn pairs(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_read_compactly() {
        let m = bootfleet_rules_engine::manifest::match_expr(
            &serde_json::json!({"mac": "52:54:00:*", "arch": {"in": ["bios", "efi-x64"]}, "not": {"ipv4": {"cidr": "10.0.0.0/8"}}}),
            "m",
        )
        .unwrap();
        assert_eq!(matcher(Some(&m)), "arch in {bios,efi-x64} & mac~52:54:00:* & !(ipv4 in 10.0.0.0/8)");
    }
}

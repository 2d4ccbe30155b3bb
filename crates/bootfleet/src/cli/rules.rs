//! `bootfleet rules …`.

use bootfleet_proto::v1 as pb;

use clap_complete::ArgValueCandidates;

use super::{
    ApiError, ClientArgs, Output, PendingChanges, complete, describe, explain, print_structured, print_table,
    say,
};

/// Rule-set commands.
#[derive(clap::Args)]
pub(crate) struct RulesCommand {
    #[command(subcommand)]
    action: RulesAction,
}

#[derive(clap::Subcommand)]
enum RulesAction {
    /// List the rules of the working (default) or active set, in order.
    List {
        /// Show the active set.
        #[arg(long)]
        active: bool,
    },
    /// Show one rule.
    Get {
        /// Rule name.
        #[arg(add = ArgValueCandidates::new(complete::rule_names))]
        name: String,
        /// From the active set.
        #[arg(long)]
        active: bool,
    },
    /// Remove a rule from the working set.
    Delete {
        /// Rule name.
        #[arg(add = ArgValueCandidates::new(complete::rule_names))]
        name: String,
        /// Succeed when there is no such rule.
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Publish the working state: rules, staged profiles and locations, at once.
    Activate,
    /// What activating would change; exit 2 when something would, 0 when nothing.
    Diff,
    /// Hosts whose decision would change under the working (or active) set.
    TestCompliance {
        /// Hosts to check (default: every known host).
        macs: Vec<String>,
        /// Test against the active set instead of the working set.
        #[arg(long)]
        active: bool,
    },
    /// Record the active set's decision for non-compliant hosts.
    Repair {
        /// Hosts to repair (default: every non-compliant host).
        macs: Vec<String>,
    },
}

/// Prints a diff or a plan: one row per rule, profile or location.
pub(crate) fn print_changes(diff: &pb::DiffResponse) {
    use pb::profile_change::Kind as ProfileChange;
    use pb::rule_change::Kind as RuleChange;
    let mut rows = Vec::new();
    for c in &diff.profile_changes {
        let kind = match c.profile_kind() {
            pb::ProfileKind::Image => "image profile",
            pb::ProfileKind::Host => "host profile",
            pb::ProfileKind::Location => "location",
            pb::ProfileKind::Unspecified => "profile",
        };
        let change = match c.kind() {
            ProfileChange::Added => "add",
            ProfileChange::Removed => "remove",
            ProfileChange::Changed => "change",
        };
        let detail = |o: Option<&pb::ProfileObject>| o.map(describe_object).unwrap_or_default();
        let text = match c.kind() {
            ProfileChange::Added => detail(c.after.as_ref()),
            ProfileChange::Removed => detail(c.before.as_ref()),
            ProfileChange::Changed => format!("{} → {}", detail(c.before.as_ref()), detail(c.after.as_ref())),
        };
        rows.push(vec![change.to_owned(), kind.to_owned(), c.name.clone(), text]);
    }
    for c in &diff.changes {
        let pos = |p: i32| if p < 0 { "-".to_owned() } else { format!("#{p}") };
        let rule = c.working.as_ref().or(c.active.as_ref());
        let what = rule
            .map(|r| format!("{} → {}", describe::matcher(r.r#match.as_ref()), describe::assigns(r)))
            .unwrap_or_default();
        let (change, text) = match c.kind() {
            RuleChange::Added => ("add", format!("at {}: {what}", pos(c.working_position))),
            RuleChange::Removed => ("remove", format!("was {}: {what}", pos(c.active_position))),
            RuleChange::Changed => {
                ("change", format!("{} → {}: {what}", pos(c.active_position), pos(c.working_position)))
            }
            RuleChange::Moved => {
                ("move", format!("{} → {}", pos(c.active_position), pos(c.working_position)))
            }
        };
        rows.push(vec![change.to_owned(), "rule".to_owned(), c.name.clone(), text]);
    }
    print_table(&["CHANGE", "KIND", "NAME", "DETAIL"], &rows);
}

/// A profile or location in a few words.
fn describe_object(object: &pb::ProfileObject) -> String {
    use pb::profile_object::Object;
    match &object.object {
        Some(Object::Image(p)) => match &p.boot {
            // A plan must show what changes, and for kernels that is often
            // only the command line.
            Some(pb::image_profile::Boot::Kernel(k)) => {
                let initrds: Vec<String> =
                    k.initrds.iter().map(|f| format!(" +{}/{}/{}", f.image, f.version, f.file)).collect();
                format!("{}{} [{}]", describe::boot(p), initrds.concat(), k.cmdline)
            }
            _ => describe::boot(p),
        },
        Some(Object::Host(p)) => describe::pairs(&p.values),
        Some(Object::Location(l)) => describe::pairs(&l.labels),
        None => String::new(),
    }
}

fn kind(active: bool) -> i32 {
    if active { pb::RuleSetKind::Active.into() } else { pb::RuleSetKind::Working.into() }
}

fn compliance_rows(results: &[pb::ComplianceResult]) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|r| {
            vec![
                r.mac.clone(),
                r.changed.join(","),
                describe::decision(r.recorded.as_ref()),
                describe::decision(r.expected.as_ref()),
            ]
        })
        .collect()
}

pub(crate) async fn run(command: RulesCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = args.connect().await?;
    let json = args.output != Output::Table;
    match command.action {
        RulesAction::List { active } => {
            let response = client
                .get_rule_set(pb::GetRuleSetRequest { kind: kind(active) })
                .await
                .map_err(explain)?
                .into_inner();
            if json {
                return print_structured(args.output, &response);
            }
            let set = response.rule_set.unwrap_or_default();
            let rows: Vec<Vec<String>> = set
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    vec![
                        i.to_string(),
                        r.name.clone(),
                        describe::matcher(r.r#match.as_ref()),
                        describe::assigns(r),
                    ]
                })
                .collect();
            print_table(&["#", "NAME", "MATCH", "ASSIGNS"], &rows);
            let which =
                if active { format!("active set, version {}", set.version) } else { "working set".into() };
            say(&format!("({} rules, {which}, revision {})", set.rules.len(), response.revision));
        }
        RulesAction::Get { name, active } => {
            let response = client
                .get_rule_set(pb::GetRuleSetRequest { kind: kind(active) })
                .await
                .map_err(explain)?
                .into_inner();
            let set = response.rule_set.unwrap_or_default();
            let Some((position, rule)) = set.rules.iter().enumerate().find(|(_, r)| r.name == name) else {
                return Err(ApiError {
                    code: tonic::Code::NotFound,
                    message: format!(
                        "no rule {name:?} in the {} set",
                        if active { "active" } else { "working" }
                    ),
                    hint: None,
                }
                .into());
            };
            if json {
                return print_structured(args.output, rule);
            }
            print_table(
                &["FIELD", "VALUE"],
                &[
                    vec!["name".into(), rule.name.clone()],
                    vec!["position".into(), position.to_string()],
                    vec!["description".into(), rule.description.clone()],
                    vec!["match".into(), describe::matcher(rule.r#match.as_ref())],
                    vec!["assigns".into(), describe::assigns(rule)],
                ],
            );
        }
        RulesAction::Delete { name, ignore_not_found } => {
            let request = pb::DeleteRuleRequest { name: name.clone(), expected_revision: 0 };
            let response = match client.delete_rule(request).await {
                Ok(response) => response.into_inner(),
                Err(status) if ignore_not_found && status.code() == tonic::Code::NotFound => {
                    return super::report(
                        args.output,
                        &format!("rule {name} not found (ignored)"),
                        &serde_json::json!({"deleted": null, "not_found": {"kind": "rule", "name": name}}),
                    );
                }
                Err(status) => return Err(explain(status)),
            };
            super::report(
                args.output,
                &format!("rule {name} deleted from the working set (revision {})", response.revision),
                &serde_json::json!({"deleted": {"kind": "rule", "name": name}, "revision": response.revision}),
            )?;
        }
        RulesAction::Activate => {
            let response = client
                .activate(pb::ActivateRequest { expected_revision: 0 })
                .await
                .map_err(explain)?
                .into_inner();
            if json {
                return print_structured(args.output, &response);
            }
            if response.unchanged {
                say(&format!("unchanged: version {} is already active", response.version));
            } else {
                if let Some(published) = &response.published {
                    print_changes(published);
                }
                say(&format!("activated version {} (revision {})", response.version, response.revision));
            }
        }
        RulesAction::Diff => {
            let response = client.diff(pb::DiffRequest {}).await.map_err(explain)?.into_inner();
            let count = response.changes.len() + response.profile_changes.len();
            if json {
                print_structured(args.output, &response)?;
            } else if count == 0 {
                say(&format!("no changes: the working state is active version {}", response.active_version));
            } else {
                print_changes(&response);
                say(&format!("({count} changes against active version {})", response.active_version));
            }
            if count > 0 {
                return Err(PendingChanges.into());
            }
        }
        RulesAction::TestCompliance { macs, active } => {
            // Page after page: every host checked, whatever their number.
            let mut response = pb::TestComplianceResponse::default();
            loop {
                let request = pb::TestComplianceRequest {
                    macs: macs.clone(),
                    against: kind(active),
                    page_size: 0,
                    page_token: std::mem::take(&mut response.next_page_token),
                };
                let page = client.test_compliance(request).await.map_err(explain)?.into_inner();
                response.non_compliant.extend(page.non_compliant);
                response.hosts_checked += page.hosts_checked;
                if page.next_page_token.is_empty() {
                    break;
                }
                response.next_page_token = page.next_page_token;
            }
            if json {
                return print_structured(args.output, &response);
            }
            print_table(
                &["MAC", "CHANGES", "RECORDED", "WOULD BE"],
                &compliance_rows(&response.non_compliant),
            );
            say(&format!(
                "({} of {} hosts would change)",
                response.non_compliant.len(),
                response.hosts_checked
            ));
        }
        RulesAction::Repair { macs } => {
            let response = client.repair(pb::RepairRequest { macs }).await.map_err(explain)?.into_inner();
            if json {
                return print_structured(args.output, &response);
            }
            print_table(&["MAC", "CHANGES", "WAS", "NOW"], &compliance_rows(&response.repaired));
            say(&format!("({} hosts repaired)", response.repaired.len()));
        }
    }
    Ok(())
}

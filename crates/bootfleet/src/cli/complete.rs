//! Dynamic shell completion: rule, profile, image and host names asked from
//! the servers while the operator presses TAB.
//!
//! The shell runs `COMPLETE=<shell> bootfleet -- <words>`; clap_complete
//! calls the candidate functions here, which cannot see parsed flags, so
//! they read `--server`/`--images-server`/`--token…` from the words being
//! completed, then the environment, then the defaults. A server that does
//! not answer within a second gives no candidates rather than a hung shell.

use std::time::Duration;

use bootfleet_proto::v1 as pb;
use clap_complete::engine::CompletionCandidate;

/// How long completion may wait for a server.
const PATIENCE: Duration = Duration::from_secs(1);

/// The value of `--flag X` or `--flag=X` among the words being completed,
/// else `env`, else `default`.
fn setting(flag: &str, env: &str, default: &str) -> String {
    let words: Vec<String> = std::env::args().collect();
    let prefix = format!("{flag}=");
    for (i, word) in words.iter().enumerate() {
        if let Some(value) = word.strip_prefix(&prefix) {
            return value.to_owned();
        }
        if word == flag
            && let Some(value) = words.get(i + 1)
        {
            return value.clone();
        }
    }
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

/// Runs `ask` against the rules engine; any failure gives no names.
fn from_rules<F, Fut>(ask: F) -> Vec<CompletionCandidate>
where
    F: FnOnce(bootfleet_rules_engine::client::Client) -> Fut,
    Fut: Future<Output = Result<Vec<String>, tonic::Status>>,
{
    let server = setting("--server", "BOOTFLEET_SERVER", "http://127.0.0.1:7070");
    block_on(async move {
        let client = bootfleet_rules_engine::client::connect(&server, None).await.ok()?;
        ask(client).await.ok()
    })
}

/// Runs `future` for at most [`PATIENCE`] on a private runtime.
fn block_on<Fut: Future<Output = Option<Vec<String>>>>(future: Fut) -> Vec<CompletionCandidate> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Vec::new();
    };
    let names = runtime.block_on(async { tokio::time::timeout(PATIENCE, future).await.ok().flatten() });
    names.unwrap_or_default().into_iter().map(CompletionCandidate::new).collect()
}

/// Names of the working set's rules (a superset of what most commands take).
pub(crate) fn rule_names() -> Vec<CompletionCandidate> {
    from_rules(|mut client| async move {
        let mut names = Vec::new();
        for kind in [pb::RuleSetKind::Working, pb::RuleSetKind::Active] {
            let response = client.get_rule_set(pb::GetRuleSetRequest { kind: kind.into() }).await?;
            for rule in response.into_inner().rule_set.unwrap_or_default().rules {
                if !names.contains(&rule.name) {
                    names.push(rule.name);
                }
            }
        }
        Ok(names)
    })
}

/// Names of profiles and locations, of every kind.
pub(crate) fn profile_names() -> Vec<CompletionCandidate> {
    from_rules(|mut client| async move {
        let response = client.list_profiles(pb::ListProfilesRequest { kind: 0, active: false }).await?;
        let mut names: Vec<String> = response
            .into_inner()
            .profiles
            .into_iter()
            .filter_map(|p| match p.object? {
                pb::profile_object::Object::Image(p) => Some(p.name),
                pb::profile_object::Object::Host(p) => Some(p.name),
                pb::profile_object::Object::Location(l) => Some(l.name),
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    })
}

/// MACs of the known hosts.
pub(crate) fn host_macs() -> Vec<CompletionCandidate> {
    from_rules(|mut client| async move {
        let response = client.list_hosts(pb::ListHostsRequest::default()).await?;
        Ok(response.into_inner().hosts.into_iter().map(|h| h.mac).collect())
    })
}

/// Image names in the streamer's catalog.
pub(crate) fn image_names() -> Vec<CompletionCandidate> {
    let server = setting("--images-server", "BOOTFLEET_IMAGES_SERVER", "http://127.0.0.1:7072");
    block_on(async move {
        let channel = bootfleet_rules_engine::client::connect_channel(&server, None).await.ok()?;
        let mut client = pb::image_service_client::ImageServiceClient::new(channel);
        let response = client.list_versions(pb::ListVersionsRequest { image: String::new() }).await.ok()?;
        let mut names: Vec<String> = response.into_inner().versions.into_iter().map(|v| v.image).collect();
        names.dedup();
        Some(names)
    })
}

/// Writes the script that registers dynamic completion for `shell`
/// (`bootfleet completions bash`), the same one `COMPLETE=bash bootfleet`
/// prints.
pub(crate) fn write_registration(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let shells = clap_complete::env::Shells::builtins();
    let name = shell.to_string();
    let completer =
        shells.completer(&name).ok_or_else(|| anyhow::anyhow!("no dynamic completion for {name}"))?;
    // The script calls this binary back; an absolute path keeps working
    // when PATH differs, the bare name when the path is unknown.
    let exe = std::env::current_exe().map_or_else(|_| "bootfleet".to_owned(), |p| p.display().to_string());
    completer.write_registration("COMPLETE", "bootfleet", "bootfleet", &exe, out)?;
    Ok(())
}

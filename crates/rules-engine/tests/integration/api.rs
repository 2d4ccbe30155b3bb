//! The RulesService API on an in-process server (embedded store).

use std::time::Duration;

use bootfleet_proto::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::{admin, anonymous, embedded, evaluate, image_name, kernel_profile, rule, service, within};

async fn put_profiles(client: &mut bootfleet_rules_engine::client::Client) {
    for profile in [kernel_profile("img-a", "a"), kernel_profile("img-b", "b")] {
        client
            .put_profile(pb::PutProfileRequest {
                profile: Some(profile),
                expected_revision: 0,
                allow_missing_images: true,
            })
            .await
            .unwrap();
    }
}

async fn replace(
    client: &mut bootfleet_rules_engine::client::Client,
    rules: Vec<pb::Rule>,
) -> Result<i64, tonic::Status> {
    let request = pb::ReplaceWorkingSetRequest { rules, expected_revision: 0 };
    client.replace_working_set(request).await.map(|r| r.into_inner().revision)
}

async fn recorded(
    client: &mut bootfleet_rules_engine::client::Client,
    mac: &str,
    image: &str,
) -> pb::HostRecord {
    within(&format!("{mac} recorded with {image}"), async {
        loop {
            if let Ok(host) = client.get_host(pb::GetHostRequest { mac: mac.into() }).await {
                let host = host.into_inner();
                if host.last_decision.as_ref().and_then(image_name) == Some(image) {
                    return host;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

const HOST1: &str = "52:54:00:00:00:01";
const HOST2: &str = "52:54:00:00:00:02";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_activate_evaluate_test_compliance_and_repair() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    replace(
        &mut c,
        vec![rule("host1", json!({"mac": HOST1}), "img-a"), rule("rest", json!({"always": true}), "img-b")],
    )
    .await
    .unwrap();

    // Nothing is active yet: no decision.
    let before = evaluate(&mut c, HOST1).await;
    assert_eq!(image_name(before.decision.as_ref().unwrap()), None);

    let activated = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    assert_eq!(activated.version, 1);
    within("engine rebuilt", server.state.caught_up(activated.revision)).await;
    let one = evaluate(&mut c, HOST1).await.decision.unwrap();
    assert_eq!((image_name(&one), one.rule_set_version), (Some("img-a"), 1));
    assert_eq!(one.matched_rules, ["host1"]);
    let two = evaluate(&mut c, HOST2).await.decision.unwrap();
    assert_eq!(image_name(&two), Some("img-b"));
    let record = recorded(&mut c, HOST1, "img-a").await;
    // The evaluation before activation booted nothing and left no record:
    // the history starts with the first decision that boots the host.
    assert_eq!(record.history.len(), 1);
    recorded(&mut c, HOST2, "img-b").await;

    // Edit the working set: host1 now gets img-b.
    let working = replace(
        &mut c,
        vec![rule("host1", json!({"mac": HOST1}), "img-b"), rule("rest", json!({"always": true}), "img-b")],
    )
    .await
    .unwrap();
    within("working applied", server.state.caught_up(working)).await;
    let diff = c.diff(pb::DiffRequest {}).await.unwrap().into_inner();
    assert_eq!(diff.changes.len(), 1);
    assert_eq!(
        (diff.changes[0].name.as_str(), diff.changes[0].kind()),
        ("host1", pb::rule_change::Kind::Changed)
    );

    let compliance = c
        .test_compliance(pb::TestComplianceRequest {
            against: pb::RuleSetKind::Working.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(compliance.hosts_checked, 2);
    assert_eq!(compliance.non_compliant.len(), 1, "{compliance:?}");
    let changed = &compliance.non_compliant[0];
    assert_eq!(
        (changed.mac.as_str(), changed.changed.as_slice()),
        (HOST1, &["image_profile".to_owned()][..])
    );
    assert_eq!(changed.expected.as_ref().and_then(image_name), Some("img-b"));

    // Activate; the active set now disagrees with host1's record until repaired.
    let v2 = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    assert_eq!(v2.version, 2);
    within("v2 applied", server.state.caught_up(v2.revision)).await;
    let against_active = pb::TestComplianceRequest {
        macs: vec![HOST1.into()],
        against: pb::RuleSetKind::Active.into(),
        ..Default::default()
    };
    assert_eq!(c.test_compliance(against_active.clone()).await.unwrap().into_inner().non_compliant.len(), 1);
    let repaired = c.repair(pb::RepairRequest { macs: vec![] }).await.unwrap().into_inner();
    assert_eq!(repaired.repaired.len(), 1);
    let record = recorded(&mut c, HOST1, "img-b").await;
    assert_eq!(record.history.len(), 2);
    assert!(c.test_compliance(against_active).await.unwrap().into_inner().non_compliant.is_empty());

    // Hosts list without history; get with it.
    let hosts = c.list_hosts(pb::ListHostsRequest::default()).await.unwrap().into_inner().hosts;
    assert_eq!(hosts.len(), 2);
    assert!(hosts.iter().all(|h| h.history.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_history_keeps_the_newest_entries_up_to_its_limit() {
    // The test servers keep 5 entries; record 8 evaluations that differ by
    // serial, each waited for so none are merged in one write.
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    replace(&mut c, vec![rule("all", json!({"always": true}), "img-a")]).await.unwrap();
    let activated = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    within("engine rebuilt", server.state.caught_up(activated.revision)).await;
    let serial = |e: &pb::HostEvent| e.facts.as_ref().map(|f| f.serial.clone()).unwrap_or_default();
    for i in 0..8 {
        let facts = pb::HostFacts { serial: format!("s{i}"), ..crate::facts(HOST1) };
        c.evaluate(pb::EvaluateRequest { facts: Some(facts), dry_run: false, ..Default::default() })
            .await
            .unwrap();
        within("evaluation recorded", async {
            loop {
                let host = c.get_host(pb::GetHostRequest { mac: HOST1.into() }).await.map(|h| h.into_inner());
                if host.is_ok_and(|h| h.history.last().map(serial) == Some(format!("s{i}"))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    let record = c.get_host(pb::GetHostRequest { mac: HOST1.into() }).await.unwrap().into_inner();
    assert_eq!(record.history.iter().map(serial).collect::<Vec<_>>(), ["s3", "s4", "s5", "s6", "s7"]);
    assert_eq!(record.facts.map(|f| f.serial).as_deref(), Some("s7"));
    assert_eq!(record.last_decision.as_ref().and_then(image_name), Some("img-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_validated_and_need_the_token() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    let expect = |result: Result<i64, tonic::Status>, code: Code, text: &str| {
        let status = result.expect_err(text);
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{text} not in {:?}", status.message());
    };
    expect(
        replace(&mut c, vec![rule("a", json!({"always": true}), "nope")]).await,
        Code::InvalidArgument,
        "rules[0].image_profile",
    );
    expect(
        replace(
            &mut c,
            vec![rule("a", json!({"always": true}), "img-a"), rule("a", json!({"always": true}), "img-a")],
        )
        .await,
        Code::InvalidArgument,
        "rules[1].name",
    );
    expect(
        replace(&mut c, vec![rule("a", json!({"vendor": "[x"}), "img-a")]).await,
        Code::InvalidArgument,
        "rules[0].match.glob",
    );
    expect(
        replace(&mut c, vec![rule("a", json!({"ipv4": {"cidr": "10.0.0.1/8"}}), "img-a")]).await,
        Code::InvalidArgument,
        "rules[0].match.cidr",
    );

    // Without the token, or with a wrong one: refused.
    let mut anon = anonymous(&server.url).await;
    expect(
        replace(&mut anon, vec![rule("a", json!({"always": true}), "img-a")]).await,
        Code::Unauthenticated,
        "admin token",
    );
    let mut wrong =
        bootfleet_rules_engine::client::connect(&server.url, Some("not-the-token-at-all")).await.unwrap();
    expect(replace(&mut wrong, vec![]).await, Code::Unauthenticated, "admin token");
    // Reads stay open.
    anon.get_rule_set(pb::GetRuleSetRequest { kind: 0 }).await.unwrap();

    // A profile in use cannot be deleted; a stale revision is a conflict.
    let revision = replace(&mut c, vec![rule("a", json!({"always": true}), "img-a")]).await.unwrap();
    let delete = c
        .delete_profile(pb::DeleteProfileRequest {
            kind: pb::ProfileKind::Image.into(),
            name: "img-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(delete.code(), Code::FailedPrecondition, "{delete:?}");
    assert!(delete.message().contains("rule \"a\""), "{delete:?}");
    c.delete_profile(pb::DeleteProfileRequest { kind: pb::ProfileKind::Image.into(), name: "img-b".into() })
        .await
        .unwrap();
    let missing = c
        .delete_profile(pb::DeleteProfileRequest {
            kind: pb::ProfileKind::Image.into(),
            name: "img-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let stale = pb::PutRuleRequest {
        rule: Some(rule("b", json!({"always": true}), "img-a")),
        expected_revision: revision - 1,
        ..Default::default()
    };
    assert_eq!(c.put_rule(stale).await.unwrap_err().code(), Code::FailedPrecondition);

    // Bad facts are named.
    let bad = c
        .evaluate(pb::EvaluateRequest {
            facts: Some(crate::facts("nope")),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("facts.mac"));
    // Bad profiles too.
    let mut broken = kernel_profile("img-c", "c");
    if let Some(pb::profile_object::Object::Image(p)) = &mut broken.object
        && let Some(pb::image_profile::Boot::Kernel(k)) = &mut p.boot
    {
        k.cmdline = "x={{secret.key}}".into();
    }
    let err = c
        .put_profile(pb::PutProfileRequest {
            profile: Some(broken),
            expected_revision: 0,
            allow_missing_images: true,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("image.kernel.cmdline") && err.message().contains("{{secret.key}}"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rule_edits_lose_no_update() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut client = admin(&server.url).await;
        tasks.push(tokio::spawn(async move {
            let request = pb::PutRuleRequest {
                rule: Some(rule(
                    &format!("r{i}"),
                    json!({"mac": format!("52:54:00:00:01:{i:02x}")}),
                    "img-a",
                )),
                ..Default::default()
            };
            client.put_rule(request).await.map(drop)
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let set = c.get_rule_set(pb::GetRuleSetRequest { kind: 0 }).await.unwrap().into_inner();
    let fresh = server.state.store().get(bootfleet_rules_engine::store::WORKING_KEY).await.unwrap().unwrap();
    within("snapshot caught up", server.state.caught_up(fresh.mod_revision)).await;
    let set = if set.revision == fresh.mod_revision {
        set
    } else {
        c.get_rule_set(pb::GetRuleSetRequest { kind: 0 }).await.unwrap().into_inner()
    };
    let mut names: Vec<String> = set.rule_set.unwrap().rules.into_iter().map(|r| r.name).collect();
    names.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_decisions_streams_what_is_decided() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    replace(&mut c, vec![rule("rest", json!({"always": true}), "img-b")]).await.unwrap();
    let v = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    within("active", server.state.caught_up(v.revision)).await;
    let mut stream =
        c.watch_decisions(pb::WatchDecisionsRequest { mac: HOST2.into() }).await.unwrap().into_inner();
    evaluate(&mut c, HOST1).await;
    evaluate(&mut c, HOST2).await;
    let event = within("decision event", stream.message()).await.unwrap().unwrap();
    assert_eq!(event.facts.unwrap().mac, HOST2, "filtered to HOST2");
    assert_eq!(event.decision.as_ref().and_then(image_name), Some("img-b"));
    assert_eq!(event.decided_by, "test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = embedded().await;
    let channel =
        tonic::transport::Endpoint::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["bootfleet.v1.RulesService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

/// While activations flip between two rule sets, every decision comes
/// wholly from one set or the other: never an image from one and a host
/// profile from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_is_atomic_for_evaluations() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    for name in ["host-a", "host-b"] {
        let object =
            pb::profile_object::Object::Host(pb::HostProfile { name: name.into(), ..Default::default() });
        let profile = pb::ProfileObject { object: Some(object), revision: 0 };
        c.put_profile(pb::PutProfileRequest {
            profile: Some(profile),
            expected_revision: 0,
            allow_missing_images: true,
        })
        .await
        .unwrap();
    }
    let set = |image: &str, host: &str| {
        // Image and host profile come from different rules, so a torn
        // set would show up as a mismatched pair.
        let mut by_image = rule("image", json!({"always": true}), image);
        by_image.description = "image".into();
        let mut by_host = rule("host", json!({"always": true}), "");
        by_host.host_profile = host.into();
        vec![by_image, by_host]
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let checker = {
        let url = server.url.clone();
        let stop = std::sync::Arc::clone(&stop);
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let mut client = anonymous(&url).await;
            let mut evaluations = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = pb::EvaluateRequest {
                    facts: Some(crate::facts(HOST1)),
                    dry_run: true,
                    ..Default::default()
                };
                let d = client.evaluate(request).await.unwrap().into_inner().decision.unwrap();
                let pair = (
                    d.image_profile.map(|p| p.name).unwrap_or_default(),
                    d.host_profile.map(|p| p.name).unwrap_or_default(),
                );
                assert!(
                    matches!(
                        (pair.0.as_str(), pair.1.as_str()),
                        ("", "") | ("img-a", "host-a") | ("img-b", "host-b")
                    ),
                    "torn decision {pair:?}"
                );
                evaluations += 1;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            evaluations
        })
    };
    let checked = |at_least: u32| {
        let done = std::sync::Arc::clone(&done);
        async move {
            while done.load(std::sync::atomic::Ordering::SeqCst) < at_least {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    for round in 0..20 {
        // Make sure the checker runs during every flip.
        let before = done.load(std::sync::atomic::Ordering::SeqCst);
        within("checker evaluating", checked(before + 2)).await;
        let (image, host) = if round % 2 == 0 { ("img-a", "host-a") } else { ("img-b", "host-b") };
        replace(&mut c, set(image, host)).await.unwrap();
        let v = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
        within("activation applied", server.state.caught_up(v.revision)).await;
        let request =
            pb::EvaluateRequest { facts: Some(crate::facts(HOST1)), dry_run: true, ..Default::default() };
        let d = c.evaluate(request).await.unwrap().into_inner().decision.unwrap();
        assert_eq!(image_name(&d), Some(image));
        assert_eq!(d.host_profile.map(|p| p.name).as_deref(), Some(host));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let evaluations = checker.await.unwrap();
    assert!(evaluations >= 40, "the checker evaluated only {evaluations} times while activations flipped");
}

/// Two replicas on one store (so no in-process lock orders them): one keeps
/// replacing the working set while the other keeps activating. Every active
/// set anyone sees is one whole working set, versions count up by one per
/// activation with none given twice, also when two activations race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_races_edits_and_other_activations() {
    let store: bootfleet_core::store::SharedStore =
        std::sync::Arc::new(bootfleet_core::store::embedded::EmbeddedStore::in_memory().unwrap());
    let (editor_server, activator_server) = (crate::start(store.clone()).await, crate::start(store).await);
    let mut editor = admin(&editor_server.url).await;
    put_profiles(&mut editor).await;
    // Generation `n`: two rules that both say `gen-n`.
    let generation = |n: u32| {
        let mut first = rule("first", json!({"always": true}), "img-a");
        first.description = format!("gen-{n}");
        let mut second = rule("second", json!({"mac": HOST2}), "img-b");
        second.description = format!("gen-{n}");
        vec![first, second]
    };
    let generation_of = |set: &pb::RuleSet| {
        let tags: Vec<&str> = set.rules.iter().map(|r| r.description.as_str()).collect();
        assert!(tags.len() == 2 && tags[0] == tags[1], "torn active set: {tags:?}");
        tags[0].to_owned()
    };
    replace(&mut editor, generation(0)).await.unwrap();

    let edits = tokio::spawn(async move {
        for n in 1..=30 {
            replace(&mut editor, generation(n)).await.unwrap();
        }
    });
    // Three activators at once, through both replicas, while edits go on.
    let activators: Vec<_> = (0..3)
        .map(|a| {
            let server = if a == 0 { &editor_server } else { &activator_server };
            let (url, state) = (server.url.clone(), std::sync::Arc::clone(&server.state));
            tokio::spawn(async move {
                let mut client = admin(&url).await;
                let mut out = Vec::new();
                for _ in 0..10 {
                    let v = client.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap();
                    // Read the active set once this replica's snapshot holds
                    // what the activation answered.
                    within("activation seen", state.caught_up(v.get_ref().revision)).await;
                    let active =
                        client.get_rule_set(pb::GetRuleSetRequest { kind: pb::RuleSetKind::Active.into() });
                    let active = active.await.unwrap().into_inner().rule_set.unwrap();
                    out.push((v.into_inner(), active));
                }
                out
            })
        })
        .collect();
    let mut versions = Vec::new();
    for activator in activators {
        for (activated, active) in activator.await.unwrap() {
            // An activation finding nothing new writes nothing and names
            // the version already active.
            if !activated.unchanged {
                versions.push(activated.version);
            }
            generation_of(&active);
        }
    }
    edits.await.unwrap();
    versions.sort_unstable();
    let published = u64::try_from(versions.len()).unwrap();
    assert!(published >= 1, "some activation published");
    assert_eq!(
        versions,
        (1..=published).collect::<Vec<u64>>(),
        "each publishing activation its own next version"
    );

    // Pairs of activations expecting the same working revision, raced
    // through the two replicas, twenty times.
    let mut c = admin(&editor_server.url).await;
    let (mut a, mut b) = (admin(&editor_server.url).await, admin(&activator_server.url).await);
    let stale = c.get_rule_set(pb::GetRuleSetRequest { kind: pb::RuleSetKind::Working.into() });
    let stale = stale.await.unwrap().into_inner().revision;
    replace(&mut c, generation(99)).await.unwrap();
    let both = tokio::join!(
        a.activate(pb::ActivateRequest { expected_revision: stale }),
        b.activate(pb::ActivateRequest { expected_revision: stale }),
    );
    for result in [both.0, both.1] {
        let status = result.expect_err("the working set changed after `stale`");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    // From the store, not a snapshot that may not have seen the last
    // activation through the other replica yet.
    let active = editor_server.state.store().get(bootfleet_rules_engine::store::ACTIVE_KEY).await.unwrap();
    let first = <pb::RuleSet as prost::Message>::decode(active.unwrap().value.as_slice()).unwrap().version;
    for (n, last) in (100..120).zip(first..) {
        // The revision the write answered, not a snapshot's that may lag.
        let revision = replace(&mut c, generation(n)).await.unwrap();
        let both = tokio::join!(
            a.activate(pb::ActivateRequest { expected_revision: revision }),
            b.activate(pb::ActivateRequest { expected_revision: revision }),
        );
        let mut published = Vec::new();
        let mut unchanged = Vec::new();
        for result in [both.0, both.1] {
            match result {
                Ok(v) if v.get_ref().unchanged => unchanged.push(v.into_inner().version),
                Ok(v) => published.push(v.into_inner().version),
                Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
            }
        }
        // One publishes the next version; the other either saw the active
        // set change under it, or ran after and found nothing to publish.
        assert_eq!(published, [last + 1], "racing activations after version {last}");
        assert!(unchanged.iter().all(|&v| v == last + 1), "{unchanged:?}");
    }
}

/// Stores a catalog record for `image/version` holding `files`, as an image
/// streamer does when a version is pushed.
async fn catalog_version(server: &crate::Server, image: &str, version: &str, files: &[&str]) {
    use prost::Message;
    let record = pb::ImageVersion {
        image: image.into(),
        version: version.into(),
        files: files
            .iter()
            .map(|f| pb::ImageFile { name: (*f).into(), sha256: "0".repeat(64), size: 1 })
            .collect(),
        ..Default::default()
    };
    let key = bootfleet_rules_engine::store::image_version_key(image, version);
    server.state.store().put(&key, record.encode_to_vec(), None).await.unwrap();
}

fn image_profile(object: pb::ProfileObject) -> pb::ImageProfile {
    match object.object {
        Some(pb::profile_object::Object::Image(p)) => p,
        other => panic!("not an image profile: {other:?}"),
    }
}

fn cmdline(decision: &pb::Decision) -> String {
    match decision.image_profile.as_ref().and_then(|p| p.boot.as_ref()) {
        Some(pb::image_profile::Boot::Kernel(k)) => k.cmdline.clone(),
        other => panic!("no kernel boot: {other:?}"),
    }
}

fn apply_request(profiles: Vec<pb::ProfileObject>, rules: Option<Vec<pb::Rule>>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        image_profiles: profiles.into_iter().map(image_profile).collect(),
        replace_rules: rules.is_some(),
        rules: rules.unwrap_or_default(),
        source: "site.yaml".into(),
        ..Default::default()
    }
}

/// An apply stages profiles and rules together or not at all; what is
/// staged decides nothing until activation publishes it all at once;
/// applying or activating the same again writes nothing; image versions
/// must be in the catalog; `prune` removes what the file no longer names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_staged_all_or_nothing_and_idempotent() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    catalog_version(&server, "tiny", "1", &["vmlinuz", "initrd"]).await;
    let rules = || {
        vec![rule("host1", json!({"mac": HOST1}), "img-a"), rule("rest", json!({"always": true}), "img-b")]
    };
    let first =
        apply_request(vec![kernel_profile("img-a", "a"), kernel_profile("img-b", "b")], Some(rules()));
    let applied = c.apply(pb::ApplyRequest { activate: true, ..first.clone() }).await.unwrap().into_inner();
    assert!(!applied.unchanged);
    assert_eq!(applied.plan.as_ref().unwrap().profile_changes.len(), 2);
    let activation = applied.activation.unwrap();
    assert_eq!((activation.version, activation.unchanged), (1, false));
    within("v1 live", server.state.caught_up(activation.revision)).await;
    assert!(cmdline(&evaluate(&mut c, HOST1).await.decision.unwrap()).contains("marker=a "));

    // The same file again: nothing written, same revision and version.
    let again = c.apply(pb::ApplyRequest { activate: true, ..first.clone() }).await.unwrap().into_inner();
    assert!(again.unchanged, "{again:?}");
    assert_eq!(again.revision, applied.revision);
    let again_activation = again.activation.unwrap();
    assert!(again_activation.unchanged);
    assert_eq!((again_activation.version, again_activation.revision), (1, activation.revision));

    // A good profile edit with a bad rule: refused whole, every problem
    // named with the file, and nothing staged.
    let mut broken = rules();
    broken.push(rule("typo", json!({"always": true}), "img-zz"));
    broken.push(rule("rest", json!({"always": true}), "img-b"));
    let refused = c
        .apply(apply_request(vec![kernel_profile("img-a", "a2")], Some(broken)))
        .await
        .expect_err("a bad rule refuses the whole file");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let message = refused.message();
    assert!(message.starts_with("site.yaml: 2 problems"), "{message}");
    assert!(message.contains("rules[3].name") && message.contains("duplicate"), "{message}");
    let staged = |c: &mut bootfleet_rules_engine::client::Client, active: bool| {
        let request =
            pb::GetProfileRequest { kind: pb::ProfileKind::Image.into(), name: "img-a".into(), active };
        let mut c = c.clone();
        async move { image_profile(c.get_profile(request).await.unwrap().into_inner()) }
    };
    let working_revision = |c: &mut bootfleet_rules_engine::client::Client| {
        let mut c = c.clone();
        async move { c.get_rule_set(pb::GetRuleSetRequest { kind: 0 }).await.unwrap().into_inner().revision }
    };
    assert_eq!(working_revision(&mut c).await, applied.revision, "the refused apply wrote nothing");
    assert!(format!("{:?}", staged(&mut c, false).await).contains("marker=a "));

    // A dry run shows the plan and writes nothing.
    let edit = apply_request(vec![kernel_profile("img-a", "a2")], None);
    let plan = c
        .apply(pb::ApplyRequest { dry_run: true, activate: true, ..edit.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!plan.unchanged && plan.activation.is_none());
    let changes = plan.plan.unwrap().profile_changes;
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].name.as_str(), changes[0].kind()), ("img-a", pb::profile_change::Kind::Changed));
    assert_eq!(working_revision(&mut c).await, applied.revision, "the dry run wrote nothing");

    // Staged, the edit shows in the diff but decides nothing yet.
    let staged_edit = c.apply(edit).await.unwrap().into_inner();
    within("edit seen", server.state.caught_up(staged_edit.revision)).await;
    assert!(format!("{:?}", staged(&mut c, false).await).contains("marker=a2"));
    assert!(format!("{:?}", staged(&mut c, true).await).contains("marker=a "));
    assert!(cmdline(&evaluate(&mut c, HOST1).await.decision.unwrap()).contains("marker=a "));
    let diff = c.diff(pb::DiffRequest {}).await.unwrap().into_inner();
    assert!(diff.changes.is_empty());
    assert_eq!(diff.profile_changes.len(), 1, "{diff:?}");
    let active = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    assert_eq!((active.version, active.unchanged), (2, false));
    within("v2 live", server.state.caught_up(active.revision)).await;
    assert!(cmdline(&evaluate(&mut c, HOST1).await.decision.unwrap()).contains("marker=a2"));
    assert!(c.diff(pb::DiffRequest {}).await.unwrap().into_inner().profile_changes.is_empty());

    // A version the catalog lacks is refused, naming it, unless allowed.
    let mut v2 = image_profile(kernel_profile("img-c", "c"));
    if let Some(pb::image_profile::Boot::Kernel(k)) = &mut v2.boot {
        k.kernel.as_mut().unwrap().version = "2".into();
    }
    let request =
        pb::ApplyRequest { image_profiles: vec![v2], source: "site.yaml".into(), ..Default::default() };
    let missing = c.apply(request.clone()).await.expect_err("tiny/2 was never pushed");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("tiny/2 is not in the image catalog"), "{}", missing.message());
    catalog_version(&server, "tiny", "2", &["vmlinuz", "initrd"]).await;
    c.apply(request).await.unwrap();

    // Prune: only what the file names stays.
    let pruned = c
        .apply(pb::ApplyRequest {
            prune: true,
            ..apply_request(
                vec![kernel_profile("img-a", "a2")],
                Some(vec![rule("all", json!({"always": true}), "img-a")]),
            )
        })
        .await
        .unwrap()
        .into_inner();
    let removed: Vec<String> = pruned
        .plan
        .unwrap()
        .profile_changes
        .into_iter()
        .filter(|c| c.kind() == pb::profile_change::Kind::Removed)
        .map(|c| c.name)
        .collect();
    assert_eq!(removed, ["img-b", "img-c"]);
    let listed =
        c.list_profiles(pb::ListProfilesRequest { kind: 0, active: false }).await.unwrap().into_inner();
    assert_eq!(listed.profiles.len(), 1);
    let listed =
        c.list_profiles(pb::ListProfilesRequest { kind: 0, active: true }).await.unwrap().into_inner();
    assert_eq!(listed.profiles.len(), 2, "img-a and img-b stay active until activation");
}

/// Evaluations of hosts no rule boots — 300 random MACs with no matching
/// rule, and hosts an `ignore` profile matches — leave no host record;
/// only the host a rule boots gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hosts_a_rule_boots_get_a_record() {
    let server = embedded().await;
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    let ignore = pb::ProfileObject {
        object: Some(pb::profile_object::Object::Image(pb::ImageProfile {
            name: "quiet".into(),
            boot: Some(pb::image_profile::Boot::Ignore(pb::IgnoreHost {})),
            ..Default::default()
        })),
        revision: 0,
    };
    c.put_profile(pb::PutProfileRequest {
        profile: Some(ignore),
        expected_revision: 0,
        allow_missing_images: true,
    })
    .await
    .unwrap();
    replace(
        &mut c,
        vec![
            rule("host1", json!({"mac": HOST1}), "img-a"),
            rule("quiet", json!({"mac": {"glob": "52:54:00:ff:*"}}), "quiet"),
        ],
    )
    .await
    .unwrap();
    let activated = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    within("active", server.state.caught_up(activated.revision)).await;
    let mut boot_service = service(&server.url).await;
    for i in 0..300u32 {
        let [_, a, b, d] = i.wrapping_mul(2_654_435_761).to_be_bytes();
        evaluate(&mut boot_service, &format!("02:00:00:{a:02x}:{b:02x}:{d:02x}")).await;
    }
    for i in 0..20 {
        evaluate(&mut boot_service, &format!("52:54:00:ff:00:{i:02x}")).await;
    }
    evaluate(&mut boot_service, HOST1).await;
    recorded(&mut c, HOST1, "img-a").await;
    let hosts = server.state.store().range(bootfleet_rules_engine::store::HOSTS_PREFIX).await.unwrap();
    let keys: Vec<&str> = hosts.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let want = format!("{}{HOST1}", bootfleet_rules_engine::store::HOSTS_PREFIX);
    assert!(keys == [want.as_str()], "{} records, first {:?}", keys.len(), &keys[..keys.len().min(4)]);
}

/// Thousands of idle WatchDecisions streams: the replica keeps at most
/// `MAX_WATCHERS` and refuses the rest with RESOURCE_EXHAUSTED; a watcher
/// that goes away frees its slot at once; decisions still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_are_capped_and_freed() {
    use bootfleet_rules_engine::service::MAX_WATCHERS;
    let server = embedded().await;
    // Streams spread over connections (each allows 512).
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(anonymous(&server.url).await);
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..MAX_WATCHERS + 200 {
        let client = &mut clients[i % 3];
        match client.watch_decisions(pb::WatchDecisionsRequest { mac: String::new() }).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (MAX_WATCHERS, 200));
    // Dropping streams frees their slots.
    open.truncate(MAX_WATCHERS - 10);
    within("slots freed", async {
        loop {
            let mut c = anonymous(&server.url).await;
            if c.watch_decisions(pb::WatchDecisionsRequest { mac: String::new() }).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Writes and evaluations are still served.
    let mut c = admin(&server.url).await;
    put_profiles(&mut c).await;
    evaluate(&mut c, HOST1).await;
}

//! Two rules-engine processes on a real etcd: a write through one is seen
//! by the other within a second, concurrent edits through both lose
//! nothing, and with etcd stopped both keep answering Evaluate.

use bootfleet_test_support::healthz;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootfleet_proto::v1 as pb;
use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::free_port;
use serde_json::json;
use tonic::Code;

use crate::{TOKEN, admin, facts, image_name, kernel_profile, rule, within};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet-rules-engine");

struct Replica {
    child: Child,
    url: String,
    admin_port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(id: &str, endpoints: &[String]) -> Replica {
    let port = free_port();
    let admin_port = free_port();
    let child = Command::new(BIN)
        .args(["--store", "etcd", "--etcd-endpoints", &endpoints.join(",")])
        .args([
            "--rules-listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--member-id", id, "--rules-admin-token", TOKEN, "--log", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start bootfleet-rules-engine");
    let replica = Replica { child, url: format!("http://127.0.0.1:{port}"), admin_port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthz(admin_port).starts_with("serving") {
        assert!(Instant::now() < deadline, "replica {id} never became healthy: {:?}", healthz(admin_port));
        std::thread::sleep(Duration::from_millis(50));
    }
    replica
}

async fn image_on(url: &str, mac: &str) -> (Option<String>, bool) {
    let mut c = admin(url).await;
    let r = c
        .evaluate(pb::EvaluateRequest { facts: Some(facts(mac)), dry_run: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    (r.decision.as_ref().and_then(image_name).map(str::to_owned), r.degraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_state_and_survive_etcd_loss() {
    bootfleet_test_support::init_tracing();
    let mut cluster = EtcdCluster::start(1).unwrap();
    let a = spawn("replica-a", &cluster.endpoints());
    let b = spawn("replica-b", &cluster.endpoints());
    let mut ca = admin(&a.url).await;
    let mut cb = admin(&b.url).await;
    const MAC: &str = "52:54:00:00:00:42";

    // Write and activate through A; B answers with it within a second.
    ca.put_profile(pb::PutProfileRequest {
        profile: Some(kernel_profile("img-a", "a")),
        expected_revision: 0,
        allow_missing_images: true,
    })
    .await
    .unwrap();
    let request = pb::ReplaceWorkingSetRequest {
        rules: vec![rule("all", json!({"always": true}), "img-a")],
        expected_revision: 0,
    };
    ca.replace_working_set(request).await.unwrap();
    ca.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap();
    let activated = Instant::now();
    within("B sees the activation", async {
        while image_on(&b.url, MAC).await.0.as_deref() != Some("img-a") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let seen_after = activated.elapsed();
    eprintln!("replica B answered with the new rules {} ms after activation on A", seen_after.as_millis());
    assert!(seen_after < Duration::from_secs(1), "took {seen_after:?}");

    // Concurrent edits through both replicas: every rule lands.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        tasks.push(tokio::spawn(async move {
            let mut c = admin(&url).await;
            let r = rule(&format!("edit{i}"), json!({"mac": format!("52:54:00:00:02:{i:02x}")}), "img-a");
            c.put_rule(pb::PutRuleRequest { rule: Some(r), before: "all".into(), ..Default::default() })
                .await
                .map(drop)
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    within("all edits visible on B", async {
        loop {
            let set = cb.get_rule_set(pb::GetRuleSetRequest { kind: 0 }).await.unwrap().into_inner();
            if set.rule_set.map_or(0, |s| s.rules.len()) == 11 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let rules = cb
        .get_rule_set(pb::GetRuleSetRequest { kind: 0 })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap()
        .rules;
    assert_eq!(rules.last().unwrap().name, "all", "every edit was placed before the catch-all");

    // etcd gone: both replicas keep answering from their snapshots.
    cluster.stop_all();
    for replica in [&a, &b] {
        within("degraded answer", async {
            loop {
                let (image, degraded) = image_on(&replica.url, MAC).await;
                assert_eq!(image.as_deref(), Some("img-a"), "decisions continue without etcd");
                if degraded {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(healthz(replica.admin_port).starts_with("degraded"), "{}", healthz(replica.admin_port));
    }
    let write = ca
        .delete_rule(pb::DeleteRuleRequest { name: "edit0".into(), expected_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");

    // etcd back: writes work again and reach the other replica.
    cluster.restart_all().unwrap();
    within("writes resume", async {
        loop {
            let request = pb::DeleteRuleRequest { name: "edit0".into(), expected_revision: 0 };
            match ca.delete_rule(request).await {
                Ok(_) => break,
                Err(e) if e.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    within("B healthy again", async {
        while !healthz(b.admin_port).starts_with("serving") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

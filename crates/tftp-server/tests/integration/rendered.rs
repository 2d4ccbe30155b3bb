//! Loader configs rendered per host from a real rules engine, fetched by
//! tftp-hpa; served from the last rendering while the rules engine is down.

use std::process::Command;
use std::sync::Arc;

use bootfleet_core::admin::Health;
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use bootfleet_tftp_server::server::RenderConfig;
use tokio_util::sync::CancellationToken;

use crate::{RawClient, start_with};

const TOKEN: &str = "render-test-token-0123456789";

async fn rules_engine(stop: &CancellationToken) -> String {
    let state = RulesState::start(
        Arc::new(EmbeddedStore::in_memory().unwrap()),
        StateOptions { member_id: "t".into(), history_limit: 5 },
        stop,
    );
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (serve_state, serve_stop) = (Arc::clone(&state), stop.clone());
    tokio::spawn(async move {
        bootfleet_rules_engine::server::serve(
            listener,
            serve_state,
            &Health::new(),
            Some(TOKEN.into()),
            serve_stop,
        )
        .await
    });
    let mut admin = bootfleet_rules_engine::client::connect(&url, Some(TOKEN)).await.unwrap();
    let manifest = bootfleet_rules_engine::manifest::parse(
        r#"
image_profiles:
  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, initrds: [tiny/1/initrd.img], cmdline: "console=ttyS0 marker={{host.marker}}" } }
host_profiles:
  - { name: lab, values: { marker: rendered-by-bootfleet } }
rules:
  - { name: lab, match: { mac: "52:54:00:00:00:01" }, image_profile: tiny, host_profile: lab }
"#,
        bootfleet_rules_engine::manifest::Format::Yaml,
    )
    .unwrap();
    // Rendering needs no image files: the catalog is left empty.
    let options = bootfleet_rules_engine::client::ApplyOptions {
        activate: true,
        allow_missing_images: true,
        ..Default::default()
    };
    let applied =
        bootfleet_rules_engine::client::apply_manifest(&mut admin, manifest, options).await.unwrap();
    state.caught_up(applied.activation.unwrap().revision).await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_configs_are_rendered_from_the_rules() {
    let rules_stop = CancellationToken::new();
    let rules_url = rules_engine(&rules_stop).await;
    let render = RenderConfig { rules_url, http_base: "http://198.18.0.1:8080".into() };
    let f = start_with(move |c| c.render = Some(render)).await;
    let out = tempfile::tempdir().unwrap();
    let (host, port, dir) = (f.addr.ip().to_string(), f.addr.port().to_string(), out.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let status = Command::new("tftp")
            .args([&host, &port, "-m", "binary", "-c", "get", "pxelinux.cfg/01-52-54-00-00-00-01", "pxe"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await
    .unwrap();
    let pxe = std::fs::read_to_string(out.path().join("pxe")).unwrap();
    assert_eq!(
        pxe,
        "DEFAULT bootfleet\nLABEL bootfleet\n  KERNEL http://198.18.0.1:8080/images/tiny/1/vmlinuz\n  INITRD http://198.18.0.1:8080/images/tiny/1/initrd.img\n  APPEND console=ttyS0 marker=rendered-by-bootfleet\n"
    );
    let client = RawClient::new(f.addr).await;
    // tsize is known before the first block.
    client.request("grub.cfg-01-52-54-00-00-00-01", &[("tsize", "0")]).await;
    let (oack, _) = client.recv().await.unwrap();
    let pb_oack = format!("{oack:?}");
    assert!(pb_oack.contains("tsize"), "{pb_oack}");
    // A host no rule names gets "file not found".
    let other = RawClient::new(f.addr).await;
    assert!(matches!(
        other.get("pxelinux.cfg/01-52-54-00-00-00-99", &[]).await,
        Err(bootfleet_tftp_server::wire::Packet::Error { .. })
    ));
    // Another spelling of the MAC is not a rendered name.
    let lax = RawClient::new(f.addr).await;
    assert!(matches!(
        lax.get("pxelinux.cfg/01-52:54:00:00:00:01", &[]).await,
        Err(bootfleet_tftp_server::wire::Packet::Error { .. })
    ));
    let ipxe = RawClient::new(f.addr).await.get("bootfleet/52:54:00:00:00:01.ipxe", &[]).await.unwrap();
    // Rules engine gone: the last rendering is still served.
    rules_stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let again = RawClient::new(f.addr).await;
    assert_eq!(
        String::from_utf8(again.get("pxelinux.cfg/01-52-54-00-00-00-01", &[]).await.unwrap()).unwrap(),
        pxe
    );
    // Remembered per kind and MAC, not per name: iPXE's other spelling of
    // the same MAC gets the same rendering.
    let other_spelling = RawClient::new(f.addr).await;
    assert_eq!(other_spelling.get("bootfleet/52-54-00-00-00-01.ipxe", &[]).await.unwrap(), ipxe);
}

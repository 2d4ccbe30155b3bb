//! A SIGKILL in the middle of an upload. The upload goes to a second image
//! streamer replica on the lab's etcd (killing `bootfleet up` itself would
//! end every boot the attack runs beside): it is killed halfway through,
//! started again, and the same push completes. Nothing of the half-sent
//! file is ever served or put in place, and `bootfleet up`, which serves
//! the boots meanwhile and replicates the finished version, neither grows
//! nor fails a boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bootfleet_image_streamer::client;
use bootfleet_test_support::process::ChildGuard;

use crate::boot::boot_during;
use crate::lab::{ADMIN_TOKEN, BIN, Lab, SERVER_IP, SERVER_NS, in_netns, runtime, wait_for};

/// The replica's ports (in the server namespace) and member id.
const REPLICA_HTTP: u16 = 8081;
const REPLICA_GRPC: u16 = 7073;
const REPLICA_ADMIN: u16 = 9102;
const REPLICA_ID: &str = "hostile-upload";
/// The uploaded file: large enough that half of it is still in flight
/// when the kill lands.
const FILE_SIZE: usize = 48 << 20;

/// The second replica, killed by PID when dropped.
struct Replica {
    guard: ChildGuard,
    data: PathBuf,
}

impl Replica {
    fn start(lab: &Lab) -> Self {
        let binary = Path::new(BIN).with_file_name("bootfleet-image-streamer");
        assert!(binary.is_file(), "{} missing: build the workspace", binary.display());
        let data = lab.dir.path().join("upload-replica");
        let config = lab.dir.path().join("upload-replica.toml");
        let text = format!(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{}\"]\n\
             [streamer]\nlisten = \"{SERVER_IP}:{REPLICA_HTTP}\"\ngrpc_listen = \"127.0.0.1:{REPLICA_GRPC}\"\n\
             admin_token_file = \"{}\"\ndata_dir = \"{}\"\n",
            lab.etcd_endpoint(),
            lab.dir.path().join("admin.token").display(),
            data.display()
        );
        std::fs::write(&config, text).unwrap();
        let admin = format!("127.0.0.1:{REPLICA_ADMIN}");
        let args = ["-c", config.to_str().unwrap(), "--member-id", REPLICA_ID, "--admin-listen", &admin];
        let guard = ChildGuard(
            lab.server.spawn(binary.to_str().unwrap(), &[&args[..], &["--log", "warn"]].concat()).unwrap(),
        );
        crate::common::wait_serving_in(&lab.server, REPLICA_ADMIN, "serving", Duration::from_secs(30));
        Self { guard, data }
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.data.join("blobs").join(sha256)
    }
}

/// Uploads 48 MiB to the second replica, SIGKILLs it when half is sent,
/// restarts it and pushes again; then deletes the version and stops the
/// replica, so that the store is left as it was.
pub(crate) fn sigkill_during_upload(lab: &Lab) -> String {
    let src = lab.dir.path().join("upload-src");
    std::fs::create_dir_all(&src).unwrap();
    let data = bootfleet_test_support::pseudo_random(FILE_SIZE, 23);
    std::fs::write(src.join("disk.img"), &data).unwrap();
    let file = client::scan_dir(&src).unwrap().remove(0);
    let url = format!("http://127.0.0.1:{REPLICA_GRPC}");

    let seen = boot_during(lab, |begun| {
        let mut replica = Replica::start(lab);
        begun.store(true, Ordering::Release);
        let pid = replica.guard.0.id().to_string();
        let killed = Arc::new(AtomicBool::new(false));
        let upload = in_netns(SERVER_NS, || {
            runtime().block_on(async {
                let mut c = client::connect(&url, Some(ADMIN_TOKEN)).await.unwrap();
                let killed = Arc::clone(&killed);
                client::upload(&mut c, &file, move |sent, total| {
                    if sent >= total / 2 && !killed.swap(true, Ordering::SeqCst) {
                        let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                        assert!(status.success(), "kill -KILL {pid}");
                    }
                })
                .await
            })
        });
        assert!(killed.load(Ordering::SeqCst), "the upload ended before it was half sent");
        assert!(upload.is_err(), "an upload cut off by SIGKILL was acknowledged");
        replica.guard.0.wait().unwrap();
        assert!(!replica.blob(&file.sha256).exists(), "half a file was put in place");
        let kept = std::fs::metadata(replica.data.join("partial").join(&file.sha256)).map_or(0, |m| m.len());

        let replica = Replica::start(lab);
        assert!(!replica.blob(&file.sha256).exists(), "a restart put a partial upload in place");
        let resent = in_netns(SERVER_NS, || {
            runtime().block_on(async {
                let mut c = client::connect(&url, Some(ADMIN_TOKEN)).await.unwrap();
                let sent = client::upload(&mut c, &file, |_, _| {}).await.unwrap();
                client::commit(&mut c, "upload", "1", "hostile upload", std::slice::from_ref(&file))
                    .await
                    .unwrap();
                sent
            })
        });
        assert_eq!(resent + kept, FILE_SIZE as u64, "the retry sent what the killed replica had not kept");
        let served = lab
            .server
            .run(
                "sh",
                &[
                    "-c",
                    &format!(
                        "curl -sf http://{SERVER_IP}:{REPLICA_HTTP}/images/upload/1/disk.img | sha256sum"
                    ),
                ],
            )
            .unwrap();
        assert_eq!(served.split_whitespace().next(), Some(file.sha256.as_str()), "the file served differs");
        // Leave the store as it was: the version goes, and the replica
        // deregisters as it stops.
        let token = lab.dir.path().join("admin.token");
        let rm = lab.cli(&[
            "images",
            "rm",
            "upload",
            "1",
            "--images-server",
            crate::lab::IMAGES_URL,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        assert!(rm.status.success(), "images rm: {}", String::from_utf8_lossy(&rm.stderr));
        let status = replica.guard.terminate(Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "the replica did not stop cleanly: {status:?}");
        format!(
            "killed at half of {} MiB ({} MiB kept); the retry sent {} MiB",
            FILE_SIZE >> 20,
            kept >> 20,
            resent >> 20
        )
    });
    wait_for("the replica's member record to go", Duration::from_secs(30), || {
        !lab.keys().iter().any(|k| k.contains(REPLICA_ID))
    });
    seen
}

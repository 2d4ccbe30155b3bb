//! Uploads are all or nothing across a crash, and on disk before they are
//! acknowledged; a crash at the worst moment (every byte written, not yet
//! moved into place) leaves a file the next push completes.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bootfleet_image_streamer::client;
use bootfleet_test_support::process::ChildGuard;

use super::{curl, pseudo_random, push, start_replica};

const STORE: &[&str] = &["--store", "embedded"];

/// SIGKILL halfway through an upload, then a restart: the file is not in
/// place (a partial upload is never a blob), the upload resumes and the
/// committed version serves the whole file.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_during_an_upload_leaves_the_whole_file_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start_replica(STORE, dir.path(), "a", "");
    let data = pseudo_random(48 << 20, 7);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("disk.img"), &data).unwrap();
    let file = client::scan_dir(&src).unwrap().remove(0);
    let blob = replica.data.join("blobs").join(&file.sha256);

    let pid = replica.guard.0.id().to_string();
    let killed = Arc::new(AtomicBool::new(false));
    let mut c = replica.client().await;
    let upload = client::upload(&mut c, &file, {
        let killed = Arc::clone(&killed);
        move |sent, total| {
            if sent >= total / 2 && !killed.swap(true, Ordering::SeqCst) {
                let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                assert!(status.success());
            }
        }
    })
    .await;
    assert!(killed.load(Ordering::SeqCst), "the upload ended before it was half sent");
    assert!(upload.is_err(), "an upload cut off by SIGKILL was acknowledged");
    replica.guard.0.wait().unwrap();
    assert!(!blob.exists(), "half a file was put in place as {}", blob.display());

    let partial = replica.data.join("partial").join(&file.sha256);
    let held = std::fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(held < data.len() as u64, "the whole file arrived before the kill");

    let replica = start_replica(STORE, dir.path(), "a", "");
    assert!(!blob.exists(), "a restart put a partial upload in place");
    let url = format!("{}/blobs/{}", replica.url(), file.sha256);
    assert_eq!(curl(&url, &[]).status, 404, "a partial upload was served");
    // The retry goes on from what the killed replica kept.
    let mut c = replica.client().await;
    let sent = client::upload(&mut c, &file, |_, _| {}).await.unwrap();
    assert_eq!(sent, data.len() as u64 - held);
    push(&replica, dir.path(), "disk", "1", &[("disk.img", data.clone())]).await;
    let answer = curl(&format!("{}/images/disk/1/disk.img", replica.url()), &[]);
    assert_eq!(answer.status, 200);
    assert!(answer.body == data, "the file served after the restart differs from the one pushed");
}

/// Before an upload is acknowledged its bytes are flushed, then renamed
/// into place, then the directory is flushed: observed with strace on the
/// running streamer (a power cut is what this guards against, and no test
/// here can cut the power).
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_flushed_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let replica = start_replica(STORE, dir.path(), "a", "");
    let trace = dir.path().join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&trace)
        .args(["-p", &replica.guard.0.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // strace says so on stderr once it has attached to every thread.
    let mut lines = BufReader::new(strace.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("strace ended before attaching").unwrap();
        if line.contains("attached") {
            break;
        }
    }
    let data = pseudo_random(1 << 20, 9);
    push(&replica, dir.path(), "disk", "1", &[("disk.img", data)]).await;
    let sha = client::scan_dir(&dir.path().join("src-disk-1")).unwrap().remove(0).sha256;
    strace.kill().unwrap();
    strace.wait().unwrap();

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = text.lines().filter(|l| l.contains(&sha) || l.contains("/blobs>")).collect();
    let position = |what: &dyn Fn(&str) -> bool| calls.iter().position(|l| what(l));
    let renamed = position(&|l| l.contains("rename") && l.contains(&format!("blobs/{sha}")))
        .unwrap_or_else(|| panic!("no rename into blobs/ seen:\n{text}"));
    let file_flushed = position(&|l| l.contains("fsync(") && l.contains(&format!("partial/{sha}>")))
        .unwrap_or_else(|| panic!("the uploaded file was never flushed:\n{text}"));
    assert!(file_flushed < renamed, "the file was flushed after it was put in place:\n{text}");
    assert!(
        calls[renamed..].iter().any(|l| l.contains("fsync(") && l.contains("/blobs>")),
        "the directory was not flushed after the rename:\n{text}"
    );
}

/// SIGKILL at the one moment a crash leaves every byte written and checked
/// but not in place: strace kills the streamer as it enters the rename. The
/// partial file is never served; after a restart the same push (the CLI's
/// client) completes it. (The client skips a file whose offset says "all
/// held", so the replica must move such a file into place, or the commit
/// that follows fails for ever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_before_the_rename_leaves_a_file_the_next_push_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start_replica(STORE, dir.path(), "a", "");
    let data = pseudo_random(8 << 20, 11);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("disk.img"), &data).unwrap();
    let file = client::scan_dir(&src).unwrap().remove(0);
    let blob = replica.data.join("blobs").join(&file.sha256);
    let partial = replica.data.join("partial").join(&file.sha256);

    let renames = "rename,renameat,renameat2";
    let mut strace = Command::new("strace")
        .args(["-f", "-e", &format!("trace={renames}"), "-e", &format!("inject={renames}:signal=SIGKILL")])
        .args(["-o", "/dev/null", "-p", &replica.guard.0.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "Process N attached with M threads" comes once every thread is traced.
    let mut lines = BufReader::new(strace.stderr.take().unwrap()).lines();
    let strace = ChildGuard(strace);
    loop {
        let line = lines.next().expect("strace ended before attaching").unwrap();
        if line.contains("attached with") {
            break;
        }
    }
    let mut c = replica.client().await;
    let upload = client::upload(&mut c, &file, |_, _| {}).await;
    assert!(upload.is_err(), "an upload whose rename was killed was acknowledged");
    let status = replica.guard.0.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the streamer was not killed: {status:?}");
    drop(strace);
    // The state meant: every byte in partial/, nothing in place.
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), data.len() as u64);
    assert!(!blob.exists());

    let replica = start_replica(STORE, dir.path(), "a", "");
    let url = format!("{}/blobs/{}", replica.url(), file.sha256);
    assert_eq!(curl(&url, &[]).status, 404, "a partial file was served");
    push(&replica, dir.path(), "disk", "1", &[("disk.img", data.clone())]).await;
    let answer = curl(&format!("{}/images/disk/1/disk.img", replica.url()), &[]);
    assert_eq!(answer.status, 200);
    assert!(answer.body == data, "the file served after the restart differs from the one pushed");
    assert!(!partial.exists());
}

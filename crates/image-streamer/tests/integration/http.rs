//! HTTP semantics checked with curl on one replica (embedded store): whole
//! and ranged downloads from memory and from disk, validators, HEAD, 304,
//! 412, 416, bad input; uploads that resume, and uploads whose hash lies.

use bootfleet_image_streamer::client::{self, LocalFile};
use bootfleet_proto::v1 as pb;

use crate::{curl, pseudo_random, push, start_replica};

const EMBEDDED: &[&str] = &["--store", "embedded"];

#[test]
fn ranges_validators_and_bad_input_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    // Files over 1 MiB are streamed from disk, smaller ones from memory.
    let replica = start_replica(EMBEDDED, dir.path(), "r1", "cache_file_limit_mib = 1");
    let small = pseudo_random(100_000, 1);
    let big = pseudo_random(3 * 1024 * 1024 + 7, 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(push(
        &replica,
        dir.path(),
        "tiny",
        "1",
        &[("initrd.img", small.clone()), ("vmlinuz", big.clone()), ("empty", Vec::new())],
    ));
    let base = replica.url();
    for (name, data) in [("initrd.img", &small), ("vmlinuz", &big)] {
        let url = format!("{base}/images/tiny/1/{name}");
        // Whole file, byte-identical.
        let whole = curl(&url, &[]);
        assert_eq!(whole.status, 200, "{name}: {}", whole.headers);
        assert!(whole.body == *data, "{name}: body differs");
        let etag = whole.header("etag").unwrap();
        let last_modified = whole.header("last-modified").unwrap();
        assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
        // HEAD: same headers, no body (curl -I prints the headers as its output).
        let head = curl(&url, &["-I"]);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some(data.len().to_string()));
        assert!(head.body.len() < 1024 && head.body.starts_with(b"HTTP/1.1 200"), "HEAD sent a body");
        // One range.
        let part = curl(&url, &["-H", "Range: bytes=1000-1999"]);
        assert_eq!(part.status, 206);
        assert_eq!(part.header("content-range"), Some(format!("bytes 1000-1999/{}", data.len())));
        assert!(part.body == data[1000..2000]);
        // Suffix range.
        let tail = curl(&url, &["-H", "Range: bytes=-10"]);
        assert_eq!(tail.status, 206);
        assert!(tail.body == data[data.len() - 10..]);
        // Several ranges: multipart/byteranges with each part's bytes.
        let multi = curl(&url, &["-H", "Range: bytes=0-9,5000-5009"]);
        assert_eq!(multi.status, 206);
        let content_type = multi.header("content-type").unwrap();
        assert!(content_type.starts_with("multipart/byteranges; boundary="), "{content_type}");
        assert_eq!(multi.header("content-length"), Some(multi.body.len().to_string()));
        let text = String::from_utf8_lossy(&multi.body);
        assert!(text.contains(&format!("Content-Range: bytes 0-9/{}", data.len())));
        assert!(text.contains(&format!("Content-Range: bytes 5000-5009/{}", data.len())));
        assert!(multi.body.windows(10).any(|w| w == &data[5000..5010]));
        // If-Range: the current tag keeps the range, an old one gets the whole file.
        let kept = curl(&url, &["-H", "Range: bytes=0-99", "-H", &format!("If-Range: {etag}")]);
        assert_eq!(kept.status, 206);
        let stale = curl(&url, &["-H", "Range: bytes=0-99", "-H", "If-Range: \"0000\""]);
        assert_eq!(stale.status, 200);
        assert_eq!(stale.body.len(), data.len());
        let by_date = curl(&url, &["-H", "Range: bytes=0-99", "-H", &format!("If-Range: {last_modified}")]);
        assert_eq!(by_date.status, 206);
        // Validators.
        assert_eq!(curl(&url, &["-H", &format!("If-None-Match: {etag}")]).status, 304);
        assert_eq!(curl(&url, &["-H", &format!("If-Modified-Since: {last_modified}")]).status, 304);
        assert_eq!(curl(&url, &["-H", "If-Match: \"0000\""]).status, 412);
        assert_eq!(curl(&url, &["-H", &format!("If-Match: {etag}")]).status, 200);
        // Out of range.
        let beyond = curl(&url, &["-H", &format!("Range: bytes={}-", data.len())]);
        assert_eq!(beyond.status, 416);
        assert_eq!(beyond.header("content-range"), Some(format!("bytes */{}", data.len())));
    }
    let empty = curl(&format!("{base}/images/tiny/1/empty"), &[]);
    assert_eq!((empty.status, empty.body.len()), (200, 0));

    // Concurrent downloads of the streamed file are all byte-identical.
    let url = format!("{base}/images/tiny/1/vmlinuz");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let range = format!("Range: bytes={}-", i * 1000);
                (i, curl(&url, &["-H", &range]))
            })
        })
        .collect();
    for h in handles {
        let (i, answer) = h.join().unwrap();
        assert_eq!(answer.status, 206);
        assert!(answer.body == big[i * 1000..], "concurrent download {i} differs");
    }

    // Bad input: reasons, never server paths or panics.
    for (path, status, why) in [
        ("/boot.ipxe", 400, "\"mac\" is required"),
        ("/boot.ipxe?mac=zz", 400, "not a MAC"),
        ("/boot.ipxe?mac=52:54:00:00:00:01&color=red", 400, "unknown parameter"),
        ("/report?mac=52:54:00:00:00:01&stage=a%20b", 400, "stage"),
        ("/report/52-54-00-00-00-99/booted/disk", 404, "unknown host"),
        ("/images/../../etc/passwd", 404, ""),
        ("/images/tiny/1/nope", 404, "not in the catalog"),
        ("/blobs/../../../etc/passwd", 400, "not a sha256"),
        ("/loaders/ipxe.efi", 404, "no loaders directory"),
    ] {
        let answer = curl(&format!("{base}{path}"), &[]);
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, status, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
        assert!(!body.contains(dir.path().to_str().unwrap()), "{path} leaks a server path: {body}");
    }
    // No rule matches this host (no rules at all): Bootfleet stays silent.
    assert_eq!(curl(&format!("{base}/boot.ipxe?mac=52:54:00:00:00:01"), &[]).status, 404);
    assert_eq!(curl(&format!("{base}/images/tiny/1/vmlinuz"), &["-X", "DELETE"]).status, 405);
}

#[test]
fn uploads_resume_and_lying_hashes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let replica = start_replica(EMBEDDED, dir.path(), "r1", "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = replica.client().await;
        let data = pseudo_random(2_500_000, 3);
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("disk.img"), &data).unwrap();
        let file: LocalFile = client::scan_dir(&src).unwrap().remove(0);

        // An interrupted upload: only the first 1,000,000 bytes arrive.
        let half = pb::UploadChunk {
            header: Some(pb::UploadHeader { sha256: file.sha256.clone(), size: file.size, offset: 0 }),
            data: data[..1_000_000].to_vec(),
        };
        let err = c.upload(tokio_stream::iter(vec![half])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
        let offset = c
            .upload_offset(pb::UploadOffsetRequest { sha256: file.sha256.clone(), size: file.size })
            .await
            .unwrap()
            .into_inner()
            .offset;
        assert_eq!(offset, 1_000_000);
        // The client resumes there and sends only the rest.
        let sent = client::upload(&mut c, &file, |_, _| {}).await.unwrap();
        assert_eq!(sent, 1_500_000);
        client::commit(&mut c, "disk", "1", "", std::slice::from_ref(&file)).await.unwrap();
        let answer = curl(&format!("{}/images/disk/1/disk.img", replica.url()), &[]);
        assert!(answer.status == 200 && answer.body == data);

        // Bytes that do not hash to the announced digest are refused and not kept.
        let liar = pb::UploadChunk {
            header: Some(pb::UploadHeader { sha256: "ab".repeat(32), size: 5, offset: 0 }),
            data: b"hello".to_vec(),
        };
        let err = c.upload(tokio_stream::iter(vec![liar])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
        let held = c
            .upload_offset(pb::UploadOffsetRequest { sha256: "ab".repeat(32), size: 5 })
            .await
            .unwrap()
            .into_inner()
            .offset;
        assert_eq!(held, 0);
        assert!(!replica.data.join("blobs").join("ab".repeat(32)).exists());
        // A version naming a file this replica does not hold is refused.
        let missing = pb::CommitVersionRequest {
            image: "ghost".into(),
            version: "1".into(),
            files: vec![pb::ImageFile { name: "x".into(), sha256: "cd".repeat(32), size: 1 }],
            description: String::new(),
        };
        let err = c.commit_version(missing).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        // Without the token, uploads are refused (asking for the offset too:
        // it may discard a partial file).
        let mut anonymous =
            client::connect(&format!("http://127.0.0.1:{}", replica.grpc), None).await.unwrap();
        let err = client::upload(&mut anonymous, &file, |_, _| {}).await.unwrap_err();
        assert!(err.to_string().contains("admin token"), "{err}");
        let chunk = pb::UploadChunk {
            header: Some(pb::UploadHeader { sha256: "ef".repeat(32), size: 1, offset: 0 }),
            data: vec![1],
        };
        let err = anonymous.upload(tokio_stream::iter(vec![chunk])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    });
}

//! Regenerates the protobuf code and fails when the committed copy in
//! `src/gen/` differs, so the schema and the code can never drift apart.
//! Set `BOOTFLEET_PROTO_BLESS=1` to write the fresh output into `src/gen/`.

use std::path::{Path, PathBuf};

fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(proto_dir.join("bootfleet/v1"))
        .expect("read proto/bootfleet/v1")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    protos.sort();
    tonic_prost_build::configure()
        .type_attribute(".bootfleet.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".bootfleet.v1", "#[serde(rename_all = \"snake_case\")]")
        .out_dir(out_dir)
        .file_descriptor_set_path(out_dir.join("bootfleet_descriptor.bin"))
        .compile_protos(&protos, &[proto_dir])
        .expect("compile protos (needs protoc: see README)");
}

#[test]
fn generated_code_is_up_to_date() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    let fresh = tempfile::tempdir().expect("tempdir");
    generate(fresh.path());
    let bless = std::env::var_os("BOOTFLEET_PROTO_BLESS").is_some();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(fresh.path()).expect("read fresh dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().expect("file name").to_owned();
        let new = std::fs::read(&path).expect("read fresh file");
        let old = std::fs::read(committed.join(&name)).unwrap_or_default();
        if new != old {
            if bless {
                std::fs::write(committed.join(&name), &new).expect("write generated file");
            } else {
                stale.push(name.to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code in crates/proto/src/gen is stale: {stale:?}; \
         run `BOOTFLEET_PROTO_BLESS=1 cargo test -p bootfleet-proto --test bootstrap` and commit"
    );
}

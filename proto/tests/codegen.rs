//! The generated prost code under `src/gen/` is committed so that an ordinary build needs no
//! `protoc`. This test regenerates it from `proto/*.proto` with protox (a pure-Rust protobuf
//! compiler) and fails on any difference. `PACT_REGEN=1 cargo test -p pact-proto --test codegen`
//! rewrites the committed files instead.

use std::fs;
use std::path::{Path, PathBuf};

fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read proto/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    files
}

#[test]
fn generated_code_matches_proto_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = root.join("proto");
    let gen_dir = root.join("src/gen");
    let files = proto_files(&proto_dir);
    assert!(!files.is_empty(), "no .proto files in {}", proto_dir.display());

    let fds = protox::compile(&files, [&proto_dir]).expect("the .proto files compile");
    let out = std::env::temp_dir().join(format!("pact-codegen-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).expect("create temp out dir");
    prost_build::Config::new().out_dir(&out).btree_map(["."]).compile_fds(fds).expect("prost-build generates code");

    let regen = std::env::var_os("PACT_REGEN").is_some();
    let mut generated: Vec<String> = fs::read_dir(&out)
        .expect("read out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    let mut stale = Vec::new();
    for name in &generated {
        let fresh = fs::read_to_string(out.join(name)).expect("read generated");
        let committed = fs::read_to_string(gen_dir.join(name)).unwrap_or_default();
        if fresh != committed {
            if regen {
                fs::write(gen_dir.join(name), &fresh).expect("write generated");
            } else {
                stale.push(name.clone());
            }
        }
    }
    // A committed file whose .proto package is gone is stale too.
    for e in fs::read_dir(&gen_dir).expect("read src/gen") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") && !generated.contains(&name) {
            if regen {
                fs::remove_file(gen_dir.join(&name)).expect("remove stale");
            } else {
                stale.push(name);
            }
        }
    }
    let _ = fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "generated code is out of date for {stale:?}; run `PACT_REGEN=1 cargo test -p pact-proto --test codegen`"
    );
}

//! The committed manifests stay in step with the code.
use std::path::Path;

fn manifests() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"))
}

#[test]
fn committed_crds_match_the_rust_types() {
    let committed = std::fs::read_to_string(manifests().join("crds.yaml"))
        .expect("manifests/crds.yaml must exist");
    assert!(
        committed == meshrev::config::crd_yaml(),
        "manifests/crds.yaml drifted from the Rust types: run `cargo run -- crd > manifests/crds.yaml`"
    );
}

#[test]
fn kustomization_lists_files_that_parse() {
    let k = meshrev::yaml::from_str(
        &std::fs::read_to_string(manifests().join("kustomization.yaml")).expect("read"),
    )
    .expect("kustomization must parse");
    let resources = k["resources"].as_array().expect("resources must be a list");
    assert!(!resources.is_empty());
    for r in resources {
        let name = r.as_str().expect("resource must be a path");
        let text = std::fs::read_to_string(manifests().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in meshrev::yaml::documents(&text) {
            let v = doc.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v["kind"].is_string() && v["apiVersion"].is_string(),
                "{name}: every document needs kind and apiVersion"
            );
        }
    }
}

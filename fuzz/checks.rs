//! What each fuzz target asserts, on one input. Shared by the cargo-fuzz targets
//! (`fuzz_targets/*.rs`) and by `tests/fuzz_corpus.rs`, which replays the kept corpus
//! (`corpus/<target>/`) on the stable toolchain in every `cargo test`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use meshrev::table::Table;

static TABLE: LazyLock<Table> = LazyLock::new(meshrev::table::embedded_default);

/// The `/inject` handler on one body: the reply is always a well-formed AdmissionReview
/// with a uid; a patch, when there is one, is base64 of a JSON Patch that applies to the
/// request's pod.
pub fn admission_review(body: &[u8]) {
    let mut scratch = Vec::new();
    let reply = meshrev::admission::review(&TABLE, body, &mut scratch);
    let out: serde_json::Value =
        serde_json::from_slice(&reply.body).expect("the reply must be JSON");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    let response = &out["response"];
    assert!(response["uid"].is_string(), "{out}");
    if let Some(p) = response["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("the patch must be base64");
        let patch: json_patch::Patch =
            serde_json::from_slice(&bytes).expect("the patch must be a JSON Patch");
        // serde_json skips unread string fields without checking their UTF-8, so a body
        // that is not strict JSON can be admitted: read it as the API server would send it.
        let req: serde_json::Value =
            serde_json::from_str(&String::from_utf8_lossy(body)).expect("an admitted body is JSON");
        let mut pod = req["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch must apply to the pod");
    }
}

/// A table file: parsing and building never panic.
pub fn table_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = meshrev::config::parse_objects(text);
    let _ = meshrev::table::from_text(text);
}

/// `meshrev inject`: what is read is written and read back unchanged, and injected output
/// has one document per input document.
pub fn inject_documents(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for doc in meshrev::yaml::documents(text) {
        let Ok(doc) = doc else { break };
        let written = meshrev::yaml::to_string(&doc);
        let back = meshrev::yaml::from_str(&written)
            .unwrap_or_else(|e| panic!("written YAML must read back: {e}\n{written}"));
        assert_eq!(back, doc, "round trip changed the document:\n{written}");
    }
    let labels = HashMap::from([("istio-injection".to_string(), "enabled".to_string())]);
    if let Ok((out, _notes)) = meshrev::cli::inject_documents(&TABLE, text, None, Some(&labels)) {
        let docs = meshrev::yaml::documents(&out)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("the output must be YAML: {e}\n{out}"));
        let inputs = meshrev::yaml::documents(text)
            .filter(|d| !matches!(d, Ok(serde_json::Value::Null)))
            .count();
        assert_eq!(docs.len(), inputs, "{out}");
    }
}

//! The `/inject` handler's work on one request body: `admission::review` with the embedded
//! table. The reply must always be a well-formed AdmissionReview; a patch, when there is
//! one, must be valid base64 of a JSON Patch that applies to the request's pod.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use meshrev::table::Table;

static TABLE: LazyLock<Table> = LazyLock::new(meshrev::table::embedded_default);

fuzz_target!(|body: &[u8]| {
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
        let req: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(body))
            .expect("an admitted body is JSON");
        let mut pod = req["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch must apply to the pod");
    }
});

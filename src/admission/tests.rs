use base64::Engine;
use serde_json::{Value, json};

use super::*;
use crate::table::{NamespaceLabels, embedded_default};

fn table() -> Table {
    embedded_default().with_namespaces(std::collections::HashMap::from([(
        "default".to_string(),
        NamespaceLabels {
            injection: Some("enabled".into()),
            rev: None,
        },
    )]))
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/admission-review.json"))
        .expect("fixture must parse")
}

fn answer(t: &Table, body: &[u8]) -> (Value, ReviewResult) {
    let mut scratch = Vec::new();
    let r = review(t, body, &mut scratch);
    let v: Value = serde_json::from_slice(&r.body).expect("every reply must be JSON");
    assert_eq!(v["kind"], "AdmissionReview");
    assert!(v["response"]["allowed"].is_boolean());
    (v, r.result)
}

#[test]
fn injects_and_echoes_the_uid() {
    let t = table();
    let (v, result) = answer(&t, fixture().to_string().as_bytes());
    assert_eq!(result, ReviewResult::Injected);
    let resp = &v["response"];
    assert_eq!(resp["uid"], "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = fixture()["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(pod["metadata"]["annotations"]["istio.io/rev"], "1-22-6");
}

#[test]
fn a_revision_whose_control_plane_is_down_still_injects_with_a_warning() {
    let mut t = table();
    assert!(answer(&t, fixture().to_string().as_bytes()).0["response"]["warnings"].is_null());
    t.control_plane_warnings.insert(
        "1-22-6".into(),
        "meshrev: revision 1-22-6's control plane (Deployment istio-system/istiod-1-22-6) is not ready (NotFound)".into(),
    );
    let (v, result) = answer(&t, fixture().to_string().as_bytes());
    assert_eq!(result, ReviewResult::Injected);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let w = v["response"]["warnings"].as_array().expect("warnings");
    assert_eq!(w.len(), 1, "{v}");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("istio-system/istiod-1-22-6"),
        "{v}"
    );
    // Another revision's outage is not this pod's warning.
    t.control_plane_warnings.clear();
    t.control_plane_warnings
        .insert("1-23-6".into(), "down".into());
    assert!(answer(&t, fixture().to_string().as_bytes()).0["response"]["warnings"].is_null());
}

#[test]
fn skip_carries_the_warning() {
    let t = embedded_default().with_namespaces(std::collections::HashMap::from([(
        "default".to_string(),
        NamespaceLabels {
            injection: None,
            rev: Some("1-99-9".into()),
        },
    )]));
    let (v, result) = answer(&t, fixture().to_string().as_bytes());
    assert_eq!(result, ReviewResult::Skipped);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
    assert!(
        v["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("1-99-9")
    );
}

#[test]
fn malformed_inputs_get_well_formed_refusals() {
    let t = table();
    let mut wrong_kind = fixture();
    wrong_kind["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut no_uid = fixture();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut bad_object = fixture();
    bad_object["request"]["object"]["spec"]["containers"] = json!("not-a-list");
    let mut not_review = fixture();
    not_review["kind"] = json!("ConfigMap");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "malformed JSON",
            b"{\"apiVersion\": ".to_vec(),
            "",
            "not a valid AdmissionReview",
        ),
        ("empty body", Vec::new(), "", "empty request body"),
        (
            "wrong kind",
            wrong_kind.to_string().into_bytes(),
            "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11",
            "apps/Deployment",
        ),
        (
            "missing uid",
            no_uid.to_string().into_bytes(),
            "",
            "request.uid",
        ),
        (
            "bad object",
            bad_object.to_string().into_bytes(),
            "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11",
            "not a valid Pod",
        ),
        (
            "not a review",
            not_review.to_string().into_bytes(),
            "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11",
            "AdmissionReview",
        ),
        (
            "a JSON array",
            b"[1,2]".to_vec(),
            "",
            "not a valid AdmissionReview",
        ),
    ];
    for (name, body, uid, msg) in cases {
        let (v, result) = answer(&t, &body);
        assert_eq!(result, ReviewResult::Error, "{name}");
        assert_eq!(v["response"]["allowed"], false, "{name}");
        assert_eq!(v["response"]["uid"], uid, "{name}");
        let m = v["response"]["status"]["message"].as_str().unwrap();
        assert!(m.contains(msg), "{name}: {m}");
    }
}

#[test]
fn update_is_admitted_untouched() {
    let mut upd = fixture();
    upd["request"]["operation"] = json!("UPDATE");
    let (v, result) = answer(&table(), upd.to_string().as_bytes());
    assert_eq!(result, ReviewResult::Skipped);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
}

#[test]
fn v1beta1_is_answered_in_kind() {
    let mut r = fixture();
    r["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (v, _) = answer(&table(), r.to_string().as_bytes());
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1beta1");
}

const UID: &str = "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11";

/// Refusals carry the uid whenever the body shows one (issue 10: 62 reply kinds lost it).
#[test]
fn refusals_keep_the_uid() {
    let t = table();
    let text = fixture().to_string();
    let mut wrong_version = fixture();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v2");
    let mut no_version = fixture();
    no_version.as_object_mut().unwrap().remove("apiVersion");
    let mut wrong_kind = fixture();
    wrong_kind["kind"] = json!("Pod");
    let mut bad_type = fixture();
    bad_type["request"]["namespace"] = json!(7);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wrong apiVersion", wrong_version.to_string().into_bytes()),
        ("no apiVersion", no_version.to_string().into_bytes()),
        ("wrong kind", wrong_kind.to_string().into_bytes()),
        (
            "a field of the wrong type",
            bad_type.to_string().into_bytes(),
        ),
        (
            "NaN",
            text.replacen("\"spec\":{", "\"spec\":{\"x\":NaN,", 1)
                .into_bytes(),
        ),
        (
            "Infinity",
            text.replacen("{", "{\"n\":Infinity,", 1).into_bytes(),
        ),
        ("byte-order mark", format!("\u{feff}{text}").into_bytes()),
        ("trailing garbage", format!("{text}}}").into_bytes()),
        ("bad UTF-8", {
            let mut b = text.clone().into_bytes();
            b.extend_from_slice(b"\xff");
            b
        }),
    ];
    for (name, body) in cases {
        let (v, result) = answer(&t, &body);
        assert_eq!(result, ReviewResult::Error, "{name}");
        assert_eq!(v["response"]["allowed"], false, "{name}");
        assert_eq!(v["response"]["uid"], UID, "{name}: {v}");
    }
    // And /validate's parser (its replies are written from the same triple).
    let mut wrong_kind = fixture();
    wrong_kind["kind"] = json!("Pod");
    for body in [
        wrong_kind.to_string(),
        text.replacen("{", "{\"n\":NaN,", 1),
        format!("\u{feff}{text}"),
    ] {
        let uid = validate::parse(body.as_bytes()).unwrap_err().uid;
        assert_eq!(uid, UID, "{body:.60}");
    }
    let v: Value = serde_json::from_slice(&error_reply(text.as_bytes(), "busy")).unwrap();
    assert_eq!(v["response"]["uid"], UID);
    let v: Value = serde_json::from_slice(&error_reply(b"", "busy")).unwrap();
    assert_eq!(v["response"]["uid"], "");
}

/// A pod the sidecar patch could not apply to is admitted untouched, with a warning.
#[test]
fn pods_without_containers_are_admitted_without_a_patch() {
    let t = table();
    let mut no_spec = fixture();
    no_spec["request"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("spec");
    let mut no_containers = fixture();
    no_containers["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("containers");
    let mut empty = fixture();
    empty["request"]["object"]["spec"]["containers"] = json!([]);
    let mut no_metadata = fixture();
    no_metadata["request"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    for (name, review, missing) in [
        ("no spec", no_spec, "spec.containers"),
        ("no containers", no_containers, "spec.containers"),
        ("empty containers", empty, "spec.containers"),
        ("no metadata", no_metadata, "metadata"),
    ] {
        let (v, result) = answer(&t, review.to_string().as_bytes());
        assert_eq!(result, ReviewResult::Skipped, "{name}");
        assert_eq!(v["response"]["uid"], UID, "{name}");
        assert_eq!(v["response"]["allowed"], true, "{name}");
        assert!(v["response"].get("patch").is_none(), "{name}: {v}");
        assert!(
            v["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains(missing),
            "{name}"
        );
    }
}

/// Every patch applies to the pod it was computed for, whatever optional parts it lacks.
#[test]
fn patches_apply_to_sparse_pods() {
    let t = table();
    let mut shapes = Vec::new();
    let base = fixture();
    for drop in [
        vec![
            "/metadata/name",
            "/metadata/namespace",
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/ownerReferences",
            "/metadata/generateName",
        ],
        vec!["/metadata/labels"],
        vec!["/metadata/annotations"],
        vec!["/metadata/labels", "/metadata/annotations"],
        vec!["/spec/volumes"],
        vec!["/spec/initContainers"],
    ] {
        let mut r = base.clone();
        for p in drop {
            let (parent, key) = p.rsplit_once('/').unwrap();
            if let Some(o) = r["request"]["object"]
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
            {
                o.remove(key);
            }
        }
        shapes.push(r);
    }
    for review in shapes {
        let (v, _) = answer(&t, review.to_string().as_bytes());
        let Some(patch) = v["response"]["patch"].as_str() else {
            continue;
        };
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
}

#[test]
fn invalid_utf8_is_refused_with_the_uid_and_the_byte() {
    let t = table();
    let mut body = fixture().to_string().into_bytes();
    // Inside a string the pod view skips (managedFields): still refused, since JSON is UTF-8.
    let at = body
        .windows(4)
        .position(|w| w == b"\"f:m")
        .or_else(|| body.windows(5).position(|w| w == b"image"))
        .expect("fixture has a string to corrupt");
    body[at + 1] = 0xff;
    let (v, result) = answer(&t, &body);
    assert_eq!(result, ReviewResult::Error);
    assert_eq!(v["response"]["uid"], "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11");
    assert_eq!(v["response"]["allowed"], false);
    let msg = v["response"]["status"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("not valid UTF-8") && msg.contains(&format!("byte {}", at + 1)),
        "{msg}"
    );
}

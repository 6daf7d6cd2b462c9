//! Hostile input against the real TLS server (issue 10, server side): bounded memory and
//! connections, table and certificate reloads that cannot publish a broken state, and
//! replies that keep the request's uid.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::time::Duration;

use http::StatusCode;
use meshrev::server::TableSource;
use serde_json::json;
use tls_client::*;

const UID: &str = "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11";

fn table() -> TableSource {
    TableSource::Table(test_table())
}

/// Every reply carries the request's uid when the body shows one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_the_uid_whatever_is_wrong() {
    let s = start(table(), |c| c.request_timeout = Duration::from_millis(500)).await;
    let mut wrong_version = fixture();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v2");
    let mut wrong_kind = fixture();
    wrong_kind["kind"] = json!("ConfigMap");
    let nan = FIXTURE.replacen("\"uid\"", "\"x\": NaN, \"uid\"", 1);
    let bom = format!("\u{feff}{FIXTURE}");
    let cases: [(&str, &str, Vec<u8>); 5] = [
        (
            "wrong apiVersion",
            "/inject",
            wrong_version.to_string().into_bytes(),
        ),
        ("wrong kind", "/inject", wrong_kind.to_string().into_bytes()),
        ("NaN", "/inject", nan.into_bytes()),
        ("byte-order mark", "/inject", bom.into_bytes()),
        (
            "/validate without a cluster",
            "/validate",
            FIXTURE.as_bytes().to_vec(),
        ),
    ];
    for proto in BOTH {
        for (what, path, body) in &cases {
            let r = s.client.post(proto, path, body.clone()).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{what}");
            let v = r.json();
            assert_eq!(v["response"]["uid"], UID, "{proto:?} {what}: {v}");
            assert_eq!(v["response"]["allowed"], false, "{what}");
        }
    }

    s.stop().await;
}

/// A pod without `spec` or `spec.containers` is admitted untouched, with a warning: never
/// a patch that cannot apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_containers_get_no_patch() {
    let s = start(table(), |_| {}).await;
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
    for (what, review) in [("no spec", no_spec), ("no containers", no_containers)] {
        let r = s
            .client
            .post(Proto::H2, "/inject", review.to_string())
            .await
            .unwrap();
        let v = r.json();
        assert_eq!(v["response"]["uid"], UID, "{what}");
        assert_eq!(v["response"]["allowed"], true, "{what}: {v}");
        assert!(v["response"].get("patch").is_none(), "{what}: {v}");
        let w = v["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(w.contains("spec.containers"), "{what}: {w}");
    }
    s.stop().await;
}

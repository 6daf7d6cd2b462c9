//! The webhook server's `/inject` contract over real TLS, HTTP/1.1 and HTTP/2: injection,
//! skips, malformed requests, body limits, deadlines, routing, and the metrics it records.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use meshrev::server::{MAX_BODY_BYTES, TableSource};
use serde_json::json;
use tls_client::*;

fn table() -> TableSource {
    TableSource::Table(test_table())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_over_http1_and_http2() {
    let s = start(table(), |_| {}).await;
    for proto in BOTH {
        let r = s
            .client
            .post(proto, "/inject?timeout=10s", FIXTURE)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{proto:?}: {}", r.text());
        assert_eq!(r.version, proto.version());
        assert_eq!(r.content_type(), "application/json");
        let v = r.json();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
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
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert!(
            containers.iter().any(|c| c["name"] == "istio-proxy"),
            "{proto:?}: no sidecar in {containers:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_carries_the_warning() {
    let s = start(table(), |_| {}).await;
    for proto in BOTH {
        let r = s
            .client
            .post(proto, "/inject", fixture_in("unknown-rev"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        let warning = v["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("1-99-9"), "{warning}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_admission_errors_with_200() {
    let s = start(table(), |_| {}).await;
    let mut wrong_kind = fixture();
    wrong_kind["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut no_uid = fixture();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let cases: [(&str, Bytes, &str, &str); 4] = [
        (
            "malformed JSON",
            Bytes::from_static(b"{\"apiVersion\": "),
            "not a valid AdmissionReview",
            "",
        ),
        (
            "wrong kind",
            Bytes::from(wrong_kind.to_string()),
            "only injects Pods",
            "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11",
        ),
        ("empty body", Bytes::new(), "empty request body", ""),
        (
            "missing uid",
            Bytes::from(no_uid.to_string()),
            "request.uid",
            "",
        ),
    ];
    for proto in BOTH {
        for (what, body, message, uid) in &cases {
            let r = s.client.post(proto, "/inject", body.clone()).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{proto:?} {what}");
            let v = r.json();
            assert_eq!(v["kind"], "AdmissionReview", "{proto:?} {what}");
            assert_eq!(v["response"]["allowed"], false, "{proto:?} {what}");
            assert_eq!(v["response"]["uid"], *uid, "{proto:?} {what}");
            let got = v["response"]["status"]["message"].as_str().unwrap();
            assert!(got.contains(message), "{proto:?} {what}: {got}");
        }
    }
    assert_eq!(
        s.metric("meshrev_injection_requests_total{result=\"error\"}")
            .await,
        8.0
    );
    s.stop().await;
}

/// A Content-Length over the limit is refused at once, before any of the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_content_length_is_refused_without_reading_the_body() {
    let s = start(table(), |_| {}).await;

    // HTTP/1.1 on a raw stream: headers announce 100 MB, only 1 KiB follows.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    let t0 = Instant::now();
    write_all(
        &mut tls,
        b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    .await;
    write_all(&mut tls, &[b' '; 1024]).await;
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .expect("a prompt answer")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut tls))
        .await
        .expect("the server closes the connection");
    let body = String::from_utf8_lossy(&rest);
    assert!(body.contains("over the limit"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // HTTP/2: a streaming body that never ends, announced as 100 MB.
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    tx.try_send(Ok(Frame::data(Bytes::from(vec![b' '; 1024]))))
        .unwrap();
    let body = StreamBody::new(rx).map_err(|e| match e {}).boxed();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        s.client.send(
            Proto::H2,
            Method::POST,
            "/inject",
            &[
                ("content-type", "application/json"),
                ("content-length", "100000000"),
            ],
            body,
        ),
    )
    .await
    .expect("a prompt answer")
    .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["response"]["allowed"], false);
    drop(tx);
    assert_eq!(
        s.metric("meshrev_injection_requests_total{result=\"error\"}")
            .await,
        2.0
    );
    s.stop().await;
}

/// Without a Content-Length, the streamed read stops just past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_streamed_body_is_cut_at_the_limit() {
    let s = start(table(), |_| {}).await;
    let over = MAX_BODY_BYTES + 1;

    // HTTP/1.1 chunked: one chunk of limit+1 bytes, no terminating chunk.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    write_all(
        &mut tls,
        format!("POST /inject HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{over:x}\r\n").as_bytes(),
    )
    .await;
    write_all(&mut tls, &vec![b' '; over]).await;
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut tls))
        .await
        .expect("an answer")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // HTTP/2 without content-length: 1 MiB frames up to limit+1, then the body stalls.
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let feeder = tokio::spawn(async move {
        use futures::SinkExt;
        let mut left = over;
        while left > 0 {
            let n = left.min(1 << 20);
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b' '; n]))))
                .await
                .is_err()
            {
                return;
            }
            left -= n;
        }
        std::future::pending::<()>().await;
    });
    let body = StreamBody::new(rx).map_err(|e| match e {}).boxed();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        s.client.send(Proto::H2, Method::POST, "/inject", &[], body),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    feeder.abort();
    s.stop().await;
}

/// A request whose body does not arrive within the deadline gets 504 and an AdmissionReview.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_deadline_answers_504() {
    let s = start(table(), |c| c.request_timeout = Duration::from_millis(300)).await;
    let mut tls = s.raw(&[b"http/1.1"]).await;
    let t0 = Instant::now();
    write_all(
        &mut tls,
        b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n{\"apiVersion\":",
    )
    .await;
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .expect("an answer")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let rest = read_until_closed(&mut tls).await;
    let v: serde_json::Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_health_and_errors() {
    let s = start(table(), |_| {}).await;
    for proto in BOTH {
        let r = s.client.get(proto, "/healthz").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
        let r = s.client.get(proto, "/readyz").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
        let r = s.client.get(proto, "/inject").await.unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers["allow"], "POST");
        let r = s.client.post(proto, "/healthz", "x").await.unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        let r = s.client.get(proto, "/nope").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.text().contains("POST /inject"), "{}", r.text());
        // Without a cluster the guards have no view: a well-formed refusal that says so.
        let r = s.client.post(proto, "/validate", FIXTURE).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(v["response"]["allowed"], false);
        let m = v["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(m.contains("without a cluster"), "{m}");
    }
    // A client without ALPN speaks HTTP/1.1.
    let mut tls = s.raw(&[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    write_all(
        &mut tls,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let head = read_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The metrics listener: /metrics, /healthz, /readyz; nothing else.
    let (status, text) = http_get(s.metrics_addr, "/readyz").await.unwrap();
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _) = http_get(s.metrics_addr, "/inject").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_results_reasons_and_revisions() {
    let s = start(table(), |_| {}).await;
    let before = s.metrics_text().await;
    for series in [
        "meshrev_injection_requests_total{result=\"injected\"}",
        "meshrev_injection_requests_total{result=\"skipped\"}",
        "meshrev_injection_requests_total{result=\"denied\"}",
        "meshrev_injection_requests_total{result=\"error\"}",
        "meshrev_injection_skips_total{reason=\"unknown-revision\"}",
        "meshrev_injection_skips_total{reason=\"not-create\"}",
        "meshrev_tls_reloads_total{result=\"success\"}",
        "meshrev_table_reloads_total{result=\"failure\"}",
    ] {
        assert_eq!(
            metric(&before, series),
            Some(0.0),
            "{series} not pre-initialized"
        );
    }

    let r = s.client.post(Proto::H1, "/inject", FIXTURE).await.unwrap();
    assert!(r.json()["response"]["patch"].is_string());
    let r = s
        .client
        .post(Proto::H2, "/inject", fixture_in("unknown-rev"))
        .await
        .unwrap();
    assert!(r.json()["response"]["patch"].is_null());
    s.client
        .post(Proto::H2, "/inject", "nonsense")
        .await
        .unwrap();

    let text = s.metrics_text().await;
    let expect = [
        ("meshrev_injection_requests_total{result=\"injected\"}", 1.0),
        ("meshrev_injection_requests_total{result=\"skipped\"}", 1.0),
        ("meshrev_injection_requests_total{result=\"denied\"}", 0.0),
        ("meshrev_injection_requests_total{result=\"error\"}", 1.0),
        (
            "meshrev_injection_skips_total{reason=\"unknown-revision\"}",
            1.0,
        ),
        ("meshrev_injection_skips_total{reason=\"not-in-mesh\"}", 0.0),
        (
            "meshrev_injections_total{revision=\"1-22-6\",tag=\"stable\"}",
            1.0,
        ),
        ("meshrev_injection_duration_seconds_count", 3.0),
        ("meshrev_injection_duration_seconds_bucket{le=\"1\"}", 3.0),
        ("meshrev_table_generation", 1.0),
        ("meshrev_table_revisions", 2.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        metric(
            &text,
            "meshrev_injection_duration_seconds_bucket{le=\"0.00005\"}"
        )
        .is_some(),
        "sub-millisecond buckets"
    );
    #[cfg(target_os = "linux")]
    assert!(metric(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert_eq!(
        s.handle()
            .metrics
            .requests(meshrev::admission::ReviewResult::Injected),
        1
    );
    s.stop().await;
}

/// Bench mode: a fixed reply, the body still read under the same limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_body_mode_answers_the_fixed_bytes() {
    let fixed = Bytes::from(vec![b'x'; 300]);
    let f = fixed.clone();
    let s = start(table(), move |c| c.fixed_inject_body = Some(f)).await;
    for proto in BOTH {
        let r = s.client.post(proto, "/inject", FIXTURE).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, fixed);
        assert_eq!(
            r.version,
            if proto == Proto::H1 {
                Version::HTTP_11
            } else {
                Version::HTTP_2
            }
        );
    }
    s.stop().await;
}

/// `/validate` is counted in its own metrics, never in `/inject`'s, and answers 504 after
/// its own deadline (`validate_timeout`), not `/inject`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_has_its_own_metrics_and_deadline() {
    let s = start(table(), |c| {
        c.request_timeout = Duration::from_secs(60);
        c.validate_timeout = Duration::from_millis(300);
    })
    .await;
    // Without a cluster: a well-formed refusal, an error of /validate.
    let r = s
        .client
        .post(Proto::H2, "/validate", FIXTURE)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["response"]["allowed"], false);

    // A body that never completes: 504 naming /validate's deadline.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    write_all(
        &mut tls,
        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n{\"apiVersion\":",
    )
    .await;
    let head = tokio::time::timeout(Duration::from_secs(30), read_head(&mut tls))
        .await
        .expect("an answer within /validate's deadline, not /inject's")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let rest = read_until_closed(&mut tls).await;
    let v: serde_json::Value = serde_json::from_slice(&rest).unwrap();
    let m = v["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(m.contains("300ms"), "{m}");

    let text = s.metrics_text().await;
    for (series, want) in [
        ("meshrev_validate_requests_total{result=\"error\"}", 2.0),
        ("meshrev_validate_requests_total{result=\"allowed\"}", 0.0),
        ("meshrev_validate_requests_total{result=\"denied\"}", 0.0),
        ("meshrev_validate_duration_seconds_count", 2.0),
        ("meshrev_injection_requests_total{result=\"error\"}", 0.0),
        ("meshrev_injection_duration_seconds_count", 0.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series}");
    }
    s.stop().await;
}

//! Hostile input against the real TLS server (issue 10, server side): bounded memory and
//! connections, table and certificate reloads that cannot publish a broken state, and
//! replies that keep the request's uid.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshrev::server::certs::{self, Authority, ServingPair};
use meshrev::server::{MAX_BODY_BYTES, ServeConfig, TableSource, TlsSource};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tls_client::*;
use tokio::io::AsyncReadExt;

const UID: &str = "3f0c1a52-7e4b-4c1d-9a55-2b8f6d1e0c11";
const MIB: usize = 1024 * 1024;

fn table() -> TableSource {
    TableSource::Table(test_table())
}

type Feed = futures::channel::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

/// A request body fed by the test: the sender, and the body to send.
fn fed_body() -> (Feed, BoxBody) {
    let (tx, rx) = futures::channel::mpsc::channel(1);
    (tx, StreamBody::new(rx).map_err(|e| match e {}).boxed())
}

async fn feed(tx: &mut Feed, bytes: Vec<u8>) -> bool {
    use futures::SinkExt;
    tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_ok()
}

async fn wait_metric(s: &TestServer, series: &str, what: &str, ok: impl Fn(f64) -> bool) {
    eventually(Duration::from_secs(10), what, || async {
        ok(s.metric(series).await).then_some(())
    })
    .await;
}

/// The fixture padded with trailing spaces (still valid JSON) to `len` bytes.
fn padded_fixture(len: usize) -> Vec<u8> {
    let mut v = FIXTURE.as_bytes().to_vec();
    v.resize(len, b' ');
    v
}

/// Bodies beyond the in-flight budget wait, then get 503 (with the uid when it was read);
/// the budget is returned when a request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_in_flight_are_bounded_by_the_budget() {
    let s = start(table(), |c| {
        c.max_inflight_body_bytes = MAX_BODY_BYTES;
        c.body_budget_wait = Duration::from_millis(300);
    })
    .await;
    assert_eq!(s.metric("meshrev_inflight_body_bytes").await, 0.0);

    // A: 4 MiB announced, the first 64 KiB sent, then it stalls holding its 4 MiB.
    let a_len = 4 * MIB;
    let a_body = padded_fixture(a_len);
    let (mut a_tx, body) = fed_body();
    let client = s.client.clone();
    let len = a_len.to_string();
    let a = tokio::spawn(async move {
        client
            .send(
                Proto::H2,
                Method::POST,
                "/inject",
                &[
                    ("content-type", "application/json"),
                    ("content-length", &len),
                ],
                body,
            )
            .await
    });
    assert!(feed(&mut a_tx, a_body[..64 * 1024].to_vec()).await);
    wait_metric(&s, "meshrev_inflight_body_bytes", "A's reservation", |v| {
        v == a_len as f64
    })
    .await;

    // B: another 4 MiB does not fit: 503 with an AdmissionReview, over HTTP/2 ...
    let r = s
        .client
        .post(Proto::H2, "/inject", padded_fixture(a_len))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    let v = r.json();
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["allowed"], false);
    let m = v["response"]["status"]["message"].as_str().unwrap();
    assert!(m.contains("--max-inflight-body-bytes"), "{m}");
    // ... and HTTP/1.1 (a raw stream: the server answers without reading the body, and
    // closes the connection after the answer).
    let mut tls = s.raw(&[b"http/1.1"]).await;
    write_all(
        &mut tls,
        format!("POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: {a_len}\r\n\r\n{{")
            .as_bytes(),
    )
    .await;
    let head = read_head(&mut tls).await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let rest = read_until_closed(&mut tls).await;
    let v: serde_json::Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(v["response"]["allowed"], false);

    // C: streamed without a length, it reserves as it goes and stops where the budget
    // ends; what it had sent shows the uid.
    let (mut c_tx, body) = fed_body();
    let client = s.client.clone();
    let c = tokio::spawn(async move {
        client
            .send(Proto::H2, Method::POST, "/inject", &[], body)
            .await
    });
    let c_body = padded_fixture(4 * MIB);
    let feeder = tokio::spawn(async move {
        for chunk in c_body.chunks(256 * 1024) {
            if !feed(&mut c_tx, chunk.to_vec()).await {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let r = tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .expect("C is answered")
        .unwrap()
        .unwrap();
    feeder.abort();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["response"]["uid"], UID);
    assert!(s.metric("meshrev_inflight_body_bytes").await <= MAX_BODY_BYTES as f64);

    // A completes and is answered; its bytes come back.
    for chunk in a_body[64 * 1024..].chunks(256 * 1024) {
        assert!(feed(&mut a_tx, chunk.to_vec()).await);
    }
    drop(a_tx);
    let r = a.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["response"]["patch"].is_string());
    wait_metric(
        &s,
        "meshrev_inflight_body_bytes",
        "the budget returned",
        |v| v == 0.0,
    )
    .await;
    let r = s
        .client
        .post(Proto::H2, "/inject", padded_fixture(a_len))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

/// Streams waiting for the budget must not use up the connection's flow-control window:
/// the stream that has its bytes, on the same connection, is still read to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_streams_do_not_stall_the_stream_being_read() {
    let s = start(table(), |c| {
        c.max_inflight_body_bytes = MAX_BODY_BYTES;
        c.body_budget_wait = Duration::from_secs(60);
        c.request_timeout = Duration::from_secs(60);
    })
    .await;
    let tls = s.raw(&[b"h2"]).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("https://localhost:{}/inject", s.addr.port());
    let post = |len: usize, body: BoxBody| {
        let mut sender = sender.clone();
        let req = http::Request::post(uri.clone())
            .header("content-type", "application/json")
            .header("content-length", len)
            .body(body)
            .unwrap();
        tokio::spawn(async move {
            let r = sender.send_request(req).await?;
            let status = r.status();
            r.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
    };
    // The reader: 5 MiB reserved, its first 64 KiB sent.
    let len = 5 * MIB;
    let body = padded_fixture(len);
    let (mut tx, fed) = fed_body();
    let reader = post(len, fed);
    assert!(feed(&mut tx, body[..64 * 1024].to_vec()).await);
    wait_metric(
        &s,
        "meshrev_inflight_body_bytes",
        "the reader's bytes",
        |v| v == len as f64,
    )
    .await;
    // 20 waiters on the same connection, each sending what its window allows.
    let waiters: Vec<_> = (0..20)
        .map(|_| post(4 * MIB, full(padded_fixture(4 * MIB))))
        .collect();
    wait_metric(&s, "meshrev_inflight_body_waiting", "20 waiters", |v| {
        v == 20.0
    })
    .await;
    // The rest of the reader's body still gets through.
    for chunk in body[64 * 1024..].chunks(256 * 1024) {
        assert!(feed(&mut tx, chunk.to_vec()).await);
    }
    drop(tx);
    let status = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader is answered")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    for w in waiters {
        w.abort();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_must_hold_one_largest_request() {
    let mut cfg = ServeConfig::local(
        TlsSource::SelfSigned {
            dir: tempfile::tempdir().unwrap().path().join("certs"),
        },
        table(),
    );
    cfg.max_inflight_body_bytes = MAX_BODY_BYTES - 1;
    let e = meshrev::server::serve_with(cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--max-inflight-body-bytes"), "{e}");
}

/// The server's SETTINGS frame: (identifier, value) pairs.
async fn h2_settings(s: &TestServer) -> Vec<(u16, u32)> {
    let mut tls = s.raw(&[b"h2"]).await;
    write_all(
        &mut tls,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_and_windows_are_bounded() {
    let s = start(table(), |_| {}).await;
    let settings = h2_settings(&s).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE
    assert!(settings.contains(&(3, 32)), "{settings:?}");
    assert!(settings.contains(&(4, 64 * 1024)), "{settings:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let s = start(table(), |c| c.max_connections = 2).await;
    let one = s.raw(&[b"h2"]).await;
    let two = s.raw(&[b"http/1.1"]).await;
    wait_metric(&s, "meshrev_connections", "two connections", |v| v == 2.0).await;

    // The third is accepted and closed: the handshake fails, nothing waits.
    let third = s.client.connect(&[b"http/1.1"]).await;
    assert!(third.is_err(), "a third connection was served");
    assert!(s.metric("meshrev_connections_refused_total").await >= 1.0);
    assert_eq!(s.metric("meshrev_connections").await, 2.0);

    drop(one);
    wait_metric(&s, "meshrev_connections", "a slot freed", |v| v <= 1.0).await;
    let r = s.client.get(Proto::H2, "/healthz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    drop(two);
    s.stop().await;
}

/// An HTTP/2 client that answers (and sends) pings but sends no request is closed after
/// the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_despite_pings() {
    let s = start(table(), |c| c.idle_timeout = Duration::from_millis(500)).await;
    let tls = s.raw(&[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/healthz", s.addr.port()))
        .body(full(Bytes::new()))
        .unwrap();
    let r = sender.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(r);
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the idle connection is closed by the server")
        .unwrap()
        .ok();
    wait_metric(&s, "meshrev_connections", "no connection left", |v| {
        v == 0.0
    })
    .await;
    s.stop().await;
}

const TABLE_A: &str = "apiVersion: meshrev.io/v1alpha1
kind: MeshRevision
metadata: {name: 1-22-6}
spec: {version: 1.22.6}
---
apiVersion: meshrev.io/v1alpha1
kind: RevisionTag
metadata: {name: stable}
spec: {revision: 1-22-6}
---
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {istio-injection: enabled}
";

fn injected_revision(r: &Reply) -> Option<String> {
    let v = r.json();
    let patch = v["response"]["patch"].as_str()?;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .ok()?;
    let text = String::from_utf8(patch).ok()?;
    ["1-22-6", "1-23-6"]
        .into_iter()
        .find(|r| text.contains(r))
        .map(str::to_string)
}

/// An empty file, a lone `---`, a file without a MeshRevision: each refused and counted;
/// the last good table stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_files_without_a_revision_are_refused() {
    let tdir = tempfile::tempdir().unwrap();
    let path = tdir.path().join("table.yaml");
    std::fs::write(&path, TABLE_A).unwrap();
    let s = start(TableSource::File(path.clone()), |_| {}).await;
    let failures = "meshrev_table_reloads_total{result=\"failure\"}";
    let namespace_only = &TABLE_A[TABLE_A.rfind("---").unwrap() + 4..];
    for (i, text) in ["", "---\n", namespace_only].into_iter().enumerate() {
        certs::write_atomic(&path, text.as_bytes(), false).unwrap();
        wait_metric(&s, failures, "a counted refusal", |v| v >= (i + 1) as f64).await;
        let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
        assert_eq!(injected_revision(&r).as_deref(), Some("1-22-6"), "{text:?}");
        assert_eq!(s.metric("meshrev_table_generation").await, 1.0);
    }
    assert_eq!(
        s.metric("meshrev_table_reloads_total{result=\"success\"}")
            .await,
        0.0
    );
    s.stop().await;
}

/// A file rewritten in place, again and again (truncate, the first documents, the rest):
/// no half-written table is ever served; once the writes stop, the new table is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_file_rewritten_in_place_is_never_half_published() {
    let tdir = tempfile::tempdir().unwrap();
    let path = tdir.path().join("table.yaml");
    std::fs::write(&path, TABLE_A).unwrap();
    let s = start(TableSource::File(path.clone()), |c| {
        c.table_poll_interval = Duration::from_millis(300);
    })
    .await;
    let table_b = TABLE_A
        .replace("1-22-6", "1-23-6")
        .replace("1.22.6", "1.23.6");
    let cut = table_b.rfind("---").unwrap() + 4; // at a document boundary
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop, table_b) = (path.clone(), stop.clone(), table_b.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&table_b.as_bytes()[..cut]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1)); // a writer between two writes
                f.write_all(&table_b.as_bytes()[cut..]).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let failures = "meshrev_table_reloads_total{result=\"failure\"}";
    // Requests while the server polls the changing file at least three times.
    eventually(Duration::from_secs(30), "three refused reads", || async {
        let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
        assert!(
            injected_revision(&r).is_some(),
            "a pod admitted without a sidecar: {}",
            r.text()
        );
        (s.metric(failures).await >= 3.0).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eventually(Duration::from_secs(10), "the new table", || async {
        let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
        (injected_revision(&r).as_deref() == Some("1-23-6")).then_some(())
    })
    .await;
    s.stop().await;
}

fn der(pair: &ServingPair) -> Vec<u8> {
    CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// An expired pair, a pair not valid yet, and a pair for another host from another CA:
/// each refused and counted; the good certificate stays in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_would_break_clients_are_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let ca = Authority::generate("reload test CA").unwrap();
    let names = certs::default_names();
    let good = ca.issue(&names).unwrap();
    good.write_to(&secret).unwrap();
    let mut cfg = ServeConfig::local(
        TlsSource::Files {
            cert: secret.join(certs::CERT_FILE),
            key: secret.join(certs::KEY_FILE),
        },
        table(),
    );
    cfg.cert_poll_interval = Duration::from_millis(100);
    let s = start_with(cfg, ca.cert_pem().to_string(), secret.clone(), dir).await;
    let want = der(&good);
    assert_eq!(s.client.served_cert().await.unwrap(), want);

    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let bad = [
        (
            "expired",
            ca.issue_between(&names, now - 10 * day, now - day),
        ),
        (
            "not yet valid",
            ca.issue_between(&names, now + day, now + 10 * day),
        ),
        (
            "another host, another CA",
            Authority::generate("somebody else")
                .unwrap()
                .issue(&["evil.example.com".to_string()]),
        ),
        ("fewer names", ca.issue(&["localhost".to_string()])),
    ];
    let failures = "meshrev_tls_reloads_total{result=\"failure\"}";
    for (i, (what, pair)) in bad.into_iter().enumerate() {
        pair.unwrap().write_to(&secret).unwrap();
        eventually(Duration::from_secs(10), what, || async {
            (s.metric(failures).await >= (i + 1) as f64).then_some(())
        })
        .await;
        assert_eq!(s.client.served_cert().await.unwrap(), want, "{what}");
    }
    assert_eq!(
        s.metric("meshrev_tls_reloads_total{result=\"success\"}")
            .await,
        0.0
    );
    // A good pair is still taken.
    let next = ca.issue(&names).unwrap();
    next.write_to(&secret).unwrap();
    let want = der(&next);
    eventually(Duration::from_secs(10), "the good pair", || async {
        (s.client.served_cert().await.ok()? == want).then_some(())
    })
    .await;
    s.stop().await;
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

    // A body cut short by the deadline: 504, and the uid from what arrived.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    let prefix = &FIXTURE[..FIXTURE.find("\"kind\": {").unwrap()];
    write_all(
        &mut tls,
        format!(
            "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{prefix}",
            FIXTURE.len()
        )
        .as_bytes(),
    )
    .await;
    let head = read_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let rest = read_until_closed(&mut tls).await;
    let v: serde_json::Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(v["response"]["uid"], UID);
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

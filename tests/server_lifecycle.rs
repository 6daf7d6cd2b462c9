//! Readiness and shutdown: readiness gates (the controller's hook), `/readyz` turning not
//! ready on shutdown, in-flight requests finishing during the drain, and the drain cap.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::time::{Duration, Instant};

use http::StatusCode;
use meshrev::health::CONTROLLER_GATE;
use meshrev::server::TableSource;
use tls_client::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_mode_is_ready_only_once_its_gate_opens() {
    let s = start(TableSource::Controller, |_| {}).await;
    let r = s.client.get(Proto::H1, "/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("gates not ready: table"), "{}", r.text());
    let (status, _) = http_get(s.metrics_addr, "/readyz").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Alive all the same, and the empty table skips everything.
    assert_eq!(
        s.client.get(Proto::H2, "/healthz").await.unwrap().status,
        StatusCode::OK
    );
    let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
    assert_eq!(r.json()["response"]["allowed"], true);
    assert!(r.json()["response"]["patch"].is_null());
    assert_eq!(s.metric("meshrev_table_revisions").await, 0.0);

    // What the controller does: publish, record, open its gate; and gates of its own.
    let h = s.handle();
    let extra = h.readiness.gate("watch:namespaces");
    h.store.publish(test_table());
    h.metrics.observe_table(&h.store.load());
    h.readiness.gate(CONTROLLER_GATE).set_ready();
    let r = s.client.get(Proto::H1, "/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().contains("watch:namespaces") && !r.text().contains("table"),
        "{}",
        r.text()
    );
    extra.set_ready();
    let r = s.client.get(Proto::H2, "/readyz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
    let r = s.client.post(Proto::H1, "/inject", FIXTURE).await.unwrap();
    assert!(r.json()["response"]["patch"].is_string());
    assert_eq!(s.metric("meshrev_table_generation").await, 2.0);
    s.stop().await;
}

/// Sends the headers of an /inject request with `Expect: 100-continue` and waits for the
/// server's `100 Continue`: from then on the request is in the handler, in flight.
async fn start_in_flight(s: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = s.raw(&[b"http/1.1"]).await;
    write_all(
        &mut tls,
        format!(
            "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            FIXTURE.len()
        )
        .as_bytes(),
    )
    .await;
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .expect("100 Continue")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_unready_and_lets_in_flight_requests_finish() {
    let mut s = start(TableSource::Table(test_table()), |c| {
        c.drain_timeout = Duration::from_secs(20);
    })
    .await;
    let mut tls = start_in_flight(&s).await;

    s.trigger_shutdown();
    // Not ready any more (the metrics listener runs until the drain ends) ...
    eventually(Duration::from_secs(5), "/readyz not ready", || async {
        let (status, body) = http_get(s.metrics_addr, "/readyz").await.ok()?;
        (status == StatusCode::SERVICE_UNAVAILABLE && body.contains("shutting down")).then_some(())
    })
    .await;
    // ... new connections are refused ...
    eventually(
        Duration::from_secs(5),
        "new connections refused",
        || async {
            s.client
                .connect(&[b"http/1.1"])
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        !s.handle().is_finished(),
        "the drain waits for the request in flight"
    );

    // ... and the request in flight completes.
    write_all(&mut tls, FIXTURE.as_bytes()).await;
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .expect("the in-flight request is answered")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    let len: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut tls, &mut body)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"]["patch"].is_string());

    let t0 = Instant::now();
    s.stop_within(Duration::from_secs(10)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_capped() {
    let mut s = start(TableSource::Table(test_table()), |c| {
        c.drain_timeout = Duration::from_millis(300);
        c.request_timeout = Duration::from_secs(60);
    })
    .await;
    let mut tls = start_in_flight(&s).await;
    let t0 = Instant::now();
    s.stop_within(Duration::from_secs(10)).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // The stalled request's connection was closed.
    tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut tls))
        .await
        .expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_serving_while_unready() {
    let mut s = start(TableSource::Table(test_table()), |c| {
        c.shutdown_delay = Duration::from_secs(30);
        c.drain_timeout = Duration::from_secs(1);
    })
    .await;
    s.trigger_shutdown();
    eventually(Duration::from_secs(5), "/readyz not ready", || async {
        let r = s.client.get(Proto::H1, "/readyz").await.ok()?;
        (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    // Still accepting and answering during the delay.
    let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(!s.handle().is_finished());
}

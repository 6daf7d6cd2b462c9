//! Certificates and connection hygiene: rotation without restart (Secret-style symlink
//! swap), broken files keep the old certificate, self-signed mode, slow clients are cut
//! off, and the table file is reloaded the same way.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use meshrev::server::certs::{self, Authority, ServingPair};
use meshrev::server::{ServeConfig, TableSource, TlsSource};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tls_client::*;
use tokio::io::AsyncReadExt;

fn der(pair: &ServingPair) -> Vec<u8> {
    CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The leaf's notAfter, in seconds since the Unix epoch.
fn not_after(pair: &ServingPair) -> f64 {
    let der = der(pair);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp() as f64
}

const EXPIRY: &str = "meshrev_tls_certificate_expiry_timestamp_seconds";

/// Lays out `pair` the way the kubelet does a Secret volume: `dir/..<gen>/tls.*`, the
/// symlink `dir/..data` to it, and `dir/tls.* -> ..data/tls.*`; a later call swaps
/// `..data` atomically.
#[cfg(unix)]
fn secret_volume_write(dir: &Path, generation: u32, pair: &ServingPair) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    pair.write_to(&data).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in [certs::CERT_FILE, certs::KEY_FILE] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[cfg(unix)]
/// Polls until the server presents the certificate `want` (DER).
async fn wait_served(s: &TestServer, want: &[u8], what: &str) {
    eventually(Duration::from_secs(10), what, || {
        let c = s.client.clone();
        async move { (c.served_cert().await.ok()? == want).then_some(()) }
    })
    .await;
}

/// Polls until the TLS reload failure counter is above `before`.
async fn wait_failure_counted(s: &TestServer, before: f64, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        let f = s
            .metric("meshrev_tls_reloads_total{result=\"failure\"}")
            .await;
        (f > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_without_restart_and_bad_files_keep_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let ca = Authority::generate("rotation test CA").unwrap();
    let names = certs::default_names();
    let first = ca.issue(&names).unwrap();
    secret_volume_write(&secret, 1, &first);
    let mut cfg = ServeConfig::local(
        TlsSource::Files {
            cert: secret.join(certs::CERT_FILE),
            key: secret.join(certs::KEY_FILE),
        },
        TableSource::Table(test_table()),
    );
    cfg.cert_poll_interval = Duration::from_millis(100);
    let s = start_with(cfg, ca.cert_pem().to_string(), secret.clone(), dir).await;
    assert_eq!(s.client.served_cert().await.unwrap(), der(&first));
    assert_eq!(s.metric(EXPIRY).await, not_after(&first));

    // Rotation by a symlink swap of the whole directory, to a certificate expiring at
    // another (whole) second than the first.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let second_not_after = time::OffsetDateTime::from_unix_timestamp(now + 30 * 86400).unwrap();
    let second = ca
        .issue_between(
            &names,
            time::OffsetDateTime::from_unix_timestamp(now - 3600).unwrap(),
            second_not_after,
        )
        .unwrap();
    assert_ne!(not_after(&first), not_after(&second));
    secret_volume_write(&secret, 2, &second);
    let want = der(&second);
    wait_served(&s, &want, "the rotated certificate").await;
    assert_eq!(
        s.metric(EXPIRY).await,
        second_not_after.unix_timestamp() as f64
    );
    assert_eq!(
        s.metric("meshrev_tls_reloads_total{result=\"success\"}")
            .await,
        1.0
    );
    for proto in BOTH {
        let r = s.client.post(proto, "/inject", FIXTURE).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }

    // Garbage: counted as a failure, the second certificate stays in service.
    let failures = s
        .metric("meshrev_tls_reloads_total{result=\"failure\"}")
        .await;
    std::fs::write(secret.join("..gen2").join(certs::CERT_FILE), "garbage").unwrap();
    std::fs::write(secret.join("..gen2").join(certs::KEY_FILE), "garbage").unwrap();
    wait_failure_counted(&s, failures, "a counted reload failure").await;
    assert_eq!(s.client.served_cert().await.unwrap(), want);
    assert_eq!(
        s.metric(EXPIRY).await,
        second_not_after.unix_timestamp() as f64,
        "a refused pair must not move the expiry gauge"
    );
    assert_eq!(
        s.client
            .post(Proto::H2, "/inject", FIXTURE)
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );

    // A certificate with somebody else's key: refused too.
    let third = ca.issue(&names).unwrap();
    let mismatched = ServingPair {
        cert_pem: third.cert_pem.clone(),
        key_pem: first.key_pem.clone(),
    };
    let failures = s
        .metric("meshrev_tls_reloads_total{result=\"failure\"}")
        .await;
    secret_volume_write(&secret, 3, &mismatched);
    wait_failure_counted(&s, failures, "the mismatched pair refused").await;
    assert_eq!(s.client.served_cert().await.unwrap(), want);

    // And a good pair is picked up again.
    secret_volume_write(&secret, 4, &third);
    let want = der(&third);
    wait_served(&s, &want, "recovery").await;
    assert_eq!(
        s.metric("meshrev_tls_reloads_total{result=\"success\"}")
            .await,
        2.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_mode_generates_then_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert_dir = dir.path().join("nested").join("certs");
    let cfg = ServeConfig::local(
        TlsSource::SelfSigned {
            dir: cert_dir.clone(),
        },
        TableSource::Embedded,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = meshrev::server::serve_with(cfg, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let ca_path = h.ca_path.clone().expect("a CA path in self-signed mode");
    assert_eq!(ca_path, cert_dir.join("ca.crt"));
    let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
    let client = TlsClient::new(h.addr, &[&ca_pem]);
    let served = client.served_cert().await.unwrap();
    let r = client.get(Proto::H2, "/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    tx.send(()).unwrap();
    h.wait().await.unwrap();

    // Started again on the same directory: the same CA and certificate.
    let cfg = ServeConfig::local(
        TlsSource::SelfSigned {
            dir: cert_dir.clone(),
        },
        TableSource::Embedded,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = meshrev::server::serve_with(cfg, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca_pem);
    let client = TlsClient::new(h.addr, &[&ca_pem]);
    assert_eq!(client.served_cert().await.unwrap(), served);
    tx.send(()).unwrap();
    h.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_certificate_files_fail_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "nope").unwrap();
    std::fs::write(dir.path().join("tls.key"), "nope").unwrap();
    let cfg = ServeConfig::local(
        TlsSource::Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        },
        TableSource::Embedded,
    );
    let err = meshrev::server::serve_with(cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("tls.crt"), "{err:#}");
}

/// A client that never finishes its request line is disconnected after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let timeout = Duration::from_millis(500);
    let s = start(TableSource::Table(test_table()), |c| {
        c.header_read_timeout = timeout;
        c.tls_handshake_timeout = Duration::from_secs(1);
    })
    .await;

    // HTTP/1.1: half a request line.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    let t0 = Instant::now();
    write_all(&mut tls, b"POST /inject HTT").await;
    tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut tls))
        .await
        .expect("cut off within the header timeout");
    let took = t0.elapsed();
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");

    // HTTP/1.1 keep-alive: a first request answered, then half of a second one.
    let mut tls = s.raw(&[b"http/1.1"]).await;
    write_all(
        &mut tls,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let head = read_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let t0 = Instant::now();
    write_all(&mut tls, b"GET /hea").await;
    let rest = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut tls))
        .await
        .expect("cut off within the header timeout");
    assert!(t0.elapsed() >= timeout - Duration::from_millis(50));
    assert!(rest.len() < 200, "{}", String::from_utf8_lossy(&rest));

    // HTTP/2: a connection that never sends a request.
    let mut tls = s.raw(&[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut tls))
        .await
        .expect("an idle HTTP/2 connection is closed");

    // TCP without a TLS handshake.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed after the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // The server still answers others.
    let r = s.client.post(Proto::H1, "/inject", FIXTURE).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

const TABLE_ENABLED: &str = "apiVersion: meshrev.io/v1alpha1
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_file_is_reloaded_and_a_broken_one_keeps_the_last_good() {
    let tdir = tempfile::tempdir().unwrap();
    let path = tdir.path().join("table.yaml");
    std::fs::write(&path, TABLE_ENABLED).unwrap();
    let s = start(TableSource::File(path.clone()), |_| {}).await;
    let injected = |r: &Reply| r.json()["response"]["patch"].is_string();
    let r = s.client.post(Proto::H1, "/inject", FIXTURE).await.unwrap();
    assert!(injected(&r), "{}", r.text());
    assert_eq!(s.metric("meshrev_table_revisions").await, 1.0);

    // The namespace loses its label: pods are skipped.
    let disabled = TABLE_ENABLED.replace("istio-injection: enabled", "istio-injection: disabled");
    certs::write_atomic(&path, disabled.as_bytes(), false).unwrap();
    eventually(Duration::from_secs(10), "the reloaded table", || async {
        let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.ok()?;
        (!injected(&r)).then_some(())
    })
    .await;
    assert_eq!(
        s.metric("meshrev_table_reloads_total{result=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(s.metric("meshrev_table_generation").await, 2.0);

    // A broken file: counted, and the last good table stays.
    certs::write_atomic(
        &path,
        b"kind: MeshRevision\nmetadata: {name: x}\nspec: {version: nope}\n",
        false,
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "a counted table reload failure",
        || async {
            let f = s
                .metric("meshrev_table_reloads_total{result=\"failure\"}")
                .await;
            (f >= 1.0).then_some(())
        },
    )
    .await;
    let r = s.client.post(Proto::H1, "/inject", FIXTURE).await.unwrap();
    assert!(!injected(&r));
    assert_eq!(r.json()["response"]["allowed"], true);
    assert_eq!(s.metric("meshrev_table_generation").await, 2.0);
    s.stop().await;
}

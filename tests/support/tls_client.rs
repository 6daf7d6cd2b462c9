//! A test harness for the webhook server: starts it in process ([`start`]) on port 0 with
//! freshly generated certificates, and talks to it over real TLS with hyper's HTTP/1.1 and
//! HTTP/2 clients ([`TlsClient`]), or over a raw TLS stream for misbehaving clients.
//!
//! ```ignore
//! #[path = "support/tls_client.rs"]
//! mod tls_client;
//! ```
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshrev::server::{self, ServeConfig, ServerHandle, TableSource, TlsSource, certs};
use meshrev::table::{NamespaceLabels, Table, embedded_default};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The fixture AdmissionReview (a Pod CREATE in namespace `default`).
pub const FIXTURE: &str = include_str!("../fixtures/admission-review.json");

pub fn fixture() -> serde_json::Value {
    serde_json::from_str(FIXTURE).expect("the fixture parses")
}

/// The fixture moved to another namespace.
pub fn fixture_in(namespace: &str) -> Bytes {
    let mut v = fixture();
    v["request"]["namespace"] = namespace.into();
    v["request"]["object"]["metadata"]["namespace"] = namespace.into();
    Bytes::from(v.to_string())
}

/// The embedded table with namespace `default` labelled `istio-injection: enabled` and
/// namespace `unknown-rev` labelled `istio.io/rev: 1-99-9` (a skip with a warning).
pub fn test_table() -> Table {
    embedded_default().with_namespaces(HashMap::from([
        (
            "default".to_string(),
            NamespaceLabels {
                injection: Some("enabled".into()),
                rev: None,
            },
        ),
        (
            "unknown-rev".to_string(),
            NamespaceLabels {
                injection: None,
                rev: Some("1-99-9".into()),
            },
        ),
    ]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

impl Proto {
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
    pub fn version(self) -> Version {
        match self {
            Proto::H1 => Version::HTTP_11,
            Proto::H2 => Version::HTTP_2,
        }
    }
}

/// A response, body collected.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A TLS client that trusts the given CAs and names the server `localhost`.
#[derive(Clone)]
pub struct TlsClient {
    pub addr: SocketAddr,
    roots: Arc<RootCertStore>,
}

impl TlsClient {
    pub fn new(addr: SocketAddr, ca_pems: &[&str]) -> Self {
        let mut roots = RootCertStore::empty();
        for pem in ca_pems {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.expect("CA PEM")).expect("CA certificate");
            }
        }
        TlsClient {
            addr,
            roots: Arc::new(roots),
        }
    }

    /// A TLS connection offering these ALPN protocols (none: no ALPN extension).
    pub async fn connect(&self, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>> {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await
            .context("TLS handshake")?;
        Ok(tls)
    }

    /// The leaf certificate (DER) the server presents in a new handshake.
    pub async fn served_cert(&self) -> Result<Vec<u8>> {
        let tls = self.connect(&[b"http/1.1"]).await?;
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .context("no peer certificate")?;
        Ok(certs[0].to_vec())
    }

    /// Sends one request on a new connection of protocol `proto`; collects the response.
    /// `path` may carry a query string.
    pub async fn send(
        &self,
        proto: Proto,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: BoxBody,
    ) -> Result<Reply> {
        let tls = self.connect(&[proto.alpn()]).await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if negotiated.as_deref() != Some(proto.alpn()) {
            bail!("ALPN negotiated {negotiated:?}, wanted {:?}", proto.alpn());
        }
        let io = TokioIo::new(tls);
        let uri = match proto {
            Proto::H1 => path.to_string(),
            Proto::H2 => format!("https://localhost:{}{path}", self.addr.port()),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .version(proto.version());
        if proto == Proto::H1 {
            req = req.header(
                http::header::HOST,
                format!("localhost:{}", self.addr.port()),
            );
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body)?;
        let resp = match proto {
            Proto::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
            Proto::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn post(&self, proto: Proto, path: &str, body: impl Into<Bytes>) -> Result<Reply> {
        self.send(
            proto,
            Method::POST,
            path,
            &[("content-type", "application/json")],
            full(body),
        )
        .await
    }

    pub async fn get(&self, proto: Proto, path: &str) -> Result<Reply> {
        self.send(proto, Method::GET, path, &[], full(Bytes::new()))
            .await
    }
}

/// GET over plain HTTP/1.1 (the metrics listener).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of the sample `series` (as printed, e.g. `name{label="v"}`) in a text
/// exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `f` until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a raw stream until the end of an HTTP/1 response head; returns the head.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            bail!("EOF after {:?}", String::from_utf8_lossy(&buf));
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads until the peer closes (EOF, a TLS EOF without close_notify, or a reset).
/// Returns what was read.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A server started in process, with its own certificate directory.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub client: TlsClient,
    pub ca_pem: String,
    pub cert_dir: PathBuf,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Starts a server serving `table` with a fresh CA and serving pair in a temporary
/// directory (as [`TlsSource::Files`], polled every 100ms). `tweak` adjusts the config.
pub async fn start(table: TableSource, tweak: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_dir = dir.path().join("certs");
    let got = certs::generate_into(&cert_dir, &certs::default_names()).expect("certificates");
    let mut cfg = ServeConfig::local(
        TlsSource::Files {
            cert: got.paths.cert.clone(),
            key: got.paths.key.clone(),
        },
        table,
    );
    cfg.cert_poll_interval = Duration::from_millis(100);
    cfg.table_poll_interval = Duration::from_millis(100);
    tweak(&mut cfg);
    start_with(cfg, got.ca_pem, cert_dir, dir).await
}

/// Starts a server with `cfg` as is; `ca_pem` is what the client trusts.
pub async fn start_with(
    cfg: ServeConfig,
    ca_pem: String,
    cert_dir: PathBuf,
    dir: tempfile::TempDir,
) -> TestServer {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = server::serve_with(cfg, async move {
        let _ = rx.await;
    })
    .await
    .expect("the server starts");
    let client = TlsClient::new(handle.addr, &[&ca_pem]);
    TestServer {
        addr: handle.addr,
        metrics_addr: handle.metrics_addr.expect("a metrics listener"),
        handle: Some(handle),
        client,
        ca_pem,
        cert_dir,
        stop: Some(tx),
        _dir: dir,
    }
}

impl TestServer {
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }
    /// Signals shutdown (idempotent).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
    /// Signals shutdown and waits until the server task ends (at most `within`).
    pub async fn stop_within(&mut self, within: Duration) -> Result<()> {
        self.trigger_shutdown();
        let handle = self.handle.take().context("already stopped")?;
        Ok(tokio::time::timeout(within, handle.wait())
            .await
            .context("the server did not stop in time")??)
    }
    pub async fn stop(mut self) {
        self.stop_within(Duration::from_secs(10))
            .await
            .expect("clean stop");
    }
    pub async fn metrics_text(&self) -> String {
        let (status, text) = http_get(self.metrics_addr, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, StatusCode::OK);
        text
    }
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics_text().await, series).unwrap_or_else(|| panic!("no sample {series}"))
    }
    /// A raw TLS stream to the server offering `alpn`.
    pub async fn raw(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        self.client.connect(alpn).await.expect("TLS connection")
    }
}

/// Writes all of `data` and flushes.
pub async fn write_all<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, data: &[u8]) {
    s.write_all(data).await.expect("write");
    s.flush().await.expect("flush");
}

//! The webhook server: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) for the admission API, plain
//! HTTP for metrics.
//!
//! Endpoints on the TLS listener (`--listen`):
//! - `POST /inject`: one AdmissionReview in, one out ([`crate::admission::review`]); the
//!   query string (`?timeout=10s` from kube-apiserver) is ignored;
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 once a table is loaded and every readiness [`Gate`] is ready, 503
//!   (with the reasons) before that and while draining.
//!
//! On the metrics listener (`--metrics-listen`, plain HTTP): `GET /metrics` (Prometheus
//! text), and the same `/healthz` and `/readyz`.
//!
//! # Reply contract of `/inject`
//! Every request whose body was read gets HTTP 200 with the AdmissionReview that
//! [`crate::admission::review`] wrote, also for malformed input (it then carries
//! `allowed: false`, the reason, and the request's uid whenever the body shows one). Before
//! that: a body over [`MAX_BODY_BYTES`] gets 413 (refused on its `Content-Length` before
//! reading any of it, and the streamed read is capped too), a body that fails to arrive
//! gets 400, a body that does not fit in the in-flight budget within 2 s gets 503 (with
//! `Retry-After: 1`), and a request not complete within `--request-timeout` gets 504 —
//! each with an AdmissionReview error body (`allowed: false`; the uid when the part of the
//! body that was read shows it). The API server treats a non-200 as a failed call and
//! applies the webhook's `failurePolicy`, like any other internal error.
//!
//! # Resource bounds
//! - `--max-inflight-body-bytes` (64 MiB): request-body bytes held at once across all
//!   connections ([`limits::BodyBudget`]); reserved from `Content-Length` before the body
//!   is read, or frame by frame without one; gauge `meshrev_inflight_body_bytes`.
//! - `--max-connections` (1024): beyond it a new connection is accepted and closed at once
//!   (`meshrev_connections`, `meshrev_connections_refused_total`).
//! - `--max-concurrent-streams` (32) per HTTP/2 connection. HTTP/2 flow-control windows:
//!   64 KiB per stream, and per connection room for all its streams' windows (2 MiB), so
//!   streams waiting for the budget never stall one that is being read.
//! - At most [`limits::MAX_WAITING`] (512) requests wait for the budget at once; more get
//!   503 at once.
//! - `--idle-timeout` (90 s): a connection without a request for that long is closed
//!   gracefully (HTTP/2 pings are not requests); a new connection must start a request
//!   within `--header-read-timeout`.
//!
//! Held for request bodies: the budget, plus what waiting requests' clients sent before the
//! server stopped reading (an HTTP/2 stream window, 64 KiB, each: 32 MiB for 512 waiting;
//! for HTTP/1, hyper's read buffer).
//!
//! # Embedding (tests, benches)
//! [`serve_with`] starts the same server in process: bind port 0 in [`ServeConfig`], pass
//! a shutdown future, and read the bound addresses from the returned [`ServerHandle`].
//! For a floor measurement of the transport alone, set [`ServeConfig::fixed_inject_body`]:
//! `/inject` then still reads the body (same limits and deadline) but answers these bytes
//! without touching the table or the review.

pub mod certs;
pub mod health;
pub mod limits;
pub mod metrics;
mod table_file;
pub mod tls;

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use limits::{Activity, BodyBudget, BodyPermit, ConnSlot, ConnSlots, OverBudget};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::admission;
use crate::table::{self, Table, TableBuilder, TableStore};

pub use health::{CONTROLLER_GATE, Gate, Readiness};
pub use metrics::Metrics;
pub use tls::CertResolver;

/// The largest `/inject` body accepted: a Pod may be up to 3 MiB (etcd's object limit),
/// an UPDATE review carries it twice (object and oldObject), plus room for the envelope.
pub const MAX_BODY_BYTES: usize = 2 * 3 * 1024 * 1024 + 64 * 1024;

/// Default of `--max-inflight-body-bytes`: ten of the largest requests at once.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--max-concurrent-streams` (HTTP/2 streams per connection). The API server's
/// Go client opens another connection when a connection's streams are taken.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Default of `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a request waits for room in the body budget before it is refused with 503.
pub const DEFAULT_BODY_BUDGET_WAIT: Duration = Duration::from_secs(2);
/// HTTP/2 flow-control window of a stream: what a client may send on a stream before the
/// server reads it. A stream waiting for room in the body budget holds at most this much.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// The connection's window is room for every stream's window, so streams waiting for the
/// budget can never use up the window of a stream that has its bytes and is being read.
fn h2_connection_window(max_streams: u32) -> u32 {
    max_streams
        .saturating_mul(H2_STREAM_WINDOW)
        .clamp(H2_STREAM_WINDOW, i32::MAX as u32)
}
/// How long an idle connection being closed may take to finish closing.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `meshrev serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook listener.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP metrics listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// Without --tls-cert-file: directory of the self-signed CA and serving certificate
    /// (ca.crt, tls.crt, tls.key), generated when missing or invalid, reused otherwise.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub cert_dir: PathBuf,
    /// Serving certificate (PEM chain, leaf first); reloaded when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub cert_poll_interval: Duration,
    /// Serve this table file (MeshRevision, RevisionTag and Namespace objects) instead of
    /// the embedded default; reloaded when it changes.
    #[arg(long, value_name = "TABLE", conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub config: Option<PathBuf>,
    /// How often the table file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub config_poll_interval: Duration,
    /// Build the table from a cluster reached with this kubeconfig.
    #[arg(long, value_name = "PATH", conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Build the table from the cluster this pod runs in (service account).
    #[arg(long)]
    pub in_cluster: bool,
    /// Close HTTP/1 connections whose request headers take longer than this (also the
    /// time a new connection has to send its first request).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Close connections whose TLS handshake takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Deadline of one /inject request, body read included (504 after it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// On SIGTERM, keep accepting (while /readyz says not ready) this long before draining.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight requests when draining.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Request-body bytes held at once across all connections (e.g. 64Mi; at least one
    /// largest request, 6Mi + 64Ki). A request waits up to 2s for room, then gets 503.
    #[arg(long, value_name = "BYTES", default_value = "64Mi", value_parser = parse_bytes)]
    pub max_inflight_body_bytes: usize,
    /// Open connections on the webhook listener; beyond it new connections are accepted
    /// and closed at once. Keep it below the file-descriptor limit (ulimit -n).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per connection.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Close a connection after this long without a request (HTTP/2 pings do not count).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

/// Parses a byte count: `67108864`, `64Mi`, `64MiB`, `512Ki`, `1Gi` (also `k`, `M`, `G`
/// as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 67108864, 512Ki or 64Mi"))?;
    let mult: u64 = match unit.trim().trim_end_matches('B') {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use Ki, Mi or Gi)")),
    };
    n.checked_mul(mult)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// File descriptors kept free of connections: listeners, files, the API server client.
const FD_RESERVE: u64 = 64;

/// The soft limit on open files (Linux: `/proc/self/limits`), if known and finite.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// These PEM files, reloaded when their content changes.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed CA and serving certificate in this directory ([`certs::ensure`]),
    /// then served like [`TlsSource::Files`].
    SelfSigned { dir: PathBuf },
}

/// Where the revision table comes from.
#[derive(Debug)]
pub enum TableSource {
    /// [`table::embedded_default`].
    Embedded,
    /// This table, as is (tests, benches).
    Table(Table),
    /// A table file, reloaded when its content changes.
    File(PathBuf),
    /// The cluster: the table starts empty and [`CONTROLLER_GATE`] is registered not
    /// ready; whoever holds the [`ServerHandle`] (the controller) publishes into
    /// `handle.store` and opens the gate.
    Controller,
}

/// Everything [`serve_with`] needs. `Default` is `meshrev serve` without flags.
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// `None`: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    pub tls: TlsSource,
    pub table: TableSource,
    pub cert_poll_interval: Duration,
    pub table_poll_interval: Duration,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// The controller's index the `/validate` guards judge with (cluster mode).
    pub validator: Option<crate::controller::ClusterView>,
    /// Bench only: answer `/inject` with these bytes (after reading the body) instead of
    /// reviewing it — the floor of TLS + HTTP + body read.
    pub fixed_inject_body: Option<Bytes>,
    /// Request-body bytes held at once (at least [`MAX_BODY_BYTES`]).
    pub max_inflight_body_bytes: usize,
    /// How long a request waits for room in the body budget before a 503.
    pub body_budget_wait: Duration,
    /// Open connections on the TLS listener.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            tls: TlsSource::SelfSigned {
                dir: PathBuf::from("certs"),
            },
            table: TableSource::Embedded,
            cert_poll_interval: Duration::from_secs(5),
            table_poll_interval: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            fixed_inject_body: None,
            validator: None,
            max_inflight_body_bytes: DEFAULT_MAX_INFLIGHT_BODY_BYTES,
            body_budget_wait: DEFAULT_BODY_BUDGET_WAIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("tls", &self.tls)
            .field("table", &self.table)
            .field("validator", &self.validator.is_some())
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Both listeners on 127.0.0.1, port 0 (for tests and benches); the rest as `Default`.
    pub fn local(tls: TlsSource, table: TableSource) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls,
            table,
            ..ServeConfig::default()
        }
    }
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn to_config(&self) -> ServeConfig {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsSource::SelfSigned {
                dir: self.cert_dir.clone(),
            },
        };
        let table = if let Some(path) = &self.config {
            TableSource::File(path.clone())
        } else if self.kubeconfig.is_some() || self.in_cluster {
            TableSource::Controller
        } else {
            TableSource::Embedded
        };
        ServeConfig {
            listen: self.listen,
            metrics_listen: Some(self.metrics_listen),
            tls,
            table,
            cert_poll_interval: self.cert_poll_interval,
            table_poll_interval: self.config_poll_interval,
            header_read_timeout: self.header_read_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_timeout: self.request_timeout,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
            fixed_inject_body: None,
            validator: None,
            max_inflight_body_bytes: self.max_inflight_body_bytes,
            body_budget_wait: DEFAULT_BODY_BUDGET_WAIT,
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// A running server.
pub struct ServerHandle {
    /// The bound HTTPS address.
    pub addr: SocketAddr,
    /// The bound metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The CA bundle that clients must trust (self-signed mode only).
    pub ca_path: Option<PathBuf>,
    pub store: Arc<TableStore>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The certificate being served.
    pub certs: Arc<CertResolver>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Waits until the server has stopped (after the shutdown future resolved and the
    /// drain finished or was cut short).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task failed")?
    }
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// An empty table (what the cluster mode serves until the controller publishes).
pub fn empty_table() -> Table {
    TableBuilder::new()
        .build_lenient([], [], std::collections::HashMap::new())
        .0
}

/// Starts the server: loads the table and the certificate, binds both listeners, and
/// serves until `shutdown` resolves; then `/readyz` turns not ready, new connections are
/// refused after `shutdown_delay`, in-flight requests finish (at most `drain_timeout`),
/// and the server task ends. Errors (bad certificate, table or address) come back here,
/// before anything is served.
pub async fn serve_with(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ServerHandle> {
    if cfg.max_inflight_body_bytes < MAX_BODY_BYTES {
        anyhow::bail!(
            "--max-inflight-body-bytes {} is below one largest request ({MAX_BODY_BYTES} bytes); use at least 7Mi",
            cfg.max_inflight_body_bytes
        );
    }
    if cfg.max_connections == 0 || cfg.max_concurrent_streams == 0 {
        anyhow::bail!("--max-connections and --max-concurrent-streams must be at least 1");
    }
    if let Some(limit) = open_file_limit()
        && cfg.max_connections as u64 + FD_RESERVE > limit
    {
        tracing::warn!(
            "--max-connections {} leaves fewer than {FD_RESERVE} of the open-file limit ({limit}) for everything else: at the limit new connections fail to be accepted; lower --max-connections or raise the limit (ulimit -n)",
            cfg.max_connections
        );
    }
    let metrics = Arc::new(Metrics::new()?);
    let readiness = Arc::new(Readiness::new());
    let mut background = JoinSet::new();

    let store = match cfg.table {
        TableSource::Embedded => Arc::new(TableStore::new(table::embedded_default())),
        TableSource::Table(t) => Arc::new(TableStore::new(t)),
        TableSource::File(path) => {
            let mut builder = TableBuilder::new();
            let (t, content) = table_file::load(&path, &mut builder, cfg.table_poll_interval)?;
            let store = Arc::new(TableStore::new(t));
            background.spawn(table_file::watch(
                path,
                content,
                builder,
                cfg.table_poll_interval,
                store.clone(),
                metrics.clone(),
            ));
            store
        }
        TableSource::Controller => {
            readiness.gate(CONTROLLER_GATE);
            Arc::new(TableStore::new(empty_table()))
        }
    };
    readiness.set_table_loaded();
    metrics.observe_table(&store.load());

    let (cert, key, ca_path) = match cfg.tls {
        TlsSource::Files { cert, key } => (cert, key, None),
        TlsSource::SelfSigned { dir } => {
            let got = certs::ensure(&dir, &certs::default_names())?;
            tracing::info!(
                "{} self-signed certificates in {}",
                if got.reused { "reusing" } else { "generated" },
                dir.display()
            );
            (got.paths.cert, got.paths.key, Some(got.paths.ca))
        }
    };
    let initial = tls::load_files(&cert, &key)?;
    let key_pair = tls::certified_key(&initial.0, &initial.1, &tls::provider())
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    if let Err(e) = tls::check_replacement(&key_pair, None, tls::unix_now()) {
        // Nothing better to serve: start, and say it loudly (reloads will not accept such
        // a pair).
        tracing::warn!(
            "serving certificate {}: {e:#}; serving it anyway until a valid pair is installed",
            cert.display()
        );
    }
    let resolver = Arc::new(CertResolver::new(key_pair));
    let tls_config = Arc::new(tls::server_config(resolver.clone())?);
    background.spawn(tls::watch_files(
        cert,
        key,
        initial,
        cfg.cert_poll_interval,
        resolver.clone(),
        metrics.clone(),
    ));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a} (metrics)"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    let ctx = Arc::new(Ctx {
        validator: cfg.validator,
        store: store.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        request_timeout: cfg.request_timeout,
        fixed_body: cfg.fixed_inject_body,
        budget: BodyBudget::new(
            cfg.max_inflight_body_bytes,
            cfg.body_budget_wait,
            metrics.inflight_body_bytes(),
            metrics.inflight_body_waiting(),
        ),
        budget_wait: cfg.body_budget_wait,
    });
    let opts = ConnOpts {
        header_read_timeout: cfg.header_read_timeout,
        tls_handshake_timeout: cfg.tls_handshake_timeout,
        shutdown_delay: cfg.shutdown_delay,
        drain_timeout: cfg.drain_timeout,
        idle_timeout: cfg.idle_timeout,
        max_connections: cfg.max_connections,
        max_concurrent_streams: cfg.max_concurrent_streams,
    };
    if let Some(l) = metrics_listener {
        background.spawn(serve_metrics(l, ctx.clone(), opts.header_read_timeout));
    }
    let task = tokio::spawn(serve_tls(
        listener,
        TlsAcceptor::from(tls_config),
        ctx,
        opts,
        shutdown,
        background,
    ));
    Ok(ServerHandle {
        addr,
        metrics_addr,
        ca_path,
        store,
        metrics,
        readiness,
        certs: resolver,
        task,
    })
}

/// `meshrev serve`: [`serve_with`] until SIGTERM or SIGINT, and in cluster mode the
/// controller that feeds the table.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // kube's client uses rustls too; make ring the process default (ignore "already set").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = if args.in_cluster || args.kubeconfig.is_some() {
        Some(kube_client(&args).await?)
    } else {
        None
    };
    // The controller's index (read by /validate) and the status writer's Lease (released
    // on shutdown), made before the server so both can hold them.
    let wiring = client.map(|c| {
        let lease = crate::controller::LeaseHandle::new(
            c.clone(),
            &crate::controller::Identity::from_env(),
        );
        (c, crate::controller::ClusterView::new(), lease)
    });
    let mut cfg = args.to_config();
    cfg.validator = wiring.as_ref().map(|(_, view, _)| view.clone());
    let table_desc = match &cfg.table {
        TableSource::File(p) => format!("table file {} (reloaded on change)", p.display()),
        TableSource::Controller => "from the cluster (controller)".to_string(),
        _ => "embedded default".to_string(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            // Only a sent stop counts: without a controller the sender is simply dropped.
            Ok(()) = stop_rx => {}
        }
    };
    let server = serve_with(cfg, shutdown).await?;
    println!(
        "meshrev: serving https://{} (POST /inject, GET /healthz, GET /readyz)",
        server.addr
    );
    if let Some(m) = server.metrics_addr {
        println!("meshrev: metrics on http://{m}/metrics");
    }
    if let Some(ca) = &server.ca_path {
        println!("meshrev: self-signed CA bundle: {}", ca.display());
    }
    let t = server.store.load();
    println!(
        "meshrev: table: {table_desc}; {} revisions, tags {:?}",
        t.revision_count(),
        t.tags()
    );
    drop(t);
    let releaser = wiring.as_ref().map(|(_, _, lease)| lease.clone());
    let controller = wiring.map(|(client, cluster, lease)| {
        let (store, metrics, readiness) = (
            server.store.clone(),
            server.metrics.clone(),
            server.readiness.clone(),
        );
        tokio::spawn(async move {
            let result =
                crate::controller::run(client, store, metrics, readiness, cluster, lease).await;
            match &result {
                Ok(()) => tracing::warn!("the controller stopped; shutting down"),
                Err(e) => tracing::error!("the controller failed, shutting down: {e:#}"),
            }
            let _ = stop_tx.send(());
            result
        })
    });
    server.wait().await?;
    if let Some(lease) = releaser {
        // Hand the status writer's Lease over now instead of after it expires.
        lease.release().await;
    }
    if let Some(c) = controller
        && c.is_finished()
    {
        c.await.context("the controller task failed")??;
    }
    Ok(())
}

async fn kube_client(args: &ServeArgs) -> anyhow::Result<kube::Client> {
    let config = if args.in_cluster {
        kube::Config::incluster().context("in-cluster Kubernetes configuration")?
    } else if let Some(path) = &args.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?
    } else {
        anyhow::bail!("neither --kubeconfig nor --in-cluster given");
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// SIGTERM or SIGINT; and, when `MESHREV_EXIT_ON_STDIN_EOF` is set (test harnesses that
/// must leave no process behind, even when they are killed), the end of standard input.
async fn shutdown_signal() {
    if std::env::var_os("MESHREV_EXIT_ON_STDIN_EOF").is_some() {
        let eof = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        });
        tokio::select! {
            _ = eof => tracing::info!("standard input closed"),
            () = os_signal() => {}
        }
        return;
    }
    os_signal().await;
}

async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            },
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What request handling needs.
struct Ctx {
    /// The index `/validate` takes its view from; `None` outside cluster mode.
    validator: Option<crate::controller::ClusterView>,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    request_timeout: Duration,
    fixed_body: Option<Bytes>,
    /// Request-body bytes in flight, across connections.
    budget: BodyBudget,
    budget_wait: Duration,
}

#[derive(Clone, Copy)]
struct ConnOpts {
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    shutdown_delay: Duration,
    drain_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_concurrent_streams: u32,
}

/// The HTTP connection builders: ALPN decides which one serves a connection (`h2` → HTTP/2,
/// anything else → HTTP/1.1; HTTP/2 over TLS without ALPN is not a thing clients do).
struct Http {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Http {
    fn new(opts: &ConnOpts) -> Self {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(opts.max_concurrent_streams)
            .initial_connection_window_size(h2_connection_window(opts.max_concurrent_streams))
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .max_header_list_size(64 * 1024);
        Http {
            h1: b.clone().http1_only(),
            h2: b.http2_only(),
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<Ctx>,
    opts: ConnOpts,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut background: JoinSet<()>,
) -> anyhow::Result<()> {
    let http = Arc::new(Http::new(&opts));
    let graceful = GracefulShutdown::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let slots = ConnSlots::new(opts.max_connections, ctx.metrics.connections());
    let readiness = ctx.readiness.clone();
    let stopping = async move {
        shutdown.await;
        readiness.set_shutting_down();
        tracing::info!(
            "shutting down: /readyz is now not ready; draining in {:?}",
            opts.shutdown_delay
        );
        tokio::time::sleep(opts.shutdown_delay).await;
    };
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Over the cap: close at once, so the client fails fast instead of
                    // waiting in the backlog, and file descriptors stay available.
                    let Some(slot) = slots.try_take() else {
                        ctx.metrics.connection_refused();
                        tracing::debug!(%peer, "{} connections open; closing a new one", opts.max_connections);
                        drop(tcp);
                        continue;
                    };
                    conns.spawn(connection(
                        tcp,
                        peer,
                        slot,
                        acceptor.clone(),
                        http.clone(),
                        ctx.clone(),
                        graceful.watcher(),
                        stop_rx.clone(),
                        opts,
                    ));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = conns.len();
    match tokio::time::timeout(opts.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained {open} connections"),
        Err(_) => tracing::warn!(
            "drain cut short after {:?}; closing the remaining connections",
            opts.drain_timeout
        ),
    }
    conns.shutdown().await;
    background.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: ConnSlot,
    acceptor: TlsAcceptor,
    http: Arc<Http>,
    ctx: Arc<Ctx>,
    // Held until the connection ends: the drain waits for every watcher to be dropped.
    _drain: Watcher,
    mut stop: watch::Receiver<bool>,
    opts: ConnOpts,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(opts.tls_handshake_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let builder = if h2 { &http.h2 } else { &http.h1 };
    let activity = Activity::new();
    let service = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let busy = activity.begin();
            let ctx = ctx.clone();
            async move {
                let response = handle(&ctx, req).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // A connection must start a request within the header timeout (HTTP/1 enforces it per
    // request too; this also covers an HTTP/2 client that never sends one), and is closed
    // gracefully once it has had no request for the idle timeout: HTTP/2 keep-alive pings
    // keep a connection alive for the transport, not here.
    let mut closing = false;
    let mut idle_closed = false;
    let result = loop {
        let timeout = if activity.seen() {
            opts.idle_timeout
        } else {
            opts.header_read_timeout
        };
        // While a request runs there is no deadline: look again a little later.
        let deadline = activity.idle_deadline(timeout);
        let wake = deadline.unwrap_or_else(|| Instant::now() + timeout.min(Duration::from_secs(1)));
        tokio::select! {
            r = &mut conn => break r,
            stopped = stop.wait_for(|s| *s), if !closing => {
                drop(stopped);
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake.into()), if !closing => {
                // Looked at again: a request may have come and gone while this slept.
                let timeout = if activity.seen() { opts.idle_timeout } else { opts.header_read_timeout };
                if activity.idle_deadline(timeout).is_none_or(|d| d > Instant::now()) {
                    continue;
                }
                if !activity.seen() {
                    tracing::debug!(%peer, "no request within {timeout:?}; closing");
                    return;
                }
                tracing::debug!(%peer, "no request for {timeout:?}; closing");
                closing = true;
                idle_closed = true;
                conn.as_mut().graceful_shutdown();
            }
            // An idle connection whose client does not let it close (no request runs).
            () = tokio::time::sleep(IDLE_CLOSE_GRACE), if idle_closed => return,
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

enum Route {
    Inject,
    Validate,
    Healthz,
    Readyz,
    Metrics,
    Unknown,
}

fn route(path: &str) -> Route {
    match path {
        "/inject" => Route::Inject,
        "/validate" => Route::Validate,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        _ => Route::Unknown,
    }
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match route(req.uri().path()) {
        Route::Inject if req.method() == Method::POST => inject(ctx, req, Endpoint::Inject).await,
        Route::Validate if req.method() == Method::POST => inject(ctx, req, Endpoint::Validate).await,
        Route::Inject | Route::Validate => not_allowed("POST"),
        Route::Healthz | Route::Readyz if !get => not_allowed("GET, HEAD"),
        Route::Healthz => text(StatusCode::OK, "ok\n".into()),
        Route::Readyz => readyz(ctx),
        Route::Metrics | Route::Unknown => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves POST /inject, POST /validate, GET /healthz and GET /readyz\n".into(),
        ),
    }
}

/// The metrics listener's routes.
fn handle_metrics(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match route(req.uri().path()) {
        Route::Metrics | Route::Healthz | Route::Readyz if !get => not_allowed("GET, HEAD"),
        Route::Metrics => {
            let mut r = Response::new(Full::new(Bytes::from(ctx.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        Route::Healthz => text(StatusCode::OK, "ok\n".into()),
        Route::Readyz => readyz(ctx),
        Route::Inject | Route::Validate | Route::Unknown => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves GET /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

fn readyz(ctx: &Ctx) -> Response<Full<Bytes>> {
    match ctx.readiness.status() {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An AdmissionReview error with a non-200 status; HTTP/1 connections are closed after it
/// (the unread rest of the body makes them unusable anyway). `read` is what was read of
/// the body: the reply carries the request's uid when it shows one.
fn refusal(
    status: StatusCode,
    version: Version,
    read: &[u8],
    message: &str,
) -> Response<Full<Bytes>> {
    let mut r = json(status, Bytes::from(admission::error_reply(read, message)));
    if version < Version::HTTP_2 {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

enum ReadError {
    TooLarge,
    Body(hyper::Error),
    OverBudget(OverBudget),
}

/// The body as it is read. A body that arrives in one frame is not copied.
#[derive(Default)]
struct BodyBuf {
    first: Option<Bytes>,
    buf: Vec<u8>,
}

impl BodyBuf {
    /// What was read so far.
    fn read(&self) -> &[u8] {
        match &self.first {
            Some(f) => f,
            None => &self.buf,
        }
    }
    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(f) => f,
            None => Bytes::from(std::mem::take(&mut self.buf)),
        }
    }
}

/// Reads the body into `out`, at most [`MAX_BODY_BYTES`] of it, holding every byte it
/// keeps in `permit` first: a body with a `Content-Length` was reserved whole before this
/// is called; a streamed one reserves as its frames arrive.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    out: &mut BodyBuf,
    budget: &BodyBudget,
    permit: &mut BodyPermit,
) -> Result<(), ReadError> {
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len();
        if total > MAX_BODY_BYTES {
            return Err(ReadError::TooLarge);
        }
        if total > permit.bytes() {
            budget
                .reserve(permit, total, true)
                .await
                .map_err(ReadError::OverBudget)?;
        }
        match out.first.take() {
            None if out.buf.is_empty() => out.first = Some(data),
            None => out.buf.extend_from_slice(&data),
            Some(f) => {
                let cap = declared.map_or(0, |n| n as usize).max(total);
                out.buf.reserve(cap);
                out.buf.extend_from_slice(&f);
                out.buf.extend_from_slice(&data);
            }
        }
    }
    Ok(())
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

thread_local! {
    /// Patch scratch space of [`admission::review`], reused by every request this worker
    /// thread answers (the review never awaits, so the borrow never spans requests).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(16 * 1024));
}

/// The two admission endpoints: both read a bounded body under the request deadline.
#[derive(Clone, Copy)]
enum Endpoint {
    /// `/inject`: the mutating webhook (hot path: table load and splice only).
    Inject,
    /// `/validate`: the upgrade guards (cluster mode; may LIST from the API server).
    Validate,
}

async fn inject(ctx: &Ctx, req: Request<Incoming>, endpoint: Endpoint) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let version = req.version();
    let declared = content_length(&req);
    if let Some(n) = declared
        && n > MAX_BODY_BYTES as u64
    {
        ctx.metrics.observe_refused(start.elapsed());
        tracing::debug!("refused an /inject body of {n} bytes");
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            version,
            b"",
            &format!("request body of {n} bytes is over the limit of {MAX_BODY_BYTES} bytes"),
        );
    }
    // Bytes held for this request until its reply is built (dropped last).
    let mut permit = ctx.budget.permit();
    let mut read = BodyBuf::default();
    let work = async {
        if let Some(n) = declared {
            ctx.budget
                .reserve(&mut permit, n as usize, false)
                .await
                .map_err(ReadError::OverBudget)?;
        }
        read_body(
            req.into_body(),
            declared,
            &mut read,
            &ctx.budget,
            &mut permit,
        )
        .await?;
        let body = read.take();
        Ok::<_, ReadError>(match endpoint {
            Endpoint::Inject => answer(ctx, &body, start),
            Endpoint::Validate => guard(ctx, &body).await,
        })
    };
    let outcome = tokio::time::timeout(ctx.request_timeout, work).await;
    let refused = |status, message: &str| {
        ctx.metrics.observe_refused(start.elapsed());
        tracing::debug!("refused an /inject request: {message}");
        refusal(status, version, read.read(), message)
    };
    match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(ReadError::TooLarge)) => refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is over the limit of {MAX_BODY_BYTES} bytes"),
        ),
        Ok(Err(ReadError::Body(e))) => refused(
            StatusCode::BAD_REQUEST,
            &format!("reading the request body: {e}"),
        ),
        Ok(Err(ReadError::OverBudget(o))) => {
            let mut r = refused(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "meshrev is busy: {} request-body bytes would not fit in --max-inflight-body-bytes ({}) within {:?}; retry",
                    o.wanted,
                    ctx.budget.total(),
                    ctx.budget_wait,
                ),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(_) => refused(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "the request was not complete within {:?}",
                ctx.request_timeout
            ),
        ),
    }
}

/// Reviews one body against the current table and records it.
fn answer(ctx: &Ctx, body: &[u8], start: Instant) -> Response<Full<Bytes>> {
    if let Some(fixed) = &ctx.fixed_body {
        return json(StatusCode::OK, fixed.clone());
    }
    let table = ctx.store.load();
    let reply = SCRATCH.with_borrow_mut(|scratch| {
        let reply = admission::review(&table, body, scratch);
        if scratch.capacity() > 4 * 1024 * 1024 {
            *scratch = Vec::with_capacity(16 * 1024);
        }
        reply
    });
    ctx.metrics.observe_reply(&reply, start.elapsed());
    if let Some(message) = &reply.message {
        tracing::debug!(result = reply.result.as_str(), "{message}");
    }
    json(StatusCode::OK, Bytes::from(reply.body))
}

/// Answers one `/validate` review with the upgrade guards.
async fn guard(ctx: &Ctx, body: &[u8]) -> Response<Full<Bytes>> {
    let reply = match &ctx.validator {
        Some(cluster) => admission::validate(body, |needs| match needs {
            admission::validate::Needs::Config => cluster.config_view(),
            admission::validate::Needs::Usage => cluster.view(),
        }),
        None => admission::error_reply(
            body,
            "meshrev runs without a cluster (no --kubeconfig or --in-cluster): the upgrade guards have nothing to check against",
        ),
    };
    json(StatusCode::OK, Bytes::from(reply))
}

async fn serve_metrics(listener: TcpListener, ctx: Arc<Ctx>, header_read_timeout: Duration) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let builder = builder.clone();
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let response = handle_metrics(&ctx, &req);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                            tracing::debug!("metrics connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2M"), Ok(2_000_000));
        assert!(parse_bytes("64 furlongs").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999Gi").is_err());
    }

    #[test]
    fn open_file_limit_parses() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             unlimited            unlimited            processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(text), Some(1024));
        assert_eq!(
            parse_open_file_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
    }

    #[test]
    fn max_body_is_two_pods_and_room() {
        assert_eq!(MAX_BODY_BYTES, 6 * 1024 * 1024 + 64 * 1024);
    }
}

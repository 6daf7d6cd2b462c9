//! The webhook server, in parts:
//! - `tls_server`: the reusable TLS server (accept loop, ALPN, handshake and
//!   first-request deadlines, connection limits, graceful drain);
//! - `inject` and `validate`: the two admission services, each with its own metrics
//!   and deadline, reading bodies through `body` under one shared in-flight budget;
//! - `admin`: the plain-HTTP admin listener (`/metrics`, `/healthz`, `/readyz`);
//! - `tls` and `certs`: the serving certificate (swapped in place when its files
//!   change) and the self-signed CA;
//! - `table_file`: `--config TABLE`, polled and reloaded.
//!
//! [`serve_with`] assembles them from a plain [`ServeConfig`]. Process wiring (flags, the
//! kube client, signals, the controller, the Lease hand-off) is the runtime's (`crate::runtime`).
//!
//! Endpoints on the TLS listener (`--listen`):
//! - `POST /inject`: one AdmissionReview in, one out ([`crate::admission::review`]); the
//!   query string (`?timeout=10s` from kube-apiserver) is ignored;
//! - `POST /validate`: the upgrade guards (`crate::admission::validate`);
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 once a table is loaded and every readiness
//!   [`Gate`](crate::health::Gate) is ready, 503 (with the reasons) before that and while
//!   draining.
//!
//! On the admin listener (`--metrics-listen`, plain HTTP): `GET /metrics` (Prometheus
//! text), and the same `/healthz` and `/readyz`.
//!
//! # Reply contract of `/inject` and `/validate`
//! Every request whose body was read gets HTTP 200 with the AdmissionReview that
//! [`crate::admission`] wrote, also for malformed input (it then carries
//! `allowed: false`, the reason, and the request's uid whenever the body shows one). Before
//! that: a body over [`MAX_BODY_BYTES`] gets 413 (refused on its `Content-Length` before
//! reading any of it, and the streamed read is capped too), a body that fails to arrive
//! gets 400, a body that does not fit in the in-flight budget within 2 s gets 503 (with
//! `Retry-After: 1`), and a request not complete within its endpoint's deadline
//! (`--request-timeout` for `/inject`, `--validate-timeout` for `/validate`) gets 504 —
//! each with an AdmissionReview error body (`allowed: false`; the uid when the part of the
//! body that was read shows it). The API server treats a non-200 as a failed call and
//! applies the webhook's `failurePolicy`, like any other internal error.
//!
//! # Resource bounds
//! - `--max-inflight-body-bytes` (64 MiB): request-body bytes held at once across all
//!   connections (`limits::BodyBudget`); reserved from `Content-Length` before the body
//!   is read, or frame by frame without one; gauge `meshrev_inflight_body_bytes`.
//! - `--max-connections` (1024): beyond it a new connection is accepted and closed at once
//!   (`meshrev_connections`, `meshrev_connections_refused_total`).
//! - `--max-concurrent-streams` (32) per HTTP/2 connection. HTTP/2 flow-control windows:
//!   64 KiB per stream, and per connection room for all its streams' windows (2 MiB), so
//!   streams waiting for the budget never stall one that is being read.
//! - At most `limits::MAX_WAITING` (512) requests wait for the budget at once; more get
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

#![deny(missing_docs)]

mod admin;
mod body;
pub mod certs;
mod inject;
mod limits;
mod metrics;
mod respond;
mod table_file;
mod tls;
mod tls_server;
mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::health::{CONTROLLER_GATE, Readiness};
use crate::table::{self, Table, TableBuilder, TableStore};
use body::BodyLimits;
use inject::InjectService;
use limits::{BodyBudget, ConnSlots};
use respond::Reply;
use tls_server::{ConnOpts, Handler, Refused};
use validate::ValidateService;

pub use metrics::Metrics;
pub use tls::TlsError;

/// The largest admission request body accepted: a Pod may be up to 3 MiB (etcd's object
/// limit), an UPDATE review carries it twice (object and oldObject), plus room for the
/// envelope.
pub const MAX_BODY_BYTES: usize = 2 * 3 * 1024 * 1024 + 64 * 1024;

/// Default of `--max-inflight-body-bytes`: ten of the largest requests at once.
pub(crate) const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default of `--max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--max-concurrent-streams` (HTTP/2 streams per connection). The API server's
/// Go client opens another connection when a connection's streams are taken.
pub(crate) const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Default of `--idle-timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a request waits for room in the body budget before it is refused with 503.
pub(crate) const DEFAULT_BODY_BUDGET_WAIT: Duration = Duration::from_secs(2);

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

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// These PEM files, reloaded when their content changes.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A self-signed CA and serving certificate in this directory (`certs::ensure`),
    /// then served like [`TlsSource::Files`].
    SelfSigned {
        /// Holds `ca.crt`, `tls.crt` and `tls.key`.
        dir: PathBuf,
    },
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
    /// The TLS listener (both webhooks, `/healthz`, `/readyz`).
    pub(crate) listen: SocketAddr,
    /// `None`: no admin listener.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// The serving certificate.
    pub(crate) tls: TlsSource,
    /// The revision table.
    pub(crate) table: TableSource,
    /// How often the certificate files are read for changes.
    pub cert_poll_interval: Duration,
    /// How often a table file is read for changes.
    pub table_poll_interval: Duration,
    /// A new connection must start a request within this (HTTP/1: every request's
    /// headers).
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// Deadline of one `/inject` request, body read included.
    pub request_timeout: Duration,
    /// Deadline of one `/validate` request, body read and cluster reads included.
    pub validate_timeout: Duration,
    /// After the shutdown signal, keep accepting this long (with `/readyz` not ready).
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight requests when draining.
    pub drain_timeout: Duration,
    /// The controller's index the `/validate` guards judge with (cluster mode).
    pub(crate) validator: Option<crate::controller::ClusterView>,
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
    pub(crate) max_concurrent_streams: u32,
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
            validate_timeout: Duration::from_secs(10),
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

/// Why the server did not start. Nothing was served when [`serve_with`] returns one.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "--max-inflight-body-bytes {0} is below one largest request ({MAX_BODY_BYTES} bytes); use at least 7Mi"
    )]
    /// `max_inflight_body_bytes` cannot hold one largest request.
    BudgetTooSmall(usize),
    /// `max_connections` or `max_concurrent_streams` is 0.
    #[error("--max-connections and --max-concurrent-streams must be at least 1")]
    NoConnections,
    /// A metric did not register (a name registered twice).
    #[error("registering the metrics")]
    Metrics(#[from] prometheus::Error),
    /// The table file did not load.
    #[error(transparent)]
    TableFile(#[from] table_file::TableFileError),
    /// The self-signed certificates could not be reused or generated.
    #[error("the self-signed certificates in {}", dir.display())]
    SelfSigned {
        /// The certificate directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: certs::CertsError,
    },
    /// The serving pair did not load.
    #[error("the serving certificate {} and key {}", cert.display(), key.display())]
    Certificate {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The rustls configuration could not be built.
    #[error("the TLS configuration")]
    Tls(#[source] TlsError),
    /// A listener could not be bound.
    #[error("binding {addr}{what}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Which listener (empty: the TLS one).
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server task panicked.
    #[error("the server task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A running server.
pub struct ServerHandle {
    /// The bound HTTPS address.
    pub addr: SocketAddr,
    /// The bound admin address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The CA bundle that clients must trust (self-signed mode only).
    pub ca_path: Option<PathBuf>,
    /// The table being served; in cluster mode the controller publishes into it.
    pub store: Arc<TableStore>,
    /// The server's metrics (and, through them, its registry).
    pub metrics: Arc<Metrics>,
    /// The server's readiness; the controller registers its gates here.
    pub readiness: Arc<Readiness>,
    task: JoinHandle<()>,
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
    pub async fn wait(self) -> Result<(), ServeError> {
        Ok(self.task.await?)
    }
    /// Whether the server task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// An empty table (what the cluster mode serves until the controller publishes).
fn empty_table() -> Table {
    TableBuilder::new()
        .build_lenient([], [], std::collections::HashMap::new())
        .0
}

/// The TLS listener's routes: the two webhooks and the health endpoints. Owns the body
/// budget both webhooks reserve from.
struct Webhooks {
    inject: InjectService,
    validate: ValidateService,
    limits: BodyLimits,
    readiness: Arc<Readiness>,
}

impl Handler for Webhooks {
    async fn call(&self, req: Request<Incoming>) -> Reply {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = req.method() == Method::POST;
        match req.uri().path() {
            "/inject" if post => self.inject.call(&self.limits, req).await,
            "/validate" if post => self.validate.call(&self.limits, req).await,
            "/inject" | "/validate" => respond::not_allowed("POST"),
            "/healthz" | "/readyz" if !get => respond::not_allowed("GET, HEAD"),
            "/healthz" => respond::healthz(),
            "/readyz" => respond::readyz(&self.readiness),
            _ => respond::text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves POST /inject, POST /validate, GET /healthz and GET /readyz\n".into(),
            ),
        }
    }
}

/// Starts the server: loads the table and the certificate, binds both listeners, and
/// serves until `shutdown` resolves; then `/readyz` turns not ready, new connections are
/// refused after `shutdown_delay`, in-flight requests finish (at most `drain_timeout`),
/// and the server task ends. Errors (bad certificate, table or address) come back here,
/// before anything is served.
pub async fn serve_with(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle, ServeError> {
    if cfg.max_inflight_body_bytes < MAX_BODY_BYTES {
        return Err(ServeError::BudgetTooSmall(cfg.max_inflight_body_bytes));
    }
    if cfg.max_connections == 0 || cfg.max_concurrent_streams == 0 {
        return Err(ServeError::NoConnections);
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

    let (acceptor, ca_path, reload) = tls::load(
        cfg.tls,
        cfg.cert_poll_interval,
        metrics.tls_reloads.clone(),
        metrics.tls_cert_expiry.clone(),
    )?;
    background.spawn(reload);

    let bind = |addr: SocketAddr, what: &'static str| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, what, source })?;
        let bound = l
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, what, source })?;
        Ok::<_, ServeError>((l, bound))
    };
    let (listener, addr) = bind(cfg.listen, "").await?;
    let admin_listener = match cfg.metrics_listen {
        Some(a) => Some(bind(a, " (metrics)").await?),
        None => None,
    };
    let metrics_addr = admin_listener.as_ref().map(|(_, a)| *a);

    let webhooks = Arc::new(Webhooks {
        inject: InjectService {
            store: store.clone(),
            metrics: metrics.inject.clone(),
            deadline: cfg.request_timeout,
            fixed_body: cfg.fixed_inject_body,
        },
        validate: ValidateService {
            cluster: cfg.validator,
            metrics: metrics.validate.clone(),
            deadline: cfg.validate_timeout,
        },
        limits: BodyLimits {
            budget: BodyBudget::new(
                cfg.max_inflight_body_bytes,
                cfg.body_budget_wait,
                metrics.inflight_body_bytes.clone(),
                metrics.inflight_body_waiting.clone(),
            ),
            wait: cfg.body_budget_wait,
        },
        readiness: readiness.clone(),
    });
    let opts = ConnOpts {
        header_read_timeout: cfg.header_read_timeout,
        tls_handshake_timeout: cfg.tls_handshake_timeout,
        drain_timeout: cfg.drain_timeout,
        idle_timeout: cfg.idle_timeout,
        max_connections: cfg.max_connections,
        max_concurrent_streams: cfg.max_concurrent_streams,
    };
    if let Some((l, _)) = admin_listener {
        let admin = Arc::new(admin::Admin {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        });
        background.spawn(admin::serve(l, admin, opts.header_read_timeout));
    }
    // Stop accepting `shutdown_delay` after the shutdown signal, /readyz not ready from
    // the signal on (so the endpoints controller takes the pod out of rotation first).
    let stopping = {
        let readiness = readiness.clone();
        let delay = cfg.shutdown_delay;
        async move {
            shutdown.await;
            readiness.set_shutting_down();
            tracing::info!("shutting down: /readyz is now not ready; draining in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    };
    let slots = ConnSlots::new(cfg.max_connections, metrics.connections.clone());
    let refused = Refused(metrics.connections_refused.clone());
    let task = tokio::spawn(async move {
        tls_server::serve(listener, acceptor, webhooks, opts, slots, refused, stopping).await;
        background.shutdown().await;
    });
    Ok(ServerHandle {
        addr,
        metrics_addr,
        ca_path,
        store,
        metrics,
        readiness,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The admin listener (`--metrics-listen`, plain HTTP/1.1): `GET /metrics` (Prometheus
//! text), `GET /healthz` (200 while the process serves) and `GET /readyz` (200 once a
//! table is loaded and every readiness gate is open; 503 with the reasons before that and
//! while draining). It reads the registry and the readiness, and owns neither.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::metrics::{self, Metrics};
use super::respond::{self, Reply};
use crate::health::Readiness;

/// What the admin listener reads.
pub(super) struct Admin {
    pub(super) metrics: Arc<Metrics>,
    pub(super) readiness: Arc<Readiness>,
}

impl Admin {
    fn handle(&self, req: &Request<Incoming>) -> Reply {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match req.uri().path() {
            "/metrics" | "/healthz" | "/readyz" if !get => respond::not_allowed("GET, HEAD"),
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                r
            }
            "/healthz" => respond::healthz(),
            "/readyz" => respond::readyz(&self.readiness),
            _ => respond::text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves GET /metrics, /healthz and /readyz\n".into(),
            ),
        }
    }
}

/// Serves `listener` until the task is dropped; a connection must send its request
/// headers within `header_read_timeout`.
pub(super) async fn serve(listener: TcpListener, admin: Arc<Admin>, header_read_timeout: Duration) {
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
                    let admin = admin.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let response = admin.handle(&req);
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

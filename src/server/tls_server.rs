//! The reusable TLS server both webhooks ride on: the accept loop, the TLS handshake
//! (certificate from the [`super::tls::CertResolver`], ALPN `h2` then `http/1.1`), the
//! connection limits ([`super::limits`]), the first-request and idle deadlines, and the
//! graceful drain. What a request gets is up to the [`Handler`].
//!
//! Ownership: [`serve`] owns the listener and every connection task; the handler is
//! shared (`Arc`) by all connections and only read.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::limits::{Activity, ConnSlot, ConnSlots};
use super::respond::Reply;

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

/// Answers the requests of every connection.
pub(crate) trait Handler: Send + Sync + 'static {
    /// One request, one reply (never an error: failures are replies too).
    fn call(&self, req: Request<Incoming>) -> impl Future<Output = Reply> + Send;
}

/// Connection limits and deadlines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnOpts {
    /// A new connection must start a request within this (HTTP/1: every request's headers).
    pub(crate) header_read_timeout: Duration,
    pub(crate) tls_handshake_timeout: Duration,
    /// Longest wait for in-flight requests once stopped.
    pub(crate) drain_timeout: Duration,
    /// A connection without a request for this long is closed gracefully.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_streams: u32,
}

/// Counts connections closed at once because every slot was taken.
pub(crate) struct Refused(pub(crate) IntCounter);

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

/// Accepts TLS connections on `listener` and serves `handler` on them until `stop`
/// resolves; then closes the listener, asks every connection to finish (HTTP/1: after the
/// request in flight; HTTP/2: GOAWAY), waits at most `opts.drain_timeout` for them, and
/// closes what is left. `slots` caps the open connections: beyond it a connection is
/// accepted and closed at once, counted in `refused`.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    opts: ConnOpts,
    slots: ConnSlots,
    refused: Refused,
    stop: impl Future<Output = ()>,
) {
    let http = Arc::new(Http::new(&opts));
    let graceful = GracefulShutdown::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Over the cap: close at once, so the client fails fast instead of
                    // waiting in the backlog, and file descriptors stay available.
                    let Some(slot) = slots.try_take() else {
                        refused.0.inc();
                        tracing::debug!(%peer, "{} connections open; closing a new one", opts.max_connections);
                        drop(tcp);
                        continue;
                    };
                    conns.spawn(connection(
                        Accepted { tcp, peer, _slot: slot },
                        acceptor.clone(),
                        http.clone(),
                        handler.clone(),
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
}

/// An accepted connection and the slot it holds until it ends.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: ConnSlot,
}

async fn connection<H: Handler>(
    accepted: Accepted,
    acceptor: TlsAcceptor,
    http: Arc<Http>,
    handler: Arc<H>,
    // Held until the connection ends: the drain waits for every watcher to be dropped.
    _drain: Watcher,
    mut stop: watch::Receiver<bool>,
    opts: ConnOpts,
) {
    let Accepted { tcp, peer, _slot } = accepted;
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
            let handler = handler.clone();
            async move {
                let response = handler.call(req).await;
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

//! A bounded memory attack on a running `meshrev serve`, on loopback only (issue 10):
//! CONNS HTTP/2 connections × STREAMS concurrent `POST /inject` streams, each with a body
//! of BODY_MIB MiB (the fixture AdmissionReview padded with spaces, `Content-Length` set).
//! Every request has a 60 s deadline; the run stops after 120 s whatever happens.
//!
//! ```sh
//! target/debug/meshrev serve --listen 127.0.0.1:19443 --metrics-listen 127.0.0.1:19090 \
//!     --cert-dir /tmp/attack-certs & PID=$!
//! cargo run --example attack -- 127.0.0.1:19443 /tmp/attack-certs/ca.crt 2 256 6 $PID
//! ```
//!
//! Prints how requests ended (HTTP status, or the client-side error) and, given the
//! server's pid, its peak and current resident memory (`VmHWM`, `VmRSS` on Linux).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FIXTURE: &str = include_str!("../tests/fixtures/admission-review.json");

fn memory(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|e| format!("(no /proc/{pid}/status: {e})"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: attack ADDR CA_PEM [CONNS=2] [STREAMS=256] [BODY_MIB=6] [SERVER_PID]");
    }
    let addr: SocketAddr = args[0].parse().context("ADDR")?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: this runs against a local server only");
    }
    let num = |i: usize, default: usize| -> Result<usize> {
        args.get(i)
            .map_or(Ok(default), |s| s.parse().context("a number"))
    };
    let (conns, streams, mib) = (
        num(2, 2)?.min(16),
        num(3, 256)?.min(1024),
        num(4, 6)?.min(7),
    );
    let pid: Option<u32> = args.get(5).map(|s| s.parse()).transpose()?;

    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args[1]).context("CA_PEM")? {
        roots.add(c?)?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));

    let mut body = FIXTURE.as_bytes().to_vec();
    body.resize(mib * 1024 * 1024, b' ');
    let body = Bytes::from(body);
    println!(
        "attack: {conns} connections x {streams} streams x {mib} MiB = {} MiB in flight at most",
        conns * streams * mib
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_reset_streams(1024)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(conn);
        for _ in 0..streams {
            let mut sender = sender.clone();
            let body = body.clone();
            tasks.spawn(async move {
                let req = http::Request::post(format!("https://localhost:{}/inject", addr.port()))
                    .header("content-type", "application/json")
                    .header("content-length", body.len())
                    .body(Full::new(body))
                    .expect("a request");
                let sent = async {
                    let resp = sender.send_request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, hyper::Error>(status.as_u16().to_string())
                };
                match tokio::time::timeout(Duration::from_secs(60), sent).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => format!("error: {e}"),
                    Err(_) => "no answer in 60s".to_string(),
                }
            });
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(r) => *outcomes.entry(r.unwrap_or_else(|e| format!("panic: {e}"))).or_default() += 1,
                None => break,
            },
            () = &mut deadline => {
                *outcomes.entry("cut at 120s".into()).or_default() += tasks.len();
                tasks.abort_all();
                break;
            }
        }
    }
    println!("attack: done in {:.1}s", start.elapsed().as_secs_f64());
    for (outcome, n) in &outcomes {
        println!("  {n:4}  {outcome}");
    }
    if let Some(pid) = pid {
        println!("server memory: {}", memory(pid));
    }
    Ok(())
}

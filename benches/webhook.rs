//! Load bench of the webhook server: `/inject` over TLS, against the floor of the same
//! TLS + HTTP stack, in one run.
//!
//! ```text
//! cargo bench --bench webhook
//! MESHREV_BENCH_SECS=10 cargo bench --bench webhook     # longer windows
//! ```
//!
//! Two servers run in process on 127.0.0.1 (port 0, a fresh self-signed CA and serving
//! certificate in a temporary directory), both with the embedded table where namespace
//! `default` is labelled `istio-injection: enabled`:
//! - `inject`: the real server; the request is the fixture AdmissionReview (a typical pod
//!   CREATE in `default`), which it injects;
//! - `floor`: the same server with [`ServeConfig::fixed_inject_body`] set to the bytes of a
//!   real inject reply (fetched once first, so both reply with bodies of equal length): it
//!   reads the body and answers without reviewing — TLS + HTTP + body read alone.
//!
//! For each protocol and concurrency N (1, 16, 64): HTTP/2 with N concurrent streams on ONE
//! connection (how kube-apiserver calls a webhook on loopback), and HTTP/1.1 with N
//! keep-alive connections, one request in flight on each (a Service URL). Each cell is
//! measured in rounds that alternate inject and floor (which goes first alternates too, so
//! a change in background load weighs on both alike); a round opens its connections, runs
//! a warmup, then a measured window, and stops by itself at the end of the window or after
//! `MESHREV_BENCH_MAX_REQUESTS` requests; the rounds' samples are pooled. A response counts when it is HTTP 200 with a body
//! of the expected length; anything else is an error, counted and printed (and the exit
//! status is then 1).
//!
//! The servers run on their own tokio runtime (one worker thread) and the load generator on
//! another; with two or more cores each is pinned to one core (the servers on the first
//! core the process may use, the load generator on the second), so the server's core does
//! nothing but serve. Absolute figures still depend on the machine and on whatever else
//! runs on it: only the inject/floor ratios of one run are meaningful. Each round yields a
//! ratio (inject req/s over the floor's, measured back to back); a cell reports every
//! round's ratio and their median, and the CPU time the server threads used per request in
//! the measured window (from `/proc/self/task/<tid>/schedstat`), inject and floor.
//!
//! Three requests: `typical`, the fixture (a 3-container pod whose `reviews` container has
//! httpGet liveness and readiness probes and whose annotations ask for Prometheus
//! scraping: the reply is checked to carry the probe rewrite and the Prometheus merge)
//! compacted as kube-apiserver sends it (Go's `encoding/json` writes no whitespace), in
//! every cell; `env2000`, the same pod with 2000 env vars on its first container
//! (istio#34799), and `pretty`, the fixture file as it is (indented, 60 % larger), under h2
//! 1 conn × 64 only. Each has its own floor, answering a reply of its length.
//!
//! Environment: `MESHREV_BENCH_SECS` (measured time per cell and server, split over the
//! rounds; default 3), `MESHREV_BENCH_ROUNDS` (default 3), `MESHREV_BENCH_WARMUP_SECS` (per
//! round, default 0.5), `MESHREV_BENCH_MAX_REQUESTS` (per round, default 5,000,000),
//! `MESHREV_BENCH_PIN` (`0`: no pinning), `MESHREV_BENCH_ONLY` (comma-separated cell names
//! as printed, e.g. `h2-64,env2000-h2-64`: run only those). Arguments are ignored except `--bench` (which cargo bench passes):
//! without it and without `MESHREV_BENCH_SECS` (e.g. under `cargo test --benches`) the run
//! is a short smoke test. `--list` prints the one bench name.

#[path = "../tests/support/tls_client.rs"]
mod tls_client;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshrev::server::{ServeConfig, TableSource};
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

use tls_client::{FIXTURE, Proto, TestServer, TlsClient};

const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// A request not answered within this counts as an error (and the loop moves on).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept per cell (all errors are counted).
const KEPT_ERRORS: usize = 5;

struct Settings {
    /// Pin the servers to one core and the load generator to another.
    pin: bool,
    /// Run only the cells of these names.
    only: Option<Vec<String>>,
    /// The measured window of one round.
    window: Duration,
    rounds: u32,
    warmup: Duration,
    max_requests: u64,
    smoke: bool,
}

fn env_secs(name: &str) -> Result<Option<Duration>> {
    match std::env::var(name) {
        Ok(v) => {
            let secs: f64 = v
                .trim()
                .parse()
                .with_context(|| format!("{name}={v:?} is not a number of seconds"))?;
            let d = Duration::try_from_secs_f64(secs).with_context(|| format!("{name}={v:?}"))?;
            Ok(Some(d))
        }
        Err(_) => Ok(None),
    }
}

impl Settings {
    fn from_env(bench_mode: bool) -> Result<Settings> {
        let window = env_secs("MESHREV_BENCH_SECS")?;
        let smoke = !bench_mode && window.is_none();
        let max_requests = match std::env::var("MESHREV_BENCH_MAX_REQUESTS") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("MESHREV_BENCH_MAX_REQUESTS={v:?}"))?,
            Err(_) => 5_000_000,
        };
        let (default_window, default_warmup) = if smoke {
            (Duration::from_millis(200), Duration::from_millis(50))
        } else {
            (Duration::from_secs(3), Duration::from_millis(500))
        };
        let window = window.unwrap_or(default_window);
        if window.is_zero() {
            bail!("MESHREV_BENCH_SECS must be above 0");
        }
        let rounds: u32 = match std::env::var("MESHREV_BENCH_ROUNDS") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("MESHREV_BENCH_ROUNDS={v:?}"))?,
            Err(_) => 3,
        };
        let rounds = rounds.max(1);
        let window = window / rounds;
        let pin = std::env::var("MESHREV_BENCH_PIN").map_or(true, |v| v.trim() != "0");
        let only = std::env::var("MESHREV_BENCH_ONLY").ok().map(|v| {
            v.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        });
        Ok(Settings {
            pin,
            only,
            window,
            warmup: env_secs("MESHREV_BENCH_WARMUP_SECS")?.unwrap_or(default_warmup),
            max_requests: max_requests.max(1),
            smoke,
            rounds,
        })
    }
}

/// What one cell (protocol, N, server) measured.
#[derive(Default)]
struct Stats {
    /// Latencies (ns) of the good responses that completed inside the window, sorted.
    latencies: Vec<u64>,
    /// The measured window (shorter than asked when the request cap was hit).
    window: Duration,
    errors: u64,
    error_samples: Vec<String>,
    /// CPU time of the server threads during the measured window.
    server_cpu: Duration,
    /// Each round's (req/s, server CPU per request in µs, server threads' CPU over the window).
    rounds: Vec<(f64, f64, f64)>,
}

impl Stats {
    /// Pools another round's samples into these (sorted again by [`Stats::finish`]).
    fn add(&mut self, other: Stats) {
        let n = other.latencies.len().max(1) as f64;
        self.rounds.push((
            other.rate(),
            other.server_cpu.as_secs_f64() * 1e6 / n,
            other.server_cpu.as_secs_f64() / other.window.as_secs_f64(),
        ));
        self.latencies.extend_from_slice(&other.latencies);
        self.window += other.window;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < KEPT_ERRORS {
                self.error_samples.push(e);
            }
        }
    }
    fn finish(&mut self) {
        self.latencies.sort_unstable();
    }
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }
    fn percentile(&self, p: usize) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = (self.latencies.len() - 1) * p / 100;
        Duration::from_nanos(self.latencies[i])
    }
}

/// One worker's result.
#[derive(Default)]
struct Partial {
    latencies: Vec<u64>,
    last_done: Option<Instant>,
    capped: bool,
    errors: u64,
    error_samples: Vec<String>,
}

impl Partial {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < KEPT_ERRORS {
            self.error_samples.push(e.to_string());
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn h1_connect(client: &TlsClient) -> Result<Sender> {
    let tls = client.connect(&[Proto::H1.alpn()]).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(Sender::H1(sender))
}

async fn h2_connect(client: &TlsClient) -> Result<http2::SendRequest<Full<Bytes>>> {
    let tls = client.connect(&[Proto::H2.alpn()]).await?;
    if tls.get_ref().1.alpn_protocol() != Some(Proto::H2.alpn()) {
        bail!("the server did not negotiate h2");
    }
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The request kube-apiserver would send (it appends `?timeout=`).
fn request(proto: Proto, port: u16, body: &Bytes) -> Request<Full<Bytes>> {
    let b = Request::post(match proto {
        Proto::H1 => "/inject?timeout=10s".to_string(),
        Proto::H2 => format!("https://localhost:{port}/inject?timeout=10s"),
    })
    .version(proto.version())
    .header(http::header::CONTENT_TYPE, "application/json")
    .header(http::header::ACCEPT, "application/json");
    let b = match proto {
        Proto::H1 => b.header(http::header::HOST, format!("localhost:{port}")),
        Proto::H2 => b,
    };
    b.body(Full::new(body.clone())).expect("a valid request")
}

/// One request; Ok when the reply is 200 with a body of `expect_len` bytes.
async fn round_trip(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    expect_len: usize,
) -> Result<()> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    if body.len() != expect_len {
        bail!("a body of {} bytes, expected {expect_len}", body.len());
    }
    Ok(())
}

/// Drives `/inject` of the server behind `client` with N concurrent requests of `proto`.
async fn measure(
    client: &TlsClient,
    proto: Proto,
    n: usize,
    body: &Bytes,
    expect_len: usize,
    s: &Settings,
) -> Result<Stats> {
    // Connections are opened (TLS handshakes done) before the clock starts.
    let mut senders = Vec::with_capacity(n);
    match proto {
        Proto::H1 => {
            for _ in 0..n {
                senders.push(h1_connect(client).await?);
            }
        }
        Proto::H2 => {
            let shared = h2_connect(client).await?;
            // One request first: by its answer the server's SETTINGS (its stream limit)
            // have arrived, so the burst below is queued by the client instead of opening
            // streams the server must refuse (kube-apiserver's Go client retries those).
            let mut first = Sender::H2(shared.clone());
            round_trip(
                &mut first,
                request(proto, client.addr.port(), body),
                expect_len,
            )
            .await
            .context("the first h2 request")?;
            senders.extend((0..n).map(|_| Sender::H2(shared.clone())));
        }
    }
    let measure_start = Instant::now() + s.warmup;
    let end = measure_start + s.window;
    let attempts = Arc::new(AtomicU64::new(0));
    let max = s.max_requests;
    let port = client.addr.port();
    let expected_per_worker = (s.window.as_secs_f64() * 50_000.0 / n as f64) as usize;
    // The server threads' CPU time over the measured window, read at its edges.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_start.into()).await;
        let before = server_cpu();
        tokio::time::sleep_until(end.into()).await;
        server_cpu().saturating_sub(before)
    });
    let mut workers = JoinSet::new();
    for mut sender in senders {
        let attempts = attempts.clone();
        let body = body.clone();
        let client = client.clone();
        workers.spawn(async move {
            let mut out = Partial {
                latencies: Vec::with_capacity(expected_per_worker.min(1 << 20)),
                ..Partial::default()
            };
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if attempts.fetch_add(1, Ordering::Relaxed) >= max {
                    out.capped = true;
                    break;
                }
                let r = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    round_trip(&mut sender, request(proto, port, &body), expect_len),
                )
                .await;
                let t1 = Instant::now();
                let failed = match r {
                    Ok(Ok(())) => {
                        if t1 >= measure_start && t1 < end {
                            out.latencies.push((t1 - t0).as_nanos() as u64);
                            out.last_done = Some(t1);
                        }
                        false
                    }
                    Ok(Err(e)) => {
                        out.error(format!("{e:#}"));
                        true
                    }
                    Err(_) => {
                        out.error(format!("no reply within {REQUEST_TIMEOUT:?}"));
                        true
                    }
                };
                if failed {
                    // Do not spin on a broken connection; an HTTP/1 one is replaced.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if matches!(sender, Sender::H1(_)) {
                        match h1_connect(&client).await {
                            Ok(fresh) => sender = fresh,
                            Err(e) => out.error(format!("reconnecting: {e:#}")),
                        }
                    }
                }
            }
            out
        });
    }
    let mut stats = Stats::default();
    let mut capped = false;
    let mut last_done: Option<Instant> = None;
    while let Some(joined) = workers.join_next().await {
        let p = joined.context("a load worker panicked")?;
        stats.latencies.extend_from_slice(&p.latencies);
        stats.errors += p.errors;
        for e in p.error_samples {
            if stats.error_samples.len() < KEPT_ERRORS {
                stats.error_samples.push(e);
            }
        }
        capped |= p.capped;
        last_done = last_done.max(p.last_done);
    }
    stats.server_cpu = cpu.await.context("the CPU sampler panicked")?;
    stats.latencies.sort_unstable();
    let window_end = match (capped, last_done) {
        (true, Some(t)) => t,
        _ => end,
    };
    stats.window = window_end
        .saturating_duration_since(measure_start)
        .max(Duration::from_micros(1));
    Ok(stats)
}

/// The thread ids of the servers' runtime (its worker and blocking threads), recorded as
/// each starts.
static SERVER_TIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The calling thread's id (from `/proc/thread-self`, a link to `<pid>/task/<tid>`).
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time a thread of this process has used: `schedstat` (ns) when the kernel has it,
/// else `stat`'s utime + stime (clock ticks, taken as 100 Hz).
fn thread_cpu(tid: u32) -> Duration {
    let dir = format!("/proc/self/task/{tid}");
    if let Some(ns) = std::fs::read_to_string(format!("{dir}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Duration::from_nanos(ns);
    }
    let ticks = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|t| {
            // Fields after the `(comm)`, which may hold spaces: utime and stime are the
            // 12th and 13th of them.
            let rest = &t[t.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time used so far by the servers' threads.
fn server_cpu() -> Duration {
    let tids = SERVER_TIDS
        .lock()
        .expect("the tid list is never poisoned")
        .clone();
    tids.into_iter().map(thread_cpu).sum()
}

/// `nproc`, the CPU model and the load average: absolute figures depend on them.
fn machine() -> String {
    // The machine's processors (this thread is pinned to one, so not available_parallelism).
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "nproc={nproc}, model name: {model}, arch {}, loadavg {load}",
        std::env::consts::ARCH
    )
}

fn fmt_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::H1 => "http/1.1",
        Proto::H2 => "h2",
    }
}

fn layout(p: Proto, n: usize) -> String {
    match p {
        Proto::H1 => format!("{n} conn × 1"),
        Proto::H2 => format!("1 conn × {n}"),
    }
}

async fn stop(server: TestServer, what: &str) {
    let mut server = server;
    if let Err(e) = server.stop_within(Duration::from_secs(10)).await {
        eprintln!("warning: the {what} server did not stop cleanly: {e:#}");
    }
}

/// `json` as kube-apiserver sends it: compact (Go's `encoding/json`), the keys in their
/// order. (Whitespace outside strings removed; the result must read as the same value.)
fn compact(json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    let (a, b): (Value, Value) = (
        serde_json::from_str(json).expect("the fixture must be JSON"),
        serde_json::from_slice(&out).expect("compact JSON must stay JSON"),
    );
    assert_eq!(a, b, "compacting must not change the fixture");
    Bytes::from(out)
}

/// The fixture with 2000 env vars on its first container (istio#34799).
fn env2000() -> Bytes {
    let mut v = tls_client::fixture();
    let env: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"name": format!("VARIABLE_NUMBER_{i}"),
                   "value": format!("value-{i}-abcdefghijklmnopqrstuvwxyz")})
        })
        .collect();
    v["request"]["object"]["spec"]["containers"][0]["env"] = Value::Array(env);
    Bytes::from(serde_json::to_vec(&v).expect("a Value serializes"))
}

/// A request body, the inject server's reply to it, and a floor answering that reply.
struct Workload {
    name: &'static str,
    body: Bytes,
    reply_len: usize,
    floor: TestServer,
}

/// Starts a server on the servers' runtime.
async fn start_on(
    servers: &Handle,
    tweak: impl FnOnce(&mut ServeConfig) + Send + 'static,
) -> Result<TestServer> {
    let table = TableSource::Table(tls_client::test_table());
    servers
        .spawn(tls_client::start(table, tweak))
        .await
        .context("starting a server")
}

/// Sends `body` to the real server once; the reply must be an injection, and for the
/// typical pod one that rewrites the probes and merges the Prometheus annotations. Starts
/// the floor that answers the same bytes.
async fn workload(
    servers: &Handle,
    inject: &TestServer,
    name: &'static str,
    body: Bytes,
) -> Result<Workload> {
    let reply = inject
        .client
        .post(Proto::H1, "/inject", body.clone())
        .await
        .with_context(|| format!("the first /inject of {name}"))?;
    if reply.status != StatusCode::OK {
        bail!(
            "the first /inject of {name} answered {}: {}",
            reply.status,
            reply.text()
        );
    }
    let v = reply.json();
    let Some(patch) = v["response"]["patch"].as_str() else {
        bail!("{name} was not injected: {}", reply.text());
    };
    if v["response"]["allowed"] != true {
        bail!("{name} was not allowed: {}", reply.text());
    }
    let patch = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, patch)
        .context("the patch is not base64")?;
    let patch = String::from_utf8_lossy(&patch);
    for (what, needle) in [
        ("the probe rewrite", "/app-health/"),
        ("the Prometheus merge", "ISTIO_PROMETHEUS_ANNOTATIONS"),
    ] {
        if !patch.contains(needle) {
            bail!("the reply to {name} lacks {what} ({needle:?} is not in the patch)");
        }
    }
    let fixed = reply.body.clone();
    let floor = start_on(servers, move |cfg: &mut ServeConfig| {
        cfg.fixed_inject_body = Some(fixed);
    })
    .await?;
    let check = floor
        .client
        .post(Proto::H2, "/inject", body.clone())
        .await?;
    if check.status != StatusCode::OK || check.body != reply.body {
        bail!(
            "the {name} floor server answered {} ({} bytes)",
            check.status,
            check.body.len()
        );
    }
    Ok(Workload {
        name,
        reply_len: reply.body.len(),
        body,
        floor,
    })
}

/// One measured configuration.
struct Cell {
    /// Its name for `MESHREV_BENCH_ONLY`, e.g. `h2-64` or `env2000-h2-64`.
    name: String,
    workload: usize,
    proto: Proto,
    n: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

async fn run(s: Settings, servers: Handle, pinned: String) -> Result<u64> {
    let inject = start_on(&servers, |_: &mut ServeConfig| {}).await?;
    let workloads = vec![
        workload(&servers, &inject, "typical", compact(FIXTURE)).await?,
        workload(&servers, &inject, "env2000", env2000()).await?,
        workload(
            &servers,
            &inject,
            "pretty",
            Bytes::from_static(FIXTURE.as_bytes()),
        )
        .await?,
    ];

    let tls = workloads[0]
        .floor
        .client
        .connect(&[Proto::H2.alpn()])
        .await?;
    let session = tls.get_ref().1;
    let negotiated = format!(
        "{:?}, {:?}",
        session.protocol_version().context("no TLS version")?,
        session
            .negotiated_cipher_suite()
            .context("no cipher suite")?
            .suite()
    );
    drop(tls);

    println!("meshrev webhook load bench");
    println!("machine: {}", machine());
    println!(
        "{}; servers on one tokio runtime (1 worker), load generator on another; {pinned}; \
         127.0.0.1, {negotiated} (rustls/ring)",
        if cfg!(debug_assertions) {
            "DEBUG build (figures meaningless)"
        } else {
            "release build"
        },
    );
    for w in &workloads {
        println!(
            "request {}: POST /inject, {} B AdmissionReview; reply {} B (floor: the same bytes, fixed)",
            w.name,
            w.body.len(),
            w.reply_len
        );
    }
    println!(
        "  (typical: tests/fixtures/admission-review.json compacted, as kube-apiserver sends it, \
         whose reply rewrites probes and merges Prometheus annotations; env2000: the same with \
         2000 env vars on one container; pretty: the fixture as it is, indented)"
    );
    println!(
        "per cell and server: {} rounds (inject and floor alternating) of {:.1} s warmup + \
         {:.2} s measured: {:.1} s measured in all (cap {} requests per round){}",
        s.rounds,
        s.warmup.as_secs_f64(),
        s.window.as_secs_f64(),
        (s.window * s.rounds).as_secs_f64(),
        s.max_requests,
        if s.smoke {
            "; SMOKE RUN (no --bench): figures meaningless"
        } else {
            ""
        }
    );
    println!("absolute figures are noisy; compare only the ratios of one run\n");

    let mut cells = Vec::new();
    for proto in [Proto::H2, Proto::H1] {
        for n in CONCURRENCY {
            let p = match proto {
                Proto::H1 => "h1",
                Proto::H2 => "h2",
            };
            cells.push(Cell {
                name: format!("{p}-{n}"),
                workload: 0,
                proto,
                n,
            });
        }
    }
    cells.push(Cell {
        name: "env2000-h2-64".into(),
        workload: 1,
        proto: Proto::H2,
        n: 64,
    });
    cells.push(Cell {
        name: "pretty-h2-64".into(),
        workload: 2,
        proto: Proto::H2,
        n: 64,
    });
    if let Some(only) = &s.only {
        cells.retain(|c| only.contains(&c.name));
        if cells.is_empty() {
            bail!("MESHREV_BENCH_ONLY={only:?} names no cell");
        }
    }

    let mut rows = Vec::new();
    let mut total_errors = 0;
    for cell in &cells {
        let w = &workloads[cell.workload];
        let (proto, n) = (cell.proto, cell.n);
        // Rounds alternate which server goes first, so that a change in the machine's
        // background load weighs on both alike.
        let (mut i, mut f) = (Stats::default(), Stats::default());
        for round in 0..s.rounds {
            let mut pair = [(&inject, &mut i), (&w.floor, &mut f)];
            if round % 2 == 1 {
                pair.reverse();
            }
            for (server, stats) in pair {
                stats.add(measure(&server.client, proto, n, &w.body, w.reply_len, &s).await?);
            }
        }
        i.finish();
        f.finish();
        for (what, st) in [("inject", &i), ("floor", &f)] {
            total_errors += st.errors;
            if st.errors > 0 {
                eprintln!(
                    "errors: {} {} {} {what}: {} (e.g. {:?})",
                    w.name,
                    proto_name(proto),
                    layout(proto, n),
                    st.errors,
                    st.error_samples
                );
            }
        }
        rows.push((cell, w.name, i, f));
    }

    println!(
        "{:<15} {:<8} {:<11} {:<7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "cell",
        "proto",
        "N",
        "server",
        "req/s",
        "p50",
        "p99",
        "requests",
        "errors",
        "cpu/req",
        "core"
    );
    for (cell, _, i, f) in &rows {
        for (what, st) in [("inject", i), ("floor", f)] {
            let cpu = median(st.rounds.iter().map(|r| r.1).collect());
            let util = median(st.rounds.iter().map(|r| r.2).collect());
            println!(
                "{:<15} {:<8} {:<11} {:<7} {:>9.0} {:>9} {:>9} {:>9} {:>8} {:>6.1} µs {:>5.0}%",
                cell.name,
                proto_name(cell.proto),
                layout(cell.proto, cell.n),
                what,
                st.rate(),
                fmt_latency(st.percentile(50)),
                fmt_latency(st.percentile(99)),
                st.latencies.len(),
                st.errors,
                cpu,
                util * 100.0
            );
        }
    }
    println!(
        "\n(cpu/req: CPU time of the server threads per answered request in the measured windows, \
         median of the rounds; core: that CPU time over the window, median of the rounds)"
    );
    println!(
        "\nratio inject/floor (req/s per round, back to back; median of the rounds; pooled p50, p99)"
    );
    println!(
        "{:<15} {:<36} {:>7} {:>7} {:>7} {:>17}",
        "cell", "req/s ratio per round", "median", "p50", "p99", "cpu/req inj/floor"
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    for (cell, _, i, f) in &rows {
        let per_round: Vec<f64> = i
            .rounds
            .iter()
            .zip(&f.rounds)
            .map(|(a, b)| ratio(a.0, b.0))
            .collect();
        let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<15} {:<36} {:>7.2} {:>7.2} {:>7.2} {:>17}",
            cell.name,
            shown.join(" "),
            median(per_round.clone()),
            ratio(
                i.percentile(50).as_secs_f64(),
                f.percentile(50).as_secs_f64()
            ),
            ratio(
                i.percentile(99).as_secs_f64(),
                f.percentile(99).as_secs_f64()
            ),
            format!(
                "{:.1}/{:.1} µs",
                median(i.rounds.iter().map(|r| r.1).collect()),
                median(f.rounds.iter().map(|r| r.1).collect())
            ),
        );
    }
    println!("\nerrors (non-200, wrong body length, transport, timeouts): {total_errors}");

    stop(inject, "inject").await;
    for w in workloads {
        stop(w.floor, "floor").await;
    }
    Ok(total_errors)
}

/// Pins the calling thread to `core` (when pinning).
fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        eprintln!("warning: could not pin a thread to core {}", core.id);
    }
}

fn main() {
    // cargo bench passes `--bench` (and any filter after `--`); the rest is ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("webhook: bench");
        return;
    }
    let bench_mode = args.iter().any(|a| a == "--bench");
    let settings = match Settings::from_env(bench_mode) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webhook bench: {e:#}");
            std::process::exit(2);
        }
    };
    // The servers on the first core this process may use, the load generator on the second.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (server_core, client_core, pinned) = if settings.pin && cores.len() >= 2 {
        (
            Some(cores[0]),
            Some(cores[1]),
            format!(
                "servers pinned to core {}, load generator to core {}",
                cores[0].id, cores[1].id
            ),
        )
    } else {
        (
            None,
            None,
            format!(
                "NOT pinned ({})",
                if settings.pin {
                    "fewer than 2 cores"
                } else {
                    "MESHREV_BENCH_PIN=0"
                }
            ),
        )
    };
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("meshrev-server")
        .on_thread_start(move || {
            pin(server_core);
            if let Some(tid) = current_tid() {
                SERVER_TIDS
                    .lock()
                    .expect("the tid list is never poisoned")
                    .push(tid);
            }
        })
        .enable_all()
        .build()
        .expect("the servers' tokio runtime");
    // The load generator: this thread (which runs `run`) and one worker.
    pin(client_core);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .on_thread_start(move || pin(client_core))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = rt.block_on(run(settings, servers.handle().clone(), pinned));
    drop(rt);
    drop(servers);
    match outcome {
        Ok(0) => {}
        Ok(errors) => {
            eprintln!("webhook bench: {errors} requests failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("webhook bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

//! The flags of `meshrev serve` (clap), turned into the plain [`ServeConfig`] the server
//! takes. Clap stays here: nothing under [`crate::server`] sees these types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::{
    DEFAULT_BODY_BUDGET_WAIT, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, ServeConfig,
    TableSource, TlsSource,
};

/// `meshrev serve`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// Address of the HTTPS webhook listener.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9443")]
    pub(crate) listen: SocketAddr,
    /// Address of the plain-HTTP metrics listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9090")]
    pub(crate) metrics_listen: SocketAddr,
    /// Without --tls-cert-file: directory of the self-signed CA and serving certificate
    /// (ca.crt, tls.crt, tls.key), generated when missing or invalid, reused otherwise.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub(crate) cert_dir: PathBuf,
    /// Serving certificate (PEM chain, leaf first); reloaded when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) cert_poll_interval: Duration,
    /// Serve this table file (MeshRevision, RevisionTag and Namespace objects) instead of
    /// the embedded default; reloaded when it changes.
    #[arg(long, value_name = "TABLE", conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub(crate) config: Option<PathBuf>,
    /// How often the table file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) config_poll_interval: Duration,
    /// Build the table from a cluster reached with this kubeconfig.
    #[arg(long, value_name = "PATH", conflicts_with = "in_cluster")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Build the table from the cluster this pod runs in (service account).
    #[arg(long)]
    pub(crate) in_cluster: bool,
    /// Close HTTP/1 connections whose request headers take longer than this (also the
    /// time a new connection has to send its first request).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_read_timeout: Duration,
    /// Close connections whose TLS handshake takes longer than this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) tls_handshake_timeout: Duration,
    /// Deadline of one /inject request, body read included (504 after it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,
    /// Deadline of one /validate request, body read and cluster reads included (504 after
    /// it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) validate_timeout: Duration,
    /// On SIGTERM, keep accepting (while /readyz says not ready) this long before draining.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub(crate) shutdown_delay: Duration,
    /// Longest wait for in-flight requests when draining.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Request-body bytes held at once across all connections (e.g. 64Mi; at least one
    /// largest request, 6Mi + 64Ki). A request waits up to 2s for room, then gets 503.
    #[arg(long, value_name = "BYTES", default_value = "64Mi", value_parser = parse_bytes)]
    pub(crate) max_inflight_body_bytes: usize,
    /// Open connections on the webhook listener; beyond it new connections are accepted
    /// and closed at once. Keep it below the file-descriptor limit (ulimit -n).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub(crate) max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per connection.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub(crate) max_concurrent_streams: u32,
    /// Close a connection after this long without a request (HTTP/2 pings do not count).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,
}

/// Parses a byte count: `67108864`, `64Mi`, `64MiB`, `512Ki`, `1Gi` (also `k`, `M`, `G`
/// as powers of 1000).
fn parse_bytes(s: &str) -> Result<usize, String> {
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

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
/// The one duration grammar of the crate ([`crate::core::validate::duration`]), for clap.
fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::core::validate::duration(s).map_err(|e| e.to_string())
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub(crate) fn to_config(&self) -> ServeConfig {
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
            validate_timeout: self.validate_timeout,
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
    fn flags_make_the_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::parse_from(["meshrev", "--kubeconfig", "k", "--validate-timeout", "3s"]);
        let cfg = cli.serve.to_config();
        assert!(matches!(cfg.table, TableSource::Controller));
        assert_eq!(cfg.validate_timeout, Duration::from_secs(3));
        assert_eq!(cfg.request_timeout, Duration::from_secs(10));
        let cli = Cli::parse_from(["meshrev", "--tls-cert-file", "c", "--tls-key-file", "k"]);
        assert!(matches!(cli.serve.to_config().tls, TlsSource::Files { .. }));
    }
}

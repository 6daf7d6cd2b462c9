//! TLS: the rustls server configuration, and the serving certificate swapped in place when
//! its files change.
//!
//! One [`rustls::ServerConfig`] lives for the whole run; its certificate comes from a
//! [`CertResolver`] whose [`CertifiedKey`] is replaced atomically (arc-swap) by
//! [`watch_files`]. The PEM files are read at startup and then only by that poller, never
//! per connection. Kubernetes Secret volumes change by a symlink swap of the whole
//! directory, which file-level inotify misses, so the poller reads the files' content every
//! interval and acts when it differs from what it last saw.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::metrics::Metrics;

/// The ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of the server (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain (leaf first) and its private key, and checks that they
/// belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("certificate file: bad PEM")?;
    if chain.is_empty() {
        bail!("certificate file holds no CERTIFICATE block");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("key file: no usable private key")?;
    CertifiedKey::from_der(chain, key, provider)
        .context("the certificate and the private key do not form a usable pair")
}

/// The server's certificate, replaceable while connections are being accepted.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(key),
        }
    }
    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
    /// The leaf certificate being served (DER).
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3, no client auth, ALPN `h2` then `http/1.1`,
/// the certificate from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Reads the serving pair from files.
pub fn load_files(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    Ok((c, k))
}

/// What the poller last saw in the files.
#[derive(PartialEq, Eq)]
enum Seen {
    Content(Vec<u8>, Vec<u8>),
    Unreadable,
}

/// Polls `cert` and `key` every `interval`; when their content changes, loads the new pair
/// and swaps it into `resolver`, counting `meshrev_tls_reloads_total{result}`. A pair that
/// does not load (or files that cannot be read) is counted once as a failure and the
/// previous certificate stays in service. `initial` is the content being served already.
pub async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    initial: (Vec<u8>, Vec<u8>),
    interval: Duration,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
) {
    let provider = provider();
    let mut seen = Seen::Content(initial.0, initial.1);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (c, k) = (cert.clone(), key.clone());
        let read = tokio::task::spawn_blocking(move || load_files(&c, &k)).await;
        let now = match read {
            Ok(Ok((c, k))) => Seen::Content(c, k),
            Ok(Err(e)) => {
                if seen != Seen::Unreadable {
                    tracing::warn!("serving certificate not reloaded: {e:#}");
                    metrics.tls_reload(false);
                }
                Seen::Unreadable
            }
            Err(_) => continue,
        };
        if now == seen {
            continue;
        }
        if let Seen::Content(c, k) = &now {
            match certified_key(c, k, &provider) {
                Ok(ck) => {
                    resolver.set(ck);
                    metrics.tls_reload(true);
                    tracing::info!("serving certificate reloaded from {}", cert.display());
                }
                Err(e) => {
                    metrics.tls_reload(false);
                    tracing::warn!(
                        "serving certificate not reloaded, keeping the previous one: {e:#}"
                    );
                }
            }
        }
        seen = now;
    }
}

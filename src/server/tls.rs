//! TLS: the rustls server configuration, and the serving certificate swapped in place when
//! its files change.
//!
//! One [`rustls::ServerConfig`] lives for the whole run; its certificate comes from a
//! [`CertResolver`] whose [`CertifiedKey`] is replaced atomically (arc-swap) by
//! [`watch_files`]. The PEM files are read at startup and then only by that poller, never
//! per connection. Kubernetes Secret volumes change by a symlink swap of the whole
//! directory, which file-level inotify misses, so the poller reads the files' content every
//! interval and acts when it differs from what it last saw.
//!
//! A new pair replaces the one in service only when it is one the API server will accept
//! as well as the old one ([`check_replacement`]): the key matches the certificate, the
//! certificate is valid now (notBefore ≤ now ≤ notAfter), and it covers every DNS name and
//! IP address the certificate in service covers. Anything else (an expired pair, a pair for
//! another host) is logged and counted as a failure, and the old pair stays.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::metrics::ReloadCounters;
use super::{ServeError, TlsSource, certs};
use crate::errors::Chain;

/// Why a serving pair was not loaded or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not PEM.
    #[error("certificate file: bad PEM")]
    CertPem(#[source] rustls::pki_types::pem::Error),
    /// The certificate file holds no certificate.
    #[error("certificate file holds no CERTIFICATE block")]
    NoCertificate,
    /// The key file holds no private key rustls can use.
    #[error("key file: no usable private key")]
    NoKey(#[source] rustls::pki_types::pem::Error),
    /// The key is not the certificate's.
    #[error("the certificate and the private key do not form a usable pair")]
    Mismatch(#[source] rustls::Error),
    /// The leaf certificate does not parse.
    #[error("the certificate does not parse as X.509: {0}")]
    X509(String),
    /// notBefore is this many seconds in the future.
    #[error(
        "the certificate is not valid yet (notBefore is {0} s in the future); install it once it is, or check the clock"
    )]
    NotYetValid(i64),
    /// notAfter was this many seconds ago.
    #[error("the certificate expired {0} s ago (notAfter); issue a new one")]
    Expired(i64),
    /// The new certificate drops names the one in service covers.
    #[error(
        "the certificate does not cover {missing} which the certificate in service covers (it covers {covers}); issue it for every name the webhook is called by"
    )]
    NamesNotCovered {
        /// The names dropped.
        missing: String,
        /// The names the new certificate covers.
        covers: String,
    },
    /// The certificate in service does not parse (cannot happen for one that loaded).
    #[error("the certificate in service: {0}")]
    InService(Box<TlsError>),
    /// rustls refused the protocol versions.
    #[error("TLS protocol versions")]
    Protocol(#[source] rustls::Error),
}

/// The ALPN protocols offered, in preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of the server (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain (leaf first) and its private key, and checks that they
/// belong together.
pub(super) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::CertPem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::NoKey)?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Mismatch)
}

/// What a leaf certificate says about where and when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeafInfo {
    /// Seconds since the Unix epoch.
    not_before: i64,
    not_after: i64,
    /// Subject alternative names: DNS names (lowercase) and IP addresses.
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl LeafInfo {
    /// Parses a DER certificate.
    fn parse(der: &[u8]) -> Result<Self, TlsError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::X509(e.to_string()))?;
        let validity = cert.validity();
        let mut info = LeafInfo {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            dns: Vec::new(),
            ips: Vec::new(),
        };
        let san = cert.subject_alternative_name().map_err(|e| {
            TlsError::X509(format!("the subjectAltName extension does not parse: {e}"))
        })?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(d) => info.dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => info
                        .ips
                        .extend(<[u8; 4]>::try_from(*b).ok().map(IpAddr::from)),
                    16 => info
                        .ips
                        .extend(<[u8; 16]>::try_from(*b).ok().map(IpAddr::from)),
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(info)
    }

    /// Whether the certificate is valid for the DNS name `name` (wildcards cover one
    /// label) or the IP address it spells.
    fn covers(&self, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        let name = name.to_ascii_lowercase();
        self.dns.iter().any(|d| {
            *d == name
                || d.strip_prefix("*.").is_some_and(|suffix| {
                    name.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                })
        })
    }

    /// Every name this certificate covers, as written in it.
    fn names(&self) -> Vec<String> {
        let mut v = self.dns.clone();
        v.extend(self.ips.iter().map(IpAddr::to_string));
        v
    }
}

/// Now, in seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks that `new` may replace the pair in service, whose leaf is `current` (DER): the
/// new leaf is valid at `now` (Unix seconds) and covers every name the current one covers.
/// (That the key belongs to the certificate is checked by [`certified_key`].)
fn check_replacement(new: &CertifiedKey, current: Option<&[u8]>, now: i64) -> Result<(), TlsError> {
    let leaf = new.cert.first().ok_or(TlsError::NoCertificate)?;
    let info = LeafInfo::parse(leaf)?;
    if now < info.not_before {
        return Err(TlsError::NotYetValid(info.not_before - now));
    }
    if now > info.not_after {
        return Err(TlsError::Expired(now - info.not_after));
    }
    if let Some(current) = current {
        let old = LeafInfo::parse(current).map_err(|e| TlsError::InService(Box::new(e)))?;
        let missing: Vec<String> = old
            .names()
            .into_iter()
            .filter(|n| !info.covers(n))
            .collect();
        if !missing.is_empty() {
            return Err(TlsError::NamesNotCovered {
                missing: missing.join(", "),
                covers: if info.names().is_empty() {
                    "no subjectAltName".to_string()
                } else {
                    info.names().join(", ")
                },
            });
        }
    }
    Ok(())
}

/// The server's certificate, replaceable while connections are being accepted. Created by
/// [`super::serve_with`]; replaced only by [`watch_files`]; read by every handshake.
#[derive(Debug)]
struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    fn new(key: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(key),
        }
    }
    /// Serves `key` from the next handshake on.
    fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
    /// The leaf certificate being served (DER).
    fn current_leaf(&self) -> Option<CertificateDer<'static>> {
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
fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Loads the serving pair of `source` (generating the self-signed files first when that
/// is the source) and returns the acceptor that serves it, the CA clients must trust
/// (self-signed mode only), and the poller that swaps in a changed pair every
/// `interval`, for the server to run as long as it serves.
pub(crate) fn load(
    source: TlsSource,
    interval: Duration,
    reloads: ReloadCounters,
    expiry: IntGauge,
) -> Result<
    (
        tokio_rustls::TlsAcceptor,
        Option<PathBuf>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    ServeError,
> {
    let (cert, key, ca_path) = match source {
        TlsSource::Files { cert, key } => (cert, key, None),
        TlsSource::SelfSigned { dir } => {
            let got = certs::ensure(&dir, &certs::default_names()).map_err(|source| {
                ServeError::SelfSigned {
                    dir: dir.clone(),
                    source,
                }
            })?;
            tracing::info!(
                "{} self-signed certificates in {}",
                if got.reused { "reusing" } else { "generated" },
                dir.display()
            );
            (got.paths.cert, got.paths.key, Some(got.paths.ca))
        }
    };
    let loaded = load_files(&cert, &key).and_then(|initial| {
        certified_key(&initial.0, &initial.1, &provider()).map(|k| (initial, k))
    });
    let (initial, key_pair) = match loaded {
        Ok(l) => l,
        Err(source) => return Err(ServeError::Certificate { cert, key, source }),
    };
    if let Err(e) = check_replacement(&key_pair, None, unix_now()) {
        // Nothing better to serve: start, and say it loudly (reloads will not accept such
        // a pair).
        tracing::warn!(
            "serving certificate {}: {e}; serving it anyway until a valid pair is installed",
            cert.display()
        );
    }
    record_expiry(&expiry, &key_pair);
    let resolver = Arc::new(CertResolver::new(key_pair));
    let config = server_config(resolver.clone()).map_err(ServeError::Tls)?;
    let reload = watch_files(cert, key, initial, interval, resolver, reloads, expiry);
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_path,
        reload,
    ))
}

/// Sets `gauge` (`meshrev_tls_certificate_expiry_timestamp_seconds`) to the notAfter of
/// `key`'s leaf, or to 0 when the leaf does not parse (so an expiry alert fires on it).
fn record_expiry(gauge: &IntGauge, key: &CertifiedKey) {
    let not_after = key
        .cert
        .first()
        .and_then(|leaf| LeafInfo::parse(leaf).ok())
        .map_or(0, |info| info.not_after);
    gauge.set(not_after);
}

/// Reads the serving pair from files.
fn load_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

/// What the poller last saw in the files.
#[derive(PartialEq, Eq)]
enum Seen {
    Content(Vec<u8>, Vec<u8>),
    Unreadable,
}

/// Polls `cert` and `key` every `interval`; when their content changes, loads the new pair
/// and, if [`check_replacement`] accepts it, swaps it into `resolver`, counting `meshrev_tls_reloads_total{result}`. A pair that
/// does not load (or files that cannot be read) is counted once as a failure and the
/// previous certificate stays in service. `initial` is the content being served already.
/// `expiry` follows the certificate in service (set after each swap).
async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    initial: (Vec<u8>, Vec<u8>),
    interval: Duration,
    resolver: Arc<CertResolver>,
    reloads: ReloadCounters,
    expiry: IntGauge,
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
                    tracing::warn!("serving certificate not reloaded: {}", Chain(&e));
                    reloads.count(false);
                }
                Seen::Unreadable
            }
            Err(_) => continue,
        };
        if now == seen {
            continue;
        }
        if let Seen::Content(c, k) = &now {
            let current = resolver.current_leaf();
            let checked = certified_key(c, k, &provider)
                .and_then(|ck| check_replacement(&ck, current.as_deref(), unix_now()).map(|()| ck));
            match checked {
                Ok(ck) => {
                    record_expiry(&expiry, &ck);
                    resolver.set(ck);
                    reloads.count(true);
                    tracing::info!("serving certificate reloaded from {}", cert.display());
                }
                Err(e) => {
                    reloads.count(false);
                    tracing::warn!(
                        "serving certificate {} not reloaded, keeping the previous one: {}",
                        cert.display(),
                        Chain(&e)
                    );
                }
            }
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::certs::{Authority, default_names};

    fn pair(p: &crate::server::certs::ServingPair) -> CertifiedKey {
        certified_key(p.cert_pem.as_bytes(), p.key_pem.as_bytes(), &provider()).unwrap()
    }

    #[test]
    fn replacement_must_be_valid_now_and_cover_the_names_in_service() {
        let ca = Authority::generate("t").unwrap();
        let names = default_names();
        let current = pair(&ca.issue(&names).unwrap());
        let leaf = current.cert[0].to_vec();
        let info = LeafInfo::parse(&leaf).unwrap();
        assert!(info.covers("localhost") && info.covers("127.0.0.1") && info.covers("::1"));
        assert!(info.covers("meshrev.meshrev-system.svc"));
        assert!(!info.covers("other.meshrev-system.svc"));
        let now = unix_now();

        let good = pair(&ca.issue(&names).unwrap());
        check_replacement(&good, Some(&leaf), now).unwrap();
        // Expired, or not valid yet: judged at another time.
        let e = check_replacement(&good, Some(&leaf), now + 2 * 365 * 86400).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = check_replacement(&good, Some(&leaf), now - 2 * 86400).unwrap_err();
        assert!(e.to_string().contains("not valid yet"), "{e}");
        // Another host.
        let other = pair(
            &Authority::generate("x")
                .unwrap()
                .issue(&["evil.example".into()])
                .unwrap(),
        );
        let e = check_replacement(&other, Some(&leaf), now).unwrap_err();
        assert!(e.to_string().contains("localhost"), "{e}");
        // A wildcard covers one label.
        let wild = pair(
            &ca.issue(&[
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                "*.meshrev-system.svc".into(),
                "meshrev.meshrev-system.svc.cluster.local".into(),
                "*.meshrev-system".into(),
            ])
            .unwrap(),
        );
        check_replacement(&wild, Some(&leaf), now).unwrap();
        assert!(
            !LeafInfo::parse(&wild.cert[0])
                .unwrap()
                .covers("a.b.meshrev-system.svc")
        );
    }
}

//! Certificates for the webhook: a self-signed CA and a serving certificate signed by it.
//!
//! `meshrev serve` without `--tls-cert-file` calls `ensure` on `--cert-dir`, and
//! `meshrev certs` does the same for manifests and prints the `caBundle`. A directory
//! holds `ca.crt` (the bundle to trust), `tls.crt` and `tls.key` (the serving pair, the
//! file names of a `kubernetes.io/tls` Secret). Files that are already there are reused
//! while they are valid for the requested names for at least `RENEW_BEFORE` more.
//!
//! Tests and e2e harnesses use [`generate_into`] (fresh files in a directory, returns the
//! CA PEM) and [`Authority`] (an in-memory CA that issues further serving pairs, e.g. to
//! rotate the files of a running server).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::tls::{TlsError, certified_key};

/// Why certificates were not generated, reused or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Generating a key or signing a certificate failed (the step, and why).
    #[error("{0}")]
    Generate(&'static str, #[source] rcgen::Error),
    /// The names cannot go into a certificate.
    #[error("invalid certificate names {0:?}")]
    Names(Vec<String>, #[source] rcgen::Error),
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// `ca.crt` is not UTF-8.
    #[error("ca.crt is not PEM text")]
    CaNotText,
    /// `ca.crt` does not parse.
    #[error("ca.crt: bad PEM")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    /// `ca.crt` holds something that is not a CA certificate.
    #[error("ca.crt: not a usable CA certificate")]
    CaUnusable(#[source] rustls::Error),
    /// `ca.crt` is empty.
    #[error("ca.crt holds no certificate")]
    NoCa,
    /// No verifier could be built from `ca.crt`.
    #[error("building a verifier for ca.crt")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// The system clock is before 1970.
    #[error("the clock is before 1970")]
    Clock,
    /// The serving pair does not load.
    #[error(transparent)]
    Pair(#[from] TlsError),
    /// A name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or IP address")]
    BadName(String),
    /// `tls.crt` does not verify for a name long enough.
    #[error("tls.crt is not valid for {name} under ca.crt for {days} more days")]
    NotValidFor {
        /// The name.
        name: String,
        /// How long it must stay valid.
        days: u64,
        /// Why it does not verify.
        #[source]
        source: rustls::Error,
    },
}

/// File names inside a certificate directory.
pub(crate) const CA_FILE: &str = "ca.crt";
/// The serving certificate's file name.
pub const CERT_FILE: &str = "tls.crt";
/// The serving key's file name.
pub const KEY_FILE: &str = "tls.key";

/// Existing files are regenerated when they expire within this long.
pub(crate) const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Validity of a generated serving certificate.
pub(crate) const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of a generated CA.
pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The names a serving certificate covers: loopback (for `meshrev serve` run locally) and
/// the Service's in-cluster DNS names.
pub(crate) fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

/// `dns_names` of the default Service `meshrev` in `meshrev-system`.
pub fn default_names() -> Vec<String> {
    dns_names("meshrev", "meshrev-system")
}

/// The `caBundle` field of a webhook configuration: the CA PEM, base64-encoded.
pub(crate) fn ca_bundle_base64(ca_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
}

/// The three files of a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    pub(crate) dir: PathBuf,
    pub(crate) ca: PathBuf,
    /// `tls.crt`.
    pub cert: PathBuf,
    /// `tls.key`.
    pub key: PathBuf,
}

impl CertPaths {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        CertPaths {
            dir: dir.to_path_buf(),
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// What `ensure` or [`generate_into`] left in a directory.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Where the files are.
    pub paths: CertPaths,
    /// The CA certificate (PEM): what clients trust.
    pub ca_pem: String,
    /// True when valid files were already there and were kept.
    pub(crate) reused: bool,
}

/// A serving certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct ServingPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl ServingPair {
    /// Writes `tls.crt` and `tls.key` into `dir` (each by an atomic rename; the key first).
    pub fn write_to(&self, dir: &Path) -> Result<(), CertsError> {
        let paths = CertPaths::in_dir(dir);
        write_atomic(&paths.key, self.key_pem.as_bytes(), true)?;
        write_atomic(&paths.cert, self.cert_pem.as_bytes(), false)
    }
}

/// A CA held in memory that issues serving certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

impl Authority {
    /// A new self-signed CA (ECDSA P-256, valid for `CA_VALIDITY`).
    pub fn generate(common_name: &str) -> Result<Self, CertsError> {
        let key =
            KeyPair::generate().map_err(|e| CertsError::Generate("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "meshrev");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertsError::Generate("self-signing the CA certificate", e))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a serving certificate for `names` (DNS names or IP addresses; the first DNS
    /// name is also the subject's CN), valid for `SERVING_VALIDITY`.
    pub fn issue(&self, names: &[String]) -> Result<ServingPair, CertsError> {
        self.issue_for(names, SERVING_VALIDITY)
    }

    /// [`Authority::issue`] with another validity.
    pub(crate) fn issue_for(
        &self,
        names: &[String],
        valid_for: Duration,
    ) -> Result<ServingPair, CertsError> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_between(names, now - time::Duration::hours(1), now + valid_for)
    }

    /// [`Authority::issue`] valid from `not_before` to `not_after` (e.g. already expired, for
    /// tests).
    pub fn issue_between(
        &self,
        names: &[String],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<ServingPair, CertsError> {
        let key = KeyPair::generate()
            .map_err(|e| CertsError::Generate("generating the serving key", e))?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| CertsError::Names(names.to_vec(), e))?;
        let cn = names
            .iter()
            .find(|n| n.parse::<std::net::IpAddr>().is_err() && *n != "localhost")
            .or(names.first())
            .map(String::as_str)
            .unwrap_or("meshrev");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertsError::Generate("signing the serving certificate", e))?;
        Ok(ServingPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generates a new CA and serving pair for `names` into `dir` (created if missing),
/// replacing whatever was there.
pub fn generate_into(dir: &Path, names: &[String]) -> Result<Generated, CertsError> {
    fs::create_dir_all(dir).map_err(|e| CertsError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source: e,
    })?;
    let paths = CertPaths::in_dir(dir);
    let ca = Authority::generate("meshrev webhook CA")?;
    let pair = ca.issue(names)?;
    write_atomic(&paths.ca, ca.cert_pem().as_bytes(), false)?;
    pair.write_to(dir)?;
    Ok(Generated {
        paths,
        ca_pem: ca.cert_pem().to_string(),
        reused: false,
    })
}

/// Reuses the files in `dir` when they are a valid chain for every one of `names` for at
/// least `RENEW_BEFORE` more, else generates new ones with [`generate_into`].
pub(crate) fn ensure(dir: &Path, names: &[String]) -> Result<Generated, CertsError> {
    let paths = CertPaths::in_dir(dir);
    if paths.ca.exists() || paths.cert.exists() || paths.key.exists() {
        match check_existing(&paths, names) {
            Ok(ca_pem) => {
                return Ok(Generated {
                    paths,
                    ca_pem,
                    reused: true,
                });
            }
            Err(e) => tracing::info!(
                "regenerating the certificates in {}: {}",
                dir.display(),
                crate::errors::Chain(&e)
            ),
        }
    }
    generate_into(dir, names)
}

/// Checks that `paths` hold a CA, and a serving pair it signed that matches its key and is
/// valid for every one of `names` for at least `RENEW_BEFORE`. Returns the CA PEM.
fn check_existing(paths: &CertPaths, names: &[String]) -> Result<String, CertsError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|e| CertsError::Io {
            action: "reading",
            path: p.to_path_buf(),
            source: e,
        })
    };
    let ca_pem = String::from_utf8(read(&paths.ca)?).map_err(|_| CertsError::CaNotText)?;
    let cert_pem = read(&paths.cert)?;
    let key_pem = read(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = certified_key(&cert_pem, &key_pem, &provider)?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(CertsError::CaPem)?)
            .map_err(CertsError::CaUnusable)?;
    }
    if roots.is_empty() {
        return Err(CertsError::NoCa);
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(CertsError::Verifier)?;
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CertsError::Clock)?
        + RENEW_BEFORE;
    let (leaf, chain) = key
        .cert
        .split_first()
        .ok_or(CertsError::Pair(TlsError::NoCertificate))?;
    for name in names {
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| CertsError::BadName(name.clone()))?;
        verifier
            .verify_server_cert(
                leaf,
                chain,
                &server_name,
                &[],
                UnixTime::since_unix_epoch(at),
            )
            .map_err(|source| CertsError::NotValidFor {
                name: name.clone(),
                days: RENEW_BEFORE.as_secs() / 86400,
                source,
            })?;
    }
    Ok(ca_pem)
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half a file.
/// `secret` files are created mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(|e| CertsError::Io {
        action: "creating",
        path: tmp.clone(),
        source: e,
    })?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| CertsError::Io {
            action: "writing",
            path: tmp.clone(),
            source: e,
        })?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| CertsError::Io {
        action: "renaming to",
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_reused_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let names = default_names();
        let first = ensure(dir.path(), &names).unwrap();
        assert!(!first.reused);
        assert!(first.ca_pem.contains("BEGIN CERTIFICATE"));
        let again = ensure(dir.path(), &names).unwrap();
        assert!(again.reused);
        assert_eq!(again.ca_pem, first.ca_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.paths.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Other names: not valid, so regenerated.
        let other = ensure(dir.path(), &dns_names("other", "ns")).unwrap();
        assert!(!other.reused);
        assert_ne!(other.ca_pem, first.ca_pem);
    }

    #[test]
    fn soon_expiring_or_broken_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let names = default_names();
        let ca = Authority::generate("test").unwrap();
        write_atomic(&dir.path().join(CA_FILE), ca.cert_pem().as_bytes(), false).unwrap();
        ca.issue_for(&names, Duration::from_secs(24 * 3600))
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let err = check_existing(&CertPaths::in_dir(dir.path()), &names).unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
        assert!(!ensure(dir.path(), &names).unwrap().reused);

        fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        assert!(check_existing(&CertPaths::in_dir(dir.path()), &names).is_err());
    }

    #[test]
    fn ca_bundle_is_base64_of_the_pem() {
        let b = ca_bundle_base64("-----BEGIN CERTIFICATE-----\n");
        let back = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        assert_eq!(back, b"-----BEGIN CERTIFICATE-----\n");
    }
}

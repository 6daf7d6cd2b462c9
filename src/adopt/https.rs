//! A minimal HTTPS POST (HTTP/1.1, `Connection: close`) to a webhook's `clientConfig.url`,
//! trusting only its `caBundle`: how `adopt --takeover` asks meshrev's webhook what it
//! injects before sending it any pod. Not a general client: one request, the body read to
//! EOF, at most 16 MiB, 10 s in all.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const MAX_REPLY: u64 = 16 << 20;

/// POSTs `body` (JSON) to `url` (`https://host[:port]/path`) and returns the response body
/// of a 200.
pub(crate) async fn post(url: &str, ca_pem: Option<&[u8]>, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url}: only https:// webhook URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) =
        split_authority(authority).with_context(|| format!("{url}: bad host or port"))?;
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = ca_pem else {
        bail!("{url}: the webhook has no caBundle to verify it with");
    };
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(cert.context("caBundle: not PEM certificates")?)
            .context("caBundle: a certificate rustls does not accept")?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name =
        ServerName::try_from(host.to_string()).with_context(|| format!("{url}: bad host"))?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        (&mut tls).take(MAX_REPLY).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("{url}: no answer within 10 s"))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("not an HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("{url}: {status}");
    }
    let body = &buf[split + 4..];
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return dechunk(body);
    }
    Ok(body.to_vec())
}

/// `host[:port]` or `[v6][:port]` → (host, port), 443 by default.
fn split_authority(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 443,
    };
    (!host.is_empty()).then_some((host, port))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunked body: no chunk size line")?;
        let size_text = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("chunked body: bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("chunked body: truncated");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("127.0.0.1:9443"), Some(("127.0.0.1", 9443)));
        assert_eq!(
            split_authority("meshrev.example"),
            Some(("meshrev.example", 443))
        );
        assert_eq!(split_authority("[::1]:8443"), Some(("::1", 8443)));
        assert_eq!(split_authority("[::1]"), Some(("::1", 443)));
        assert_eq!(split_authority("host:x"), None);
        assert_eq!(split_authority(":1"), None);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").ok(),
            Some(b"Wikipedia".to_vec())
        );
        assert!(dechunk(b"9\r\nshort\r\n").is_err());
    }
}

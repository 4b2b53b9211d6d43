//! A raw TLS client for the inter-node port: what does a peer with a given certificate get?

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What the cluster port did with our connection.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// The TLS handshake failed (as seen by the client).
    HandshakeFailed(String),
    /// Handshake done, then the server sent an alert or reset the connection.
    ErrorAfterHandshake(String),
    /// Handshake done, then the server closed the connection without sending data.
    ClosedWithoutReply,
    /// Handshake done and the server stayed silent for the whole wait.
    Silent,
    /// The server sent application data back.
    Replied(Vec<u8>),
}

impl ProbeOutcome {
    /// Whether the server refused to talk to us: no application data ever came back,
    /// and the connection is gone.
    pub fn rejected(&self) -> bool {
        matches!(
            self,
            ProbeOutcome::HandshakeFailed(_)
                | ProbeOutcome::ErrorAfterHandshake(_)
                | ProbeOutcome::ClosedWithoutReply
        )
    }
}

/// Client identity for a probe.
pub struct ClientIdentity<'a> {
    pub cert_pem: &'a Path,
    pub key_pem: &'a Path,
}

/// Connects to `addr`, trusting `ca_pem` for the server, presenting `client` (or no
/// certificate), sends `payload` if the handshake completes, and watches for `wait`.
pub async fn probe(
    addr: SocketAddr,
    ca_pem: &Path,
    client: Option<ClientIdentity<'_>>,
    payload: &[u8],
    wait: Duration,
) -> Result<ProbeOutcome> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", ca_pem.display()))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(id.cert_pem)
                .with_context(|| format!("reading {}", id.cert_pem.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", id.cert_pem.display()))?;
            let key = PrivateKeyDer::from_pem_file(id.key_pem)
                .with_context(|| format!("reading {}", id.key_pem.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let name = ServerName::from(addr.ip());
    let mut tls = match tokio::time::timeout(wait, connector.connect(name, tcp)).await {
        Err(_) => return Ok(ProbeOutcome::HandshakeFailed("handshake timed out".into())),
        Ok(Err(e)) => return Ok(ProbeOutcome::HandshakeFailed(e.to_string())),
        Ok(Ok(s)) => s,
    };
    // With TLS 1.3 the server checks our certificate after the client considers the
    // handshake done; its verdict arrives as an alert on the first read or write.
    if !payload.is_empty() {
        if let Err(e) = tls.write_all(payload).await {
            return Ok(ProbeOutcome::ErrorAfterHandshake(e.to_string()));
        }
        if let Err(e) = tls.flush().await {
            return Ok(ProbeOutcome::ErrorAfterHandshake(e.to_string()));
        }
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, tls.read(&mut buf)).await {
        Err(_) => Ok(ProbeOutcome::Silent),
        Ok(Err(e)) => Ok(ProbeOutcome::ErrorAfterHandshake(e.to_string())),
        Ok(Ok(0)) => Ok(ProbeOutcome::ClosedWithoutReply),
        Ok(Ok(n)) => {
            buf.truncate(n);
            Ok(ProbeOutcome::Replied(buf))
        }
    }
}

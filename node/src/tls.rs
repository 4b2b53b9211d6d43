//! What a TLS session negotiated, in the words of events and `Received` headers;
//! shared by the SMTP server (STARTTLS from clients) and the delivery client
//! (STARTTLS to the next hop).

use std::path::Path;

use anyhow::Context;
use bulwark_storage::TlsInfo;
use rustls::pki_types::CertificateDer;

/// The certificates of a PEM file; at least one.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    ))
    .with_context(|| format!("reading the key from {}", path.display()))?
    .with_context(|| format!("{} holds no private key", path.display()))
}

/// Version and IANA cipher suite name of an established session, with the server
/// name that was asked for.
pub fn info(state: &rustls::CommonState, sni: Option<&str>) -> TlsInfo {
    let version = match state.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher = state
        .negotiated_cipher_suite()
        .map(|suite| {
            let suite = suite.suite();
            // IANA names TLS 1.3 suites TLS_..., rustls TLS13_...
            suite
                .as_str()
                .map(|name| name.replacen("TLS13_", "TLS_", 1))
                .unwrap_or_else(|| format!("{suite:?}"))
        })
        .unwrap_or_default();
    TlsInfo {
        version,
        cipher,
        sni: sni.map(str::to_string),
    }
}

/// A TLS server configuration from a certificate chain and its key (PEM files),
/// offering the `alpn` protocols in order.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

//! Mutual TLS between cluster nodes.
//!
//! Every node holds a certificate signed by the cluster CA whose subject common name
//! is `bulwark-node-<id>` (see `bulwark cert`). A server accepts only client
//! certificates from that CA and learns the peer's node id from it; a client checks
//! the server's certificate against the CA, the address it dialled, and the node id
//! it meant to reach.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::Error;

/// The common name that identifies node `id` in its certificate.
pub fn node_common_name(id: u64) -> String {
    format!("bulwark-node-{id}")
}

/// The node id a certificate was issued to, from its subject common name.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    cn.strip_prefix("bulwark-node-")?.parse().ok()
}

/// TLS configurations for both ends of a node's cluster connections.
#[derive(Clone)]
pub struct TlsIdentity {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The node id in our own certificate.
    pub node_id: u64,
}

fn tls_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = fs::read(path).map_err(|e| tls_error(path, e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = fs::read(path).map_err(|e| tls_error(path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_error(path, e))?
        .ok_or_else(|| tls_error(path, "no PEM private key found"))
}

impl TlsIdentity {
    /// Loads the CA certificate and this node's certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for ca_cert in read_certs(ca)? {
            roots.add(ca_cert).map_err(|e| tls_error(ca, e))?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs(cert)?;
        let node_id = node_id_of(&chain[0])
            .ok_or_else(|| tls_error(cert, "subject common name is not bulwark-node-<id>"))?;
        let key = read_key(key)?;
        let provider = Arc::new(default_provider());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_error(ca, e))?;
        // Our own certificate must be one the other nodes accept: refused here, with
        // the reason, rather than as a failed handshake every half second.
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                tls_error(
                    cert,
                    format!("not signed by the cluster's CA {}: {e}", ca.display()),
                )
            })?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error(cert, e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(cert, e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error(cert, e))?;
        Ok(TlsIdentity {
            server: Arc::new(server),
            client: Arc::new(client),
            node_id,
        })
    }
}

/// What a failed handshake with a peer means, in an operator's words: which side's
/// certificate the other refused, and why, instead of the TLS alert's name.
pub fn handshake_failure(error: &std::io::Error) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) else {
        return error.to_string();
    };
    let meaning = match tls {
        Tls::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the peer's certificate is not signed by this cluster's CA"
        }
        Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the peer's certificate does not name the address dialled (bulwark cert node --san)"
        }
        Tls::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the peer's certificate has expired"
        }
        Tls::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (are the clocks apart?)"
        }
        Tls::NoCertificatesPresented => "the peer presented no certificate",
        Tls::AlertReceived(
            Alert::DecryptError
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateRequired,
        ) => "the peer refused this node's certificate: it trusts another CA, or none was sent",
        Tls::AlertReceived(Alert::CertificateExpired) => {
            "the peer refused this node's certificate as expired"
        }
        _ => return format!("TLS: {tls}"),
    };
    format!("{meaning} ({tls})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_say_whose_certificate_was_refused() {
        let unknown = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(handshake_failure(&unknown)
            .starts_with("the peer's certificate is not signed by this cluster's CA"));
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError),
        );
        assert!(handshake_failure(&refused).starts_with("the peer refused this node's certificate"));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(handshake_failure(&plain), plain.to_string());
    }
}

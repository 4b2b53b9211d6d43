//! The API over TLS: with `[api] tls_cert` and `tls_key` the node serves HTTPS only
//! (HTTP/1.1 and, by ALPN, HTTP/2); a client that trusts the certificate gets answers
//! and the usual 401 without a token; plain HTTP on that port gets no HTTP answer;
//! a client that does not trust the certificate is refused at the handshake.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::dns::{DnsServer, Zone};
use rustls::pki_types::{CertificateDer, ServerName};

/// The node process, stopped when the test ends however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TLS client that trusts `cert` and offers `alpn`.
fn client(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// `GET path` over TLS: the negotiated ALPN protocol and the whole HTTP/1.1 answer,
/// or the error that ended the exchange.
fn get(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> Result<(Option<Vec<u8>>, String), std::io::Error> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)?;
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((alpn, String::from_utf8_lossy(&answer).into_owned()))
}

fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("api.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("api.key"), generated.key_pair.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

#[test]
fn the_api_over_tls_answers_trusting_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let (api, smtp) = (common::free_port(), common::free_port());
    let dns = DnsServer::start(Zone::new()).unwrap();
    std::fs::write(
        dir.path().join("bulwark.toml"),
        format!(
            "[node]\nid = 1\ndata_dir = \"data\"\n\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\ntls_cert = \"api.pem\"\ntls_key = \"api.key\"\n\n\
             [smtp]\nlisten = \"127.0.0.1:{smtp}\"\nhostname = \"mx.example.test\"\n\n\
             [dns]\nnameservers = [\"{}\"]\n",
            dns.addr()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut node = Running(
        Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("bulwark.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let trusting = client(&cert, &[b"http/1.1"]);
    let node_log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((_, answer)) = get(trusting.clone(), api, "/readyz", None) {
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            node.0.try_wait().unwrap().is_none(),
            "the node exited:\n{}",
            node_log()
        );
        assert!(Instant::now() < deadline, "not ready:\n{}", node_log());
        std::thread::sleep(Duration::from_millis(50));
    }

    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let (_, answer) = get(
        trusting.clone(),
        api,
        "/v1/events?limit=1",
        Some(token.trim()),
    )
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"events\""), "{answer}");
    let (_, answer) = get(trusting.clone(), api, "/v1/events?limit=1", None).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // HTTP/2 is offered by ALPN.
    let (alpn, _) = get(client(&cert, &[b"h2", b"http/1.1"]), api, "/healthz", None)
        .unwrap_or((None, String::new()));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // Plain HTTP on the TLS port: no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", api)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // A client that does not trust the certificate is refused at the handshake.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let refused = get(
        client(stranger.cert.der(), &[b"http/1.1"]),
        api,
        "/readyz",
        None,
    );
    let error = refused.expect_err("an untrusted certificate was accepted");
    assert!(
        error.to_string().contains("UnknownIssuer") || error.to_string().contains("certificate"),
        "{error}"
    );

    // The node still serves after all that.
    let (_, answer) = get(trusting, api, "/healthz", None).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

//! The SMTP client to the next hop (RFC 5321): a connection that may carry several
//! messages, STARTTLS by the route's policy, PIPELINING when offered, and a result
//! for every recipient.
//!
//! A reply before the recipients are known applies to all of them: 4xx or a broken
//! connection defers them, 5xx fails them. RCPT replies are per recipient, and the
//! reply to the end of data applies to those whose RCPT was accepted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bulwark_model::TlsInfo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::route::{Relay, TlsPolicy};

/// The longest reply line accepted from a next hop (RFC 5321 §4.5.3.1.5: 512).
const MAX_REPLY_LINE: usize = 4096;

/// One reply of the next hop: code and full text (lines joined by a space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn local(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: format!("{code} {text}"),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// What the next hop said about each recipient, in order.
pub type Replies = Vec<(String, Reply)>;

/// What one message needs to be sent.
pub struct Outgoing<'a> {
    pub mail_from: &'a str,
    pub recipients: Vec<&'a str>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Header lines we add, CRLF-terminated.
    pub headers: &'a [u8],
    /// The stored message, CRLF lines.
    pub body: &'a [u8],
    /// Asked before the end of data is sent.
    pub handover: &'a dyn Handover,
}

/// The end of data hands the message to the next hop for good: whatever happens to
/// the connection after it, the next hop may deliver it. `ready` returns once the
/// message may be handed over, with the instant by which the end of data must be
/// written (after it, the transaction fails without it); a transaction that may not
/// be handed over is dropped by its caller while it waits.
pub trait Handover: Sync {
    fn ready(&self) -> Pin<Box<dyn Future<Output = std::time::Instant> + Send + '_>>;
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// A transaction that could not give each recipient its own reply: the reply for
/// all of them, and whether the connection was still fresh (nothing of the
/// transaction accepted), so that a stale cached connection can be replaced.
#[derive(Debug)]
pub struct Failure {
    pub reply: Reply,
    pub before_mail: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP session with the next hop, greeted and (by policy) encrypted, between
/// transactions.
pub struct Connection {
    io: BufReader<Box<dyn Io>>,
    extensions: Vec<String>,
    tls: Option<TlsInfo>,
    /// Messages sent on it so far.
    pub transactions: u32,
    /// A read or write failed, or the server said 421: not to be used again.
    broken: bool,
}

impl Connection {
    /// Connects to `relay`, reads its greeting, says EHLO (HELO if refused) and
    /// starts TLS as the route's policy says. Under the opportunistic policy a
    /// failed handshake is followed by one plain connection.
    pub async fn open(relay: &Relay, ehlo_name: &str, t: &Timeouts) -> Result<Connection, Reply> {
        match Connection::open_with(relay, ehlo_name, t, relay.tls).await {
            Err((reply, true)) if relay.tls == TlsPolicy::Opportunistic => {
                tracing::info!(next_hop = %relay.address, reply = %reply.text, "opportunistic TLS failed; sending in plain text");
                Connection::open_with(relay, ehlo_name, t, TlsPolicy::None)
                    .await
                    .map_err(|(reply, _)| reply)
            }
            other => other.map_err(|(reply, _)| reply),
        }
    }

    /// As `open`, with the TLS policy given; the error says whether TLS failed.
    async fn open_with(
        relay: &Relay,
        ehlo_name: &str,
        t: &Timeouts,
        policy: TlsPolicy,
    ) -> Result<Connection, (Reply, bool)> {
        let addr = &relay.address;
        let stream = match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let text = format!("4.4.1 cannot connect to {addr}: {e}");
                return Err((Reply::local(451, &text), false));
            }
            Err(_) => {
                let text = format!("4.4.1 timeout connecting to {addr}");
                return Err((Reply::local(451, &text), false));
            }
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            io: BufReader::new(Box::new(stream)),
            extensions: Vec::new(),
            tls: None,
            transactions: 0,
            broken: false,
        };
        let plain = |r| (r, false);
        let greeting = c.reply(t.command).await.map_err(plain)?;
        if greeting.code != 220 {
            return Err(plain(stop(greeting)));
        }
        c.hello(ehlo_name, t).await.map_err(plain)?;
        if policy == TlsPolicy::None {
            return Ok(c);
        }
        let required = policy == TlsPolicy::Required;
        if !c.has("STARTTLS") {
            if !required {
                return Ok(c);
            }
            c.quit(t).await;
            let text = format!(
                "4.7.5 {addr} does not offer STARTTLS, which the route requires (tls = \"required\")"
            );
            return Err((Reply::local(451, &text), true));
        }
        let reply = c.command("STARTTLS", t.command).await.map_err(plain)?;
        if reply.code != 220 {
            if !required {
                return Ok(c);
            }
            c.quit(t).await;
            let text = format!("4.7.5 {addr} refused STARTTLS: {}", reply.text);
            return Err((Reply::local(451, &text), true));
        }
        // Anything the server sent after its 220 was sent before TLS and must not
        // be read as if it came over TLS (the response injection of CVE-2011-0411).
        if !c.io.buffer().is_empty() {
            let text = format!("4.7.5 {addr} sent data after its STARTTLS reply");
            return Err((Reply::local(451, &text), true));
        }
        let config = if required {
            relay.verified.clone()
        } else {
            unverified_config()
        };
        let tls_failed = |e: String| {
            let text = format!("4.7.5 TLS with {addr} failed: {e}");
            (Reply::local(451, &text), true)
        };
        let name = rustls::pki_types::ServerName::try_from(relay.tls_name.clone())
            .map_err(|e| tls_failed(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = connector.connect(name, c.io.into_inner());
        let stream = match tokio::time::timeout(t.command, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(tls_failed(e.to_string())),
            Err(_) => return Err(tls_failed("timeout".into())),
        };
        let info = crate::tls::info(stream.get_ref().1, Some(&relay.tls_name));
        let mut c = Connection {
            io: BufReader::new(Box::new(stream)),
            extensions: Vec::new(),
            tls: Some(info),
            transactions: 0,
            broken: false,
        };
        // RFC 3207 §4.2: forget what was learnt before TLS and greet again.
        c.hello(ehlo_name, t).await.map_err(plain)?;
        Ok(c)
    }

    /// Whether another message may be sent on this connection.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// What TLS protects this connection, if any.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    async fn hello(&mut self, ehlo_name: &str, t: &Timeouts) -> Result<(), Reply> {
        let ehlo = self
            .command(&format!("EHLO {ehlo_name}"), t.command)
            .await?;
        if ehlo.code == 250 {
            self.extensions = ehlo
                .text
                .split(" 250")
                .skip(1)
                .map(|l| l.trim_start_matches(['-', ' ']).to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        let helo = self
            .command(&format!("HELO {ehlo_name}"), t.command)
            .await?;
        if helo.code != 250 {
            return Err(stop(helo));
        }
        self.extensions.clear();
        Ok(())
    }

    fn has(&self, name: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split(' ').next() == Some(name))
    }

    /// Sends one message: a reply per recipient, or a reply for all of them when the
    /// transaction stopped before the recipients were answered. On a connection
    /// that already carried a message, RSET comes first (and finds out whether the
    /// cached connection still works).
    pub async fn send(&mut self, m: &Outgoing<'_>, t: &Timeouts) -> Result<Replies, Failure> {
        let early = |reply| Failure {
            reply,
            before_mail: true,
        };
        if self.transactions > 0 {
            let reset = self.command("RSET", t.command).await.map_err(early)?;
            if reset.code != 250 {
                return Err(early(stop(reset)));
            }
        }
        self.transactions += 1;
        if m.smtputf8 && !self.has("SMTPUTF8") {
            let text = "5.6.7 the next hop does not support SMTPUTF8, which this message needs";
            return Ok(every(&m.recipients, &Reply::local(550, text)));
        }
        let mut mail = format!("MAIL FROM:<{}>", m.mail_from);
        if m.eight_bit && self.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if m.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", m.headers.len() + m.body.len()));
        }
        let late = |reply| Failure {
            reply,
            before_mail: false,
        };
        let (mail_reply, mut replies, data) = if self.has("PIPELINING") {
            // RFC 2920: MAIL, every RCPT and DATA in one write, replies in order.
            let mut batch = format!("{mail}\r\n");
            for rcpt in &m.recipients {
                batch.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), t.command)
                .await
                .map_err(early)?;
            let mail_reply = self.reply(t.command).await.map_err(early)?;
            let mut replies = Vec::with_capacity(m.recipients.len());
            for rcpt in &m.recipients {
                let reply = self.reply(t.command).await.map_err(late)?;
                replies.push((rcpt.to_string(), reply));
            }
            let data = self.reply(t.command).await.map_err(late)?;
            (mail_reply, replies, Some(data))
        } else {
            let mail_reply = self.command(&mail, t.command).await.map_err(early)?;
            let mut replies = Vec::with_capacity(m.recipients.len());
            if mail_reply.is_positive() {
                for rcpt in &m.recipients {
                    let line = format!("RCPT TO:<{rcpt}>");
                    let reply = self.command(&line, t.command).await.map_err(late)?;
                    replies.push((rcpt.to_string(), reply));
                }
            }
            (mail_reply, replies, None)
        };
        let accepted: Vec<usize> = (0..replies.len())
            .filter(|&i| replies[i].1.is_positive())
            .collect();
        let data = match data {
            Some(data) => data,
            None if mail_reply.is_positive() && !accepted.is_empty() => {
                self.command("DATA", t.command).await.map_err(late)?
            }
            None => Reply::local(503, "5.5.1 no DATA sent"),
        };
        if data.code == 354 && (accepted.is_empty() || !mail_reply.is_positive()) {
            // A pipelined DATA the server took although nobody can receive the
            // message (RFC 2920 §3.1): end it empty.
            self.write(b".\r\n", t.data).await.map_err(late)?;
            self.reply(t.data).await.map_err(late)?;
        }
        if !mail_reply.is_positive() {
            return Err(late(stop(mail_reply)));
        }
        if accepted.is_empty() {
            return Ok(replies);
        }
        let final_reply = if data.code == 354 {
            self.write(m.headers, t.data).await.map_err(late)?;
            self.write(&dot_stuff(m.body), t.data).await.map_err(late)?;
            let by = m.handover.ready().await;
            match tokio::time::timeout_at(by.into(), self.write(b".\r\n", t.data)).await {
                Ok(written) => written.map_err(late)?,
                Err(_) => {
                    self.broken = true;
                    let text = "4.4.0 the end of data could not be written in time";
                    return Err(late(Reply::local(451, text)));
                }
            }
            self.reply(t.data).await.map_err(late)?
        } else {
            stop(data)
        };
        for i in accepted {
            replies[i].1 = final_reply.clone();
        }
        Ok(replies)
    }

    /// Says goodbye; the connection is gone either way.
    pub async fn quit(mut self, t: &Timeouts) {
        let _ = self
            .command("QUIT", t.command.min(Duration::from_secs(5)))
            .await;
    }

    async fn reply(&mut self, timeout: Duration) -> Result<Reply, Reply> {
        let reply = self.read_reply(timeout).await;
        if reply.is_err() {
            self.broken = true;
        }
        reply
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, Reply> {
        let mut text = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            // At most one byte over the limit: a next hop that never ends its line
            // cannot make us buffer without bound.
            let mut limited = (&mut self.io).take(MAX_REPLY_LINE as u64 + 1);
            let read = tokio::time::timeout(timeout, limited.read_line(&mut line)).await;
            match read {
                Err(_) => return Err(Reply::local(451, "4.4.2 timeout waiting for the next hop")),
                Ok(Err(e)) => {
                    return Err(Reply::local(
                        451,
                        &format!("4.4.2 connection to the next hop: {e}"),
                    ))
                }
                Ok(Ok(0)) => {
                    return Err(Reply::local(
                        451,
                        "4.4.2 the next hop closed the connection",
                    ))
                }
                Ok(Ok(_)) => {}
            }
            if line.len() > MAX_REPLY_LINE || !line.ends_with('\n') || text.len() > 64 * 1024 {
                return Err(Reply::local(451, "4.5.0 the next hop's reply is too long"));
            }
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code.filter(|c| (200..600).contains(c)) else {
                return Err(Reply::local(451, "4.5.0 the next hop's reply is not SMTP"));
            };
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line.trim_end());
            if line.as_bytes().get(3) != Some(&b'-') {
                if code == 421 {
                    // The server is closing the session: the reply stands, the
                    // connection does not.
                    return Err(Reply { code, text });
                }
                return Ok(Reply { code, text });
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), Reply> {
        let io = self.io.get_mut();
        let written = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        let result = tokio::time::timeout(timeout, written).await;
        if !matches!(result, Ok(Ok(()))) {
            self.broken = true;
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Reply::local(
                451,
                &format!("4.4.2 writing to the next hop: {e}"),
            )),
            Err(_) => Err(Reply::local(451, "4.4.2 timeout writing to the next hop")),
        }
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<Reply, Reply> {
        self.write(format!("{line}\r\n").as_bytes(), timeout)
            .await?;
        self.reply(timeout).await
    }
}

/// The same reply for every recipient.
pub fn every(recipients: &[&str], reply: &Reply) -> Replies {
    recipients
        .iter()
        .map(|r| (r.to_string(), reply.clone()))
        .collect()
}

/// A reply that stops the transaction for every recipient: 5xx stays 5xx, anything
/// else is a temporary failure.
fn stop(reply: Reply) -> Reply {
    if reply.code >= 400 {
        reply
    } else {
        Reply::local(451, &format!("4.5.0 unexpected reply: {}", reply.text))
    }
}

/// The client configuration of opportunistic TLS: encryption against passive
/// eavesdropping, no certificate check (RFC 7435), so that a next hop with a
/// self-signed or expired certificate is still encrypted rather than plain.
fn unverified_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any certificate, but still checks that the handshake is signed by the
/// key of the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Longest line sent, not counting its CRLF (RFC 5321 §4.5.3.1.6).
const MAX_LINE: usize = 998;

/// Doubles the dot at the start of every line (RFC 5321 §4.5.2) and breaks lines
/// longer than [`MAX_LINE`] by inserting CRLF SPACE, as Postfix does
/// (`smtp_line_length_limit`): the ingress accepts such lines, a next hop may not,
/// and a space-led continuation does the least damage to headers and MIME. The
/// stored content has CRLF line endings only (the ingress makes sure of it), so
/// nothing inside it can end the data early at the next hop.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 2);
    let mut rest = body;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        let (line, tail) = rest.split_at(end);
        push_line(&mut out, line);
        let breaks = tail
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        out.extend_from_slice(&tail[..breaks]);
        rest = &tail[breaks..];
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One line of a body (no CR or LF in it) as [`dot_stuff`] sends it: a leading dot
/// doubled, then at most [`MAX_LINE`] octets a line, each continuation led by a space.
fn push_line(out: &mut Vec<u8>, mut line: &[u8]) {
    let mut room = MAX_LINE;
    if line.first() == Some(&b'.') {
        out.push(b'.');
        room -= 1;
    }
    loop {
        let take = line.len().min(room);
        out.extend_from_slice(&line[..take]);
        line = &line[take..];
        if line.is_empty() {
            return;
        }
        out.extend_from_slice(b"\r\n ");
        room = MAX_LINE - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_at_line_starts_are_doubled() {
        assert_eq!(
            dot_stuff(b".a\r\nb.\r\n.\r\n..c\r\n"),
            b"..a\r\nb.\r\n..\r\n...c\r\n"
        );
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n");
    }

    #[test]
    fn long_lines_are_broken_with_crlf_space() {
        let exact = [b'a'; MAX_LINE];
        let sent = dot_stuff(&[&exact[..], b"\r\n"].concat());
        assert_eq!(
            sent,
            [&exact[..], b"\r\n"].concat(),
            "998 octets pass as they are"
        );

        let long = [b'b'; 2 * MAX_LINE + 10];
        let sent = dot_stuff(&[b"Subject: x\r\n\r\n", &long[..], b"\r\n"].concat());
        let lines: Vec<&[u8]> = sent.split(|&b| b == b'\n').collect();
        assert_eq!(lines[2].len(), MAX_LINE + 1, "998 octets and the CR");
        assert_eq!(lines[3][0], b' ');
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 1));
        let breaks = sent.windows(3).filter(|w| *w == b"\r\n ").count();
        assert_eq!(breaks, 2, "two breaks for 2 × 998 + 10 octets");

        // A stuffed dot counts: the sent line stays within the limit.
        let dotted = [&b"."[..], &[b'c'; MAX_LINE][..], b"\r\n"].concat();
        let sent = dot_stuff(&dotted);
        assert!(sent.starts_with(b".."));
        assert!(sent.split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE + 1));
    }

    /// The rule stated octet by octet, as the first version of `dot_stuff` was
    /// written: the line-wise one must send the same for any body.
    fn octet_by_octet(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line = 0;
        for &b in body {
            if b == b'\r' || b == b'\n' {
                out.push(b);
                line = 0;
                continue;
            }
            if line == MAX_LINE {
                out.extend_from_slice(b"\r\n ");
                line = 1;
            }
            if line == 0 && b == b'.' {
                out.push(b'.');
                line += 1;
            }
            out.push(b);
            line += 1;
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn line_wise_stuffing_sends_what_the_octet_rule_says() {
        // Bodies of dots, CR, LF and letters, with line lengths around the limit.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let mut body = Vec::new();
            for _ in 0..next(6) {
                let len = match next(4) {
                    0 => next(5),
                    1 => MAX_LINE as u64 - 2 + next(5),
                    2 => 2 * MAX_LINE as u64 - 2 + next(5),
                    _ => next(80),
                };
                for _ in 0..len {
                    body.push(match next(10) {
                        0 => b'.',
                        1 if next(50) == 0 => b'\r',
                        2 if next(50) == 0 => b'\n',
                        _ => b'x',
                    });
                }
                body.extend_from_slice(match next(4) {
                    0 => &b"\n"[..],
                    1 => b"",
                    _ => b"\r\n",
                });
            }
            assert_eq!(dot_stuff(&body), octet_by_octet(&body), "{body:?}");
        }
    }

    #[test]
    fn replies_classify() {
        assert!(Reply::local(250, "ok").is_positive());
        assert!(Reply::local(354, "go").is_positive());
        assert!(Reply::local(550, "no").is_permanent());
        assert_eq!(stop(Reply::local(250, "odd")).code, 451);
        assert_eq!(stop(Reply::local(421, "bye")).code, 421);
    }
}

//! A client of clamd, ClamAV's daemon, speaking its INSTREAM protocol over TCP or
//! a Unix socket — never a command line.
//!
//! One connection per message: `zINSTREAM\0`, the message in chunks (each a
//! 4-byte big-endian length and that many bytes), a zero-length chunk to end, then
//! one reply terminated by `\0`: `stream: OK`, `stream: <Name> FOUND` or
//! `... ERROR`.
//!
//! What is sent is the raw message, once. clamd opens MIME and archives itself
//! (its `ScanMail` and `ScanArchive`, within its own limits), so this is one stream
//! and one connection instead of one per file — INSTREAM scans a single stream per
//! connection — and it needs nothing from our unpacking, which runs on the
//! blocking thread while this client runs on the runtime beside it. A detection
//! is therefore located at `message`.
//!
//! clamd refuses a stream longer than its `StreamMaxLength` (25 MB by default)
//! with `INSTREAM size limit exceeded. ERROR`, possibly while we are still
//! sending: the reply is read even when sending failed, and the refusal counts as
//! an error. Errors and timeouts are handled by the fail-open/fail-closed setting:
//! closed makes the message malware (`clamd-unavailable`, `CLAMD_FAIL` 100), open
//! lets it through with a `CLAMD_UNAVAILABLE` hit of score 0 that records why.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, UnixStream};

use futures::future::BoxFuture;

use super::engine::{Checked, Finding, FindingKind, Hit, LinkHosts, NetworkEngine, Outcome};
use super::Candidate;

/// The version recorded in verdicts: the protocol spoken.
const VERSION: &str = "clamd INSTREAM";
/// The largest chunk sent at once.
const CHUNK: usize = 64 * 1024;

/// The longest reply read; clamd's are a line.
const MAX_REPLY: u64 = 4096;

/// The score of a detection, or of an unavailable clamd when failing closed.
const MALWARE_SCORE: f64 = 100.0;

/// The finding's location: clamd is given the whole message.
const LOCATION: &str = "message";

/// Where clamd listens (its `TCPSocket`/`TCPAddr` or `LocalSocket`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddress::Tcp(address) => write!(f, "{address}"),
            ClamdAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A clamd to send messages to, with the time allowed for one message and what
/// to do when clamd cannot give an answer.
pub struct Clamd {
    address: ClamdAddress,
    timeout: Duration,
    fail_closed: bool,
}

/// What clamd said about a stream.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Clean,
    Found(String),
}

impl Clamd {
    /// A client of the clamd at `address`. `timeout` bounds the whole exchange of
    /// one message (connecting, sending, the reply). With `fail_closed`, a message
    /// clamd could not judge is treated as malware; otherwise it passes.
    pub fn new(address: ClamdAddress, timeout: Duration, fail_closed: bool) -> Self {
        Clamd {
            address,
            timeout,
            fail_closed,
        }
    }

    /// Has clamd scan `message`, the raw message as received. It is borrowed, not
    /// copied: a caller holding it in an `Arc` passes `&body[..]` (or moves the
    /// `Arc` into a task and borrows it there).
    pub async fn scan(&self, message: &[u8]) -> Outcome {
        let asked = tokio::time::timeout(self.timeout, self.ask(message)).await;
        let problem = match asked {
            Ok(Ok(Reply::Clean)) => return Outcome::default(),
            Ok(Ok(Reply::Found(name))) => {
                return Outcome {
                    hits: vec![Hit::new(
                        "CLAMD_VIRUS",
                        MALWARE_SCORE,
                        format!("clamd found {name}"),
                    )],
                    findings: vec![Finding {
                        kind: FindingKind::Malware,
                        name,
                        location: LOCATION.into(),
                    }],
                };
            }
            Ok(Err(problem)) => problem,
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        let description = format!("clamd at {}: {problem}", self.address);
        if self.fail_closed {
            Outcome {
                hits: vec![Hit::new("CLAMD_FAIL", MALWARE_SCORE, description)],
                findings: vec![Finding {
                    kind: FindingKind::Malware,
                    name: "clamd-unavailable".into(),
                    location: LOCATION.into(),
                }],
            }
        } else {
            Outcome {
                hits: vec![Hit::new("CLAMD_UNAVAILABLE", 0.0, description)],
                findings: Vec::new(),
            }
        }
    }

    /// Connects and runs one INSTREAM exchange.
    async fn ask(&self, message: &[u8]) -> Result<Reply, String> {
        match &self.address {
            ClamdAddress::Tcp(address) => {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                instream(stream, message).await
            }
            ClamdAddress::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                instream(stream, message).await
            }
        }
    }
}

impl NetworkEngine for Clamd {
    fn name(&self) -> &'static str {
        "clamd"
    }

    fn version(&self) -> String {
        VERSION.to_string()
    }

    fn budget(&self) -> Duration {
        self.timeout
    }

    fn check<'a>(
        &'a self,
        message: &'a Candidate<'a>,
        _links: &'a LinkHosts,
    ) -> BoxFuture<'a, Checked> {
        Box::pin(async move { self.scan(&message.body).await.into() })
    }
}

/// Sends `message` with INSTREAM over `stream` and reads the reply. The reply is
/// read even if sending failed: clamd answers a stream over its size limit, then
/// closes, while we may still be sending.
async fn instream<S>(stream: S, message: &[u8]) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, writer) = tokio::io::split(stream);
    // Each chunk's length and data leave together rather than as a tiny segment
    // followed by a large one.
    let mut writer = BufWriter::with_capacity(CHUNK + 4, writer);
    let sent = send(&mut writer, message).await;
    let mut reply = Vec::new();
    let read = reader.take(MAX_REPLY).read_to_end(&mut reply).await;
    if let Some(end) = reply.iter().position(|&b| b == 0) {
        reply.truncate(end);
    }
    if reply.is_empty() {
        return Err(match (sent, read) {
            (Err(e), _) => format!("sending failed: {e}"),
            (Ok(()), Err(e)) => format!("reading the reply failed: {e}"),
            (Ok(()), Ok(_)) => "connection closed without a reply".into(),
        });
    }
    parse_reply(&String::from_utf8_lossy(&reply))
}

/// Writes the INSTREAM command, the chunks and the end marker.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> std::io::Result<()> {
    writer.write_all(b"zINSTREAM\0").await?;
    for chunk in message.chunks(CHUNK) {
        // `CHUNK` fits a u32.
        writer
            .write_all(&(chunk.len() as u32).to_be_bytes())
            .await?;
        writer.write_all(chunk).await?;
    }
    writer.write_all(&0u32.to_be_bytes()).await?;
    writer.flush().await
}

/// Reads one reply, without its terminating `\0`.
fn parse_reply(reply: &str) -> Result<Reply, String> {
    let reply = reply.trim_end();
    if reply.starts_with("INSTREAM size limit exceeded") {
        return Err(
            "INSTREAM size limit exceeded (the message is longer than clamd's StreamMaxLength)"
                .into(),
        );
    }
    if let Some(error) = reply.strip_suffix(" ERROR") {
        return Err(format!("clamd error: {error}"));
    }
    let verdict = reply.strip_prefix("stream: ").unwrap_or(reply);
    if verdict == "OK" {
        return Ok(Reply::Clean);
    }
    match verdict.strip_suffix(" FOUND") {
        Some(name) if !name.is_empty() => Ok(Reply::Found(name.to_owned())),
        _ => Err(format!("unexpected reply {reply:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::net::TcpListener;

    use super::*;

    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    /// How the fake clamd behaves.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Reads the stream and answers like clamd.
        Scan,
        /// Accepts and never answers.
        Silent,
        /// Reads the command, then closes the connection.
        Close,
        /// Answers the size-limit error (and closes) once it has this many bytes.
        Limit(usize),
    }

    /// A fake clamd on 127.0.0.1 speaking INSTREAM for real; it reports EICAR,
    /// found anywhere in the stream, as clamd names it.
    async fn fake_clamd(behaviour: Behaviour) -> ClamdAddress {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, behaviour));
            }
        });
        ClamdAddress::Tcp(address)
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, behaviour: Behaviour) {
        if let Behaviour::Silent = behaviour {
            // Hold the connection open, unread, well past any timeout.
            tokio::time::sleep(Duration::from_secs(600)).await;
            return;
        }
        let mut command = [0u8; 10];
        stream.read_exact(&mut command).await.unwrap();
        assert_eq!(&command, b"zINSTREAM\0");
        if let Behaviour::Close = behaviour {
            return;
        }
        let mut data = Vec::new();
        loop {
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).await.unwrap();
            let length = u32::from_be_bytes(length) as usize;
            if length == 0 {
                break;
            }
            let start = data.len();
            data.resize(start + length, 0);
            stream.read_exact(&mut data[start..]).await.unwrap();
            let over = matches!(behaviour, Behaviour::Limit(limit) if data.len() > limit);
            if over {
                stream
                    .write_all(b"INSTREAM size limit exceeded. ERROR\0")
                    .await
                    .unwrap();
                return;
            }
        }
        let infected = data.windows(EICAR.len()).any(|w| w == EICAR);
        let reply: &[u8] = if infected {
            b"stream: Eicar-Test-Signature FOUND\0"
        } else {
            b"stream: OK\0"
        };
        stream.write_all(reply).await.unwrap();
    }

    fn client(address: ClamdAddress, fail_closed: bool) -> Clamd {
        Clamd::new(address, Duration::from_millis(500), fail_closed)
    }

    /// A message bigger than one chunk with EICAR straddling a chunk boundary.
    fn infected_message() -> Vec<u8> {
        let mut message = b"From: a@example.org\r\nSubject: x\r\n\r\n".to_vec();
        message.resize(CHUNK - 20, b'a');
        message.extend_from_slice(EICAR);
        message.resize(3 * CHUNK, b'b');
        message
    }

    #[tokio::test]
    async fn a_clean_message_gives_nothing() {
        let clamd = client(fake_clamd(Behaviour::Scan).await, true);
        let outcome = clamd.scan(b"From: a@example.org\r\n\r\nHello.\r\n").await;
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
        assert!(outcome.findings.is_empty());
    }

    #[tokio::test]
    async fn an_infected_message_is_malware_named_by_clamd() {
        let clamd = client(fake_clamd(Behaviour::Scan).await, false);
        let outcome = clamd.scan(&infected_message()).await;
        assert_eq!(
            outcome.findings,
            vec![Finding {
                kind: FindingKind::Malware,
                name: "Eicar-Test-Signature".into(),
                location: "message".into(),
            }]
        );
        assert_eq!(outcome.hits.len(), 1);
        assert_eq!(outcome.hits[0].symbol, "CLAMD_VIRUS");
        assert_eq!(outcome.hits[0].score, 100.0);
    }

    #[tokio::test]
    async fn an_empty_message_is_a_valid_stream() {
        let clamd = client(fake_clamd(Behaviour::Scan).await, true);
        let outcome = clamd.scan(b"").await;
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
    }

    #[tokio::test]
    async fn a_silent_clamd_times_out_and_fails_closed_or_open() {
        let address = fake_clamd(Behaviour::Silent).await;
        for fail_closed in [true, false] {
            let clamd = Clamd::new(address.clone(), Duration::from_millis(200), fail_closed);
            let started = std::time::Instant::now();
            let outcome = clamd.scan(&infected_message()).await;
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(200), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(outcome.hits.len(), 1);
            assert!(
                outcome.hits[0]
                    .description
                    .contains("no answer within 200 ms"),
                "{:?}",
                outcome.hits[0]
            );
            if fail_closed {
                assert_eq!(outcome.hits[0].symbol, "CLAMD_FAIL");
                assert_eq!(outcome.hits[0].score, 100.0);
                assert_eq!(
                    outcome.findings,
                    vec![Finding {
                        kind: FindingKind::Malware,
                        name: "clamd-unavailable".into(),
                        location: "message".into(),
                    }]
                );
            } else {
                assert_eq!(outcome.hits[0].symbol, "CLAMD_UNAVAILABLE");
                assert_eq!(outcome.hits[0].score, 0.0);
                assert!(outcome.findings.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_failure() {
        let clamd = client(fake_clamd(Behaviour::Close).await, true);
        let outcome = clamd.scan(b"From: a@example.org\r\n\r\nHello.\r\n").await;
        assert_eq!(outcome.hits.len(), 1);
        assert_eq!(outcome.hits[0].symbol, "CLAMD_FAIL");
        assert_eq!(outcome.findings[0].name, "clamd-unavailable");
    }

    #[tokio::test]
    async fn the_size_limit_reply_is_an_error_even_mid_stream() {
        let clamd = client(fake_clamd(Behaviour::Limit(CHUNK)).await, false);
        // Far more than the fake reads before refusing, so it closes on us while
        // we are still sending.
        let outcome = clamd.scan(&vec![b'x'; 64 * CHUNK]).await;
        assert_eq!(outcome.hits.len(), 1, "{:?}", outcome.hits);
        assert_eq!(outcome.hits[0].symbol, "CLAMD_UNAVAILABLE");
        assert!(
            outcome.hits[0]
                .description
                .contains("INSTREAM size limit exceeded"),
            "{:?}",
            outcome.hits[0]
        );
        assert!(outcome.findings.is_empty());
    }

    #[tokio::test]
    async fn nobody_listening_fails_closed() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let outcome = client(ClamdAddress::Tcp(address), true).scan(b"x").await;
        assert_eq!(outcome.hits[0].symbol, "CLAMD_FAIL");
        assert!(outcome.hits[0].description.contains("cannot connect"));
    }

    #[tokio::test]
    async fn a_unix_socket_works_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream, Behaviour::Scan).await;
        });
        let clamd = client(ClamdAddress::Unix(path), true);
        let outcome = clamd.scan(&infected_message()).await;
        assert_eq!(outcome.findings[0].name, "Eicar-Test-Signature");
    }

    #[test]
    fn replies_are_read_as_clamd_writes_them() {
        assert_eq!(parse_reply("stream: OK"), Ok(Reply::Clean));
        assert_eq!(
            parse_reply("stream: Win.Test.EICAR_HDB-1 FOUND"),
            Ok(Reply::Found("Win.Test.EICAR_HDB-1".into()))
        );
        assert!(parse_reply("stream: Can't allocate memory ERROR")
            .unwrap_err()
            .contains("Can't allocate memory"));
        assert!(parse_reply("stream: FOUND").is_err());
        assert!(parse_reply("PONG").is_err());
    }
}

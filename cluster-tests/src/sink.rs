//! A next-hop SMTP server for tests: what the gateway relays to, on a real loopback
//! socket, recording every message it accepts.
//!
//! It runs on its own thread with its own tokio runtime, so that synchronous tests
//! and async ones alike can use it. The server side of RFC 5321 is complete enough
//! for a sending MTA: greeting, EHLO/HELO with the configured extensions (PIPELINING,
//! 8BITMIME, SMTPUTF8, STARTTLS by RFC 3207, SIZE by RFC 1870), MAIL, RCPT, DATA with
//! dot-unstuffing, RSET, NOOP, VRFY, QUIT, and several transactions per connection.
//! Commands are read line by line from a buffered reader, so pipelined commands
//! (RFC 2920) are answered in order without special handling.
//!
//! A [`SinkConfig::script`] overrides replies by [`Stage`] ("451 at the end of data
//! the first time", "550 for this recipient"); [`SinkConfig::data_delay`] makes a
//! slow next hop. Lines, messages, recipients and the command log are bounded, so a
//! misbehaving client cannot exhaust memory.
//!
//! ```no_run
//! use std::time::Duration;
//! use bulwark_cluster_tests::sink::{Sink, SinkConfig};
//!
//! let sink = Sink::start(SinkConfig::default());
//! // ... point `[delivery] relay` at `sink.addr()` and send mail through the gateway ...
//! let got = sink.wait_for(1, Duration::from_secs(10));
//! assert_eq!(got[0].rcpt_to, ["bob@example.test"]);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The name the sink gives itself in its greeting and EHLO reply.
pub const HOSTNAME: &str = "sink.test";
/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512 with CRLF; SMTPUTF8
/// addresses and parameters make real ones longer).
const MAX_COMMAND_LINE: usize = 4096;
/// Longest line of message data accepted (RFC 5321 says 1000; be lenient, but bounded).
const MAX_DATA_LINE: usize = 1 << 20;
/// Most recipients of one transaction.
const MAX_RECIPIENTS: usize = 1000;
/// Most command lines kept by [`Sink::commands`].
const MAX_COMMAND_LOG: usize = 100_000;
/// A session idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A reply override: given the stage, `Some(reply)` replaces the default reply
/// (e.g. `"451 4.3.0 try later"`; several lines joined with `\r\n`, each with its own
/// code). `Some("")` closes the connection without replying. `None` keeps the default.
pub type Script = Arc<dyn Fn(&Stage) -> Option<String> + Send + Sync>;

/// How the sink behaves.
#[derive(Clone)]
pub struct SinkConfig {
    /// `(certificate chain PEM, private key PEM)`: advertise STARTTLS and do the server
    /// side of the handshake with it.
    pub starttls: Option<(String, String)>,
    /// Advertise SMTPUTF8 (RFC 6531). Default: true.
    pub smtputf8: bool,
    /// Advertise 8BITMIME (RFC 6152). Default: true.
    pub eight_bit: bool,
    /// Advertise PIPELINING (RFC 2920). Default: true.
    pub pipelining: bool,
    /// Pause before answering the end of data (a slow next hop). Default: none.
    pub data_delay: Duration,
    /// Largest message accepted, advertised as SIZE; larger ones get `552 5.3.4`.
    /// Default: 64 MiB.
    pub max_message_size: usize,
    /// Reply overrides; see [`Script`].
    pub script: Option<Script>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            starttls: None,
            smtputf8: true,
            eight_bit: true,
            pipelining: true,
            data_delay: Duration::ZERO,
            max_message_size: 64 << 20,
            script: None,
        }
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("starttls", &self.starttls.is_some())
            .field("smtputf8", &self.smtputf8)
            .field("eight_bit", &self.eight_bit)
            .field("pipelining", &self.pipelining)
            .field("data_delay", &self.data_delay)
            .field("max_message_size", &self.max_message_size)
            .field("script", &self.script.is_some())
            .finish()
    }
}

impl SinkConfig {
    /// The default configuration with this reply script.
    pub fn scripted(script: impl Fn(&Stage) -> Option<String> + Send + Sync + 'static) -> Self {
        SinkConfig {
            script: Some(Arc::new(script)),
            ..SinkConfig::default()
        }
    }
}

/// Where in a session a reply is about to be given, for [`SinkConfig::script`].
#[derive(Debug)]
pub enum Stage<'a> {
    /// `MAIL FROM:<from>` was accepted by the checks; default reply `250 2.1.0 Ok`.
    Mail { from: &'a str },
    /// `RCPT TO:<to>`; `seen` is how many times this address got RCPT before, over the
    /// sink's life (all connections; RCPTs refused by the sink's own checks, such as
    /// one before MAIL, are not counted). Default reply `250 2.1.5 Ok`.
    Rcpt { to: &'a str, seen: usize },
    /// The end of data; `to` are the accepted recipients and `seen` the number of ends
    /// of data before this one, over the sink's life. Default reply
    /// `250 2.0.0 Ok: queued as N`. Only a 2xx reply records the message.
    Data {
        from: &'a str,
        to: &'a [String],
        seen: usize,
    },
    /// A new connection (`seen` connections before it); default reply `220 sink.test
    /// ESMTP`. Any other reply than 2xx is sent and the connection closed.
    Connect { seen: u64 },
    /// `EHLO name` or `HELO name`; a replacement reply is sent as is (so it may list
    /// other extensions); a reply that is not 250 leaves the client un-greeted.
    Hello { name: &'a str, extended: bool },
    /// `STARTTLS`; a replacement reply other than 220 refuses TLS.
    StartTls,
}

/// A message the sink accepted (its end of data got a 2xx reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The reverse path, without angle brackets (empty for the null sender).
    pub mail_from: String,
    /// Everything after the reverse path of MAIL, trimmed (`BODY=8BITMIME SIZE=123`).
    pub mail_params: String,
    /// The accepted recipients, in order, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The content, dot-unstuffed, line endings as received, without the final `.CRLF`.
    pub data: Vec<u8>,
    /// Whether the session was under TLS (STARTTLS done).
    pub tls: bool,
    /// Which connection carried it: 1 for the first the sink accepted, and so on.
    pub connection: u64,
    /// The name given in EHLO/HELO.
    pub ehlo: String,
    /// When the sink accepted its MAIL command: the transaction began.
    pub began: Instant,
    /// When the sink decided its reply to the end of data (after
    /// [`SinkConfig::data_delay`]): the transaction ended. Two transactions of the
    /// same message whose `began..answered` overlap were delivered at once.
    pub answered: Instant,
}

impl Delivered {
    /// The value of the first header field `name` (case-insensitive), unfolded and
    /// trimmed; only the header section is searched.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        head.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    /// Whether MAIL carried this parameter keyword (case-insensitive), e.g.
    /// `SMTPUTF8` or `BODY=8BITMIME`.
    pub fn has_param(&self, param: &str) -> bool {
        self.mail_params
            .split_ascii_whitespace()
            .any(|p| p.eq_ignore_ascii_case(param))
    }
}

/// What the sink saw, shared between its sessions and the test.
#[derive(Default)]
struct Record {
    received: Vec<Delivered>,
    connections: u64,
    rcpt_seen: HashMap<String, usize>,
    data_ends: usize,
    commands: Vec<(u64, String)>,
}

struct Shared {
    record: Mutex<Record>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        // A panicking script must not make every later look at the sink panic too.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running next-hop SMTP server on 127.0.0.1; see the module docs.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink").field("addr", &self.addr).finish()
    }
}

impl Sink {
    /// Starts a sink on a free loopback port.
    pub fn start(config: SinkConfig) -> Sink {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("sink: binding 127.0.0.1:0");
        Self::serve(listener, config)
    }

    /// Starts a sink on `addr` (a next hop that comes up where it was down). Retries
    /// the bind for up to 10 s while the address is in use.
    pub fn start_on(addr: SocketAddr, config: SinkConfig) -> Sink {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("sink: binding {addr}: {e}"),
            }
        };
        Self::serve(listener, config)
    }

    fn serve(listener: std::net::TcpListener, config: SinkConfig) -> Sink {
        let addr = listener.local_addr().expect("sink: local address");
        listener
            .set_nonblocking(true)
            .expect("sink: non-blocking listener");
        let tls = config
            .starttls
            .as_ref()
            .map(|(cert, key)| acceptor(cert, key));
        let shared = Arc::new(Shared {
            record: Mutex::new(Record::default()),
            changed: Condvar::new(),
        });
        let (stop, stopped) = oneshot::channel();
        let server = Server {
            config,
            tls,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("sink-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("sink: tokio runtime");
                runtime.block_on(accept_loop(listener, Arc::new(server), stopped));
                // Dropping the runtime drops every session task: their sockets close.
                drop(runtime);
            })
            .expect("sink: spawning its thread");
        Sink {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The messages accepted so far (end of data answered 2xx), in order.
    pub fn received(&self) -> Vec<Delivered> {
        self.shared.lock().received.clone()
    }

    /// Waits until at least `n` messages have been accepted and returns all of them;
    /// panics after `timeout` saying what was there.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        let mut record = self.shared.lock();
        while record.received.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let got = record.received.len();
                let summary: Vec<String> = record
                    .received
                    .iter()
                    .map(|d| format!("<{}> -> {:?}", d.mail_from, d.rcpt_to))
                    .collect();
                let tail = command_tail(&record.commands, 30);
                drop(record);
                panic!(
                    "sink at {}: waited {timeout:?} for {n} message(s), got {got} {summary:?}; \
                     last commands:\n{tail}",
                    self.addr
                );
            }
            record = self
                .shared
                .changed
                .wait_timeout(record, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        record.received.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// How many times `address` got RCPT so far, whatever the reply.
    pub fn rcpt_seen(&self, address: &str) -> usize {
        self.shared
            .lock()
            .rcpt_seen
            .get(address)
            .copied()
            .unwrap_or(0)
    }

    /// How many ends of data the sink has answered (or is about to), whatever the reply.
    pub fn data_ends(&self) -> usize {
        self.shared.lock().data_ends
    }

    /// Every command line received (not message data), with its connection number, in
    /// order of arrival; at most the first 100 000.
    pub fn commands(&self) -> Vec<(u64, String)> {
        self.shared.lock().commands.clone()
    }

    /// Closes the listener and every session.
    pub fn stop(self) {}
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the sink's thread has been printed already; don't panic in drop.
            let _ = thread.join();
        }
    }
}

fn command_tail(commands: &[(u64, String)], n: usize) -> String {
    let start = commands.len().saturating_sub(n);
    commands[start..]
        .iter()
        .map(|(c, line)| format!("  [{c}] {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("sink: parsing the STARTTLS certificate PEM");
    assert!(
        !chain.is_empty(),
        "sink: no certificate in the STARTTLS PEM"
    );
    let key =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("sink: parsing the STARTTLS key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("sink: TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("sink: STARTTLS certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

struct Server {
    config: SinkConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
}

impl Server {
    fn script(&self, stage: &Stage<'_>) -> Option<String> {
        self.config.script.as_ref().and_then(|script| script(stage))
    }

    fn log(&self, connection: u64, line: &str) {
        let mut record = self.shared.lock();
        if record.commands.len() < MAX_COMMAND_LOG {
            record.commands.push((connection, line.to_string()));
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    server: Arc<Server>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("sink: tokio listener");
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = {
                        let mut record = server.shared.lock();
                        record.connections += 1;
                        record.connections
                    };
                    server.shared.changed.notify_all();
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(session(stream, connection, server.clone()));
                }
                // Out of descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The state of one connection.
struct Session {
    server: Arc<Server>,
    connection: u64,
    tls: bool,
    /// The EHLO/HELO name, and whether it was EHLO.
    hello: Option<(String, bool)>,
    transaction: Option<Transaction>,
}

struct Transaction {
    began: Instant,
    from: String,
    params: String,
    smtputf8: bool,
    recipients: Vec<String>,
}

/// Why a run of the command loop ended.
enum End {
    /// The client asked for TLS and got `220`.
    StartTls,
    /// QUIT, EOF, an error, or a scripted hang-up.
    Close,
}

async fn session(stream: TcpStream, connection: u64, server: Arc<Server>) {
    let mut session = Session {
        server: server.clone(),
        connection,
        tls: false,
        hello: None,
        transaction: None,
    };
    let mut io = BufReader::new(Box::new(stream) as Box<dyn Stream>);
    let greeting = server
        .script(&Stage::Connect {
            seen: connection - 1,
        })
        .unwrap_or_else(|| format!("220 {HOSTNAME} ESMTP bulwark test sink"));
    if greeting.is_empty() {
        return;
    }
    if reply(&mut io, &greeting).await.is_err() || !greeting.starts_with('2') {
        return;
    }
    loop {
        match session.commands(&mut io).await {
            End::Close => return,
            End::StartTls => {
                let Some(acceptor) = server.tls.clone() else {
                    return;
                };
                // Whatever the client sent after STARTTLS in plain text is dropped,
                // never read as if it came over TLS (CVE-2011-0411).
                let plain = io.into_inner();
                let handshake = acceptor.accept(plain);
                match tokio::time::timeout(IDLE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => io = BufReader::new(Box::new(tls) as Box<dyn Stream>),
                    _ => return,
                }
                // RFC 3207 §4.2: forget everything from before TLS.
                session.tls = true;
                session.hello = None;
                session.transaction = None;
            }
        }
    }
}

/// Writes one reply (lines separated by `\r\n`, each with its code) and its CRLF.
async fn reply<W: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<W>,
    text: &str,
) -> io::Result<()> {
    let w = io.get_mut();
    w.write_all(text.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

/// Reads one line through its LF into `line`, refusing more than `max` bytes.
/// `Ok(false)` at a clean EOF (nothing read).
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    line.clear();
    loop {
        let buf = match tokio::time::timeout(IDLE_TIMEOUT, r.fill_buf()).await {
            Ok(buf) => buf?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        };
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF mid-line"));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

impl Session {
    /// Answers commands until the session ends or TLS starts.
    async fn commands(&mut self, io: &mut BufReader<Box<dyn Stream>>) -> End {
        let mut raw = Vec::with_capacity(512);
        loop {
            match read_line(io, &mut raw, MAX_COMMAND_LINE).await {
                Ok(true) => {}
                Ok(false) => return End::Close,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let _ = reply(io, "500 5.5.2 line too long").await;
                    return End::Close;
                }
                Err(_) => return End::Close,
            }
            let Ok(line) = std::str::from_utf8(&raw) else {
                if reply(io, "500 5.5.2 command is not UTF-8").await.is_err() {
                    return End::Close;
                }
                continue;
            };
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            self.server.log(self.connection, &line);
            let verb = line
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" | "HELO" => self.hello(&line, verb == "EHLO"),
                "MAIL" => self.mail(&line),
                "RCPT" => self.rcpt(&line),
                "DATA" => match self.data(io).await {
                    Ok(answer) => answer,
                    Err(_) => return End::Close,
                },
                "RSET" => {
                    self.transaction = None;
                    "250 2.0.0 Ok".to_string()
                }
                "NOOP" => "250 2.0.0 Ok".to_string(),
                "VRFY" => "252 2.5.0 Cannot VRFY user".to_string(),
                "QUIT" => {
                    let _ = reply(io, "221 2.0.0 Bye").await;
                    return End::Close;
                }
                "STARTTLS" => {
                    let (answer, start) = self.starttls(&line);
                    if start {
                        return match reply(io, &answer).await {
                            Ok(()) => End::StartTls,
                            Err(_) => End::Close,
                        };
                    }
                    answer
                }
                _ => "500 5.5.2 command not recognized".to_string(),
            };
            if answer.is_empty() || reply(io, &answer).await.is_err() {
                return End::Close;
            }
        }
    }

    fn hello(&mut self, line: &str, extended: bool) -> String {
        let name = line[4..].trim();
        if name.is_empty() {
            return "501 5.5.4 a domain or address literal is needed".into();
        }
        // A new greeting resets the session (RFC 5321 §4.1.4).
        self.transaction = None;
        self.hello = None;
        let stage = Stage::Hello { name, extended };
        let answer = match self.server.script(&stage) {
            Some(answer) => answer,
            None if !extended => format!("250 {HOSTNAME}"),
            None => {
                let c = &self.server.config;
                let mut lines = vec![format!("{HOSTNAME} hello {name}")];
                if c.pipelining {
                    lines.push("PIPELINING".into());
                }
                if c.eight_bit {
                    lines.push("8BITMIME".into());
                }
                if c.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if self.server.tls.is_some() && !self.tls {
                    lines.push("STARTTLS".into());
                }
                lines.push(format!("SIZE {}", c.max_message_size));
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            }
        };
        if answer.starts_with("250") {
            self.hello = Some((name.to_string(), extended));
        }
        answer
    }

    fn starttls(&mut self, line: &str) -> (String, bool) {
        if line.len() > "STARTTLS".len() {
            return ("501 5.5.4 STARTTLS takes no parameters".into(), false);
        }
        if self.server.tls.is_none() {
            return ("502 5.5.1 STARTTLS not offered".into(), false);
        }
        if self.tls {
            return ("503 5.5.1 TLS already active".into(), false);
        }
        if self.hello.as_ref().is_none_or(|(_, extended)| !extended) {
            return ("503 5.5.1 EHLO first".into(), false);
        }
        match self.server.script(&Stage::StartTls) {
            Some(answer) => {
                let start = answer.starts_with("220");
                (answer, start)
            }
            None => ("220 2.0.0 Ready to start TLS".into(), true),
        }
    }

    fn mail(&mut self, line: &str) -> String {
        let Some((_, extended)) = self.hello else {
            return "503 5.5.1 EHLO or HELO first".into();
        };
        if self.transaction.is_some() {
            return "503 5.5.1 nested MAIL command".into();
        }
        let Some(rest) = strip_prefix_ci(line, "MAIL FROM:") else {
            return "501 5.5.4 syntax: MAIL FROM:<address>".into();
        };
        let Some((from, params)) = path(rest) else {
            return "501 5.1.7 bad sender address syntax".into();
        };
        if !params.is_empty() && !extended {
            return "555 5.5.4 MAIL parameters need EHLO".into();
        }
        let c = &self.server.config;
        let mut smtputf8 = false;
        for param in params.split_ascii_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "BODY" if value.eq_ignore_ascii_case("7BIT") => {}
                "BODY" if value.eq_ignore_ascii_case("8BITMIME") && c.eight_bit => {}
                "SMTPUTF8" if value.is_empty() && c.smtputf8 => smtputf8 = true,
                "SIZE" => match value.parse::<usize>() {
                    Ok(size) if size > c.max_message_size => {
                        return "552 5.3.4 message size exceeds fixed limit".into()
                    }
                    Ok(_) => {}
                    Err(_) => return "501 5.5.4 bad SIZE value".into(),
                },
                _ => return format!("555 5.5.4 unsupported parameter {param}"),
            }
        }
        if !from.is_ascii() && !smtputf8 {
            return "553 5.6.7 non-ASCII sender needs SMTPUTF8".into();
        }
        let scripted = self.server.script(&Stage::Mail { from: &from });
        let answer = scripted.unwrap_or_else(|| "250 2.1.0 Ok".into());
        if answer.starts_with('2') {
            self.begin(from, params, smtputf8);
        }
        answer
    }

    fn begin(&mut self, from: String, params: &str, smtputf8: bool) {
        self.transaction = Some(Transaction {
            began: Instant::now(),
            from,
            params: params.to_string(),
            smtputf8,
            recipients: Vec::new(),
        });
    }

    fn rcpt(&mut self, line: &str) -> String {
        let Some(transaction) = self.transaction.as_mut() else {
            return "503 5.5.1 MAIL first".into();
        };
        let Some(rest) = strip_prefix_ci(line, "RCPT TO:") else {
            return "501 5.5.4 syntax: RCPT TO:<address>".into();
        };
        let Some((to, params)) = path(rest) else {
            return "501 5.1.3 bad recipient address syntax".into();
        };
        if to.is_empty() {
            return "501 5.1.3 empty recipient".into();
        }
        if !params.is_empty() {
            return format!("555 5.5.4 unsupported parameter {params}");
        }
        if !to.is_ascii() && !transaction.smtputf8 {
            return "553 5.6.7 non-ASCII recipient needs SMTPUTF8".into();
        }
        if transaction.recipients.len() >= MAX_RECIPIENTS {
            return "452 4.5.3 too many recipients".into();
        }
        let seen = {
            let mut record = self.server.shared.lock();
            let count = record.rcpt_seen.entry(to.clone()).or_insert(0);
            *count += 1;
            *count - 1
        };
        let answer = self
            .server
            .script(&Stage::Rcpt { to: &to, seen })
            .unwrap_or_else(|| "250 2.1.5 Ok".into());
        if answer.starts_with('2') {
            transaction.recipients.push(to);
        }
        answer
    }

    /// DATA: the content up to `.CRLF` and the reply to it. An error means the
    /// connection is unusable.
    async fn data(&mut self, io: &mut BufReader<Box<dyn Stream>>) -> io::Result<String> {
        let Some(transaction) = self.transaction.as_ref() else {
            return Ok("503 5.5.1 MAIL first".into());
        };
        if transaction.recipients.is_empty() {
            return Ok("554 5.5.1 no valid recipients".into());
        }
        reply(io, "354 End data with <CR><LF>.<CR><LF>").await?;
        let max = self.server.config.max_message_size;
        let mut data = Vec::new();
        let mut too_big = false;
        let mut line = Vec::with_capacity(1024);
        loop {
            if !read_line(io, &mut line, MAX_DATA_LINE).await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in DATA"));
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let content = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + content.len() > max {
                too_big = true;
            }
            if !too_big {
                data.extend_from_slice(content);
            }
        }
        let transaction = self.transaction.take().expect("checked above");
        if too_big {
            return Ok("552 5.3.4 message size exceeds fixed limit".into());
        }
        let seen = {
            let mut record = self.server.shared.lock();
            record.data_ends += 1;
            record.data_ends - 1
        };
        self.server.shared.changed.notify_all();
        let delay = self.server.config.data_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let stage = Stage::Data {
            from: &transaction.from,
            to: &transaction.recipients,
            seen,
        };
        let answer = self
            .server
            .script(&stage)
            .unwrap_or_else(|| format!("250 2.0.0 Ok: queued as {}", seen + 1));
        if answer.starts_with('2') {
            let delivered = Delivered {
                mail_from: transaction.from,
                mail_params: transaction.params,
                rcpt_to: transaction.recipients,
                data,
                tls: self.tls,
                connection: self.connection,
                ehlo: self
                    .hello
                    .as_ref()
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
                began: transaction.began,
                answered: Instant::now(),
            };
            self.server.shared.lock().received.push(delivered);
            self.server.shared.changed.notify_all();
        }
        Ok(answer)
    }
}

fn strip_prefix_ci<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &line[prefix.len()..])
}

/// `<address> params` (a space after the colon tolerated): the address without its
/// brackets and source route, and the parameters trimmed.
fn path(rest: &str) -> Option<(String, &str)> {
    let rest = rest.trim_start().strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let mut address = &rest[..end];
    // An obsolete source route, `@a,@b:user@c` (RFC 5321 §4.1.2): keep the mailbox.
    if address.starts_with('@') {
        address = address.split_once(':')?.1;
    }
    let params = &rest[end + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    Some((address.to_string(), params.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};

    /// A blocking client: sends raw bytes, reads whole replies.
    struct Client {
        reader: std::io::BufReader<std::net::TcpStream>,
        writer: std::net::TcpStream,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut c = Client {
                reader: std::io::BufReader::new(stream.try_clone().unwrap()),
                writer: stream,
            };
            assert!(c.reply().starts_with("220 "));
            c
        }

        fn send(&mut self, bytes: &str) {
            self.writer.write_all(bytes.as_bytes()).unwrap();
        }

        /// One reply, its lines joined with `\n`.
        fn reply(&mut self) -> String {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                assert!(
                    self.reader.read_line(&mut line).unwrap() > 0,
                    "EOF after {lines:?}"
                );
                let line = line.trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
        }
    }

    #[test]
    fn pipelined_transactions_arrive_unstuffed_with_their_envelopes() {
        let sink = Sink::start(SinkConfig::default());
        let mut c = Client::connect(sink.addr());
        c.send("EHLO client.test\r\n");
        let ehlo = c.reply();
        for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 67108864"] {
            assert!(
                ehlo.contains(&format!("250-{ext}")) || ehlo.contains(&format!("250 {ext}")),
                "{ehlo}"
            );
        }
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        // Everything in one write, as a PIPELINING client does.
        c.send(
            "MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
             DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nNOOP\r\n",
        );
        assert_eq!(c.reply(), "250 2.1.0 Ok");
        assert_eq!(c.reply(), "250 2.1.5 Ok");
        assert_eq!(c.reply(), "250 2.1.5 Ok");
        assert!(c.reply().starts_with("354 "));
        assert!(c.reply().starts_with("250 2.0.0 Ok"));
        assert_eq!(c.reply(), "250 2.0.0 Ok");
        c.send("RCPT TO:<b@y.test>\r\nMAIL FROM:<>\r\nRCPT TO:<d@y.test>\r\nRSET\r\nDATA\r\n");
        assert!(c.reply().starts_with("503 "), "RCPT before MAIL");
        assert_eq!(c.reply(), "250 2.1.0 Ok");
        assert_eq!(c.reply(), "250 2.1.5 Ok");
        assert_eq!(c.reply(), "250 2.0.0 Ok");
        assert!(c.reply().starts_with("503 "), "DATA after RSET");
        c.send("MAIL FROM:<> SIZE=10\r\nRCPT TO:<d@y.test>\r\nDATA\r\n");
        assert_eq!(c.reply(), "250 2.1.0 Ok");
        assert_eq!(c.reply(), "250 2.1.5 Ok");
        assert!(c.reply().starts_with("354 "));
        c.send("x\r\n.\r\nQUIT\r\n");
        assert!(c.reply().starts_with("250 "));
        assert!(c.reply().starts_with("221 "));
        let got = sink.wait_for(2, Duration::from_secs(5));
        assert_eq!(got[0].mail_from, "a@x.test");
        assert_eq!(got[0].mail_params, "BODY=8BITMIME");
        assert!(got[0].has_param("body=8bitmime"));
        assert_eq!(got[0].rcpt_to, ["b@y.test", "c@y.test"]);
        assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.dot\r\n");
        assert_eq!(got[0].header("subject").as_deref(), Some("hi"));
        assert_eq!((got[0].connection, got[0].tls), (1, false));
        assert_eq!(got[0].ehlo, "client.test");
        assert_eq!(
            (got[1].mail_from.as_str(), &got[1].data[..]),
            ("", &b"x\r\n"[..])
        );
        assert_eq!(
            sink.rcpt_seen("b@y.test"),
            1,
            "a RCPT refused before MAIL is not counted"
        );
        assert_eq!((sink.data_ends(), sink.connections()), (2, 1));
        sink.stop();
    }

    #[test]
    fn a_script_overrides_replies_and_counts_what_it_saw() {
        let sink = Sink::start(SinkConfig {
            smtputf8: false,
            pipelining: false,
            ..SinkConfig::scripted(|stage| match stage {
                Stage::Rcpt { to, .. } if to.starts_with("bad") => {
                    Some("550 5.1.1 no such user".into())
                }
                Stage::Data { seen: 0, .. } => Some("451 4.3.0 try later".into()),
                _ => None,
            })
        });
        for attempt in 0..2 {
            let mut c = Client::connect(sink.addr());
            c.send("EHLO c\r\n");
            let ehlo = c.reply();
            assert!(
                !ehlo.contains("SMTPUTF8") && !ehlo.contains("PIPELINING"),
                "{ehlo}"
            );
            c.send("MAIL FROM:<a@x.test> SMTPUTF8\r\n");
            assert!(c.reply().starts_with("555 "), "SMTPUTF8 was not offered");
            c.send("MAIL FROM:<a@x.test>\r\n");
            assert_eq!(c.reply(), "250 2.1.0 Ok");
            c.send("RCPT TO:<bad@y.test>\r\n");
            assert_eq!(c.reply(), "550 5.1.1 no such user");
            c.send("RCPT TO:<ok@y.test>\r\n");
            assert_eq!(c.reply(), "250 2.1.5 Ok");
            c.send("DATA\r\n");
            assert!(c.reply().starts_with("354 "));
            c.send("body\r\n.\r\n");
            let end = c.reply();
            if attempt == 0 {
                assert_eq!(end, "451 4.3.0 try later");
            } else {
                assert!(end.starts_with("250 "), "{end}");
            }
            c.send("QUIT\r\n");
            assert!(c.reply().starts_with("221 "));
            let mut rest = Vec::new();
            c.reader.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
        let got = sink.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcpt_to, ["ok@y.test"]);
        assert_eq!(got[0].connection, 2);
        assert_eq!(sink.rcpt_seen("bad@y.test"), 2);
        assert_eq!(sink.data_ends(), 2);
        assert_eq!(sink.connections(), 2);
        assert!(sink.commands().iter().any(|(c, l)| *c == 2 && l == "DATA"));
    }

    #[test]
    fn a_stopped_sink_refuses_connections_and_its_port_can_be_reused() {
        let sink = Sink::start(SinkConfig::default());
        let addr = sink.addr();
        let mut c = Client::connect(addr);
        sink.stop();
        // The session was closed with the sink.
        let mut rest = Vec::new();
        let _ = c.reader.read_to_end(&mut rest);
        assert!(std::net::TcpStream::connect(addr).is_err());
        let again = Sink::start_on(addr, SinkConfig::default());
        assert_eq!(again.addr(), addr);
        Client::connect(addr);
    }

    #[test]
    fn paths_and_parameters_parse() {
        assert_eq!(path("<a@b> X=1"), Some(("a@b".into(), "X=1")));
        assert_eq!(path(" <>"), Some((String::new(), "")));
        assert_eq!(path("<\"a>b\"@c>"), Some(("\"a>b\"@c".into(), "")));
        assert_eq!(path("<@r1,@r2:u@d>"), Some(("u@d".into(), "")));
        assert_eq!(path("a@b"), None);
        assert_eq!(path("<a@b>X"), None);
        assert_eq!(strip_prefix_ci("mail from:<x>", "MAIL FROM:"), Some("<x>"));
    }
}

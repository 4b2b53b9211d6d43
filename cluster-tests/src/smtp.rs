//! An SMTP load client: what a sending MTA does to a Bulwark node, over plain TCP,
//! with every step under a deadline and a typed outcome per message.
//!
//! One message per connection ([`send_one`], the way Postfix delivers to a gateway by
//! default) or several ([`SmtpConnection::send`] repeatedly). With PIPELINING (RFC
//! 2920, on by default when the server offers it) MAIL, RCPT and DATA go in one write
//! and their replies are read after it.
//!
//! The outcome says what the cluster promised: `250 … queued as ID` to the end of data
//! ([`Outcome::Accepted`]) means the message is committed; a 4xx or a connection that
//! failed before the end of data was written means it is not and may be sent again;
//! a connection that failed after the end of data was written ([`Outcome::Ambiguous`])
//! means nobody knows, and sending again may store it twice.
//!
//! Generated messages ([`Message::generate`]) carry `Message-ID: <TOKEN@load.test>`;
//! the node records it as `email.message_id` in the `message.received` event, next to
//! its own queue id (`message_id`), which [`received_messages`] reads back.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::api::{ApiClient, MAX_PAGE};

/// The domain of generated `Message-ID`s.
pub const MESSAGE_ID_DOMAIN: &str = "load.test";
/// Longest reply line accepted from a server (RFC 5321 §4.5.3.1.5 says 512).
const MAX_REPLY_LINE: usize = 8192;
/// Most lines of one multi-line reply.
const MAX_REPLY_LINES: usize = 100;

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name sent with EHLO.
    pub helo: String,
    /// The longest wait for the TCP connection, for one reply, or for one write.
    pub timeout: Duration,
    /// Send MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    pub pipelining: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            helo: "client.load.test".into(),
            timeout: Duration::from_secs(30),
            pipelining: true,
        }
    }
}

/// The step of the SMTP dialogue an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    /// `RSET` before a transaction, after a failed one on the same connection.
    Rset,
    Mail,
    Rcpt,
    Data,
    /// Writing the content and the final `.` (not all written yet).
    Content,
    /// Waiting for the reply to the end of data (all of it written).
    EndOfData,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Rset => "RSET",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Content => "content",
            Stage::EndOfData => "end of data",
        })
    }
}

/// One (possibly multi-line) server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// A connection that failed or timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// Short label: `refused`, `reset`, `closed`, `timeout`, `broken pipe`,
    /// `bad reply`, `io`.
    pub kind: &'static str,
    pub detail: String,
}

impl TransportError {
    fn timeout(what: &str, after: Duration) -> Self {
        Self {
            kind: "timeout",
            detail: format!("no {what} within {after:?}"),
        }
    }

    fn bad_reply(detail: String) -> Self {
        Self {
            kind: "bad reply",
            detail,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused",
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
            io::ErrorKind::BrokenPipe => "broken pipe",
            io::ErrorKind::UnexpectedEof => "closed",
            _ => "io",
        };
        Self {
            kind,
            detail: e.to_string(),
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What became of one attempt to send one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `250 … queued as ID` to the end of data: the cluster committed the message.
    Accepted { id: String },
    /// A 4xx reply: not accepted; the message may be sent again.
    TempFail { stage: Stage, reply: Reply },
    /// A 5xx reply: refused for good.
    PermFail { stage: Stage, reply: Reply },
    /// The connection failed or timed out before the end of data was completely
    /// written: the server cannot have accepted the message.
    Failed { stage: Stage, error: TransportError },
    /// The connection failed or timed out after the end of data was written, before a
    /// final reply: the message may or may not have been committed.
    Ambiguous { error: TransportError },
    /// A reply that breaks the protocol (e.g. `250` to the end of data without a
    /// queue id, or `250` to DATA): a server bug. At the end of data the message may
    /// have been committed.
    Unexpected { stage: Stage, reply: Reply },
}

impl Outcome {
    /// Whether sending the same message again is the right reaction (4xx, or no
    /// answer at all). Retrying an ambiguous attempt may store the message twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Outcome::TempFail { .. } | Outcome::Failed { .. } | Outcome::Ambiguous { .. }
        )
    }

    /// A short label for error counts, e.g. `451 at end of data`, `refused at connect`.
    pub fn kind(&self) -> String {
        match self {
            Outcome::Accepted { .. } => "accepted".into(),
            Outcome::TempFail { stage, reply }
            | Outcome::PermFail { stage, reply }
            | Outcome::Unexpected { stage, reply } => format!("{} at {stage}", reply.code),
            Outcome::Failed { stage, error } => format!("{} at {stage}", error.kind),
            Outcome::Ambiguous { error } => format!("ambiguous: {}", error.kind),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Accepted { id } => write!(f, "accepted as {id}"),
            Outcome::TempFail { stage, reply } => write!(f, "4xx at {stage}: {reply}"),
            Outcome::PermFail { stage, reply } => write!(f, "5xx at {stage}: {reply}"),
            Outcome::Failed { stage, error } => write!(f, "failed at {stage}: {error}"),
            Outcome::Ambiguous { error } => {
                write!(f, "ambiguous (after the end of data): {error}")
            }
            Outcome::Unexpected { stage, reply } => {
                write!(f, "unexpected reply at {stage}: {reply}")
            }
        }
    }
}

/// One attempt: its outcome and how long it took.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub outcome: Outcome,
    /// From the end of data completely written to the final reply (or to the error
    /// that ended the wait); `None` if the end of data was never written.
    pub end_of_data: Option<Duration>,
    /// The whole attempt: from connecting (or, on a reused connection, from MAIL) to
    /// the final reply.
    pub elapsed: Duration,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// Chosen by the generator; the header says `Message-ID: <TOKEN@load.test>`.
    pub token: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Header and body, CRLF line ends, not dot-stuffed.
    pub content: Vec<u8>,
}

impl Message {
    /// A message of `size` bytes (at least its header; one more when `size` would cut
    /// a line ending in half) to `rcpt` with
    /// `Message-ID: <token@load.test>`. The body is base64-like text derived from the
    /// token (so it does not compress away) and its first line starts with a dot, so
    /// every message exercises dot-stuffing.
    pub fn generate(token: &str, size: usize, rcpt: &str) -> Message {
        let mut content = format!(
            "From: Load Generator <load@{MESSAGE_ID_DOMAIN}>\r\n\
             To: <{rcpt}>\r\n\
             Subject: load test {token}\r\n\
             Message-ID: {}\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             .This line starts with a dot.\r\n",
            message_id(token)
        )
        .into_bytes();
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const LINE: usize = 76;
        let mut rng = XorShift::seeded(token.as_bytes());
        content.reserve(size.saturating_sub(content.len()));
        while content.len() < size {
            // A line of up to 76 characters plus CRLF; shorter where needed so that the
            // message ends exactly at `size` with a complete line.
            let room = size - content.len();
            let mut n = room.saturating_sub(2).min(LINE);
            if (1..=2).contains(&room.saturating_sub(n + 2)) {
                n -= 2;
            }
            let mut left = n;
            while left > 0 {
                let r = rng.next();
                for k in 0..left.min(10) {
                    content.push(ALPHABET[((r >> (6 * k)) & 63) as usize]);
                }
                left -= left.min(10);
            }
            content.extend_from_slice(b"\r\n");
        }
        Message {
            token: token.to_string(),
            mail_from: format!("load@{MESSAGE_ID_DOMAIN}"),
            rcpt_to: vec![rcpt.to_string()],
            content,
        }
    }
}

/// `<token@load.test>`: the `Message-ID` of a generated message.
pub fn message_id(token: &str) -> String {
    format!("<{token}@{MESSAGE_ID_DOMAIN}>")
}

/// The token of a generated message's `Message-ID` (`<token@load.test>`), if it is one.
pub fn token_of(message_id: &str) -> Option<&str> {
    message_id
        .strip_prefix('<')?
        .strip_suffix('>')?
        .strip_suffix(MESSAGE_ID_DOMAIN)?
        .strip_suffix('@')
}

/// Appends `content` to `out` as DATA sends it (RFC 5321 §4.5.2): a second dot before
/// every line that starts with one, a final CRLF if the content lacks one, then `.` CRLF.
pub fn dot_stuff_into(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 64 + 5);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Sends `msg` over `conn` (opened to `addr` when missing or no longer usable) until
/// it is accepted, as an MTA retries on a 4xx or a failed connection: at most ten
/// tries, none started after `deadline`. Returns the queue id. An ambiguous or
/// refused attempt is an error: where nothing should fail, it is a bug, and a retry
/// could queue the message twice.
pub async fn send_until_accepted(
    conn: &mut Option<SmtpConnection>,
    addr: SocketAddr,
    config: &ClientConfig,
    msg: &Message,
    deadline: std::time::Instant,
) -> Result<String> {
    let mut history = Vec::new();
    loop {
        ensure!(
            history.len() < 10 && std::time::Instant::now() < deadline,
            "{} not accepted by {addr}: {history:?}",
            msg.token
        );
        if !conn.as_ref().is_some_and(SmtpConnection::is_usable) {
            match SmtpConnection::open(addr, config).await {
                Ok(c) => *conn = Some(c),
                Err(outcome) => {
                    history.push(outcome.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("opened above");
        let outcome = c.send(msg).await.outcome;
        match outcome {
            Outcome::Accepted { id } => return Ok(id),
            Outcome::TempFail { .. } | Outcome::Failed { .. } => {
                history.push(outcome.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => bail!("{}: {other} (before: {history:?})", msg.token),
        }
    }
}

/// Connects to `addr`, sends `msg` and quits: one message per connection.
pub async fn send_one(addr: SocketAddr, msg: &Message, config: &ClientConfig) -> Delivery {
    let started = Instant::now();
    let mut conn = match SmtpConnection::open(addr, config).await {
        Ok(conn) => conn,
        Err(outcome) => {
            return Delivery {
                outcome,
                end_of_data: None,
                elapsed: started.elapsed(),
            }
        }
    };
    let mut delivery = conn.send(msg).await;
    delivery.elapsed = started.elapsed();
    conn.quit().await;
    delivery
}

/// An open SMTP session, greeted with EHLO, ready for transactions.
pub struct SmtpConnection {
    stream: TcpStream,
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    timeout: Duration,
    pipelining: bool,
    /// The server offered SIZE: MAIL FROM carries the message size.
    size: bool,
    /// A failed transaction may have left state behind: RSET before the next MAIL.
    need_rset: bool,
    /// False once the connection failed or the server said 421.
    usable: bool,
}

impl SmtpConnection {
    /// Connects, reads the greeting and says EHLO. A failure is the outcome of the
    /// message that was to be sent.
    pub async fn open(addr: SocketAddr, config: &ClientConfig) -> Result<Self, Outcome> {
        let failed = |stage, error| Outcome::Failed { stage, error };
        let stream = match tokio::time::timeout(config.timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(failed(
                    Stage::Connect,
                    TransportError::timeout("connection", config.timeout),
                ))
            }
            Ok(Err(e)) => return Err(failed(Stage::Connect, e.into())),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let mut conn = SmtpConnection {
            stream,
            input: Vec::with_capacity(1024),
            pos: 0,
            out: Vec::new(),
            timeout: config.timeout,
            pipelining: false,
            size: false,
            need_rset: false,
            usable: true,
        };
        let greeting = conn
            .read_reply()
            .await
            .map_err(|e| failed(Stage::Greeting, e))?;
        if greeting.code != 220 {
            return Err(refusal(Stage::Greeting, greeting));
        }
        let ehlo = format!("EHLO {}\r\n", config.helo);
        conn.write(ehlo.as_bytes())
            .await
            .map_err(|e| failed(Stage::Ehlo, e))?;
        let reply = conn
            .read_reply()
            .await
            .map_err(|e| failed(Stage::Ehlo, e))?;
        if reply.code != 250 {
            return Err(refusal(Stage::Ehlo, reply));
        }
        let offers = |ext: &str| {
            reply.lines.iter().skip(1).any(|l| {
                l.split_ascii_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(ext))
            })
        };
        conn.pipelining = config.pipelining && offers("PIPELINING");
        conn.size = offers("SIZE");
        Ok(conn)
    }

    /// Whether another message may be sent on this connection.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Runs one mail transaction: MAIL, RCPT for each recipient, DATA, the content.
    /// With several recipients, a refused recipient does not stop the message if
    /// another was accepted (the outcome is then the reply to the end of data).
    pub async fn send(&mut self, msg: &Message) -> Delivery {
        let started = Instant::now();
        let mut end_of_data = None;
        let outcome = self.transaction(msg, &mut end_of_data).await;
        match &outcome {
            Outcome::Accepted { .. } => {}
            Outcome::Failed { .. } | Outcome::Ambiguous { .. } => self.usable = false,
            Outcome::TempFail { reply, .. }
            | Outcome::PermFail { reply, .. }
            | Outcome::Unexpected { reply, .. } => {
                self.need_rset = true;
                if reply.code == 421 {
                    self.usable = false;
                }
            }
        }
        Delivery {
            outcome,
            end_of_data,
            elapsed: started.elapsed(),
        }
    }

    async fn transaction(&mut self, msg: &Message, eod: &mut Option<Duration>) -> Outcome {
        if !self.usable {
            return Outcome::Failed {
                stage: Stage::Mail,
                error: TransportError {
                    kind: "closed",
                    detail: "the connection is no longer usable".into(),
                },
            };
        }
        let rset = std::mem::take(&mut self.need_rset);
        let mut commands: Vec<(Stage, Vec<u8>)> = Vec::with_capacity(msg.rcpt_to.len() + 3);
        if rset {
            commands.push((Stage::Rset, b"RSET\r\n".to_vec()));
        }
        let size = if self.size {
            format!(" SIZE={}", msg.content.len())
        } else {
            String::new()
        };
        commands.push((
            Stage::Mail,
            format!("MAIL FROM:<{}>{size}\r\n", msg.mail_from).into_bytes(),
        ));
        for rcpt in &msg.rcpt_to {
            commands.push((Stage::Rcpt, format!("RCPT TO:<{rcpt}>\r\n").into_bytes()));
        }
        commands.push((Stage::Data, b"DATA\r\n".to_vec()));

        // Replies in command order: all at once with PIPELINING, else one by one,
        // stopping at the first refusal that ends the transaction.
        let mut first_refusal: Option<(Stage, Reply)> = None;
        let mut rcpt_ok = 0usize;
        let mut data_reply = None;
        if self.pipelining {
            let batch: Vec<u8> = commands.iter().flat_map(|(_, c)| c.clone()).collect();
            if let Err(e) = self.write(&batch).await {
                return Outcome::Failed {
                    stage: commands[0].0,
                    error: e,
                };
            }
        }
        for (stage, command) in &commands {
            if !self.pipelining {
                if *stage == Stage::Data && rcpt_ok == 0 {
                    // Every recipient was refused: no DATA without one.
                    let (stage, reply) = first_refusal.expect("a refused recipient");
                    return refusal(stage, reply);
                }
                if let Err(error) = self.write(command).await {
                    return Outcome::Failed {
                        stage: *stage,
                        error,
                    };
                }
            }
            let reply = match self.read_reply().await {
                Ok(reply) => reply,
                Err(error) => {
                    return Outcome::Failed {
                        stage: *stage,
                        error,
                    }
                }
            };
            if *stage == Stage::Data {
                data_reply = Some(reply);
                break;
            }
            let good = reply.class() == 2;
            if *stage == Stage::Rcpt && good {
                rcpt_ok += 1;
            }
            if reply.code == 421 || (!self.pipelining && !good && *stage != Stage::Rcpt) {
                // The server closes, or (one by one) RSET or MAIL failed: stop here.
                return refusal(*stage, reply);
            }
            if !good && first_refusal.is_none() {
                first_refusal = Some((*stage, reply));
            }
        }
        let data_reply = data_reply.expect("DATA is the last command");
        if data_reply.code != 354 {
            return match first_refusal {
                Some((stage, reply)) => refusal(stage, reply),
                None => refusal(Stage::Data, data_reply),
            };
        }
        // 354: the content must follow, whatever was refused before.
        let mut wire = std::mem::take(&mut self.out);
        wire.clear();
        dot_stuff_into(&msg.content, &mut wire);
        let written = self.write(&wire).await;
        self.out = wire;
        if let Err(error) = written {
            return Outcome::Failed {
                stage: Stage::Content,
                error,
            };
        }
        let sent = Instant::now();
        let reply = self.read_reply().await;
        *eod = Some(sent.elapsed());
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return Outcome::Ambiguous { error },
        };
        if reply.code == 250 {
            return match queue_id(&reply) {
                Some(id) => Outcome::Accepted { id },
                None => Outcome::Unexpected {
                    stage: Stage::EndOfData,
                    reply,
                },
            };
        }
        refusal(Stage::EndOfData, reply)
    }

    /// Sends QUIT and waits (bounded) for `221`; errors do not matter any more.
    pub async fn quit(mut self) {
        if !self.usable {
            return;
        }
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(res) => Ok(res?),
            Err(_) => Err(TransportError::timeout(
                "progress writing to the server",
                self.timeout,
            )),
        }
    }

    /// Reads one reply, multi-line or not, within the timeout.
    async fn read_reply(&mut self) -> Result<Reply, TransportError> {
        let deadline = Instant::now() + self.timeout;
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(deadline).await?;
            let bytes = line.as_bytes();
            let parsed = (bytes.len() >= 3 && bytes[..3].iter().all(u8::is_ascii_digit))
                .then(|| line[..3].parse::<u16>().ok())
                .flatten();
            let sep = bytes.get(3).copied();
            let (Some(c), Some(b' ' | b'-') | None) = (parsed, sep) else {
                return Err(TransportError::bad_reply(format!(
                    "not a reply line: {line:?}"
                )));
            };
            if *code.get_or_insert(c) != c {
                return Err(TransportError::bad_reply(format!(
                    "reply code changed within a reply: {line:?}"
                )));
            }
            lines.push(line.get(4..).unwrap_or("").to_string());
            if sep != Some(b'-') {
                return Ok(Reply { code: c, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(TransportError::bad_reply(format!(
                    "a reply of more than {MAX_REPLY_LINES} lines"
                )));
            }
        }
    }

    async fn read_line(&mut self, deadline: Instant) -> Result<String, TransportError> {
        loop {
            let pending = &self.input[self.pos..];
            if let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let mut line = &pending[..nl];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let text = String::from_utf8_lossy(line).into_owned();
                self.pos += nl + 1;
                if self.pos == self.input.len() {
                    self.input.clear();
                    self.pos = 0;
                }
                return Ok(text);
            }
            if pending.len() > MAX_REPLY_LINE {
                return Err(TransportError::bad_reply(format!(
                    "a reply line longer than {MAX_REPLY_LINE} bytes"
                )));
            }
            if self.pos > 0 {
                self.input.drain(..self.pos);
                self.pos = 0;
            }
            self.input.reserve(4096);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input));
            match read.await {
                Err(_) => return Err(TransportError::timeout("reply", self.timeout)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => {
                    return Err(TransportError {
                        kind: "closed",
                        detail: "the server closed the connection".into(),
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A refusing (or protocol-breaking) reply as an outcome.
fn refusal(stage: Stage, reply: Reply) -> Outcome {
    match reply.class() {
        4 => Outcome::TempFail { stage, reply },
        5 => Outcome::PermFail { stage, reply },
        _ => Outcome::Unexpected { stage, reply },
    }
}

/// The id in `250 2.0.0 Ok: queued as ID`.
fn queue_id(reply: &Reply) -> Option<String> {
    let last = reply.lines.last()?;
    let (_, id) = last.rsplit_once("queued as ")?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

/// xorshift64*: cheap, deterministic filler for message bodies.
struct XorShift(u64);

impl XorShift {
    fn seeded(seed: &[u8]) -> Self {
        // FNV-1a of the seed; never zero.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        XorShift(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One `message.received` event as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub seq: u64,
    /// The node's queue id (`message_id`), as in `250 … queued as ID`.
    pub id: String,
    /// The message's `Message-ID` header (`email.message_id`), angle brackets included.
    pub header_message_id: Option<String>,
    /// The node that received the message over SMTP.
    pub node: u64,
}

/// Every `message.received` event of node `node`, paging through
/// `GET /v1/events?type=message.received` with `next`. Fails if paging does not
/// advance or does not end within `timeout`.
pub async fn received_messages(
    api: &ApiClient,
    node: u64,
    timeout: Duration,
) -> Result<Vec<Received>> {
    let end = Instant::now() + timeout;
    let base = api.base_url(node)?;
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        ensure!(
            Instant::now() < end,
            "paging through node {node}'s message.received events did not finish in \
             {timeout:?} ({} read, after={after})",
            out.len()
        );
        let url = format!("{base}/v1/events?type=message.received&after={after}&limit={MAX_PAGE}");
        let resp = api
            .http()
            .get(&url)
            .bearer_auth(api.token(node)?)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("GET {url}"))?;
        if status.as_u16() == 401 {
            api.forget_token(node);
        }
        ensure!(status.is_success(), "GET {url}: HTTP {status}: {body}");
        let page: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON"))?;
        let events = page["events"]
            .as_array()
            .with_context(|| format!("GET {url}: no events array"))?;
        for e in events {
            let seq = e["seq"].as_u64().context("event without seq")?;
            ensure!(
                seq > after,
                "node {node}: event seq {seq} returned for after={after}"
            );
            ensure!(
                e["type"] == "message.received",
                "node {node}: event {seq} of type {} returned for type=message.received",
                e["type"]
            );
            let Some(id) = e["message_id"].as_str() else {
                bail!("node {node}: message.received event {seq} has no message_id: {e}");
            };
            out.push(Received {
                seq,
                id: id.to_string(),
                header_message_id: e["email"]["message_id"].as_str().map(str::to_string),
                node: e["node"].as_u64().unwrap_or(0),
            });
        }
        match page["next"].as_u64() {
            None => return Ok(out),
            Some(next) => {
                ensure!(
                    next > after,
                    "node {node}: events paging does not advance (after={after}, next={next})"
                );
                after = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        let mut out = Vec::new();
        dot_stuff_into(b".a\r\nb\r\n..c\r\n.\r\n", &mut out);
        assert_eq!(out, b"..a\r\nb\r\n...c\r\n..\r\n.\r\n");
        out.clear();
        dot_stuff_into(b"no final newline", &mut out);
        assert_eq!(out, b"no final newline\r\n.\r\n");
        out.clear();
        dot_stuff_into(b"", &mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn generated_messages() {
        for size in [0, 100, 401, 402, 403, 404, 2048, 51_200] {
            let m = Message::generate("tok-1", size, "user@example.test");
            assert!(m.content.len() >= size && m.content.ends_with(b"\r\n"));
            if size > 400 {
                assert_eq!(m.content.len(), size);
            }
            let text = String::from_utf8(m.content.clone()).unwrap();
            assert!(text.contains("\r\nMessage-ID: <tok-1@load.test>\r\n"));
            assert!(text.contains("\r\n\r\n.This line"));
            assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
            assert!(text.lines().all(|l| l.len() <= 78));
        }
        let a = Message::generate("a", 2048, "u@example.test");
        let b = Message::generate("b", 2048, "u@example.test");
        assert_ne!(a.content[300..], b.content[300..]);
        assert_eq!(token_of(&message_id(&a.token)), Some("a"));
        assert_eq!(token_of("<a@other.test>"), None);
        assert_eq!(token_of("a@load.test"), None);
    }

    #[test]
    fn queue_ids_and_refusals() {
        let r = |code, text: &str| Reply {
            code,
            lines: vec![text.to_string()],
        };
        assert_eq!(
            queue_id(&r(250, "2.0.0 Ok: queued as 01JABCDEFGHJKMNPQRSTVWXYZ0")).as_deref(),
            Some("01JABCDEFGHJKMNPQRSTVWXYZ0")
        );
        assert_eq!(queue_id(&r(250, "2.0.0 Ok")), None);
        assert!(matches!(
            refusal(Stage::EndOfData, r(451, "4.3.0 try later")),
            Outcome::TempFail { .. }
        ));
        assert!(matches!(
            refusal(Stage::Rcpt, r(554, "5.7.1 relay")),
            Outcome::PermFail { .. }
        ));
        assert!(matches!(
            refusal(Stage::Data, r(250, "Ok")),
            Outcome::Unexpected { .. }
        ));
    }

    /// A scripted server for one connection: answers EHLO (offering PIPELINING and
    /// SIZE), MAIL, RCPT, DATA and QUIT; after the content it sends `final_reply`, or
    /// closes the connection without a word if that is `None`. Returns what it read.
    async fn scripted(listener: tokio::net::TcpListener, final_reply: Option<&str>) -> String {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 mx.test ESMTP\r\n").await.unwrap();
        let mut seen = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return seen;
            }
            seen.push_str(&line);
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: String = match verb.as_str() {
                "EHLO" => "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n".into(),
                "MAIL" => "250 2.1.0 Ok\r\n".into(),
                "RCPT" if line.contains("@example.test>") => "250 2.1.5 Ok\r\n".into(),
                "RCPT" => "554 5.7.1 Relay access denied\r\n".into(),
                "RSET" => "250 2.0.0 Ok\r\n".into(),
                "DATA" => {
                    if !seen.lines().any(|l| l.contains("@example.test>")) {
                        w.write_all(b"503 5.5.1 Error: need RCPT command\r\n")
                            .await
                            .unwrap();
                        continue;
                    }
                    w.write_all(b"354 go ahead\r\n").await.unwrap();
                    loop {
                        line.clear();
                        assert!(r.read_line(&mut line).await.unwrap() > 0);
                        seen.push_str(&line);
                        if line == ".\r\n" {
                            break;
                        }
                    }
                    match final_reply {
                        Some(reply) => format!("{reply}\r\n"),
                        None => return seen,
                    }
                }
                "QUIT" => {
                    w.write_all(b"221 2.0.0 Bye\r\n").await.unwrap();
                    return seen;
                }
                _ => "500 5.5.2 Error: command not recognized\r\n".into(),
            };
            w.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    async fn against(
        final_reply: Option<&'static str>,
        rcpt: &str,
        pipelining: bool,
    ) -> (Delivery, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(scripted(listener, final_reply));
        let config = ClientConfig {
            timeout: Duration::from_secs(5),
            pipelining,
            ..ClientConfig::default()
        };
        let msg = Message::generate("t-1", 600, rcpt);
        let delivery = send_one(addr, &msg, &config).await;
        (delivery, server.await.unwrap())
    }

    #[tokio::test]
    async fn accepted_with_and_without_pipelining() {
        for pipelining in [true, false] {
            let (d, seen) = against(
                Some("250 2.0.0 Ok: queued as 01ABC"),
                "user@example.test",
                pipelining,
            )
            .await;
            assert_eq!(d.outcome, Outcome::Accepted { id: "01ABC".into() });
            assert!(d.end_of_data.is_some());
            assert!(seen.contains("MAIL FROM:<load@load.test> SIZE=600\r\n"));
            assert!(seen.contains("\r\n..This line starts with a dot.\r\n"));
            assert!(seen.ends_with(".\r\nQUIT\r\n"));
        }
    }

    #[tokio::test]
    async fn refusals_and_ambiguity() {
        let (d, _) = against(Some("451 4.3.0 try again later"), "user@example.test", true).await;
        assert!(matches!(
            d.outcome,
            Outcome::TempFail {
                stage: Stage::EndOfData,
                reply: Reply { code: 451, .. }
            }
        ));
        assert!(d.outcome.is_retryable());
        for pipelining in [true, false] {
            let (d, seen) = against(None, "user@elsewhere.test", pipelining).await;
            assert!(matches!(
                d.outcome,
                Outcome::PermFail {
                    stage: Stage::Rcpt,
                    reply: Reply { code: 554, .. }
                }
            ));
            assert_eq!(d.end_of_data, None);
            assert_eq!(seen.contains("DATA"), pipelining);
        }
        let (d, _) = against(None, "user@example.test", true).await;
        assert!(matches!(d.outcome, Outcome::Ambiguous { ref error } if error.kind == "closed"));
        assert!(d.end_of_data.is_some());
        assert_eq!(d.outcome.kind(), "ambiguous: closed");
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_ambiguous() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let msg = Message::generate("t-2", 100, "user@example.test");
        let d = send_one(addr, &msg, &ClientConfig::default()).await;
        assert!(matches!(
            d.outcome,
            Outcome::Failed { stage: Stage::Connect, ref error } if error.kind == "refused"
        ));
        assert_eq!(d.outcome.kind(), "refused at connect");
    }
}

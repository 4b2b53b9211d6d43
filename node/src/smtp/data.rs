//! DATA (RFC 5321 §4.1.1.4): the content up to CRLF.CRLF, dot-unstuffed.
//!
//! Only CRLF.CRLF ends the data. A bare LF or CR never ends it and never reaches the
//! store as such: it becomes CRLF or the message is refused (see [`BareNewline`]), so
//! a line such as `\n.\n` can neither end the message here nor be replayed as an end
//! of data to the next hop (SMTP smuggling).

use std::time::Instant as StdInstant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::budget::Reservation;
use super::conn::{Conn, ConnError};
use super::session::{Flow, Session};
use super::{BareNewline, NulBytes, Settings};

/// The content of a message as received, and what was wrong with it.
pub struct Content {
    pub body: Vec<u8>,
    /// Memory reserved for `body` until it is committed.
    pub reservation: Reservation,
    pub too_big: bool,
    /// The memory budget of all sessions could not hold it.
    pub over_budget: bool,
    /// A bare CR or LF was seen.
    pub bare_newline: bool,
    pub line_too_long: bool,
}

impl Content {
    pub fn new(reservation: Reservation) -> Self {
        Content {
            body: Vec::new(),
            reservation,
            too_big: false,
            over_budget: false,
            bare_newline: false,
            line_too_long: false,
        }
    }

    /// Appends `bytes` (no LF inside) if the size limit allows, bare CRs made CRLF.
    fn append(&mut self, bytes: &[u8], max: usize) {
        if memchr::memchr(b'\r', bytes).is_some() {
            self.bare_newline = true;
            let mut fixed = Vec::with_capacity(bytes.len() + 8);
            canonical_newlines(bytes, &mut fixed);
            return self.append_raw(&fixed, max);
        }
        self.append_raw(bytes, max);
    }

    fn append_raw(&mut self, bytes: &[u8], max: usize) {
        if self.too_big || self.over_budget {
            return;
        }
        let total = self.body.len() + bytes.len();
        if total > max {
            self.too_big = true;
        } else if !self.reservation.cover(total as u64) {
            self.over_budget = true;
        } else {
            self.body.extend_from_slice(bytes);
            return;
        }
        self.body = Vec::new();
        self.reservation.release();
    }
}

/// Copies `bytes` to `out` with every bare CR and bare LF written as CRLF. Returns
/// whether there was any.
pub fn canonical_newlines(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    let mut bare = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => {
                bare = true;
                out.extend_from_slice(b"\r\n");
            }
            b => out.push(b),
        }
        i += 1;
    }
    bare
}

pub async fn data<T: AsyncRead + AsyncWrite + Unpin>(s: &mut Session, conn: &mut Conn<T>) -> Flow {
    let Some(tx) = &s.tx else {
        return s.error(conn, "503 5.5.1 Error: need MAIL command");
    };
    if tx.rcpt_to.is_empty() {
        return s.error(conn, "503 5.5.1 Error: need RCPT command");
    }
    if tx.chunks.is_some() {
        return s.error(conn, "503 5.5.1 Error: DATA after BDAT");
    }
    conn.reply("354 End data with <CR><LF>.<CR><LF>");
    let started = StdInstant::now();
    let deadline = Instant::now() + s.settings().data_timeout;
    let reservation = s.shared.budget.reservation();
    match read_content(conn, s.settings(), reservation, deadline).await {
        Ok(content) => s.finish(conn, content, started).await,
        Err(ConnError::Timeout) => {
            let reply = format!(
                "421 4.4.2 {} Error: timeout exceeded",
                s.settings().hostname
            );
            conn.reply(&reply);
            Flow::Close
        }
        Err(e) => {
            tracing::debug!(client = %s.client.ip, error = %e, "connection lost during DATA");
            Flow::Close
        }
    }
}

/// Reads lines up to CRLF.CRLF. Content past the size limit is read and dropped, so
/// the client hears the 552 in step with the protocol.
async fn read_content<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    settings: &Settings,
    reservation: Reservation,
    deadline: Instant,
) -> Result<Content, ConnError> {
    let max = usize::try_from(settings.max_message_size).unwrap_or(usize::MAX);
    let max_line = settings.max_data_line_length;
    let mut content = Content::new(reservation);
    // The DATA command's CRLF counts as the CRLF before the first line.
    let mut after_crlf = true;
    // Inside a line too long to keep, whose start was already dropped.
    let mut mid_line = false;
    loop {
        let pending = conn.buffered();
        let Some(nl) = memchr::memchr(b'\n', pending) else {
            if pending.len() >= max_line {
                content.line_too_long = true;
                mid_line = true;
                let n = pending.len();
                conn.consume(n);
            }
            conn.fill(deadline).await?;
            continue;
        };
        let crlf = nl > 0 && pending[nl - 1] == b'\r';
        let line = &pending[..if crlf { nl - 1 } else { nl }];
        if mid_line {
            mid_line = false;
        } else if crlf && after_crlf && line == b"." {
            conn.consume(nl + 1);
            return Ok(content);
        } else {
            if nl + 1 > max_line {
                content.line_too_long = true;
            }
            let line = line.strip_prefix(b".").unwrap_or(line);
            content.append(line, max);
            content.append_raw(b"\r\n", max);
        }
        if !crlf {
            content.bare_newline = true;
        }
        after_crlf = crlf;
        conn.consume(nl + 1);
    }
}

impl Session {
    /// The end of a message's content: refuse it with the reason, or accept it.
    pub async fn finish<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        mut content: Content,
        transfer_started: StdInstant,
    ) -> Flow {
        let settings = self.settings();
        let nul = memchr::memchr(0, &content.body).is_some();
        let refusal = if content.too_big {
            Some((
                "message_too_big",
                format!(
                    "552 5.3.4 Error: message exceeds the size limit of {} octets",
                    settings.max_message_size
                ),
            ))
        } else if content.over_budget {
            Some((
                "insufficient_resources",
                "452 4.3.1 Error: insufficient system resources; try again later".to_string(),
            ))
        } else if content.line_too_long {
            Some((
                "line_too_long",
                format!(
                    "554 5.6.0 Error: a line exceeds {} octets",
                    settings.max_data_line_length
                ),
            ))
        } else if content.bare_newline && settings.bare_newline == BareNewline::Reject {
            Some((
                "bare_newline",
                "550 5.5.2 Error: bare <CR> or <LF> received".to_string(),
            ))
        } else if nul && settings.nul_bytes == NulBytes::Reject {
            Some((
                "nul_bytes",
                "554 5.6.0 Error: NUL octets in the message content".to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, reply)) = refusal {
            conn.reply(&reply);
            self.reject(reason, &reply);
            self.tx = None;
            return Flow::Continue;
        }
        if nul {
            content.body.retain(|&b| b != 0);
        }
        let tx = self
            .tx
            .take()
            .expect("a transaction is open at the end of data");
        let reply = self
            .shared
            .ingress
            .accept(self, tx, content.body, transfer_started)
            .await;
        conn.reply(&reply);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn settings(bare: BareNewline) -> Settings {
        Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            hostname: "mx.test".into(),
            domains: vec!["example.test".into()],
            max_message_size: 100,
            min_free_disk: 0,
            in_flow_delay: Duration::ZERO,
            max_recipients: 10,
            tls: None,
            require_tls: false,
            max_sessions: 10,
            max_sessions_per_ip: 10,
            max_line_length: 512,
            max_data_line_length: 50,
            max_errors: 10,
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            greet_delay: Duration::ZERO,
            proxy_protocol: false,
            bare_newline: bare,
            nul_bytes: NulBytes::Reject,
            allow_routing_from: Vec::new(),
            max_sessions_per_network: 10,
            shed_idle_after: Duration::from_secs(2),
            first_command_timeout: Duration::from_secs(5),
            stress_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
            max_buffered_bytes: 1 << 20,
        }
    }

    async fn read(input: &[u8], bare: BareNewline) -> (Content, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(input).await.unwrap();
        let mut conn = Conn::new(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        let budget = super::super::budget::Budget::new(1 << 20);
        let content = read_content(&mut conn, &settings(bare), budget.reservation(), deadline)
            .await
            .unwrap();
        (content, conn.buffered().to_vec())
    }

    #[tokio::test]
    async fn dot_stuffing_and_the_end_of_data() {
        let (c, rest) = read(
            b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
            BareNewline::Normalize,
        )
        .await;
        assert_eq!(c.body, b"Subject: x\r\n\r\n.leading dot\r\n");
        assert!(!c.bare_newline && !c.too_big && !c.line_too_long);
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn bare_newlines_never_end_the_data() {
        // Smuggling attempts: \n.\n, \n.\r\n, \r\n.\n and \r.\r before the real end.
        let input = b"a\n.\nb\n.\r\nc\r\n.\nd\r.\re\r\n.\r\nMAIL FROM:<x@y>\r\n";
        let (c, rest) = read(input, BareNewline::Normalize).await;
        assert!(c.bare_newline);
        // A "." line that is not the end is unstuffed like any other line; a bare CR
        // inside a line becomes CRLF, and the next hop gets it dot-stuffed.
        assert_eq!(c.body, b"a\r\n\r\nb\r\n\r\nc\r\n\r\nd\r\n.\r\ne\r\n");
        assert_eq!(rest, b"MAIL FROM:<x@y>\r\n");
    }

    #[tokio::test]
    async fn limits_are_read_through_to_the_end() {
        let big = format!("{}\r\n{}\r\n.\r\nNOOP\r\n", "x".repeat(45), "y".repeat(70));
        let (c, rest) = read(big.as_bytes(), BareNewline::Normalize).await;
        assert!(c.too_big && c.line_too_long);
        assert_eq!(rest, b"NOOP\r\n");
        let long = format!("{}\r\n.\r\n", ".".repeat(300));
        let (c, rest) = read(long.as_bytes(), BareNewline::Normalize).await;
        assert!(c.line_too_long);
        assert!(rest.is_empty());
    }

    #[test]
    fn canonical_newlines_fixes_every_bare_one() {
        let mut out = Vec::new();
        assert!(canonical_newlines(b"a\rb\nc\r\nd\r", &mut out));
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\n");
        out.clear();
        assert!(!canonical_newlines(b"a\r\nb", &mut out));
    }
}

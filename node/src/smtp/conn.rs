//! A client connection: buffered input read against deadlines, replies gathered and
//! sent when the client is waiting for them (RFC 2920 pipelining).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why reading from the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("client closed the connection")]
    Closed,
    #[error("timed out waiting for the client")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One line from the client, its ending removed.
pub struct Line {
    pub text: Vec<u8>,
    /// Ended in a bare LF instead of CRLF.
    pub bare_lf: bool,
    /// Longer than allowed; `text` holds only its beginning.
    pub too_long: bool,
}

const READ_CHUNK: usize = 64 * 1024;

pub struct Conn<T> {
    stream: T,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub fn new(stream: T) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
            pos: 0,
            out: Vec::with_capacity(512),
        }
    }

    /// The stream, with whatever the client sent ahead discarded (after STARTTLS,
    /// RFC 3207 §4.2: pipelined plaintext must not be taken as part of the TLS session).
    pub fn into_stream(self) -> T {
        self.stream
    }

    /// Queues a reply line (or several, joined by CRLF) to send before the next read.
    pub fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Sends the queued replies now.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more input, first sending any queued replies: the client is waiting for
    /// them if we have nothing left to process. Returns the number of new bytes.
    pub async fn fill(&mut self, deadline: Instant) -> Result<usize, ConnError> {
        self.flush().await?;
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let n = match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Ok(read) => read?,
            Err(_) => return Err(ConnError::Timeout),
        };
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(n)
    }

    /// Reads one line of at most `max` octets (line ending included). A longer line is
    /// read to its end and returned truncated with `too_long` set, so the session
    /// stays in step with the client.
    pub async fn read_line(&mut self, max: usize, deadline: Instant) -> Result<Line, ConnError> {
        let mut too_long = false;
        let mut kept: Vec<u8> = Vec::new();
        loop {
            let pending = self.buffered();
            if let Some(nl) = memchr::memchr(b'\n', pending) {
                let mut text = if too_long {
                    kept
                } else {
                    pending[..nl].to_vec()
                };
                let bare_lf = if text.last() == Some(&b'\r') {
                    text.pop();
                    false
                } else {
                    true
                };
                if nl + 1 > max {
                    too_long = true;
                    text.truncate(max);
                }
                self.consume(nl + 1);
                return Ok(Line {
                    text,
                    bare_lf,
                    too_long,
                });
            }
            if pending.len() > max {
                // Keep the beginning for the error message, drop the rest as it comes.
                if !too_long {
                    kept = pending[..max.min(256)].to_vec();
                    too_long = true;
                }
                let n = pending.len();
                self.consume(n);
            }
            self.fill(deadline).await?;
        }
    }

    /// Reads exactly `n` octets, handing them to `sink` piece by piece.
    pub async fn read_exact_with(
        &mut self,
        mut n: u64,
        deadline: Instant,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), ConnError> {
        while n > 0 {
            if self.buffered().is_empty() {
                self.fill(deadline).await?;
            }
            let pending = self.buffered();
            let take = pending.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            sink(&pending[..take]);
            self.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn lines_endings_and_limits() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let mut client = client;
        let long = "X".repeat(5000);
        client
            .write_all(format!("EHLO a\r\nNOOP\n{long}\r\nQUIT\r\n").as_bytes())
            .await
            .unwrap();
        let l = conn.read_line(512, later()).await.unwrap();
        assert_eq!(
            (l.text.as_slice(), l.bare_lf, l.too_long),
            (&b"EHLO a"[..], false, false)
        );
        let l = conn.read_line(512, later()).await.unwrap();
        assert_eq!((l.text.as_slice(), l.bare_lf), (&b"NOOP"[..], true));
        let l = conn.read_line(512, later()).await.unwrap();
        assert!(l.too_long);
        assert!(l.text.len() <= 512);
        let l = conn.read_line(512, later()).await.unwrap();
        assert_eq!(l.text, b"QUIT");
        drop(client);
        assert!(matches!(
            conn.read_line(512, later()).await,
            Err(ConnError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(server);
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            conn.read_line(512, deadline).await,
            Err(ConnError::Timeout)
        ));
    }
}

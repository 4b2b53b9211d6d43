//! The SMTP client to the next hop (RFC 5321): one message per connection, a result
//! for every recipient.
//!
//! A reply before the recipients are known applies to all of them: 4xx or a broken
//! connection defers them, 5xx fails them. RCPT replies are per recipient, and the
//! reply to the end of data applies to those whose RCPT was accepted.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One reply of the next hop: code and full text (lines joined by a space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn local(code: u16, text: &str) -> Reply {
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
}

pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// Sends one message to `addr` and returns a reply per recipient.
pub async fn send(
    addr: &str,
    ehlo_name: &str,
    timeouts: &Timeouts,
    message: &Outgoing<'_>,
) -> Replies {
    match session(addr, ehlo_name, timeouts, message).await {
        Ok(replies) => replies,
        Err(reply) => message
            .recipients
            .iter()
            .map(|r| (r.to_string(), reply.clone()))
            .collect(),
    }
}

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn reply(&mut self, timeout: Duration) -> Result<Reply, Reply> {
        let mut text = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            let read = tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await;
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
            if line.len() > 4096 || text.len() > 64 * 1024 {
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
                return Ok(Reply { code, text });
            }
        }
    }

    async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), Reply> {
        match tokio::time::timeout(timeout, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Reply::local(
                451,
                &format!("4.4.2 writing to the next hop: {e}"),
            )),
            Err(_) => Err(Reply::local(451, "4.4.2 timeout writing to the next hop")),
        }
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<Reply, Reply> {
        self.send(format!("{line}\r\n").as_bytes(), timeout).await?;
        self.reply(timeout).await
    }
}

/// A reply that stops the session for every recipient: 5xx stays 5xx, anything
/// else is a temporary failure.
fn stop(reply: Reply) -> Reply {
    if reply.code >= 400 {
        reply
    } else {
        Reply::local(451, &format!("4.5.0 unexpected reply: {}", reply.text))
    }
}

async fn session(
    addr: &str,
    ehlo_name: &str,
    t: &Timeouts,
    m: &Outgoing<'_>,
) -> Result<Replies, Reply> {
    let stream = match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(Reply::local(
                451,
                &format!("4.4.1 cannot connect to {addr}: {e}"),
            ))
        }
        Err(_) => {
            return Err(Reply::local(
                451,
                &format!("4.4.1 timeout connecting to {addr}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut c = Client {
        reader: BufReader::new(r),
        writer: w,
    };
    let greeting = c.reply(t.command).await?;
    if greeting.code != 220 {
        return Err(stop(greeting));
    }
    let ehlo = c.command(&format!("EHLO {ehlo_name}"), t.command).await?;
    let extensions: Vec<String> = if ehlo.code == 250 {
        ehlo.text
            .split(" 250")
            .skip(1)
            .map(|l| l.trim_start_matches(['-', ' ']).to_ascii_uppercase())
            .collect()
    } else {
        let helo = c.command(&format!("HELO {ehlo_name}"), t.command).await?;
        if helo.code != 250 {
            return Err(stop(helo));
        }
        Vec::new()
    };
    let has = |name: &str| extensions.iter().any(|e| e.split(' ').next() == Some(name));
    if m.smtputf8 && !has("SMTPUTF8") {
        let _ = c.command("QUIT", t.command).await;
        return Err(Reply::local(
            550,
            "5.6.7 the next hop does not support SMTPUTF8, which this message needs",
        ));
    }
    let mut mail = format!("MAIL FROM:<{}>", m.mail_from);
    if m.eight_bit && has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if m.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if has("SIZE") {
        mail.push_str(&format!(" SIZE={}", m.headers.len() + m.body.len()));
    }
    let reply = c.command(&mail, t.command).await?;
    if !reply.is_positive() {
        let _ = c.command("QUIT", t.command).await;
        return Err(stop(reply));
    }
    let mut replies = Vec::with_capacity(m.recipients.len());
    for rcpt in &m.recipients {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"), t.command).await?;
        replies.push((rcpt.to_string(), reply));
    }
    let accepted: Vec<usize> = (0..replies.len())
        .filter(|&i| replies[i].1.is_positive())
        .collect();
    if accepted.is_empty() {
        let _ = c.command("QUIT", t.command).await;
        return Ok(replies);
    }
    let data = c.command("DATA", t.command).await?;
    let final_reply = if data.code == 354 {
        c.send(m.headers, t.data).await?;
        c.send(&dot_stuff(m.body), t.data).await?;
        c.send(b".\r\n", t.data).await?;
        c.reply(t.data).await?
    } else {
        stop(data)
    };
    for i in accepted {
        replies[i].1 = final_reply.clone();
    }
    let _ = c.command("QUIT", t.command).await;
    Ok(replies)
}

/// Doubles the dot at the start of every line (RFC 5321 §4.5.2). The stored content
/// has CRLF line endings only (the ingress makes sure of it), so nothing inside it
/// can end the data early at the next hop.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 2);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
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
    fn replies_classify() {
        assert!(Reply::local(250, "ok").is_positive());
        assert!(Reply::local(354, "go").is_positive());
        assert!(Reply::local(550, "no").is_permanent());
        assert_eq!(stop(Reply::local(250, "odd")).code, 451);
        assert_eq!(stop(Reply::local(421, "bye")).code, 421);
    }
}

//! EHLO and HELO (RFC 5321 §4.1.1.1): the greeting, and the extensions we offer.

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Conn;
use super::session::{Flow, Session};

pub fn ehlo<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    name: String,
    extended: bool,
) -> Flow {
    // A new greeting resets any transaction, like RSET.
    s.tx = None;
    s.esmtp = extended;
    s.client.helo = Some(name);
    let hostname = &s.settings().hostname;
    if !extended {
        conn.reply(&format!("250 {hostname}"));
        return Flow::Continue;
    }
    let mut lines = vec![
        hostname.clone(),
        "PIPELINING".to_string(),
        format!("SIZE {}", s.settings().max_message_size),
        "8BITMIME".to_string(),
        "SMTPUTF8".to_string(),
        "ENHANCEDSTATUSCODES".to_string(),
        "CHUNKING".to_string(),
    ];
    if s.shared.tls.is_some() && s.client.tls.is_none() {
        lines.push("STARTTLS".to_string());
    }
    let last = lines.len() - 1;
    let reply: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("250{}{line}", if i == last { ' ' } else { '-' }))
        .collect();
    conn.reply(&reply.join("\r\n"));
    Flow::Continue
}

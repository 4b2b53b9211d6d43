//! BDAT (RFC 3030 CHUNKING): content in counted chunks, the last one marked LAST.
//!
//! Chunks are exact octet counts, so nothing in them can end the message early; the
//! assembled content still gets its bare CRs and LFs made CRLF (or refused), as DATA
//! does, because we offer 8BITMIME and not BINARYMIME.

use std::time::Instant as StdInstant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::budget::Reservation;
use super::conn::{Conn, ConnError};
use super::data::{canonical_newlines, Content};
use super::session::{Flow, Session};

/// The chunks received so far in a transaction.
pub struct Chunks {
    body: Vec<u8>,
    reservation: Reservation,
    over_budget: bool,
    started: StdInstant,
    deadline: Instant,
}

pub async fn bdat<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    size: u64,
    last: bool,
) -> Flow {
    let settings = s.settings();
    let max = settings.max_message_size;
    let ready = s.tx.as_ref().is_some_and(|tx| !tx.rcpt_to.is_empty());
    if !ready {
        // The chunk follows the command whatever we answer: read past it to stay in step.
        let deadline = Instant::now() + settings.data_timeout;
        if let Err(flow) = skip(s, conn, size, deadline).await {
            return flow;
        }
        let reply = if s.tx.is_none() {
            "503 5.5.1 Error: need MAIL command"
        } else {
            "503 5.5.1 Error: need RCPT command"
        };
        return s.error(conn, reply);
    }
    let data_timeout = settings.data_timeout;
    let reservation = s.shared.budget.reservation();
    let tx = s.tx.as_mut().expect("checked above");
    let chunks = tx.chunks.get_or_insert_with(|| Chunks {
        body: Vec::new(),
        reservation,
        over_budget: false,
        started: StdInstant::now(),
        deadline: Instant::now() + data_timeout,
    });
    let deadline = chunks.deadline;
    let total = (chunks.body.len() as u64).saturating_add(size);
    if total > max {
        // Refused as soon as the size is declared (RFC 3030 §2: a failed chunk ends
        // the transaction; later BDATs get 503). The chunk follows the command
        // whatever we answer: it is read and dropped, to stay in step.
        let reply = format!("552 5.3.4 Error: message exceeds the size limit of {max} octets");
        conn.reply(&reply);
        s.reject("message_too_big", &reply);
        s.tx = None;
        if let Err(flow) = skip(s, conn, size, deadline).await {
            return flow;
        }
        return Flow::Continue;
    }
    if !chunks.over_budget && !chunks.reservation.cover(total) {
        chunks.over_budget = true;
        chunks.body = Vec::new();
        chunks.reservation.release();
    }
    let result = if chunks.over_budget {
        conn.read_exact_with(size, deadline, |_| {}).await
    } else {
        let body = &mut chunks.body;
        body.reserve(usize::try_from(size).unwrap_or(0));
        conn.read_exact_with(size, deadline, |piece| body.extend_from_slice(piece))
            .await
    };
    if let Err(e) = result {
        return lost(s, conn, e);
    }
    if !last {
        conn.reply(&format!("250 2.0.0 {size} octets received"));
        return Flow::Continue;
    }
    let chunks =
        s.tx.as_mut()
            .and_then(|tx| tx.chunks.take())
            .expect("chunks were started above");
    let mut content = Content::new(chunks.reservation);
    content.over_budget = chunks.over_budget;
    if !chunks.over_budget {
        let mut body = Vec::with_capacity(chunks.body.len() + 2);
        content.bare_newline = canonical_newlines(&chunks.body, &mut body);
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        content.body = body;
    }
    s.finish(conn, content, chunks.started).await
}

async fn skip<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    size: u64,
    deadline: Instant,
) -> Result<(), Flow> {
    conn.read_exact_with(size, deadline, |_| {})
        .await
        .map_err(|e| lost(s, conn, e))
}

fn lost<T: AsyncRead + AsyncWrite + Unpin>(s: &Session, conn: &mut Conn<T>, e: ConnError) -> Flow {
    if matches!(e, ConnError::Timeout) {
        conn.reply(&format!(
            "421 4.4.2 {} Error: timeout exceeded",
            s.settings().hostname
        ));
    } else {
        tracing::debug!(client = %s.client.ip, error = %e, "connection lost during BDAT");
    }
    Flow::Close
}

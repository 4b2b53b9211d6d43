//! MAIL FROM (RFC 5321 §4.1.1.2) with SIZE (RFC 1870), BODY (RFC 6152) and
//! SMTPUTF8 (RFC 6531).

use tokio::io::{AsyncRead, AsyncWrite};

use super::command::Param;
use super::conn::Conn;
use super::session::{Flow, Session, Transaction};
use crate::delivery::Admission;

pub async fn mail<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    from: String,
    params: Vec<Param>,
) -> Flow {
    if s.client.helo.is_none() {
        return s.error(conn, "503 5.5.1 Error: send HELO/EHLO first");
    }
    if s.tx.is_some() {
        return s.error(conn, "503 5.5.1 Error: nested MAIL command");
    }
    if s.settings().require_tls && s.client.tls.is_none() {
        return s.error(conn, "530 5.7.0 Must issue a STARTTLS command first");
    }
    let mut smtputf8 = false;
    let mut eight_bit = false;
    let mut announced = 0;
    for param in &params {
        if !s.esmtp {
            return s.error(conn, "555 5.5.4 Error: parameters need EHLO");
        }
        match (param.key.as_str(), param.value.as_deref()) {
            ("SIZE", Some(value)) => {
                let Ok(size) = value.parse::<u64>() else {
                    return s.error(conn, "501 5.5.4 Syntax: SIZE=number");
                };
                let max = s.settings().max_message_size;
                if size > max {
                    let reply =
                        format!("552 5.3.4 Error: message size {size} exceeds the limit of {max}");
                    conn.reply(&reply);
                    s.reject_with("message_too_big", &reply, Some(from), Vec::new());
                    return Flow::Continue;
                }
                announced = size;
            }
            ("BODY", Some(value)) if value.eq_ignore_ascii_case("8BITMIME") => eight_bit = true,
            ("BODY", Some(value)) if value.eq_ignore_ascii_case("7BIT") => {}
            ("SMTPUTF8", None) => smtputf8 = true,
            _ => {
                let reply = format!("555 5.5.4 Error: unsupported parameter {}", param.key);
                return s.error(conn, &reply);
            }
        }
    }
    if !s.shared.disk.has_room_for(announced) {
        let reply = "452 4.3.1 Error: insufficient system storage; try again later";
        conn.reply(reply);
        s.reject_with("insufficient_storage", reply, Some(from), Vec::new());
        return Flow::Continue;
    }
    if !smtputf8 && !from.is_ascii() {
        return s.error(conn, "553 5.6.7 Error: a non-ASCII address needs SMTPUTF8");
    }
    // Delivery behind: wait for it to start one more message, or in_flow_delay; the
    // replies to what the client pipelined before this MAIL (the last message's
    // `250 queued as`) go out first.
    let delay = s.settings().in_flow_delay;
    if !delay.is_zero() && s.shared.backlog.is_behind() {
        let _ = conn.flush().await;
    }
    if s.shared.backlog.admit(delay).await == Admission::TimedOut {
        tracing::debug!(client = %s.client.ip, ?delay, "delivery behind: MAIL waited the whole in_flow_delay");
    }
    s.tx = Some(Transaction {
        mail_from: from,
        rcpt_to: Vec::new(),
        smtputf8,
        eight_bit,
        chunks: None,
    });
    conn.reply("250 2.1.0 Ok");
    Flow::Continue
}

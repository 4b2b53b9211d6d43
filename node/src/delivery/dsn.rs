//! Delivery status notifications (RFC 3464): what the envelope sender of a message
//! gets when some of its recipients failed for good.
//!
//! The report is a `multipart/report` with a human-readable part, the
//! machine-readable `message/delivery-status` and the failed message's headers
//! (`text/rfc822-headers`: the body is not sent back). It is sent with the null
//! sender, so that it can never cause another one; messages that had the null sender
//! get none.

use crate::mail::one_line;
use bulwark_model::{Bounce, MessageId, QueueEntry};
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// A recipient that failed and what the next hop (or we) said.
pub struct Failed<'a> {
    pub address: &'a str,
    pub reply: &'a str,
    /// Where the reply came from: `host:port`, or None when it is ours.
    pub remote: Option<&'a str>,
}

/// The most header bytes of the failed message quoted back.
const MAX_QUOTED_HEADERS: usize = 64 * 1024;

/// The bounce for `failed` recipients of `entry`, or None when the message had the
/// null sender (a bounce itself, or mail that asks for none).
pub fn bounce(
    hostname: &str,
    entry: &QueueEntry,
    body: &[u8],
    failed: &[Failed<'_>],
    now_ms: i64,
) -> Option<Bounce> {
    if entry.mail_from.is_empty() || failed.is_empty() {
        return None;
    }
    let id = MessageId::new(now_ms, rand::random());
    let utf8 = !entry.mail_from.is_ascii() || failed.iter().any(|f| !f.address.is_ascii());
    // RFC 6533: reports about internationalised addresses use the global types.
    let (status_type, address_type) = if utf8 {
        ("message/global-delivery-status", "utf-8")
    } else {
        ("message/delivery-status", "rfc822")
    };
    let boundary = format!("=_bulwark_{id}");
    let mut out = String::with_capacity(4096);
    let header = |out: &mut String, name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&one_line(value, 900));
        out.push_str("\r\n");
    };
    header(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{hostname}>"),
    );
    header(&mut out, "To", &format!("<{}>", entry.mail_from));
    header(&mut out, "Subject", "Undelivered Mail Returned to Sender");
    header(&mut out, "Date", &date(now_ms));
    header(&mut out, "Message-ID", &format!("<{id}@{hostname}>"));
    header(&mut out, "Auto-Submitted", "auto-replied");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    out.push_str(&format!("\r\n--{boundary}\r\n"));
    header(&mut out, "Content-Type", "text/plain; charset=utf-8");
    header(&mut out, "Content-Description", "Notification");
    out.push_str(&format!(
        "\r\nThis is the mail system at host {hostname}.\r\n\r\n\
         Your message {} could not be delivered to one or more recipients.\r\n\
         It has not been delivered to them and will not be retried.\r\n\r\n",
        entry.message_id
    ));
    for f in failed {
        out.push_str(&format!("<{}>: {}\r\n", f.address, one_line(f.reply, 900)));
    }

    out.push_str(&format!("\r\n--{boundary}\r\n"));
    header(&mut out, "Content-Type", status_type);
    header(&mut out, "Content-Description", "Delivery report");
    out.push_str("\r\n");
    header(&mut out, "Reporting-MTA", &format!("dns; {hostname}"));
    header(&mut out, "X-Bulwark-Id", &entry.message_id.to_string());
    header(&mut out, "Arrival-Date", &date(entry.time_ms));
    for f in failed {
        out.push_str("\r\n");
        header(
            &mut out,
            "Final-Recipient",
            &format!("{address_type}; {}", f.address),
        );
        header(&mut out, "Action", "failed");
        header(&mut out, "Status", &status(f.reply));
        if let Some(remote) = f.remote {
            let host = remote.rsplit_once(':').map_or(remote, |(host, _)| host);
            header(&mut out, "Remote-MTA", &format!("dns; {host}"));
        }
        header(&mut out, "Diagnostic-Code", &format!("smtp; {}", f.reply));
    }

    out.push_str(&format!("\r\n--{boundary}\r\n"));
    header(&mut out, "Content-Type", "text/rfc822-headers");
    header(
        &mut out,
        "Content-Description",
        "Undelivered Message Headers",
    );
    out.push_str("\r\n");
    let mut body_out = out.into_bytes();
    body_out.extend_from_slice(quoted_headers(body));
    if !body_out.ends_with(b"\r\n") {
        body_out.extend_from_slice(b"\r\n");
    }
    body_out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Bounce {
        message_id: id,
        recipient: entry.mail_from.clone(),
        failed: failed.iter().map(|f| f.address.to_string()).collect(),
        body: body_out,
    })
}

/// The failed message's header section, cut at a line end if it is long.
fn quoted_headers(body: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(body, b"\r\n\r\n").map_or(body.len(), |i| i + 2);
    let headers = &body[..end];
    if headers.len() <= MAX_QUOTED_HEADERS {
        return headers;
    }
    let cut = memchr::memrchr(b'\n', &headers[..MAX_QUOTED_HEADERS]).map_or(0, |i| i + 1);
    &headers[..cut]
}

/// The enhanced status code (RFC 3463) in a reply, or one made from its class.
fn status(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or_default();
    if let Some(candidate) = words.next() {
        let parts: Vec<&str> = candidate.split('.').collect();
        let valid = parts.len() == 3
            && ["2", "4", "5"].contains(&parts[0])
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if valid {
            return candidate.to_string();
        }
    }
    match code.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// `ms` as an RFC 5322 date.
pub(crate) fn date(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc2822)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_model::{Action, QueuedRecipient, RecipientStatus};

    fn entry(mail_from: &str) -> QueueEntry {
        QueueEntry {
            message_id: MessageId(77),
            received_seq: 1,
            time_ms: 1_764_300_000_000,
            mail_from: mail_from.into(),
            recipients: vec![QueuedRecipient {
                address: "bob@example.test".into(),
                status: RecipientStatus::Pending,
            }],
            eight_bit: false,
            smtputf8: false,
            action: Action::Deliver,
            score: 0.0,
            received_by: 1,
            lease: None,
        }
    }

    #[test]
    fn a_report_names_each_failed_recipient_and_quotes_only_headers() {
        let body = b"Subject: hello\r\nFrom: a@sender.test\r\n\r\nsecret body\r\n";
        let failed = [Failed {
            address: "bob@example.test",
            reply: "550 5.1.1 <bob@example.test>: no such user\r\nInjected: header",
            remote: Some("mx.example.test:25"),
        }];
        let bounce = bounce(
            "gw.test",
            &entry("a@sender.test"),
            body,
            &failed,
            1_764_300_100_000,
        )
        .expect("a sender to tell");
        assert_eq!(bounce.recipient, "a@sender.test");
        let text = String::from_utf8(bounce.body).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; bob@example.test\r\n"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Remote-MTA: dns; mx.example.test\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Subject: hello\r\n"));
        assert!(!text.contains("secret body"));
        assert!(!text.contains("\r\nInjected: header"));
        assert!(text.ends_with("--\r\n"));
        // Every line ends in CRLF: no bare LF anywhere.
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn the_null_sender_gets_no_bounce() {
        let failed = [Failed {
            address: "bob@example.test",
            reply: "550 no",
            remote: None,
        }];
        assert!(bounce("gw.test", &entry(""), b"", &failed, 0).is_none());
    }

    #[test]
    fn status_codes_come_from_the_reply_or_its_class() {
        assert_eq!(status("550 5.7.1 denied"), "5.7.1");
        assert_eq!(status("554 no enhanced code"), "5.0.0");
        assert_eq!(status("451 4.4.1 cannot connect"), "4.4.1");
        assert_eq!(status("451 try later"), "4.0.0");
    }
}

//! Made-up traffic for benchmarks: message `n` of a log of some 480,000 messages
//! from 20,000 senders in 2,000 domains to 10,000 recipients in 50 domains, from
//! 30,000 client addresses, one every 5 s (about 28 days) on three nodes' slightly
//! skewed clocks; 85% delivered, 8% tagged, 4% quarantined, 3% rejected. The same
//! `n` always gives the same message.

use crate::event::{Command, Op};
use crate::message::{
    AcceptedMessage, Action, Client, Envelope, MessageId, MessageReceived, RejectedMessage,
    Rejection, Timings, Verdict,
};

/// The time of message 0.
pub const BASE_MS: i64 = 1_764_300_000_000;
/// Time between two messages: 480,000 messages span about 28 days.
pub const STEP_MS: i64 = 5_000;

/// The properties of message `n`, drawn from a fixed pseudo-random sequence.
pub struct Shape {
    pub sender: String,
    pub recipients: Vec<String>,
    pub ip: String,
    pub action: Action,
    pub time_ms: i64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Message `n`'s properties.
pub fn shape(n: u64) -> Shape {
    let r = |salt: u64| mix(n.wrapping_mul(31).wrapping_add(salt));
    let sender = r(1) % 20_000;
    let recipients = (0..1 + r(2) % 3)
        .map(|k| {
            let who = r(10 + k) % 10_000;
            format!("user{who}@dept{}.example.test", who % 50)
        })
        .collect();
    let ip = r(3) % 30_000;
    let action = match r(4) % 100 {
        0..85 => Action::Deliver,
        85..93 => Action::Tag,
        93..97 => Action::Quarantine,
        _ => Action::Reject,
    };
    // One node's clock runs up to two seconds behind the others'.
    let skew = if n % 3 == 2 {
        -((r(5) % 2_000) as i64)
    } else {
        0
    };
    Shape {
        sender: format!("s{sender}@sender{}.test", sender % 2_000),
        recipients,
        ip: format!("10.{}.{}.{}", ip >> 16, (ip >> 8) & 255, ip & 255),
        action,
        time_ms: BASE_MS + n as i64 * STEP_MS + skew,
    }
}

/// Message `n`'s id.
pub fn message_id(n: u64) -> MessageId {
    MessageId::new(BASE_MS + n as i64 * STEP_MS, u128::from(n) + 1)
}

/// The operation that records message `n` as the SMTP ingress would: accepted with
/// its verdict, or rejected.
pub fn op(n: u64) -> Op {
    let s = shape(n);
    let client = Client {
        ip: s.ip.parse().expect("address"),
        port: 40_000,
        helo: Some("mail.sender.test".into()),
        tls: None,
        proxy: None,
    };
    let verdict = Verdict {
        action: s.action,
        reason: format!("score {} ({})", n % 30, s.action.as_str()),
        score: (n % 30) as f64,
        ..super::verdict(message_id(n))
    };
    let command = if s.action == Action::Reject {
        Command::RejectMessage(Box::new(RejectedMessage {
            rejection: Rejection {
                client,
                mail_from: Some(s.sender),
                rcpt_to: s.recipients,
                reason: "spam".into(),
                reply: "554 5.7.1 Message refused as spam".into(),
            },
            verdict,
        }))
    } else {
        Command::AcceptMessage(Box::new(AcceptedMessage {
            received: MessageReceived {
                message_id: message_id(n),
                envelope: Envelope {
                    mail_from: s.sender.clone(),
                    rcpt_to: s.recipients,
                    smtputf8: false,
                    eight_bit: true,
                },
                client,
                protocol: "ESMTPS".into(),
                size: 10_240,
                subject: Some(format!("Invoice {n}")),
                header_from: Some(s.sender),
                header_message_id: Some(format!("<{n}@sender.test>")),
                action: s.action,
                timings: Timings {
                    session_ms: 40,
                    transfer_ms: 5,
                    scan_ms: 1,
                },
            },
            body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            verdict,
        }))
    };
    Op {
        id: u128::from(n) + 1,
        time_ms: s.time_ms,
        node: 1 + n % 3,
        command,
    }
}

/// A benchmark's arguments: `COUNT_FLAG N` (how much to record, `default` when not
/// given) and `--dir DIR` (a database to keep and reuse); anything else (cargo
/// bench's `--bench`) is ignored.
pub fn bench_args(count_flag: &str, default: u64) -> (u64, Option<std::path::PathBuf>) {
    let mut args = std::env::args().skip(1);
    let (mut count, mut dir) = (default, None);
    while let Some(arg) = args.next() {
        if arg == count_flag {
            count = args
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{count_flag} N"));
        } else if arg == "--dir" {
            dir = args.next().map(std::path::PathBuf::from);
        }
    }
    (count, dir)
}

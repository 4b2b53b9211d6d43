//! Sample records for tests, here and in the crates over this one (feature
//! `samples`): a received message, a clean verdict, its delivery, and made-up
//! traffic for benchmarks ([`traffic`]).

pub mod traffic;

use crate::message::{
    Action, Client, DeliveryReport, Envelope, MessageId, MessageReceived, RecipientOutcome,
    RecipientResult, Thresholds, Timings, Verdict,
};

/// A clean verdict: deliver, nothing found.
pub fn verdict(message_id: MessageId) -> Verdict {
    Verdict {
        message_id,
        action: Action::Deliver,
        reason: "score 0.0 below tag 5.0".into(),
        score: 0.0,
        thresholds: Thresholds {
            tag: 5.0,
            quarantine: 10.0,
            reject: 20.0,
        },
        symbols: Vec::new(),
        authentication: Vec::new(),
        findings: Vec::new(),
        engines: Vec::new(),
    }
}

/// A message received from 192.0.2.7, from alice@sender.test to bob@example.test.
pub fn received() -> MessageReceived {
    MessageReceived {
        message_id: MessageId::new(1_764_300_000_000, 42),
        envelope: Envelope {
            mail_from: "alice@sender.test".into(),
            rcpt_to: vec!["bob@example.test".into()],
            smtputf8: false,
            eight_bit: true,
        },
        client: Client {
            ip: "192.0.2.7".parse().unwrap(),
            port: 40000,
            helo: Some("mail.sender.test".into()),
            tls: None,
            proxy: None,
        },
        protocol: "ESMTP".into(),
        size: 1000,
        subject: Some("Hello".into()),
        header_from: Some("alice@sender.test".into()),
        header_message_id: Some("<1@sender.test>".into()),
        action: Action::Deliver,
        timings: Timings {
            session_ms: 5,
            transfer_ms: 1,
            scan_ms: 0,
        },
    }
}

/// The report of an attempt that delivered [`received`]'s recipient, bob@example.test,
/// through 127.0.0.1:2600, releasing the lease.
pub fn delivered(message_id: MessageId) -> DeliveryReport {
    DeliveryReport {
        message_id,
        next_hop: "127.0.0.1:2600".into(),
        tls: None,
        results: vec![RecipientResult {
            address: "bob@example.test".into(),
            reply: "250 2.0.0 Ok".into(),
            outcome: RecipientOutcome::Delivered,
        }],
        duration_ms: 4,
        release_lease: true,
    }
}

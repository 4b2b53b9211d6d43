//! The acceptance path: at the end of data the message becomes one Raft operation,
//! and the client hears `250` only once a quorum has committed it. While this node's
//! delivery keeps up, the same operation leases the message to this node, and it is
//! handed to the delivery worker (see `crate::delivery::Backlog`).

use std::sync::Arc;
use std::time::Instant as StdInstant;

use bulwark_consensus::Proposer;
use bulwark_model::feature::LEASED_ACCEPT;
use bulwark_model::{
    AcceptedMessage, Action, Command, Envelope, JudgedRejection, MessageId, MessageReceived, Op,
    Rejection, Timings,
};
use time::OffsetDateTime;

use super::received;
use super::session::{Session, Transaction};
use crate::delivery::Handed;
use crate::mail;
use crate::scan::{self, Scanner};

/// Turns finished transactions into committed messages.
pub struct Ingress {
    proposer: Proposer,
    scanner: Arc<Scanner>,
    node: u64,
}

impl Ingress {
    /// Whether this node is part of a cluster yet (see [`Proposer::is_formed`]).
    pub fn is_formed(&self) -> bool {
        self.proposer.is_formed()
    }

    pub fn new(proposer: Proposer, scanner: Arc<Scanner>, node: u64) -> Self {
        Ingress {
            proposer,
            scanner,
            node,
        }
    }

    /// Scans, commits and answers: `250 2.0.0 Ok: queued as ID` once committed
    /// (delivered, tagged or quarantined: the sender is not told which), `554 5.7.1`
    /// once the rejection is recorded, `451 4.3.0` when no quorum committed either
    /// in time (the client retries).
    pub async fn accept(
        &self,
        session: &Session,
        tx: Transaction,
        body: Vec<u8>,
        transfer_started: StdInstant,
    ) -> String {
        let time_ms = bulwark_consensus::clock::now_ms();
        let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let id = MessageId::new(time_ms, rand::random());
        let client = &session.client;
        let envelope = Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            smtputf8: tx.smtputf8,
            eight_bit: tx.eight_bit,
        };
        let (subject, header_from, header_message_id) = headers(&body);
        let scan_started = StdInstant::now();
        let body = Arc::new(body);
        let judged = self
            .scanner
            .judge(&scan::Candidate {
                id,
                mail_from: &envelope.mail_from,
                rcpt_to: &envelope.rcpt_to,
                client_ip: client.ip,
                helo: client.helo.as_deref().unwrap_or(""),
                header_from: header_from.as_deref(),
                body: body.clone(),
            })
            .await;
        let scan_ms = scan_started.elapsed().as_millis() as u64;
        let body = Arc::try_unwrap(body).unwrap_or_else(|shared| shared.to_vec());
        let verdict = judged.verdict;

        if verdict.action == Action::Reject {
            let reply = format!(
                "554 5.7.1 Message rejected: {} (id {id})",
                mail::one_line(&verdict.reason, 300)
            );
            let op = Op {
                id: id.0,
                time_ms,
                node: self.node,
                command: Command::RejectJudged(Box::new(JudgedRejection {
                    rejection: Rejection {
                        client: client.clone(),
                        mail_from: Some(envelope.mail_from),
                        rcpt_to: envelope.rcpt_to,
                        reason: "policy".into(),
                        reply: reply.clone(),
                    },
                    verdict,
                    header_from,
                })),
            };
            return match self.proposer.submit(op).await {
                Ok(_) => {
                    tracing::info!(%id, client = %client.ip, "message rejected by policy");
                    reply
                }
                Err(e) => {
                    tracing::warn!(%id, client = %client.ip, error = %e, "rejection not committed");
                    NOT_STORED.to_string()
                }
            };
        }

        let hostname = &session.settings().hostname;
        // RFC 8601 §5: results that claim to be ours but came from outside go.
        let body = mail::strip_own_results(&body, hostname).unwrap_or(body);
        let body = match &judged.subject_prefix {
            Some(prefix) if verdict.action == Action::Tag => mail::prefix_subject(&body, prefix),
            _ => body,
        };
        let protocol = protocol(session.esmtp, envelope.smtputf8, client.tls.is_some());
        let received = received::header(hostname, client, &protocol, id, &envelope.rcpt_to, now);
        let results = judged
            .auth_header
            .map(|value| format!("Authentication-Results: {value}\r\n"))
            .unwrap_or_default();
        let mut stored = Vec::with_capacity(results.len() + received.len() + body.len());
        stored.extend_from_slice(results.as_bytes());
        stored.extend_from_slice(received.as_bytes());
        stored.extend_from_slice(&body);
        drop(body);

        let record = MessageReceived {
            message_id: id,
            envelope,
            client: client.clone(),
            protocol,
            size: stored.len() as u64,
            subject,
            header_from,
            header_message_id,
            action: verdict.action,
            timings: Timings {
                session_ms: session.started.elapsed().as_millis() as u64,
                transfer_ms: transfer_started.elapsed().as_millis() as u64,
                scan_ms,
            },
        };
        let backlog = &session.shared.backlog;
        let lease = backlog
            .lease_to_ask()
            .filter(|_| verdict.action != Action::Quarantine)
            .filter(|_| self.proposer.feature_level() >= LEASED_ACCEPT);
        let message = Box::new(AcceptedMessage {
            received: record,
            body: stored,
            verdict,
        });
        let command = match lease {
            Some(lease) => Command::AcceptLeased {
                message,
                lease_ms: lease.as_millis() as u64,
            },
            None => Command::AcceptMessage(message),
        };
        let op = Op {
            id: id.0,
            time_ms,
            node: self.node,
            command,
        };
        // Before proposing: the lease cannot have been granted earlier.
        let asked = StdInstant::now();
        match self.proposer.submit(op).await {
            Ok(result) => {
                tracing::debug!(%id, client = %client.ip, "message accepted");
                backlog.queued(lease.map(|_| Handed {
                    id,
                    seq: result.seq,
                    asked,
                }));
                format!("250 2.0.0 Ok: queued as {id}")
            }
            Err(e) => {
                tracing::warn!(%id, client = %client.ip, error = %e, "message not committed");
                NOT_STORED.to_string()
            }
        }
    }
}

/// The reply when nothing could be committed: the client keeps the message and
/// tries again.
const NOT_STORED: &str = "451 4.3.0 Error: the message could not be stored safely; try again later";

/// `SMTP`/`ESMTP`, `S` with TLS, `UTF8` prefix with SMTPUTF8 (RFC 3848, RFC 6531).
fn protocol(esmtp: bool, smtputf8: bool, tls: bool) -> String {
    let base = match (smtputf8, esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    format!("{base}{}", if tls { "S" } else { "" })
}

/// Subject, first From address and Message-ID, decoded from the header section.
fn headers(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Some(message) = mail_parser::MessageParser::default().parse_headers(body) else {
        return (None, None, None);
    };
    let subject = message.subject().map(str::to_string);
    let from = message
        .from()
        .and_then(|from| from.first())
        .and_then(|addr| addr.address())
        .map(str::to_string);
    let message_id = message.message_id().map(|id| format!("<{id}>"));
    (subject, from, message_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        assert_eq!(protocol(false, false, false), "SMTP");
        assert_eq!(protocol(true, false, true), "ESMTPS");
        assert_eq!(protocol(true, true, true), "UTF8SMTPS");
    }

    #[test]
    fn headers_are_decoded() {
        let body = b"From: =?utf-8?q?Jos=C3=A9?= <jose@sender.test>\r\nSubject: =?utf-8?b?w6l0w6k=?=\r\nMessage-ID: <abc@sender.test>\r\n\r\nhi\r\n";
        let (subject, from, id) = headers(body);
        assert_eq!(subject.as_deref(), Some("été"));
        assert_eq!(from.as_deref(), Some("jose@sender.test"));
        assert_eq!(id.as_deref(), Some("<abc@sender.test>"));
        assert_eq!(headers(b"no headers at all"), (None, None, None));
    }
}

//! The delivery queue's rules: who may deliver a message, and what an attempt's
//! report does to its recipients. Pure functions over one queue entry, so that apply
//! stays deterministic and the rules are tested on their own.

use crate::event::EventKind;
use crate::message::{
    DeliveryReport, Lease, MessageId, QueueEntry, RecipientOutcome, RecipientStatus,
};

/// Grants `node` the lease on `entry` until `until_ms` unless another node holds one
/// still running at `time_ms` (the operation's time). Returns the event and, when
/// refused, why.
pub(crate) fn lease(
    entry: &mut Option<QueueEntry>,
    message_id: MessageId,
    node: u64,
    time_ms: i64,
    until_ms: i64,
) -> (EventKind, Option<String>) {
    let refused = |holder: u64, until: i64, why: String| {
        (
            EventKind::DeliveryLeased {
                message_id,
                holder,
                until_ms: until,
                granted: false,
            },
            Some(why),
        )
    };
    let Some(e) = entry.as_mut() else {
        return refused(node, until_ms, "not in the queue".into());
    };
    if !e.is_free_for(node, time_ms) {
        let held = e.lease.expect("not free means leased");
        return refused(
            held.node,
            held.until_ms,
            format!("node {} holds it until {}", held.node, held.until_ms),
        );
    }
    e.lease = Some(Lease { node, until_ms });
    (
        EventKind::DeliveryLeased {
            message_id,
            holder: node,
            until_ms,
            granted: true,
        },
        None,
    )
}

/// Applies an attempt's report from `node`: recipients not yet done take their
/// outcome, `node`'s lease is released, and a message with every recipient done
/// leaves the queue (`entry` becomes `None`). A report for a message no longer queued
/// is still recorded.
pub(crate) fn report(
    entry: &mut Option<QueueEntry>,
    node: u64,
    report: &DeliveryReport,
) -> Vec<EventKind> {
    let mut events = vec![EventKind::DeliveryAttempted(Box::new(report.clone()))];
    let Some(e) = entry.as_mut() else {
        return events;
    };
    let (mut delivered, mut deferred, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut next_attempt = i64::MAX;
    let mut deferred_reply = String::new();
    let mut failed_reply = String::new();
    for result in &report.results {
        let Some(r) = e
            .recipients
            .iter_mut()
            .find(|r| r.address == result.address && !r.status.is_final())
        else {
            continue;
        };
        r.status = match result.outcome {
            RecipientOutcome::Delivered => {
                delivered.push(r.address.clone());
                RecipientStatus::Delivered {
                    reply: result.reply.clone(),
                }
            }
            RecipientOutcome::Deferred { next_attempt_ms } => {
                deferred.push(r.address.clone());
                next_attempt = next_attempt.min(next_attempt_ms);
                if deferred_reply.is_empty() {
                    deferred_reply = result.reply.clone();
                }
                RecipientStatus::Deferred {
                    attempts: r.status.attempts() + 1,
                    next_attempt_ms,
                    last_reply: result.reply.clone(),
                }
            }
            RecipientOutcome::Failed => {
                failed.push(r.address.clone());
                if failed_reply.is_empty() {
                    failed_reply = result.reply.clone();
                }
                RecipientStatus::Failed {
                    reply: result.reply.clone(),
                }
            }
        };
    }
    let message_id = e.message_id;
    if !delivered.is_empty() {
        events.push(EventKind::DeliverySucceeded {
            message_id,
            recipients: delivered,
        });
    }
    if !deferred.is_empty() {
        events.push(EventKind::DeliveryDeferred {
            message_id,
            recipients: deferred,
            next_attempt_ms: next_attempt,
            reply: deferred_reply,
        });
    }
    if !failed.is_empty() {
        events.push(EventKind::DeliveryFailed {
            message_id,
            recipients: failed,
            reply: failed_reply,
        });
    }
    if e.lease.is_some_and(|l| l.node == node) {
        e.lease = None;
    }
    if e.recipients.iter().all(|r| r.status.is_final()) {
        *entry = None;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Action, QueuedRecipient, RecipientResult};

    fn queued(recipients: &[&str]) -> Option<QueueEntry> {
        Some(QueueEntry {
            message_id: MessageId(9),
            received_seq: 1,
            time_ms: 1_000,
            mail_from: "a@sender.test".into(),
            recipients: recipients
                .iter()
                .map(|a| QueuedRecipient {
                    address: a.to_string(),
                    status: RecipientStatus::Pending,
                })
                .collect(),
            eight_bit: false,
            smtputf8: false,
            action: Action::Deliver,
            received_by: 1,
            lease: None,
        })
    }

    fn result(address: &str, outcome: RecipientOutcome) -> RecipientResult {
        RecipientResult {
            address: address.into(),
            reply: "reply".into(),
            outcome,
        }
    }

    fn attempt(results: Vec<RecipientResult>) -> DeliveryReport {
        DeliveryReport {
            message_id: MessageId(9),
            next_hop: "127.0.0.1:25".into(),
            tls: None,
            results,
            duration_ms: 3,
        }
    }

    #[test]
    fn one_lease_at_a_time_until_it_expires() {
        let mut e = queued(&["b@x"]);
        assert_eq!(lease(&mut e, MessageId(9), 1, 100, 200).1, None);
        // Node 2 while node 1's lease runs: refused; node 1 may renew.
        assert!(lease(&mut e, MessageId(9), 2, 150, 250).1.is_some());
        assert_eq!(lease(&mut e, MessageId(9), 1, 150, 300).1, None);
        // After it expires, node 2 takes over.
        assert_eq!(lease(&mut e, MessageId(9), 2, 300, 400).1, None);
        assert_eq!(
            e.unwrap().lease,
            Some(Lease {
                node: 2,
                until_ms: 400
            })
        );
        let mut gone = None;
        assert!(lease(&mut gone, MessageId(9), 1, 0, 1).1.is_some());
    }

    #[test]
    fn reports_move_recipients_on_and_finished_messages_leave() {
        let mut e = queued(&["a@x", "b@x", "c@x"]);
        lease(&mut e, MessageId(9), 1, 100, 200);
        let events = report(
            &mut e,
            1,
            &attempt(vec![
                result("a@x", RecipientOutcome::Delivered),
                result(
                    "b@x",
                    RecipientOutcome::Deferred {
                        next_attempt_ms: 900,
                    },
                ),
                result("c@x", RecipientOutcome::Failed),
            ]),
        );
        let names: Vec<_> = events.iter().map(|e| e.type_name()).collect();
        assert_eq!(
            names,
            [
                "delivery.attempted",
                "delivery.succeeded",
                "delivery.deferred",
                "delivery.failed"
            ]
        );
        let entry = e.clone().unwrap();
        assert_eq!(entry.lease, None);
        assert!(!entry.is_due(899) && entry.is_due(900));
        assert_eq!(entry.recipients[1].status.attempts(), 1);
        // A late report about a recipient already done changes nothing.
        report(
            &mut e,
            2,
            &attempt(vec![result("a@x", RecipientOutcome::Failed)]),
        );
        assert!(matches!(
            e.as_ref().unwrap().recipients[0].status,
            RecipientStatus::Delivered { .. }
        ));
        report(
            &mut e,
            1,
            &attempt(vec![result("b@x", RecipientOutcome::Delivered)]),
        );
        assert!(e.is_none(), "every recipient done: out of the queue");
        let events = report(
            &mut e,
            1,
            &attempt(vec![result("b@x", RecipientOutcome::Delivered)]),
        );
        assert_eq!(events.len(), 1, "the attempt is still recorded");
    }
}

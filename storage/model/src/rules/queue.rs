//! The delivery queue's rules: who may deliver a message, what an attempt's report
//! does to its recipients, when a failure bounces to the sender, and what an
//! administrator's action does. Functions over one queue record, so that the rules
//! are tested on their own.

use std::net::IpAddr;

use super::{Changes, Outcome, Stored, Write};
use crate::event::{ApiAction, EventKind, Op};
use crate::message::{
    Action, Bounce, DeliveryCommand, DeliveryReport, Lease, MessageId, QueueAction, QueueEntry,
    QueueRecord, QueuedRecipient, RecipientOutcome, RecipientStatus,
};

/// Why a command about a message not in the queue is refused.
pub const NOT_QUEUED: &str = "not in the queue";

/// A delivery lease, report or administrator's action against the queue as the batch
/// has left it, as operation `op` whose first event gets sequence number `seq`. A
/// report that fails someone queues its bounce to the sender, when it carries one.
pub fn delivery<'a, S: Stored>(
    changes: &mut Changes<'a>,
    store: &S,
    command: &'a DeliveryCommand,
    op: &Op,
    seq: u64,
) -> Result<Outcome, S::Error> {
    let id = match command {
        DeliveryCommand::Lease { message_id, .. } => *message_id,
        DeliveryCommand::Report { report, .. } => report.message_id,
        DeliveryCommand::Admin { message_id, .. } => *message_id,
        DeliveryCommand::Claim { message_id, .. } => *message_id,
    };
    let entry = changes.queued(store, id)?;
    Ok(match command {
        DeliveryCommand::Lease { until_ms, .. } => {
            let (event, refused) = lease(entry, id, op.node, op.time_ms, *until_ms);
            (vec![event], refused)
        }
        DeliveryCommand::Claim {
            lease_ms, replaces, ..
        } => {
            let (event, refused) = claim(entry, id, op.node, op.time_ms, *lease_ms, *replaces);
            (vec![event], refused)
        }
        DeliveryCommand::Admin {
            action,
            user,
            client_ip,
            ..
        } => {
            let (event, refused) = admin(entry, id, *action, op.time_ms, user, *client_ip);
            (vec![event], refused)
        }
        DeliveryCommand::Report { report, bounce } => {
            let sender = entry.as_ref().map(|e| e.entry.mail_from.clone());
            let mut events = self::report(entry, op.node, report);
            let failed_now = events
                .iter()
                .any(|e| matches!(e, EventKind::DeliveryFailed { .. }));
            if let (Some(bounce), Some(sender), true) = (bounce, sender, failed_now) {
                if !sender.is_empty() && bounce.recipient == sender {
                    let seq = seq + events.len() as u64;
                    queue_bounce(changes, bounce, op, seq);
                    events.push(EventKind::DeliveryBounced {
                        message_id: id,
                        dsn_id: bounce.message_id,
                        sender,
                        recipients: bounce.failed.clone(),
                    });
                }
            }
            (events, None)
        }
    })
}

/// A DSN into the queue, sent with the null sender (RFC 5321 §4.5.5) so that it can
/// never cause another bounce.
fn queue_bounce<'a>(changes: &mut Changes<'a>, bounce: &'a Bounce, op: &Op, seq: u64) {
    queue_generated(
        changes,
        bounce.message_id,
        &bounce.body,
        &bounce.recipient,
        op,
        seq,
    );
}

/// A message the gateway wrote itself (a DSN, a quarantine digest) into the queue for
/// `recipient`, from the null sender, with its body; `seq` is the sequence number of
/// the event that records it.
pub(super) fn queue_generated<'a>(
    changes: &mut Changes<'a>,
    message_id: MessageId,
    body: &'a [u8],
    recipient: &str,
    op: &Op,
    seq: u64,
) {
    changes.writes.push(Write::Body(message_id, body));
    let entry = QueueEntry {
        message_id,
        received_seq: seq,
        time_ms: op.time_ms,
        mail_from: String::new(),
        recipients: vec![QueuedRecipient {
            address: recipient.to_string(),
            status: RecipientStatus::Pending,
        }],
        // Quoted headers and replies may hold 8-bit text.
        eight_bit: !body.is_ascii(),
        smtputf8: !recipient.is_ascii(),
        action: Action::Deliver,
        score: 0.0,
        received_by: op.node,
        lease: None,
    };
    changes
        .queue
        .insert(message_id, Some(QueueRecord::new(entry)));
}

/// Grants `node` the lease on `entry` until `until_ms` unless another node holds one
/// still running at `time_ms` (the operation's time), or the message is held (the
/// node already delivering it may still renew its running lease, to finish the
/// attempt). Returns the event and, when refused, why.
fn lease(
    entry: &mut Option<QueueRecord>,
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
    let Some(record) = entry.as_mut() else {
        return refused(node, until_ms, NOT_QUEUED.into());
    };
    let running_here = record
        .entry
        .lease
        .is_some_and(|l| l.node == node && l.until_ms > time_ms);
    if record.held && !running_here {
        let (holder, until) = record
            .entry
            .lease
            .map_or((node, until_ms), |l| (l.node, l.until_ms));
        return refused(holder, until, "held by an administrator".into());
    }
    let e = &mut record.entry;
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

/// Grants `node` the lease on `entry` for `lease_ms` from `time_ms` (the operation's
/// time, recorded as `until_ms` for people) when nobody holds it, `node` does (a
/// renewal, whose `until_ms` is above the last one even if `node`'s clock stepped
/// back, so that every renewal is a new lease to a watcher), or the lease held is
/// exactly `replaces`; and, while the message is held by an administrator, only to
/// the node whose lease is on it (to finish its attempt). No wall clock is compared:
/// see [`DeliveryCommand::Claim`] for why this keeps deliveries one at a time.
/// Returns the event and, when refused, why.
fn claim(
    entry: &mut Option<QueueRecord>,
    message_id: MessageId,
    node: u64,
    time_ms: i64,
    lease_ms: u64,
    replaces: Option<Lease>,
) -> (EventKind, Option<String>) {
    let until_ms = time_ms.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
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
    let Some(record) = entry.as_mut() else {
        return refused(node, until_ms, NOT_QUEUED.into());
    };
    let held = record.entry.lease;
    let own = held.filter(|l| l.node == node);
    if record.held && own.is_none() {
        let (holder, until) = held.map_or((node, until_ms), |l| (l.node, l.until_ms));
        return refused(holder, until, "held by an administrator".into());
    }
    if let Some(l) = held.filter(|l| l.node != node && Some(*l) != replaces) {
        return refused(
            l.node,
            l.until_ms,
            format!(
                "node {} holds it (until {} by its clock)",
                l.node, l.until_ms
            ),
        );
    }
    let until_ms = own.map_or(until_ms, |l| until_ms.max(l.until_ms.saturating_add(1)));
    record.entry.lease = Some(Lease { node, until_ms });
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
fn report(entry: &mut Option<QueueRecord>, node: u64, report: &DeliveryReport) -> Vec<EventKind> {
    let mut events = vec![EventKind::DeliveryAttempted(Box::new(report.clone()))];
    let Some(e) = entry.as_mut().map(|r| &mut r.entry) else {
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
    if report.release_lease && e.lease.is_some_and(|l| l.node == node) {
        e.lease = None;
    }
    if e.recipients.iter().all(|r| r.status.is_final()) {
        *entry = None;
    }
    events
}

/// Applies an administrator's `action` at `time_ms` (the operation's time) and
/// returns its `api.action` event and, when refused (the message is not in the
/// queue), why. Holding a held message or releasing one that is not held changes
/// nothing and succeeds, so that a client may repeat a request.
fn admin(
    entry: &mut Option<QueueRecord>,
    message_id: MessageId,
    action: QueueAction,
    time_ms: i64,
    user: &str,
    client_ip: Option<IpAddr>,
) -> (EventKind, Option<String>) {
    let event = |recipients: Vec<String>, refused: Option<String>| {
        EventKind::ApiAction(Box::new(ApiAction {
            action: action.as_str().into(),
            user: user.into(),
            client_ip,
            message_id: Some(message_id),
            recipients,
            refused,
        }))
    };
    let Some(record) = entry.as_mut() else {
        return (
            event(Vec::new(), Some(NOT_QUEUED.into())),
            Some(NOT_QUEUED.into()),
        );
    };
    let waiting: Vec<String> = record
        .entry
        .recipients
        .iter()
        .filter(|r| !r.status.is_final())
        .map(|r| r.address.clone())
        .collect();
    let recipients = match action {
        QueueAction::Hold => {
            record.held = true;
            waiting
        }
        QueueAction::Release => {
            record.held = false;
            waiting
        }
        QueueAction::Retry => {
            record.held = false;
            let mut made_due = Vec::new();
            for r in &mut record.entry.recipients {
                match &mut r.status {
                    RecipientStatus::Deferred {
                        next_attempt_ms, ..
                    } => {
                        *next_attempt_ms = (*next_attempt_ms).min(time_ms);
                        made_due.push(r.address.clone());
                    }
                    RecipientStatus::Pending => made_due.push(r.address.clone()),
                    _ => {}
                }
            }
            made_due
        }
        QueueAction::Delete => {
            *entry = None;
            waiting
        }
    };
    (event(recipients, None), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{QueueStatus, RecipientResult};
    use crate::rules::memory::{op, Memory};

    fn queued(recipients: &[&str]) -> Option<QueueRecord> {
        Some(QueueRecord::new(QueueEntry {
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
            score: 0.0,
            received_by: 1,
            lease: None,
        }))
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
            release_lease: true,
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
            e.unwrap().entry.lease,
            Some(Lease {
                node: 2,
                until_ms: 400
            })
        );
        let mut gone = None;
        assert!(lease(&mut gone, MessageId(9), 1, 0, 1).1.is_some());
    }

    fn claimed(
        e: &mut Option<QueueRecord>,
        node: u64,
        time_ms: i64,
        replaces: Option<Lease>,
    ) -> Option<String> {
        claim(e, MessageId(9), node, time_ms, 100, replaces).1
    }

    #[test]
    fn a_claimed_lease_passes_only_by_release_or_by_naming_it_whatever_the_clocks_say() {
        let mut e = queued(&["b@x"]);
        assert_eq!(claimed(&mut e, 1, 1_000, None), None);
        let first = e.as_ref().unwrap().entry.lease.unwrap();
        assert_eq!(
            first,
            Lease {
                node: 1,
                until_ms: 1_100
            }
        );
        // Node 2's clock far ahead: still refused, the lease runs until replaced.
        assert!(claimed(&mut e, 2, 1_000_000, None).is_some());
        // Node 1 renews, its clock stepped back: the lease still changes.
        assert_eq!(claimed(&mut e, 1, 500, None), None);
        let renewed = e.as_ref().unwrap().entry.lease.unwrap();
        assert_eq!(
            renewed,
            Lease {
                node: 1,
                until_ms: 1_101
            }
        );
        // Naming the lease that was renewed since: refused.
        assert!(claimed(&mut e, 2, 0, Some(first)).is_some());
        // Naming the lease in force: granted, its clock far behind or not.
        assert_eq!(claimed(&mut e, 2, -1_000_000, Some(renewed)), None);
        assert_eq!(
            e.as_ref().unwrap().entry.lease,
            Some(Lease {
                node: 2,
                until_ms: -999_900
            })
        );
        // The old holder may no longer renew.
        assert!(claimed(&mut e, 1, 2_000, None).is_some());
        // Released by its holder's report, anyone may take it.
        report(
            &mut e,
            2,
            &attempt(vec![result(
                "b@x",
                RecipientOutcome::Deferred { next_attempt_ms: 0 },
            )]),
        );
        assert_eq!(e.as_ref().unwrap().entry.lease, None);
        assert_eq!(claimed(&mut e, 3, 0, None), None);
        let mut gone = None;
        assert!(claimed(&mut gone, 1, 0, None).is_some());
    }

    #[test]
    fn a_held_message_is_claimed_only_by_the_node_finishing_its_attempt() {
        let mut e = queued(&["b@x"]);
        assert_eq!(claimed(&mut e, 1, 100, None), None);
        let lease = e.as_ref().unwrap().entry.lease;
        api(&mut e, QueueAction::Hold, 110);
        assert_eq!(claimed(&mut e, 1, 150, None), None);
        let renewed = e.as_ref().unwrap().entry.lease;
        assert!(claimed(&mut e, 2, 150, renewed).is_some());
        assert!(claimed(&mut e, 2, 150, lease).is_some());
        report(
            &mut e,
            1,
            &attempt(vec![result(
                "b@x",
                RecipientOutcome::Deferred { next_attempt_ms: 0 },
            )]),
        );
        assert!(
            claimed(&mut e, 1, 200, None).is_some(),
            "held, and no lease left to finish"
        );
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
        let entry = e.clone().unwrap().entry;
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
            e.as_ref().unwrap().entry.recipients[0].status,
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

    fn deferred_until(e: &mut Option<QueueRecord>, address: &str, next_attempt_ms: i64) {
        report(
            e,
            1,
            &attempt(vec![result(
                address,
                RecipientOutcome::Deferred { next_attempt_ms },
            )]),
        );
    }

    fn api(
        e: &mut Option<QueueRecord>,
        action: QueueAction,
        time_ms: i64,
    ) -> (ApiAction, Option<String>) {
        let (event, refused) = admin(
            e,
            MessageId(9),
            action,
            time_ms,
            "admin",
            Some("192.0.2.1".parse().unwrap()),
        );
        let a = match event {
            EventKind::ApiAction(a) => a,
            other => panic!("not an api.action: {other:?}"),
        };
        assert_eq!(a.refused, refused);
        assert_eq!(a.action, action.as_str());
        assert_eq!(
            (a.user.as_str(), a.message_id),
            ("admin", Some(MessageId(9)))
        );
        (*a, refused)
    }

    #[test]
    fn a_held_message_is_never_due_nor_leased_until_released() {
        let mut e = queued(&["a@x"]);
        deferred_until(&mut e, "a@x", 500);
        assert!(e.as_ref().unwrap().is_due(500));
        let (event, refused) = api(&mut e, QueueAction::Hold, 200);
        assert_eq!((event.recipients, refused), (vec!["a@x".to_string()], None));
        let record = e.clone().unwrap();
        assert!(record.held && !record.is_due(i64::MAX));
        assert_eq!(record.status(600), QueueStatus::Held);
        assert!(lease(&mut e, MessageId(9), 1, 600, 700).1.is_some());
        assert_eq!(e.as_ref().unwrap().entry.lease, None);
        // Holding again is harmless; releasing makes it due as scheduled.
        assert_eq!(api(&mut e, QueueAction::Hold, 300).1, None);
        assert_eq!(api(&mut e, QueueAction::Release, 400).1, None);
        let record = e.clone().unwrap();
        assert!(!record.held && !record.is_due(499) && record.is_due(500));
        assert_eq!(record.status(400), QueueStatus::Deferred);
        assert_eq!(lease(&mut e, MessageId(9), 1, 600, 700).1, None);
        assert_eq!(e.as_ref().unwrap().status(650), QueueStatus::Leased);
        assert_eq!(e.as_ref().unwrap().status(700), QueueStatus::Deferred);
    }

    #[test]
    fn an_attempt_running_when_held_may_renew_its_lease_and_report() {
        let mut e = queued(&["a@x", "b@x"]);
        assert_eq!(lease(&mut e, MessageId(9), 1, 100, 200).1, None);
        api(&mut e, QueueAction::Hold, 110);
        // The holder renews while its lease runs; nobody else, and not after it ran out.
        assert_eq!(lease(&mut e, MessageId(9), 1, 150, 250).1, None);
        assert!(lease(&mut e, MessageId(9), 2, 300, 400).1.is_some());
        assert!(lease(&mut e, MessageId(9), 1, 260, 400).1.is_some());
        report(
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
            ]),
        );
        let record = e.unwrap();
        assert!(record.held, "the report leaves the hold in place");
        assert_eq!(record.entry.lease, None);
        assert!(matches!(
            record.entry.recipients[0].status,
            RecipientStatus::Delivered { .. }
        ));
    }

    #[test]
    fn retry_makes_deferred_recipients_due_now_and_lifts_a_hold() {
        let mut e = queued(&["a@x", "b@x", "c@x"]);
        report(
            &mut e,
            1,
            &attempt(vec![
                result("a@x", RecipientOutcome::Delivered),
                result(
                    "b@x",
                    RecipientOutcome::Deferred {
                        next_attempt_ms: 5_000,
                    },
                ),
                result(
                    "c@x",
                    RecipientOutcome::Deferred {
                        next_attempt_ms: 100,
                    },
                ),
            ]),
        );
        api(&mut e, QueueAction::Hold, 200);
        let (event, refused) = api(&mut e, QueueAction::Retry, 300);
        assert_eq!(refused, None);
        assert_eq!(event.recipients, ["b@x", "c@x"]);
        let record = e.clone().unwrap();
        assert!(!record.held && record.is_due(300));
        let next: Vec<_> = record
            .entry
            .recipients
            .iter()
            .map(|r| match r.status {
                RecipientStatus::Deferred {
                    next_attempt_ms,
                    attempts,
                    ..
                } => Some((next_attempt_ms, attempts)),
                _ => None,
            })
            .collect();
        // Never later than scheduled, attempts kept (the backoff goes on from there).
        assert_eq!(next, [None, Some((300, 1)), Some((100, 1))]);
    }

    #[test]
    fn delete_drops_the_message_and_actions_on_absent_messages_are_refused() {
        let mut e = queued(&["a@x", "b@x"]);
        report(
            &mut e,
            1,
            &attempt(vec![result("a@x", RecipientOutcome::Delivered)]),
        );
        let (event, refused) = api(&mut e, QueueAction::Delete, 100);
        assert_eq!(refused, None);
        assert_eq!(
            event.recipients,
            ["b@x"],
            "the recipients that lose the message"
        );
        assert!(e.is_none());
        for action in [
            QueueAction::Delete,
            QueueAction::Retry,
            QueueAction::Hold,
            QueueAction::Release,
        ] {
            let (event, refused) = api(&mut e, action, 200);
            assert_eq!(refused.as_deref(), Some(NOT_QUEUED));
            assert!(event.recipients.is_empty());
        }
        // A report arriving after the delete is recorded and queues nothing.
        let events = report(
            &mut e,
            1,
            &attempt(vec![result("b@x", RecipientOutcome::Delivered)]),
        );
        assert_eq!(events.len(), 1);
        assert!(e.is_none());
    }

    #[test]
    fn a_report_failing_someone_bounces_to_the_sender_once_with_the_null_sender() {
        let bounce = Bounce {
            message_id: MessageId(10),
            recipient: "a@sender.test".into(),
            failed: vec!["c@x".into()],
            body: b"Subject: Undelivered Mail\r\n\r\n".to_vec(),
        };
        let report = |outcome| DeliveryCommand::Report {
            report: attempt(vec![result("c@x", outcome)]),
            bounce: Some(Box::new(bounce.clone())),
        };
        let mut store = Memory::default();
        store
            .queue
            .insert(MessageId(9), queued(&["b@x", "c@x"]).unwrap());
        let deferred = report(RecipientOutcome::Deferred {
            next_attempt_ms: 9_000,
        });
        let failed = report(RecipientOutcome::Failed);
        let mut changes = Changes::default();
        let (kinds, _) = delivery(&mut changes, &store, &deferred, &op(1, 2_000), 5).unwrap();
        assert!(!kinds.iter().any(|k| k.type_name() == "delivery.bounced"));
        let (kinds, _) = delivery(&mut changes, &store, &failed, &op(1, 3_000), 5).unwrap();
        let names: Vec<_> = kinds.iter().map(EventKind::type_name).collect();
        assert_eq!(names.last(), Some(&"delivery.bounced"));
        // Failed already: a repeated report fails no one anew and bounces nothing.
        let (kinds, _) = delivery(&mut changes, &store, &failed, &op(1, 4_000), 9).unwrap();
        assert!(!kinds.iter().any(|k| k.type_name() == "delivery.bounced"));
        assert_eq!(
            changes.writes,
            [Write::Body(bounce.message_id, &bounce.body)]
        );
        store.commit(changes);
        let dsn = &store.queue[&bounce.message_id].entry;
        assert_eq!(dsn.mail_from, "", "the null sender");
        assert_eq!(dsn.recipients[0].address, "a@sender.test");
        assert_eq!(dsn.received_seq, 5 + names.len() as u64 - 1);
        assert_eq!(store.bodies[&bounce.message_id], bounce.body);
    }
}

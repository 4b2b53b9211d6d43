//! The quarantine's rules: an administrator's release or deletion of a held message,
//! and the retention's expiry of old ones.

use std::collections::BTreeMap;

use super::accept::pending;
use super::{Changes, Outcome, Stored, Write};
use crate::event::{ApiAction, EventKind, Op};
use crate::message::{
    Action, MessageId, QuarantineAction, QuarantineCommand, QuarantineDecided, QuarantineExpiry,
    QuarantineRecord, QueueEntry, QueueRecord, QueuedRecipient,
};

/// Why a release or deletion of a message not in the quarantine is refused.
pub const NOT_QUARANTINED: &str = "not in the quarantine";

/// An administrator's release or deletion of a quarantined message. A released
/// message joins the queue as the node that proposed the release received it, to be
/// delivered as it is; a deleted one loses its body. A message not (or no longer) in
/// the quarantine is refused, and the refusal recorded.
pub fn decide<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    command: &QuarantineCommand,
    op: &Op,
) -> Result<Outcome, S::Error> {
    let id = command.message_id;
    let Some(record) = changes.quarantined(store, id)?.take() else {
        let refused = NOT_QUARANTINED.to_string();
        let event = EventKind::ApiAction(Box::new(ApiAction {
            action: command.action.as_str().into(),
            user: command.user.clone(),
            client_ip: command.client_ip,
            message_id: Some(id),
            recipients: Vec::new(),
            refused: Some(refused.clone()),
        }));
        return Ok((vec![event], Some(refused)));
    };
    match command.action {
        QuarantineAction::Release => {
            queue_release(changes, store, &record, &record.recipients, op)?
        }
        QuarantineAction::Delete | QuarantineAction::Expire => drop_body(changes, store, id)?,
    }
    let event = EventKind::QuarantineDecided(Box::new(QuarantineDecided {
        decision: command.clone(),
        mail_from: record.mail_from,
        recipients: record.recipients,
    }));
    Ok((vec![event], None))
}

/// Queues `recipients` of held message `record` for delivery as they are, as the
/// node that proposed the release received them: into the message's queue entry when
/// it has one (another recipient's copy released before and not delivered yet), else
/// into a new one.
pub(super) fn queue_release<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    record: &QuarantineRecord,
    recipients: &[String],
    op: &Op,
) -> Result<(), S::Error> {
    let id = record.message_id;
    if let Some(queued) = changes.queued(store, id)? {
        for address in recipients {
            let known = |r: &QueuedRecipient| r.address.eq_ignore_ascii_case(address);
            if !queued.entry.recipients.iter().any(known) {
                queued
                    .entry
                    .recipients
                    .extend(pending(std::slice::from_ref(address)));
            }
        }
        // Joined the queue now: due from now, and retried as long as a message that
        // came now would be.
        queued.entry.time_ms = op.time_ms;
        return Ok(());
    }
    // The envelope's extensions are on the message.received event: in this batch's
    // changes if it came in the same batch, else stored.
    let envelope = match changes.received.get(&id) {
        Some(envelope) => Some(envelope.clone()),
        None => store.received_envelope(id, record.received_seq)?,
    };
    let (eight_bit, smtputf8) = match envelope {
        Some(e) => (e.eight_bit, e.smtputf8),
        // Its event purged: 8BITMIME is harmless to ask for, and SMTPUTF8 is needed
        // exactly when an address is not ASCII.
        None => (
            true,
            !record.mail_from.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        ),
    };
    let entry = QueueEntry {
        message_id: id,
        received_seq: record.received_seq,
        time_ms: op.time_ms,
        mail_from: record.mail_from.clone(),
        recipients: pending(recipients),
        eight_bit,
        smtputf8,
        action: Action::Deliver,
        score: record.score,
        received_by: op.node,
        lease: None,
    };
    *changes.queued(store, id)? = Some(QueueRecord::new(entry));
    Ok(())
}

/// Removes the body of a message that has left the quarantine, unless a released
/// copy of it still waits in the queue (whose delivery then takes it).
pub(super) fn drop_body<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    id: MessageId,
) -> Result<(), S::Error> {
    let queued = match changes.queue.get(&id) {
        Some(record) => record.is_some(),
        None => store.queue_record(id)?.is_some(),
    };
    if !queued {
        changes.writes.push(Write::DropBody(id));
    }
    Ok(())
}

/// The retention's run: what was quarantined before `expiry.before_ms`, oldest first
/// and at most `expiry.max`, out with its body; one `quarantine.decided` event a
/// message, then the `quarantine.retention` event.
pub fn expire<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    expiry: &QuarantineExpiry,
) -> Result<Vec<EventKind>, S::Error> {
    let max = expiry.max as usize;
    let due = |r: &QuarantineRecord| expiry_due(r, expiry.before_ms);
    // The candidates as this batch has left the quarantine: stored records not
    // released or deleted by it, and those it quarantined itself; the oldest `max` of
    // them, so that every node picks the same ones however its entries were grouped
    // into batches.
    let mut candidates: BTreeMap<MessageId, QuarantineRecord> = changes
        .quarantine
        .values()
        .flatten()
        .filter(|r| due(r))
        .map(|r| (r.message_id, r.clone()))
        .collect();
    let mut from_store = 0;
    if max > 0 {
        store.quarantined_before(expiry_end(expiry.before_ms), &mut |record| {
            if !changes.quarantine.contains_key(&record.message_id) && due(&record) {
                from_store += 1;
                candidates.insert(record.message_id, record);
            }
            from_store < max
        })?;
    }
    let mut events = Vec::new();
    for (id, record) in candidates.into_iter().take(max) {
        changes.quarantine.insert(id, None);
        drop_body(changes, store, id)?;
        events.push(EventKind::QuarantineDecided(Box::new(QuarantineDecided {
            decision: QuarantineCommand {
                message_id: id,
                action: QuarantineAction::Expire,
                reason: expiry.reason.clone(),
                user: crate::token::RETENTION_ACTOR.into(),
                client_ip: None,
            },
            mail_from: record.mail_from,
            recipients: record.recipients,
        })));
    }
    events.push(EventKind::QuarantineRetention {
        before_ms: expiry.before_ms,
        expired: events.len() as u32,
        reason: expiry.reason.clone(),
    });
    Ok(events)
}

/// Ids sort by the time of reception, which comes before the quarantine's: no record
/// at or after this id is due for a retention cut-off at `before_ms`.
pub fn expiry_end(before_ms: i64) -> MessageId {
    MessageId::new(before_ms, 0)
}

/// Whether a retention with cut-off `before_ms` removes `record`: received and
/// quarantined before it (two clocks, which may disagree).
pub fn expiry_due(record: &QuarantineRecord, before_ms: i64) -> bool {
    record.message_id < expiry_end(before_ms) && record.time_ms < before_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AcceptedMessage, Envelope};
    use crate::rules::accept::accept;
    use crate::rules::memory::{op, Memory};
    use crate::samples;

    const T: i64 = 1_764_300_000_000;

    /// Message `n`, received `n` seconds after `T` and quarantined then.
    fn held(n: u64) -> QuarantineRecord {
        QuarantineRecord {
            message_id: MessageId::new(T + n as i64 * 1000, u128::from(n)),
            received_seq: n,
            time_ms: T + n as i64 * 1000,
            mail_from: "alice@sender.test".into(),
            recipients: vec!["bob@example.test".into()],
            subject: None,
            header_from: None,
            size: 100,
            score: 12.0,
            reason: "score 12.0".into(),
        }
    }

    fn store(n: u64) -> Memory {
        let mut store = Memory::default();
        for n in 1..=n {
            let record = held(n);
            store.bodies.insert(record.message_id, b"body".to_vec());
            store.quarantine.insert(record.message_id, record);
        }
        store
    }

    fn command(record: &QuarantineRecord, action: QuarantineAction) -> QuarantineCommand {
        QuarantineCommand {
            message_id: record.message_id,
            action,
            reason: "reviewed".into(),
            user: "carol".into(),
            client_ip: None,
        }
    }

    #[test]
    fn a_release_queues_the_message_with_its_envelope_once_and_a_second_is_refused() {
        let mut store = store(1);
        let record = held(1);
        store.received.insert(
            (record.message_id, 1),
            Envelope {
                mail_from: record.mail_from.clone(),
                rcpt_to: record.recipients.clone(),
                smtputf8: true,
                eight_bit: false,
            },
        );
        let mut changes = Changes::default();
        let release = command(&record, QuarantineAction::Release);
        let (kinds, refused) = decide(&mut changes, &store, &release, &op(3, T + 9_000)).unwrap();
        assert_eq!(refused, None);
        let EventKind::QuarantineDecided(decided) = &kinds[0] else {
            panic!("{kinds:?}");
        };
        assert_eq!(decided.decision, release);
        assert_eq!(decided.recipients, record.recipients);
        // The same release again in the batch: the message has left the quarantine.
        let (kinds, refused) = decide(&mut changes, &store, &release, &op(3, T + 9_001)).unwrap();
        assert_eq!(refused.as_deref(), Some(NOT_QUARANTINED));
        let EventKind::ApiAction(action) = &kinds[0] else {
            panic!("{kinds:?}");
        };
        assert_eq!(action.refused.as_deref(), Some(NOT_QUARANTINED));
        assert_eq!(action.user, "carol");
        store.commit(changes);
        assert!(store.quarantine.is_empty());
        let entry = &store.queue[&record.message_id].entry;
        assert_eq!((entry.eight_bit, entry.smtputf8), (false, true));
        assert_eq!(entry.action, Action::Deliver);
        assert_eq!((entry.time_ms, entry.received_by), (T + 9_000, 3));
        assert_eq!(entry.received_seq, 1);
        assert_eq!(store.bodies[&record.message_id], b"body");
    }

    #[test]
    fn a_release_reads_the_envelope_of_a_message_accepted_in_the_same_batch_or_guesses() {
        let received = samples::received();
        let id = received.message_id;
        let mut verdict = samples::verdict(id);
        verdict.action = Action::Quarantine;
        let message = AcceptedMessage {
            verdict,
            received,
            body: b"x".to_vec(),
        };
        let mut changes = Changes::default();
        let store = Memory::default();
        let kinds = accept(&mut changes, &message, None, &op(1, T), 5);
        let EventKind::MessageQuarantined(record) = &kinds[2] else {
            panic!("{kinds:?}");
        };
        let release = command(record, QuarantineAction::Release);
        decide(&mut changes, &store, &release, &op(1, T + 1)).unwrap();
        let entry = &changes.queue[&id].as_ref().unwrap().entry;
        assert_eq!((entry.eight_bit, entry.smtputf8), (true, false));
        // Stored, its event purged: 8BITMIME asked for, SMTPUTF8 as the addresses need.
        let mut store = Memory::default();
        let mut record = held(1);
        record.recipients.push("zoë@example.test".into());
        store.quarantine.insert(record.message_id, record.clone());
        let mut changes = Changes::default();
        let release = command(&record, QuarantineAction::Release);
        decide(&mut changes, &store, &release, &op(1, T + 1)).unwrap();
        let entry = &changes.queue[&record.message_id].as_ref().unwrap().entry;
        assert_eq!((entry.eight_bit, entry.smtputf8), (true, true));
    }

    #[test]
    fn a_release_after_a_recipient_s_own_joins_the_queued_copy_and_a_deletion_keeps_its_body() {
        use crate::message::RecipientStatus;
        let mut store = store(1);
        let mut record = held(1);
        record.recipients.push("carol@example.test".into());
        store.quarantine.insert(record.message_id, record.clone());
        // Carol's copy was released before and is being delivered.
        let mut queued = QueueRecord::new(QueueEntry {
            message_id: record.message_id,
            received_seq: 1,
            time_ms: T,
            mail_from: record.mail_from.clone(),
            recipients: vec![QueuedRecipient {
                address: "carol@example.test".into(),
                status: RecipientStatus::Pending,
            }],
            eight_bit: false,
            smtputf8: false,
            action: Action::Deliver,
            score: 12.0,
            received_by: 1,
            lease: None,
        });
        queued.entry.lease = Some(crate::message::Lease {
            node: 2,
            until_ms: T + 60_000,
        });
        store.queue.insert(record.message_id, queued.clone());
        let mut only_bob = record.clone();
        only_bob.recipients.pop();
        store.quarantine.insert(record.message_id, only_bob.clone());
        // Deleting Bob's held copy leaves the body to Carol's delivery.
        let mut changes = Changes::default();
        let delete = command(&only_bob, QuarantineAction::Delete);
        decide(&mut changes, &store, &delete, &op(1, T + 1)).unwrap();
        assert!(changes.writes.is_empty(), "{:?}", changes.writes);
        // Releasing it instead adds Bob to the queued entry, its lease untouched.
        let mut changes = Changes::default();
        let release = command(&only_bob, QuarantineAction::Release);
        decide(&mut changes, &store, &release, &op(1, T + 1)).unwrap();
        store.commit(changes);
        let entry = &store.queue[&record.message_id].entry;
        let addresses: Vec<&str> = entry
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["carol@example.test", "bob@example.test"]);
        assert_eq!(entry.lease, queued.entry.lease);
        assert!(store.bodies.contains_key(&record.message_id));
    }

    #[test]
    fn a_deletion_drops_record_and_body_and_queues_nothing() {
        let mut store = store(2);
        let record = held(2);
        let mut changes = Changes::default();
        let delete = command(&record, QuarantineAction::Delete);
        let (_, refused) = decide(&mut changes, &store, &delete, &op(1, T + 9_000)).unwrap();
        assert_eq!(refused, None);
        assert_eq!(changes.writes, [Write::DropBody(record.message_id)]);
        store.commit(changes);
        assert!(store.queue.is_empty());
        assert_eq!(store.quarantine.len(), 1);
        assert!(!store.bodies.contains_key(&record.message_id));
    }

    #[test]
    fn expiry_takes_the_oldest_due_at_most_max_and_skips_what_the_batch_released() {
        let mut store = store(5);
        let mut changes = Changes::default();
        // The batch released message 1 already, and quarantined message 6 itself.
        decide(
            &mut changes,
            &store,
            &command(&held(1), QuarantineAction::Release),
            &op(1, T + 10_000),
        )
        .unwrap();
        changes.quarantine.insert(held(6).message_id, Some(held(6)));
        let expiry = QuarantineExpiry {
            before_ms: T + 7_000,
            max: 3,
            reason: "older than 30 days".into(),
        };
        let kinds = expire(&mut changes, &store, &expiry).unwrap();
        let expired: Vec<MessageId> = kinds
            .iter()
            .filter_map(|k| match k {
                EventKind::QuarantineDecided(d) => Some(d.decision.message_id),
                _ => None,
            })
            .collect();
        assert_eq!(
            expired,
            [held(2), held(3), held(4)].map(|r| r.message_id),
            "the oldest three still held"
        );
        assert!(matches!(
            kinds.last(),
            Some(EventKind::QuarantineRetention { expired: 3, .. })
        ));
        store.commit(changes);
        let left: Vec<MessageId> = store.quarantine.keys().copied().collect();
        assert_eq!(left, [held(5).message_id, held(6).message_id]);
        assert_eq!(
            store.bodies.len(),
            1 + 1,
            "message 5's, and message 1's released"
        );
    }

    #[test]
    fn expiry_of_nothing_due_records_only_the_retention_run() {
        let store = store(2);
        let mut changes = Changes::default();
        let expiry = QuarantineExpiry {
            before_ms: T,
            max: 10,
            reason: "older than 30 days".into(),
        };
        let kinds = expire(&mut changes, &store, &expiry).unwrap();
        assert!(matches!(
            kinds[..],
            [EventKind::QuarantineRetention { expired: 0, .. }]
        ));
        assert!(changes.writes.is_empty() && changes.quarantine.is_empty());
        // A record quarantined after its id's time (two clocks) is not due either.
        let mut late = held(1);
        late.time_ms = T + 8_000;
        assert!(!expiry_due(&late, T + 7_000));
        assert!(expiry_due(&held(1), T + 7_000));
    }
}

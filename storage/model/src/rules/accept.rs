//! A scanned message accepted: its body stored, its `message.received` and
//! `scan.verdict` events recorded, and the message queued for delivery (leased to
//! the accepting node when it asked) or, when the verdict says so, held in the
//! quarantine.

use super::{Changes, Write};
use crate::event::{EventKind, Op};
use crate::message::{
    AcceptedMessage, Action, Lease, QuarantineRecord, QueueEntry, QueueRecord, QueuedRecipient,
    RecipientStatus,
};

/// Accepts `message` as operation `op` whose first event gets sequence number `seq`
/// (the `message.received` event, which a released message's queue entry cites).
/// With `lease_ms`, a queued message is leased to the node that proposed `op` for
/// that long, as a granted [`crate::DeliveryCommand::Claim`] would lease it, and
/// `delivery.leased` follows the verdict; a quarantined one takes no lease.
pub fn accept<'a>(
    changes: &mut Changes<'a>,
    message: &'a AcceptedMessage,
    lease_ms: Option<u64>,
    op: &Op,
    seq: u64,
) -> Vec<EventKind> {
    let received = &message.received;
    let verdict = &message.verdict;
    let id = received.message_id;
    changes.writes.push(Write::Body(id, &message.body));
    changes.received.insert(id, received.envelope.clone());
    let mut kinds = vec![
        EventKind::MessageReceived(Box::new(received.clone())),
        EventKind::ScanVerdict(Box::new(verdict.clone())),
    ];
    if verdict.action == Action::Quarantine {
        let record = QuarantineRecord {
            message_id: id,
            received_seq: seq,
            time_ms: op.time_ms,
            mail_from: received.envelope.mail_from.clone(),
            recipients: received.envelope.rcpt_to.clone(),
            subject: received.subject.clone(),
            header_from: received.header_from.clone(),
            size: received.size,
            score: verdict.score,
            reason: verdict.reason.clone(),
        };
        kinds.push(EventKind::MessageQuarantined(Box::new(record.clone())));
        changes.quarantine.insert(id, Some(record));
        return kinds;
    }
    let entry = QueueEntry {
        message_id: id,
        received_seq: seq,
        time_ms: op.time_ms,
        mail_from: received.envelope.mail_from.clone(),
        recipients: pending(&received.envelope.rcpt_to),
        eight_bit: received.envelope.eight_bit,
        smtputf8: received.envelope.smtputf8,
        action: verdict.action,
        score: verdict.score,
        received_by: op.node,
        lease: lease_ms.map(|ms| Lease {
            node: op.node,
            until_ms: op
                .time_ms
                .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        }),
    };
    if let Some(lease) = entry.lease {
        kinds.push(EventKind::DeliveryLeased {
            message_id: id,
            holder: lease.node,
            until_ms: lease.until_ms,
            granted: true,
        });
    }
    changes.queue.insert(id, Some(QueueRecord::new(entry)));
    kinds
}

/// Every address as a recipient still to be delivered to.
pub(super) fn pending(addresses: &[String]) -> Vec<QueuedRecipient> {
    addresses
        .iter()
        .map(|address| QueuedRecipient {
            address: address.clone(),
            status: RecipientStatus::Pending,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QueueStatus;
    use crate::rules::memory::{self, Memory};
    use crate::samples;

    fn message(action: Action) -> AcceptedMessage {
        let received = samples::received();
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = action;
        AcceptedMessage {
            verdict,
            received,
            body: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
        }
    }

    fn op() -> Op {
        memory::op(2, 1_764_300_000_005)
    }

    #[test]
    fn a_message_to_deliver_is_queued_for_every_recipient_with_its_body() {
        let message = message(Action::Tag);
        let id = message.received.message_id;
        let mut changes = Changes::default();
        let kinds = accept(&mut changes, &message, None, &op(), 7);
        let names: Vec<_> = kinds.iter().map(EventKind::type_name).collect();
        assert_eq!(names, ["message.received", "scan.verdict"]);
        let mut store = Memory::default();
        store.commit(changes);
        let record = &store.queue[&id];
        assert_eq!(record.entry.received_seq, 7);
        assert_eq!(record.entry.received_by, 2);
        assert_eq!(record.entry.action, Action::Tag);
        assert_eq!(
            record.entry.recipients,
            pending(&["bob@example.test".into()])
        );
        assert_eq!(record.status(op().time_ms), QueueStatus::Pending);
        assert_eq!(store.bodies[&id], message.body);
        assert!(store.quarantine.is_empty());
    }

    #[test]
    fn a_message_to_quarantine_is_held_with_its_body_and_never_queued() {
        let message = message(Action::Quarantine);
        let id = message.received.message_id;
        let mut changes = Changes::default();
        let kinds = accept(&mut changes, &message, None, &op(), 7);
        let EventKind::MessageQuarantined(record) = &kinds[2] else {
            panic!("{kinds:?}");
        };
        assert_eq!(record.received_seq, 7);
        assert_eq!(record.recipients, ["bob@example.test"]);
        let mut store = Memory::default();
        store.commit(changes);
        assert_eq!(&store.quarantine[&id], record.as_ref());
        assert_eq!(store.bodies[&id], message.body);
        assert!(store.queue.is_empty());
    }

    #[test]
    fn a_message_accepted_with_a_lease_is_queued_leased_to_the_accepting_node() {
        let message = message(Action::Deliver);
        let id = message.received.message_id;
        let mut changes = Changes::default();
        let kinds = accept(&mut changes, &message, Some(30_000), &op(), 7);
        let names: Vec<_> = kinds.iter().map(EventKind::type_name).collect();
        assert_eq!(
            names,
            ["message.received", "scan.verdict", "delivery.leased"]
        );
        let until_ms = op().time_ms + 30_000;
        assert_eq!(
            kinds[2],
            EventKind::DeliveryLeased {
                message_id: id,
                holder: 2,
                until_ms,
                granted: true
            }
        );
        let mut store = Memory::default();
        store.commit(changes);
        let lease = store.queue[&id].entry.lease;
        assert_eq!(lease, Some(Lease { node: 2, until_ms }));
    }

    #[test]
    fn a_message_quarantined_takes_no_lease() {
        let message = message(Action::Quarantine);
        let mut changes = Changes::default();
        let kinds = accept(&mut changes, &message, Some(30_000), &op(), 7);
        let names: Vec<_> = kinds.iter().map(EventKind::type_name).collect();
        assert_eq!(
            names,
            ["message.received", "scan.verdict", "message.quarantined"]
        );
        let mut store = Memory::default();
        store.commit(changes);
        assert!(store.queue.is_empty());
    }
}

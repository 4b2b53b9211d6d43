//! Recipients' self-service: a recipient releases or deletes their own copy of a
//! held message (the other recipients' copies stay held), changes their own allow
//! and block lists, or opens their portal, through a signed link (spent by its first
//! use, on every node alike), their portal, or a console user acting for them; a
//! digest goes into the queue once per recipient and window; the link key is set once.
//!
//! Expiry is judged at the operation's time, so every node agrees on it. Every
//! action, done or refused, is recorded as `recipient.action` with the recipient's
//! address; a copy released or deleted is also `quarantine.released` or
//! `quarantine.deleted` for that recipient alone.

use super::quarantine::{drop_body, queue_release};
use super::queue::queue_generated;
use super::{Changes, Outcome, Stored, Write};
use crate::event::{EventKind, Op};
use crate::message::{MessageId, QuarantineAction, QuarantineCommand, QuarantineDecided};
use crate::recipient::{
    releasable_by_recipient, DigestCommand, DigestMark, DigestSent, ListKind, RecipientActed,
    RecipientAction, RecipientCommand, Via, DIGEST_SENT, EXPIRED, NOT_HELD, OPERATOR_ONLY, SPENT,
};

/// What a recipient does, as the batch has left the state.
pub fn act<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    command: &RecipientCommand,
    op: &Op,
) -> Result<Outcome, S::Error> {
    let mut acted = RecipientActed {
        recipient: command.recipient.clone(),
        action: command.action.name().into(),
        via: command.via.as_str().into(),
        user: match &command.via {
            Via::Console { user, .. } => Some(user.clone()),
            _ => None,
        },
        message_id: command.action.message_id(),
        entry: None,
        client_ip: command.client_ip,
        refused: None,
    };
    let refused = match &command.via {
        Via::Link { expires_ms, .. } | Via::Portal { expires_ms } if op.time_ms > *expires_ms => {
            Some(EXPIRED)
        }
        Via::Link { id, .. } if changes.link_spent(store, id)?.is_some() => Some(SPENT),
        _ => None,
    };
    if let Some(refused) = refused {
        acted.refused = Some(refused.into());
        return Ok((
            vec![EventKind::RecipientActed(Box::new(acted))],
            Some(refused.into()),
        ));
    }
    if let Via::Link { id, .. } = &command.via {
        changes.spent.insert(*id, op.time_ms);
        changes.writes.push(Write::LinkSpent(*id, op.time_ms));
    }
    let recipient = &command.recipient;
    let mut events = Vec::new();
    let refused = match &command.action {
        RecipientAction::OpenPortal => None,
        RecipientAction::List { list, entry, add } => {
            acted.entry = Some(entry.clone());
            let mut lists = changes.lists(store, recipient)?;
            let result = if *add {
                lists.add(*list, entry)
            } else {
                lists.remove(*list, entry);
                Ok(())
            };
            match result {
                Ok(()) => {
                    keep_lists(changes, recipient, lists);
                    None
                }
                Err(why) => Some(why),
            }
        }
        RecipientAction::Release {
            message_id,
            allow_sender,
        } if !matches!(command.via, Via::Console { .. })
            && changes
                .quarantined(store, *message_id)?
                .as_ref()
                .is_some_and(|r| !releasable_by_recipient(&r.reason)) =>
        {
            let _ = allow_sender;
            Some(OPERATOR_ONLY)
        }
        RecipientAction::Release {
            message_id,
            allow_sender,
        } => match take_copy(changes, store, *message_id, recipient)? {
            None => Some(NOT_HELD),
            Some((record, address)) => {
                queue_release(changes, store, &record, std::slice::from_ref(&address), op)?;
                let sender = record.header_from.as_deref().unwrap_or(&record.mail_from);
                if *allow_sender && !sender.is_empty() {
                    let mut lists = changes.lists(store, recipient)?;
                    // An allowed sender is one a person has seen; a list full or an
                    // address it cannot hold leaves the release done all the same.
                    if lists.add(ListKind::Allow, sender).is_ok() {
                        acted.entry = crate::recipient::entry(sender);
                        keep_lists(changes, recipient, lists);
                    }
                }
                events.push(decided(
                    command,
                    &record,
                    address,
                    QuarantineAction::Release,
                ));
                None
            }
        },
        RecipientAction::Delete { message_id } => {
            match take_copy(changes, store, *message_id, recipient)? {
                None => Some(NOT_HELD),
                Some((record, address)) => {
                    if changes
                        .quarantine
                        .get(message_id)
                        .is_some_and(Option::is_none)
                    {
                        drop_body(changes, store, *message_id)?;
                    }
                    events.push(decided(command, &record, address, QuarantineAction::Delete));
                    None
                }
            }
        }
    };
    acted.refused = refused.map(Into::into);
    events.insert(0, EventKind::RecipientActed(Box::new(acted)));
    Ok((events, refused.map(Into::into)))
}

/// Takes `recipient` off held message `id`'s record (the record leaves the
/// quarantine with its last recipient): the record as it was, and the recipient's
/// address as the record wrote it. `None` when the message is not held for them.
fn take_copy<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    id: MessageId,
    recipient: &str,
) -> Result<Option<(crate::message::QuarantineRecord, String)>, S::Error> {
    let slot = changes.quarantined(store, id)?;
    let Some(record) = slot.as_mut() else {
        return Ok(None);
    };
    let Some(at) = record
        .recipients
        .iter()
        .position(|r| r.eq_ignore_ascii_case(recipient))
    else {
        return Ok(None);
    };
    let before = record.clone();
    let address = record.recipients.remove(at);
    if record.recipients.is_empty() {
        *slot = None;
    }
    Ok(Some((before, address)))
}

fn keep_lists(changes: &mut Changes<'_>, recipient: &str, lists: crate::recipient::RecipientLists) {
    let key = recipient.to_ascii_lowercase();
    changes.lists.insert(key.clone(), lists.clone());
    changes.writes.push(Write::RecipientLists(key, lists));
}

/// `quarantine.released` or `quarantine.deleted` for one recipient's copy, under the
/// name of whoever did it: the console user, else the recipient.
fn decided(
    command: &RecipientCommand,
    record: &crate::message::QuarantineRecord,
    address: String,
    action: QuarantineAction,
) -> EventKind {
    let (user, reason) = match &command.via {
        Via::Console { user, reason } => (user.clone(), reason.as_str()),
        Via::Link { .. } => (
            command.recipient.clone(),
            "by the recipient, through a link",
        ),
        Via::Portal { .. } => (
            command.recipient.clone(),
            "by the recipient, in their portal",
        ),
    };
    EventKind::QuarantineDecided(Box::new(QuarantineDecided {
        decision: QuarantineCommand {
            message_id: record.message_id,
            action,
            reason: reason.into(),
            user,
            client_ip: command.client_ip,
        },
        mail_from: record.mail_from.clone(),
        recipients: vec![address],
    }))
}

/// A recipient's digest (or portal link) into the queue, from the null sender (it
/// can never cause a bounce); a digest unless one through this time or later went to
/// them already.
pub fn digest<'a, S: Stored>(
    changes: &mut Changes<'a>,
    store: &S,
    command: &'a DigestCommand,
    op: &Op,
    seq: u64,
) -> Result<Outcome, S::Error> {
    let recipient = &command.recipient;
    if let Some(slot_ms) = command.through_ms {
        if changes
            .digest_through(store, recipient)?
            .is_some_and(|last| last.slot_ms >= slot_ms)
        {
            return Ok((Vec::new(), Some(DIGEST_SENT.into())));
        }
        let key = recipient.to_ascii_lowercase();
        let mark = DigestMark {
            slot_ms,
            through_seq: command.through_seq,
        };
        changes.digests.insert(key.clone(), mark);
        changes.writes.push(Write::DigestThrough(key, mark));
    }
    queue_generated(
        changes,
        command.digest_id,
        &command.body,
        recipient,
        op,
        seq,
    );
    let sent = DigestSent {
        recipient: recipient.clone(),
        digest_id: command.digest_id,
        messages: command.messages,
        through_ms: command.through_ms,
    };
    Ok((vec![EventKind::DigestSent(Box::new(sent))], None))
}

/// The cluster's link key, unless it has one.
pub fn link_key<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    key: &[u8; 32],
) -> Result<Outcome, S::Error> {
    if changes.link_key(store)?.is_none() {
        changes.link_key = Some(*key);
        changes.writes.push(Write::LinkKey(*key));
    }
    Ok((Vec::new(), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QuarantineRecord;
    use crate::recipient::{RecipientLists, BAD_ENTRY};
    use crate::rules::memory::{op, Memory};

    const T: i64 = 1_764_300_000_000;

    fn held() -> QuarantineRecord {
        QuarantineRecord {
            message_id: MessageId::new(T, 1),
            received_seq: 1,
            time_ms: T,
            mail_from: "bounce@news.test".into(),
            recipients: vec!["Bob@example.test".into(), "carol@example.test".into()],
            subject: Some("offer".into()),
            header_from: Some("Offers@News.test".into()),
            size: 100,
            score: 12.0,
            reason: "score 12.0".into(),
        }
    }

    fn store() -> Memory {
        let mut store = Memory::default();
        store.bodies.insert(held().message_id, b"body".to_vec());
        store.quarantine.insert(held().message_id, held());
        store
    }

    fn command(recipient: &str, action: RecipientAction, via: Via) -> RecipientCommand {
        RecipientCommand {
            recipient: recipient.into(),
            action,
            via,
            client_ip: None,
        }
    }

    fn link(n: u8) -> Via {
        Via::Link {
            id: [n; 32],
            expires_ms: T + 60_000,
        }
    }

    fn release(allow_sender: bool) -> RecipientAction {
        RecipientAction::Release {
            message_id: held().message_id,
            allow_sender,
        }
    }

    fn run(store: &mut Memory, command: &RecipientCommand, time_ms: i64) -> Outcome {
        let mut changes = Changes::default();
        let outcome = act(&mut changes, &*store, command, &op(2, time_ms)).unwrap();
        store.commit(changes);
        outcome
    }

    fn acted(kinds: &[EventKind]) -> &RecipientActed {
        match &kinds[0] {
            EventKind::RecipientActed(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_recipient_releases_their_copy_alone_and_the_body_stays_for_the_others() {
        let mut store = store();
        let id = held().message_id;
        let (kinds, refused) = run(
            &mut store,
            &command("bob@example.test", release(true), link(1)),
            T,
        );
        assert_eq!(refused, None);
        assert_eq!(acted(&kinds).action, "quarantine.release_allow");
        assert_eq!(acted(&kinds).entry.as_deref(), Some("offers@news.test"));
        let EventKind::QuarantineDecided(d) = &kinds[1] else {
            panic!("{kinds:?}");
        };
        assert_eq!(d.recipients, ["Bob@example.test"]);
        assert_eq!(d.decision.user, "bob@example.test");
        // Carol's copy is still held; Bob's is queued; the sender is on Bob's list.
        assert_eq!(store.quarantine[&id].recipients, ["carol@example.test"]);
        let queued: Vec<&str> = store.queue[&id]
            .entry
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(queued, ["Bob@example.test"]);
        assert_eq!(store.lists["bob@example.test"].allow, ["offers@news.test"]);
        // Bob's copy delivered: the queue entry leaves, the body stays for Carol.
        let mut changes = Changes::default();
        changes.queue.insert(id, None);
        store.commit(changes);
        assert!(store.bodies.contains_key(&id));
        // Carol releases hers through another link: a new entry, the body still there.
        let (_, refused) = run(
            &mut store,
            &command("carol@example.test", release(false), link(2)),
            T,
        );
        assert_eq!(refused, None);
        assert!(!store.quarantine.contains_key(&id));
        assert_eq!(store.queue[&id].entry.recipients.len(), 1);
        assert!(store.bodies.contains_key(&id));
        assert!(!store.lists.contains_key("carol@example.test"));
    }

    #[test]
    fn a_link_is_spent_by_its_first_use_and_refused_after_it_expires() {
        let mut store = store();
        let delete = RecipientAction::Delete {
            message_id: held().message_id,
        };
        let (kinds, refused) = run(
            &mut store,
            &command("carol@example.test", delete.clone(), link(1)),
            T,
        );
        assert_eq!(refused, None, "{kinds:?}");
        assert_eq!(store.spent[&[1; 32]], T);
        let (kinds, refused) = run(
            &mut store,
            &command("carol@example.test", delete.clone(), link(1)),
            T + 1,
        );
        assert_eq!(refused.as_deref(), Some(SPENT));
        assert_eq!(acted(&kinds).refused.as_deref(), Some(SPENT));
        assert_eq!(kinds.len(), 1);
        // Bob's link, used after it expired: refused, and not spent.
        let (_, refused) = run(
            &mut store,
            &command("bob@example.test", release(false), link(3)),
            T + 60_001,
        );
        assert_eq!(refused.as_deref(), Some(EXPIRED));
        assert!(!store.spent.contains_key(&[3; 32]));
        let portal = Via::Portal { expires_ms: T + 10 };
        let (_, refused) = run(
            &mut store,
            &command("bob@example.test", release(false), portal),
            T + 11,
        );
        assert_eq!(refused.as_deref(), Some(EXPIRED));
        // Carol's deletion left Bob's copy and the body.
        assert_eq!(
            store.quarantine[&held().message_id].recipients,
            ["Bob@example.test"]
        );
        assert!(store.bodies.contains_key(&held().message_id));
        // Bob deletes his: the record and the body go.
        let delete_bob = command(
            "bob@example.test",
            delete,
            Via::Portal { expires_ms: T + 10 },
        );
        assert_eq!(run(&mut store, &delete_bob, T).1, None);
        assert!(store.quarantine.is_empty() && store.bodies.is_empty());
    }

    #[test]
    fn mail_held_for_malware_or_content_is_released_by_an_operator_only() {
        let mut store = store();
        let mut record = held();
        record.reason = "blocked content extension:exe".into();
        store.quarantine.insert(record.message_id, record.clone());
        for via in [link(1), Via::Portal { expires_ms: T + 10 }] {
            let (kinds, refused) = run(
                &mut store,
                &command("bob@example.test", release(false), via),
                T,
            );
            assert_eq!(refused.as_deref(), Some(OPERATOR_ONLY));
            assert_eq!(kinds.len(), 1);
        }
        assert_eq!(store.quarantine[&record.message_id], record);
        // Deleting one's own copy is allowed; an operator's release for a recipient too.
        let delete = RecipientAction::Delete {
            message_id: record.message_id,
        };
        assert_eq!(
            run(
                &mut store,
                &command("carol@example.test", delete, link(2)),
                T
            )
            .1,
            None
        );
        let console = Via::Console {
            user: "olga".into(),
            reason: "the supplier's installer".into(),
        };
        let (kinds, refused) = run(
            &mut store,
            &command("bob@example.test", release(true), console),
            T,
        );
        assert_eq!(refused, None);
        let EventKind::QuarantineDecided(d) = &kinds[1] else {
            panic!("{kinds:?}");
        };
        assert_eq!(
            (d.decision.user.as_str(), d.decision.reason.as_str()),
            ("olga", "the supplier's installer")
        );
        assert!(store.quarantine.is_empty());
    }

    #[test]
    fn one_recipient_never_acts_on_another_s_copy() {
        let mut store = store();
        for via in [link(1), Via::Portal { expires_ms: T + 10 }] {
            let (kinds, refused) = run(
                &mut store,
                &command("dave@example.test", release(false), via),
                T,
            );
            assert_eq!(refused.as_deref(), Some(NOT_HELD));
            assert_eq!(acted(&kinds).recipient, "dave@example.test");
        }
        assert_eq!(store.quarantine[&held().message_id], held());
        assert!(store.queue.is_empty());
    }

    #[test]
    fn lists_change_by_entry_and_refuse_what_is_not_one() {
        let mut store = store();
        let portal = Via::Portal { expires_ms: T + 10 };
        let list = |list, entry: &str, add| RecipientAction::List {
            list,
            entry: entry.into(),
            add,
        };
        for (action, refused) in [
            (list(ListKind::Block, "Spam.test", true), None),
            (list(ListKind::Allow, "friend@pal.test", true), None),
            (list(ListKind::Allow, "10.0.0.1", true), Some(BAD_ENTRY)),
            (list(ListKind::Block, "spam.test", false), None),
            (list(ListKind::Block, "spam2.test", true), None),
        ] {
            let (kinds, got) = run(
                &mut store,
                &command("Bob@Example.test", action, portal.clone()),
                T,
            );
            assert_eq!(got.as_deref(), refused, "{kinds:?}");
        }
        assert_eq!(
            store.lists["bob@example.test"],
            RecipientLists {
                allow: vec!["friend@pal.test".into()],
                block: vec!["spam2.test".into()],
            }
        );
    }

    #[test]
    fn a_digest_goes_once_per_window_and_the_link_key_is_set_once() {
        let mut store = Memory::default();
        let digest_for = |through_ms: i64, n| DigestCommand {
            recipient: "Bob@example.test".into(),
            through_ms: Some(through_ms),
            through_seq: 7,
            messages: 2,
            digest_id: MessageId::new(T, n),
            body: b"Subject: held\r\n\r\nx\r\n".to_vec(),
        };
        let first = digest_for(T, 7);
        let mut changes = Changes::default();
        let (kinds, refused) = digest(&mut changes, &store, &first, &op(1, T), 9).unwrap();
        assert_eq!(refused, None);
        assert!(matches!(&kinds[0], EventKind::DigestSent(d) if d.messages == 2));
        // The same window again in the batch (a second node's schedule): refused.
        let again = digest_for(T, 8);
        let (kinds, refused) = digest(&mut changes, &store, &again, &op(1, T), 10).unwrap();
        assert_eq!((kinds.len(), refused.as_deref()), (0, Some(DIGEST_SENT)));
        store.commit(changes);
        let entry = &store.queue[&MessageId::new(T, 7)].entry;
        assert_eq!(entry.mail_from, "");
        assert_eq!(entry.recipients[0].address, "Bob@example.test");
        assert_eq!(store.bodies.len(), 1);
        assert_eq!(
            store.digests["bob@example.test"],
            DigestMark {
                slot_ms: T,
                through_seq: 7
            }
        );
        let later = digest_for(T + 1, 9);
        let mut changes = Changes::default();
        assert_eq!(
            digest(&mut changes, &store, &later, &op(1, T), 11)
                .unwrap()
                .1,
            None
        );
        // A portal link is not a digest: never refused as one.
        let link_mail = DigestCommand {
            through_ms: None,
            ..digest_for(0, 10)
        };
        assert_eq!(
            digest(&mut changes, &store, &link_mail, &op(1, T), 12)
                .unwrap()
                .1,
            None
        );
        let mut changes = Changes::default();
        link_key(&mut changes, &store, &[1; 32]).unwrap();
        link_key(&mut changes, &store, &[2; 32]).unwrap();
        store.commit(changes);
        let mut changes = Changes::default();
        link_key(&mut changes, &store, &[3; 32]).unwrap();
        store.commit(changes);
        assert_eq!(store.link_key, Some([1; 32]));
    }
}

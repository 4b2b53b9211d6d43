//! The state database through its public operations on a real RocksDB directory:
//! apply, the reads, purges, checkpoints and generations together. The rules alone
//! are tested in `bulwark_model::rules`, without a database.

use std::collections::HashSet;

use bulwark_model::samples;
use rocksdb::IteratorMode;

use super::*;
use crate::bayes::{BayesClass, BayesLesson};
use crate::event::{Command, EventPurge, Op};
use crate::index::EventFilter;
use crate::message::{
    AcceptedMessage, Action, Bounce, DeliveryCommand, QuarantineAction, QuarantineCommand,
    QuarantineExpiry, QueueStatus, RecipientStatus,
};
use crate::message::{MessageReceived, Verdict};
use crate::token::TokenCommand;
use crate::NOT_QUARANTINED;

fn note(id: u128, text: &str) -> Op {
    Op {
        id,
        time_ms: 1_700_000_000_000 + id as i64,
        node: 1,
        command: Command::Record(EventKind::AuditNote {
            author: "admin".into(),
            text: text.into(),
        }),
    }
}

#[test]
fn a_state_of_a_newer_data_format_is_refused_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let root = layout::state_root(dir.path());
    {
        let state = StateDir::open(&root).unwrap();
        let store = state.current();
        let meta = store.cf(cf::META);
        assert_eq!(
            store
                .db
                .get_cf(meta, layout::DATA_FORMAT_KEY)
                .unwrap()
                .unwrap(),
            layout::DATA_FORMAT.to_be_bytes()
        );
        store
            .db
            .put_cf(
                meta,
                layout::DATA_FORMAT_KEY,
                (layout::DATA_FORMAT + 1).to_be_bytes(),
            )
            .unwrap();
    }
    for refused in [
        StateDir::open(&root).err().map(|e| e.to_string()),
        StateDir::open_offline(dir.path())
            .err()
            .map(|e| e.to_string()),
    ] {
        let refused = refused.expect("a newer format is refused");
        assert!(refused.contains("newer Bulwark"), "{refused}");
    }
}

#[test]
fn export_progress_moves_cursor_and_count_with_its_dead_letter_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let progress = |id: u128, seq: u64, shipped: u64, dead: bool| Op {
        id,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::ExportProgress(Box::new(crate::event::ExportProgress {
            exporter: "hook".into(),
            seq,
            shipped,
            dead_letter: dead.then(|| crate::event::ExportDeadLetter {
                exporter: "hook".into(),
                first_seq: 2,
                last_seq: seq,
                events: 2,
                tries: 3,
                error: "400".into(),
            }),
        })),
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops = [note(1, "a"), note(2, "b"), note(3, "c")];
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        let ops = [progress(10, 1, 1, false), progress(11, 3, 3, true)];
        store.apply(&[(2, &ops[..])], b"2").unwrap();
        // Proposed again (a retry, a former leader): neither moves nor records.
        let ops = [progress(12, 3, 3, true), progress(13, 2, 2, false)];
        store.apply(&[(3, &ops[..])], b"3").unwrap();
        // An older build's cursor keeps the count.
        let ops = [
            note(4, "d"),
            Op {
                id: 14,
                time_ms: 1_700_000_000_000,
                node: 1,
                command: Command::ExportCursor {
                    exporter: "hook".into(),
                    seq: 5,
                },
            },
        ];
        store.apply(&[(4, &ops[..])], b"4").unwrap();
    }
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let position = store.export_position("hook").unwrap();
    assert_eq!((position.seq, position.shipped), (5, 3));
    let (events, _) = store.events(&EventFilter::default(), 0, 100).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.type_name()).collect();
    assert_eq!(
        kinds,
        [
            "audit.note",
            "audit.note",
            "audit.note",
            "siem.dead_letter",
            "audit.note"
        ]
    );
    assert!(store.verify().unwrap().ok);
}

#[test]
fn export_cursors_only_move_forward_within_the_log_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let cursor = |id: u128, exporter: &str, seq: u64| Op {
        id,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::ExportCursor {
            exporter: exporter.into(),
            seq,
        },
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops = [note(1, "a"), note(2, "b"), note(3, "c")];
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        assert_eq!(store.export_cursor("soc").unwrap(), 0);
        // In one batch: forward, back (ignored), past the log's end (clamped).
        let ops = [
            cursor(10, "soc", 2),
            cursor(11, "soc", 1),
            cursor(12, "hec", 99),
            note(4, "d"),
        ];
        let results = store.apply(&[(2, &ops[..])], b"2").unwrap();
        // No event: the result names the log's end when it was applied.
        assert_eq!(results[0][0].seq, 3);
        assert_eq!(results[0][3].seq, 4);
        assert_eq!(store.export_cursor("soc").unwrap(), 2);
        assert_eq!(store.export_cursor("hec").unwrap(), 3);
        let ops = [cursor(13, "soc", 1)];
        store.apply(&[(3, &ops[..])], b"3").unwrap();
        assert_eq!(store.export_cursor("soc").unwrap(), 2);
        assert_eq!(store.chain_head().0, 4, "cursors record no event");
        assert!(store.verify().unwrap().ok);
    }
    let state = StateDir::open(dir.path()).unwrap();
    assert_eq!(
        state.current().export_cursors().unwrap(),
        vec![("hec".to_string(), 3), ("soc".to_string(), 2)]
    );
}

#[test]
fn the_feature_level_is_replicated_state_that_only_rises_and_survives_reopening() {
    use bulwark_model::feature::{BASE, LEVELS};
    let dir = tempfile::tempdir().unwrap();
    let raise = |id: u128, level: u32| Op {
        id,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::RaiseFeatureLevel { level },
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        assert_eq!(
            store.feature_level(),
            BASE,
            "none on record: the base level"
        );
        let ops = [raise(1, LEVELS), note(2, "a")];
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        assert_eq!(store.feature_level(), LEVELS);
        // Down (and in one batch, up then down): ignored.
        let ops = [raise(3, BASE), raise(4, 7), raise(5, 3)];
        store.apply(&[(2, &ops[..])], b"2").unwrap();
        assert_eq!(store.feature_level(), 7);
        assert_eq!(store.chain_head().0, 1, "a raise records no event");
        // A checkpoint (what a snapshot ships) carries it.
        store.checkpoint(&dir.path().join("copy")).unwrap();
        let copy = StateStore::open_read_only(&dir.path().join("copy")).unwrap();
        assert_eq!(copy.feature_level(), 7);
    }
    let state = StateDir::open(dir.path()).unwrap();
    assert_eq!(state.current().feature_level(), 7);
}

/// Rewrites the whole log as someone with the disk would: `edit` each event, then
/// recompute every hash and link and the stored chain head.
fn rechain(store: &StateStore, edit: impl Fn(&mut StoredEvent)) {
    let mut prev: Hash = [0; 32];
    let mut events = Vec::new();
    for item in store
        .db
        .iterator_cf(store.cf(cf::EVENTS), IteratorMode::Start)
    {
        let (key, value) = item.unwrap();
        events.push((key.to_vec(), codec::decode::<StoredEvent>(&value).unwrap()));
    }
    let mut next_seq = 1;
    for (key, mut stored) in events {
        edit(&mut stored);
        stored.prev_hash = prev;
        stored.hash = stored.event.chain_hash(&prev).unwrap();
        prev = stored.hash;
        next_seq = stored.event.seq + 1;
        store
            .db
            .put_cf(store.cf(cf::EVENTS), key, codec::encode(&stored).unwrap())
            .unwrap();
    }
    let head = ChainHead {
        next_seq,
        hash: prev,
    };
    store
        .db
        .put_cf(
            store.cf(cf::META),
            META_CHAIN,
            codec::encode(&head).unwrap(),
        )
        .unwrap();
    *store.head.lock().unwrap() = head;
}

/// A fresh Ed25519 key.
fn signing_key() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// Node `node`'s checkpoint of the chain as it stands, signed with `key`.
fn checkpoint_op(
    store: &StateStore,
    id: u128,
    node: u64,
    key: &ring::signature::Ed25519KeyPair,
) -> Op {
    use crate::event::ChainCheckpoint;
    use ring::signature::KeyPair;
    let (seq, hash) = store.chain_head();
    let checkpoint = ChainCheckpoint {
        seq,
        hash,
        node,
        public_key: key.public_key().as_ref().to_vec(),
        signature: key
            .sign(&ChainCheckpoint::message(seq, &hash))
            .as_ref()
            .to_vec(),
    };
    Op {
        id,
        time_ms: 1_700_000_000_003,
        node,
        command: Command::Record(EventKind::ChainCheckpoint(Box::new(checkpoint))),
    }
}

/// Node `node` trusts `key` from now on.
fn trust_op(id: u128, node: u64, key: &ring::signature::Ed25519KeyPair) -> Op {
    use ring::signature::KeyPair;
    Op {
        id,
        time_ms: 1_700_000_000_000,
        node,
        command: Command::TrustSigner(Box::new(crate::event::SignerChanged {
            node,
            public_key: key.public_key().as_ref().to_vec(),
            previous: None,
            endorsement: None,
        })),
    }
}

#[test]
fn signed_checkpoints_expose_a_rewritten_and_rechained_history() {
    use ring::signature::KeyPair;
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let key = signing_key();
    let ops = [trust_op(5, 3, &key), note(1, "a"), note(2, "b")];
    store.apply(&[(1, &ops[..])], b"1").unwrap();
    let (seq, hash) = store.chain_head();
    let ops = [checkpoint_op(&store, 3, 3, &key), note(4, "c")];
    store.apply(&[(2, &ops[..])], b"2").unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints, 1);
    assert_eq!(
        report.signers,
        vec![format!("3:{}", hex::encode(key.public_key().as_ref()))]
    );
    let json = store.event(1).unwrap().unwrap().to_json();
    assert_eq!(json["type"], "audit.key_rotated");
    assert_eq!(
        json["signer"]["public_key"],
        hex::encode(key.public_key().as_ref())
    );
    let json = store.event(4).unwrap().unwrap().to_json();
    assert_eq!(json["type"], "audit.checkpoint");
    assert_eq!(json["checkpoint"]["seq"], seq);
    assert_eq!(json["checkpoint"]["hash"], hex::encode(hash));

    // A note before the checkpoint rewritten, the chain recomputed: every link
    // holds, the checkpoint does not.
    rechain(&store, |e| {
        if let EventKind::AuditNote { text, .. } = &mut e.event.kind {
            if text == "a" {
                *text = "rewritten".into();
            }
        }
    });
    let report = store.verify().unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(4));
    assert!(
        report.problem.as_deref().unwrap().contains("rewritten"),
        "{report:?}"
    );

    // The checkpoint re-made for the new history without the key: a bad signature.
    let forged_hash = store.event(3).unwrap().unwrap().hash;
    rechain(&store, |e| {
        if let EventKind::ChainCheckpoint(c) = &mut e.event.kind {
            c.hash = forged_hash;
        }
    });
    let report = store.verify().unwrap();
    assert!(!report.ok);
    assert!(
        report.problem.as_deref().unwrap().contains("signature"),
        "{report:?}"
    );

    // Re-signed with a key of the forger's own, valid as a signature: the key is
    // not one the cluster trusts for node 3, and the check says so.
    let forger = signing_key();
    rechain(&store, |e| {
        if let EventKind::ChainCheckpoint(c) = &mut e.event.kind {
            c.public_key = forger.public_key().as_ref().to_vec();
            c.signature = forger
                .sign(&crate::event::ChainCheckpoint::message(c.seq, &c.hash))
                .as_ref()
                .to_vec();
        }
    });
    let report = store.verify().unwrap();
    assert!(!report.ok);
    assert!(
        report.problem.as_deref().unwrap().contains("not trust"),
        "{report:?}"
    );
}

#[test]
fn a_rotated_key_signs_from_its_event_on_and_the_old_one_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let (old, new) = (signing_key(), signing_key());
    let ops = [trust_op(1, 2, &old), note(2, "a")];
    store.apply(&[(1, &ops[..])], b"1").unwrap();
    let ops = [checkpoint_op(&store, 3, 2, &old), trust_op(4, 2, &new)];
    store.apply(&[(2, &ops[..])], b"2").unwrap();
    let ops = [checkpoint_op(&store, 5, 2, &new)];
    store.apply(&[(3, &ops[..])], b"3").unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints, 2);
    assert_eq!(store.signers(2).unwrap().keys.len(), 2);
    // The retired key signing after its successor took over: refused.
    let ops = [checkpoint_op(&store, 6, 2, &old)];
    store.apply(&[(4, &ops[..])], b"4").unwrap();
    let report = store.verify().unwrap();
    assert!(!report.ok);
    assert!(
        report.problem.as_deref().unwrap().contains("not trust"),
        "{report:?}"
    );
}

#[test]
fn purges_remove_the_oldest_events_and_their_postings_and_the_chain_verifies_after() {
    let dir = tempfile::tempdir().unwrap();
    let purge = |id: u128, before_seq: u64, max: u32| Op {
        id,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::PurgeEvents(Box::new(EventPurge {
            before_seq,
            max,
            reason: "test".into(),
        })),
    };
    let notes = EventFilter {
        type_name: Some("audit.note".into()),
        ..EventFilter::default()
    };
    let seqs = |store: &StateStore, filter: &EventFilter| -> Vec<u64> {
        let (page, _) = store.events(filter, 0, 100).unwrap();
        page.iter().map(|e| e.event.seq).collect()
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops: Vec<Op> = (1..=10).map(|n| note(n, &format!("n{n}"))).collect();
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        let hash_4 = store.event(4).unwrap().unwrap().hash;
        let results = store
            .apply(&[(2, &[purge(100, 5, 1000)][..])], b"2")
            .unwrap();
        assert_eq!(results[0][0].seq, 11);
        let event = store.event(11).unwrap().unwrap().to_json();
        assert_eq!(event["type"], "audit.purged");
        assert_eq!(event["purge"]["first_seq"], 1);
        assert_eq!(event["purge"]["through_seq"], 4);
        assert_eq!(event["purge"]["count"], 4);
        assert_eq!(event["purge"]["through_hash"], hex::encode(hash_4));
        assert_eq!(store.purged_through().unwrap(), (4, hash_4));
        assert_eq!(
            seqs(&store, &EventFilter::default()),
            (5..=11).collect::<Vec<_>>()
        );
        // By the index: the purged events' postings went with them.
        assert_eq!(seqs(&store, &notes), (5..=10).collect::<Vec<_>>());
        let report = store.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.checked, report.purged_through), (7, 4));

        // At most `max`; and everything recorded before it, in this batch too.
        store
            .apply(&[(3, &[purge(101, 100, 2)][..])], b"3")
            .unwrap();
        assert_eq!(store.purged_through().unwrap().0, 6);
        let ops = [note(20, "new"), purge(102, 1000, 1000)];
        store.apply(&[(4, &ops[..])], b"4").unwrap();
        assert_eq!(store.purged_through().unwrap().0, 13);
        assert_eq!(seqs(&store, &EventFilter::default()), vec![14]);
        assert!(seqs(&store, &notes).is_empty());
        // Nothing left to remove: no event.
        let (before, _) = store.chain_head();
        store
            .apply(&[(5, &[purge(103, 13, 1000)][..])], b"5")
            .unwrap();
        assert_eq!(store.chain_head().0, before);
        // A retried operation whose event was purged is still a duplicate.
        let again = store.apply(&[(6, &[note(1, "n1")][..])], b"6").unwrap();
        assert!(again[0][0].duplicate);
        assert_eq!(store.chain_head().0, before);
    }
    let state = StateDir::open(dir.path()).unwrap();
    let report = state.current().verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.checked, report.purged_through), (1, 13));
    // Events removed by hand, the purge's record with them, and the start
    // rewritten to match: every link holds, but no audit.purged names that start.
    let store = state.current();
    let ops = [note(30, "x"), note(31, "y")];
    store.apply(&[(7, &ops[..])], b"7").unwrap();
    let saved = store
        .db
        .get_cf(store.cf(cf::META), META_PURGED)
        .unwrap()
        .unwrap();
    let start = store.event(16).unwrap().unwrap().prev_hash;
    for seq in [14u64, 15] {
        store
            .db
            .delete_cf(store.cf(cf::EVENTS), seq.to_be_bytes())
            .unwrap();
    }
    store
        .db
        .put_cf(
            store.cf(cf::META),
            META_PURGED,
            codec::encode(&(15u64, start)).unwrap(),
        )
        .unwrap();
    let report = store.verify().unwrap();
    assert!(!report.ok);
    assert!(
        report
            .problem
            .as_deref()
            .unwrap()
            .contains("no audit.purged"),
        "{report:?}"
    );
    store
        .db
        .put_cf(store.cf(cf::META), META_PURGED, saved)
        .unwrap();
    // With the start put back, the removed events are a gap.
    let report = store.verify().unwrap();
    assert_eq!(report.first_bad_seq, Some(14), "{report:?}");
}

#[test]
fn a_purge_removes_the_same_events_however_the_entries_are_batched() {
    let purge = Op {
        id: 100,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::PurgeEvents(Box::new(EventPurge {
            before_seq: 100,
            max: 1000,
            reason: "test".into(),
        })),
    };
    let notes: Vec<Op> = (1..=5).map(|n| note(n, &format!("n{n}"))).collect();
    let after = [note(6, "after")];
    let purges = [purge];
    let entries: [(u64, &[Op]); 3] = [(1, &notes[..]), (2, &purges[..]), (3, &after[..])];
    let (one, apart) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let together = StateDir::open(one.path()).unwrap().current();
    together.apply(&entries, b"3").unwrap();
    let separately = StateDir::open(apart.path()).unwrap().current();
    for entry in &entries {
        separately.apply(&[*entry], b"n").unwrap();
    }
    assert_eq!(together.chain_head(), separately.chain_head());
    assert_eq!(together.purged_through().unwrap().0, 5);
    assert_eq!(
        together.purged_through().unwrap(),
        separately.purged_through().unwrap()
    );
    assert!(together.verify().unwrap().ok);
}

#[test]
fn apply_chains_events_and_ignores_retried_ops() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let first = [note(1, "a"), note(2, "b")];
    let again = [note(2, "b"), note(3, "c"), note(3, "c")];
    let results = store
        .apply(&[(5, &first[..]), (6, &again[..])], b"applied-6")
        .unwrap();
    assert_eq!(
        results[0].iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        results[1]
            .iter()
            .map(|r| (r.seq, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(2, true), (3, false), (3, true)]
    );
    let (count, head) = store.chain_head();
    assert_eq!(count, 3);
    assert_eq!(head, results[1][1].hash);
    let report = store.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked, 3);
    assert_eq!(store.applied().unwrap().unwrap(), b"applied-6");
    let (page, next) = store.events(&EventFilter::default(), 1, 1).unwrap();
    assert_eq!(page[0].event.seq, 2);
    assert_eq!(next, Some(2));
    let (rest, next) = store.events(&EventFilter::default(), 2, 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(next, None);
}

#[test]
fn accepting_a_message_stores_body_queue_and_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let received = samples::received();
    let id = received.message_id;
    let accept = Op {
        id: id.0,
        time_ms: 1_764_300_000_005,
        node: 2,
        command: Command::AcceptMessage(Box::new(AcceptedMessage {
            verdict: samples::verdict(received.message_id),
            received,
            body: b"Received: x\r\n\r\nhello\r\n".to_vec(),
        })),
    };
    let results = store
        .apply(
            &[(3, &[note(1, "a"), accept.clone()][..]), (4, &[accept][..])],
            b"x",
        )
        .unwrap();
    // message.received (seq 2) then scan.verdict (seq 3).
    assert_eq!(results[0][1].seq, 3);
    assert!(results[1][0].duplicate);
    assert_eq!(store.chain_head().0, 3);
    assert_eq!(
        store.message_body(id).unwrap().unwrap(),
        b"Received: x\r\n\r\nhello\r\n"
    );
    let queued = store.queue_entry(id).unwrap().unwrap();
    assert_eq!(queued.received_seq, 2);
    assert_eq!(queued.recipients[0].address, "bob@example.test");
    assert_eq!(queued.recipients[0].status, RecipientStatus::Pending);
    let filter = EventFilter {
        type_name: Some("message.received".into()),
        message_id: Some(id),
        ..Default::default()
    };
    let (events, _) = store.events(&filter, 0, 10).unwrap();
    assert_eq!(events.len(), 1);
    let json = events[0].to_json();
    assert_eq!(json["message_id"], id.to_string());
    assert_eq!(json["email"]["to"]["address"][0], "bob@example.test");
    assert_eq!(json["source"]["ip"], "192.0.2.7");
    assert_eq!(json["action"], "deliver");
    assert!(store.verify().unwrap().ok);
    assert!(store.message_body(MessageId(7)).unwrap().is_none());
}

/// Message `n` accepted into the quarantine `n` seconds after 1,764,300,000 s (its id
/// made of both), its reception and verdict as `edit` leaves the samples.
fn quarantined(n: u128, edit: impl FnOnce(&mut MessageReceived, &mut Verdict)) -> Op {
    let mut received = samples::received();
    received.message_id = MessageId::new(1_764_300_000_000 + n as i64 * 1000, n);
    let mut verdict = samples::verdict(received.message_id);
    verdict.action = Action::Quarantine;
    edit(&mut received, &mut verdict);
    Op {
        id: n,
        time_ms: 1_764_300_000_000 + n as i64 * 1000,
        node: 1,
        command: Command::AcceptMessage(Box::new(AcceptedMessage {
            verdict,
            body: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
            received,
        })),
    }
}

#[test]
fn quarantined_messages_are_released_to_the_queue_or_deleted_once_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    // Three quarantined messages, a second apart; the second from another sender.
    let accept = |n: u128| {
        quarantined(n, |received, verdict| {
            if n == 2 {
                received.envelope.mail_from = "mallory@bad.test".into();
            }
            verdict.reason = if n == 3 {
                "malware: EICAR"
            } else {
                "score 12.0"
            }
            .into();
        })
    };
    let ids: Vec<MessageId> = (1..=3)
        .map(|n| MessageId::new(1_764_300_000_000 + n as i64 * 1000, n))
        .collect();
    store
        .apply(&[(1, &[accept(1), accept(2), accept(3)][..])], b"1")
        .unwrap();
    assert!(store.queue_entry(ids[0]).unwrap().is_none());

    // Listing: all, by sender, by reason, by time, and in pages.
    let all = QuarantineFilter::default();
    let (page, next) = store.quarantine_list(&all, None, 2).unwrap();
    let listed: Vec<MessageId> = page.iter().map(|r| r.message_id).collect();
    assert_eq!(listed, ids[..2]);
    let (rest, end) = store.quarantine_list(&all, next, 2).unwrap();
    assert_eq!(rest[0].message_id, ids[2]);
    assert_eq!(end, None);
    let by = |f: QuarantineFilter| -> Vec<MessageId> {
        let (records, _) = store.quarantine_list(&f, None, 10).unwrap();
        records.iter().map(|r| r.message_id).collect()
    };
    let sender = QuarantineFilter {
        sender: Some("@BAD.test".into()),
        ..Default::default()
    };
    assert_eq!(by(sender), [ids[1]]);
    let reason = QuarantineFilter {
        reason: Some("MALWARE".into()),
        ..Default::default()
    };
    assert_eq!(by(reason), [ids[2]]);
    let window = QuarantineFilter {
        since_ms: Some(1_764_300_002_000),
        until_ms: Some(1_764_300_003_000),
        ..Default::default()
    };
    assert_eq!(by(window), [ids[1]]);

    // Release the first twice in one batch (once done, once refused), delete the
    // second, and release one never quarantined.
    let decide = |op: u128, id: MessageId, action: QuarantineAction| Op {
        id: 100 + op,
        time_ms: 1_764_300_010_000,
        node: 3,
        command: Command::Quarantine(Box::new(QuarantineCommand {
            message_id: id,
            action,
            reason: "false positive".into(),
            user: "admin".into(),
            client_ip: Some("192.0.2.9".parse().unwrap()),
        })),
    };
    let results = store
        .apply(
            &[(
                2,
                &[
                    decide(1, ids[0], QuarantineAction::Release),
                    decide(2, ids[0], QuarantineAction::Release),
                    decide(3, ids[1], QuarantineAction::Delete),
                    decide(4, MessageId(7), QuarantineAction::Delete),
                ][..],
            )],
            b"2",
        )
        .unwrap();
    let refused: Vec<Option<&str>> = results[0].iter().map(|r| r.refused.as_deref()).collect();
    assert_eq!(
        refused,
        [None, Some(NOT_QUARANTINED), None, Some(NOT_QUARANTINED)]
    );
    // Released: in the queue for every recipient, due now, with its envelope's
    // extensions; out of the quarantine; body kept for delivery.
    let queued = store.queue_entry(ids[0]).unwrap().unwrap();
    assert_eq!(queued.recipients[0].address, "bob@example.test");
    assert_eq!(queued.recipients[0].status, RecipientStatus::Pending);
    assert!(queued.eight_bit);
    assert_eq!(queued.action, Action::Deliver);
    assert_eq!(queued.received_by, 3);
    assert!(store.quarantine_record(ids[0]).unwrap().is_none());
    assert!(store.message_body(ids[0]).unwrap().is_some());
    // Deleted: gone with its body, never queued.
    assert!(store.quarantine_record(ids[1]).unwrap().is_none());
    assert!(store.message_body(ids[1]).unwrap().is_none());
    assert!(store.queue_entry(ids[1]).unwrap().is_none());
    let (left, _) = store.quarantine_list(&all, None, 10).unwrap();
    assert_eq!(left.len(), 1);

    // On record: who, from where, why, and the refusals as api.action.
    let of = |id: MessageId| {
        let filter = EventFilter {
            type_name: None,
            message_id: Some(id),
            ..Default::default()
        };
        let (events, _) = store.events(&filter, 0, 10).unwrap();
        events.iter().map(|e| e.to_json()).collect::<Vec<_>>()
    };
    let first = of(ids[0]);
    let released: Vec<_> = first
        .iter()
        .filter(|e| e["type"] == "quarantine.released")
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["user"]["name"], "admin");
    assert_eq!(released[0]["source"]["ip"], "192.0.2.9");
    assert_eq!(released[0]["event"]["reason"], "false positive");
    assert_eq!(released[0]["email"]["to"]["address"][0], "bob@example.test");
    let refusal = first.iter().find(|e| e["type"] == "api.action").unwrap();
    assert_eq!(refusal["event"]["outcome"], "failure");
    assert_eq!(refusal["action"], "quarantine.release");
    assert!(of(ids[1]).iter().any(|e| e["type"] == "quarantine.deleted"));

    // Retention: what was quarantined before the cut expires, body and all; a
    // second run finds nothing and says so.
    let expire = |op: u128, before_ms: i64| Op {
        id: 200 + op,
        time_ms: 1_764_400_000_000,
        node: 1,
        command: Command::ExpireQuarantine(Box::new(QuarantineExpiry {
            before_ms,
            max: 100,
            reason: "held longer than 30 days".into(),
        })),
    };
    // The check the leader makes first agrees with the removal.
    assert!(!store.quarantine_due(1_764_300_003_000).unwrap());
    assert!(store.quarantine_due(1_764_300_004_000).unwrap());
    store
        .apply(
            &[(
                3,
                &[expire(1, 1_764_300_003_000), expire(2, 1_764_300_004_000)][..],
            )],
            b"3",
        )
        .unwrap();
    assert!(!store.quarantine_due(1_764_300_004_000).unwrap());
    // The first cut is the third message's quarantine time: not before it.
    let runs: Vec<serde_json::Value> = {
        let filter = EventFilter {
            type_name: Some("quarantine.retention".into()),
            message_id: None,
            ..Default::default()
        };
        let (events, _) = store.events(&filter, 0, 10).unwrap();
        events.iter().map(|e| e.to_json()).collect()
    };
    let expired: Vec<&serde_json::Value> =
        runs.iter().map(|r| &r["quarantine"]["expired"]).collect();
    assert_eq!(expired, [0, 1]);
    assert!(store.quarantine_record(ids[2]).unwrap().is_none());
    assert!(store.message_body(ids[2]).unwrap().is_none());
    let gone = of(ids[2]);
    let last = gone.last().unwrap();
    assert_eq!(last["type"], "quarantine.expired");
    assert_eq!(last["user"]["name"], "retention");
    assert_eq!(last["event"]["reason"], "held longer than 30 days");
    // The released message is not the retention's to touch.
    assert!(store.message_body(ids[0]).unwrap().is_some());

    // Two clocks: received (its id) after a cut it was quarantined before. Neither
    // the check nor the removal takes it until the cut passes both.
    let mut skewed = accept(4);
    if let Command::AcceptMessage(m) = &mut skewed.command {
        m.received.message_id = MessageId::new(1_764_300_020_000, 4);
        m.verdict.message_id = m.received.message_id;
    }
    skewed.time_ms = 1_764_300_010_000;
    store.apply(&[(4, &[skewed][..])], b"4").unwrap();
    assert!(!store.quarantine_due(1_764_300_015_000).unwrap());
    assert!(store.quarantine_due(1_764_300_025_000).unwrap());
    assert!(store.verify().unwrap().ok);
    // Released to the queue (1), deleted, expired, and the skewed one held (1).
    assert_eq!(store.depths(), walked_depths(&store));
    assert_eq!(store.depths(), (1, 1));
    let dir_path = store.dir().to_path_buf();
    drop(store);
    drop(state);
    assert_eq!(StateStore::open(&dir_path).unwrap().depths(), (1, 1));
}

#[test]
fn the_quarantine_is_listed_by_every_word_of_the_subject_whatever_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let subjects = [Some("Your Invoice is overdue"), Some("invoice"), None];
    let ops: Vec<Op> = (1..=3u128)
        .map(|n| {
            quarantined(n, |received, _| {
                received.subject = subjects[n as usize - 1].map(String::from);
            })
        })
        .collect();
    store.apply(&[(1, &ops[..])], b"1").unwrap();
    let by_subject = |words: &str| -> Vec<u128> {
        let filter = QuarantineFilter {
            subject: Some(words.into()),
            ..Default::default()
        };
        let (records, _) = store.quarantine_list(&filter, None, 10).unwrap();
        records.iter().map(|r| r.message_id.0 & 0xff).collect()
    };
    assert_eq!(by_subject("INVOICE"), [1, 2]);
    assert_eq!(by_subject("overdue  invoice"), [1]);
    assert_eq!(by_subject("invoice paid"), Vec::<u128>::new());
    assert_eq!(by_subject(""), [1, 2, 3], "no word: every message");
}

#[test]
fn a_batch_that_quarantines_and_releases_or_expires_acts_as_separate_batches_would() {
    let accept = |n: u128| {
        let mut received = samples::received();
        received.message_id = MessageId::new(1_764_300_000_000, n);
        received.envelope.eight_bit = false;
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = Action::Quarantine;
        Op {
            id: n,
            time_ms: 1_764_300_000_000,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict,
                received,
                body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            })),
        }
    };
    let release = Op {
        id: 10,
        time_ms: 1_764_300_001_000,
        node: 1,
        command: Command::Quarantine(Box::new(QuarantineCommand {
            message_id: MessageId::new(1_764_300_000_000, 1),
            action: QuarantineAction::Release,
            reason: "ok".into(),
            user: "admin".into(),
            client_ip: None,
        })),
    };
    let expire = Op {
        id: 11,
        time_ms: 1_764_300_001_000,
        node: 1,
        command: Command::ExpireQuarantine(Box::new(QuarantineExpiry {
            before_ms: 1_764_300_000_500,
            max: 10,
            reason: "old".into(),
        })),
    };
    let ops = [accept(1), accept(2), release, expire];
    let outcome = |batches: &[&[Op]]| {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        for (i, ops) in batches.iter().enumerate() {
            store.apply(&[(i as u64 + 1, ops)], b"x").unwrap();
        }
        let queued = store
            .queue_entry(MessageId::new(1_764_300_000_000, 1))
            .unwrap()
            .map(|e| (e.eight_bit, e.smtputf8));
        let left = store
            .quarantine_list(&QuarantineFilter::default(), None, 10)
            .unwrap()
            .0
            .len();
        // The counts kept batch by batch are what a walk of the store counts.
        assert_eq!(store.depths(), walked_depths(&store));
        // Events name their Raft index, so the chain hashes differ; their number may not.
        (queued, left, store.chain_head().0, store.depths())
    };
    let together = outcome(&[&ops[..]]);
    let apart = outcome(&[&ops[..1], &ops[1..2], &ops[2..3], &ops[3..]]);
    assert_eq!(together, apart);
    // Released with the envelope as received (no 8BITMIME); the other expired.
    assert_eq!(together.0, Some((false, false)));
    assert_eq!(together.1, 0);
    assert_eq!(together.3, (1, 0));
}

/// Messages in the queue and in the quarantine, counted key by key.
fn walked_depths(store: &StateStore) -> (u64, u64) {
    let count = |name| {
        store
            .db
            .iterator_cf(store.cf(name), IteratorMode::Start)
            .count() as u64
    };
    (count(cf::QUEUE), count(cf::QUARANTINE))
}

#[test]
fn tokens_are_created_once_found_by_digest_listed_and_revoked() {
    use crate::token::{Role, NO_SUCH_TOKEN, TOKEN_TAKEN};
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let create = |id: u128, name: &str, role: Role, digest: u8| Op {
        id,
        time_ms: 1_764_300_000_000,
        node: 1,
        command: Command::Token(Box::new(TokenCommand::Create {
            token: ApiToken {
                name: name.into(),
                role,
                digest: [digest; 32],
                created_ms: 1_764_300_000_000,
                created_by: "admin".into(),
            },
            client_ip: None,
        })),
    };
    let revoke = |id: u128, name: &str| Op {
        id,
        time_ms: 1_764_300_000_000,
        node: 1,
        command: Command::Token(Box::new(TokenCommand::Revoke {
            name: name.into(),
            user: "admin".into(),
            client_ip: Some("192.0.2.9".parse().unwrap()),
        })),
    };
    let results = store
        .apply(
            &[(
                1,
                &[
                    create(1, "splunk", Role::Siem, 1),
                    create(2, "splunk", Role::Admin, 2),
                    create(3, "audit", Role::Auditor, 3),
                ][..],
            )],
            b"1",
        )
        .unwrap();
    let refused: Vec<Option<String>> = results[0].iter().map(|r| r.refused.clone()).collect();
    assert_eq!(
        refused,
        [None, Some(format!("{TOKEN_TAKEN}: splunk")), None]
    );
    let found = store.token_by_digest(&[1; 32]).unwrap().unwrap();
    assert_eq!((found.name.as_str(), found.role), ("splunk", Role::Siem));
    assert!(store.token_by_digest(&[2; 32]).unwrap().is_none());
    let names: Vec<String> = store
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["audit", "splunk"]);

    // Revoked (and created again under the same name within one batch).
    let results = store
        .apply(
            &[(
                2,
                &[
                    revoke(4, "splunk"),
                    revoke(5, "splunk"),
                    create(6, "splunk", Role::Siem, 4),
                ][..],
            )],
            b"2",
        )
        .unwrap();
    assert_eq!(
        results[0][1].refused,
        Some(format!("{NO_SUCH_TOKEN}: splunk"))
    );
    assert!(store.token_by_digest(&[1; 32]).unwrap().is_none());
    assert_eq!(
        store.token_by_digest(&[4; 32]).unwrap().unwrap().name,
        "splunk"
    );
    let filter = EventFilter {
        type_name: Some("token.revoked".into()),
        message_id: None,
        ..Default::default()
    };
    let (events, _) = store.events(&filter, 0, 10).unwrap();
    let json = events[0].to_json();
    assert_eq!(json["token"]["name"], "splunk");
    assert_eq!(json["token"]["role"], "siem");
    assert_eq!(json["source"]["ip"], "192.0.2.9");
    assert!(
        !json.to_string().contains("0101010101"),
        "no digest: {json}"
    );
    assert!(store.verify().unwrap().ok);
}

#[test]
fn a_revoked_name_is_kept_also_for_a_database_written_before_names_were_kept() {
    use crate::token::{Role, TOKEN_NAME_RETIRED};
    let dir = tempfile::tempdir().unwrap();
    let token = |name: &str, digest: u8| ApiToken {
        name: name.into(),
        role: Role::Siem,
        digest: [digest; 32],
        created_ms: 1_764_300_000_000,
        created_by: "admin".into(),
    };
    let op = |id: u128, command: TokenCommand| Op {
        id,
        time_ms: 1_764_300_000_000,
        node: 1,
        command: Command::Token(Box::new(command)),
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops = [
            op(
                1,
                TokenCommand::Create {
                    token: token("splunk", 1),
                    client_ip: None,
                },
            ),
            op(
                2,
                TokenCommand::Revoke {
                    name: "splunk".into(),
                    user: "admin".into(),
                    client_ip: None,
                },
            ),
        ];
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        assert!(store.token_name_retired("splunk").unwrap());
        // As an older build left it: the revocation in the log, the name not kept.
        store
            .db
            .delete_cf(store.cf(cf::TOKENS), token::retired_key("splunk"))
            .unwrap();
        store
            .db
            .delete_cf(store.cf(cf::META), META_REVOKED_NAMES)
            .unwrap();
        assert!(!store.token_name_retired("splunk").unwrap());
    }
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    assert!(store.token_name_retired("splunk").unwrap());
    assert!(!store.token_name_retired("other").unwrap());
    let ops = [op(
        3,
        TokenCommand::CreateUnused {
            token: token("splunk", 2),
            client_ip: None,
        },
    )];
    let results = store.apply(&[(2, &ops[..])], b"2").unwrap();
    assert_eq!(
        results[0][0].refused,
        Some(format!("{TOKEN_NAME_RETIRED}: splunk"))
    );
    assert!(store.tokens().unwrap().is_empty());
}

#[test]
fn console_users_and_sessions_survive_reopening_and_a_removed_name_stays_taken() {
    use crate::token::Role;
    use crate::user::{ConsoleUser, Session, UserCommand, NO_SUCH_USER, USER_TAKEN};
    const T: i64 = 1_764_300_000_000;
    let dir = tempfile::tempdir().unwrap();
    let op = |id: u128, command: UserCommand| Op {
        id,
        time_ms: T + id as i64,
        node: 1,
        command: Command::User(Box::new(command)),
    };
    let alice = ConsoleUser {
        name: "alice".into(),
        role: Role::Auditor,
        password: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_ms: T,
        created_by: "admin".into(),
        password_set_ms: T,
        password_version: 0,
        failures: 0,
        locked_until_ms: 0,
    };
    let session = Session {
        digest: [7; 32],
        user: "alice".into(),
        created_ms: T + 2,
        expires_ms: T + 3_600_000,
        password_version: 0,
    };
    let sign_in = |id: u128, name: &str| {
        op(
            id,
            UserCommand::SignIn {
                session: Session {
                    user: name.into(),
                    ..session.clone()
                },
                client_ip: Some("192.0.2.9".parse().unwrap()),
            },
        )
    };
    let wrong_password = op(
        3,
        UserCommand::SignInFailed {
            name: "alice".into(),
            client_ip: None,
        },
    );
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops = [
            op(
                1,
                UserCommand::Create {
                    user: alice.clone(),
                    client_ip: None,
                },
            ),
            sign_in(2, "alice"),
            wrong_password.clone(),
            sign_in(4, "bob"),
        ];
        let results = store.apply(&[(1, &ops[..])], b"1").unwrap();
        let refused: Vec<Option<&str>> = results[0].iter().map(|r| r.refused.as_deref()).collect();
        assert_eq!(refused, [None, None, None, Some(NO_SUCH_USER)]);
        // Retried: the refused sign-in is refused again, the failure recorded once.
        let retried = [sign_in(4, "bob"), wrong_password];
        let results = store.apply(&[(2, &retried[..])], b"2").unwrap();
        assert!(results[0].iter().all(|r| r.duplicate));
        assert_eq!(results[0][0].refused.as_deref(), Some(NO_SUCH_USER));
        assert_eq!(results[0][1].refused, None);
    }
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let stored = store.console_user("alice").unwrap().unwrap();
    assert_eq!(
        stored,
        ConsoleUser {
            failures: 1,
            ..alice.clone()
        }
    );
    let names: Vec<String> = store
        .console_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice"]);
    assert!(store.tokens().unwrap().is_empty(), "a user is not a token");
    assert_eq!(store.session(&[7; 32]).unwrap(), Some(session));
    assert!(store.session(&[8; 32]).unwrap().is_none());
    let (events, _) = store.events(&EventFilter::default(), 0, 100).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event.kind.type_name()).collect();
    assert_eq!(
        types,
        [
            "user.created",
            "console.signin",
            "console.signin_failed",
            "console.signin_failed"
        ]
    );
    let signed_in = events[1].to_json();
    assert_eq!(signed_in["action"], "console.signin");
    assert_eq!(signed_in["user"]["name"], "alice");
    assert_eq!(signed_in["user"]["target"]["roles"][0], "auditor");
    assert_eq!(signed_in["source"]["ip"], "192.0.2.9");
    assert_eq!(signed_in["event"]["outcome"], "success");
    assert!(
        !signed_in.to_string().contains("0707070707"),
        "no digest: {signed_in}"
    );
    let refused = events[3].to_json();
    assert_eq!(refused["user"]["target"]["name"], "bob");
    assert_eq!(refused["event"]["outcome"], "failure");
    assert_eq!(refused["event"]["reason"], NO_SUCH_USER);
    let filter = EventFilter {
        user: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(store.events(&filter, 0, 100).unwrap().0.len(), 2);

    let remove = op(
        5,
        UserCommand::Remove {
            name: "alice".into(),
            user: "admin".into(),
            client_ip: None,
        },
    );
    let token = Op {
        id: 6,
        time_ms: T + 6,
        node: 1,
        command: Command::Token(Box::new(TokenCommand::CreateUnused {
            token: ApiToken {
                name: "alice".into(),
                role: Role::Siem,
                digest: [9; 32],
                created_ms: T + 6,
                created_by: "admin".into(),
            },
            client_ip: None,
        })),
    };
    let results = store.apply(&[(3, &[remove, token][..])], b"3").unwrap();
    assert_eq!(results[0][0].refused, None);
    assert_eq!(results[0][1].refused, Some(format!("{USER_TAKEN}: alice")));
    assert!(store.console_user("alice").unwrap().is_none());
    assert!(store.user_name_retired("alice").unwrap());
    assert!(store.console_users().unwrap().is_empty());
    assert!(store.token_by_digest(&[9; 32]).unwrap().is_none());
    let filter = EventFilter {
        type_name: Some("user.removed".into()),
        ..Default::default()
    };
    assert_eq!(store.events(&filter, 0, 10).unwrap().0.len(), 1);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn leases_and_reports_drive_the_queue_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let received = samples::received();
    let id = received.message_id;
    let op = |n: u128, node: u64, time_ms: i64, command: Command| Op {
        id: 1000 + n,
        time_ms,
        node,
        command,
    };
    let lease = |lease_ms| {
        Command::Delivery(Box::new(DeliveryCommand::Claim {
            message_id: id,
            lease_ms,
            replaces: None,
        }))
    };
    let accept = Op {
        id: id.0,
        time_ms: 100,
        node: 1,
        command: Command::AcceptMessage(Box::new(AcceptedMessage {
            verdict: samples::verdict(received.message_id),
            received,
            body: b"body".to_vec(),
        })),
    };
    // Accepted and leased twice in one batch: the second lease sees the first.
    let first = [accept, op(1, 1, 110, lease(390)), op(2, 2, 120, lease(480))];
    let results = store.apply(&[(1, &first[..])], b"1").unwrap();
    assert_eq!(results[0][1].refused, None);
    assert!(results[0][2].refused.is_some());
    // Node 2 sees the message under node 1's lease (to watch it), not as free work;
    // node 1 sees its own.
    let held_by = |node, now, takeover| -> Vec<Option<u64>> {
        store
            .due_deliveries(node, now, takeover, 10, &HashSet::new())
            .unwrap()
            .iter()
            .map(|e| e.lease.map(|l| l.node))
            .collect()
    };
    assert_eq!(held_by(2, 130, 0), [Some(1)]);
    assert_eq!(held_by(1, 130, 0), [Some(1)]);
    // Node 2 does not see it before the takeover delay has passed, then sees it
    // under node 1's lease however late it is by the clocks: node 2 must watch it.
    assert_eq!(held_by(2, 500, 1000), []);
    assert_eq!(held_by(2, 100_000, 1000), [Some(1)]);
    // A retried refused lease is still refused.
    let again = store
        .apply(&[(2, &[op(2, 2, 120, lease(480))][..])], b"2")
        .unwrap();
    assert!(again[0][0].duplicate && again[0][0].refused.is_some());
    let report = Command::Delivery(Box::new(DeliveryCommand::Report {
        report: samples::delivered(id),
        bounce: None,
    }));
    let done = store
        .apply(&[(3, &[op(3, 1, 200, report)][..])], b"3")
        .unwrap();
    assert_eq!(done[0][0].refused, None);
    assert!(store.queue_entry(id).unwrap().is_none());
    assert!(store.message_body(id).unwrap().is_none());
    let filter = EventFilter {
        type_name: None,
        message_id: Some(id),
        ..Default::default()
    };
    let (events, _) = store.events(&filter, 0, 100).unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event.kind.type_name()).collect();
    assert_eq!(
        types,
        [
            "message.received",
            "scan.verdict",
            "delivery.leased",
            "delivery.leased",
            "delivery.attempted",
            "delivery.succeeded"
        ]
    );
    assert_eq!(done[0][0].seq, events[5].event.seq);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn a_message_accepted_with_its_lease_is_the_accepting_nodes_until_another_names_that_lease() {
    use crate::message::Lease;
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let received = samples::received();
    let id = received.message_id;
    let op = |n: u128, node: u64, time_ms: i64, command: Command| Op {
        id: n,
        time_ms,
        node,
        command,
    };
    let claim = |replaces| {
        Command::Delivery(Box::new(DeliveryCommand::Claim {
            message_id: id,
            lease_ms: 400,
            replaces,
        }))
    };
    let accept = op(
        id.0,
        1,
        100,
        Command::AcceptLeased {
            message: Box::new(AcceptedMessage {
                verdict: samples::verdict(received.message_id),
                received,
                body: b"body".to_vec(),
            }),
            lease_ms: 300,
        },
    );
    let results = store
        .apply(&[(1, &[accept.clone()][..]), (2, &[accept][..])], b"1")
        .unwrap();
    // message.received, scan.verdict, delivery.leased: the result names the lease.
    assert_eq!(results[0][0].seq, 3);
    assert!(results[1][0].duplicate && results[1][0].seq == 3);
    let lease = Lease {
        node: 1,
        until_ms: 400,
    };
    assert_eq!(store.queue_entry(id).unwrap().unwrap().lease, Some(lease));
    let held_by = |node, now, takeover| -> Vec<Option<Lease>> {
        store
            .due_deliveries(node, now, takeover, 10, &HashSet::new())
            .unwrap()
            .iter()
            .map(|e| e.lease)
            .collect()
    };
    assert_eq!(held_by(1, 110, 0), [Some(lease)], "its own work");
    assert_eq!(held_by(2, 110, 0), [Some(lease)], "watched by the others");
    // Another node may not claim it unless it names the lease; its holder renews.
    let claims = [
        op(10, 2, 120, claim(None)),
        op(11, 1, 130, claim(None)),
        op(12, 2, 140, claim(Some(lease))),
    ];
    let results = store.apply(&[(3, &claims[..])], b"2").unwrap();
    assert!(results[0][0].refused.is_some());
    assert_eq!(results[0][1].refused, None);
    assert!(
        results[0][2].refused.is_some(),
        "the lease it names was renewed"
    );
    let renewed = store.queue_entry(id).unwrap().unwrap().lease.unwrap();
    assert_eq!(renewed.node, 1);
    let taken = store
        .apply(&[(4, &[op(13, 2, 150, claim(Some(renewed)))][..])], b"3")
        .unwrap();
    assert_eq!(taken[0][0].refused, None);
    assert_eq!(
        store.queue_entry(id).unwrap().unwrap().lease.unwrap().node,
        2
    );
    // The acceptance's lease, the refused claim, the renewal, the refused and the
    // granted takeover.
    let leases = EventFilter {
        type_name: Some("delivery.leased".into()),
        message_id: Some(id),
        ..Default::default()
    };
    assert_eq!(store.events(&leases, 0, 100).unwrap().0.len(), 5);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn a_failing_report_queues_its_bounce_with_the_null_sender_once() {
    use crate::message::{DeliveryReport, RecipientOutcome, RecipientResult};
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let received = samples::received();
    let (id, sender) = (received.message_id, received.envelope.mail_from.clone());
    let rcpt = received.envelope.rcpt_to[0].clone();
    let accept = Op {
        id: id.0,
        time_ms: 100,
        node: 1,
        command: Command::AcceptMessage(Box::new(AcceptedMessage {
            verdict: samples::verdict(received.message_id),
            received,
            body: b"body".to_vec(),
        })),
    };
    let dsn_id = MessageId(4242);
    let failing = |op_id: u128, bounce_to: &str| Op {
        id: op_id,
        time_ms: 200,
        node: 1,
        command: Command::Delivery(Box::new(DeliveryCommand::Report {
            report: DeliveryReport {
                message_id: id,
                next_hop: "127.0.0.1:2600".into(),
                tls: None,
                results: vec![RecipientResult {
                    address: rcpt.clone(),
                    reply: "550 5.1.1 no such user".into(),
                    outcome: RecipientOutcome::Failed,
                }],
                duration_ms: 4,
                release_lease: true,
            },
            bounce: Some(Box::new(Bounce {
                message_id: dsn_id,
                recipient: bounce_to.into(),
                failed: vec![rcpt.clone()],
                body: b"dsn".to_vec(),
            })),
        })),
    };
    // A bounce addressed to anyone but the envelope sender is ignored.
    store
        .apply(&[(1, &[accept, failing(7, "someone@else.test")][..])], b"1")
        .unwrap();
    assert!(store.queue_entry(dsn_id).unwrap().is_none());
    let again = failing(8, &sender);
    let results = store.apply(&[(2, &[again.clone()][..])], b"2").unwrap();
    assert_eq!(results[0][0].refused, None);
    // The recipient had already failed: nothing failed now, nothing bounced.
    assert!(store.queue_entry(dsn_id).unwrap().is_none());

    let other = samples::received();
    let other_id = MessageId(other.message_id.0 + 1);
    let mut received = other;
    received.message_id = other_id;
    let accept = Op {
        id: other_id.0,
        time_ms: 300,
        node: 2,
        command: Command::AcceptMessage(Box::new(AcceptedMessage {
            verdict: samples::verdict(received.message_id),
            received,
            body: b"body".to_vec(),
        })),
    };
    let mut report = failing(9, &sender);
    if let Command::Delivery(command) = &mut report.command {
        if let DeliveryCommand::Report { report, .. } = command.as_mut() {
            report.message_id = other_id;
        }
    }
    store
        .apply(&[(3, &[accept, report.clone()][..])], b"3")
        .unwrap();
    let dsn = store.queue_entry(dsn_id).unwrap().expect("bounce queued");
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.recipients[0].address, sender);
    assert_eq!(store.message_body(dsn_id).unwrap().unwrap(), b"dsn");
    // The same report again (a retried proposal) queues nothing more.
    let retried = store.apply(&[(4, &[report][..])], b"4").unwrap();
    assert!(retried[0][0].duplicate);
    let filter = EventFilter {
        type_name: Some("delivery.bounced".into()),
        message_id: None,
        ..Default::default()
    };
    let (bounced, _) = store.events(&filter, 0, 100).unwrap();
    assert_eq!(bounced.len(), 1);
    let json = bounced[0].to_json();
    assert_eq!(json["dsn"]["message_id"], dsn_id.to_string());
    assert_eq!(json["email"]["sender"]["address"], sender);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn queue_admin_actions_apply_are_audited_and_listings_filter_and_page() {
    use crate::message::{DeliveryReport, QueueAction, RecipientOutcome, RecipientResult};
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    // Three messages, in arrival order: a (alice → bob), b (carol → bob, dave),
    // c (null sender → erin).
    let accept = |n: u128, from: &str, to: &[&str]| {
        let mut received = samples::received();
        received.message_id = MessageId::new(1_764_300_000_000 + n as i64, n);
        received.envelope.mail_from = from.into();
        received.envelope.rcpt_to = to.iter().map(|t| t.to_string()).collect();
        Op {
            id: received.message_id.0,
            time_ms: 100,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: samples::verdict(received.message_id),
                received,
                body: b"body".to_vec(),
            })),
        }
    };
    let ops = [
        accept(1, "alice@sender.test", &["bob@example.test"]),
        accept(
            2,
            "carol@other.test",
            &["Bob@Example.test", "dave@example.test"],
        ),
        accept(3, "", &["erin@example.test"]),
    ];
    let ids: Vec<MessageId> = (1..=3)
        .map(|n| MessageId::new(1_764_300_000_000 + n, n as u128))
        .collect();
    store.apply(&[(1, &ops[..])], b"1").unwrap();
    let op = |n: u128, time_ms: i64, command: DeliveryCommand| Op {
        id: 5000 + n,
        time_ms,
        node: 1,
        command: Command::Delivery(Box::new(command)),
    };
    let admin = |id: MessageId, action| DeliveryCommand::Admin {
        message_id: id,
        action,
        user: "admin".into(),
        client_ip: Some("192.0.2.1".parse().unwrap()),
    };
    // b is deferred to 10_000 for both recipients.
    let deferral = DeliveryCommand::Report {
        report: DeliveryReport {
            message_id: ids[1],
            next_hop: "127.0.0.1:2600".into(),
            tls: None,
            results: ["Bob@Example.test", "dave@example.test"]
                .iter()
                .map(|a| RecipientResult {
                    address: a.to_string(),
                    reply: "451 4.3.0 try later".into(),
                    outcome: RecipientOutcome::Deferred {
                        next_attempt_ms: 10_000,
                    },
                })
                .collect(),
            duration_ms: 1,
            release_lease: true,
        },
        bounce: None,
    };
    // In one batch: b deferred, a held, then a's hold seen by a lease after it.
    let batch = [
        op(1, 200, deferral),
        op(2, 300, admin(ids[0], QueueAction::Hold)),
        op(
            3,
            310,
            DeliveryCommand::Claim {
                message_id: ids[0],
                lease_ms: 700,
                replaces: None,
            },
        ),
    ];
    let results = store.apply(&[(2, &batch[..])], b"2").unwrap();
    assert_eq!(results[0][1].refused, None);
    assert!(
        results[0][2].refused.is_some(),
        "no lease on a held message"
    );
    assert!(store.queue_record(ids[0]).unwrap().unwrap().held);
    let due: Vec<_> = store
        .due_deliveries(1, 400, 0, 10, &HashSet::new())
        .unwrap()
        .iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(due, [ids[2]], "a held, b deferred: only c is due");

    let list = |filter: QueueFilter, after, limit| {
        let (records, next) = store.queue_list(&filter, after, limit, 400).unwrap();
        let ids: Vec<MessageId> = records.iter().map(|r| r.entry.message_id).collect();
        (ids, next)
    };
    assert_eq!(list(QueueFilter::default(), None, 10), (ids.clone(), None));
    // Pages of two, then the rest.
    assert_eq!(
        list(QueueFilter::default(), None, 2),
        (ids[..2].to_vec(), Some(ids[1]))
    );
    assert_eq!(
        list(QueueFilter::default(), Some(ids[1]), 2),
        (ids[2..].to_vec(), None)
    );
    assert_eq!(
        list(QueueFilter::default(), Some(MessageId(u128::MAX)), 2),
        (vec![], None)
    );
    let by = |sender: Option<&str>, recipient: Option<&str>, status| QueueFilter {
        sender: sender.map(String::from),
        recipient: recipient.map(String::from),
        status,
    };
    assert_eq!(
        list(by(Some("ALICE@sender.test"), None, None), None, 10).0,
        [ids[0]]
    );
    assert_eq!(list(by(Some("<>"), None, None), None, 10).0, [ids[2]]);
    assert_eq!(
        list(by(Some("@other.test"), None, None), None, 10).0,
        [ids[1]]
    );
    assert_eq!(
        list(by(None, Some("bob@example.test"), None), None, 10).0,
        ids[..2]
    );
    assert_eq!(list(by(None, Some("@example.test"), None), None, 10).0, ids);
    assert!(list(by(None, Some("@ample.test"), None), None, 10)
        .0
        .is_empty());
    for (status, want) in [
        (QueueStatus::Held, &ids[..1]),
        (QueueStatus::Deferred, &ids[1..2]),
        (QueueStatus::Pending, &ids[2..]),
        (QueueStatus::Leased, &[][..]),
    ] {
        assert_eq!(
            list(by(None, None, Some(status)), None, 10).0,
            want,
            "{status:?}"
        );
    }
    assert_eq!(
        list(
            by(None, Some("dave@example.test"), Some(QueueStatus::Held)),
            None,
            10
        )
        .0,
        Vec::<MessageId>::new()
    );

    // Retry b now, delete c, and try to hold c again: refused, still recorded.
    let retry = op(4, 500, admin(ids[1], QueueAction::Retry));
    let delete = op(5, 510, admin(ids[2], QueueAction::Delete));
    let again = op(6, 520, admin(ids[2], QueueAction::Hold));
    let results = store
        .apply(&[(3, &[retry, delete, again.clone()][..])], b"3")
        .unwrap();
    assert_eq!(results[0][0].refused, None);
    assert_eq!(results[0][1].refused, None);
    assert_eq!(results[0][2].refused.as_deref(), Some(crate::NOT_QUEUED));
    assert!(store.queue_record(ids[2]).unwrap().is_none());
    assert!(store.message_body(ids[2]).unwrap().is_none());
    let due: Vec<_> = store
        .due_deliveries(1, 500, 0, 10, &HashSet::new())
        .unwrap()
        .iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(due, [ids[1]]);
    // A retried proposal of the refused action is refused the same way.
    let retried = store.apply(&[(4, &[again][..])], b"4").unwrap();
    assert!(retried[0][0].duplicate);
    assert_eq!(retried[0][0].refused.as_deref(), Some(crate::NOT_QUEUED));

    let filter = EventFilter {
        type_name: Some("api.action".into()),
        message_id: None,
        ..Default::default()
    };
    let (events, _) = store.events(&filter, 0, 100).unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let json = e.to_json();
            (
                json["action"].as_str().unwrap().to_string(),
                json["message_id"].as_str().unwrap().to_string(),
                json["event"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |action: &str, id: MessageId, outcome: &str| {
        (action.to_string(), id.to_string(), outcome.to_string())
    };
    assert_eq!(
        seen,
        [
            row("queue.hold", ids[0], "success"),
            row("queue.retry", ids[1], "success"),
            row("queue.delete", ids[2], "success"),
            row("queue.hold", ids[2], "failure"),
        ]
    );
    let json = events[2].to_json();
    assert_eq!(json["user"]["name"], "admin");
    assert_eq!(json["source"]["ip"], "192.0.2.1");
    assert_eq!(json["email"]["to"]["address"][0], "erin@example.test");
    assert_eq!(events[3].to_json()["event"]["reason"], crate::NOT_QUEUED);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn chain_head_survives_reopen_and_checkpoint_install() {
    let dir = tempfile::tempdir().unwrap();
    let ops: Vec<Op> = (1..=10).map(|i| note(i, "x")).collect();
    {
        let state = StateDir::open(&dir.path().join("a")).unwrap();
        state.current().apply(&[(1, &ops[..])], b"a").unwrap();
        state.current().checkpoint(&dir.path().join("cp")).unwrap();
    }
    let state = StateDir::open(&dir.path().join("a")).unwrap();
    assert_eq!(state.current().chain_head().0, 10);

    let other = StateDir::open(&dir.path().join("b")).unwrap();
    other.current().apply(&[(1, &ops[..2])], b"b").unwrap();
    let installed = other.install(&dir.path().join("cp")).unwrap();
    assert_eq!(installed.chain_head(), state.current().chain_head());
    assert_eq!(installed.applied().unwrap().unwrap(), b"a");
    drop(installed);
    drop(other);
    let reopened = StateDir::open(&dir.path().join("b")).unwrap();
    assert_eq!(reopened.current().chain_head().0, 10);
    assert!(reopened.current().verify().unwrap().ok);
}

fn lesson(id: u128, digest: u8, class: Option<BayesClass>, tokens: &[u64]) -> Op {
    Op {
        id,
        time_ms: 1000 + id as i64,
        node: 1,
        command: Command::TrainBayes(Box::new(BayesLesson {
            digest: [digest; 32],
            class,
            tokens: tokens.to_vec(),
            message_id: None,
            user: "admin".into(),
            client_ip: None,
        })),
    }
}

#[test]
fn bayes_lessons_count_each_message_once_move_forget_and_survive_reopen_and_install() {
    let dir = tempfile::tempdir().unwrap();
    let (spam, ham) = (Some(BayesClass::Spam), Some(BayesClass::Ham));
    let state = StateDir::open(&dir.path().join("a")).unwrap();
    let store = state.current();
    // In one batch: message 1 as spam, again as spam (no change), message 2 as
    // ham, then message 1 moved to ham; the batch sees its own earlier lessons.
    let first = [
        lesson(1, 1, spam, &[10, 11]),
        lesson(2, 1, spam, &[10, 11]),
        lesson(3, 2, ham, &[11, 12]),
        lesson(4, 1, ham, &[10, 11]),
    ];
    store.apply(&[(1, &first[..])], b"1").unwrap();
    assert_eq!(store.bayes_totals(), (0, 2));
    assert_eq!(
        store.bayes_counts(&[10, 11, 12, 13]),
        [(0, 1), (0, 2), (0, 1), (0, 0)]
    );
    // In a later batch: message 3 as spam, message 2 forgotten, an unknown
    // message forgotten (nothing to take back).
    let second = [
        lesson(5, 3, spam, &[12, 13]),
        lesson(6, 2, None, &[11, 12]),
        lesson(7, 9, None, &[10]),
    ];
    store.apply(&[(2, &second[..])], b"2").unwrap();
    let want_counts = [(0, 1), (0, 1), (1, 0), (1, 0)];
    assert_eq!(store.bayes_totals(), (1, 1));
    assert_eq!(store.bayes_counts(&[10, 11, 12, 13]), want_counts);
    assert_eq!(store.bayes_distinct_tokens(), 4);

    let (events, _) = store
        .events(
            &EventFilter {
                type_name: Some("bayes.trained".into()),
                message_id: None,
                ..Default::default()
            },
            0,
            100,
        )
        .unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let json = e.to_json();
            let b = &json["bayes"];
            (
                b["class"].as_str().map(str::to_string),
                b["previous"].as_str().map(str::to_string),
                b["changed"].as_bool().unwrap(),
                b["spam_messages"].as_u64().unwrap(),
                b["ham_messages"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |class: Option<&str>, previous: Option<&str>, changed, s, h| {
        (
            class.map(str::to_string),
            previous.map(str::to_string),
            changed,
            s,
            h,
        )
    };
    assert_eq!(
        seen,
        [
            row(Some("spam"), None, true, 1, 0),
            row(Some("spam"), Some("spam"), false, 1, 0),
            row(Some("ham"), None, true, 1, 1),
            row(Some("ham"), Some("spam"), true, 0, 2),
            row(Some("spam"), None, true, 1, 2),
            row(None, Some("ham"), true, 1, 1),
            row(None, None, false, 1, 1),
        ]
    );
    assert_eq!(events[0].to_json()["user"]["name"], "admin");

    store.checkpoint(&dir.path().join("cp")).unwrap();
    drop(store);
    drop(state);
    let reopened = StateDir::open(&dir.path().join("a")).unwrap().current();
    assert_eq!(reopened.bayes_totals(), (1, 1));
    assert_eq!(reopened.bayes_counts(&[10, 11, 12, 13]), want_counts);
    // The forgotten message learned again counts again.
    reopened
        .apply(&[(3, &[lesson(8, 2, spam, &[11, 12])][..])], b"3")
        .unwrap();
    assert_eq!(reopened.bayes_totals(), (2, 1));
    assert_eq!(reopened.bayes_counts(&[11, 12]), [(1, 1), (2, 0)]);

    let other = StateDir::open(&dir.path().join("b")).unwrap();
    let installed = other.install(&dir.path().join("cp")).unwrap();
    assert_eq!(installed.bayes_totals(), (1, 1));
    assert_eq!(installed.bayes_counts(&[10, 11, 12, 13]), want_counts);
    assert!(installed.verify().unwrap().ok);
}

#[test]
fn bayes_tokens_carry_the_day_last_learned_once_the_level_allows_and_expire_oldest_first() {
    use bulwark_model::bayes::BayesExpiry;
    use bulwark_model::feature::BAYES_EXPIRY;
    let dir = tempfile::tempdir().unwrap();
    let (spam, ham) = (Some(BayesClass::Spam), Some(BayesClass::Ham));
    let on_day = |mut op: Op, day: i64| {
        op.time_ms = day * 86_400_000 + 3_600_000;
        op
    };
    let expire = |id: u128, keep: u64| Op {
        id,
        time_ms: 20_002 * 86_400_000,
        node: 1,
        command: Command::ExpireBayes(BayesExpiry {
            keep,
            limit: 100,
            max: 5,
        }),
    };
    {
        let state = StateDir::open(&dir.path().join("a")).unwrap();
        let store = state.current();
        // Before the level: no days (token 2 in two messages, token 1 in one).
        let before = [
            on_day(lesson(1, 1, spam, &[1, 2]), 19_000),
            on_day(lesson(2, 2, ham, &[2]), 19_000),
        ];
        store.apply(&[(1, &before[..])], b"1").unwrap();
        // The raise, then in the same batch a lesson that already stamps its day.
        let raise = Op {
            id: 3,
            time_ms: 20_000 * 86_400_000,
            node: 1,
            command: Command::RaiseFeatureLevel {
                level: BAYES_EXPIRY,
            },
        };
        let after = [raise, on_day(lesson(4, 3, ham, &[3, 4]), 20_000)];
        store.apply(&[(2, &after[..])], b"2").unwrap();
        let later = [on_day(lesson(5, 4, spam, &[5, 6, 1]), 20_001)];
        store.apply(&[(3, &later[..])], b"3").unwrap();
        assert_eq!(store.bayes_distinct_tokens(), 6);
        store.checkpoint(&dir.path().join("cp")).unwrap();
    }
    // Reopened and installed alike: the days come back from the database. Token 2
    // (no day, two messages) goes first, then 3 and 4 (day 20,000); had the days been
    // lost, 3, 4 and 5 (one message each) would have gone.
    let reopened = StateDir::open(&dir.path().join("a")).unwrap().current();
    let other = StateDir::open(&dir.path().join("b")).unwrap();
    let installed = other.install(&dir.path().join("cp")).unwrap();
    for store in [&reopened, &installed] {
        store.apply(&[(4, &[expire(6, 3)][..])], b"4").unwrap();
        assert_eq!(store.bayes_distinct_tokens(), 3);
        assert_eq!(
            store.bayes_counts(&[1, 2, 3, 4, 5, 6]),
            [(2, 0), (0, 0), (0, 0), (0, 0), (1, 0), (1, 0)]
        );
        assert_eq!(
            store.bayes_totals(),
            (2, 2),
            "the messages learned stay counted"
        );
        // Already within the size: nothing removed, nothing recorded.
        store.apply(&[(5, &[expire(7, 3)][..])], b"5").unwrap();
        let (events, _) = store
            .events(
                &EventFilter {
                    type_name: Some("bayes.expired".into()),
                    ..Default::default()
                },
                0,
                100,
            )
            .unwrap();
        assert_eq!(events.len(), 1);
        let json = events[0].to_json();
        assert_eq!(json["bayes"]["tokens_before"], 6);
        assert_eq!(json["bayes"]["tokens_removed"], 3);
        assert_eq!(json["bayes"]["max_tokens"], 5);
        assert_eq!(json["bayes"]["removed_last_learned_by"], "2024-10-04");
        assert!(store.verify().unwrap().ok);
    }
    drop(reopened);
    let again = StateDir::open(&dir.path().join("a")).unwrap().current();
    assert_eq!(again.bayes_distinct_tokens(), 3, "the removal was written");
    assert_eq!(again.bayes_counts(&[1, 5, 6]), [(2, 0), (1, 0), (1, 0)]);
}

#[test]
fn bayes_counts_and_days_do_not_depend_on_how_entries_are_batched() {
    use bulwark_model::bayes::BayesExpiry;
    use bulwark_model::feature::BAYES_EXPIRY;
    let (spam, ham) = (Some(BayesClass::Spam), Some(BayesClass::Ham));
    let day = |mut op: Op, day: i64| {
        op.time_ms = day * 86_400_000;
        op
    };
    let expire = |id: u128, keep: u64, limit: u64| Op {
        id,
        time_ms: 20_010 * 86_400_000,
        node: 1,
        command: Command::ExpireBayes(BayesExpiry {
            keep,
            limit,
            max: 8,
        }),
    };
    let raise = Op {
        id: 3,
        time_ms: 0,
        node: 1,
        command: Command::RaiseFeatureLevel {
            level: BAYES_EXPIRY,
        },
    };
    // Lessons before and after the raise, an expiry in the middle of lessons, a
    // forgotten message whose tokens had days, a token learned again after it was
    // expired, and an expiry held to a limit.
    let ops = [
        day(lesson(1, 1, spam, &[1, 2, 3]), 19_990),
        day(lesson(2, 2, ham, &[3, 4]), 19_991),
        raise,
        day(lesson(4, 3, ham, &[4, 5, 6]), 20_000),
        day(lesson(5, 4, spam, &[6, 7, 8, 9]), 20_001),
        expire(6, 6, 100),
        day(lesson(7, 5, spam, &[1, 10, 11]), 20_002),
        day(lesson(8, 3, None, &[4, 5, 6]), 20_003),
        day(lesson(9, 6, ham, &[12, 13, 14]), 20_004),
        expire(10, 2, 3),
    ];
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u64> = (1..=14).collect();
    let seen = |store: &StateStore| {
        (
            store.bayes_counts(&tokens),
            store.bayes_totals(),
            store.bayes_distinct_tokens(),
        )
    };
    let (one, each) = (dir.path().join("one"), dir.path().join("each"));
    {
        let together = StateDir::open(&one).unwrap().current();
        together.apply(&[(1, &ops[..])], b"1").unwrap();
        let apart = StateDir::open(&each).unwrap().current();
        for (i, op) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            apart
                .apply(
                    &[(index, std::slice::from_ref(op))],
                    index.to_string().as_bytes(),
                )
                .unwrap();
        }
        assert_eq!(seen(&together), seen(&apart));
        assert_eq!(
            seen(&together).2,
            8,
            "11 tokens, of which the limit removes 3"
        );
    }
    // Reopened, the days read back decide a further expiry alike.
    let together = StateDir::open(&one).unwrap().current();
    let apart = StateDir::open(&each).unwrap().current();
    assert_eq!(seen(&together), seen(&apart));
    together
        .apply(&[(2, &[expire(11, 1, 100)][..])], b"2")
        .unwrap();
    apart
        .apply(&[(11, &[expire(11, 1, 100)][..])], b"11")
        .unwrap();
    assert_eq!(seen(&together), seen(&apart));
    assert_eq!(seen(&together).2, 1);
}

#[test]
fn events_of_a_message_come_from_the_index_in_order_and_old_stores_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let accept = |n: u128, seed: u128| {
        let mut received = samples::received();
        received.message_id = MessageId(seed);
        Op {
            id: n,
            time_ms: 1_764_300_000_000 + n as i64,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: samples::verdict(received.message_id),
                received,
                body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            })),
        }
    };
    let (a, b) = (MessageId(1 << 80), MessageId(2 << 80));
    let ops = [
        accept(1, a.0),
        note(2, "between"),
        accept(3, b.0),
        Op {
            id: 4,
            time_ms: 1_764_300_000_010,
            node: 1,
            command: Command::Delivery(Box::new(DeliveryCommand::Lease {
                message_id: a,
                until_ms: 1_764_300_060_000,
            })),
        },
    ];
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    store.apply(&[(1, &ops[..])], b"1").unwrap();
    let of = |store: &StateStore, id, after, limit| {
        let filter = EventFilter {
            type_name: None,
            message_id: Some(id),
            ..Default::default()
        };
        let (events, next) = store.events(&filter, after, limit).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
        (seqs, next)
    };
    // a: received 1, verdict 2, lease 6; b: received 4, verdict 5; the note is 3.
    assert_eq!(of(&store, a, 0, 10), (vec![1, 2, 6], None));
    assert_eq!(of(&store, b, 0, 10), (vec![4, 5], None));
    assert_eq!(of(&store, a, 0, 2), (vec![1, 2], Some(2)));
    assert_eq!(of(&store, a, 2, 2), (vec![6], None));
    assert_eq!(of(&store, MessageId(9), 0, 10), (vec![], None));

    // A store written before the index: the index is built at the next open.
    store
        .db
        .delete_range_cf(store.cf(cf::INDEX), &[0u8][..], &[0xffu8; 26][..])
        .unwrap();
    store.db.delete_cf(store.cf(cf::META), META_INDEX).unwrap();
    assert_eq!(of(&store, a, 0, 10), (vec![], None));
    drop(store);
    drop(state);
    let store = StateDir::open(dir.path()).unwrap().current();
    assert_eq!(of(&store, a, 0, 10), (vec![1, 2, 6], None));
    assert_eq!(of(&store, b, 0, 10), (vec![4, 5], None));
}

/// Every page of `filter` from `query` (the index, or a scan), as seqs.
fn all_pages(
    query: impl Fn(&EventFilter, u64, usize) -> (Vec<StoredEvent>, Option<u64>),
    filter: &EventFilter,
    limit: usize,
) -> Vec<u64> {
    let (mut seqs, mut after) = (Vec::new(), 0);
    for _ in 0..10_000 {
        let (events, next) = query(filter, after, limit);
        assert!(events.len() <= limit);
        seqs.extend(events.iter().map(|e| e.event.seq));
        match next {
            Some(next) => {
                assert!(next > after, "the cursor moves on");
                after = next;
            }
            None => return seqs,
        }
    }
    panic!("pagination did not end");
}

#[test]
fn indexed_queries_answer_exactly_what_a_scan_of_the_log_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateDir::open(dir.path()).unwrap().current();
    let senders = [
        "a@One.test",
        "B@one.test",
        "c@two.test",
        "",
        "d@x@three.test",
    ];
    let recipients = ["r1@in.test", "R2@in.test", "r3@other.test", "r4@IN.test"];
    let actions = [Action::Deliver, Action::Tag, Action::Quarantine];
    let base = 1_764_300_000_000i64;
    let mut ops = Vec::new();
    for n in 0..600u128 {
        let i = n as usize;
        let mut received = samples::received();
        received.message_id = MessageId::new(base, n + 1);
        received.envelope.mail_from = senders[i % senders.len()].into();
        received.envelope.rcpt_to = (0..1 + i % 3)
            .map(|k| recipients[(i + k) % recipients.len()].to_string())
            .collect();
        received.client.ip = format!("192.0.2.{}", i % 7).parse().unwrap();
        received.action = actions[i % actions.len()];
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = received.action;
        // Three nodes' clocks: one a few seconds behind the others.
        let skew = if i.is_multiple_of(5) {
            -4_000
        } else {
            (i % 3) as i64 * 10
        };
        ops.push(Op {
            id: n + 1,
            time_ms: base + i as i64 * 1_000 + skew,
            node: 1 + (i % 3) as u64,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                received,
                verdict,
                body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            })),
        });
    }
    for (k, chunk) in ops.chunks(37).enumerate() {
        store.apply(&[(k as u64 + 1, chunk)], b"x").unwrap();
    }
    let indexed = |f: &EventFilter, after, limit| store.events(f, after, limit).unwrap();
    let scanned = |f: &EventFilter, after, limit| {
        index::query(&store.db, store.cf(cf::EVENTS), None, f, after, limit).unwrap()
    };
    let at = |s: i64| Some(base + s * 1_000);
    let mut filters = vec![EventFilter::default()];
    for sender in [
        "a@one.test",
        "@ONE.test",
        "<>",
        "@x@three.test",
        "@three.test",
        "nobody@one.test",
    ] {
        filters.push(EventFilter {
            sender: Some(sender.into()),
            ..Default::default()
        });
    }
    for recipient in ["r2@in.test", "@in.test", "@other.test"] {
        filters.push(EventFilter {
            recipient: Some(recipient.into()),
            ..Default::default()
        });
    }
    for (since, until) in [
        (at(0), None),
        (at(100), at(128)),
        (None, at(48)),
        (at(599), None),
        (at(700), None),
        (at(-10), at(-5)),
    ] {
        filters.push(EventFilter {
            since_ms: since,
            until_ms: until,
            ..Default::default()
        });
        filters.push(EventFilter {
            sender: Some("@one.test".into()),
            action: Some("quarantine".into()),
            since_ms: since,
            until_ms: until,
            ..Default::default()
        });
    }
    filters.push(EventFilter {
        type_name: Some("scan.verdict".into()),
        action: Some("tag".into()),
        ..Default::default()
    });
    filters.push(EventFilter {
        recipient: Some("@in.test".into()),
        client_ip: Some("192.0.2.3".parse().unwrap()),
        type_name: Some("message.received".into()),
        ..Default::default()
    });
    filters.push(EventFilter {
        message_id: Some(MessageId::new(base, 42)),
        ..Default::default()
    });
    for filter in &filters {
        let want = all_pages(scanned, filter, 1_000_000);
        assert_eq!(all_pages(indexed, filter, 7), want, "{filter:?}");
        assert_eq!(all_pages(indexed, filter, 1000), want, "{filter:?}");
    }
    // The cases the filters were chosen for are not empty: 120 messages from the
    // null sender, 40 of them quarantined (an event that names the sender too).
    let count = |f: EventFilter| all_pages(scanned, &f, 1000).len();
    assert_eq!(
        count(EventFilter {
            sender: Some("<>".into()),
            ..Default::default()
        }),
        160
    );
    assert!(
        count(EventFilter {
            since_ms: at(100),
            until_ms: at(128),
            ..Default::default()
        }) > 0
    );

    // Reopened, the clock and the index come back; rebuilt, they are the same.
    let dir_path = store.dir().to_path_buf();
    let clock = *store.clock.lock().unwrap();
    assert_eq!(clock.map(|c| c.lag_ms), Some(3_020));
    drop(store);
    let reopened = StateStore::open(&dir_path).unwrap();
    assert_eq!(*reopened.clock.lock().unwrap(), clock);
    reopened
        .db
        .delete_cf(reopened.cf(cf::META), META_INDEX)
        .unwrap();
    drop(reopened);
    let rebuilt = StateStore::open(&dir_path).unwrap();
    assert_eq!(*rebuilt.clock.lock().unwrap(), clock);
    for filter in &filters {
        let scanned = |f: &EventFilter, after, limit| {
            index::query(&rebuilt.db, rebuilt.cf(cf::EVENTS), None, f, after, limit).unwrap()
        };
        let indexed = |f: &EventFilter, after, limit| rebuilt.events(f, after, limit).unwrap();
        assert_eq!(
            all_pages(indexed, filter, 5),
            all_pages(scanned, filter, 1000),
            "{filter:?}"
        );
    }
}

/// Whether some file under `dir` holds `needle`, read whole, byte for byte.
fn some_file_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            some_file_holds(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[test]
fn an_erasure_leaves_no_dropped_body_in_any_file_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    // Bodies below and above the size that goes to blob files, kept and deleted.
    let marker = |n: u128| format!("marker-{n}-{}", 0x5eed_u64.wrapping_mul(n as u64 + 7));
    let body = |n: u128, size: usize| {
        let mut body = format!("Subject: {n}\r\n\r\n{}\r\n", marker(n)).into_bytes();
        body.resize(size, b'.');
        body
    };
    let accept = |n: u128, size: usize| {
        let mut received = samples::received();
        received.message_id = MessageId::new(1_764_300_000_000, n);
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = Action::Quarantine;
        Op {
            id: n,
            time_ms: 1_764_300_000_000,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict,
                received,
                body: body(n, size),
            })),
        }
    };
    let sizes = [(1, 600), (2, 100_000), (3, 700), (4, 90_000)];
    for (index, (n, size)) in sizes.into_iter().enumerate() {
        store
            .apply(&[(index as u64 + 1, &[accept(n, size)][..])], b"a")
            .unwrap();
    }
    // A checkpoint flushes every body to SSTs and blob files, as a snapshot does.
    let elsewhere = tempfile::tempdir().unwrap();
    store.checkpoint(&elsewhere.path().join("c")).unwrap();
    drop(elsewhere);
    assert_eq!(store.erasure_due().unwrap(), None, "nothing dropped yet");
    let delete = |op: u128, n: u128| Op {
        id: 100 + op,
        time_ms: 1_764_300_010_000,
        node: 1,
        command: Command::Quarantine(Box::new(QuarantineCommand {
            message_id: MessageId::new(1_764_300_000_000, n),
            action: QuarantineAction::Delete,
            reason: "spam".into(),
            user: "admin".into(),
            client_ip: None,
        })),
    };
    store
        .apply(&[(5, &[delete(1, 1), delete(2, 2)][..])], b"d")
        .unwrap();
    assert_eq!(store.erasure_due().unwrap(), Some(5));
    for n in 1..=4 {
        assert!(
            some_file_holds(dir.path(), marker(n).as_bytes()),
            "body {n} is on disk before the erasure"
        );
    }

    store.erase_dropped_bodies().unwrap();
    store.mark_erased(5).unwrap();
    for n in [1, 2] {
        assert!(
            !some_file_holds(dir.path(), marker(n).as_bytes()),
            "deleted body {n} left in a file"
        );
    }
    for n in [3, 4] {
        assert!(some_file_holds(dir.path(), marker(n).as_bytes()));
        assert_eq!(
            store
                .message_body(MessageId::new(1_764_300_000_000, n))
                .unwrap()
                .unwrap(),
            body(n, sizes[n as usize - 1].1)
        );
    }
    assert_eq!(store.erasure_due().unwrap(), None);
}

#[test]
fn decisions_come_back_with_the_facts_the_policy_weighed_whatever_the_page_size() {
    use crate::message::{JudgedRejection, RejectedMessage, Rejection};
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    let accepted = |id: u128, action: Action| {
        let mut received = samples::received();
        received.message_id = MessageId::new(1_764_300_000_000, id);
        received.header_from = Some(format!("from{id}@sender.test"));
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = action;
        Op {
            id,
            time_ms: 1_764_300_000_000,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                received,
                body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
                verdict,
            })),
        }
    };
    let rejection = |id: u128| Rejection {
        client: samples::received().client,
        mail_from: Some(format!("bounce{id}@lists.test")),
        rcpt_to: vec!["bob@example.test".into()],
        reason: "policy".into(),
        reply: "554 5.7.1 Message rejected".into(),
    };
    let rejected_verdict = |id: u128| {
        let mut verdict = samples::verdict(MessageId::new(1_764_300_000_000, id));
        verdict.action = Action::Reject;
        verdict
    };
    let ops = [
        accepted(1, Action::Deliver),
        note(2, "between"),
        Op {
            id: 3,
            time_ms: 1_764_300_000_000,
            node: 1,
            command: Command::RejectJudged(Box::new(JudgedRejection {
                rejection: rejection(3),
                verdict: rejected_verdict(3),
                header_from: Some("news@partner.test".into()),
            })),
        },
        Op {
            id: 4,
            time_ms: 1_764_300_000_000,
            node: 1,
            command: Command::RejectMessage(Box::new(RejectedMessage {
                rejection: rejection(4),
                verdict: rejected_verdict(4),
            })),
        },
        accepted(5, Action::Quarantine),
        note(6, "after"),
    ];
    store.apply(&[(1, &ops[..])], b"applied").unwrap();
    let facts = |d: &crate::policy::Decided| {
        (
            d.verdict.message_id.to_string(),
            d.verdict.action,
            d.mail_from.clone(),
            d.header_from.clone(),
            d.header_from_known,
        )
    };
    let (all, next) = store.decisions(None, None, 0, 1000).unwrap();
    assert_eq!(next, None);
    let id = |n| MessageId::new(1_764_300_000_000, n).to_string();
    assert_eq!(
        all.iter().map(facts).collect::<Vec<_>>(),
        [
            (
                id(1),
                Action::Deliver,
                "alice@sender.test".into(),
                Some("from1@sender.test".into()),
                true
            ),
            (
                id(3),
                Action::Reject,
                "bounce3@lists.test".into(),
                Some("news@partner.test".into()),
                true
            ),
            (
                id(4),
                Action::Reject,
                "bounce4@lists.test".into(),
                None,
                false
            ),
            (
                id(5),
                Action::Quarantine,
                "alice@sender.test".into(),
                Some("from5@sender.test".into()),
                true
            ),
        ]
    );
    assert_eq!(all[1].rcpt_to, ["bob@example.test"]);
    for page in 2..=12 {
        let (mut paged, mut after) = (Vec::new(), 0);
        for _ in 0..20 {
            let (decided, next) = store.decisions(None, None, after, page).unwrap();
            paged.extend(decided);
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(paged, all, "pages of {page} events");
    }
    let (later, _) = store
        .decisions(Some(1_764_300_000_001), None, 0, 1000)
        .unwrap();
    assert!(later.is_empty());
}

#[test]
fn the_queue_is_found_by_due_time_and_indexed_anew_when_opened_without_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let accept = |n: u128, node: u64, time_ms: i64| {
        let mut received = samples::received();
        received.message_id = MessageId::new(time_ms, n);
        Op {
            id: n,
            time_ms,
            node,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: samples::verdict(received.message_id),
                received,
                body: b"body".to_vec(),
            })),
        }
    };
    let (a, b, c) = (accept(1, 1, 100), accept(2, 2, 50), accept(3, 1, 300));
    let ids: Vec<MessageId> = [&a, &b, &c]
        .iter()
        .map(|op| match &op.command {
            Command::AcceptMessage(m) => m.received.message_id,
            _ => unreachable!(),
        })
        .collect();
    let found = |store: &StateStore, now: i64, limit: usize| -> Vec<MessageId> {
        store
            .due_deliveries(1, now, 1_000, limit, &HashSet::new())
            .unwrap()
            .iter()
            .map(|e| e.message_id)
            .collect()
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        store.apply(&[(1, &[a, b, c][..])], b"1").unwrap();
        // Node 1's own first, by due time; node 2's once it has waited the takeover.
        assert_eq!(found(&store, 200, 10), [ids[0]]);
        assert_eq!(found(&store, 2_000, 10), [ids[0], ids[2], ids[1]]);
        assert_eq!(found(&store, 2_000, 2), [ids[0], ids[2]]);
        // Messages the caller has in progress are passed over, and not counted.
        let in_progress = HashSet::from([ids[0]]);
        let others: Vec<MessageId> = store
            .due_deliveries(1, 2_000, 1_000, 2, &in_progress)
            .unwrap()
            .iter()
            .map(|e| e.message_id)
            .collect();
        assert_eq!(others, [ids[2], ids[1]]);
        // A look starts where the last one found its first key; a message due
        // before that (a clock behind the others) moves the start back.
        let early = accept(4, 1, 10);
        let early_id = MessageId::new(10, 4);
        store.apply(&[(2, &[early][..])], b"2").unwrap();
        assert_eq!(found(&store, 200, 10), [early_id, ids[0]]);
        let deleted = Op {
            id: 5,
            time_ms: 20,
            node: 1,
            command: Command::Delivery(Box::new(DeliveryCommand::Admin {
                message_id: early_id,
                action: crate::message::QueueAction::Delete,
                user: "admin".into(),
                client_ip: None,
            })),
        };
        store.apply(&[(3, &[deleted][..])], b"3").unwrap();
        // As a database written before the index: none of it, no mark.
        let due = store.cf(cf::DUE);
        for item in store.db.iterator_cf(due, IteratorMode::Start) {
            store.db.delete_cf(due, item.unwrap().0).unwrap();
        }
        store
            .db
            .delete_cf(store.cf(cf::META), META_DUE_INDEX)
            .unwrap();
        assert_eq!(found(&store, 2_000, 10), []);
    }
    let state = StateDir::open(dir.path()).unwrap();
    assert_eq!(found(&state.current(), 2_000, 10), [ids[0], ids[2], ids[1]]);
}

#[test]
fn mail_flow_is_counted_by_hour_and_day_as_applied_and_again_from_the_log() {
    use crate::flow::{Dimension, Flow};
    use crate::message::{Client, Rejection, Symbol};
    const HOUR: i64 = 3_600_000;
    // 2025-11-28 03:00 UTC, an hour's start.
    let t0 = 1_764_298_800_000;
    let dir = tempfile::tempdir().unwrap();
    let accept = |n: u128, time_ms: i64, from: &str, to: &[&str], action: Action, top: &str| {
        let mut received = samples::received();
        received.message_id = MessageId::new(time_ms, n);
        received.envelope.mail_from = from.into();
        received.envelope.rcpt_to = to.iter().map(|r| r.to_string()).collect();
        let mut verdict = samples::verdict(received.message_id);
        verdict.action = action;
        for (name, score) in [("HTML_ONLY", 0.3), (top, 6.0), ("DKIM_VALID", -0.1)] {
            verdict.symbols.push(Symbol {
                name: name.into(),
                score,
                description: String::new(),
                engine: "rules".into(),
            });
        }
        Op {
            id: n,
            time_ms,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict,
                received,
                body: b"body".to_vec(),
            })),
        }
    };
    let refused = |n: u128, time_ms: i64, reason: &str| Op {
        id: n,
        time_ms,
        node: 2,
        command: Command::Record(EventKind::MessageRejected(Box::new(Rejection {
            client: Client {
                ip: "192.0.2.9".parse().unwrap(),
                port: 1,
                helo: None,
                tls: None,
                proxy: None,
            },
            mail_from: Some("x@spam.test".into()),
            rcpt_to: vec!["y@elsewhere.test".into()],
            reason: reason.into(),
            reply: "554 5.7.1 no".into(),
        }))),
    };
    let first = accept(
        1,
        t0 + 5,
        "a@News.Test",
        &["bob@example.test", "c@example.test", "d@other.test"],
        Action::Tag,
        "BAYES_99",
    );
    let first_id = MessageId::new(t0 + 5, 1);
    let ops = [
        first,
        accept(
            2,
            t0 + 10,
            "a@news.test",
            &["b@example.test"],
            Action::Quarantine,
            "BAYES_99",
        ),
        accept(
            3,
            t0 + HOUR + 1,
            "",
            &["b@example.test"],
            Action::Quarantine,
            "MALWARE",
        ),
        accept(
            4,
            t0 + HOUR + 2,
            "z@shop.test",
            &["b@example.test"],
            Action::Deliver,
            "X",
        ),
        refused(5, t0 + HOUR + 3, "relay_denied"),
        refused(6, t0 + HOUR + 4, "relay_denied"),
        refused(7, t0 + 2 * HOUR + 5, "message_too_big"),
    ];
    let delivered = Op {
        id: 8,
        time_ms: t0 + HOUR + 9,
        node: 1,
        command: Command::Delivery(Box::new(DeliveryCommand::Report {
            report: samples::delivered(first_id),
            bounce: None,
        })),
    };
    let expect = |store: &StateStore| {
        let hours = store.flow_hours(t0 - 1, t0 + 3 * HOUR).unwrap();
        let starts: Vec<i64> = hours.iter().map(|h| h.start_ms).collect();
        assert_eq!(
            starts,
            [t0 - HOUR, t0, t0 + HOUR, t0 + 2 * HOUR, t0 + 3 * HOUR]
        );
        let row = |h: usize| Flow::ALL.map(|f| hours[h].get(f));
        // received, delivered, tagged, quarantined, rejected, failed
        assert_eq!(row(0), [0; 6]);
        assert_eq!(row(1), [2, 0, 1, 1, 0, 0]);
        assert_eq!(row(2), [2, 1, 0, 1, 2, 0]);
        assert_eq!(row(3), [0, 0, 0, 0, 1, 0]);
        let top = |d| store.flow_top(t0, d, 10).unwrap();
        let owned = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        assert_eq!(
            top(Dimension::SenderDomain),
            owned(&[("news.test", 2), ("<>", 1), ("shop.test", 1)])
        );
        // Once per message, however many of its recipients share a domain.
        assert_eq!(
            top(Dimension::RecipientDomain),
            owned(&[("example.test", 4), ("other.test", 1)])
        );
        assert_eq!(
            top(Dimension::JudgedFor),
            owned(&[("BAYES_99", 2), ("MALWARE", 1)])
        );
        assert_eq!(
            top(Dimension::RefusedFor),
            owned(&[("relay_denied", 2), ("message_too_big", 1)])
        );
        assert_eq!(
            store
                .flow_top(t0, Dimension::SenderDomain, 1)
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .flow_top(t0 + 24 * HOUR, Dimension::SenderDomain, 10)
            .unwrap()
            .is_empty());
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        // Across batches: a count already stored is added to, not replaced.
        store.apply(&[(1, &ops[..3])], b"1").unwrap();
        store.apply(&[(2, &ops[3..])], b"2").unwrap();
        store.apply(&[(3, &[delivered][..])], b"3").unwrap();
        expect(&store);
        // As a database written before the counts: none of them, no mark.
        let flow = store.cf(cf::FLOW);
        for item in store.db.iterator_cf(flow, IteratorMode::Start) {
            store.db.delete_cf(flow, item.unwrap().0).unwrap();
        }
        store.db.delete_cf(store.cf(cf::META), META_FLOW).unwrap();
        assert_eq!(store.flow_hours(t0, t0).unwrap()[0].counts, [0; 6]);
    }
    let state = StateDir::open(dir.path()).unwrap();
    expect(&state.current());
}

#[test]
fn the_quarantine_by_address_answers_what_a_scan_answers_and_is_built_for_old_stores() {
    let dir = tempfile::tempdir().unwrap();
    let senders = [
        "Ann@News.test",
        "bea@news.test",
        "",
        "\"x@y\"@odd.test",
        "eve@sender.test",
    ];
    let recipients = [
        vec!["bob@example.test"],
        vec!["Carol@Example.test", "dan@other.test"],
        vec!["dan@other.test"],
    ];
    let ops: Vec<Op> = (1..=30u128)
        .map(|n| {
            quarantined(n, |received, _| {
                received.envelope.mail_from = senders[n as usize % senders.len()].into();
                received.envelope.rcpt_to = recipients[n as usize % recipients.len()]
                    .iter()
                    .map(|r| r.to_string())
                    .collect();
            })
        })
        .collect();
    let patterns = [
        "ann@news.test",
        "@NEWS.test",
        "<>",
        "",
        "@odd.test",
        "@y\"@odd.test",
        "\"x@y\"@odd.test",
        "@example.test",
        "carol@example.test",
        "nobody@news.test",
    ];
    // Every page of a search, a few at a time, against the filter applied to all.
    let check = |store: &StateStore| {
        let (all, _) = store
            .quarantine_list(&QuarantineFilter::default(), None, 1000)
            .unwrap();
        for pattern in patterns {
            for filter in [
                QuarantineFilter {
                    sender: Some(pattern.into()),
                    ..Default::default()
                },
                QuarantineFilter {
                    recipient: Some(pattern.into()),
                    subject: Some("HELLO".into()),
                    ..Default::default()
                },
            ] {
                let want: Vec<MessageId> = all
                    .iter()
                    .filter(|r| filter.matches(r))
                    .map(|r| r.message_id)
                    .collect();
                let mut got = Vec::new();
                let mut after = None;
                loop {
                    let (page, next) = store.quarantine_list(&filter, after, 4).unwrap();
                    assert!(page.len() <= 4);
                    got.extend(page.iter().map(|r| r.message_id));
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(got, want, "{filter:?}");
            }
        }
        all.len()
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        assert_eq!(check(&store), 30);
        // A message released leaves the index with the quarantine.
        let (first, _) = store
            .quarantine_list(
                &QuarantineFilter {
                    sender: Some("ann@news.test".into()),
                    ..Default::default()
                },
                None,
                1,
            )
            .unwrap();
        let release = Op {
            id: 100,
            time_ms: 1_764_300_100_000,
            node: 1,
            command: Command::Quarantine(Box::new(QuarantineCommand {
                message_id: first[0].message_id,
                action: QuarantineAction::Release,
                reason: "ok".into(),
                user: "admin".into(),
                client_ip: None,
            })),
        };
        store.apply(&[(2, &[release][..])], b"2").unwrap();
        assert_eq!(check(&store), 29);
        // As a database written before the index: none of it, no mark.
        let held = store.cf(cf::HELD);
        for item in store.db.iterator_cf(held, IteratorMode::Start) {
            store.db.delete_cf(held, item.unwrap().0).unwrap();
        }
        store
            .db
            .delete_cf(store.cf(cf::META), META_HELD_INDEX)
            .unwrap();
    }
    let state = StateDir::open(dir.path()).unwrap();
    assert_eq!(check(&state.current()), 29);
}

#[test]
fn a_column_family_of_a_later_release_is_opened_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let state = StateDir::open(dir.path()).unwrap();
        state
            .current()
            .apply(&[(1, &[note(1, "a")][..])], b"1")
            .unwrap();
    }
    // A later release's column family, with a key, in the live generation.
    let live = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let mut names = DB::list_cf(&opts, &live).unwrap();
        names.push("from_a_later_release".into());
        let db = DB::open_cf(&opts, &live, &names).unwrap();
        let later = db.cf_handle("from_a_later_release").unwrap();
        db.put_cf(later, b"k", b"v").unwrap();
    }
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    assert_eq!(store.chain_head().0, 1);
    store.apply(&[(2, &[note(2, "b")][..])], b"2").unwrap();
    assert_eq!(store.chain_head().0, 2);
    let later = store.db.cf_handle("from_a_later_release").unwrap();
    assert_eq!(
        store.db.get_cf(later, b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn a_recipient_s_copy_leaves_alone_and_the_body_stays_until_the_last_copy_is_gone() {
    use crate::message::QueueAction;
    use crate::recipient::{
        DigestCommand, ListKind, RecipientAction, RecipientCommand, RecipientLists, Via,
    };
    let dir = tempfile::tempdir().unwrap();
    let id = MessageId::new(1_764_300_001_000, 1);
    let t = 1_764_300_010_000;
    let op = |n: u128, command: Command| Op {
        id: 100 + n,
        time_ms: t + n as i64,
        node: 1,
        command,
    };
    let recipient = |who: &str, action, via| {
        Command::Recipient(Box::new(RecipientCommand {
            recipient: who.into(),
            action,
            via,
            client_ip: None,
        }))
    };
    let by_recipient = |store: &StateStore, who: &str| {
        let filter = QuarantineFilter {
            recipient: Some(who.into()),
            ..Default::default()
        };
        store.quarantine_list(&filter, None, 10).unwrap().0.len()
    };
    {
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let accept = quarantined(1, |received, _| {
            received.envelope.rcpt_to =
                vec!["bob@example.test".into(), "carol@example.test".into()];
        });
        let release = recipient(
            "Bob@example.test",
            RecipientAction::Release {
                message_id: id,
                allow_sender: true,
            },
            Via::Link {
                id: [9; 32],
                expires_ms: t + 60_000,
            },
        );
        store
            .apply(&[(1, &[accept, op(1, release)][..])], b"1")
            .unwrap();
        let queued = store.queue_entry(id).unwrap().unwrap();
        let to: Vec<&str> = queued
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(to, ["bob@example.test"]);
        let held = store.quarantine_record(id).unwrap().unwrap();
        assert_eq!(held.recipients, ["carol@example.test"]);
        assert_eq!(
            (
                by_recipient(&store, "bob@example.test"),
                by_recipient(&store, "carol@example.test")
            ),
            (0, 1)
        );
        // Bob's copy leaves the queue (delivered, or deleted here): the body stays
        // for Carol's.
        let dropped = Command::Delivery(Box::new(DeliveryCommand::Admin {
            message_id: id,
            action: QueueAction::Delete,
            user: "admin".into(),
            client_ip: None,
        }));
        store.apply(&[(2, &[op(2, dropped)][..])], b"2").unwrap();
        assert!(store.queue_entry(id).unwrap().is_none());
        assert!(store.message_body(id).unwrap().is_some());
        // A digest and the link key, kept.
        let digest = Command::Digest(Box::new(DigestCommand {
            recipient: "carol@example.test".into(),
            through_ms: Some(t),
            through_seq: 3,
            messages: 1,
            digest_id: MessageId::new(t, 77),
            body: b"Subject: held\r\n\r\nx\r\n".to_vec(),
        }));
        let key = Command::LinkKey { key: [4; 32] };
        store
            .apply(&[(3, &[op(3, digest), op(4, key)][..])], b"3")
            .unwrap();
    }
    let state = StateDir::open(dir.path()).unwrap();
    let store = state.current();
    assert_eq!(store.link_spent(&[9; 32]).unwrap(), Some(t + 1));
    assert_eq!(store.link_key().unwrap(), Some([4; 32]));
    assert_eq!(
        store.digest_through("Carol@example.test").unwrap(),
        Some(crate::recipient::DigestMark {
            slot_ms: t,
            through_seq: 3
        })
    );
    assert_eq!(
        store.recipient_lists("bob@EXAMPLE.test").unwrap(),
        RecipientLists {
            allow: vec!["alice@sender.test".into()],
            block: Vec::new(),
        }
    );
    assert_eq!(
        store.recipient_lists("carol@example.test").unwrap(),
        RecipientLists::default()
    );
    // The link again, after the restart: refused as spent.
    let again = recipient(
        "bob@example.test",
        RecipientAction::List {
            list: ListKind::Block,
            entry: "spam.test".into(),
            add: true,
        },
        Via::Link {
            id: [9; 32],
            expires_ms: t + 60_000,
        },
    );
    let result = &store.apply(&[(4, &[op(5, again)][..])], b"4").unwrap()[0][0];
    assert_eq!(result.refused.as_deref(), Some(crate::recipient::SPENT));
    // Carol deletes the last copy: record and body go.
    let delete = recipient(
        "carol@example.test",
        RecipientAction::Delete { message_id: id },
        Via::Portal {
            expires_ms: t + 60_000,
        },
    );
    store.apply(&[(5, &[op(6, delete)][..])], b"5").unwrap();
    assert!(store.quarantine_record(id).unwrap().is_none());
    assert!(store.message_body(id).unwrap().is_none());
    assert_eq!(by_recipient(&store, "carol@example.test"), 0);
    let (events, _) = store.events(&EventFilter::default(), 0, 100).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event.kind.type_name()).collect();
    for kind in [
        "recipient.action",
        "quarantine.released",
        "quarantine.digest",
        "quarantine.deleted",
    ] {
        assert!(types.contains(&kind), "{kind}: {types:?}");
    }
    assert!(store.verify().unwrap().ok);
}

//! The walk of the whole hash chain: sequence numbers, links, hashes, the chain head,
//! the recorded start of a purged log and every signed checkpoint, each by a key the
//! cluster trusts for its node at that point (`audit.key_rotated`).

use rocksdb::IteratorMode;

use super::{seq_of, ChainHead, StateStore, META_CHAIN, META_PURGED};
use crate::event::{ChainCheckpoint, EventKind, Hash, StoredEvent, VerifyReport};
use crate::layout::cf;
use crate::signer::{self, Signers};
use crate::{codec, Result};

impl StateStore {
    /// Walks the whole event log checking sequence numbers, links and hashes, then
    /// that the stored chain head is the last event.
    pub fn verify(&self) -> Result<VerifyReport> {
        // One point in time for the start, the events and the head: a purge or an
        // append meanwhile cannot make a whole log look broken.
        let snapshot = self.db.snapshot();
        let (purged_through, prev_anchor): (u64, Hash) =
            match snapshot.get_cf(self.cf(cf::META), META_PURGED)? {
                Some(bytes) => codec::decode(&bytes)?,
                None => (0, [0; 32]),
            };
        let mut prev = prev_anchor;
        let mut expected_seq = purged_through + 1;
        let mut checked = 0u64;
        // (seq of the checkpoint event, what it states), checked after the walk.
        let mut checkpoints: Vec<(u64, ChainCheckpoint)> = Vec::new();
        // What the last `audit.purged` in the log says the chain starts from.
        let mut last_purge: Option<(u64, Hash)> = None;
        let bad = |seq: u64, checked: u64, prev: &Hash, problem: String| VerifyReport {
            ok: false,
            checked,
            checkpoints: 0,
            signers: Vec::new(),
            purged_through,
            head: hex::encode(prev),
            first_bad_seq: Some(seq),
            problem: Some(problem),
        };
        for item in snapshot.iterator_cf(self.cf(cf::EVENTS), IteratorMode::Start) {
            let (key, value) = item?;
            let seq = seq_of(&key)?;
            if seq != expected_seq {
                return Ok(bad(
                    expected_seq,
                    checked,
                    &prev,
                    format!("event {expected_seq} missing, next is {seq}"),
                ));
            }
            let stored: StoredEvent = match codec::decode(&value) {
                Ok(stored) => stored,
                Err(e) => return Ok(bad(seq, checked, &prev, format!("undecodable: {e}"))),
            };
            if stored.event.seq != seq {
                return Ok(bad(
                    seq,
                    checked,
                    &prev,
                    format!("stored under {seq} but says {}", stored.event.seq),
                ));
            }
            if stored.prev_hash != prev {
                return Ok(bad(
                    seq,
                    checked,
                    &prev,
                    "prev_hash does not link to the previous event".into(),
                ));
            }
            if !stored.hash_is_valid() {
                return Ok(bad(
                    seq,
                    checked,
                    &prev,
                    "hash does not match the event's content".into(),
                ));
            }
            match stored.event.kind {
                EventKind::ChainCheckpoint(c) => checkpoints.push((seq, *c)),
                EventKind::EventsPurged(p) => last_purge = Some((p.through_seq, p.through_hash)),
                _ => {}
            }
            prev = stored.hash;
            checked += 1;
            expected_seq += 1;
        }
        let head: ChainHead = match snapshot.get_cf(self.cf(cf::META), META_CHAIN)? {
            Some(bytes) => codec::decode(&bytes)?,
            None => ChainHead {
                next_seq: 1,
                hash: [0; 32],
            },
        };
        if head.next_seq != expected_seq || head.hash != prev {
            return Ok(bad(
                expected_seq,
                checked,
                &prev,
                format!(
                    "chain head says {} events, log has {checked}",
                    head.next_seq - 1
                ),
            ));
        }
        // The start of a purged log is on record: the newest purge event (always kept)
        // names it, so events removed and the start rewritten by hand show.
        if purged_through > 0 && last_purge != Some((purged_through, prev_anchor)) {
            return Ok(bad(
                purged_through + 1,
                checked,
                &prev,
                format!(
                    "the log starts after event {purged_through}, which no audit.purged \
                     event records"
                ),
            ));
        }
        let mut signers = std::collections::BTreeSet::new();
        for (at, checkpoint) in &checkpoints {
            if !checkpoint.signature_is_valid() {
                return Ok(bad(
                    *at,
                    checked,
                    &prev,
                    format!(
                        "checkpoint signature of node {} is not valid",
                        checkpoint.node
                    ),
                ));
            }
            let trusted: Signers =
                match snapshot.get_cf(self.cf(cf::META), signer::key(checkpoint.node))? {
                    Some(bytes) => codec::decode(&bytes)?,
                    None => Signers::default(),
                };
            if !trusted.trusted_at(&checkpoint.public_key, *at) {
                return Ok(bad(
                    *at,
                    checked,
                    &prev,
                    format!(
                        "the checkpoint is signed by node {} with key {}, which the cluster \
                         does not trust for that node at this point of the log",
                        checkpoint.node,
                        hex::encode(&checkpoint.public_key)
                    ),
                ));
            }
            let named = if checkpoint.seq >= *at {
                None
            } else if checkpoint.seq > purged_through {
                match snapshot.get_cf(self.cf(cf::EVENTS), checkpoint.seq.to_be_bytes())? {
                    Some(bytes) => Some(codec::decode::<StoredEvent>(&bytes)?.hash),
                    None => None,
                }
            } else if checkpoint.seq == purged_through {
                Some(prev_anchor)
            } else {
                // The event it names was purged: only its signature can be checked.
                Some(checkpoint.hash)
            };
            if named != Some(checkpoint.hash) {
                return Ok(bad(
                    *at,
                    checked,
                    &prev,
                    format!(
                        "the checkpoint signed by node {} names hash {} for event {}, which \
                         the log does not hold: the history before it was rewritten",
                        checkpoint.node,
                        hex::encode(checkpoint.hash),
                        checkpoint.seq
                    ),
                ));
            }
            signers.insert(format!(
                "{}:{}",
                checkpoint.node,
                hex::encode(&checkpoint.public_key)
            ));
        }
        Ok(VerifyReport {
            ok: true,
            checked,
            checkpoints: checkpoints.len() as u64,
            signers: signers.into_iter().collect(),
            purged_through,
            head: hex::encode(prev),
            first_bad_seq: None,
            problem: None,
        })
    }
}

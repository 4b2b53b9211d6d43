//! The log's retention: the oldest events removed with their postings, the chain's
//! new start recorded in an `audit.purged` event.

use std::collections::HashMap;

use rocksdb::WriteBatch;

use super::{StateStore, META_PURGED};
use crate::event::{EventKind, EventPurge, EventsPurged, Hash, StoredEvent};
use crate::index::Indexer;
use crate::layout::cf;
use crate::{codec, Error, Result};

impl StateStore {
    /// Removes the events `purge` names, with their postings, up to the last event
    /// recorded before it (`head`: its seq, and the events this batch has recorded so
    /// far, which are not in the database yet); the `audit.purged` event, or none when
    /// there is nothing to remove. What it removes depends on the log alone, never on
    /// how its entries were batched.
    pub(super) fn purge(
        &self,
        batch: &mut WriteBatch,
        indexer: &mut Indexer,
        purged: &mut Option<(u64, Hash)>,
        purge: &EventPurge,
        head: (u64, &HashMap<u64, StoredEvent>),
    ) -> Result<Option<EventKind>> {
        let (last, recorded) = head;
        let (done, _) = match purged {
            Some(p) => *p,
            None => self.purged_through()?,
        };
        let first = done + 1;
        let through = (purge.before_seq.saturating_sub(1))
            .min(last)
            .min(done + u64::from(purge.max));
        if through < first {
            return Ok(None);
        }
        let mut through_hash = [0; 32];
        for seq in first..=through {
            let stored = match recorded.get(&seq) {
                Some(stored) => stored.clone(),
                None => self.event(seq)?.ok_or_else(|| {
                    Error::Decode(format!("event {seq} missing before the purge"))
                })?,
            };
            indexer.remove(batch, &stored);
            batch.delete_cf(self.cf(cf::EVENTS), seq.to_be_bytes());
            through_hash = stored.hash;
        }
        *purged = Some((through, through_hash));
        Ok(Some(EventKind::EventsPurged(Box::new(EventsPurged {
            first_seq: first,
            through_seq: through,
            through_hash,
            reason: purge.reason.clone(),
        }))))
    }

    /// The last event the log's retention removed and its hash (0 and zeros: none).
    pub fn purged_through(&self) -> Result<(u64, Hash)> {
        match self.db.get_cf(self.cf(cf::META), META_PURGED)? {
            Some(bytes) => Ok(codec::decode(&bytes)?),
            None => Ok((0, [0; 32])),
        }
    }
}

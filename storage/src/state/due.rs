//! The delivery queue by the time its messages fall due, so that finding the next
//! work costs what is found, not the size of the queue.
//!
//! The `due` column family holds two keys with empty values for each queued message
//! that some recipient still waits on and that is not held, written in the batch
//! that changes the message's queue record (so the index never lags the queue):
//! - `o`, the node that received it (u64), the time it fell due, its id: the work
//!   its own node looks for first;
//! - `t`, the time it fell due, its id: the work any node takes over once it has
//!   waited `takeover` past that time.
//!
//! Times are milliseconds, stored so that the keys sort by them (the sign bit
//! flipped, big-endian). A delivered, bounced or held message has no keys; a
//! deferred one's time is its next attempt, so a node never walks past it before
//! then. A message leased by another node keeps its keys and is listed beside the
//! work without counting against the limit: the delivery worker watches such a lease
//! by its own clock before it may replace it. There are at most as many as the
//! other nodes' delivery slots, and leases their crashed holders left behind. The
//! messages the caller has in progress are passed over by their key alone: each look
//! would otherwise read and decode every one of them again, and a node looks at each
//! delivery it finishes.
//!
//! A delivered message's keys are deleted, and RocksDB keeps a tombstone for each
//! until compaction: a look from the start of a range would walk every message
//! delivered since. So each range has a *floor* in memory, below which it holds no
//! key ([`Floors`]): a look starts there, and moves it up to the first key it
//! found; a write that adds a key below it moves it down.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rocksdb::{ReadOptions, WriteBatch, DB};

use super::cf_handle;
use crate::layout::cf;
use crate::message::{MessageId, QueueEntry, QueueRecord};
use crate::{codec, Error, Result};

/// A node's own work: `o`, node, time, id.
const BY_OWNER: u8 = b'o';
/// Everyone's work, for takeover: `t`, time, id.
const BY_TIME: u8 = b't';

/// `ms` as eight bytes that sort as the number does.
fn time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn owner_prefix(node: u64) -> Vec<u8> {
    let mut key = vec![BY_OWNER];
    key.extend_from_slice(&node.to_be_bytes());
    key
}

/// The index keys of a queue record: none when nothing of it is left to try.
fn keys(record: &QueueRecord) -> Vec<Vec<u8>> {
    let Some(since) = record.entry.due_since().filter(|_| !record.held) else {
        return Vec::new();
    };
    let id = record.entry.message_id.key();
    let mut owned = owner_prefix(record.entry.received_by);
    owned.extend_from_slice(&time(since));
    owned.extend_from_slice(&id);
    let mut everyone = vec![BY_TIME];
    everyone.extend_from_slice(&time(since));
    everyone.extend_from_slice(&id);
    vec![owned, everyone]
}

/// The range a key is in: its tag, and for `o` its node.
fn range_of(key: &[u8]) -> &[u8] {
    match key.first() {
        Some(&BY_OWNER) => &key[..key.len().min(9)],
        _ => &key[..key.len().min(1)],
    }
}

/// Adds to `write` what moves a message in the index from its stored record `old`
/// to `new` (`None`: not queued); the keys it adds go into `added`, for
/// [`Floors::added`] once the write is done.
pub(super) fn update(
    db: &DB,
    write: &mut WriteBatch,
    old: Option<&QueueRecord>,
    new: Option<&QueueRecord>,
    added: &mut Vec<Vec<u8>>,
) {
    let (old, new) = (
        old.map(keys).unwrap_or_default(),
        new.map(keys).unwrap_or_default(),
    );
    if old == new {
        return;
    }
    let due = cf_handle(db, cf::DUE);
    for key in &old {
        write.delete_cf(due, key);
    }
    for key in new {
        write.put_cf(due, &key, []);
        added.push(key);
    }
}

/// Each range's floor: no key of the range is below it.
#[derive(Default)]
pub(super) struct Floors(Mutex<HashMap<Vec<u8>, Floor>>);

#[derive(Clone, Default)]
struct Floor {
    /// No key of the range sorts below this one (empty: no floor known yet).
    key: Vec<u8>,
    /// Writes that added a key to the range: a look raises the floor only if none
    /// came in while it looked.
    writes: u64,
}

impl Floors {
    /// Called once a write that added `keys` is done.
    pub(super) fn added(&self, keys: &[Vec<u8>]) {
        if keys.is_empty() {
            return;
        }
        let mut floors = self.0.lock().expect("due floors lock");
        for key in keys {
            let floor = floors.entry(range_of(key).to_vec()).or_default();
            if *key < floor.key {
                floor.key = key.clone();
            }
            floor.writes += 1;
        }
    }

    fn get(&self, range: &[u8]) -> Floor {
        let floors = self.0.lock().expect("due floors lock");
        floors.get(range).cloned().unwrap_or_default()
    }

    /// Moves the floor of `range` up to `key`, if no write added a key to it since
    /// `seen` was read.
    fn raise(&self, range: &[u8], seen: &Floor, key: Vec<u8>) {
        let mut floors = self.0.lock().expect("due floors lock");
        let floor = floors.entry(range.to_vec()).or_default();
        if floor.writes == seen.writes && key > floor.key {
            floor.key = key;
        }
    }
}

/// Indexes the whole queue: for a database written before the index.
pub(super) fn rebuild(db: &DB, write: &mut WriteBatch) -> Result<()> {
    let due = cf_handle(db, cf::DUE);
    let mut iter = db.raw_iterator_cf(cf_handle(db, cf::QUEUE));
    iter.seek_to_first();
    while let Some(value) = iter.value() {
        let record: QueueRecord = codec::decode(value)?;
        for key in keys(&record) {
            write.put_cf(due, key, []);
        }
        iter.next();
    }
    iter.status()?;
    Ok(())
}

/// Up to `limit` messages `node` may try at `now_ms` (no lease, or its own): those it
/// received that are due, then those anyone received that have been due for
/// `takeover_ms`; with them, not counted, those of the same ranges another node holds
/// a lease on, so that the caller can see whether that lease is still renewed. The
/// index is read from the oldest due time up, and no further than `now_ms`. Those in
/// `in_progress` are neither read nor listed.
pub(super) fn find(
    db: &DB,
    floors: &Floors,
    node: u64,
    now_ms: i64,
    takeover_ms: i64,
    limit: usize,
    in_progress: &HashSet<MessageId>,
) -> Result<Vec<QueueEntry>> {
    let mut out = Vec::new();
    let mut counted = 0;
    let mut seen = HashSet::new();
    let ranges = [
        (owner_prefix(node), now_ms),
        (vec![BY_TIME], now_ms.saturating_sub(takeover_ms)),
    ];
    for (prefix, until) in ranges {
        if counted >= limit {
            break;
        }
        let mut end = prefix.clone();
        end.extend_from_slice(&time(until.saturating_add(1)));
        let floor = floors.get(&prefix);
        let start = floor.key.clone().max(prefix.clone());
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(start);
        options.set_iterate_upper_bound(end.clone());
        let mut iter = db.raw_iterator_cf_opt(cf_handle(db, cf::DUE), options);
        iter.seek_to_first();
        // The first key found (or the end of the range, none found) is the floor.
        let first = match iter.key() {
            Some(key) => key.to_vec(),
            None => {
                iter.status()?;
                end
            }
        };
        floors.raise(&prefix, &floor, first);
        while let Some(key) = iter.key() {
            if counted >= limit {
                break;
            }
            let id = key
                .len()
                .checked_sub(16)
                .and_then(|at| <[u8; 16]>::try_from(&key[at..]).ok())
                .map(|bytes| MessageId(u128::from_be_bytes(bytes)))
                .ok_or_else(|| Error::Decode(format!("due index key of {} bytes", key.len())))?;
            if !in_progress.contains(&id) && seen.insert(id) {
                let stored = db.get_pinned_cf(cf_handle(db, cf::QUEUE), id.key())?;
                if let Some(bytes) = stored {
                    let record: QueueRecord = codec::decode(&bytes)?;
                    if record.is_due(now_ms) {
                        if record.entry.lease.is_none_or(|l| l.node == node) {
                            counted += 1;
                        }
                        out.push(record.entry);
                    }
                }
            }
            iter.next();
        }
        iter.status()?;
    }
    Ok(out)
}

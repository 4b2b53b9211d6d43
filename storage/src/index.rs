//! Secondary indexes of the event log, and the event queries that read through them.
//!
//! The indexes live in the `index` column family, written in the batch that records
//! the events, so they never lag the log. A *posting* is a 25-byte key with an empty
//! value: the index's tag, 16 bytes naming the term (a message id, or the first 16
//! bytes of the SHA-256 of the term's text), and the event's seq, big-endian. A term's
//! events are thus in log order, and a query with several filters intersects their
//! lists by seeking each one to the next candidate seq in turn (a leapfrog join over
//! keys alone). Every candidate is then checked against the whole filter, so a hash
//! collision or a pattern the index cannot serve costs time, never a wrong answer.
//!
//! Time is indexed by its running maximum. Each event carries its proposer's clock, so
//! the log is in time order only nearly; the index holds a key `T`, the largest event
//! time so far and the seq of the event that raised it, and the store keeps the most
//! any event's time ever fell behind the running maximum (the *lag*). A time range
//! then becomes a range of seqs with one seek for each end:
//! - no event before the first seq whose running maximum reaches `since` was recorded
//!   at or after `since`;
//! - every event after the first seq whose running maximum reaches `until + lag` was
//!   recorded at or after `until` (its time is at least that maximum less the lag).
//!
//! Both hold whatever the clocks did; a node whose clock ran far behind only widens
//! the seq range later queries walk.

use std::net::IpAddr;

use rocksdb::{ColumnFamily, DBRawIterator, Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::StoredEvent;
use crate::message::MessageId;
use crate::state::address_matches;
use crate::{codec, Error, Result};

/// Events by message: the term is the message id.
const BY_MESSAGE: u8 = b'm';
/// Events by envelope sender: the lowercase address and its `@domain`.
const BY_SENDER: u8 = b's';
/// Events by recipient, likewise.
const BY_RECIPIENT: u8 = b'r';
/// Events by `action` (a verdict's or an API action's).
const BY_ACTION: u8 = b'a';
/// Events by client IP address, in its canonical text form.
const BY_CLIENT_IP: u8 = b'i';
/// Events by dotted type name.
const BY_TYPE: u8 = b't';
/// The running maximum of event time: `T`, the time, the seq that raised it.
const BY_TIME: u8 = b'T';

/// Tag and term of a posting list: the key of each posting without its seq.
type Term = [u8; 17];

/// Most index keys and events one query reads before it returns a cursor to go on
/// from, so a selective filter cannot turn one request into a scan of everything.
pub(crate) const MAX_SCAN: usize = 100_000;

/// Which events a query wants. The fields named after the API's JSON (sender,
/// recipient, action, client IP, user) are matched against each event's facets
/// ([`crate::event::EventKind::facets`], what its JSON shows): addresses as in
/// [`crate::QueueFilter`], the IP as an address.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Dotted event type, e.g. `audit.note`.
    pub type_name: Option<String>,
    /// Only events about this message.
    pub message_id: Option<MessageId>,
    /// `email.sender.address`.
    pub sender: Option<String>,
    /// One of `email.to.address`.
    pub recipient: Option<String>,
    /// `action`: a verdict's (`deliver`, `tag`, `quarantine`, `reject`) or an API
    /// action's (`queue.hold`, ...).
    pub action: Option<String>,
    /// `source.ip`.
    pub client_ip: Option<IpAddr>,
    /// `user.name`: the API caller (a token's name) the event names.
    pub user: Option<String>,
    /// Recorded at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Recorded before this time.
    pub until_ms: Option<i64>,
}

impl EventFilter {
    pub(crate) fn matches(&self, event: &StoredEvent) -> bool {
        let kind = &event.event.kind;
        let time = event.event.time_ms;
        let facets = kind.facets();
        self.type_name
            .as_deref()
            .is_none_or(|t| t == kind.type_name())
            && self
                .message_id
                .is_none_or(|id| kind.message_id() == Some(id))
            && self.since_ms.is_none_or(|t| time >= t)
            && self.until_ms.is_none_or(|t| time < t)
            && self.sender.as_deref().is_none_or(|want| {
                facets
                    .sender
                    .is_some_and(|address| address_matches(want, address))
            })
            && self.recipient.as_deref().is_none_or(|want| {
                facets
                    .recipients
                    .iter()
                    .any(|address| address_matches(want, address))
            })
            && self
                .action
                .as_deref()
                .is_none_or(|want| facets.action == Some(want))
            && self
                .client_ip
                .is_none_or(|want| facets.client_ip == Some(want))
            && self
                .user
                .as_deref()
                .is_none_or(|want| facets.user == Some(want))
    }

    /// The posting lists every matching event is in (fields the index cannot serve
    /// are left to [`EventFilter::matches`]).
    fn terms(&self) -> Vec<Term> {
        let mut terms = Vec::new();
        if let Some(id) = self.message_id {
            terms.push(message_term(id));
        }
        if let Some(term) = self.sender.as_deref().and_then(address_pattern) {
            terms.push(text_term(BY_SENDER, &term));
        }
        if let Some(term) = self.recipient.as_deref().and_then(address_pattern) {
            terms.push(text_term(BY_RECIPIENT, &term));
        }
        if let Some(action) = &self.action {
            terms.push(text_term(BY_ACTION, action));
        }
        if let Some(ip) = self.client_ip {
            terms.push(text_term(BY_CLIENT_IP, &ip.to_string()));
        }
        if let Some(type_name) = &self.type_name {
            terms.push(text_term(BY_TYPE, type_name));
        }
        terms
    }
}

/// The index term an address pattern looks up: the lowercase address, `@domain`, or
/// the empty string for the null sender. `None` for a domain pattern holding another
/// `@`, which only a scan can serve (the index keeps the part after the last `@`).
fn address_pattern(pattern: &str) -> Option<String> {
    if pattern == "<>" {
        return Some(String::new());
    }
    if pattern.len() > 1 && pattern.starts_with('@') && pattern[1..].contains('@') {
        return None;
    }
    Some(pattern.to_ascii_lowercase())
}

/// The terms an address is indexed under: itself, lowercase, and its `@domain`.
fn address_terms(tag: u8, address: &str, out: &mut Vec<Term>) {
    let lower = address.to_ascii_lowercase();
    if let Some(at) = lower
        .rfind('@')
        .filter(|at| at + 1 < lower.len() && *at > 0)
    {
        out.push(text_term(tag, &lower[at..]));
    }
    out.push(text_term(tag, &lower));
}

fn message_term(id: MessageId) -> Term {
    let mut term = [BY_MESSAGE; 17];
    term[1..].copy_from_slice(&id.key());
    term
}

fn text_term(tag: u8, text: &str) -> Term {
    let mut term = [tag; 17];
    term[1..].copy_from_slice(&Sha256::digest(text.as_bytes())[..16]);
    term
}

fn posting(term: &Term, seq: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(term);
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `T`, a time as big-endian bytes that sort as the signed value, and a seq.
fn time_key(time_ms: i64, seq: u64) -> [u8; 17] {
    let mut key = [BY_TIME; 17];
    key[1..9].copy_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[9..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn seq_at(key: &[u8], from: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&key[from..from + 8]);
    u64::from_be_bytes(bytes)
}

/// The running maximum of event time and the most an event fell behind it, stored
/// with every batch that changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventClock {
    /// Largest event time so far (`i64::MIN` before the first event).
    max_ms: i64,
    /// Largest `max_ms - time` of an event when it was recorded.
    pub(crate) lag_ms: i64,
}

impl Default for EventClock {
    fn default() -> Self {
        EventClock {
            max_ms: i64::MIN,
            lag_ms: 0,
        }
    }
}

/// Writes the postings of events into a batch, keeping the event clock.
pub(crate) struct Indexer<'a> {
    cf: &'a ColumnFamily,
    pub(crate) clock: EventClock,
    terms: Vec<Term>,
}

impl<'a> Indexer<'a> {
    pub(crate) fn new(cf: &'a ColumnFamily, clock: EventClock) -> Self {
        Indexer {
            cf,
            clock,
            terms: Vec::new(),
        }
    }

    /// The postings of `stored` into `batch`.
    pub(crate) fn add(&mut self, batch: &mut WriteBatch, stored: &StoredEvent) {
        let (seq, time) = (stored.event.seq, stored.event.time_ms);
        self.collect_terms(stored);
        for term in self.terms.iter() {
            batch.put_cf(self.cf, posting(term, seq), []);
        }
        if time > self.clock.max_ms {
            self.clock.max_ms = time;
            batch.put_cf(self.cf, time_key(time, seq), []);
        } else {
            self.clock.lag_ms = self.clock.lag_ms.max(self.clock.max_ms - time);
        }
    }

    /// Deletes the postings of `stored`, an event being purged, in `batch`. Its time
    /// key (if it set a new maximum) stays, and so does the clock: a time range that
    /// starts there starts before the events that remain, never after one of them.
    pub(crate) fn remove(&mut self, batch: &mut WriteBatch, stored: &StoredEvent) {
        let seq = stored.event.seq;
        self.collect_terms(stored);
        for term in self.terms.iter() {
            batch.delete_cf(self.cf, posting(term, seq));
        }
    }

    /// The terms `stored` is indexed under, sorted, into `self.terms`.
    fn collect_terms(&mut self, stored: &StoredEvent) {
        let kind = &stored.event.kind;
        let terms = &mut self.terms;
        terms.clear();
        if let Some(id) = kind.message_id() {
            terms.push(message_term(id));
        }
        terms.push(text_term(BY_TYPE, kind.type_name()));
        let facets = kind.facets();
        if let Some(sender) = facets.sender {
            address_terms(BY_SENDER, sender, terms);
        }
        for recipient in facets.recipients {
            address_terms(BY_RECIPIENT, recipient, terms);
        }
        if let Some(action) = facets.action {
            terms.push(text_term(BY_ACTION, action));
        }
        if let Some(ip) = facets.client_ip {
            terms.push(text_term(BY_CLIENT_IP, &ip.to_string()));
        }
        terms.sort_unstable();
        terms.dedup();
    }
}

/// Indexes every stored event into the (emptied) `index` column family, a bounded
/// batch at a time; returns the clock to store with the mark that the index is whole.
pub(crate) fn rebuild(db: &DB, events: &ColumnFamily, index: &ColumnFamily) -> Result<EventClock> {
    const BATCH: usize = 20_000;
    db.delete_range_cf(index, [0u8].as_slice(), [0xffu8; 26].as_slice())?;
    let mut indexer = Indexer::new(index, EventClock::default());
    let mut batch = WriteBatch::default();
    for (n, item) in db.iterator_cf(events, IteratorMode::Start).enumerate() {
        let (_, value) = item?;
        indexer.add(&mut batch, &codec::decode(&value)?);
        if (n + 1) % BATCH == 0 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    db.write(batch)?;
    Ok(indexer.clock)
}

/// Up to `limit` events with seq > `after` that match `filter`, and the cursor to pass
/// as `after` for the next page (`None`: nothing further in the log as it stands).
/// `indexed` is false for a database whose index is not whole (an old one opened read
/// only): every query then scans.
pub(crate) fn query(
    db: &DB,
    events: &ColumnFamily,
    index: Option<(&ColumnFamily, EventClock)>,
    filter: &EventFilter,
    after: u64,
    limit: usize,
) -> Result<(Vec<StoredEvent>, Option<u64>)> {
    let Some((lo, hi)) = seq_range(db, index, filter.since_ms, filter.until_ms, after)? else {
        return Ok((Vec::new(), None));
    };
    let terms = match index {
        Some(_) => filter.terms(),
        None => Vec::new(),
    };
    let search = Search {
        db,
        events,
        filter,
        limit,
        out: Vec::new(),
        work: 0,
    };
    match index.filter(|_| !terms.is_empty()) {
        Some((index, _)) => search.join(index, &terms, lo, hi),
        None => search.scan(lo, hi),
    }
}

/// The seqs after `after` that may hold events recorded in `[since_ms, until_ms)`,
/// from the time index (without it, all of them); `None` when none can.
pub(crate) fn seq_range(
    db: &DB,
    index: Option<(&ColumnFamily, EventClock)>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    after: u64,
) -> Result<Option<(u64, u64)>> {
    let mut lo = after.saturating_add(1);
    let mut hi = u64::MAX;
    if let Some((index, clock)) = index {
        if let Some(since) = since_ms {
            match first_time_at_least(db, index, since)? {
                Some(seq) => lo = lo.max(seq),
                None => return Ok(None),
            }
        }
        if let Some(until) = until_ms {
            if let Some(seq) = first_time_at_least(db, index, until.saturating_add(clock.lag_ms))? {
                hi = seq - 1;
            }
        }
    }
    Ok((lo <= hi).then_some((lo, hi)))
}

/// The seq of the first event whose running maximum time is at least `time_ms`.
fn first_time_at_least(db: &DB, index: &ColumnFamily, time_ms: i64) -> Result<Option<u64>> {
    let mut iter = db.raw_iterator_cf(index);
    iter.seek(time_key(time_ms, 0));
    iter.status()?;
    Ok(iter
        .key()
        .filter(|key| key.len() == 17 && key[0] == BY_TIME)
        .map(|key| seq_at(key, 9)))
}

/// One query's reading of the store.
struct Search<'a> {
    db: &'a DB,
    events: &'a ColumnFamily,
    filter: &'a EventFilter,
    limit: usize,
    out: Vec<StoredEvent>,
    /// Keys and events read so far, against [`MAX_SCAN`].
    work: usize,
}

impl Search<'_> {
    /// Every event in `lo..=hi`, in order.
    fn scan(mut self, lo: u64, hi: u64) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let start = lo.to_be_bytes();
        let iter = self
            .db
            .iterator_cf(self.events, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            let seq = seq_at(&key, 0);
            if seq > hi {
                break;
            }
            let stored: StoredEvent = codec::decode(&value)?;
            if let Some(page) = self.consider(stored, seq) {
                return Ok(page);
            }
        }
        Ok((self.out, None))
    }

    /// The events in `lo..=hi` that are in every posting list of `terms`.
    fn join(
        mut self,
        index: &ColumnFamily,
        terms: &[Term],
        lo: u64,
        hi: u64,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let mut lists: Vec<DBRawIterator> = terms
            .iter()
            .map(|_| self.db.raw_iterator_cf(index))
            .collect();
        let mut candidate = lo;
        loop {
            // Seek the lists in turn to the candidate until all of them agree on it.
            let mut agreed = 0;
            let mut i = 0;
            while agreed < terms.len() {
                if candidate > hi {
                    return Ok((self.out, None));
                }
                let list = &mut lists[i];
                list.seek(posting(&terms[i], candidate));
                list.status()?;
                self.work += 1;
                match list.key() {
                    Some(key) if key.len() == 25 && key[..17] == terms[i] => {
                        let seq = seq_at(key, 17);
                        if seq > candidate {
                            candidate = seq;
                            agreed = 1;
                        } else {
                            agreed += 1;
                        }
                    }
                    _ => return Ok((self.out, None)),
                }
                i = (i + 1) % terms.len();
            }
            if candidate > hi {
                return Ok((self.out, None));
            }
            let stored = self
                .db
                .get_cf(self.events, candidate.to_be_bytes())?
                .ok_or_else(|| {
                    Error::Decode(format!(
                        "the index names event {candidate}, which is not stored"
                    ))
                })?;
            if let Some(page) = self.consider(codec::decode(&stored)?, candidate) {
                return Ok(page);
            }
            candidate += 1;
            if self.work >= MAX_SCAN {
                return Ok((self.out, Some(candidate - 1)));
            }
        }
    }

    /// Keeps event `seq` if it matches; the page, once it is full or the work is spent.
    fn consider(
        &mut self,
        stored: StoredEvent,
        seq: u64,
    ) -> Option<(Vec<StoredEvent>, Option<u64>)> {
        self.work += 1;
        if self.filter.matches(&stored) {
            self.out.push(stored);
            if self.out.len() >= self.limit {
                return Some((std::mem::take(&mut self.out), Some(seq)));
            }
        }
        if self.work >= MAX_SCAN {
            return Some((std::mem::take(&mut self.out), Some(seq)));
        }
        None
    }
}

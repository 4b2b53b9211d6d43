//! Mail flow: how many messages were received, delivered, tagged, quarantined,
//! refused and failed in each hour, and each day's count by sender domain, by
//! recipient domain, by the reason mail was tagged or held and by the reason it was
//! refused, so that a chart of the last weeks and a day's top lists read a few
//! hundred keys however much mail passed.
//!
//! The counts live in the `flow` column family, written by apply in the batch that
//! records their events (so they never lag the log), derived from the events alone
//! (so every node holds the same), and rebuilt from the log once for a database
//! written before them. A count is never lowered: the retention that purges old
//! events leaves the counts of their hours, and an erasure removes no count (they
//! name domains and rule names, never an address).
//!
//! Keys: `h`, the hour (Unix hours, i64 with its sign bit flipped, big-endian) and
//! the [`Flow`]'s byte; `d`, the day likewise, the [`Dimension`]'s byte and the
//! value's bytes. Every value is a u64, big-endian.

use std::collections::BTreeMap;

use bulwark_model::{Action, EventKind};
use rocksdb::{ColumnFamily, IteratorMode, WriteBatch, DB};

use crate::event::StoredEvent;
use crate::{codec, Error, Result};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const HOURLY: u8 = b'h';
const DAILY: u8 = b'd';
/// How many values a day's dimension has so far (`c`, day, dimension).
const DISTINCT: u8 = b'c';
/// Most values one day's dimension counts apart: the rest of that day are counted as
/// [`OTHER`], so a day's top list reads at most this many keys however many domains
/// a flood of spam names.
const MAX_DISTINCT: u64 = 10_000;
/// The value the values past [`MAX_DISTINCT`] are counted under.
pub const OTHER: &str = "(other)";
/// Tag, bucket and dimension: the length of a daily key before its value.
const DAILY_PREFIX: usize = 10;
/// Longest value kept for a dimension (a domain is at most 255 octets; a symbol's
/// or a refusal's name far less): a longer one is cut.
const MAX_VALUE: usize = 255;

/// What happened to mail, as counted per hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flow {
    /// Accepted and recorded (`message.received`).
    Received,
    /// Handed to a next hop (`delivery.succeeded`, one per transaction).
    Delivered,
    /// Judged `tag` (`scan.verdict`).
    Tagged,
    /// Judged `quarantine`.
    Quarantined,
    /// Refused by the SMTP ingress or by the policy (`message.rejected`).
    Rejected,
    /// Failed for good at delivery (`delivery.failed`).
    Failed,
}

impl Flow {
    pub const ALL: [Flow; 6] = [
        Flow::Received,
        Flow::Delivered,
        Flow::Tagged,
        Flow::Quarantined,
        Flow::Rejected,
        Flow::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Received => "received",
            Flow::Delivered => "delivered",
            Flow::Tagged => "tagged",
            Flow::Quarantined => "quarantined",
            Flow::Rejected => "rejected",
            Flow::Failed => "failed",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Flow::Received => b'a',
            Flow::Delivered => b'd',
            Flow::Tagged => b't',
            Flow::Quarantined => b'q',
            Flow::Rejected => b'r',
            Flow::Failed => b'f',
        }
    }

    fn from_byte(byte: u8) -> Option<Flow> {
        Flow::ALL.into_iter().find(|f| f.byte() == byte)
    }
}

/// What a day's top lists count by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// The envelope sender's domain of received mail (`<>` for bounces).
    SenderDomain,
    /// Each recipient domain of received mail, once per message.
    RecipientDomain,
    /// The symbol that weighed most in a tag, quarantine or reject verdict.
    JudgedFor,
    /// Why the SMTP ingress refused a command or a message (`relay_denied`, ...).
    RefusedFor,
}

impl Dimension {
    fn byte(self) -> u8 {
        match self {
            Dimension::SenderDomain => b's',
            Dimension::RecipientDomain => b'r',
            Dimension::JudgedFor => b'j',
            Dimension::RefusedFor => b'x',
        }
    }
}

/// One hour's counts, by [`Flow`] in the order of [`Flow::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HourCounts {
    /// The hour's start, Unix milliseconds.
    pub start_ms: i64,
    pub counts: [u64; 6],
}

impl HourCounts {
    pub fn get(&self, flow: Flow) -> u64 {
        let i = Flow::ALL.iter().position(|f| *f == flow).unwrap_or(0);
        self.counts[i]
    }
}

/// The counts one batch adds, merged into the stored ones when it is written.
#[derive(Default)]
pub(crate) struct FlowBatch {
    added: BTreeMap<Vec<u8>, u64>,
}

impl FlowBatch {
    /// Counts `stored`, an event being recorded.
    pub(crate) fn count(&mut self, stored: &StoredEvent) {
        let time = stored.event.time_ms;
        match &stored.event.kind {
            EventKind::MessageReceived(m) => {
                self.hourly(time, Flow::Received, 1);
                self.daily(
                    time,
                    Dimension::SenderDomain,
                    &domain(&m.envelope.mail_from),
                );
                let mut domains: Vec<String> =
                    m.envelope.rcpt_to.iter().map(|r| domain(r)).collect();
                domains.sort_unstable();
                domains.dedup();
                for d in &domains {
                    self.daily(time, Dimension::RecipientDomain, d);
                }
            }
            EventKind::DeliverySucceeded { .. } => self.hourly(time, Flow::Delivered, 1),
            EventKind::DeliveryFailed { .. } => self.hourly(time, Flow::Failed, 1),
            EventKind::ScanVerdict(v) => {
                match v.action {
                    Action::Tag => self.hourly(time, Flow::Tagged, 1),
                    Action::Quarantine => self.hourly(time, Flow::Quarantined, 1),
                    Action::Deliver | Action::Reject => {}
                }
                if v.action != Action::Deliver {
                    let weightiest = v
                        .symbols
                        .iter()
                        .filter(|s| s.score > 0.0)
                        .max_by(|a, b| a.score.total_cmp(&b.score));
                    let reason = match weightiest {
                        Some(s) => s.name.as_str(),
                        None => v.reason.split(' ').next().unwrap_or(""),
                    };
                    self.daily(time, Dimension::JudgedFor, reason);
                }
            }
            EventKind::MessageRejected(r) => {
                self.hourly(time, Flow::Rejected, 1);
                self.daily(time, Dimension::RefusedFor, &r.reason);
            }
            EventKind::PolicyRejected(_) => self.hourly(time, Flow::Rejected, 1),
            EventKind::RejectionsSuppressed { count } => {
                self.hourly(time, Flow::Rejected, *count);
            }
            _ => {}
        }
    }

    fn hourly(&mut self, time_ms: i64, flow: Flow, n: u64) {
        let mut key = bucket_key(HOURLY, time_ms.div_euclid(HOUR_MS));
        key.push(flow.byte());
        *self.added.entry(key).or_default() += n;
    }

    fn daily(&mut self, time_ms: i64, dimension: Dimension, value: &str) {
        let value = if value.is_empty() { "(none)" } else { value };
        let mut end = value.len().min(MAX_VALUE);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let mut key = bucket_key(DAILY, time_ms.div_euclid(DAY_MS));
        key.push(dimension.byte());
        key.extend_from_slice(&value.as_bytes()[..end]);
        *self.added.entry(key).or_default() += 1;
    }

    /// The batch's counts added to the stored ones, into `write`. A day's value not
    /// counted before is counted apart while its dimension has fewer than
    /// [`MAX_DISTINCT`] values that day, else as [`OTHER`] (in key order, so every
    /// node decides alike).
    pub(crate) fn write(self, db: &DB, cf: &ColumnFamily, write: &mut WriteBatch) -> Result<()> {
        let stored = |key: &[u8]| -> Result<Option<u64>> {
            db.get_cf(cf, key)?.map(|b| decode_count(&b)).transpose()
        };
        let mut distinct: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut added: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for (key, n) in self.added {
            let mut key = key;
            let daily = key[0] == DAILY && &key[DAILY_PREFIX..] != OTHER.as_bytes();
            if daily && stored(&key)?.is_none() {
                let mut counter = key[..DAILY_PREFIX].to_vec();
                counter[0] = DISTINCT;
                let count = match distinct.get_mut(&counter) {
                    Some(count) => count,
                    None => {
                        let now = stored(&counter)?.unwrap_or(0);
                        distinct.entry(counter).or_insert(now)
                    }
                };
                if *count >= MAX_DISTINCT {
                    key.truncate(DAILY_PREFIX);
                    key.extend_from_slice(OTHER.as_bytes());
                } else {
                    *count += 1;
                }
            }
            *added.entry(key).or_default() += n;
        }
        for (key, n) in added {
            let total = stored(&key)?.unwrap_or(0).saturating_add(n);
            write.put_cf(cf, key, total.to_be_bytes());
        }
        for (counter, count) in distinct {
            write.put_cf(cf, counter, count.to_be_bytes());
        }
        Ok(())
    }
}

/// The domain of `address` as counted, in lower case: after its last `@`, or `<>`
/// for the null sender, or the whole text when it has none.
fn domain(address: &str) -> String {
    if address.is_empty() {
        return "<>".into();
    }
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .to_ascii_lowercase()
}

fn bucket_key(tag: u8, bucket: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.push(tag);
    key.extend_from_slice(&(bucket as u64 ^ (1 << 63)).to_be_bytes());
    key
}

fn decode_count(bytes: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Decode(format!("a flow count of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Every hour from the one holding `since_ms` to the one holding `until_ms`, both
/// included, with its counts (hours without mail as zeros).
pub(crate) fn hours(
    db: &DB,
    cf: &ColumnFamily,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<HourCounts>> {
    let (first, last) = (since_ms.div_euclid(HOUR_MS), until_ms.div_euclid(HOUR_MS));
    let mut hours: Vec<HourCounts> = (first..=last)
        .map(|h| HourCounts {
            start_ms: h * HOUR_MS,
            counts: [0; 6],
        })
        .collect();
    let start = bucket_key(HOURLY, first);
    let end = bucket_key(HOURLY, last.saturating_add(1));
    let from = IteratorMode::From(&start, rocksdb::Direction::Forward);
    for item in db.iterator_cf(cf, from) {
        let (key, value) = item?;
        if key.as_ref() >= end.as_slice() {
            break;
        }
        let (Some(hour), Some(flow)) = (
            bucket_of(&key),
            key.get(9).copied().and_then(Flow::from_byte),
        ) else {
            return Err(Error::Decode("a malformed flow key".into()));
        };
        let i = Flow::ALL.iter().position(|f| *f == flow).unwrap_or(0);
        if let Some(h) = usize::try_from(hour - first)
            .ok()
            .and_then(|i| hours.get_mut(i))
        {
            h.counts[i] = decode_count(&value)?;
        }
    }
    Ok(hours)
}

/// The `n` values of `dimension` counted most on the day holding `day_ms`, most
/// first (ties by value), with their counts.
pub(crate) fn top(
    db: &DB,
    cf: &ColumnFamily,
    day_ms: i64,
    dimension: Dimension,
    n: usize,
) -> Result<Vec<(String, u64)>> {
    let mut prefix = bucket_key(DAILY, day_ms.div_euclid(DAY_MS));
    prefix.push(dimension.byte());
    let mut all = Vec::new();
    let from = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
    for item in db.iterator_cf(cf, from) {
        let (key, value) = item?;
        let Some(name) = key.strip_prefix(prefix.as_slice()) else {
            break;
        };
        all.push((
            String::from_utf8_lossy(name).into_owned(),
            decode_count(&value)?,
        ));
    }
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    Ok(all)
}

fn bucket_of(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// Counts every event of the log into `flow` (emptied first): for a database
/// written before the counts.
pub(crate) fn rebuild(db: &DB, events: &ColumnFamily, flow: &ColumnFamily) -> Result<()> {
    const BATCH: usize = 20_000;
    db.delete_range_cf(flow, [0u8].as_slice(), [0xffu8; 2].as_slice())?;
    let mut counts = FlowBatch::default();
    for (n, item) in db.iterator_cf(events, IteratorMode::Start).enumerate() {
        let (_, value) = item?;
        counts.count(&codec::decode(&value)?);
        if (n + 1) % BATCH == 0 {
            let mut write = WriteBatch::default();
            std::mem::take(&mut counts).write(db, flow, &mut write)?;
            db.write(write)?;
        }
    }
    let mut write = WriteBatch::default();
    counts.write(db, flow, &mut write)?;
    db.write(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sort_in_time_order_around_the_epoch() {
        let keys: Vec<Vec<u8>> = [-2i64, -1, 0, 1, 500_000]
            .iter()
            .map(|&b| bucket_key(HOURLY, b))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(bucket_of(&keys[0]), Some(-2));
        assert_eq!(bucket_of(&keys[4]), Some(500_000));
    }

    #[test]
    fn a_day_counts_so_many_values_apart_and_the_rest_as_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["flow"]).unwrap();
        let cf = db.cf_handle("flow").unwrap();
        let day = 1_764_288_000_000;
        let count = |values: std::ops::Range<u64>| {
            let mut batch = FlowBatch::default();
            for v in values {
                batch.daily(day, Dimension::SenderDomain, &format!("d{v:05}.test"));
            }
            let mut write = WriteBatch::default();
            batch.write(&db, cf, &mut write).unwrap();
            db.write(write).unwrap();
        };
        count(0..MAX_DISTINCT - 2);
        // Two more fit; the rest of this batch, and a new one later, are others.
        count(MAX_DISTINCT - 2..MAX_DISTINCT + 3);
        count(MAX_DISTINCT + 3..MAX_DISTINCT + 4);
        // A value counted apart before goes on being counted apart.
        count(0..1);
        let top = top(&db, cf, day, Dimension::SenderDomain, 2).unwrap();
        assert_eq!(
            top,
            [(OTHER.to_string(), 4), ("d00000.test".to_string(), 2)]
        );
        let mut keys = 0;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            if item.unwrap().0[0] == DAILY {
                keys += 1;
            }
        }
        assert_eq!(keys, MAX_DISTINCT + 1);
    }

    #[test]
    fn domains_as_counted() {
        assert_eq!(domain("a@Example.test"), "example.test");
        assert_eq!(domain("\"a@b\"@c.test"), "c.test");
        assert_eq!(domain(""), "<>");
        assert_eq!(domain("postmaster"), "postmaster");
    }
}

//! The state database: event log and projections, one generation at a time.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::bayes::{self, BayesClass, BayesCounts, BayesLesson, LessonBatch};
use crate::event::{
    ApiAction, Command, Event, EventKind, Hash, Op, OpResult, StoredEvent, VerifyReport,
};
use crate::index::{self, EventClock, EventFilter, Indexer, MAX_SCAN};
use crate::layout::{self, cf};
use crate::message::{
    AcceptedMessage, Action, Bounce, DeliveryCommand, Envelope, MessageId, QuarantineAction,
    QuarantineCommand, QuarantineDecided, QuarantineExpiry, QuarantineRecord, QueueEntry,
    QueueRecord, QueueStatus, QueuedRecipient, RecipientStatus,
};
use crate::token::{self, ApiToken, TokenChanged, TokenCommand};
use crate::{codec, snapshot, Error, Result};

const META_CHAIN: &str = "chain";
const META_RAFT: &str = "raft_applied";
/// Written by an older build: the index of events by message alone.
const META_MESSAGE_INDEX: &str = "index_by_message";
/// The layout version of a whole [`index`] of the events (absent: to be built).
const META_INDEX: &str = "index_events";
const INDEX_VERSION: u8 = 1;
/// The [`index::EventClock`] as of the last applied batch.
const META_EVENT_CLOCK: &str = "event_clock";
/// The last event removed by the log's retention and its hash: `(seq, hash)`.
const META_PURGED: &str = "events_purged";
/// Prefix of the keys holding each exporter's cursor (`export_cursor/NAME`, u64 BE).
const META_EXPORT_CURSOR: &str = "export_cursor/";
const CURRENT: &str = "CURRENT";

/// The head of the hash chain: persisted with every applied batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ChainHead {
    /// Sequence number the next event gets (the first event is 1).
    next_seq: u64,
    /// Hash of the last event (all zeros before the first).
    hash: Hash,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            next_seq: 1,
            hash: [0; 32],
        }
    }
}

/// Why a release or deletion of a message not in the quarantine is refused.
pub const NOT_QUARANTINED: &str = "not in the quarantine";

/// Which queued messages a listing wants. Addresses compare without regard to ASCII
/// case; one starting with `@` matches every address of that domain, and `<>` (or
/// the empty string) the null sender.
#[derive(Clone, Debug, Default)]
pub struct QueueFilter {
    /// Envelope sender.
    pub sender: Option<String>,
    /// Some recipient, delivered or not.
    pub recipient: Option<String>,
    /// The message's [`QueueRecord::status`] at the time of the listing.
    pub status: Option<QueueStatus>,
}

impl QueueFilter {
    fn matches(&self, record: &QueueRecord, now_ms: i64) -> bool {
        let e = &record.entry;
        self.sender
            .as_deref()
            .is_none_or(|s| address_matches(s, &e.mail_from))
            && self.recipient.as_deref().is_none_or(|want| {
                e.recipients
                    .iter()
                    .any(|r| address_matches(want, &r.address))
            })
            && self.status.is_none_or(|s| record.status(now_ms) == s)
    }
}

/// Which quarantined messages a listing wants; addresses as in [`QueueFilter`].
#[derive(Clone, Debug, Default)]
pub struct QuarantineFilter {
    /// Envelope sender.
    pub sender: Option<String>,
    /// Some recipient.
    pub recipient: Option<String>,
    /// Words of the verdict's reason, without regard to case (`malware`, `score`).
    pub reason: Option<String>,
    /// Quarantined at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Quarantined before this time.
    pub until_ms: Option<i64>,
}

impl QuarantineFilter {
    fn matches(&self, record: &QuarantineRecord) -> bool {
        self.sender
            .as_deref()
            .is_none_or(|s| address_matches(s, &record.mail_from))
            && self
                .recipient
                .as_deref()
                .is_none_or(|want| record.recipients.iter().any(|r| address_matches(want, r)))
            && self
                .reason
                .as_deref()
                .is_none_or(|want| record.reason.to_lowercase().contains(&want.to_lowercase()))
            && self.since_ms.is_none_or(|t| record.time_ms >= t)
            && self.until_ms.is_none_or(|t| record.time_ms < t)
    }
}

pub(crate) fn address_matches(pattern: &str, address: &str) -> bool {
    if pattern == "<>" {
        return address.is_empty();
    }
    if pattern.starts_with('@') && pattern.len() > 1 {
        let (a, p) = (address.as_bytes(), pattern.as_bytes());
        return a.len() > p.len() && a[a.len() - p.len()..].eq_ignore_ascii_case(p);
    }
    pattern.eq_ignore_ascii_case(address)
}

/// One generation of the state database.
///
/// To ensure correctness:
/// - [`StateStore::apply`] writes the events, the projections, the chain head and the
///   caller's applied-state record (Raft's last applied log id and membership) in one
///   `WriteBatch`: after a crash the state is exactly that of some applied prefix,
///   and Raft re-applies the rest from its log;
/// - apply is deterministic: everything that could differ between nodes (time,
///   proposing node, operation id) comes in the [`Op`];
/// - an operation id applied once is never applied again.
pub struct StateStore {
    db: DB,
    dir: PathBuf,
    head: Mutex<ChainHead>,
    /// The clock of the event index, if the index covers every event (a database
    /// written before it, opened read-only, is queried by scanning).
    clock: Mutex<Option<EventClock>>,
    /// The Bayesian token counts, as the `bayes` column family holds them.
    bayes: RwLock<BayesCounts>,
    /// Events applied since this store was opened, by type, and verdicts by action:
    /// what `/metrics` reports.
    applied: Mutex<AppliedCounts>,
    /// Messages in the queue and in the quarantine ([`StateStore::depths`]).
    depths: Mutex<(u64, u64)>,
}

/// Events applied by type, and scan verdicts by action, since a store was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    pub events: std::collections::BTreeMap<&'static str, u64>,
    pub verdicts: std::collections::BTreeMap<&'static str, u64>,
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    cf::ALL
        .iter()
        .map(|name| {
            let mut opts = Options::default();
            if *name == cf::BODIES {
                // Bodies are written once and deleted after delivery: in blob files
                // they are never rewritten by compaction.
                opts.set_enable_blob_files(true);
                opts.set_min_blob_size(8 * 1024);
                opts.set_enable_blob_gc(true);
            }
            ColumnFamilyDescriptor::new(*name, opts)
        })
        .collect()
}

impl StateStore {
    fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 * 1024 * 1024);
        let db = DB::open_cf_descriptors(&opts, dir, cf_descriptors())?;
        let meta = cf_handle(&db, cf::META);
        let record =
            layout::check_format(db.get_cf(meta, layout::DATA_FORMAT_KEY)?.as_deref(), dir)?;
        build_index(&db)?;
        // Recorded once every conversion is done: an interrupted one runs again.
        if record {
            db.put_cf(
                meta,
                layout::DATA_FORMAT_KEY,
                layout::DATA_FORMAT.to_be_bytes(),
            )?;
        }
        Self::with_db(db, dir)
    }

    /// Opens a state database without writing to it: a stopped node's, a backup's or a
    /// snapshot's.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        if !dir.join("CURRENT").is_file() {
            return Err(Error::Layout {
                path: dir.to_path_buf(),
                reason: "not a state database".into(),
            });
        }
        let opts = Options::default();
        // A database written before a column family existed opens without it.
        let present = DB::list_cf(&opts, dir)?;
        let families = cf::ALL
            .iter()
            .filter(|name| present.iter().any(|p| p == *name));
        let db = DB::open_cf_for_read_only(&opts, dir, families, false)?;
        layout::check_format(
            db.get_cf(cf_handle(&db, cf::META), layout::DATA_FORMAT_KEY)?
                .as_deref(),
            dir,
        )?;
        Self::with_db(db, dir)
    }

    fn with_db(db: DB, dir: &Path) -> Result<Self> {
        let head = match db.get_cf(cf_handle(&db, cf::META), META_CHAIN)? {
            Some(bytes) => codec::decode(&bytes)?,
            None => ChainHead::default(),
        };
        let bayes = load_bayes(&db)?;
        let meta = cf_handle(&db, cf::META);
        let clock = match db.get_cf(meta, META_INDEX)?.as_deref() {
            Some([INDEX_VERSION]) => match db.get_cf(meta, META_EVENT_CLOCK)? {
                Some(bytes) => Some(codec::decode(&bytes)?),
                None => Some(EventClock::default()),
            },
            _ => None,
        };
        let count = |name: &str| -> Result<u64> {
            let mut n = 0;
            let mut iter = db.raw_iterator_cf(cf_handle(&db, name));
            iter.seek_to_first();
            while iter.valid() {
                n += 1;
                iter.next();
            }
            iter.status()?;
            Ok(n)
        };
        let depths = (count(cf::QUEUE)?, count(cf::QUARANTINE)?);
        Ok(StateStore {
            db,
            dir: dir.to_path_buf(),
            head: Mutex::new(head),
            clock: Mutex::new(clock),
            depths: Mutex::new(depths),
            bayes: RwLock::new(bayes),
            applied: Mutex::new(AppliedCounts::default()),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf_handle(&self.db, name)
    }

    /// Where this generation lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies entries `(raft index, operations)` in order and stores `applied` (the
    /// caller's record of what has been applied) in the same batch. Returns one result
    /// per operation, per entry.
    pub fn apply(&self, entries: &[(u64, &[Op])], applied: &[u8]) -> Result<Vec<Vec<OpResult>>> {
        let mut head = *self.head.lock().expect("chain head lock");
        let clock = self
            .clock
            .lock()
            .expect("event clock lock")
            .unwrap_or_default();
        let mut indexer = Indexer::new(self.cf(cf::INDEX), clock);
        let mut batch = WriteBatch::default();
        let mut in_batch: HashMap<u128, OpResult> = HashMap::new();
        // Queue entries changed by this batch (None: left the queue), so that later
        // operations of the batch see earlier ones.
        let mut queue: HashMap<MessageId, Option<QueueRecord>> = HashMap::new();
        // Quarantine records likewise (None: left the quarantine).
        let mut quarantine: HashMap<MessageId, Option<QuarantineRecord>> = HashMap::new();
        // API tokens created (Some) or revoked (None) by this batch, by name.
        let mut tokens: HashMap<String, Option<ApiToken>> = HashMap::new();
        let mut counted = AppliedCounts::default();
        // Envelopes of the messages accepted by this batch.
        let mut received: HashMap<MessageId, Envelope> = HashMap::new();
        let mut lessons: Option<LessonBatch> = None;
        // Export cursors moved by this batch, by exporter.
        let mut cursors: HashMap<String, u64> = HashMap::new();
        // Where the log starts after this batch's purges (None: not purged by it).
        let mut purged: Option<(u64, Hash)> = None;
        // Events this batch records, kept when it also purges: a purge reaches every
        // event before it in the log, whichever batches the entries came in.
        let purging = entries.iter().any(|(_, ops)| {
            ops.iter()
                .any(|op| matches!(op.command, Command::PurgeEvents(_)))
        });
        let mut recorded: HashMap<u64, StoredEvent> = HashMap::new();
        let mut results = Vec::with_capacity(entries.len());
        for (raft_index, ops) in entries {
            let mut entry_results = Vec::with_capacity(ops.len());
            for op in ops.iter() {
                if let Some(done) = self.already_applied(op.id, &in_batch)? {
                    entry_results.push(done);
                    continue;
                }
                let (kinds, refused) = match &op.command {
                    Command::Record(kind) => (vec![kind.clone()], None),
                    Command::AcceptMessage(message) => {
                        let kinds = self.accept(
                            &mut batch,
                            &mut queue,
                            &mut quarantine,
                            message,
                            op,
                            head.next_seq,
                        )?;
                        // A release later in this batch reads the envelope from here.
                        received.insert(
                            message.received.message_id,
                            message.received.envelope.clone(),
                        );
                        (kinds, None)
                    }
                    Command::RejectMessage(rejected) => (
                        vec![
                            EventKind::ScanVerdict(Box::new(rejected.verdict.clone())),
                            EventKind::MessageRejected(Box::new(rejected.rejection.clone())),
                        ],
                        None,
                    ),
                    Command::Delivery(command) => {
                        self.delivery(&mut batch, &mut queue, command, op, head.next_seq)?
                    }
                    Command::TrainBayes(lesson) => (vec![self.learn(&mut lessons, lesson)?], None),
                    Command::Quarantine(command) => self.decide(
                        &mut batch,
                        &mut queue,
                        &mut quarantine,
                        &received,
                        command,
                        op,
                    )?,
                    Command::ExpireQuarantine(expiry) => {
                        (self.expire(&mut batch, &mut quarantine, expiry)?, None)
                    }
                    Command::Token(command) => self.token(&mut batch, &mut tokens, command)?,
                    Command::PurgeEvents(purge) => {
                        let kind = self.purge(
                            &mut batch,
                            &mut indexer,
                            &mut purged,
                            purge,
                            (head.next_seq - 1, &recorded),
                        )?;
                        (kind.into_iter().collect(), None)
                    }
                    Command::ExportCursor { exporter, seq } => {
                        let current = match cursors.get(exporter) {
                            Some(seq) => *seq,
                            None => self.export_cursor(exporter)?,
                        };
                        let seq = (*seq).min(head.next_seq - 1).max(current);
                        if seq != current {
                            cursors.insert(exporter.clone(), seq);
                        }
                        (Vec::new(), None)
                    }
                };
                let mut last = None;
                for kind in kinds {
                    let event = Event {
                        seq: head.next_seq,
                        time_ms: op.time_ms,
                        node: op.node,
                        raft_index: *raft_index,
                        op_id: op.id,
                        kind,
                    };
                    let hash = event.chain_hash(&head.hash)?;
                    let stored = StoredEvent {
                        event,
                        prev_hash: head.hash,
                        hash,
                    };
                    batch.put_cf(
                        self.cf(cf::EVENTS),
                        head.next_seq.to_be_bytes(),
                        codec::encode(&stored)?,
                    );
                    indexer.add(&mut batch, &stored);
                    if purging {
                        recorded.insert(stored.event.seq, stored.clone());
                    }
                    let kind = &stored.event.kind;
                    *counted.events.entry(kind.type_name()).or_default() += 1;
                    if let EventKind::ScanVerdict(v) = kind {
                        *counted.verdicts.entry(v.action.as_str()).or_default() += 1;
                    }
                    last = Some((head.next_seq, hash));
                    head = ChainHead {
                        next_seq: head.next_seq + 1,
                        hash,
                    };
                }
                let (seq, hash) = match last {
                    Some((seq, hash)) => {
                        batch.put_cf(self.cf(cf::OP_IDS), op.id.to_be_bytes(), seq.to_be_bytes());
                        (seq, hash)
                    }
                    // Nothing recorded (a cursor): applying it again changes nothing.
                    None => (head.next_seq - 1, head.hash),
                };
                let result = OpResult {
                    seq,
                    hash,
                    duplicate: false,
                    refused,
                };
                in_batch.insert(op.id, result.clone());
                entry_results.push(result);
            }
            results.push(entry_results);
        }
        // How the batch changes the number of queued and quarantined messages.
        let mut depth_change = (0i64, 0i64);
        for (id, record) in &quarantine {
            depth_change.1 += self.presence_change(cf::QUARANTINE, *id, record.is_some())?;
        }
        for (id, entry) in &queue {
            depth_change.0 += self.presence_change(cf::QUEUE, *id, entry.is_some())?;
        }
        for (id, record) in quarantine {
            match record {
                Some(record) => {
                    batch.put_cf(self.cf(cf::QUARANTINE), id.key(), codec::encode(&record)?)
                }
                None => batch.delete_cf(self.cf(cf::QUARANTINE), id.key()),
            }
        }
        for (id, entry) in queue {
            match entry {
                Some(entry) => batch.put_cf(self.cf(cf::QUEUE), id.key(), codec::encode(&entry)?),
                None => {
                    batch.delete_cf(self.cf(cf::QUEUE), id.key());
                    batch.delete_cf(self.cf(cf::BODIES), id.key());
                }
            }
        }
        if let Some(lessons) = &lessons {
            let bayes_cf = self.cf(cf::BAYES);
            for (token, counts) in lessons.rows() {
                let key = bayes::token_key(token);
                if counts == (0, 0) {
                    batch.delete_cf(bayes_cf, key);
                } else {
                    batch.put_cf(bayes_cf, key, codec::encode(&counts)?);
                }
            }
            for (digest, class) in &lessons.seen {
                let key = bayes::message_key(digest);
                match class {
                    Some(class) => batch.put_cf(bayes_cf, key, codec::encode(class)?),
                    None => batch.delete_cf(bayes_cf, key),
                }
            }
            batch.put_cf(
                bayes_cf,
                bayes::TOTALS_KEY,
                codec::encode(&lessons.totals())?,
            );
        }
        if let Some(purged) = &purged {
            batch.put_cf(self.cf(cf::META), META_PURGED, codec::encode(purged)?);
        }
        for (exporter, seq) in &cursors {
            batch.put_cf(
                self.cf(cf::META),
                format!("{META_EXPORT_CURSOR}{exporter}"),
                seq.to_be_bytes(),
            );
        }
        batch.put_cf(self.cf(cf::META), META_CHAIN, codec::encode(&head)?);
        batch.put_cf(self.cf(cf::META), META_RAFT, applied);
        if indexer.clock != clock {
            batch.put_cf(
                self.cf(cf::META),
                META_EVENT_CLOCK,
                codec::encode(&indexer.clock)?,
            );
            // Before the write: a query meanwhile may widen its time range, never
            // narrow it past an event just written.
            *self.clock.lock().expect("event clock lock") = Some(indexer.clock);
        }
        self.db.write(batch)?;
        *self.head.lock().expect("chain head lock") = head;
        {
            let mut depths = self.depths.lock().expect("depths lock");
            depths.0 = depths.0.saturating_add_signed(depth_change.0);
            depths.1 = depths.1.saturating_add_signed(depth_change.1);
        }
        {
            let mut applied = self.applied.lock().expect("applied counts lock");
            for (kind, n) in counted.events {
                *applied.events.entry(kind).or_default() += n;
            }
            for (action, n) in counted.verdicts {
                *applied.verdicts.entry(action).or_default() += n;
            }
        }
        if let Some(lessons) = lessons {
            lessons.commit(&mut self.bayes.write().expect("bayes lock"));
        }
        Ok(results)
    }

    /// Removes the events `purge` names, with their postings, up to the last event
    /// recorded before it (`head`: its seq, and the events this batch has recorded so
    /// far, which are not in the database yet); the `audit.purged` event, or none when
    /// there is nothing to remove. What it removes depends on the log alone, never on
    /// how its entries were batched.
    fn purge(
        &self,
        batch: &mut WriteBatch,
        indexer: &mut Indexer,
        purged: &mut Option<(u64, Hash)>,
        purge: &crate::event::EventPurge,
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
        Ok(Some(EventKind::EventsPurged(Box::new(
            crate::event::EventsPurged {
                first_seq: first,
                through_seq: through,
                through_hash,
                reason: purge.reason.clone(),
            },
        ))))
    }

    /// The last event the log's retention removed and its hash (0 and zeros: none).
    pub fn purged_through(&self) -> Result<(u64, Hash)> {
        match self.db.get_cf(self.cf(cf::META), META_PURGED)? {
            Some(bytes) => codec::decode(&bytes),
            None => Ok((0, [0; 32])),
        }
    }

    /// +1 if `id` becomes present in column family `name`, -1 if it leaves it, else 0.
    fn presence_change(&self, name: &str, id: MessageId, present: bool) -> Result<i64> {
        let stored = self.db.get_pinned_cf(self.cf(name), id.key())?.is_some();
        Ok(i64::from(present) - i64::from(stored))
    }

    /// A Bayesian lesson on top of the batch's earlier ones.
    fn learn(&self, lessons: &mut Option<LessonBatch>, lesson: &BayesLesson) -> Result<EventKind> {
        let memory = self.bayes.read().expect("bayes lock");
        let lessons = lessons.get_or_insert_with(|| LessonBatch::new(&memory));
        let previous = match lessons.seen.get(&lesson.digest) {
            Some(class) => *class,
            None => self
                .db
                .get_cf(self.cf(cf::BAYES), bayes::message_key(&lesson.digest))?
                .map(|bytes| codec::decode::<BayesClass>(&bytes))
                .transpose()?,
        };
        let trained = lessons.apply(&memory, lesson, previous);
        Ok(EventKind::BayesTrained(Box::new(trained)))
    }

    /// Messages learned as spam and as ham.
    pub fn bayes_totals(&self) -> (u64, u64) {
        self.bayes.read().expect("bayes lock").totals()
    }

    /// The spam and ham counts of each token, in the order given.
    pub fn bayes_counts(&self, tokens: &[u64]) -> Vec<(u32, u32)> {
        self.bayes.read().expect("bayes lock").counts(tokens)
    }

    /// Distinct tokens with a count.
    pub fn bayes_distinct_tokens(&self) -> usize {
        self.bayes.read().expect("bayes lock").distinct_tokens()
    }

    /// The body of an accepted message into `batch`, its queue entry into `queue`.
    fn accept(
        &self,
        batch: &mut WriteBatch,
        queue: &mut HashMap<MessageId, Option<QueueRecord>>,
        quarantine: &mut HashMap<MessageId, Option<QuarantineRecord>>,
        message: &AcceptedMessage,
        op: &Op,
        seq: u64,
    ) -> Result<Vec<EventKind>> {
        let (time_ms, node) = (op.time_ms, op.node);
        let received = &message.received;
        let verdict = &message.verdict;
        let key = received.message_id.key();
        batch.put_cf(self.cf(cf::BODIES), key, codec::encode_bytes(&message.body));
        let mut kinds = vec![
            EventKind::MessageReceived(Box::new(received.clone())),
            EventKind::ScanVerdict(Box::new(verdict.clone())),
        ];
        if verdict.action == Action::Quarantine {
            let record = QuarantineRecord {
                message_id: received.message_id,
                received_seq: seq,
                time_ms,
                mail_from: received.envelope.mail_from.clone(),
                recipients: received.envelope.rcpt_to.clone(),
                subject: received.subject.clone(),
                header_from: received.header_from.clone(),
                size: received.size,
                score: verdict.score,
                reason: verdict.reason.clone(),
            };
            kinds.push(EventKind::MessageQuarantined(Box::new(record.clone())));
            quarantine.insert(received.message_id, Some(record));
            return Ok(kinds);
        }
        let entry = QueueEntry {
            message_id: received.message_id,
            received_seq: seq,
            time_ms,
            mail_from: received.envelope.mail_from.clone(),
            recipients: received
                .envelope
                .rcpt_to
                .iter()
                .map(|address| QueuedRecipient {
                    address: address.clone(),
                    status: RecipientStatus::Pending,
                })
                .collect(),
            eight_bit: received.envelope.eight_bit,
            smtputf8: received.envelope.smtputf8,
            action: verdict.action,
            score: verdict.score,
            received_by: node,
            lease: None,
        };
        queue.insert(received.message_id, Some(QueueRecord::new(entry)));
        Ok(kinds)
    }

    /// A delivery lease, report or administrator's action against the queue as this
    /// batch has left it; a report's bounce joins the queue when the report failed
    /// someone.
    fn delivery(
        &self,
        batch: &mut WriteBatch,
        queue: &mut HashMap<MessageId, Option<QueueRecord>>,
        command: &DeliveryCommand,
        op: &Op,
        seq: u64,
    ) -> Result<(Vec<EventKind>, Option<String>)> {
        let id = match command {
            DeliveryCommand::Lease { message_id, .. } => *message_id,
            DeliveryCommand::Report { report, .. } => report.message_id,
            DeliveryCommand::Admin { message_id, .. } => *message_id,
        };
        let entry = match queue.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.queue_record(id)?),
        };
        match command {
            DeliveryCommand::Lease { until_ms, .. } => {
                let (event, refused) =
                    crate::queue::lease(entry, id, op.node, op.time_ms, *until_ms);
                Ok((vec![event], refused))
            }
            DeliveryCommand::Admin {
                action,
                user,
                client_ip,
                ..
            } => {
                let (event, refused) =
                    crate::queue::admin(entry, id, *action, op.time_ms, user, *client_ip);
                Ok((vec![event], refused))
            }
            DeliveryCommand::Report { report, bounce } => {
                let sender = entry.as_ref().map(|e| e.entry.mail_from.clone());
                let mut events = crate::queue::report(entry, op.node, report);
                let failed_now = events
                    .iter()
                    .any(|e| matches!(e, EventKind::DeliveryFailed { .. }));
                if let (Some(bounce), Some(sender), true) = (bounce, sender, failed_now) {
                    if !sender.is_empty() && bounce.recipient == sender {
                        let seq = seq + events.len() as u64;
                        self.queue_bounce(batch, queue, bounce, op, seq);
                        events.push(EventKind::DeliveryBounced {
                            message_id: id,
                            dsn_id: bounce.message_id,
                            sender,
                            recipients: bounce.failed.clone(),
                        });
                    }
                }
                Ok((events, None))
            }
        }
    }

    /// An administrator's release or deletion of a quarantined message, against the
    /// quarantine as this batch has left it. A released message joins the queue as
    /// the node that proposed the release received it, to be delivered as it is;
    /// a deleted one loses its body.
    fn decide(
        &self,
        batch: &mut WriteBatch,
        queue: &mut HashMap<MessageId, Option<QueueRecord>>,
        quarantine: &mut HashMap<MessageId, Option<QuarantineRecord>>,
        received: &HashMap<MessageId, Envelope>,
        command: &QuarantineCommand,
        op: &Op,
    ) -> Result<(Vec<EventKind>, Option<String>)> {
        let id = command.message_id;
        let held = match quarantine.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.quarantine_record(id)?),
        };
        let Some(record) = held.take() else {
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
                // The envelope's extensions are on the message.received event: in
                // this batch's writes if it came in the same batch, else stored.
                let in_batch = received.get(&id).cloned();
                let stored = match in_batch {
                    Some(envelope) => Some(envelope),
                    None => self.stored_envelope(id, record.received_seq)?,
                };
                let envelope = stored;
                let (eight_bit, smtputf8) = match envelope {
                    Some(e) => (e.eight_bit, e.smtputf8),
                    // Its event purged: 8BITMIME is harmless to ask for, and SMTPUTF8
                    // is needed exactly when an address is not ASCII.
                    None => (
                        true,
                        !record.mail_from.is_ascii()
                            || record.recipients.iter().any(|r| !r.is_ascii()),
                    ),
                };
                let entry = QueueEntry {
                    message_id: id,
                    received_seq: record.received_seq,
                    time_ms: op.time_ms,
                    mail_from: record.mail_from.clone(),
                    recipients: record
                        .recipients
                        .iter()
                        .map(|address| QueuedRecipient {
                            address: address.clone(),
                            status: RecipientStatus::Pending,
                        })
                        .collect(),
                    eight_bit,
                    smtputf8,
                    action: Action::Deliver,
                    score: record.score,
                    received_by: op.node,
                    lease: None,
                };
                queue.insert(id, Some(QueueRecord::new(entry)));
            }
            QuarantineAction::Delete | QuarantineAction::Expire => {
                batch.delete_cf(self.cf(cf::BODIES), id.key())
            }
        }
        let event = EventKind::QuarantineDecided(Box::new(QuarantineDecided {
            decision: command.clone(),
            mail_from: record.mail_from,
            recipients: record.recipients,
        }));
        Ok((vec![event], None))
    }

    /// The envelope of message `id` from its stored `message.received` event.
    fn stored_envelope(&self, id: MessageId, seq: u64) -> Result<Option<Envelope>> {
        Ok(match self.event(seq)? {
            Some(StoredEvent {
                event:
                    Event {
                        kind: EventKind::MessageReceived(m),
                        ..
                    },
                ..
            }) if m.message_id == id => Some(m.envelope),
            _ => None,
        })
    }

    /// The retention's run: what was quarantined before `expiry.before_ms`, oldest
    /// first, out with its body.
    fn expire(
        &self,
        batch: &mut WriteBatch,
        quarantine: &mut HashMap<MessageId, Option<QuarantineRecord>>,
        expiry: &QuarantineExpiry,
    ) -> Result<Vec<EventKind>> {
        let end = expiry_end(expiry.before_ms);
        let max = expiry.max as usize;
        let due = |r: &QuarantineRecord| expiry_due(r, expiry.before_ms);
        // The candidates as this batch has left the quarantine: stored records not
        // released or deleted by it, and those it quarantined itself; the oldest `max`
        // of them, so that every node picks the same ones however its entries were
        // grouped into batches.
        let mut candidates: std::collections::BTreeMap<MessageId, QuarantineRecord> = quarantine
            .values()
            .flatten()
            .filter(|r| due(r))
            .map(|r| (r.message_id, r.clone()))
            .collect();
        let mut from_disk = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::Start)
        {
            let (key, value) = item?;
            if key.as_ref() >= end.key().as_slice() || from_disk >= max {
                break;
            }
            let record: QuarantineRecord = codec::decode(&value)?;
            if quarantine.contains_key(&record.message_id) || !due(&record) {
                continue;
            }
            from_disk += 1;
            candidates.insert(record.message_id, record);
        }
        let mut events = Vec::new();
        for (id, record) in candidates.into_iter().take(max) {
            quarantine.insert(id, None);
            batch.delete_cf(self.cf(cf::BODIES), id.key());
            events.push(EventKind::QuarantineDecided(Box::new(QuarantineDecided {
                decision: QuarantineCommand {
                    message_id: id,
                    action: QuarantineAction::Expire,
                    reason: expiry.reason.clone(),
                    user: "retention".into(),
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

    /// An API token's creation or revocation, against the tokens as this batch has
    /// left them. Stored under its digest (for authentication) and its name.
    fn token(
        &self,
        batch: &mut WriteBatch,
        tokens: &mut HashMap<String, Option<ApiToken>>,
        command: &TokenCommand,
    ) -> Result<(Vec<EventKind>, Option<String>)> {
        let name = match command {
            TokenCommand::Create { token, .. } => &token.name,
            TokenCommand::Revoke { name, .. } => name,
        };
        let current = match tokens.get(name) {
            Some(token) => token.clone(),
            None => self.token_named(name)?,
        };
        let refusal = |action: &str, user: &str, client_ip, reason: &str| {
            let event = EventKind::ApiAction(Box::new(ApiAction {
                action: action.into(),
                user: user.into(),
                client_ip,
                message_id: None,
                recipients: Vec::new(),
                refused: Some(format!("{reason}: {name}")),
            }));
            (vec![event], Some(format!("{reason}: {name}")))
        };
        let tokens_cf = self.cf(cf::TOKENS);
        match (command, current) {
            (TokenCommand::Create { token, client_ip }, None) => {
                let record = codec::encode(token)?;
                batch.put_cf(tokens_cf, token::digest_key(&token.digest), &record);
                batch.put_cf(tokens_cf, token::name_key(&token.name), &record);
                tokens.insert(name.clone(), Some(token.clone()));
                let event = EventKind::TokenChanged(Box::new(TokenChanged {
                    name: token.name.clone(),
                    role: token.role,
                    created: true,
                    user: token.created_by.clone(),
                    client_ip: *client_ip,
                }));
                Ok((vec![event], None))
            }
            (TokenCommand::Create { token, client_ip }, Some(_)) => Ok(refusal(
                "token.create",
                &token.created_by,
                *client_ip,
                token::TOKEN_TAKEN,
            )),
            (
                TokenCommand::Revoke {
                    user, client_ip, ..
                },
                Some(existing),
            ) => {
                batch.delete_cf(tokens_cf, token::digest_key(&existing.digest));
                batch.delete_cf(tokens_cf, token::name_key(&existing.name));
                tokens.insert(name.clone(), None);
                let event = EventKind::TokenChanged(Box::new(TokenChanged {
                    name: existing.name,
                    role: existing.role,
                    created: false,
                    user: user.clone(),
                    client_ip: *client_ip,
                }));
                Ok((vec![event], None))
            }
            (
                TokenCommand::Revoke {
                    user, client_ip, ..
                },
                None,
            ) => Ok(refusal(
                "token.revoke",
                user,
                *client_ip,
                token::NO_SUCH_TOKEN,
            )),
        }
    }

    /// Events applied by type and verdicts by action since this store was opened.
    pub fn applied_counts(&self) -> AppliedCounts {
        self.applied.lock().expect("applied counts lock").clone()
    }

    /// Messages in the delivery queue and in the quarantine: counted when the store
    /// opened, then kept by every applied batch.
    pub fn depths(&self) -> (u64, u64) {
        *self.depths.lock().expect("depths lock")
    }

    /// The API token whose SHA-256 is `digest`, if one is live.
    pub fn token_by_digest(&self, digest: &Hash) -> Result<Option<ApiToken>> {
        match self
            .db
            .get_pinned_cf(self.cf(cf::TOKENS), token::digest_key(digest))?
        {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// The API token named `name`, if one is live.
    pub fn token_named(&self, name: &str) -> Result<Option<ApiToken>> {
        match self
            .db
            .get_pinned_cf(self.cf(cf::TOKENS), token::name_key(name))?
        {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Every live API token, by name.
    pub fn tokens(&self) -> Result<Vec<ApiToken>> {
        let prefix = token::name_key("");
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TOKENS), mode) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(codec::decode(&value)?);
        }
        Ok(out)
    }

    /// A DSN into the queue, sent with the null sender (RFC 5321 §4.5.5) so that it
    /// can never cause another bounce.
    fn queue_bounce(
        &self,
        batch: &mut WriteBatch,
        queue: &mut HashMap<MessageId, Option<QueueRecord>>,
        bounce: &Bounce,
        op: &Op,
        seq: u64,
    ) {
        batch.put_cf(
            self.cf(cf::BODIES),
            bounce.message_id.key(),
            codec::encode_bytes(&bounce.body),
        );
        let entry = QueueEntry {
            message_id: bounce.message_id,
            received_seq: seq,
            time_ms: op.time_ms,
            mail_from: String::new(),
            recipients: vec![QueuedRecipient {
                address: bounce.recipient.clone(),
                status: RecipientStatus::Pending,
            }],
            // Quoted headers and replies may hold 8-bit text.
            eight_bit: !bounce.body.is_ascii(),
            smtputf8: !bounce.recipient.is_ascii(),
            action: Action::Deliver,
            score: 0.0,
            received_by: op.node,
            lease: None,
        };
        queue.insert(bounce.message_id, Some(QueueRecord::new(entry)));
    }

    /// Queue entries with a recipient due at `now_ms` that `node` may take (not held,
    /// no other node's lease running): those it accepted, and others' once they have
    /// been due for `takeover_ms` (their node may be down); at most `limit`.
    pub fn due_deliveries(
        &self,
        node: u64,
        now_ms: i64,
        takeover_ms: i64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::QUEUE), IteratorMode::Start) {
            let (_, value) = item?;
            let record: QueueRecord = codec::decode(&value)?;
            if !record.is_due(now_ms) {
                continue;
            }
            let entry = record.entry;
            let ours = entry.received_by == node
                || entry
                    .due_since()
                    .is_some_and(|since| since.saturating_add(takeover_ms) <= now_ms);
            if ours && entry.is_free_for(node, now_ms) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The stored body of a message (its `Received` header included).
    pub fn message_body(&self, id: MessageId) -> Result<Option<Vec<u8>>> {
        match self.db.get_pinned_cf(self.cf(cf::BODIES), id.key())? {
            Some(record) => Ok(Some(codec::decode_bytes(&record)?.to_vec())),
            None => Ok(None),
        }
    }

    /// A quarantined message's record.
    pub fn quarantine_record(&self, id: MessageId) -> Result<Option<QuarantineRecord>> {
        match self.db.get_pinned_cf(self.cf(cf::QUARANTINE), id.key())? {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// A message's entry in the delivery queue.
    pub fn queue_entry(&self, id: MessageId) -> Result<Option<QueueEntry>> {
        Ok(self.queue_record(id)?.map(|r| r.entry))
    }

    /// A message's record in the delivery queue: its entry and whether it is held.
    pub fn queue_record(&self, id: MessageId) -> Result<Option<QueueRecord>> {
        match self.db.get_pinned_cf(self.cf(cf::QUEUE), id.key())? {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` queued messages after `after` (in arrival order: ids sort by
    /// time) that match `filter` at `now_ms`, and the id to pass as `after` for the
    /// next page (`None` when the queue has nothing further).
    pub fn queue_list(
        &self,
        filter: &QueueFilter,
        after: Option<MessageId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<QueueRecord>, Option<MessageId>)> {
        self.page_by_id(cf::QUEUE, after, limit, |record: &QueueRecord| {
            (record.entry.message_id, filter.matches(record, now_ms))
        })
    }

    /// Up to `limit` quarantined messages after `after` (oldest first: ids sort by
    /// time) that match `filter`, and the id to pass as `after` for the next page
    /// (`None` when there is nothing further).
    pub fn quarantine_list(
        &self,
        filter: &QuarantineFilter,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<(Vec<QuarantineRecord>, Option<MessageId>)> {
        self.page_by_id(cf::QUARANTINE, after, limit, |record: &QuarantineRecord| {
            (record.message_id, filter.matches(record))
        })
    }

    /// One page of the records of column family `name` (keyed by message id, so in
    /// arrival order) after `after` for which `read` says keep, at most `limit`, and
    /// the id to go on from: `None` at the end, else the last id read (a page also
    /// ends after [`MAX_SCAN`] records read, so a selective filter stays bounded).
    fn page_by_id<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        after: Option<MessageId>,
        limit: usize,
        read: impl Fn(&T) -> (MessageId, bool),
    ) -> Result<(Vec<T>, Option<MessageId>)> {
        // The largest id has nothing after it.
        if after.is_some_and(|id| id.0 == u128::MAX) {
            return Ok((Vec::new(), None));
        }
        let start = after.map(|id| (id.0 + 1).to_be_bytes());
        let mode = match &start {
            Some(key) => IteratorMode::From(key, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut iter = self.db.iterator_cf(self.cf(name), mode);
        let mut out = Vec::new();
        let mut scanned = 0usize;
        while let Some(item) = iter.next() {
            let (_, value) = item?;
            let record: T = codec::decode(&value)?;
            let (id, keep) = read(&record);
            scanned += 1;
            if keep {
                out.push(record);
                if out.len() >= limit {
                    let more = iter.next().transpose()?.is_some();
                    return Ok((out, more.then_some(id)));
                }
            }
            if scanned >= MAX_SCAN {
                return Ok((out, Some(id)));
            }
        }
        Ok((out, None))
    }

    fn already_applied(
        &self,
        id: u128,
        in_batch: &HashMap<u128, OpResult>,
    ) -> Result<Option<OpResult>> {
        if let Some(done) = in_batch.get(&id) {
            return Ok(Some(OpResult {
                duplicate: true,
                ..done.clone()
            }));
        }
        let Some(seq) = self.db.get_cf(self.cf(cf::OP_IDS), id.to_be_bytes())? else {
            return Ok(None);
        };
        let seq = u64::from_be_bytes(
            seq.as_slice()
                .try_into()
                .map_err(|_| Error::Decode("op id index value".into()))?,
        );
        let Some(stored) = self.event(seq)? else {
            // Removed by the log's retention since: applied, long ago.
            if seq <= self.purged_through()?.0 {
                return Ok(Some(OpResult {
                    seq,
                    hash: [0; 32],
                    duplicate: true,
                    refused: None,
                }));
            }
            return Err(Error::Decode(format!(
                "op id points at missing event {seq}"
            )));
        };
        let refused = match stored.event.kind {
            EventKind::DeliveryLeased { granted: false, .. } => {
                Some("the delivery lease was refused".to_string())
            }
            EventKind::ApiAction(a) => a.refused,
            _ => None,
        };
        Ok(Some(OpResult {
            seq,
            hash: stored.hash,
            duplicate: true,
            refused,
        }))
    }

    /// The caller's applied-state record written by the last [`StateStore::apply`].
    pub fn applied(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf::META), META_RAFT)?)
    }

    /// Replaces the caller's applied-state record (a restore gives the state a new
    /// cluster's membership). Synced.
    pub fn set_applied(&self, applied: &[u8]) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_cf_opt(self.cf(cf::META), META_RAFT, applied, &opts)?;
        Ok(())
    }

    /// Whether a retention with cut-off `before_ms` would remove anything: the same
    /// test as the replicated removal applies, so a check that says yes is followed by
    /// a removal that removes something.
    pub fn quarantine_due(&self, before_ms: i64) -> Result<bool> {
        let end = expiry_end(before_ms);
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::Start)
        {
            let (key, value) = item?;
            if key.as_ref() >= end.key().as_slice() {
                break;
            }
            if expiry_due(&codec::decode(&value)?, before_ms) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Number of events and the hash of the last one.
    pub fn chain_head(&self) -> (u64, Hash) {
        let head = *self.head.lock().expect("chain head lock");
        (head.next_seq - 1, head.hash)
    }

    /// The seq up to which exporter `name` has shipped the log (0: nothing yet).
    pub fn export_cursor(&self, name: &str) -> Result<u64> {
        match self
            .db
            .get_cf(self.cf(cf::META), format!("{META_EXPORT_CURSOR}{name}"))?
        {
            Some(bytes) => {
                Ok(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
                    |_| Error::Decode(format!("export cursor of {name}")),
                )?))
            }
            None => Ok(0),
        }
    }

    /// Every exporter's cursor, by name (those that have shipped something).
    pub fn export_cursors(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let prefix = META_EXPORT_CURSOR.as_bytes();
        let iter = self.db.iterator_cf(
            self.cf(cf::META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            let Some(name) = key.strip_prefix(prefix) else {
                break;
            };
            let seq = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Decode("export cursor".into()))?;
            out.push((String::from_utf8_lossy(name).into_owned(), seq));
        }
        Ok(out)
    }

    /// One event by sequence number.
    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>> {
        match self.db.get_cf(self.cf(cf::EVENTS), seq.to_be_bytes())? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` events with seq > `after` that match `filter`, and the cursor to
    /// pass as `after` for the next page (`None` when the log has nothing further).
    pub fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let clock = *self.clock.lock().expect("event clock lock");
        let index = clock.map(|clock| (self.cf(cf::INDEX), clock));
        index::query(&self.db, self.cf(cf::EVENTS), index, filter, after, limit)
    }

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
        let mut checkpoints: Vec<(u64, crate::event::ChainCheckpoint)> = Vec::new();
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

    /// Writes a consistent point-in-time copy of this database to `dir` (which must not
    /// exist): SST files are hard links, so this is cheap even for a large state.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        layout::sync_dir(dir)?;
        Ok(())
    }
}

/// Indexes the events of a database written before the index or by an older layout
/// of it (once: the mark is stored with it). Read-only databases are left as they are.
fn build_index(db: &DB) -> Result<()> {
    let meta = cf_handle(db, cf::META);
    if db.get_cf(meta, META_INDEX)?.as_deref() == Some(&[INDEX_VERSION]) {
        return Ok(());
    }
    let clock = index::rebuild(db, cf_handle(db, cf::EVENTS), cf_handle(db, cf::INDEX))?;
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, META_EVENT_CLOCK, codec::encode(&clock)?);
    batch.put_cf(meta, META_INDEX, [INDEX_VERSION]);
    batch.delete_cf(meta, META_MESSAGE_INDEX);
    db.write(batch)?;
    Ok(())
}

/// Ids sort by the time of reception, which comes before the quarantine's: no record
/// at or after this id is due for a retention cut-off at `before_ms`.
fn expiry_end(before_ms: i64) -> MessageId {
    MessageId::new(before_ms, 0)
}

/// Whether a retention with cut-off `before_ms` removes `record`: received and
/// quarantined before it (two clocks, which may disagree).
fn expiry_due(record: &QuarantineRecord, before_ms: i64) -> bool {
    record.message_id < expiry_end(before_ms) && record.time_ms < before_ms
}

/// The `bayes` column family into memory.
fn load_bayes(db: &DB) -> Result<BayesCounts> {
    let mut counts = BayesCounts::new();
    for item in db.iterator_cf(cf_handle(db, cf::BAYES), IteratorMode::Start) {
        let (key, value) = item?;
        if key.as_ref() == bayes::TOTALS_KEY {
            counts.set_totals(codec::decode(&value)?);
        } else if let Some((b'w', token)) = key.split_first() {
            if let Ok(token) = <[u8; 8]>::try_from(token) {
                counts.set(u64::from_be_bytes(token), codec::decode(&value)?);
            }
        }
    }
    Ok(counts)
}

fn cf_handle<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

fn seq_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Decode(format!("event key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The live state generation of a node and the means to replace it with a snapshot.
///
/// `state/CURRENT` names the live generation; installing a snapshot materialises it
/// as a new generation directory, then switches `CURRENT` atomically, so a crash
/// during install leaves the old state in place.
pub struct StateDir {
    root: PathBuf,
    current: RwLock<Arc<StateStore>>,
}

fn generation_name(n: u64) -> String {
    format!("gen-{n:06}")
}

fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

impl StateDir {
    /// Opens the live generation under `root`, creating the first one if needed, and
    /// removes generations left behind by an interrupted install.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(Error::io(root))?;
        let name = match Self::current_name(root)? {
            Some(name) => name,
            None => {
                let name = generation_name(1);
                layout::write_atomic(&root.join(CURRENT), name.as_bytes())?;
                name
            }
        };
        for entry in fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if generation_number(&file_name).is_some() && file_name != name {
                fs::remove_dir_all(entry.path()).map_err(Error::io(entry.path()))?;
            }
        }
        let store = StateStore::open(&root.join(&name))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            current: RwLock::new(Arc::new(store)),
        })
    }

    /// Name of the live generation, from `CURRENT`.
    pub fn current_name(root: &Path) -> Result<Option<String>> {
        let path = root.join(CURRENT);
        match fs::read_to_string(&path) {
            Ok(name) => {
                let name = name.trim().to_string();
                if generation_number(&name).is_none() {
                    return Err(Error::Layout {
                        path,
                        reason: format!("names {name:?}, not a state generation"),
                    });
                }
                Ok(Some(name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Opens the live state of a data directory that no process is using, read-only.
    pub fn open_offline(data_dir: &Path) -> Result<StateStore> {
        let root = layout::state_root(data_dir);
        let name = Self::current_name(&root)?.ok_or_else(|| Error::Layout {
            path: root.clone(),
            reason: "no state/CURRENT: not a Bulwark data directory".into(),
        })?;
        StateStore::open_read_only(&root.join(name))
    }

    /// Writes a consistent copy of the live state under `to` in a data directory's
    /// layout (`state/CURRENT`, `state/gen-000001/`), so what reads a stopped node's
    /// data directory reads the copy too, and returns the copy opened read-only.
    pub fn backup_into(&self, to: &Path) -> Result<StateStore> {
        let root = layout::state_root(to);
        fs::create_dir_all(&root).map_err(Error::io(&root))?;
        let name = generation_name(1);
        self.current().checkpoint(&root.join(&name))?;
        layout::write_atomic(&root.join(CURRENT), name.as_bytes())?;
        layout::sync_dir(to)?;
        StateStore::open_read_only(&root.join(name))
    }

    /// Copies the state of a backup made by [`StateDir::backup_into`] into the data
    /// directory `data_dir`, which must hold no state yet, and opens it.
    pub fn restore_from(backup: &Path, data_dir: &Path) -> Result<StateStore> {
        let name =
            Self::current_name(&layout::state_root(backup))?.ok_or_else(|| Error::Layout {
                path: backup.to_path_buf(),
                reason: "no state/CURRENT: not a Bulwark backup".into(),
            })?;
        let root = layout::state_root(data_dir);
        if Self::current_name(&root)?.is_some() {
            return Err(Error::Layout {
                path: root,
                reason: "already holds a state: restore only into an empty data directory".into(),
            });
        }
        let dir = root.join(&name);
        snapshot::link_or_copy_tree(&layout::state_root(backup).join(&name), &dir)?;
        layout::write_atomic(&root.join(CURRENT), name.as_bytes())?;
        StateStore::open(&dir)
    }

    /// The live state.
    pub fn current(&self) -> Arc<StateStore> {
        self.current.read().expect("state lock").clone()
    }

    /// Replaces the live state with the checkpoint in `checkpoint` (left untouched).
    pub fn install(&self, checkpoint: &Path) -> Result<Arc<StateStore>> {
        let mut current = self.current.write().expect("state lock");
        let old_dir = current.dir().to_path_buf();
        let next = old_dir
            .file_name()
            .and_then(|n| generation_number(&n.to_string_lossy()))
            .unwrap_or(0)
            + 1;
        let name = generation_name(next);
        let dir = self.root.join(&name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        snapshot::link_or_copy_tree(checkpoint, &dir)?;
        let store = Arc::new(StateStore::open(&dir)?);
        layout::write_atomic(&self.root.join(CURRENT), name.as_bytes())?;
        let old = std::mem::replace(&mut *current, store.clone());
        drop(current);
        // Readers may still hold the old generation; if so, the next start removes it.
        if Arc::into_inner(old).is_some() {
            fs::remove_dir_all(&old_dir).map_err(Error::io(&old_dir))?;
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn signed_checkpoints_expose_a_rewritten_and_rechained_history() {
        use crate::event::ChainCheckpoint;
        use ring::signature::KeyPair;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let ops = [note(1, "a"), note(2, "b")];
        store.apply(&[(1, &ops[..])], b"1").unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let (seq, hash) = store.chain_head();
        let checkpoint = ChainCheckpoint {
            seq,
            hash,
            node: 3,
            public_key: key.public_key().as_ref().to_vec(),
            signature: key
                .sign(&ChainCheckpoint::message(seq, &hash))
                .as_ref()
                .to_vec(),
        };
        let signed = Op {
            id: 3,
            time_ms: 1_700_000_000_003,
            node: 3,
            command: Command::Record(EventKind::ChainCheckpoint(Box::new(checkpoint))),
        };
        let ops = [signed, note(4, "c")];
        store.apply(&[(2, &ops[..])], b"2").unwrap();
        let report = store.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checkpoints, 1);
        assert_eq!(
            report.signers,
            vec![format!("3:{}", hex::encode(key.public_key().as_ref()))]
        );
        let json = store.event(3).unwrap().unwrap().to_json();
        assert_eq!(json["type"], "audit.checkpoint");
        assert_eq!(json["checkpoint"]["seq"], 2);
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
        assert_eq!(report.first_bad_seq, Some(3));
        assert!(
            report.problem.as_deref().unwrap().contains("rewritten"),
            "{report:?}"
        );

        // The checkpoint re-made for the new history without the key: a bad signature.
        let forged_hash = store.event(2).unwrap().unwrap().hash;
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
    }

    #[test]
    fn purges_remove_the_oldest_events_and_their_postings_and_the_chain_verifies_after() {
        let dir = tempfile::tempdir().unwrap();
        let purge = |id: u128, before_seq: u64, max: u32| Op {
            id,
            time_ms: 1_700_000_000_000,
            node: 1,
            command: Command::PurgeEvents(Box::new(crate::event::EventPurge {
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
            command: Command::PurgeEvents(Box::new(crate::event::EventPurge {
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
        let received = crate::message::tests::sample();
        let id = received.message_id;
        let accept = Op {
            id: id.0,
            time_ms: 1_764_300_000_005,
            node: 2,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: crate::message::tests::verdict(received.message_id),
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

    #[test]
    fn quarantined_messages_are_released_to_the_queue_or_deleted_once_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        // Three quarantined messages, a second apart; the second from another sender.
        let accept = |n: u128| {
            let mut received = crate::message::tests::sample();
            received.message_id = MessageId::new(1_764_300_000_000 + n as i64 * 1000, n);
            if n == 2 {
                received.envelope.mail_from = "mallory@bad.test".into();
            }
            let mut verdict = crate::message::tests::verdict(received.message_id);
            verdict.action = Action::Quarantine;
            verdict.reason = if n == 3 {
                "malware: EICAR"
            } else {
                "score 12.0"
            }
            .into();
            Op {
                id: n,
                time_ms: 1_764_300_000_000 + n as i64 * 1000,
                node: 1,
                command: Command::AcceptMessage(Box::new(AcceptedMessage {
                    verdict,
                    received,
                    body: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
                })),
            }
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
    fn a_batch_that_quarantines_and_releases_or_expires_acts_as_separate_batches_would() {
        let accept = |n: u128| {
            let mut received = crate::message::tests::sample();
            received.message_id = MessageId::new(1_764_300_000_000, n);
            received.envelope.eight_bit = false;
            let mut verdict = crate::message::tests::verdict(received.message_id);
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
    fn leases_and_reports_drive_the_queue_within_and_across_batches() {
        use crate::message::{DeliveryReport, RecipientOutcome, RecipientResult};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let received = crate::message::tests::sample();
        let id = received.message_id;
        let op = |n: u128, node: u64, time_ms: i64, command: Command| Op {
            id: 1000 + n,
            time_ms,
            node,
            command,
        };
        let lease = |until_ms| {
            Command::Delivery(Box::new(DeliveryCommand::Lease {
                message_id: id,
                until_ms,
            }))
        };
        let accept = Op {
            id: id.0,
            time_ms: 100,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: crate::message::tests::verdict(received.message_id),
                received,
                body: b"body".to_vec(),
            })),
        };
        // Accepted and leased twice in one batch: the second lease sees the first.
        let first = [accept, op(1, 1, 110, lease(500)), op(2, 2, 120, lease(600))];
        let results = store.apply(&[(1, &first[..])], b"1").unwrap();
        assert_eq!(results[0][1].refused, None);
        assert!(results[0][2].refused.is_some());
        assert_eq!(store.due_deliveries(2, 130, 0, 10).unwrap(), vec![]);
        assert_eq!(store.due_deliveries(1, 130, 0, 10).unwrap().len(), 1);
        // Node 2 takes over once node 1's lease has run out and the takeover delay
        // has passed.
        assert_eq!(store.due_deliveries(2, 500, 1000, 10).unwrap(), vec![]);
        assert_eq!(store.due_deliveries(2, 1100, 1000, 10).unwrap().len(), 1);
        // A retried refused lease is still refused.
        let again = store
            .apply(&[(2, &[op(2, 2, 120, lease(600))][..])], b"2")
            .unwrap();
        assert!(again[0][0].duplicate && again[0][0].refused.is_some());
        let report = Command::Delivery(Box::new(DeliveryCommand::Report {
            report: DeliveryReport {
                message_id: id,
                next_hop: "127.0.0.1:2600".into(),
                tls: None,
                results: vec![RecipientResult {
                    address: "bob@example.test".into(),
                    reply: "250 2.0.0 Ok".into(),
                    outcome: RecipientOutcome::Delivered,
                }],
                duration_ms: 4,
                release_lease: true,
            },
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
    fn a_failing_report_queues_its_bounce_with_the_null_sender_once() {
        use crate::message::{DeliveryReport, RecipientOutcome, RecipientResult};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = state.current();
        let received = crate::message::tests::sample();
        let (id, sender) = (received.message_id, received.envelope.mail_from.clone());
        let rcpt = received.envelope.rcpt_to[0].clone();
        let accept = Op {
            id: id.0,
            time_ms: 100,
            node: 1,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: crate::message::tests::verdict(received.message_id),
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

        let other = crate::message::tests::sample();
        let other_id = MessageId(other.message_id.0 + 1);
        let mut received = other;
        received.message_id = other_id;
        let accept = Op {
            id: other_id.0,
            time_ms: 300,
            node: 2,
            command: Command::AcceptMessage(Box::new(AcceptedMessage {
                verdict: crate::message::tests::verdict(received.message_id),
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
            let mut received = crate::message::tests::sample();
            received.message_id = MessageId::new(1_764_300_000_000 + n as i64, n);
            received.envelope.mail_from = from.into();
            received.envelope.rcpt_to = to.iter().map(|t| t.to_string()).collect();
            Op {
                id: received.message_id.0,
                time_ms: 100,
                node: 1,
                command: Command::AcceptMessage(Box::new(AcceptedMessage {
                    verdict: crate::message::tests::verdict(received.message_id),
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
                DeliveryCommand::Lease {
                    message_id: ids[0],
                    until_ms: 1_000,
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
            .due_deliveries(1, 400, 0, 10)
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
            .due_deliveries(1, 500, 0, 10)
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
    fn events_of_a_message_come_from_the_index_in_order_and_old_stores_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let accept = |n: u128, seed: u128| {
            let mut received = crate::message::tests::sample();
            received.message_id = MessageId(seed);
            Op {
                id: n,
                time_ms: 1_764_300_000_000 + n as i64,
                node: 1,
                command: Command::AcceptMessage(Box::new(AcceptedMessage {
                    verdict: crate::message::tests::verdict(received.message_id),
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
            let mut received = crate::message::tests::sample();
            received.message_id = MessageId::new(base, n + 1);
            received.envelope.mail_from = senders[i % senders.len()].into();
            received.envelope.rcpt_to = (0..1 + i % 3)
                .map(|k| recipients[(i + k) % recipients.len()].to_string())
                .collect();
            received.client.ip = format!("192.0.2.{}", i % 7).parse().unwrap();
            received.action = actions[i % actions.len()];
            let mut verdict = crate::message::tests::verdict(received.message_id);
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
}

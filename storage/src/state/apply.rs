//! One batch of Raft entries applied: each operation checked against the operation ids
//! already applied, handed to its rule, its events chained and indexed, and
//! everything the batch changed written in one atomic RocksDB write.

use std::collections::HashMap;

use bulwark_model::rules::export::ExportPosition;
use bulwark_model::rules::{self, Changes, Outcome, Write};
use rocksdb::WriteBatch;

use super::{
    unlogged, AppliedCounts, ChainHead, StateStore, META_BODIES_DROPPED, META_CHAIN,
    META_EVENT_CLOCK, META_EXPORT_CURSOR, META_EXPORT_SHIPPED, META_FEATURE_LEVEL, META_PURGED,
    META_RAFT,
};
use crate::bayes::{self, BayesClass, BayesLesson, LessonBatch};
use crate::event::{Command, Event, EventKind, Hash, Op, OpResult, StoredEvent};
use crate::flow::FlowBatch;
use crate::index::{EventClock, Indexer};
use crate::layout::cf;
use crate::message::PolicyRejection;
use crate::user::{UserAction, WRONG_CREDENTIALS};
use crate::{codec, Error, Result};
use crate::{feature, policy, recipient, signer, token, user};

/// One batch being applied: what the rules changed and what the engine keeps beside
/// it. Reads of the rules fall through [`Changes`] to the store.
struct Batch<'s, 'a> {
    write: WriteBatch,
    indexer: Indexer<'s>,
    /// The event index's clock before the batch.
    clock: EventClock,
    head: ChainHead,
    changes: Changes<'a>,
    /// Results of the operations applied by this batch, by operation id.
    done: HashMap<u128, OpResult>,
    counted: AppliedCounts,
    lessons: Option<LessonBatch>,
    /// Exporters' positions moved by this batch, by exporter.
    cursors: HashMap<String, ExportPosition>,
    /// Where the log starts after this batch's purges (`None`: not purged by it).
    purged: Option<(u64, Hash)>,
    /// Events this batch records, kept when it also purges: a purge reaches every
    /// event before it in the log, whichever batches the entries came in.
    recorded: Option<HashMap<u64, StoredEvent>>,
    /// The last Raft index of this batch whose entry dropped a quarantined body.
    dropped: Option<u64>,
    /// The cluster's active feature level once raised by this batch.
    feature_level: Option<u32>,
    /// The mail flow counts of the events it records.
    flow: FlowBatch,
}

impl StateStore {
    /// Applies entries `(raft index, operations)` in order and stores `applied` (the
    /// caller's record of what has been applied) in the same batch. Returns one result
    /// per operation, per entry.
    pub fn apply(&self, entries: &[(u64, &[Op])], applied: &[u8]) -> Result<Vec<Vec<OpResult>>> {
        let mut batch = self.batch(entries);
        let mut results = Vec::with_capacity(entries.len());
        for (raft_index, ops) in entries {
            let mut entry_results = Vec::with_capacity(ops.len());
            for op in ops.iter() {
                let result = match self.already_applied(op.id, &batch.done)? {
                    Some(done) => done,
                    None => {
                        let written = batch.changes.writes.len();
                        let (kinds, refused) = self.execute(&mut batch, op)?;
                        if batch.changes.writes[written..]
                            .iter()
                            .any(|w| matches!(w, Write::DropBody(_)))
                        {
                            batch.dropped = Some(*raft_index);
                        }
                        self.record(&mut batch, *raft_index, op, kinds, refused)?
                    }
                };
                entry_results.push(result);
            }
            results.push(entry_results);
        }
        self.commit(batch, applied)?;
        Ok(results)
    }

    fn batch<'a>(&self, entries: &[(u64, &'a [Op])]) -> Batch<'_, 'a> {
        let clock = self
            .clock
            .lock()
            .expect("event clock lock")
            .unwrap_or_default();
        let purging = entries.iter().any(|(_, ops)| {
            ops.iter()
                .any(|op| matches!(op.command, Command::PurgeEvents(_)))
        });
        Batch {
            write: WriteBatch::default(),
            indexer: Indexer::new(self.cf(cf::INDEX), clock),
            clock,
            head: *self.head.lock().expect("chain head lock"),
            changes: Changes::default(),
            done: HashMap::new(),
            counted: AppliedCounts::default(),
            lessons: None,
            cursors: HashMap::new(),
            purged: None,
            recorded: purging.then(HashMap::new),
            dropped: None,
            feature_level: None,
            flow: FlowBatch::default(),
        }
    }

    /// Operation `op` by its rule: the events to record and, when refused, why.
    fn execute<'a>(&self, batch: &mut Batch<'_, 'a>, op: &'a Op) -> Result<Outcome> {
        let seq = batch.head.next_seq;
        let changes = &mut batch.changes;
        Ok(match &op.command {
            Command::Record(kind) => (vec![kind.clone()], None),
            Command::AcceptMessage(message) => {
                (rules::accept::accept(changes, message, None, op, seq), None)
            }
            Command::AcceptLeased { message, lease_ms } => (
                rules::accept::accept(changes, message, Some(*lease_ms), op, seq),
                None,
            ),
            Command::RejectMessage(rejected) => (
                vec![
                    EventKind::ScanVerdict(Box::new(rejected.verdict.clone())),
                    EventKind::MessageRejected(Box::new(rejected.rejection.clone())),
                ],
                None,
            ),
            Command::RejectJudged(rejected) => (
                vec![
                    EventKind::ScanVerdict(Box::new(rejected.verdict.clone())),
                    EventKind::PolicyRejected(Box::new(PolicyRejection {
                        rejection: rejected.rejection.clone(),
                        header_from: rejected.header_from.clone(),
                    })),
                ],
                None,
            ),
            Command::Delivery(command) => rules::queue::delivery(changes, self, command, op, seq)?,
            Command::Quarantine(command) => rules::quarantine::decide(changes, self, command, op)?,
            Command::ExpireQuarantine(expiry) => {
                (rules::quarantine::expire(changes, self, expiry)?, None)
            }
            Command::Token(command) => rules::tokens::token(changes, self, command)?,
            Command::User(command) => rules::users::user(changes, self, command, op)?,
            Command::TrustSigner(command) => rules::signers::trust(changes, self, command, seq)?,
            Command::ChangePolicy(change) => rules::policy::change(changes, self, change, op)?,
            Command::Recipient(command) => rules::recipients::act(changes, self, command, op)?,
            Command::Digest(digest) => rules::recipients::digest(changes, self, digest, op, seq)?,
            Command::LinkKey { key } => rules::recipients::link_key(changes, self, key)?,
            Command::TrainBayes(lesson) => {
                let level = batch.feature_level.unwrap_or_else(|| self.feature_level());
                let day = (level >= feature::BAYES_EXPIRY).then(|| bayes::day_of(op.time_ms));
                (vec![self.learn(&mut batch.lessons, lesson, day)?], None)
            }
            Command::ExpireBayes(expiry) => {
                let memory = self.bayes.read().expect("bayes lock");
                let lessons = batch
                    .lessons
                    .get_or_insert_with(|| LessonBatch::new(&memory));
                let expired = lessons.expire(&memory, expiry);
                let events = (expired.removed > 0).then_some(EventKind::BayesExpired(expired));
                (events.into_iter().collect(), None)
            }
            Command::PurgeEvents(purge) => {
                let no_events = HashMap::new();
                let recorded = batch.recorded.as_ref().unwrap_or(&no_events);
                let kind = self.purge(
                    &mut batch.write,
                    &mut batch.indexer,
                    &mut batch.purged,
                    purge,
                    (seq - 1, recorded),
                )?;
                (kind.into_iter().collect(), None)
            }
            Command::ExportCursor { exporter, seq: to } => {
                let current = self.batch_export_position(batch, exporter)?;
                let to = (*to).min(seq - 1).max(current.seq);
                if to != current.seq {
                    let moved = ExportPosition { seq: to, ..current };
                    batch.cursors.insert(exporter.clone(), moved);
                }
                (Vec::new(), None)
            }
            Command::ExportProgress(progress) => {
                let current = self.batch_export_position(batch, &progress.exporter)?;
                let (moved, events) = rules::export::advance(current, progress, seq - 1);
                if let Some(moved) = moved {
                    batch.cursors.insert(progress.exporter.clone(), moved);
                }
                (events, None)
            }
            Command::RaiseFeatureLevel { level } => {
                let current = batch.feature_level.unwrap_or_else(|| self.feature_level());
                if let Some(raised) = bulwark_model::feature::raised(current, *level) {
                    batch.feature_level = Some(raised);
                }
                (Vec::new(), None)
            }
        })
    }

    /// Exporter `name`'s position as this batch has left it so far.
    fn batch_export_position(&self, batch: &Batch<'_, '_>, name: &str) -> Result<ExportPosition> {
        match batch.cursors.get(name) {
            Some(position) => Ok(*position),
            None => self.export_position(name),
        }
    }

    /// Chains, stores and indexes the events `kinds` of operation `op`, and returns
    /// the operation's result.
    fn record(
        &self,
        batch: &mut Batch<'_, '_>,
        raft_index: u64,
        op: &Op,
        kinds: Vec<EventKind>,
        refused: Option<String>,
    ) -> Result<OpResult> {
        let mut last = None;
        for kind in kinds {
            let head = batch.head;
            let event = Event {
                seq: head.next_seq,
                time_ms: op.time_ms,
                node: op.node,
                raft_index,
                op_id: op.id,
                kind,
            };
            let hash = event.chain_hash(&head.hash)?;
            let stored = StoredEvent {
                event,
                prev_hash: head.hash,
                hash,
            };
            batch.write.put_cf(
                self.cf(cf::EVENTS),
                head.next_seq.to_be_bytes(),
                codec::encode(&stored)?,
            );
            batch.indexer.add(&mut batch.write, &stored);
            batch.flow.count(&stored);
            let kind = &stored.event.kind;
            *batch.counted.events.entry(kind.type_name()).or_default() += 1;
            if let EventKind::ScanVerdict(v) = kind {
                *batch.counted.verdicts.entry(v.action.as_str()).or_default() += 1;
            }
            if let Some(recorded) = &mut batch.recorded {
                recorded.insert(head.next_seq, stored);
            }
            last = Some((head.next_seq, hash));
            batch.head = ChainHead {
                next_seq: head.next_seq + 1,
                hash,
            };
        }
        let (seq, hash) = match last {
            Some((seq, hash)) => {
                batch
                    .write
                    .put_cf(self.cf(cf::OP_IDS), op.id.to_be_bytes(), seq.to_be_bytes());
                (seq, hash)
            }
            // Nothing recorded (a cursor): applying it again changes nothing.
            None => (batch.head.next_seq - 1, batch.head.hash),
        };
        let result = OpResult {
            seq,
            hash,
            duplicate: false,
            refused,
        };
        batch.done.insert(op.id, result.clone());
        Ok(result)
    }

    /// Writes everything `batch` changed, with `applied`, in one write, then updates
    /// what is kept in memory (chain head, depths, counts, Bayes).
    fn commit(&self, batch: Batch<'_, '_>, applied: &[u8]) -> Result<()> {
        let Batch {
            mut write,
            indexer,
            clock,
            head,
            changes,
            counted,
            lessons,
            cursors,
            purged,
            dropped,
            feature_level,
            flow,
            ..
        } = batch;
        // How the batch changes the number of queued and quarantined messages.
        let mut depth_change = (0i64, 0i64);
        for (id, record) in &changes.quarantine {
            // The stored record: what the depth and the address index move from.
            let stored = self.quarantine_record(*id)?;
            depth_change.1 += i64::from(record.is_some()) - i64::from(stored.is_some());
            super::held::update(&self.db, &mut write, stored.as_ref(), record.as_ref());
        }
        let mut due_added = Vec::new();
        for (id, entry) in &changes.queue {
            // The stored record: what the depth and the due index move from.
            let stored = self.queue_record(*id)?;
            depth_change.0 += i64::from(entry.is_some()) - i64::from(stored.is_some());
            let (old, new) = (stored.as_ref(), entry.as_ref());
            super::due::update(&self.db, &mut write, old, new, &mut due_added);
        }
        self.write_changes(&mut write, changes)?;
        flow.write(&self.db, self.cf(cf::FLOW), &mut write)?;
        if let Some(lessons) = &lessons {
            let bayes_cf = self.cf(cf::BAYES);
            // A day row exists exactly when the token has a day (above 0).
            let memory = self.bayes.read().expect("bayes lock");
            for (token, t) in lessons.rows() {
                let (key, day_key) = (bayes::token_key(token), bayes::day_key(token));
                let stored_day = memory.token(token).day;
                if (t.spam, t.ham) == (0, 0) {
                    write.delete_cf(bayes_cf, key);
                } else {
                    write.put_cf(bayes_cf, key, codec::encode(&(t.spam, t.ham))?);
                }
                let day = if (t.spam, t.ham) == (0, 0) { 0 } else { t.day };
                if day > 0 && day != stored_day {
                    write.put_cf(bayes_cf, day_key, day.to_be_bytes());
                } else if day == 0 && stored_day > 0 {
                    write.delete_cf(bayes_cf, day_key);
                }
            }
            drop(memory);
            for (digest, class) in &lessons.seen {
                let key = bayes::message_key(digest);
                match class {
                    Some(class) => write.put_cf(bayes_cf, key, codec::encode(class)?),
                    None => write.delete_cf(bayes_cf, key),
                }
            }
            write.put_cf(
                bayes_cf,
                bayes::TOTALS_KEY,
                codec::encode(&lessons.totals())?,
            );
        }
        let meta = self.cf(cf::META);
        if let Some(purged) = &purged {
            write.put_cf(meta, META_PURGED, codec::encode(purged)?);
        }
        if let Some(index) = dropped {
            write.put_cf(meta, META_BODIES_DROPPED, index.to_be_bytes());
        }
        for (exporter, position) in &cursors {
            write.put_cf(
                meta,
                format!("{META_EXPORT_CURSOR}{exporter}"),
                position.seq.to_be_bytes(),
            );
            write.put_cf(
                meta,
                format!("{META_EXPORT_SHIPPED}{exporter}"),
                position.shipped.to_be_bytes(),
            );
        }
        if let Some(level) = feature_level {
            write.put_cf(meta, META_FEATURE_LEVEL, level.to_be_bytes());
        }
        write.put_cf(meta, META_CHAIN, codec::encode(&head)?);
        write.put_cf(meta, META_RAFT, applied);
        if indexer.clock != clock {
            write.put_cf(meta, META_EVENT_CLOCK, codec::encode(&indexer.clock)?);
            // Before the write: a query meanwhile may widen its time range, never
            // narrow it past an event just written.
            *self.clock.lock().expect("event clock lock") = Some(indexer.clock);
        }
        self.db.write_opt(write, &unlogged())?;
        if let Some(level) = feature_level {
            // Flushed at once (a raise is rare): a node that restarts on an older
            // release must find the level it applied on disk, and refuse to start,
            // rather than meet it again only while applying its log.
            self.flush_all()?;
            self.feature_level
                .store(level, std::sync::atomic::Ordering::Release);
        }
        self.due_floors.added(&due_added);
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
        Ok(())
    }

    /// The rules' changes into `write`: bodies, tokens, users, sessions, signers and
    /// policies in the order written, then the quarantine and queue records (a message
    /// leaving the queue takes its body).
    fn write_changes(&self, write: &mut WriteBatch, changes: Changes<'_>) -> Result<()> {
        let (bodies, tokens) = (self.cf(cf::BODIES), self.cf(cf::TOKENS));
        for change in changes.writes {
            match change {
                Write::Body(id, body) => write.put_cf(bodies, id.key(), codec::encode_bytes(body)),
                Write::DropBody(id) => write.delete_cf(bodies, id.key()),
                Write::Token(token) => {
                    let record = codec::encode(&token)?;
                    write.put_cf(tokens, token::digest_key(&token.digest), &record);
                    write.put_cf(tokens, token::name_key(&token.name), &record);
                }
                Write::DropToken(token) => {
                    write.delete_cf(tokens, token::digest_key(&token.digest));
                    write.delete_cf(tokens, token::name_key(&token.name));
                    write.put_cf(tokens, token::retired_key(&token.name), []);
                }
                Write::User(person) => write.put_cf(
                    tokens,
                    user::user_key(&person.name),
                    codec::encode(&person)?,
                ),
                Write::DropUser(name) => {
                    write.delete_cf(tokens, user::user_key(&name));
                    write.put_cf(tokens, user::retired_user_key(&name), []);
                }
                Write::Session(session) => write.put_cf(
                    tokens,
                    user::session_key(&session.digest),
                    codec::encode(&session)?,
                ),
                Write::DropSession(digest) => write.delete_cf(tokens, user::session_key(&digest)),
                Write::Signers(node, signers) => write.put_cf(
                    self.cf(cf::META),
                    signer::key(node),
                    codec::encode(&signers)?,
                ),
                Write::Policy(version) => {
                    let meta = self.cf(cf::META);
                    write.put_cf(meta, policy::key(version.version), codec::encode(&version)?);
                    write.put_cf(meta, policy::CURRENT_KEY, version.version.to_be_bytes());
                }
                Write::RecipientLists(recipient, lists) => write.put_cf(
                    tokens,
                    recipient::lists_key(&recipient),
                    codec::encode(&lists)?,
                ),
                Write::LinkSpent(id, at) => {
                    write.put_cf(tokens, recipient::spent_key(&id), codec::encode(&at)?)
                }
                Write::LinkKey(key) => {
                    write.put_cf(tokens, recipient::LINK_KEY, codec::encode(&key)?)
                }
                Write::DigestThrough(recipient, mark) => write.put_cf(
                    tokens,
                    recipient::digest_key(&recipient),
                    codec::encode(&mark)?,
                ),
            }
        }
        for (id, record) in &changes.quarantine {
            match record {
                Some(record) => {
                    write.put_cf(self.cf(cf::QUARANTINE), id.key(), codec::encode(record)?)
                }
                None => write.delete_cf(self.cf(cf::QUARANTINE), id.key()),
            }
        }
        for (id, entry) in changes.queue {
            match entry {
                Some(entry) => write.put_cf(self.cf(cf::QUEUE), id.key(), codec::encode(&entry)?),
                None => {
                    write.delete_cf(self.cf(cf::QUEUE), id.key());
                    // Its body goes with it, unless other recipients' copies of the
                    // message are still held.
                    let held = match changes.quarantine.get(&id) {
                        Some(record) => record.is_some(),
                        None => self.quarantine_record(id)?.is_some(),
                    };
                    if !held {
                        write.delete_cf(bodies, id.key());
                    }
                }
            }
        }
        Ok(())
    }

    /// +1 if `id` becomes present in column family `name`, -1 if it leaves it, else 0.
    /// A Bayesian lesson on top of the batch's earlier ones.
    fn learn(
        &self,
        lessons: &mut Option<LessonBatch>,
        lesson: &BayesLesson,
        day: Option<u32>,
    ) -> Result<EventKind> {
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
        let trained = lessons.apply(&memory, lesson, previous, day);
        Ok(EventKind::BayesTrained(Box::new(trained)))
    }

    /// The result of operation `id` if it was applied before, in this batch or an
    /// earlier one: applying it again changes nothing.
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
            EventKind::RecipientActed(r) => r.refused,
            // A refused sign-in; a wrong password is recorded, not refused.
            EventKind::UserChanged(u) if u.action == UserAction::SignInFailed => {
                u.refused.filter(|reason| reason != WRONG_CREDENTIALS)
            }
            _ => None,
        };
        Ok(Some(OpResult {
            seq,
            hash: stored.hash,
            duplicate: true,
            refused,
        }))
    }
}

//! The state database: the event log, message bodies and the projections built from
//! events (queue, quarantine, tokens, console users and sessions, Bayesian counts,
//! indexes), one generation at a time.
//!
//! What each operation does to the records is decided by the rules in
//! [`bulwark_model::rules`]; this module is the engine around them:
//! - [`apply`]: one batch of Raft entries into one atomic RocksDB write;
//! - [`purge`]: the log's retention, which removes events with their postings;
//! - [`reads`]: lookups and paged listings for the API and the delivery workers,
//!   with the listings' [`filters`];
//! - [`verify`]: the walk of the hash chain and its signed checkpoints;
//! - [`generations`]: the live generation and its replacement by a snapshot;
//! - [`erase`]: dropped quarantined bodies rewritten out of the database's files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};

use bulwark_model::rules::Stored;
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::bayes::{self, BayesCounts};
use crate::event::{Event, EventKind, Hash, StoredEvent};
use crate::index::{self, EventClock};
use crate::layout::{self, cf};
use crate::message::{Envelope, MessageId, QuarantineRecord, QueueRecord};
use crate::policy::PolicyVersion;
use crate::signer::Signers;
use crate::token::{self, ApiToken};
use crate::user::{ConsoleUser, Session};
use crate::{codec, Error, Result};

mod apply;
mod due;
mod erase;
mod filters;
mod generations;
mod held;
mod purge;
mod reads;
#[cfg(test)]
mod tests;
mod verify;

pub(crate) use filters::address_matches;
pub use filters::{QuarantineFilter, QueueFilter};
pub use generations::StateDir;

const META_CHAIN: &str = "chain";
const META_RAFT: &str = "raft_applied";
/// Written by an older build: the index of events by message alone.
const META_MESSAGE_INDEX: &str = "index_by_message";
/// The layout version of a whole [`index`] of the events (absent: to be built).
const META_INDEX: &str = "index_events";
const INDEX_VERSION: u8 = 1;
/// The [`index::EventClock`] as of the last applied batch.
const META_EVENT_CLOCK: &str = "event_clock";
/// Present once the queue is indexed by due time (`due.rs`).
const META_DUE_INDEX: &str = "due_index";
/// Present once the quarantine is indexed by address (`held.rs`).
const META_HELD_INDEX: &str = "held_index";
/// Present once the mail flow is counted (`crate::flow`).
const META_FLOW: &str = "flow_counts";
/// Present once the names of revoked tokens are kept (`token::retired_key`).
const META_REVOKED_NAMES: &str = "revoked_token_names";
/// The last event removed by the log's retention and its hash: `(seq, hash)`.
const META_PURGED: &str = "events_purged";
/// The last Raft index whose entry dropped a quarantined body (u64 BE), written by
/// apply in the entry's batch.
const META_BODIES_DROPPED: &str = "bodies_dropped";
/// The Raft index up to which this node erased dropped bodies from its files (u64
/// BE): node-local bookkeeping, written by [`StateStore::mark_erased`].
const META_BODIES_ERASED: &str = "bodies_erased";
/// Prefix of the keys holding each exporter's cursor (`export_cursor/NAME`, u64 BE).
const META_EXPORT_CURSOR: &str = "export_cursor/";
/// Prefix of the keys holding the number of records each exporter has shipped
/// (`export_shipped/NAME`, u64 BE; absent: none numbered yet).
const META_EXPORT_SHIPPED: &str = "export_shipped/";
/// The cluster's active feature level (u32 BE; absent: [`bulwark_model::feature::BASE`]),
/// written by apply in the batch of the entry that raised it.
const META_FEATURE_LEVEL: &str = "feature_level";

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

/// One generation of the state database.
///
/// To ensure correctness:
/// - [`StateStore::apply`] writes the events, the projections, the chain head and the
///   caller's applied-state record (Raft's last applied log id and membership) in one
///   `WriteBatch`: after a crash the state is exactly that of some applied prefix,
///   and Raft re-applies the rest from its log;
/// - that batch skips the WAL ([`unlogged`]): the Raft log already holds durably
///   what it carries, message bodies above all, and writing it twice more (the WAL,
///   then the flush) cost every node a body's worth of disk and CPU per message. A
///   crash loses what no flush has written yet, and every column family is flushed
///   in one step (atomic flush), so what is left is the state of the last flush: an
///   applied prefix again. Raft has those entries still, since it purges its log
///   only behind a snapshot, and a snapshot's checkpoint flushes first. A batch that
///   raises the feature level is flushed at once, so that a release too old for it
///   finds it on disk before it starts;
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
    /// Held while [`StateStore::erase_dropped_bodies`] runs: one at a time.
    erasing: Mutex<()>,
    /// Where the due index's ranges start ([`due::Floors`]).
    due_floors: due::Floors,
    /// The cluster's active feature level as of the last applied batch
    /// ([`StateStore::feature_level`]).
    feature_level: AtomicU32,
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
                opts.set_blob_gc_age_cutoff(erase::BLOB_GC_AGE_CUTOFF);
                // Stored as received, like the blob files (never compressed): whether a
                // deleted body is still on disk can be checked by searching the files
                // for its bytes (`node/tests/quarantine_erasure.rs` does).
                opts.set_compression_type(rocksdb::DBCompressionType::None);
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
        layout::wal_deleted_when_obsolete(&mut opts);
        // Applied batches skip the WAL: the column families must reach the disk
        // together, and their memtables are flushed once they hold 64 MiB in all,
        // which bounds what Raft applies again after a crash.
        opts.set_atomic_flush(true);
        opts.set_db_write_buffer_size(UNFLUSHED_BYTES);
        // RocksDB opens a database only with all its column families: one a later
        // release added (in a snapshot it sent, or data it left) is opened too, and
        // left alone.
        let mut families = cf_descriptors();
        if dir.join("CURRENT").is_file() {
            for name in DB::list_cf(&opts, dir)? {
                if !cf::ALL.contains(&name.as_str()) {
                    families.push(ColumnFamilyDescriptor::new(name, Options::default()));
                }
            }
        }
        let db = DB::open_cf_descriptors(&opts, dir, families)?;
        let meta = cf_handle(&db, cf::META);
        let record =
            layout::check_format(db.get_cf(meta, layout::DATA_FORMAT_KEY)?.as_deref(), dir)?;
        build_index(&db)?;
        build_due_index(&db)?;
        build_flow(&db)?;
        build_held_index(&db)?;
        let store = Self::with_db(db, dir)?;
        store.keep_revoked_names()?;
        // Recorded once every conversion is done: an interrupted one runs again.
        if record {
            store.db.put_cf(
                store.cf(cf::META),
                layout::DATA_FORMAT_KEY,
                layout::DATA_FORMAT.to_be_bytes(),
            )?;
        }
        Ok(store)
    }

    /// Keeps the names of the tokens revoked before revoked names were kept, from the
    /// log's `token.revoked` events (once: the mark is stored with them). A name whose
    /// revocation the log's retention had removed before is not known.
    fn keep_revoked_names(&self) -> Result<()> {
        let meta = self.cf(cf::META);
        if self.db.get_cf(meta, META_REVOKED_NAMES)?.is_some() {
            return Ok(());
        }
        let filter = index::EventFilter {
            type_name: Some("token.revoked".into()),
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        let mut after = 0;
        loop {
            let (events, next) = self.events(&filter, after, 1000)?;
            for stored in events {
                if let EventKind::TokenChanged(t) = stored.event.kind {
                    batch.put_cf(self.cf(cf::TOKENS), token::retired_key(&t.name), []);
                }
            }
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        batch.put_cf(meta, META_REVOKED_NAMES, [1]);
        self.db.write(batch)?;
        Ok(())
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
        let feature_level = match db.get_cf(meta, META_FEATURE_LEVEL)? {
            Some(bytes) => {
                let bytes: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Decode(format!("{META_FEATURE_LEVEL}: {} bytes", bytes.len()))
                })?;
                u32::from_be_bytes(bytes)
            }
            None => bulwark_model::feature::BASE,
        };
        Ok(StateStore {
            db,
            dir: dir.to_path_buf(),
            head: Mutex::new(head),
            clock: Mutex::new(clock),
            depths: Mutex::new(depths),
            bayes: RwLock::new(bayes),
            applied: Mutex::new(AppliedCounts::default()),
            erasing: Mutex::new(()),
            due_floors: due::Floors::default(),
            feature_level: AtomicU32::new(feature_level),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf_handle(&self.db, name)
    }

    /// Where this generation lives.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// The cluster's active feature level as this state records it: the highest level
    /// a `RaiseFeatureLevel` applied here raised it to, [`bulwark_model::feature::BASE`]
    /// when none did. Replicated: every node that applied the same entries, or
    /// installed a snapshot of them, says the same.
    pub fn feature_level(&self) -> u32 {
        self.feature_level.load(Ordering::Acquire)
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

    /// Number of events and the hash of the last one.
    pub fn chain_head(&self) -> (u64, Hash) {
        let head = *self.head.lock().expect("chain head lock");
        (head.next_seq - 1, head.hash)
    }

    /// Writes a consistent point-in-time copy of this database to `dir` (which must not
    /// exist): SST files are hard links, so this is cheap even for a large state.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        layout::sync_dir(dir)?;
        Ok(())
    }
}

/// The most the state's memtables hold before they are flushed: what a crash can
/// lose of the state, and Raft then applies again from its log.
const UNFLUSHED_BYTES: usize = 64 * 1024 * 1024;

/// How an applied batch is written: to the memtables only, never to the WAL (see
/// [`StateStore`]). Durable once flushed: by RocksDB when the memtables fill, by a
/// checkpoint, an erasure, or a clean close.
fn unlogged() -> rocksdb::WriteOptions {
    let mut opts = rocksdb::WriteOptions::default();
    opts.disable_wal(true);
    opts
}

/// What the rules read: the state as the last applied batch left it.
impl Stored for StateStore {
    type Error = Error;

    fn queue_record(&self, id: MessageId) -> Result<Option<QueueRecord>> {
        StateStore::queue_record(self, id)
    }

    fn quarantine_record(&self, id: MessageId) -> Result<Option<QuarantineRecord>> {
        StateStore::quarantine_record(self, id)
    }

    fn token_named(&self, name: &str) -> Result<Option<ApiToken>> {
        StateStore::token_named(self, name)
    }

    fn token_name_retired(&self, name: &str) -> Result<bool> {
        StateStore::token_name_retired(self, name)
    }

    fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>> {
        StateStore::console_user(self, name)
    }

    fn user_name_retired(&self, name: &str) -> Result<bool> {
        StateStore::user_name_retired(self, name)
    }

    fn session(&self, digest: &Hash) -> Result<Option<Session>> {
        StateStore::session(self, digest)
    }

    fn signers(&self, node: u64) -> Result<Signers> {
        StateStore::signers(self, node)
    }

    fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        StateStore::current_policy(self)
    }

    fn recipient_lists(&self, recipient: &str) -> Result<crate::recipient::RecipientLists> {
        StateStore::recipient_lists(self, recipient)
    }

    fn link_spent(&self, id: &Hash) -> Result<Option<i64>> {
        StateStore::link_spent(self, id)
    }

    fn link_key(&self) -> Result<Option<[u8; 32]>> {
        StateStore::link_key(self)
    }

    fn digest_through(&self, recipient: &str) -> Result<Option<crate::recipient::DigestMark>> {
        StateStore::digest_through(self, recipient)
    }

    fn received_envelope(&self, id: MessageId, seq: u64) -> Result<Option<Envelope>> {
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

    fn quarantined_before(
        &self,
        end: MessageId,
        visit: &mut dyn FnMut(QuarantineRecord) -> bool,
    ) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::Start)
        {
            let (key, value) = item?;
            if key.as_ref() >= end.key().as_slice() || !visit(codec::decode(&value)?) {
                break;
            }
        }
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

/// Indexes the queue by due time in a database written before that index (once:
/// the mark is stored with it).
fn build_due_index(db: &DB) -> Result<()> {
    let meta = cf_handle(db, cf::META);
    if db.get_cf(meta, META_DUE_INDEX)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    due::rebuild(db, &mut batch)?;
    batch.put_cf(meta, META_DUE_INDEX, [1]);
    db.write(batch)?;
    Ok(())
}

/// Indexes the quarantine by address in a database written before that index
/// (once: the mark is stored with it).
fn build_held_index(db: &DB) -> Result<()> {
    let meta = cf_handle(db, cf::META);
    if db.get_cf(meta, META_HELD_INDEX)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    held::rebuild(db, &mut batch)?;
    batch.put_cf(meta, META_HELD_INDEX, [1]);
    db.write(batch)?;
    Ok(())
}

/// Counts the mail flow of a database written before the counts (once: the mark is
/// stored after them, so an interrupted count starts over).
fn build_flow(db: &DB) -> Result<()> {
    let meta = cf_handle(db, cf::META);
    if db.get_cf(meta, META_FLOW)?.is_some() {
        return Ok(());
    }
    crate::flow::rebuild(db, cf_handle(db, cf::EVENTS), cf_handle(db, cf::FLOW))?;
    db.put_cf(meta, META_FLOW, [1])?;
    Ok(())
}

/// The `bayes` column family into memory: the totals, then the counts (`w` rows) and
/// the days (`d` rows) walked side by side, both in token order.
fn load_bayes(db: &DB) -> Result<BayesCounts> {
    let cf = cf_handle(db, cf::BAYES);
    let mut counts = BayesCounts::new();
    if let Some(totals) = db.get_cf(cf, bayes::TOTALS_KEY)? {
        counts.set_totals(codec::decode(&totals)?);
    }
    let rows = |prefix: u8| {
        db.iterator_cf(cf, IteratorMode::From(&[prefix], Direction::Forward))
            .take_while(move |item| !matches!(item, Ok((key, _)) if key.first() != Some(&prefix)))
    };
    let token_of = |key: &[u8]| <[u8; 8]>::try_from(&key[1..]).ok().map(u64::from_be_bytes);
    let mut days = rows(b'd').peekable();
    for item in rows(b'w') {
        let (key, value) = item?;
        let Some(token) = token_of(&key) else {
            continue;
        };
        let mut day = 0;
        while let Some(next) = days.peek() {
            let (key, value) = match next {
                Ok(row) => row,
                Err(_) => return Err(days.next().expect("peeked").unwrap_err().into()),
            };
            match token_of(key).cmp(&Some(token)) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    day = <[u8; 4]>::try_from(&**value).map_or(0, u32::from_be_bytes);
                }
                std::cmp::Ordering::Greater => break,
            }
            days.next();
        }
        let (spam, ham) = codec::decode(&value)?;
        counts.set(token, bayes::Token { spam, ham, day });
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

//! openraft's log storage over `bulwark_storage::LogStore`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use bulwark_storage::{codec, LogStore as Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader};

use crate::error::storage_error;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Most bytes of entries returned for one AppendEntries RPC, so that a batch of large
/// entries cannot outlast the RPC timeout (RAFT-NOTES pitfall 1).
const MAX_BYTES_PER_READ: usize = 4 * 1024 * 1024;

/// Seeds an empty log restored from a backup: it starts after `last` (as if purged
/// up to it, which is also committed), with `vote` saved. Synced.
pub(crate) fn seed(store: &Store, last: LogId, vote: Vote) -> bulwark_storage::Result<()> {
    let (purged, committed, vote) = (
        codec::encode(&last)?,
        codec::encode(&Some(last))?,
        codec::encode(&vote)?,
    );
    store.put_metas(
        &[
            (LAST_PURGED, &purged),
            (COMMITTED, &committed),
            (VOTE, &vote),
        ],
        true,
    )
}

/// Raft log storage.
///
/// To ensure correctness:
/// - `save_vote` returns only after the vote is on disk (synced write);
/// - `append` writes the entries in one batch before returning (so they are readable),
///   then a syncer thread fsyncs the WAL and only then fires the callback; entries
///   appended while a sync runs share the next one (group commit);
/// - `truncate` and `purge` are synced writes; the WAL is sequential, so they are
///   durable in submission order with the appends before them.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    syncer: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Last committed index Raft told us about (`u64::MAX`: none yet).
    committed: Arc<AtomicU64>,
    /// Bytes of entries appended since the last snapshot trigger reset it.
    appended: Arc<AtomicU64>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        let (syncer, pending) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_store = store.clone();
        thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_syncer(&sync_store, &pending))
            .expect("spawn the raft log sync thread");
        LogStore {
            store,
            syncer,
            committed: Arc::new(AtomicU64::new(u64::MAX)),
            appended: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes appended to the log, for a snapshot trigger that counts bytes.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    /// The committed index as Raft last saved it, shared for status reports.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn note_committed(&self, committed: Option<LogId>) {
        self.committed
            .store(committed.map_or(u64::MAX, |l| l.index), Ordering::Relaxed);
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> bulwark_storage::Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(storage_error)?
            .map_err(storage_error)
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, StorageError> {
        self.blocking(move |s| Ok(s.get_meta(name)?.map(|b| codec::decode(&b)).transpose()?))
            .await
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(storage_error)?;
        self.blocking(move |s| s.put_meta(name, &bytes, durable))
            .await
    }
}

/// Fsyncs the WAL for every batch of waiting callbacks, then completes them in order.
fn run_syncer(store: &Store, pending: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let result = store.sync();
        for callback in batch {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

fn decode_entries(raw: Vec<(u64, Vec<u8>)>) -> bulwark_storage::Result<Vec<Entry>> {
    let entries: Result<_, _> = raw.iter().map(|(_, bytes)| codec::decode(bytes)).collect();
    Ok(entries?)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.blocking(move |s| decode_entries(s.range(start, end, usize::MAX)?))
            .await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.blocking(move |s| decode_entries(s.range(start, end, MAX_BYTES_PER_READ)?))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(LAST_PURGED).await?;
        let last = self
            .blocking(|s| {
                Ok(s.last()?
                    .map(|(_, b)| codec::decode::<Entry>(&b))
                    .transpose()?)
            })
            .await?;
        let last_log_id = last.map(|e| *e.get_log_id()).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.note_committed(committed);
        // Only a hint that saves re-applying after a restart: no fsync needed.
        self.write_meta(COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta::<Option<LogId>>(COMMITTED).await?.flatten();
        self.note_committed(committed);
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let raw = entries
            .into_iter()
            .map(|e| Ok((e.get_log_id().index, codec::encode(&e)?)))
            .collect::<bulwark_storage::Result<Vec<_>>>()
            .map_err(storage_error)?;
        let bytes: usize = raw.iter().map(|(_, entry)| entry.len()).sum();
        self.appended.fetch_add(bytes as u64, Ordering::Relaxed);
        self.blocking(move |s| s.append(&raw)).await?;
        self.syncer
            .send(callback)
            .map_err(|_| storage_error("the raft log sync thread stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |s| s.truncate_from(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mark = codec::encode(&log_id).map_err(storage_error)?;
        self.blocking(move |s| s.purge_to(log_id.index, LAST_PURGED, &mark))
            .await
    }
}

//! The Raft log database.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, Direction, FlushOptions,
    IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::{layout, Error, Result};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";

/// Raft log entries (index → opaque bytes) and Raft's small persistent values
/// (vote, committed, last purged), in their own RocksDB.
///
/// To ensure correctness:
/// - each mutating call writes one `WriteBatch`; truncate, purge and durable meta
///   writes sync the WAL before returning;
/// - [`LogStore::append`] takes many entries at once and does not sync: the caller
///   calls [`LogStore::sync`] before it reports them stored, and appends made while a
///   sync runs share the next one (group commit);
/// - [`LogStore::purge_to`] records the purge mark in the same batch that deletes the
///   entries, so the log never looks empty without saying what was purged.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    direct_io: bool,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Decode(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// WAL kept before the column families holding it back are flushed.
const MAX_WAL_BYTES: u64 = 128 * 1024 * 1024;

/// Opens the database in `dir`, with direct I/O for flushes and compactions where the
/// filesystem allows it, and says whether it does.
///
/// An entry is written twice: to the WAL, synced, and, once its memtable fills, to
/// an SST, where it stays until a snapshot lets Raft purge it. The SST copy is read
/// again only by a follower catching up, so it need not pass through the page cache:
/// with direct I/O the kernel does not copy every flushed body into it (at 50 KiB a
/// message, that copy was the largest single cost of three nodes on one machine).
/// RocksDB refuses direct I/O at open on a filesystem without it; the database is
/// then opened with buffered writes.
fn open_db(dir: &Path) -> Result<(DB, bool)> {
    let open = |direct_io: bool| {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        // The meta column family is written rarely; without a cap its unflushed
        // entries would keep every WAL file (message bodies included) alive until
        // RocksDB's default cap of several write buffers per column family.
        opts.set_max_total_wal_size(MAX_WAL_BYTES);
        layout::wal_deleted_when_obsolete(&mut opts);
        opts.set_use_direct_io_for_flush_and_compaction(direct_io);
        // Entries uncompressed, as the state's bodies: whether an erased body is still
        // in the log can be checked by searching the files for its bytes.
        let mut log_opts = Options::default();
        log_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        DB::open_cf_descriptors(&opts, dir, cfs)
    };
    match open(true) {
        Ok(db) => Ok((db, true)),
        Err(e)
            if e.kind() == rocksdb::ErrorKind::InvalidArgument
                && e.as_ref().contains("Direct I/O is not supported") =>
        {
            Ok((open(false)?, false))
        }
        Err(e) => Err(e.into()),
    }
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl LogStore {
    /// Opens (creating if needed) the log database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let (db, direct_io) = open_db(dir)?;
        let store = LogStore {
            db: Arc::new(db),
            direct_io,
        };
        if layout::check_format(store.get_meta(layout::DATA_FORMAT_KEY)?.as_deref(), dir)? {
            store.put_meta(
                layout::DATA_FORMAT_KEY,
                &layout::DATA_FORMAT.to_be_bytes(),
                true,
            )?;
        }
        Ok(store)
    }

    /// Whether flushes and compactions write with direct I/O (the filesystem allows it).
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Appends entries (index, bytes) in one batch, readable when this returns but
    /// durable only after the next [`LogStore::sync`] (or any synced write). Indexes
    /// must be contiguous; the caller (Raft) guarantees they follow the last entry.
    pub fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        let mut expected = None;
        for (index, bytes) in entries {
            if let Some(expected) = expected {
                if *index != expected {
                    return Err(Error::LogGap {
                        expected,
                        found: *index,
                    });
                }
            }
            expected = Some(index + 1);
            batch.put_cf(cf, key(*index), bytes);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Fsyncs the WAL: every write made before this call is durable when it returns.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Entries with `start <= index < end`, in order, stopping early once more than
    /// `max_bytes` have been read (at least one entry is always returned if present).
    pub fn range(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = key(start);
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let index = index_of(&k)?;
            if index >= end {
                break;
            }
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push((index, v.into_vec()));
        }
        Ok(out)
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((index_of(&k)?, v.into_vec())))
            }
        }
    }

    /// Removes entries with index >= `from` (conflicting entries a new leader overwrites).
    pub fn truncate_from(&self, from: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), key(from), key(u64::MAX));
        batch.delete_cf(self.cf(CF_LOG), key(u64::MAX));
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Removes entries with index <= `upto`, recording `mark` under `mark_key` in the
    /// same synced batch.
    pub fn purge_to(&self, upto: u64, mark_key: &str, mark: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), mark_key, mark);
        batch.delete_range_cf(self.cf(CF_LOG), key(0), key(upto.saturating_add(1)));
        if upto == u64::MAX {
            batch.delete_cf(self.cf(CF_LOG), key(u64::MAX));
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Rewrites the log's files without the entries up to `upto`, which must have been
    /// purged ([`LogStore::purge_to`]): erasure of what they carried.
    ///
    /// To ensure correctness:
    /// - both column families are flushed, so that the WAL files that held the
    ///   entries are no longer needed and RocksDB deletes them (never archived nor
    ///   recycled: [`layout::wal_deleted_when_obsolete`]);
    /// - the purged range is then compacted down to and including the last level, so
    ///   that no SST keeps the entries or the range tombstone that hid them.
    pub fn erase_purged(&self, upto: u64) -> Result<()> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        let (log, meta) = (self.cf(CF_LOG), self.cf(CF_META));
        self.db.flush_cfs_opt(&[log, meta], &flush)?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(log, None::<&[u8]>, Some(key(upto.saturating_add(1))), &opts);
        Ok(())
    }

    /// The first entry's index, if any.
    pub fn first_index(&self) -> Result<Option<u64>> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start);
        iter.next().map(|item| index_of(&item?.0)).transpose()
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), name)?)
    }

    /// Stores a small value; `durable` syncs it (and every earlier write) to disk
    /// before returning.
    pub fn put_meta(&self, name: &str, value: &[u8], durable: bool) -> Result<()> {
        self.put_metas(&[(name, value)], durable)
    }

    /// Writes several meta values in one batch: all or none.
    pub fn put_metas(&self, values: &[(&str, &[u8])], durable: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (name, value) in values {
            batch.put_cf(self.cf(CF_META), name, value);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(durable);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, vec![i as u8; 10])).collect()
    }

    #[test]
    fn a_log_records_its_data_format_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            log.get_meta(layout::DATA_FORMAT_KEY).unwrap().unwrap(),
            layout::DATA_FORMAT.to_be_bytes()
        );
        log.put_meta(
            layout::DATA_FORMAT_KEY,
            &(layout::DATA_FORMAT + 1).to_be_bytes(),
            true,
        )
        .unwrap();
        log.append(&entries(1..=3)).unwrap();
        drop(log);
        let refused = LogStore::open(dir.path())
            .err()
            .expect("a newer format")
            .to_string();
        assert!(refused.contains("newer Bulwark"), "{refused}");
        // Nothing was changed by the refusal: the newer build still finds its data.
        let db = DB::open_cf(&Options::default(), dir.path(), [CF_LOG, CF_META]).unwrap();
        assert_eq!(
            db.iterator_cf(db.cf_handle(CF_LOG).unwrap(), rocksdb::IteratorMode::Start)
                .count(),
            3
        );
    }

    #[test]
    fn append_range_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        log.append(&entries(1..=10)).unwrap();
        assert_eq!(log.range(3, 6, usize::MAX).unwrap().len(), 3);
        assert_eq!(log.range(1, 11, 25).unwrap().len(), 2, "byte cap");
        assert_eq!(log.range(1, 11, 0).unwrap().len(), 1, "at least one");
        log.truncate_from(8).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 7);
        log.purge_to(4, "purged", b"4").unwrap();
        let left: Vec<u64> = log
            .range(0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(left, vec![5, 6, 7]);
        assert_eq!(log.get_meta("purged").unwrap().unwrap(), b"4");
    }

    #[test]
    fn gaps_are_refused_and_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogStore::open(dir.path()).unwrap();
            log.append(&entries(1..=3)).unwrap();
            let gap = vec![(5, vec![1]), (7, vec![2])];
            assert!(matches!(
                log.append(&gap),
                Err(Error::LogGap {
                    expected: 6,
                    found: 7
                })
            ));
            log.put_meta("vote", b"v", true).unwrap();
            log.sync().unwrap();
        }
        let log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 3);
        assert_eq!(log.get_meta("vote").unwrap().unwrap(), b"v");
    }
}

//! Erasure of dropped quarantined bodies from the state database's files.
//!
//! A RocksDB delete only writes a tombstone: the body stays in the WAL, in the SST or
//! blob file it was written to, and in every checkpoint hard-linking those files,
//! until compaction rewrites them. Apply records the last Raft index whose entry
//! dropped a quarantined body ([`super::META_BODIES_DROPPED`]); an erasure rewrites
//! the files without it and records how far it got ([`super::META_BODIES_ERASED`]).

use rocksdb::{BottommostLevelCompaction, CompactOptions, FlushOptions};

use super::{StateStore, META_BODIES_DROPPED, META_BODIES_ERASED};
use crate::layout::cf;
use crate::{Error, Result};

/// The fraction of the oldest blob files whose live blobs compaction moves to new
/// files (RocksDB's default) in normal running.
pub(super) const BLOB_GC_AGE_CUTOFF: f64 = 0.25;

fn index_of(bytes: Option<Vec<u8>>) -> Result<u64> {
    match bytes {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Decode(format!("erasure mark of {} bytes", bytes.len()))),
    }
}

impl StateStore {
    /// The last Raft index whose entry dropped a quarantined body, if this node has
    /// not erased through it yet.
    pub fn erasure_due(&self) -> Result<Option<u64>> {
        let meta = self.cf(cf::META);
        let dropped = index_of(self.db.get_cf(meta, META_BODIES_DROPPED)?)?;
        let erased = index_of(self.db.get_cf(meta, META_BODIES_ERASED)?)?;
        Ok((dropped > erased).then_some(dropped))
    }

    /// Rewrites this database's files without the bodies dropped so far.
    ///
    /// To ensure correctness:
    /// - every column family is flushed, so that no memtable needs the WAL files
    ///   written before, and RocksDB deletes them (they are never archived nor
    ///   recycled: [`crate::layout::wal_deleted_when_obsolete`]);
    /// - the bodies column family is compacted whole, down to and including its last
    ///   level, so that no SST keeps a dropped value or its tombstone;
    /// - meanwhile compaction moves every live blob (not only those of the oldest
    ///   files), so that each blob file holding a dropped body is left with no
    ///   reference and deleted.
    ///
    /// Checkpoints taken before the call still hold the bodies: the caller replaces
    /// them. Costs a rewrite of every body the database holds.
    pub fn erase_dropped_bodies(&self) -> Result<()> {
        let _one_at_a_time = self.erasing.lock().expect("erasure lock");
        let bodies = self.cf(cf::BODIES);
        let normal = BLOB_GC_AGE_CUTOFF.to_string();
        self.db
            .set_options_cf(bodies, &[("blob_garbage_collection_age_cutoff", "1.0")])?;
        let compacted = self.flush_all().map(|()| {
            let mut opts = CompactOptions::default();
            opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
            self.db
                .compact_range_cf_opt(bodies, None::<&[u8]>, None::<&[u8]>, &opts);
        });
        self.db.set_options_cf(
            bodies,
            &[("blob_garbage_collection_age_cutoff", normal.as_str())],
        )?;
        compacted?;
        // What was written during the compaction no longer pins the older WAL files.
        self.flush_all()
    }

    /// Records that this node's files hold no body dropped up to Raft index `through`.
    /// Synced.
    pub fn mark_erased(&self, through: u64) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(
            self.cf(cf::META),
            META_BODIES_ERASED,
            through.to_be_bytes(),
            &opts,
        )?;
        Ok(())
    }

    pub(super) fn flush_all(&self) -> Result<()> {
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        let families: Vec<_> = cf::ALL.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&families[..], &opts)?;
        Ok(())
    }
}

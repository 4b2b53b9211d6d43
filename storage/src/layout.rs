//! Where a node keeps its files under `data_dir`.
//!
//! ```text
//! data_dir/
//!   node.id            node id and cluster id, written at first boot
//!   raft-log/          RocksDB: Raft log, vote, committed, purge mark
//!   state/CURRENT      name of the live state generation (written atomically)
//!   state/gen-NNNNNN/  RocksDB: events, bodies, projections, last applied
//!   snapshots/         RocksDB checkpoints of the state, one directory each
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The layout of the databases this build writes. Each database records the format
/// it was written in (`data_format` in its meta column family); a build opens formats
/// up to its own and refuses a newer one, so a node rolled back past a format change
/// stops with a clear error instead of misreading its data. A build that changes the
/// format raises it and converts older data when it opens it.
pub const DATA_FORMAT: u32 = 1;
/// The meta key holding a database's format.
pub const DATA_FORMAT_KEY: &str = "data_format";

/// Checks the format a database at `path` recorded (`None`: none yet, it is new or
/// older than formats). Returns whether this build should record its own.
pub fn check_format(stored: Option<&[u8]>, path: &Path) -> Result<bool> {
    let Some(bytes) = stored else {
        return Ok(true);
    };
    let format = <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| Error::Layout {
            path: path.to_path_buf(),
            reason: format!("data_format of {} bytes", bytes.len()),
        })?;
    if format > DATA_FORMAT {
        return Err(Error::Layout {
            path: path.to_path_buf(),
            reason: format!(
                "written by a newer Bulwark (data format {format}); this build reads formats \
                 up to {DATA_FORMAT}: run the newer release"
            ),
        });
    }
    Ok(format < DATA_FORMAT)
}

/// Present while `bulwark restore` seeds a data directory; a node does not start
/// from a directory that holds it (an interrupted restore).
pub fn restore_marker(data_dir: &Path) -> PathBuf {
    data_dir.join("restore-incomplete")
}

pub fn raft_log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft-log")
}

pub fn state_root(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Column families of the state database.
pub mod cf {
    /// Event log: seq (u64 big-endian) → encoded [`crate::StoredEvent`].
    pub const EVENTS: &str = "events";
    /// Operation ids already applied → seq, so a retried proposal is applied once.
    pub const OP_IDS: &str = "op_ids";
    /// Applied log id, membership and chain head.
    pub const META: &str = "sm_meta";
    /// Message bodies by message id (filled by the SMTP ingress).
    pub const BODIES: &str = "bodies";
    /// Delivery queue projection.
    pub const QUEUE: &str = "queue";
    /// Quarantine projection.
    pub const QUARANTINE: &str = "quarantine";
    /// Secondary indexes of the event log (message, sender, recipient, ...).
    pub const INDEX: &str = "index";
    /// The Bayesian classifier's token counts and learned messages
    /// ([`crate::bayes`]).
    pub const BAYES: &str = "bayes";
    /// API tokens by digest and by name ([`crate::token`]), console users by name and
    /// their sessions by digest ([`crate::user`]), and the names of revoked tokens and
    /// removed users.
    pub const TOKENS: &str = "tokens";
    /// The delivery queue by due time (`state/due.rs`).
    pub const DUE: &str = "due";
    /// Mail flow counts by hour and day ([`crate::flow`]).
    pub const FLOW: &str = "flow";
    /// The quarantine by sender and recipient (`state/held.rs`).
    pub const HELD: &str = "held";

    pub const ALL: [&str; 12] = [
        EVENTS, OP_IDS, META, BODIES, QUEUE, QUARANTINE, INDEX, BAYES, TOKENS, DUE, FLOW, HELD,
    ];
}

/// WAL files deleted as soon as no column family needs them: never archived
/// (`WAL_ttl_seconds`, `WAL_size_limit_MB`) nor recycled (a recycled file keeps the
/// old bytes it is not overwritten with). RocksDB's defaults, stated because erasure
/// relies on them: once every memtable holding a write is flushed, the WAL file that
/// held it is gone.
pub fn wal_deleted_when_obsolete(opts: &mut rocksdb::Options) {
    opts.set_wal_ttl_seconds(0);
    opts.set_wal_size_limit_mb(0);
    opts.set_recycle_log_file_num(0);
}

/// Writes `contents` to `path` so that a crash leaves either the old or the new file:
/// temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Layout {
        path: path.to_path_buf(),
        reason: "no parent directory".into(),
    })?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        file.write_all(contents).map_err(Error::io(&tmp))?;
        file.sync_all().map_err(Error::io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(dir)
}

/// Makes a directory's entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

//! Editing a stopped node's state DB behind its back, to prove the audit chain notices.
//!
//! This is the only place in the tests that opens RocksDB. It follows the storage layout
//! the product documents: the live DB is `<data_dir>/state/<name>` where `<name>` is the
//! content of `<data_dir>/state/CURRENT`, and column family `events` maps the sequence
//! number (u64 big-endian) to the encoded event.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rocksdb::{Options, DB};

/// The path of the live state DB inside a node's data dir.
pub fn state_db_path(data_dir: &Path) -> Result<PathBuf> {
    let current = data_dir.join("state").join("CURRENT");
    let name = std::fs::read_to_string(&current)
        .with_context(|| format!("reading {}", current.display()))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name == ".." {
        bail!("{} names no DB: {name:?}", current.display());
    }
    Ok(data_dir.join("state").join(name))
}

/// What [`tamper_event`] changed.
#[derive(Debug)]
pub struct Tampered {
    pub db: PathBuf,
    pub seq: u64,
    pub offset: usize,
    pub old: u8,
    pub new: u8,
    /// Whether the change landed inside one of the given texts (else: the middle byte).
    pub in_text: bool,
}

/// Changes one byte of event `seq` in the stopped node's state DB.
///
/// If the encoded value contains one of `texts`, a letter in the middle of that text is
/// replaced by another ASCII letter (the record still decodes; only its hash is wrong).
/// Otherwise the middle byte of the value is flipped.
pub fn tamper_event(data_dir: &Path, seq: u64, texts: &[String]) -> Result<Tampered> {
    let path = state_db_path(data_dir)?;
    let opts = Options::default();
    let cfs = DB::list_cf(&opts, &path)
        .with_context(|| format!("listing column families of {}", path.display()))?;
    let db = DB::open_cf(&opts, &path, &cfs)
        .with_context(|| format!("opening {} (is the node stopped?)", path.display()))?;
    let cf = db.cf_handle("events").with_context(|| {
        format!(
            "{} has no column family \"events\" (has {cfs:?})",
            path.display()
        )
    })?;
    let key = seq.to_be_bytes();
    let mut value = db
        .get_cf(cf, key)?
        .with_context(|| format!("no event with seq {seq} in {}", path.display()))?;
    if value.is_empty() {
        bail!("event {seq} has an empty value");
    }
    let found = texts
        .iter()
        .filter(|t| t.len() >= 8)
        .find_map(|t| find(&value, t.as_bytes()).map(|at| at + t.len() / 2));
    let (offset, in_text) = match found {
        Some(at) => (at, true),
        None => (value.len() / 2, false),
    };
    let old = value[offset];
    let new = if in_text {
        if old == b'X' {
            b'Y'
        } else {
            b'X'
        }
    } else {
        old ^ 0x01
    };
    value[offset] = new;
    db.put_cf(cf, key, &value)?;
    db.flush_cf(cf)?;
    drop(db);
    Ok(Tampered {
        db: path,
        seq,
        offset,
        old,
        new,
        in_text,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

//! Snapshots: RocksDB checkpoints of the state, kept on disk and streamed as files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout;
use crate::state::StateStore;
use crate::{Error, Result};

/// Name of the file inside a snapshot directory holding the caller's metadata.
const META_FILE: &str = "BULWARK_SNAPSHOT_META";
/// Snapshots kept: the newest and the one before, which may still be streaming.
const KEEP: usize = 2;

/// One file of a snapshot, as streamed to a peer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    pub name: String,
    pub len: u64,
}

/// The snapshot directory of a node.
///
/// Each snapshot is `snap-<order>-<published>-<id>/`, a RocksDB checkpoint plus a
/// metadata file; `<order>` (the last applied index), then `<published>` (a number
/// that grows with each publish, across restarts) sort them, so that of two snapshots
/// at one index the later published is the newest. Directories are written under a
/// temporary name and renamed into place, so a crash never leaves half a snapshot.
pub struct SnapshotStore {
    dir: PathBuf,
    incoming: AtomicU64,
    /// The next publish's number.
    published: AtomicU64,
}

/// Where the snapshot directory `name` sorts: by order, then by publish number
/// (names written before that number existed count as published first).
fn sort_key(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?;
    let (order, rest) = rest.split_once('-')?;
    let published = rest.split_once('-').map_or(rest, |(n, _)| n);
    let published = match published.len() {
        20 => published.parse().unwrap_or(0),
        _ => 0,
    };
    Some((order.parse().ok()?, published))
}

impl SnapshotStore {
    /// Opens `dir`, removing temporary and half-received directories.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("snap-") {
                fs::remove_dir_all(entry.path()).map_err(Error::io(entry.path()))?;
            }
        }
        let mut store = SnapshotStore {
            dir: dir.to_path_buf(),
            incoming: AtomicU64::new(0),
            published: AtomicU64::new(0),
        };
        let next = store
            .list()?
            .iter()
            .filter_map(|path| sort_key(&path.file_name()?.to_string_lossy()))
            .map(|(_, published)| published + 1)
            .max()
            .unwrap_or(0);
        store.published = AtomicU64::new(next);
        Ok(store)
    }

    /// Checkpoints `state` as a new snapshot. Returns its directory and the state's
    /// applied record as of the checkpoint (read back from the checkpoint itself, so it
    /// matches the data even while apply goes on).
    pub fn create(&self, state: &StateStore) -> Result<(PathBuf, Option<Vec<u8>>)> {
        let tmp = self.dir.join(format!(
            "tmp-{}",
            self.incoming.fetch_add(1, Ordering::Relaxed)
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
        }
        state.checkpoint(&tmp)?;
        let applied = StateStore::open_read_only(&tmp)?.applied()?;
        Ok((tmp, applied))
    }

    /// Gives the snapshot in `tmp` (made by [`SnapshotStore::create`] or received from a
    /// peer into [`SnapshotStore::incoming_dir`]) its final name with `meta`, and
    /// removes snapshots older than the last [`KEEP`].
    pub fn publish(&self, tmp: &Path, order: u64, id: &str, meta: &[u8]) -> Result<PathBuf> {
        layout::write_atomic(&tmp.join(META_FILE), meta)?;
        let published = self.published.fetch_add(1, Ordering::Relaxed);
        let name = format!("snap-{order:020}-{published:020}-{}", sanitize(id));
        let dest = self.dir.join(name);
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(Error::io(&dest))?;
        }
        fs::rename(tmp, &dest).map_err(Error::io(&dest))?;
        layout::sync_dir(&self.dir)?;
        let mut all = self.list()?;
        while all.len() > KEEP {
            let old = all.remove(0);
            fs::remove_dir_all(&old).map_err(Error::io(&old))?;
        }
        Ok(dest)
    }

    /// Removes every published snapshot but the newest (erasure: the older ones may
    /// hold what was erased since). A peer still being sent one of them fails and is
    /// sent the newest. Returns how many were removed.
    pub fn retain_latest(&self) -> Result<usize> {
        let mut all = self.list()?;
        all.pop();
        for old in &all {
            fs::remove_dir_all(old).map_err(Error::io(old))?;
        }
        Ok(all.len())
    }

    /// A fresh, empty directory to receive a snapshot into.
    pub fn incoming_dir(&self) -> Result<PathBuf> {
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.dir.join(format!("incoming-{now}-{n}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(dir)
    }

    /// Copies a snapshot from elsewhere (hard links where possible) into a temporary
    /// directory of this store, ready for [`SnapshotStore::publish`].
    pub fn import(&self, from: &Path) -> Result<PathBuf> {
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("import-{n}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
        }
        link_or_copy_tree(from, &tmp)?;
        Ok(tmp)
    }

    /// The newest published snapshot: its directory and metadata.
    pub fn latest(&self) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some(dir) = self.list()?.pop() else {
            return Ok(None);
        };
        let meta_path = dir.join(META_FILE);
        let meta = fs::read(&meta_path).map_err(Error::io(&meta_path))?;
        Ok(Some((dir, meta)))
    }

    /// The published snapshots, oldest first.
    fn list(&self) -> Result<Vec<PathBuf>> {
        let mut all = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir))? {
            let entry = entry.map_err(Error::io(&self.dir))?;
            if let Some(key) = sort_key(&entry.file_name().to_string_lossy()) {
                all.push((key, entry.path()));
            }
        }
        all.sort();
        Ok(all.into_iter().map(|(_, path)| path).collect())
    }

    /// The files of the snapshot in `dir` that make up its data (not its metadata).
    pub fn files(dir: &Path) -> Result<Vec<SnapshotFile>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == META_FILE {
                continue;
            }
            let meta = entry.metadata().map_err(Error::io(entry.path()))?;
            if meta.is_file() {
                files.push(SnapshotFile {
                    name,
                    len: meta.len(),
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// True when `name` is a plain file name that may be written inside a snapshot
    /// directory (what a peer sends is checked with this before it touches disk).
    pub fn is_safe_file_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 255
            && name != META_FILE
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Materialises the checkpoint `from` as the new directory `to`: immutable files
/// (`*.sst`, `*.blob`) are hard-linked, everything RocksDB may write again (MANIFEST,
/// CURRENT, OPTIONS, WAL) is copied, and the result is synced.
pub(crate) fn link_or_copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(Error::io(to))?;
    for file in SnapshotStore::files(from)? {
        let src = from.join(&file.name);
        let dst = to.join(&file.name);
        let immutable = file.name.ends_with(".sst") || file.name.ends_with(".blob");
        if !(immutable && fs::hard_link(&src, &dst).is_ok()) {
            fs::copy(&src, &dst).map_err(Error::io(&dst))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(Error::io(&dst))?;
        }
    }
    layout::sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateDir;

    #[test]
    fn create_publish_latest_and_keep_two() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let snaps = SnapshotStore::open(&dir.path().join("snapshots")).unwrap();
        for order in 1..=3u64 {
            let (tmp, _applied) = snaps.create(&state.current()).unwrap();
            snaps
                .publish(
                    &tmp,
                    order,
                    &format!("1-{order}"),
                    format!("meta{order}").as_bytes(),
                )
                .unwrap();
        }
        let (latest, meta) = snaps.latest().unwrap().unwrap();
        assert_eq!(meta, b"meta3");
        let name = latest.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, "snap-00000000000000000003-00000000000000000002-1-3");
        assert_eq!(snaps.list().unwrap().len(), 2);
        let files = SnapshotStore::files(&latest).unwrap();
        assert!(files.iter().any(|f| f.name == "CURRENT"));
        assert!(files
            .iter()
            .all(|f| SnapshotStore::is_safe_file_name(&f.name)));
        assert_eq!(snaps.retain_latest().unwrap(), 1);
        assert_eq!(snaps.list().unwrap(), [latest]);
        assert_eq!(snaps.retain_latest().unwrap(), 0);
    }

    #[test]
    fn of_two_snapshots_at_one_index_the_later_published_is_the_newest_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let publish = |snaps: &SnapshotStore, id: &str| {
            let (tmp, _applied) = snaps.create(&state.current()).unwrap();
            snaps.publish(&tmp, 7, id, id.as_bytes()).unwrap();
        };
        let snaps = SnapshotStore::open(&dir.path().join("snapshots")).unwrap();
        // Ids that sort the other way round as text.
        publish(&snaps, "1-7-9");
        publish(&snaps, "1-7-10");
        assert_eq!(snaps.latest().unwrap().unwrap().1, b"1-7-10");
        drop(snaps);
        let snaps = SnapshotStore::open(&dir.path().join("snapshots")).unwrap();
        publish(&snaps, "1-7-0");
        assert_eq!(snaps.latest().unwrap().unwrap().1, b"1-7-0");
        assert_eq!(snaps.retain_latest().unwrap(), 1);
        assert_eq!(snaps.list().unwrap().len(), 1);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", "..", "../x", "a/b", META_FILE, "x\0y"] {
            assert!(!SnapshotStore::is_safe_file_name(bad), "{bad:?}");
        }
        assert!(SnapshotStore::is_safe_file_name("000012.sst"));
    }
}

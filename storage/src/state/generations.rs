//! The generations of a node's state: `state/CURRENT` names the live one, a snapshot
//! installs as the next, backups and restores copy one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::StateStore;
use crate::layout;
use crate::{snapshot, Error, Result};

const CURRENT: &str = "CURRENT";

/// The live state generation of a node and the means to replace it with a snapshot.
///
/// `state/CURRENT` names the live generation; installing a snapshot materialises it
/// as a new generation directory, then switches `CURRENT` atomically, so a crash
/// during install leaves the old state in place.
pub struct StateDir {
    root: PathBuf,
    current: RwLock<Arc<StateStore>>,
    /// Generations replaced while a reader still held them: their directories, to
    /// be removed once nobody does ([`StateDir::remove_retired`]).
    retired: Mutex<Vec<(PathBuf, Weak<StateStore>)>>,
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
            retired: Mutex::new(Vec::new()),
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
        // Readers may still hold the old generation; if so, it is removed once they
        // let go (or at the next start).
        let held = Arc::downgrade(&old);
        if Arc::into_inner(old).is_some() {
            fs::remove_dir_all(&old_dir).map_err(Error::io(&old_dir))?;
        } else {
            self.retired
                .lock()
                .expect("retired generations lock")
                .push((old_dir, held));
        }
        Ok(store)
    }

    /// Removes the directories of replaced generations no reader holds any more.
    /// Returns how many are still held.
    pub fn remove_retired(&self) -> Result<usize> {
        let mut retired = self.retired.lock().expect("retired generations lock");
        let mut failed = None;
        retired.retain(|(dir, held)| {
            if held.strong_count() > 0 {
                return true;
            }
            match fs::remove_dir_all(dir) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    failed.get_or_insert(Error::io(dir)(e));
                    true
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(retired.len()),
        }
    }
}

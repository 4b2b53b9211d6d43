//! Erasure of dropped quarantined bodies from this node's disk.
//!
//! Deleting a quarantined message (or its expiry) drops its body from the state with
//! a RocksDB delete, which removes nothing from disk: the body stays in the state's
//! WAL and files, in every snapshot, and in the Raft entry that carried it in (the
//! accepted message) until the log is purged past it, which openraft's policy delays
//! by `keep_logs` entries. [`RaftNode::erase_dropped_bodies`] rewrites all of these
//! on this node; every node runs it for its own copy, as every node applies the
//! deletion.

use std::time::{Duration, Instant};

use crate::{Error, RaftNode};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);
/// How long a trigger (a snapshot, a purge) is given before it is sent again: one
/// sent while a snapshot is being built is ignored.
const RETRIGGER: Duration = Duration::from_secs(1);

impl RaftNode {
    /// Erases from this node's files every quarantined body dropped so far (deleted
    /// or expired). Returns the Raft index it erased through, or None when nothing
    /// was due. Fails when a step's wait outlasts `within` (a compaction, once
    /// started, runs to its end) or a replaced state generation is still being read;
    /// nothing is recorded then and the next call starts over.
    ///
    /// To ensure correctness, in this order:
    /// 1. the live state is rewritten without the bodies (every memtable flushed so
    ///    the WAL files holding them are deleted, the bodies compacted whole with
    ///    every live blob moved: `StateStore::erase_dropped_bodies`);
    /// 2. a snapshot is built whose checkpoint starts after 1, so it holds none;
    /// 3. the Raft log is purged through the last entry that dropped a body, past
    ///    the entries openraft keeps after a snapshot for lagging followers, so the
    ///    entries that carried the bodies in go too (a follower lacking them is sent
    ///    the snapshot instead), and its files are rewritten without them
    ///    (`LogStore::erase_purged`);
    /// 4. the snapshots older than the one of 2 and the state generations replaced
    ///    by an installed snapshot are removed;
    /// 5. only then is the erasure recorded in the state.
    pub async fn erase_dropped_bodies(&self, within: Duration) -> Result<Option<u64>, Error> {
        let started = Instant::now();
        let deadline = started + within;
        let state = self.state();
        let Some(through) = blocking({
            let state = state.clone();
            move || state.erasure_due()
        })
        .await?
        else {
            return Ok(None);
        };

        blocking({
            let state = state.clone();
            move || state.erase_dropped_bodies()
        })
        .await?;

        let first_clean = self.builds.next();
        let mut asked: Option<Instant> = None;
        loop {
            let snapshot = self
                .raft()
                .metrics()
                .borrow()
                .snapshot
                .map_or(0, |l| l.index);
            if self.builds.published_from(first_clean) && snapshot >= through {
                break;
            }
            if asked.is_none_or(|at| at.elapsed() >= RETRIGGER) {
                asked = Some(Instant::now());
                self.raft()
                    .trigger()
                    .snapshot()
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?;
            }
            pause(deadline, "building a snapshot without the dropped bodies").await?;
        }

        let mut asked: Option<Instant> = None;
        loop {
            let log = self.log.clone();
            let first = blocking(move || log.first_index()).await?;
            if first.is_none_or(|first| first > through) {
                break;
            }
            if asked.is_none_or(|at| at.elapsed() >= RETRIGGER) {
                asked = Some(Instant::now());
                self.raft()
                    .trigger()
                    .purge_log(through)
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?;
            }
            pause(
                deadline,
                "purging the Raft log of the entries that carried them",
            )
            .await?;
        }
        let log = self.log.clone();
        blocking(move || log.erase_purged(through)).await?;

        let snapshots = self.snapshots.clone();
        let generations = self.state_dir().clone();
        let (removed, still_read) =
            blocking(move || Ok((snapshots.retain_latest()?, generations.remove_retired()?)))
                .await?;
        if still_read > 0 {
            return Err(Error::Erasure(format!(
                "{still_read} replaced state generation(s) still being read"
            )));
        }
        blocking(move || state.mark_erased(through)).await?;
        tracing::info!(
            through,
            snapshots_removed = removed,
            ms = started.elapsed().as_millis() as u64,
            "dropped quarantined bodies erased from this node's files"
        );
        Ok(Some(through))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> bulwark_storage::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Erasure(format!("erasure task: {e}")))?
        .map_err(Error::from)
}

/// Waits a moment, or fails with `what` once `deadline` has passed.
async fn pause(deadline: Instant, what: &str) -> Result<(), Error> {
    if Instant::now() >= deadline {
        return Err(Error::Erasure(format!("{what}: not done in time")));
    }
    tokio::time::sleep(POLL).await;
    Ok(())
}

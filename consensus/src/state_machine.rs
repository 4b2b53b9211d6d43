//! openraft's state machine over `bulwark_storage::StateDir`, with snapshots as
//! RocksDB checkpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulwark_storage::{codec, Op, OpResult, SnapshotStore, StateDir};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder};

use crate::error::storage_error;
use crate::types::{
    Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What the state records about Raft next to the data, in the same write batch.
pub(crate) type Applied = (Option<LogId>, StoredMembership);

pub(crate) fn decode_applied(bytes: Option<Vec<u8>>) -> Result<Applied, StorageError> {
    match bytes {
        Some(bytes) => codec::decode(&bytes).map_err(storage_error),
        None => Ok((None, StoredMembership::default())),
    }
}

/// Refuses a batch holding a command that needs a feature level above `supported`,
/// with what the node says (both levels, and what to do).
fn within_level(supported: u32, batch: &[(u64, &[Op])]) -> Result<(), String> {
    let needed = batch
        .iter()
        .flat_map(|(_, ops)| ops.iter())
        .map(|op| op.command.feature_level())
        .max()
        .unwrap_or(0);
    match needed > supported {
        true => Err(bulwark_storage::feature::too_old(supported, needed)),
        false => Ok(()),
    }
}

/// The replicated state machine.
///
/// To ensure correctness:
/// - `apply` stores the events, last applied log id and membership in one batch
///   (storage's `StateStore::apply`), so a restart never re-applies what was applied;
/// - `build_snapshot` reads the applied log id and membership back from the
///   checkpoint it made, so the snapshot's metadata always describes its data even
///   though apply goes on concurrently;
/// - `install_snapshot` switches to the new state atomically (a new generation
///   directory and an atomic `CURRENT` update), so a crash mid-install keeps the old.
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<StateDir>,
    snapshots: Arc<SnapshotStore>,
    builds: SnapshotBuilds,
}

/// The snapshots this node builds, numbered in the order their checkpoints start.
#[derive(Clone, Default)]
pub(crate) struct SnapshotBuilds {
    /// Builds started: the next build's number.
    started: Arc<AtomicU64>,
    /// One more than the highest number of a build published.
    published: Arc<AtomicU64>,
}

impl SnapshotBuilds {
    /// The number the next build gets: every build numbered from it on takes its
    /// checkpoint after this call.
    pub(crate) fn next(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Whether a build numbered `n` or later has been published.
    pub(crate) fn published_from(&self, n: u64) -> bool {
        self.published.load(Ordering::SeqCst) > n
    }
}

impl StateMachine {
    pub fn new(state: Arc<StateDir>, snapshots: Arc<SnapshotStore>) -> Self {
        StateMachine {
            state,
            snapshots,
            builds: SnapshotBuilds::default(),
        }
    }

    pub(crate) fn builds(&self) -> SnapshotBuilds {
        self.builds.clone()
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&StateMachine) -> Result<T, StorageError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(storage_error)?
    }

    fn build(&self) -> Result<Snapshot, StorageError> {
        let number = self.builds.started.fetch_add(1, Ordering::SeqCst);
        let (tmp, applied) = self
            .snapshots
            .create(&self.state.current())
            .map_err(storage_error)?;
        let (last_log_id, last_membership) = decode_applied(applied)?;
        let order = last_log_id.map_or(0, |id| id.index);
        let snapshot_id = format!(
            "{}-{}-{}",
            last_log_id.map_or(0, |id| id.leader_id.term),
            order,
            number
        );
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let encoded = codec::encode(&meta).map_err(storage_error)?;
        let dir = self
            .snapshots
            .publish(&tmp, order, &meta.snapshot_id, &encoded)
            .map_err(storage_error)?;
        self.builds
            .published
            .fetch_max(number + 1, Ordering::SeqCst);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData { dir }),
        })
    }

    fn install(&self, meta: &SnapshotMeta, data: &SnapshotData) -> Result<(), StorageError> {
        let installed = self.state.install(&data.dir).map_err(storage_error)?;
        let (applied, _) = decode_applied(installed.applied().map_err(storage_error)?)?;
        if applied != meta.last_log_id {
            return Err(storage_error(format!(
                "snapshot {} says it holds up to {:?} but its data holds up to {applied:?}",
                meta.snapshot_id, meta.last_log_id
            )));
        }
        let (supported, active) = (crate::feature::supported(), installed.feature_level());
        if active > supported {
            // Installed, but nothing of it is served: the node stops, and refuses to
            // start on this state until it runs a newer release.
            let said = bulwark_storage::feature::too_old(supported, active);
            tracing::error!(snapshot = %meta.snapshot_id, "{said}");
            return Err(storage_error(said));
        }
        let tmp = self.snapshots.import(&data.dir).map_err(storage_error)?;
        let encoded = codec::encode(meta).map_err(storage_error)?;
        let order = meta.last_log_id.map_or(0, |id| id.index);
        self.snapshots
            .publish(&tmp, order, &meta.snapshot_id, &encoded)
            .map_err(storage_error)?;
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some((dir, meta)) = self.snapshots.latest().map_err(storage_error)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = codec::decode(&meta).map_err(storage_error)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData { dir }),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.blocking(StateMachine::build).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<Applied, StorageError> {
        self.blocking(|sm| decode_applied(sm.state.current().applied().map_err(storage_error)?))
            .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<OpResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.blocking(move |sm| {
            let store = sm.state.current();
            let (mut last, mut membership) =
                decode_applied(store.applied().map_err(storage_error)?)?;
            let mut batch: Vec<(u64, &[Op])> = Vec::with_capacity(entries.len());
            for entry in &entries {
                let log_id = *entry.get_log_id();
                last = Some(log_id);
                match &entry.payload {
                    EntryPayload::Normal(proposal) => batch.push((log_id.index, &proposal.ops)),
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(log_id), m.clone());
                        batch.push((log_id.index, &[]));
                    }
                    EntryPayload::Blank => batch.push((log_id.index, &[])),
                }
            }
            // Before anything is written: a command this build cannot apply stops the
            // node (Raft turns the error fatal) with nothing of the batch applied.
            if let Err(said) = within_level(crate::feature::supported(), &batch) {
                tracing::error!("{said}");
                return Err(storage_error(said));
            }
            let applied = codec::encode(&(last, membership)).map_err(storage_error)?;
            store.apply(&batch, &applied).map_err(storage_error)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let dir = self.snapshots.incoming_dir().map_err(storage_error)?;
        Ok(Box::new(SnapshotData { dir }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let meta = meta.clone();
        self.blocking(move |sm| sm.install(&meta, &snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.blocking(StateMachine::current_snapshot).await
    }
}

#[cfg(test)]
mod tests {
    use bulwark_storage::feature::{BASE, LEVELS};
    use bulwark_storage::Command;

    use super::*;

    fn op(command: Command) -> Op {
        Op {
            id: 1,
            time_ms: 0,
            node: 1,
            command,
        }
    }

    #[test]
    fn a_batch_above_the_build_s_level_is_refused_whole_naming_both_levels() {
        let old = op(Command::ExportCursor {
            exporter: "x".into(),
            seq: 1,
        });
        let raise = op(Command::RaiseFeatureLevel { level: LEVELS });
        let ops = [old.clone(), raise];
        let batch: Vec<(u64, &[Op])> = vec![(1, &[]), (2, &ops[..])];
        let said = within_level(BASE, &batch).unwrap_err();
        assert!(
            said.contains("supports feature level 1, the cluster runs at 2: run a newer release"),
            "{said}"
        );
        assert!(within_level(LEVELS, &batch).is_ok());
        let higher = [op(Command::RaiseFeatureLevel { level: LEVELS + 1 })];
        assert!(within_level(LEVELS, &[(3, &higher[..])]).is_err());
        let older = [old];
        assert!(within_level(BASE, &[(4, &older[..])]).is_ok());
    }
}

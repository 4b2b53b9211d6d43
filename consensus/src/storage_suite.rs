//! openraft's own storage test suite, run against our RocksDB log store and state
//! machine: the contract checked by the people who wrote it.

use std::sync::Arc;

use bulwark_storage::{layout, LogStore as Store, SnapshotStore, StateDir};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::types::{StorageError, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Store::open(&layout::raft_log_dir(dir.path())).expect("log store");
        let state = StateDir::open(&layout::state_root(dir.path())).expect("state");
        let snapshots = SnapshotStore::open(&layout::snapshots_dir(dir.path())).expect("snapshots");
        Ok((
            dir,
            LogStore::new(log),
            StateMachine::new(Arc::new(state), Arc::new(snapshots)),
        ))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}

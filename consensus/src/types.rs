//! The Raft type configuration and short aliases for openraft's generic types.

use std::path::PathBuf;

use bulwark_storage::{OpResult, Proposal};
use openraft::{BasicNode, TokioRuntime};

/// A snapshot as openraft passes it around: the directory of a RocksDB checkpoint of
/// the state (see `bulwark_storage::SnapshotStore`). It is never loaded into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotData {
    pub dir: PathBuf,
}

openraft::declare_raft_types!(
    /// Bulwark's Raft: entries carry a [`Proposal`] of many operations, and apply
    /// answers with one [`OpResult`] per operation.
    pub TypeConfig:
        D = Proposal,
        R = Vec<OpResult>,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, BasicNode>;

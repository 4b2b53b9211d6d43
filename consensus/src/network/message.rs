//! What nodes say to each other.

use bulwark_storage::{Op, OpResult, SnapshotFile};
use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::leader::{LeaderCall, LeaderCallError};
use crate::node::ClusterStatus;
use crate::types::{LogId, NodeId, SnapshotMeta, TypeConfig, Vote};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// Operations a follower received, for the leader to commit.
    Forward(Vec<Op>),
    /// Has this node joined a cluster yet? (bootstrap)
    Status,
    /// A full snapshot: this header, then each file's bytes in order, raw.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        files: Vec<SnapshotFile>,
    },
    /// A call only the leader can answer.
    Leader(LeaderCall),
    /// From the leader, which is stopping: this node holds (or is about to hold) the
    /// whole log, up to this index, so start an election now (Raft's leadership
    /// transfer).
    TimeoutNow {
        last_log_index: u64,
    },
    /// The leader's view of the cluster (a follower's API asks for it). Last, so that
    /// the variants before keep their numbers on the wire for older nodes; an older
    /// node cannot decode it and closes the connection.
    ClusterStatus,
    /// From the leader: which feature level does this node support? The cluster's
    /// active level is `active`; a node below it stops (see
    /// `bulwark_model::feature`). Last, as above: a release before feature levels
    /// cannot decode it and closes the connection, which the leader takes for the
    /// lowest level.
    FeatureLevel {
        active: u32,
    },
    /// From a voter that has heard from no leader for its election timeout: would this
    /// node vote for it, its log ending at `last_log_id`? No term changes (see
    /// `crate::election`). Last, as above: a release before pre-votes closes the
    /// connection, which the asker takes for a yes (that node applies openraft's lease
    /// when the real vote comes).
    PreVote {
        last_log_id: Option<LogId>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Forward(Result<Vec<OpResult>, ForwardRefused>),
    Status {
        initialized: bool,
        /// Last applied log index: at least 1 once the cluster has had a leader.
        applied: Option<u64>,
    },
    Snapshot(Result<SnapshotResponse<NodeId>, String>),
    /// The request was refused before reaching Raft (e.g. it claims another node's
    /// identity than the certificate it came with).
    Refused(String),
    Leader(Result<u64, LeaderCallError>),
    /// An election was started (or why not).
    TimeoutNow(Result<(), String>),
    /// This node's view of the cluster.
    ClusterStatus(Box<ClusterStatus>),
    /// The highest feature level this node applies.
    FeatureLevel {
        supported: u32,
    },
    /// The pre-vote granted, or why not.
    PreVote(Result<(), String>),
}

/// Why a forwarded write was not committed by the node it was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardRefused {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Failed(String),
}

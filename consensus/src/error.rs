use std::path::PathBuf;

/// Failures of the consensus layer itself (start-up, TLS material, storage).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] bulwark_storage::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("TLS material {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Backup(String),
    /// No leader confirmed in time what this node must have applied.
    #[error("{0}")]
    Unavailable(String),
    /// An erasure of dropped bodies that did not finish (see
    /// [`crate::RaftNode::erase_dropped_bodies`]).
    #[error("erasure: {0}")]
    Erasure(String),
    /// This build's feature level is below the cluster's, as its state records it:
    /// what to say, naming both levels.
    #[error("{0}")]
    TooOld(String),
}

/// Why a proposed operation got no answer. Every variant means "not known to be
/// committed": the caller tells its client to retry (SMTP 451, HTTP 503), and a retry
/// with the same operation id is applied at most once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader could commit the write within {0} ms")]
    Timeout(u64),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The command needs a cluster feature level above the active one: not proposed
    /// (some member could not apply it).
    #[error("needs cluster feature level {needs}, the cluster runs at {active}")]
    FeatureLevel { needs: u32, active: u32 },
}

pub(crate) fn storage_error(e: impl std::fmt::Display) -> openraft::StorageError<u64> {
    openraft::StorageError::IO {
        source: openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())),
    }
}

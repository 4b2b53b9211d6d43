//! Bulwark's replication layer: openraft 0.9 over the storage crate.
//!
//! It owns the Raft type configuration, the log-store and state-machine adapters
//! (which hand storage/ opaque bytes for Raft's own types), the inter-node network
//! (TCP with mutual TLS, one connection per purpose so heartbeats never queue behind
//! snapshots or forwarded writes), cluster bootstrap, and the [`Proposer`] that batches
//! concurrent operations into one Raft entry and forwards them to the leader.
//!
//! It must never read the clock or the network inside `apply`, and never name
//! `rocksdb`: durable state is storage/'s business.
#![forbid(unsafe_code)]
// openraft's `StorageError` (224 bytes) is the error type its storage traits demand,
// and a refused peer request is answered with a whole `Response`; boxing them would
// only add allocations on the hot path of every apply.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod clock;
mod election;
mod erasure;
mod error;
pub mod feature;
mod leader;
mod log_store;
mod network;
mod node;
mod proposer;
mod state_machine;
pub mod tls;
pub mod types;

pub use error::{Error, ProposeError};
pub use leader::{LeaderCall, LeaderCallError, MembershipChange, PROMOTE_MAX_LAG};
pub use node::{ClusterStatus, MemberStatus, NodeConfig, PeerConfig, RaftNode, RaftSettings};
pub use proposer::Proposer;

#[cfg(test)]
mod storage_suite;

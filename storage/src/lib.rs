//! Bulwark's event-sourced store.
//!
//! This crate owns everything that touches disk: the versioned encoding of every
//! record, the event schema and its hash chain, and the two RocksDB databases of a
//! node:
//!
//! * the **Raft log** ([`LogStore`]): log entries, vote, committed and purge marks,
//!   written with a synced WAL before any call returns;
//! * the **state** ([`StateDir`] / [`StateStore`]): the event log, message bodies and
//!   the projections built from events (queue, quarantine, indexes), together with
//!   the last applied log id and membership in the same write batch.
//!
//! The two live in separate databases so that a snapshot is a RocksDB checkpoint of
//! the state alone ([`SnapshotStore`]), streamed file by file and never held in memory.
//!
//! It must never know about Raft's types (the consensus crate hands it opaque bytes
//! for those) and never be named `rocksdb` outside this crate.
#![forbid(unsafe_code)]

pub mod bayes;
pub mod codec;
mod error;
pub mod event;
mod index;
pub mod layout;
mod log;
pub mod message;
mod queue;
mod snapshot;
mod state;
pub mod token;

pub use bayes::{BayesClass, BayesCounts, BayesLesson, BayesTrained};
pub use error::{Error, Result};
pub use event::{
    ApiAction, ChainCheckpoint, Command, Event, EventKind, EventPurge, EventsPurged, Hash,
    MembershipChanged, Op, OpId, OpResult, Proposal, StoredEvent, VerifyReport,
};
pub use index::EventFilter;
pub use log::LogStore;
pub use message::{
    AcceptedMessage, Action, AuthResult, Bounce, Client, DeliveryCommand, DeliveryReport,
    EngineRun, Envelope, Finding, Lease, MessageId, MessageReceived, QuarantineAction,
    QuarantineCommand, QuarantineDecided, QuarantineExpiry, QuarantineRecord, QueueAction,
    QueueEntry, QueueRecord, QueueStatus, QueuedRecipient, RecipientOutcome, RecipientResult,
    RecipientStatus, RejectedMessage, Rejection, Symbol, Thresholds, Timings, TlsInfo, Verdict,
};
pub use queue::NOT_QUEUED;
pub use snapshot::{SnapshotFile, SnapshotStore};
pub use state::{
    AppliedCounts, QuarantineFilter, QueueFilter, StateDir, StateStore, NOT_QUARANTINED,
};
pub use token::{ApiToken, Role, TokenChanged, TokenCommand};

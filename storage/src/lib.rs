//! Bulwark's event-sourced store.
//!
//! This crate owns everything that touches disk: the two RocksDB databases of a node,
//! over the schema, encoding and rules of [`bulwark_model`] (re-exported here, so
//! `bulwark_storage::event` and `bulwark_model::event` are one module):
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

mod error;
mod flow;
mod index;
pub mod layout;
mod log;
mod snapshot;
mod state;

pub use bulwark_model::*;
pub use error::{Error, Result};
pub use flow::{Dimension, Flow, HourCounts};
pub use index::EventFilter;
pub use log::LogStore;
pub use snapshot::{SnapshotFile, SnapshotStore};
pub use state::{AppliedCounts, QuarantineFilter, QueueFilter, StateDir, StateStore};

//! Bulwark's schema: what an event is, the records of a message, the queue, the
//! quarantine, API tokens, console users and their sessions ([`user`]), Bayesian
//! counts and the cluster's policy versions, the feature levels of builds and of the
//! cluster ([`feature`]), the one encoding of every record, and the rules that change
//! those records when an operation is applied.
//!
//! What it owns: every type that is written to the event log or replicated through
//! Raft, how it is encoded ([`codec`]) and hashed into the chain ([`event`]), and the
//! state machine's rules ([`rules`]): pure functions over the records an operation
//! changes, deterministic, tested without a database.
//!
//! What it must never do: touch a disk, a clock or the network. Reads of what is
//! stored come in through [`rules::Stored`], which the storage engine implements;
//! time and the proposing node come in the operation. No RocksDB in its dependency
//! tree: every crate that needs an event type links this one alone.
#![forbid(unsafe_code)]

pub mod bayes;
pub mod bundle;
pub mod codec;
mod error;
pub mod event;
pub mod feature;
pub mod message;
pub mod policy;
pub mod recipient;
pub mod rules;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod signer;
pub mod token;
pub mod user;

pub use bayes::{BayesClass, BayesCounts, BayesExpired, BayesExpiry, BayesLesson, BayesTrained};
pub use error::{Error, Result};
pub use event::{
    AccessRead, ApiAction, ChainCheckpoint, Command, Event, EventKind, EventPurge, EventsPurged,
    ExportDeadLetter, ExportProgress, Facets, Hash, MembershipChanged, Op, OpId, OpResult,
    Proposal, ReadKind, SignerChanged, StoredEvent, VerifyReport,
};
pub use message::{
    AcceptedMessage, Action, AuthResult, Bounce, Client, DeliveryCommand, DeliveryReport,
    EngineRun, Envelope, Finding, JudgedRejection, Lease, MessageId, MessageReceived,
    PolicyRejection, QuarantineAction, QuarantineCommand, QuarantineDecided, QuarantineExpiry,
    QuarantineRecord, QueueAction, QueueEntry, QueueRecord, QueueStatus, QueuedRecipient,
    RecipientOutcome, RecipientResult, RecipientStatus, RejectedMessage, Rejection, Symbol,
    Thresholds, Timings, TlsInfo, Verdict,
};
pub use policy::{PolicyChange, PolicyChanged, PolicyVersion};
pub use rules::{NOT_QUARANTINED, NOT_QUEUED};
pub use signer::{Signers, TrustedKey};
pub use token::{ApiToken, Role, TokenChanged, TokenCommand};
pub use user::{ConsoleUser, Session, UserAction, UserChanged, UserCommand};

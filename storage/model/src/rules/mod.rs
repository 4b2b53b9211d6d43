//! The state machine's rules: what each replicated operation does to the records it
//! touches, and which events it records.
//!
//! A batch of operations reads what is stored through [`Stored`] and collects what it
//! changes in [`Changes`], whose reads fall through to the store: a later operation of
//! the batch sees what an earlier one did, so a batch does exactly what separate
//! batches would. The storage engine turns the changes into one atomic write.
//!
//! Every rule is deterministic: the time, the proposing node and the sequence number
//! come from the operation and the caller, never from a clock. One module a record:
//! [`accept`] (a scanned message into the queue or the quarantine), [`queue`] (leases,
//! attempt reports, bounces and an administrator's queue actions), [`quarantine`]
//! (release, deletion and expiry), [`tokens`] (API tokens), [`users`] (console users
//! and their sessions), [`signers`] (the keys trusted to sign checkpoints), [`export`]
//! (an exporter's cursor and count), [`policy`] (the cluster's policy versions) and
//! [`recipients`] (recipients' own releases, lists, links and digests).

use std::collections::HashMap;

use crate::event::{EventKind, Hash};
use crate::message::{Envelope, MessageId, QuarantineRecord, QueueRecord};
use crate::policy::PolicyVersion;
use crate::recipient::{DigestMark, RecipientLists};
use crate::signer::Signers;
use crate::token::ApiToken;
use crate::user::{ConsoleUser, Session};

pub mod accept;
pub mod export;
pub mod policy;
pub mod quarantine;
pub mod queue;
pub mod recipients;
pub mod signers;
pub mod tokens;
pub mod users;

#[cfg(test)]
mod memory;

pub use quarantine::NOT_QUARANTINED;
pub use queue::NOT_QUEUED;

/// What an operation did: the events it records and, when it was refused, why.
pub type Outcome = (Vec<EventKind>, Option<String>);

/// The stored state as it was before the batch: what the rules read.
pub trait Stored {
    /// The store's error, which a record that does not decode becomes.
    type Error: From<crate::Error>;

    /// A message's record in the delivery queue.
    fn queue_record(&self, id: MessageId) -> Result<Option<QueueRecord>, Self::Error>;

    /// A quarantined message's record.
    fn quarantine_record(&self, id: MessageId) -> Result<Option<QuarantineRecord>, Self::Error>;

    /// The live API token named `name`.
    fn token_named(&self, name: &str) -> Result<Option<ApiToken>, Self::Error>;

    /// True when a token named `name` was revoked.
    fn token_name_retired(&self, name: &str) -> Result<bool, Self::Error>;

    /// The console user named `name`, unless removed.
    fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>, Self::Error>;

    /// True when a console user named `name` was removed.
    fn user_name_retired(&self, name: &str) -> Result<bool, Self::Error>;

    /// The session whose cookie's secret has SHA-256 `digest`.
    fn session(&self, digest: &Hash) -> Result<Option<Session>, Self::Error>;

    /// The checkpoint keys trusted for node `node` (none: empty).
    fn signers(&self, node: u64) -> Result<Signers, Self::Error>;

    /// The cluster's current policy version (`None`: it has none yet).
    fn current_policy(&self) -> Result<Option<PolicyVersion>, Self::Error>;

    /// The envelope of message `id` from its `message.received` event, recorded with
    /// sequence number `seq` (`None` when the retention has removed it).
    fn received_envelope(&self, id: MessageId, seq: u64) -> Result<Option<Envelope>, Self::Error>;

    /// A recipient's own allow and block lists (none: empty).
    fn recipient_lists(&self, recipient: &str) -> Result<RecipientLists, Self::Error>;

    /// When the link with [`crate::recipient::Link::id`] `id` was spent, if it was.
    fn link_spent(&self, id: &Hash) -> Result<Option<i64>, Self::Error>;

    /// The cluster's key for signing recipients' links, once it has one.
    fn link_key(&self) -> Result<Option<[u8; 32]>, Self::Error>;

    /// Where a recipient's last digest went to, if one did.
    fn digest_through(&self, recipient: &str) -> Result<Option<DigestMark>, Self::Error>;

    /// Hands the quarantined records with an id before `end` to `visit`, oldest
    /// first, until `visit` says stop (returns `false`) or none is left.
    fn quarantined_before(
        &self,
        end: MessageId,
        visit: &mut dyn FnMut(QuarantineRecord) -> bool,
    ) -> Result<(), Self::Error>;
}

/// A write the rules ask of the store beside the queue and quarantine records: a
/// message body, an API token, a console user or a session stored or removed, a
/// node's trusted signing keys or a policy version stored. Applied in the order
/// listed.
#[derive(Clone, Debug, PartialEq)]
pub enum Write<'a> {
    /// Stores a message's body (a received message, a bounce).
    Body(MessageId, &'a [u8]),
    /// Removes a message's body (deleted or expired from the quarantine).
    DropBody(MessageId),
    /// Stores a token under its digest (to authenticate) and its name (to list).
    Token(ApiToken),
    /// Removes both keys of a token and keeps its name as revoked.
    DropToken(ApiToken),
    /// Stores a console user under their name, in place of what it had.
    User(ConsoleUser),
    /// Removes the console user of that name and keeps the name as removed.
    DropUser(String),
    /// Stores a session under its digest.
    Session(Session),
    /// Removes the session of that digest.
    DropSession(Hash),
    /// Stores a node's trusted checkpoint keys.
    Signers(u64, Signers),
    /// Stores a policy version and makes it the current one.
    Policy(Box<PolicyVersion>),
    /// Stores a recipient's lists, in place of what they had.
    RecipientLists(String, RecipientLists),
    /// Keeps a spent link's id, with when it was spent.
    LinkSpent(Hash, i64),
    /// Stores the cluster's link key.
    LinkKey([u8; 32]),
    /// Stores where a recipient's last digest went to.
    DigestThrough(String, DigestMark),
}

/// What a batch changes, as its operations so far have left it. Reads fall through
/// to the [`Stored`] state for what the batch has not touched.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    /// Queue records by message (`None`: left the queue, its body with it).
    pub queue: HashMap<MessageId, Option<QueueRecord>>,
    /// Quarantine records by message (`None`: left the quarantine).
    pub quarantine: HashMap<MessageId, Option<QuarantineRecord>>,
    /// API tokens created (`Some`) or revoked (`None`) by name.
    tokens: HashMap<String, Option<ApiToken>>,
    /// Console users created or changed (`Some`) or removed (`None`) by name.
    users: HashMap<String, Option<ConsoleUser>>,
    /// Sessions begun (`Some`) or ended (`None`) by digest.
    sessions: HashMap<Hash, Option<Session>>,
    /// Trusted signing keys changed, by node.
    signers: HashMap<u64, Signers>,
    /// The current policy, once the batch has changed it.
    policy: Option<Option<PolicyVersion>>,
    /// Recipients' lists as changed, by lowercase address.
    lists: HashMap<String, RecipientLists>,
    /// Links spent, with when.
    spent: HashMap<Hash, i64>,
    /// The link key, once the batch has set it.
    link_key: Option<[u8; 32]>,
    /// Digests' marks, by lowercase recipient.
    digests: HashMap<String, DigestMark>,
    /// Envelopes of the messages this batch accepted: a release later in the batch
    /// reads its message's envelope from here, its event not being stored yet.
    received: HashMap<MessageId, Envelope>,
    /// Bodies, tokens, users, sessions, signers and policies to store or remove, in
    /// order.
    pub writes: Vec<Write<'a>>,
}

impl Changes<'_> {
    /// Message `id`'s queue record as the batch has left it, to read or change.
    fn queued<S: Stored>(
        &mut self,
        store: &S,
        id: MessageId,
    ) -> Result<&mut Option<QueueRecord>, S::Error> {
        through(&mut self.queue, id, || store.queue_record(id))
    }

    /// Message `id`'s quarantine record as the batch has left it, to read or change.
    fn quarantined<S: Stored>(
        &mut self,
        store: &S,
        id: MessageId,
    ) -> Result<&mut Option<QuarantineRecord>, S::Error> {
        through(&mut self.quarantine, id, || store.quarantine_record(id))
    }

    /// Node `node`'s trusted signing keys as the batch has left them.
    fn signers<S: Stored>(&self, store: &S, node: u64) -> Result<Signers, S::Error> {
        match self.signers.get(&node) {
            Some(signers) => Ok(signers.clone()),
            None => store.signers(node),
        }
    }

    /// The current policy as the batch has left it.
    fn policy<S: Stored>(&self, store: &S) -> Result<Option<PolicyVersion>, S::Error> {
        match &self.policy {
            Some(policy) => Ok(policy.clone()),
            None => store.current_policy(),
        }
    }

    /// The token named `name` as the batch has left it.
    fn token<S: Stored>(&self, store: &S, name: &str) -> Result<Option<ApiToken>, S::Error> {
        match self.tokens.get(name) {
            Some(token) => Ok(token.clone()),
            None => store.token_named(name),
        }
    }

    /// True when a token named `name` was revoked, by this batch or before it.
    fn token_retired<S: Stored>(&self, store: &S, name: &str) -> Result<bool, S::Error> {
        match self.tokens.get(name) {
            Some(None) => Ok(true),
            _ => store.token_name_retired(name),
        }
    }

    /// The console user named `name` as the batch has left them.
    fn user<S: Stored>(&self, store: &S, name: &str) -> Result<Option<ConsoleUser>, S::Error> {
        match self.users.get(name) {
            Some(user) => Ok(user.clone()),
            None => store.console_user(name),
        }
    }

    /// True when a console user named `name` was removed, by this batch or before it.
    fn user_retired<S: Stored>(&self, store: &S, name: &str) -> Result<bool, S::Error> {
        match self.users.get(name) {
            Some(None) => Ok(true),
            _ => store.user_name_retired(name),
        }
    }

    /// A recipient's lists as the batch has left them.
    fn lists<S: Stored>(&self, store: &S, recipient: &str) -> Result<RecipientLists, S::Error> {
        match self.lists.get(&recipient.to_ascii_lowercase()) {
            Some(lists) => Ok(lists.clone()),
            None => store.recipient_lists(recipient),
        }
    }

    /// When a link was spent, by this batch or before it.
    fn link_spent<S: Stored>(&self, store: &S, id: &Hash) -> Result<Option<i64>, S::Error> {
        match self.spent.get(id) {
            Some(at) => Ok(Some(*at)),
            None => store.link_spent(id),
        }
    }

    /// The link key as the batch has left it.
    fn link_key<S: Stored>(&self, store: &S) -> Result<Option<[u8; 32]>, S::Error> {
        match self.link_key {
            Some(key) => Ok(Some(key)),
            None => store.link_key(),
        }
    }

    /// A recipient's last digest's time as the batch has left it.
    fn digest_through<S: Stored>(
        &self,
        store: &S,
        recipient: &str,
    ) -> Result<Option<DigestMark>, S::Error> {
        match self.digests.get(&recipient.to_ascii_lowercase()) {
            Some(at) => Ok(Some(*at)),
            None => store.digest_through(recipient),
        }
    }

    /// The session of digest `digest` as the batch has left it.
    fn session<S: Stored>(&self, store: &S, digest: &Hash) -> Result<Option<Session>, S::Error> {
        match self.sessions.get(digest) {
            Some(session) => Ok(session.clone()),
            None => store.session(digest),
        }
    }
}

/// Message `id`'s entry in one of the batch's maps, read from the store the first
/// time the batch touches it.
fn through<V, E>(
    map: &mut HashMap<MessageId, Option<V>>,
    id: MessageId,
    stored: impl FnOnce() -> Result<Option<V>, E>,
) -> Result<&mut Option<V>, E> {
    Ok(match map.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(stored()?),
    })
}

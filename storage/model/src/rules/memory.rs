//! A stored state in memory, for the rules' tests: what a database would answer,
//! without one.

use std::collections::{BTreeMap, BTreeSet};

use super::{Changes, Stored, Write};
use crate::event::{Command, EventKind, Hash, Op};
use crate::message::{Envelope, MessageId, QuarantineRecord, QueueRecord};
use crate::policy::PolicyVersion;
use crate::recipient::{DigestMark, RecipientLists};
use crate::signer::Signers;
use crate::token::ApiToken;
use crate::user::{ConsoleUser, Session};

#[derive(Debug, Default)]
pub struct Memory {
    pub queue: BTreeMap<MessageId, QueueRecord>,
    pub quarantine: BTreeMap<MessageId, QuarantineRecord>,
    pub tokens: BTreeMap<String, ApiToken>,
    /// Names of revoked tokens.
    pub retired: BTreeSet<String>,
    pub users: BTreeMap<String, ConsoleUser>,
    /// Names of removed users.
    pub retired_users: BTreeSet<String>,
    pub sessions: BTreeMap<Hash, Session>,
    /// The `message.received` events' envelopes, by message and sequence number.
    pub received: BTreeMap<(MessageId, u64), Envelope>,
    pub bodies: BTreeMap<MessageId, Vec<u8>>,
    pub signers: BTreeMap<u64, Signers>,
    pub policies: BTreeMap<u64, PolicyVersion>,
    pub lists: BTreeMap<String, RecipientLists>,
    pub spent: BTreeMap<Hash, i64>,
    pub link_key: Option<[u8; 32]>,
    pub digests: BTreeMap<String, DigestMark>,
}

impl Stored for Memory {
    type Error = crate::Error;

    fn queue_record(&self, id: MessageId) -> crate::Result<Option<QueueRecord>> {
        Ok(self.queue.get(&id).cloned())
    }

    fn quarantine_record(&self, id: MessageId) -> crate::Result<Option<QuarantineRecord>> {
        Ok(self.quarantine.get(&id).cloned())
    }

    fn token_named(&self, name: &str) -> crate::Result<Option<ApiToken>> {
        Ok(self.tokens.get(name).cloned())
    }

    fn token_name_retired(&self, name: &str) -> crate::Result<bool> {
        Ok(self.retired.contains(name))
    }

    fn console_user(&self, name: &str) -> crate::Result<Option<ConsoleUser>> {
        Ok(self.users.get(name).cloned())
    }

    fn user_name_retired(&self, name: &str) -> crate::Result<bool> {
        Ok(self.retired_users.contains(name))
    }

    fn session(&self, digest: &Hash) -> crate::Result<Option<Session>> {
        Ok(self.sessions.get(digest).cloned())
    }

    fn signers(&self, node: u64) -> crate::Result<Signers> {
        Ok(self.signers.get(&node).cloned().unwrap_or_default())
    }

    fn current_policy(&self) -> crate::Result<Option<PolicyVersion>> {
        Ok(self.policies.values().next_back().cloned())
    }

    fn recipient_lists(&self, recipient: &str) -> crate::Result<RecipientLists> {
        Ok(self
            .lists
            .get(&recipient.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default())
    }

    fn link_spent(&self, id: &Hash) -> crate::Result<Option<i64>> {
        Ok(self.spent.get(id).copied())
    }

    fn link_key(&self) -> crate::Result<Option<[u8; 32]>> {
        Ok(self.link_key)
    }

    fn digest_through(&self, recipient: &str) -> crate::Result<Option<DigestMark>> {
        Ok(self.digests.get(&recipient.to_ascii_lowercase()).copied())
    }

    fn received_envelope(&self, id: MessageId, seq: u64) -> crate::Result<Option<Envelope>> {
        Ok(self.received.get(&(id, seq)).cloned())
    }

    fn quarantined_before(
        &self,
        end: MessageId,
        visit: &mut dyn FnMut(QuarantineRecord) -> bool,
    ) -> crate::Result<()> {
        for record in self.quarantine.range(..end).map(|(_, r)| r.clone()) {
            if !visit(record) {
                break;
            }
        }
        Ok(())
    }
}

/// An operation proposed by `node` at `time_ms`; the rules read only those two, the
/// command comes to them on its own.
pub fn op(node: u64, time_ms: i64) -> Op {
    Op {
        id: 1,
        time_ms,
        node,
        command: Command::Record(EventKind::AuditNote {
            author: "test".into(),
            text: "the rules under test".into(),
        }),
    }
}

impl Memory {
    /// Writes a batch's changes, as the storage engine does.
    pub fn commit(&mut self, changes: Changes<'_>) {
        for write in changes.writes {
            match write {
                Write::Body(id, body) => {
                    self.bodies.insert(id, body.to_vec());
                }
                Write::DropBody(id) => {
                    self.bodies.remove(&id);
                }
                Write::Token(token) => {
                    self.tokens.insert(token.name.clone(), token);
                }
                Write::DropToken(token) => {
                    self.tokens.remove(&token.name);
                    self.retired.insert(token.name);
                }
                Write::User(user) => {
                    self.users.insert(user.name.clone(), user);
                }
                Write::DropUser(name) => {
                    self.users.remove(&name);
                    self.retired_users.insert(name);
                }
                Write::Session(session) => {
                    self.sessions.insert(session.digest, session);
                }
                Write::DropSession(digest) => {
                    self.sessions.remove(&digest);
                }
                Write::Signers(node, signers) => {
                    self.signers.insert(node, signers);
                }
                Write::Policy(version) => {
                    self.policies.insert(version.version, *version);
                }
                Write::RecipientLists(recipient, lists) => {
                    self.lists.insert(recipient, lists);
                }
                Write::LinkSpent(id, at) => {
                    self.spent.insert(id, at);
                }
                Write::LinkKey(key) => self.link_key = Some(key),
                Write::DigestThrough(recipient, at) => {
                    self.digests.insert(recipient, at);
                }
            }
        }
        for (id, record) in changes.quarantine {
            match record {
                Some(record) => self.quarantine.insert(id, record),
                None => self.quarantine.remove(&id),
            };
        }
        for (id, record) in changes.queue {
            match record {
                Some(record) => self.queue.insert(id, record),
                None => {
                    if !self.quarantine.contains_key(&id) {
                        self.bodies.remove(&id);
                    }
                    self.queue.remove(&id)
                }
            };
        }
    }
}

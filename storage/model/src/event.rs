//! The event schema: what a proposal asks for and what the event log records.
//!
//! Every type here is encoded through [`crate::codec`], so each stored record carries
//! the format version. Add new event kinds at the end of [`EventKind`] (bincode
//! encodes the variant index) and new commands at the end of [`Command`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::bayes::{BayesExpired, BayesExpiry, BayesLesson, BayesTrained};
use crate::codec;
use crate::message::{
    AcceptedMessage, DeliveryCommand, DeliveryReport, MessageId, MessageReceived, QuarantineAction,
    QuarantineCommand, QuarantineDecided, QuarantineExpiry, QuarantineRecord, RejectedMessage,
    Rejection, Verdict,
};
use crate::token::{TokenChanged, TokenCommand};
use crate::user::{UserChanged, UserCommand};

/// SHA-256 digest linking each event to the one before it.
pub type Hash = [u8; 32];

/// Unique id of one operation, chosen by the node that first received it. A retried
/// proposal carries the same id, so it is applied once (see [`OpResult::duplicate`]).
pub type OpId = u128;

/// The payload of one Raft entry: many operations gathered by the proposer and
/// committed together (application-level group commit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub ops: Vec<Op>,
}

/// One operation, stamped by the proposer with everything `apply` needs: apply never
/// reads the clock, the network or anything else that differs between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: OpId,
    /// Unix time in milliseconds, taken by the node that received the request.
    pub time_ms: i64,
    /// Node that received the request.
    pub node: u64,
    pub command: Command,
}

/// What an operation does to the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Append one event to the log.
    Record(EventKind),
    /// Store an accepted message's body, queue it for its recipients and record
    /// `message.received`, all in the same write. The operation id is the message id.
    AcceptMessage(Box<AcceptedMessage>),
    /// Take a delivery lease, report a delivery attempt, or act on a queued message
    /// for an administrator.
    Delivery(Box<DeliveryCommand>),
    /// Record the verdict of a message the policy refused at the end of data, and the
    /// refusal; nothing of the message is stored.
    RejectMessage(Box<RejectedMessage>),
    /// Learn a message as spam or ham for the Bayesian classifier, or forget it, and
    /// record `bayes.trained`.
    TrainBayes(Box<BayesLesson>),
    /// Release a quarantined message to the delivery queue or delete it, and record
    /// `quarantine.released` or `quarantine.deleted` (an `api.action` refusal when it
    /// is not in the quarantine).
    Quarantine(Box<QuarantineCommand>),
    /// Remove what the quarantine has held longer than its retention.
    ExpireQuarantine(Box<QuarantineExpiry>),
    /// Create or revoke an API token and record `token.created` or `token.revoked`
    /// (an `api.action` refusal when the name is taken or unknown).
    Token(Box<TokenCommand>),
    /// Move an event exporter's cursor forward: its receiver has accepted every event
    /// it was to get up to `seq`. Records no event (where an export stands is not a
    /// decision; recording it would give the exporter an event to ship per batch), and
    /// never moves a cursor back or past the end of the log.
    ExportCursor { exporter: String, seq: u64 },
    /// Remove the oldest events of the log (the event log's retention) and record
    /// `audit.purged` saying which, so the chain's new start is on record.
    PurgeEvents(Box<EventPurge>),
    /// Trust a node's checkpoint signing key from now on, in place of the one on
    /// record, and record `audit.key_rotated` (nothing when it is trusted already).
    TrustSigner(Box<SignerChanged>),
    /// Move an exporter's cursor forward with the number of records it has shipped
    /// (the last `export.seq` it gave out), and, when it gave up on the batch,
    /// record `siem.dead_letter` in the same operation (see [`crate::rules::export`]).
    /// [`Command::ExportCursor`] is what older builds proposed: still applied, it
    /// leaves the count as it is.
    ExportProgress(Box<ExportProgress>),
    /// Record the verdict of a message the policy refused at the end of data, and the
    /// refusal with the `From` address it weighed; nothing of the message is stored.
    /// [`Command::RejectMessage`] is what older builds proposed.
    RejectJudged(Box<crate::message::JudgedRejection>),
    /// Make a new version of the cluster's policy, made from the current one, and
    /// record `policy.changed` (an `api.action` refusal when the base version is not
    /// the current one; see [`crate::rules::policy`]).
    ChangePolicy(Box<crate::policy::PolicyChange>),
    /// Raise the cluster's active feature level to `level` (see [`crate::feature`]):
    /// proposed by the leader once every member said it supports `level`; a lower or
    /// equal level changes nothing (the level never goes down). Records no event.
    /// Builds before [`crate::feature::LEVELS`] cannot decode it; none is a member
    /// when it is proposed.
    RaiseFeatureLevel { level: u32 },
    /// Create a console user, set their password or remove them, or sign one in or
    /// out, and record `user.*` or `console.*` (an `api.action` refusal when the name
    /// is taken or unknown, `console.signin_failed` for a refused sign-in; see
    /// [`crate::rules::users`]). Builds before [`crate::feature::USERS`] cannot decode
    /// it.
    User(Box<UserCommand>),
    /// A recipient releases or deletes their copy of a held message, changes their
    /// allow or block list, or opens their portal, through a signed link, the portal
    /// or a console user acting for them; records `recipient.action` (and
    /// `quarantine.released` or `quarantine.deleted` for their copy). Refused when
    /// the link is spent or expired or the message is not held for them (see
    /// [`crate::rules::recipients`]). Builds before [`crate::feature::RECIPIENTS`]
    /// cannot decode it.
    Recipient(Box<crate::recipient::RecipientCommand>),
    /// Queue a recipient's quarantine digest and record `quarantine.digest`, unless a
    /// digest through the same time or later went to them already; or the link to
    /// their portal they asked for (`recipient.link_sent`).
    Digest(Box<crate::recipient::DigestCommand>),
    /// Set the cluster's key for signing recipients' links, unless it has one (the
    /// first proposed wins). Records no event (the key is a secret).
    LinkKey { key: [u8; 32] },
    /// Remove the classifier's longest unlearned tokens down to `keep`, the same on
    /// every node, and record `bayes.expired` (nothing when there are no more than
    /// `keep`; see [`crate::bayes::BayesCounts::oldest`]). Builds before
    /// [`crate::feature::BAYES_EXPIRY`] cannot decode it.
    ExpireBayes(BayesExpiry),
    /// [`Command::AcceptMessage`] with the delivery lease of the node that proposes it,
    /// for `lease_ms`, granted in the same operation when the message is queued (and
    /// `delivery.leased` recorded after its verdict): the accepting node starts
    /// delivering at once, without a Raft round of its own for the lease. A message
    /// quarantined takes no lease. Builds before [`crate::feature::LEASED_ACCEPT`]
    /// cannot decode it.
    AcceptLeased {
        message: Box<AcceptedMessage>,
        lease_ms: u64,
    },
}

/// How far an exporter has got: its receiver accepted (or it gave up on) the log up
/// to `seq`, and it numbered `shipped` records on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportProgress {
    pub exporter: String,
    pub seq: u64,
    pub shipped: u64,
    /// The batch was given up on: recorded as `siem.dead_letter`.
    pub dead_letter: Option<ExportDeadLetter>,
}

/// Which events a retention run removes: those before `before_seq`, at most `max`,
/// never one recorded in the same batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPurge {
    pub before_seq: u64,
    pub max: u32,
    pub reason: String,
}

/// `audit.purged`: events `first_seq..=through_seq` were removed; the chain now starts
/// after `through_seq`, whose hash was `through_hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventsPurged {
    pub first_seq: u64,
    pub through_seq: u64,
    pub through_hash: Hash,
    pub reason: String,
}

/// What happened. The event log's `type` is [`EventKind::type_name`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A note an administrator or auditor wrote into the audit trail.
    AuditNote { author: String, text: String },
    /// The SMTP ingress accepted a message (committed before the client's `250`).
    MessageReceived(Box<MessageReceived>),
    /// The SMTP ingress refused a command or a message for a reason worth auditing.
    MessageRejected(Box<Rejection>),
    /// Refusals came faster than they could be recorded one by one; this many were
    /// counted but not recorded individually.
    RejectionsSuppressed { count: u64 },
    /// A node asked to deliver a message, or accepted it with its lease
    /// ([`Command::AcceptLeased`]); `granted` says whether it may.
    DeliveryLeased {
        message_id: MessageId,
        /// The node holding the lease after this event.
        holder: u64,
        until_ms: i64,
        granted: bool,
    },
    /// A delivery attempt and what the next hop answered for each recipient.
    DeliveryAttempted(Box<DeliveryReport>),
    DeliverySucceeded {
        message_id: MessageId,
        recipients: Vec<String>,
    },
    DeliveryDeferred {
        message_id: MessageId,
        recipients: Vec<String>,
        next_attempt_ms: i64,
        reply: String,
    },
    /// Recipients that will not be delivered (5xx, or deferred for too long).
    DeliveryFailed {
        message_id: MessageId,
        recipients: Vec<String>,
        reply: String,
    },
    /// A delivery status notification about failed recipients was queued for the
    /// message's envelope sender.
    DeliveryBounced {
        message_id: MessageId,
        dsn_id: MessageId,
        sender: String,
        recipients: Vec<String>,
    },
    /// An API caller changed something (queue retry, hold, release, delete, ...), or
    /// tried to and was refused.
    ApiAction(Box<ApiAction>),
    /// The scanning pipeline's verdict on a message, committed with it.
    ScanVerdict(Box<Verdict>),
    /// A message was put in the quarantine by its verdict.
    MessageQuarantined(Box<QuarantineRecord>),
    /// The Bayesian classifier learned or forgot a message.
    BayesTrained(Box<BayesTrained>),
    /// An administrator released or deleted a quarantined message.
    QuarantineDecided(Box<QuarantineDecided>),
    /// A run of the quarantine's retention: how many messages it removed.
    QuarantineRetention {
        before_ms: i64,
        expired: u32,
        reason: String,
    },
    /// An API token was created or revoked.
    TokenChanged(Box<TokenChanged>),
    /// An administrator added, promoted or removed a cluster member through the API,
    /// or tried to and was refused (an `api.action`).
    MembershipChanged(Box<MembershipChanged>),
    /// A note written through the API, with the address it came from (notes recorded
    /// before addresses were kept are [`EventKind::AuditNote`]).
    Note {
        author: String,
        text: String,
        client_ip: Option<IpAddr>,
    },
    /// The leader's signed statement of where the chain stood (`audit.checkpoint`):
    /// a history rewritten and re-chained after it no longer matches it, and cannot
    /// be made to without the signing node's key.
    ChainCheckpoint(Box<ChainCheckpoint>),
    /// The event log's retention removed its oldest events.
    EventsPurged(Box<EventsPurged>),
    /// Someone read a message's content or verdicts, or searched or exported them
    /// (`access.read`).
    AccessRead(Box<AccessRead>),
    /// An exporter gave up on a batch its receiver refused for good and moved past it
    /// (`siem.dead_letter`); the events stay in the log.
    ExportDeadLettered(Box<ExportDeadLetter>),
    /// A node's checkpoint signing key became trusted, first or in place of its old
    /// one (`audit.key_rotated`).
    SignerChanged(Box<SignerChanged>),
    /// A new version of the cluster's policy rules from this event on
    /// (`policy.changed`).
    PolicyChanged(Box<crate::policy::PolicyChanged>),
    /// The policy rejected a message at the end of data (`message.rejected`, with the
    /// `From` address it weighed).
    PolicyRejected(Box<crate::message::PolicyRejection>),
    /// A console user was created, removed or given a new password, or signed in,
    /// failed to or signed out (`user.*`, `console.*`).
    UserChanged(Box<UserChanged>),
    /// A recipient acted on their quarantined mail or their lists, or opened their
    /// portal, or tried to and was refused (`recipient.action`).
    RecipientActed(Box<crate::recipient::RecipientActed>),
    /// A quarantine digest was queued for a recipient (`quarantine.digest`), or the
    /// link to their portal they asked for (`recipient.link_sent`).
    DigestSent(Box<crate::recipient::DigestSent>),
    /// The classifier's longest unlearned tokens were removed to keep it to its size
    /// (`bayes.expired`).
    BayesExpired(BayesExpired),
}

/// What kind of read an `access.read` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadKind {
    /// A quarantined message's parsed preview.
    Preview,
    /// A message's raw body.
    Raw,
    /// A message's trace: its record and every event about it.
    Trace,
    /// The event log exported or listed in bulk.
    Export,
    /// A search of the quarantine or the log by a person's address.
    Search,
}

impl ReadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadKind::Preview => "preview",
            ReadKind::Raw => "raw",
            ReadKind::Trace => "trace",
            ReadKind::Export => "export",
            ReadKind::Search => "search",
        }
    }
}

/// `access.read`: who read what, from where, and why if they said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessRead {
    pub kind: ReadKind,
    /// The message read, where the read concerns one.
    pub message_id: Option<MessageId>,
    /// The caller, as authenticated by the API.
    pub user: String,
    pub client_ip: Option<IpAddr>,
    /// The `?reason=` the caller gave.
    pub reason: Option<String>,
    /// The query of a search or an export, as asked.
    pub query: Option<String>,
}

/// `siem.dead_letter`: exporter `exporter` gave up, after `tries` refusals, on the
/// batch of events `first_seq..=last_seq` and moved its cursor past it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDeadLetter {
    pub exporter: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Events of the range the exporter's filter selected.
    pub events: u32,
    pub tries: u32,
    /// The receiver's last answer.
    pub error: String,
}

/// `audit.key_rotated`: node `node` signs checkpoints with `public_key` from now on,
/// in place of `previous` (`None`: its first trusted key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerChanged {
    pub node: u64,
    /// Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
    pub previous: Option<Vec<u8>>,
    /// The previous key's signature over [`SignerChanged::endorsed`], when the node
    /// still held it: the old key vouches for the new.
    pub endorsement: Option<Vec<u8>>,
}

impl SignerChanged {
    /// What the previous key signs: `"bulwark.signer" ‖ node (8 bytes, big-endian) ‖
    /// the new public key`.
    pub fn endorsed(node: u64, public_key: &[u8]) -> Vec<u8> {
        let mut message = b"bulwark.signer".to_vec();
        message.extend_from_slice(&node.to_be_bytes());
        message.extend_from_slice(public_key);
        message
    }

    /// True when the endorsement is the previous key's signature of the new one.
    pub fn endorsement_is_valid(&self) -> bool {
        match (&self.previous, &self.endorsement) {
            (Some(previous), Some(signature)) => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, previous)
                    .verify(&Self::endorsed(self.node, &self.public_key), signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// `audit.checkpoint`: event `seq` of the log has chain hash `hash`, signed with the
/// Ed25519 key of node `node` over [`ChainCheckpoint::message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCheckpoint {
    pub seq: u64,
    pub hash: Hash,
    pub node: u64,
    /// The signer's Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

impl ChainCheckpoint {
    /// What is signed: `"bulwark.checkpoint" ‖ seq (8 bytes, big-endian) ‖ hash`.
    pub fn message(seq: u64, hash: &Hash) -> Vec<u8> {
        let mut message = b"bulwark.checkpoint".to_vec();
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(hash);
        message
    }

    /// True when `signature` is the public key's over [`ChainCheckpoint::message`].
    pub fn signature_is_valid(&self) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public_key)
            .verify(&Self::message(self.seq, &self.hash), &self.signature)
            .is_ok()
    }
}

/// A change of the cluster's membership asked through the API: an `api.action` whose
/// `action` is `cluster.add_learner`, `cluster.promote` or `cluster.remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipChanged {
    pub action: String,
    /// The node added, promoted or removed.
    pub member: u64,
    /// Its cluster address, when it was added.
    pub addr: Option<String>,
    /// Raft log index of the membership entry, when the change was made.
    pub log_index: Option<u64>,
    pub user: String,
    pub client_ip: Option<IpAddr>,
    /// Why the change was refused or failed; `None`: it was made.
    pub refused: Option<String>,
}

/// The `api.action` event: who did what, from where, to which message, and whether
/// it was done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiAction {
    /// Dotted name of the action, e.g. `queue.hold`.
    pub action: String,
    /// The caller, as authenticated by the API.
    pub user: String,
    /// The caller's address as the API saw it (the peer of its connection).
    pub client_ip: Option<IpAddr>,
    pub message_id: Option<MessageId>,
    /// Recipients concerned: made due by a retry, held or released, or dropped (never
    /// to be delivered) by a delete.
    pub recipients: Vec<String>,
    /// Why the action was refused; `None`: it was done.
    pub refused: Option<String>,
}

impl EventKind {
    /// Dotted event type, as in the API's `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::AuditNote { .. } | EventKind::Note { .. } => "audit.note",
            EventKind::MessageReceived(_) => "message.received",
            EventKind::MessageRejected(_)
            | EventKind::PolicyRejected(_)
            | EventKind::RejectionsSuppressed { .. } => "message.rejected",
            EventKind::DeliveryLeased { .. } => "delivery.leased",
            EventKind::DeliveryAttempted(_) => "delivery.attempted",
            EventKind::DeliverySucceeded { .. } => "delivery.succeeded",
            EventKind::DeliveryDeferred { .. } => "delivery.deferred",
            EventKind::DeliveryFailed { .. } => "delivery.failed",
            EventKind::DeliveryBounced { .. } => "delivery.bounced",
            EventKind::ApiAction(_) => "api.action",
            EventKind::ScanVerdict(_) => "scan.verdict",
            EventKind::MessageQuarantined(_) => "message.quarantined",
            EventKind::BayesTrained(_) => "bayes.trained",
            EventKind::QuarantineDecided(q) => match q.decision.action {
                QuarantineAction::Release => "quarantine.released",
                QuarantineAction::Delete => "quarantine.deleted",
                QuarantineAction::Expire => "quarantine.expired",
            },
            EventKind::QuarantineRetention { .. } => "quarantine.retention",
            EventKind::TokenChanged(t) if t.created => "token.created",
            EventKind::TokenChanged(_) => "token.revoked",
            EventKind::MembershipChanged(_) => "api.action",
            EventKind::ChainCheckpoint(_) => "audit.checkpoint",
            EventKind::EventsPurged(_) => "audit.purged",
            EventKind::AccessRead(_) => "access.read",
            EventKind::ExportDeadLettered(_) => "siem.dead_letter",
            EventKind::SignerChanged(_) => "audit.key_rotated",
            EventKind::PolicyChanged(_) => "policy.changed",
            EventKind::UserChanged(u) => u.action.type_name(),
            EventKind::RecipientActed(_) => "recipient.action",
            EventKind::DigestSent(d) if d.through_ms.is_none() => "recipient.link_sent",
            EventKind::DigestSent(_) => "quarantine.digest",
            EventKind::BayesExpired(_) => "bayes.expired",
        }
    }

    /// The message this event is about, if any.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            EventKind::MessageReceived(m) => Some(m.message_id),
            EventKind::DeliveryAttempted(r) => Some(r.message_id),
            EventKind::DeliveryLeased { message_id, .. }
            | EventKind::DeliverySucceeded { message_id, .. }
            | EventKind::DeliveryDeferred { message_id, .. }
            | EventKind::DeliveryFailed { message_id, .. }
            | EventKind::DeliveryBounced { message_id, .. } => Some(*message_id),
            EventKind::ApiAction(a) => a.message_id,
            EventKind::ScanVerdict(v) => Some(v.message_id),
            EventKind::MessageQuarantined(q) => Some(q.message_id),
            EventKind::BayesTrained(b) => b.message_id,
            EventKind::QuarantineDecided(q) => Some(q.decision.message_id),
            EventKind::AccessRead(r) => r.message_id,
            EventKind::RecipientActed(r) => r.message_id,
            EventKind::DigestSent(d) => Some(d.digest_id),
            EventKind::AuditNote { .. }
            | EventKind::BayesExpired(_)
            | EventKind::ExportDeadLettered(_)
            | EventKind::SignerChanged(_)
            | EventKind::PolicyChanged(_)
            | EventKind::ChainCheckpoint(_)
            | EventKind::EventsPurged(_)
            | EventKind::Note { .. }
            | EventKind::QuarantineRetention { .. }
            | EventKind::TokenChanged(_)
            | EventKind::MembershipChanged(_)
            | EventKind::UserChanged(_)
            | EventKind::MessageRejected(_)
            | EventKind::PolicyRejected(_)
            | EventKind::RejectionsSuppressed { .. } => None,
        }
    }

    /// The fields of this event that event queries filter on, as its JSON shows them
    /// ([`StoredEvent::to_json`]), read without building the JSON: the event index
    /// keeps them for every event recorded, and a query checks each candidate by them.
    pub fn facets(&self) -> Facets<'_> {
        let mut f = Facets::default();
        match self {
            EventKind::MessageReceived(m) => {
                f.sender = Some(&m.envelope.mail_from);
                f.recipients = &m.envelope.rcpt_to;
                f.action = Some(m.action.as_str());
                f.client_ip = Some(m.client.ip);
            }
            EventKind::MessageRejected(r) => f.rejection(r),
            EventKind::PolicyRejected(r) => f.rejection(&r.rejection),
            EventKind::DeliverySucceeded { recipients, .. }
            | EventKind::DeliveryDeferred { recipients, .. }
            | EventKind::DeliveryFailed { recipients, .. } => f.recipients = recipients,
            EventKind::DeliveryBounced {
                sender, recipients, ..
            } => {
                f.sender = Some(sender);
                f.recipients = recipients;
            }
            EventKind::ApiAction(a) => {
                f.recipients = &a.recipients;
                f.acted(Some(&a.action), &a.user, a.client_ip);
            }
            EventKind::MembershipChanged(m) => f.acted(Some(&m.action), &m.user, m.client_ip),
            EventKind::UserChanged(u) => f.acted(Some(u.action.type_name()), &u.user, u.client_ip),
            EventKind::TokenChanged(t) => f.acted(Some(t.action()), &t.user, t.client_ip),
            EventKind::RecipientActed(r) => {
                f.recipients = std::slice::from_ref(&r.recipient);
                let user = r.user.as_ref().unwrap_or(&r.recipient);
                f.acted(Some(&r.action), user, r.client_ip);
            }
            EventKind::QuarantineDecided(q) => {
                f.sender = Some(&q.mail_from);
                f.recipients = &q.recipients;
                let d = &q.decision;
                f.acted(Some(d.action.as_str()), &d.user, d.client_ip);
            }
            EventKind::MessageQuarantined(q) => {
                f.sender = Some(&q.mail_from);
                f.recipients = &q.recipients;
                f.action = Some("quarantine");
            }
            EventKind::DigestSent(d) => {
                f.recipients = std::slice::from_ref(&d.recipient);
                f.action = Some("digest");
            }
            EventKind::ScanVerdict(v) => f.action = Some(v.action.as_str()),
            EventKind::AuditNote { author, .. } => f.user = Some(author),
            EventKind::Note {
                author, client_ip, ..
            } => f.acted(None, author, *client_ip),
            EventKind::AccessRead(r) => f.acted(None, &r.user, r.client_ip),
            EventKind::PolicyChanged(p) => f.acted(None, &p.user, p.client_ip),
            EventKind::BayesTrained(b) => f.acted(None, &b.user, b.client_ip),
            EventKind::RejectionsSuppressed { .. }
            | EventKind::DeliveryLeased { .. }
            | EventKind::DeliveryAttempted(_)
            | EventKind::QuarantineRetention { .. }
            | EventKind::ChainCheckpoint(_)
            | EventKind::EventsPurged(_)
            | EventKind::ExportDeadLettered(_)
            | EventKind::SignerChanged(_)
            | EventKind::BayesExpired(_) => {}
        }
        f
    }

    /// The API caller whose mutating call this event records (its `user.name`), if
    /// an API call made it: a queue or quarantine action, a release or deletion, a
    /// lesson, a token created or revoked, a console user changed, signed in or out
    /// (the person themself), a policy change, a membership change, a backup, a note,
    /// or the refusal of one. `None` for what the system does by
    /// itself (the retention's expiry, the bootstrap admin's enrolment, a policy
    /// seeded from a node's file: [`crate::token::is_system_actor`]) and for reads.
    pub fn api_caller(&self) -> Option<&str> {
        let user = match self {
            EventKind::ApiAction(a) => &a.user,
            EventKind::MembershipChanged(m) => &m.user,
            EventKind::QuarantineDecided(q) => &q.decision.user,
            EventKind::TokenChanged(t) => &t.user,
            EventKind::BayesTrained(b) => &b.user,
            EventKind::PolicyChanged(p) => &p.user,
            EventKind::UserChanged(u) => &u.user,
            EventKind::RecipientActed(r) => r.user.as_ref().unwrap_or(&r.recipient),
            EventKind::Note { author, .. } | EventKind::AuditNote { author, .. } => author,
            EventKind::MessageReceived(_)
            | EventKind::MessageRejected(_)
            | EventKind::RejectionsSuppressed { .. }
            | EventKind::DeliveryLeased { .. }
            | EventKind::DeliveryAttempted(_)
            | EventKind::DeliverySucceeded { .. }
            | EventKind::DeliveryDeferred { .. }
            | EventKind::DeliveryFailed { .. }
            | EventKind::DeliveryBounced { .. }
            | EventKind::ScanVerdict(_)
            | EventKind::MessageQuarantined(_)
            | EventKind::QuarantineRetention { .. }
            | EventKind::ChainCheckpoint(_)
            | EventKind::EventsPurged(_)
            | EventKind::AccessRead(_)
            | EventKind::ExportDeadLettered(_)
            | EventKind::SignerChanged(_)
            | EventKind::DigestSent(_)
            | EventKind::BayesExpired(_)
            | EventKind::PolicyRejected(_) => return None,
        };
        (!crate::token::is_system_actor(user)).then_some(user.as_str())
    }

    /// Fields of this kind in the API's JSON, named after Elastic Common Schema.
    fn json_fields(&self, out: &mut serde_json::Map<String, serde_json::Value>) {
        match self {
            EventKind::AuditNote { author, text } => {
                out.insert("message".into(), text.clone().into());
                out.insert("user".into(), serde_json::json!({ "name": author }));
            }
            EventKind::Note {
                author,
                text,
                client_ip,
            } => {
                out.insert("message".into(), text.clone().into());
                out.insert("user".into(), serde_json::json!({ "name": author }));
                if let Some(ip) = client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
            }
            EventKind::EventsPurged(p) => {
                out.insert(
                    "purge".into(),
                    serde_json::json!({
                        "first_seq": p.first_seq,
                        "through_seq": p.through_seq,
                        "through_hash": hex::encode(p.through_hash),
                        "count": p.through_seq + 1 - p.first_seq,
                    }),
                );
                out.insert("event".into(), serde_json::json!({ "reason": p.reason }));
            }
            EventKind::AccessRead(r) => {
                if let Some(id) = r.message_id {
                    out.insert("message_id".into(), id.to_string().into());
                }
                out.insert("user".into(), serde_json::json!({ "name": r.user }));
                if let Some(ip) = r.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                let mut event = serde_json::json!({ "action": "read", "kind": r.kind.as_str() });
                if let Some(reason) = &r.reason {
                    event["reason"] = reason.clone().into();
                }
                out.insert("event".into(), event);
                out.insert("kind".into(), r.kind.as_str().into());
                if let Some(query) = &r.query {
                    out.insert("query".into(), query.clone().into());
                }
            }
            EventKind::ExportDeadLettered(d) => {
                out.insert(
                    "siem".into(),
                    serde_json::json!({
                        "exporter": d.exporter,
                        "first_seq": d.first_seq,
                        "last_seq": d.last_seq,
                        "events": d.events,
                        "tries": d.tries,
                    }),
                );
                out.insert(
                    "event".into(),
                    serde_json::json!({ "outcome": "failure", "reason": d.error }),
                );
            }
            EventKind::SignerChanged(c) => {
                out.insert(
                    "signer".into(),
                    serde_json::json!({
                        "node": c.node,
                        "public_key": hex::encode(&c.public_key),
                        "previous": c.previous.as_ref().map(hex::encode),
                        "endorsed": c.endorsement_is_valid(),
                    }),
                );
            }
            EventKind::PolicyChanged(p) => {
                out.insert(
                    "policy".into(),
                    serde_json::json!({
                        "version": p.version,
                        "hash": hex::encode(p.hash),
                        "diff": p.diff,
                    }),
                );
                out.insert("user".into(), serde_json::json!({ "name": p.user }));
                if let Some(ip) = p.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                out.insert(
                    "event".into(),
                    serde_json::json!({
                        "action": "policy.change",
                        "outcome": "success",
                        "reason": p.reason,
                    }),
                );
            }
            EventKind::ChainCheckpoint(c) => {
                out.insert(
                    "checkpoint".into(),
                    serde_json::json!({
                        "seq": c.seq,
                        "hash": hex::encode(c.hash),
                        "node": c.node,
                        "public_key": hex::encode(&c.public_key),
                        "signature": hex::encode(&c.signature),
                    }),
                );
            }
            EventKind::MessageReceived(m) => received_fields(m, out),
            EventKind::MessageRejected(r) => rejection_fields(r, None, out),
            EventKind::PolicyRejected(r) => {
                rejection_fields(&r.rejection, r.header_from.as_deref(), out)
            }
            EventKind::RejectionsSuppressed { count } => {
                out.insert(
                    "event".into(),
                    serde_json::json!({ "outcome": "failure", "reason": "suppressed" }),
                );
                out.insert("count".into(), (*count).into());
            }
            EventKind::DeliveryLeased {
                message_id,
                holder,
                until_ms,
                granted,
            } => {
                out.insert("message_id".into(), message_id.to_string().into());
                out.insert(
                    "lease".into(),
                    serde_json::json!({
                        "holder": holder,
                        "until": rfc3339(*until_ms),
                        "granted": granted,
                    }),
                );
            }
            EventKind::DeliveryAttempted(r) => {
                out.insert("message_id".into(), r.message_id.to_string().into());
                let results: Vec<_> = r
                    .results
                    .iter()
                    .map(|x| {
                        serde_json::json!({
                            "address": x.address,
                            "reply": x.reply,
                            "outcome": match x.outcome {
                                crate::message::RecipientOutcome::Delivered => "delivered",
                                crate::message::RecipientOutcome::Deferred { .. } => "deferred",
                                crate::message::RecipientOutcome::Failed => "failed",
                            },
                        })
                    })
                    .collect();
                let mut destination = serde_json::json!({ "address": r.next_hop });
                if let Some(tls) = &r.tls {
                    destination["tls"] = serde_json::json!({
                        "version": tls.version,
                        "cipher": tls.cipher,
                    });
                }
                out.insert("destination".into(), destination);
                out.insert("results".into(), results.into());
                out.insert("duration_ms".into(), r.duration_ms.into());
            }
            EventKind::DeliverySucceeded {
                message_id,
                recipients,
            } => {
                out.insert("message_id".into(), message_id.to_string().into());
                out.insert(
                    "email".into(),
                    serde_json::json!({ "to": { "address": recipients } }),
                );
            }
            EventKind::DeliveryDeferred {
                message_id,
                recipients,
                next_attempt_ms,
                reply,
            } => {
                out.insert("message_id".into(), message_id.to_string().into());
                out.insert(
                    "email".into(),
                    serde_json::json!({ "to": { "address": recipients } }),
                );
                out.insert("next_attempt".into(), rfc3339(*next_attempt_ms).into());
                out.insert("smtp".into(), serde_json::json!({ "reply": reply }));
            }
            EventKind::DeliveryFailed {
                message_id,
                recipients,
                reply,
            } => {
                out.insert("message_id".into(), message_id.to_string().into());
                out.insert(
                    "email".into(),
                    serde_json::json!({ "to": { "address": recipients } }),
                );
                out.insert("smtp".into(), serde_json::json!({ "reply": reply }));
            }
            EventKind::DeliveryBounced {
                message_id,
                dsn_id,
                sender,
                recipients,
            } => {
                out.insert("message_id".into(), message_id.to_string().into());
                out.insert(
                    "email".into(),
                    serde_json::json!({
                        "sender": { "address": sender },
                        "to": { "address": recipients },
                    }),
                );
                out.insert(
                    "dsn".into(),
                    serde_json::json!({ "message_id": dsn_id.to_string() }),
                );
            }
            EventKind::ApiAction(a) => {
                out.insert("action".into(), a.action.clone().into());
                if let Some(id) = a.message_id {
                    out.insert("message_id".into(), id.to_string().into());
                }
                out.insert("user".into(), serde_json::json!({ "name": a.user }));
                if let Some(ip) = a.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                if !a.recipients.is_empty() {
                    out.insert(
                        "email".into(),
                        serde_json::json!({ "to": { "address": a.recipients } }),
                    );
                }
                out.insert("event".into(), action_outcome(&a.action, &a.refused));
            }
            EventKind::MembershipChanged(m) => {
                out.insert("action".into(), m.action.clone().into());
                out.insert("user".into(), serde_json::json!({ "name": m.user }));
                if let Some(ip) = m.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                out.insert(
                    "cluster".into(),
                    serde_json::json!({
                        "member": { "id": m.member, "addr": m.addr },
                        "log_index": m.log_index,
                    }),
                );
                out.insert("event".into(), action_outcome(&m.action, &m.refused));
            }
            EventKind::UserChanged(u) => {
                let action = u.action.type_name();
                out.insert("action".into(), action.into());
                let roles: Vec<&str> = u.role.iter().map(|r| r.as_str()).collect();
                out.insert(
                    "user".into(),
                    serde_json::json!({
                        "name": u.user,
                        "target": { "name": u.name, "roles": roles },
                    }),
                );
                if let Some(ip) = u.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                out.insert("event".into(), action_outcome(action, &u.refused));
                if let Some(until) = u.locked_until_ms {
                    out.insert("locked_until".into(), rfc3339(until).into());
                }
            }
            EventKind::RecipientActed(r) => {
                out.insert("action".into(), r.action.clone().into());
                if let Some(id) = r.message_id {
                    out.insert("message_id".into(), id.to_string().into());
                }
                let name = r.user.as_ref().unwrap_or(&r.recipient);
                out.insert("user".into(), serde_json::json!({ "name": name }));
                out.insert(
                    "email".into(),
                    serde_json::json!({ "to": { "address": [r.recipient] } }),
                );
                if let Some(ip) = r.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                let mut event = action_outcome(&r.action, &r.refused);
                event["via"] = r.via.clone().into();
                out.insert("event".into(), event);
                if let Some(entry) = &r.entry {
                    out.insert("entry".into(), entry.clone().into());
                }
            }
            EventKind::DigestSent(d) => {
                out.insert("action".into(), "digest".into());
                out.insert("message_id".into(), d.digest_id.to_string().into());
                out.insert(
                    "email".into(),
                    serde_json::json!({ "to": { "address": [d.recipient] } }),
                );
                let mut digest = serde_json::json!({ "messages": d.messages });
                if let Some(through) = d.through_ms {
                    digest["through"] = rfc3339(through).into();
                }
                out.insert("digest".into(), digest);
            }
            EventKind::BayesExpired(b) => {
                out.insert(
                    "event".into(),
                    serde_json::json!({ "action": "expire", "outcome": "success" }),
                );
                let mut bayes = serde_json::json!({
                    "tokens_before": b.before,
                    "tokens_removed": b.removed,
                    "max_tokens": b.max,
                });
                if b.newest_removed_day > 0 {
                    bayes["removed_last_learned_by"] =
                        rfc3339(i64::from(b.newest_removed_day) * 86_400_000)[..10].into();
                }
                out.insert("bayes".into(), bayes);
            }
            EventKind::ScanVerdict(v) => verdict_fields(v, out),
            EventKind::MessageQuarantined(q) => {
                out.insert("message_id".into(), q.message_id.to_string().into());
                let mut email = serde_json::json!({
                    "sender": { "address": q.mail_from },
                    "to": { "address": q.recipients },
                });
                if let Some(from) = &q.header_from {
                    email["from"] = serde_json::json!({ "address": [from] });
                }
                if let Some(subject) = &q.subject {
                    email["subject"] = subject.clone().into();
                }
                out.insert("email".into(), email);
                out.insert("action".into(), "quarantine".into());
                out.insert(
                    "event".into(),
                    serde_json::json!({ "action": "quarantine", "reason": q.reason }),
                );
                out.insert("size".into(), q.size.into());
                out.insert("score".into(), q.score.into());
            }
            EventKind::QuarantineDecided(q) => {
                let d = &q.decision;
                out.insert("message_id".into(), d.message_id.to_string().into());
                out.insert("action".into(), d.action.as_str().into());
                out.insert("user".into(), serde_json::json!({ "name": d.user }));
                if let Some(ip) = d.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                out.insert(
                    "email".into(),
                    serde_json::json!({
                        "sender": { "address": q.mail_from },
                        "to": { "address": q.recipients },
                    }),
                );
                out.insert(
                    "event".into(),
                    serde_json::json!({
                        "action": d.action.as_str(),
                        "outcome": "success",
                        "reason": d.reason,
                    }),
                );
            }
            EventKind::QuarantineRetention {
                before_ms,
                expired,
                reason,
            } => {
                out.insert(
                    "event".into(),
                    serde_json::json!({ "action": "quarantine.retention", "reason": reason }),
                );
                out.insert(
                    "quarantine".into(),
                    serde_json::json!({ "before": rfc3339(*before_ms), "expired": expired }),
                );
            }
            EventKind::TokenChanged(t) => {
                let action = t.action();
                out.insert("action".into(), action.into());
                out.insert("user".into(), serde_json::json!({ "name": t.user }));
                if let Some(ip) = t.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                out.insert(
                    "event".into(),
                    serde_json::json!({ "action": action, "outcome": "success" }),
                );
                out.insert(
                    "token".into(),
                    serde_json::json!({ "name": t.name, "role": t.role.as_str() }),
                );
            }
            EventKind::BayesTrained(b) => {
                if let Some(id) = b.message_id {
                    out.insert("message_id".into(), id.to_string().into());
                }
                out.insert("user".into(), serde_json::json!({ "name": b.user }));
                if let Some(ip) = b.client_ip {
                    out.insert("source".into(), serde_json::json!({ "ip": ip.to_string() }));
                }
                let action = if b.class.is_some() { "learn" } else { "forget" };
                out.insert(
                    "event".into(),
                    serde_json::json!({ "action": action, "outcome": "success" }),
                );
                out.insert(
                    "bayes".into(),
                    serde_json::json!({
                        "class": b.class.map(|c| c.as_str()),
                        "previous": b.previous.map(|c| c.as_str()),
                        "changed": b.changed(),
                        "digest": hex::encode(b.digest),
                        "tokens": b.tokens,
                        "spam_messages": b.spam_messages,
                        "ham_messages": b.ham_messages,
                    }),
                );
            }
        }
    }
}

/// What event queries filter on ([`EventKind::facets`]), each as the event's JSON
/// has it: `email.sender.address`, `email.to.address`, `action`, `source.ip` and
/// `user.name`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facets<'a> {
    pub sender: Option<&'a str>,
    pub recipients: &'a [String],
    pub action: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub user: Option<&'a str>,
}

impl<'a> Facets<'a> {
    fn rejection(&mut self, r: &'a Rejection) {
        self.sender = r.mail_from.as_deref();
        self.recipients = &r.rcpt_to;
        self.client_ip = Some(r.client.ip);
    }

    /// What an API caller did (`action`), who (`user`) and from where.
    fn acted(&mut self, action: Option<&'a str>, user: &'a str, client_ip: Option<IpAddr>) {
        self.action = action;
        self.user = Some(user);
        self.client_ip = client_ip;
    }
}

/// `scan.*`: the verdict with every symbol, authentication result, finding and
/// engine run; `action` at the top level as in `message.received`.
/// `message.rejected`: who was refused what, and how.
fn rejection_fields(
    r: &crate::message::Rejection,
    header_from: Option<&str>,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    let mut email = serde_json::Map::new();
    if let Some(from) = &r.mail_from {
        email.insert("sender".into(), serde_json::json!({ "address": from }));
    }
    if let Some(from) = header_from {
        email.insert("from".into(), serde_json::json!({ "address": [from] }));
    }
    if !r.rcpt_to.is_empty() {
        email.insert("to".into(), serde_json::json!({ "address": r.rcpt_to }));
    }
    out.insert("email".into(), email.into());
    client_fields(&r.client, out);
    out.insert(
        "event".into(),
        serde_json::json!({ "outcome": "failure", "reason": r.reason }),
    );
    out.insert("smtp".into(), serde_json::json!({ "reply": r.reply }));
}

/// `event.action`, `event.outcome` and, when refused, `event.reason` of an API action.
fn action_outcome(action: &str, refused: &Option<String>) -> serde_json::Value {
    let mut event = serde_json::json!({
        "action": action,
        "outcome": if refused.is_some() { "failure" } else { "success" },
    });
    if let Some(reason) = refused {
        event["reason"] = reason.clone().into();
    }
    event
}

fn verdict_fields(v: &Verdict, out: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    out.insert("message_id".into(), v.message_id.to_string().into());
    out.insert("action".into(), v.action.as_str().into());
    out.insert("policy_version".into(), v.policy_version().into());
    out.insert(
        "event".into(),
        json!({ "action": v.action.as_str(), "reason": v.reason }),
    );
    let symbols: Vec<_> = v
        .symbols
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "score": s.score,
                "description": s.description,
                "engine": s.engine,
            })
        })
        .collect();
    let authentication: Vec<_> = v
        .authentication
        .iter()
        .map(|a| json!({ "method": a.method, "result": a.result, "detail": a.detail }))
        .collect();
    let findings: Vec<_> = v
        .findings
        .iter()
        .map(|f| {
            json!({
                "kind": f.kind,
                "name": f.name,
                "location": f.location,
                "engine": f.engine,
            })
        })
        .collect();
    let engines: Vec<_> = v
        .engines
        .iter()
        .map(|e| {
            json!({
                "name": e.engine,
                "version": e.version,
                "ms": e.ms,
                "timed_out": e.timed_out,
            })
        })
        .collect();
    out.insert(
        "scan".into(),
        json!({
            "score": v.score,
            "thresholds": {
                "tag": v.thresholds.tag,
                "quarantine": v.thresholds.quarantine,
                "reject": v.thresholds.reject,
            },
            "symbols": symbols,
            "authentication": authentication,
            "findings": findings,
            "engines": engines,
        }),
    );
}

fn received_fields(m: &MessageReceived, out: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let id = m.message_id.to_string();
    out.insert("message_id".into(), id.clone().into());
    let mut email = json!({
        "local_id": id,
        "sender": { "address": m.envelope.mail_from },
        "to": { "address": m.envelope.rcpt_to },
    });
    if let Some(from) = &m.header_from {
        email["from"] = json!({ "address": [from] });
    }
    if let Some(subject) = &m.subject {
        email["subject"] = subject.clone().into();
    }
    if let Some(message_id) = &m.header_message_id {
        email["message_id"] = message_id.clone().into();
    }
    out.insert("email".into(), email);
    client_fields(&m.client, out);
    out.insert("action".into(), m.action.as_str().into());
    out.insert("size".into(), m.size.into());
    out.insert(
        "smtp".into(),
        json!({
            "protocol": m.protocol,
            "smtputf8": m.envelope.smtputf8,
            "eight_bit": m.envelope.eight_bit,
        }),
    );
    out.insert(
        "timings".into(),
        json!({
            "session_ms": m.timings.session_ms,
            "transfer_ms": m.timings.transfer_ms,
            "scan_ms": m.timings.scan_ms,
        }),
    );
}

/// `source.*`, `tls.*` and the HELO name, named after Elastic Common Schema.
fn client_fields(c: &crate::message::Client, out: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let mut source = json!({ "ip": c.ip.to_string(), "port": c.port });
    if let Some(helo) = &c.helo {
        source["domain"] = helo.clone().into();
    }
    if let Some(proxy) = &c.proxy {
        source["proxy_ip"] = proxy.to_string().into();
    }
    out.insert("source".into(), source);
    if let Some(tls) = &c.tls {
        out.insert(
            "tls".into(),
            json!({
                "established": true,
                "version": tls.version,
                "cipher": tls.cipher,
                "client": { "server_name": tls.sni },
            }),
        );
    }
}

/// The result of applying one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Sequence number of the (last) event the operation recorded; for an operation
    /// that records none, the last event of the log when it was applied.
    pub seq: u64,
    /// Chain hash of that event.
    pub hash: Hash,
    /// True when the operation had been applied before (a retried proposal).
    pub duplicate: bool,
    /// Set when the state machine declined the command (e.g. a delivery lease held by
    /// another node); the refusal is still an event.
    pub refused: Option<String>,
}

/// An event as the state machine assigns it: its place in the log and its content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time_ms: i64,
    pub node: u64,
    /// Raft log index of the entry that carried it.
    pub raft_index: u64,
    pub op_id: OpId,
    pub kind: EventKind,
}

/// An event with its links in the hash chain, as stored in the `events` column family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: Event,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl Event {
    /// `SHA-256("bulwark.event" ‖ prev_hash ‖ encode(event))`.
    pub fn chain_hash(&self, prev_hash: &Hash) -> crate::Result<Hash> {
        let mut hasher = Sha256::new();
        hasher.update(b"bulwark.event");
        hasher.update(prev_hash);
        hasher.update(codec::encode(self)?);
        Ok(hasher.finalize().into())
    }
}

impl StoredEvent {
    /// True when `hash` is what the chain rule gives for this event and `prev_hash`.
    pub fn hash_is_valid(&self) -> bool {
        self.event
            .chain_hash(&self.prev_hash)
            .is_ok_and(|h| h == self.hash)
    }

    /// The event as the API and exporters show it.
    pub fn to_json(&self) -> serde_json::Value {
        let e = &self.event;
        let mut map = serde_json::Map::new();
        map.insert("seq".into(), e.seq.into());
        map.insert("time".into(), rfc3339(e.time_ms).into());
        map.insert("type".into(), e.kind.type_name().into());
        map.insert("node".into(), e.node.into());
        map.insert("raft_index".into(), e.raft_index.into());
        map.insert("hash".into(), hex::encode(self.hash).into());
        map.insert("prev_hash".into(), hex::encode(self.prev_hash).into());
        e.kind.json_fields(&mut map);
        if e.kind.api_caller().is_some() {
            let event = map
                .entry("event")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(event) = event.as_object_mut() {
                event.insert("provider".into(), API_PROVIDER.into());
            }
        }
        serde_json::Value::Object(map)
    }
}

/// `event.provider` of every event an API caller's mutating call made (ECS: the
/// source of the event, as a cloud audit trail names the API called), so that one
/// SIEM rule (`event.provider: "api"`) sees them all, each with `user.name`.
pub const API_PROVIDER: &str = "api";

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(time_ms: i64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let ms = t.millisecond();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => time_ms.to_string(),
    }
}

/// Result of walking the hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checked: u64,
    /// Signed checkpoints found and checked (signature, and the hash they name).
    #[serde(default)]
    pub checkpoints: u64,
    /// The keys that signed them, as `node:hex public key`.
    #[serde(default)]
    pub signers: Vec<String>,
    /// The last event removed by the log's retention (0: none); the walk starts after
    /// it, from the hash it had.
    #[serde(default)]
    pub purged_through: u64,
    /// Hash of the last event checked (hex); all zeros for an empty log.
    pub head: String,
    pub first_bad_seq: Option<u64>,
    /// What was wrong at `first_bad_seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(seq: u64) -> Event {
        Event {
            seq,
            time_ms: 1_700_000_000_123,
            node: 1,
            raft_index: seq + 3,
            op_id: u128::from(seq),
            kind: EventKind::AuditNote {
                author: "admin".into(),
                text: format!("note {seq}"),
            },
        }
    }

    #[test]
    fn chain_hash_depends_on_previous_and_content() {
        let zero = [0u8; 32];
        let h1 = note(1).chain_hash(&zero).unwrap();
        assert_ne!(h1, note(2).chain_hash(&zero).unwrap());
        assert_ne!(h1, note(1).chain_hash(&[1u8; 32]).unwrap());
        let stored = StoredEvent {
            event: note(1),
            prev_hash: zero,
            hash: h1,
        };
        assert!(stored.hash_is_valid());
        let mut edited = stored.clone();
        edited.event.time_ms += 1;
        assert!(!edited.hash_is_valid());
    }

    #[test]
    fn json_has_the_interface_fields() {
        let stored = StoredEvent {
            event: note(4),
            prev_hash: [0; 32],
            hash: [7; 32],
        };
        let json = stored.to_json();
        assert_eq!(json["seq"], 4);
        assert_eq!(json["type"], "audit.note");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["message"], "note 4");
        assert_eq!(json["user"]["name"], "admin");
        assert_eq!(json["hash"], hex::encode([7u8; 32]));
    }

    #[test]
    fn what_api_callers_change_is_marked_with_their_name_and_what_the_system_does_is_not() {
        use crate::message::{QuarantineAction, QuarantineCommand, QuarantineDecided};
        let decided = |action, user: &str| {
            EventKind::QuarantineDecided(Box::new(QuarantineDecided {
                decision: QuarantineCommand {
                    message_id: MessageId(7),
                    action,
                    reason: "why".into(),
                    user: user.into(),
                    client_ip: None,
                },
                mail_from: "a@x.test".into(),
                recipients: vec!["b@example.test".into()],
            }))
        };
        let created = |user: &str| {
            EventKind::TokenChanged(Box::new(TokenChanged {
                name: "admin".into(),
                role: crate::token::Role::Admin,
                created: true,
                user: user.into(),
                client_ip: None,
            }))
        };
        let json = |kind: EventKind| {
            let mut event = note(6);
            event.kind = kind;
            StoredEvent {
                event,
                prev_hash: [0; 32],
                hash: [2; 32],
            }
            .to_json()
        };
        for (kind, by) in [
            (decided(QuarantineAction::Release, "olivia"), "olivia"),
            (created("admin@node2"), "admin@node2"),
            (note(1).kind, "admin"),
        ] {
            let shown = json(kind);
            assert_eq!(shown["event"]["provider"], API_PROVIDER, "{shown}");
            assert_eq!(shown["user"]["name"], by, "{shown}");
        }
        for kind in [
            decided(QuarantineAction::Expire, crate::token::RETENTION_ACTOR),
            created(crate::token::BOOTSTRAP_ACTOR),
            EventKind::RejectionsSuppressed { count: 3 },
        ] {
            let shown = json(kind);
            assert!(shown["event"].get("provider").is_none(), "{shown}");
        }
    }

    #[test]
    fn a_lockout_says_whom_it_locked_until_when_and_why() {
        use crate::user::{UserAction, UserChanged, WRONG_CREDENTIALS};
        let mut event = note(8);
        event.kind = EventKind::UserChanged(Box::new(UserChanged {
            action: UserAction::SignInFailed,
            name: "alice".into(),
            role: Some(crate::token::Role::Operator),
            user: "alice".into(),
            client_ip: Some("192.0.2.9".parse().unwrap()),
            refused: Some(WRONG_CREDENTIALS.into()),
            locked_until_ms: Some(1_700_000_900_123),
        }));
        let json = StoredEvent {
            event,
            prev_hash: [0; 32],
            hash: [1; 32],
        }
        .to_json();
        assert_eq!(json["type"], "console.signin_failed");
        assert_eq!(json["action"], "console.signin_failed");
        assert_eq!(json["user"]["name"], "alice");
        assert_eq!(json["user"]["target"]["name"], "alice");
        assert_eq!(json["user"]["target"]["roles"][0], "operator");
        assert_eq!(json["source"]["ip"], "192.0.2.9");
        assert_eq!(json["event"]["action"], "console.signin_failed");
        assert_eq!(json["event"]["outcome"], "failure");
        assert_eq!(json["event"]["reason"], WRONG_CREDENTIALS);
        assert_eq!(json["event"]["provider"], API_PROVIDER);
        assert_eq!(json["locked_until"], "2023-11-14T22:28:20.123Z");
    }

    #[test]
    fn api_actions_say_who_did_what_from_where() {
        let mut event = note(5);
        event.kind = EventKind::ApiAction(Box::new(ApiAction {
            action: "queue.delete".into(),
            user: "admin".into(),
            client_ip: Some("192.0.2.9".parse().unwrap()),
            message_id: Some(MessageId(77)),
            recipients: vec!["bob@example.test".into()],
            refused: None,
        }));
        let stored = StoredEvent {
            event,
            prev_hash: [0; 32],
            hash: [1; 32],
        };
        let json = stored.to_json();
        assert_eq!(json["type"], "api.action");
        assert_eq!(json["action"], "queue.delete");
        assert_eq!(json["event"]["action"], "queue.delete");
        assert_eq!(json["event"]["provider"], "api");
        assert_eq!(json["event"]["outcome"], "success");
        assert_eq!(json["message_id"], MessageId(77).to_string());
        assert_eq!(json["user"]["name"], "admin");
        assert_eq!(json["source"]["ip"], "192.0.2.9");
        assert_eq!(json["email"]["to"]["address"][0], "bob@example.test");
        assert_eq!(stored.event.kind.message_id(), Some(MessageId(77)));
    }

    /// One event of every kind, each with what its kind can carry: a sender, several
    /// recipients, a client address, a user. Add the new kind here when adding one.
    fn one_of_every_kind() -> Vec<EventKind> {
        use crate::bayes::{BayesClass, BayesExpired};
        use crate::message::{PolicyRejection, QuarantineRecord, Rejection};
        use crate::policy::PolicyChanged;
        use crate::recipient::{DigestSent, RecipientActed};
        use crate::samples;
        use crate::token::Role;
        use crate::user::{UserAction, UserChanged};
        let id = MessageId(9);
        let ip: Option<IpAddr> = Some("2001:db8::7".parse().unwrap());
        let to = || vec!["Bob@Example.test".to_string(), "carol@example.test".into()];
        let rejection = Rejection {
            client: samples::received().client,
            mail_from: Some("mallory@bad.test".into()),
            rcpt_to: to(),
            reason: "relay_denied".into(),
            reply: "554 5.7.1 no".into(),
        };
        let mut null_sender = samples::received();
        null_sender.envelope.mail_from = String::new();
        let mut tagged = samples::verdict(id);
        tagged.action = crate::message::Action::Tag;
        let decided = |action| {
            EventKind::QuarantineDecided(Box::new(QuarantineDecided {
                decision: QuarantineCommand {
                    message_id: id,
                    action,
                    reason: "why".into(),
                    user: "olivia".into(),
                    client_ip: ip,
                },
                mail_from: "a@x.test".into(),
                recipients: to(),
            }))
        };
        let digest = |through_ms| {
            EventKind::DigestSent(Box::new(DigestSent {
                recipient: "bob@example.test".into(),
                digest_id: id,
                messages: 3,
                through_ms,
            }))
        };
        let acted = |user: Option<&str>| {
            EventKind::RecipientActed(Box::new(RecipientActed {
                recipient: "bob@example.test".into(),
                action: "release".into(),
                via: "portal".into(),
                user: user.map(Into::into),
                message_id: Some(id),
                entry: None,
                client_ip: ip,
                refused: None,
            }))
        };
        let token = |created| {
            EventKind::TokenChanged(Box::new(TokenChanged {
                name: "siem".into(),
                role: Role::Auditor,
                created,
                user: "admin".into(),
                client_ip: ip,
            }))
        };
        vec![
            EventKind::AuditNote {
                author: "admin".into(),
                text: "t".into(),
            },
            EventKind::MessageReceived(Box::new(samples::received())),
            EventKind::MessageReceived(Box::new(null_sender)),
            EventKind::MessageRejected(Box::new(rejection.clone())),
            EventKind::MessageRejected(Box::new(Rejection {
                mail_from: None,
                rcpt_to: Vec::new(),
                ..rejection.clone()
            })),
            EventKind::RejectionsSuppressed { count: 2 },
            EventKind::DeliveryLeased {
                message_id: id,
                holder: 2,
                until_ms: 5,
                granted: true,
            },
            EventKind::DeliveryAttempted(Box::new(samples::delivered(id))),
            EventKind::DeliverySucceeded {
                message_id: id,
                recipients: to(),
            },
            EventKind::DeliveryDeferred {
                message_id: id,
                recipients: to(),
                next_attempt_ms: 7,
                reply: "451 later".into(),
            },
            EventKind::DeliveryFailed {
                message_id: id,
                recipients: to(),
                reply: "550 no".into(),
            },
            EventKind::DeliveryBounced {
                message_id: id,
                dsn_id: MessageId(10),
                sender: "alice@sender.test".into(),
                recipients: to(),
            },
            EventKind::ApiAction(Box::new(ApiAction {
                action: "queue.hold".into(),
                user: "admin".into(),
                client_ip: ip,
                message_id: Some(id),
                recipients: to(),
                refused: Some("held".into()),
            })),
            EventKind::ScanVerdict(Box::new(tagged)),
            EventKind::MessageQuarantined(Box::new(QuarantineRecord {
                message_id: id,
                received_seq: 1,
                time_ms: 2,
                mail_from: "a@x.test".into(),
                recipients: to(),
                subject: Some("s".into()),
                header_from: None,
                size: 3,
                score: 12.5,
                reason: "score".into(),
            })),
            EventKind::BayesTrained(Box::new(BayesTrained {
                digest: [1; 32],
                class: Some(BayesClass::Spam),
                previous: None,
                tokens: 4,
                message_id: Some(id),
                user: "olivia".into(),
                client_ip: ip,
                spam_messages: 1,
                ham_messages: 0,
            })),
            decided(QuarantineAction::Release),
            decided(QuarantineAction::Expire),
            EventKind::QuarantineRetention {
                before_ms: 1,
                expired: 2,
                reason: "retention".into(),
            },
            token(true),
            token(false),
            EventKind::MembershipChanged(Box::new(MembershipChanged {
                action: "cluster.remove".into(),
                member: 3,
                addr: None,
                log_index: Some(8),
                user: "admin".into(),
                client_ip: None,
                refused: None,
            })),
            EventKind::Note {
                author: "auditor".into(),
                text: "n".into(),
                client_ip: ip,
            },
            EventKind::ChainCheckpoint(Box::new(ChainCheckpoint {
                seq: 1,
                hash: [2; 32],
                node: 1,
                public_key: vec![3; 32],
                signature: vec![4; 64],
            })),
            EventKind::EventsPurged(Box::new(EventsPurged {
                first_seq: 1,
                through_seq: 2,
                through_hash: [5; 32],
                reason: "retention".into(),
            })),
            EventKind::AccessRead(Box::new(AccessRead {
                kind: ReadKind::Raw,
                message_id: Some(id),
                user: "auditor".into(),
                client_ip: ip,
                reason: Some("case 7".into()),
                query: None,
            })),
            EventKind::ExportDeadLettered(Box::new(ExportDeadLetter {
                exporter: "siem".into(),
                first_seq: 1,
                last_seq: 2,
                events: 2,
                tries: 3,
                error: "503".into(),
            })),
            EventKind::SignerChanged(Box::new(SignerChanged {
                node: 1,
                public_key: vec![6; 32],
                previous: None,
                endorsement: None,
            })),
            EventKind::PolicyChanged(Box::new(PolicyChanged {
                version: 2,
                user: "admin".into(),
                client_ip: ip,
                reason: "r".into(),
                diff: vec!["+a".into()],
                hash: [7; 32],
            })),
            EventKind::UserChanged(Box::new(UserChanged {
                action: UserAction::SignedIn,
                name: "alice".into(),
                role: Some(Role::Operator),
                user: "alice".into(),
                client_ip: ip,
                refused: None,
                locked_until_ms: None,
            })),
            acted(None),
            acted(Some("olivia")),
            digest(None),
            digest(Some(4)),
            EventKind::BayesExpired(BayesExpired {
                before: 10,
                removed: 2,
                max: 8,
                newest_removed_day: 1,
            }),
            EventKind::PolicyRejected(Box::new(PolicyRejection {
                rejection,
                header_from: Some("boss@bad.test".into()),
            })),
        ]
    }

    #[test]
    fn an_event_s_facets_are_what_its_json_shows() {
        let kinds = one_of_every_kind();
        let distinct: std::collections::HashSet<_> =
            kinds.iter().map(std::mem::discriminant).collect();
        assert_eq!(distinct.len(), 30, "one sample of each kind");
        let mut carried = [0; 5];
        for kind in kinds {
            let mut event = note(3);
            event.kind = kind;
            let stored = StoredEvent {
                event,
                prev_hash: [0; 32],
                hash: [1; 32],
            };
            let json = stored.to_json();
            let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
            let shown = (
                text(&json["email"]["sender"]["address"]),
                json["email"]["to"]["address"]
                    .as_array()
                    .map(|a| a.iter().filter_map(text).collect::<Vec<_>>())
                    .unwrap_or_default(),
                text(&json["action"]),
                text(&json["source"]["ip"]).map(|ip| ip.parse::<IpAddr>().unwrap()),
                text(&json["user"]["name"]),
            );
            let f = stored.event.kind.facets();
            let facets = (
                f.sender.map(str::to_string),
                f.recipients.to_vec(),
                f.action.map(str::to_string),
                f.client_ip,
                f.user.map(str::to_string),
            );
            assert_eq!(facets, shown, "{json}");
            for (count, present) in carried.iter_mut().zip([
                f.sender.is_some(),
                !f.recipients.is_empty(),
                f.action.is_some(),
                f.client_ip.is_some(),
                f.user.is_some(),
            ]) {
                *count += usize::from(present);
            }
        }
        assert!(carried.iter().all(|&n| n >= 5), "{carried:?}");
    }
}

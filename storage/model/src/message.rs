//! Messages as the store keeps them: ids, what the SMTP ingress records about a
//! message it accepted or refused, and the delivery queue's projection.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A message's id: 48 bits of Unix milliseconds then 80 random bits, shown as 26
/// Crockford base32 characters (sortable by arrival time, like a ULID). It names the
/// message in the SMTP reply, the events, the API and the `X-Bulwark-Id` header, and
/// doubles as the id of the operation that accepted it, so a retried proposal stores
/// the message once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub u128);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ID_CHARS: usize = 26;

impl MessageId {
    /// An id for a message received at `time_ms`, with `random` filling the low bits.
    pub fn new(time_ms: i64, random: u128) -> Self {
        let time = (time_ms.max(0) as u128) & ((1 << 48) - 1);
        MessageId((time << 80) | (random & ((1 << 80) - 1)))
    }

    /// Big-endian bytes: the key of the message's records.
    pub fn key(&self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; ID_CHARS];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (ID_CHARS - 1 - i);
            *c = CROCKFORD[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).expect("base32 is ASCII"))
    }
}

/// Why a string is not a [`MessageId`].
#[derive(Debug, thiserror::Error)]
#[error("not a message id: expected 26 base32 characters")]
pub struct BadMessageId;

impl FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != ID_CHARS || s.as_bytes()[0] > b'7' {
            return Err(BadMessageId);
        }
        let mut value = 0u128;
        for b in s.bytes() {
            let digit = CROCKFORD
                .iter()
                .position(|&c| c == b.to_ascii_uppercase())
                .ok_or(BadMessageId)?;
            value = (value << 5) | digit as u128;
        }
        Ok(MessageId(value))
    }
}

/// The SMTP envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path of MAIL FROM; empty for the null sender `<>`.
    pub mail_from: String,
    /// Forward-paths of the accepted RCPT TO commands, in order.
    pub rcpt_to: Vec<String>,
    /// The client asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The client declared `BODY=8BITMIME`.
    pub eight_bit: bool,
}

/// The TLS session a message came over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// IANA cipher suite name.
    pub cipher: String,
    /// Server name the client asked for, if any.
    pub sni: Option<String>,
}

/// Who sent a message or a refused command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub ip: IpAddr,
    pub port: u16,
    /// EHLO/HELO argument, if the client gave one.
    pub helo: Option<String>,
    pub tls: Option<TlsInfo>,
    /// Address of the load balancer that passed the connection on with the PROXY
    /// protocol, when it did.
    pub proxy: Option<IpAddr>,
}

/// What the gateway does with an accepted message. The scanning pipeline's policy
/// chooses it; new actions are added at the end (bincode encodes the variant index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Queue for delivery to the next hop.
    Deliver,
    /// Deliver with the verdict in headers (and the subject prefixed, if configured).
    Tag,
    /// Keep it in the quarantine until someone releases or deletes it.
    Quarantine,
    /// Refuse it at the end of data with a 5xx (nothing stored but the verdict).
    Reject,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Deliver => "deliver",
            Action::Tag => "tag",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }
}

/// The scanning pipeline's judgement of one message: the `scan.verdict` event. It is
/// recorded once, by the node that received the message, and never recomputed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub message_id: MessageId,
    pub action: Action,
    /// Why this action, in words: `score 23.1 >= reject 20`, `malware
    /// Eicar-Test-Signature`, `sender allow-listed`, ...
    pub reason: String,
    /// Sum of the symbols' scores.
    pub score: f64,
    pub thresholds: Thresholds,
    pub symbols: Vec<Symbol>,
    pub authentication: Vec<AuthResult>,
    pub findings: Vec<Finding>,
    /// Every engine that ran (or ran out of time), with its version and duration.
    pub engines: Vec<EngineRun>,
}

/// The name under which a verdict's engine runs record the policy that decided it,
/// its version being the cluster's policy version (0: the node's own `[policy]`,
/// before the cluster had one).
pub const POLICY_ENGINE: &str = "policy";

impl Verdict {
    /// The version of the cluster's policy this verdict was decided under; `None`
    /// for verdicts recorded before policies were versioned.
    pub fn policy_version(&self) -> Option<u64> {
        self.engines
            .iter()
            .find(|e| e.engine == POLICY_ENGINE)
            .and_then(|e| e.version.parse().ok())
    }
}

/// The scores at which a message is tagged, quarantined and rejected, as the policy
/// applied them to this message.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub tag: f64,
    pub quarantine: f64,
    pub reject: f64,
}

/// A rule or check that fired, with its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Symbol {
    pub name: String,
    pub score: f64,
    pub description: String,
    /// The engine that reported it.
    pub engine: String,
}

/// One authentication method's result, as in `Authentication-Results` (RFC 8601).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResult {
    /// `spf`, `dkim`, `dmarc`, `arc`.
    pub method: String,
    /// `pass`, `fail`, `softfail`, `none`, `temperror`, ...
    pub result: String,
    /// Properties such as `smtp.mailfrom=a@b.test` or `header.d=b.test`.
    pub detail: String,
}

/// Something found in the content: malware, a blocked attachment, active content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `malware`, `blocked_attachment`, `encrypted`, `active_content`, `bomb`.
    pub kind: String,
    /// Signature or rule name.
    pub name: String,
    /// Where in the message: `part 2/invoice.zip/a.exe`.
    pub location: String,
    pub engine: String,
}

/// One engine's run over the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRun {
    pub engine: String,
    /// Engine and rule set version.
    pub version: String,
    pub ms: u64,
    /// It did not finish within the scan budget; its findings are missing.
    pub timed_out: bool,
}

/// A message the policy rejected at the end of data: what is recorded instead of
/// storing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RejectedMessage {
    pub rejection: Rejection,
    pub verdict: Verdict,
}

/// A message the policy rejected at the end of data, with the address of its `From`
/// header: everything the policy weighed is then on record, so another policy can be
/// tried on it later (see `POST /v1/policy/simulate`). What [`RejectedMessage`] adds
/// up to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgedRejection {
    pub rejection: Rejection,
    pub verdict: Verdict,
    pub header_from: Option<String>,
}

/// The `message.rejected` event of a message the policy rejected, with the address
/// of its `From` header (rejections recorded before it was kept, and refusals before
/// the end of data, are [`crate::EventKind::MessageRejected`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRejection {
    pub rejection: Rejection,
    pub header_from: Option<String>,
}

/// A quarantined message's record (the `quarantine` column family; the body stays
/// in `bodies`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub message_id: MessageId,
    /// Sequence number of the `message.received` event.
    pub received_seq: u64,
    pub time_ms: i64,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub subject: Option<String>,
    pub header_from: Option<String>,
    pub size: u64,
    pub score: f64,
    pub reason: String,
}

/// Durations measured by the receiving node, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From connection to end of data.
    pub session_ms: u64,
    /// From DATA (or the first BDAT) to end of data.
    pub transfer_ms: u64,
    /// Time the scanning pipeline took.
    pub scan_ms: u64,
}

/// Everything recorded about an accepted message except its body: the
/// `message.received` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageReceived {
    pub message_id: MessageId,
    pub envelope: Envelope,
    pub client: Client,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8SMTPS`, ... (RFC 3848, 6531), as in `Received`.
    pub protocol: String,
    /// Stored size in octets, the prepended `Received` header included.
    pub size: u64,
    /// `Subject`, `From` and `Message-ID` headers, decoded, when present.
    pub subject: Option<String>,
    pub header_from: Option<String>,
    pub header_message_id: Option<String>,
    pub action: Action,
    pub timings: Timings,
}

/// A message to accept: its record and its body (`Received` header prepended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceptedMessage {
    pub received: MessageReceived,
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
    /// The scanning pipeline's verdict, committed with the message.
    pub verdict: Verdict,
}

/// A refusal worth auditing: the `message.rejected` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub client: Client,
    pub mail_from: Option<String>,
    /// The refused recipient, or the transaction's recipients when the whole
    /// message was refused.
    pub rcpt_to: Vec<String>,
    /// Stable machine-readable reason: `relay_denied`, `message_too_big`, ...
    pub reason: String,
    /// The reply the client got, e.g. `554 5.7.1 <a@b>: Relay access denied`.
    pub reply: String,
}

/// Delivery state of one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Waiting for its first delivery attempt.
    Pending,
    /// The next hop answered 4xx or could not be reached; try again at `next_attempt_ms`.
    Deferred {
        attempts: u32,
        next_attempt_ms: i64,
        last_reply: String,
    },
    /// The next hop accepted it.
    Delivered { reply: String },
    /// The next hop refused it for good (5xx), or it was deferred for too long.
    Failed { reply: String },
}

impl RecipientStatus {
    /// Delivered or failed: nothing more will be tried.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientStatus::Delivered { .. } | RecipientStatus::Failed { .. }
        )
    }

    /// Ready for an attempt at `now_ms`.
    pub fn is_due(&self, now_ms: i64) -> bool {
        match self {
            RecipientStatus::Pending => true,
            RecipientStatus::Deferred {
                next_attempt_ms, ..
            } => *next_attempt_ms <= now_ms,
            _ => false,
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        match self {
            RecipientStatus::Deferred { attempts, .. } => *attempts,
            _ => 0,
        }
    }
}

/// One recipient of a queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    pub address: String,
    pub status: RecipientStatus,
}

/// The node that may deliver a message, and until when by the wall clock of the node
/// that took the lease. A lease taken with [`DeliveryCommand::Claim`] lasts until its
/// holder reports or another node replaces it; `until_ms` then only tells people how
/// long the holder meant to keep it, and is the lease's identity together with `node`
/// (each renewal raises it). Only a lease of [`DeliveryCommand::Lease`] is judged by
/// `until_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: u64,
    pub until_ms: i64,
}

/// A message in the delivery queue (the `queue` column family's projection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub message_id: MessageId,
    /// Sequence number of the `message.received` event.
    pub received_seq: u64,
    pub time_ms: i64,
    pub mail_from: String,
    pub recipients: Vec<QueuedRecipient>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub action: Action,
    /// The verdict's score, for the `X-Bulwark-Score` header.
    pub score: f64,
    /// The node that accepted it: it delivers it first; the others take over when it
    /// has not (see [`QueueEntry::due_since`]).
    pub received_by: u64,
    /// Who is delivering it now, if anyone.
    pub lease: Option<Lease>,
}

impl QueueEntry {
    /// Some recipient is ready for an attempt at `now_ms`.
    pub fn is_due(&self, now_ms: i64) -> bool {
        self.recipients.iter().any(|r| r.status.is_due(now_ms))
    }

    /// Since when some recipient has been ready for an attempt.
    pub fn due_since(&self) -> Option<i64> {
        self.recipients
            .iter()
            .filter_map(|r| match r.status {
                RecipientStatus::Pending => Some(self.time_ms),
                RecipientStatus::Deferred {
                    next_attempt_ms, ..
                } => Some(next_attempt_ms),
                _ => None,
            })
            .min()
    }

    /// Nobody but `node` holds a lease that is still running at `now_ms`.
    pub fn is_free_for(&self, node: u64, now_ms: i64) -> bool {
        self.lease
            .is_none_or(|l| l.node == node || l.until_ms <= now_ms)
    }
}

/// What the `queue` column family stores for a message: its delivery state and an
/// administrator's hold, kept apart so that delivery code deals in [`QueueEntry`]
/// alone while the rules ([`QueueRecord::is_due`], the lease) respect the hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub entry: QueueEntry,
    /// An administrator put the message on hold: it is not due and no lease is
    /// granted on it until released (an attempt already running may finish).
    pub held: bool,
}

impl QueueRecord {
    /// A message that has just joined the queue.
    pub fn new(entry: QueueEntry) -> Self {
        QueueRecord { entry, held: false }
    }

    /// Not held, and some recipient is ready for an attempt at `now_ms`.
    pub fn is_due(&self, now_ms: i64) -> bool {
        !self.held && self.entry.is_due(now_ms)
    }

    /// Where the message stands at `now_ms`, as the queue API lists and filters it:
    /// `held` first, then `leased` (a lease still running), then `deferred` (some
    /// recipient has had a temporary failure), else `pending`.
    pub fn status(&self, now_ms: i64) -> QueueStatus {
        if self.held {
            QueueStatus::Held
        } else if self.entry.lease.is_some_and(|l| l.until_ms > now_ms) {
            QueueStatus::Leased
        } else if self
            .entry
            .recipients
            .iter()
            .any(|r| matches!(r.status, RecipientStatus::Deferred { .. }))
        {
            QueueStatus::Deferred
        } else {
            QueueStatus::Pending
        }
    }
}

/// A queued message's state, as [`QueueRecord::status`] sums it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueStatus {
    /// No attempt has failed yet: waiting for the first one.
    Pending,
    /// Some recipient is waiting for its next attempt after a temporary failure.
    Deferred,
    /// On hold by an administrator.
    Held,
    /// A node is delivering it now.
    Leased,
}

impl QueueStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueStatus::Pending => "pending",
            QueueStatus::Deferred => "deferred",
            QueueStatus::Held => "held",
            QueueStatus::Leased => "leased",
        }
    }
}

/// Why a string is not a [`QueueStatus`].
#[derive(Debug, thiserror::Error)]
#[error("not a queue status: expected pending, deferred, held or leased")]
pub struct BadQueueStatus;

impl FromStr for QueueStatus {
    type Err = BadQueueStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(QueueStatus::Pending),
            "deferred" => Ok(QueueStatus::Deferred),
            "held" => Ok(QueueStatus::Held),
            "leased" => Ok(QueueStatus::Leased),
            _ => Err(BadQueueStatus),
        }
    }
}

/// What an administrator does to a queued message (the queue API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueAction {
    /// Every deferred recipient becomes due at the operation's time; a hold is
    /// released (asking for delivery now overrides it).
    Retry,
    /// No attempt starts until released; one already running may finish and report.
    Hold,
    /// Lifts a hold; the message is due again as its recipients' schedule says.
    Release,
    /// The message and its body leave the queue without a DSN: an administrator's
    /// decision, recorded with the recipients that will not get it.
    Delete,
}

impl QueueAction {
    /// The `action` of the `api.action` event.
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueAction::Retry => "queue.retry",
            QueueAction::Hold => "queue.hold",
            QueueAction::Release => "queue.release",
            QueueAction::Delete => "queue.delete",
        }
    }
}

/// What an administrator does to a quarantined message (the quarantine API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineAction {
    /// The message leaves the quarantine for the delivery queue: delivered to its
    /// recipients as if its verdict had said deliver; the verdict stays on record.
    Release,
    /// The message and its body are removed; nobody receives it.
    Delete,
    /// Removed like [`QuarantineAction::Delete`], by the retention (never proposed by a
    /// caller: see [`QuarantineExpiry`]).
    Expire,
}

impl QuarantineAction {
    /// The `action` of the `api.action` event recording a refusal.
    pub fn as_str(&self) -> &'static str {
        match self {
            QuarantineAction::Release => "quarantine.release",
            QuarantineAction::Delete => "quarantine.delete",
            QuarantineAction::Expire => "quarantine.expire",
        }
    }
}

/// An administrator's decision on a quarantined message, as proposed by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineCommand {
    pub message_id: MessageId,
    pub action: QuarantineAction,
    /// Why, in the caller's words (recorded with the decision).
    pub reason: String,
    /// The caller, as authenticated by the API.
    pub user: String,
    /// The caller's address as the API saw it.
    pub client_ip: Option<IpAddr>,
}

/// The quarantine's retention: messages quarantined before `before_ms` (Unix
/// milliseconds) are removed with their bodies, the oldest first, at most `max` per
/// command; each is recorded as `quarantine.expired` with `reason`, and the run as
/// `quarantine.retention`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineExpiry {
    pub before_ms: i64,
    pub max: u32,
    pub reason: String,
}

/// The `quarantine.released` or `quarantine.deleted` event: the decision and the
/// recipients it concerned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineDecided {
    pub decision: QuarantineCommand,
    pub mail_from: String,
    pub recipients: Vec<String>,
}

/// What one delivery attempt did for one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientOutcome {
    Delivered,
    Deferred { next_attempt_ms: i64 },
    Failed,
}

/// One recipient's result in a delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientResult {
    pub address: String,
    /// The next hop's reply (or what went wrong before it replied).
    pub reply: String,
    pub outcome: RecipientOutcome,
}

/// A delivery attempt as the node that made it reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub message_id: MessageId,
    /// `host:port` of the next hop, or `maildir:PATH`.
    pub next_hop: String,
    pub tls: Option<TlsInfo>,
    pub results: Vec<RecipientResult>,
    pub duration_ms: u64,
    /// False when the same lease goes on to another next hop for the message's
    /// remaining recipients; the last report of an attempt releases the lease.
    pub release_lease: bool,
}

/// A delivery status notification (RFC 3464) to the envelope sender of a message
/// whose recipients failed, queued in the same operation as the report that failed
/// them: never lost, never sent twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bounce {
    /// The DSN's own message id.
    pub message_id: MessageId,
    /// Where it goes: the failed message's envelope sender (never the null sender).
    pub recipient: String,
    /// The failed recipients it reports.
    pub failed: Vec<String>,
    /// The DSN, CRLF lines, `multipart/report`.
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// Delivery work committed through Raft, so that one node at a time delivers a
/// message and every attempt is on record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeliveryCommand {
    /// The proposing node asks to deliver the message until `until_ms`. Granted when
    /// no other node holds a lease still running at the operation's time.
    ///
    /// Proposed by releases before [`DeliveryCommand::Claim`], and still applied the
    /// way they applied it, so that a log they wrote replays to the same state. It
    /// compares wall clocks of different nodes (`until_ms` of the holder's, the
    /// operation's time of the asker's), so a node whose clock runs ahead by the
    /// lease's length takes a message its holder is still sending: never proposed
    /// by this release.
    Lease {
        message_id: MessageId,
        until_ms: i64,
    },
    /// The outcome of an attempt: recipients move on, the lease is released, and a
    /// message with every recipient done leaves the queue (its body is deleted). A
    /// bounce is queued when the report fails recipients of a message that has a
    /// sender to tell.
    Report {
        report: DeliveryReport,
        bounce: Option<Box<Bounce>>,
    },
    /// An administrator's action on a queued message, made through the API by `user`
    /// from `client_ip`. Refused when the message is not in the queue; recorded as an
    /// `api.action` event either way.
    Admin {
        message_id: MessageId,
        action: QueueAction,
        user: String,
        client_ip: Option<IpAddr>,
    },
    /// The proposing node asks to deliver the message for `lease_ms`. Granted when the
    /// message has no lease, when the lease is the proposer's own (a renewal: the
    /// recorded `until_ms` is raised), or when it is exactly `replaces`, a lease the
    /// proposer has watched go unrenewed for longer than `lease_ms`. No wall clock is
    /// compared: the recorded `until_ms` (the operation's time plus `lease_ms`) is
    /// for people and to tell leases apart.
    ///
    /// Why two nodes never deliver at once, whatever their wall clocks say (the
    /// argument `node/src/delivery/worker.rs` relies on, in real time `t`):
    /// - the holder reads its monotonic clock at `a`, then proposes; the lease is
    ///   granted at `g >= a`. It sends only before `a + 0.9 lease_ms` by its own
    ///   monotonic clock, aborting a transaction that would run past that, and
    ///   renews (same `a` rule) to go on. It sends an end of data only before
    ///   `a + 0.4 lease_ms`, so the next hop has more than half a lease to answer
    ///   it before another node may begin (and the holder itself waits a whole lease
    ///   before it tries a message whose transaction it dropped);
    /// - another node replaces that lease only with a `Claim` naming it, proposed
    ///   once it has seen the message's queue record unchanged, this very lease in
    ///   it, for `lease_ms` of its own monotonic clock. It can first see the lease
    ///   after it was applied there, so at `o >= g >= a`, and claims at
    ///   `o + lease_ms > a + 0.9 lease_ms`;
    /// - a renewal changes the lease (`until_ms` strictly rises), so a claim naming
    ///   the old one is refused (the log orders the two), and the watcher starts over.
    ///
    /// So the only requirement is that the nodes' monotonic clocks run at rates
    /// within 5% of each other (they are within 0.05% on any host NTP disciplines,
    /// and far closer undisciplined). A holder paused (SIGSTOP, `docker pause`, a VM
    /// frozen) past its lease resumes to find its time spent: its monotonic clock ran
    /// on, so it stops at once, except for what it had already handed to the kernel.
    Claim {
        message_id: MessageId,
        lease_ms: u64,
        replaces: Option<Lease>,
    },
}

/// Bodies are large: serialise them as one byte string, not a sequence of numbers.
pub(crate) mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{received as sample, verdict};

    #[test]
    fn message_ids_round_trip_and_sort_by_time() {
        let a = MessageId::new(1_764_300_000_000, u128::MAX);
        let b = MessageId::new(1_764_300_000_001, 0);
        assert!(a < b);
        let text = a.to_string();
        assert_eq!(text.len(), 26);
        assert!(text < b.to_string());
        assert_eq!(text.parse::<MessageId>().unwrap(), a);
        assert_eq!(text.to_lowercase().parse::<MessageId>().unwrap(), a);
        for bad in [
            "",
            "0123",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01JD0000000000000000000U00",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_encode_as_bytes() {
        let body = vec![0xffu8; 1000];
        let encoded = crate::codec::encode(&AcceptedMessage {
            received: sample(),
            body: body.clone(),
            verdict: verdict(sample().message_id),
        })
        .unwrap();
        assert!(encoded.len() < 1300, "{} bytes", encoded.len());
        let back: AcceptedMessage = crate::codec::decode(&encoded).unwrap();
        assert_eq!(back.body, body);
    }
}

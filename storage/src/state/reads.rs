//! What the API, the delivery workers and the exporters read from the state: single
//! records, paged listings, the events and the exporters' cursors.

use std::collections::HashSet;

use rocksdb::{Direction, IteratorMode};

use super::filters::{QuarantineFilter, QueueFilter};
use super::{StateStore, META_EXPORT_CURSOR, META_EXPORT_SHIPPED};
use crate::event::{EventKind, Hash, StoredEvent};
use crate::flow::{Dimension, HourCounts};
use crate::index::{self, EventFilter, MAX_SCAN};
use crate::layout::cf;
use crate::message::{
    MessageId, MessageReceived, QuarantineRecord, QueueEntry, QueueRecord, Rejection, Verdict,
};
use crate::policy::{self, Decided, PolicyVersion};
use crate::recipient::{self, RecipientLists};
use crate::rules::export::ExportPosition;
use crate::rules::quarantine::{expiry_due, expiry_end};
use crate::signer::{self, Signers};
use crate::token::{self, ApiToken};
use crate::user::{self, ConsoleUser, Session};
use crate::{codec, Error, Result};

/// A decision the policy rejected, from its verdict and its `message.rejected`.
fn rejected(
    seq: u64,
    verdict: Verdict,
    rejection: Rejection,
    header_from: Option<String>,
    header_from_known: bool,
) -> Decided {
    Decided {
        seq,
        verdict,
        mail_from: rejection.mail_from.unwrap_or_default(),
        header_from,
        header_from_known,
        rcpt_to: rejection.rcpt_to,
        client_ip: rejection.client.ip,
    }
}

impl StateStore {
    /// Messages learned as spam and as ham.
    pub fn bayes_totals(&self) -> (u64, u64) {
        self.bayes.read().expect("bayes lock").totals()
    }

    /// The spam and ham counts of each token, in the order given.
    pub fn bayes_counts(&self, tokens: &[u64]) -> Vec<(u32, u32)> {
        self.bayes.read().expect("bayes lock").counts(tokens)
    }

    /// Distinct tokens with a count.
    pub fn bayes_distinct_tokens(&self) -> usize {
        self.bayes.read().expect("bayes lock").distinct_tokens()
    }

    /// The API token whose SHA-256 is `digest`, if one is live.
    pub fn token_by_digest(&self, digest: &Hash) -> Result<Option<ApiToken>> {
        self.identity(&token::digest_key(digest))
    }

    /// The API token named `name`, if one is live.
    pub fn token_named(&self, name: &str) -> Result<Option<ApiToken>> {
        self.identity(&token::name_key(name))
    }

    /// True when a token named `name` was revoked: no token takes the name again.
    pub fn token_name_retired(&self, name: &str) -> Result<bool> {
        self.kept(&token::retired_key(name))
    }

    /// Every live API token, by name.
    pub fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.identities(&token::name_key(""))
    }

    /// The console user named `name`, unless removed.
    pub fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>> {
        self.identity(&user::user_key(name))
    }

    /// True when a console user named `name` was removed: no user or token takes the
    /// name again.
    pub fn user_name_retired(&self, name: &str) -> Result<bool> {
        self.kept(&user::retired_user_key(name))
    }

    /// Every console user, by name (removed ones' names are kept under another prefix,
    /// `ur/`, which `u/` does not begin).
    pub fn console_users(&self) -> Result<Vec<ConsoleUser>> {
        self.identities(&user::user_key(""))
    }

    /// The session whose cookie's secret has SHA-256 `digest`, whether or not it has
    /// expired or its user is still live (the API decides whether it lets them in).
    pub fn session(&self, digest: &Hash) -> Result<Option<Session>> {
        self.identity(&user::session_key(digest))
    }

    /// A recipient's own allow and block lists (none: empty).
    pub fn recipient_lists(&self, recipient: &str) -> Result<RecipientLists> {
        Ok(self
            .identity(&recipient::lists_key(recipient))?
            .unwrap_or_default())
    }

    /// When the link with id `id` was spent, if it was.
    pub fn link_spent(&self, id: &Hash) -> Result<Option<i64>> {
        self.identity(&recipient::spent_key(id))
    }

    /// The cluster's key for signing recipients' links, once it has one.
    pub fn link_key(&self) -> Result<Option<[u8; 32]>> {
        self.identity(recipient::LINK_KEY)
    }

    /// Where a recipient's last digest went to, if one did.
    pub fn digest_through(&self, recipient: &str) -> Result<Option<recipient::DigestMark>> {
        self.identity(&recipient::digest_key(recipient))
    }

    /// The record under `key` in the `tokens` column family (tokens, users, sessions).
    fn identity<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf::TOKENS), key)? {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// True when the `tokens` column family keeps `key` (a retired name).
    fn kept(&self, key: &[u8]) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.cf(cf::TOKENS), key)?.is_some())
    }

    /// Every record under `prefix` in the `tokens` column family, in key order.
    fn identities<T: serde::de::DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        let mode = IteratorMode::From(prefix, Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TOKENS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(codec::decode(&value)?);
        }
        Ok(out)
    }

    /// Queue entries with a recipient due at `now_ms` that `node` may take (not held,
    /// no other node's lease): those it accepted, and others' once they have been due
    /// for `takeover_ms` (their node may be down); at most `limit`. Entries of the
    /// same kinds under another node's lease come with them, not counted: a lease is
    /// replaced only by a node that has watched it go unrenewed (see
    /// [`crate::DeliveryCommand::Claim`]). The messages in `in_progress` (the caller's
    /// attempts under way) are left out without being read.
    pub fn due_deliveries(
        &self,
        node: u64,
        now_ms: i64,
        takeover_ms: i64,
        limit: usize,
        in_progress: &HashSet<MessageId>,
    ) -> Result<Vec<QueueEntry>> {
        super::due::find(
            &self.db,
            &self.due_floors,
            node,
            now_ms,
            takeover_ms,
            limit,
            in_progress,
        )
    }

    /// The stored body of a message (its `Received` header included).
    pub fn message_body(&self, id: MessageId) -> Result<Option<Vec<u8>>> {
        match self.db.get_pinned_cf(self.cf(cf::BODIES), id.key())? {
            Some(record) => Ok(Some(codec::decode_bytes(&record)?.to_vec())),
            None => Ok(None),
        }
    }

    /// The mail flow of every hour from the one holding `since_ms` to the one holding
    /// `until_ms` (both included; a database opened read-only from before the counts
    /// has none).
    pub fn flow_hours(&self, since_ms: i64, until_ms: i64) -> Result<Vec<HourCounts>> {
        match self.db.cf_handle(cf::FLOW) {
            Some(flow) => crate::flow::hours(&self.db, flow, since_ms, until_ms),
            None => Ok(Vec::new()),
        }
    }

    /// The `n` values of `dimension` counted most on the day (UTC) holding `day_ms`.
    pub fn flow_top(
        &self,
        day_ms: i64,
        dimension: Dimension,
        n: usize,
    ) -> Result<Vec<(String, u64)>> {
        match self.db.cf_handle(cf::FLOW) {
            Some(flow) => crate::flow::top(&self.db, flow, day_ms, dimension, n),
            None => Ok(Vec::new()),
        }
    }

    /// A quarantined message's record.
    pub fn quarantine_record(&self, id: MessageId) -> Result<Option<QuarantineRecord>> {
        match self.db.get_pinned_cf(self.cf(cf::QUARANTINE), id.key())? {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Hands the quarantined records from id `from` on to `visit`, in id order
    /// (arrival), until `visit` says stop (returns `false`) or none is left.
    pub fn quarantined_from(
        &self,
        from: MessageId,
        visit: &mut dyn FnMut(QuarantineRecord) -> bool,
    ) -> Result<()> {
        let start = from.key();
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf::QUARANTINE), mode) {
            let (_, value) = item?;
            if !visit(codec::decode(&value)?) {
                break;
            }
        }
        Ok(())
    }

    /// A message's entry in the delivery queue.
    pub fn queue_entry(&self, id: MessageId) -> Result<Option<QueueEntry>> {
        Ok(self.queue_record(id)?.map(|r| r.entry))
    }

    /// A message's record in the delivery queue: its entry and whether it is held.
    pub fn queue_record(&self, id: MessageId) -> Result<Option<QueueRecord>> {
        match self.db.get_pinned_cf(self.cf(cf::QUEUE), id.key())? {
            Some(record) => Ok(Some(codec::decode(&record)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` queued messages after `after` (in arrival order: ids sort by
    /// time) that match `filter` at `now_ms`, and the id to pass as `after` for the
    /// next page (`None` when the queue has nothing further).
    pub fn queue_list(
        &self,
        filter: &QueueFilter,
        after: Option<MessageId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<QueueRecord>, Option<MessageId>)> {
        self.page_by_id(cf::QUEUE, after, limit, |record: &QueueRecord| {
            (record.entry.message_id, filter.matches(record, now_ms))
        })
    }

    /// Up to `limit` quarantined messages after `after` (oldest first: ids sort by
    /// time) that match `filter`, and the id to pass as `after` for the next page
    /// (`None` when there is nothing further).
    pub fn quarantine_list(
        &self,
        filter: &QuarantineFilter,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<(Vec<QuarantineRecord>, Option<MessageId>)> {
        // By sender or recipient: only the messages of that address or domain.
        let term = super::held::term_for(filter.sender.as_deref(), filter.recipient.as_deref());
        if let Some(term) = term {
            let mut out = Vec::new();
            let next = super::held::walk(&self.db, &term, after, MAX_SCAN, |id| {
                if let Some(record) = self.quarantine_record(id)? {
                    if filter.matches(&record) {
                        out.push(record);
                    }
                }
                Ok(out.len() < limit)
            })?;
            return Ok((out, next));
        }
        self.page_by_id(cf::QUARANTINE, after, limit, |record: &QuarantineRecord| {
            (record.message_id, filter.matches(record))
        })
    }

    /// One page of the records of column family `name` (keyed by message id, so in
    /// arrival order) after `after` for which `read` says keep, at most `limit`, and
    /// the id to go on from: `None` at the end, else the last id read (a page also
    /// ends after [`MAX_SCAN`] records read, so a selective filter stays bounded).
    fn page_by_id<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        after: Option<MessageId>,
        limit: usize,
        read: impl Fn(&T) -> (MessageId, bool),
    ) -> Result<(Vec<T>, Option<MessageId>)> {
        // The largest id has nothing after it.
        if after.is_some_and(|id| id.0 == u128::MAX) {
            return Ok((Vec::new(), None));
        }
        let start = after.map(|id| (id.0 + 1).to_be_bytes());
        let mode = match &start {
            Some(key) => IteratorMode::From(key, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut iter = self.db.iterator_cf(self.cf(name), mode);
        let mut out = Vec::new();
        let mut scanned = 0usize;
        while let Some(item) = iter.next() {
            let (_, value) = item?;
            let record: T = codec::decode(&value)?;
            let (id, keep) = read(&record);
            scanned += 1;
            if keep {
                out.push(record);
                if out.len() >= limit {
                    let more = iter.next().transpose()?.is_some();
                    return Ok((out, more.then_some(id)));
                }
            }
            if scanned >= MAX_SCAN {
                return Ok((out, Some(id)));
            }
        }
        Ok((out, None))
    }

    /// Whether a retention with cut-off `before_ms` would remove anything: the same
    /// test as the replicated removal applies, so a check that says yes is followed by
    /// a removal that removes something.
    pub fn quarantine_due(&self, before_ms: i64) -> Result<bool> {
        let end = expiry_end(before_ms);
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::Start)
        {
            let (key, value) = item?;
            if key.as_ref() >= end.key().as_slice() {
                break;
            }
            if expiry_due(&codec::decode(&value)?, before_ms) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The checkpoint keys the cluster trusts for node `node`.
    pub fn signers(&self, node: u64) -> Result<Signers> {
        match self.db.get_cf(self.cf(cf::META), signer::key(node))? {
            Some(bytes) => Ok(codec::decode(&bytes)?),
            None => Ok(Signers::default()),
        }
    }

    /// The number of the cluster's current policy version (0: it has none yet).
    pub fn policy_number(&self) -> Result<u64> {
        match self
            .db
            .get_pinned_cf(self.cf(cf::META), policy::CURRENT_KEY)?
        {
            Some(bytes) => Ok(u64::from_be_bytes(bytes.as_ref().try_into().map_err(
                |_| Error::Decode("the current policy version is not 8 bytes".into()),
            )?)),
            None => Ok(0),
        }
    }

    /// The cluster's current policy version (`None`: it has none yet).
    pub fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        match self.policy_number()? {
            0 => Ok(None),
            version => self.policy_version(version),
        }
    }

    /// Version `version` of the cluster's policy.
    pub fn policy_version(&self, version: u64) -> Result<Option<PolicyVersion>> {
        match self
            .db
            .get_pinned_cf(self.cf(cf::META), policy::key(version))?
        {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every version of the cluster's policy, oldest first.
    pub fn policy_versions(&self) -> Result<Vec<PolicyVersion>> {
        let mode = IteratorMode::From(policy::VERSION_PREFIX, Direction::Forward);
        let mut versions = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::META), mode) {
            let (key, value) = item?;
            if !key.starts_with(policy::VERSION_PREFIX) {
                break;
            }
            versions.push(codec::decode(&value)?);
        }
        Ok(versions)
    }

    /// The seq up to which exporter `name` has shipped the log (0: nothing yet).
    pub fn export_cursor(&self, name: &str) -> Result<u64> {
        self.meta_u64(&format!("{META_EXPORT_CURSOR}{name}"))
    }

    /// Exporter `name`'s cursor and the number of records it has shipped.
    pub fn export_position(&self, name: &str) -> Result<ExportPosition> {
        Ok(ExportPosition {
            seq: self.export_cursor(name)?,
            shipped: self.meta_u64(&format!("{META_EXPORT_SHIPPED}{name}"))?,
        })
    }

    /// A u64 (BE) kept under `key` in the meta column family (0: absent).
    fn meta_u64(&self, key: &str) -> Result<u64> {
        match self.db.get_cf(self.cf(cf::META), key)? {
            Some(bytes) => Ok(u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Decode(key.to_string()))?,
            )),
            None => Ok(0),
        }
    }

    /// Every exporter's cursor, by name (those that have shipped something).
    pub fn export_cursors(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let prefix = META_EXPORT_CURSOR.as_bytes();
        let iter = self.db.iterator_cf(
            self.cf(cf::META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            let Some(name) = key.strip_prefix(prefix) else {
                break;
            };
            let seq = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Decode("export cursor".into()))?;
            out.push((String::from_utf8_lossy(name).into_owned(), seq));
        }
        Ok(out)
    }

    /// One event by sequence number.
    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>> {
        match self.db.get_cf(self.cf(cf::EVENTS), seq.to_be_bytes())? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` events with seq > `after` that match `filter`, and the cursor to
    /// pass as `after` for the next page (`None` when the log has nothing further).
    /// The decisions recorded in `[since_ms, until_ms)` after seq `after`: each
    /// `scan.verdict` with the facts its message's `message.received` (recorded just
    /// before it) or `message.rejected` (just after) holds. Reads at most
    /// `max_events` events, one at a time straight from the log; the cursor to go on
    /// from is the last event of the last whole decision read (`None`: the range is
    /// done).
    pub fn decisions(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: u64,
        max_events: usize,
    ) -> Result<(Vec<Decided>, Option<u64>)> {
        let clock = *self.clock.lock().expect("event clock lock");
        let index = clock.map(|clock| (self.cf(cf::INDEX), clock));
        let Some((lo, hi)) = index::seq_range(&self.db, index, since_ms, until_ms, after)? else {
            return Ok((Vec::new(), None));
        };
        let in_range =
            |time: i64| since_ms.is_none_or(|t| time >= t) && until_ms.is_none_or(|t| time < t);
        let mut iter = self.db.raw_iterator_cf(self.cf(cf::EVENTS));
        iter.seek(lo.to_be_bytes());
        let mut decided = Vec::new();
        // Where the page may end: after the last event that completed a decision or
        // belongs to none.
        let mut done = after;
        let (mut read, mut last, mut more) = (0, after, false);
        let mut received: Option<MessageReceived> = None;
        let mut verdict: Option<(u64, Verdict)> = None;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let seq = index::seq_at(key, 0);
            if seq > hi {
                break;
            }
            if read == max_events {
                more = true;
                break;
            }
            let stored: StoredEvent = codec::decode(value)?;
            read += 1;
            last = seq;
            let time = stored.event.time_ms;
            match stored.event.kind {
                EventKind::MessageReceived(m) => {
                    received = Some(*m);
                    verdict = None;
                }
                EventKind::ScanVerdict(v) => match received.take() {
                    Some(m) if m.message_id == v.message_id => {
                        if in_range(time) {
                            decided.push(Decided {
                                seq,
                                mail_from: m.envelope.mail_from,
                                header_from: m.header_from,
                                header_from_known: true,
                                rcpt_to: m.envelope.rcpt_to,
                                client_ip: m.client.ip,
                                verdict: *v,
                            });
                        }
                        done = seq;
                    }
                    _ => verdict = in_range(time).then_some((seq, *v)),
                },
                EventKind::PolicyRejected(r) => {
                    if let Some((seq, v)) = verdict.take() {
                        decided.push(rejected(seq, v, r.rejection, r.header_from, true));
                    }
                    done = seq;
                }
                EventKind::MessageRejected(r) => {
                    if let Some((seq, v)) = verdict.take() {
                        decided.push(rejected(seq, v, *r, None, false));
                    }
                    done = seq;
                }
                _ => {
                    if received.is_none() && verdict.is_none() {
                        done = seq;
                    }
                }
            }
            iter.next();
        }
        iter.status()?;
        let next = match more {
            true if done > after => Some(done),
            // A page too small to complete one decision: step over what it read.
            true => Some(last),
            false => None,
        };
        Ok((decided, next))
    }

    pub fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let clock = *self.clock.lock().expect("event clock lock");
        let index = clock.map(|clock| (self.cf(cf::INDEX), clock));
        index::query(&self.db, self.cf(cf::EVENTS), index, filter, after, limit)
    }
}

//! The delivery worker of one node: finds due messages, takes each one's lease
//! through Raft (so one node at a time sends it), renews the lease while sending,
//! and commits a report of every attempt. A message this node accepted while its
//! delivery kept up comes with its lease, granted in the operation that queued it
//! (`Command::AcceptLeased`), and is started at once if a slot is free: the lease
//! is timed from before that operation was proposed, as a claim's is.
//!
//! Leases are timed by monotonic clocks, never by comparing wall clocks of two
//! nodes (the argument is on [`DeliveryCommand::Claim`]):
//! - this node sends under a lease only until [`USABLE`] of its length has passed,
//!   by its own monotonic clock, since it asked for the lease (or its last renewal);
//!   a transaction still running then is aborted (the connection dropped before the
//!   next hop has the whole message, unless it already had it); a renewal that is
//!   refused aborts it at once;
//! - it sends the end of data, which hands the message to the next hop for good,
//!   only while the lease stays usable for [`HANDOVER`] of its length more,
//!   renewing first when it does not, and writes it by then or not at all: the
//!   next hop then has more than half a lease to answer before another node may
//!   begin, even if this one loses its lease; and this node leaves a message whose
//!   transaction it dropped for a whole lease before it tries it again;
//! - it takes over another node's lease only after it has seen the message's
//!   record unchanged, that lease in it, for a whole lease length by its own
//!   monotonic clock, and only by naming that lease, so a renewal in between wins.
//!   That length is this node's `lease_secs`, so every node must have the same.
//!
//! What is left, stated: a holder stopped (SIGSTOP, a frozen VM) just after handing
//! the end of its data to the kernel, or in the very step of handing it, may have
//! that message delivered by the next hop while it is stopped, and again later, by
//! the node that took over or by itself once resumed (it cannot know that the next
//! hop took it: a duplicate, never two deliveries at once; RFC 1047's window). A
//! next hop that takes longer than half a lease to answer an end of data (or to
//! receive what of the message the kernel still held), while its sender cannot
//! renew, may still be working on it when another node begins.
//! And a lease released by its holder's report and granted again to the same node,
//! with a wall clock stepped back to the very millisecond of the first grant,
//! between the watcher's last look and its claim, would pass for the first.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use bulwark_consensus::RaftNode;
use bulwark_model::{
    Bounce, Command, DeliveryCommand, DeliveryReport, Lease, MessageId, QueueEntry,
    QueuedRecipient, RecipientOutcome, RecipientResult, TlsInfo,
};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::backlog::{Backlog, Handed};
use super::client::{self, Handover, Outgoing, Replies, Reply, Timeouts};
use super::pool::Pool;
use super::route::{Mx, Relay, Route};
use super::{dsn, maildir, mx, schedule, Settings};
use crate::dns::TokioResolver;

pub struct Worker {
    node: Arc<RaftNode>,
    settings: Settings,
    /// For routes that look up MX records.
    resolver: TokioResolver,
    /// Connections to next hops, kept between messages.
    pool: Pool,
    /// Messages this node is delivering now.
    busy: Mutex<HashSet<MessageId>>,
    /// Due messages another node holds the lease on, as this node last saw them and
    /// since when unchanged (by this node's monotonic clock): one unchanged for a
    /// whole lease is taken over.
    watched: Mutex<HashMap<MessageId, Watched>>,
    /// Messages whose transaction this node dropped, until when it leaves them be:
    /// a next hop that had the end of data may still be answering it, and a new
    /// transaction from here must not begin beside it.
    resting: Mutex<HashMap<MessageId, Instant>>,
    /// Rung when an attempt ends: its slot is free, so the queue is looked at again
    /// at once instead of after `poll`.
    slot_freed: Notify,
    /// Cancelled once the node stops taking new deliveries: a report that cannot be
    /// committed is then tried no more (see `report`).
    stopping: CancellationToken,
    /// Told at each look at the queue whether due messages were left over, so that
    /// the SMTP ingress paces new mail to the rate it leaves.
    backlog: Arc<Backlog>,
}

impl Worker {
    pub fn new(
        node: Arc<RaftNode>,
        settings: Settings,
        resolver: TokioResolver,
        backlog: Arc<Backlog>,
    ) -> Arc<Worker> {
        let pool = Pool::new(
            settings.max_connections_per_destination,
            settings.connection_cache,
        );
        Arc::new(Worker {
            node,
            resolver,
            pool,
            settings,
            busy: Mutex::new(HashSet::new()),
            watched: Mutex::new(HashMap::new()),
            resting: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            stopping: CancellationToken::new(),
            backlog,
        })
    }

    /// Delivers until `stop` is cancelled, then lets attempts in progress finish
    /// (each is bounded by the next hop timeouts) and reports them, each report
    /// waited for [`STOPPING_REPORT_WAIT`] at most.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut running = JoinSet::new();
        loop {
            let committed = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.poll) => false,
                _ = self.slot_freed.notified() => false,
                _ = self.backlog.next_queued() => true,
            };
            while running.try_join_next().is_some() {}
            self.pool.close_idle(false, &self.timeouts()).await;
            let handed = self.backlog.take_handed();
            let mut all_handed_started = !handed.is_empty();
            for handed in handed {
                // One not started here (no free slot) is this node's own lease on
                // record: the next look at the queue renews it.
                match self.reserve(&slots, handed.id) {
                    Ok(permit) => {
                        self.spawn(&mut running, handed.id, Start::Handed(handed), permit)
                    }
                    Err(_) => all_handed_started = false,
                }
            }
            if committed && all_handed_started {
                // What woke the worker is under way; the next poll or a freed slot
                // looks at the rest of the queue.
                continue;
            }
            if !self.node.is_ready_within(MAX_APPLY_LAG) {
                // No leader, or far behind (catching up after a restart): what the
                // last look found stands.
                continue;
            }
            let free = slots.available_permits();
            if free == 0 && committed && self.backlog.is_behind() {
                // One more message committed changes nothing; the next poll or a
                // freed slot looks again.
                continue;
            }
            let state = self.node.state();
            let (id, now) = (self.node.id(), crate::now_ms());
            // Entries in progress here are passed over unread; ask for one beyond
            // the free slots, to tell the SMTP ingress whether work is left over.
            let busy = self.busy.lock().expect("busy lock").clone();
            let takeover = self.settings.takeover_after.as_millis() as i64;
            let due = match state.due_deliveries(id, now, takeover, free * 2 + 1, &busy) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the delivery queue");
                    continue;
                }
            };
            let resting: HashSet<MessageId> = {
                let mut resting = self.resting.lock().expect("resting lock");
                let now = Instant::now();
                resting.retain(|_, until| *until > now);
                resting.keys().copied().collect()
            };
            if free == 0 {
                // Only whether a message waits that this node would start; the
                // watch of other nodes' leases is left as it was (the list is cut
                // short here), so that their takeover clocks keep running.
                let waiting = due.iter().any(|e| {
                    !resting.contains(&e.message_id) && e.lease.is_none_or(|l| l.node == id)
                });
                self.backlog.update(waiting, 0);
                continue;
            }
            let replaceable = self.watch(id, &due);
            let (mut started, mut left_over) = (0, false);
            for entry in due {
                if resting.contains(&entry.message_id) {
                    continue;
                }
                let replaces = match entry.lease {
                    Some(lease) if lease.node != id => {
                        if !replaceable.contains(&entry.message_id) {
                            continue;
                        }
                        Some(lease)
                    }
                    _ => None,
                };
                match self.reserve(&slots, entry.message_id) {
                    Ok(permit) => {
                        started += 1;
                        self.spawn(
                            &mut running,
                            entry.message_id,
                            Start::Claim(replaces),
                            permit,
                        );
                    }
                    Err(Unreserved::Busy) => continue,
                    Err(Unreserved::NoSlot) => {
                        left_over = true;
                        break;
                    }
                }
            }
            self.backlog.update(left_over, started);
        }
        self.backlog.update(false, 0);
        self.stopping.cancel();
        while running.join_next().await.is_some() {}
        self.pool.close_idle(true, &self.timeouts()).await;
    }

    /// A slot for an attempt on message `id`, unless one is in progress here or
    /// every slot is taken.
    fn reserve(
        &self,
        slots: &Arc<Semaphore>,
        id: MessageId,
    ) -> Result<OwnedSemaphorePermit, Unreserved> {
        if !self.busy.lock().expect("busy lock").insert(id) {
            return Err(Unreserved::Busy);
        }
        slots.clone().try_acquire_owned().map_err(|_| {
            self.busy.lock().expect("busy lock").remove(&id);
            Unreserved::NoSlot
        })
    }

    /// Runs an attempt on message `id` in the slot `permit` holds, and frees both
    /// when it ends.
    fn spawn(
        self: &Arc<Self>,
        running: &mut JoinSet<()>,
        id: MessageId,
        start: Start,
        permit: OwnedSemaphorePermit,
    ) {
        let worker = self.clone();
        running.spawn(async move {
            worker.attempt(id, start).await;
            worker.busy.lock().expect("busy lock").remove(&id);
            drop(permit);
            worker.slot_freed.notify_one();
        });
    }

    /// Notes what this poll found under other nodes' leases (`due`, read for node
    /// `me`) and returns the messages whose record has not changed for a whole lease
    /// by this node's clock: their holder has stopped using the lease by now (see
    /// the module docs). Messages no longer listed are forgotten, so their watch
    /// starts over should they come back.
    fn watch(&self, me: u64, due: &[QueueEntry]) -> HashSet<MessageId> {
        let now = Instant::now();
        let mut watched = self.watched.lock().expect("watched lock");
        let mut listed = HashSet::new();
        let mut replaceable = HashSet::new();
        for entry in due {
            let Some(lease) = entry.lease.filter(|l| l.node != me) else {
                continue;
            };
            listed.insert(entry.message_id);
            let seen = Watched {
                lease,
                recipients: entry.recipients.clone(),
                since: now,
            };
            match watched.get(&entry.message_id) {
                Some(w) if w.lease == seen.lease && w.recipients == seen.recipients => {
                    if now.duration_since(w.since) >= self.settings.lease {
                        replaceable.insert(entry.message_id);
                    }
                }
                _ => {
                    watched.insert(entry.message_id, seen);
                }
            }
        }
        watched.retain(|id, _| listed.contains(id));
        replaceable
    }

    /// Takes the lease on message `id` (replacing `replaces`, another node's lease
    /// watched unchanged for a lease's length), or renews this node's own.
    async fn lease(&self, id: MessageId, replaces: Option<Lease>) -> Leased {
        // Read before proposing: the lease cannot have been granted earlier, so no
        // other node can have begun to watch it earlier either.
        let asked = Instant::now();
        let command = Command::Delivery(Box::new(DeliveryCommand::Claim {
            message_id: id,
            lease_ms: self.settings.lease.as_millis() as u64,
            replaces,
        }));
        match self.node.proposer().propose(command).await {
            Ok(result) if result.refused.is_none() => Leased::Granted {
                seq: result.seq,
                usable_until: asked + self.settings.lease.mul_f64(USABLE),
            },
            Ok(result) => {
                tracing::debug!(%id, refused = ?result.refused, "delivery lease refused");
                Leased::Refused
            }
            Err(e) => {
                tracing::debug!(%id, error = %e, "delivery lease not committed");
                Leased::Unknown
            }
        }
    }

    /// The queue entry of `id` once this node has applied the event `seq`: a
    /// follower learns of a commit after the leader, and an entry read before the
    /// lease may predate the last attempt's report.
    async fn entry_after(&self, id: MessageId, seq: u64) -> Option<QueueEntry> {
        let deadline = Instant::now() + self.settings.lease / 3;
        while self.node.state().chain_head().0 < seq {
            if Instant::now() > deadline {
                tracing::warn!(%id, seq, "lease granted but not applied here in time");
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        match self.node.state().queue_entry(id) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(%id, error = %e, "reading a queue entry");
                None
            }
        }
    }

    /// One attempt for the due recipients of message `id`, under a lease (claimed,
    /// taken over from another node's, or granted with the message's acceptance, as
    /// `start` says): a transaction per route
    /// their domains take, each reported as soon as it is done (so that what was sent
    /// is on record before the next hop is tried). The lease is renewed while sending
    /// and before each further route; once it is refused, or its usable time is over,
    /// or a report cannot be committed, the attempt stops.
    async fn attempt(&self, id: MessageId, start: Start) {
        let (seq, usable_until) = match start {
            Start::Claim(replaces) => match self.lease(id, replaces).await {
                Leased::Granted { seq, usable_until } => (seq, usable_until),
                Leased::Refused | Leased::Unknown => return,
            },
            Start::Handed(handed) => (
                handed.seq,
                handed.asked + self.settings.lease.mul_f64(USABLE),
            ),
        };
        let gate = LeaseGate::new(usable_until, self.settings.lease.mul_f64(HANDOVER));
        let Some(entry) = self.entry_after(id, seq).await else {
            return;
        };
        let now = crate::now_ms();
        let due: Vec<&str> = entry
            .recipients
            .iter()
            .filter(|r| r.status.is_due(now))
            .map(|r| r.address.as_str())
            .collect();
        if due.is_empty() {
            return;
        }
        let body = match self.node.state().message_body(id) {
            Ok(Some(body)) => body,
            other => {
                tracing::error!(%id, result = ?other.map(|b| b.map(|b| b.len())), "queued message has no readable body");
                let reply = Reply::local(451, "4.3.0 the stored message cannot be read");
                let replies = client::every(&due, &reply);
                self.finish(&entry, &[], None, None, replies, Instant::now(), true)
                    .await;
                return;
            }
        };
        let groups = self.settings.routes.group(&due);
        let last = groups.len().saturating_sub(1);
        for (i, (route, recipients)) in groups.into_iter().enumerate() {
            if i > 0 {
                match self.lease(id, None).await {
                    Leased::Granted {
                        usable_until: u, ..
                    } => gate.renewed(u),
                    _ => {
                        tracing::warn!(%id, "delivery lease not renewed between next hops; the rest waits");
                        return;
                    }
                }
            }
            let started = Instant::now();
            let send = self.send(&route, &entry, &body, recipients, &gate);
            let Some((tls, replies)) = self.under_lease(id, send, &gate).await else {
                let until = Instant::now() + self.settings.lease;
                self.resting.lock().expect("resting lock").insert(id, until);
                return;
            };
            let reported = self
                .finish(
                    &entry,
                    &body,
                    Some(&route),
                    tls,
                    replies,
                    started,
                    i == last,
                )
                .await;
            if !reported {
                return;
            }
        }
    }

    /// Runs `send` while this node's lease on `id` (its usable time in `gate`)
    /// lasts: renewed at a quarter of its length, or at once when the transaction
    /// waits at its end of data for more usable time (a renewal that was not
    /// committed is tried again sooner), and the transaction dropped, unfinished,
    /// once a renewal is refused or the lease's usable time is over. `None`: dropped; nothing is
    /// reported (the outcome is unknown), and the message is tried again under a new
    /// lease, by this node (it still holds the lease on record) or by another that
    /// has seen it unrenewed for a whole lease.
    async fn under_lease<T>(
        &self,
        id: MessageId,
        send: impl Future<Output = T>,
        gate: &LeaseGate,
    ) -> Option<T> {
        tokio::pin!(send);
        let renew_every = self.settings.lease / 4;
        let mut renew_at = Instant::now() + renew_every;
        let mut renewal: Option<Pin<Box<dyn Future<Output = Leased> + Send + '_>>> = None;
        loop {
            let usable_until = *gate.usable_until.borrow();
            if Instant::now() >= usable_until {
                tracing::warn!(%id, "delivery lease not renewed in time; the transaction is dropped");
                return None;
            }
            // The transaction moves on only while the lease is usable, by the clock
            // read at each step: a node resumed after a pause (whose timers have not
            // fired yet) finds its time spent before it writes another byte.
            let until = usable_until;
            let step = std::future::poll_fn(|cx| {
                if Instant::now() >= until {
                    return Poll::Ready(None);
                }
                send.as_mut().poll(cx).map(Some)
            });
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(until.into()) => {}
                done = step => {
                    if let Some(done) = done {
                        return Some(done);
                    }
                }
                leased = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                    renewal = None;
                    match leased {
                        Leased::Granted { usable_until: u, .. } => {
                            gate.renewed(u);
                            renew_at = Instant::now() + renew_every;
                        }
                        Leased::Refused => {
                            tracing::warn!(%id, "delivery lease refused while sending; the transaction is dropped");
                            return None;
                        }
                        Leased::Unknown => renew_at = Instant::now() + renew_every / 4,
                    }
                }
                _ = tokio::time::sleep_until(renew_at.into()), if renewal.is_none() => {
                    renewal = Some(Box::pin(self.lease(id, None)));
                }
                _ = gate.wanted.notified(), if renewal.is_none() => {
                    // A wish left from while a renewal ran is spent if that one did.
                    if gate.short() {
                        renewal = Some(Box::pin(self.lease(id, None)));
                    }
                }
            }
        }
    }

    /// Turns the replies of one transaction with `route` (None: none was tried)
    /// into outcomes (and a bounce for the failed recipients) and commits the
    /// report; false if it could not be committed.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        entry: &QueueEntry,
        body: &[u8],
        route: Option<&Route>,
        tls: Option<TlsInfo>,
        replies: Replies,
        started: Instant,
        release_lease: bool,
    ) -> bool {
        let now = crate::now_ms();
        let results: Vec<RecipientResult> = replies
            .into_iter()
            .map(|(address, reply)| {
                let attempts = entry
                    .recipients
                    .iter()
                    .find(|r| r.address == address)
                    .map_or(0, |r| r.status.attempts());
                let outcome = if reply.is_positive() {
                    RecipientOutcome::Delivered
                } else if reply.is_permanent() {
                    RecipientOutcome::Failed
                } else {
                    schedule::deferred(&self.settings, entry, attempts, now)
                };
                RecipientResult {
                    address,
                    reply: clip(reply.text),
                    outcome,
                }
            })
            .collect();
        let hop = route.map_or_else(|| "none".to_string(), Route::name);
        let remote = matches!(route, Some(Route::Relay(_) | Route::Mx(_))).then_some(hop.as_str());
        let failed: Vec<dsn::Failed> = results
            .iter()
            .filter(|r| r.outcome == RecipientOutcome::Failed)
            .map(|r| dsn::Failed {
                address: &r.address,
                reply: &r.reply,
                remote,
            })
            .collect();
        let bounce = dsn::bounce(&self.settings.hostname, entry, body, &failed, now);
        let report = DeliveryReport {
            message_id: entry.message_id,
            next_hop: hop.clone(),
            tls,
            results,
            duration_ms: started.elapsed().as_millis() as u64,
            release_lease,
        };
        self.report(report, bounce.map(Box::new)).await
    }

    /// Sends to one route: the TLS used and a reply per recipient.
    async fn send(
        &self,
        route: &Route,
        entry: &QueueEntry,
        body: &[u8],
        recipients: Vec<&str>,
        handover: &dyn Handover,
    ) -> (Option<TlsInfo>, Replies) {
        let headers = format!(
            "X-Bulwark-Id: {}\r\nX-Bulwark-Action: {}\r\nX-Bulwark-Score: {:.1}\r\n",
            entry.message_id,
            entry.action.as_str(),
            entry.score
        );
        match route {
            Route::Relay(_) | Route::Mx(_) => {
                let message = Outgoing {
                    mail_from: &entry.mail_from,
                    recipients,
                    eight_bit: entry.eight_bit,
                    smtputf8: entry.smtputf8,
                    headers: headers.as_bytes(),
                    body,
                    handover,
                };
                let sent = match route {
                    Route::Mx(mx) => self.via_mx(mx, &message).await,
                    Route::Relay(relay) => self.transaction(relay, &message).await,
                    Route::Maildir(_) => unreachable!("matched above"),
                };
                sent.unwrap_or_else(|reply| (None, client::every(&message.recipients, &reply)))
            }
            Route::Maildir(root) => {
                let (root, id, time_ms) = (root.clone(), entry.message_id, entry.time_ms);
                let parts = [headers.into_bytes(), body.to_vec()];
                // A Maildir file is named by the message, so a second delivery
                // replaces the first; it is still written only under a lease that
                // lasts, as an end of data is.
                handover.ready().await;
                let written = tokio::task::spawn_blocking(move || {
                    maildir::deliver(&root, id, time_ms, &[&parts[0], &parts[1]])
                })
                .await;
                let reply = match written {
                    Ok(Ok(path)) => Reply {
                        code: 250,
                        text: format!("250 2.0.0 delivered to {path}"),
                    },
                    Ok(Err(e)) => Reply::local(451, &format!("4.3.0 writing to the Maildir: {e}")),
                    Err(e) => Reply::local(451, &format!("4.3.0 writing to the Maildir: {e}")),
                };
                (None, client::every(&recipients, &reply))
            }
        }
    }

    /// One transaction with an SMTP next hop, on a cached connection when there is
    /// one; a cached connection found stale before the transaction began is
    /// replaced by a new one. `Err`: no connection could be made (the reply says
    /// why), so another host may be tried.
    async fn transaction(
        &self,
        relay: &Relay,
        message: &Outgoing<'_>,
    ) -> Result<(Option<TlsInfo>, Replies), Reply> {
        let t = self.timeouts();
        let hostname = &self.settings.hostname;
        let mut fresh_tried = false;
        loop {
            let mut pooled = self.pool.get(relay, hostname, &t).await?;
            fresh_tried |= !pooled.reused;
            let sent = pooled.conn.send(message, &t).await;
            let tls = pooled.conn.tls().cloned();
            match sent {
                Ok(replies) => {
                    self.pool.put(pooled);
                    return Ok((tls, replies));
                }
                Err(failure) if failure.before_mail && !fresh_tried => {
                    tracing::debug!(next_hop = %relay.address, reply = %failure.reply.text, "cached connection went stale");
                }
                Err(failure) => {
                    self.pool.put(pooled);
                    return Ok((tls, client::every(&message.recipients, &failure.reply)));
                }
            }
        }
    }

    /// Tries the MX hosts of the route's domain in order of preference, each of
    /// their addresses in turn, until one takes the connection.
    async fn via_mx(
        &self,
        mx: &Mx,
        message: &Outgoing<'_>,
    ) -> Result<(Option<TlsInfo>, Replies), Reply> {
        let mut last = Reply::local(451, &format!("4.4.4 no MX host of {} answered", mx.domain));
        for host in mx::exchanges(&self.resolver, &mx.domain).await? {
            let addresses = match mx::addresses(&self.resolver, &host).await {
                Ok(addresses) => addresses,
                Err(reply) => {
                    last = reply;
                    continue;
                }
            };
            for ip in addresses {
                let relay = Relay {
                    address: std::net::SocketAddr::new(ip, mx.port).to_string(),
                    tls: mx.tls,
                    tls_name: host.clone(),
                    verified: mx.verified.clone(),
                };
                match self.transaction(&relay, message).await {
                    Ok(done) => return Ok(done),
                    Err(reply) => {
                        tracing::debug!(domain = %mx.domain, %host, %ip, reply = %reply.text, "MX host not reachable; trying the next");
                        last = reply;
                    }
                }
            }
        }
        Err(last)
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.settings.connect_timeout,
            command: self.settings.command_timeout,
            data: self.settings.data_timeout,
        }
    }

    /// Commits the report, retrying until it is committed or the node stops: a lost
    /// report would send the message again after the lease runs out. A node that is
    /// stopping waits [`STOPPING_REPORT_WAIT`] for it and no more: its peers may be
    /// gone already (the last node of a cluster shut down), and a report that cannot
    /// be committed must not hold the process past its stop; the message is then
    /// delivered again, not lost.
    async fn report(&self, report: DeliveryReport, bounce: Option<Box<Bounce>>) -> bool {
        let command = Command::Delivery(Box::new(DeliveryCommand::Report { report, bounce }));
        let op = self.node.proposer().stamp(command);
        let mut pause = std::time::Duration::from_millis(100);
        for _ in 0..20 {
            let submit = self.node.proposer().submit(op.clone());
            tokio::pin!(submit);
            let result = tokio::select! {
                result = &mut submit => result,
                _ = self.stopping.cancelled() => {
                    match tokio::time::timeout(STOPPING_REPORT_WAIT, &mut submit).await {
                        Ok(result) => result,
                        Err(_) => Err(bulwark_consensus::ProposeError::ShuttingDown),
                    }
                }
            };
            match result {
                Ok(_) => return true,
                // Raft stopped for good (a full disk), or this node is stopping: the
                // lease runs out for another node (or this one, restarted) to deliver
                // again.
                Err(e)
                    if self.stopping.is_cancelled()
                        || matches!(
                            e,
                            bulwark_consensus::ProposeError::ShuttingDown
                                | bulwark_consensus::ProposeError::Fatal(_)
                        ) =>
                {
                    tracing::warn!(
                        error = %e,
                        "delivery report not committed; the message will be delivered \
                         again once its lease runs out"
                    );
                    return false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery report not committed yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stopping.cancelled() => {}
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        tracing::error!(
            "delivery report not committed after 20 tries; the message will be retried"
        );
        false
    }
}

/// The share of a lease's length this node sends under it, from when it asked: the
/// rest is the margin for the monotonic clocks of the holder and of a node waiting
/// to take over running at different rates (up to 5% apart).
const USABLE: f64 = 0.9;

/// The share of a lease's length that must still be usable when the end of data is
/// sent: with [`USABLE`] and monotonic clocks up to 5% apart, the next hop has more
/// than half a lease to answer it before another node may take the message over,
/// should this one lose its lease.
const HANDOVER: f64 = 0.5;

/// The lease a transaction runs under, as its end of data sees it: the message is
/// handed to the next hop only while the lease stays usable for [`HANDOVER`] of its
/// length more; with less left (renewals were not committed, or the lease was
/// granted late), a renewal is asked for at once and the end of data waits for it.
struct LeaseGate {
    /// Until when this node may send under the lease (its monotonic clock).
    usable_until: watch::Sender<Instant>,
    /// Set when the end of data waits for a renewal.
    wanted: Notify,
    /// How long the lease must still be usable at the end of data.
    answer: std::time::Duration,
}

impl LeaseGate {
    fn new(usable_until: Instant, answer: std::time::Duration) -> LeaseGate {
        LeaseGate {
            usable_until: watch::Sender::new(usable_until),
            wanted: Notify::new(),
            answer,
        }
    }

    fn renewed(&self, usable_until: Instant) {
        self.usable_until.send_replace(usable_until);
    }

    /// Whether the lease is usable for less than the end of data needs.
    fn short(&self) -> bool {
        self.usable_until
            .borrow()
            .saturating_duration_since(Instant::now())
            < self.answer
    }
}

impl Handover for LeaseGate {
    fn ready(&self) -> Pin<Box<dyn Future<Output = Instant> + Send + '_>> {
        Box::pin(async move {
            let mut usable = self.usable_until.subscribe();
            loop {
                let until = *usable.borrow_and_update();
                if until.saturating_duration_since(Instant::now()) >= self.answer {
                    return until - self.answer;
                }
                self.wanted.notify_one();
                usable
                    .changed()
                    .await
                    .expect("the gate keeps its sender while it is borrowed");
            }
        })
    }
}

/// What asking for a lease gave.
enum Leased {
    /// This node may send until `usable_until` (its monotonic clock); the lease was
    /// granted by event `seq`.
    Granted { seq: u64, usable_until: Instant },
    /// Another node holds it, or the message is held or gone.
    Refused,
    /// Not committed in time: it may have been granted or not.
    Unknown,
}

/// How an attempt gets its lease.
enum Start {
    /// Claimed through Raft, taking over the other node's lease it names, if any.
    Claim(Option<Lease>),
    /// Granted with the message's acceptance on this node.
    Handed(Handed),
}

/// Why no attempt was started on a message.
enum Unreserved {
    /// One is in progress here.
    Busy,
    /// Every slot is taken.
    NoSlot,
}

/// Another node's lease on a due message, as this node saw it.
struct Watched {
    lease: Lease,
    recipients: Vec<QueuedRecipient>,
    /// Since when this node has seen the record so (its monotonic clock).
    since: Instant,
}

/// How many entries this node may have left to apply of those it knows committed
/// and still look for work: under load a follower is a few behind at almost every
/// moment, and what it reads may be that stale, since each lease is granted by Raft
/// and each attempt reads its entry once the grant is applied here (`entry_after`).
/// A node applying a long stretch of its log after a restart waits instead of asking
/// for leases its state would have to refuse (one still receiving its log from the
/// leader knows no further than what it has, as with `RaftNode::is_ready`).
const MAX_APPLY_LAG: u64 = 1000;

/// How long a stopping node waits for a delivery report to commit: milliseconds do
/// with a quorum, and without one the wait must not hold the stop.
const STOPPING_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The most of a next hop's reply kept in reports: replies go into the replicated
/// queue and the event log, once per recipient.
const MAX_REPLY: usize = 512;

fn clip(mut text: String) -> String {
    if text.len() > MAX_REPLY {
        let mut end = MAX_REPLY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_end_of_data_waits_for_a_lease_with_half_its_length_left() {
        let answer = Duration::from_millis(1_500);
        let start = Instant::now();
        // Granted late: 1 s of usable time left, less than the 1.5 s the end of
        // data needs.
        let gate = LeaseGate::new(start + Duration::from_secs(1), answer);
        assert!(gate.short());
        let ready = gate.ready();
        tokio::pin!(ready);
        let asked = tokio::time::timeout(Duration::from_millis(100), gate.wanted.notified());
        tokio::select! {
            _ = &mut ready => panic!("handed over with a lease too short"),
            asked = asked => asked.expect("a renewal asked for at once"),
        }
        // A renewal that moves the usable time on lets it through, by a deadline
        // that leaves the next hop its answer time.
        gate.renewed(start + Duration::from_millis(2_700));
        let by = tokio::time::timeout(Duration::from_millis(10), ready)
            .await
            .expect("handed over once renewed");
        assert_eq!(by, start + Duration::from_millis(1_200));
        assert!(!gate.short());
        // A lease fresh enough goes at once.
        let fresh = LeaseGate::new(Instant::now() + Duration::from_secs(3), answer);
        let by = tokio::time::timeout(Duration::from_millis(1), fresh.ready())
            .await
            .expect("at once");
        assert!(by > Instant::now());
    }
}

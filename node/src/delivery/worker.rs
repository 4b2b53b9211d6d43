//! The delivery worker of one node: finds due messages, takes each one's lease
//! through Raft (so one node at a time sends it), renews the lease while sending,
//! and commits a report of every attempt.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bulwark_consensus::RaftNode;
use bulwark_storage::{
    Bounce, Command, DeliveryCommand, DeliveryReport, MessageId, QueueEntry, RecipientOutcome,
    RecipientResult, TlsInfo,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{self, Outgoing, Replies, Reply, Timeouts};
use super::pool::Pool;
use super::route::{Relay, Route};
use super::{dsn, maildir, schedule, Settings};

pub struct Worker {
    node: Arc<RaftNode>,
    settings: Settings,
    /// Connections to next hops, kept between messages.
    pool: Pool,
    /// Messages this node is delivering now.
    busy: Mutex<HashSet<MessageId>>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Worker {
    pub fn new(node: Arc<RaftNode>, settings: Settings) -> Arc<Worker> {
        let pool = Pool::new(
            settings.max_connections_per_destination,
            settings.connection_cache,
        );
        Arc::new(Worker {
            node,
            pool,
            settings,
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// Delivers until `stop` is cancelled, then lets attempts in progress finish
    /// (each is bounded by the next hop timeouts) and reports them.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
            while running.try_join_next().is_some() {}
            self.pool.close_idle(false, &self.timeouts()).await;
            if !self.node.is_ready() {
                continue;
            }
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let state = self.node.state();
            let (id, now) = (self.node.id(), now_ms());
            let takeover = self.settings.takeover_after.as_millis() as i64;
            let due = tokio::task::spawn_blocking(move || {
                state.due_deliveries(id, now, takeover, free * 2)
            })
            .await;
            let due = match due {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the delivery queue");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the delivery queue");
                    continue;
                }
            };
            for entry in due {
                if !self
                    .busy
                    .lock()
                    .expect("busy lock")
                    .insert(entry.message_id)
                {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    self.busy
                        .lock()
                        .expect("busy lock")
                        .remove(&entry.message_id);
                    break;
                };
                let worker = self.clone();
                running.spawn(async move {
                    let id = entry.message_id;
                    worker.attempt(entry).await;
                    worker.busy.lock().expect("busy lock").remove(&id);
                    drop(permit);
                });
            }
        }
        while running.join_next().await.is_some() {}
        self.pool.close_idle(true, &self.timeouts()).await;
    }

    async fn lease(&self, id: MessageId) -> bool {
        let until_ms = now_ms() + self.settings.lease.as_millis() as i64;
        let command = Command::Delivery(Box::new(DeliveryCommand::Lease {
            message_id: id,
            until_ms,
        }));
        match self.node.proposer().propose(command).await {
            Ok(result) => result.refused.is_none(),
            Err(e) => {
                tracing::debug!(%id, error = %e, "delivery lease not committed");
                false
            }
        }
    }

    /// One attempt for the due recipients of `entry`, under a lease: a transaction
    /// per route their domains take, each reported as soon as it is done (so that
    /// what was sent is on record before the next hop is tried).
    async fn attempt(&self, entry: QueueEntry) {
        let id = entry.message_id;
        if !self.lease(id).await {
            return;
        }
        let state = self.node.state();
        let body = match tokio::task::spawn_blocking(move || state.message_body(id)).await {
            Ok(Ok(Some(body))) => body,
            other => {
                tracing::warn!(%id, result = ?other.map(|r| r.map(|b| b.map(|b| b.len()))), "queued message has no readable body");
                return;
            }
        };
        let now = now_ms();
        let due: Vec<&str> = entry
            .recipients
            .iter()
            .filter(|r| r.status.is_due(now))
            .map(|r| r.address.as_str())
            .collect();
        let groups = self.settings.routes.group(&due);
        let last = groups.len().saturating_sub(1);
        for (i, (route, recipients)) in groups.into_iter().enumerate() {
            let started = Instant::now();
            let send = self.send(&route, &entry, &body, recipients);
            tokio::pin!(send);
            // Renew the lease at a third of its length while sending, so that a slow
            // next hop does not let another node start the same delivery.
            let renew_every = self.settings.lease / 3;
            let (tls, replies) = loop {
                tokio::select! {
                    done = &mut send => break done,
                    _ = tokio::time::sleep(renew_every) => {
                        if !self.lease(id).await {
                            tracing::warn!(%id, "delivery lease lost while sending");
                        }
                    }
                }
            };
            let now = now_ms();
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
                        schedule::deferred(&self.settings, &entry, attempts, now)
                    };
                    RecipientResult {
                        address,
                        reply: reply.text,
                        outcome,
                    }
                })
                .collect();
            let hop = route.name();
            let remote = matches!(route, Route::Relay(_)).then_some(hop.as_str());
            let failed: Vec<dsn::Failed> = results
                .iter()
                .filter(|r| r.outcome == RecipientOutcome::Failed)
                .map(|r| dsn::Failed {
                    address: &r.address,
                    reply: &r.reply,
                    remote,
                })
                .collect();
            let bounce = dsn::bounce(&self.settings.hostname, &entry, &body, &failed, now);
            let report = DeliveryReport {
                message_id: id,
                next_hop: hop.clone(),
                tls,
                results,
                duration_ms: started.elapsed().as_millis() as u64,
                release_lease: i == last,
            };
            self.report(report, bounce.map(Box::new)).await;
        }
    }

    /// Sends to one route: the TLS used and a reply per recipient.
    async fn send(
        &self,
        route: &Route,
        entry: &QueueEntry,
        body: &[u8],
        recipients: Vec<&str>,
    ) -> (Option<TlsInfo>, Replies) {
        let headers = format!(
            "X-Bulwark-Id: {}\r\nX-Bulwark-Action: {}\r\n",
            entry.message_id,
            entry.action.as_str()
        );
        match route {
            Route::Relay(relay) => {
                let message = Outgoing {
                    mail_from: &entry.mail_from,
                    recipients,
                    eight_bit: entry.eight_bit,
                    smtputf8: entry.smtputf8,
                    headers: headers.as_bytes(),
                    body,
                };
                self.relay(relay, &message).await
            }
            Route::Maildir(root) => {
                let (root, id, time_ms) = (root.clone(), entry.message_id, entry.time_ms);
                let parts = [headers.into_bytes(), body.to_vec()];
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
    /// replaced by a new one.
    async fn relay(&self, relay: &Relay, message: &Outgoing<'_>) -> (Option<TlsInfo>, Replies) {
        let t = self.timeouts();
        let hostname = &self.settings.hostname;
        let mut fresh_tried = false;
        loop {
            let mut pooled = match self.pool.get(relay, hostname, &t).await {
                Ok(pooled) => pooled,
                Err(reply) => return (None, client::every(&message.recipients, &reply)),
            };
            fresh_tried |= !pooled.reused;
            let sent = pooled.conn.send(message, &t).await;
            let tls = pooled.conn.tls().cloned();
            match sent {
                Ok(replies) => {
                    self.pool.put(pooled);
                    return (tls, replies);
                }
                Err(failure) if failure.before_mail && !fresh_tried => {
                    tracing::debug!(next_hop = %relay.address, reply = %failure.reply.text, "cached connection went stale");
                }
                Err(failure) => {
                    self.pool.put(pooled);
                    return (tls, client::every(&message.recipients, &failure.reply));
                }
            }
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.settings.connect_timeout,
            command: self.settings.command_timeout,
            data: self.settings.data_timeout,
        }
    }

    /// Commits the report, retrying until it is committed or the node stops: a lost
    /// report would send the message again after the lease runs out.
    async fn report(&self, report: DeliveryReport, bounce: Option<Box<Bounce>>) {
        let command = Command::Delivery(Box::new(DeliveryCommand::Report { report, bounce }));
        let op = self.node.proposer().stamp(command);
        let mut pause = std::time::Duration::from_millis(100);
        for _ in 0..20 {
            match self.node.proposer().submit(op.clone()).await {
                Ok(_) => return,
                Err(bulwark_consensus::ProposeError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery report not committed yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        tracing::error!(
            "delivery report not committed after 20 tries; the message will be retried"
        );
    }
}

//! Flow control between delivery and the SMTP ingress, as Postfix's `in_flow_delay`:
//! while this node has more due messages than free delivery slots, a new mail
//! transaction waits until the worker starts one more delivery (a token), or at most
//! `smtp.in_flow_delay_ms`, before its MAIL is answered. Acceptance is then paced to
//! the rate mail leaves, instead of piling up a queue that drains only after the
//! senders stop; nothing is refused for it, and a sender never waits longer than the
//! delay for one message. A token stands for a delivery started (it may end at once,
//! its lease refused); up to `delivery.concurrency` of them are kept while no one
//! waits, so that many transactions go on without waiting when delivery first falls
//! behind, and they are dropped once it catches up.
//!
//! The other way, the ingress rings the worker for each message it commits, so a
//! free slot takes new mail at once instead of at the worker's next poll. While
//! delivery is not behind (and the cluster's feature level allows), the ingress
//! commits each message with this node's delivery lease on it and hands it over
//! ([`Handed`]): the worker starts it without a Raft round for the lease. Behind, a
//! message is committed without a lease and claimed as slots free up (by another
//! node too, past `delivery.takeover_secs`).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulwark_model::MessageId;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify, Semaphore};

/// Whether delivery is behind on this node, and the tokens it hands out as it
/// catches up; and, the other way, a word to delivery that a message was queued.
pub struct Backlog {
    behind: watch::Sender<bool>,
    /// Rung by the SMTP ingress for each message it committed, so that the worker
    /// looks at the queue at once instead of at its next poll.
    queued: Notify,
    /// Messages committed with this node's lease on them, not yet taken by the
    /// worker; at most `max_tokens` (the worker's slots): one beyond finds no slot and
    /// is renewed at the worker's next look at the queue instead.
    handed: Mutex<Vec<Handed>>,
    /// The length of the lease the ingress asks for with a message.
    lease: Duration,
    /// One for each delivery started while behind, at most `max_tokens` banked.
    tokens: Semaphore,
    max_tokens: usize,
    /// Transactions that waited, and how long they waited in all.
    delayed: Counter,
    waited: Counter<f64, AtomicU64>,
    behind_gauge: Gauge,
}

/// How a transaction got past [`Backlog::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Delivery was not behind: no wait.
    Clear,
    /// Delivery started a message, or caught up, within the delay.
    Paced,
    /// The whole delay passed; the transaction goes on anyway.
    TimedOut,
}

/// A message the ingress committed with this node's delivery lease on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    pub id: MessageId,
    /// The sequence number of its `delivery.leased` event: the worker reads the
    /// queue entry once this node has applied it.
    pub seq: u64,
    /// When the ingress proposed it, by this node's monotonic clock: the lease is
    /// used as one asked for then (see the worker's module docs).
    pub asked: Instant,
}

impl Backlog {
    /// A backlog for a worker with `concurrency` slots (it banks at most that many
    /// tokens while no transaction is waiting for one) and leases of `lease`.
    pub fn new(concurrency: usize, lease: Duration) -> Self {
        Backlog {
            behind: watch::Sender::new(false),
            queued: Notify::new(),
            handed: Mutex::new(Vec::new()),
            lease,
            tokens: Semaphore::new(0),
            max_tokens: concurrency.max(1),
            delayed: Counter::default(),
            waited: Counter::default(),
            behind_gauge: Gauge::default(),
        }
    }

    /// Adds the flow control's counts to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "bulwark_smtp_in_flow_delayed",
            "Mail transactions whose MAIL waited because delivery was behind (smtp.in_flow_delay_ms)",
            self.delayed.clone(),
        );
        registry.register(
            "bulwark_smtp_in_flow_delay_seconds",
            "Time mail transactions waited in all because delivery was behind",
            self.waited.clone(),
        );
        registry.register(
            "bulwark_delivery_behind",
            "1 while this node has more due messages than free delivery slots",
            self.behind_gauge.clone(),
        );
    }

    /// Whether the worker's last look at the queue found it behind.
    pub fn is_behind(&self) -> bool {
        *self.behind.borrow()
    }

    /// The lease the ingress asks for with a message it commits, or `None` while
    /// delivery is behind (the message is then claimed as slots free up).
    pub fn lease_to_ask(&self) -> Option<Duration> {
        (!self.is_behind()).then_some(self.lease)
    }

    /// The SMTP ingress committed a message to the queue, leased to this node when
    /// `handed` says so.
    pub fn queued(&self, handed: Option<Handed>) {
        if let Some(handed) = handed {
            let mut list = self.handed.lock().expect("handed lock");
            if list.len() < self.max_tokens {
                list.push(handed);
            }
        }
        self.queued.notify_one();
    }

    /// The messages handed over since the last call, oldest first.
    pub fn take_handed(&self) -> Vec<Handed> {
        std::mem::take(&mut *self.handed.lock().expect("handed lock"))
    }

    /// Until a message is queued after the last call (or one was since).
    pub async fn next_queued(&self) {
        self.queued.notified().await;
    }

    /// What the worker saw at its last look at the queue: whether due messages were
    /// left over once its slots were full, and how many deliveries it started.
    pub fn update(&self, behind: bool, started: usize) {
        self.behind_gauge.set(i64::from(behind));
        if behind {
            let room = self
                .max_tokens
                .saturating_sub(self.tokens.available_permits());
            self.tokens.add_permits(started.min(room));
        } else {
            self.tokens.forget_permits(self.tokens.available_permits());
        }
        self.behind
            .send_if_modified(|was| std::mem::replace(was, behind) != behind);
    }

    /// Waits, before a new transaction, while delivery is behind: until the worker
    /// starts a delivery or catches up, and at most `at_most` (zero: never).
    pub async fn admit(&self, at_most: Duration) -> Admission {
        let mut behind = self.behind.subscribe();
        if at_most.is_zero() || !*behind.borrow_and_update() {
            return Admission::Clear;
        }
        let started = tokio::time::Instant::now();
        let token = async {
            tokio::select! {
                permit = self.tokens.acquire() => {
                    if let Ok(permit) = permit {
                        permit.forget();
                    }
                }
                _ = behind.wait_for(|behind| !*behind) => {}
            }
        };
        let admission = match tokio::time::timeout(at_most, token).await {
            Ok(()) => Admission::Paced,
            Err(_) => Admission::TimedOut,
        };
        self.delayed.inc();
        self.waited.inc_by(started.elapsed().as_secs_f64());
        admission
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn clear_unless_behind_and_never_longer_than_the_delay() {
        let backlog = Backlog::new(4, Duration::from_secs(30));
        let delay = Duration::from_millis(300);
        assert_eq!(backlog.admit(delay).await, Admission::Clear);
        backlog.update(true, 0);
        assert_eq!(backlog.admit(Duration::ZERO).await, Admission::Clear);
        let before = Instant::now();
        assert_eq!(backlog.admit(delay).await, Admission::TimedOut);
        let waited = before.elapsed();
        assert!(waited >= delay && waited < delay * 3, "{waited:?}");
        assert_eq!(backlog.delayed.get(), 1);
        assert!(backlog.waited.get() >= delay.as_secs_f64());
    }

    #[tokio::test]
    async fn each_delivery_started_lets_one_waiting_transaction_go() {
        let backlog = Arc::new(Backlog::new(4, Duration::from_secs(30)));
        backlog.update(true, 0);
        let delay = Duration::from_secs(30);
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let backlog = backlog.clone();
                tokio::spawn(async move { backlog.admit(delay).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(waiting.iter().all(|w| !w.is_finished()));
        backlog.update(true, 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = waiting.iter().filter(|w| w.is_finished()).count();
        assert_eq!(done, 2, "two deliveries started, two transactions go");
        let before = Instant::now();
        backlog.update(false, 0);
        for w in waiting {
            assert_eq!(w.await.expect("joined"), Admission::Paced);
        }
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "caught up: the last goes too"
        );
    }

    #[test]
    fn a_lease_is_asked_for_only_while_delivery_keeps_up_and_handed_over_once() {
        let backlog = Backlog::new(2, Duration::from_secs(30));
        assert_eq!(backlog.lease_to_ask(), Some(Duration::from_secs(30)));
        let handed = |n| Handed {
            id: MessageId(n),
            seq: n as u64,
            asked: Instant::now(),
        };
        for n in 1..=3 {
            backlog.queued(Some(handed(n)));
        }
        backlog.queued(None);
        let ids: Vec<_> = backlog.take_handed().iter().map(|h| h.id).collect();
        assert_eq!(
            ids,
            [MessageId(1), MessageId(2)],
            "at most the slots, oldest first"
        );
        assert!(backlog.take_handed().is_empty());
        backlog.update(true, 0);
        assert_eq!(backlog.lease_to_ask(), None);
    }

    #[tokio::test]
    async fn tokens_banked_while_no_one_waits_are_capped_and_dropped_once_caught_up() {
        let backlog = Backlog::new(2, Duration::from_secs(30));
        backlog.update(true, 5);
        assert_eq!(backlog.tokens.available_permits(), 2);
        backlog.update(true, 5);
        assert_eq!(backlog.tokens.available_permits(), 2);
        assert_eq!(
            backlog.admit(Duration::from_secs(30)).await,
            Admission::Paced
        );
        assert_eq!(backlog.tokens.available_permits(), 1);
        backlog.update(false, 0);
        assert_eq!(backlog.tokens.available_permits(), 0);
        backlog.update(true, 0);
        let delay = Duration::from_millis(200);
        let before = Instant::now();
        assert_eq!(backlog.admit(delay).await, Admission::TimedOut);
        assert!(before.elapsed() >= delay);
    }
}

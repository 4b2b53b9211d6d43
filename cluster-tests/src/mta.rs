//! An SMTP load that behaves like the MTAs in front of a gateway: each message is
//! sent until a node accepts it, a 4xx reply, a refused or broken connection and an
//! attempt that ended without a final reply are tried again (on the next node in
//! turn), a 5xx ends it. Everything each message went through is kept, so tests can
//! check what the cluster stored or delivered against what its clients were told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::smtp::{self, ClientConfig, Message, Outcome, Stage};
use crate::Cluster;

/// A node that refused a connection is skipped for this long.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// What to send.
#[derive(Debug, Clone)]
pub struct MtaLoad {
    /// Token prefix: message `n` carries `Message-ID: <PREFIX-NNNNN@load.test>`.
    pub prefix: String,
    /// Most messages; fewer if the load is stopped or runs out of time.
    pub messages: usize,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Bytes of each message.
    pub size: usize,
    pub rcpt: String,
    /// Attempts per message before the generator gives up on it.
    pub max_attempts: usize,
    /// No attempt starts after this; each is bounded by the client's timeouts.
    pub deadline: Duration,
    /// Pause of a session between two messages (zero: as fast as the nodes answer).
    pub pace: Duration,
    pub client: ClientConfig,
}

impl MtaLoad {
    /// `messages` messages of `size` bytes to `user@example.test` over `sessions`
    /// sessions, as fast as the nodes answer; 40 attempts per message, no attempt
    /// begun after 4 minutes, each bounded by a 20 s client timeout.
    pub fn new(prefix: &str, messages: usize, sessions: usize, size: usize) -> Self {
        MtaLoad {
            prefix: prefix.into(),
            messages,
            sessions,
            size,
            rcpt: "user@example.test".into(),
            max_attempts: 40,
            deadline: Duration::from_secs(240),
            pace: Duration::ZERO,
            client: ClientConfig {
                timeout: Duration::from_secs(20),
                ..ClientConfig::default()
            },
        }
    }

    /// The token of message `n`.
    pub fn token(&self, n: usize) -> String {
        format!("{}-{n:05}", self.prefix)
    }

    /// The message number of a token of this load.
    pub fn number_of(&self, token: &str) -> Option<usize> {
        token
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
            .filter(|&n| n < self.messages)
    }
}

/// One attempt to deliver one message.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub node: u64,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// When the attempt ended.
    pub ended: Instant,
}

/// Everything the generator did for one message.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub attempts: Vec<Attempt>,
}

impl Log {
    /// The queue id of the `250`, if one came.
    pub fn acked(&self) -> Option<&str> {
        self.acked_at().map(|(id, _)| id)
    }

    /// The queue id of the `250` and when it came.
    pub fn acked_at(&self) -> Option<(&str, Instant)> {
        self.attempts.iter().find_map(|a| match &a.outcome {
            Outcome::Accepted { id } => Some((id.as_str(), a.ended)),
            _ => None,
        })
    }

    /// Attempts that ended after the end of data without a final reply.
    pub fn ambiguous(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Ambiguous { .. }))
            .count()
    }

    pub fn history(&self) -> String {
        self.attempts
            .iter()
            .map(|a| {
                format!(
                    "node {}: {} ({} ms)",
                    a.node,
                    a.outcome,
                    a.elapsed.as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The nodes' SMTP addresses and which of them refused connections lately.
pub struct Targets {
    nodes: Vec<(u64, SocketAddr)>,
    down_until: Mutex<HashMap<u64, Instant>>,
}

impl Targets {
    pub fn new(nodes: Vec<(u64, SocketAddr)>) -> Self {
        Targets {
            nodes,
            down_until: Mutex::new(HashMap::new()),
        }
    }

    /// The SMTP listeners of nodes `ids` of `cluster`.
    pub fn of(cluster: &Cluster, ids: &[u64]) -> Self {
        Self::new(
            ids.iter()
                .map(|&id| (id, cluster.node(id).smtp_addr()))
                .collect(),
        )
    }

    /// Attempt `attempt` of message `n`: the next node in turn that is not known to be
    /// down, so a retry goes to another node than the attempt before.
    fn pick(&self, n: usize, attempt: usize) -> (u64, SocketAddr) {
        let down = self.down_until.lock().expect("down list");
        let now = Instant::now();
        let len = self.nodes.len();
        (0..len)
            .map(|k| self.nodes[(n + attempt + k) % len])
            .find(|(id, _)| down.get(id).is_none_or(|&until| until <= now))
            .unwrap_or(self.nodes[(n + attempt) % len])
    }

    fn mark_down(&self, node: u64) {
        self.down_until
            .lock()
            .expect("down list")
            .insert(node, Instant::now() + DOWN_FOR);
    }
}

/// Delivers message `n` until accepted, refused for good, out of attempts or past
/// `end`. Retries 4xx, failed and ambiguous attempts with the same token.
async fn deliver(n: usize, load: &MtaLoad, targets: &Targets, end: Instant) -> Log {
    let msg = Message::generate(&load.token(n), load.size, &load.rcpt);
    let mut log = Log::default();
    for attempt in 0..load.max_attempts {
        if Instant::now() >= end {
            break;
        }
        let (node, addr) = targets.pick(n, attempt);
        let d = smtp::send_one(addr, &msg, &load.client).await;
        if let Outcome::Failed {
            stage: Stage::Connect,
            ..
        } = d.outcome
        {
            targets.mark_down(node);
        }
        let retry = d.outcome.is_retryable();
        let done = matches!(d.outcome, Outcome::Accepted { .. });
        log.attempts.push(Attempt {
            node,
            outcome: d.outcome,
            elapsed: d.elapsed,
            ended: Instant::now(),
        });
        if done || !retry {
            break;
        }
        // Back off a little more after each failure (a cluster without a leader
        // answers 451 quickly), never longer than half a second.
        let pause =
            Duration::from_millis(25 * (attempt as u64 + 1)).min(Duration::from_millis(500));
        tokio::time::sleep(pause).await;
    }
    log
}

/// Runs the sessions until every message was dealt with, the deadline passed or
/// `stop` was set; `acked` counts accepted messages as they happen. Returns one log
/// per message begun (message `n` at index `n`).
pub async fn run(
    load: MtaLoad,
    targets: Arc<Targets>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<Log> {
    let load = Arc::new(load);
    let end = Instant::now() + load.deadline;
    let next = Arc::new(AtomicUsize::new(0));
    let logs = Arc::new(Mutex::new(vec![Log::default(); load.messages]));
    let mut tasks = Vec::new();
    for _ in 0..load.sessions {
        let (load, targets, acked, stop, next, logs) = (
            load.clone(),
            targets.clone(),
            acked.clone(),
            stop.clone(),
            next.clone(),
            logs.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::SeqCst) || Instant::now() >= end {
                    return;
                }
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= load.messages {
                    return;
                }
                let log = deliver(n, &load, &targets, end).await;
                if log.acked().is_some() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                logs.lock().expect("logs")[n] = log;
                tokio::time::sleep(load.pace).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("session task panicked");
    }
    let begun = next.load(Ordering::SeqCst).min(load.messages);
    let mut logs = std::mem::take(&mut *logs.lock().expect("logs"));
    logs.truncate(begun);
    logs
}

/// A load running in the background until [`Running::finish`].
pub struct Running {
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Log>>,
    deadline: Duration,
}

impl Running {
    /// Starts `load` against `targets`.
    pub fn start(load: MtaLoad, targets: Targets) -> Self {
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = load.deadline;
        let task = tokio::spawn(run(load, Arc::new(targets), acked.clone(), stop.clone()));
        Running {
            acked,
            stop,
            task,
            deadline,
        }
    }

    /// Messages accepted so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` messages more than now were accepted, within `within`,
    /// failing if the load ends first or a node of `cluster` exits on its own.
    pub async fn wait_for(&self, more: u64, within: Duration, cluster: &mut Cluster) -> Result<()> {
        let target = self.acked() + more;
        let end = Instant::now() + within;
        while self.acked() < target {
            ensure!(
                !self.task.is_finished(),
                "the load ended early, after {} accepted messages",
                self.acked()
            );
            ensure!(
                Instant::now() < end,
                "only {} messages accepted; waited {within:?} for {target}",
                self.acked()
            );
            cluster.check_alive()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops taking new messages, lets those begun finish, and returns every log.
    pub async fn finish(self) -> Result<Vec<Log>> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(self.deadline + Duration::from_secs(60), self.task)
            .await
            .context("the load generator did not stop")?
            .context("the load generator panicked")
    }
}

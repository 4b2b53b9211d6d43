//! Application-level group commit: many concurrent operations, one Raft entry.
//!
//! openraft 0.9 appends one entry per `client_write` and waits for its fsync before
//! the next, so each caller proposing alone would cost a full replication round and
//! fsync. The proposer keeps a few entries in flight; operations that arrive while
//! they are busy wait in a queue and go together in the next entry, so batches grow
//! with load and a lone caller waits for nobody. Each caller gets its own result.
//!
//! On a follower the batch is forwarded to the leader over the cluster network;
//! callers never need to know who leads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_storage::{Command, Op, OpResult, Proposal, StateDir};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::network::{ForwardRefused, NetworkFactory};
use crate::types::{NodeId, Raft};
use crate::ProposeError;

/// Entries in flight at once. openraft 0.9's leader appends (and fsyncs) one entry
/// at a time, so more entries in flight only split the waiting operations into
/// smaller batches: measured with bench_raft at 64 writers of 1 KiB, 4 in flight gave
/// 2,874 writes/s (p99 78 ms), 2 gave 10,398 (p99 12 ms), 1 gave 9,723.
const IN_FLIGHT: usize = 2;
/// Most operations in one entry.
const MAX_OPS: usize = 1024;
/// Most bytes of operations in one entry (a single larger operation goes alone).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Operations waiting for an entry before callers are pushed back.
const QUEUE: usize = 16 * 1024;

struct Pending {
    op: Op,
    size: usize,
    reply: oneshot::Sender<Result<OpResult, ProposeError>>,
}

/// Submits operations to the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// Read for whether this node is part of a cluster yet.
    raft: Raft,
    node: NodeId,
    next_id: Arc<AtomicU64>,
    id_prefix: u64,
    /// Where the cluster's active feature level is read.
    state: Arc<StateDir>,
}

struct Submitter {
    raft: Raft,
    network: Option<NetworkFactory>,
    commit_timeout: Duration,
    /// Set while this node, stopping, hands its leadership over (see
    /// `RaftNode::hand_over_leadership`): nothing more is appended here.
    handing_over: Arc<AtomicBool>,
}

impl Proposer {
    pub(crate) fn start(
        raft: Raft,
        network: Option<NetworkFactory>,
        node: NodeId,
        commit_timeout: Duration,
        handing_over: Arc<AtomicBool>,
        state: Arc<StateDir>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let submitter = Arc::new(Submitter {
            raft: raft.clone(),
            network,
            commit_timeout,
            handing_over,
        });
        tokio::spawn(run(rx, submitter));
        Proposer {
            tx,
            raft,
            node,
            next_id: Arc::new(AtomicU64::new(0)),
            id_prefix: rand::random(),
            state,
        }
    }

    /// Whether this node is part of a cluster: it knows a membership, so what it is
    /// given can be committed once a quorum is there. A node still waiting for its
    /// peers to form the cluster is not.
    pub fn is_formed(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }

    /// The cluster's active feature level as this node's state records it (it may lag
    /// the leader's, never lead it): what this node may propose.
    pub fn feature_level(&self) -> u32 {
        self.state.current().feature_level()
    }

    /// A fresh operation id: unique per node run (random prefix, counter).
    pub fn new_op_id(&self) -> u128 {
        (u128::from(self.id_prefix) << 64)
            | u128::from(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Stamps `command` with a new id, the current time and this node, and commits it.
    pub async fn propose(&self, command: Command) -> Result<OpResult, ProposeError> {
        self.submit(self.stamp(command)).await
    }

    /// `command` as an operation with a new id, the current time and this node, to
    /// submit (and resubmit with the same id, applied once) later.
    pub fn stamp(&self, command: Command) -> Op {
        Op {
            id: self.new_op_id(),
            time_ms: crate::clock::now_ms(),
            node: self.node,
            command,
        }
    }

    /// Commits an operation built by the caller (to retry one with the same id).
    ///
    /// A command that needs a cluster feature level above the active one (as this
    /// node's state records it, which may lag the leader's, never lead it) is refused
    /// before it is proposed: some member could not apply it. The leader's raise of
    /// the level is itself held back until every member supports it
    /// (`crate::feature::raise`).
    pub async fn submit(&self, op: Op) -> Result<OpResult, ProposeError> {
        let (needs, active) = (op.command.feature_level(), self.feature_level());
        if needs > active && !matches!(op.command, Command::RaiseFeatureLevel { .. }) {
            return Err(ProposeError::FeatureLevel { needs, active });
        }
        let size = bulwark_storage::codec::encode(&op).map_or(0, |b| b.len());
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { op, size, reply })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)?
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, submitter: Arc<Submitter>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_OPS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.size;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let submitter = submitter.clone();
        tokio::spawn(async move {
            let (ops, replies): (Vec<Op>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let result = submitter.commit(ops).await;
            drop(permit);
            match result {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl Submitter {
    /// This node leads but is handing the leadership over: wait for the next leader.
    fn holding(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
            && self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Commits `ops` as one entry, here if we lead, else through the leader; retries
    /// (same op ids, so at most once) until the commit timeout.
    async fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, ProposeError> {
        let started = Instant::now();
        let deadline = started + self.commit_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            if !self.holding() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let write = tokio::time::timeout(
                    remaining,
                    self.raft.client_write(Proposal { ops: ops.clone() }),
                );
                let Ok(written) = write.await else {
                    // No quorum answered in time. The entry may still commit later; a
                    // retry with the same op ids would then be a duplicate, applied once.
                    return Err(ProposeError::Timeout(self.commit_timeout.as_millis() as u64));
                };
                let leader = match written {
                    Ok(resp) => return Ok(resp.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        f.leader_id.zip(f.leader_node)
                    }
                    Err(RaftError::APIError(e)) => {
                        tracing::warn!(error = %e, "proposal refused");
                        None
                    }
                    Err(RaftError::Fatal(e)) => return Err(ProposeError::Fatal(e.to_string())),
                };
                if let (Some((leader, node)), Some(network)) = (leader, &self.network) {
                    let ttl = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    // A leader cut off or paused does not answer: the forward would
                    // wait out the whole commit timeout while the others elect a new
                    // one. Once this node knows another leader, the batch goes there
                    // instead; should the old one have committed it after all, the
                    // same op ids are applied once.
                    let mut metrics = self.raft.metrics();
                    let superseded =
                        metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != leader));
                    tokio::select! {
                        forwarded = network.forward(leader, &node.addr, ops.clone(), ttl) => {
                            match forwarded {
                                Ok(Ok(results)) => return Ok(results),
                                Ok(Err(ForwardRefused::NotLeader(_))) => {}
                                Ok(Err(ForwardRefused::Failed(e))) => {
                                    tracing::warn!(leader, error = %e, "forwarded proposal failed")
                                }
                                Err(e) => {
                                    tracing::debug!(leader, error = %e, "forwarding to the leader")
                                }
                            }
                        }
                        _ = superseded => {
                            tracing::debug!(leader, "a new leader while forwarding to the old: forwarding again");
                            continue;
                        }
                    }
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(ProposeError::Timeout(self.commit_timeout.as_millis() as u64));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

//! `message.rejected` events, recorded off the reply path and in batches.
//!
//! A refusal is answered at once; its event goes to a bounded queue that one task
//! drains into the proposer (whose next entry carries the whole batch). When refusals
//! come faster than the log takes them, the overflow is counted and recorded as one
//! `RejectionsSuppressed` event: a flood cannot stall the log, and it is not silent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulwark_consensus::Proposer;
use bulwark_model::{Command, EventKind, Rejection};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Refusals waiting to be recorded before new ones are only counted.
const QUEUE: usize = 4096;
/// Refusals proposed at once.
const BATCH: usize = 512;

#[derive(Clone)]
pub struct RejectionLog {
    tx: mpsc::Sender<Rejection>,
    suppressed: Arc<AtomicU64>,
}

impl RejectionLog {
    /// Starts the recording task; it ends when every `RejectionLog` is dropped.
    pub fn start(proposer: Proposer) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let suppressed = Arc::new(AtomicU64::new(0));
        tokio::spawn(record_all(rx, proposer, suppressed.clone()));
        RejectionLog { tx, suppressed }
    }

    pub fn record(&self, rejection: Rejection) {
        if self.tx.try_send(rejection).is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn record_all(
    mut rx: mpsc::Receiver<Rejection>,
    proposer: Proposer,
    suppressed: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut commands: Vec<Command> = batch
            .drain(..)
            .map(|r| Command::Record(EventKind::MessageRejected(Box::new(r))))
            .collect();
        let count = suppressed.swap(0, Ordering::Relaxed);
        if count > 0 {
            commands.push(Command::Record(EventKind::RejectionsSuppressed { count }));
        }
        let mut proposals = JoinSet::new();
        for command in commands {
            let proposer = proposer.clone();
            proposals.spawn(async move { proposer.propose(command).await });
        }
        while let Some(result) = proposals.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "a message.rejected event was not recorded");
            }
        }
    }
}

//! The quarantine's retention (`[quarantine]`): what has been held longer than
//! `retention_days` is removed with its body by a replicated command, so every node
//! removes the same messages and each removal is on record (`quarantine.expired`).
//! The leader proposes it; were two nodes to propose at once, the second finds
//! nothing left to remove.
//!
//! A body removed so (or deleted over the API) is then erased from each node's own
//! files within `erase_within_secs` by [`erase`].

pub mod digest;

use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_storage::{Command, QuarantineExpiry};
use tokio_util::sync::CancellationToken;

/// Messages removed per command: one Raft entry stays small.
const PER_COMMAND: u32 = 1000;
/// Commands per check at most, so that a large backlog is worked off over a few checks.
const COMMANDS_PER_CHECK: usize = 100;

/// `[quarantine]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// How long a message stays; `None` (`retention_days = 0`): until someone acts.
    pub retention: Option<Duration>,
    /// `retention_days` as configured, for the reason recorded with each removal.
    pub retention_days: f64,
    /// How often the leader looks for messages past the retention.
    pub check_every: Duration,
    /// The bound within which a deleted or expired body is erased from this node's
    /// files (`erase_within_secs`).
    pub erase_within: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: Some(Duration::from_secs(30 * 86_400)),
            retention_days: 30.0,
            check_every: Duration::from_secs(600),
            erase_within: Duration::from_secs(3600),
        }
    }
}

/// Applies the retention until `stop` is cancelled.
pub async fn run(node: Arc<RaftNode>, settings: Settings, stop: CancellationToken) {
    let Some(retention) = settings.retention else {
        return;
    };
    let reason = format!("held longer than {} days", settings.retention_days);
    let mut tick = tokio::time::interval(settings.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !node.is_leader() {
            continue;
        }
        let before_ms = crate::now_ms().saturating_sub(retention.as_millis() as i64);
        for _ in 0..COMMANDS_PER_CHECK {
            match any_due(&node, before_ms).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "quarantine retention: reading the quarantine");
                    break;
                }
            }
            let command = Command::ExpireQuarantine(Box::new(QuarantineExpiry {
                before_ms,
                max: PER_COMMAND,
                reason: reason.clone(),
            }));
            if let Err(e) = node.proposer().propose(command).await {
                tracing::warn!(error = %e, "quarantine retention: proposing the removal");
                break;
            }
        }
    }
}

/// Whether some quarantined message is past the cut-off `before_ms`.
async fn any_due(node: &Arc<RaftNode>, before_ms: i64) -> anyhow::Result<bool> {
    let node = node.clone();
    Ok(tokio::task::spawn_blocking(move || node.state().quarantine_due(before_ms)).await??)
}

/// Erases the bodies of deleted and expired messages from this node's files within
/// `erase_within` of their removal being applied here, until `stop` is cancelled.
///
/// It looks every eighth of the bound and gives an erasure a third of it, so a body
/// dropped just after one erasure read what was due waits for that one to end (a
/// third), the next look (an eighth) and the next erasure (a third): within the
/// bound. Erasures one after another while bodies keep being dropped meanwhile.
pub async fn erase(node: Arc<RaftNode>, erase_within: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(erase_within / 8);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for _ in 0..ERASURES_PER_LOOK {
            let erased = tokio::select! {
                erased = node.erase_dropped_bodies(erase_within / 3) => erased,
                _ = stop.cancelled() => return,
            };
            match erased {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "erasing deleted quarantined bodies from disk failed: trying again"
                    );
                    break;
                }
            }
        }
    }
}

/// Erasures one look runs at most while bodies keep being dropped.
const ERASURES_PER_LOOK: usize = 4;

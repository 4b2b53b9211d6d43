//! Keeping the classifier to its size (`scan.bayes_max_tokens`): once this node, the
//! leader, holds more distinct tokens than the maximum, it proposes a replicated
//! expiry down to three quarters of it, and every node removes the same tokens (those
//! no lesson has counted for longest, the rarest of a day first; see
//! [`bulwark_storage::BayesCounts::oldest`]), recorded as `bayes.expired`. The
//! messages learned stay counted, as SpamAssassin's expiry leaves them.
//!
//! A token's day is the day of the last lesson that counted it: scanning a message
//! does not refresh it (that would be a Raft write per message), so a site that
//! keeps teaching keeps its current vocabulary.

use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_storage::feature::BAYES_EXPIRY;
use bulwark_storage::{BayesExpiry, Command};
use tokio_util::sync::CancellationToken;

/// How often the leader compares the number of tokens with the maximum: a read of a
/// number in memory.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Tokens one command removes at most: one Raft entry and one write stay small, and
/// a classifier far past its maximum (a first expiry after an upgrade) is brought
/// down over a few commands.
const PER_COMMAND: u64 = 100_000;

/// Commands per check at most.
const COMMANDS_PER_CHECK: usize = 100;

/// What an expiry keeps of `max`: three quarters, so that the next one waits for a
/// quarter of the maximum in new tokens.
pub fn keep(max: u64) -> u64 {
    max - max / 4
}

/// Keeps the classifier to `max` tokens until `stop` is cancelled; `None`: no
/// maximum.
pub async fn run(node: Arc<RaftNode>, max: Option<u64>, stop: CancellationToken) {
    let Some(max) = max else {
        return;
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut said_level, mut said_error) = (false, false);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let tokens = || node.state().bayes_distinct_tokens() as u64;
        if !node.is_leader() || tokens() <= max {
            continue;
        }
        if node.cluster_feature_level() < BAYES_EXPIRY {
            if !said_level {
                tracing::warn!(
                    max,
                    "the classifier holds more tokens than scan.bayes_max_tokens; they \
                     are expired once every member runs this release"
                );
                said_level = true;
            }
            continue;
        }
        let keep = keep(max);
        for _ in 0..COMMANDS_PER_CHECK {
            let command = Command::ExpireBayes(BayesExpiry {
                keep,
                limit: PER_COMMAND,
                max,
            });
            match node.proposer().propose(command).await {
                Ok(_) => said_error = false,
                Err(e) => {
                    if !said_error {
                        tracing::warn!(
                            error = %e,
                            "expiring the classifier's oldest tokens (tried again every 5 s)"
                        );
                        said_error = true;
                    }
                    break;
                }
            }
            if tokens() <= keep {
                break;
            }
        }
    }
}

//! When a member of a cluster stands for election: after a pre-vote (Raft thesis
//! §9.6), which openraft 0.9 does not have.
//!
//! openraft's own timer is off (`Config::enable_elect`) on a node with peers. Instead,
//! a follower that has heard nothing from a leader for its own timeout first asks the
//! other voters whether they would vote for it, without raising any term. A voter says
//! yes only if it has not heard from a leader for longer than openraft's leader lease
//! either, is not the leader itself, and holds no more of the log than the asker. Only
//! with a majority of yeses does the node start a real election.
//!
//! So a node that was cut off or restarted, and kept timing out alone, comes back with
//! the term it left with: the leader's next entries reach it, nothing deposes a
//! healthy leader. And since a voter grants once openraft's lease has run out, the
//! first survivor after a leader's crash stands and wins at once: the failover takes
//! the election timeout, not the lease plus the timeout as openraft's timer does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::ServerState;
use tokio::sync::watch;

use crate::network::{CallError, NetworkFactory};
use crate::node::RaftSettings;
use crate::types::{LogId, NodeId, Raft};

/// How often the driver looks at the time since it last heard from a leader.
const LOOK_EVERY: Duration = Duration::from_millis(25);
/// How much longer than openraft's lease a voter waits before it grants a pre-vote:
/// openraft dates the lease from when it handled the leader's last entries, this
/// module from when they arrived.
const LEASE_MARGIN: Duration = Duration::from_millis(50);

/// When a leader was last heard from: the last entries, heartbeat or snapshot a leader
/// sent this node that Raft accepted (dated when it arrived), or the moment this node
/// last led or started.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last: AtomicU64,
}

impl LeaderContact {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(LeaderContact {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    /// A message sent by a leader, which arrived at `at`, was accepted.
    pub(crate) fn heard(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long since a leader was last heard from.
    pub(crate) fn quiet(&self) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Acquire));
        last.elapsed()
    }
}

/// The timings of elections, from the `[raft]` settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// openraft's leader lease (its `election_timeout_max`): a voter refuses any
    /// candidate while it runs.
    pub(crate) lease: Duration,
    /// Between the timeouts of two voters next to each other in the membership.
    step: Duration,
    /// How long the RPCs of a pre-vote may take (each dials its voter anew: TCP and
    /// TLS), and how soon a refused one is asked again.
    rpc: Duration,
}

impl Timing {
    pub(crate) fn new(settings: &RaftSettings) -> Self {
        Timing {
            lease: Duration::from_millis(settings.election_timeout_ms),
            step: Duration::from_millis(
                (settings.election_timeout_ms / 4).max(settings.heartbeat_ms),
            ),
            rpc: Duration::from_millis(settings.heartbeat_ms.max(settings.election_timeout_ms / 4)),
        }
    }

    /// openraft's `election_timeout_min` and `election_timeout_max`: the maximum is the
    /// lease; openraft's own timer never fires on a node with peers.
    pub(crate) fn openraft_range(&self) -> (u64, u64) {
        let max = self.lease.as_millis() as u64;
        (max - self.step.as_millis() as u64, max)
    }

    /// A voter grants a pre-vote once it has heard from no leader for this long.
    pub(crate) fn grant_after(&self) -> Duration {
        self.lease + LEASE_MARGIN
    }

    /// The voter at `position` among the voters (by id) stands after this long without
    /// a leader. Each its own time, a step apart, so that after a leader's crash the
    /// first survivor stands alone and wins.
    fn stand_after(&self, position: usize) -> Duration {
        self.grant_after() + self.step * position as u32
    }
}

/// What a voter asked for a pre-vote answers: `Ok` to grant it, or why not. Its
/// lease is read from Raft itself, behind whatever Raft has still to handle (a
/// heartbeat waiting behind a slow write renews it first), so that a yes here is a
/// vote openraft will give; a voter too busy to answer within the asker's time is a
/// no.
pub(crate) async fn answer(
    raft: &Raft,
    contact: &LeaderContact,
    timing: &Timing,
    abstain: &AtomicBool,
    candidate_last_log: Option<LogId>,
) -> Result<(), String> {
    if abstain.load(Ordering::Acquire) {
        return Err("empty data directory: not voting until caught up".into());
    }
    let m = raft.metrics().borrow().clone();
    if m.state == ServerState::Leader {
        return Err(format!("this node leads (term {})", m.current_term));
    }
    let quiet = contact.quiet();
    if quiet < timing.grant_after() {
        return Err(format!(
            "heard from leader {:?} {} ms ago",
            m.current_leader,
            quiet.as_millis()
        ));
    }
    let lease = timing.lease;
    let leased = raft
        .with_raft_state(move |st| {
            let since = st.vote_last_modified().map(|at| at.elapsed());
            match (st.vote_ref().is_committed(), since) {
                (true, Some(since)) if since <= lease + LEASE_MARGIN => Some(since),
                _ => None,
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(since) = leased {
        return Err(format!(
            "the lease of leader {:?} runs: renewed {} ms ago",
            m.current_leader,
            since.as_millis()
        ));
    }
    let mine = raft.data_metrics().borrow().last_log;
    if candidate_last_log < mine {
        return Err(format!(
            "this node's log is ahead: {mine:?}, the candidate's {candidate_last_log:?}"
        ));
    }
    Ok(())
}

/// What this node needs to decide when to stand.
pub(crate) struct Driver {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) network: NetworkFactory,
    pub(crate) contact: Arc<LeaderContact>,
    pub(crate) timing: Timing,
    /// Set while this node lost its data and catches up: it does not stand.
    pub(crate) abstain: Arc<AtomicBool>,
    /// Set once this node is stopping: it does not stand.
    pub(crate) stopping: Arc<AtomicBool>,
}

impl Driver {
    /// Stands for election whenever a leader has been quiet for this node's timeout
    /// and a majority of the voters grant a pre-vote; at most once per timeout. Runs
    /// until `stop`.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut next_try = Instant::now();
        let mut refused_before = false;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            let m = self.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                // A leader that steps down waits a whole timeout before standing.
                self.contact.heard(Instant::now());
                continue;
            }
            if self.stopping.load(Ordering::Acquire) || self.abstain.load(Ordering::Acquire) {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            let Some(position) = voters.iter().position(|v| *v == self.id) else {
                continue;
            };
            let wait = self.timing.stand_after(position);
            if self.contact.quiet() < wait || Instant::now() < next_try {
                continue;
            }
            let last_log = self.raft.data_metrics().borrow().last_log;
            let asks = voters.iter().filter(|v| **v != self.id).map(|peer| {
                let addr = membership
                    .get_node(peer)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                let network = self.network.clone();
                let rpc = self.timing.rpc;
                async move {
                    let answer =
                        tokio::time::timeout(rpc, network.pre_vote(*peer, &addr, last_log))
                            .await
                            .unwrap_or_else(|_| Err(timed_out(&addr)));
                    (*peer, granted(answer))
                }
            });
            let answers = join_all(asks).await;
            let yes = 1 + answers.iter().filter(|(_, a)| a.is_ok()).count();
            if yes * 2 <= voters.len() {
                if !refused_before {
                    let why: Vec<String> = answers
                        .iter()
                        .filter_map(|(peer, a)| {
                            a.as_ref().err().map(|e| format!("node {peer}: {e}"))
                        })
                        .collect();
                    tracing::info!(
                        quiet_ms = self.contact.quiet().as_millis() as u64,
                        term = m.current_term,
                        "no leader heard from, but no majority would vote for this node: not \
                         standing ({})",
                        why.join("; ")
                    );
                }
                refused_before = true;
                // Ask again soon: a pre-vote raises no term.
                next_try = Instant::now() + self.timing.rpc;
                continue;
            }
            refused_before = false;
            // A leader may have won while the answers came (another voter that
            // granted this node's pre-vote stood too): its entries reached this node.
            if self.contact.quiet() < wait {
                continue;
            }
            tracing::info!(
                quiet_ms = self.contact.quiet().as_millis() as u64,
                term = m.current_term,
                votes = yes,
                voters = voters.len(),
                "no leader heard from and a majority would vote for this node: standing"
            );
            next_try = Instant::now() + wait;
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!(error = %e, "starting an election");
            }
        }
    }
}

fn timed_out(addr: &str) -> CallError {
    CallError::Network {
        addr: addr.to_string(),
        source: std::io::ErrorKind::TimedOut.into(),
    }
}

/// Whether a voter's answer grants the pre-vote. A voter of a release before
/// pre-votes cannot decode the question and closes the connection once connected: it
/// decides by openraft's lease alone when the real vote comes, so it counts as a yes.
/// A voter that cannot be reached is a no.
fn granted(answer: Result<Result<(), String>, CallError>) -> Result<(), String> {
    match answer {
        Ok(granted) => granted,
        Err(e) if e.closed_unanswered() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(heartbeat_ms: u64, election_timeout_ms: u64) -> RaftSettings {
        RaftSettings {
            heartbeat_ms,
            election_timeout_ms,
            ..RaftSettings::default()
        }
    }

    #[test]
    fn voters_stand_a_step_apart_after_the_lease() {
        let t = Timing::new(&settings(250, 1000));
        assert_eq!(t.lease, Duration::from_millis(1000));
        assert_eq!(t.grant_after(), Duration::from_millis(1050));
        assert_eq!(t.stand_after(0), Duration::from_millis(1050));
        assert_eq!(t.stand_after(1), Duration::from_millis(1300));
        assert_eq!(t.stand_after(2), Duration::from_millis(1550));
        assert_eq!(t.openraft_range(), (750, 1000));
    }

    #[test]
    fn the_openraft_range_is_valid_at_the_smallest_allowed_timeout() {
        // `[raft]` allows an election timeout of four heartbeats at the least.
        let t = Timing::new(&settings(10, 40));
        let (min, max) = t.openraft_range();
        assert!(10 < min && min < max, "{min} {max}");
    }

    #[test]
    fn contact_only_moves_forward() {
        let contact = LeaderContact::new();
        let later = Instant::now() + Duration::from_secs(3);
        contact.heard(later);
        contact.heard(Instant::now());
        assert_eq!(
            contact.quiet(),
            Duration::ZERO,
            "a contact in the future counts as now"
        );
        assert!(contact.last.load(Ordering::Acquire) >= 3000);
    }

    #[test]
    fn an_older_voter_closing_the_connection_is_a_yes_an_unreachable_one_a_no() {
        let eof = CallError::Network {
            addr: "a".into(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        };
        assert!(granted(Err(eof)).is_ok());
        let refused = CallError::Unreachable {
            addr: "a".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(granted(Err(refused)).is_err());
        assert!(granted(Err(timed_out("a"))).is_err());
        assert!(granted(Ok(Err("no".into()))).is_err());
        assert!(granted(Ok(Ok(()))).is_ok());
    }
}

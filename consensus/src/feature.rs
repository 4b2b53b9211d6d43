//! This build's feature level, as the cluster is told it (see
//! `bulwark_model::feature`), and how the leader raises the cluster's.
//!
//! A test may make a build claim a lower level than it has ([`set_test_level`],
//! from `BULWARK_TEST_FEATURE_LEVEL` in `bulwark serve`) to play a node of an older
//! release: it then answers the leader with that level, refuses to apply what needs
//! more, and stops when its cluster runs above it, as an older release would. Never
//! set in production.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_storage::feature::{self, FEATURE_LEVEL};
use bulwark_storage::{Command, StateDir};
use openraft::ServerState;
use tokio::sync::watch;

use crate::network::{CallError, NetworkFactory};
use crate::types::{NodeId, Raft};
use crate::Proposer;

/// The level a test made this build claim; 0: none (the build's own).
static TEST_LEVEL: AtomicU32 = AtomicU32::new(0);

/// The highest feature level this node applies: [`FEATURE_LEVEL`] unless a test
/// lowered it.
pub fn supported() -> u32 {
    match TEST_LEVEL.load(Ordering::Relaxed) {
        0 => FEATURE_LEVEL,
        level => level.min(FEATURE_LEVEL),
    }
}

/// Test only: makes this process claim feature level `level` (at most the build's).
pub fn set_test_level(level: u32) {
    TEST_LEVEL.store(level.max(1), Ordering::Relaxed);
}

/// How often the leader asks the members their levels while the cluster's is below
/// its own (and tells them the cluster's).
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How often it asks once the cluster runs at the leader's level (to tell a member
/// started from an older release that it must stop).
const ASK_AT_LEVEL_EVERY: Duration = Duration::from_secs(5);
/// How often the task looks whether this node has just become the leader: it asks
/// at once then, so that a new cluster is raised to its members' level within
/// moments of its first election.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// What the leader learnt of one member's level.
pub(crate) fn member_level(answer: Result<u32, CallError>) -> Result<u32, String> {
    match answer {
        Ok(level) => Ok(level),
        // A release before feature levels cannot decode the question.
        Err(e) if e.closed_unanswered() => Ok(feature::BASE),
        Err(e) => Err(e.to_string()),
    }
}

/// While this node leads: as soon as it becomes the leader, then every
/// [`ASK_EVERY`] ([`ASK_AT_LEVEL_EVERY`] once the cluster runs at this node's level),
/// asks each member (voters and learners) which level it supports, telling it the
/// cluster's, and raises the cluster's level with a Raft command to the lowest of
/// them once that is above it (never down). A member that does not answer holds the
/// level where it is. Runs until `stop`.
pub(crate) async fn raise(
    id: NodeId,
    raft: Raft,
    state: Arc<StateDir>,
    network: Option<NetworkFactory>,
    proposer: Proposer,
    mut stop: watch::Receiver<bool>,
) {
    let mut said = String::new();
    // When to ask next while this node leads; `None` while it does not.
    let mut next: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let leads = {
            let m = raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader && m.running_state.is_ok()
        };
        if !leads {
            next = None;
            continue;
        }
        let now = Instant::now();
        if next.is_some_and(|at| now < at) {
            continue;
        }
        let active = state.current().feature_level();
        let mine = supported();
        next = Some(
            now + if active < mine {
                ASK_EVERY
            } else {
                ASK_AT_LEVEL_EVERY
            },
        );
        let m = raft.metrics().borrow().clone();
        let mut lowest = Some(mine);
        let mut behind = Vec::new();
        let members: Vec<(NodeId, String)> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(member, _)| **member != id)
            .map(|(member, node)| (*member, node.addr.clone()))
            .collect();
        for (member, addr) in members {
            let answer = match &network {
                Some(network) => network.feature_level(member, &addr, active).await,
                None => continue,
            };
            match member_level(answer) {
                Ok(level) => {
                    lowest = lowest.map(|l| l.min(level));
                    if level < mine {
                        behind.push(format!("node {member} supports {level}"));
                    }
                }
                Err(e) => {
                    lowest = None;
                    behind.push(format!("node {member} did not say ({e})"));
                }
            }
        }
        match lowest {
            Some(level) if level > active => {
                let command = Command::RaiseFeatureLevel { level };
                match proposer.propose(command).await {
                    Ok(_) => {
                        tracing::info!(
                            from = active,
                            to = level,
                            "raised the cluster's feature level: every member supports it"
                        );
                        said.clear();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, to = level, "raising the cluster's feature level")
                    }
                }
            }
            _ if active < mine => {
                let now = behind.join("; ");
                if now != said {
                    tracing::warn!(
                        active,
                        supported = mine,
                        members = %now,
                        "the cluster's feature level stays at {active} until every member \
                         supports {mine}"
                    );
                    said = now;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(kind: std::io::ErrorKind) -> CallError {
        CallError::Network {
            addr: "peer:1".into(),
            source: kind.into(),
        }
    }

    #[test]
    fn an_old_node_dropping_the_question_counts_as_the_base_level() {
        assert_eq!(member_level(Ok(2)), Ok(2));
        assert_eq!(
            member_level(Err(network(std::io::ErrorKind::UnexpectedEof))),
            Ok(feature::BASE)
        );
        assert!(member_level(Err(network(std::io::ErrorKind::TimedOut))).is_err());
        let unreachable = CallError::Unreachable {
            addr: "peer:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(member_level(Err(unreachable)).is_err());
    }
}

//! Calls only the leader can answer: the log index a linearizable read must wait for,
//! and changes of membership (a learner added, promoted to voter, a member removed).
//! A node that does not lead sends the call to the leader over the cluster network,
//! as the proposer does with writes, so any node answers any call.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bulwark_storage::StateDir;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use crate::network::NetworkFactory;
use crate::types::{NodeId, Raft};

/// A learner is promoted only when it is at most this many entries behind the
/// leader's log: a voter far behind would leave the cluster one failure from a stall.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// What is asked of the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderCall {
    /// The log index every read that starts now must see applied.
    ReadIndex,
    Membership(MembershipChange),
}

/// A change of the cluster's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to node `id` at `addr` (its cluster listener), as a learner.
    AddLearner { id: NodeId, addr: String },
    /// Make learner `id` a voter.
    Promote { id: NodeId },
    /// Remove member `id` (voter or learner) from the cluster.
    Remove { id: NodeId },
}

impl MembershipChange {
    /// The node the change is about.
    pub fn member(&self) -> NodeId {
        match self {
            MembershipChange::AddLearner { id, .. }
            | MembershipChange::Promote { id }
            | MembershipChange::Remove { id } => *id,
        }
    }
}

/// Why a [`LeaderCall`] was not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderCallError {
    /// The node asked does not lead (the leader it knows of, if any).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// No leader answered in time, or it could not reach a quorum.
    #[error("{0}")]
    Unavailable(String),
    /// The call names a node that is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The call does not fit the cluster as it is (already a member, still behind, ...).
    #[error("{0}")]
    Refused(String),
}

/// Answers `call` on this node, which must lead; returns the log index it stands for
/// (the read index, or the index of the membership entry). A node to be added is
/// first asked over `network` which feature level its release applies, and refused
/// below the cluster's active one as `state` records it (see [`check_joining`]).
pub(crate) async fn answer(
    raft: &Raft,
    network: Option<&NetworkFactory>,
    state: &StateDir,
    call: &LeaderCall,
) -> Result<u64, LeaderCallError> {
    let change = match call {
        LeaderCall::ReadIndex => {
            return match raft.ensure_linearizable().await {
                Ok(log) => Ok(log.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(LeaderCallError::NotLeader(f.leader_id))
                }
                Err(e) => Err(LeaderCallError::Unavailable(e.to_string())),
            }
        }
        LeaderCall::Membership(change) => change,
    };
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Err(LeaderCallError::NotLeader(metrics.current_leader));
    }
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let is_member = |id: &NodeId| membership.get_node(id).is_some();
    let written = match change {
        MembershipChange::AddLearner { id, addr } => {
            if is_member(id) {
                return Err(LeaderCallError::Refused(format!(
                    "node {id} is already a member"
                )));
            }
            if let Some(network) = network {
                check_joining(network, *id, addr, state.current().feature_level()).await?;
            }
            raft.add_learner(*id, BasicNode::new(addr), false).await
        }
        MembershipChange::Promote { id } => {
            if voters.contains(id) {
                return Err(LeaderCallError::Refused(format!(
                    "node {id} is already a voter"
                )));
            }
            if !is_member(id) {
                return Err(not_member(*id));
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map_or(0, |l| l.index);
            let behind = last.saturating_sub(matched);
            if behind > PROMOTE_MAX_LAG {
                return Err(LeaderCallError::Refused(format!(
                    "learner {id} is {behind} entries behind the leader (at most \
                     {PROMOTE_MAX_LAG} to be promoted): wait until GET /v1/cluster shows \
                     its lag near 0"
                )));
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                .await
        }
        MembershipChange::Remove { id } => {
            if !is_member(id) {
                return Err(not_member(*id));
            }
            if voters.contains(id) {
                if voters.len() == 1 {
                    return Err(LeaderCallError::Refused(format!(
                        "node {id} is the only voter"
                    )));
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false)
                    .await
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                    .await
            }
        }
    };
    match written {
        Ok(response) => Ok(response.log_id.index),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(LeaderCallError::NotLeader(f.leader_id))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::LearnerNotFound(_),
        ))) => Err(LeaderCallError::NotFound(e.to_string())),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(LeaderCallError::Refused(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(LeaderCallError::Unavailable(e.to_string())),
    }
}

/// Refuses node `id` at `addr` if its release applies less than the cluster's feature
/// level `active`: it could not apply the log it would be sent. A node of the release
/// before feature levels cannot decode the question and drops it, which counts as
/// [`bulwark_storage::feature::BASE`]. A node that does not answer at all (not
/// started yet) may be added: if it turns out too old, it says so and stops when it
/// is told the level or first applies what needs more.
async fn check_joining(
    network: &NetworkFactory,
    id: NodeId,
    addr: &str,
    active: u32,
) -> Result<(), LeaderCallError> {
    match crate::feature::member_level(network.feature_level(id, addr, active).await) {
        Ok(level) if level < active => Err(LeaderCallError::Refused(format!(
            "node {id} at {addr} runs a release that applies feature level {level}, the \
             cluster runs at {active}: start it on this release or a newer one, then add it"
        ))),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::info!(node = id, %addr, error = %e, "adding a node that did not say its feature level");
            Ok(())
        }
    }
}

fn not_member(id: NodeId) -> LeaderCallError {
    LeaderCallError::NotFound(format!("node {id} is not a member of the cluster"))
}

/// Answers `call` here if this node leads, else asks the leader; retries while the
/// leadership is unknown or moving, until `timeout`.
pub(crate) async fn call(
    raft: &Raft,
    network: Option<&NetworkFactory>,
    state: &StateDir,
    call: &LeaderCall,
    timeout: Duration,
) -> Result<u64, LeaderCallError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let answered =
            match tokio::time::timeout(remaining, answer(raft, network, state, call)).await {
                Ok(answered) => answered,
                Err(_) => break,
            };
        let leader = match answered {
            Err(LeaderCallError::NotLeader(leader)) => leader,
            done => return done,
        };
        let addr = leader.and_then(|id| {
            let metrics = raft.metrics().borrow().clone();
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone());
            addr
        });
        if let (Some(leader), Some(addr), Some(network)) = (leader, addr, network) {
            let ttl = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            match network.leader_call(leader, &addr, call.clone(), ttl).await {
                Ok(Err(LeaderCallError::NotLeader(_))) => {}
                Ok(done) => return done,
                Err(e) => tracing::debug!(leader, error = %e, "asking the leader"),
            }
        }
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
    Err(LeaderCallError::Unavailable(format!(
        "no leader answered within {} ms",
        timeout.as_millis()
    )))
}

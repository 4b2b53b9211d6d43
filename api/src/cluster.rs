//! The cluster: its status, and changes of membership. A node joins as a learner
//! (it receives the log but does not vote), is promoted to voter once it has caught
//! up, and can be removed; each change is a Raft membership entry made by the leader
//! (whichever node is asked) and recorded as an `api.action` event.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bulwark_consensus::{LeaderCall, LeaderCallError, MembershipChange};
use bulwark_storage::{Command, EventKind, MembershipChanged};
use serde::{Deserialize, Serialize, Serializer};

use crate::auth::{Access, ClientIp};
use crate::extract::{Body, PathParam};
use crate::routes::ApiState;
use crate::ApiError;

/// How long a membership change may take: adding a learner commits one entry, but a
/// promotion waits for the joint configuration to commit too.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

impl From<LeaderCallError> for ApiError {
    fn from(e: LeaderCallError) -> Self {
        match e {
            LeaderCallError::NotFound(detail) => ApiError::not_found(detail),
            LeaderCallError::Refused(detail) => ApiError::conflict(detail),
            LeaderCallError::NotLeader(_) | LeaderCallError::Unavailable(_) => {
                ApiError::unavailable(e.to_string())
            }
        }
    }
}

/// The cluster as this node sees it.
// The API's copy of [`bulwark_consensus::ClusterStatus`].
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Cluster {
    /// This node's id.
    node_id: u64,
    /// Its Raft state: Leader, Follower, Candidate, Learner or Shutdown.
    state: String,
    /// The leader it knows of, if any.
    #[schema(required)]
    leader_id: Option<u64>,
    term: u64,
    /// The last entry of its Raft log.
    #[schema(required)]
    last_log_index: Option<u64>,
    #[schema(required)]
    commit_index: Option<u64>,
    /// The last entry applied to its state.
    #[schema(required)]
    applied_index: Option<u64>,
    /// The last entry its latest snapshot holds.
    #[schema(required)]
    snapshot_index: Option<u64>,
    /// Hash of the last event of the audit trail (hex).
    chain_head: String,
    /// Events in its audit trail.
    event_count: u64,
    members: Vec<Member>,
    /// The highest feature level the node answering applies (its release's).
    feature_level: u32,
    /// The cluster's active feature level as the node answering has applied it: no
    /// node proposes a command above it. The leader raises it once every member
    /// supports a higher one; it never goes down.
    cluster_feature_level: u32,
}

/// One member of the cluster.
// The API's copy of [`bulwark_consensus::MemberStatus`].
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Member {
    id: u64,
    /// Its cluster listener, `host:port` (empty for a single node's own).
    addr: String,
    /// It votes (else: a learner).
    voter: bool,
    /// Last log index known to be replicated to it (on the leader).
    #[schema(required)]
    matched_index: Option<u64>,
    /// Entries it is behind the leader's log (on the leader).
    #[schema(required)]
    lag: Option<u64>,
    /// Milliseconds since it last answered the leader's heartbeats or entries (on the
    /// leader; 0 for the leader itself; null too when it never answered this leader).
    #[schema(required)]
    last_contact_ms: Option<u64>,
    /// It answered the leader within two election timeouts (on the leader).
    #[schema(required)]
    healthy: Option<bool>,
}

impl Cluster {
    /// `status` (this node's view or the leader's) with the feature levels of `node`,
    /// the node answering.
    fn of(status: bulwark_consensus::ClusterStatus, node: &bulwark_consensus::RaftNode) -> Self {
        // Every field named: one added to the status is a compile error here.
        let bulwark_consensus::ClusterStatus {
            node_id,
            state,
            leader_id,
            term,
            last_log_index,
            commit_index,
            applied_index,
            snapshot_index,
            chain_head,
            event_count,
            members,
        } = status;
        let members = members
            .into_iter()
            .map(|member| {
                let bulwark_consensus::MemberStatus {
                    id,
                    addr,
                    voter,
                    matched_index,
                    lag,
                    last_contact_ms,
                    healthy,
                } = member;
                Member {
                    id,
                    addr,
                    voter,
                    matched_index,
                    lag,
                    last_contact_ms,
                    healthy,
                }
            })
            .collect();
        Cluster {
            node_id,
            state,
            leader_id,
            term,
            last_log_index,
            commit_index,
            applied_index,
            snapshot_index,
            chain_head,
            event_count,
            members,
            feature_level: node.feature_level(),
            cluster_feature_level: node.cluster_feature_level(),
        }
    }
}

/// A membership change made.
// Fields in alphabetical order, and `cluster`'s too: the answer was a JSON object,
// whose keys serde_json sorts, and keeps its bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MemberChanged {
    /// cluster.add_learner, cluster.promote or cluster.remove.
    action: &'static str,
    /// The cluster as this node sees it once the change is made.
    #[serde(serialize_with = "sorted")]
    cluster: Cluster,
    /// The Raft log index of the membership entry.
    log_index: u64,
    /// The member's node id.
    member: u64,
}

/// Serializes `value` with the keys of its objects in alphabetical order.
fn sorted<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(value)
        .map_err(serde::ser::Error::custom)?
        .serialize(serializer)
}

/// How long the leader's view may take to come.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatusQuery {
    /// `leader`: the leader's view (asked of it when this node does not lead), the
    /// only one with each member's lag and health; 503 when no leader answers.
    /// Default (`local`): this node's own view.
    #[param(pattern = "^(local|leader)$")]
    view: Option<String>,
}

/// `GET /v1/cluster`: members, roles, leader, term, indexes, lags, health, chain
/// head; `?view=leader` for the leader's. Without a token unless
/// `api.public_status = false`.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security((), ("bearer" = [])), params(StatusQuery), responses((status = 200, description = "members, leader, term, commit and applied indexes, lags, health, chain head", body = Cluster), (status = 400, description = "view is neither local nor leader"), (status = 403, description = "api.public_status = false and a role that may not read it"), (status = 503, description = "view=leader and no leader answered")), operation_id = "cluster_status")]
pub(crate) async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<Cluster>, ApiError> {
    if !s.public_status {
        s.caller(&headers, Access::Status)?;
    }
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match q.view.as_deref() {
        None | Some("local") => Ok(Json(Cluster::of(s.node.status(), &s.node))),
        Some("leader") => Ok(Json(Cluster::of(
            s.node.leader_status(VIEW_TIMEOUT).await?,
            &s.node,
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "view: local or leader, not {other:?}"
        ))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddMember {
    /// The new node's id (`[node] id` in its config).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    id: u64,
    /// The new node's cluster listener, `host:port`.
    addr: String,
}

/// `POST /v1/cluster/members {"id": 4, "addr": "10.0.0.4:7001"}`: the node becomes
/// a learner; the leader starts sending it the log (or a snapshot).
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body = AddMember, responses((status = 200, description = "added as a learner", body = MemberChanged), (status = 400, description = "malformed"), (status = 403, description = "not the admin role"), (status = 409, description = "already a member"), (status = 503, description = "no leader answered")), operation_id = "cluster_add")]
pub(crate) async fn add(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<MemberChanged>, ApiError> {
    let caller = s.caller(&headers, Access::Cluster)?;
    let request: AddMember =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    node_id(request.id)?;
    if !valid_addr(&request.addr) {
        return Err(ApiError::bad_request(format!(
            "addr: {:?} is not host:port",
            request.addr
        )));
    }
    let call = MembershipChange::AddLearner {
        id: request.id,
        addr: request.addr,
    };
    change(&s, call, caller.name, client_ip).await
}

/// `POST /v1/cluster/members/{id}/promote`: the learner becomes a voter (refused
/// while it is more than a few entries behind).
#[utoipa::path(post, path = "/v1/cluster/members/{id}/promote", tag = "cluster", params(("id" = u64, Path, description = "node id", minimum = 1, maximum = 9223372036854775807_i64)), responses((status = 200, description = "now a voter", body = MemberChanged), (status = 400, description = "not a node id"), (status = 403, description = "not the admin role"), (status = 404, description = "not a member"), (status = 409, description = "already a voter, or still behind"), (status = 503, description = "no leader answered")), operation_id = "cluster_promote")]
pub(crate) async fn promote(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    PathParam(id): PathParam<u64>,
) -> Result<Json<MemberChanged>, ApiError> {
    let caller = s.caller(&headers, Access::Cluster)?;
    let id = node_id(id)?;
    change(&s, MembershipChange::Promote { id }, caller.name, client_ip).await
}

/// `DELETE /v1/cluster/members/{id}`: the member leaves the cluster (a voter leaves
/// the quorum too; the last voter cannot be removed).
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path, description = "node id", minimum = 1, maximum = 9223372036854775807_i64)), responses((status = 200, description = "removed", body = MemberChanged), (status = 400, description = "not a node id"), (status = 403, description = "not the admin role"), (status = 503, description = "no leader answered"), (status = 404, description = "not a member"), (status = 409, description = "the only voter")), operation_id = "cluster_remove")]
pub(crate) async fn remove(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    PathParam(id): PathParam<u64>,
) -> Result<Json<MemberChanged>, ApiError> {
    let caller = s.caller(&headers, Access::Cluster)?;
    let id = node_id(id)?;
    change(&s, MembershipChange::Remove { id }, caller.name, client_ip).await
}

/// A node id as the configs give it: 1 to `i64::MAX` (a TOML integer).
fn node_id(id: u64) -> Result<u64, ApiError> {
    if id == 0 || id > i64::MAX as u64 {
        return Err(ApiError::bad_request(format!(
            "id: node ids are 1 to {}, not {id}",
            i64::MAX
        )));
    }
    Ok(id)
}

/// `host:port` with a port number.
fn valid_addr(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

/// Asks the leader for a membership change, records it (made or refused), and
/// answers with the cluster as this node now sees it.
async fn change(
    s: &ApiState,
    change: MembershipChange,
    user: String,
    client_ip: Option<std::net::IpAddr>,
) -> Result<Json<MemberChanged>, ApiError> {
    let member = change.member();
    let (action, addr) = match &change {
        MembershipChange::AddLearner { addr, .. } => ("cluster.add_learner", Some(addr.clone())),
        MembershipChange::Promote { .. } => ("cluster.promote", None),
        MembershipChange::Remove { .. } => ("cluster.remove", None),
    };
    let result = s
        .node
        .leader_call(LeaderCall::Membership(change), CHANGE_TIMEOUT)
        .await;
    let refused = match &result {
        Ok(_) => None,
        Err(LeaderCallError::NotFound(e) | LeaderCallError::Refused(e)) => Some(e.clone()),
        // Not known to be made or not: nothing to record; the caller retries.
        Err(_) => None,
    };
    if result.is_ok() || refused.is_some() {
        s.node
            .proposer()
            .propose(Command::Record(EventKind::MembershipChanged(Box::new(
                MembershipChanged {
                    action: action.into(),
                    member,
                    addr,
                    log_index: result.as_ref().ok().copied(),
                    user,
                    client_ip,
                    refused,
                },
            ))))
            .await?;
    }
    let log_index = result?;
    Ok(Json(MemberChanged {
        action,
        cluster: Cluster::of(s.node.status(), &s.node),
        log_index,
        member,
    }))
}

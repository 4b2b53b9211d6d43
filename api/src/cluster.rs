//! The cluster: its status, and changes of membership. A node joins as a learner
//! (it receives the log but does not vote), is promoted to voter once it has caught
//! up, and can be removed; each change is a Raft membership entry made by the leader
//! (whichever node is asked) and recorded as an `api.action` event.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bulwark_consensus::{LeaderCall, LeaderCallError, MembershipChange};
use bulwark_storage::{Command, EventKind, MembershipChanged};
use serde::Deserialize;
use serde_json::{json, Value};

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

/// `GET /v1/cluster`: members, roles, leader, term, indexes, lags, chain head.
/// Without a token unless `api.public_status = false`.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security((), ("bearer" = [])), responses((status = 200, description = "members, leader, term, commit and applied indexes, lags, chain head"), (status = 403, description = "api.public_status = false and a role that may not read it")), operation_id = "cluster_status")]
pub(crate) async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<bulwark_consensus::ClusterStatus>, ApiError> {
    if !s.public_status {
        s.caller(&headers, Access::Status)?;
    }
    Ok(Json(s.node.status()))
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
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body = AddMember, responses((status = 200, description = "added as a learner"), (status = 400, description = "malformed"), (status = 403, description = "not the admin role"), (status = 409, description = "already a member"), (status = 503, description = "no leader answered")), operation_id = "cluster_add")]
pub(crate) async fn add(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
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
#[utoipa::path(post, path = "/v1/cluster/members/{id}/promote", tag = "cluster", params(("id" = u64, Path, description = "node id", minimum = 1, maximum = 9223372036854775807_i64)), responses((status = 200, description = "now a voter"), (status = 400, description = "not a node id"), (status = 403, description = "not the admin role"), (status = 404, description = "not a member"), (status = 409, description = "already a voter, or still behind"), (status = 503, description = "no leader answered")), operation_id = "cluster_promote")]
pub(crate) async fn promote(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    PathParam(id): PathParam<u64>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.caller(&headers, Access::Cluster)?;
    let id = node_id(id)?;
    change(&s, MembershipChange::Promote { id }, caller.name, client_ip).await
}

/// `DELETE /v1/cluster/members/{id}`: the member leaves the cluster (a voter leaves
/// the quorum too; the last voter cannot be removed).
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path, description = "node id", minimum = 1, maximum = 9223372036854775807_i64)), responses((status = 200, description = "removed"), (status = 400, description = "not a node id"), (status = 403, description = "not the admin role"), (status = 503, description = "no leader answered"), (status = 404, description = "not a member"), (status = 409, description = "the only voter")), operation_id = "cluster_remove")]
pub(crate) async fn remove(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    PathParam(id): PathParam<u64>,
) -> Result<Json<Value>, ApiError> {
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
) -> Result<Json<Value>, ApiError> {
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
    let index = result?;
    Ok(Json(json!({
        "action": action,
        "member": member,
        "log_index": index,
        "cluster": s.node.status(),
    })))
}

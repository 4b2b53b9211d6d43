//! The cluster's policy: read any version, change it from the current one, list the
//! changes. A change is checked whole by the node (every problem at once, 422) before
//! it is proposed, names the version it was made from (409 when that is no longer
//! current, so two administrators cannot overwrite each other) and is recorded as
//! `policy.changed` with the caller, the address, the reason and the diff. Admins
//! change anything; operators the allow and block lists only; auditors and the siem
//! role read.

use std::net::IpAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::policy::{self, PolicyChange, PolicyVersion, POLICY_STALE};
use bulwark_storage::{Command, Role, StateStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Access, Caller, ClientIp};
use crate::extract::Body;
use crate::routes::ApiState;
use crate::ApiError;

/// What the node knows about policies, which this crate does not: what the keys
/// mean.
pub trait PolicyEngine: Send + Sync {
    /// A proposed policy (the `policy` object of a change) checked whole: its
    /// canonical JSON, or every problem found.
    fn check(&self, proposed: &Value) -> Result<String, Vec<String>>;

    /// The version this node judges messages by now (it follows the committed ones
    /// within a moment; 0: its own `[policy]`, before the cluster had one).
    fn judging(&self) -> u64;

    /// What `proposed` would change in the decisions recorded in
    /// `[since_ms, until_ms)` after seq `after`, as the answer's JSON (with `next`
    /// when it stopped early), or every problem of the policy.
    fn simulate(
        &self,
        state: &StateStore,
        proposed: &Value,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: u64,
    ) -> Result<Result<Value, Vec<String>>, bulwark_storage::Error>;
}

/// The top-level keys an operator may change.
const OPERATOR_KEYS: [&str; 2] = ["allow", "block"];
/// Longest reason given with a change.
const MAX_REASON: usize = 1024;
/// Largest version or seq a request may name: what the OpenAPI document's `int64`
/// allows.
const MAX_NUMBER: u64 = i64::MAX as u64;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct VersionQuery {
    /// An earlier version, whole (default: the current one).
    #[param(minimum = 1, maximum = 9223372036854775807_i64)]
    version: Option<u64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeRequest {
    /// The version this change was made from (`GET /v1/policy`'s `version`).
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    base_version: u64,
    /// The whole new policy: the `[policy]` keys as JSON.
    #[schema(value_type = Object)]
    policy: Value,
    /// Why, recorded with the change (at most 1024 bytes).
    #[serde(default)]
    #[schema(max_length = 1024)]
    reason: String,
}

/// One change in the history.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryEntry {
    version: u64,
    time: String,
    /// Who made it: a token's name, or `config@nodeN` for a policy seeded from node
    /// N's configuration.
    by: String,
    /// The address the change came from (none for a seeded policy).
    #[schema(required)]
    source_ip: Option<String>,
    reason: String,
    /// One line a change, against the version before.
    diff: Vec<String>,
    /// SHA-256 of the version's canonical JSON, hex.
    hash: String,
}

impl From<&PolicyVersion> for HistoryEntry {
    fn from(v: &PolicyVersion) -> Self {
        HistoryEntry {
            version: v.version,
            time: rfc3339(v.time_ms),
            by: v.user.clone(),
            source_ip: v.client_ip.map(|ip| ip.to_string()),
            reason: v.reason.clone(),
            diff: v.diff.clone(),
            hash: hex::encode(v.hash),
        }
    }
}

/// A version of the policy, whole: who made it, when and why, what it changed, the
/// version this node judges by, and the policy.
// Fields in alphabetical order, here and in the change's answer: they were JSON
// objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyAnswer {
    /// Who made it: a token's name, or `config@nodeN` for a policy seeded from node
    /// N's configuration.
    by: String,
    /// One line a change, against the version before.
    diff: Vec<String>,
    /// SHA-256 of the version's canonical JSON, hex.
    hash: String,
    /// The version this node judges messages by now (0: its own `[policy]`).
    judging: u64,
    /// The policy: the `[policy]` keys as JSON.
    #[schema(value_type = Object)]
    policy: Value,
    reason: String,
    #[schema(required)]
    source_ip: Option<String>,
    /// When it was made (RFC 3339 UTC).
    time: String,
    version: u64,
}

/// What a change made (`PUT /v1/policy`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyChanged {
    /// False when the policy was the current one already: nothing was recorded.
    changed: bool,
    /// The `policy.changed` event's hash (hex), when changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    /// The `policy.changed` event's seq, when changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// The current version: the new one, or the unchanged one.
    version: u64,
}

/// What a proposed policy would change ([`PolicyEngine::simulate`]'s answer).
#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct Simulation(Value);

impl utoipa::PartialSchema for Simulation {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let count = |about: &str| json!({ "type": "integer", "minimum": 0, "description": about });
        crate::routes::schema_of(json!({
            "type": "object",
            "description": "The decisions of the range decided again by the proposed policy",
            "properties": {
                "judged": count("decisions tried"),
                "changed": count("decisions the proposed policy would change"),
                "unchanged": count("decisions it would keep"),
                "changes": {
                    "type": "array",
                    "description": "by recorded action and the proposed policy's",
                    "items": {
                        "type": "object",
                        "properties": {
                            "from": { "type": "string", "description": "the action on record" },
                            "to": { "type": "string", "description": "the proposed policy's" },
                            "count": count("decisions"),
                            "examples": {
                                "type": "array",
                                "items": { "type": "string" },
                                "description": "the first message ids (at most 10)",
                            },
                        },
                        "required": ["from", "to", "count", "examples"],
                    },
                },
                "without_header_from": count(
                    "rejections recorded before the From address was kept: tried with the \
                     envelope sender alone"
                ),
                "needs_rescan": {
                    "type": "array",
                    "items": { "type": "string" },
                    "description": "changed keys a simulation cannot decide (rules, \
                                    signatures, blocklists): the messages would have to be \
                                    scanned again",
                },
                "next": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "description": "the after to go on from; null once the range is done",
                },
            },
            "required": [
                "judged", "changed", "unchanged", "changes", "without_header_from",
                "needs_rescan", "next",
            ],
        }))
    }
}

impl utoipa::ToSchema for Simulation {}

/// `GET /v1/policy?version`: the current version (or an earlier one) whole, with
/// who made it, when and why, and the version this node judges by (`judging`).
#[utoipa::path(get, path = "/v1/policy", tag = "policy", params(VersionQuery), responses((status = 200, description = "version, hash, who, when, why, diff and the policy", body = PolicyAnswer), (status = 404, description = "no such version, or the cluster has no policy yet"), (status = 403, description = "the metrics role")), operation_id = "policy_get")]
pub(crate) async fn get(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<Json<PolicyAnswer>, ApiError> {
    s.caller(&headers, Access::Policy)?;
    let Query(query) = query?;
    if query.version.is_some_and(|v| v > MAX_NUMBER) {
        return Err(ApiError::bad_request(format!(
            "version: at most {MAX_NUMBER}"
        )));
    }
    let node = s.node.clone();
    let found = tokio::task::spawn_blocking(move || match query.version {
        Some(version) => node.state().policy_version(version),
        None => node.state().current_policy(),
    })
    .await
    .map_err(ApiError::internal)??;
    let version = found.ok_or_else(|| match query.version {
        Some(version) => ApiError::not_found(format!("no policy version {version}")),
        None => ApiError::not_found("the cluster has no policy yet"),
    })?;
    let policy: Value = serde_json::from_str(&version.document).map_err(ApiError::internal)?;
    let HistoryEntry {
        version,
        time,
        by,
        source_ip,
        reason,
        diff,
        hash,
    } = HistoryEntry::from(&version);
    Ok(Json(PolicyAnswer {
        by,
        diff,
        hash,
        judging: s.policy.judging(),
        policy,
        reason,
        source_ip,
        time,
        version,
    }))
}

/// `GET /v1/policy/history`: every version, oldest first, with who made it, when,
/// why and what it changed.
#[utoipa::path(get, path = "/v1/policy/history", tag = "policy", responses((status = 200, description = "every version, oldest first", body = [HistoryEntry]), (status = 403, description = "the metrics role")), operation_id = "policy_history")]
pub(crate) async fn history(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    s.caller(&headers, Access::Policy)?;
    let node = s.node.clone();
    let versions = tokio::task::spawn_blocking(move || node.state().policy_versions())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(versions.iter().map(HistoryEntry::from).collect()))
}

/// `PUT /v1/policy` with `{"base_version", "policy", "reason"}`: the next version,
/// made from `base_version`.
#[utoipa::path(put, path = "/v1/policy", tag = "policy", request_body = ChangeRequest, responses((status = 200, description = "the new version (or the current one, unchanged, when the policy is the same)", body = PolicyChanged), (status = 409, description = "base_version is not the current version"), (status = 422, description = "the policy does not validate: every problem in `errors`"), (status = 403, description = "not admin, or an operator changing more than the allow and block lists")), operation_id = "policy_change")]
pub(crate) async fn change(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers, Access::PolicyChange)?;
    let request: ChangeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e} (expected {{\"base_version\": N, \"policy\": {{...}}, \"reason\": \"...\"}})"
        ))
    })?;
    if request.base_version > MAX_NUMBER {
        return Err(ApiError::bad_request(format!(
            "base_version: at most {MAX_NUMBER}"
        )));
    }
    if request.reason.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON} bytes"
        )));
    }
    let applied = apply(
        &s,
        caller,
        client_ip,
        request.base_version,
        &request.policy,
        request.reason,
    )
    .await;
    match applied {
        Ok(Applied::Unchanged { version }) => Ok(Json(PolicyChanged {
            changed: false,
            hash: None,
            seq: None,
            version,
        })
        .into_response()),
        Ok(Applied::Changed { version, seq, hash }) => Ok(Json(PolicyChanged {
            changed: true,
            hash: Some(hex::encode(hash)),
            seq: Some(seq),
            version,
        })
        .into_response()),
        Err(Refused::Invalid(problems)) => Ok(unprocessable(problems)),
        Err(Refused::Api(e)) => Err(e),
    }
}

/// What a change of the policy made.
pub(crate) enum Applied {
    /// The policy was the current one already: nothing recorded.
    Unchanged { version: u64 },
    /// Version `version`, recorded as `policy.changed` (its seq and hash).
    Changed {
        version: u64,
        seq: u64,
        hash: bulwark_storage::Hash,
    },
}

/// Why a change of the policy was not made.
pub(crate) enum Refused {
    /// The policy does not validate: every problem.
    Invalid(Vec<String>),
    /// Stale (409), not the caller's to make (403), no quorum.
    Api(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

/// `caller` changes the policy to `proposed`, made from `base_version`: checked whole,
/// refused when the base is stale or an operator changes more than the allow and
/// block lists, else proposed and recorded (the API's `PUT` and the console's form).
pub(crate) async fn apply(
    s: &ApiState,
    caller: Caller,
    client_ip: Option<IpAddr>,
    base_version: u64,
    proposed: &Value,
    reason: String,
) -> Result<Applied, Refused> {
    let document = s.policy.check(proposed).map_err(Refused::Invalid)?;
    let node = s.node.clone();
    let current = tokio::task::spawn_blocking(move || node.state().current_policy())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let current_version = current.as_ref().map_or(0, |c| c.version);
    if base_version != current_version {
        return Err(stale(current_version, base_version).into());
    }
    if current.as_ref().is_some_and(|c| c.document == document) {
        return Ok(Applied::Unchanged {
            version: current_version,
        });
    }
    if caller.role != Role::Admin {
        let old = current
            .as_ref()
            .and_then(|c| serde_json::from_str(&c.document).ok())
            .unwrap_or_else(|| json!({}));
        let new: Value = serde_json::from_str(&document).map_err(ApiError::internal)?;
        if let Some(line) = policy::diff(&old, &new)
            .iter()
            .find(|line| !OPERATOR_KEYS.contains(&policy::top_key(line)))
        {
            return Err(ApiError::forbidden(format!(
                "the {} role changes the allow and block lists only, not: {line}",
                caller.role.as_str()
            ))
            .into());
        }
    }
    let result = s
        .node
        .proposer()
        .propose(Command::ChangePolicy(Box::new(PolicyChange {
            base_version,
            document,
            user: caller.name,
            client_ip,
            reason,
        })))
        .await
        .map_err(ApiError::from)?;
    match result.refused {
        Some(reason) if reason.starts_with(POLICY_STALE) => Err(ApiError::conflict(reason).into()),
        Some(reason) => Err(Refused::Invalid(vec![reason])),
        None => Ok(Applied::Changed {
            version: base_version + 1,
            seq: result.seq,
            hash: result.hash,
        }),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimulateRequest {
    /// The proposed policy: the `[policy]` keys as JSON.
    #[schema(value_type = Object)]
    policy: Value,
    /// Decisions recorded at or after this time (RFC 3339).
    since: Option<String>,
    /// Decisions recorded before this time (RFC 3339).
    until: Option<String>,
    /// The `next` of the previous answer, to go on where it stopped.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    after: u64,
}

/// `POST /v1/policy/simulate` with `{"policy", "since", "until", "after"}`: the
/// decisions recorded in the range decided again by the proposed policy from what
/// was recorded with them (no rescan, no DNS): how many would change, from which
/// action to which, with example message ids. A large range is answered a part at a
/// time: `next` says where to go on (`after`), null once the range is done.
#[utoipa::path(post, path = "/v1/policy/simulate", tag = "policy", request_body = SimulateRequest, responses((status = 200, description = "judged, changed, unchanged, changes [{from, to, count, examples}], next", body = Simulation), (status = 422, description = "the policy does not validate: every problem in `errors`"), (status = 403, description = "a role that may not read the policy or the messages' verdicts")), operation_id = "policy_simulate")]
pub(crate) async fn simulate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    s.caller(&headers, Access::Messages)?;
    let request: SimulateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e} (expected {{\"policy\": {{...}}, \"since\": \"RFC 3339\", \"until\": \"RFC 3339\", \"after\": SEQ}})"
        ))
    })?;
    if request.after > MAX_NUMBER {
        return Err(ApiError::bad_request(format!(
            "after: at most {MAX_NUMBER}"
        )));
    }
    let since_ms = crate::routes::time_ms("since", request.since.as_deref())?;
    let until_ms = crate::routes::time_ms("until", request.until.as_deref())?;
    let node = s.node.clone();
    let engine = s.policy.clone();
    let answer = tokio::task::spawn_blocking(move || {
        engine.simulate(
            &node.state(),
            &request.policy,
            since_ms,
            until_ms,
            request.after,
        )
    })
    .await
    .map_err(ApiError::internal)??;
    match answer {
        Ok(answer) => Ok(Json(Simulation(answer)).into_response()),
        Err(problems) => Ok(unprocessable(problems)),
    }
}

fn stale(current: u64, base: u64) -> ApiError {
    ApiError::conflict(format!(
        "{POLICY_STALE}: it is at version {current}, not {base}"
    ))
}

/// 422 problem+json listing every problem found.
fn unprocessable(problems: Vec<String>) -> Response {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    let body = json!({
        "type": "about:blank",
        "title": "the policy does not validate",
        "status": status.as_u16(),
        "detail": problems.join("; "),
        "errors": problems,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

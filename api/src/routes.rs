//! Routes and handlers.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bulwark_consensus::RaftNode;
use bulwark_storage::{Command, EventKind};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Access;
use crate::{AdminToken, ApiError};

/// Largest request body accepted.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Largest audit note.
const MAX_NOTE: usize = 1024 * 1024;
/// Default and maximum page size of event listings.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<RaftNode>,
    pub admin: AdminToken,
    pub tokenizer: crate::Tokenizer,
    pub preview: crate::Previewer,
    pub metrics: std::sync::Arc<crate::Metrics>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(crate::cluster::status))
        .route("/v1/cluster/members", post(crate::cluster::add))
        .route("/v1/cluster/members/{id}", delete(crate::cluster::remove))
        .route(
            "/v1/cluster/members/{id}/promote",
            post(crate::cluster::promote),
        )
        .route("/v1/notes", post(add_note))
        .route("/v1/events", get(crate::events::list))
        .route("/v1/events/verify", get(verify_events))
        .route("/v1/events/export", get(crate::events::export))
        .route("/v1/events/stream", get(crate::events::tail))
        .route("/v1/messages/{id}", get(crate::messages::trace))
        .route("/v1/quarantine", get(crate::quarantine::list))
        .route(
            "/v1/quarantine/release",
            post(crate::quarantine::release_matching),
        )
        .route(
            "/v1/quarantine/delete",
            post(crate::quarantine::delete_matching),
        )
        .route(
            "/v1/quarantine/{id}",
            get(crate::quarantine::detail).delete(crate::quarantine::delete),
        )
        .route("/v1/quarantine/{id}/raw", get(crate::quarantine::raw))
        .route(
            "/v1/quarantine/{id}/release",
            post(crate::quarantine::release),
        )
        .route("/v1/queue", get(crate::queue::list))
        .route("/v1/queue/{id}", delete(crate::queue::delete))
        .route("/v1/queue/{id}/retry", post(crate::queue::retry))
        .route("/v1/queue/{id}/hold", post(crate::queue::hold))
        .route("/v1/queue/{id}/release", post(crate::queue::release))
        .route(
            "/v1/tokens",
            get(crate::tokens::list).post(crate::tokens::create),
        )
        .route("/v1/tokens/{name}", delete(crate::tokens::revoke))
        .route("/v1/bayes", get(crate::bayes::counts))
        .route(
            "/v1/bayes/{lesson}",
            post(crate::bayes::learn).layer(DefaultBodyLimit::max(crate::bayes::MAX_LESSON)),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::time_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            consistency,
        ))
        .with_state(state)
}

/// How long a `?consistent=true` read may wait for the leader's confirmation and for
/// this node to apply up to it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The response header stating the Raft log index this node had applied when it
/// started reading: the answer reflects at least every entry up to it.
pub const APPLIED_INDEX_HEADER: &str = "bulwark-applied-index";

/// Reads are served from this node's state. With `?consistent=true` (any route) the
/// node first waits until it has applied every entry the leader had committed when
/// the request arrived, as the leader confirms with a quorum, so the answer reflects
/// every write acknowledged before it (a linearizable read). Every answer states the
/// applied index it was read at in [`APPLIED_INDEX_HEADER`].
async fn consistency(
    State(s): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let query = request.uri().query().unwrap_or("");
    let mut consistent = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "consistent" {
            rest.push(pair);
            continue;
        }
        consistent = match value {
            "true" => true,
            "false" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "consistent: {other:?} (expected true or false)"
                )))
            }
        };
    }
    if rest.len() != query.split('&').filter(|p| !p.is_empty()).count() {
        let path = request.uri().path();
        let rewritten = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", rest.join("&"))
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(rewritten.parse().map_err(ApiError::internal)?);
        *request.uri_mut() = Uri::from_parts(parts).map_err(ApiError::internal)?;
    }
    let applied = if consistent {
        s.node.linearizable_read(READ_TIMEOUT).await?
    } else {
        s.node.applied_index()
    };
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(APPLIED_INDEX_HEADER, HeaderValue::from(applied));
    Ok(response)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    if s.node.is_ready() {
        Ok(Json(json!({ "ready": true })))
    } else {
        Err(ApiError::unavailable(
            "no leader known, or not yet applied up to the commit index",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteRequest {
    text: String,
}

/// Appends an administrator's note to the audit trail.
async fn add_note(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let caller = s.caller(&headers, Access::Note)?.name;
    let note: NoteRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if note.text.trim().is_empty() {
        return Err(ApiError::bad_request("text is empty"));
    }
    if note.text.len() > MAX_NOTE {
        return Err(ApiError::bad_request(format!(
            "text is {} bytes, at most {MAX_NOTE} allowed",
            note.text.len()
        )));
    }
    let result = s
        .node
        .proposer()
        .propose(Command::Record(EventKind::AuditNote {
            author: caller.to_string(),
            text: note.text,
        }))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "seq": result.seq, "hash": hex::encode(result.hash) })),
    ))
}

/// The page size a listing asked for: [`DEFAULT_LIMIT`] if none, else 1..=[`MAX_LIMIT`].
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    Ok(limit)
}

/// An RFC 3339 time parameter, if given, as Unix milliseconds; `what` names the
/// parameter in the error.
pub(crate) fn time_ms(what: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let Some(text) = text else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: {e} (expected RFC 3339, e.g. 2026-11-28T09:00:00Z)"
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{what}: out of range")))
}

async fn verify_events(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<bulwark_storage::VerifyReport>, ApiError> {
    s.caller(&headers, Access::Events)?;
    let node = s.node.clone();
    let report = tokio::task::spawn_blocking(move || node.state().verify())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(report))
}

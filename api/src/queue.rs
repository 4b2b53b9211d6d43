//! The delivery queue: listing with filters, and an administrator's retry, hold,
//! release and delete. Each action is one Raft operation that records an `api.action`
//! event naming the caller and its address, refused or not.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::{
    Command, DeliveryCommand, MessageId, QueueAction, QueueFilter, QueueRecord, QueueStatus,
    ReadKind, RecipientStatus,
};
use serde::{Deserialize, Serialize};

use crate::access::Read;
use crate::auth::{Access, ClientIp};
use crate::extract::PathParam;
use crate::routes::{page_limit, ApiState, MessageAction};
use crate::ApiError;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct QueueQuery {
    sender: Option<String>,
    recipient: Option<String>,
    status: Option<String>,
    /// Messages after this id (a page's `next`).
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    after: Option<String>,
    /// Messages in a page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of the delivery queue.
// Fields in alphabetical order, here and in the other answers of this module: they
// were JSON objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QueuePage {
    /// The Raft index this node had applied when it read the page.
    #[schema(required)]
    applied_index: Option<u64>,
    items: Vec<QueueItem>,
    /// The `after` of the next page; null when there is none.
    #[schema(required)]
    next: Option<String>,
}

/// One queued message as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QueueItem {
    /// An administrator holds it: no attempt until released.
    held: bool,
    id: String,
    /// The node delivering it now and until when, if one is.
    #[schema(required)]
    lease: Option<Lease>,
    /// When it was received (RFC 3339 UTC).
    received: String,
    /// The node that received it, which delivers it first.
    received_by: u64,
    recipients: Vec<QueuedRecipient>,
    /// The envelope's sender (empty for a bounce).
    sender: String,
    /// pending, deferred, held or leased (a node is delivering it now).
    status: &'static str,
}

/// A node's lease on a message it is delivering.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Lease {
    node: u64,
    /// RFC 3339 UTC.
    until: String,
}

/// One recipient of a queued message.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QueuedRecipient {
    address: String,
    /// Attempts made so far (pending: 0; null once delivered or failed).
    #[schema(required)]
    attempts: Option<u32>,
    /// The next hop's last reply, once it gave one.
    #[schema(required)]
    last_reply: Option<String>,
    /// When the next attempt is due (deferred only).
    #[schema(required)]
    next_attempt: Option<String>,
    /// pending, deferred, delivered or failed.
    status: &'static str,
}

/// `GET /v1/queue`: `{"items": [...], "next": ID|null, "applied_index": N}`, oldest
/// first, as this node has applied the queue. Recorded as an `access.read` of kind
/// `search` (the items name senders and recipients).
#[utoipa::path(get, path = "/v1/queue", tag = "queue", params(QueueQuery), responses((status = 200, description = "{items, next, applied_index}", body = QueuePage), (status = 400, description = "a malformed filter"), (status = 403, description = "the siem role"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "queue_list")]
pub(crate) async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<QueueQuery>, QueryRejection>,
) -> Result<Json<QueuePage>, ApiError> {
    let caller = s.caller(&headers, Access::Messages)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let read = Read {
        kind: ReadKind::Search,
        message_id: None,
        reason: None,
        query: Some(
            match crate::access::query(&[
                ("sender", q.sender.as_deref()),
                ("recipient", q.recipient.as_deref()),
                ("status", q.status.as_deref()),
            ]) {
                Some(f) => format!("queue?{f}"),
                None => "queue".into(),
            },
        ),
    };
    let limit = page_limit(q.limit)?;
    let status = match q.status.as_deref() {
        Some(s) => Some(
            s.parse::<QueueStatus>()
                .map_err(|e| ApiError::bad_request(format!("status: {e}")))?,
        ),
        None => None,
    };
    let after = match q.after.as_deref() {
        Some(id) => Some(message_id("after", id)?),
        None => None,
    };
    let filter = QueueFilter {
        sender: q.sender,
        recipient: q.recipient,
        status,
    };
    let node = s.node.clone();
    let applied = node.status().applied_index;
    let now = now_ms();
    let (records, next) =
        tokio::task::spawn_blocking(move || node.state().queue_list(&filter, after, limit, now))
            .await
            .map_err(ApiError::internal)??;
    s.record_read(&caller, client_ip, read).await?;
    Ok(Json(QueuePage {
        applied_index: applied,
        items: records.iter().map(|r| item(r, now)).collect(),
        next: next.map(|id| id.to_string()),
    }))
}

/// One queued message as the API shows it.
fn item(record: &QueueRecord, now_ms: i64) -> QueueItem {
    let e = &record.entry;
    let recipients = e
        .recipients
        .iter()
        .map(|r| {
            let (status, attempts, next_attempt, last_reply) = match &r.status {
                RecipientStatus::Pending => ("pending", Some(0), None, None),
                RecipientStatus::Deferred {
                    attempts,
                    next_attempt_ms,
                    last_reply,
                } => (
                    "deferred",
                    Some(*attempts),
                    Some(rfc3339(*next_attempt_ms)),
                    Some(last_reply.as_str()),
                ),
                RecipientStatus::Delivered { reply } => {
                    ("delivered", None, None, Some(reply.as_str()))
                }
                RecipientStatus::Failed { reply } => ("failed", None, None, Some(reply.as_str())),
            };
            QueuedRecipient {
                address: r.address.clone(),
                attempts,
                last_reply: last_reply.map(str::to_string),
                next_attempt,
                status,
            }
        })
        .collect();
    QueueItem {
        held: record.held,
        id: e.message_id.to_string(),
        lease: e.lease.map(|l| Lease {
            node: l.node,
            until: rfc3339(l.until_ms),
        }),
        received: rfc3339(e.time_ms),
        received_by: e.received_by,
        recipients,
        sender: e.mail_from.clone(),
        status: record.status(now_ms).as_str(),
    }
}

/// `POST /v1/queue/{id}/retry`.
#[utoipa::path(post, path = "/v1/queue/{id}/retry", tag = "queue", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")), responses((status = 200, description = "due now", body = MessageAction), (status = 404, description = "not in the queue"), (status = 400, description = "not a message id"), (status = 403, description = "a role that may not act on messages")), operation_id = "queue_retry")]
pub(crate) async fn retry(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
) -> Result<Json<MessageAction>, ApiError> {
    act(state, headers, ip, id, QueueAction::Retry).await
}

/// `POST /v1/queue/{id}/hold`.
#[utoipa::path(post, path = "/v1/queue/{id}/hold", tag = "queue", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")), responses((status = 200, description = "held", body = MessageAction), (status = 404, description = "not in the queue"), (status = 400, description = "not a message id"), (status = 403, description = "a role that may not act on messages")), operation_id = "queue_hold")]
pub(crate) async fn hold(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
) -> Result<Json<MessageAction>, ApiError> {
    act(state, headers, ip, id, QueueAction::Hold).await
}

/// `POST /v1/queue/{id}/release`.
#[utoipa::path(post, path = "/v1/queue/{id}/release", tag = "queue", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")), responses((status = 200, description = "no longer held", body = MessageAction), (status = 404, description = "not in the queue"), (status = 400, description = "not a message id"), (status = 403, description = "a role that may not act on messages")), operation_id = "queue_release")]
pub(crate) async fn release(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
) -> Result<Json<MessageAction>, ApiError> {
    act(state, headers, ip, id, QueueAction::Release).await
}

/// `DELETE /v1/queue/{id}`.
#[utoipa::path(delete, path = "/v1/queue/{id}", tag = "queue", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")), responses((status = 200, description = "dropped, no DSN", body = MessageAction), (status = 404, description = "not in the queue"), (status = 400, description = "not a message id"), (status = 403, description = "a role that may not act on messages")), operation_id = "queue_delete")]
pub(crate) async fn delete(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
) -> Result<Json<MessageAction>, ApiError> {
    act(state, headers, ip, id, QueueAction::Delete).await
}

/// Commits `action` on message `id` for the authenticated caller: 200 with the
/// `api.action` event's seq and hash, or 404 when the message is not in the queue
/// (that refusal is on record too).
async fn act(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    action: QueueAction,
) -> Result<Json<MessageAction>, ApiError> {
    let user = s.caller(&headers, Access::Act)?.name;
    let message_id = message_id("id", &id)?;
    let result = s
        .node
        .proposer()
        .propose(Command::Delivery(Box::new(DeliveryCommand::Admin {
            message_id,
            action,
            user: user.to_string(),
            client_ip,
        })))
        .await?;
    if let Some(reason) = result.refused {
        return Err(ApiError::not_found(format!(
            "message {message_id}: {reason}"
        )));
    }
    Ok(Json(MessageAction::new(
        action.as_str(),
        message_id,
        result.seq,
        result.hash,
    )))
}

fn message_id(what: &str, text: &str) -> Result<MessageId, ApiError> {
    text.parse::<MessageId>()
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

pub(crate) fn now_ms() -> i64 {
    bulwark_consensus::clock::now_ms()
}

//! The message trace: one message's envelope, verdict, where each recipient stands,
//! and every event about it from reception to its final state, as this node has
//! applied them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bulwark_storage::{EventFilter, MessageId, ReadKind};
use serde_json::{json, Map, Value};

use crate::access::{Read, ReadReason};
use crate::auth::{Access, ClientIp};
use crate::extract::PathParam;
use crate::routes::ApiState;
use crate::ApiError;

/// Events returned for one message at most: a message with more (thousands of
/// deferrals) shows the first ones and says so.
const MAX_EVENTS: usize = 1000;

/// `GET /v1/messages/{id}?reason`: recorded as an `access.read` of kind `trace`.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), ReadReason), responses((status = 200, description = "envelope, verdict, recipients' states and events in order"), (status = 404, description = "no such message"), (status = 400, description = "not a message id"), (status = 403, description = "the siem role"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "messages_trace")]
pub(crate) async fn trace(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    query: Result<Query<ReadReason>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.caller(&headers, Access::Messages)?;
    let id = id
        .parse::<MessageId>()
        .map_err(|e| ApiError::bad_request(format!("id: {e}")))?;
    let Query(reason) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reason = reason.checked()?;
    let node = s.node.clone();
    let applied = node.status().applied_index;
    let (events, queued) = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let filter = EventFilter {
            type_name: None,
            message_id: Some(id),
            ..Default::default()
        };
        let (events, more) = state.events(&filter, 0, MAX_EVENTS)?;
        let queued = state.queue_record(id)?;
        Ok::<_, bulwark_storage::Error>(((events, more.is_some()), queued))
    })
    .await
    .map_err(ApiError::internal)??;
    let ((events, truncated), queued) = (events, queued);
    if events.is_empty() {
        return Err(ApiError::not_found(format!("no event about message {id}")));
    }
    let read = Read {
        kind: ReadKind::Trace,
        message_id: Some(id),
        reason,
        query: None,
    };
    s.record_read(&caller, client_ip, read).await?;
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    let first = |kind: &str| events.iter().find(|e| e["type"] == kind);
    let received = first("message.received");
    let verdict = first("scan.verdict");

    // Where each recipient stands, from the events in order.
    let mut recipients: Map<String, Value> = Map::new();
    if let Some(r) = received {
        for address in r["email"]["to"]["address"].as_array().into_iter().flatten() {
            if let Some(a) = address.as_str() {
                recipients.insert(a.to_string(), json!({ "status": "pending" }));
            }
        }
    }
    for e in &events {
        let status = match e["type"].as_str() {
            Some("delivery.succeeded") => "delivered",
            Some("delivery.deferred") => "deferred",
            Some("delivery.failed") => "failed",
            Some("api.action") if e["action"] == "queue.delete" => "deleted",
            _ => continue,
        };
        for address in e["email"]["to"]["address"].as_array().into_iter().flatten() {
            if let Some(a) = address.as_str() {
                let mut entry = json!({ "status": status, "seq": e["seq"] });
                if let Some(reply) = e["smtp"]["reply"].as_str() {
                    entry["reply"] = reply.into();
                }
                recipients.insert(a.to_string(), entry);
            }
        }
    }
    let state = if first("message.quarantined").is_some() {
        "quarantined"
    } else if received.is_none() && verdict.is_some_and(|v| v["action"] == "reject") {
        "rejected"
    } else if let Some(record) = &queued {
        if record.held {
            "held"
        } else {
            "queued"
        }
    } else {
        let statuses: Vec<&str> = recipients
            .values()
            .filter_map(|r| r["status"].as_str())
            .collect();
        if statuses.is_empty() {
            "unknown"
        } else if statuses.iter().all(|s| *s == "delivered") {
            "delivered"
        } else if statuses.iter().all(|s| *s == "deleted") {
            "deleted"
        } else if statuses.contains(&"delivered") {
            "partly delivered"
        } else {
            "failed"
        }
    };
    Ok(Json(json!({
        "id": id.to_string(),
        "state": state,
        "received": received.map(|r| json!({
            "time": r["time"],
            "node": r["node"],
            "sender": r["email"]["sender"]["address"],
            "recipients": r["email"]["to"]["address"],
            "from": r["email"]["from"]["address"],
            "subject": r["email"]["subject"],
            "message_id": r["email"]["message_id"],
            "source": r["source"],
            "size": r["size"],
            "smtp": r["smtp"],
        })),
        "verdict": verdict.map(|v| json!({
            "action": v["action"],
            "reason": v["event"]["reason"],
            "policy_version": v["policy_version"],
            "score": v["scan"]["score"],
            "thresholds": v["scan"]["thresholds"],
            "symbols": v["scan"]["symbols"],
            "authentication": v["scan"]["authentication"],
            "findings": v["scan"]["findings"],
            "engines": v["scan"]["engines"],
        })),
        "recipients": recipients,
        "events": events,
        "events_truncated": truncated,
        "applied_index": applied,
    })))
}

//! The message trace: one message's envelope, verdict, where each recipient stands,
//! and every event about it from reception to its final state, as this node has
//! applied them.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bulwark_storage::{EventFilter, MessageId, ReadKind};
use serde::Serialize;
use serde_json::Value;

use crate::access::{Read, ReadReason};
use crate::auth::{Access, ClientIp};
use crate::events::Event;
use crate::extract::PathParam;
use crate::routes::ApiState;
use crate::ApiError;

/// Events returned for one message at most: a message with more (thousands of
/// deferrals) shows the first ones and says so.
const MAX_EVENTS: usize = 1000;

/// One message's trace.
// Fields in alphabetical order, here and in the trace's parts: they were JSON
// objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Trace {
    /// The Raft index this node had applied when it read the trace.
    #[schema(required)]
    applied_index: Option<u64>,
    /// Every event about the message, oldest first (at most 1000).
    events: Vec<Event>,
    /// True when the message has more events than `events` shows.
    events_truncated: bool,
    id: String,
    /// Its reception (`message.received`); null for a message rejected at the end
    /// of data.
    #[schema(required)]
    received: Option<Received>,
    /// Where each recipient stands, by address.
    recipients: BTreeMap<String, RecipientState>,
    /// quarantined, rejected, held, queued, delivered, partly delivered, deleted,
    /// failed or unknown.
    state: &'static str,
    /// The verdict (`scan.verdict`), if it was scanned.
    #[schema(required)]
    verdict: Option<Verdict>,
}

/// A message's reception, from its `message.received` event.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Received {
    /// The `From` header's address, if it had one.
    #[schema(value_type = Option<Vec<String>>, required)]
    from: Value,
    /// The `Message-ID` header, if it had one.
    #[schema(value_type = Option<String>, required)]
    message_id: Value,
    /// The node that received it.
    #[schema(value_type = u64)]
    node: Value,
    /// The envelope's recipients.
    #[schema(value_type = Vec<String>)]
    recipients: Value,
    /// The envelope's sender (empty for a bounce).
    #[schema(value_type = String)]
    sender: Value,
    /// Bytes as received.
    #[schema(value_type = u64)]
    size: Value,
    /// protocol, smtputf8, eight_bit.
    #[schema(value_type = Object)]
    smtp: Value,
    /// The client: ip, port, domain (its HELO), proxy_ip.
    #[schema(value_type = Object)]
    source: Value,
    /// The `Subject` header, if it had one.
    #[schema(value_type = Option<String>, required)]
    subject: Value,
    /// RFC 3339 UTC.
    #[schema(value_type = String)]
    time: Value,
}

impl Received {
    fn of(event: &Value) -> Self {
        let email = &event["email"];
        Received {
            from: email["from"]["address"].clone(),
            message_id: email["message_id"].clone(),
            node: event["node"].clone(),
            recipients: email["to"]["address"].clone(),
            sender: email["sender"]["address"].clone(),
            size: event["size"].clone(),
            smtp: event["smtp"].clone(),
            source: event["source"].clone(),
            subject: email["subject"].clone(),
            time: event["time"].clone(),
        }
    }
}

/// A message's verdict, from its `scan.verdict` event.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Verdict {
    /// deliver, tag, quarantine or reject.
    #[schema(value_type = String)]
    action: Value,
    /// Each authentication's method, result and detail.
    #[schema(value_type = Vec<Object>)]
    authentication: Value,
    /// Each engine's name, version, ms and timed_out.
    #[schema(value_type = Vec<Object>)]
    engines: Value,
    /// Each finding's kind, name, location and engine.
    #[schema(value_type = Vec<Object>)]
    findings: Value,
    /// The cluster policy version it was judged by (0: the node's own `[policy]`).
    #[schema(value_type = u64)]
    policy_version: Value,
    /// Why, in a few words.
    #[schema(value_type = String)]
    reason: Value,
    #[schema(value_type = f64)]
    score: Value,
    /// Each symbol's name, score, description and engine.
    #[schema(value_type = Vec<Object>)]
    symbols: Value,
    /// The tag, quarantine and reject scores it was judged against.
    #[schema(value_type = Object)]
    thresholds: Value,
}

impl Verdict {
    fn of(event: &Value) -> Self {
        let scan = &event["scan"];
        Verdict {
            action: event["action"].clone(),
            authentication: scan["authentication"].clone(),
            engines: scan["engines"].clone(),
            findings: scan["findings"].clone(),
            policy_version: event["policy_version"].clone(),
            reason: event["event"]["reason"].clone(),
            score: scan["score"].clone(),
            symbols: scan["symbols"].clone(),
            thresholds: scan["thresholds"].clone(),
        }
    }
}

/// Where one recipient stands.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RecipientState {
    /// The next hop's last reply, once it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The event that put it there; absent while pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// pending, delivered, deferred, failed or deleted.
    pub status: &'static str,
}

/// `GET /v1/messages/{id}?reason`: recorded as an `access.read` of kind `trace`.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), ReadReason), responses((status = 200, description = "envelope, verdict, recipients' states and events in order", body = Trace), (status = 404, description = "no such message"), (status = 400, description = "not a message id"), (status = 403, description = "the siem role"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "messages_trace")]
pub(crate) async fn trace(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    query: Result<Query<ReadReason>, QueryRejection>,
) -> Result<Json<Trace>, ApiError> {
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

    let (recipients, state) = standing(&events, queued.as_ref());
    Ok(Json(Trace {
        applied_index: applied,
        events_truncated: truncated,
        id: id.to_string(),
        received: received.map(Received::of),
        recipients,
        state,
        verdict: verdict.map(Verdict::of),
        events: events.into_iter().map(Event).collect(),
    }))
}

/// Where each recipient of a message stands, and the message as a whole
/// (quarantined, rejected, held, queued, delivered, partly delivered, deleted, failed
/// or unknown), from its events in order (as JSON) and its queue record.
pub(crate) fn standing(
    events: &[Value],
    queued: Option<&bulwark_storage::QueueRecord>,
) -> (BTreeMap<String, RecipientState>, &'static str) {
    let first = |kind: &str| events.iter().find(|e| e["type"] == kind);
    let received = first("message.received");
    let verdict = first("scan.verdict");
    let mut recipients = BTreeMap::new();
    if let Some(r) = received {
        for address in r["email"]["to"]["address"].as_array().into_iter().flatten() {
            if let Some(a) = address.as_str() {
                let pending = RecipientState {
                    reply: None,
                    seq: None,
                    status: "pending",
                };
                recipients.insert(a.to_string(), pending);
            }
        }
    }
    for e in events {
        let status = match e["type"].as_str() {
            Some("delivery.succeeded") => "delivered",
            Some("delivery.deferred") => "deferred",
            Some("delivery.failed") => "failed",
            Some("api.action") if e["action"] == "queue.delete" => "deleted",
            _ => continue,
        };
        for address in e["email"]["to"]["address"].as_array().into_iter().flatten() {
            if let Some(a) = address.as_str() {
                let entry = RecipientState {
                    reply: e["smtp"]["reply"].as_str().map(str::to_string),
                    seq: e["seq"].as_u64(),
                    status,
                };
                recipients.insert(a.to_string(), entry);
            }
        }
    }
    // The quarantine's last decision on it, if it was quarantined and decided on.
    let decided = events.iter().rev().find_map(|e| match e["type"].as_str() {
        Some(kind @ ("quarantine.released" | "quarantine.deleted" | "quarantine.expired")) => {
            Some(kind)
        }
        _ => None,
    });
    let state = if first("message.quarantined").is_some() && decided.is_none() {
        "quarantined"
    } else if matches!(decided, Some("quarantine.deleted" | "quarantine.expired")) {
        "deleted"
    } else if received.is_none() && verdict.is_some_and(|v| v["action"] == "reject") {
        "rejected"
    } else if let Some(record) = queued {
        if record.held {
            "held"
        } else {
            "queued"
        }
    } else {
        let statuses: Vec<&str> = recipients.values().map(|r| r.status).collect();
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
    (recipients, state)
}

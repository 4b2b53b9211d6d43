//! The quarantine: listing with filters, the detail of one message with its verdict
//! and a safe preview, the raw message, and an administrator's release or deletion.
//! Each decision is one Raft operation recorded as `quarantine.released` or
//! `quarantine.deleted` with the caller, its address and the reason given.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::{
    Command, EventFilter, MessageId, QuarantineAction, QuarantineCommand, QuarantineFilter,
    QuarantineRecord, ReadKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::{Read, ReadReason};
use crate::auth::{Access, ClientIp};
use crate::events::Event;
use crate::extract::{Body, PathParam};
use crate::routes::{page_limit, time_ms, ApiState, MessageAction};
use crate::ApiError;

/// Renders a stored message for reading without running any of it: headers, text,
/// HTML turned into text, and the list of attachments. Supplied by the node, which
/// parses mail the way its scanning pipeline does.
pub type Previewer = Arc<dyn Fn(&[u8]) -> Value + Send + Sync>;

/// Longest reason accepted with a release or deletion.
const MAX_REASON: usize = 1024;
/// Events read to find a message's verdict.
const VERDICT_EVENTS: usize = 100;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    sender: Option<String>,
    recipient: Option<String>,
    /// Words of the `Subject` header, without regard to case: every one must appear.
    subject: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Messages after this id (a page's `next`).
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    after: Option<String>,
    /// Messages in a page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// One quarantined message as the listing shows it.
// Fields in alphabetical order, here and in the other answers of this module: they
// were JSON objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QuarantineItem {
    /// The `From` header's address, if it had one.
    #[schema(required)]
    from: Option<String>,
    id: String,
    /// When it was quarantined (RFC 3339 UTC).
    quarantined: String,
    /// Why: the verdict's reason.
    reason: String,
    /// The envelope's recipients.
    recipients: Vec<String>,
    /// The verdict's score.
    score: f64,
    /// The envelope's sender (empty for a bounce).
    sender: String,
    /// Bytes as received.
    size: u64,
    /// The `Subject` header, if it had one.
    #[schema(required)]
    subject: Option<String>,
}

impl From<&QuarantineRecord> for QuarantineItem {
    fn from(record: &QuarantineRecord) -> Self {
        QuarantineItem {
            from: record.header_from.clone(),
            id: record.message_id.to_string(),
            quarantined: rfc3339(record.time_ms),
            reason: record.reason.clone(),
            recipients: record.recipients.clone(),
            score: record.score,
            sender: record.mail_from.clone(),
            size: record.size,
            subject: record.subject.clone(),
        }
    }
}

/// A page of the quarantine (`GET /v1/quarantine`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QuarantinePage {
    /// The Raft index this node had applied when it read the page.
    #[schema(required)]
    applied_index: Option<u64>,
    items: Vec<QuarantineItem>,
    /// The `after` of the next page; null when there is none.
    #[schema(required)]
    next: Option<String>,
}

/// `GET /v1/quarantine`: `{"items": [...], "next": ID|null, "applied_index": N}`,
/// oldest first, as this node has applied the quarantine.
#[utoipa::path(get, path = "/v1/quarantine", tag = "quarantine", params(ListQuery), responses((status = 200, description = "{items, next, applied_index}", body = QuarantinePage), (status = 400, description = "a malformed filter"), (status = 403, description = "the siem role")), operation_id = "quarantine_list")]
pub(crate) async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<QuarantinePage>, ApiError> {
    let caller = s.caller(&headers, Access::Messages)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let applied = s.node.status().applied_index;
    let read = Read {
        kind: ReadKind::Search,
        message_id: None,
        reason: None,
        query: Some(q.described()),
    };
    let (records, next) = matching(&s, q).await?;
    s.record_read(&caller, client_ip, read).await?;
    Ok(Json(QuarantinePage {
        applied_index: applied,
        items: records.iter().map(QuarantineItem::from).collect(),
        next: next.map(|id| id.to_string()),
    }))
}

impl ListQuery {
    /// What the listing asks for, as recorded with the read (`quarantine` and the
    /// filters, without the page's cursor).
    fn described(&self) -> String {
        let filters = crate::access::query(&[
            ("sender", self.sender.as_deref()),
            ("recipient", self.recipient.as_deref()),
            ("subject", self.subject.as_deref()),
            ("reason", self.reason.as_deref()),
            ("since", self.since.as_deref()),
            ("until", self.until.as_deref()),
        ]);
        match filters {
            Some(f) => format!("quarantine?{f}"),
            None => "quarantine".into(),
        }
    }

    fn filter(&self) -> Result<QuarantineFilter, ApiError> {
        Ok(QuarantineFilter {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            subject: self.subject.clone(),
            reason: self.reason.clone(),
            since_ms: time_ms("since", self.since.as_deref())?,
            until_ms: time_ms("until", self.until.as_deref())?,
        })
    }
}

/// One page of the quarantined messages `q` asks for, and the cursor after it.
async fn matching(
    s: &ApiState,
    q: ListQuery,
) -> Result<(Vec<QuarantineRecord>, Option<MessageId>), ApiError> {
    let limit = page_limit(q.limit)?;
    let after = q
        .after
        .as_deref()
        .map(|a| message_id("after", a))
        .transpose()?;
    let filter = q.filter()?;
    let node = s.node.clone();
    let page =
        tokio::task::spawn_blocking(move || node.state().quarantine_list(&filter, after, limit))
            .await
            .map_err(ApiError::internal)??;
    Ok(page)
}

/// What a release or deletion of one page of messages did.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BulkOutcome {
    /// quarantine.release or quarantine.delete.
    action: &'static str,
    /// The messages it was done to.
    done: Vec<String>,
    /// Why some failed (the first such error), if any did.
    #[schema(required)]
    error: Option<String>,
    /// The messages not known to be done (no quorum in time): the caller may retry them.
    failed: Vec<String>,
    /// The `after` of the next page; null when there is none.
    #[schema(required)]
    next: Option<String>,
    /// The messages no longer in the quarantine.
    refused: Vec<String>,
}

/// `POST /v1/quarantine/release?FILTERS` with `{"reason": "..."}`: releases one page
/// of the matching messages (`limit`, default 100); `next` says where the next page
/// starts, `null` when there is none.
#[utoipa::path(post, path = "/v1/quarantine/release", tag = "quarantine", params(ListQuery), request_body = ReasonRequest, responses((status = 200, description = "one page released, each with its outcome; next", body = BulkOutcome), (status = 400, description = "no filter"), (status = 403, description = "a role that may not act on messages")), operation_id = "quarantine_release_matching")]
pub(crate) async fn release_matching(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    query: Result<Query<ListQuery>, QueryRejection>,
    Body(body): Body,
) -> Result<Json<BulkOutcome>, ApiError> {
    let reason = reason_of(&body, true);
    bulk(state, headers, ip, query, QuarantineAction::Release, reason).await
}

/// `POST /v1/quarantine/delete?FILTERS` with `{"reason": "..."}` (or no body):
/// deletes one page of the matching messages, as [`release_matching`] releases them.
#[utoipa::path(post, path = "/v1/quarantine/delete", tag = "quarantine", params(ListQuery), request_body = ReasonRequest, responses((status = 200, description = "one page deleted, each with its outcome; next", body = BulkOutcome), (status = 400, description = "no filter"), (status = 403, description = "a role that may not act on messages")), operation_id = "quarantine_delete_matching")]
pub(crate) async fn delete_matching(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    query: Result<Query<ListQuery>, QueryRejection>,
    Body(body): Body,
) -> Result<Json<BulkOutcome>, ApiError> {
    let reason = reason_of(&body, false);
    bulk(state, headers, ip, query, QuarantineAction::Delete, reason).await
}

/// The `reason` of a `{"reason": "..."}` body; required (not blank) when `required`,
/// else the body may be empty.
fn reason_of(body: &[u8], required: bool) -> Result<String, ApiError> {
    if body.is_empty() && !required {
        return Ok(String::new());
    }
    let request: ReasonRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("body: {e} (expected {{\"reason\": \"...\"}})"))
    })?;
    if required && request.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a release needs a reason"));
    }
    Ok(request.reason)
}

/// Takes `action` on one page of the messages `query` matches (`reason`: the body's,
/// or why it could not be read, told only to an authorised caller), each as its own
/// recorded decision; at least one filter is required, so that no call acts on the
/// whole quarantine by accident (`until=` a time to come matches everything).
async fn bulk(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<ListQuery>, QueryRejection>,
    action: QuarantineAction,
    reason: Result<String, ApiError>,
) -> Result<Json<BulkOutcome>, ApiError> {
    let user = s.caller(&headers, Access::Act)?.name;
    let reason = reason?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_reason(&reason)?;
    let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    if !(given(&q.sender)
        || given(&q.recipient)
        || given(&q.subject)
        || given(&q.reason)
        || given(&q.since)
        || given(&q.until))
    {
        return Err(ApiError::bad_request(
            "give at least one filter: sender, recipient, subject, reason, since or until",
        ));
    }
    let (records, next) = matching(&s, q).await?;
    let mut proposals = tokio::task::JoinSet::new();
    for (index, record) in records.iter().enumerate() {
        let proposer = s.node.proposer().clone();
        let command = Command::Quarantine(Box::new(QuarantineCommand {
            message_id: record.message_id,
            action,
            reason: reason.clone(),
            user: user.to_string(),
            client_ip,
        }));
        proposals.spawn(async move { (index, proposer.propose(command).await) });
    }
    // Each message's outcome: done, refused (no longer in the quarantine), or not
    // known to be committed (no quorum in time: the caller may retry those).
    let mut outcome: Vec<Result<bool, String>> = vec![Ok(false); records.len()];
    while let Some(joined) = proposals.join_next().await {
        let (index, result) = joined.map_err(ApiError::internal)?;
        outcome[index] = result
            .map(|r| r.refused.is_none())
            .map_err(|e| e.to_string());
    }
    let ids = |want: &dyn Fn(&Result<bool, String>) -> bool| -> Vec<String> {
        records
            .iter()
            .zip(&outcome)
            .filter(|(_, o)| want(o))
            .map(|(r, _)| r.message_id.to_string())
            .collect()
    };
    let error = outcome.iter().find_map(|o| o.as_ref().err()).cloned();
    Ok(Json(BulkOutcome {
        action: action.as_str(),
        done: ids(&|o| o == &Ok(true)),
        error,
        failed: ids(&|o| o.is_err()),
        next: next.map(|id| id.to_string()),
        refused: ids(&|o| o == &Ok(false)),
    }))
}

/// A quarantined message with its verdict and a preview.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct QuarantineDetail {
    /// The Raft index this node had applied when it read the message.
    #[schema(required)]
    applied_index: Option<u64>,
    /// The `From` header's address, if it had one.
    #[schema(required)]
    from: Option<String>,
    id: String,
    /// What the message says; null when its body is gone.
    #[schema(required)]
    preview: Option<Preview>,
    /// When it was quarantined (RFC 3339 UTC).
    quarantined: String,
    /// Why: the verdict's reason.
    reason: String,
    /// The envelope's recipients.
    recipients: Vec<String>,
    /// The verdict's score.
    score: f64,
    /// The envelope's sender (empty for a bounce).
    sender: String,
    /// Bytes as received.
    size: u64,
    /// The `Subject` header, if it had one.
    #[schema(required)]
    subject: Option<String>,
    /// The `scan.verdict` event that put it there.
    #[schema(required)]
    verdict: Option<Event>,
}

/// A quarantined message's content for its reader.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum Preview {
    /// What the message says.
    Shown(Rendered),
    /// A role that may not read message contents: why not.
    Withheld { withheld: String },
}

/// A message rendered for reading by the node's [`Previewer`], none of it run.
#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct Rendered(Value);

impl utoipa::PartialSchema for Rendered {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let text = |description: &str| json!({ "type": "string", "description": description });
        let maybe =
            |description: &str| json!({ "type": ["string", "null"], "description": description });
        crate::routes::schema_of(json!({
            "type": "object",
            "description": "The message parsed for reading, none of it run: its headers, \
                            its text, its HTML turned into text, and its attachments",
            "properties": {
                "headers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": { "name": text("as written"), "value": text("decoded") },
                        "required": ["name", "value"],
                    },
                },
                "text": maybe("the text/plain body"),
                "html_text": maybe("the HTML body as text, without markup"),
                "attachments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "location": text("where in the message, e.g. part 2"),
                            "name": maybe("its file name"),
                            "declared_type": maybe("the media type it declares"),
                            "detected_type": maybe("the media type its content shows"),
                            "size": { "type": "integer", "minimum": 0 },
                            "sha256": text("SHA-256 of its content (hex)"),
                            "in_archive": { "type": "boolean" },
                        },
                        "required": [
                            "location", "name", "declared_type", "detected_type", "size",
                            "sha256", "in_archive",
                        ],
                    },
                },
                "truncated": { "type": "boolean", "description": "some of it is left out" },
                "parsed": { "type": "boolean", "description": "false: not a MIME message" },
            },
            "required": ["headers", "text", "html_text", "attachments", "truncated", "parsed"],
        }))
    }
}

impl utoipa::ToSchema for Rendered {}

/// `GET /v1/quarantine/{id}?reason`: the record, the verdict that put the message
/// there and a preview of its content (withheld from roles that may not read
/// contents). Recorded as an `access.read` of kind `preview` (`trace` when the
/// preview was withheld).
#[utoipa::path(get, path = "/v1/quarantine/{id}", tag = "quarantine", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), ReadReason), responses((status = 200, description = "record, verdict and a safe preview", body = QuarantineDetail), (status = 404, description = "not in the quarantine"), (status = 400, description = "not a message id"), (status = 403, description = "the siem role"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "quarantine_detail")]
pub(crate) async fn detail(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    query: Result<Query<ReadReason>, QueryRejection>,
) -> Result<Json<QuarantineDetail>, ApiError> {
    let caller = s.caller(&headers, Access::Messages)?;
    let id = message_id("id", &id)?;
    let Query(reason) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reason = reason.checked()?;
    let node = s.node.clone();
    let applied = node.status().applied_index;
    let (record, body, verdict) = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let Some(record) = state.quarantine_record(id)? else {
            return Ok::<_, bulwark_storage::Error>((None, None, None));
        };
        let body = state.message_body(id)?;
        let filter = EventFilter {
            type_name: Some("scan.verdict".into()),
            message_id: Some(id),
            ..Default::default()
        };
        let (events, _) = state.events(&filter, 0, VERDICT_EVENTS)?;
        Ok((Some(record), body, events.first().map(Event::from)))
    })
    .await
    .map_err(ApiError::internal)??;
    let record = record.ok_or_else(|| not_quarantined(id))?;
    let shown = body.is_some() && Access::Content.allows(caller.role);
    let read = Read {
        kind: if shown {
            ReadKind::Preview
        } else {
            ReadKind::Trace
        },
        message_id: Some(id),
        reason,
        query: None,
    };
    s.record_read(&caller, client_ip, read).await?;
    // Metadata for every role that reads messages; what the message says only for
    // those that may read contents.
    let preview = match body {
        Some(_) if !Access::Content.allows(caller.role) => Some(Preview::Withheld {
            withheld: format!(
                "the {} role may not read message contents",
                caller.role.as_str()
            ),
        }),
        Some(body) => {
            let preview = s.preview.clone();
            let rendered = tokio::task::spawn_blocking(move || preview(&body))
                .await
                .map_err(ApiError::internal)?;
            Some(Preview::Shown(Rendered(rendered)))
        }
        None => None,
    };
    let QuarantineItem {
        from,
        id,
        quarantined,
        reason,
        recipients,
        score,
        sender,
        size,
        subject,
    } = QuarantineItem::from(&record);
    Ok(Json(QuarantineDetail {
        applied_index: applied,
        from,
        id,
        preview,
        quarantined,
        reason,
        recipients,
        score,
        sender,
        size,
        subject,
        verdict,
    }))
}

/// `GET /v1/quarantine/{id}/raw?reason`: the message as received, as a download
/// (`message/rfc822`, never rendered inline). Recorded as an `access.read` of kind
/// `raw`.
#[utoipa::path(get, path = "/v1/quarantine/{id}/raw", tag = "quarantine", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), ReadReason), responses((status = 200, description = "the message as received", body = String, content_type = "message/rfc822"), (status = 404, description = "not in the quarantine"), (status = 400, description = "not a message id"), (status = 403, description = "a role that may not read message contents"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "quarantine_raw")]
pub(crate) async fn raw(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    query: Result<Query<ReadReason>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers, Access::Content)?;
    let id = message_id("id", &id)?;
    let Query(reason) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reason = reason.checked()?;
    let node = s.node.clone();
    let body = tokio::task::spawn_blocking(move || {
        let state = node.state();
        match state.quarantine_record(id)? {
            Some(_) => state.message_body(id),
            None => Ok(None),
        }
    })
    .await
    .map_err(ApiError::internal)??
    .ok_or_else(|| not_quarantined(id))?;
    let read = Read {
        kind: ReadKind::Raw,
        message_id: Some(id),
        reason,
        query: None,
    };
    s.record_read(&caller, client_ip, read).await?;
    let disposition = format!("attachment; filename=\"{id}.eml\"");
    let disposition = HeaderValue::from_str(&disposition).map_err(ApiError::internal)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("message/rfc822"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::body::Bytes::from(body),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonRequest {
    reason: String,
}

/// `POST /v1/quarantine/{id}/release` with `{"reason": "..."}`: the message joins the
/// delivery queue.
#[utoipa::path(post, path = "/v1/quarantine/{id}/release", tag = "quarantine", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")), request_body = ReasonRequest, responses((status = 200, description = "queued for delivery", body = MessageAction), (status = 404, description = "not in the quarantine"), (status = 400, description = "not a message id, or no reason"), (status = 403, description = "a role that may not act on messages")), operation_id = "quarantine_release")]
pub(crate) async fn release(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
    Body(body): Body,
) -> Result<Json<MessageAction>, ApiError> {
    let reason = reason_of(&body, true);
    decide(state, headers, ip, id, QuarantineAction::Release, reason).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    reason: Option<String>,
}

/// `DELETE /v1/quarantine/{id}[?reason=...]`: the message and its body are removed.
#[utoipa::path(delete, path = "/v1/quarantine/{id}", tag = "quarantine", params(("id" = String, Path, description = "message id, as in `250 2.0.0 Ok: queued as ID`", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"), DeleteQuery), responses((status = 200, description = "deleted with its body", body = MessageAction), (status = 404, description = "not in the quarantine"), (status = 400, description = "not a message id, or a reason too long"), (status = 403, description = "a role that may not act on messages")), operation_id = "quarantine_delete")]
pub(crate) async fn delete(
    state: State<ApiState>,
    headers: HeaderMap,
    ip: ClientIp,
    id: PathParam<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<MessageAction>, ApiError> {
    let reason = query
        .map(|Query(q)| q.reason.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.body_text()));
    decide(state, headers, ip, id, QuarantineAction::Delete, reason).await
}

/// Commits `action` on message `id` for the authenticated caller: 200 with the
/// event's seq and hash, or 404 when the message is not in the quarantine (that
/// refusal is on record too).
async fn decide(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(id): PathParam<String>,
    action: QuarantineAction,
    reason: Result<String, ApiError>,
) -> Result<Json<MessageAction>, ApiError> {
    let user = s.caller(&headers, Access::Act)?.name;
    let reason = reason?;
    let message_id = message_id("id", &id)?;
    check_reason(&reason)?;
    let result = s
        .node
        .proposer()
        .propose(Command::Quarantine(Box::new(QuarantineCommand {
            message_id,
            action,
            reason,
            user: user.to_string(),
            client_ip,
        })))
        .await?;
    if let Some(refused) = result.refused {
        return Err(ApiError::not_found(format!(
            "message {message_id}: {refused}"
        )));
    }
    Ok(Json(MessageAction::new(
        action.as_str(),
        message_id,
        result.seq,
        result.hash,
    )))
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "reason is {} bytes, at most {MAX_REASON} allowed",
            reason.len()
        )));
    }
    Ok(())
}

fn not_quarantined(id: MessageId) -> ApiError {
    ApiError::not_found(format!(
        "message {id}: {}",
        bulwark_storage::NOT_QUARANTINED
    ))
}

fn message_id(what: &str, text: &str) -> Result<MessageId, ApiError> {
    text.parse::<MessageId>()
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

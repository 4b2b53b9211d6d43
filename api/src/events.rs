//! The audit trail for machines: `export` streams every matching event as NDJSON,
//! page by page from the store, so that no answer holds the log in memory; `stream`
//! is a live tail as server-sent events, resumable with `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_storage::{EventFilter, MessageId, ReadKind, StoredEvent};
use futures::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::Read;
use crate::auth::{Access, ClientIp};
use crate::routes::{page_limit, seq, time_ms, ApiState, MAX_SEQ};
use crate::ApiError;

/// Events read from the store per step of an export or a stream.
const PAGE: usize = 1000;
/// How often a stream with nothing new looks again.
const POLL: Duration = Duration::from_millis(200);

/// One event as the API shows it ([`StoredEvent::to_json`]): the fields every event
/// has, and those of its type.
#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct Event(pub(crate) Value);

impl From<&StoredEvent> for Event {
    fn from(event: &StoredEvent) -> Self {
        Event(event.to_json())
    }
}

impl utoipa::PartialSchema for Event {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let text = |description: &str| json!({ "type": "string", "description": description });
        let number = |description: &str| {
            json!({
                "type": "integer", "format": "int64", "minimum": 0, "description": description,
            })
        };
        crate::routes::schema_of(json!({
            "type": "object",
            "description": "An event of the audit trail: the fields every event has, and \
                            those of its type, named after Elastic Common Schema where it \
                            has one (email.from.address, source.ip, user.name, ...)",
            "properties": {
                "seq": number("its place in the log, from 1"),
                "time": text("when it was recorded, RFC 3339 UTC"),
                "type": text("a dotted name: message.received, scan.verdict, delivery.succeeded, \
                              api.action, access.read, policy.changed, ..."),
                "node": number("the node that recorded it"),
                "raft_index": number("the Raft log entry that carried it"),
                "hash": text("SHA-256 of the event and the previous hash (hex)"),
                "prev_hash": text("the previous event's hash (hex)"),
                "message_id": text("the message it is about, where it is about one"),
            },
            "required": ["seq", "time", "type", "node", "raft_index", "hash", "prev_hash"],
            "additionalProperties": true,
        }))
    }
}

impl utoipa::ToSchema for Event {}

/// A page of the log.
// Fields in alphabetical order: the answer was a JSON object, whose keys serde_json
// sorts, and keeps its bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EventPage {
    /// The Raft index this node had applied when it read the page.
    #[schema(required)]
    applied_index: Option<u64>,
    events: Vec<Event>,
    /// The `after` of the next page; null at the end of the log as it stands.
    #[schema(required)]
    next: Option<u64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Events after this seq (a page's `next`).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    pub(crate) after: Option<u64>,
    /// Events in a page, 1 to 1000 (default 100); not with the export.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
    #[serde(rename = "type")]
    pub(crate) type_name: Option<String>,
    /// Events about this message (its id, as in `250 2.0.0 Ok: queued as ID`).
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub(crate) message_id: Option<String>,
    pub(crate) sender: Option<String>,
    pub(crate) recipient: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) client_ip: Option<String>,
    /// Events of this caller (`user.name`: a token's name), e.g. the reads and
    /// actions of one person.
    pub(crate) user: Option<String>,
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
}

impl EventQuery {
    /// The query with every filter given empty left out, as a form sends them.
    pub(crate) fn given(mut self) -> EventQuery {
        for field in [
            &mut self.type_name,
            &mut self.message_id,
            &mut self.sender,
            &mut self.recipient,
            &mut self.action,
            &mut self.client_ip,
            &mut self.user,
            &mut self.since,
            &mut self.until,
        ] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *field = None;
            }
        }
        self
    }

    /// The filters as a query string (no `after`, no `limit`).
    pub(crate) fn query_string(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.named() {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }

    fn named(&self) -> [(&'static str, Option<&str>); 9] {
        [
            ("type", self.type_name.as_deref()),
            ("message_id", self.message_id.as_deref()),
            ("sender", self.sender.as_deref()),
            ("recipient", self.recipient.as_deref()),
            ("action", self.action.as_deref()),
            ("client_ip", self.client_ip.as_deref()),
            ("user", self.user.as_deref()),
            ("since", self.since.as_deref()),
            ("until", self.until.as_deref()),
        ]
    }

    /// True when the query looks for a person: an address (a sender, a recipient, a
    /// client) or a caller.
    fn person(&self) -> bool {
        self.sender.is_some()
            || self.recipient.is_some()
            || self.client_ip.is_some()
            || self.user.is_some()
    }

    /// True when the answer is about a message or a person: filtered to one message
    /// (its verdict, subject and envelope) or looking for a person. Such a page of
    /// the log is a read on record; a page by sequence, type, action or time alone is
    /// the feed itself.
    pub(crate) fn concerns_someone(&self) -> bool {
        self.message_id.is_some() || self.person()
    }

    /// The read this query is, as recorded: a `trace` of the message it is filtered
    /// to (`filter`'s), else a `search` when it looks for a person, else an `export`
    /// of the log.
    pub(crate) fn read(&self, filter: &EventFilter, what: &str) -> Read {
        let filters = crate::access::query(&self.named());
        Read {
            kind: match (filter.message_id, self.person()) {
                (Some(_), _) => ReadKind::Trace,
                (None, true) => ReadKind::Search,
                (None, false) => ReadKind::Export,
            },
            message_id: filter.message_id,
            reason: None,
            query: Some(match filters {
                Some(f) => format!("{what}?{f}"),
                None => what.to_string(),
            }),
        }
    }

    pub(crate) fn filter(&self) -> Result<EventFilter, ApiError> {
        let message_id = match self.message_id.as_deref() {
            Some(id) => Some(
                id.parse::<MessageId>()
                    .map_err(|e| ApiError::bad_request(format!("message_id: {e}")))?,
            ),
            None => None,
        };
        let client_ip = match self.client_ip.as_deref() {
            Some(ip) => Some(
                ip.parse()
                    .map_err(|e| ApiError::bad_request(format!("client_ip: {e}")))?,
            ),
            None => None,
        };
        Ok(EventFilter {
            type_name: self.type_name.clone(),
            message_id,
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            action: self.action.clone(),
            client_ip,
            user: self.user.clone(),
            since_ms: time_ms("since", self.since.as_deref())?,
            until_ms: time_ms("until", self.until.as_deref())?,
        })
    }
}

/// `GET /v1/events?after&limit&type&message_id&sender&recipient&action&client_ip&since&until`:
/// `{"events": [...], "next": SEQ|null, "applied_index": N}`. A page also ends after
/// a bounded number of events read, with `next` to go on from, so a selective
/// filter answers quickly with fewer events rather than slowly with more.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery), responses((status = 200, description = "{events, next, applied_index}", body = EventPage), (status = 400, description = "a malformed filter")), operation_id = "events_list")]
pub(crate) async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let caller = s.caller(&headers, Access::Events)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let filter = q.filter()?;
    // A page of the log is recorded when it is about a message or a person; paging
    // the log otherwise is how the trail itself is read (recording each page would
    // grow the log by reading it), and its bulk forms, export and stream, are recorded.
    if q.concerns_someone() {
        s.record_read(&caller, client_ip, q.read(&filter, "events"))
            .await?;
    }
    let after = seq("after", q.after)?.unwrap_or(0);
    let node = s.node.clone();
    let applied = node.status().applied_index;
    let (events, next) =
        tokio::task::spawn_blocking(move || node.state().events(&filter, after, limit))
            .await
            .map_err(ApiError::internal)??;
    Ok(Json(EventPage {
        applied_index: applied,
        events: events.iter().map(Event::from).collect(),
        next,
    }))
}

/// One page of events after `after` from the node's store, and the cursor to go on
/// from (`None`: the end of the log as it stands).
async fn page(
    s: &ApiState,
    filter: &EventFilter,
    after: u64,
) -> Result<(Vec<StoredEvent>, Option<u64>), ApiError> {
    let node = s.node.clone();
    let filter = filter.clone();
    let page = tokio::task::spawn_blocking(move || node.state().events(&filter, after, PAGE))
        .await
        .map_err(ApiError::internal)??;
    Ok(page)
}

/// `GET /v1/events/export?` the filters of [`list`] but `limit`: every matching event up to the end
/// of the log at the time of reading, one JSON object a line (`application/x-ndjson`).
#[utoipa::path(get, path = "/v1/events/export", tag = "events", params(EventQuery), responses((status = 200, description = "every matching event, one JSON object a line: each line an Event", body = Event, content_type = "application/x-ndjson"), (status = 400, description = "a malformed filter, or a limit")), operation_id = "events_export")]
pub(crate) async fn export(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers, Access::Events)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    export_for(s, &caller, client_ip, q).await
}

/// The export of [`export`] for `caller`, recorded as their read.
pub(crate) async fn export_for(
    s: ApiState,
    caller: &crate::auth::Caller,
    client_ip: Option<std::net::IpAddr>,
    q: EventQuery,
) -> Result<Response, ApiError> {
    if q.limit.is_some() {
        return Err(ApiError::bad_request(
            "the export has no limit: it streams every matching event (list pages with /v1/events)",
        ));
    }
    let filter = q.filter()?;
    s.record_read(caller, client_ip, q.read(&filter, "events/export"))
        .await?;
    let after = seq("after", q.after)?.unwrap_or(0);
    // Pages are read as the client takes them; an error after the first line can
    // only end the body early, which the client sees as a truncated export.
    let lines = stream::try_unfold(Some(after), move |cursor| {
        let (s, filter) = (s.clone(), filter.clone());
        async move {
            let Some(after) = cursor else {
                return Ok::<_, ApiError>(None);
            };
            let (events, next) = page(&s, &filter, after).await?;
            let mut chunk = Vec::new();
            for event in &events {
                serde_json::to_writer(&mut chunk, &event.to_json()).map_err(ApiError::internal)?;
                chunk.push(b'\n');
            }
            Ok(Some((Bytes::from(chunk), next)))
        }
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Events after this seq; absent (and no `Last-Event-ID`): from the end of the log.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    after: Option<u64>,
    #[serde(rename = "type")]
    type_name: Option<String>,
}

/// `GET /v1/events/stream?after&type`: every event after `after` (or after the
/// `Last-Event-ID` a reconnecting client sends), then each new one as it is applied
/// on this node; each a server-sent event whose id is its seq and whose data is its
/// JSON. Without either, the tail starts at the end of the log.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "resume after this seq", minimum = 0, maximum = 9223372036854775807_i64)), responses((status = 200, description = "server-sent events: id = seq, event = the type, data = the Event", body = Event, content_type = "text/event-stream"), (status = 400, description = "a malformed after, type or Last-Event-ID")), operation_id = "events_tail")]
pub(crate) async fn tail(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let caller = s.caller(&headers, Access::Events)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let read = Read {
        kind: ReadKind::Export,
        message_id: None,
        reason: None,
        query: Some(match &q.type_name {
            Some(t) => format!("events/stream?type={t}"),
            None => "events/stream".into(),
        }),
    };
    s.record_read(&caller, client_ip, read).await?;
    let resume = match headers.get("last-event-id") {
        Some(id) => Some(
            id.to_str()
                .ok()
                .and_then(|id| id.trim().parse::<u64>().ok())
                .filter(|id| *id <= MAX_SEQ)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not an event seq"))?,
        ),
        None => None,
    };
    let start = match resume.or(seq("after", q.after)?) {
        Some(after) => after,
        None => s.node.state().chain_head().0,
    };
    let filter = EventFilter {
        type_name: q.type_name,
        ..Default::default()
    };
    let events = stream::unfold(
        (start, Vec::<StoredEvent>::new()),
        move |(mut after, mut pending)| {
            let (s, filter) = (s.clone(), filter.clone());
            async move {
                while pending.is_empty() {
                    // Everything up to the head as it stands before the read is seen
                    // by it: a page that reaches the end moves the cursor there, so
                    // a filter that matches nothing does not rescan the log.
                    let head = s.node.state().chain_head().0;
                    match page(&s, &filter, after).await {
                        Ok((events, next)) => {
                            let last = events.last().map(|e| e.event.seq);
                            pending = events;
                            pending.reverse();
                            // A page cut short by the scan limit moves the cursor on
                            // even when nothing in it matched.
                            after = match next {
                                Some(next) => next,
                                None => last.unwrap_or(after).max(head),
                            };
                        }
                        Err(e) => {
                            // Ended rather than retried here: the client reconnects
                            // with Last-Event-ID, and sees that the node has trouble.
                            tracing::warn!(
                                problem = %e,
                                after,
                                "events stream: reading the log failed; ending the stream"
                            );
                            return None;
                        }
                    }
                    if pending.is_empty() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                let event = pending.pop().expect("not empty");
                let sse = SseEvent::default()
                    .id(event.event.seq.to_string())
                    .event(event.event.kind.type_name())
                    .data(event.to_json().to_string());
                Some((Ok(sse), (after, pending)))
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

//! The event log: the audit trail page by page, filtered as the API's
//! `/v1/events` is (type, message, sender, recipient, action, client address,
//! person, time), and exported whole as NDJSON with the same filters. A page that
//! looks for a message or a person, and every export, is a read on record, as over
//! the API.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bulwark_storage::StoredEvent;
use maud::{html, Markup};
use serde_json::Value;

use super::layout::{page, time, Section};
use super::{forbidden, PageError, Viewer};
use crate::auth::Access;
use crate::events::EventQuery;
use crate::routes::ApiState;
use crate::ApiError;

/// Events in a page.
const PAGE: usize = 100;

/// `GET /ui/events`: the filters, one page of what they find, and an export link.
pub(crate) async fn list(
    State(s): State<ApiState>,
    viewer: Viewer,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let caller = viewer.caller().clone();
    if !Access::Events.allows(caller.role) {
        return Err(forbidden(&viewer, "read the event log").into());
    }
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = q.given();
    if q.limit.is_some() {
        return Err(ApiError::bad_request("a page of the console holds 100 events").into());
    }
    let filter = q.filter()?;
    if q.concerns_someone() {
        s.record_read(&caller, viewer.client_ip, q.read(&filter, "events"))
            .await?;
    }
    let after = crate::routes::seq("after", q.after)?.unwrap_or(0);
    let node = s.node.clone();
    let (events, next) = {
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || node.state().events(&filter, after, PAGE))
            .await
            .map_err(ApiError::internal)??
    };
    let filters = q.query_string();
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    let export = if filters.is_empty() {
        "/ui/events/export".to_string()
    } else {
        format!("/ui/events/export?{filters}")
    };
    let body = html! {
        h1 { "Events" }
        form.card.search method="get" action="/ui/events" {
            div { label for="type" { "Type" }
                input #type type="text" name="type" value=(field(&q.type_name)) placeholder="scan.verdict, api.action…"; }
            div { label for="message_id" { "Message id" }
                input #message_id type="text" name="message_id" value=(field(&q.message_id)); }
            div { label for="sender" { "Sender" }
                input #sender type="text" name="sender" value=(field(&q.sender)) placeholder="address or @domain"; }
            div { label for="recipient" { "Recipient" }
                input #recipient type="text" name="recipient" value=(field(&q.recipient)) placeholder="address or @domain"; }
            div { label for="action" { "Action" }
                input #action type="text" name="action" value=(field(&q.action)) placeholder="quarantine, queue.hold…"; }
            div { label for="client_ip" { "Client address" }
                input #client_ip type="text" name="client_ip" value=(field(&q.client_ip)); }
            div { label for="user" { "Person or token" }
                input #user type="text" name="user" value=(field(&q.user)); }
            div { label for="since" { "Since" }
                input #since type="text" name="since" value=(field(&q.since)) placeholder="2026-12-06T00:00:00Z"; }
            div { label for="until" { "Until" }
                input #until type="text" name="until" value=(field(&q.until)) placeholder="RFC 3339"; }
            div.actions {
                button.primary type="submit" { "Search" }
                a href="/ui/events" { "Clear" }
                a href=(export) download="bulwark-events.ndjson" { "Export (NDJSON)" }
            }
        }
        @if events.is_empty() {
            p.card.muted { "No event matches." }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th.num { "Seq" } th { "Time (UTC)" } th { "Type" } th.wide.num { "Node" } th { "About" }
                } }
                tbody { @for e in &events { (row(e)) } }
            } }
        }
        @if let Some(next) = next {
            @let more = if filters.is_empty() { format!("/ui/events?after={next}") } else { format!("/ui/events?{filters}&after={next}") };
            p.pager { a href=(more) { "Next page →" } }
        }
    };
    Ok(page(&viewer, "Events", Section::Events, body).into_response())
}

/// One event in the list: what a person scans for first (its message, action,
/// person, addresses and reason).
fn row(stored: &StoredEvent) -> Markup {
    let json = stored.to_json();
    let text = |path: &[&str]| -> Option<String> {
        let mut v = &json;
        for p in path {
            v = v.get(p)?;
        }
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Array(items) if !items.is_empty() => Some(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let facts: Vec<(&str, String)> = [
        ("action", text(&["action"])),
        ("by", text(&["user", "name"])),
        ("from", text(&["email", "sender", "address"])),
        ("to", text(&["email", "to", "address"])),
        ("client", text(&["source", "ip"])),
        ("outcome", text(&["event", "outcome"])),
        (
            "reason",
            text(&["event", "reason"]).or_else(|| text(&["reason"])),
        ),
        ("text", text(&["text"])),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let message = text(&["message_id"]);
    html! {
        tr {
            td.num { (stored.event.seq) }
            td { (time(stored.event.time_ms)) }
            td { span.badge { (stored.event.kind.type_name()) } }
            td.wide.num { (stored.event.node) }
            td.addr {
                @if let Some(id) = &message {
                    a href={"/ui/messages/" (id)} { code { (id) } } " "
                }
                @for (k, v) in &facts {
                    span.fact { span.muted { (k) " " } (v) } " "
                }
            }
        }
    }
}

/// `GET /ui/events/export?…`: every matching event as NDJSON, to save; recorded as
/// the API's export is.
pub(crate) async fn export(
    State(s): State<ApiState>,
    viewer: Viewer,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let caller = viewer.caller().clone();
    if !Access::Events.allows(caller.role) {
        return Err(forbidden(&viewer, "export the event log").into());
    }
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut response = crate::events::export_for(s, &caller, viewer.client_ip, q.given()).await?;
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"bulwark-events.ndjson\""),
    );
    Ok(response)
}

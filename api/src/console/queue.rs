//! The delivery queue: what waits to be delivered, who is delivering it and what
//! the next hop last said, searched by sender, recipient and state; the messages
//! picked retried now, held, released from a hold or deleted. Listings are recorded
//! as the API's are (`access.read`); each action is the API's own Raft operation,
//! recorded under the person's name.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bulwark_storage::{
    Command, DeliveryCommand, QueueAction, QueueFilter, QueueRecord, QueueStatus, ReadKind,
    RecipientStatus,
};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{page, time, Section};
use super::{
    address, forbidden, message_id, propose_each, search_query, told, with_query, PageError, Viewer,
};
use crate::access::Read;
use crate::auth::Access;
use crate::routes::ApiState;
use crate::ApiError;

/// Messages in a page of the queue.
const PAGE: usize = 50;

/// The queue's search form, and what the last action did.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Search {
    sender: String,
    recipient: String,
    status: String,
    after: String,
    /// The last action's outcome, told on the page.
    action: String,
    done: usize,
    refused: usize,
    failed: usize,
}

impl Search {
    fn filter(&self) -> Result<QueueFilter, ApiError> {
        let given = |v: &str| Some(v.trim()).filter(|v| !v.is_empty()).map(str::to_string);
        let status = match given(&self.status) {
            Some(s) => Some(
                s.parse::<QueueStatus>()
                    .map_err(|e| ApiError::bad_request(format!("status: {e}")))?,
            ),
            None => None,
        };
        Ok(QueueFilter {
            sender: address(&self.sender),
            recipient: address(&self.recipient),
            status,
        })
    }

    fn query(&self) -> form_urlencoded::Serializer<'static, String> {
        search_query(&[
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("status", &self.status),
        ])
    }

    fn here(&self) -> String {
        with_query("/ui/queue", &self.query().finish())
    }
}

/// `GET /ui/queue`: the search form and one page of the queue, oldest first.
pub(crate) async fn list(
    State(s): State<ApiState>,
    viewer: Viewer,
    query: Result<Query<Search>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let caller = viewer.caller().clone();
    if !Access::Messages.allows(caller.role) {
        return Err(forbidden(&viewer, "read the queue").into());
    }
    let Query(search) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = search.filter()?;
    let after = match search.after.trim() {
        "" => None,
        after => Some(message_id(after)?),
    };
    let now = crate::queue::now_ms();
    let node = s.node.clone();
    let (records, next) =
        tokio::task::spawn_blocking(move || node.state().queue_list(&filter, after, PAGE, now))
            .await
            .map_err(ApiError::internal)??;
    let given = |v: &str| Some(v.trim()).filter(|v| !v.is_empty()).map(str::to_string);
    let (sender, recipient, status) = (
        given(&search.sender),
        given(&search.recipient),
        given(&search.status),
    );
    // As the API's listing records its search.
    let described = match crate::access::query(&[
        ("sender", sender.as_deref()),
        ("recipient", recipient.as_deref()),
        ("status", status.as_deref()),
    ]) {
        Some(f) => format!("queue?{f}"),
        None => "queue".into(),
    };
    let read = Read {
        kind: ReadKind::Search,
        message_id: None,
        reason: None,
        query: Some(described),
    };
    s.record_read(&caller, viewer.client_ip, read).await?;
    let may_act = Access::Act.allows(caller.role);
    let more = next.map(|next| {
        let mut query = search.query();
        query.append_pair("after", &next.to_string());
        format!("/ui/queue?{}", query.finish())
    });
    let body = html! {
        h1 { "Delivery queue" }
        (outcome(&search))
        form.card.search method="get" action="/ui/queue" {
            div { label for="sender" { "Sender" }
                input #sender type="text" name="sender" value=(search.sender) placeholder="address or domain"; }
            div { label for="recipient" { "Recipient" }
                input #recipient type="text" name="recipient" value=(search.recipient) placeholder="address or domain"; }
            div { label for="status" { "State" }
                select #status name="status" {
                    @for (value, shown) in [("", "any"), ("pending", "pending"), ("deferred", "deferred"), ("held", "held"), ("leased", "being delivered")] {
                        option value=(value) selected[search.status == value] { (shown) }
                    }
                }
            }
            div.actions {
                button.primary type="submit" { "Search" }
                a href="/ui/queue" { "Clear" }
            }
        }
        @if records.is_empty() {
            p.card.muted { "Nothing in the queue matches." }
        } @else {
            form method="post" action="/ui/queue/act" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="back" value=(search.here());
                div.table-wrap { table {
                    thead { tr {
                        @if may_act { th { span.muted { "Pick" } } }
                        th { "Received" } th { "From" } th { "To" } th { "State" } th.wide { "Next hop said" }
                    } }
                    tbody { @for r in &records { (row(r, now, may_act)) } }
                } }
                @if may_act {
                    div.bulk {
                        button.primary type="submit" name="action" value="retry" { "Retry now" }
                        button type="submit" name="action" value="hold" { "Hold" }
                        button type="submit" name="action" value="release" { "Release hold" }
                        button.danger type="submit" name="action" value="delete" { "Delete (no bounce)" }
                    }
                }
            }
            @if let Some(more) = &more {
                p.pager { a href=(more) { "Next page →" } }
            }
        }
    };
    Ok(page(&viewer, "Delivery queue", Section::Queue, body).into_response())
}

/// One queued message: its recipients each with their state and the next hop's
/// last reply.
fn row(r: &QueueRecord, now: i64, may_act: bool) -> Markup {
    let e = &r.entry;
    let id = e.message_id.to_string();
    let status = r.status(now).as_str();
    html! {
        tr {
            @if may_act {
                td { input type="checkbox" name="id" value=(id) aria-label={"pick " (id)}; }
            }
            td { a href={"/ui/messages/" (id)} { (time(e.time_ms)) } }
            td.addr { @if e.mail_from.is_empty() { span.muted { "<> (a bounce)" } } @else { (e.mail_from) } }
            td.addr {
                @for q in &e.recipients {
                    div { (q.address) " " span.badge.(recipient_state(&q.status)) { (recipient_state(&q.status)) } }
                }
            }
            td {
                span.badge.(status) { (status) }
                @if let Some(lease) = e.lease.filter(|l| l.until_ms > now) {
                    div.muted { "node " (lease.node) }
                }
            }
            td.wide.addr {
                @for q in &e.recipients {
                    @match &q.status {
                        RecipientStatus::Deferred { attempts, next_attempt_ms, last_reply } => {
                            div { (last_reply) span.muted { " · " (attempts) " tries, next " (time(*next_attempt_ms)) } }
                        }
                        RecipientStatus::Delivered { reply } | RecipientStatus::Failed { reply } => div { (reply) },
                        RecipientStatus::Pending => {}
                    }
                }
            }
        }
    }
}

fn recipient_state(status: &RecipientStatus) -> &'static str {
    match status {
        RecipientStatus::Pending => "pending",
        RecipientStatus::Deferred { .. } => "deferred",
        RecipientStatus::Delivered { .. } => "delivered",
        RecipientStatus::Failed { .. } => "failed",
    }
}

/// What the last action did, when the page was reached from one.
fn outcome(o: &Search) -> Markup {
    let verb = match o.action.as_str() {
        "retry" => "Made due now:",
        "hold" => "Held:",
        "release" => "Released from hold:",
        "delete" => "Deleted:",
        _ => return html! {},
    };
    html! {
        p.notice role="status" { (verb) " " (o.done) "." }
        @if o.refused > 0 { p.problem { (o.refused) " had already left the queue." } }
        @if o.failed > 0 { p.problem { (o.failed) " could not be confirmed in time (no quorum): try them again." } }
    }
}

/// `POST /ui/queue/act` (`csrf`, `action` = retry, hold, release or delete, one `id`
/// per message, `back`): each action on record under the person's name, then back
/// to `back` saying what was done.
pub(crate) async fn act(
    State(s): State<ApiState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&body)?;
    let caller = viewer.caller().clone();
    if !Access::Act.allows(caller.role) {
        return Err(forbidden(&viewer, "act on the queue").into());
    }
    let action = match form.get("action") {
        Some("retry") => QueueAction::Retry,
        Some("hold") => QueueAction::Hold,
        Some("release") => QueueAction::Release,
        Some("delete") => QueueAction::Delete,
        other => {
            return Err(ApiError::bad_request(format!(
                "action: retry, hold, release or delete, not {:?}",
                other.unwrap_or("")
            ))
            .into())
        }
    };
    let commands = form
        .picked()?
        .into_iter()
        .map(|message_id| {
            Command::Delivery(Box::new(DeliveryCommand::Admin {
                message_id,
                action,
                user: caller.name.clone(),
                client_ip: viewer.client_ip,
            }))
        })
        .collect();
    let tally = propose_each(&s, commands).await?;
    let verb = match action {
        QueueAction::Retry => "retry",
        QueueAction::Hold => "hold",
        QueueAction::Release => "release",
        QueueAction::Delete => "delete",
    };
    Ok(told(
        form.get("back"),
        "/ui/queue",
        "/ui/queue",
        verb,
        &tally,
    ))
}

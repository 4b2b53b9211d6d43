//! The quarantine and the message trace: search the quarantine, open any message
//! (its verdict with every symbol, its authentication, a preview in which nothing of
//! the message runs or loads, and every event about it as a timeline), and release
//! or delete one message or many. Searches and previews are recorded as the API's
//! are (`access.read`); releases and deletions are the API's own Raft operations,
//! recorded under the person's name.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bulwark_storage::recipient::{RecipientAction, RecipientCommand, Via};
use bulwark_storage::{
    Command, EventFilter, EventKind, MessageId, QuarantineAction, QuarantineCommand,
    QuarantineFilter, QuarantineRecord, ReadKind, StoredEvent, Verdict,
};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{page, size, time, Section};
use super::{
    address, day_ms, forbidden, message_id, propose_each, search_query, see_other, told,
    with_query, PageError, Tally, Viewer,
};
use crate::access::Read;
use crate::auth::Access;
use crate::routes::ApiState;
use crate::ApiError;

/// Messages in a page of the quarantine.
const PAGE: usize = 50;
/// Events a message's timeline shows at most.
const MAX_EVENTS: usize = 1000;
/// Longest reason a release or deletion may give (as the API's).
const MAX_REASON: usize = 1024;

/// The quarantine's search form, and what the last action did.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Search {
    sender: String,
    recipient: String,
    subject: String,
    reason: String,
    /// A day, `YYYY-MM-DD` (UTC): from its start.
    since: String,
    /// A day, `YYYY-MM-DD` (UTC): to its end.
    until: String,
    after: String,
}

/// What a form's action did, told on the page it returns to.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Outcome {
    action: String,
    done: usize,
    refused: usize,
    failed: usize,
}

impl Search {
    fn filter(&self) -> Result<QuarantineFilter, ApiError> {
        let given = |v: &str| Some(v.trim()).filter(|v| !v.is_empty()).map(str::to_string);
        Ok(QuarantineFilter {
            sender: address(&self.sender),
            recipient: address(&self.recipient),
            subject: given(&self.subject),
            reason: given(&self.reason),
            since_ms: day_ms("since", &self.since, 0)?,
            until_ms: day_ms("until", &self.until, 1)?,
        })
    }

    /// The search as recorded with the read (as the API's listing records it).
    fn described(&self) -> String {
        fn given(v: &str) -> Option<&str> {
            Some(v.trim()).filter(|v| !v.is_empty())
        }
        let filters = crate::access::query(&[
            ("sender", given(&self.sender)),
            ("recipient", given(&self.recipient)),
            ("subject", given(&self.subject)),
            ("reason", given(&self.reason)),
            ("since", given(&self.since)),
            ("until", given(&self.until)),
        ]);
        match filters {
            Some(f) => format!("quarantine?{f}"),
            None => "quarantine".into(),
        }
    }

    /// The page's address with the same search, from its start.
    fn here(&self) -> String {
        with_query("/ui/quarantine", &self.query().finish())
    }

    /// The page's address with the same search from `after` on.
    fn page_after(&self, after: MessageId) -> String {
        let mut query = self.query();
        query.append_pair("after", &after.to_string());
        format!("/ui/quarantine?{}", query.finish())
    }

    /// The search's filters as a query string.
    fn query(&self) -> form_urlencoded::Serializer<'static, String> {
        search_query(&[
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("subject", &self.subject),
            ("reason", &self.reason),
            ("since", &self.since),
            ("until", &self.until),
        ])
    }
}

/// `GET /ui/quarantine`: the search form and one page of what it finds, oldest first,
/// each with a box to act on many at once.
pub(crate) async fn list(
    State(s): State<ApiState>,
    viewer: Viewer,
    query: Result<Query<Search>, axum::extract::rejection::QueryRejection>,
    outcome: Result<Query<Outcome>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let caller = viewer.caller().clone();
    if !Access::Messages.allows(caller.role) {
        return Err(forbidden(&viewer, "read the quarantine").into());
    }
    let Query(search) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let outcome = outcome.map(|Query(o)| o).unwrap_or_default();
    let filter = search.filter()?;
    let after = match search.after.trim() {
        "" => None,
        after => Some(message_id(after)?),
    };
    let node = s.node.clone();
    let (records, next) =
        tokio::task::spawn_blocking(move || node.state().quarantine_list(&filter, after, PAGE))
            .await
            .map_err(ApiError::internal)??;
    let read = Read {
        kind: ReadKind::Search,
        message_id: None,
        reason: None,
        query: Some(search.described()),
    };
    s.record_read(&caller, viewer.client_ip, read).await?;
    let may_act = Access::Act.allows(caller.role);
    let body = html! {
        h1 { "Quarantine" }
        (outcome_notice(&outcome))
        form.card.search method="get" action="/ui/quarantine" {
            div { label for="sender" { "Sender" }
                input #sender type="text" name="sender" value=(search.sender) placeholder="address or domain"; }
            div { label for="recipient" { "Recipient" }
                input #recipient type="text" name="recipient" value=(search.recipient) placeholder="address or domain"; }
            div { label for="subject" { "Subject words" }
                input #subject type="text" name="subject" value=(search.subject); }
            div { label for="reason" { "Reason" }
                input #reason type="text" name="reason" value=(search.reason) placeholder="malware, score, dmarc…"; }
            div { label for="since" { "From day" }
                input #since type="date" name="since" value=(search.since); }
            div { label for="until" { "To day" }
                input #until type="date" name="until" value=(search.until); }
            div.actions {
                button.primary type="submit" { "Search" }
                a href="/ui/quarantine" { "Clear" }
            }
        }
        @if records.is_empty() {
            p.card.muted { "Nothing in the quarantine matches." }
        } @else {
            form method="post" action="/ui/quarantine/act" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="back" value=(search.here());
                div.table-wrap {
                    table {
                        thead { tr {
                            @if may_act { th { span.muted { "Pick" } } }
                            th { "Quarantined" }
                            th { "From" }
                            th.wide { "To" }
                            th { "Subject" }
                            th { "Reason" }
                            th.num.wide { "Score" }
                            th.num.wide { "Size" }
                        } }
                        tbody {
                            @for r in &records { (row(r, may_act)) }
                        }
                    }
                }
                @if may_act {
                    div.bulk {
                        label.muted for="bulk-reason" { "Reason" }
                        input #bulk-reason type="text" name="reason" maxlength="1024"
                            placeholder="why (recorded with the action)";
                        button.primary type="submit" name="action" value="release" { "Release picked" }
                        button type="submit" name="action" value="release_allow" { "Release and allow sender" }
                        button.danger type="submit" name="action" value="delete" { "Delete picked" }
                    }
                }
            }
            @if let Some(next) = next {
                p.pager { a href=(search.page_after(next)) { "Next page →" } }
            }
        }
    };
    Ok(page(&viewer, "Quarantine", Section::Quarantine, body).into_response())
}

/// One quarantined message in the list.
fn row(r: &QuarantineRecord, may_act: bool) -> Markup {
    let id = r.message_id.to_string();
    let from = r.header_from.as_deref().unwrap_or(&r.mail_from);
    html! {
        tr {
            @if may_act {
                td { input type="checkbox" name="id" value=(id) aria-label={"pick " (id)}; }
            }
            td { (time(r.time_ms)) }
            td.addr { (from) }
            td.addr.wide { (r.recipients.join(", ")) }
            td.subject {
                a href={"/ui/messages/" (id)} {
                    @match r.subject.as_deref() {
                        Some(s) if !s.trim().is_empty() => (s),
                        _ => span.muted { "(no subject)" },
                    }
                }
            }
            td { (r.reason) }
            td.num.wide { (format!("{:.1}", r.score)) }
            td.num.wide { (size(r.size)) }
        }
    }
}

/// What the last action did, when the page was reached from one.
fn outcome_notice(o: &Outcome) -> Markup {
    let verb = match o.action.as_str() {
        "release" => "Released",
        "delete" => "Deleted",
        _ => return html! {},
    };
    let plural = |n: usize| if n == 1 { "message" } else { "messages" };
    html! {
        p.notice role="status" { (verb) " " (o.done) " " (plural(o.done)) "." }
        @if o.refused > 0 {
            p.problem { (o.refused) " " (plural(o.refused)) " had already left the quarantine." }
        }
        @if o.failed > 0 {
            p.problem {
                (o.failed) " " (plural(o.failed))
                " could not be confirmed in time (no quorum): try them again."
            }
        }
    }
}

/// `POST /ui/quarantine/act` (`csrf`, `action` = release or delete, `reason`, one
/// `id` per message, `back`): each message's decision on record under the person's
/// name, then back to `back` saying what was done.
pub(crate) async fn act(
    State(s): State<ApiState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&body)?;
    let field = |name| form.get(name);
    let caller = viewer.caller().clone();
    if !Access::Act.allows(caller.role) {
        return Err(forbidden(&viewer, "release or delete messages").into());
    }
    let (action, verb, done) = match field("action") {
        Some("release_allow") => (None, "release", "released, its sender allowed,"),
        Some("release") => (Some(QuarantineAction::Release), "release", "released"),
        Some("delete") => (Some(QuarantineAction::Delete), "delete", "deleted"),
        other => {
            return Err(ApiError::bad_request(format!(
                "action: release, release_allow or delete, not {:?}",
                other.unwrap_or("")
            ))
            .into())
        }
    };
    let ids = form.picked()?;
    let reason = match field("reason").map(str::trim) {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => format!("{done} in the console"),
    };
    if reason.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "reason is {} bytes, at most {MAX_REASON} allowed",
            reason.len()
        ))
        .into());
    }
    let Some(action) = action else {
        let tally = release_and_allow(&s, &viewer, ids, &reason).await?;
        return Ok(told(field("back"), "/ui/", "/ui/quarantine", verb, &tally));
    };
    let commands = ids
        .into_iter()
        .map(|id| {
            Command::Quarantine(Box::new(QuarantineCommand {
                message_id: id,
                action,
                reason: reason.clone(),
                user: caller.name.clone(),
                client_ip: viewer.client_ip,
            }))
        })
        .collect();
    let tally = propose_each(&s, commands).await?;
    Ok(told(field("back"), "/ui/", "/ui/quarantine", verb, &tally))
}

/// Releases each picked message to each recipient it is held for, and puts its
/// sender on each one's own allow list (not the cluster's: the help desk answers for
/// the people who asked, not for everyone), one `recipient.action` a recipient under
/// the person's name. A message counts as done when some copy was released.
async fn release_and_allow(
    s: &ApiState,
    viewer: &Viewer,
    ids: Vec<MessageId>,
    reason: &str,
) -> Result<Tally, ApiError> {
    let node = s.node.clone();
    let records = tokio::task::spawn_blocking(move || {
        let state = node.state();
        ids.into_iter()
            .map(|id| state.quarantine_record(id))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut tally = Tally::default();
    for record in records {
        let Some(record) = record else {
            tally.refused += 1;
            continue;
        };
        let commands = record
            .recipients
            .iter()
            .map(|recipient| {
                Command::Recipient(Box::new(RecipientCommand {
                    recipient: recipient.clone(),
                    action: RecipientAction::Release {
                        message_id: record.message_id,
                        allow_sender: true,
                    },
                    via: Via::Console {
                        user: viewer.caller().name.clone(),
                        reason: reason.to_string(),
                    },
                    client_ip: viewer.client_ip,
                }))
            })
            .collect();
        let copies = propose_each(s, commands).await?;
        if copies.done > 0 {
            tally.done += 1;
        } else if copies.failed > 0 {
            tally.failed += 1;
        } else {
            tally.refused += 1;
        }
    }
    Ok(tally)
}

/// The message trace's form: open a message by its id.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Open {
    id: String,
}

/// `GET /ui/messages?id=ID`: a form to open any message's trace by its id (as in
/// `250 2.0.0 Ok: queued as ID`, in the mail log and in every event).
pub(crate) async fn open(
    viewer: Viewer,
    query: Result<Query<Open>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    if !Access::Messages.allows(viewer.caller().role) {
        return Err(forbidden(&viewer, "read message traces").into());
    }
    let Query(open) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = open.id.trim();
    if !id.is_empty() {
        return Ok(see_other(&format!("/ui/messages/{}", message_id(id)?)));
    }
    let body = html! {
        h1 { "Message trace" }
        form.card.search method="get" action="/ui/messages" {
            div {
                label for="id" { "Message id" }
                input #id type="text" name="id" required
                    placeholder="as in 250 2.0.0 Ok: queued as …";
            }
            div.actions { button.primary type="submit" { "Open" } }
        }
        p.muted {
            "Every message has an id: the gateway gives it in its " code { "250" }
            " reply, the mail log names it, and every event about the message carries it."
        }
    };
    Ok(page(&viewer, "Message trace", Section::Messages, body).into_response())
}

/// What one message's page shows, as read from this node's state.
struct Found {
    record: Option<QuarantineRecord>,
    body: Option<Vec<u8>>,
    events: Vec<StoredEvent>,
    queued: Option<bulwark_storage::QueueRecord>,
}

/// `GET /ui/messages/{id}`: one message, quarantined or not.
pub(crate) async fn view(
    State(s): State<ApiState>,
    viewer: Viewer,
    crate::extract::PathParam(id): crate::extract::PathParam<String>,
    outcome: Result<Query<Outcome>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let outcome = outcome.map(|Query(o)| o).unwrap_or_default();
    let caller = viewer.caller().clone();
    if !Access::Messages.allows(caller.role) {
        return Err(forbidden(&viewer, "read messages").into());
    }
    let id = message_id(&id)?;
    let may_read = Access::Content.allows(caller.role);
    let node = s.node.clone();
    let found = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let record = state.quarantine_record(id)?;
        let body = match (&record, may_read) {
            (Some(_), true) => state.message_body(id)?,
            _ => None,
        };
        let filter = EventFilter {
            message_id: Some(id),
            ..Default::default()
        };
        let (events, _) = state.events(&filter, 0, MAX_EVENTS)?;
        let queued = state.queue_record(id)?;
        Ok::<_, bulwark_storage::Error>(Found {
            record,
            body,
            events,
            queued,
        })
    })
    .await
    .map_err(ApiError::internal)??;
    if found.events.is_empty() && found.record.is_none() {
        return Err(ApiError::not_found(format!("no message {id} on record")).into());
    }
    let read = Read {
        kind: if found.body.is_some() {
            ReadKind::Preview
        } else {
            ReadKind::Trace
        },
        message_id: Some(id),
        reason: None,
        query: None,
    };
    s.record_read(&caller, viewer.client_ip, read).await?;
    let preview = match found.body {
        Some(body) => {
            let preview = s.preview.clone();
            Some(
                tokio::task::spawn_blocking(move || preview(&body))
                    .await
                    .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    let json: Vec<Value> = found.events.iter().map(StoredEvent::to_json).collect();
    let (recipients, state) = crate::messages::standing(&json, found.queued.as_ref());
    let verdict = found.events.iter().find_map(|e| match &e.event.kind {
        EventKind::ScanVerdict(v) => Some(v.as_ref()),
        _ => None,
    });
    let received = json.iter().find(|e| e["type"] == "message.received");
    let subject = found
        .record
        .as_ref()
        .and_then(|r| r.subject.clone())
        .or_else(|| received.and_then(|r| r["email"]["subject"].as_str().map(str::to_string)));
    let title = subject
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "(no subject)".into());
    let may_act = found.record.is_some() && Access::Act.allows(caller.role);
    let here = format!("/ui/messages/{id}");
    let body = html! {
        p { a href="/ui/quarantine" { "← Quarantine" } }
        h1 { (title) " " span.badge.(state.replace(' ', "-")) { (state) } }
        (outcome_notice(&outcome))
        div.card {
            dl.facts {
                dt { "Message id" } dd.mono { (id) }
                @if let Some(r) = &found.record {
                    dt { "From" } dd { (r.header_from.as_deref().unwrap_or("(none)")) }
                    dt { "Envelope sender" } dd { (if r.mail_from.is_empty() { "<> (a bounce)" } else { &r.mail_from }) }
                    dt { "Quarantined" } dd { (time(r.time_ms)) " UTC — " (r.reason) }
                    dt { "Size" } dd { (size(r.size)) }
                } @else if let Some(r) = received {
                    dt { "From" } dd { (joined(&r["email"]["from"]["address"])) }
                    dt { "Envelope sender" } dd { (r["email"]["sender"]["address"].as_str().unwrap_or("")) }
                    dt { "Received" } dd { (r["time"].as_str().unwrap_or("")) }
                }
                @if let Some(r) = received {
                    dt { "Client" } dd {
                        (r["source"]["ip"].as_str().unwrap_or("?"))
                        @if let Some(helo) = r["source"]["domain"].as_str() { " (HELO " (helo) ")" }
                    }
                }
                dt { "Recipients" }
                dd {
                    @for (address, standing) in &recipients {
                        div { (address) " " span.badge.(standing.status) { (standing.status) }
                            @if let Some(reply) = &standing.reply { " " span.muted.mono { (reply) } } }
                    }
                }
            }
        }
        @if may_act {
            form.card method="post" action="/ui/quarantine/act" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="id" value=(id);
                input type="hidden" name="back" value=(here);
                div.actions-row {
                    div {
                        label for="reason" { "Reason" }
                        input #reason type="text" name="reason" maxlength="1024"
                            placeholder="why (recorded with the action)";
                    }
                    button.primary type="submit" name="action" value="release" { "Release" }
                    button type="submit" name="action" value="release_allow" { "Release and allow sender" }
                    button.danger type="submit" name="action" value="delete" { "Delete" }
                }
            }
        }
        @if let Some(v) = verdict { (verdict_section(v)) }
        @match (&preview, &found.record) {
            (Some(p), _) => (preview_section(p)),
            (None, Some(_)) if !may_read => p.card.muted {
                "The " (caller.role.as_str()) " role may not read what messages say."
            },
            _ => {}
        }
        h2 { "Timeline" }
        ol.timeline.card {
            @for e in &json {
                li {
                    span.when { (e["time"].as_str().unwrap_or("")) }
                    strong { (e["type"].as_str().unwrap_or("")) }
                    " " span { (summary(e)) }
                }
            }
        }
    };
    Ok(page(&viewer, &title, Section::Messages, body).into_response())
}

/// The verdict: the action, the score against the thresholds, and every symbol that
/// made it, each with what it means; the authentication results and findings.
fn verdict_section(v: &Verdict) -> Markup {
    let mut symbols: Vec<_> = v.symbols.iter().collect();
    symbols.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    html! {
        h2 { "Verdict" }
        div.card {
            p { span.badge.(v.action.as_str()) { (v.action.as_str()) } " " strong { (v.reason) } }
            p.muted {
                "Score " (format!("{:.2}", v.score)) " against tag " (v.thresholds.tag)
                ", quarantine " (v.thresholds.quarantine) ", reject " (v.thresholds.reject)
                @if let Some(version) = v.policy_version() { " · policy version " (version) }
            }
        }
        @if !symbols.is_empty() {
            div.table-wrap { table {
                thead { tr { th { "Symbol" } th.num { "Score" } th { "What it means" } th.wide { "Engine" } } }
                tbody { @for s in symbols { tr {
                    td.mono { (s.name) }
                    td.num.(if s.score > 0.0 { "score-pos" } else { "score-neg" }) { (format!("{:+.2}", s.score)) }
                    td { (s.description) }
                    td.wide { (s.engine) }
                } } }
            } }
        }
        @if !v.authentication.is_empty() {
            h2 { "Authentication" }
            div.table-wrap { table {
                thead { tr { th { "Method" } th { "Result" } th { "Detail" } } }
                tbody { @for a in &v.authentication { tr {
                    td { (a.method) } td { span.badge.(a.result) { (a.result) } } td.mono { (a.detail) }
                } } }
            } }
        }
        @if !v.findings.is_empty() {
            h2 { "Findings" }
            div.table-wrap { table {
                thead { tr { th { "Kind" } th { "Name" } th { "Where" } th.wide { "Engine" } } }
                tbody { @for f in &v.findings { tr {
                    td { (f.kind) } td { (f.name) } td { (f.location) } td.wide { (f.engine) }
                } } }
            } }
        }
    }
}

/// The preview the node rendered (`crate::Previewer`): headers, text, the HTML as
/// text, attachments. All of it is text here: nothing from the message is markup.
fn preview_section(p: &Value) -> Markup {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let headers = p["headers"].as_array().cloned().unwrap_or_default();
    let attachments = p["attachments"].as_array().cloned().unwrap_or_default();
    html! {
        h2 { "Content" }
        div.card {
            details {
                summary { "Headers (" (headers.len()) ")" }
                dl.facts { @for h in &headers {
                    dt.mono { (h["name"].as_str().unwrap_or("")) } dd.mono { (h["value"].as_str().unwrap_or("")) }
                } }
            }
            @if let Some(body) = text(&p["text"]) {
                h2 { "Text" } pre.body { (body) }
            }
            @if let Some(body) = text(&p["html_text"]) {
                h2 { "HTML, shown as text" } pre.body { (body) }
            }
            @if p["truncated"] == true { p.muted { "Some of it is left out (too long to show)." } }
            @if p["parsed"] == false { p.muted { "This is not a MIME message; shown as received text." } }
        }
        @if !attachments.is_empty() {
            h2 { "Attachments" }
            div.table-wrap { table {
                thead { tr { th { "Name" } th { "Type declared" } th { "Type found" } th.num { "Size" } th.wide { "SHA-256" } } }
                tbody { @for a in &attachments { tr {
                    td { (a["name"].as_str().unwrap_or("(none)")) @if a["in_archive"] == true { span.muted { " in an archive" } } }
                    td { (a["declared_type"].as_str().unwrap_or("")) }
                    td { (a["detected_type"].as_str().unwrap_or("")) }
                    td.num { (size(a["size"].as_u64().unwrap_or(0))) }
                    td.mono.wide { (a["sha256"].as_str().unwrap_or("")) }
                } } }
            } }
        }
    }
}

/// One line about an event, from its JSON (what a person wants to know of it).
fn summary(e: &Value) -> String {
    let who = e["user"]["name"].as_str();
    let recipients = joined(&e["email"]["to"]["address"]);
    match e["type"].as_str().unwrap_or("") {
        "message.received" => format!(
            "from {} to {} via {}",
            e["email"]["sender"]["address"].as_str().unwrap_or(""),
            recipients,
            e["source"]["ip"].as_str().unwrap_or("?")
        ),
        "scan.verdict" => format!(
            "{}: {}",
            e["action"].as_str().unwrap_or(""),
            e["event"]["reason"].as_str().unwrap_or("")
        ),
        "delivery.succeeded" | "delivery.deferred" | "delivery.failed" => format!(
            "{recipients}: {}",
            e["smtp"]["reply"].as_str().unwrap_or("")
        ),
        "access.read" => format!("by {}", who.unwrap_or("?")),
        _ => {
            let mut parts = Vec::new();
            if let Some(who) = who {
                parts.push(format!("by {who}"));
            }
            if let Some(reason) = e["reason"].as_str().or(e["event"]["reason"].as_str()) {
                if !reason.is_empty() {
                    parts.push(format!("— {reason}"));
                }
            }
            if !recipients.is_empty() {
                parts.push(format!("({recipients})"));
            }
            parts.join(" ")
        }
    }
}

/// A JSON list of strings (or one string) as one line.
fn joined(v: &Value) -> String {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_whole_utc_days_and_a_bad_one_says_so() {
        assert_eq!(day_ms("since", "", 0).unwrap(), None);
        assert_eq!(
            day_ms("since", "2026-12-06", 0).unwrap(),
            Some(1_796_515_200_000)
        );
        assert_eq!(
            day_ms("until", "2026-12-06", 1).unwrap(),
            Some(1_796_601_600_000)
        );
        let bad = day_ms("since", "06/12/2026", 0).unwrap_err();
        assert!(bad.detail.contains("since"), "{}", bad.detail);
    }

    #[test]
    fn a_domain_typed_alone_matches_the_domain_and_an_address_itself() {
        let search = |sender: &str| Search {
            sender: sender.into(),
            ..Search::default()
        };
        assert_eq!(
            search(" supplier.test ")
                .filter()
                .unwrap()
                .sender
                .as_deref(),
            Some("@supplier.test")
        );
        assert_eq!(
            search("a@b.test").filter().unwrap().sender.as_deref(),
            Some("a@b.test")
        );
        assert_eq!(search("<>").filter().unwrap().sender.as_deref(), Some("<>"));
        assert_eq!(search("  ").filter().unwrap().sender, None);
    }

    #[test]
    fn an_outcome_tells_what_was_done_and_what_was_not() {
        let told = outcome_notice(&Outcome {
            action: "release".into(),
            done: 2,
            refused: 1,
            failed: 0,
        })
        .into_string();
        assert!(told.contains("Released 2 messages."), "{told}");
        assert!(told.contains("1 message had already left"), "{told}");
        assert!(outcome_notice(&Outcome::default()).into_string().is_empty());
    }

    #[test]
    fn markup_in_a_subject_is_text() {
        let record = QuarantineRecord {
            message_id: MessageId(7),
            received_seq: 1,
            time_ms: 1_796_515_200_000,
            mail_from: "a@b.test".into(),
            recipients: vec!["<b>c@d.test</b>".into()],
            subject: Some("<script>alert(1)</script>".into()),
            header_from: Some("\"><img src=x>@e.test".into()),
            size: 10,
            score: 9.0,
            reason: "score".into(),
        };
        let html = row(&record, true).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<img"), "{html}");
    }
}

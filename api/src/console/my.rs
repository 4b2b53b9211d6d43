//! The recipients' own pages (`/ui/my/`): no password, only links sent to their own
//! address.
//!
//! - `/ui/my/l/{link}`: a digest's link (release, release and allow the sender,
//!   delete) or a portal link. Opening it only shows what it will do; the button on
//!   the page does it. Mail scanners and link previews open links on their own, and a
//!   link works once, so a GET must not spend it.
//! - `/ui/my/`: the portal, once a portal link was followed (a signed cookie for
//!   [`PASS_MS`], for that one address): the mail held for them, release, release and
//!   allow, delete, and their own allow and block lists, which the scanner applies to
//!   mail for them. Without the cookie, a form that sends a portal link to an address
//!   of ours (and says the same whether or not it did).
//!
//! Every use of a link and every action in the portal is a Raft operation recorded
//! as `recipient.action` with the recipient's address; a recipient can only ever name
//! their own address (it is in the signed link or cookie, never in a form).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_storage::recipient::{
    releasable_by_recipient, Link, LinkAction, LinkError, ListKind, PortalPass, RecipientAction,
    RecipientCommand, RecipientLists, Via,
};
use bulwark_storage::{Command, MessageId, QuarantineFilter, QuarantineRecord};
use maud::{html, Markup};

use super::layout::{bare, size, time};
use super::{see_other, Form, PageError};
use crate::auth::ClientIp;
use crate::extract::PathParam;
use crate::routes::ApiState;
use crate::ApiError;

/// The portal's cookie.
const COOKIE: &str = "bulwark_my";
/// How long a portal visit lasts from its link.
const PASS_MS: i64 = 60 * 60 * 1000;
/// Held messages the portal lists a page, oldest first.
const LISTED: usize = 100;

/// The cluster's link key; `None` before any link was made.
async fn key(s: &ApiState) -> Result<Option<[u8; 32]>, ApiError> {
    let node = s.node.clone();
    tokio::task::spawn_blocking(move || node.state().link_key())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// A page for someone without a console account.
fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    (status, bare(title, body)).into_response()
}

/// The page of a link that cannot be used, saying why.
fn unusable(status: StatusCode, why: &str) -> Response {
    page(
        status,
        "Link not usable",
        html! {
            h1 { "This link cannot be used" }
            p.problem { (why) }
            p { "Each link in a quarantine digest works once, until the time the digest gives. "
                "To see what is held for you now, ask for a new link to your quarantine." }
            p { a href="/ui/my/" { "Ask for a link to your quarantine" } }
        },
    )
}

/// The link `text` is, checked; or the page saying why not.
async fn checked(s: &ApiState, text: &str) -> Result<(Link, [u8; 32]), Response> {
    let invalid = || {
        unusable(
            StatusCode::FORBIDDEN,
            "This link is not one of ours, or it was changed or cut short on its way (a mail \
             program may have broken a long line): open it from the digest again.",
        )
    };
    let Some(key) = key(s)
        .await
        .map_err(|e| PageError::from(e).into_response())?
    else {
        return Err(invalid());
    };
    match Link::verify(&key, text, crate::queue::now_ms()) {
        Ok(link) => Ok((link, key)),
        Err(LinkError::Invalid) => Err(invalid()),
        Err(LinkError::Expired) => {
            let shown = expiry_of(&key, text).map(time).unwrap_or_default();
            Err(unusable(
                StatusCode::GONE,
                &format!("This link expired at {shown} UTC."),
            ))
        }
    }
}

/// The expiry of a link signed with `key` (checked as of the earliest time: the
/// signature is checked, the expiry is not).
fn expiry_of(key: &[u8; 32], text: &str) -> Option<i64> {
    Link::verify(key, text, i64::MIN).ok().map(|l| l.expires_ms)
}

/// The page saying when `link` was used, if it was (as this node has applied it).
async fn spent(s: &ApiState, link: &Link) -> Option<Response> {
    let node = s.node.clone();
    let id = link.id();
    match tokio::task::spawn_blocking(move || node.state().link_spent(&id)).await {
        Ok(Ok(Some(at))) => Some(unusable(
            StatusCode::GONE,
            &format!("This link was used already, at {} UTC.", time(at)),
        )),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(PageError::from(e).into_response()),
        Err(e) => Some(PageError::from(ApiError::internal(e)).into_response()),
    }
}

/// The held message a link is about, when it is still held for its recipient.
async fn held_for(
    s: &ApiState,
    id: MessageId,
    recipient: &str,
) -> Result<Option<QuarantineRecord>, ApiError> {
    let node = s.node.clone();
    let record = tokio::task::spawn_blocking(move || node.state().quarantine_record(id))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(record.filter(|r| {
        r.recipients
            .iter()
            .any(|a| a.eq_ignore_ascii_case(recipient))
    }))
}

fn sender(r: &QuarantineRecord) -> &str {
    match r.header_from.as_deref().unwrap_or(&r.mail_from) {
        "" => "<>",
        s => s,
    }
}

fn facts(r: &QuarantineRecord) -> Markup {
    html! {
        dl.facts {
            dt { "From" } dd.addr { (sender(r)) }
            dt { "Subject" } dd {
                @match r.subject.as_deref() {
                    Some(s) if !s.trim().is_empty() => (s),
                    _ => span.muted { "(no subject)" },
                }
            }
            dt { "Received" } dd { (time(r.time_ms)) " UTC" }
            dt { "Why it was held" } dd { (r.reason) }
            dt { "Size" } dd { (size(r.size)) }
        }
    }
}

/// `GET /ui/my/l/{link}`: what the link will do, and the button that does it.
pub(crate) async fn show_link(
    State(s): State<ApiState>,
    PathParam(text): PathParam<String>,
) -> Response {
    let (link, _) = match checked(&s, &text).await {
        Ok(checked) => checked,
        Err(page) => return page,
    };
    if let Some(page) = spent(&s, &link).await {
        return page;
    }
    let action = format!("/ui/my/l/{text}");
    if link.action == LinkAction::Portal {
        return page(
            StatusCode::OK,
            "Your quarantine",
            html! {
                h1 { "Your quarantine" }
                p.lead { "The mail the gateway holds for " strong { (link.recipient) } ", and your own allow and block lists." }
                form method="post" action=(action) {
                    button.primary type="submit" { "Open my quarantine" }
                }
                p.hint { "The link works once; the page stays open for an hour." }
            },
        );
    }
    let record = match held_for(&s, link.message_id, &link.recipient).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return unusable(
                StatusCode::NOT_FOUND,
                "This message is no longer held for you: it was released, deleted or \
                 removed after the quarantine's retention.",
            )
        }
        Err(e) => return PageError::from(e).into_response(),
    };
    let release = matches!(link.action, LinkAction::Release | LinkAction::ReleaseAllow);
    if release && !releasable_by_recipient(&record.reason) {
        return unusable(
            StatusCode::FORBIDDEN,
            &format!(
                "This message was {}.",
                bulwark_storage::recipient::OPERATOR_ONLY
            ),
        );
    }
    let (title, button, class) = match link.action {
        LinkAction::Release => ("Release this message", "Release".to_string(), "primary"),
        LinkAction::ReleaseAllow => (
            "Release this message and allow its sender",
            format!("Release and always allow {}", sender(&record)),
            "primary",
        ),
        _ => ("Delete this message", "Delete".to_string(), "danger"),
    };
    page(
        StatusCode::OK,
        title,
        html! {
            h1 { (title) }
            p.lead { "Held for " strong { (link.recipient) } }
            (facts(&record))
            form method="post" action=(action) {
                button class=(class) type="submit" { (button) }
            }
        },
    )
}

/// `POST /ui/my/l/{link}`: does what the link says, once. Refused when posted from
/// another site's page: no page elsewhere spends a link it was given, or opens its
/// owner's portal in a visitor's browser.
pub(crate) async fn use_link(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(text): PathParam<String>,
) -> Response {
    if !super::session::same_origin(&headers, &uri) {
        return unusable(
            StatusCode::FORBIDDEN,
            "This link was sent from another site's page: open it from your digest.",
        );
    }
    let (link, key) = match checked(&s, &text).await {
        Ok(checked) => checked,
        Err(page) => return page,
    };
    // Spent already: said without a Raft write (the first use is on record), so a
    // link replayed in a loop costs the cluster nothing.
    if let Some(page) = spent(&s, &link).await {
        return page;
    }
    let command = Command::Recipient(Box::new(RecipientCommand {
        recipient: link.recipient.clone(),
        action: link.action.action(link.message_id),
        via: Via::Link {
            id: link.id(),
            expires_ms: link.expires_ms,
        },
        client_ip,
    }));
    let result = match s.node.proposer().propose(command).await {
        Ok(result) => result,
        Err(e) => return PageError::from(ApiError::from(e)).into_response(),
    };
    if let Some(refused) = result.refused {
        let status = if refused == bulwark_storage::recipient::NOT_HELD {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::GONE
        };
        return unusable(status, &format!("Refused: {refused}."));
    }
    if link.action == LinkAction::Portal {
        return enter(&s, &key, &link.recipient);
    }
    let done = match link.action {
        LinkAction::Release => "Released: the message is on its way to your mailbox.",
        LinkAction::ReleaseAllow => {
            "Released: the message is on its way to your mailbox, and its sender is on your \
             allow list."
        }
        _ => "Deleted.",
    };
    page(
        StatusCode::OK,
        "Done",
        html! {
            h1 { "Done" }
            p.notice role="status" { (done) }
            p { a href="/ui/my/" { "Your quarantine" } }
        },
    )
}

/// Into the portal: the pass as a cookie, and on to it.
fn enter(s: &ApiState, key: &[u8; 32], recipient: &str) -> Response {
    let pass = PortalPass {
        recipient: recipient.to_string(),
        expires_ms: crate::queue::now_ms() + PASS_MS,
        nonce: rand::random(),
    };
    let secure = if s.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui/my/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        pass.sign(key),
        PASS_MS / 1000
    );
    let mut response = see_other("/ui/my/");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The portal pass the request carries, while it lasts.
async fn pass(
    s: &ApiState,
    headers: &HeaderMap,
) -> Result<Option<(PortalPass, [u8; 32])>, ApiError> {
    let Some(text) = super::session::cookie_named(headers, COOKIE) else {
        return Ok(None);
    };
    let Some(key) = key(s).await? else {
        return Ok(None);
    };
    Ok(PortalPass::verify(&key, &text, crate::queue::now_ms())
        .ok()
        .map(|pass| (pass, key)))
}

#[derive(serde::Deserialize)]
pub(crate) struct HomeQuery {
    done: Option<String>,
    refused: Option<String>,
    /// The page after this message (the listing's `next`).
    after: Option<String>,
}

/// `GET /ui/my/`: the portal, or the form that sends a link to it.
pub(crate) async fn home(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<HomeQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Some((pass, key)) = pass(&s, &headers).await? else {
        return Ok(ask_page(None));
    };
    let (done, refused, after) = query
        .map(|Query(q)| (q.done, q.refused, q.after))
        .unwrap_or_default();
    let after = after
        .filter(|a| !a.is_empty())
        .map(|a| super::message_id(&a))
        .transpose()?;
    let recipient = pass.recipient.clone();
    let node = s.node.clone();
    let (held, next, lists) = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let filter = QuarantineFilter {
            recipient: Some(recipient.clone()),
            ..QuarantineFilter::default()
        };
        let (held, next) = state.quarantine_list(&filter, after, LISTED)?;
        let lists = state.recipient_lists(&recipient)?;
        Ok::<_, bulwark_storage::Error>((held, next, lists))
    })
    .await
    .map_err(ApiError::internal)??;
    let csrf = pass.csrf(&key);
    let body = html! {
        header.top {
            span.brand { "Your quarantine" }
            form.who method="post" action="/ui/my/signout" {
                span { (pass.recipient) }
                input type="hidden" name="csrf" value=(csrf);
                button.link type="submit" { "Sign out" }
            }
        }
        main {
            @if let Some(done) = done {
                p.notice role="status" { (done) }
            }
            @if let Some(refused) = refused {
                p.problem role="status" { "Refused: " (refused) }
            }
            h1 { "Mail held for " (pass.recipient) }
            @if held.is_empty() {
                p.muted { "Nothing is held for you." }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th { "Received" } th { "From" } th { "Subject" } th { "Why" } th.num.wide { "Size" } th { "" } } }
                        tbody {
                            @for r in &held {
                                (held_row(r, &csrf))
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    p.pager { a href={"/ui/my/?after=" (next)} { "Later messages" } }
                }
            }
            (lists_section(&lists, &csrf))
        }
    };
    let page = super::layout::plain(&format!("Mail held for {}", pass.recipient), body);
    Ok(page.into_response())
}

fn held_row(r: &QuarantineRecord, csrf: &str) -> Markup {
    let id = r.message_id.to_string();
    let button = |action: &str, label: &str, class: &str| {
        html! {
            form.inline method="post" action="/ui/my/act" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="id" value=(id);
                input type="hidden" name="action" value=(action);
                button class=(class) type="submit" { (label) }
            }
        }
    };
    html! {
        tr {
            td { (time(r.time_ms)) }
            td.addr { (sender(r)) }
            td.subject {
                @match r.subject.as_deref() {
                    Some(s) if !s.trim().is_empty() => (s),
                    _ => span.muted { "(no subject)" },
                }
            }
            td { (r.reason) }
            td.num.wide { (size(r.size)) }
            td {
                @if releasable_by_recipient(&r.reason) {
                    (button("release", "Release", "primary"))
                    (button("release_allow", "Release and allow sender", ""))
                } @else {
                    span.muted { "Only an administrator can release it. " }
                }
                (button("delete", "Delete", "danger"))
            }
        }
    }
}

fn lists_section(lists: &RecipientLists, csrf: &str) -> Markup {
    let list = |kind: ListKind, title: &str, hint: &str| {
        html! {
            section.card {
                h2 { (title) }
                p.hint { (hint) }
                @if lists.list(kind).is_empty() {
                    p.muted { "Empty." }
                } @else {
                    ul.entries {
                        @for entry in lists.list(kind) {
                            li {
                                span.addr { (entry) } " "
                                form.inline method="post" action="/ui/my/act" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="action" value={ (kind.as_str()) ".remove" };
                                    input type="hidden" name="entry" value=(entry);
                                    button.link type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
                form.inline method="post" action="/ui/my/act" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="action" value={ (kind.as_str()) ".add" };
                    label { "Address or domain "
                        input type="text" name="entry" required maxlength="254" placeholder="news@shop.example or shop.example";
                    }
                    button type="submit" { "Add" }
                }
            }
        }
    };
    html! {
        (list(ListKind::Allow, "Always allow", "Mail from these senders is delivered to you, unless it carries malware, a blocked attachment, or fails its domain's DMARC policy. A domain covers its subdomains when written with a dot first (.shop.example)."))
        (list(ListKind::Block, "Always block", "Mail from these senders to you is refused."))
    }
}

/// `POST /ui/my/act` (`csrf`, `action`, `id` or `entry`): one action in the portal.
pub(crate) async fn act(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    body: Bytes,
) -> Result<Response, PageError> {
    let Some((pass, key)) = pass(&s, &headers).await? else {
        return Ok(ask_page(Some(
            "Your visit has ended (it lasts an hour): ask for a new link.",
        )));
    };
    let form = Form::parse(&body);
    if !super::session::same_token(form.get("csrf").unwrap_or(""), &pass.csrf(&key)) {
        return Err(ApiError::forbidden(
            "this form was not made by your visit (it may have ended): reload the page and try \
             again",
        )
        .into());
    }
    let id = || super::message_id(form.get("id").unwrap_or(""));
    let entry = || form.get("entry").unwrap_or("").trim().to_string();
    let list = |list, add| RecipientAction::List {
        list,
        entry: entry(),
        add,
    };
    let (action, done) = match form.get("action").unwrap_or("") {
        "release" => (
            RecipientAction::Release {
                message_id: id()?,
                allow_sender: false,
            },
            "Released: the message is on its way to your mailbox.",
        ),
        "release_allow" => (
            RecipientAction::Release {
                message_id: id()?,
                allow_sender: true,
            },
            "Released, and its sender is on your allow list.",
        ),
        "delete" => (RecipientAction::Delete { message_id: id()? }, "Deleted."),
        "allow.add" => (list(ListKind::Allow, true), "Added to your allow list."),
        "allow.remove" => (list(ListKind::Allow, false), "Taken off your allow list."),
        "block.add" => (list(ListKind::Block, true), "Added to your block list."),
        "block.remove" => (list(ListKind::Block, false), "Taken off your block list."),
        other => return Err(ApiError::bad_request(format!("{other:?} is not an action")).into()),
    };
    let command = Command::Recipient(Box::new(RecipientCommand {
        recipient: pass.recipient.clone(),
        action,
        via: Via::Portal {
            expires_ms: pass.expires_ms,
        },
        client_ip,
    }));
    let result = s
        .node
        .proposer()
        .propose(command)
        .await
        .map_err(ApiError::from)?;
    let mut to = form_urlencoded::Serializer::new(String::new());
    match result.refused {
        None => to.append_pair("done", done),
        Some(refused) => to.append_pair("refused", &refused),
    };
    Ok(see_other(&format!("/ui/my/?{}", to.finish())))
}

/// `POST /ui/my/signout`: the portal's cookie is dropped.
pub(crate) async fn sign_out() -> Response {
    let mut response = see_other("/ui/my/");
    let cookie = format!("{COOKIE}=; Path=/ui/my/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The form that sends a link to one's quarantine.
fn ask_page(problem: Option<&str>) -> Response {
    page(
        StatusCode::OK,
        "Your quarantine",
        html! {
            h1 { "Your quarantine" }
            @if let Some(problem) = problem {
                p.problem { (problem) }
            }
            p.lead { "See the mail the gateway holds for you, release it, and keep your own allow and block lists. "
                "Type your address: a link to your quarantine is sent to it." }
            form method="post" action="/ui/my/" {
                label { "Your email address"
                    input type="text" name="address" required maxlength="254" autocomplete="email";
                }
                button.primary type="submit" { "Send me a link" }
            }
        },
    )
}

/// `POST /ui/my/` (`address`): sends that address a link to its quarantine when it is
/// one of ours; the page says the same either way, so it tells no one which addresses
/// exist.
pub(crate) async fn ask(
    State(s): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Result<Response, PageError> {
    if !super::session::same_origin(&headers, &uri) {
        return Err(ApiError::forbidden("this form was sent from another site's page").into());
    }
    let form = Form::parse(&body);
    let address = form.get("address").unwrap_or("").trim().to_string();
    if address.is_empty() || address.len() > 254 || !address.contains('@') {
        return Err(ApiError::bad_request("type your email address").into());
    }
    if let Err(e) = s
        .notices
        .send_portal_link(address.clone(), crate::queue::now_ms())
        .await
    {
        tracing::warn!(error = %e, "sending a portal link");
    }
    Ok(page(
        StatusCode::OK,
        "Link sent",
        html! {
            h1 { "Check your mail" }
            p.notice role="status" {
                "If " (address) " receives mail through this gateway, a link to its quarantine is on its way. "
                "It works once, for an hour."
            }
        },
    ))
}

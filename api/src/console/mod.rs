//! The web console (`/ui/`): the pages the people who run the gateway work in,
//! rendered on the server from templates compiled into the binary (maud, which
//! escapes every value it is given), with no script at all, no asset from anywhere
//! else, and a Content-Security-Policy that would stop either.
//!
//! A person signs in with a console user's name and password (`/v1/users`) or a
//! token's name and the token; the session is replicated state (only the SHA-256 of
//! its cookie's secret is stored), so any node serves it and a sign-out or a removed
//! user ends it on every node. Every form carries a token derived from the session's
//! secret (CSRF), every action goes through the same Raft operations as the API's and
//! is recorded under the person's name, and every read of a message is recorded as
//! the API's are.

mod cluster;
mod events;
mod flow;
mod layout;
mod my;
mod policy;
mod quarantine;
mod queue;
mod session;
mod users;

use std::net::IpAddr;

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use bulwark_storage::{Command, MessageId};

use crate::auth::{Caller, ClientIp};
use crate::routes::ApiState;
use crate::ApiError;

pub(crate) use session::Viewer;

/// What the console's pages may load and do: their own stylesheet and nothing else,
/// forms posted to the console only, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form a console page posts (a bulk action's ids are the most).
const MAX_FORM: usize = 64 * 1024;
/// Messages one form may act on.
const MAX_BATCH: usize = 200;

/// The console's stylesheet, compiled in.
const STYLE: &str = include_str!("style.css");

/// The console's routes, under `/ui`.
pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/quarantine") }))
        .route("/ui/style.css", get(style))
        .route("/ui/signin", get(session::form).post(session::sign_in))
        .route("/ui/signout", post(session::sign_out))
        .route("/ui/flow", get(flow::show))
        .route("/ui/quarantine", get(quarantine::list))
        .route("/ui/quarantine/act", post(quarantine::act))
        .route("/ui/messages", get(quarantine::open))
        .route("/ui/messages/{id}", get(quarantine::view))
        .route("/ui/queue", get(queue::list))
        .route("/ui/queue/act", post(queue::act))
        .route("/ui/events", get(events::list))
        .route("/ui/events/export", get(events::export))
        .route("/ui/cluster", get(cluster::show))
        .route("/ui/policy", get(policy::show))
        .route("/ui/policy/try", post(policy::act))
        .route("/ui/users", get(users::list).post(users::create))
        .route("/ui/users/{name}/password", post(users::set_password))
        .route("/ui/users/{name}/remove", post(users::remove))
        .route("/ui/my", get(|| async { Redirect::to("/ui/my/") }))
        .route("/ui/my/", get(my::home).post(my::ask))
        .route("/ui/my/act", post(my::act))
        .route("/ui/my/signout", post(my::sign_out))
        .route("/ui/my/l/{link}", get(my::show_link).post(my::use_link))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(protect))
}

/// Headers every console answer carries: the CSP, no sniffing, no framing, no
/// referrer beyond the console itself (a browser then still sends a form's `Origin`,
/// which the sign-in checks), never cached (a page shows mail).
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// A console request that failed: a page saying why, with the status it deserves.
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<bulwark_storage::Error> for PageError {
    fn from(e: bulwark_storage::Error) -> Self {
        PageError(ApiError::internal(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let ApiError {
            status,
            title,
            detail,
        } = self.0;
        let page = layout::bare(
            title,
            maud::html! {
                h1 { (title) }
                p.problem { (detail) }
                p { a href="/ui/" { "Back to the console" } }
            },
        );
        (status, page).into_response()
    }
}

/// The request's path and query, when it is a console page a sign-in may return to.
fn return_path(uri: &OriginalUri) -> Option<String> {
    let path = uri.0.path_and_query()?.as_str();
    local_page(path).then(|| path.to_string())
}

/// True for a path of this console's own (`/ui/...`): the only places a sign-in
/// sends a person back to, so that no link can make it send them elsewhere.
fn local_page(path: &str) -> bool {
    path.starts_with("/ui/")
        && !path.contains("//")
        && !path.contains('\\')
        && path.bytes().all(|b| b.is_ascii_graphic())
}

/// The connection's address, for the record of what a person did.
async fn client_ip(parts: &mut Parts, state: &ApiState) -> Option<IpAddr> {
    let ClientIp(ip) = ClientIp::from_request_parts(parts, state)
        .await
        .unwrap_or(ClientIp(None));
    ip
}

/// A posted form's fields in order, names repeated as given (`id=1&id=2`).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of field `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of field `name`, in order.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The messages the form picked (`id`): at least one, at most [`MAX_BATCH`].
    fn picked(&self) -> Result<Vec<MessageId>, ApiError> {
        let ids = self
            .all("id")
            .map(message_id)
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err(ApiError::bad_request("pick at least one message"));
        }
        if ids.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!(
                "{} messages picked, at most {MAX_BATCH} at once",
                ids.len()
            )));
        }
        Ok(ids)
    }
}

/// What came of a form's actions: done, refused (the message had moved on), and not
/// known to be committed (no quorum in time).
#[derive(Default)]
struct Tally {
    done: usize,
    refused: usize,
    failed: usize,
}

/// Proposes every command at once, and waits for them all.
async fn propose_each(s: &ApiState, commands: Vec<Command>) -> Result<Tally, ApiError> {
    let mut proposals = tokio::task::JoinSet::new();
    for command in commands {
        let proposer = s.node.proposer().clone();
        proposals.spawn(async move { proposer.propose(command).await });
    }
    let mut tally = Tally::default();
    while let Some(joined) = proposals.join_next().await {
        match joined.map_err(ApiError::internal)? {
            Ok(result) if result.refused.is_none() => tally.done += 1,
            Ok(_) => tally.refused += 1,
            Err(_) => tally.failed += 1,
        }
    }
    Ok(tally)
}

/// The answer to a form's action: back to `back` when it is a console page under
/// `within` (else to `home`), saying what `action` did.
fn told(back: Option<&str>, within: &str, home: &str, action: &str, tally: &Tally) -> Response {
    let back = back
        .filter(|b| local_page(b) && b.starts_with(within))
        .unwrap_or(home);
    let separator = if back.contains('?') { '&' } else { '?' };
    see_other(&format!(
        "{back}{separator}action={action}&done={}&refused={}&failed={}",
        tally.done, tally.refused, tally.failed
    ))
}

/// A redirect that a form's POST answers with: the browser GETs `to`.
fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The start of day `text` (`YYYY-MM-DD`, UTC) plus `days`, in Unix milliseconds;
/// `None` when no day is given.
fn day_ms(what: &str, text: &str, days: i64) -> Result<Option<i64>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(text, format).map_err(|_| {
        ApiError::bad_request(format!("{what}: {text:?} is not a day (YYYY-MM-DD)"))
    })?;
    let start = day.midnight().assume_utc().unix_timestamp() + days * 86_400;
    Ok(Some(start * 1000))
}

/// A search's filters as a query string: those given (not blank), in order.
fn search_query(fields: &[(&str, &str)]) -> form_urlencoded::Serializer<'static, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        if !value.trim().is_empty() {
            query.append_pair(name, value);
        }
    }
    query
}

/// `path` with `query`, or alone when the query is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// An address or a domain a person typed into a search, as the store matches it: a
/// domain typed as it is means `@domain`; `None` when nothing was typed.
fn address(typed: &str) -> Option<String> {
    let typed = typed.trim();
    match typed {
        "" => None,
        t if t.contains('@') || t == "<>" => Some(t.to_string()),
        t => Some(format!("@{t}")),
    }
}

/// Why a person's role may not do `what`.
fn forbidden(viewer: &Viewer, what: &str) -> ApiError {
    let caller = viewer.caller();
    ApiError::forbidden(format!(
        "{} has the {} role, which may not {what}",
        caller.name,
        caller.role.as_str()
    ))
}

fn message_id(text: &str) -> Result<MessageId, ApiError> {
    text.trim()
        .parse::<MessageId>()
        .map_err(|e| ApiError::bad_request(format!("{text:?} is not a message id: {e}")))
}

impl Viewer {
    /// The person, as the API's checks and records name a caller.
    pub(crate) fn caller(&self) -> &Caller {
        &self.caller
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_returns_only_to_the_console_s_own_pages() {
        assert!(local_page("/ui/quarantine?sender=a%40b.test"));
        assert!(local_page("/ui/quarantine/0ABC"));
        for elsewhere in [
            "https://evil.test/ui/",
            "//evil.test/ui/",
            "/ui//evil.test",
            "/ui/\\evil.test",
            "/v1/tokens",
            "/ui",
            "/ui/\u{a0}",
        ] {
            assert!(!local_page(elsewhere), "{elsewhere}");
        }
    }
}

//! Signing in and out, and who a console request comes from.
//!
//! A sign-in checks a console user's password (argon2id) or a token's name and
//! token, then proposes the session: it is stored under the SHA-256 of a random
//! secret, which only the person's cookie holds (HttpOnly, SameSite=Strict, Secure
//! when the API is served over TLS, for [`SESSION_MS`]). Every sign-in and every
//! failed one is on record with the name and address; a user is locked for a
//! quarter of an hour after five failures in a row, on every node alike.

use std::net::IpAddr;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, OriginalUri, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_storage::user::{Session, UserCommand};
use bulwark_storage::{Command, Hash, Role};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{client_ip, layout, local_page, return_path, see_other, PageError};
use crate::auth::{digest, Caller};
use crate::routes::ApiState;
use crate::ApiError;

/// The session cookie's name.
const COOKIE: &str = "bulwark_session";
/// How long a session lasts from its sign-in.
const SESSION_MS: i64 = 12 * 60 * 60 * 1000;
/// Longest password a sign-in form may carry (bytes): a user's is at most this, a
/// token is 68 characters.
const MAX_PASSWORD: usize = crate::users::MAX_PASSWORD;

/// The signed-in person a console request comes from.
pub(crate) struct Viewer {
    pub(super) caller: Caller,
    /// What every form of this session carries, and is checked against.
    pub csrf: String,
    /// The connection's address, recorded with what the person does.
    pub client_ip: Option<IpAddr>,
    digest: Hash,
}

impl FromRequestParts<ApiState> for Viewer {
    type Rejection = Response;

    /// The session the cookie names, while it lasts and its person may sign in;
    /// otherwise a redirect to the sign-in page, which comes back here.
    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Response> {
        let uri = OriginalUri::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        // Back to the page asked for, when it is one to GET (not a form's action).
        let back = (parts.method == axum::http::Method::GET)
            .then(|| return_path(&uri))
            .flatten();
        let to_sign_in = || {
            let next = back.clone().unwrap_or_else(|| "/ui/".into());
            let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
            see_other(&format!("/ui/signin?next={next}"))
        };
        let Some(secret) = cookie(&parts.headers) else {
            return Err(to_sign_in());
        };
        let ip = client_ip(parts, s).await;
        match signed_in(s, &secret).await {
            Ok(Some((caller, digest))) => Ok(Viewer {
                caller,
                csrf: csrf_of(&secret),
                client_ip: ip,
                digest,
            }),
            Ok(None) => Err(to_sign_in()),
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

impl Viewer {
    /// The form posted in `body`, once it is known to carry this session's CSRF token
    /// (refused when it is one made by another site, or by a session that has ended).
    pub(crate) fn form(&self, body: &[u8]) -> Result<super::Form, PageError> {
        let form = super::Form::parse(body);
        self.check_csrf(form.get("csrf"))?;
        Ok(form)
    }

    fn check_csrf(&self, presented: Option<&str>) -> Result<(), PageError> {
        if !same_token(presented.unwrap_or(""), &self.csrf) {
            return Err(ApiError::forbidden(
                "this form was not made by your session (it may have ended): reload the page \
                 and try again",
            )
            .into());
        }
        Ok(())
    }
}

/// Whether a form's token is the one expected, compared in a time that does not
/// depend on where they differ (the session's forms and the portal's).
pub(super) fn same_token(presented: &str, expected: &str) -> bool {
    let (presented, expected) = (presented.as_bytes(), expected.as_bytes());
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The session cookie's secret, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// The value of the cookie `name`, if the request has one that is not empty.
pub(super) fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_string())
        })
}

/// The CSRF token of the session whose secret is `secret`: derived from it, so it
/// is known only to whoever holds the cookie, and needs no storage.
fn csrf_of(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"bulwark.csrf");
    hasher.update(secret.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// The person of the live session with secret `secret`, and the session's digest:
/// `None` when there is none, it has expired, its user is gone or changed password
/// since, or its token was revoked.
async fn signed_in(s: &ApiState, secret: &str) -> Result<Option<(Caller, Hash)>, ApiError> {
    let key = digest(secret);
    let node = s.node.clone();
    let now_ms = crate::queue::now_ms();
    let role = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let Some(session) = state.session(&key)? else {
            return Ok(None);
        };
        if session.expires_ms <= now_ms {
            return Ok(None);
        }
        let role = match state.console_user(&session.user)? {
            Some(user) => (session.password_version == user.password_version).then_some(user.role),
            None => state.token_named(&session.user)?.map(|t| t.role),
        };
        Ok::<_, bulwark_storage::Error>(role.map(|role| Caller {
            name: session.user,
            role,
        }))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(role.map(|caller| (caller, key)))
}

#[derive(Deserialize)]
pub(crate) struct FormQuery {
    next: Option<String>,
}

/// `GET /ui/signin?next=PAGE`: the sign-in form (straight to `next` when the
/// request's session is live).
pub(crate) async fn form(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<FormQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let next = query
        .ok()
        .and_then(|Query(q)| q.next)
        .filter(|n| local_page(n))
        .unwrap_or_else(|| "/ui/".into());
    if let Some(secret) = cookie(&headers) {
        if signed_in(&s, &secret).await?.is_some() {
            return Ok(see_other(&next));
        }
    }
    Ok(sign_in_page(StatusCode::OK, &next, None, "").into_response())
}

/// The sign-in page, with what went wrong last time and the name tried.
fn sign_in_page(status: StatusCode, next: &str, problem: Option<&str>, name: &str) -> Response {
    let page = layout::bare(
        "Sign in",
        html! {
            main.signin {
                h1 { "Bulwark" }
                p.lead { "Sign in to the mail gateway's console." }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                form method="post" action="/ui/signin" {
                    input type="hidden" name="next" value=(next);
                    label for="name" { "User name" }
                    input #name type="text" name="name" value=(name) autocomplete="username"
                        autofocus required maxlength="64";
                    label for="password" { "Password" }
                    input #password type="password" name="password"
                        autocomplete="current-password" required;
                    button.primary type="submit" { "Sign in" }
                }
                p.hint {
                    "First time here? Sign in as " strong { "admin" } " with the admin token: "
                    "the gateway printed it when it first started, and keeps it in its data "
                    "directory's " code { "admin.token" } ". Then make a user of your own "
                    "under Users."
                }
            }
        },
    );
    (status, page).into_response()
}

/// `POST /ui/signin` (`name`, `password`, `next`): a session and its cookie, then
/// `next`; or the form again, saying what was wrong.
pub(crate) async fn sign_in(
    State(s): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    crate::auth::ClientIp(ip): crate::auth::ClientIp,
    body: Bytes,
) -> Result<Response, PageError> {
    if !same_origin(&headers, &uri) {
        return Err(ApiError::forbidden("a sign-in posted from another site").into());
    }
    let form = super::Form::parse(&body);
    let field = |name| form.get(name);
    let name = field("name").unwrap_or("").trim();
    let password = field("password").unwrap_or("");
    let next = field("next").filter(|n| local_page(n)).unwrap_or("/ui/");
    if name.is_empty() || password.is_empty() || password.len() > MAX_PASSWORD {
        let problem = "Give your user name and password.";
        return Ok(sign_in_page(
            StatusCode::BAD_REQUEST,
            next,
            Some(problem),
            "",
        ));
    }
    // Not a name anyone can have: said at once, nothing looked up or recorded.
    if crate::tokens::check_name(name).is_err() {
        let problem = "A user name is 1 to 64 of A-Z a-z 0-9 . _ -";
        return Ok(sign_in_page(
            StatusCode::BAD_REQUEST,
            next,
            Some(problem),
            "",
        ));
    }
    match check(&s, name, password, ip).await? {
        Ok(secret) => {
            let secure = if s.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE}={secret}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_MS / 1000
            );
            let mut response = see_other(next);
            response.headers_mut().insert(
                header::SET_COOKIE,
                cookie.parse().map_err(ApiError::internal)?,
            );
            Ok(response)
        }
        Err(problem) => Ok(sign_in_page(
            StatusCode::UNAUTHORIZED,
            next,
            Some(&problem),
            name,
        )),
    }
}

/// What a person is told when a sign-in fails, whatever the reason: a wrong name, a
/// wrong password, a locked user (so that no answer tells a right password or a
/// name that exists).
const REFUSED: &str = "Wrong user name or password, or too many failures in a row: a user \
                       is locked for 15 minutes after five (an administrator lifts it by \
                       setting a new password).";

/// The sign-ins this node is checking: how many at once (each is an argon2 hash of
/// some 19 MiB), and under which names (one at a time a name, so that guesses sent
/// side by side are each counted before the next is checked).
struct Checks {
    slots: tokio::sync::Semaphore,
    names: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Sign-ins checked at once on a node.
const CHECKS_AT_ONCE: usize = 2;

fn checks() -> &'static Checks {
    static CHECKS: OnceLock<Checks> = OnceLock::new();
    CHECKS.get_or_init(|| Checks {
        slots: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        names: std::sync::Mutex::default(),
    })
}

/// A name being checked, given back when the check ends however it ends.
struct Checking(String);

impl Drop for Checking {
    fn drop(&mut self) {
        checks()
            .names
            .lock()
            .expect("sign-in names")
            .remove(&self.0);
    }
}

/// Checks `name`'s password (a user's) or token (a token's), then starts a session
/// on record: its cookie's secret, or what to tell the person. A failure is on
/// record too, and counts towards the user's lock. A name already being checked on
/// this node is refused until that check is done.
async fn check(
    s: &ApiState,
    name: &str,
    password: &str,
    client_ip: Option<IpAddr>,
) -> Result<Result<String, String>, ApiError> {
    let _checking = {
        let mut names = checks().names.lock().expect("sign-in names");
        if !names.insert(name.to_string()) {
            return Ok(Err(format!(
                "A sign-in as {name} is being checked: try again in a moment."
            )));
        }
        Checking(name.to_string())
    };
    let _slot = checks().slots.acquire().await.map_err(ApiError::internal)?;
    let node = s.node.clone();
    let owned = name.to_string();
    let (user, token) = tokio::task::spawn_blocking(move || {
        let state = node.state();
        Ok::<_, bulwark_storage::Error>((state.console_user(&owned)?, state.token_named(&owned)?))
    })
    .await
    .map_err(ApiError::internal)??;
    let now_ms = crate::queue::now_ms();
    // Every path spends one argon2 check, so that timing tells nothing either.
    let (right, version) = match (&user, &token) {
        (Some(user), _) if user.locked_until_ms <= now_ms => (
            verified(user.password.clone(), password).await?,
            user.password_version,
        ),
        (None, Some(token)) => {
            verified(unknown_user_hash()?, password).await?;
            let presented = digest(password);
            let same = presented
                .iter()
                .zip(token.digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            (same, 0)
        }
        // Locked (the rule refuses it, uncounted), or no such name.
        _ => {
            verified(unknown_user_hash()?, password).await?;
            (false, 0)
        }
    };
    if !right {
        let command = UserCommand::SignInFailed {
            name: name.to_string(),
            client_ip,
        };
        s.node
            .proposer()
            .propose(Command::User(Box::new(command)))
            .await?;
        return Ok(Err(REFUSED.into()));
    }
    let role = user
        .as_ref()
        .map(|u| u.role)
        .or(token.as_ref().map(|t| t.role));
    if let Some(role @ (Role::Siem | Role::Metrics)) = role {
        return Ok(Err(format!(
            "The {} role has no pages in the console: it is for programs, over the API.",
            role.as_str()
        )));
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let session = Session {
        digest: digest(&secret),
        user: name.to_string(),
        created_ms: now_ms,
        expires_ms: now_ms + SESSION_MS,
        password_version: version,
    };
    let result = s
        .node
        .proposer()
        .propose(Command::User(Box::new(UserCommand::SignIn {
            session,
            client_ip,
        })))
        .await?;
    Ok(match result.refused {
        Some(_) => Err(REFUSED.into()),
        None => Ok(secret),
    })
}

/// True when `password` is the one of `hash`, checked on a blocking thread.
async fn verified(hash: String, password: &str) -> Result<bool, ApiError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || crate::users::password_matches(&hash, &password))
        .await
        .map_err(ApiError::internal)
}

/// A hash no password is checked against but to spend the time a real check takes.
fn unknown_user_hash() -> Result<String, ApiError> {
    static HASH: OnceLock<String> = OnceLock::new();
    if let Some(hash) = HASH.get() {
        return Ok(hash.clone());
    }
    let hash = crate::users::hash_password(&hex::encode(rand::random::<[u8; 16]>()))?;
    Ok(HASH.get_or_init(|| hash).clone())
}

/// False for a form posted from a page of another origin (the browser's `Origin`
/// names another host than the one asked): no site can sign a visitor in as someone
/// else. A request without `Origin` (not from a browser's form) passes.
pub(super) fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    // HTTP/1.1 names the host in `Host`; HTTP/2 in the request's authority.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host)
}

/// `POST /ui/signout` (`csrf`): the session ends on every node; back to the sign-in
/// page.
pub(crate) async fn sign_out(
    State(s): State<ApiState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, PageError> {
    viewer.form(&body)?;
    s.node
        .proposer()
        .propose(Command::User(Box::new(UserCommand::SignOut {
            digest: viewer.digest,
            client_ip: viewer.client_ip,
        })))
        .await
        .map_err(ApiError::from)?;
    let mut response = see_other("/ui/signin");
    response.headers_mut().insert(
        header::SET_COOKIE,
        format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
            .parse()
            .map_err(ApiError::internal)?,
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_an_empty_one_is_none() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; bulwark_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        headers.insert(header::COOKIE, "bulwark_session=; x=y".parse().unwrap());
        assert_eq!(cookie(&headers), None);
        headers.insert(header::COOKIE, "xbulwark_session=abc".parse().unwrap());
        assert_eq!(cookie(&headers), None);
    }

    #[test]
    fn the_csrf_token_is_the_session_s_own() {
        assert_eq!(csrf_of("one"), csrf_of("one"));
        assert_ne!(csrf_of("one"), csrf_of("two"));
        assert_eq!(csrf_of("one").len(), 32);
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        let path: axum::http::Uri = "/ui/signin".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(
            same_origin(&headers, &path),
            "no Origin: not a browser's form"
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers, &path));
        headers.insert(header::ORIGIN, "https://evil.test".parse().unwrap());
        assert!(!same_origin(&headers, &path));
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&headers, &path));
    }

    #[test]
    fn over_http2_the_host_is_the_request_s_authority() {
        let h2: axum::http::Uri = "https://gw.example.test:8443/ui/signin".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            "https://gw.example.test:8443".parse().unwrap(),
        );
        assert!(same_origin(&headers, &h2));
        headers.insert(header::ORIGIN, "https://evil.test".parse().unwrap());
        assert!(!same_origin(&headers, &h2));
    }
}

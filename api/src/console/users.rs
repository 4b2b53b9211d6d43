//! Users and tokens (admin): the people who sign in and the tokens programs call
//! with. Make a user with a role and a first password, give one a new password (which
//! lifts a lock and ends their older sessions), remove one. Each is the API's own
//! Raft operation (`/v1/users`), recorded under the admin's name.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bulwark_storage::user::UserCommand;
use bulwark_storage::Role;
use maud::html;
use serde::Deserialize;

use super::layout::{page, time, Section};
use super::{see_other, PageError, Viewer};
use crate::auth::Access;
use crate::extract::PathParam;
use crate::routes::ApiState;
use crate::ApiError;

/// The roles a user may be given, as the form offers them.
const ROLES: [Role; 3] = [Role::Operator, Role::Auditor, Role::Admin];

/// What the last change did, told on the page.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Done {
    done: String,
    name: String,
}

/// `GET /ui/users`: the users, what each may do, and the tokens.
pub(crate) async fn list(
    State(s): State<ApiState>,
    viewer: Viewer,
    done: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    admin(&viewer)?;
    let done = done.map(|Query(d)| d).unwrap_or_default();
    let node = s.node.clone();
    let (users, tokens) = tokio::task::spawn_blocking(move || {
        let state = node.state();
        Ok::<_, bulwark_storage::Error>((state.console_users()?, state.tokens()?))
    })
    .await
    .map_err(ApiError::internal)??;
    let now_ms = crate::queue::now_ms();
    let told = match done.done.as_str() {
        "created" => Some("made"),
        "password" => Some("given a new password"),
        "removed" => Some("removed"),
        _ => None,
    };
    let body = html! {
        h1 { "Users and tokens" }
        @if let Some(told) = told { p.notice role="status" { (done.name) " was " (told) "." } }
        div.table-wrap { table {
            thead { tr { th { "User" } th { "Role" } th.wide { "Made" } th { "State" } th { "New password" } th {} } }
            tbody {
                @if users.is_empty() { tr { td colspan="6" .muted { "No users yet: make the first below." } } }
                @for u in &users { tr {
                    td { strong { (u.name) } }
                    td { (u.role.as_str()) }
                    td.wide { (time(u.created_ms)) " by " (u.created_by) }
                    td {
                        @if u.locked_until_ms > now_ms {
                            span.badge.fail { "locked until " (time(u.locked_until_ms)) }
                        } @else { span.badge.pass { "active" } }
                    }
                    td {
                        form.inline method="post" action={"/ui/users/" (u.name) "/password"} {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            input type="password" name="password" minlength="12" required
                                autocomplete="new-password" aria-label={"new password for " (u.name)};
                            button type="submit" { "Set" }
                        }
                    }
                    td {
                        form method="post" action={"/ui/users/" (u.name) "/remove"} {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.danger type="submit" { "Remove" }
                        }
                    }
                } }
            }
        } }
        h2 { "Make a user" }
        form.card.search method="post" action="/ui/users" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            div { label for="new-name" { "Name" }
                input #new-name type="text" name="name" required maxlength="64"
                    pattern="[A-Za-z0-9._\\-]{1,64}" autocomplete="off"; }
            div { label for="new-role" { "Role" }
                select #new-role name="role" {
                    @for role in ROLES { option value=(role.as_str()) { (role.as_str()) } }
                } }
            div { label for="new-password" { "First password (12 characters or more)" }
                input #new-password type="password" name="password" minlength="12" required
                    autocomplete="new-password"; }
            div.actions { button.primary type="submit" { "Make user" } }
        }
        p.muted {
            "Operators release, delete and preview mail; auditors read traces and the log but "
            "not what messages say; admins do everything, users and tokens included. A name is "
            "given once: a removed user's or a revoked token's is never given again."
        }
        h2 { "Tokens" }
        div.table-wrap { table {
            thead { tr { th { "Token" } th { "Role" } th { "Made" } } }
            tbody { @for t in &tokens { tr {
                td { (t.name) } td { (t.role.as_str()) } td { (time(t.created_ms)) " by " (t.created_by) }
            } } }
        } }
        p.muted { "Tokens are made and revoked over the API (" code { "/v1/tokens" } ")." }
    };
    Ok(page(&viewer, "Users and tokens", Section::Users, body).into_response())
}

/// `POST /ui/users` (`csrf`, `name`, `role`, `password`): a new user.
pub(crate) async fn create(
    State(s): State<ApiState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&body)?;
    let field = |name| form.get(name);
    admin(&viewer)?;
    let name = field("name").unwrap_or("").trim();
    crate::users::check_new_user(name)?;
    let role = crate::users::console_role(field("role").unwrap_or(""))?;
    let password = field("password").unwrap_or("");
    crate::users::check_password(password)?;
    let caller = viewer.caller();
    crate::users::create_user(
        &s,
        &caller.name,
        viewer.client_ip,
        name,
        role,
        password.to_string(),
    )
    .await?;
    Ok(done("created", name))
}

/// `POST /ui/users/{name}/password` (`csrf`, `password`).
pub(crate) async fn set_password(
    State(s): State<ApiState>,
    viewer: Viewer,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&body)?;
    admin(&viewer)?;
    crate::tokens::check_name(&name)?;
    let password = form.get("password").unwrap_or("");
    crate::users::check_password(password)?;
    let command = UserCommand::SetPassword {
        name: name.clone(),
        password: crate::users::hashed(password.to_string()).await?,
        user: viewer.caller().name.clone(),
        client_ip: viewer.client_ip,
    };
    crate::users::changed(&s, name.clone(), command).await?;
    Ok(done("password", &name))
}

/// `POST /ui/users/{name}/remove` (`csrf`).
pub(crate) async fn remove(
    State(s): State<ApiState>,
    viewer: Viewer,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    viewer.form(&body)?;
    admin(&viewer)?;
    crate::tokens::check_name(&name)?;
    let command = UserCommand::Remove {
        name: name.clone(),
        user: viewer.caller().name.clone(),
        client_ip: viewer.client_ip,
    };
    crate::users::changed(&s, name.clone(), command).await?;
    Ok(done("removed", &name))
}

/// Back to the users page, saying what was done to whom.
fn done(what: &str, name: &str) -> Response {
    let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    see_other(&format!("/ui/users?done={what}&name={name}"))
}

/// Only an admin manages users and sees tokens.
fn admin(viewer: &Viewer) -> Result<(), PageError> {
    let caller = viewer.caller();
    if Access::Tokens.allows(caller.role) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} has the {} role: only an admin manages users",
        caller.name,
        caller.role.as_str()
    ))
    .into())
}

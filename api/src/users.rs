//! Console users (admin only): the people who sign in to the web console (`/ui/`)
//! with a name and a password, each with a role as tokens have. Create one, list
//! them, set a password, remove one. The password is hashed here (argon2id, a salt of
//! its own) and the cluster keeps only the hash; each change is a Raft operation
//! recorded as `user.created`, `user.password_changed` or `user.removed` with the
//! caller and its address. Users and tokens share one set of names, each given once,
//! so that a name in the log is one identity.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::user::{ConsoleUser, UserCommand, NO_SUCH_USER};
use bulwark_storage::{Command, Role};
use serde::{Deserialize, Serialize};

use crate::auth::{Access, ClientIp};
use crate::extract::{Body, PathParam};
use crate::routes::ApiState;
use crate::ApiError;

/// Shortest password accepted, in characters.
pub(crate) const MIN_PASSWORD: usize = 12;
/// Longest password accepted, in bytes (hashing is the cost, so it is bounded).
pub(crate) const MAX_PASSWORD: usize = 256;

/// The argon2id hash of `password` in PHC form (`$argon2id$v=19$...`), with a salt
/// of its own. Slow on purpose (tens of milliseconds): call it off the async threads.
pub(crate) fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(ApiError::internal)
}

/// True when `password` is the one `hash` (PHC form) was made from. As slow as
/// [`hash_password`].
pub(crate) fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A password a user may be given: [`MIN_PASSWORD`] characters or more, at most
/// [`MAX_PASSWORD`] bytes.
pub(crate) fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "a password has at least {MIN_PASSWORD} characters"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "a password has at most {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

/// A name a new user may take: one a token could take (see
/// `crate::tokens::check_new_name`), and not only dots, which a browser would read as
/// a path of its own in the console's addresses.
pub(crate) fn check_new_user(name: &str) -> Result<(), ApiError> {
    crate::tokens::check_new_name(name)?;
    if name.bytes().all(|b| b == b'.') {
        return Err(ApiError::bad_request(format!(
            "{name:?} is not a user name: a name of dots only"
        )));
    }
    Ok(())
}

/// The role of a console user: admin, operator or auditor (the siem and metrics
/// roles are for programs, which have no pages in the console).
pub(crate) fn console_role(text: &str) -> Result<Role, ApiError> {
    match text.parse().map_err(ApiError::bad_request)? {
        role @ (Role::Admin | Role::Operator | Role::Auditor) => Ok(role),
        other => Err(ApiError::bad_request(format!(
            "a console user is an admin, an operator or an auditor; the {} role is for \
             programs (a token)",
            other.as_str()
        ))),
    }
}

/// `password`'s hash, made on a blocking thread.
pub(crate) async fn hashed(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    /// admin, operator or auditor.
    role: String,
    /// At least 12 characters, at most 256 bytes.
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordRequest {
    /// At least 12 characters, at most 256 bytes.
    password: String,
}

/// A user changed: which, and the event that records it.
// Fields in alphabetical order, as in every answer of the API.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserChange {
    /// The event's hash (hex).
    hash: String,
    name: String,
    /// The event's seq.
    seq: u64,
}

/// The console users (`GET /v1/users`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserList {
    users: Vec<UserInfo>,
}

/// One user: never the password nor its hash.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserInfo {
    /// RFC 3339 UTC.
    created: String,
    /// Who made it.
    created_by: String,
    /// Until when sign-in is refused after repeated failures (RFC 3339 UTC); null
    /// when it is not.
    #[schema(required)]
    locked_until: Option<String>,
    name: String,
    /// admin, operator, auditor, siem or metrics.
    role: &'static str,
}

impl UserInfo {
    fn of(user: &ConsoleUser, now_ms: i64) -> Self {
        UserInfo {
            created: rfc3339(user.created_ms),
            created_by: user.created_by.clone(),
            locked_until: (user.locked_until_ms > now_ms).then(|| rfc3339(user.locked_until_ms)),
            name: user.name.clone(),
            role: user.role.as_str(),
        }
    }
}

/// `POST /v1/users` with `{"name": "...", "role": "...", "password": "..."}`: 201, or
/// 409 when the name is taken (a user's or a token's, now or before: a name is given
/// once).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateRequest, responses((status = 201, description = "created", body = UserChange), (status = 409, description = "the name is a user's or a token's, now or before, the bootstrap admin's (admin), or a system actor's"), (status = 400, description = "a malformed name or role, or a password too short or too long"), (status = 403, description = "not the admin role"), (status = 503, description = "no quorum in time, or a cluster not yet at the feature level of console users (3)")), operation_id = "users_create")]
pub(crate) async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    let caller = s.caller(&headers, Access::Tokens)?;
    let request: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e} (expected {{\"name\": \"...\", \"role\": \"...\", \"password\": \"...\"}})"
        ))
    })?;
    check_new_user(&request.name)?;
    let role = console_role(&request.role)?;
    check_password(&request.password)?;
    let change = create_user(
        &s,
        &caller.name,
        client_ip,
        &request.name,
        role,
        request.password,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(change)))
}

/// Creates user `name` for `creator`: the change on record, or 409 when the name is
/// taken.
pub(crate) async fn create_user(
    s: &ApiState,
    creator: &str,
    client_ip: Option<std::net::IpAddr>,
    name: &str,
    role: Role,
    password: String,
) -> Result<UserChange, ApiError> {
    let now_ms = crate::queue::now_ms();
    let user = ConsoleUser {
        name: name.to_string(),
        role,
        password: hashed(password).await?,
        created_ms: now_ms,
        created_by: creator.to_string(),
        password_set_ms: now_ms,
        password_version: 0,
        failures: 0,
        locked_until_ms: 0,
    };
    let result = s
        .node
        .proposer()
        .propose(Command::User(Box::new(UserCommand::Create {
            user,
            client_ip,
        })))
        .await?;
    if let Some(refused) = result.refused {
        return Err(ApiError::conflict(format!(
            "{refused} (a name is given once, so that each name in the log is one identity)"
        )));
    }
    Ok(UserChange {
        hash: hex::encode(result.hash),
        name: name.to_string(),
        seq: result.seq,
    })
}

/// `GET /v1/users`: every user's name, role, who made it when, and whether it is
/// locked (never a password or its hash).
#[utoipa::path(get, path = "/v1/users", tag = "users", responses((status = 200, description = "names, roles, who made them when, locks", body = UserList), (status = 403, description = "not the admin role")), operation_id = "users_list")]
pub(crate) async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<UserList>, ApiError> {
    s.caller(&headers, Access::Tokens)?;
    let node = s.node.clone();
    let users = tokio::task::spawn_blocking(move || node.state().console_users())
        .await
        .map_err(ApiError::internal)??;
    let now_ms = crate::queue::now_ms();
    Ok(Json(UserList {
        users: users.iter().map(|u| UserInfo::of(u, now_ms)).collect(),
    }))
}

/// `PUT /v1/users/{name}/password` with `{"password": "..."}`: the new password
/// works at once on every node, the user's sessions begun before it end, and a lock
/// after failed sign-ins is lifted.
#[utoipa::path(put, path = "/v1/users/{name}/password", tag = "users", params(("name" = String, Path, description = "user name", pattern = "^[A-Za-z0-9._-]{1,64}$")), request_body = PasswordRequest, responses((status = 200, description = "changed", body = UserChange), (status = 404, description = "no such user"), (status = 400, description = "not a user name, or a password too short or too long"), (status = 403, description = "not the admin role"), (status = 503, description = "no quorum in time, or a cluster not yet at the feature level of console users (3)")), operation_id = "users_password")]
pub(crate) async fn set_password(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(name): PathParam<String>,
    Body(body): Body,
) -> Result<Json<UserChange>, ApiError> {
    let caller = s.caller(&headers, Access::Tokens)?;
    crate::tokens::check_name(&name)?;
    let request: PasswordRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("body: {e} (expected {{\"password\": \"...\"}})"))
    })?;
    check_password(&request.password)?;
    let command = UserCommand::SetPassword {
        name: name.clone(),
        password: hashed(request.password).await?,
        user: caller.name,
        client_ip,
    };
    changed(&s, name, command).await.map(Json)
}

/// `DELETE /v1/users/{name}`: the user can no longer sign in, and their sessions end,
/// on every node once applied; the name is not given again.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users", params(("name" = String, Path, description = "user name", pattern = "^[A-Za-z0-9._-]{1,64}$")), responses((status = 200, description = "removed", body = UserChange), (status = 404, description = "no such user"), (status = 400, description = "not a user name"), (status = 403, description = "not the admin role"), (status = 503, description = "no quorum in time, or a cluster not yet at the feature level of console users (3)")), operation_id = "users_remove")]
pub(crate) async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(name): PathParam<String>,
) -> Result<Json<UserChange>, ApiError> {
    let caller = s.caller(&headers, Access::Tokens)?;
    crate::tokens::check_name(&name)?;
    let command = UserCommand::Remove {
        name: name.clone(),
        user: caller.name,
        client_ip,
    };
    changed(&s, name, command).await.map(Json)
}

/// Commits `command` on user `name`: the change on record, or 404 when there is no
/// such user.
pub(crate) async fn changed(
    s: &ApiState,
    name: String,
    command: UserCommand,
) -> Result<UserChange, ApiError> {
    let result = s
        .node
        .proposer()
        .propose(Command::User(Box::new(command)))
        .await?;
    if result.refused.is_some() {
        return Err(ApiError::not_found(format!("{NO_SUCH_USER}: {name}")));
    }
    Ok(UserChange {
        hash: hex::encode(result.hash),
        name,
        seq: result.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_takes_its_own_password_only_and_never_holds_it() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"), "{hash}");
        assert!(password_matches(&hash, "correct horse battery"));
        assert!(!password_matches(&hash, "correct horse batterY"));
        assert!(!password_matches("not a hash", "correct horse battery"));
        let again = hash_password("correct horse battery").unwrap();
        assert_ne!(hash, again, "each hash has a salt of its own");
    }

    #[test]
    fn passwords_too_short_or_too_long_are_refused_with_the_limit() {
        let short = check_password("elevenchars").unwrap_err();
        assert!(short.detail.contains("at least 12"), "{}", short.detail);
        assert!(check_password("twelve chars").is_ok());
        assert!(
            check_password(&"é".repeat(12)).is_ok(),
            "characters, not bytes"
        );
        let long = check_password(&"x".repeat(MAX_PASSWORD + 1)).unwrap_err();
        assert!(long.detail.contains("at most 256"), "{}", long.detail);
    }
}

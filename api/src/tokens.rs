//! API tokens (admin only): create one with a role, list them, revoke one. The token
//! is made here from 32 random bytes and shown once in the creation's answer; the
//! cluster keeps only its SHA-256. Each creation and revocation is a Raft operation
//! recorded as `token.created` or `token.revoked` with the caller and its address.
//! A name is given once: never the bootstrap admin's, nor one the system records for
//! what it does by itself, nor one a token had before, so each name in the log is one
//! identity.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::token::{is_system_actor, BOOTSTRAP_ACTOR, NO_SUCH_TOKEN, RETENTION_ACTOR};
use bulwark_storage::{ApiToken, Command, Role, TokenCommand};
use serde::{Deserialize, Serialize};

use crate::auth::{digest, Access, ClientIp};
use crate::extract::{Body, PathParam};
use crate::routes::ApiState;
use crate::ApiError;

/// Longest token name.
const MAX_NAME: usize = 64;
/// Prefix of every token made here, so that one found in a file or a log is
/// recognisable.
const TOKEN_PREFIX: &str = "bwk_";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    role: String,
}

/// A new token, shown this once.
// Fields in alphabetical order, here and in the other answers of this module: they
// were JSON objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenCreated {
    /// The `token.created` event's hash (hex).
    hash: String,
    name: String,
    /// admin, operator, auditor, siem or metrics.
    role: &'static str,
    /// The `token.created` event's seq.
    seq: u64,
    /// The bearer token itself (`bwk_` and 64 hex digits): the cluster keeps only its
    /// SHA-256.
    token: String,
}

/// The live tokens (`GET /v1/tokens`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    tokens: Vec<TokenInfo>,
}

/// One live token: never the token or its digest.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenInfo {
    /// RFC 3339 UTC.
    created: String,
    /// The token's name that made it (`bootstrap` for the bootstrap admin's).
    created_by: String,
    name: String,
    /// admin, operator, auditor, siem or metrics.
    role: &'static str,
}

/// A revoked token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenRevoked {
    /// The `token.revoked` event's hash (hex).
    hash: String,
    name: String,
    /// The `token.revoked` event's seq.
    seq: u64,
}

/// `POST /v1/tokens` with `{"name": "...", "role": "admin|operator|auditor|siem"}`:
/// 201 with the token (shown this once), or 409 when the name is taken: a live or a
/// revoked token's, the bootstrap admin's, or a system actor's.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateRequest, responses((status = 201, description = "the token, shown once", body = TokenCreated), (status = 409, description = "the name is taken: a live or a revoked token's (a name is given once), the bootstrap admin's (admin), or one the system records for what it does by itself (bootstrap, retention), in any case"), (status = 400, description = "a malformed name or role"), (status = 403, description = "not the admin role")), operation_id = "tokens_create")]
pub(crate) async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    let caller = s.caller(&headers, Access::Tokens)?;
    let request: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e} (expected {{\"name\": \"...\", \"role\": \"...\"}})"
        ))
    })?;
    check_new_name(&request.name)?;
    let role: Role = request.role.parse().map_err(ApiError::bad_request)?;
    let secret: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let now_ms = crate::queue::now_ms();
    let result = s
        .node
        .proposer()
        .propose(Command::Token(Box::new(TokenCommand::CreateUnused {
            token: ApiToken {
                name: request.name.clone(),
                role,
                digest: digest(&token),
                created_ms: now_ms,
                created_by: caller.name,
            },
            client_ip,
        })))
        .await?;
    if let Some(refused) = result.refused {
        return Err(ApiError::conflict(format!(
            "{refused} (a name is given once, so that each name in the log is one identity)"
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            hash: hex::encode(result.hash),
            name: request.name,
            role: role.as_str(),
            seq: result.seq,
            token,
        }),
    ))
}

/// `GET /v1/tokens`: every live token's name, role, and who made it when (never the
/// token or its digest).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, description = "names, roles, who made them when", body = TokenList), (status = 403, description = "not the admin role")), operation_id = "tokens_list")]
pub(crate) async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<TokenList>, ApiError> {
    s.caller(&headers, Access::Tokens)?;
    let node = s.node.clone();
    let tokens = tokio::task::spawn_blocking(move || node.state().tokens())
        .await
        .map_err(ApiError::internal)??;
    let tokens = tokens
        .iter()
        .map(|t| TokenInfo {
            created: rfc3339(t.created_ms),
            created_by: t.created_by.clone(),
            name: t.name.clone(),
            role: t.role.as_str(),
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /v1/tokens/{name}`: the token stops working on every node once applied;
/// 404 when there is none of that name.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "token name", pattern = "^[A-Za-z0-9._-]{1,64}$")), responses((status = 200, description = "revoked", body = TokenRevoked), (status = 404, description = "no such token"), (status = 400, description = "not a token name"), (status = 403, description = "not the admin role")), operation_id = "tokens_revoke")]
pub(crate) async fn revoke(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(name): PathParam<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    let caller = s.caller(&headers, Access::Tokens)?;
    check_name(&name)?;
    let result = s
        .node
        .proposer()
        .propose(Command::Token(Box::new(TokenCommand::Revoke {
            name: name.clone(),
            user: caller.name,
            client_ip,
        })))
        .await?;
    if result.refused.is_some() {
        return Err(ApiError::not_found(format!("{NO_SUCH_TOKEN}: {name}")));
    }
    Ok(Json(TokenRevoked {
        hash: hex::encode(result.hash),
        name,
        seq: result.seq,
    }))
}

/// A token name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "a token name is 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -, not {name:?}"
        )));
    }
    Ok(())
}

/// A name a new token may take (409 when not): not the bootstrap admin's, which only
/// the cluster's first leader gives (to its `api.admin_token_file`), nor one the
/// system records as the actor of what it does by itself; in any case, as a person
/// reading the log would not tell them apart.
pub(crate) fn check_new_name(name: &str) -> Result<(), ApiError> {
    check_name(name)?;
    if name.eq_ignore_ascii_case(crate::BOOTSTRAP_ADMIN) {
        return Err(ApiError::conflict(format!(
            "{name:?} names the cluster's bootstrap admin (a node's api.admin_token_file)"
        )));
    }
    if is_system_actor(name) {
        return Err(ApiError::conflict(format!(
            "{name:?} is the name the log gives the system for what it does by itself \
             ({BOOTSTRAP_ACTOR} enrolling the bootstrap admin, {RETENTION_ACTOR} expiring \
             the quarantine)"
        )));
    }
    Ok(())
}

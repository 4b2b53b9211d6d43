//! Bearer-token authentication and roles. The admin token (from
//! `api.admin_token_file`) is the node's own; further tokens are created and revoked
//! through the API (`/v1/tokens`) and replicated, each with a role
//! ([`bulwark_storage::Role`]). Tokens are compared by their SHA-256 digest.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bulwark_storage::Role;
use sha2::{Digest, Sha256};

use crate::routes::ApiState;
use crate::ApiError;

/// The admin token, kept only as a digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken {
            digest: digest(token),
        }
    }
}

/// The SHA-256 of a token as presented (surrounding whitespace ignored).
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// What a call needs its caller's role to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The event log: list, export, stream, verify. Every role.
    Events,
    /// Message traces and the metadata of the queue, the quarantine and the
    /// classifier: admin, operator, auditor.
    Messages,
    /// What a message says (preview, raw download): admin, operator.
    Content,
    /// Queue and quarantine actions, training: admin, operator.
    Act,
    /// Audit notes: admin, operator, auditor.
    Note,
    /// Creating, listing and revoking tokens: admin.
    Tokens,
    /// Adding, promoting and removing cluster members: admin.
    Cluster,
    /// Writing a backup of the node's state: admin.
    Backup,
}

impl Access {
    pub(crate) fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Access::Events, _)
                | (
                    Access::Messages | Access::Note,
                    Role::Operator | Role::Auditor
                )
                | (Access::Content | Access::Act, Role::Operator)
        )
    }

    fn what(self) -> &'static str {
        match self {
            Access::Events => "read events",
            Access::Messages => "read messages",
            Access::Content => "read message contents",
            Access::Act => "act on messages",
            Access::Note => "write audit notes",
            Access::Tokens => "manage tokens",
            Access::Cluster => "change the cluster's membership",
            Access::Backup => "take backups",
        }
    }
}

/// Who is calling: the token's name (`admin` for the admin token) and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    pub name: String,
    pub role: Role,
}

impl ApiState {
    /// The caller the request's `Authorization: Bearer` token names, if its role
    /// allows `access`: 401 without a valid token, 403 when the role does not allow.
    pub(crate) fn caller(&self, headers: &HeaderMap, access: Access) -> Result<Caller, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        let digest = digest(presented);
        let differing = digest
            .iter()
            .zip(self.admin.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        let caller = if differing == 0 {
            Caller {
                name: "admin".into(),
                role: Role::Admin,
            }
        } else {
            match self.node.state().token_by_digest(&digest)? {
                Some(token) => Caller {
                    name: token.name,
                    role: token.role,
                },
                None => return Err(ApiError::unauthorized()),
            }
        };
        if !access.allows(caller.role) {
            return Err(ApiError::forbidden(format!(
                "token {:?} has the {} role, which may not {}",
                caller.name,
                caller.role.as_str(),
                access.what()
            )));
        }
        Ok(caller)
    }
}

/// The address of the caller's connection, recorded with the actions it takes. Only
/// the peer address is used: a forwarding header is the client's word, not a fact.
/// `None` when the router is served without connection info (as in unit tests).
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

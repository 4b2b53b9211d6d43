//! Bearer-token authentication and roles. Tokens are created and revoked through the
//! API (`/v1/tokens`) and replicated, each with a name and a role
//! ([`bulwark_storage::Role`]); the first node to lead a new cluster enrols its admin
//! token file (`api.admin_token_file`) as the cluster's one bootstrap admin, `admin`.
//! A node's own file token that is not that one still works on its node, as
//! `admin@nodeN`, so every action names who took it. Tokens are compared by their
//! SHA-256 digest.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bulwark_storage::Role;
use sha2::{Digest, Sha256};

use crate::routes::ApiState;
use crate::ApiError;

/// The name of the cluster's bootstrap admin token.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// The node's admin token file, kept only as a digest, and the name its calls are
/// recorded under when it is not a replicated token.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    name: String,
}

impl AdminToken {
    /// The admin token of node `node`.
    pub fn new(token: &str, node: u64) -> Self {
        AdminToken {
            digest: digest(token),
            name: format!("admin@node{node}"),
        }
    }

    /// The token's SHA-256, as the replicated tokens are stored.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// The SHA-256 of a token as presented (surrounding whitespace ignored).
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// What a call needs its caller's role to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The event log: list, export, stream, verify. Every role but metrics.
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
    /// Creating, listing and revoking tokens, and the console users: admin.
    Tokens,
    /// Adding, promoting and removing cluster members: admin.
    Cluster,
    /// Writing a backup of the node's state: admin.
    Backup,
    /// Sending the quarantine digest now: admin.
    Digest,
    /// The cluster's policy and its history: every role but metrics.
    Policy,
    /// Changing the cluster's policy: admin; operator for the allow and block lists
    /// (checked by the handler, which sees what changes).
    PolicyChange,
    /// The metrics and the cluster's status, when `api.public_status = false`: every
    /// role.
    Status,
}

impl Access {
    pub(crate) fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Access::Status, _)
                | (
                    Access::Events | Access::Policy,
                    Role::Operator | Role::Auditor | Role::Siem
                )
                | (Access::PolicyChange, Role::Operator)
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
            Access::Tokens => "manage tokens and users",
            Access::Cluster => "change the cluster's membership",
            Access::Backup => "take backups",
            Access::Digest => "send the quarantine digest",
            Access::Policy => "read the policy",
            Access::PolicyChange => "change the policy",
            Access::Status => "read the metrics and the cluster's status",
        }
    }
}

/// Who is calling: the token's name and role.
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
        let caller = match self.node.state().token_by_digest(&digest)? {
            Some(token) => Caller {
                name: token.name,
                role: token.role,
            },
            None => {
                let differing = digest
                    .iter()
                    .zip(self.admin.digest.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if differing != 0 {
                    return Err(ApiError::unauthorized());
                }
                // Until the cluster has any token (a new cluster's first moments,
                // before its bootstrap admin is enrolled), a node's file token is
                // the candidate for it.
                let name = if self.node.state().tokens()?.is_empty() {
                    BOOTSTRAP_ADMIN.to_string()
                } else {
                    self.admin.name.clone()
                };
                Caller {
                    name,
                    role: Role::Admin,
                }
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

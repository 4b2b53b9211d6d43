//! API tokens, replicated: a named bearer token with a role, created and revoked
//! through Raft so that every node accepts the same tokens. Only the SHA-256 of a
//! token is stored (column family `tokens`, under its digest and under its name);
//! the token itself is shown once, to whoever created it. A revoked token's name is
//! kept, so that no later token takes it, and no token takes a console user's name
//! ([`crate::user`]): a name in the log means one identity.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::Hash;

/// What a token may do. The admin token file's token is `Admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything, tokens included.
    Admin,
    /// Quarantine and queue: read, preview, release, delete, retry, hold; training.
    Operator,
    /// Reads: events, message traces, queue and quarantine metadata (not contents);
    /// writes audit notes.
    Auditor,
    /// Reads events only: list, export, stream, verify.
    Siem,
    /// Reads the node's metrics and the cluster's status only, where
    /// `api.public_status = false` puts them behind a token (Prometheus).
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Siem => "siem",
            Role::Metrics => "metrics",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "siem" => Ok(Role::Siem),
            "metrics" => Ok(Role::Metrics),
            other => Err(format!(
                "{other:?} is not a role (admin, operator, auditor, siem, metrics)"
            )),
        }
    }
}

/// A stored token: its name, role and digest, and who made it when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token.
    pub digest: Hash,
    pub created_ms: i64,
    pub created_by: String,
}

/// A token's creation or revocation, as the API proposes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenCommand {
    /// Refused when the name is taken.
    Create {
        token: ApiToken,
        client_ip: Option<IpAddr>,
    },
    /// Refused when no token has that name.
    Revoke {
        name: String,
        user: String,
        client_ip: Option<IpAddr>,
    },
    /// Refused when the name is a live token's or a revoked one's, or a console user's
    /// (live or removed). What this build
    /// proposes; [`TokenCommand::Create`] is what older builds proposed, still applied
    /// as they applied it.
    CreateUnused {
        token: ApiToken,
        client_ip: Option<IpAddr>,
    },
}

/// The `token.created` or `token.revoked` event: which token, its role, who did it and
/// from where (never the token nor its digest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenChanged {
    pub name: String,
    pub role: Role,
    pub created: bool,
    pub user: String,
    pub client_ip: Option<IpAddr>,
}

impl TokenChanged {
    /// The action, as the event's `action` names it: `token.create` or `token.revoke`.
    pub fn action(&self) -> &'static str {
        if self.created {
            "token.create"
        } else {
            "token.revoke"
        }
    }
}

/// Why a creation is refused.
pub const TOKEN_TAKEN: &str = "a token of that name exists";
/// Why a creation is refused when a revoked token had the name.
pub const TOKEN_NAME_RETIRED: &str = "a revoked token had that name";
/// Why a revocation is refused.
pub const NO_SUCH_TOKEN: &str = "no token of that name";

/// The actor recorded when the cluster enrols its bootstrap admin by itself.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";
/// The actor recorded when the quarantine's retention expires a message.
pub const RETENTION_ACTOR: &str = "retention";

/// The actor recorded for what node `node`'s configuration file did (the policy it
/// seeded): `config@nodeN`.
pub fn config_actor(node: u64) -> String {
    format!("config@node{node}")
}

/// True when `name` is an actor the system records for what it does by itself,
/// never an API caller: [`BOOTSTRAP_ACTOR`] or [`RETENTION_ACTOR`] (without regard
/// to ASCII case, as a person reading the log would take them), or a
/// [`config_actor`].
pub fn is_system_actor(name: &str) -> bool {
    let config = name
        .strip_prefix("config@node")
        .is_some_and(|node| !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit()));
    config
        || name.eq_ignore_ascii_case(BOOTSTRAP_ACTOR)
        || name.eq_ignore_ascii_case(RETENTION_ACTOR)
}

/// Key of a token under its digest.
pub fn digest_key(digest: &Hash) -> Vec<u8> {
    let mut key = b"d/".to_vec();
    key.extend_from_slice(digest);
    key
}

/// Key of a token under its name.
pub fn name_key(name: &str) -> Vec<u8> {
    let mut key = b"n/".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a revoked token's name, kept (with an empty value) so no token takes it again.
pub fn retired_key(name: &str) -> Vec<u8> {
    let mut key = b"r/".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_actors_are_known_whatever_their_case_and_persons_are_not() {
        for name in [
            "bootstrap",
            "Retention",
            config_actor(3).as_str(),
            "config@node12",
        ] {
            assert!(is_system_actor(name), "{name}");
        }
        for name in [
            "admin",
            "admin@node1",
            "config@node",
            "config@nodex",
            "Config@node1",
        ] {
            assert!(!is_system_actor(name), "{name}");
        }
    }
}

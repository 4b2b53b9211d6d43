//! Console users, replicated: named people who sign in to the web console with a
//! password, and the sessions they sign in to. Created, changed and removed through
//! Raft like API tokens, so that every node lets the same people in. Only an argon2id
//! hash of a password is stored, and only the SHA-256 of a session cookie's secret
//! (column family `tokens`, beside the tokens: [`user_key`], [`retired_user_key`],
//! [`session_key`]). A removed user's name is kept, and a name is a user's or a
//! token's, never both: a name in the log means one identity.
//!
//! Failed sign-ins are replicated too: [`MAX_FAILURES`] in a row lock a user out for
//! [`LOCKOUT_MS`] on every node.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::Hash;
use crate::token::Role;

/// A person who signs in to the console.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleUser {
    /// The name they sign in with.
    pub name: String,
    /// What they may do, as a token of that role may.
    pub role: Role,
    /// The password's argon2id hash as a PHC string, never the password.
    pub password: String,
    /// When they were created (Unix milliseconds).
    pub created_ms: i64,
    /// Who created them.
    pub created_by: String,
    /// When the password was last set (creation or change).
    pub password_set_ms: i64,
    /// How many times the password was changed: a session lets its user in only while
    /// it has the number of the password it was begun with, so a change ends the
    /// older sessions on every node, whatever their clocks say.
    pub password_version: u64,
    /// Failed sign-ins in a row since the last success or lockout.
    pub failures: u32,
    /// Unix milliseconds until which sign-in is refused (0: not locked).
    pub locked_until_ms: i64,
}

/// A signed-in session: only the SHA-256 of the cookie's secret is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 of the cookie's secret.
    pub digest: Hash,
    /// The user signed in.
    pub user: String,
    /// When they signed in (Unix milliseconds).
    pub created_ms: i64,
    /// Unix milliseconds after which the session no longer lets its user in.
    pub expires_ms: i64,
    /// The user's [`ConsoleUser::password_version`] whose password it was begun with
    /// (0 for a token's session).
    pub password_version: u64,
}

/// A change to the console's users or their sessions, as the API proposes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserCommand {
    /// Refused when a user or a token has or had the name.
    Create {
        user: ConsoleUser,
        client_ip: Option<IpAddr>,
    },
    /// Sets user `name`'s password hash (and unlocks them); `user` did it. Refused
    /// when no user has that name.
    SetPassword {
        name: String,
        password: String,
        user: String,
        client_ip: Option<IpAddr>,
    },
    /// Removes user `name` and keeps the name; `user` did it. Refused when no user has
    /// that name.
    Remove {
        name: String,
        user: String,
        client_ip: Option<IpAddr>,
    },
    /// `session.user` signed in with the right password: the session is stored.
    /// Refused when no user has the name or the user is locked.
    SignIn {
        session: Session,
        client_ip: Option<IpAddr>,
    },
    /// Someone tried to sign in as `name` with a wrong password (or a name no user
    /// has): counted towards the user's lockout.
    SignInFailed {
        name: String,
        client_ip: Option<IpAddr>,
    },
    /// The session whose cookie's secret has SHA-256 `digest` ends.
    SignOut {
        digest: Hash,
        client_ip: Option<IpAddr>,
    },
}

/// What happened to a user or their session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserAction {
    /// A user was created (`user.created`).
    Created,
    /// A user was removed (`user.removed`).
    Removed,
    /// A user's password was set anew (`user.password_changed`).
    PasswordChanged,
    /// A user signed in (`console.signin`).
    SignedIn,
    /// A sign-in was refused: a wrong password or user name, or a locked user
    /// (`console.signin_failed`).
    SignInFailed,
    /// A user signed out (`console.signout`).
    SignedOut,
}

impl UserAction {
    /// The event type this action is recorded as.
    pub fn type_name(self) -> &'static str {
        match self {
            UserAction::Created => "user.created",
            UserAction::Removed => "user.removed",
            UserAction::PasswordChanged => "user.password_changed",
            UserAction::SignedIn => "console.signin",
            UserAction::SignInFailed => "console.signin_failed",
            UserAction::SignedOut => "console.signout",
        }
    }
}

/// The event of a user's creation, removal or password change, or of a sign-in,
/// refused sign-in or sign-out: who, what, from where (never a password, its hash
/// nor a session's digest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserChanged {
    /// What happened.
    pub action: UserAction,
    /// The person concerned.
    pub name: String,
    /// Their role, when they are a user.
    pub role: Option<Role>,
    /// Who did it (the person themself for sign-ins and sign-outs).
    pub user: String,
    /// The address the request came from, as the API saw it.
    pub client_ip: Option<IpAddr>,
    /// Why it was refused (a failed sign-in's reason); `None`: done.
    pub refused: Option<String>,
    /// Set when this event locked the user: until when (Unix milliseconds).
    pub locked_until_ms: Option<i64>,
}

/// Why a sign-in is refused when the password it was checked against has changed
/// meanwhile.
pub const PASSWORD_CHANGED: &str = "the password changed while it was checked";

/// Failed sign-ins in a row that lock a user.
pub const MAX_FAILURES: u32 = 5;
/// How long a user stays locked, in milliseconds.
pub const LOCKOUT_MS: i64 = 15 * 60 * 1000;

/// Why a creation is refused.
pub const USER_TAKEN: &str = "a user or token of that name exists or existed";
/// Why a password change, a removal or a sign-in is refused.
pub const NO_SUCH_USER: &str = "no user of that name";
/// Why a sign-in with the right password is refused.
pub const LOCKED: &str = "locked after repeated failed sign-ins";
/// What a failed sign-in records: the same whether the name or the password was
/// wrong, so the log tells no one which names exist.
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";

/// Key of a user under their name.
pub fn user_key(name: &str) -> Vec<u8> {
    let mut key = b"u/".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a removed user's name, kept (with an empty value) so no user or token takes
/// it again.
pub fn retired_user_key(name: &str) -> Vec<u8> {
    let mut key = b"ur/".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a session under the SHA-256 of its cookie's secret.
pub fn session_key(digest: &Hash) -> Vec<u8> {
    let mut key = b"s/".to_vec();
    key.extend_from_slice(digest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_s_key_never_begins_a_retired_name_s_nor_a_token_s() {
        let users = user_key("");
        for other in [
            retired_user_key("alice"),
            session_key(&[b'u'; 32]),
            crate::token::name_key("alice"),
            crate::token::retired_key("alice"),
            crate::token::digest_key(&[b'u'; 32]),
        ] {
            assert!(!other.starts_with(&users), "{other:?}");
        }
        assert!(user_key("ur").starts_with(&users));
    }
}

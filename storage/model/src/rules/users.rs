//! Console users and their sessions: a user created under a name no user or token has
//! or had, given a new password or removed by name; a session begun by a sign-in with
//! the right password unless the user is locked (or by a live token's name, signed in
//! with the token), and ended by a sign-out. Wrong
//! passwords are counted: [`MAX_FAILURES`] in a row lock the user for [`LOCKOUT_MS`]
//! from the operation's time. A refused creation, password change or removal is
//! recorded as an `api.action`, a refused sign-in as `console.signin_failed`.
//!
//! A session outlives neither its user nor their password: the API lets a session in
//! only while its user is live and their password was set before the session began,
//! so a removal or a password change needs no session deleted.

use std::net::IpAddr;

use super::{Changes, Outcome, Stored, Write};
use crate::event::{ApiAction, EventKind, Op};
use crate::token::Role;
use crate::user::{
    ConsoleUser, Session, UserAction, UserChanged, UserCommand, LOCKED, LOCKOUT_MS, MAX_FAILURES,
    NO_SUCH_USER, PASSWORD_CHANGED, USER_TAKEN, WRONG_CREDENTIALS,
};

/// A change to the console's users or sessions, against them as the batch has left
/// them, at the operation's time.
pub fn user<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    command: &UserCommand,
    op: &Op,
) -> Result<Outcome, S::Error> {
    Ok(match command {
        UserCommand::Create { user, client_ip } => {
            let name = &user.name;
            let taken = changes.user(store, name)?.is_some()
                || changes.user_retired(store, name)?
                || changes.token(store, name)?.is_some()
                || changes.token_retired(store, name)?;
            if taken {
                return Ok(refusal(
                    "user.create",
                    &user.created_by,
                    *client_ip,
                    USER_TAKEN,
                    name,
                ));
            }
            let event = changed(
                UserAction::Created,
                name,
                Some(user.role),
                &user.created_by,
                *client_ip,
            );
            keep(changes, user.clone());
            (vec![recorded(event)], None)
        }
        UserCommand::SetPassword {
            name,
            password,
            user,
            client_ip,
        } => match changes.user(store, name)? {
            None => refusal("user.password", user, *client_ip, NO_SUCH_USER, name),
            Some(mut existing) => {
                existing.password = password.clone();
                existing.password_set_ms = op.time_ms;
                existing.password_version = existing.password_version.saturating_add(1);
                existing.failures = 0;
                existing.locked_until_ms = 0;
                let event = changed(
                    UserAction::PasswordChanged,
                    name,
                    Some(existing.role),
                    user,
                    *client_ip,
                );
                keep(changes, existing);
                (vec![recorded(event)], None)
            }
        },
        UserCommand::Remove {
            name,
            user,
            client_ip,
        } => match changes.user(store, name)? {
            None => refusal("user.remove", user, *client_ip, NO_SUCH_USER, name),
            Some(existing) => {
                changes.writes.push(Write::DropUser(name.clone()));
                changes.users.insert(name.clone(), None);
                let event = changed(
                    UserAction::Removed,
                    name,
                    Some(existing.role),
                    user,
                    *client_ip,
                );
                (vec![recorded(event)], None)
            }
        },
        UserCommand::SignIn { session, client_ip } => {
            let name = &session.user;
            let failed = |role, reason: &str| {
                let event = UserChanged {
                    refused: Some(reason.into()),
                    ..changed(UserAction::SignInFailed, name, role, name, *client_ip)
                };
                (vec![recorded(event)], Some(reason.to_string()))
            };
            let user = changes.user(store, name)?;
            let token = match user {
                Some(_) => None,
                None => changes.token(store, name)?,
            };
            // The session's times are the operation's, the same on every node.
            let stored = Session {
                created_ms: op.time_ms,
                expires_ms: op
                    .time_ms
                    .saturating_add(session.expires_ms.saturating_sub(session.created_ms).max(0)),
                ..session.clone()
            };
            let mut begin = |role| {
                changes.writes.push(Write::Session(stored.clone()));
                changes.sessions.insert(stored.digest, Some(stored.clone()));
                changed(UserAction::SignedIn, name, role, name, *client_ip)
            };
            match (user, token) {
                // A token's name, signed in with the token (its secret is the check).
                (None, Some(token)) => (vec![recorded(begin(Some(token.role)))], None),
                (None, None) => failed(None, NO_SUCH_USER),
                (Some(user), _) if user.locked_until_ms > op.time_ms => {
                    failed(Some(user.role), LOCKED)
                }
                (Some(user), _) if user.password_version != session.password_version => {
                    failed(Some(user.role), PASSWORD_CHANGED)
                }
                (Some(mut user), _) => {
                    let event = begin(Some(user.role));
                    if user.failures != 0 || user.locked_until_ms != 0 {
                        user.failures = 0;
                        user.locked_until_ms = 0;
                        keep(changes, user);
                    }
                    (vec![recorded(event)], None)
                }
            }
        }
        UserCommand::SignInFailed { name, client_ip } => {
            let failed = |role| UserChanged {
                refused: Some(WRONG_CREDENTIALS.into()),
                ..changed(UserAction::SignInFailed, name, role, name, *client_ip)
            };
            match changes.user(store, name)? {
                // A record of a failure, done as asked: nothing refused.
                None => (vec![recorded(failed(None))], None),
                // Tried while locked: on record, but not counted (no one keeps a user
                // locked by trying on), and refused as the sign-in would be.
                Some(user) if user.locked_until_ms > op.time_ms => {
                    let event = UserChanged {
                        refused: Some(LOCKED.into()),
                        ..changed(
                            UserAction::SignInFailed,
                            name,
                            Some(user.role),
                            name,
                            *client_ip,
                        )
                    };
                    (vec![recorded(event)], Some(LOCKED.to_string()))
                }
                Some(mut user) => {
                    user.failures = user.failures.saturating_add(1);
                    let locked = (user.failures >= MAX_FAILURES)
                        .then(|| op.time_ms.saturating_add(LOCKOUT_MS));
                    if let Some(until) = locked {
                        user.locked_until_ms = until;
                        user.failures = 0;
                    }
                    let event = UserChanged {
                        locked_until_ms: locked,
                        ..failed(Some(user.role))
                    };
                    keep(changes, user);
                    (vec![recorded(event)], None)
                }
            }
        }
        UserCommand::SignOut { digest, client_ip } => match changes.session(store, digest)? {
            // Signed out already, or never signed in: nothing to do.
            None => (Vec::new(), None),
            Some(session) => {
                changes.writes.push(Write::DropSession(*digest));
                changes.sessions.insert(*digest, None);
                let role = changes.user(store, &session.user)?.map(|u| u.role);
                let name = &session.user;
                let event = changed(UserAction::SignedOut, name, role, name, *client_ip);
                (vec![recorded(event)], None)
            }
        },
    })
}

/// Stores `user` as the batch leaves them.
fn keep(changes: &mut Changes<'_>, user: ConsoleUser) {
    changes.writes.push(Write::User(user.clone()));
    changes.users.insert(user.name.clone(), Some(user));
}

/// `action` done to `name` (of role `role`) by `by`, from `client_ip`.
fn changed(
    action: UserAction,
    name: &str,
    role: Option<Role>,
    by: &str,
    client_ip: Option<IpAddr>,
) -> UserChanged {
    UserChanged {
        action,
        name: name.into(),
        role,
        user: by.into(),
        client_ip,
        refused: None,
        locked_until_ms: None,
    }
}

/// The event recording `changed`.
fn recorded(changed: UserChanged) -> EventKind {
    EventKind::UserChanged(Box::new(changed))
}

/// `action` asked by `by` about user `name`, refused for `reason`: an `api.action`.
fn refusal(action: &str, by: &str, client_ip: Option<IpAddr>, reason: &str, name: &str) -> Outcome {
    let refused = format!("{reason}: {name}");
    let event = EventKind::ApiAction(Box::new(ApiAction {
        action: action.into(),
        user: by.into(),
        client_ip,
        message_id: None,
        recipients: Vec::new(),
        refused: Some(refused.clone()),
    }));
    (vec![event], Some(refused))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Hash;
    use crate::rules::memory::{op, Memory};
    use crate::token::{ApiToken, TokenCommand, TOKEN_TAKEN};
    use crate::user::Session;

    const T: i64 = 1_764_300_000_000;

    fn alice() -> ConsoleUser {
        ConsoleUser {
            name: "alice".into(),
            role: Role::Operator,
            password: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_ms: T,
            created_by: "admin".into(),
            password_set_ms: T,
            password_version: 0,
            failures: 0,
            locked_until_ms: 0,
        }
    }

    fn create(user: ConsoleUser) -> UserCommand {
        UserCommand::Create {
            user,
            client_ip: Some("192.0.2.9".parse().unwrap()),
        }
    }

    fn session(name: &str, digest: u8) -> Session {
        Session {
            digest: [digest; 32],
            user: name.into(),
            created_ms: T,
            expires_ms: T + 3_600_000,
            password_version: 0,
        }
    }

    fn sign_in(name: &str, digest: u8) -> UserCommand {
        UserCommand::SignIn {
            session: session(name, digest),
            client_ip: None,
        }
    }

    fn wrong_password(name: &str) -> UserCommand {
        UserCommand::SignInFailed {
            name: name.into(),
            client_ip: None,
        }
    }

    fn sign_out(digest: u8) -> UserCommand {
        UserCommand::SignOut {
            digest: [digest; 32],
            client_ip: None,
        }
    }

    fn remove(name: &str) -> UserCommand {
        UserCommand::Remove {
            name: name.into(),
            user: "admin".into(),
            client_ip: None,
        }
    }

    fn rule(changes: &mut Changes<'_>, store: &Memory, command: &UserCommand, at: i64) -> Outcome {
        super::user(changes, store, command, &op(1, at)).unwrap()
    }

    /// The one event of an outcome, which must be a `UserChanged`.
    fn the_change(kinds: &[EventKind]) -> &UserChanged {
        match kinds {
            [EventKind::UserChanged(changed)] => changed,
            other => panic!("{other:?}"),
        }
    }

    /// The one event of an outcome, which must be an `api.action` refusal of `action`.
    fn refused_action(kinds: &[EventKind], action: &str) {
        assert!(
            matches!(kinds, [EventKind::ApiAction(a)] if a.action == action && a.refused.is_some()),
            "{kinds:?}"
        );
    }

    /// `store` after one batch of `commands`, each at its time; their outcomes.
    fn batch(store: &mut Memory, commands: &[(UserCommand, i64)]) -> Vec<Outcome> {
        let mut changes = Changes::default();
        let outcomes = commands
            .iter()
            .map(|(command, at)| rule(&mut changes, store, command, *at))
            .collect();
        store.commit(changes);
        outcomes
    }

    #[test]
    fn a_user_is_created_once_and_the_creation_recorded_without_the_hash() {
        let mut store = Memory::default();
        let outcomes = batch(&mut store, &[(create(alice()), T), (create(alice()), T)]);
        let (kinds, refused) = &outcomes[0];
        assert_eq!(*refused, None);
        let created = the_change(kinds);
        assert_eq!(created.action, UserAction::Created);
        assert_eq!(
            (created.name.as_str(), created.user.as_str()),
            ("alice", "admin")
        );
        assert_eq!(created.role, Some(Role::Operator));
        assert!(!format!("{created:?}").contains("argon2"));
        let (kinds, refused) = &outcomes[1];
        assert_eq!(*refused, Some(format!("{USER_TAKEN}: alice")));
        refused_action(kinds, "user.create");
        assert_eq!(store.users["alice"], alice());
        let (_, refused) = &batch(&mut store, &[(create(alice()), T)])[0];
        assert!(refused.is_some());
    }

    #[test]
    fn a_removed_user_s_name_is_never_given_again_and_an_unknown_one_is_refused() {
        let mut store = Memory::default();
        let outcomes = batch(
            &mut store,
            &[
                (remove("alice"), T),
                (create(alice()), T),
                (remove("alice"), T),
                (create(alice()), T),
            ],
        );
        assert_eq!(outcomes[0].1, Some(format!("{NO_SUCH_USER}: alice")));
        refused_action(&outcomes[0].0, "user.remove");
        let removed = the_change(&outcomes[2].0);
        assert_eq!(removed.action, UserAction::Removed);
        assert_eq!(removed.role, Some(Role::Operator));
        assert_eq!(outcomes[3].1, Some(format!("{USER_TAKEN}: alice")));
        assert!(store.users.is_empty() && store.retired_users.contains("alice"));
        let outcomes = batch(
            &mut store,
            &[(create(alice()), T), (sign_in("alice", 1), T)],
        );
        assert_eq!(outcomes[0].1, Some(format!("{USER_TAKEN}: alice")));
        assert_eq!(outcomes[1].1.as_deref(), Some(NO_SUCH_USER));
        assert!(store.sessions.is_empty());
    }

    #[test]
    fn a_new_password_is_stored_with_its_time_and_unlocks_the_user() {
        let mut store = Memory::default();
        let locked = ConsoleUser {
            failures: 3,
            locked_until_ms: T + LOCKOUT_MS,
            ..alice()
        };
        store.users.insert("alice".into(), locked);
        let set = |name: &str| UserCommand::SetPassword {
            name: name.into(),
            password: "$argon2id$new".into(),
            user: "admin".into(),
            client_ip: None,
        };
        let outcomes = batch(&mut store, &[(set("bob"), T + 5), (set("alice"), T + 5)]);
        assert_eq!(outcomes[0].1, Some(format!("{NO_SUCH_USER}: bob")));
        refused_action(&outcomes[0].0, "user.password");
        assert_eq!(outcomes[1].1, None);
        let changed = the_change(&outcomes[1].0);
        assert_eq!(changed.action, UserAction::PasswordChanged);
        assert_eq!(changed.user, "admin");
        let alice = &store.users["alice"];
        assert_eq!(alice.password, "$argon2id$new");
        assert_eq!(
            (alice.password_set_ms, alice.failures, alice.locked_until_ms),
            (T + 5, 0, 0)
        );
        assert!(!store.users.contains_key("bob"));
    }

    #[test]
    fn a_sign_in_stores_its_session_and_forgets_earlier_failures() {
        let mut store = Memory::default();
        store.users.insert("alice".into(), alice());
        let outcomes = batch(
            &mut store,
            &[
                (wrong_password("alice"), T),
                (sign_in("alice", 1), T + 1),
                (sign_in("bob", 2), T + 2),
            ],
        );
        assert_eq!(outcomes[1].1, None);
        let signed_in = the_change(&outcomes[1].0);
        assert_eq!(signed_in.action, UserAction::SignedIn);
        assert_eq!(
            (signed_in.name.as_str(), signed_in.user.as_str()),
            ("alice", "alice")
        );
        let stored = Session {
            created_ms: T + 1,
            expires_ms: T + 1 + 3_600_000,
            ..session("alice", 1)
        };
        assert_eq!(store.sessions[&[1; 32]], stored, "the operation's times");
        assert_eq!(store.users["alice"].failures, 0);
        assert_eq!(outcomes[2].1.as_deref(), Some(NO_SUCH_USER));
        let failed = the_change(&outcomes[2].0);
        assert_eq!(failed.action, UserAction::SignInFailed);
        assert_eq!(
            (failed.refused.as_deref(), failed.role),
            (Some(NO_SUCH_USER), None)
        );
        assert!(!store.sessions.contains_key(&[2; 32]));
    }

    #[test]
    fn a_sign_in_checked_against_a_password_since_changed_is_refused() {
        let mut store = Memory::default();
        store.users.insert("alice".into(), alice());
        let new_password = UserCommand::SetPassword {
            name: "alice".into(),
            password: "$argon2id$new".into(),
            user: "admin".into(),
            client_ip: None,
        };
        let outcomes = batch(
            &mut store,
            &[(new_password, T), (sign_in("alice", 1), T + 1)],
        );
        assert_eq!(store.users["alice"].password_version, 1);
        assert_eq!(outcomes[1].1.as_deref(), Some(PASSWORD_CHANGED));
        assert!(store.sessions.is_empty());
        let checked_anew = UserCommand::SignIn {
            session: Session {
                password_version: 1,
                ..session("alice", 2)
            },
            client_ip: None,
        };
        let outcomes = batch(&mut store, &[(checked_anew, T + 2)]);
        assert_eq!(outcomes[0].1, None);
        assert_eq!(store.sessions[&[2; 32]].password_version, 1);
    }

    #[test]
    fn a_live_token_s_name_signs_in_with_its_role_and_a_revoked_one_does_not() {
        let mut store = Memory::default();
        let token = ApiToken {
            name: "splunk".into(),
            role: Role::Siem,
            digest: [9; 32],
            created_ms: T,
            created_by: "admin".into(),
        };
        store.tokens.insert("splunk".into(), token);
        store.retired.insert("old-token".into());
        let outcomes = batch(
            &mut store,
            &[(sign_in("splunk", 1), T), (sign_in("old-token", 2), T + 1)],
        );
        assert_eq!(outcomes[0].1, None);
        let signed_in = the_change(&outcomes[0].0);
        assert_eq!(
            (signed_in.action, signed_in.role),
            (UserAction::SignedIn, Some(Role::Siem))
        );
        assert_eq!(store.sessions[&[1; 32]].user, "splunk");
        assert_eq!(outcomes[1].1.as_deref(), Some(NO_SUCH_USER));
        assert!(!store.sessions.contains_key(&[2; 32]));
    }

    #[test]
    fn failures_in_a_row_lock_the_user_at_the_limit_until_the_lock_runs_out() {
        let mut store = Memory::default();
        store.users.insert("alice".into(), alice());
        let failures: Vec<(UserCommand, i64)> = (0..MAX_FAILURES)
            .map(|n| (wrong_password("alice"), T + i64::from(n)))
            .collect();
        let outcomes = batch(&mut store, &failures[..failures.len() - 1]);
        for (kinds, refused) in &outcomes {
            assert_eq!(*refused, None, "a failure is recorded, not refused");
            let failed = the_change(kinds);
            assert_eq!(failed.refused.as_deref(), Some(WRONG_CREDENTIALS));
            assert_eq!(failed.locked_until_ms, None);
        }
        assert_eq!(store.users["alice"].failures, MAX_FAILURES - 1);
        assert_eq!(store.users["alice"].locked_until_ms, 0);

        let at = T + i64::from(MAX_FAILURES) - 1;
        let until = at + LOCKOUT_MS;
        let outcomes = batch(&mut store, &failures[failures.len() - 1..]);
        let locking = the_change(&outcomes[0].0);
        assert_eq!(locking.locked_until_ms, Some(until));
        assert_eq!(outcomes[0].1, None);
        let alice = &store.users["alice"];
        assert_eq!((alice.failures, alice.locked_until_ms), (0, until));

        // Tried on while locked: on record and refused, but not counted.
        let outcomes = batch(&mut store, &[(wrong_password("alice"), until - 2)]);
        assert_eq!(outcomes[0].1.as_deref(), Some(LOCKED));
        assert_eq!(the_change(&outcomes[0].0).refused.as_deref(), Some(LOCKED));
        let alice = &store.users["alice"];
        assert_eq!((alice.failures, alice.locked_until_ms), (0, until));

        let outcomes = batch(&mut store, &[(sign_in("alice", 1), until - 1)]);
        assert_eq!(outcomes[0].1.as_deref(), Some(LOCKED));
        let refused = the_change(&outcomes[0].0);
        assert_eq!(refused.action, UserAction::SignInFailed);
        assert_eq!(
            (refused.refused.as_deref(), refused.role),
            (Some(LOCKED), Some(Role::Operator))
        );
        assert!(store.sessions.is_empty());

        let outcomes = batch(&mut store, &[(sign_in("alice", 1), until)]);
        assert_eq!(outcomes[0].1, None, "the lock has run out");
        assert!(store.sessions.contains_key(&[1; 32]));
        let alice = &store.users["alice"];
        assert_eq!((alice.failures, alice.locked_until_ms), (0, 0));
    }

    #[test]
    fn a_failure_under_an_unknown_name_is_recorded_and_stores_nothing() {
        let store = Memory::default();
        let mut changes = Changes::default();
        let (kinds, refused) = rule(&mut changes, &store, &wrong_password("mallory"), T);
        assert_eq!(refused, None);
        let failed = the_change(&kinds);
        assert_eq!(failed.action, UserAction::SignInFailed);
        assert_eq!(
            (failed.name.as_str(), failed.user.as_str(), failed.role),
            ("mallory", "mallory", None)
        );
        assert_eq!(failed.refused.as_deref(), Some(WRONG_CREDENTIALS));
        assert!(changes.writes.is_empty());
    }

    #[test]
    fn a_user_created_in_a_batch_signs_in_and_out_in_it() {
        let mut store = Memory::default();
        let outcomes = batch(
            &mut store,
            &[
                (create(alice()), T),
                (sign_in("alice", 1), T + 1),
                (sign_in("alice", 2), T + 2),
                (sign_out(2), T + 3),
                (sign_out(2), T + 4),
            ],
        );
        let refusals: Vec<_> = outcomes.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(refusals, [None, None, None, None, None]);
        let signed_out = the_change(&outcomes[3].0);
        assert_eq!(signed_out.action, UserAction::SignedOut);
        assert_eq!(
            (signed_out.name.as_str(), signed_out.role),
            ("alice", Some(Role::Operator))
        );
        assert!(outcomes[4].0.is_empty(), "nothing to sign out");
        assert_eq!(store.users["alice"], alice());
        let digests: Vec<&Hash> = store.sessions.keys().collect();
        assert_eq!(digests, [&[1; 32]]);

        // Across batches too, and a removed user's session ends with no role.
        let outcomes = batch(
            &mut store,
            &[(remove("alice"), T + 5), (sign_out(1), T + 6)],
        );
        let signed_out = the_change(&outcomes[1].0);
        assert_eq!((signed_out.user.as_str(), signed_out.role), ("alice", None));
        assert!(store.sessions.is_empty());
        let (kinds, refused) = &batch(&mut store, &[(sign_out(1), T + 7)])[0];
        assert!(kinds.is_empty() && refused.is_none());
    }

    #[test]
    fn a_name_is_a_user_s_or_a_token_s_never_both() {
        let token = |name: &str, digest: u8| ApiToken {
            name: name.into(),
            role: Role::Siem,
            digest: [digest; 32],
            created_ms: T,
            created_by: "admin".into(),
        };
        let create_token = |name: &str, digest: u8| TokenCommand::CreateUnused {
            token: token(name, digest),
            client_ip: None,
        };
        let named = |name: &str| ConsoleUser {
            name: name.into(),
            ..alice()
        };
        let mut store = Memory::default();
        store.tokens.insert("splunk".into(), token("splunk", 1));
        store.retired.insert("old-token".into());
        store.users.insert("alice".into(), alice());
        store.retired_users.insert("gone".into());
        let mut changes = Changes::default();
        for name in ["splunk", "old-token"] {
            let (kinds, refused) = rule(&mut changes, &store, &create(named(name)), T);
            assert_eq!(refused, Some(format!("{USER_TAKEN}: {name}")));
            refused_action(&kinds, "user.create");
        }
        for name in ["alice", "gone"] {
            let (kinds, refused) =
                crate::rules::tokens::token(&mut changes, &store, &create_token(name, 2)).unwrap();
            assert_eq!(refused, Some(format!("{USER_TAKEN}: {name}")));
            assert!(matches!(&kinds[0], EventKind::ApiAction(a) if a.action == "token.create"));
        }
        // Within one batch, whichever comes first keeps the name.
        let (_, refused) = rule(&mut changes, &store, &create(named("bob")), T);
        assert_eq!(refused, None);
        let (_, refused) =
            crate::rules::tokens::token(&mut changes, &store, &create_token("bob", 3)).unwrap();
        assert_eq!(refused, Some(format!("{USER_TAKEN}: bob")));
        let (_, refused) =
            crate::rules::tokens::token(&mut changes, &store, &create_token("grafana", 4)).unwrap();
        assert_eq!(refused, None);
        let (_, refused) = rule(&mut changes, &store, &create(named("grafana")), T);
        assert_eq!(refused, Some(format!("{USER_TAKEN}: grafana")));
        // A token's own name is still refused as a token's.
        let (_, refused) =
            crate::rules::tokens::token(&mut changes, &store, &create_token("grafana", 5)).unwrap();
        assert_eq!(refused, Some(format!("{TOKEN_TAKEN}: grafana")));
        store.commit(changes);
        assert!(store.users.contains_key("bob") && !store.tokens.contains_key("bob"));
        assert!(store.tokens.contains_key("grafana") && !store.users.contains_key("grafana"));
    }
}

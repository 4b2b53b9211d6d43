//! API tokens: created under a name that must be free (never a live token's; for
//! [`TokenCommand::CreateUnused`], never a revoked one's nor a console user's, live
//! or removed, either), revoked by name. A refusal (the name taken, no such token) is
//! recorded like any other action.

use super::{Changes, Outcome, Stored, Write};
use crate::event::{ApiAction, EventKind};
use crate::token::{self, TokenChanged, TokenCommand};
use crate::user;

/// An API token's creation or revocation, against the tokens as the batch has left
/// them.
pub fn token<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    command: &TokenCommand,
) -> Result<Outcome, S::Error> {
    let name = match command {
        TokenCommand::Create { token, .. } | TokenCommand::CreateUnused { token, .. } => {
            &token.name
        }
        TokenCommand::Revoke { name, .. } => name,
    };
    let current = changes.token(store, name)?;
    let retired = match command {
        TokenCommand::CreateUnused { .. } if current.is_none() => {
            changes.token_retired(store, name)?
        }
        _ => false,
    };
    let user_named = match command {
        TokenCommand::CreateUnused { .. } if current.is_none() && !retired => {
            changes.user(store, name)?.is_some() || changes.user_retired(store, name)?
        }
        _ => false,
    };
    let refusal = |action: &str, user: &str, client_ip, reason: &str| {
        let event = EventKind::ApiAction(Box::new(ApiAction {
            action: action.into(),
            user: user.into(),
            client_ip,
            message_id: None,
            recipients: Vec::new(),
            refused: Some(format!("{reason}: {name}")),
        }));
        (vec![event], Some(format!("{reason}: {name}")))
    };
    Ok(match (command, current) {
        (TokenCommand::CreateUnused { token, client_ip }, None) if retired => refusal(
            "token.create",
            &token.created_by,
            *client_ip,
            token::TOKEN_NAME_RETIRED,
        ),
        (TokenCommand::CreateUnused { token, client_ip }, None) if user_named => refusal(
            "token.create",
            &token.created_by,
            *client_ip,
            user::USER_TAKEN,
        ),
        (
            TokenCommand::Create { token, client_ip }
            | TokenCommand::CreateUnused { token, client_ip },
            None,
        ) => {
            changes.writes.push(Write::Token(token.clone()));
            changes.tokens.insert(name.clone(), Some(token.clone()));
            let event = EventKind::TokenChanged(Box::new(TokenChanged {
                name: token.name.clone(),
                role: token.role,
                created: true,
                user: token.created_by.clone(),
                client_ip: *client_ip,
            }));
            (vec![event], None)
        }
        (
            TokenCommand::Create { token, client_ip }
            | TokenCommand::CreateUnused { token, client_ip },
            Some(_),
        ) => refusal(
            "token.create",
            &token.created_by,
            *client_ip,
            token::TOKEN_TAKEN,
        ),
        (
            TokenCommand::Revoke {
                user, client_ip, ..
            },
            Some(existing),
        ) => {
            changes.writes.push(Write::DropToken(existing.clone()));
            changes.tokens.insert(name.clone(), None);
            let event = EventKind::TokenChanged(Box::new(TokenChanged {
                name: existing.name,
                role: existing.role,
                created: false,
                user: user.clone(),
                client_ip: *client_ip,
            }));
            (vec![event], None)
        }
        (
            TokenCommand::Revoke {
                user, client_ip, ..
            },
            None,
        ) => refusal("token.revoke", user, *client_ip, token::NO_SUCH_TOKEN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::memory::Memory;
    use crate::token::{ApiToken, Role};

    fn token(name: &str, digest: u8) -> ApiToken {
        ApiToken {
            name: name.into(),
            role: Role::Auditor,
            digest: [digest; 32],
            created_ms: 1_764_300_000_000,
            created_by: "admin".into(),
        }
    }

    fn create(token: ApiToken) -> TokenCommand {
        TokenCommand::Create {
            token,
            client_ip: None,
        }
    }

    fn create_unused(token: ApiToken) -> TokenCommand {
        TokenCommand::CreateUnused {
            token,
            client_ip: None,
        }
    }

    fn revoke(name: &str) -> TokenCommand {
        TokenCommand::Revoke {
            name: name.into(),
            user: "admin".into(),
            client_ip: None,
        }
    }

    #[test]
    fn a_name_is_taken_once_within_a_batch_and_across_batches() {
        let mut store = Memory::default();
        let mut changes = Changes::default();
        let (_, refused) = token_rule(&mut changes, &store, &create(token("siem", 1)));
        assert_eq!(refused, None);
        let (kinds, refused) = token_rule(&mut changes, &store, &create(token("siem", 2)));
        assert_eq!(refused, Some(format!("{}: siem", token::TOKEN_TAKEN)));
        assert!(matches!(&kinds[0], EventKind::ApiAction(a) if a.action == "token.create"));
        assert_eq!(changes.writes, [Write::Token(token("siem", 1))]);
        store.commit(changes);
        let mut changes = Changes::default();
        let (_, refused) = token_rule(&mut changes, &store, &create(token("siem", 3)));
        assert!(refused.is_some());
        assert_eq!(store.tokens["siem"].digest, [1; 32]);
    }

    #[test]
    fn a_revoked_token_is_removed_and_its_name_free_again_in_the_same_batch() {
        let mut store = Memory::default();
        store.tokens.insert("siem".into(), token("siem", 1));
        let mut changes = Changes::default();
        let (kinds, refused) = token_rule(&mut changes, &store, &revoke("siem"));
        assert_eq!(refused, None);
        let EventKind::TokenChanged(changed) = &kinds[0] else {
            panic!("{kinds:?}");
        };
        assert!(!changed.created);
        assert_eq!(changed.role, Role::Auditor);
        let (_, refused) = token_rule(&mut changes, &store, &revoke("siem"));
        assert_eq!(refused, Some(format!("{}: siem", token::NO_SUCH_TOKEN)));
        let (_, refused) = token_rule(&mut changes, &store, &create(token("siem", 4)));
        assert_eq!(refused, None);
        store.commit(changes);
        assert_eq!(store.tokens["siem"].digest, [4; 32]);
    }

    #[test]
    fn a_revoked_name_is_never_given_again_within_a_batch_or_after_it() {
        let mut store = Memory::default();
        let mut changes = Changes::default();
        let (_, refused) = token_rule(&mut changes, &store, &create_unused(token("siem", 1)));
        assert_eq!(refused, None);
        let (_, refused) = token_rule(&mut changes, &store, &create_unused(token("siem", 2)));
        assert_eq!(refused, Some(format!("{}: siem", token::TOKEN_TAKEN)));
        let (_, refused) = token_rule(&mut changes, &store, &revoke("siem"));
        assert_eq!(refused, None);
        let (kinds, refused) = token_rule(&mut changes, &store, &create_unused(token("siem", 3)));
        assert_eq!(
            refused,
            Some(format!("{}: siem", token::TOKEN_NAME_RETIRED))
        );
        assert!(matches!(&kinds[0], EventKind::ApiAction(a) if a.action == "token.create"));
        store.commit(changes);
        assert!(store.retired.contains("siem") && store.tokens.is_empty());
        let mut changes = Changes::default();
        let (_, refused) = token_rule(&mut changes, &store, &create_unused(token("siem", 4)));
        assert_eq!(
            refused,
            Some(format!("{}: siem", token::TOKEN_NAME_RETIRED))
        );
        // What older builds proposed is applied as they applied it.
        let (_, refused) = token_rule(&mut changes, &store, &create(token("siem", 5)));
        assert_eq!(refused, None);
    }

    fn token_rule(changes: &mut Changes<'_>, store: &Memory, command: &TokenCommand) -> Outcome {
        super::token(changes, store, command).unwrap()
    }
}

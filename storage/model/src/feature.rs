//! Feature levels: which replicated commands a build can apply, and which the
//! cluster as a whole may be sent.
//!
//! Every build has one number, [`FEATURE_LEVEL`]: the highest level it applies. A
//! command a release adds (a new variant appended to an enum that travels in Raft
//! entries) gets a new level; a build below it cannot decode it. The cluster's
//! *active* level is replicated state ([`crate::Command::RaiseFeatureLevel`], kept by
//! the state machine, so a node restarted or caught up by snapshot knows it): the
//! leader raises it only once every member (voters and learners) has said it supports
//! the new level, and it never goes down. A node proposes a command only when the
//! active level covers it ([`crate::Command::feature_level`]), so no voter is ever sent
//! what it cannot apply during a rolling upgrade.
//!
//! The levels so far:
//! - [`BASE`] (1): every command of the release before feature levels (the one that
//!   brought `DeliveryCommand::Claim`, commit d5ad7c4); the level of a cluster whose
//!   state records none (that release, or a cluster that has not raised its level
//!   yet).
//! - [`LEVELS`] (2): `Command::RaiseFeatureLevel` itself, the first command the
//!   release before cannot decode.
//! - [`USERS`] (3): `Command::User`, console users and their sessions.
//! - [`RECIPIENTS`] (4): `Command::Recipient`, `Command::Digest` and
//!   `Command::LinkKey`: recipients' self-service, their digests and links.
//! - [`BAYES_EXPIRY`] (5): `Command::ExpireBayes`; from this level on a lesson stamps
//!   the tokens it counts with its day, so that every node keeps the same days.
//! - [`LEASED_ACCEPT`] (6): `Command::AcceptLeased`, a message accepted with its
//!   accepting node's delivery lease.
//!
//! A command a later release adds gets the next level, here and in
//! [`Command::feature_level`].

use crate::event::Command;

/// The commands every release applies: the level of a cluster with none on record.
pub const BASE: u32 = 1;

/// `Command::RaiseFeatureLevel`.
pub const LEVELS: u32 = 2;

/// `Command::User`: console users and their sessions.
pub const USERS: u32 = 3;

/// `Command::Recipient`, `Command::Digest`, `Command::LinkKey`: recipients'
/// self-service.
pub const RECIPIENTS: u32 = 4;

/// `Command::ExpireBayes`, and the day each lesson stamps its tokens with.
pub const BAYES_EXPIRY: u32 = 5;

/// `Command::AcceptLeased`: a message accepted with its delivery lease.
pub const LEASED_ACCEPT: u32 = 6;

/// The highest level this build applies.
pub const FEATURE_LEVEL: u32 = LEASED_ACCEPT;

impl Command {
    /// The cluster feature level a node needs to apply this command (and so the
    /// active level the cluster must run at before anyone proposes it).
    pub fn feature_level(&self) -> u32 {
        match self {
            Command::RaiseFeatureLevel { level } => (*level).max(LEVELS),
            Command::User(_) => USERS,
            Command::Recipient(_) | Command::Digest(_) | Command::LinkKey { .. } => RECIPIENTS,
            Command::ExpireBayes(_) => BAYES_EXPIRY,
            Command::AcceptLeased { .. } => LEASED_ACCEPT,
            _ => BASE,
        }
    }
}

/// The plain words a node says when it is too old for its cluster, and what to do.
pub fn too_old(supported: u32, needed: u32) -> String {
    format!(
        "this build supports feature level {supported}, the cluster runs at {needed}: run a \
         newer release (this node stops without applying anything further)"
    )
}

/// The active level after a raise to `level` from `current`: only ever up.
pub fn raised(current: u32, level: u32) -> Option<u32> {
    (level > current).then_some(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DeliveryCommand, MessageId};
    use crate::user::UserCommand;

    #[test]
    fn a_raise_needs_its_level_and_older_commands_the_base() {
        let claim = Command::Delivery(Box::new(DeliveryCommand::Claim {
            message_id: MessageId(7),
            lease_ms: 1000,
            replaces: None,
        }));
        assert_eq!(claim.feature_level(), BASE, "the release before had Claim");
        let cursor = Command::ExportCursor {
            exporter: "x".into(),
            seq: 1,
        };
        assert_eq!(cursor.feature_level(), BASE);
        assert_eq!(
            Command::RaiseFeatureLevel { level: 5 }.feature_level(),
            5,
            "applying a raise to 5 needs a build at 5"
        );
        assert_eq!(
            Command::RaiseFeatureLevel { level: 1 }.feature_level(),
            LEVELS
        );
        const { assert!(FEATURE_LEVEL >= LEVELS) };
    }

    #[test]
    fn console_users_need_their_level() {
        let sign_out = Command::User(Box::new(UserCommand::SignOut {
            digest: [1; 32],
            client_ip: None,
        }));
        assert_eq!(sign_out.feature_level(), USERS);
        const { assert!(USERS > LEVELS && FEATURE_LEVEL >= USERS) };
    }

    #[test]
    fn recipients_self_service_needs_its_level() {
        assert_eq!(
            Command::LinkKey { key: [0; 32] }.feature_level(),
            RECIPIENTS
        );
        const { assert!(RECIPIENTS > USERS && FEATURE_LEVEL >= RECIPIENTS) };
    }

    #[test]
    fn the_classifiers_expiry_needs_its_level() {
        let expiry = crate::bayes::BayesExpiry {
            keep: 3,
            limit: 1,
            max: 4,
        };
        assert_eq!(Command::ExpireBayes(expiry).feature_level(), BAYES_EXPIRY);
        const { assert!(BAYES_EXPIRY > RECIPIENTS && FEATURE_LEVEL >= BAYES_EXPIRY) };
    }

    #[test]
    fn an_accept_with_its_lease_needs_its_level() {
        let received = crate::samples::received();
        let message = crate::message::AcceptedMessage {
            verdict: crate::samples::verdict(received.message_id),
            received,
            body: b"\r\nhi\r\n".to_vec(),
        };
        let accept = Command::AcceptLeased {
            message: Box::new(message),
            lease_ms: 30_000,
        };
        assert_eq!(accept.feature_level(), LEASED_ACCEPT);
        const { assert!(LEASED_ACCEPT > BAYES_EXPIRY && FEATURE_LEVEL >= LEASED_ACCEPT) };
    }

    #[test]
    fn the_level_only_goes_up() {
        assert_eq!(raised(BASE, LEVELS), Some(LEVELS));
        assert_eq!(raised(LEVELS, LEVELS), None);
        assert_eq!(raised(LEVELS, BASE), None);
    }

    #[test]
    fn too_old_names_both_levels_and_what_to_do() {
        let said = too_old(1, 2);
        assert!(said.contains("supports feature level 1"), "{said}");
        assert!(said.contains("runs at 2"), "{said}");
        assert!(said.contains("run a newer release"), "{said}");
    }
}

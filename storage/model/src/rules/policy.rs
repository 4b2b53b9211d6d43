//! The cluster's policy: a change made from the current version becomes the next
//! version, with its diff and hash computed here from what is stored (never taken
//! from the proposer); a change made from any other version is refused and recorded
//! as a refused `api.action`, so two administrators cannot overwrite each other.

use serde_json::Value;

use super::{Changes, Outcome, Stored, Write};
use crate::event::{ApiAction, EventKind, Op};
use crate::policy::{self, PolicyChange, PolicyChanged, PolicyVersion, POLICY_STALE};

/// Applies `change` against the policy as the batch has left it.
pub fn change<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    change: &PolicyChange,
    op: &Op,
) -> Result<Outcome, S::Error> {
    let current = changes.policy(store)?;
    let current_version = current.as_ref().map_or(0, |p| p.version);
    let refusal = |reason: String| {
        let event = EventKind::ApiAction(Box::new(ApiAction {
            action: "policy.change".into(),
            user: change.user.clone(),
            client_ip: change.client_ip,
            message_id: None,
            recipients: Vec::new(),
            refused: Some(reason.clone()),
        }));
        (vec![event], Some(reason))
    };
    if change.base_version != current_version {
        return Ok(refusal(format!(
            "{POLICY_STALE}: it is at version {current_version}, not {}",
            change.base_version
        )));
    }
    let Ok(new @ Value::Object(_)) = serde_json::from_str::<Value>(&change.document) else {
        return Ok(refusal("the policy is not a JSON object".into()));
    };
    let old = current
        .as_ref()
        .and_then(|p| serde_json::from_str(&p.document).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    let version = PolicyVersion {
        version: current_version + 1,
        time_ms: op.time_ms,
        node: op.node,
        user: change.user.clone(),
        client_ip: change.client_ip,
        reason: change.reason.clone(),
        diff: policy::diff(&old, &new),
        hash: policy::hash(&change.document),
        document: change.document.clone(),
    };
    let event = EventKind::PolicyChanged(Box::new(PolicyChanged::from(&version)));
    changes.policy = Some(Some(version.clone()));
    changes.writes.push(Write::Policy(Box::new(version)));
    Ok((vec![event], None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::memory::{op, Memory};

    fn proposal(base_version: u64, document: &str) -> PolicyChange {
        PolicyChange {
            base_version,
            document: document.into(),
            user: "alice".into(),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            reason: "tighter".into(),
        }
    }

    #[test]
    fn each_change_from_the_current_version_is_the_next_and_a_stale_one_is_refused() {
        let mut store = Memory::default();
        let mut changes = Changes::default();
        let first = proposal(0, r#"{"tag_score":5.0}"#);
        let (events, refused) = change(&mut changes, &store, &first, &op(2, 1_000)).unwrap();
        assert_eq!(refused, None);
        let EventKind::PolicyChanged(v1) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(v1.version, 1);
        assert_eq!(v1.diff, ["tag_score: (unset) -> 5.0"]);
        assert_eq!(v1.hash, policy::hash(r#"{"tag_score":5.0}"#));
        // A second change from version 0 in the same batch lost the race.
        let (events, refused) = change(&mut changes, &store, &first, &op(3, 1_000)).unwrap();
        assert!(refused.unwrap().starts_with(POLICY_STALE));
        let EventKind::ApiAction(action) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(action.action, "policy.change");
        assert_eq!(action.user, "alice");
        store.commit(changes);
        assert_eq!(store.policies.len(), 1);
        assert_eq!(store.policies[&1].node, 2);

        let mut changes = Changes::default();
        let second = proposal(1, r#"{"tag_score":4.0}"#);
        let (events, refused) = change(&mut changes, &store, &second, &op(1, 2_000)).unwrap();
        assert_eq!(refused, None);
        let EventKind::PolicyChanged(v2) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (v2.version, v2.diff.as_slice()),
            (2, &["tag_score: 5.0 -> 4.0".to_string()][..])
        );
        store.commit(changes);
        assert_eq!(store.policies[&2].time_ms, 2_000);
        assert_eq!(store.policies[&1].document, r#"{"tag_score":5.0}"#);
    }

    #[test]
    fn a_document_that_is_not_an_object_is_refused_and_changes_nothing() {
        let store = Memory::default();
        let mut changes = Changes::default();
        for bad in ["[]", "not json", "5"] {
            let (_, refused) = change(&mut changes, &store, &proposal(0, bad), &op(1, 1)).unwrap();
            assert_eq!(refused.as_deref(), Some("the policy is not a JSON object"));
        }
        assert!(changes.writes.is_empty());
    }
}

//! The cluster's policy as replicated state: every version whole, who made it, from
//! where, why, and what it changed.
//!
//! The policy itself is a JSON document whose meaning the node gives it (the
//! `[policy]` section's keys); here it is text with a version, a hash and a diff. A
//! change names the version it was made from, so two administrators cannot overwrite
//! each other: the second change, made from a version that is no longer current, is
//! refused (see [`crate::rules::policy`]).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::Hash;

/// The start of a refusal's reason when the change was made from an old version.
pub const POLICY_STALE: &str = "the policy has changed since the base version";

/// The key of the current version's number in the state's metadata.
pub const CURRENT_KEY: &[u8] = b"policy/current";

/// The key of version `version` in the state's metadata.
pub fn key(version: u64) -> Vec<u8> {
    let mut key = b"policy/v/".to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The prefix of every version's key, for listing them in order.
pub const VERSION_PREFIX: &[u8] = b"policy/v/";

/// A change of the cluster's policy as proposed: the whole new document and the
/// version it was made from (0: the cluster has none yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub base_version: u64,
    /// The new policy, as canonical JSON (keys in a fixed order, defaults written out).
    pub document: String,
    pub user: String,
    pub client_ip: Option<IpAddr>,
    pub reason: String,
}

/// One version of the cluster's policy, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub time_ms: i64,
    /// The node that proposed the change.
    pub node: u64,
    pub user: String,
    pub client_ip: Option<IpAddr>,
    pub reason: String,
    /// What changed from the version before, one line a change (see [`diff`]).
    pub diff: Vec<String>,
    /// [`hash`] of `document`.
    pub hash: Hash,
    pub document: String,
}

/// `policy.changed`: version `version` is the cluster's policy from this event on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanged {
    pub version: u64,
    pub user: String,
    pub client_ip: Option<IpAddr>,
    pub reason: String,
    pub diff: Vec<String>,
    pub hash: Hash,
}

impl From<&PolicyVersion> for PolicyChanged {
    fn from(v: &PolicyVersion) -> Self {
        PolicyChanged {
            version: v.version,
            user: v.user.clone(),
            client_ip: v.client_ip,
            reason: v.reason.clone(),
            diff: v.diff.clone(),
            hash: v.hash,
        }
    }
}

/// A decision on record: a verdict and what the policy weighed to reach it, read
/// back from the log so that another policy can be tried on it without a rescan.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// The `scan.verdict` event's seq.
    pub seq: u64,
    pub verdict: crate::message::Verdict,
    pub mail_from: String,
    /// The `From` header's address; `None` also when a rejection recorded before it
    /// was kept leaves it unknown (`header_from_known`).
    pub header_from: Option<String>,
    pub header_from_known: bool,
    pub rcpt_to: Vec<String>,
    /// The SMTP client's address (a trusted relay's origin is in the verdict).
    pub client_ip: IpAddr,
}

/// `SHA-256("bulwark.policy" ‖ document)`.
pub fn hash(document: &str) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"bulwark.policy");
    hasher.update(document.as_bytes());
    hasher.finalize().into()
}

/// What changed from `old` to `new`, one line a change, for a person to read:
/// `tag_score: 5.0 -> 4.0`, `allow: + "partner.test"`, `allow: - "203.0.113.7"`,
/// `domains."example.test".tag_score: (unset) -> 3.0`. Lists are compared as sets
/// (an entry added or removed); a list whose entries only moved says `reordered`.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    walk(&mut lines, "", Some(old), Some(new));
    lines
}

fn walk(lines: &mut Vec<String>, path: &str, old: Option<&Value>, new: Option<&Value>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                walk(lines, &join(path, key), a.get(key), b.get(key));
            }
        }
        (Some(Value::Object(a)), None) => {
            for (key, value) in a {
                walk(lines, &join(path, key), Some(value), None);
            }
        }
        (None, Some(Value::Object(b))) => {
            for (key, value) in b {
                walk(lines, &join(path, key), None, Some(value));
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a != b && files(a, b) => {
            // Files: by name (one added or removed is named, not shown), each kept
            // one's text line by line.
            let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
            let (old_names, new_names): (Vec<String>, Vec<String>) =
                (a.iter().map(name).collect(), b.iter().map(name).collect());
            for value in a.iter().filter(|v| !new_names.contains(&name(v))) {
                lines.push(format!("{path}: - {}", Value::from(name(value))));
            }
            for value in b.iter().filter(|v| !old_names.contains(&name(v))) {
                lines.push(format!("{path}: + {}", Value::from(name(value))));
            }
            for old in a {
                if let Some(new) = b.iter().find(|v| name(v) == name(old)) {
                    walk(lines, &join(path, &name(old)), Some(old), Some(new));
                }
            }
            let kept = |names: &[String], others: &[String]| -> Vec<String> {
                names
                    .iter()
                    .filter(|n| others.contains(n))
                    .cloned()
                    .collect()
            };
            if kept(&old_names, &new_names) != kept(&new_names, &old_names) {
                lines.push(format!("{path}: reordered"));
            }
        }
        (Some(Value::String(a)), Some(Value::String(b)))
            if a != b && (a.contains('\n') || b.contains('\n')) =>
        {
            // A file's text: the lines removed and added.
            let (old, new): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
            for line in old.iter().filter(|l| !new.contains(l)) {
                lines.push(format!("{path}: - {}", Value::from(*line)));
            }
            for line in new.iter().filter(|l| !old.contains(l)) {
                lines.push(format!("{path}: + {}", Value::from(*line)));
            }
            if lines.last().is_none_or(|l| !l.starts_with(path)) {
                lines.push(format!("{path}: lines reordered"));
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a != b => {
            let removed: Vec<&Value> = a.iter().filter(|v| !b.contains(v)).collect();
            let added: Vec<&Value> = b.iter().filter(|v| !a.contains(v)).collect();
            for value in &removed {
                lines.push(format!("{path}: - {value}"));
            }
            for value in &added {
                lines.push(format!("{path}: + {value}"));
            }
            if removed.is_empty() && added.is_empty() {
                lines.push(format!("{path}: reordered"));
            }
        }
        (Some(Value::Array(a)), None) => {
            lines.extend(a.iter().map(|v| format!("{path}: - {v}")));
        }
        (None, Some(Value::Array(b))) => {
            lines.extend(b.iter().map(|v| format!("{path}: + {v}")));
        }
        (a, b) if a != b => {
            let show = |v: Option<&Value>| v.map_or("(unset)".to_string(), Value::to_string);
            lines.push(format!("{path}: {} -> {}", show(a), show(b)));
        }
        _ => {}
    }
}

/// Whether two lists are lists of files: objects with a `name`, one list perhaps
/// empty.
fn files(a: &[Value], b: &[Value]) -> bool {
    let named = |list: &[Value]| list.iter().all(|v| v["name"].is_string());
    !(a.is_empty() && b.is_empty()) && named(a) && named(b)
}

/// `path.key`, the key quoted unless it is a plain name.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let key = if plain {
        key.to_string()
    } else {
        Value::from(key).to_string()
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The top-level keys a diff line is about (`allow`, `domains`, ...).
pub fn top_key(line: &str) -> &str {
    let end = line.find(['.', ':']).unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_change_a_person_would_look_for() {
        let old = json!({
            "tag_score": 5.0,
            "allow": ["a.test", "b.test"],
            "block": [],
            "domains": {},
            "dmarc": "enforce",
        });
        let new = json!({
            "tag_score": 4.0,
            "allow": ["b.test", "c.test"],
            "block": ["203.0.113.7"],
            "domains": { "example.test": { "tag_score": 3.0 } },
            "dmarc": "enforce",
        });
        assert_eq!(
            diff(&old, &new),
            [
                r#"allow: - "a.test""#,
                r#"allow: + "c.test""#,
                r#"block: + "203.0.113.7""#,
                r#"domains."example.test".tag_score: (unset) -> 3.0"#,
                "tag_score: 5.0 -> 4.0",
            ]
        );
        assert!(diff(&new, &new).is_empty());
        let reordered = json!({ "allow": ["c.test", "b.test"] });
        let before = json!({ "allow": ["b.test", "c.test"] });
        assert_eq!(diff(&before, &reordered), ["allow: reordered"]);
        let fresh = diff(&json!({}), &new);
        assert!(fresh.contains(&"tag_score: (unset) -> 4.0".to_string()));
        let lines = diff(&old, &new);
        let tops: Vec<&str> = lines.iter().map(|l| top_key(l)).collect();
        assert_eq!(tops, ["allow", "allow", "block", "domains", "tag_score"]);
    }

    #[test]
    fn files_are_compared_by_name_and_their_text_line_by_line() {
        let old = json!({ "rules": [
            { "name": "local.cf", "text": "body A /a/\nscore A 1.0\n" },
            { "name": "gone.cf", "text": "x\n" },
        ]});
        let new = json!({ "rules": [
            { "name": "local.cf", "text": "body A /a/\nscore A 2.5\n" },
            { "name": "new.cf", "text": "y\n" },
        ]});
        assert_eq!(
            diff(&old, &new),
            [
                r#"rules: - "gone.cf""#,
                r#"rules: + "new.cf""#,
                r#"rules."local.cf".text: - "score A 1.0""#,
                r#"rules."local.cf".text: + "score A 2.5""#,
            ]
        );
        // Files added to an empty list are named, not shown.
        assert_eq!(
            diff(&json!({ "rules": [] }), &new),
            [r#"rules: + "local.cf""#, r#"rules: + "new.cf""#]
        );
    }

    #[test]
    fn the_hash_is_of_the_document_as_written() {
        assert_eq!(hash("{}"), hash("{}"));
        assert_ne!(hash("{}"), hash("{ }"));
        assert_eq!(key(1).len(), VERSION_PREFIX.len() + 8);
        assert!(key(1).starts_with(VERSION_PREFIX));
        assert!(key(1) < key(2) && key(255) < key(256));
    }
}

//! The policy as an administrator writes it: the `[policy]` section of a node's
//! TOML file, and the cluster's policy document in JSON (the same keys, the same
//! checks). The cluster stores it [`Document::complete`], every default written
//! out, as [`Document::canonical`] JSON, so that a version's hash names exactly what
//! it decides and a diff shows a default changing too.

use std::collections::BTreeMap;

use bulwark_storage::{Action, Thresholds};
use serde::{Deserialize, Serialize};

use super::{Overrides, Policy};

/// The `[policy]` keys; absent ones take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Score from which a message is tagged (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_score: Option<f64>,
    /// Score from which a message is quarantined (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_score: Option<f64>,
    /// Score from which a message is rejected at the end of data (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_score: Option<f64>,
    /// Put before the subject of tagged messages (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// What to do with malware: `reject` (default) or `quarantine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malware: Option<String>,
    /// What to do with blocked attachments and active content: `reject`,
    /// `quarantine` (default), `tag` or `deliver`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<String>,
    /// `enforce` (default): a failing message gets what the sender's DMARC policy
    /// asks (reject or quarantine); `report`: only its score counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<String>,
    /// Senders (address, domain, `.domain` for subdomains too) and client networks
    /// whose mail is not judged by score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Senders and client networks whose mail is rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Vec<String>>,
    /// Per recipient domain: `"example.test" = { tag_score = 3.0 }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domains: Option<BTreeMap<String, DocumentOverrides>>,
    /// Per recipient address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<BTreeMap<String, DocumentOverrides>>,
}

/// A domain's or recipient's thresholds and subject prefix; absent keys keep the
/// policy's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
}

impl Document {
    /// A policy document from the JSON the API and the cluster hold; an unknown key
    /// or a wrong type is an error that names it.
    pub fn from_json(json: &str) -> Result<Document, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    /// Every key written out, the defaults where absent; overrides as written.
    pub fn complete(&self) -> Document {
        let d = Policy::default();
        Document {
            tag_score: Some(self.tag_score.unwrap_or(d.thresholds.tag)),
            quarantine_score: Some(self.quarantine_score.unwrap_or(d.thresholds.quarantine)),
            reject_score: Some(self.reject_score.unwrap_or(d.thresholds.reject)),
            subject_prefix: Some(self.subject_prefix.clone().unwrap_or_default()),
            malware: Some(
                self.malware
                    .clone()
                    .unwrap_or_else(|| d.malware.as_str().into()),
            ),
            attachments: Some(
                self.attachments
                    .clone()
                    .unwrap_or_else(|| d.attachments.as_str().into()),
            ),
            dmarc: Some(self.dmarc.clone().unwrap_or_else(|| "enforce".into())),
            allow: Some(self.allow.clone().unwrap_or_default()),
            block: Some(self.block.clone().unwrap_or_default()),
            domains: Some(self.domains.clone().unwrap_or_default()),
            recipients: Some(self.recipients.clone().unwrap_or_default()),
        }
    }

    /// [`Document::complete`] as JSON: keys in a fixed order, the form the cluster
    /// stores and hashes.
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.complete()).expect("a policy document serializes")
    }

    /// The policy this document decides by, or every problem found at once, each
    /// named by its key (`policy.tag_score: ...`).
    pub fn compile(&self) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let policy = self.compile_into(&mut problems);
        match problems.is_empty() {
            true => Ok(policy),
            false => Err(problems),
        }
    }

    /// As [`Document::compile`], adding the problems to `problems`.
    pub fn compile_into(&self, problems: &mut Vec<String>) -> Policy {
        let defaults = Policy::default();
        let p = self.clone();
        let thresholds = Thresholds {
            tag: p.tag_score.unwrap_or(defaults.thresholds.tag),
            quarantine: p.quarantine_score.unwrap_or(defaults.thresholds.quarantine),
            reject: p.reject_score.unwrap_or(defaults.thresholds.reject),
        };
        check_thresholds("policy", &thresholds, problems);
        let mut action =
            |field: &str, value: Option<String>, default: Action, allowed: &[Action]| {
                let Some(value) = value else {
                    return default;
                };
                match allowed.iter().find(|a| a.as_str() == value) {
                    Some(action) => *action,
                    None => {
                        let names: Vec<_> = allowed.iter().map(|a| a.as_str()).collect();
                        problems.push(format!(
                            "policy.{field}: {value:?} is not one of {}",
                            names.join(", ")
                        ));
                        default
                    }
                }
            };
        let malware = action(
            "malware",
            p.malware,
            defaults.malware,
            &[Action::Reject, Action::Quarantine],
        );
        let attachments = action(
            "attachments",
            p.attachments,
            defaults.attachments,
            &[
                Action::Reject,
                Action::Quarantine,
                Action::Tag,
                Action::Deliver,
            ],
        );
        let dmarc_enforce = match p.dmarc.as_deref() {
            None | Some("enforce") => true,
            Some("report") => false,
            Some(other) => {
                problems.push(format!("policy.dmarc: {other:?} is not enforce or report"));
                true
            }
        };
        let mut policy = Policy {
            thresholds,
            subject_prefix: prefix("policy.subject_prefix", p.subject_prefix, problems)
                .unwrap_or_default(),
            malware,
            attachments,
            dmarc_enforce,
            ..defaults
        };
        for (name, list, entries) in [
            ("allow", &mut policy.allow, p.allow),
            ("block", &mut policy.block, p.block),
        ] {
            for entry in entries.unwrap_or_default() {
                if let Err(e) = list.add(&entry) {
                    problems.push(format!("policy.{name}: {e}"));
                }
            }
        }
        for (domain, raw) in p.domains.unwrap_or_default() {
            let key = match crate::mail::ascii_domain(&domain).filter(|d| !d.is_empty()) {
                Some(key) => key,
                None => {
                    problems.push(format!("policy.domains: {domain:?} is not a domain"));
                    continue;
                }
            };
            let field = format!("policy.domains.{domain:?}");
            let overrides = overrides(&field, raw, &thresholds, problems);
            policy.domains.insert(key, overrides);
        }
        for (address, raw) in p.recipients.unwrap_or_default() {
            let Some((local, domain)) = address.rsplit_once('@') else {
                problems.push(format!("policy.recipients: {address:?} is not an address"));
                continue;
            };
            let Some(domain) = crate::mail::ascii_domain(domain).filter(|d| !d.is_empty()) else {
                problems.push(format!("policy.recipients: {address:?} is not an address"));
                continue;
            };
            let field = format!("policy.recipients.{address:?}");
            let overrides = overrides(&field, raw, &thresholds, problems);
            policy
                .recipients
                .insert(format!("{}@{domain}", local.to_lowercase()), overrides);
        }
        policy
    }
}

fn overrides(
    field: &str,
    raw: DocumentOverrides,
    defaults: &Thresholds,
    problems: &mut Vec<String>,
) -> Overrides {
    let overrides = Overrides {
        tag: raw.tag_score,
        quarantine: raw.quarantine_score,
        reject: raw.reject_score,
        subject_prefix: prefix(
            &format!("{field}.subject_prefix"),
            raw.subject_prefix,
            problems,
        ),
    };
    let effective = Thresholds {
        tag: overrides.tag.unwrap_or(defaults.tag),
        quarantine: overrides.quarantine.unwrap_or(defaults.quarantine),
        reject: overrides.reject.unwrap_or(defaults.reject),
    };
    check_thresholds(field, &effective, problems);
    overrides
}

fn check_thresholds(field: &str, t: &Thresholds, problems: &mut Vec<String>) {
    if !(t.tag.is_finite() && t.quarantine.is_finite() && t.reject.is_finite()) {
        problems.push(format!("{field}: scores must be finite numbers"));
    } else if !(t.tag <= t.quarantine && t.quarantine <= t.reject) {
        problems.push(format!(
            "{field}: tag_score ({}) <= quarantine_score ({}) <= reject_score ({}) must hold",
            t.tag, t.quarantine, t.reject
        ));
    }
}

/// A subject prefix goes into a header: printable, one line, short.
fn prefix(field: &str, value: Option<String>, problems: &mut Vec<String>) -> Option<String> {
    let value = value?;
    if value.chars().any(char::is_control) || value.len() > 64 {
        problems.push(format!(
            "{field}: must be one line of at most 64 bytes without control characters"
        ));
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_writes_every_default_and_compiles_to_the_same_policy() {
        let sparse = Document {
            tag_score: Some(4.0),
            allow: Some(vec!["partner.test".into()]),
            ..Document::default()
        };
        let canonical = sparse.canonical();
        assert!(canonical.starts_with(r#"{"tag_score":4.0,"quarantine_score":10.0,"#));
        let back = Document::from_json(&canonical).unwrap();
        assert_eq!(back, sparse.complete());
        assert_eq!(back.canonical(), canonical);
        let (a, b) = (sparse.compile().unwrap(), back.compile().unwrap());
        assert_eq!(a.thresholds, b.thresholds);
        assert_eq!((a.malware, a.attachments), (b.malware, b.attachments));
        // The default document is the default policy.
        let default = Document::default().compile().unwrap();
        assert_eq!(default.thresholds, Policy::default().thresholds);
    }

    #[test]
    fn every_problem_is_reported_at_once_and_unknown_keys_are_named() {
        let bad = Document {
            tag_score: Some(30.0),
            malware: Some("deliver".into()),
            allow: Some(vec!["not an entry!".into()]),
            domains: Some(BTreeMap::from([(
                "bad domain..".into(),
                DocumentOverrides::default(),
            )])),
            ..Document::default()
        };
        let problems = bad.compile().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("policy: tag_score (30)"));
        let unknown = Document::from_json(r#"{"tag_scor": 3}"#).unwrap_err();
        assert!(unknown.contains("unknown field `tag_scor`"), "{unknown}");
        let wrong = Document::from_json(r#"{"allow": "x.test"}"#).unwrap_err();
        assert!(wrong.contains("invalid type"), "{wrong}");
    }
}

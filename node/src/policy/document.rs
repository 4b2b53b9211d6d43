//! The policy as an administrator writes it: the `[policy]` section of a node's
//! TOML file (with the rule and signature files `[scan]` names), and the cluster's
//! policy document in JSON (the same keys, the same checks). The cluster stores it [`Document::complete`], every default written
//! out, as [`Document::canonical`] JSON, so that a version's hash names exactly what
//! it decides and a diff shows a default changing too.

use std::collections::BTreeMap;

use std::path::Path;

use bulwark_storage::{Action, Thresholds};
use serde::{Deserialize, Serialize};

use super::{Overrides, Policy};
use crate::scan::attachments::{AttachmentEngine, DEFAULT_BLOCKED};
use crate::scan::blocklists::{parse_zone, Zone};
use crate::scan::malware::MalwareEngine;
use crate::scan::phishing::PhishingEngine;
use crate::scan::spam::SpamEngine;
use crate::scan::yara::YaraEngine;
use crate::siem::Exporter;

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
    /// Spam rule files in SpamAssassin's syntax, in order, after the built-in rules
    /// (seeded from `[scan] rules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Source>>,
    /// YARA rule files (seeded from `[scan] yara_rules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yara_rules: Option<Vec<Source>>,
    /// SHA-256 lists of known malware, one a line, a name may follow (seeded from
    /// `[scan] malware_hashes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malware_hashes: Option<Vec<Source>>,
    /// ClamAV `.hdb` and `.hsb` hash signatures (seeded from `[scan] clamav_hashes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamav_hashes: Option<Vec<Source>>,
    /// DNS blocklists, `"zone=score[:kind[:codes]]"`: `"zone=score"`,
    /// `"zone=score:domain"`, `"zone=score:ip:127.0.0.2,127.0.0.4"` (seeded from
    /// `[scan] blocklists`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocklists: Option<Vec<String>>,
    /// Attachment extensions blocked (default: the built-in list; seeded from
    /// `[scan] blocked_extensions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_extensions: Option<Vec<String>>,
    /// People whose names outside senders may not use as their display name (a VIP
    /// list: `"Maria Chief"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_names: Option<Vec<String>>,
    /// Domains besides ours whose look-alikes are phishing (partners, banks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_domains: Option<Vec<String>>,
    /// The SIEM exporters (seeded from `[[siem.exporters]]`), their secrets named
    /// by file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exporters: Option<Vec<crate::siem::Spec>>,
}

/// A rule or signature file as the cluster holds it: its name and its text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    /// The file at `path`, under its file name.
    pub fn read(path: &Path) -> Result<Source, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Source { name, text })
    }
}

/// The keys whose change a simulation cannot decide from what was recorded: a rule
/// or signature changed would have to read the messages again.
pub const RESCAN_KEYS: [&str; 8] = [
    "rules",
    "yara_rules",
    "malware_hashes",
    "clamav_hashes",
    "blocklists",
    "blocked_extensions",
    "protected_names",
    "protected_domains",
];

/// A document compiled: the decision policy and the scanning content engines, built
/// off the sessions' path.
pub struct Compiled {
    pub policy: Policy,
    pub content: Content,
}

/// The engines whose rules and signatures the policy holds.
pub struct Content {
    pub spam: SpamEngine,
    pub malware: MalwareEngine,
    pub yara: Option<YaraEngine>,
    pub attachments: AttachmentEngine,
    pub phishing: PhishingEngine,
    pub blocklists: Vec<Zone>,
    /// Rule lines skipped (outside the supported subset) and YARA warnings.
    pub notes: Vec<String>,
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
            rules: Some(self.rules.clone().unwrap_or_default()),
            yara_rules: Some(self.yara_rules.clone().unwrap_or_default()),
            malware_hashes: Some(self.malware_hashes.clone().unwrap_or_default()),
            clamav_hashes: Some(self.clamav_hashes.clone().unwrap_or_default()),
            blocklists: Some(self.blocklists.clone().unwrap_or_default()),
            blocked_extensions: Some(
                self.blocked_extensions
                    .clone()
                    .unwrap_or_else(|| DEFAULT_BLOCKED.iter().map(|e| e.to_string()).collect()),
            ),
            protected_names: Some(self.protected_names.clone().unwrap_or_default()),
            protected_domains: Some(self.protected_domains.clone().unwrap_or_default()),
            exporters: Some(self.exporters.clone().unwrap_or_default()),
        }
    }

    /// [`Document::complete`] as JSON: keys in a fixed order, the form the cluster
    /// stores and hashes.
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.complete()).expect("a policy document serializes")
    }

    /// The policy and the engines this document decides by, or every problem found
    /// at once, each named by its key (`policy.tag_score: ...`, `policy.rules:
    /// local.cf:3: ...`).
    pub fn compile(&self) -> Result<Compiled, Vec<String>> {
        let mut problems = Vec::new();
        let policy = self.decision(&mut problems);
        let content = self.content(&mut problems);
        match (problems.is_empty(), content) {
            (true, Some(content)) => Ok(Compiled { policy, content }),
            _ => Err(problems),
        }
    }

    /// The exporters as this node builds them, with its own files and secrets, or
    /// every problem found at once.
    pub fn exporters(&self, local: &crate::siem::Local) -> Result<Vec<Exporter>, Vec<String>> {
        let mut problems = Vec::new();
        let specs = self.exporters.as_deref().unwrap_or_default();
        let built = crate::config::exporters("policy.exporters", specs, local, &mut problems);
        match problems.is_empty() {
            true => Ok(built),
            false => Err(problems),
        }
    }

    /// The scanning engines of the rules and signatures, each problem added to
    /// `problems`.
    fn content(&self, problems: &mut Vec<String>) -> Option<Content> {
        let none = Vec::new();
        let mut notes = Vec::new();
        let spam = match SpamEngine::new(self.rules.as_ref().unwrap_or(&none)) {
            Ok((engine, skipped)) => {
                notes.extend(skipped);
                Some(engine)
            }
            Err(e) => {
                problems.push(format!("policy.rules: {e}"));
                None
            }
        };
        let malware = MalwareEngine::new(
            self.malware_hashes.as_ref().unwrap_or(&none),
            self.clamav_hashes.as_ref().unwrap_or(&none),
        )
        .map_err(|e| problems.push(format!("policy.malware_hashes/clamav_hashes: {e}")))
        .ok();
        let yara = match self.yara_rules.as_ref().filter(|r| !r.is_empty()) {
            None => Some(None),
            Some(sources) => match YaraEngine::new(sources) {
                Ok(engine) => {
                    notes.extend(engine.warnings().iter().cloned());
                    Some(Some(engine))
                }
                Err(e) => {
                    problems.push(format!("policy.yara_rules: {e}"));
                    None
                }
            },
        };
        let blocked: Vec<String> = match &self.blocked_extensions {
            Some(list) => list
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            None => DEFAULT_BLOCKED.iter().map(|e| e.to_string()).collect(),
        };
        if let Some(bad) = blocked
            .iter()
            .find(|e| e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            problems.push(format!(
                "policy.blocked_extensions: {bad:?} is not a file extension"
            ));
        }
        let blocklists: Vec<Zone> = self
            .blocklists
            .iter()
            .flatten()
            .filter_map(|spec| {
                parse_zone(spec)
                    .map_err(|e| problems.push(format!("policy.blocklists: {e}")))
                    .ok()
            })
            .collect();
        let names = self.protected_names.clone().unwrap_or_default();
        if names.iter().any(|n| n.split_whitespace().next().is_none()) {
            problems.push("policy.protected_names: a name cannot be empty".into());
        }
        let domains: Vec<String> = self
            .protected_domains
            .iter()
            .flatten()
            .filter_map(
                |d| match crate::mail::ascii_domain(d).filter(|a| a.contains('.')) {
                    Some(ascii) => Some(ascii),
                    None => {
                        problems.push(format!("policy.protected_domains: {d:?} is not a domain"));
                        None
                    }
                },
            )
            .collect();
        Some(Content {
            spam: spam?,
            malware: malware?,
            yara: yara?,
            attachments: AttachmentEngine::new(blocked),
            phishing: PhishingEngine::new(&names, &domains),
            blocklists,
            notes,
        })
    }

    /// The decision policy alone (thresholds, actions, lists, overrides), each
    /// problem added to `problems`.
    fn decision(&self, problems: &mut Vec<String>) -> Policy {
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
        let (a, b) = (
            sparse.compile().unwrap().policy,
            back.compile().unwrap().policy,
        );
        assert_eq!(a.thresholds, b.thresholds);
        assert_eq!((a.malware, a.attachments), (b.malware, b.attachments));
        // The default document is the default policy, the built-in extensions
        // written out.
        let default = Document::default().compile().unwrap().policy;
        assert_eq!(default.thresholds, Policy::default().thresholds);
        let complete = Document::default().complete();
        assert!(complete
            .blocked_extensions
            .unwrap()
            .contains(&"exe".to_string()));
    }

    #[test]
    fn rule_and_signature_files_compile_with_the_rest_and_their_mistakes_are_named() {
        let source = |name: &str, text: &str| Source {
            name: name.into(),
            text: text.into(),
        };
        let good = Document {
            rules: Some(vec![source(
                "local.cf",
                "body LOCAL_X /x-marker/\nscore LOCAL_X 3.0\n",
            )]),
            yara_rules: Some(vec![source(
                "m.yar",
                "rule M { strings: $a = \"zz\" condition: $a }",
            )]),
            malware_hashes: Some(vec![source("feed.txt", &"ab".repeat(32))]),
            blocklists: Some(vec!["zen.example.test=3.0".into()]),
            blocked_extensions: Some(vec![".EXE".into()]),
            ..Document::default()
        };
        let content = good.compile().unwrap().content;
        assert!(content.yara.is_some());
        assert_eq!(content.blocklists.len(), 1);
        assert_eq!(content.malware.signatures(), 2);
        let bad = Document {
            rules: Some(vec![source("bad.cf", "score\n")]),
            yara_rules: Some(vec![source("bad.yar", "rule {")]),
            malware_hashes: Some(vec![source("feed.txt", "nothex")]),
            blocklists: Some(vec!["=x".into()]),
            blocked_extensions: Some(vec!["e x e".into()]),
            protected_names: Some(vec![" ".into()]),
            protected_domains: Some(vec!["not a domain".into()]),
            ..Document::default()
        };
        let problems = bad.compile().err().expect("refused");
        assert_eq!(problems.len(), 7, "{problems:#?}");
        for key in RESCAN_KEYS.iter().filter(|k| **k != "clamav_hashes") {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("policy.{key}"))),
                "{key}: {problems:#?}"
            );
        }
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
        let problems = bad.compile().err().expect("refused");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("policy: tag_score (30)"));
        let unknown = Document::from_json(r#"{"tag_scor": 3}"#).unwrap_err();
        assert!(unknown.contains("unknown field `tag_scor`"), "{unknown}");
        let wrong = Document::from_json(r#"{"allow": "x.test"}"#).unwrap_err();
        assert!(wrong.contains("invalid type"), "{wrong}");
    }
}

//! Policy: turns what the engines found into one action per message — deliver, tag,
//! quarantine or reject — with the reason in words.
//!
//! The order of precedence, first match wins:
//! 1. malware → `policy.malware` (reject by default);
//! 2. a block-listed sender, domain or client IP → reject;
//! 3. a sender on the block list of every recipient's own (their portal) → reject;
//! 4. blocked attachments, active content, encrypted archives and archive bombs →
//!    `policy.attachments` (quarantine by default);
//! 5. an allow-listed sender, domain or client IP → deliver (scores are not applied;
//!    malware and attachments above still are);
//! 6. the sender's DMARC policy asks to reject or quarantine a failing message and
//!    `policy.dmarc` is `enforce` → that (a recipient's own allow list does not
//!    overrule it: a forged `From` of a sender they allowed is still judged);
//! 7. a sender on the allow list of every recipient's own, authenticated (SPF pass
//!    for the envelope's, DMARC pass for the From's) → deliver;
//! 8. the score against the thresholds (reject, then quarantine, then tag).
//!
//! A recipient's own lists decide only when every recipient of the message agrees
//! (one verdict a message); otherwise the cluster's policy does, and each recipient
//! can still release their own copy.
//!
//! Thresholds come from `[policy]`, overridden per recipient domain
//! (`[policy.domains."example.test"]`) and per recipient (`[policy.recipients]`).
//! A message for several recipients is judged once with the strictest thresholds
//! among them.
//!
//! The policy is the cluster's, not the node's: [`document`] is what an
//! administrator writes (a node's `[policy]` section, the API's JSON), [`replicated`]
//! seeds the cluster's first version from it and follows the versions the cluster
//! commits, swapping each in whole ([`Live`]) for the sessions to judge by, and
//! [`simulate`] tries a proposed policy on the decisions on record.

mod document;
mod lists;
pub mod replicated;
pub mod simulate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bulwark_model::{Action, Thresholds};

pub use document::{Compiled, Content, Document, DocumentOverrides, Source, RESCAN_KEYS};
pub use lists::List;

/// A compiled policy, the engines of its rules and signatures, and the cluster's
/// version it is (0: the node's own `[policy]`, before the cluster had one).
pub struct Current {
    pub version: u64,
    pub policy: Policy,
    pub ruleset: Arc<crate::scan::Ruleset>,
}

/// The policy the sessions judge by: the newest version this node has compiled,
/// swapped whole, never half-changed under a message.
pub type Live = tokio::sync::watch::Receiver<Arc<Current>>;

/// A policy that never changes (benchmarks, tools).
pub fn fixed(current: Current) -> Live {
    tokio::sync::watch::channel(Arc::new(current)).1
}

/// Thresholds and subject prefix for a domain or recipient; `None` keeps the default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub tag: Option<f64>,
    pub quarantine: Option<f64>,
    pub reject: Option<f64>,
    pub subject_prefix: Option<String>,
}

/// The validated `[policy]` section.
#[derive(Clone, Debug)]
pub struct Policy {
    pub thresholds: Thresholds,
    /// Prepended to the subject of tagged messages; empty: subject left alone.
    pub subject_prefix: String,
    /// Action for malware: reject or quarantine.
    pub malware: Action,
    /// Action for blocked attachments and active content.
    pub attachments: Action,
    /// Honour the sender's DMARC `p=reject`/`p=quarantine` for failing messages.
    pub dmarc_enforce: bool,
    pub allow: List,
    pub block: List,
    /// By recipient domain (IDNA ASCII, lowercase).
    pub domains: HashMap<String, Overrides>,
    /// By recipient address (lowercase).
    pub recipients: HashMap<String, Overrides>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            thresholds: Thresholds {
                tag: 5.0,
                quarantine: 10.0,
                reject: 20.0,
            },
            subject_prefix: String::new(),
            malware: Action::Reject,
            attachments: Action::Quarantine,
            dmarc_enforce: true,
            allow: List::default(),
            block: List::default(),
            domains: HashMap::new(),
            recipients: HashMap::new(),
        }
    }
}

/// What the policy weighs.
pub struct Facts<'a> {
    pub mail_from: &'a str,
    /// The address of the `From` header, if any.
    pub header_from: Option<&'a str>,
    pub rcpt_to: &'a [String],
    pub client_ip: IpAddr,
    pub score: f64,
    /// The first malware signature found, if any.
    pub malware: Option<&'a str>,
    /// The first blocked attachment or active content found, if any.
    pub blocked_content: Option<&'a str>,
    /// What the sender's DMARC policy asks for this (failing) message.
    pub dmarc: Option<Action>,
    /// What each recipient's own lists say of the sender, one a recipient (empty:
    /// none was looked up).
    pub personal: &'a [Personal],
}

/// Where the recipients' own lists are read: the replicated state.
pub trait PersonalLists: Send + Sync {
    /// `recipient`'s lists (none, or unreadable: empty).
    fn lists(&self, recipient: &str) -> bulwark_model::recipient::RecipientLists;
}

/// What one recipient's own allow and block lists say of a message's sender: the
/// entry that matched, on either.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Personal {
    pub allow: Option<String>,
    pub block: Option<String>,
}

impl Personal {
    /// Matches a recipient's lists: the block list against the sender addresses as
    /// written (`senders`), the allow list against those that authenticated
    /// (`verified`), so that a forged address of a sender they allowed is judged.
    pub fn of(
        lists: &bulwark_model::recipient::RecipientLists,
        senders: &[Option<&str>],
        verified: &[Option<&str>],
    ) -> Self {
        let matched = |entries: &[String], senders: &[Option<&str>]| {
            let mut list = List::default();
            for entry in entries {
                // Entries were checked when added; one this build cannot read is
                // skipped rather than failing the message.
                let _ = list.add(entry);
            }
            let nowhere = IpAddr::from([0, 0, 0, 0]);
            list.matches(senders, nowhere)
        };
        Personal {
            allow: matched(&lists.allow, verified),
            block: matched(&lists.block, senders),
        }
    }
}

/// The first recipient's entry when every recipient's own list matched.
fn unanimous(
    personal: &[Personal],
    rcpts: usize,
    pick: fn(&Personal) -> Option<&str>,
) -> Option<&str> {
    if personal.is_empty() || personal.len() != rcpts {
        return None;
    }
    let mut entries = personal.iter().map(pick);
    let first = entries.next().flatten()?;
    entries.all(|e| e.is_some()).then_some(first)
}

/// The policy's decision about one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub thresholds: Thresholds,
    /// For [`Action::Tag`]: the subject prefix to add, if any.
    pub subject_prefix: Option<String>,
}

impl Policy {
    /// Decides what to do with one message.
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        let (thresholds, prefix) = self.for_recipients(facts.rcpt_to);
        let decision = |action: Action, reason: String| Decision {
            action,
            reason,
            thresholds,
            subject_prefix: (action == Action::Tag && !prefix.is_empty()).then(|| prefix.clone()),
        };
        if let Some(name) = facts.malware {
            return decision(self.malware, format!("malware {name}"));
        }
        let senders = [Some(facts.mail_from), facts.header_from];
        if let Some(entry) = self.block.matches(&senders, facts.client_ip) {
            return decision(Action::Reject, format!("block-listed: {entry}"));
        }
        let rcpts = facts.rcpt_to.len();
        if let Some(entry) = unanimous(facts.personal, rcpts, |p| p.block.as_deref()) {
            return decision(
                Action::Reject,
                format!("block-listed by the recipient: {entry}"),
            );
        }
        if let Some(what) = facts.blocked_content {
            return decision(self.attachments, format!("blocked content {what}"));
        }
        if let Some(entry) = self.allow.matches(&senders, facts.client_ip) {
            return decision(Action::Deliver, format!("allow-listed: {entry}"));
        }
        if let (true, Some(action)) = (self.dmarc_enforce, facts.dmarc) {
            return decision(
                action,
                format!("DMARC policy of the From domain: {}", action.as_str()),
            );
        }
        if let Some(entry) = unanimous(facts.personal, rcpts, |p| p.allow.as_deref()) {
            return decision(
                Action::Deliver,
                format!("allow-listed by the recipient: {entry}"),
            );
        }
        let score = facts.score;
        let (action, reason) = if score >= thresholds.reject {
            (
                Action::Reject,
                format!("score {score:.1} >= reject {}", thresholds.reject),
            )
        } else if score >= thresholds.quarantine {
            (
                Action::Quarantine,
                format!("score {score:.1} >= quarantine {}", thresholds.quarantine),
            )
        } else if score >= thresholds.tag {
            (
                Action::Tag,
                format!("score {score:.1} >= tag {}", thresholds.tag),
            )
        } else {
            (
                Action::Deliver,
                format!("score {score:.1} below tag {}", thresholds.tag),
            )
        };
        decision(action, reason)
    }

    /// The strictest thresholds among the recipients' overrides, and the subject
    /// prefix of the first recipient that sets one (else the default).
    fn for_recipients(&self, rcpt_to: &[String]) -> (Thresholds, String) {
        let mut thresholds: Option<Thresholds> = None;
        let mut prefix: Option<&str> = None;
        for rcpt in rcpt_to {
            // Keyed as the overrides are: the local part in lower case, the domain
            // in lower-case IDNA ASCII (a recipient's is stored in Unicode).
            let (local, domain) = rcpt
                .rsplit_once('@')
                .and_then(|(l, d)| Some((l, crate::mail::ascii_domain(d)?)))
                .unwrap_or_default();
            let address = format!("{}@{domain}", local.to_lowercase());
            let by_domain = self.domains.get(&domain);
            let by_rcpt = self.recipients.get(&address);
            let pick = |f: fn(&Overrides) -> Option<f64>, default: f64| {
                by_rcpt
                    .and_then(f)
                    .or_else(|| by_domain.and_then(f))
                    .unwrap_or(default)
            };
            let mine = Thresholds {
                tag: pick(|o| o.tag, self.thresholds.tag),
                quarantine: pick(|o| o.quarantine, self.thresholds.quarantine),
                reject: pick(|o| o.reject, self.thresholds.reject),
            };
            thresholds = Some(match thresholds {
                None => mine,
                Some(t) => Thresholds {
                    tag: t.tag.min(mine.tag),
                    quarantine: t.quarantine.min(mine.quarantine),
                    reject: t.reject.min(mine.reject),
                },
            });
            if prefix.is_none() {
                prefix = by_rcpt
                    .and_then(|o| o.subject_prefix.as_deref())
                    .or_else(|| by_domain.and_then(|o| o.subject_prefix.as_deref()));
            }
        }
        (
            thresholds.unwrap_or(self.thresholds),
            prefix.unwrap_or(&self.subject_prefix).to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(score: f64) -> Facts<'static> {
        Facts {
            mail_from: "a@sender.test",
            header_from: Some("a@sender.test"),
            rcpt_to: &[],
            client_ip: "192.0.2.1".parse().unwrap(),
            score,
            malware: None,
            blocked_content: None,
            dmarc: None,
            personal: &[],
        }
    }

    #[test]
    fn scores_map_to_actions_at_the_thresholds() {
        let policy = Policy {
            subject_prefix: "[SPAM]".into(),
            ..Policy::default()
        };
        let cases = [
            (0.0, Action::Deliver),
            (4.99, Action::Deliver),
            (5.0, Action::Tag),
            (10.0, Action::Quarantine),
            (19.9, Action::Quarantine),
            (20.0, Action::Reject),
            (1000.0, Action::Reject),
        ];
        for (score, action) in cases {
            assert_eq!(policy.decide(&facts(score)).action, action, "{score}");
        }
        let tagged = policy.decide(&facts(6.0));
        assert_eq!(tagged.subject_prefix.as_deref(), Some("[SPAM]"));
        assert_eq!(tagged.reason, "score 6.0 >= tag 5");
        assert_eq!(policy.decide(&facts(11.0)).subject_prefix, None);
    }

    #[test]
    fn malware_blocks_and_content_come_before_allow_lists_and_scores() {
        let mut policy = Policy::default();
        policy.allow.add("sender.test").unwrap();
        policy.block.add("198.51.100.0/24").unwrap();
        let mut f = facts(50.0);
        assert_eq!(policy.decide(&f).action, Action::Deliver);
        assert_eq!(policy.decide(&f).reason, "allow-listed: sender.test");
        f.blocked_content = Some("extension:exe");
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
        f.malware = Some("Eicar-Test-Signature");
        let d = policy.decide(&f);
        assert_eq!(d.action, Action::Reject);
        assert_eq!(d.reason, "malware Eicar-Test-Signature");
        let mut f = facts(0.0);
        f.client_ip = "198.51.100.9".parse().unwrap();
        let d = policy.decide(&f);
        assert_eq!(
            (d.action, d.reason.as_str()),
            (Action::Reject, "block-listed: 198.51.100.0/24")
        );
    }

    #[test]
    fn a_recipient_s_own_lists_decide_when_every_recipient_agrees() {
        let mut bob = bulwark_model::recipient::RecipientLists::default();
        bob.add(bulwark_model::recipient::ListKind::Allow, "sender.test")
            .unwrap();
        let mut carol = bulwark_model::recipient::RecipientLists::default();
        carol
            .add(bulwark_model::recipient::ListKind::Block, "a@sender.test")
            .unwrap();
        let senders = [Some("A@Sender.test"), None];
        // Bob's allow list takes the sender only once it authenticated.
        assert_eq!(Personal::of(&bob, &senders, &[None, None]).allow, None);
        let (bob, carol) = (
            Personal::of(&bob, &senders, &senders),
            Personal::of(&carol, &senders, &[None, None]),
        );
        assert_eq!(bob.allow.as_deref(), Some("sender.test"));
        assert_eq!(carol.block.as_deref(), Some("a@sender.test"));
        let policy = Policy::default();
        let one = ["bob@example.test".to_string()];
        let two = [
            "bob@example.test".to_string(),
            "carol@example.test".to_string(),
        ];
        let mut f = facts(12.0);
        f.rcpt_to = &one;
        let alone = [bob.clone()];
        f.personal = &alone;
        let d = policy.decide(&f);
        assert_eq!(d.action, Action::Deliver);
        assert_eq!(d.reason, "allow-listed by the recipient: sender.test");
        // A DMARC failure the sender's domain asks to quarantine is not overruled.
        f.dmarc = Some(Action::Quarantine);
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
        f.dmarc = None;
        // Two recipients who disagree: the cluster's policy decides.
        f.rcpt_to = &two;
        let both = [bob, carol.clone()];
        f.personal = &both;
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
        let blocked = [carol.clone(), carol];
        f.personal = &blocked;
        let d = policy.decide(&f);
        assert_eq!(
            (d.action, d.reason.as_str()),
            (
                Action::Reject,
                "block-listed by the recipient: a@sender.test"
            )
        );
        // Lists looked up for fewer recipients than the message has decide nothing.
        f.personal = &blocked[..1];
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
    }

    #[test]
    fn dmarc_is_enforced_unless_configured_to_report_only() {
        let mut policy = Policy::default();
        let mut f = facts(0.0);
        f.dmarc = Some(Action::Quarantine);
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
        policy.dmarc_enforce = false;
        assert_eq!(policy.decide(&f).action, Action::Deliver);
    }

    #[test]
    fn the_strictest_recipient_override_applies() {
        let mut policy = Policy::default();
        policy.domains.insert(
            "example.test".into(),
            Overrides {
                tag: Some(3.0),
                subject_prefix: Some("[maybe spam]".into()),
                ..Overrides::default()
            },
        );
        policy.recipients.insert(
            "ceo@example.test".into(),
            Overrides {
                quarantine: Some(4.0),
                ..Overrides::default()
            },
        );
        let rcpts = ["bob@other.test".to_string(), "Bob@EXAMPLE.test".to_string()];
        let mut f = facts(3.5);
        f.rcpt_to = &rcpts;
        let d = policy.decide(&f);
        assert_eq!(d.action, Action::Tag);
        assert_eq!(d.subject_prefix.as_deref(), Some("[maybe spam]"));
        let ceo = ["ceo@example.test".to_string()];
        f.rcpt_to = &ceo;
        f.score = 4.5;
        assert_eq!(policy.decide(&f).action, Action::Quarantine);
        f.rcpt_to = &rcpts[..1];
        assert_eq!(policy.decide(&f).action, Action::Deliver);
    }

    #[test]
    fn a_recipient_of_an_internationalised_domain_finds_its_override() {
        // `[policy.recipients] "josé@exämple.test"` is keyed in IDNA ASCII; the
        // recipient is stored with its domain in Unicode.
        let mut policy = Policy::default();
        policy.recipients.insert(
            "josé@xn--exmple-cua.test".into(),
            Overrides {
                quarantine: Some(4.0),
                ..Overrides::default()
            },
        );
        for rcpt in ["José@exämple.test", "josé@XN--EXMPLE-CUA.test"] {
            let rcpts = [rcpt.to_string()];
            let mut f = facts(4.5);
            f.rcpt_to = &rcpts;
            assert_eq!(policy.decide(&f).action, Action::Quarantine, "{rcpt}");
        }
    }
}

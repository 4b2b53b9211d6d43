//! What-if: a proposed policy tried on the decisions on record. Each recorded
//! verdict is decided again from what was recorded with it (its symbols' scores, its
//! findings, the DMARC policy's ask, the envelope, the `From` address, the client
//! or, behind a trusted relay, the origin it was judged as): no rescan, no DNS, so
//! the answer is what the proposed policy gives those same messages. A change to the
//! rules, signatures or blocklists would need the messages read again: it is named
//! (`needs_rescan`), not guessed, and the decisions are tried with the scores and
//! findings on record.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bulwark_storage::policy::Decided;
use bulwark_storage::{Action, StateStore};
use serde_json::{json, Value};

use super::{Document, Facts, Personal, Policy, RESCAN_KEYS};
use crate::scan::FindingKind;

/// Events read a page from the store.
const PAGE: usize = 10_000;
/// Message ids given as examples of each change.
const EXAMPLES: usize = 10;

/// The range to try a policy on and where a previous answer stopped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// The `next` of the previous answer (0: from the start of the range).
    pub after: u64,
}

/// What trying a policy on a range found so far.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Decisions tried.
    pub judged: u64,
    /// By recorded action and the proposed policy's: how many, and the first ids.
    pub changes: BTreeMap<(&'static str, &'static str), (u64, Vec<String>)>,
    /// Rejections recorded before the `From` address was kept: tried with the
    /// envelope sender alone.
    pub without_header_from: u64,
    /// The keys whose change from the cluster's current version a simulation cannot
    /// decide (rules, signatures, blocklists): the messages would have to be scanned
    /// again. The decisions are tried with the scores and findings on record.
    pub needs_rescan: Vec<&'static str>,
    /// Where to go on from; `None` when the range is done.
    pub next: Option<u64>,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        let changed: u64 = self.changes.values().map(|(n, _)| n).sum();
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|((from, to), (count, examples))| {
                json!({ "from": from, "to": to, "count": count, "examples": examples })
            })
            .collect();
        json!({
            "judged": self.judged,
            "changed": changed,
            "unchanged": self.judged - changed,
            "changes": changes,
            "without_header_from": self.without_header_from,
            "needs_rescan": self.needs_rescan,
            "next": self.next,
        })
    }
}

/// Tries `proposed` (the `[policy]` keys as JSON) on the decisions of `range`, for
/// at most `budget`: every problem of the policy, or what it would change (with the
/// cursor to go on from when the budget ran out first).
pub fn simulate(
    state: &StateStore,
    proposed: &Value,
    range: Range,
    budget: Duration,
) -> Result<Result<Outcome, Vec<String>>, bulwark_storage::Error> {
    let document = match serde_json::from_value::<Document>(proposed.clone()) {
        Ok(document) => document,
        Err(e) => return Ok(Err(vec![format!("policy: {e}")])),
    };
    let policy = match document.compile() {
        Ok(compiled) => compiled.policy,
        Err(problems) => return Ok(Err(problems)),
    };
    let started = Instant::now();
    let mut outcome = Outcome {
        needs_rescan: rescan_keys(state, &document)?,
        ..Outcome::default()
    };
    let mut after = range.after;
    loop {
        let (decided, next) = state.decisions(range.since_ms, range.until_ms, after, PAGE)?;
        for decision in &decided {
            try_one(&policy, decision, &mut outcome);
        }
        match next {
            Some(next) if started.elapsed() < budget => after = next,
            next => {
                outcome.next = next;
                return Ok(Ok(outcome));
            }
        }
    }
}

/// The rule and signature keys in which `proposed` differs from the cluster's
/// current version (from the defaults when it has none).
fn rescan_keys(
    state: &StateStore,
    proposed: &Document,
) -> Result<Vec<&'static str>, bulwark_storage::Error> {
    let current: Value = match state.current_policy()? {
        Some(version) => serde_json::from_str(&version.document).unwrap_or(Value::Null),
        None => serde_json::to_value(Document::default().complete()).unwrap_or(Value::Null),
    };
    let proposed = serde_json::to_value(proposed.complete()).unwrap_or(Value::Null);
    Ok(RESCAN_KEYS
        .into_iter()
        .filter(|key| current.get(key) != proposed.get(key))
        .collect())
}

fn try_one(policy: &Policy, decided: &Decided, outcome: &mut Outcome) {
    let action = redecide(policy, decided);
    outcome.judged += 1;
    if !decided.header_from_known {
        outcome.without_header_from += 1;
    }
    let recorded = decided.verdict.action;
    if action != recorded {
        let (count, examples) = outcome
            .changes
            .entry((recorded.as_str(), action.as_str()))
            .or_default();
        *count += 1;
        if examples.len() < EXAMPLES {
            examples.push(decided.verdict.message_id.to_string());
        }
    }
}

/// The action `policy` gives the decision on record: the same facts the live
/// pipeline hands it, read back from the verdict and its message's events.
/// The recipients' own lists are theirs, not the policy's: where they decided, the
/// verdict's reason says so, and they decide again.
pub fn redecide(policy: &Policy, decided: &Decided) -> Action {
    let verdict = &decided.verdict;
    let first = |kinds: &[FindingKind]| {
        verdict
            .findings
            .iter()
            .find(|f| kinds.iter().any(|k| k.as_str() == f.kind))
            .map(|f| f.name.as_str())
    };
    let dmarc = verdict.symbols.iter().find_map(|s| match s.name.as_str() {
        "DMARC_FAIL_REJECT" => Some(Action::Reject),
        "DMARC_FAIL_QUARANTINE" => Some(Action::Quarantine),
        _ => None,
    });
    policy
        .decide(&Facts {
            mail_from: &decided.mail_from,
            header_from: decided.header_from.as_deref(),
            rcpt_to: &decided.rcpt_to,
            client_ip: judged_ip(decided),
            score: verdict.score,
            malware: first(&[FindingKind::Malware]),
            blocked_content: first(&[
                FindingKind::BlockedAttachment,
                FindingKind::ActiveContent,
                FindingKind::Encrypted,
                FindingKind::Bomb,
            ]),
            dmarc,
            personal: &personal(&verdict.reason, decided.rcpt_to.len()),
        })
        .action
}

/// The address the message was judged as from: behind a trusted relay, the origin
/// the verdict's `RCVD_VIA_TRUSTED_RELAY` names; else the SMTP client.
fn judged_ip(decided: &Decided) -> IpAddr {
    decided
        .verdict
        .symbols
        .iter()
        .find(|s| s.name == crate::scan::VIA_TRUSTED_RELAY)
        .and_then(|s| s.description.strip_prefix(crate::scan::JUDGED_AS_FROM))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(decided.client_ip)
}

/// What the recipients' own lists said, as far as a verdict's reason tells: every
/// recipient's list matched when they decided it.
fn personal(reason: &str, rcpts: usize) -> Vec<Personal> {
    let matched = |prefix: &str| {
        reason
            .strip_prefix(prefix)
            .map(|entry| entry.trim().to_string())
    };
    let one = Personal {
        allow: matched("allow-listed by the recipient:"),
        block: matched("block-listed by the recipient:"),
    };
    if one == Personal::default() {
        return Vec::new();
    }
    vec![one; rcpts]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_model::samples;
    use bulwark_storage::Symbol;

    fn decided(symbols: Vec<Symbol>) -> Decided {
        let received = samples::received();
        let mut verdict = samples::verdict(received.message_id);
        verdict.symbols = symbols;
        Decided {
            seq: 2,
            verdict,
            mail_from: received.envelope.mail_from,
            header_from: received.header_from,
            header_from_known: true,
            rcpt_to: received.envelope.rcpt_to,
            client_ip: received.client.ip,
        }
    }

    fn symbol(name: &str, description: String) -> Symbol {
        Symbol {
            name: name.into(),
            score: 0.0,
            description,
            engine: "test".into(),
        }
    }

    #[test]
    fn a_relayed_message_is_judged_as_from_its_origin_and_dmarc_asks_what_was_recorded() {
        let mut policy = Policy::default();
        policy.block.add("198.51.100.0/24").unwrap();
        let direct = decided(Vec::new());
        assert_eq!(redecide(&policy, &direct), Action::Deliver);
        let relayed = decided(vec![symbol(
            crate::scan::VIA_TRUSTED_RELAY,
            format!(
                "{}198.51.100.9 (HELO mail.sender.test), which handed it to our relay 10.1.0.5",
                crate::scan::JUDGED_AS_FROM
            ),
        )]);
        assert_eq!(redecide(&policy, &relayed), Action::Reject);

        let mut policy = Policy::default();
        let failing = decided(vec![symbol("DMARC_FAIL_QUARANTINE", "fails".into())]);
        assert_eq!(redecide(&policy, &failing), Action::Quarantine);
        policy.dmarc_enforce = false;
        assert_eq!(redecide(&policy, &failing), Action::Deliver);
    }
}

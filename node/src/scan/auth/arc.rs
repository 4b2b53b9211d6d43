//! ARC (RFC 8617): the verdict on the message's chain of custody, and the result
//! and hit it adds to the report.
//!
//! The verdict follows RFC 8617 §5.2. The chain's fields are read first
//! ([`super::arc_structure`]): none at all is `arc=none`, the only case that is; a
//! field or a structure that breaks the RFC is `arc=fail`. Then mail-auth verifies
//! the newest ARC-Message-Signature and every ARC-Seal, and the key record of each
//! is checked as DKIM's is (RFC 6376 §3.6.1): one that cannot verify the signature
//! is `arc=fail` even where mail-auth's signature check passed.

use std::fmt::Write as _;

use mail_auth::arc::ArcError;
use mail_auth::{AuthenticatedMessage, DkimResult, Error};

use super::arc_structure::{chain, Chain};
use super::dkim_key::key_problem;
use super::results::comment_text;
use super::{Authenticator, Report};
use crate::scan::engine::Hit;

/// ARC's verdict, copied out of `mail-auth`'s borrowed output.
#[derive(Clone, Debug)]
pub(super) struct ArcVerdict {
    result: &'static str,
    instances: usize,
    reason: Option<String>,
}

impl ArcVerdict {
    fn fail(instances: usize, reason: String) -> Self {
        ArcVerdict {
            result: "fail",
            instances,
            reason: Some(reason),
        }
    }
}

impl Authenticator {
    /// ARC's verdict on `message` (RFC 8617 §5.2).
    pub(super) async fn arc_chain(&self, message: &AuthenticatedMessage<'_>) -> ArcVerdict {
        let keys = match chain(message.raw_parsed_headers()) {
            Chain::None => {
                return ArcVerdict {
                    result: "none",
                    instances: 0,
                    reason: None,
                }
            }
            Chain::Broken { instances, reason } => {
                return ArcVerdict::fail(instances as usize, reason)
            }
            Chain::Sound { keys } => keys,
        };
        let verdict = arc_verdict(&self.resolver.verify_arc(message).await);
        if verdict.result != "pass" {
            return verdict;
        }
        for key in keys {
            let name = format!("{}._domainkey.{}", key.selector, key.domain);
            if let Some([record]) = self.key_records(&format!("{name}.")).await.as_deref() {
                if let Some(problem) = key_problem(record, key.algorithm) {
                    return ArcVerdict::fail(
                        verdict.instances,
                        format!(
                            "the key of {} i={} at {name}: {problem}",
                            key.field, key.instance
                        ),
                    );
                }
            }
        }
        verdict
    }
}

/// mail-auth's result in RFC 8617's terms, on a chain whose fields are sound.
/// RFC 8617 §4.4 knows `none`, `pass` and `fail`: mail-auth's `none` (no chain
/// found) cannot be right where ARC fields are, and its `neutral` and `permerror`
/// (a field it cannot parse, a key record that is missing or does not parse) are
/// each a signature that does not validate, so all three are `fail`.
///
/// Its `temperror` stays `temperror`, a deliberate departure: it comes from a key
/// lookup that timed out or failed in the resolver (the names are well formed by
/// then: a `d=` that is no domain name has already failed). RFC 8617 §5.2 fails a
/// chain whose signature "fails to validate", and one whose key could not be
/// fetched has not been validated at all: DKIM, which ARC's signatures are,
/// calls it TEMPFAIL (RFC 6376 §6.1.2) and RFC 8601 §2.7.1 writes that
/// `temperror`. A `fail` would tell the policy that a forwarder broke the chain
/// when a nameserver was slow; `temperror` scores nothing and adds the method to
/// `AUTH_TEMPERROR`, as when the whole check runs out of time.
fn arc_verdict(output: &mail_auth::ArcOutput<'_>) -> ArcVerdict {
    let (result, reason) = match output.result() {
        DkimResult::Pass => ("pass", None),
        DkimResult::None => ("fail", Some("no chain found".to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::Fail(e) | DkimResult::Neutral(e) | DkimResult::PermError(e) => {
            ("fail", Some(arc_reason(e)))
        }
    };
    ArcVerdict {
        result,
        instances: output.sets().len(),
        reason,
    }
}

fn arc_reason(error: &Error) -> String {
    match error {
        Error::Arc(ArcError::BrokenChain) => "broken chain".to_string(),
        other => other.to_string(),
    }
}

impl Report {
    pub(super) fn arc(&mut self, verdict: ArcVerdict) {
        let mut detail = String::new();
        if verdict.instances > 0 {
            let _ = write!(detail, "(i={}", verdict.instances);
            if let Some(reason) = &verdict.reason {
                let _ = write!(detail, " {}", comment_text(reason));
            }
            detail.push(')');
        } else if let Some(reason) = &verdict.reason {
            let _ = write!(detail, "({})", comment_text(reason));
        }
        match verdict.result {
            "fail" => self.hits.push(Hit::new(
                "ARC_FAIL",
                1.0,
                format!(
                    "ARC: chain does not verify ({})",
                    verdict
                        .reason
                        .as_deref()
                        .map_or(String::new(), comment_text)
                ),
            )),
            "temperror" => self.temp_errors.push("arc".to_string()),
            _ => {}
        }
        self.push("arc", verdict.result, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{result, rsa, signed, symbols, Fixture, OTHER_RSA_PEM, STRANGER};
    use super::super::Authenticator;
    use mail_auth::arc::ArcSealer;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::{AuthenticatedMessage, AuthenticationResults};

    /// Seals `raw` as a forwarder at example.net would, with the ARC key at
    /// arc._domainkey.example.net.
    async fn arc_seal(auth: &Authenticator, raw: &str) -> String {
        let message = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
        let arc = auth.resolver.verify_arc(&message).await;
        let dkim = auth.resolver.verify_dkim(&message).await;
        let results = AuthenticationResults::new("forwarder.example.net")
            .with_dkim_results(&dkim, "ceo@example.com");
        let set = ArcSealer::from_key(rsa(OTHER_RSA_PEM))
            .domain("example.net")
            .selector("arc")
            .headers(["From", "To", "Subject", "DKIM-Signature"])
            .seal(&message, &results, &arc)
            .unwrap();
        format!("{}{raw}", set.to_header())
    }

    #[tokio::test]
    async fn arc_sealed_chain_passes_broken_chain_fails_none_is_none() {
        let fixture = Fixture::with_key("arc._domainkey.example.net", OTHER_RSA_PEM);
        let raw = signed("ceo@example.com", "Forwarded.\r\n");

        let none = fixture.check_designated(&raw).await;
        assert_eq!(result(&none, "arc")[0].result, "none");

        let sealed = arc_seal(&fixture.auth, &raw).await;
        let outcome = fixture
            .check(
                &sealed,
                STRANGER,
                "forwarder.example.net",
                "list@example.net",
            )
            .await;
        let arc = result(&outcome, "arc");
        assert_eq!(arc[0].result, "pass", "{arc:?}");
        assert_eq!(arc[0].detail, "(i=1)");
        assert!(!symbols(&outcome).contains(&"ARC_FAIL"));

        let broken = sealed.replace("Forwarded.", "Forwarded, then edited.");
        let outcome = fixture
            .check(
                &broken,
                STRANGER,
                "forwarder.example.net",
                "list@example.net",
            )
            .await;
        assert_eq!(result(&outcome, "arc")[0].result, "fail");
        assert!(symbols(&outcome).contains(&"ARC_FAIL"));
        assert!(outcome.header.contains("arc=fail"));
    }
}

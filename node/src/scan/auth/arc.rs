//! ARC (RFC 8617): the verdict on the message's chain of custody, and the result
//! and hit it adds to the report.

use std::fmt::Write as _;

use mail_auth::arc::ArcError;
use mail_auth::{DkimResult, Error};

use super::results::comment_text;
use super::Report;
use crate::scan::engine::Hit;

/// ARC's verdict, copied out of `mail-auth`'s borrowed output.
#[derive(Clone, Debug)]
pub(super) struct ArcVerdict {
    result: &'static str,
    instances: usize,
    reason: Option<String>,
}

pub(super) fn arc_verdict(output: &mail_auth::ArcOutput<'_>) -> ArcVerdict {
    let (result, reason) = match output.result() {
        DkimResult::Pass => ("pass", None),
        DkimResult::None => ("none", None),
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

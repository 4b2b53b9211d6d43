//! DKIM (RFC 6376): every signature of the message, and the results and hits it
//! adds to the report. `mail-auth` verifies; this turns its verdicts into RFC 8601
//! results.

use std::fmt::Write as _;

use mail_auth::dkim::DkimError;
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, Error};

use super::results::{base64, comment_text, pvalue};
use super::Report;
use crate::scan::engine::Hit;

impl Report {
    /// `problems` holds, for each output, why its key is unusable, if it is: that
    /// signature is a `permerror` whatever mail-auth found.
    pub(super) fn dkim(&mut self, outputs: &[DkimOutput<'_>], problems: &[Option<String>]) {
        if outputs.is_empty() {
            self.push("dkim", "none", String::new());
            return;
        }
        for (i, output) in outputs.iter().enumerate() {
            let (token, reason) = match problems.get(i).cloned().flatten() {
                Some(problem) => ("permerror", Some(problem)),
                None => dkim_token(output.result()),
            };
            let mut detail = String::new();
            if let Some(reason) = reason {
                let _ = write!(detail, "({}) ", comment_text(&reason));
            }
            if let Some(signature) = output.signature() {
                let _ = write!(
                    detail,
                    "header.d={} header.s={}",
                    pvalue(&signature.d),
                    pvalue(&signature.s)
                );
                if signature.b.len() >= 6 {
                    let _ = write!(detail, " header.b={}", pvalue(&base64(&signature.b[..6])));
                }
                let domain = comment_text(&signature.d);
                match token {
                    "pass" => self.dkim_pass.push(domain),
                    "fail" => self.dkim_fail.push(domain),
                    "temperror" => self.temp_errors.push(format!(
                        "dkim {}._domainkey.{domain}",
                        comment_text(&signature.s)
                    )),
                    _ => {}
                }
            }
            self.push("dkim", token, detail.trim_end().to_string());
        }
    }

    /// Every signature, reported as temperror: the whole DKIM phase ran out of time.
    pub(super) fn dkim_timed_out(&mut self, message: &AuthenticatedMessage<'_>) {
        if message.dkim_headers.is_empty() {
            self.push("dkim", "none", String::new());
            return;
        }
        for header in &message.dkim_headers {
            let signature = &header.header;
            self.temp_errors.push(format!(
                "dkim {}._domainkey.{}",
                comment_text(&signature.s),
                comment_text(&signature.d)
            ));
            self.push(
                "dkim",
                "temperror",
                format!(
                    "(DNS timeout) header.d={} header.s={}",
                    pvalue(&signature.d),
                    pvalue(&signature.s)
                ),
            );
        }
    }

    pub(super) fn dkim_hits(&mut self) {
        if !self.dkim_pass.is_empty() {
            let domains = self.dkim_pass.join(", ");
            self.hits.push(Hit::new(
                "DKIM_VALID",
                -0.1,
                format!("DKIM: valid signature from {domains}"),
            ));
        }
        if !self.dkim_fail.is_empty() {
            let domains = self.dkim_fail.join(", ");
            self.hits.push(Hit::new(
                "DKIM_INVALID",
                1.0,
                format!("DKIM: signature from {domains} does not verify"),
            ));
        }
    }
}

/// The RFC 8601 token of a DKIM result and the reason worth a comment. A body hash
/// mismatch is a failed signature (RFC 6376 §6.3), though `mail-auth` calls it
/// neutral.
fn dkim_token(result: &DkimResult) -> (&'static str, Option<String>) {
    match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            ("fail", Some("body hash did not verify".to_string()))
        }
        DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
        DkimResult::Fail(e) => ("fail", Some(e.to_string())),
        DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::None => ("none", None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{
        base_zone, result, sign_rsa, signed, symbols, Fixture, OTHER_RSA_PEM, RSA_PEM, STRANGER,
    };
    use super::*;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;

    fn ed25519() -> Ed25519Key {
        let pkcs8 = Ed25519Key::generate_pkcs8().expect("ed25519 key");
        Ed25519Key::from_pkcs8_der(&pkcs8).expect("ed25519 key")
    }

    #[tokio::test]
    async fn dkim_rsa_and_ed25519_signatures_both_verify() {
        let mut zone = base_zone();
        let ed = ed25519();
        zone.txt(
            "ed._domainkey.example.com",
            &format!("v=DKIM1; k=ed25519; p={}", base64(&ed.public_key())),
        );
        let fixture = Fixture::new(zone);
        let raw = signed("ceo@example.com", "Hi.\r\n");
        let ed_signature = DkimSigner::from_key(ed)
            .domain("example.com")
            .selector("ed")
            .headers(["From", "To", "Subject"])
            .sign(raw.as_bytes())
            .unwrap();
        let raw = format!("{}{raw}", ed_signature.to_header());
        let outcome = fixture.check_designated(&raw).await;
        let dkim = result(&outcome, "dkim");
        assert_eq!(dkim.len(), 2, "{dkim:?}");
        assert!(dkim.iter().all(|r| r.result == "pass"), "{dkim:?}");
        assert!(dkim.iter().any(|r| r.detail.contains("header.s=ed ")));
        assert!(dkim.iter().any(|r| r.detail.contains("header.s=rsa ")));
    }

    #[tokio::test]
    async fn dkim_tampered_body_fails() {
        let fixture = Fixture::new(base_zone());
        let raw = signed("ceo@example.com", "Pay 100 EUR.\r\n");
        let tampered = raw.replace("Pay 100", "Pay 900");
        let outcome = fixture.check_designated(&tampered).await;
        let dkim = result(&outcome, "dkim");
        assert_eq!(dkim[0].result, "fail");
        assert!(dkim[0]
            .detail
            .starts_with("(body hash did not verify) header.d=example.com"));
        assert!(symbols(&outcome).contains(&"DKIM_INVALID"));
        assert!(!symbols(&outcome).contains(&"DKIM_VALID"));
        // SPF still passes and is aligned, so DMARC passes.
        assert_eq!(result(&outcome, "dmarc")[0].result, "pass");
    }

    /// RFC 6376 §6.1.2 checks the key before the body: a signature whose key record
    /// is unusable is a permerror, with its body intact or tampered, and aligns
    /// nothing for DMARC.
    #[tokio::test]
    async fn dkim_an_unusable_key_is_a_permerror_whatever_the_body() {
        let key = base64(&super::super::fixture::rsa(RSA_PEM).public_key());
        for (record, why) in [
            (format!("v=DKIM1; k=rsa; p=!{key}"), "not base64"),
            (format!("v=DKIM1; k=rsa3; p={key}"), "unknown key type"),
            ("v=DKIM1; k=rsa; p=".to_string(), "revoked"),
            (
                format!("v=DKIM1; k=rsa; junk tag; p={key}"),
                "not a tag-list",
            ),
        ] {
            let mut zone = base_zone();
            zone.txt("broken._domainkey.example.com", &record);
            let fixture = Fixture::new(zone);
            let raw = sign_rsa(
                &super::super::fixture::message("ceo@example.com", "Pay 100 EUR.\r\n"),
                RSA_PEM,
                "example.com",
                "broken",
            );
            for body in [raw.clone(), raw.replace("Pay 100", "Pay 900")] {
                let outcome = fixture
                    .check(&body, STRANGER, "mx.example.com", "ceo@example.com")
                    .await;
                let dkim = result(&outcome, "dkim");
                assert_eq!(dkim[0].result, "permerror", "{record}: {dkim:?}");
                assert!(dkim[0].detail.contains(why), "{record}: {dkim:?}");
                assert_eq!(result(&outcome, "dmarc")[0].result, "fail", "{record}");
                assert!(!symbols(&outcome).contains(&"DKIM_VALID"), "{record}");
            }
        }
    }

    #[tokio::test]
    async fn dkim_one_good_one_bad_signature_both_reported() {
        // The "bad" selector publishes a key that did not make the signature.
        let fixture = Fixture::with_key("bad._domainkey.example.com", RSA_PEM);
        let raw = signed("ceo@example.com", "Hi.\r\n");
        let raw = sign_rsa(&raw, OTHER_RSA_PEM, "example.com", "bad");
        let outcome = fixture
            .check(&raw, STRANGER, "mx.example.com", "ceo@example.com")
            .await;
        let dkim = result(&outcome, "dkim");
        assert_eq!(dkim.len(), 2, "{dkim:?}");
        let bad = dkim
            .iter()
            .find(|r| r.detail.contains("header.s=bad "))
            .unwrap();
        let good = dkim
            .iter()
            .find(|r| r.detail.contains("header.s=rsa "))
            .unwrap();
        assert_eq!(bad.result, "fail");
        assert_eq!(good.result, "pass");
        let symbols = symbols(&outcome);
        assert!(
            symbols.contains(&"DKIM_VALID") && symbols.contains(&"DKIM_INVALID"),
            "{symbols:?}"
        );
        // SPF fails from a stranger, but the good signature is aligned.
        assert_eq!(result(&outcome, "spf")[1].result, "fail");
        assert_eq!(result(&outcome, "dmarc")[0].result, "pass");
        assert_eq!(outcome.dmarc_policy, None);
        assert_eq!(outcome.header.matches("dkim=").count(), 2);
    }
}

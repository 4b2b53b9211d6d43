//! One-click unsubscription as RFC 8058 requires it of a sender: one
//! `List-Unsubscribe` field with one HTTPS URI (§3.1), one `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click`, and a valid DKIM signature whose `h=` covers both
//! fields (§4). Signed by a domain of the From domain's organization (relaxed
//! alignment, whatever the domain's DMARC record says), it marks a bulk sender that
//! answers for its list under its own name, as large mailbox providers require of
//! bulk senders. The two fields alone, which anyone can write, are only the rules'
//! smaller `LIST_UNSUBSCRIBE_ONE_CLICK`.
//!
//! A field given twice, or whose name has blanks before its colon, is refused: a
//! signature covers only the last of repeated fields, and a name spelled with blanks
//! is not the field it covers (the verifier compares names exactly), so either would
//! let a field added on the way borrow a signature made without it.

use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult};

use super::results::comment_text;
use super::Report;
use crate::scan::engine::Hit;
use crate::scan::suffixes::Suffixes;

/// The symbol, and its score.
const SYMBOL: &str = "LIST_UNSUBSCRIBE_ONE_CLICK_SIGNED";
const SCORE: f64 = -0.5;
/// The only value `List-Unsubscribe-Post` may have (RFC 8058 §3.1).
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

impl Report {
    /// Adds [`SYMBOL`] when the message offers one-click unsubscription and one of
    /// the `usable` signatures (valid, its key sound) covers both fields for a domain
    /// of the From address's organization.
    pub(super) fn one_click(
        &mut self,
        message: &AuthenticatedMessage<'_>,
        usable: &[DkimOutput<'_>],
        suffixes: &Suffixes,
    ) {
        let [from] = message.from.as_slice() else {
            return;
        };
        let Some((_, from_domain)) = from.rsplit_once('@') else {
            return;
        };
        // The value of the one field called `name`, its name spelled exactly.
        let only = |name: &str| {
            let mut fields = message
                .headers
                .iter()
                .filter(|(field, _)| field.trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
            match (fields.next(), fields.next()) {
                (Some((field, value)), None) if field.len() == name.len() => {
                    Some(String::from_utf8_lossy(value))
                }
                _ => None,
            }
        };
        let one_click = only("List-Unsubscribe-Post").is_some_and(|v| v.trim() == ONE_CLICK);
        let one_https = only("List-Unsubscribe").is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.matches("<https://").count() == 1 && !v.contains("<http://")
        });
        if !(one_click && one_https) {
            return;
        }
        let organization = suffixes.organizational(from_domain);
        let signer = usable
            .iter()
            .filter(|output| *output.result() == DkimResult::Pass)
            .filter_map(DkimOutput::signature)
            .find(|signature| {
                let covers =
                    |field: &str| signature.h.iter().any(|h| h.eq_ignore_ascii_case(field));
                covers("List-Unsubscribe")
                    && covers("List-Unsubscribe-Post")
                    && suffixes.organizational(&signature.d) == organization
            });
        if let Some(signature) = signer {
            self.hits.push(Hit::new(
                SYMBOL,
                SCORE,
                format!(
                    "RFC 8058 one-click unsubscription, signed by {} for {}",
                    comment_text(&signature.d),
                    comment_text(from_domain)
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;

    use super::super::fixture::{base_zone, dkim_key, result, rsa, symbols, Fixture, RSA_PEM};
    use super::*;

    const LIST: &str = "List-Unsubscribe: <https://news.example.com/u/8812>, \
                        <mailto:leave@news.example.com>\r\n";
    const POST: &str = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";

    /// A newsletter from `from` with the given list fields, signed for `domain`
    /// (example.com's `rsa` key, published for news.example.com and example.net
    /// too) over `signed` fields.
    fn newsletter(from: &str, fields: &str, domain: &str, signed: &[&str]) -> String {
        let raw = format!(
            "From: News <{from}>\r\nTo: bob@bulwark.test\r\nSubject: December news\r\n\
             Date: Tue, 1 Jul 2025 10:00:00 +0000\r\nMessage-ID: <n1@news.example.com>\r\n\
             {fields}\r\nWhat is new this month.\r\n"
        );
        let signature = DkimSigner::from_key(rsa(RSA_PEM))
            .domain(domain)
            .selector("rsa")
            .headers(signed.iter().copied())
            .sign(raw.as_bytes())
            .expect("sign");
        format!("{}{raw}", signature.to_header())
    }

    fn fixture() -> Fixture {
        let mut zone = base_zone();
        zone.txt("rsa._domainkey.news.example.com", &dkim_key(RSA_PEM))
            .txt("rsa._domainkey.example.net", &dkim_key(RSA_PEM));
        Fixture::new(zone)
    }

    const ALL: &[&str] = &[
        "From",
        "Subject",
        "Date",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ];

    #[tokio::test]
    async fn one_click_signed_by_the_senders_organization_is_credited() {
        let fixture = fixture();
        let fields = format!("{LIST}{POST}");
        // Signed by a subdomain of the From domain's organization: aligned.
        let raw = newsletter("news@example.com", &fields, "news.example.com", ALL);
        let outcome = fixture.check_designated(&raw).await;
        assert!(symbols(&outcome).contains(&SYMBOL), "{outcome:?}");
        let hit = outcome.hits.iter().find(|h| h.symbol == SYMBOL).unwrap();
        assert_eq!(hit.score, SCORE);
        assert!(
            hit.description
                .contains("signed by news.example.com for example.com"),
            "{hit:?}"
        );
    }

    #[tokio::test]
    async fn one_click_short_of_the_rfc_is_not_credited() {
        let fixture = fixture();
        let both = format!("{LIST}{POST}");
        let without_list = ["From", "Subject", "Date", "List-Unsubscribe-Post"];
        let without_post = ["From", "Subject", "Date", "List-Unsubscribe"];
        let mailto_only = format!("List-Unsubscribe: <mailto:leave@news.example.com>\r\n{POST}");
        let wrong_value = format!("{LIST}List-Unsubscribe-Post: List-Unsubscribe=Yes\r\n");
        let twice = format!("{LIST}{POST}{POST}");
        let two_https = format!(
            "List-Unsubscribe: <https://news.example.com/u/1>, <https://news.example.com/u/2>\r\n{POST}"
        );
        let spaced = format!("{LIST}List-Unsubscribe-Post : List-Unsubscribe=One-Click\r\n");
        for (why, raw) in [
            (
                "signed by another organization",
                newsletter("news@example.com", &both, "example.net", ALL),
            ),
            (
                "List-Unsubscribe not signed",
                newsletter("news@example.com", &both, "example.com", &without_list),
            ),
            (
                "List-Unsubscribe-Post not signed",
                newsletter("news@example.com", &both, "example.com", &without_post),
            ),
            (
                "no HTTPS URI",
                newsletter("news@example.com", &mailto_only, "example.com", ALL),
            ),
            (
                "not the one-click value",
                newsletter("news@example.com", &wrong_value, "example.com", ALL),
            ),
            (
                "List-Unsubscribe-Post twice",
                newsletter("news@example.com", &twice, "example.com", ALL),
            ),
            (
                "no List-Unsubscribe-Post",
                newsletter("news@example.com", LIST, "example.com", ALL),
            ),
            (
                "two HTTPS URIs",
                newsletter("news@example.com", &two_https, "example.com", ALL),
            ),
            (
                "a blank before the colon",
                newsletter("news@example.com", &spaced, "example.com", ALL),
            ),
        ] {
            let outcome = fixture.check_designated(&raw).await;
            assert_eq!(result(&outcome, "dkim")[0].result, "pass", "{why}");
            assert!(!symbols(&outcome).contains(&SYMBOL), "{why}: {outcome:?}");
        }
        // A second List-Unsubscribe added above a signed message: the signature still
        // verifies (it covers the last one), but which field a client would use is
        // not for the signature to say.
        let signed = newsletter("news@example.com", &both, "example.com", ALL);
        let added = format!("List-Unsubscribe: <https://elsewhere.example/u>\r\n{signed}");
        let outcome = fixture.check_designated(&added).await;
        assert_eq!(result(&outcome, "dkim")[0].result, "pass");
        assert!(!symbols(&outcome).contains(&SYMBOL), "{outcome:?}");
        // The fields added to a signed message on its way: the signature still
        // verifies, but covers neither.
        let signed = newsletter(
            "news@example.com",
            "",
            "example.com",
            &["From", "Subject", "Date"],
        );
        let (signature, rest) = signed.split_once("From: ").unwrap();
        let tampered = format!("{signature}{LIST}{POST}From: {rest}");
        let outcome = fixture.check_designated(&tampered).await;
        assert!(!symbols(&outcome).contains(&SYMBOL), "{outcome:?}");
    }
}

//! One-click unsubscription as RFC 8058 requires it of a sender: a `List-Unsubscribe`
//! field with an HTTPS URI (§3.1), exactly one `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click`, and a valid DKIM signature whose `h=` covers both
//! fields (§4). Signed by the organization of the From domain, it marks a bulk sender
//! that answers for its list under its own name, as large mailbox providers require of
//! bulk senders. The two fields alone, which anyone can write, are only the rules'
//! smaller `LIST_UNSUBSCRIBE_ONE_CLICK`.

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
        let values = |name: &'static str| {
            message
                .headers
                .iter()
                .filter(move |(field, _)| field.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, value)| String::from_utf8_lossy(value))
        };
        let mut posts = values("List-Unsubscribe-Post");
        let one_click =
            posts.next().is_some_and(|v| v.trim() == ONE_CLICK) && posts.next().is_none();
        let https =
            values("List-Unsubscribe").any(|v| v.to_ascii_lowercase().contains("<https://"));
        if !(one_click && https) {
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

    use super::super::fixture::{base_zone, dkim_key, rsa, symbols, Fixture, RSA_PEM};
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
        ] {
            let outcome = fixture.check_designated(&raw).await;
            assert!(!symbols(&outcome).contains(&SYMBOL), "{why}: {outcome:?}");
        }
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

//! SPF (RFC 7208) for the HELO and the MAIL FROM identities, evaluated here to the
//! letter of the RFC, and the results and hits it adds to the report.
//!
//! ```text
//! mod.rs     the two identities, their results and hits
//! record.rs  a record parsed by RFC 7208's grammar
//! macros.rs  macro-strings and their expansion
//! check.rs   check_host(): mechanisms, redirect=, exp= and the limits
//! ```
//!
//! mail-auth, which does DKIM, DMARC and ARC here, also evaluates SPF, but 61 of the
//! 203 cases of the RFC 7208 test suite failed with it (lenient records, a client
//! matched across address families, several records taken as one, no void lookup
//! limit); `viaspf`, which passes the suite, is GPL-3.0 and this product is
//! Apache-2.0. The suite runs with no known failure (`rfc7208_suite.rs`).

mod check;
mod macros;
mod record;

use std::fmt::Write as _;
use std::net::IpAddr;

use mail_auth::SpfResult;

use check::Evaluation;
pub(super) use check::Spf;

use super::results::{comment_text, pvalue};
use super::{Authenticator, Report};
use crate::scan::engine::Hit;

/// The longest part of a domain's own explanation kept in a hit's description.
const MAX_EXPLANATION: usize = 200;

impl Authenticator {
    /// SPF for the HELO identity (RFC 7208 §2.3), checked as `postmaster@helo`.
    pub(super) async fn spf_helo(&self, ip: IpAddr, helo: &str) -> Spf {
        if !is_spf_domain(helo) {
            return Spf::none();
        }
        let sender = format!("postmaster@{helo}");
        Evaluation::new(&self.resolver.0, ip, &sender, helo, &self.authserv_id)
            .run(helo)
            .await
    }

    /// SPF for the MAIL FROM identity; the null sender is checked as
    /// `postmaster@helo` (RFC 7208 §2.4), a sender without local part as
    /// `postmaster@domain` (§4.3).
    pub(super) async fn spf_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> Spf {
        let domain = spf_domain(helo, mail_from);
        if !is_spf_domain(domain) {
            return Spf::none();
        }
        let sender = match mail_from.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => format!("{local}@{domain}"),
            _ => format!("postmaster@{domain}"),
        };
        Evaluation::new(&self.resolver.0, ip, &sender, helo, &self.authserv_id)
            .run(domain)
            .await
    }
}

impl Report {
    /// `result` is `None` when the check ran out of time.
    pub(super) fn spf(
        &mut self,
        kind: &str,
        identity: &str,
        domain: &str,
        result: Option<SpfResult>,
    ) {
        let token = result.map_or("temperror", spf_token);
        let mut detail = String::new();
        if result.is_none() {
            detail.push_str("(DNS timeout) ");
        }
        let _ = write!(detail, "smtp.{kind}={}", pvalue(identity));
        if token == "temperror" {
            self.temp_errors
                .push(format!("spf {kind} {}", comment_text(domain)));
        }
        self.push("spf", token, detail);
    }

    pub(super) fn spf_hits(&mut self, spf: &Spf, identity: &str, ip: IpAddr) {
        let identity = comment_text(identity);
        let (symbol, score, what) = match spf.result {
            SpfResult::Fail => ("SPF_FAIL", 3.0, "does not designate"),
            SpfResult::SoftFail => ("SPF_SOFTFAIL", 1.0, "soft-fails"),
            SpfResult::Pass => ("SPF_PASS", -0.1, "designates"),
            SpfResult::PermError => ("SPF_PERMERROR", 0.5, "has a broken SPF record for"),
            _ => return,
        };
        let mut description = format!("SPF: the domain of {identity} {what} {ip}");
        let said = match spf.result {
            SpfResult::Fail => spf.explanation.as_deref().map(|e| ("its explanation", e)),
            SpfResult::PermError => spf.problem.as_deref().map(|p| ("why", p)),
            _ => None,
        };
        if let Some((label, text)) = said {
            let text: String = text.chars().take(MAX_EXPLANATION).collect();
            let _ = write!(description, " ({label}: {})", comment_text(&text));
        }
        self.hits.push(Hit::new(symbol, score, description));
    }
}

/// The domain SPF checks for MAIL FROM and DMARC aligns with: the sender's, or the
/// HELO name for the null sender (RFC 7208 §2.4, RFC 7489 §3.1.2).
pub(super) fn spf_domain<'a>(helo: &'a str, mail_from: &'a str) -> &'a str {
    mail_from
        .rsplit_once('@')
        .map_or(helo, |(_, domain)| domain)
}

/// Whether SPF can evaluate `domain`: a multi-label domain name without empty or
/// over-long labels. Anything else (a domain literal, a bare host name) is `none`
/// without a lookup (RFC 7208 §4.3).
fn is_spf_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
        })
}

pub(super) fn spf_token(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{base_zone, message, result, symbols, Fixture, CLIENT};
    use bulwark_cluster_tests::dns::{Fault, Kind};
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn servfail_gives_temperror_at_once() {
        let mut zone = base_zone();
        zone.fault("example.org", Fault::ServFail, &[]);
        let fixture = Fixture::new(zone);
        let started = Instant::now();
        let raw = message("boss@example.org", "Hi.\r\n");
        let outcome = fixture
            .check(&raw, CLIENT, "mx.example.com", "boss@example.org")
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(result(&outcome, "spf")[1].result, "temperror");
        assert!(symbols(&outcome).contains(&"AUTH_TEMPERROR"));
    }

    #[tokio::test]
    async fn slow_answer_within_timeout_still_counts() {
        let mut zone = base_zone();
        zone.fault(
            "example.com",
            Fault::Delay(Duration::from_millis(100)),
            &[Kind::Txt],
        );
        let fixture = Fixture::new(zone);
        let raw = message("ceo@example.com", "Hi.\r\n");
        let outcome = fixture.check_designated(&raw).await;
        assert_eq!(result(&outcome, "spf")[1].result, "pass");
    }

    /// An administrator reading the verdict sees the domain's own explanation of a
    /// fail, and what is broken in a record that gives a permerror.
    #[tokio::test]
    async fn the_hits_say_what_the_domain_explains_and_what_is_broken() {
        let mut zone = base_zone();
        zone.txt("explained.example", "v=spf1 -all exp=why.explained.example")
            .txt("why.explained.example", "%{i} is not a mail server of %{d}")
            .txt("broken.example", "v=spf1 ip4:192.0.2.0/33 -all");
        let fixture = Fixture::new(zone);
        let raw = message("a@explained.example", "Hi.\r\n");
        let outcome = fixture
            .check(&raw, CLIENT, "mx.example.com", "a@explained.example")
            .await;
        let hit = outcome
            .hits
            .iter()
            .find(|h| h.symbol == "SPF_FAIL")
            .unwrap();
        assert!(
            hit.description.ends_with(
                "(its explanation: 192.0.2.10 is not a mail server of explained.example)"
            ),
            "{}",
            hit.description
        );
        let outcome = fixture
            .check(&raw, CLIENT, "mx.example.com", "a@broken.example")
            .await;
        assert_eq!(result(&outcome, "spf")[1].result, "permerror");
        let hit = outcome
            .hits
            .iter()
            .find(|h| h.symbol == "SPF_PERMERROR")
            .unwrap();
        assert!(
            hit.description
                .contains("/33 is not a prefix length of 0 to 32"),
            "{}",
            hit.description
        );
    }

    #[tokio::test]
    async fn null_sender_is_checked_as_postmaster_at_helo() {
        let fixture = Fixture::new(base_zone());
        let raw = message("mailer-daemon@mx.example.com", "Bounce.\r\n");
        let outcome = fixture.check(&raw, CLIENT, "mx.example.com", "<>").await;
        let spf = result(&outcome, "spf");
        assert_eq!(spf[1].result, "pass");
        assert_eq!(spf[1].detail, "smtp.mailfrom=postmaster@mx.example.com");
    }
}

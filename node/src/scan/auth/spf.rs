//! SPF (RFC 7208) for the HELO and the MAIL FROM identities, and the results and
//! hits it adds to the report.

use std::fmt::Write as _;
use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{SpfOutput, SpfResult};

use super::results::{comment_text, pvalue};
use super::{Authenticator, Report};
use crate::scan::engine::Hit;

impl Authenticator {
    /// SPF for the HELO identity (RFC 7208 §2.3).
    pub(super) async fn spf_helo(&self, ip: IpAddr, helo: &str) -> SpfOutput {
        if !is_spf_domain(helo) {
            return SpfOutput::new(helo.to_string()).with_result(SpfResult::None);
        }
        self.resolver
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, &self.authserv_id))
            .await
    }

    /// SPF for the MAIL FROM identity; the null sender is checked as
    /// `postmaster@helo` (RFC 7208 §2.4), a sender without local part as
    /// `postmaster@domain` (§4.3).
    pub(super) async fn spf_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutput {
        let sender = match mail_from.strip_prefix('@') {
            Some(domain) => format!("postmaster@{domain}"),
            None => mail_from.to_string(),
        };
        let domain = spf_domain(helo, &sender);
        if !is_spf_domain(domain) {
            return SpfOutput::new(domain.to_string()).with_result(SpfResult::None);
        }
        self.resolver
            .verify_spf(SpfParameters::verify_mail_from(
                ip,
                helo,
                &self.authserv_id,
                &sender,
            ))
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

    pub(super) fn spf_hits(&mut self, result: SpfResult, identity: &str, ip: IpAddr) {
        let identity = comment_text(identity);
        let (symbol, score, what) = match result {
            SpfResult::Fail => ("SPF_FAIL", 3.0, "does not designate"),
            SpfResult::SoftFail => ("SPF_SOFTFAIL", 1.0, "soft-fails"),
            SpfResult::Pass => ("SPF_PASS", -0.1, "designates"),
            SpfResult::PermError => ("SPF_PERMERROR", 0.5, "has a broken SPF record for"),
            _ => return,
        };
        self.hits.push(Hit::new(
            symbol,
            score,
            format!("SPF: the domain of {identity} {what} {ip}"),
        ));
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

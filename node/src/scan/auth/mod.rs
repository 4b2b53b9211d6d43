//! Authentication of inbound mail, in process: SPF for the HELO and MAIL FROM
//! identities (RFC 7208, evaluated here), every DKIM signature (RFC 6376), DMARC with
//! the sender's p=/sp=/pct= policy (RFC 7489), and ARC chain verification (RFC 8617,
//! its fields and structure checked here), with the `mail-auth` crate, all over one
//! hickory resolver.
//!
//! The outcome is scored symbols ([`Hit`]), one [`AuthResult`] per method and identity,
//! the value of our RFC 8601 `Authentication-Results` header, and the disposition the
//! sender's DMARC policy asks for. DNS goes to the `[dns]` nameservers (or the system's)
//! through one resolver whose cache every message shares; each lookup has a timeout and
//! every check a total budget, so a dead nameserver costs a bounded delay and a
//! `temperror`, never a stuck session. SPF keeps the RFC 7208 §4.6.4 limit of ten
//! DNS-querying terms.
//!
//! ```text
//! mod.rs      the check: SPF, DKIM and ARC at once, then DMARC; the report
//! spf/        SPF for the HELO and MAIL FROM identities
//! dkim.rs     every DKIM signature
//! dkim_key.rs its key record, checked before the body hash counts
//! dmarc.rs    DMARC, the published record's tags and pct= sampling
//! arc.rs      the ARC chain: its verdict, mail-auth's signatures and their keys
//! arc_structure.rs the ARC fields and the chain's structure, to the letter
//! unsubscribe.rs one-click unsubscription signed as RFC 8058 asks
//! results.rs  the RFC 8601 header text: values, comments, folding
//! ```
//!
//! This module never writes the message: the caller adds the header and removes
//! incoming ones that claim our authserv-id ([`crate::mail::strip_own_results`],
//! RFC 8601 §5).

mod arc;
#[cfg(test)]
mod arc_signer;
mod arc_structure;
mod dkim;
mod dkim_key;
mod dmarc;
#[cfg(test)]
mod fixture;
mod results;
#[cfg(test)]
mod rfc7208_suite;
#[cfg(test)]
mod rfc8617_suite;
mod spf;
mod unsubscribe;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bulwark_model::Action;
use futures::future::BoxFuture;
use mail_auth::{AuthenticatedMessage, MessageAuthenticator, SpfOutput, SpfResult};

use super::engine::{Authentication, Checked, Hit, LinkHosts, NetworkEngine, Outcome};
use super::suffixes::Suffixes;
use super::Candidate;
use crate::dns::TokioResolver;
use results::{header_value, token};
use spf::spf_domain;

/// The version recorded in verdicts: the library doing DKIM, DMARC and ARC, and
/// our own SPF.
const VERSION: &str = "mail-auth 0.13.0, spf rfc7208";
/// Budget of the first phase (SPF, DKIM, ARC at once), in per-lookup timeouts.
const PHASE_ONE_TIMEOUTS: u32 = 3;
/// Budget of the second phase (DMARC, which needs the first), in per-lookup timeouts.
const PHASE_TWO_TIMEOUTS: u32 = 2;

/// One method's verdict on one identity, as it appears in `Authentication-Results`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResult {
    /// `spf`, `dkim`, `dmarc` or `arc`.
    pub method: &'static str,
    /// The RFC 8601 result token: `pass`, `fail`, `softfail`, `neutral`, `none`,
    /// `temperror` or `permerror`.
    pub result: &'static str,
    /// What follows the result in the header, unfolded: an optional comment and the
    /// properties, such as `smtp.mailfrom=a@b.test` or
    /// `header.d=b.test header.s=sel header.b=AbCdEfGh`.
    pub detail: String,
}

/// What the sender's DMARC policy asks for a message that fails DMARC, after p=/sp=
/// and pct= sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarcDisposition {
    Reject,
    Quarantine,
}

/// Everything authentication found about one message.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthOutcome {
    /// Scored symbols for the policy.
    pub hits: Vec<Hit>,
    /// One entry per method and identity, in header order.
    pub results: Vec<AuthResult>,
    /// The value for `Authentication-Results:`, starting with our authserv-id, folded
    /// with CRLF + tab, every line under 998 octets, with nothing from the message
    /// able to add a line break.
    pub header: String,
    /// The DMARC policy's disposition when the message fails DMARC and the policy is
    /// quarantine or reject; `None` otherwise.
    pub dmarc_policy: Option<DmarcDisposition>,
}

/// Verifies SPF, DKIM, DMARC and ARC. Build one per process and share it: its
/// resolver cache serves every message.
pub struct Authenticator {
    resolver: MessageAuthenticator,
    timeout: Duration,
    authserv_id: String,
    suffixes: Arc<Suffixes>,
}

impl Authenticator {
    /// An authenticator with its own resolver asking `nameservers` (the system's
    /// when empty), allowing `timeout` per lookup. `authserv_id` names this host in
    /// the header (`smtp.hostname`).
    pub fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        authserv_id: String,
        suffixes: Arc<Suffixes>,
    ) -> Result<Self, String> {
        let resolver = crate::dns::resolver(nameservers, timeout)?;
        Self::with_resolver(resolver, timeout, authserv_id, suffixes)
    }

    /// An authenticator sharing `resolver` (whose per-lookup timeout is `timeout`);
    /// `suffixes` gives DMARC its organizational domains.
    pub fn with_resolver(
        resolver: TokioResolver,
        timeout: Duration,
        authserv_id: String,
        suffixes: Arc<Suffixes>,
    ) -> Result<Self, String> {
        let resolver = MessageAuthenticator(resolver);
        let authserv_id = token(&authserv_id);
        if authserv_id.is_empty() {
            return Err("the authserv-id (smtp.hostname) is empty".to_string());
        }
        Ok(Authenticator {
            resolver,
            timeout,
            authserv_id,
            suffixes,
        })
    }

    /// The longest [`Authenticator::check`] takes however slow DNS is, CPU aside.
    pub fn budget(&self) -> Duration {
        self.timeout * (PHASE_ONE_TIMEOUTS + PHASE_TWO_TIMEOUTS)
    }

    /// Authenticates `raw` (the message as received, before we add headers) sent by
    /// `client_ip` after `HELO helo` and `MAIL FROM:<mail_from>` (empty or `<>` for
    /// the null sender). The verifiers' state is large: the future is on the heap,
    /// not in every caller's.
    pub fn check<'a>(
        &'a self,
        raw: &'a [u8],
        client_ip: IpAddr,
        helo: &'a str,
        mail_from: &'a str,
    ) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            let helo = helo.trim().trim_end_matches('.');
            let mail_from = envelope_sender(mail_from);
            let message = AuthenticatedMessage::parse(raw);
            let phase_one = self.timeout * PHASE_ONE_TIMEOUTS;
            let (helo_spf, from_spf, dkim, arc) = tokio::join!(
                within(phase_one, self.spf_helo(client_ip, helo)),
                within(phase_one, self.spf_mail_from(client_ip, helo, mail_from)),
                within(phase_one, async {
                    match &message {
                        Some(message) => {
                            let outputs = self.resolver.verify_dkim(message).await;
                            let problems = self.dkim_key_problems(&outputs).await;
                            (outputs, problems)
                        }
                        None => (Vec::new(), Vec::new()),
                    }
                }),
                within(phase_one, async {
                    match &message {
                        Some(message) => Some(self.arc_chain(message).await),
                        None => None,
                    }
                }),
            );

            let mut report = Report::default();
            let spf_domain = spf_domain(helo, mail_from);
            let mail_from_spf = from_spf.as_ref().map_or(SpfResult::TempError, |s| s.result);
            if !helo.is_empty() {
                report.spf("helo", helo, helo, helo_spf.as_ref().map(|s| s.result));
            }
            let identity = if mail_from.is_empty() {
                format!("postmaster@{helo}")
            } else {
                mail_from.to_string()
            };
            report.spf(
                "mailfrom",
                &identity,
                spf_domain,
                from_spf.as_ref().map(|s| s.result),
            );
            if let Some(spf) = &from_spf {
                report.spf_hits(spf, &identity, client_ip);
            }

            match (&dkim, &message) {
                (Some((outputs, problems)), _) => report.dkim(outputs, problems),
                (None, Some(message)) => report.dkim_timed_out(message),
                (None, None) => {}
            }
            report.dkim_hits();

            // A signature whose key is unusable aligns nothing.
            let usable: Vec<_> = dkim
                .iter()
                .flat_map(|(outputs, problems)| {
                    outputs
                        .iter()
                        .zip(problems)
                        .filter(|(_, problem)| problem.is_none())
                        .map(|(output, _)| output.clone())
                })
                .collect();
            if let Some(message) = &message {
                report.one_click(message, &usable, &self.suffixes);
            }

            let phase_two = self.timeout * PHASE_TWO_TIMEOUTS;
            let dmarc = match &message {
                Some(message) => {
                    within(
                        phase_two,
                        self.dmarc(
                            message,
                            &usable,
                            spf_domain,
                            &SpfOutput::new(spf_domain.to_string()).with_result(mail_from_spf),
                        ),
                    )
                    .await
                }
                None => Some(None),
            };
            match dmarc {
                Some(Some(dmarc)) => report.dmarc(&dmarc, raw),
                Some(None) => report.push("dmarc", "none", String::new()),
                None => report.dmarc_timed_out(),
            }

            match arc {
                Some(Some(verdict)) => report.arc(verdict),
                Some(None) => report.push("arc", "none", String::new()),
                None => {
                    report.push("arc", "temperror", "(DNS timeout)".to_string());
                    report.temp_errors.push("arc".to_string());
                }
            }
            report.finish(&self.authserv_id)
        })
    }
}

impl NetworkEngine for Authenticator {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn version(&self) -> String {
        VERSION.to_string()
    }

    fn budget(&self) -> Duration {
        Authenticator::budget(self)
    }

    fn check<'a>(
        &'a self,
        message: &'a Candidate<'a>,
        _links: &'a LinkHosts,
    ) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let outcome = Authenticator::check(
                self,
                &message.body,
                message.client_ip,
                message.helo,
                message.mail_from,
            )
            .await;
            let results = outcome
                .results
                .into_iter()
                .map(|r| bulwark_model::AuthResult {
                    method: r.method.to_string(),
                    result: r.result.to_string(),
                    detail: r.detail,
                })
                .collect();
            let dmarc = outcome.dmarc_policy.map(|d| match d {
                DmarcDisposition::Reject => Action::Reject,
                DmarcDisposition::Quarantine => Action::Quarantine,
            });
            Checked {
                outcome: Outcome {
                    hits: outcome.hits,
                    findings: Vec::new(),
                },
                authentication: Some(Authentication {
                    results,
                    header: outcome.header,
                    dmarc,
                }),
            }
        })
    }
}

/// Results and hits as they are gathered, then the header. Each method's file adds
/// its own results and hits.
#[derive(Default)]
struct Report {
    results: Vec<AuthResult>,
    hits: Vec<Hit>,
    /// What timed out or failed temporarily, for `AUTH_TEMPERROR`.
    temp_errors: Vec<String>,
    dkim_pass: Vec<String>,
    dkim_fail: Vec<String>,
    dmarc_policy: Option<DmarcDisposition>,
}

impl Report {
    fn push(&mut self, method: &'static str, result: &'static str, detail: String) {
        self.results.push(AuthResult {
            method,
            result,
            detail,
        });
    }

    fn finish(mut self, authserv_id: &str) -> AuthOutcome {
        if !self.temp_errors.is_empty() {
            self.hits.push(Hit::new(
                "AUTH_TEMPERROR",
                0.0,
                format!(
                    "DNS timed out or failed for: {}",
                    self.temp_errors.join(", ")
                ),
            ));
        }
        let header = header_value(authserv_id, &self.results);
        AuthOutcome {
            hits: self.hits,
            results: self.results,
            header,
            dmarc_policy: self.dmarc_policy,
        }
    }
}

/// `fut`'s output, or `None` if it takes longer than `budget`.
async fn within<T>(budget: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(budget, fut).await.ok()
}

/// The envelope sender without angle brackets; empty for the null sender.
fn envelope_sender(mail_from: &str) -> &str {
    let trimmed = mail_from.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::fixture::{assert_header_safe, base_zone, result, signed, symbols, Fixture, ID};
    use super::*;
    use bulwark_cluster_tests::dns::{Fault, Zone};
    use std::time::Instant;

    #[tokio::test]
    async fn spf_pass_dkim_pass_dmarc_pass() {
        let fixture = Fixture::new(base_zone());
        let raw = signed("ceo@example.com", "Hello.\r\n");
        let outcome = fixture.check_designated(&raw).await;
        let spf = result(&outcome, "spf");
        assert_eq!(spf[0].result, "pass");
        assert_eq!(spf[0].detail, "smtp.helo=mx.example.com");
        assert_eq!(spf[1].result, "pass");
        assert_eq!(spf[1].detail, "smtp.mailfrom=ceo@example.com");
        let dkim = result(&outcome, "dkim");
        assert_eq!(dkim.len(), 1);
        assert_eq!(dkim[0].result, "pass");
        assert!(dkim[0]
            .detail
            .starts_with("header.d=example.com header.s=rsa header.b="));
        let dmarc = result(&outcome, "dmarc");
        assert_eq!(dmarc[0].result, "pass");
        assert_eq!(
            dmarc[0].detail,
            "(p=reject pct=100 dis=none) header.from=example.com"
        );
        assert_eq!(result(&outcome, "arc")[0].result, "none");
        assert_eq!(outcome.dmarc_policy, None);
        assert_eq!(symbols(&outcome), ["SPF_PASS", "DKIM_VALID", "DMARC_PASS"]);
        assert!(outcome
            .header
            .contains("dkim=pass header.d=example.com header.s=rsa header.b="));
        assert!(outcome
            .header
            .contains("\r\n\tdmarc=pass (p=reject pct=100 dis=none) header.from=example.com"));
        assert_header_safe(&outcome.header);
    }

    #[tokio::test]
    async fn silent_nameserver_gives_temperror_within_budget() {
        let mut zone = Zone::new();
        zone.fault_everything(Fault::Silent);
        let fixture = Fixture::with_timeout(zone, Duration::from_millis(200), ID);
        let raw = signed("ceo@example.com", "Hi.\r\n");
        let started = Instant::now();
        let outcome = fixture.check_designated(&raw).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed <= fixture.auth.budget() + Duration::from_millis(500),
            "{elapsed:?}"
        );
        assert!(fixture.server.query_count() > 0);
        for method in ["spf", "dkim", "dmarc"] {
            for r in result(&outcome, method) {
                assert_eq!(r.result, "temperror", "{r:?}");
            }
        }
        assert_eq!(outcome.dmarc_policy, None);
        let temp = outcome
            .hits
            .iter()
            .find(|h| h.symbol == "AUTH_TEMPERROR")
            .unwrap();
        assert_eq!(temp.score, 0.0);
        assert!(
            temp.description.contains("spf mailfrom example.com"),
            "{}",
            temp.description
        );
        assert!(
            temp.description.contains("dkim rsa._domainkey.example.com"),
            "{}",
            temp.description
        );
        assert!(!symbols(&outcome).contains(&"SPF_FAIL"));
    }

    #[tokio::test]
    async fn cache_is_shared_between_messages() {
        let fixture = Fixture::new(base_zone());
        let raw = signed("ceo@example.com", "Hi.\r\n");
        let first = fixture.check_designated(&raw).await;
        let asked = fixture.server.query_count();
        let second = fixture.check_designated(&raw).await;
        assert_eq!(first, second);
        assert_eq!(
            fixture.server.query_count(),
            asked,
            "the second check asked the server again"
        );
    }
}

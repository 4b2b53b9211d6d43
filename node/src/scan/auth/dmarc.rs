//! DMARC (RFC 7489) against the RFC 5322.From domain: `mail-auth`'s verdict, the
//! published record's tags it does not keep (sp=, pct=, psd=), the pct= sample, and
//! the results and hits it adds to the report.

use std::fmt::Write as _;

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult, SpfOutput, SpfResult,
};

use super::results::{comment_text, pvalue, token};
use super::{Authenticator, DmarcDisposition, Report};
use crate::scan::engine::Hit;

/// DMARC tree walk: at most this many `_dmarc` lookups (RFC 9989 §4.10).
const DMARC_WALK_MAX: usize = 8;

impl Authenticator {
    /// DMARC against the RFC 5322.From domain, with the published record's text for
    /// the tags `mail-auth` does not keep (pct=, adkim=, aspf=), and whether an
    /// identifier aligns by the Public Suffix List where mail-auth's tree walk did not.
    /// `None` when DMARC does not apply (no single From domain).
    pub(super) async fn dmarc(
        &self,
        message: &AuthenticatedMessage<'_>,
        dkim: &[DkimOutput<'_>],
        spf_domain: &str,
        spf: &SpfOutput,
    ) -> Option<Dmarc> {
        let output = self
            .resolver
            .verify_dmarc(DmarcParameters::new(message, dkim, spf_domain, spf))
            .await;
        if output.domain().is_empty() {
            return None;
        }
        let record = match output.dmarc_record() {
            Some(_) => self.dmarc_record(output.domain()).await,
            None => None,
        };
        let aligned = record.as_ref().and_then(|record| {
            let from = output.domain();
            let aligns = |domain: &str, strict: bool| {
                domain.eq_ignore_ascii_case(from)
                    || (!strict
                        && self.suffixes.organizational(domain)
                            == self.suffixes.organizational(from))
            };
            let spf_aligns =
                spf.result() == SpfResult::Pass && aligns(spf_domain, record.aspf_strict);
            let dkim_aligns = dkim.iter().any(|output| {
                *output.result() == DkimResult::Pass
                    && output
                        .signature()
                        .is_some_and(|s| aligns(&s.d, record.adkim_strict))
            });
            if dkim_aligns {
                Some("dkim")
            } else if spf_aligns {
                Some("spf")
            } else {
                None
            }
        });
        Some(Dmarc {
            output,
            record,
            aligned,
        })
    }

    /// The DMARC record that applies to `domain`, found the way `mail-auth` does: the
    /// domain's own, else the organizational domain's (the first with psd=n, else the
    /// shortest name that has one). The lookups are in the resolver's cache already.
    async fn dmarc_record(&self, domain: &str) -> Option<DmarcRecord> {
        let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
        let mut found: Vec<DmarcRecord> = Vec::new();
        let mut count = labels.len();
        for _ in 0..DMARC_WALK_MAX {
            if count < 1 {
                break;
            }
            let name = labels[labels.len() - count..].join(".");
            if let Some(mut record) = self.dmarc_txt(&name).await {
                record.is_author = count == labels.len();
                let stop = record.is_author || record.psd.is_some();
                found.push(record);
                if stop {
                    break;
                }
            }
            count = if count >= 8 { 7 } else { count - 1 };
        }
        let first = found.first()?;
        if first.is_author {
            return found.into_iter().next();
        }
        let org = found
            .iter()
            .position(|r| r.psd == Some(false))
            .unwrap_or(found.len() - 1);
        found.into_iter().nth(org)
    }

    async fn dmarc_txt(&self, domain: &str) -> Option<DmarcRecord> {
        let name = Name::from_str_relaxed(format!("_dmarc.{domain}.")).ok()?;
        let lookup = self.resolver.resolver().txt_lookup(name).await.ok()?;
        lookup
            .answers()
            .iter()
            .find_map(|record| match &record.data {
                RData::TXT(txt) => {
                    let text: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                    DmarcRecord::parse(&String::from_utf8_lossy(&text))
                }
                _ => None,
            })
    }
}

/// DMARC's verdict: mail-auth's, the applicable record as published, and which
/// identifier, if any, aligns by the Public Suffix List (RFC 7489 §3.2) when it
/// passes.
pub(super) struct Dmarc {
    pub(super) output: DmarcOutput,
    pub(super) record: Option<DmarcRecord>,
    pub(super) aligned: Option<&'static str>,
}

/// The tags of a published DMARC record that the header shows, pct= sampling and
/// alignment need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DmarcRecord {
    p: String,
    sp: Option<String>,
    pct: u8,
    psd: Option<bool>,
    /// `adkim=s`: DKIM's domain must be the From domain itself.
    adkim_strict: bool,
    /// `aspf=s`: SPF's domain must be the From domain itself.
    aspf_strict: bool,
    /// Whether the walk found it at the author domain itself. Set by the caller.
    is_author: bool,
}

impl DmarcRecord {
    /// Parses `v=DMARC1; p=...` (RFC 7489 §6.3); `None` if it is not a DMARC record.
    fn parse(text: &str) -> Option<DmarcRecord> {
        let mut tags = text.split(';').map(str::trim);
        let version = tags.next()?.replace(' ', "");
        if !version.eq_ignore_ascii_case("v=DMARC1") {
            return None;
        }
        let mut record = DmarcRecord {
            p: "none".to_string(),
            sp: None,
            pct: 100,
            psd: None,
            adkim_strict: false,
            aspf_strict: false,
            is_author: false,
        };
        for tag in tags {
            let Some((name, value)) = tag.split_once('=') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "p" => record.p = token(&value),
                "sp" => record.sp = Some(token(&value)),
                "pct" => {
                    record.pct = value
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 100)
                        .unwrap_or(100)
                }
                "psd" => record.psd = Some(value == "y"),
                "adkim" => record.adkim_strict = value == "s",
                "aspf" => record.aspf_strict = value == "s",
                _ => {}
            }
        }
        Some(record)
    }
}

impl Report {
    pub(super) fn dmarc(&mut self, dmarc: &Dmarc, raw: &[u8]) {
        let (output, record) = (&dmarc.output, dmarc.record.as_ref());
        let domain = output.domain();
        let passed = *output.spf_result() == DmarcResult::Pass
            || *output.dkim_result() == DmarcResult::Pass
            || dmarc.aligned.is_some();
        let is_temp = |r: &DmarcResult| matches!(r, DmarcResult::TempError(_));
        let is_perm = |r: &DmarcResult| matches!(r, DmarcResult::PermError(_));
        let token = if passed {
            "pass"
        } else if is_temp(output.spf_result()) || is_temp(output.dkim_result()) {
            "temperror"
        } else if is_perm(output.spf_result()) || is_perm(output.dkim_result()) {
            "permerror"
        } else if output.dmarc_record().is_some() {
            "fail"
        } else {
            "none"
        };
        let policy = output.policy();
        let pct = record.map_or(100, |r| r.pct);
        let disposition = if token == "fail" {
            disposition(policy, pct, raw)
        } else {
            None
        };
        let mut detail = String::new();
        if let Some(record) = record {
            let _ = write!(detail, "(p={}", comment_text(&record.p));
            if let Some(sp) = &record.sp {
                let _ = write!(detail, " sp={}", comment_text(sp));
            }
            let dis = match disposition {
                Some(DmarcDisposition::Reject) => "reject",
                Some(DmarcDisposition::Quarantine) => "quarantine",
                None => "none",
            };
            let _ = write!(detail, " pct={} dis={dis}) ", record.pct);
        }
        let _ = write!(detail, "header.from={}", pvalue(domain));
        if token == "temperror" {
            self.temp_errors
                .push(format!("dmarc {}", comment_text(domain)));
        }
        self.push("dmarc", token, detail);

        let from = comment_text(domain);
        match (token, disposition) {
            ("pass", _) => self.hits.push(Hit::new(
                "DMARC_PASS",
                -0.2,
                format!("DMARC: {from} aligned and authenticated"),
            )),
            ("fail", Some(DmarcDisposition::Reject)) => self.hits.push(Hit::new(
                "DMARC_FAIL_REJECT",
                5.0,
                format!("DMARC: {from} fails and its policy is reject"),
            )),
            ("fail", Some(DmarcDisposition::Quarantine)) => self.hits.push(Hit::new(
                "DMARC_FAIL_QUARANTINE",
                3.0,
                format!("DMARC: {from} fails and its policy is quarantine"),
            )),
            ("fail", None) => self.hits.push(Hit::new(
                "DMARC_FAIL_NONE",
                0.1,
                format!("DMARC: {from} fails and its policy asks for no action"),
            )),
            _ => {}
        }
        self.dmarc_policy = disposition;
    }

    pub(super) fn dmarc_timed_out(&mut self) {
        self.temp_errors.push("dmarc".to_string());
        self.push("dmarc", "temperror", "(DNS timeout)".to_string());
    }
}

/// What the policy asks for a failing message: pct= percent of failing messages get
/// the policy, the others the next milder one (RFC 7489 §6.3, §6.6.4). Whether this
/// message is in the sample comes from a hash of its content, so every node that
/// reads the recorded message decides alike.
fn disposition(policy: Policy, pct: u8, raw: &[u8]) -> Option<DmarcDisposition> {
    let sampled = pct >= 100 || fnv1a(raw) % 100 < u64::from(pct);
    match (policy, sampled) {
        (Policy::Reject, true) => Some(DmarcDisposition::Reject),
        (Policy::Reject, false) | (Policy::Quarantine, true) => Some(DmarcDisposition::Quarantine),
        _ => None,
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, which is all sampling needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{
        base_zone, dmarc_zone, message, result, sign_rsa, signed, symbols, Fixture, RSA_PEM,
        STRANGER,
    };
    use super::super::AuthOutcome;
    use super::*;
    use bulwark_cluster_tests::dns::{Record, Zone};
    use std::net::Ipv4Addr;

    /// What a stranger's message from `from` gets under `zone`.
    async fn dmarc_outcome(zone: Zone, from: &str, raw: &str) -> AuthOutcome {
        Fixture::new(zone)
            .check(raw, STRANGER, "mx.example.com", from)
            .await
    }

    #[test]
    fn a_record_is_read_for_the_tags_the_header_and_sampling_need() {
        let record = DmarcRecord::parse("v = DMARC1; P=Quarantine; sp=reject; pct=30; psd=n")
            .expect("a DMARC record");
        assert_eq!(record.p, "quarantine");
        assert_eq!(record.sp.as_deref(), Some("reject"));
        assert_eq!(record.pct, 30);
        assert_eq!(record.psd, Some(false));
        let defaults = DmarcRecord::parse("v=DMARC1; pct=101").expect("a DMARC record");
        assert_eq!((defaults.p.as_str(), defaults.pct), ("none", 100));
        assert_eq!(DmarcRecord::parse("v=spf1 -all"), None);
    }

    #[tokio::test]
    async fn dmarc_reject_when_spf_fails_without_dkim() {
        let zone = dmarc_zone(
            "example.org",
            "v=DMARC1; p=reject; rua=mailto:d@example.org",
        );
        let raw = message("boss@example.org", "Wire the money.\r\n");
        let outcome = dmarc_outcome(zone, "boss@example.org", &raw).await;
        assert_eq!(result(&outcome, "spf")[1].result, "fail");
        assert_eq!(result(&outcome, "dkim")[0].result, "none");
        let dmarc = result(&outcome, "dmarc");
        assert_eq!(dmarc[0].result, "fail");
        assert_eq!(
            dmarc[0].detail,
            "(p=reject pct=100 dis=reject) header.from=example.org"
        );
        assert_eq!(outcome.dmarc_policy, Some(DmarcDisposition::Reject));
        assert_eq!(symbols(&outcome), ["SPF_FAIL", "DMARC_FAIL_REJECT"]);
        let reject = outcome
            .hits
            .iter()
            .find(|h| h.symbol == "DMARC_FAIL_REJECT")
            .unwrap();
        assert!(reject.score >= 5.0);
    }

    #[tokio::test]
    async fn dmarc_quarantine() {
        let zone = dmarc_zone("example.org", "v=DMARC1; p=quarantine");
        let raw = message("boss@example.org", "Hi.\r\n");
        let outcome = dmarc_outcome(zone, "boss@example.org", &raw).await;
        assert_eq!(outcome.dmarc_policy, Some(DmarcDisposition::Quarantine));
        assert!(symbols(&outcome).contains(&"DMARC_FAIL_QUARANTINE"));
    }

    #[tokio::test]
    async fn dmarc_subdomain_policy_sp() {
        let mut zone = dmarc_zone("example.net", "v=DMARC1; p=none; sp=reject");
        zone.txt("news.example.net", "v=spf1 -all")
            .add("news.example.net", Record::A(Ipv4Addr::new(192, 0, 2, 99)));
        let raw = message("info@news.example.net", "Hi.\r\n");
        let outcome = dmarc_outcome(zone.clone(), "info@news.example.net", &raw).await;
        let dmarc = result(&outcome, "dmarc");
        assert_eq!(dmarc[0].result, "fail");
        assert_eq!(
            dmarc[0].detail,
            "(p=none sp=reject pct=100 dis=reject) header.from=news.example.net"
        );
        assert_eq!(outcome.dmarc_policy, Some(DmarcDisposition::Reject));

        // The organizational domain itself gets p=, not sp=.
        let raw = message("info@example.net", "Hi.\r\n");
        let outcome = dmarc_outcome(zone, "info@example.net", &raw).await;
        assert_eq!(result(&outcome, "dmarc")[0].result, "fail");
        assert_eq!(outcome.dmarc_policy, None);
        assert!(symbols(&outcome).contains(&"DMARC_FAIL_NONE"));
    }

    #[tokio::test]
    async fn dmarc_pct_samples_deterministically() {
        // pct=0: nothing gets the policy; quarantine falls to no action...
        let zone = dmarc_zone("example.org", "v=DMARC1; p=quarantine; pct=0");
        let raw = message("boss@example.org", "Hi.\r\n");
        let outcome = dmarc_outcome(zone, "boss@example.org", &raw).await;
        assert_eq!(result(&outcome, "dmarc")[0].result, "fail");
        assert_eq!(outcome.dmarc_policy, None);
        assert!(result(&outcome, "dmarc")[0]
            .detail
            .contains("pct=0 dis=none"));
        // ...and reject to quarantine (RFC 7489 §6.6.4).
        let zone = dmarc_zone("example.org", "v=DMARC1; p=reject; pct=0");
        let outcome = dmarc_outcome(zone, "boss@example.org", &raw).await;
        assert_eq!(outcome.dmarc_policy, Some(DmarcDisposition::Quarantine));

        // The sample depends on the content only, so every re-read agrees, and it
        // takes about pct percent of messages.
        let sampled = (0..1000)
            .filter(|i| {
                let raw = message("boss@example.org", &format!("message {i}\r\n"));
                let first = disposition(Policy::Reject, 30, raw.as_bytes());
                assert_eq!(first, disposition(Policy::Reject, 30, raw.as_bytes()));
                first == Some(DmarcDisposition::Reject)
            })
            .count();
        assert!((230..370).contains(&sampled), "{sampled}");
    }

    #[tokio::test]
    async fn dmarc_passes_on_aligned_dkim_when_spf_fails() {
        let fixture = Fixture::new(base_zone());
        let raw = signed("ceo@example.com", "Hi.\r\n");
        let outcome = fixture
            .check(&raw, STRANGER, "relay.example.org", "ceo@example.com")
            .await;
        assert_eq!(result(&outcome, "spf")[1].result, "fail");
        assert_eq!(result(&outcome, "dmarc")[0].result, "pass");
        assert_eq!(outcome.dmarc_policy, None);
        assert!(symbols(&outcome).contains(&"DMARC_PASS"));
    }

    /// A subdomain with its own `_dmarc` record, signed by its parent, which has
    /// none: relaxed alignment compares organizational domains, which the Public
    /// Suffix List gives (RFC 7489 §3.1.1, §3.2), so it passes (a tree walk that
    /// stops at the only record found takes the subdomain for the organization, and
    /// rejected it); `adkim=s` asks for the From domain itself, so it fails.
    #[tokio::test]
    async fn dmarc_a_subdomain_aligns_relaxed_with_its_parents_signature() {
        for (record, expected) in [
            ("v=DMARC1; p=reject", "pass"),
            ("v=DMARC1; p=reject; adkim=s", "fail"),
        ] {
            let mut zone = Zone::new();
            zone.txt(
                "rsa._domainkey.example.com",
                &super::super::fixture::dkim_key(RSA_PEM),
            )
            .txt("_dmarc.news.example.com", record);
            let raw = sign_rsa(
                &message("letters@news.example.com", "Hi.\r\n"),
                RSA_PEM,
                "example.com",
                "rsa",
            );
            let outcome = Fixture::new(zone)
                .check(
                    &raw,
                    STRANGER,
                    "relay.example.org",
                    "letters@news.example.com",
                )
                .await;
            assert_eq!(result(&outcome, "dkim")[0].result, "pass", "{record}");
            assert_eq!(result(&outcome, "dmarc")[0].result, expected, "{record}");
            let rejected = outcome.dmarc_policy == Some(DmarcDisposition::Reject);
            assert_eq!(rejected, expected == "fail", "{record}");
        }
    }

    /// Organizational domains come from the list, not from the last two labels:
    /// `shop.co.uk` and `other.co.uk` are two organizations.
    #[tokio::test]
    async fn dmarc_two_registrants_under_one_public_suffix_never_align() {
        let mut zone = base_zone();
        zone.txt("_dmarc.shop.co.uk", "v=DMARC1; p=reject");
        let fixture_key = super::super::fixture::dkim_key(RSA_PEM);
        zone.txt("rsa._domainkey.other.co.uk", &fixture_key);
        let raw = sign_rsa(
            &message("orders@mail.shop.co.uk", "Hi.\r\n"),
            RSA_PEM,
            "other.co.uk",
            "rsa",
        );
        let outcome = Fixture::new(zone)
            .check(
                &raw,
                STRANGER,
                "relay.example.org",
                "orders@mail.shop.co.uk",
            )
            .await;
        assert_eq!(result(&outcome, "dkim")[0].result, "pass");
        assert_eq!(result(&outcome, "dmarc")[0].result, "fail");
        assert_eq!(outcome.dmarc_policy, Some(DmarcDisposition::Reject));
    }
}

//! `check_host()` (RFC 7208 §4): a record fetched, its mechanisms evaluated in
//! order, `redirect=` and `exp=`, with the limits of §4.6.4 (ten DNS-querying
//! terms, two void lookups, ten MX names, ten PTR names).

use std::net::IpAddr;

use futures::future::BoxFuture;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::SpfResult;

use super::macros::{MacroString, Values};
use super::record::{self, Cidr, Mechanism, Qualifier, Record};
use crate::dns::TokioResolver;

/// Most DNS-querying terms one evaluation may have (§4.6.4).
const MAX_TERMS: u32 = 10;
/// Most terms whose lookup finds nothing (§4.6.4 recommends two).
const MAX_VOIDS: u32 = 2;
/// Most names an `mx` mechanism may find, and most PTR names looked at.
const MAX_NAMES: usize = 10;

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::scan::auth) struct Spf {
    pub(in crate::scan::auth) result: SpfResult,
    /// The domain's own explanation of a `fail` (§6.2), when it gives one.
    pub(in crate::scan::auth) explanation: Option<String>,
    /// Why the result is a `permerror` or `temperror`.
    pub(in crate::scan::auth) problem: Option<String>,
}

impl Spf {
    pub(in crate::scan::auth) fn none() -> Self {
        Spf {
            result: SpfResult::None,
            explanation: None,
            problem: None,
        }
    }
}

/// Why an evaluation stopped early.
enum Stop {
    Temp(String),
    Perm(String),
}

/// What a record (and the records it redirects to) gave.
struct Found {
    result: SpfResult,
    explanation: Option<String>,
}

/// One evaluation: its inputs and the limits' counters.
pub(super) struct Evaluation<'a> {
    dns: &'a TokioResolver,
    ip: IpAddr,
    sender: &'a str,
    helo: &'a str,
    receiver: &'a str,
    terms: u32,
    voids: u32,
}

impl<'a> Evaluation<'a> {
    /// An evaluation for `sender` (with a local part) sent from `ip`, which is taken
    /// as IPv4 when it is an IPv4-mapped IPv6 address.
    pub(super) fn new(
        dns: &'a TokioResolver,
        ip: IpAddr,
        sender: &'a str,
        helo: &'a str,
        receiver: &'a str,
    ) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        Evaluation {
            dns,
            ip,
            sender,
            helo,
            receiver,
            terms: 0,
            voids: 0,
        }
    }

    /// `check_host(ip, domain, sender)`.
    pub(super) async fn run(mut self, domain: &str) -> Spf {
        match self.check_host(domain.to_string()).await {
            Ok(found) => Spf {
                result: found.result,
                explanation: found.explanation,
                problem: None,
            },
            Err(Stop::Temp(why)) => Spf {
                result: SpfResult::TempError,
                explanation: None,
                problem: Some(why),
            },
            Err(Stop::Perm(why)) => Spf {
                result: SpfResult::PermError,
                explanation: None,
                problem: Some(why),
            },
        }
    }

    fn check_host(&mut self, domain: String) -> BoxFuture<'_, Result<Found, Stop>> {
        Box::pin(async move {
            let Some(record) = self.record(&domain).await? else {
                return Ok(Found {
                    result: SpfResult::None,
                    explanation: None,
                });
            };
            for directive in &record.directives {
                if !self.matches(&directive.mechanism, &domain).await? {
                    continue;
                }
                let result = match directive.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                };
                let explanation = if result == SpfResult::Fail {
                    self.explain(&record, &domain).await
                } else {
                    None
                };
                return Ok(Found {
                    result,
                    explanation,
                });
            }
            if let Some(redirect) = &record.redirect {
                self.count_term()?;
                let target = self.name(redirect, &domain).await.ok_or_else(|| {
                    Stop::Perm(format!(
                        "redirect from {domain} to a name that cannot exist"
                    ))
                })?;
                let found = self.check_host(target.clone()).await?;
                if found.result == SpfResult::None {
                    return Err(Stop::Perm(format!(
                        "redirect from {domain} to {target}, which has no SPF record"
                    )));
                }
                return Ok(found);
            }
            Ok(Found {
                result: SpfResult::Neutral,
                explanation: None,
            })
        })
    }

    /// The SPF record of `domain`, `None` when it has none (§4.4, §4.5).
    async fn record(&self, domain: &str) -> Result<Option<Record>, Stop> {
        let Some(name) = dns_name(domain) else {
            return Ok(None);
        };
        let texts = self
            .txt(&name)
            .await
            .map_err(|why| Stop::Temp(format!("TXT {domain}: {why}")))?;
        let mut records = texts.iter().filter(|text| record::is_spf(text));
        let Some(text) = records.next() else {
            return Ok(None);
        };
        if records.next().is_some() {
            return Err(Stop::Perm(format!(
                "{domain} publishes several SPF records"
            )));
        }
        record::parse(text)
            .map(Some)
            .map_err(|why| Stop::Perm(format!("the SPF record of {domain}: {why}")))
    }

    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Stop> {
        if mechanism.queries_dns() {
            self.count_term()?;
        }
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(network, length) => Ok(within(self.ip, IpAddr::V4(*network), *length)),
            Mechanism::Ip6(network, length) => Ok(within(self.ip, IpAddr::V6(*network), *length)),
            Mechanism::Include(spec) => {
                let target = self.name(spec, domain).await.ok_or_else(|| {
                    Stop::Perm(format!("include from {domain} of a name that cannot exist"))
                })?;
                let found = self.check_host(target.clone()).await?;
                match found.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::None => Err(Stop::Perm(format!(
                        "{domain} includes {target}, which has no SPF record"
                    ))),
                    _ => Ok(false),
                }
            }
            Mechanism::A(spec, cidr) => {
                let Some(target) = self.target(spec.as_ref(), domain).await else {
                    return Ok(false);
                };
                let addresses = self.addresses(&target).await?;
                self.void_if(addresses.is_empty())?;
                Ok(addresses.iter().any(|a| within_cidr(self.ip, *a, *cidr)))
            }
            Mechanism::Mx(spec, cidr) => {
                let Some(target) = self.target(spec.as_ref(), domain).await else {
                    return Ok(false);
                };
                let exchanges = self.exchanges(&target).await?;
                self.void_if(exchanges.is_empty())?;
                if exchanges.len() > MAX_NAMES {
                    return Err(Stop::Perm(format!(
                        "{target} has {} MX records, more than {MAX_NAMES}",
                        exchanges.len()
                    )));
                }
                for exchange in exchanges {
                    let addresses = self.addresses(&exchange).await?;
                    if addresses.iter().any(|a| within_cidr(self.ip, *a, *cidr)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.target(spec.as_ref(), domain).await else {
                    return Ok(false);
                };
                let names = self.validated_names().await;
                Ok(names.iter().any(|name| is_within(name, &target)))
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.target(Some(spec), domain).await else {
                    return Ok(false);
                };
                let found = self.a(&target).await?;
                self.void_if(found.is_empty())?;
                Ok(!found.is_empty())
            }
        }
    }

    fn count_term(&mut self) -> Result<(), Stop> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(Stop::Perm(format!(
                "more than {MAX_TERMS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    fn void_if(&mut self, void: bool) -> Result<(), Stop> {
        if void {
            self.voids += 1;
            if self.voids > MAX_VOIDS {
                return Err(Stop::Perm(format!(
                    "more than {MAX_VOIDS} lookups found nothing"
                )));
            }
        }
        Ok(())
    }

    /// The name a mechanism asks about: its domain-spec expanded, or the current
    /// domain; `None` when it cannot be a DNS name (an empty or over-long label),
    /// which matches nothing.
    async fn target(&self, spec: Option<&MacroString>, domain: &str) -> Option<String> {
        match spec {
            Some(spec) => self.name(spec, domain).await,
            None => dns_name(domain).map(|_| domain.to_string()),
        }
    }

    /// `spec` expanded to a name that can be queried.
    async fn name(&self, spec: &MacroString, domain: &str) -> Option<String> {
        let validated = if spec.needs_validated() {
            self.validated_name(domain).await
        } else {
            None
        };
        let name = spec.expand_name(&self.values(domain, validated.as_deref()));
        dns_name(&name).map(|_| name)
    }

    fn values<'v>(&'v self, domain: &'v str, validated: Option<&'v str>) -> Values<'v> {
        Values {
            sender: self.sender,
            domain,
            ip: self.ip,
            helo: self.helo,
            receiver: self.receiver,
            validated,
        }
    }

    /// The explanation `exp=` gives for a `fail`: nothing whenever anything about it
    /// goes wrong (§6.2).
    async fn explain(&self, record: &Record, domain: &str) -> Option<String> {
        let target = self.name(record.explanation.as_ref()?, domain).await?;
        let texts = self.txt(&dns_name(&target)?).await.ok()?;
        let [text] = texts.as_slice() else {
            return None;
        };
        let text = std::str::from_utf8(text).ok().filter(|t| t.is_ascii())?;
        let explanation = MacroString::parse(text, true).ok()?;
        let validated = if explanation.needs_validated() {
            self.validated_name(domain).await
        } else {
            None
        };
        Some(explanation.expand(&self.values(domain, validated.as_deref())))
    }

    /// `%{p}`: a validated name of the client equal to `domain`, else one within it,
    /// else any (§7.3).
    async fn validated_name(&self, domain: &str) -> Option<String> {
        let names = self.validated_names().await;
        names
            .iter()
            .find(|name| name.eq_ignore_ascii_case(domain))
            .or_else(|| names.iter().find(|name| is_within(name, domain)))
            .or_else(|| names.first())
            .cloned()
    }

    /// The client's names from PTR (the first ten) whose addresses include it
    /// (§5.5); lookups that fail only leave names out.
    async fn validated_names(&self) -> Vec<String> {
        let reverse = Name::from(self.ip);
        let names = match self.dns.lookup(reverse, RecordType::PTR).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::PTR(ptr) => Some(text_of(&ptr.0)),
                    _ => None,
                })
                .take(MAX_NAMES)
                .collect::<Vec<_>>(),
            Err(_) => return Vec::new(),
        };
        let mut validated = Vec::new();
        for name in names {
            if let Ok(addresses) = self.addresses(&name).await {
                if addresses.contains(&self.ip) {
                    validated.push(name);
                }
            }
        }
        validated
    }

    /// The addresses of `name` of the client's family.
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Stop> {
        match self.ip {
            IpAddr::V4(_) => self.a(name).await,
            IpAddr::V6(_) => self.query(name, RecordType::AAAA).await,
        }
    }

    async fn a(&self, name: &str) -> Result<Vec<IpAddr>, Stop> {
        self.query(name, RecordType::A).await
    }

    async fn query(&self, name: &str, kind: RecordType) -> Result<Vec<IpAddr>, Stop> {
        let Some(query) = dns_name(name) else {
            return Ok(Vec::new());
        };
        match self.dns.lookup(query, kind).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(a) if kind == RecordType::A => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) if kind == RecordType::AAAA => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(Stop::Temp(format!("{kind} {name}: {e}"))),
        }
    }

    /// The exchanges of `name`'s MX records, a null MX's left out.
    async fn exchanges(&self, name: &str) -> Result<Vec<String>, Stop> {
        let Some(query) = dns_name(name) else {
            return Ok(Vec::new());
        };
        match self.dns.lookup(query, RecordType::MX).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some(text_of(&mx.exchange)),
                    _ => None,
                })
                .filter(|exchange| !exchange.is_empty())
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(Stop::Temp(format!("MX {name}: {e}"))),
        }
    }

    /// Each TXT record of `name`, its strings joined (§3.3); none for NXDOMAIN or
    /// no TXT records.
    async fn txt(&self, name: &Name) -> Result<Vec<Vec<u8>>, String> {
        match self.dns.lookup(name.clone(), RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `name` as a fully qualified DNS name of its labels' bytes, or `None` when it
/// cannot be one: an empty label (but for a final dot) or one over 63 octets.
fn dns_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}

/// A name from DNS as text, without the final dot.
fn text_of(name: &Name) -> String {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).into_owned())
        .collect();
    labels.join(".")
}

/// Whether `name` is `domain` or a name under it, in any case.
fn is_within(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}

fn within_cidr(ip: IpAddr, address: IpAddr, cidr: Cidr) -> bool {
    match address {
        IpAddr::V4(_) => within(ip, address, cidr.v4),
        IpAddr::V6(_) => within(ip, address, cidr.v6),
    }
}

/// Whether `ip` is in `network`/`length`; addresses of different families never
/// match (§5.6).
fn within(ip: IpAddr, network: IpAddr, length: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_within_their_family_only() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(within(ip, "192.0.2.0".parse().unwrap(), 24));
        assert!(within(ip, "10.0.0.0".parse().unwrap(), 0));
        assert!(!within(ip, "192.0.3.0".parse().unwrap(), 24));
        assert!(!within(ip, "::".parse().unwrap(), 0));
        assert!(!within(ip, "::ffff:192.0.2.77".parse().unwrap(), 128));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(within(v6, "2001:db8::".parse().unwrap(), 32));
        assert!(!within(v6, "0.0.0.0".parse().unwrap(), 0));
    }

    #[test]
    fn names_that_cannot_be_queried_are_none() {
        assert!(dns_name("mail.example.com.").is_some());
        assert!(dns_name("macro%percent  space%20url-space.example.com").is_some());
        assert!(dns_name("mail.example...com").is_none());
        assert!(dns_name(&format!("{}.example.com", "a".repeat(64))).is_none());
        assert!(dns_name("").is_none());
    }
}

//! DNS blocklists: the client's IP address looked up in DNSBL zones and the domains
//! a message links to looked up in URI blocklist zones (RFC 5782), zones and scores
//! from the configuration.
//!
//! An IPv4 client `192.0.2.1` is asked as `1.2.0.192.<zone>`, an IPv6 client as its
//! 32 nibbles reversed; a link domain is asked as `<registrable domain>.<zone>`.
//! Every question is an `A` lookup and all of them run at once through the node's
//! shared resolver, whose cache spares repeated questions. A listing is an answer in
//! 127.0.0.0/8, optionally narrowed to the return codes a zone is configured with.
//!
//! What this module must never do:
//! - ask about addresses that are not on the public internet (private, shared,
//!   loopback, link-local, unique-local): it would leak our network to the zone's
//!   operator and can only produce false listings;
//! - ask about more than [`MAX_LINK_DOMAINS`] link domains per message, or about an IP
//!   literal as if it were a domain;
//! - take an answer that is not a listing for one: a zone's refusal codes
//!   (127.255.255.0/24 from Spamhaus, 127.0.0.1 from URIBL and SURBL) and addresses
//!   outside 127.0.0.0/8 (a resolver that answers every name) are recorded as a
//!   0-score `DNSBL_ERROR` and otherwise ignored;
//! - wait longer than [`Blocklists::budget`]: a zone that does not answer is a
//!   0-score `DNSBL_TEMPERROR`, never a stuck session.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mail_auth::hickory_resolver::lookup::Lookup;
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::task::JoinSet;

use super::engine::{Checked, Hit, LinkHosts, NetworkEngine, Outcome};
use super::spam::registrable_domain;
use super::Candidate;
use crate::dns::TokioResolver;

/// The version recorded in verdicts.
const VERSION: &str = "dnsbl:1";
/// Distinct registrable link domains asked about per message, in the order the
/// message names them (SpamAssassin's `uridnsbl_max_domains` is also 20).
pub const MAX_LINK_DOMAINS: usize = 20;
/// A lookup is abandoned after this many of the resolver's per-lookup timeouts (its
/// retry included), like each phase of authentication.
const LOOKUP_TIMEOUTS: u32 = 3;
/// Longest name DNS can carry, in presentation form without the final dot.
const MAX_NAME_LEN: usize = 253;
/// Longest zone name: the 32 reversed nibbles of an IPv6 address (64 characters with
/// their dots) must still fit in front of it.
const MAX_ZONE_LEN: usize = MAX_NAME_LEN - 64;
/// Longest label of a name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// What a zone lists, and so what it is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    /// IP addresses (a DNSBL such as `zen.spamhaus.org`): asked about the client.
    Ip,
    /// Domain names (a URI blocklist such as `dbl.spamhaus.org`): asked about the
    /// domains the message links to.
    Domain,
}

/// One configured blocklist zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    /// The zone's name, lowercase, without the final dot: `zen.spamhaus.org`.
    pub name: String,
    /// What a listing adds to the message's score (negative for an allow list).
    pub score: f64,
    pub kind: ZoneKind,
    /// The answers that count as a listing; empty: any answer in 127.0.0.0/8 that is
    /// not a refusal code.
    pub codes: Vec<Ipv4Addr>,
}

impl Zone {
    /// The symbol a listing in this zone is recorded as: `RBL_ZEN_SPAMHAUS_ORG`,
    /// `URIBL_DBL_SPAMHAUS_ORG`.
    pub fn symbol(&self) -> String {
        let prefix = match self.kind {
            ZoneKind::Ip => "RBL_",
            ZoneKind::Domain => "URIBL_",
        };
        let name = self.name.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        });
        prefix.chars().chain(name).collect()
    }
}

/// Reads a zone from its configuration form, `name=score[:kind[:codes]]`:
/// `zen.spamhaus.org=3.0`, `dbl.spamhaus.org=4.0:domain`,
/// `bl.example=2:ip:127.0.0.2,127.0.0.4`. The kind is `ip` (the default) or
/// `domain`; codes are the answers that count, each in 127.0.0.0/8.
pub fn parse_zone(spec: &str) -> Result<Zone, String> {
    let fail = |why: String| format!("blocklist zone `{}`: {why}", spec.trim());
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| fail("expected `name=score[:ip|domain[:codes]]`".into()))?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    check_zone_name(&name).map_err(fail)?;

    let mut fields = rest.splitn(3, ':');
    let score_text = fields.next().unwrap_or_default().trim();
    let score = score_text
        .parse::<f64>()
        .ok()
        .filter(|score| score.is_finite())
        .ok_or_else(|| fail(format!("score `{score_text}` is not a number")))?;
    let kind = match fields.next().map(|kind| kind.trim().to_ascii_lowercase()) {
        None => ZoneKind::Ip,
        Some(kind) if kind == "ip" => ZoneKind::Ip,
        Some(kind) if kind == "domain" => ZoneKind::Domain,
        Some(kind) => return Err(fail(format!("kind `{kind}` is neither `ip` nor `domain`"))),
    };
    let codes = match fields.next() {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|code| parse_code(code.trim()).map_err(&fail))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Zone {
        name,
        score,
        kind,
        codes,
    })
}

/// Checks a zone name: at least two labels of letters, digits, `-` and `_`, short
/// enough for any question to fit.
fn check_zone_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the zone name is empty".into());
    }
    if name.len() > MAX_ZONE_LEN {
        return Err(format!(
            "the zone name is longer than {MAX_ZONE_LEN} characters"
        ));
    }
    if !is_dns_name(name) {
        return Err(format!(
            "`{name}` is not a zone name (two or more labels of letters, digits, `-`, `_`)"
        ));
    }
    Ok(())
}

/// One return code of a zone's configuration.
fn parse_code(code: &str) -> Result<Ipv4Addr, String> {
    let ip = code
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("return code `{code}` is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!(
            "return code {ip} is outside 127.0.0.0/8, so no listing can match it"
        ));
    }
    if is_refusal(ip) {
        return Err(format!(
            "return code {ip} is a refusal answer, not a listing"
        ));
    }
    Ok(ip)
}

/// Looks clients and link domains up in the configured zones. Build one per process
/// and share it: the resolver's cache serves every message.
pub struct Blocklists {
    zones: Vec<Zone>,
    resolver: Arc<TokioResolver>,
    lookup_timeout: Duration,
}

impl Blocklists {
    /// Blocklists asking `zones` through `resolver` (a clone of the node's resolver
    /// shares its cache).
    pub fn new(zones: Vec<Zone>, resolver: TokioResolver) -> Self {
        let lookup_timeout = resolver.options().timeout * LOOKUP_TIMEOUTS;
        Blocklists {
            zones,
            resolver: Arc::new(resolver),
            lookup_timeout,
        }
    }

    /// The longest [`Blocklists::check`] takes however slow DNS is: its lookups run
    /// at once, each bounded by this.
    pub fn budget(&self) -> Duration {
        self.lookup_timeout
    }

    /// Looks `client_ip` up in the IP zones and the registrable domains of
    /// `link_hosts` (as [`super::spam::link_hosts`] finds them) in the domain zones.
    /// One hit per zone that lists something, with the zone's score; 0-score
    /// `DNSBL_ERROR` and `DNSBL_TEMPERROR` hits for zones that answered nonsense or
    /// did not answer.
    pub async fn check(&self, client_ip: IpAddr, link_hosts: &[String]) -> Outcome {
        let questions = self.questions(client_ip, link_hosts);
        let mut answers: Vec<Option<Answer>> = vec![None; questions.len()];
        let mut lookups = JoinSet::new();
        for (index, question) in questions.iter().enumerate() {
            let resolver = Arc::clone(&self.resolver);
            let name = question.name.clone();
            let timeout = self.lookup_timeout;
            lookups.spawn(async move {
                let answer = tokio::time::timeout(timeout, resolver.lookup(name, RecordType::A))
                    .await
                    .map_or_else(
                        |_| {
                            Answer::Unanswered(format!(
                                "no answer within {} ms",
                                timeout.as_millis()
                            ))
                        },
                        Answer::read,
                    );
                (index, answer)
            });
        }
        while let Some(joined) = lookups.join_next().await {
            // A lookup task that panicked leaves its answer `None`: unanswered.
            if let Ok((index, answer)) = joined {
                answers[index] = Some(answer);
            }
        }

        let mut hits = Vec::new();
        for (z, zone) in self.zones.iter().enumerate() {
            let mut report = ZoneReport::default();
            for (question, answer) in questions.iter().zip(&answers) {
                if question.zone == z {
                    report.add(zone, &question.about, answer.as_ref());
                }
            }
            report.into_hits(zone, &mut hits);
        }
        Outcome {
            hits,
            findings: Vec::new(),
        }
    }

    /// Every question to ask for one message, zone by zone in configuration order.
    fn questions(&self, client_ip: IpAddr, link_hosts: &[String]) -> Vec<Question> {
        let client_ip = client_ip.to_canonical();
        let client = is_public(client_ip).then(|| reversed(client_ip));
        let mut domains: Vec<String> = Vec::new();
        if self.zones.iter().any(|zone| zone.kind == ZoneKind::Domain) {
            for host in link_hosts {
                if domains.len() == MAX_LINK_DOMAINS {
                    break;
                }
                if let Some(domain) = link_domain(host) {
                    if !domains.contains(&domain) {
                        domains.push(domain);
                    }
                }
            }
        }
        let mut questions = Vec::new();
        for (z, zone) in self.zones.iter().enumerate() {
            match (zone.kind, &client) {
                (ZoneKind::Ip, Some(reversed)) => {
                    if let Some(name) = query_name(reversed, &zone.name) {
                        questions.push(Question {
                            zone: z,
                            about: client_ip.to_string(),
                            name,
                        });
                    }
                }
                (ZoneKind::Ip, None) => {}
                (ZoneKind::Domain, _) => {
                    for domain in &domains {
                        if let Some(name) = query_name(domain, &zone.name) {
                            questions.push(Question {
                                zone: z,
                                about: domain.clone(),
                                name,
                            });
                        }
                    }
                }
            }
        }
        questions
    }
}

impl NetworkEngine for Blocklists {
    fn name(&self) -> &'static str {
        "dnsbl"
    }

    fn version(&self) -> String {
        VERSION.to_string()
    }

    fn budget(&self) -> Duration {
        self.lookup_timeout
    }

    fn wants_links(&self) -> bool {
        true
    }

    /// Waits for the content thread's link hosts, then looks them and the client up.
    fn check<'a>(
        &'a self,
        message: &'a Candidate<'a>,
        links: &'a LinkHosts,
    ) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let links = links.get().await;
            Blocklists::check(self, message.client_ip, &links)
                .await
                .into()
        })
    }
}

/// One DNS question: the zone (its index), what is asked about (the client address
/// or a link domain), and the name queried.
struct Question {
    zone: usize,
    about: String,
    name: Name,
}

/// What a zone said about one question.
#[derive(Clone, Debug)]
enum Answer {
    /// The addresses it answered with, all in 127.0.0.0/8 and none a refusal code.
    Listed(Vec<Ipv4Addr>),
    /// NXDOMAIN or no `A` record.
    NotListed,
    /// An answer that is not a listing: refusal codes or addresses outside
    /// 127.0.0.0/8.
    Bogus(Vec<Ipv4Addr>),
    /// No usable answer (timeout, SERVFAIL, network error), and why.
    Unanswered(String),
}

impl Answer {
    fn read(result: Result<Lookup, NetError>) -> Answer {
        let lookup = match result {
            Ok(lookup) => lookup,
            Err(error) if error.is_no_records_found() => return Answer::NotListed,
            Err(error) => return Answer::Unanswered(one_line(&error.to_string())),
        };
        let addresses: Vec<Ipv4Addr> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        if addresses.is_empty() {
            Answer::NotListed
        } else if addresses
            .iter()
            .any(|ip| !ip.is_loopback() || is_refusal(*ip))
        {
            Answer::Bogus(addresses)
        } else {
            Answer::Listed(addresses)
        }
    }
}

/// What the questions to one zone found, gathered into at most three hits.
#[derive(Default)]
struct ZoneReport {
    /// What is listed, with the return codes that count.
    listed: Vec<(String, Vec<Ipv4Addr>)>,
    /// What drew a non-listing answer, with that answer.
    bogus: Vec<(String, Vec<Ipv4Addr>)>,
    /// What got no answer, and why the first of them did not.
    unanswered: Vec<String>,
    why_unanswered: Option<String>,
}

impl ZoneReport {
    fn add(&mut self, zone: &Zone, about: &str, answer: Option<&Answer>) {
        match answer {
            Some(Answer::Listed(addresses)) => {
                let codes: Vec<Ipv4Addr> = addresses
                    .iter()
                    .copied()
                    .filter(|ip| zone.codes.is_empty() || zone.codes.contains(ip))
                    .collect();
                if !codes.is_empty() {
                    self.listed.push((about.to_string(), codes));
                }
            }
            Some(Answer::NotListed) => {}
            Some(Answer::Bogus(addresses)) => {
                self.bogus.push((about.to_string(), addresses.clone()))
            }
            Some(Answer::Unanswered(why)) => {
                self.unanswered.push(about.to_string());
                self.why_unanswered.get_or_insert_with(|| why.clone());
            }
            None => {
                self.unanswered.push(about.to_string());
                self.why_unanswered
                    .get_or_insert_with(|| "the lookup failed".to_string());
            }
        }
    }

    fn into_hits(self, zone: &Zone, hits: &mut Vec<Hit>) {
        if !self.listed.is_empty() {
            let listed = describe(&self.listed);
            let description = match zone.kind {
                ZoneKind::Ip => format!("client {listed} is listed in {}", zone.name),
                ZoneKind::Domain => format!("links to {listed} listed in {}", zone.name),
            };
            hits.push(Hit::new(zone.symbol(), zone.score, description));
        }
        if !self.bogus.is_empty() {
            hits.push(Hit::new(
                "DNSBL_ERROR",
                0.0,
                format!(
                    "{} answered {}: not a listing (a refused query or a resolver that \
                     answers every name), ignored",
                    zone.name,
                    describe(&self.bogus)
                ),
            ));
        }
        if !self.unanswered.is_empty() {
            hits.push(Hit::new(
                "DNSBL_TEMPERROR",
                0.0,
                format!(
                    "{} did not answer for {} ({})",
                    zone.name,
                    self.unanswered.join(", "),
                    self.why_unanswered.unwrap_or_default()
                ),
            ));
        }
    }
}

/// `a (127.0.0.2), b (127.0.0.2, 127.0.0.4)`.
fn describe(entries: &[(String, Vec<Ipv4Addr>)]) -> String {
    let entries: Vec<String> = entries
        .iter()
        .map(|(about, codes)| {
            let codes: Vec<String> = codes.iter().map(Ipv4Addr::to_string).collect();
            format!("{about} ({})", codes.join(", "))
        })
        .collect();
    entries.join(", ")
}

/// Answers that zones give instead of a listing: Spamhaus's 127.255.255.0/24 (typo in
/// the zone, query through a public resolver, too many queries) and 127.0.0.1, with
/// which URIBL and SURBL refuse a query and which RFC 5782 §5 keeps out of listings.
fn is_refusal(ip: Ipv4Addr) -> bool {
    let [_, b, c, d] = ip.octets();
    (b, c) == (255, 255) || (b, c, d) == (0, 0, 1)
}

/// Whether an address is on the public internet, and so may be asked about.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            // 100.64.0.0/10: carrier-grade NAT (RFC 6598).
            let shared = a == 100 && (b & 0xc0) == 64;
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || shared)
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            // fc00::/7 unique local (RFC 4193), fe80::/10 link-local.
            let unique_local = (first & 0xfe00) == 0xfc00;
            let link_local = (first & 0xffc0) == 0xfe80;
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || unique_local
                || link_local)
        }
    }
}

/// The address as a DNSBL label sequence: octets (IPv4) or nibbles (IPv6) in
/// reverse order.
fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(ip) => reversed_nibbles(ip),
    }
}

/// The 32 nibbles of an IPv6 address, last first, dot-separated (RFC 5782 §2.4).
fn reversed_nibbles(ip: Ipv6Addr) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in ip.octets().iter().rev() {
        for nibble in [byte & 0x0f, byte >> 4] {
            out.push(char::from(HEX[usize::from(nibble)]));
            out.push('.');
        }
    }
    out.pop();
    out
}

/// The domain to ask a URI blocklist about for a link host: its registrable domain
/// in IDNA ASCII form; `None` for IP literals and names DNS cannot carry.
fn link_domain(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('.');
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let ascii = idna::domain_to_ascii(host).ok()?;
    if ascii.parse::<IpAddr>().is_ok() {
        return None;
    }
    let domain = registrable_domain(&ascii);
    let top = domain.rsplit('.').next().unwrap_or_default();
    // An all-digit last label is an IP address written some other way, not a domain.
    if !is_dns_name(domain) || top.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(domain.to_string())
}

/// Two or more labels of 1 to 63 letters, digits, `-` or `_`.
fn is_dns_name(name: &str) -> bool {
    name.contains('.')
        && name.split('.').all(|label| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `<prefix>.<zone>.` as a fully qualified name, so that no search domain is
/// appended; `None` when it would be too long.
fn query_name(prefix: &str, zone: &str) -> Option<Name> {
    if prefix.len() + 1 + zone.len() > MAX_NAME_LEN {
        return None;
    }
    Name::from_ascii(format!("{prefix}.{zone}.")).ok()
}

/// An error message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_cluster_tests::dns::{DnsServer, Fault, Record, Zone as DnsZone};
    use std::time::Instant;

    const TIMEOUT: Duration = Duration::from_millis(300);
    const LISTED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn zone(spec: &str) -> Zone {
        parse_zone(spec).expect("zone spec")
    }

    fn blocklists(server: &DnsServer, zones: &[&str]) -> Blocklists {
        let resolver = crate::dns::resolver(&[server.addr()], TIMEOUT).expect("resolver");
        Blocklists::new(zones.iter().map(|spec| zone(spec)).collect(), resolver)
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn symbols(outcome: &Outcome) -> Vec<&str> {
        outcome.hits.iter().map(|hit| hit.symbol.as_str()).collect()
    }

    #[tokio::test]
    async fn listed_ipv4_client_scores_with_its_code() {
        let mut dns = DnsZone::new();
        dns.add(
            "7.113.0.203.bl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 2)),
        )
        .add(
            "7.113.0.203.bl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 4)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3.5", "other.test=1"]);
        let outcome = lists.check(LISTED_V4, &[]).await;
        assert_eq!(outcome.hits.len(), 1, "{:?}", outcome.hits);
        let hit = &outcome.hits[0];
        assert_eq!(hit.symbol, "RBL_BL_TEST");
        assert_eq!(hit.score, 3.5);
        assert!(
            hit.description.contains("203.0.113.7"),
            "{}",
            hit.description
        );
        assert!(hit.description.contains("127.0.0.2"), "{}", hit.description);
        assert!(hit.description.contains("127.0.0.4"), "{}", hit.description);
        assert!(hit.description.contains("bl.test"), "{}", hit.description);
    }

    #[tokio::test]
    async fn listed_ipv6_client_is_asked_by_reversed_nibbles() {
        let client: IpAddr = "2001:db8::1".parse().unwrap();
        let name = format!("{}.bl.test", reversed(client));
        assert_eq!(
            name,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
        let mut dns = DnsZone::new();
        dns.add(&name, Record::A(Ipv4Addr::new(127, 0, 0, 3)));
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=2"]);
        let outcome = lists.check(client, &[]).await;
        assert_eq!(symbols(&outcome), ["RBL_BL_TEST"]);
        assert!(outcome.hits[0].description.contains("2001:db8::1"));
        assert!(outcome.hits[0].description.contains("127.0.0.3"));
    }

    #[tokio::test]
    async fn unlisted_client_has_no_hit() {
        let server = DnsServer::start(DnsZone::new()).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3", "dbl.test=4:domain"]);
        let outcome = lists
            .check("198.51.100.20".parse().unwrap(), &hosts(&["clean.example"]))
            .await;
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
        assert_eq!(server.query_count(), 2);
    }

    #[tokio::test]
    async fn private_clients_are_never_asked_about() {
        let server = DnsServer::start(DnsZone::new()).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3"]);
        for client in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.2",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let outcome = lists.check(client.parse().unwrap(), &[]).await;
            assert!(outcome.hits.is_empty(), "{client}: {:?}", outcome.hits);
        }
        assert_eq!(server.query_count(), 0);
    }

    #[tokio::test]
    async fn ipv4_mapped_client_is_asked_as_ipv4() {
        let mut dns = DnsZone::new();
        dns.add(
            "7.113.0.203.bl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 2)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3"]);
        let outcome = lists
            .check("::ffff:203.0.113.7".parse().unwrap(), &[])
            .await;
        assert_eq!(symbols(&outcome), ["RBL_BL_TEST"]);
    }

    #[tokio::test]
    async fn listed_link_domain_scores_once_naming_the_domains() {
        let mut dns = DnsZone::new();
        dns.add(
            "bad.example.dbl.test",
            Record::A(Ipv4Addr::new(127, 0, 1, 2)),
        )
        .add(
            "worse.example.dbl.test",
            Record::A(Ipv4Addr::new(127, 0, 1, 2)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["dbl.test=4:domain", "bl.test=3"]);
        let links = hosts(&["www.bad.example", "good.example", "cdn.worse.example"]);
        let outcome = lists.check("192.168.0.9".parse().unwrap(), &links).await;
        assert_eq!(symbols(&outcome), ["URIBL_DBL_TEST"]);
        let hit = &outcome.hits[0];
        assert_eq!(hit.score, 4.0);
        assert!(
            hit.description.contains("bad.example (127.0.1.2)"),
            "{}",
            hit.description
        );
        assert!(
            hit.description.contains("worse.example"),
            "{}",
            hit.description
        );
        assert!(
            !hit.description.contains("good.example"),
            "{}",
            hit.description
        );
    }

    #[tokio::test]
    async fn link_domains_of_a_parsed_message_are_looked_up() {
        let mut dns = DnsZone::new();
        dns.add(
            "bad.example.dbl.test",
            Record::A(Ipv4Addr::new(127, 0, 1, 2)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["dbl.test=4:domain"]);
        let raw = "From: a@sender.example\r\nSubject: hi\r\n\r\n\
                   Look at https://www.bad.example/offer and http://192.0.2.5/x\r\n";
        let message = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .expect("message");
        let links = super::super::spam::link_hosts(&message);
        let outcome = lists.check(LISTED_V4, &links).await;
        assert_eq!(symbols(&outcome), ["URIBL_DBL_TEST"]);
        assert_eq!(server.query_count(), 1);
    }

    #[tokio::test]
    async fn link_domains_are_deduplicated_capped_and_never_ip_literals() {
        let server = DnsServer::start(DnsZone::new()).expect("dns server");
        let lists = blocklists(&server, &["dbl.test=4:domain"]);
        let links = hosts(&[
            "a.spam.example",
            "b.spam.example",
            "spam.example.",
            "192.0.2.1",
            "2001:db8::5",
            "3232235777",
            "localhost",
            "bad_%host.example",
        ]);
        let outcome = lists.check(LISTED_V4, &links).await;
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
        assert_eq!(server.query_count(), 1);

        let server = DnsServer::start(DnsZone::new()).expect("dns server");
        let lists = blocklists(&server, &["dbl.test=4:domain"]);
        let many: Vec<String> = (0..30).map(|i| format!("www.site{i}.example")).collect();
        lists.check(LISTED_V4, &many).await;
        assert_eq!(server.query_count(), MAX_LINK_DOMAINS);
    }

    #[test]
    fn international_link_domains_are_asked_in_ascii() {
        assert_eq!(
            link_domain("www.bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            link_domain("shop.example.co.uk").as_deref(),
            Some("example.co.uk")
        );
        assert_eq!(link_domain("192.0.2.1"), None);
        assert_eq!(link_domain("example"), None);
    }

    #[tokio::test]
    async fn codes_filter_which_answers_count() {
        let mut dns = DnsZone::new();
        dns.add(
            "7.113.0.203.bl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 2)),
        )
        .add(
            "8.113.0.203.bl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 4)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=2:ip:127.0.0.4,127.0.0.10"]);
        let outcome = lists.check(LISTED_V4, &[]).await;
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
        let outcome = lists.check("203.0.113.8".parse().unwrap(), &[]).await;
        assert_eq!(symbols(&outcome), ["RBL_BL_TEST"]);
        assert!(outcome.hits[0].description.contains("127.0.0.4"));
    }

    #[tokio::test]
    async fn refusal_and_non_loopback_answers_are_ignored() {
        let mut dns = DnsZone::new();
        dns.add(
            "7.113.0.203.zen.test",
            Record::A(Ipv4Addr::new(127, 255, 255, 254)),
        )
        .add(
            "bad.example.uribl.test",
            Record::A(Ipv4Addr::new(127, 0, 0, 1)),
        )
        .add(
            "7.113.0.203.hijack.test",
            Record::A(Ipv4Addr::new(192, 0, 2, 99)),
        );
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(
            &server,
            &["zen.test=3", "uribl.test=4:domain", "hijack.test=2"],
        );
        let outcome = lists.check(LISTED_V4, &hosts(&["bad.example"])).await;
        assert_eq!(
            symbols(&outcome),
            ["DNSBL_ERROR", "DNSBL_ERROR", "DNSBL_ERROR"]
        );
        assert!(outcome.hits.iter().all(|hit| hit.score == 0.0));
        assert!(outcome.hits[0].description.contains("127.255.255.254"));
        assert!(outcome.hits[0].description.contains("zen.test"));
        assert!(outcome.hits[1]
            .description
            .contains("bad.example (127.0.0.1)"));
        assert!(outcome.hits[2].description.contains("192.0.2.99"));
    }

    #[tokio::test]
    async fn silent_nameserver_is_a_temperror_within_the_budget() {
        let mut dns = DnsZone::new();
        dns.fault_everything(Fault::Silent);
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3", "dbl.test=4:domain"]);
        let started = Instant::now();
        let outcome = lists
            .check(LISTED_V4, &hosts(&["a.example", "b.example"]))
            .await;
        assert!(
            started.elapsed() < lists.budget() + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(symbols(&outcome), ["DNSBL_TEMPERROR", "DNSBL_TEMPERROR"]);
        assert!(outcome.hits.iter().all(|hit| hit.score == 0.0));
        assert!(outcome.hits[0]
            .description
            .starts_with("bl.test did not answer for 203.0.113.7"));
        assert!(
            outcome.hits[1]
                .description
                .starts_with("dbl.test did not answer for a.example, b.example"),
            "{}",
            outcome.hits[1].description
        );
    }

    #[tokio::test]
    async fn servfail_is_a_temperror() {
        let mut dns = DnsZone::new();
        dns.fault("7.113.0.203.bl.test", Fault::ServFail, &[]);
        let server = DnsServer::start(dns).expect("dns server");
        let lists = blocklists(&server, &["bl.test=3"]);
        let outcome = lists.check(LISTED_V4, &[]).await;
        assert_eq!(symbols(&outcome), ["DNSBL_TEMPERROR"]);
        assert!(outcome.hits[0].description.contains("bl.test"));
    }

    #[test]
    fn zone_specs_parse() {
        assert_eq!(
            zone("zen.spamhaus.org=3.0"),
            Zone {
                name: "zen.spamhaus.org".into(),
                score: 3.0,
                kind: ZoneKind::Ip,
                codes: Vec::new(),
            }
        );
        let dbl = zone(" DBL.Spamhaus.org. = 4.0 : domain ");
        assert_eq!(dbl.name, "dbl.spamhaus.org");
        assert_eq!(dbl.kind, ZoneKind::Domain);
        assert_eq!(dbl.symbol(), "URIBL_DBL_SPAMHAUS_ORG");
        let coded = zone("bl.example=2:ip:127.0.0.2,127.0.0.4");
        assert_eq!(
            coded.codes,
            [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]
        );
        assert_eq!(coded.symbol(), "RBL_BL_EXAMPLE");
        assert_eq!(zone("list.dnswl.test=-2").score, -2.0);
    }

    #[test]
    fn bad_zone_specs_say_why() {
        for (spec, why) in [
            ("zen.spamhaus.org", "expected `name=score"),
            ("=3", "empty"),
            ("zen=3", "not a zone name"),
            ("bad zone.test=3", "not a zone name"),
            ("zen.test=lots", "score `lots` is not a number"),
            ("zen.test=NaN", "not a number"),
            ("zen.test=3:uri", "kind `uri`"),
            ("zen.test=3:ip:", "return code `` is not an IPv4 address"),
            ("zen.test=3:ip:10.0.0.2", "outside 127.0.0.0/8"),
            ("zen.test=3:ip:127.255.255.254", "refusal"),
        ] {
            let error = parse_zone(spec).expect_err(spec);
            assert!(error.contains(why), "{spec}: {error}");
            assert!(error.starts_with("blocklist zone `"), "{spec}: {error}");
        }
        let long = format!("{}.test=1", "a".repeat(200));
        assert!(parse_zone(&long).unwrap_err().contains("longer than"));
    }
}

//! The phishing and BEC engine: mail that pretends to come from us or from someone
//! we know. It compares the From, Sender and Reply-To addresses, the From display
//! name and every link against our own domains (`smtp.domains`) and what the policy
//! protects (`protected_names`, `protected_domains`): display names that name a local
//! address or domain or a protected person, domains one or two edits away from ours
//! or a protected one or spelled with look-alike characters (after decoding
//! punycode), such a name under another top-level domain, a Reply-To leading
//! elsewhere, and our own domain in the From of mail arriving from outside.

#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::engine::{Engine, Hit, Outcome, Parsed};
use super::spam::{link_hosts, registrable_domain};

/// Changes whenever the checks or their scores change.
const VERSION: &str = "phishing:2";

/// The From, Sender or Reply-To domain is a look-alike of one of ours.
const LOOKALIKE_SCORE: f64 = 6.0;
/// A link leads to a look-alike of one of our domains.
const LOOKALIKE_LINK_SCORE: f64 = 4.0;
/// The display name of an outside sender names one of our addresses or domains.
const IMPERSONATION_SCORE: f64 = 5.0;
/// The display name of an outside sender is a protected person's name.
const PROTECTED_NAME_SCORE: f64 = 6.0;
/// The display name of an outside sender is the name of one of our recipients.
const LOCAL_USER_NAME_SCORE: f64 = 2.0;
/// Replies go to another domain than the sender's.
const REPLYTO_SCORE: f64 = 1.0;
/// Mail from one of our domains arrives from a client outside our networks.
const LOCAL_EXTERNAL_SCORE: f64 = 2.5;

/// Looks for impersonation of our domains and users and of what the policy protects.
#[derive(Debug, Default)]
pub struct PhishingEngine {
    /// Protected people's names, as [`normalize_name`] gives them.
    names: Vec<String>,
    /// Protected domains besides ours, lowercase IDNA ASCII.
    domains: Vec<String>,
}

impl PhishingEngine {
    /// The engine protecting `names` (display names outsiders may not use: a VIP
    /// list) and `domains` (partners, banks: their look-alikes are phishing) besides
    /// our own domains, which come with each message (`Parsed::local_domains`).
    pub fn new(names: &[String], domains: &[String]) -> Self {
        PhishingEngine {
            names: names.iter().map(|n| normalize_name(n)).collect(),
            domains: domains.iter().map(|d| to_ascii(d)).collect(),
        }
    }

    /// A look-alike of one of our domains or of a protected one.
    fn lookalike(&self, domain: &str, ours: &[String]) -> Option<String> {
        lookalike_of(domain, ours, "our")
            .or_else(|| lookalike_of(domain, &self.domains, "the protected"))
    }
}

impl Engine for PhishingEngine {
    fn name(&self) -> &'static str {
        "phishing"
    }

    fn version(&self) -> String {
        VERSION.to_owned()
    }

    fn scan(&self, parsed: &Parsed<'_>) -> Outcome {
        let ours = parsed.local_domains;
        let message = parsed.message;
        let mut hits = Vec::new();
        let from = message.from().and_then(|a| a.first());
        let from_address = from.and_then(|a| a.address()).map(str::to_owned);
        let from_domain = from_address.as_deref().and_then(domain_of);
        let reply_domain = message
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .and_then(domain_of);

        // Look-alike sender domains.
        let sender_domain = message
            .sender()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .and_then(domain_of);
        let mut lookalikes = Vec::new();
        for (header, domain) in [
            ("From", &from_domain),
            ("Sender", &sender_domain),
            ("Reply-To", &reply_domain),
        ] {
            if let Some(domain) = domain {
                if let Some(found) = self.lookalike(domain, ours) {
                    lookalikes.push(format!("{header} {found}"));
                }
            }
        }
        if !lookalikes.is_empty() {
            lookalikes.dedup();
            hits.push(Hit::new(
                "PHISH_LOOKALIKE_DOMAIN",
                LOOKALIKE_SCORE,
                lookalikes.join("; "),
            ));
        }

        // Look-alike link domains.
        if !ours.is_empty() || !self.domains.is_empty() {
            let mut seen = Vec::new();
            let mut links = Vec::new();
            for host in link_hosts(message) {
                let host = to_ascii(&host);
                if seen.contains(&host) {
                    continue;
                }
                if let Some(found) = self.lookalike(&host, ours) {
                    links.push(format!("link {found}"));
                }
                seen.push(host);
            }
            if !links.is_empty() {
                hits.push(Hit::new(
                    "PHISH_LOOKALIKE_LINK",
                    LOOKALIKE_LINK_SCORE,
                    links.join("; "),
                ));
            }
        }

        // Display names of outside senders.
        let external = from_domain.as_deref().filter(|d| !is_ours(d, ours));
        if let (Some(domain), Some(name)) = (external, from.and_then(|a| a.name())) {
            if self.names.contains(&normalize_name(name)) {
                hits.push(Hit::new(
                    "PHISH_PROTECTED_NAME",
                    PROTECTED_NAME_SCORE,
                    format!(
                        "display name \"{name}\" is a protected name but the mail is from {domain}"
                    ),
                ));
            } else if let Some(named) = names_ours(name, ours) {
                hits.push(Hit::new(
                    "PHISH_DISPLAY_NAME_IMPERSONATION",
                    IMPERSONATION_SCORE,
                    format!(
                        "display name \"{name}\" names our {named} but the mail is from {domain}"
                    ),
                ));
            } else if let Some(user) = local_user_named(name, parsed) {
                hits.push(Hit::new(
                    "PHISH_DISPLAY_NAME_LOCAL_USER",
                    LOCAL_USER_NAME_SCORE,
                    format!("display name \"{name}\" is the name of our user {user} but the mail is from {domain}"),
                ));
            }
        }

        // Reply-To leading elsewhere.
        if let (Some(from), Some(reply)) = (&from_domain, &reply_domain) {
            if registrable_domain(from) != registrable_domain(reply) {
                hits.push(Hit::new(
                    "REPLYTO_DIFFERS",
                    REPLYTO_SCORE,
                    format!("From is {from} but replies go to {reply}"),
                ));
            }
        }

        // Our own domain, from outside.
        if let Some(domain) = from_domain.as_deref().filter(|d| is_ours(d, ours)) {
            if !is_internal(parsed.client_ip) {
                hits.push(Hit::new(
                    "FROM_LOCAL_DOMAIN_EXTERNAL",
                    LOCAL_EXTERNAL_SCORE,
                    format!(
                        "From claims our domain {domain} but the client {} is outside our networks",
                        parsed.client_ip
                    ),
                ));
            }
        }

        Outcome {
            hits,
            findings: Vec::new(),
        }
    }
}

/// The domain of an address, lowercase IDNA ASCII.
fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').trim_end_matches('>');
    (!domain.is_empty()).then(|| to_ascii(domain))
}

/// A domain in lowercase IDNA ASCII (as given if it does not convert).
fn to_ascii(domain: &str) -> String {
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// Whether a domain is one of ours or under one of ours.
fn is_ours(domain: &str, ours: &[String]) -> bool {
    ours.iter().any(|o| is_within(domain, o))
}

fn is_within(domain: &str, parent: &str) -> bool {
    domain == parent
        || domain
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.'))
}

/// Private, loopback and link-local addresses: our own networks.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// `"<domain> looks like <whose> <one> (why)"` if the domain imitates one of
/// `domains` without being one of them or under one.
fn lookalike_of(domain: &str, domains: &[String], whose: &str) -> Option<String> {
    if is_ours(domain, domains) {
        return None;
    }
    domains.iter().find_map(|o| {
        lookalike(domain, o).map(|why| format!("{domain} looks like {whose} {o} ({why})"))
    })
}

/// Why `candidate` imitates `ours`, if it does.
fn lookalike(candidate: &str, ours: &str) -> Option<&'static str> {
    // Our whole domain as a subdomain of someone else's: `example.com.evil.test`.
    if candidate.starts_with(&format!("{ours}.")) {
        return Some("our domain inside another");
    }
    let (unicode, _) = idna::domain_to_unicode(candidate);
    let (candidate_label, candidate_suffix) = split_registered(&unicode);
    let (our_label, our_suffix) = split_registered(ours);
    if candidate_label.is_empty() || our_label.is_empty() {
        return None;
    }
    if candidate_label == our_label {
        return (candidate_suffix != our_suffix)
            .then_some("our name under another top-level domain");
    }
    if skeleton(candidate_label) == skeleton(our_label) {
        return Some(if candidate_label.is_ascii() {
            "letters swapped for look-alikes"
        } else {
            "look-alike characters"
        });
    }
    if candidate_label.is_ascii() {
        let distance = strsim::osa_distance(candidate_label, our_label);
        let length = our_label.len();
        // Two edits only on longer names, keeping the first letter (the one a reader
        // checks): `sample` is not an imitation of `example`.
        let same_start = candidate_label.as_bytes()[0] == our_label.as_bytes()[0];
        if (distance == 1 && length >= 4) || (distance == 2 && length >= 7 && same_start) {
            return Some("one or two letters off");
        }
        if length >= 5 && candidate_label.split('-').any(|part| part == our_label) {
            return Some("our name with words added");
        }
    }
    None
}

/// The registered label and what follows it: `mail.example.co.uk` →
/// (`example`, `co.uk`).
fn split_registered(domain: &str) -> (&str, &str) {
    let registered = registrable_domain(domain);
    registered.split_once('.').unwrap_or((registered, ""))
}

/// A label reduced to what it looks like: look-alike letters and digits mapped to
/// the Latin letter they imitate.
fn skeleton(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars().flat_map(char::to_lowercase) {
        out.push(match c {
            '0' | 'о' | 'ο' | 'ө' | 'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => 'o',
            '1' | 'ӏ' => 'l',
            'і' | 'ι' | 'ı' | 'í' | 'ì' | 'î' | 'ï' => 'i',
            '3' | 'е' | 'ё' | 'é' | 'è' | 'ê' | 'ë' => 'e',
            '5' | 'ѕ' => 's',
            'а' | 'α' | 'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'с' | 'ϲ' | 'ç' => 'c',
            'р' | 'ρ' => 'p',
            'х' | 'χ' => 'x',
            'у' | 'ý' | 'ÿ' => 'y',
            'ј' => 'j',
            'ԁ' => 'd',
            'һ' => 'h',
            'ԛ' => 'q',
            'ԝ' | 'ѡ' => 'w',
            'к' | 'κ' => 'k',
            'ν' => 'v',
            'τ' => 't',
            'ù' | 'ú' | 'û' | 'ü' | 'υ' => 'u',
            'ñ' => 'n',
            'ɡ' => 'g',
            other => other,
        });
    }
    // Pairs of letters that read as one.
    out.replace("rn", "m").replace("vv", "w").replace("cl", "d")
}

/// What of ours a display name names: a local address or one of our domains.
fn names_ours(name: &str, ours: &[String]) -> Option<String> {
    let lower = name.to_lowercase();
    for word in lower.split(|c: char| c.is_whitespace() || "<>()\"'[],;".contains(c)) {
        if let Some(domain) = domain_of(word) {
            if is_ours(&domain, ours) {
                return Some(format!("address {word}"));
            }
        }
    }
    ours.iter()
        .find(|o| contains_word(&lower, o))
        .map(|o| format!("domain {o}"))
}

/// Whether `needle` occurs in `haystack` not glued to letters or digits.
fn contains_word(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Which of our recipients the display name is the name of: the display name of a
/// local address in To or Cc, or a local part such as `jane.doe`.
fn local_user_named(name: &str, parsed: &Parsed<'_>) -> Option<String> {
    let name = normalize_name(name);
    if name.split(' ').count() < 2 {
        return None;
    }
    let ours = parsed.local_domains;
    let message = parsed.message;
    let listed = message
        .to()
        .into_iter()
        .chain(message.cc())
        .flat_map(|a| a.iter())
        .filter_map(|a| Some((a.address()?, a.name())));
    let envelope = parsed.rcpt_to.iter().map(|r| (r.as_str(), None));
    for (address, display) in listed.chain(envelope) {
        if !domain_of(address).is_some_and(|d| is_ours(&d, ours)) {
            continue;
        }
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let from_local = normalize_name(&local.replace(['.', '_', '-'], " "));
        if display.is_some_and(|d| normalize_name(d) == name) || from_local == name {
            return Some(address.to_lowercase());
        }
    }
    None
}

/// Lowercase words separated by single spaces, quotes dropped.
fn normalize_name(name: &str) -> String {
    name.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::engine::Contents;
    use super::*;
    use mail_parser::MessageParser;
    use std::net::Ipv4Addr;

    fn scan_from(raw: &str, client: IpAddr, rcpt: &[String]) -> Vec<Hit> {
        let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let contents = Contents::default();
        let ours = vec!["example.test".to_owned(), "bulwark-corp.test".to_owned()];
        let view = crate::scan::spam::view(&message, &contents);
        let parsed = Parsed {
            rcpt_to: rcpt,
            client_ip: client,
            raw: raw.as_bytes(),
            message: &message,
            contents: &contents,
            view: &view,
            local_domains: &ours,
            bayes: false,
        };
        PhishingEngine::new(&["Maria Chief".into()], &["partnerbank.test".into()])
            .scan(&parsed)
            .hits
    }

    fn scan(raw: &str) -> Vec<Hit> {
        scan_from(raw, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), &[])
    }

    fn mail(from: &str, extra: &str, body: &str) -> String {
        format!(
            "From: {from}\r\nTo: Jane Doe <jane.doe@example.test>\r\nSubject: Hello\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@outside.test>\r\n\
             {extra}Content-Type: text/plain\r\n\r\n{body}\r\n"
        )
    }

    fn hit<'a>(hits: &'a [Hit], symbol: &str) -> Option<&'a Hit> {
        hits.iter().find(|h| h.symbol == symbol)
    }

    #[test]
    fn legit_external_mail_is_quiet() {
        let hits = scan(&mail(
            "Partner Support <support@partner.test>",
            "Reply-To: Help Desk <help@mail.partner.test>\r\n",
            "See https://www.partner.test/docs and https://www.example.test/intranet",
        ));
        assert!(hits.is_empty(), "{hits:?}");
        assert_eq!(PhishingEngine::default().name(), "phishing");
    }

    #[test]
    fn a_protected_name_or_a_look_alike_of_a_protected_domain_from_outside() {
        let hits = scan(&mail(
            "\"Maria  CHIEF\" <maria.chief@freemail.test>",
            "",
            "Pay this today.",
        ));
        let vip = hit(&hits, "PHISH_PROTECTED_NAME").expect("protected name");
        assert_eq!(vip.score, 6.0);
        assert!(vip.description.contains("freemail.test"), "{vip:?}");
        let hits = scan(&mail(
            "Payments <pay@partnerbank-secure.test>",
            "",
            "Log in at https://login.partnbank.test/",
        ));
        let sender = hit(&hits, "PHISH_LOOKALIKE_DOMAIN").expect("look-alike sender");
        assert!(
            sender
                .description
                .contains("looks like the protected partnerbank.test"),
            "{sender:?}"
        );
        assert!(hit(&hits, "PHISH_LOOKALIKE_LINK").is_some(), "{hits:?}");
        // The protected domain itself, and its subdomains, are not look-alikes.
        let hits = scan(&mail(
            "Payments <pay@mail.partnerbank.test>",
            "",
            "Statement.",
        ));
        assert!(hits.is_empty(), "{hits:?}");
    }

    #[test]
    fn display_name_naming_our_address_or_domain() {
        let hits = scan(&mail(
            "\"ceo@example.test\" <ceo.office@freemail.test>",
            "",
            "Hi",
        ));
        let h = hit(&hits, "PHISH_DISPLAY_NAME_IMPERSONATION").unwrap();
        assert!(h.description.contains("ceo@example.test"), "{h:?}");
        assert!(h.description.contains("freemail.test"), "{h:?}");
        let hits = scan(&mail("Example.test Payroll <pay@freemail.test>", "", "Hi"));
        assert!(
            hit(&hits, "PHISH_DISPLAY_NAME_IMPERSONATION").is_some(),
            "{hits:?}"
        );
    }

    #[test]
    fn display_name_of_a_local_user() {
        let hits = scan(&mail("Jane Doe <jane.doe.home@freemail.test>", "", "Hi"));
        let h = hit(&hits, "PHISH_DISPLAY_NAME_LOCAL_USER").unwrap();
        assert!(h.description.contains("jane.doe@example.test"), "{h:?}");
        let rcpt = vec!["john.smith@example.test".to_owned()];
        let hits = scan_from(
            &mail("John Smith <js@freemail.test>", "", "Hi"),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            &rcpt,
        );
        assert!(
            hit(&hits, "PHISH_DISPLAY_NAME_LOCAL_USER").is_some(),
            "{hits:?}"
        );
    }

    #[test]
    fn lookalike_sender_domains() {
        // `еxample` with a Cyrillic `е`, as punycode.
        let cyrillic = format!("billing@{}", idna::domain_to_ascii("еxample.test").unwrap());
        assert!(cyrillic.contains("xn--"));
        for (from, why) in [
            ("billing@examp1e.test", "look-alikes"),
            ("billing@exarnple.test", "look-alikes"),
            ("billing@exmaple.test", "letters off"),
            ("billing@example.com", "another top-level domain"),
            ("billing@bulwark-c0rp.test", "look-alikes"),
            (cyrillic.as_str(), "look-alike characters"),
            ("billing@example-secure.test", "words added"),
        ] {
            let hits = scan(&mail(from, "", "Hi"));
            let h =
                hit(&hits, "PHISH_LOOKALIKE_DOMAIN").unwrap_or_else(|| panic!("{from}: {hits:?}"));
            assert!(h.description.contains(why), "{from}: {h:?}");
            assert!(h.description.contains(" looks like our "), "{from}: {h:?}");
        }
        let hits = scan(&mail(
            "billing@partner.test",
            "Reply-To: billing@examp1e.test\r\n",
            "Hi",
        ));
        let h = hit(&hits, "PHISH_LOOKALIKE_DOMAIN").unwrap();
        assert!(h.description.starts_with("Reply-To examp1e.test"), "{h:?}");
        assert!(hit(&hits, "REPLYTO_DIFFERS").is_some());
    }

    #[test]
    fn unrelated_domains_are_not_lookalikes() {
        for from in [
            "a@sample.test",
            "a@exam.test",
            "a@partner.test",
            "a@mail.example.test",
            "a@bulwark.test",
        ] {
            let hits = scan(&mail(from, "", "Hi"));
            assert!(
                hit(&hits, "PHISH_LOOKALIKE_DOMAIN").is_none(),
                "{from}: {hits:?}"
            );
        }
    }

    #[test]
    fn lookalike_links() {
        let hits = scan(&mail(
            "news@partner.test",
            "",
            "Sign in at https://login.examp1e.test/sso or https://example.test.evil.test/",
        ));
        let h = hit(&hits, "PHISH_LOOKALIKE_LINK").unwrap();
        assert!(h.description.contains("login.examp1e.test"), "{h:?}");
        assert!(h.description.contains("example.test.evil.test"), "{h:?}");
    }

    #[test]
    fn reply_to_elsewhere() {
        let hits = scan(&mail(
            "Partner <a@partner.test>",
            "Reply-To: a@freemail.test\r\n",
            "Hi",
        ));
        let h = hit(&hits, "REPLYTO_DIFFERS").unwrap();
        assert!(h.description.contains("partner.test") && h.description.contains("freemail.test"));
    }

    #[test]
    fn our_domain_from_outside() {
        let raw = mail("Boss <boss@example.test>", "", "Wire the money today.");
        let hits = scan(&raw);
        let h = hit(&hits, "FROM_LOCAL_DOMAIN_EXTERNAL").unwrap();
        assert!(h.description.contains("198.51.100.7"), "{h:?}");
        let inside = scan_from(&raw, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), &[]);
        assert!(inside.is_empty(), "{inside:?}");
    }
}

//! An SPF record read to the letter of RFC 7208's grammar (§4.5, §4.6, §5, §6, §7.1
//! and the ABNF of §12): whatever the grammar does not allow is a permerror, with the
//! reason, before anything is evaluated.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::MacroString;

/// What a matching mechanism gives (§4.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

/// A mechanism with its arguments (§5); the CIDR lengths default to the whole
/// address.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Mechanism {
    All,
    Include(MacroString),
    A(Option<MacroString>, Cidr),
    Mx(Option<MacroString>, Cidr),
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

impl Mechanism {
    /// Whether evaluating it asks DNS, and so counts against the limit of ten
    /// (§4.6.4).
    pub(super) fn queries_dns(&self) -> bool {
        !matches!(
            self,
            Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..)
        )
    }
}

/// The prefix lengths an `a` or `mx` mechanism compares with (dual-cidr-length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cidr {
    pub(super) v4: u8,
    pub(super) v6: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Directive {
    pub(super) qualifier: Qualifier,
    pub(super) mechanism: Mechanism,
}

/// A parsed record: its directives in order, and the two modifiers RFC 7208 defines
/// (unknown modifiers are checked for syntax, then ignored, §6).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Record {
    pub(super) directives: Vec<Directive>,
    pub(super) redirect: Option<MacroString>,
    pub(super) explanation: Option<MacroString>,
}

/// Whether a TXT record is an SPF record: `v=spf1` (in any case) alone or followed
/// by a space (§4.5).
pub(super) fn is_spf(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

/// Parses an SPF record (one for which [`is_spf`] holds); the error says why it is a
/// permerror.
pub(super) fn parse(text: &[u8]) -> Result<Record, String> {
    if let Some(bad) = text.iter().find(|&&b| !(b' '..=b'~').contains(&b)) {
        return Err(format!(
            "the record holds a byte outside printable ASCII (0x{bad:02x})"
        ));
    }
    // Checked above: printable ASCII only.
    let text = std::str::from_utf8(&text[6..]).map_err(|e| e.to_string())?;
    let mut record = Record {
        directives: Vec::new(),
        redirect: None,
        explanation: None,
    };
    for term in text.split(' ').filter(|term| !term.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            let slot = if name.eq_ignore_ascii_case("redirect") {
                &mut record.redirect
            } else if name.eq_ignore_ascii_case("exp") {
                &mut record.explanation
            } else {
                MacroString::parse(value, false)
                    .map_err(|why| format!("modifier {term:?}: {why}"))?;
                continue;
            };
            if slot.is_some() {
                return Err(format!("{name}= appears twice"));
            }
            *slot = Some(domain_spec(value).map_err(|why| format!("{term:?}: {why}"))?);
        } else {
            record
                .directives
                .push(directive(term).map_err(|why| format!("{term:?}: {why}"))?);
        }
    }
    Ok(record)
}

/// A term of the form `name=value`, name being ALPHA *( ALPHA / DIGIT / "-" / "_" /
/// "." ) (§4.6.1).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let end = term.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))?;
    let (name, value) = term.split_at(end);
    let value = value.strip_prefix('=')?;
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some((name, value))
}

fn directive(term: &str) -> Result<Directive, String> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let (name, args) = rest.split_at(rest.find([':', '/']).unwrap_or(rest.len()));
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(domain_spec(required(args)?)?),
        "exists" => Mechanism::Exists(domain_spec(required(args)?)?),
        "ptr" if args.is_empty() => Mechanism::Ptr(None),
        "ptr" => Mechanism::Ptr(Some(domain_spec(required(args)?)?)),
        "a" => {
            let (domain, cidr) = domain_and_cidr(args)?;
            Mechanism::A(domain, cidr)
        }
        "mx" => {
            let (domain, cidr) = domain_and_cidr(args)?;
            Mechanism::Mx(domain, cidr)
        }
        "ip4" => {
            let (network, length) = network(required(args)?);
            let address = ip4_network(network).ok_or("not an IPv4 network")?;
            Mechanism::Ip4(address, length.map_or(Ok(32), |l| cidr_length(l, 32))?)
        }
        "ip6" => {
            let (network, length) = network(required(args)?);
            let address = network
                .parse::<Ipv6Addr>()
                .map_err(|_| "not an IPv6 network")?;
            Mechanism::Ip6(address, length.map_or(Ok(128), |l| cidr_length(l, 128))?)
        }
        "all" => return Err("all takes no argument".to_string()),
        _ => return Err("not a mechanism".to_string()),
    };
    Ok(Directive {
        qualifier,
        mechanism,
    })
}

/// The argument after the `:` a mechanism requires.
fn required(args: &str) -> Result<&str, String> {
    args.strip_prefix(':')
        .ok_or_else(|| "the mechanism needs :domain".to_string())
}

/// `network` and `length` from `network[/length]`.
fn network(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('/') {
        Some((network, length)) => (network, Some(length)),
        None => (arg, None),
    }
}

/// An `a` or `mx` mechanism's arguments: `[:domain-spec][/ip4-cidr][//ip6-cidr]`.
fn domain_and_cidr(args: &str) -> Result<(Option<MacroString>, Cidr), String> {
    let mut rest = args;
    let mut cidr = Cidr { v4: 32, v6: 128 };
    if let Some((head, digits)) = trailing_number(rest) {
        if let Some(head) = head.strip_suffix("//") {
            cidr.v6 = cidr_length(digits, 128)?;
            rest = head;
        }
    }
    if let Some((head, digits)) = trailing_number(rest) {
        if let Some(head) = head.strip_suffix('/') {
            cidr.v4 = cidr_length(digits, 32)?;
            rest = head;
        }
    }
    let domain = if rest.is_empty() {
        None
    } else {
        Some(domain_spec(required(rest)?)?)
    };
    Ok((domain, cidr))
}

/// `text` split before the digits it ends with, if it ends with any.
fn trailing_number(text: &str) -> Option<(&str, &str)> {
    let start = text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    (start < text.len()).then(|| text.split_at(start))
}

/// A prefix length: digits without a leading zero, at most `max` (ip4-cidr-length,
/// ip6-cidr-length).
fn cidr_length(digits: &str, max: u8) -> Result<u8, String> {
    let valid = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    match digits.parse::<u8>() {
        Ok(length) if valid && length <= max => Ok(length),
        _ => Err(format!("/{digits} is not a prefix length of 0 to {max}")),
    }
}

/// An ip4-network: four decimal octets without leading zeros.
fn ip4_network(text: &str) -> Option<Ipv4Addr> {
    let octets: Vec<&str> = text.split('.').collect();
    if octets.len() != 4
        || octets.iter().any(|octet| {
            octet.is_empty()
                || octet.len() > 3
                || !octet.bytes().all(|b| b.is_ascii_digit())
                || (octet.len() > 1 && octet.starts_with('0'))
        })
    {
        return None;
    }
    text.parse().ok()
}

/// A domain-spec: a macro-string that ends in a macro or in `.` and a top label,
/// with an optional final dot (§7.1).
fn domain_spec(text: &str) -> Result<MacroString, String> {
    let spec = MacroString::parse(text, false)?;
    if spec.ends_with_macro() {
        return Ok(spec);
    }
    let literal = spec.trailing_text();
    let literal = literal.strip_suffix('.').unwrap_or(literal);
    match literal.rsplit_once('.') {
        Some((_, top)) if is_toplabel(top) => Ok(spec),
        Some((_, top)) => Err(format!("{top:?} cannot be a top label")),
        None => Err("the domain has no top label".to_string()),
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" )
/// alphanum ).
fn is_toplabel(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && (label.contains('-') || bytes.iter().any(u8::is_ascii_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mechanisms(record: &str) -> Vec<Mechanism> {
        parse(record.as_bytes())
            .unwrap_or_else(|why| panic!("{record}: {why}"))
            .directives
            .into_iter()
            .map(|d| d.mechanism)
            .collect()
    }

    #[test]
    fn the_version_is_a_word_of_its_own() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=SPF1 -all"));
        assert!(!is_spf(b"v=spf10 -all"));
        assert!(!is_spf(b"v=spf1-all"));
    }

    #[test]
    fn cidr_lengths_follow_the_grammar() {
        assert_eq!(
            mechanisms("v=spf1 a/24//64 mx:example.com//0")[..],
            [
                Mechanism::A(None, Cidr { v4: 24, v6: 64 }),
                Mechanism::Mx(
                    Some(MacroString::parse("example.com", false).unwrap()),
                    Cidr { v4: 32, v6: 0 }
                )
            ]
        );
        for bad in [
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip6:::1/129",
            "v=spf1 ip6:::1.1.1.1//33",
            "v=spf1 a//129",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:01.2.3.4",
            "v=spf1 -all/8",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_domain_spec_ends_in_a_top_label_or_a_macro() {
        for good in [
            "v=spf1 a:foo:bar/baz.example.com",
            "v=spf1 a:%{d}",
            "v=spf1 a:mail.example...com",
            "v=spf1 exists:%{i}.%{l2r-}.user.%{d2}",
            "v=spf1 a:example.com.",
            "v=spf1 a:x.1-2",
        ] {
            assert!(parse(good.as_bytes()).is_ok(), "{good}");
        }
        for bad in [
            "v=spf1 a:museum",
            "v=spf1 a:111.222.33.44",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:foo.-bar",
            "v=spf1 mx:foo.example.com\0",
            "v=spf1 include:",
            "v=spf1 exists:%{c}.example.com",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modifiers_appear_once_and_unknown_ones_are_checked_then_ignored() {
        let record = parse(b"v=spf1 -all exp=e.example.com foo.bar_1=%{d} x-y=z").unwrap();
        assert!(record.explanation.is_some());
        assert!(parse(b"v=spf1 redirect=a.example redirect=b.example").is_err());
        assert!(parse(b"v=spf1 -all foo=%abc").is_err());
        assert!(parse(b"v=spf1 =foo").is_err());
        assert!(parse("v=spf1 a:caf\u{e9}.example".as_bytes()).is_err());
    }
}

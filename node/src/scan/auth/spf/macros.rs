//! SPF macro-strings (RFC 7208 §7): their grammar, and their expansion into a
//! domain name to query or an explanation to show.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest domain name a query is made for; longer expansions lose labels on
/// the left (§7.3).
const MAX_NAME: usize = 253;

/// A macro-string: literal text and macros, as written.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct MacroString(Vec<Piece>);

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    /// `%%`, `%_` or `%-`: macro-expands that give fixed text.
    Escape(&'static str),
    Macro(Macro),
}

#[derive(Clone, Debug, PartialEq)]
struct Macro {
    /// The macro letter, lowercase.
    letter: u8,
    /// An uppercase letter: the value is URL-escaped.
    escape: bool,
    /// Keep this many parts from the right.
    keep: Option<usize>,
    reverse: bool,
    /// Where the value is split; `.` when none is given.
    delimiters: String,
}

/// What the macros expand to in one evaluation.
pub(super) struct Values<'a> {
    /// `<sender>`, with `postmaster` as the local part when it had none.
    pub(super) sender: &'a str,
    /// The domain whose record is being evaluated (`%{d}`).
    pub(super) domain: &'a str,
    pub(super) ip: IpAddr,
    pub(super) helo: &'a str,
    /// This receiver's name (`%{r}`).
    pub(super) receiver: &'a str,
    /// The client's validated domain name (`%{p}`), when it was looked up.
    pub(super) validated: Option<&'a str>,
}

impl MacroString {
    /// Parses `text`; `explanation` allows what only an explain-string may hold:
    /// spaces and the `c`, `r` and `t` macros (§6.2, §7.1).
    pub(super) fn parse(text: &str, explanation: bool) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                let allowed = matches!(c, '!'..='~') || (explanation && c == ' ');
                if !allowed {
                    return Err(format!("{c:?} cannot appear in a macro-string"));
                }
                literal.push(c);
                continue;
            }
            let piece = match chars.next() {
                Some('%') => Piece::Escape("%"),
                Some('_') => Piece::Escape(" "),
                Some('-') => Piece::Escape("%20"),
                Some('{') => Piece::Macro(Macro::parse(&mut chars, explanation)?),
                Some(other) => return Err(format!("%{other} is not a macro")),
                None => return Err("a lone % ends the macro-string".to_string()),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(MacroString(pieces))
    }

    /// Whether the string ends in a macro-expand (a macro, `%%`, `%_` or `%-`).
    pub(super) fn ends_with_macro(&self) -> bool {
        matches!(self.0.last(), Some(Piece::Macro(_) | Piece::Escape(_)))
    }

    /// The literal text after the last macro-expand.
    pub(super) fn trailing_text(&self) -> &str {
        match self.0.last() {
            Some(Piece::Text(text)) => text,
            _ => "",
        }
    }

    /// Whether expanding it needs the client's validated name.
    pub(super) fn needs_validated(&self) -> bool {
        self.0
            .iter()
            .any(|piece| matches!(piece, Piece::Macro(m) if m.letter == b'p'))
    }

    pub(super) fn expand(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Escape(text) => out.push_str(text),
                Piece::Macro(m) => out.push_str(&m.expand(values)),
            }
        }
        out
    }

    /// The expansion as a name to query: labels on the left dropped until it fits
    /// 253 octets (§7.3).
    pub(super) fn expand_name(&self, values: &Values<'_>) -> String {
        let mut name = self.expand(values);
        while name.trim_end_matches('.').len() > MAX_NAME {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_string(),
                None => break,
            }
        }
        name
    }
}

impl Macro {
    /// Reads `letter *DIGIT ["r"] *delimiter "}"` after `%{`.
    fn parse(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        explanation: bool,
    ) -> Result<Self, String> {
        let written = chars.next().ok_or("%{ without a macro letter")?;
        let letter = written.to_ascii_lowercase();
        let known = matches!(letter, 's' | 'l' | 'o' | 'd' | 'i' | 'p' | 'h' | 'v')
            || (explanation && matches!(letter, 'c' | 'r' | 't'));
        if !known {
            return Err(format!("%{{{written} is not a macro here"));
        }
        let mut digits = String::new();
        while let Some(digit) = chars.next_if(char::is_ascii_digit) {
            digits.push(digit);
        }
        let keep = if digits.is_empty() {
            None
        } else {
            match digits.parse::<usize>() {
                Ok(0) => return Err("a macro keeps at least one part".to_string()),
                Ok(keep) => Some(keep),
                // More parts than any name has: keep them all.
                Err(_) => Some(usize::MAX),
            }
        };
        let reverse = chars.next_if(|c| matches!(c, 'r' | 'R')).is_some();
        let mut delimiters = String::new();
        while let Some(delimiter) = chars.next_if(|c| ".-+,/_=".contains(*c)) {
            delimiters.push(delimiter);
        }
        match chars.next() {
            Some('}') => Ok(Macro {
                letter: letter as u8,
                escape: written.is_ascii_uppercase(),
                keep,
                reverse,
                delimiters,
            }),
            _ => Err(format!("%{{{written} is not closed as a macro")),
        }
    }

    fn expand(&self, values: &Values<'_>) -> String {
        let (local, sender_domain) = values
            .sender
            .rsplit_once('@')
            .unwrap_or(("postmaster", values.sender));
        let value = match self.letter {
            b's' => values.sender.to_string(),
            b'l' => local.to_string(),
            b'o' => sender_domain.to_string(),
            b'd' => values.domain.to_string(),
            b'i' => dotted(values.ip),
            b'p' => values.validated.unwrap_or("unknown").to_string(),
            b'h' => values.helo.to_string(),
            b'v' => match values.ip {
                IpAddr::V4(_) => "in-addr".to_string(),
                IpAddr::V6(_) => "ip6".to_string(),
            },
            b'c' => values.ip.to_string(),
            b'r' => values.receiver.to_string(),
            _ => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
                .to_string(),
        };
        let delimiters = if self.delimiters.is_empty() {
            "."
        } else {
            &self.delimiters
        };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep {
            parts.drain(..parts.len().saturating_sub(keep));
        }
        let joined = parts.join(".");
        if self.escape {
            url_escape(&joined)
        } else {
            joined
        }
    }
}

/// `%{i}`: dotted decimal for IPv4, dotted nibbles for IPv6 (§7.3), in capitals as
/// the RFC's examples and its test suite write them.
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                let _ = write!(out, "{:X}.{:X}.", byte >> 4, byte & 0xf);
            }
            out.pop();
            out
        }
    }
}

/// RFC 3986 escaping of everything but unreserved characters.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of RFC 7208 §7.4.
    #[test]
    fn the_rfc_examples_expand_as_written() {
        let values = |ip: &str| Values {
            sender: "strong-bad@email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.bulwark.test",
            validated: None,
        };
        let v4 = values("192.0.2.3");
        for (spec, expanded) in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            (
                "%{ir}.%{v}._spf.%{d2}",
                "3.2.0.192.in-addr._spf.example.com",
            ),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
                "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
            ),
            (
                "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
                "3.2.0.192.in-addr.strong.lp._spf.example.com",
            ),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
            ("%{S}", "strong-bad%40email.example.com"),
            (
                "macro%%percent%_%_space%-url-space",
                "macro%percent  space%20url-space",
            ),
        ] {
            let spec = MacroString::parse(spec, false).unwrap();
            assert_eq!(spec.expand(&v4), expanded);
        }
        let v6 = values("2001:db8::cb01");
        let spec = MacroString::parse("%{ir}.%{v}._spf.%{d2}", false).unwrap();
        assert_eq!(
            spec.expand(&v6),
            "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn explanation_only_macros_and_bad_escapes_are_refused() {
        assert!(MacroString::parse("%{c} at %{t} by %{r}", true).is_ok());
        for bad in [
            "%{c}", "%{r}", "%{t}", "%{d0}", "%{x}", "%a", "%", "%{d", "a b",
        ] {
            assert!(MacroString::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_long_expansion_loses_labels_on_the_left() {
        let label = "a".repeat(60);
        let long = format!("{label}.{label}.{label}.{label}.{label}.example.com");
        let spec = MacroString::parse(&long, false).unwrap();
        let values = Values {
            sender: "x@example.com",
            domain: "example.com",
            ip: "192.0.2.1".parse().unwrap(),
            helo: "h.example",
            receiver: "r",
            validated: None,
        };
        let name = spec.expand_name(&values);
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(name.ends_with(".example.com"));
        assert_eq!(
            name.split('.').count(),
            5,
            "two labels of 61 octets dropped"
        );
    }
}

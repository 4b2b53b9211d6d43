//! Parsing command lines (RFC 5321 §4.1) into commands, and paths into addresses.

/// One command from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: Vec<Param>,
    },
    /// `source_route`: the path named hosts to route through (`<@a,@b:user@dom>`),
    /// dropped from `to`.
    Rcpt {
        to: String,
        source_route: bool,
        params: Vec<Param>,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
}

/// An ESMTP parameter: `KEYWORD[=value]`, the keyword upper-cased.
#[derive(Debug, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

/// A command line that is not a valid command: the reply says which way.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// `500 5.5.2`: no such command.
    Unknown,
    /// `501 5.5.4` with this text.
    Syntax(&'static str),
    /// `553 5.1.x`/`5.6.7`: the address in a MAIL or RCPT path is not one.
    Address(&'static str),
}

/// Longest local part and domain (RFC 5321 §4.5.3.1).
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;

pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("Syntax: not UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(ParseError::Syntax(
                "Syntax: this command takes no arguments",
            ))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = rest.split_ascii_whitespace().next().unwrap_or("");
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(ParseError::Syntax("Syntax: EHLO hostname"));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(name.to_string())
            } else {
                Command::Helo(name.to_string())
            })
        }
        "MAIL" => {
            let rest = strip_prefix_ci(rest, "FROM:")
                .ok_or(ParseError::Syntax("Syntax: MAIL FROM:<address>"))?;
            let (path, params) = split_path(rest)?;
            let from = if path == "<>" {
                String::new()
            } else {
                mailbox(path)?
            };
            Ok(Command::Mail {
                from,
                params: parse_params(params)?,
            })
        }
        "RCPT" => {
            let rest = strip_prefix_ci(rest, "TO:")
                .ok_or(ParseError::Syntax("Syntax: RCPT TO:<address>"))?;
            let (path, params) = split_path(rest)?;
            let to = if path.eq_ignore_ascii_case("<postmaster>") {
                "postmaster".to_string()
            } else {
                mailbox(path)?
            };
            Ok(Command::Rcpt {
                to,
                source_route: path.starts_with("<@"),
                params: parse_params(params)?,
            })
        }
        "BDAT" => {
            let mut words = rest.split_ascii_whitespace();
            let size = words
                .next()
                .filter(|s| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or(ParseError::Syntax("Syntax: BDAT size [LAST]"))?;
            let last = match words.next() {
                None => false,
                Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(ParseError::Syntax("Syntax: BDAT size [LAST]")),
            };
            if words.next().is_some() {
                return Err(ParseError::Syntax("Syntax: BDAT size [LAST]"));
            }
            Ok(Command::Bdat { size, last })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        _ => Err(ParseError::Unknown),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s[prefix.len()..].trim_start())
}

/// Splits `<path> params` at the `>` that closes the path (not one inside quotes).
fn split_path(s: &str) -> Result<(&str, &str), ParseError> {
    if !s.starts_with('<') {
        return Err(ParseError::Syntax("Syntax: the address must be in <>"));
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&s[..=i], s[i + 1..].trim())),
            _ => {}
        }
    }
    Err(ParseError::Syntax("Syntax: the address must be in <>"))
}

/// The mailbox of a `<...>` path, its source route (RFC 5321 §4.1.2) dropped.
fn mailbox(path: &str) -> Result<String, ParseError> {
    let inner = &path[1..path.len() - 1];
    let inner = match inner.strip_prefix('@') {
        Some(route) => route
            .split_once(':')
            .map(|(_, mailbox)| mailbox)
            .ok_or(ParseError::Address("Bad address syntax"))?,
        None => inner,
    };
    let at = inner
        .rfind('@')
        .ok_or(ParseError::Address("Bad address syntax: no domain"))?;
    let (local, domain) = (&inner[..at], &inner[at + 1..]);
    if local.is_empty() || local.len() > MAX_LOCAL {
        return Err(ParseError::Address("Bad address syntax: local part"));
    }
    if domain.is_empty() || domain.len() > MAX_DOMAIN || !valid_domain(domain) {
        return Err(ParseError::Address("Bad address syntax: domain"));
    }
    if local.starts_with('"') {
        if local.len() < 2 || !local.ends_with('"') {
            return Err(ParseError::Address("Bad address syntax: local part"));
        }
    } else if local
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "<>()[],;:\\\"".contains(c))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(ParseError::Address("Bad address syntax: local part"));
    }
    if inner.chars().any(char::is_control) {
        return Err(ParseError::Address("Bad address syntax"));
    }
    Ok(inner.to_string())
}

/// A domain name (labels of letters, digits, hyphens, or any non-ASCII for SMTPUTF8)
/// or an address literal `[...]`.
fn valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[') {
        return literal.ends_with(']')
            && literal.len() > 1
            && literal[..literal.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:".contains(c));
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

fn parse_params(s: &str) -> Result<Vec<Param>, ParseError> {
    s.split_ascii_whitespace()
        .map(|word| {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (word, None),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(ParseError::Syntax("Syntax: bad parameter"));
            }
            Ok(Param {
                key: key.to_ascii_uppercase(),
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        parse(s.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            p("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(p("QuIt"), Ok(Command::Quit));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("FOO"), Err(ParseError::Unknown));
        assert!(matches!(p("EHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("DATA now"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn mail_and_rcpt_paths() {
        assert_eq!(
            p("MAIL FROM:<a@b.test> SIZE=100 body=8bitmime SMTPUTF8"),
            Ok(Command::Mail {
                from: "a@b.test".into(),
                params: vec![
                    Param {
                        key: "SIZE".into(),
                        value: Some("100".into())
                    },
                    Param {
                        key: "BODY".into(),
                        value: Some("8bitmime".into())
                    },
                    Param {
                        key: "SMTPUTF8".into(),
                        value: None
                    },
                ],
            })
        );
        assert_eq!(
            p("mail from: <>"),
            Ok(Command::Mail {
                from: String::new(),
                params: vec![]
            })
        );
        assert_eq!(
            p("RCPT TO:<@relay.test:user@example.test>"),
            Ok(Command::Rcpt {
                to: "user@example.test".into(),
                source_route: true,
                params: vec![]
            })
        );
        assert_eq!(
            p("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                to: "postmaster".into(),
                source_route: false,
                params: vec![]
            })
        );
        assert_eq!(
            p("RCPT TO:<\"odd > name\"@example.test>"),
            Ok(Command::Rcpt {
                to: "\"odd > name\"@example.test".into(),
                source_route: false,
                params: vec![]
            })
        );
        assert_eq!(
            p("RCPT TO:<josé@exämple.test>"),
            Ok(Command::Rcpt {
                to: "josé@exämple.test".into(),
                source_route: false,
                params: vec![]
            })
        );
        for bad in [
            "MAIL FROM:a@b.test",
            "MAIL FROM:<a@b.test",
            "MAIL TO:<a@b.test>",
            "RCPT TO:<nodomain>",
            "RCPT TO:<a@-bad.test>",
            "RCPT TO:<a..b@x.test>",
            "RCPT TO:<a b@x.test>",
            "RCPT TO:<@x.test>",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(
            p("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            p("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 99999999999999999999",
            "BDAT 1 LAST x",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}

//! RCPT TO (RFC 5321 §4.1.1.3): only our own domains, so we are never an open relay,
//! and no address that routes mail on through its local part.
//!
//! A next hop that honours `%`, `!` or a second `@` in a local part, or a source
//! route, turns `victim%foreign.test@example.test` into relaying (Postfix refuses
//! them with `allow_untrusted_routing = no`); so do lookalike spellings of a local
//! domain forwarded as spelled. Domains are compared after UTS #46 mapping: one that
//! maps to a local domain is stored in its mapped form; one that is a local domain
//! only once characters that do not show are dropped (a zero-width space or joiner,
//! a soft hyphen) is a lookalike, refused.

use tokio::io::{AsyncRead, AsyncWrite};

use super::command::Param;
use super::conn::Conn;
use super::session::{Flow, Session};

pub fn rcpt<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    to: String,
    source_route: bool,
    params: Vec<Param>,
) -> Flow {
    let Some(tx) = &s.tx else {
        return s.error(conn, "503 5.5.1 Error: need MAIL command");
    };
    if tx.chunks.is_some() {
        return s.error(conn, "503 5.5.1 Error: RCPT after BDAT");
    }
    if let Some(param) = params.first() {
        let reply = format!("555 5.5.4 Error: unsupported parameter {}", param.key);
        return s.error(conn, &reply);
    }
    if !tx.smtputf8 && !to.is_ascii() {
        return s.error(conn, "553 5.6.7 Error: a non-ASCII address needs SMTPUTF8");
    }
    let from = tx.mail_from.clone();
    // RFC 5321 §4.5.1: <postmaster> without a domain is always accepted.
    let to = if to == "postmaster" {
        format!("postmaster@{}", s.settings().domains[0])
    } else {
        to
    };
    let settings = s.settings();
    let trusted = settings
        .allow_routing_from
        .iter()
        .any(|net| net.contains(&s.client.ip));
    let address = match recipient(&to, &settings.domains) {
        Recipient::Local { address, routed } if trusted || !(routed || source_route) => {
            Ok(address)
        }
        Recipient::Local { .. } => Err((
            "routing_refused",
            format!("550 5.7.1 <{to}>: Error: routing through the address is not allowed"),
        )),
        Recipient::Lookalike => Err((
            "lookalike_domain",
            format!(
                "550 5.7.1 <{to}>: Error: the domain spells a local domain with invisible characters"
            ),
        )),
        Recipient::Foreign => Err((
            "relay_denied",
            format!("554 5.7.1 <{to}>: Relay access denied"),
        )),
    };
    let address = match address {
        Ok(address) => address,
        Err((reason, reply)) => {
            conn.reply(&reply);
            s.reject_with(reason, &reply, Some(from), vec![to]);
            return Flow::Continue;
        }
    };
    let max = settings.max_recipients;
    let tx = s.tx.as_mut().expect("checked above");
    if tx.rcpt_to.len() >= max {
        conn.reply(&format!(
            "452 4.5.3 Error: too many recipients (the limit is {max})"
        ));
        return Flow::Continue;
    }
    tx.rcpt_to.push(address);
    conn.reply("250 2.1.5 Ok");
    Flow::Continue
}

/// What a recipient address is to us.
#[derive(Debug, PartialEq, Eq)]
enum Recipient {
    /// Its domain is ours. `address` is as it will be stored and forwarded: the
    /// local part as given, the domain without a trailing dot and in its UTS #46
    /// mapped form (lower case; fullwidth letters made ASCII and NFC for a non-ASCII
    /// one; an `xn--` one stays ASCII). `routed`: the local part holds `%`, `!` or
    /// `@` (quoted or not), a route to some other host.
    Local { address: String, routed: bool },
    /// Its domain is one of ours once characters that do not show are dropped.
    Lookalike,
    /// Anything else: relaying.
    Foreign,
}

/// Judges `address` against `domains` (ASCII form, lower case, as in the settings),
/// comparing its domain in the same form, so that an internationalised domain
/// matches whether written in Unicode or as `xn--`.
fn recipient(address: &str, domains: &[String]) -> Recipient {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Recipient::Foreign;
    };
    if domain.starts_with('[') {
        return Recipient::Foreign;
    }
    let ours =
        |domain: &str| crate::mail::ascii_domain(domain).is_some_and(|a| domains.contains(&a));
    if !ours(domain) {
        // Not ours as spelled; ours once what cannot be seen is dropped: a lookalike.
        let seen: String = domain.chars().filter(|&c| visible(c)).collect();
        return if seen.len() < domain.len() && ours(&seen) {
            Recipient::Lookalike
        } else {
            Recipient::Foreign
        };
    }
    if !domain.chars().all(visible) {
        return Recipient::Lookalike;
    }
    let domain = domain.trim_end_matches('.');
    let mapped = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_unicode(domain).0
    };
    let address = format!("{local}@{mapped}");
    Recipient::Local {
        address,
        routed: routes(local),
    }
}

/// A character that shows in a domain: ASCII, or one that UTS #46 maps to something
/// valid. Not visible: those it maps to nothing (zero-width space, soft hyphen,
/// variation selectors, word joiner, ...) and those it refuses (zero-width joiner
/// and non-joiner between letters, controls, ...).
fn visible(c: char) -> bool {
    c.is_ascii() || idna::domain_to_ascii(&format!("a{c}a")).is_ok_and(|mapped| mapped != "aa")
}

/// The local part names another host: `%` (the "percent hack"), `!` (UUCP bang
/// paths) or `@`, also inside quotes (`"victim@foreign.test"@example.test`).
fn routes(local: &str) -> bool {
    local.contains(['%', '!', '@'])
}

#[cfg(test)]
mod tests {
    use super::{recipient, Recipient};

    fn is_local(address: &str, domains: &[String]) -> bool {
        matches!(recipient(address, domains), Recipient::Local { .. })
    }

    #[test]
    fn only_listed_domains_are_local() {
        let domains = vec![
            "example.test".to_string(),
            "xn--exmple-cua.test".to_string(),
        ];
        assert!(is_local("a@example.test", &domains));
        assert!(is_local("a@EXAMPLE.test.", &domains));
        assert!(is_local("a@EXÄMPLE.test", &domains));
        assert!(is_local("a@xn--exmple-cua.test", &domains));
        assert!(!is_local("a@sub.example.test", &domains));
        assert!(!is_local("a@example.test.evil", &domains));
        assert!(!is_local("a@[127.0.0.1]", &domains));
        assert!(!is_local("\"a@example.test\"@evil.test", &domains));
    }

    #[test]
    fn routes_through_the_local_part_are_seen() {
        let domains = vec!["example.test".to_string()];
        for routed in [
            "victim%foreign.test@example.test",
            "foreign.test!victim@example.test",
            "victim@foreign.test@example.test",
            "\"victim@foreign.test\"@example.test",
        ] {
            assert_eq!(
                recipient(routed, &domains),
                Recipient::Local {
                    address: routed.to_string(),
                    routed: true
                },
                "{routed}"
            );
        }
        assert_eq!(
            recipient("a.b+c@example.test", &domains),
            Recipient::Local {
                address: "a.b+c@example.test".into(),
                routed: false
            }
        );
    }

    #[test]
    fn lookalike_domains_are_mapped_or_refused() {
        let domains = vec![
            "example.test".to_string(),
            "xn--exmple-cua.test".to_string(),
        ];
        let local = |address: &str| Recipient::Local {
            address: address.into(),
            routed: false,
        };
        // Fullwidth letters map to ASCII: ours, stored as mapped.
        assert_eq!(
            recipient("bob@ｅｘａｍｐｌｅ.test", &domains),
            local("bob@example.test")
        );
        assert_eq!(
            recipient("josé@EXÄMPLE.test", &domains),
            local("josé@exämple.test")
        );
        // Capitals and a trailing dot too; the local part stays as given, an
        // `xn--` domain ASCII.
        assert_eq!(
            recipient("Bob@EXAMPLE.TEST.", &domains),
            local("Bob@example.test")
        );
        assert_eq!(
            recipient("Bob@XN--EXMPLE-CUA.test", &domains),
            local("Bob@xn--exmple-cua.test")
        );
        // Characters lost in the mapping make a lookalike.
        for lookalike in [
            "bob@exa\u{200B}mple.test",
            "bob@exam\u{00AD}ple.test",
            "bob@example\u{FE0F}.test",
            "bob@exa\u{200D}mple.test",
            "bob@exa\u{200C}mple.test",
            "bob@exa\u{2060}mple.test",
        ] {
            assert_eq!(
                recipient(lookalike, &domains),
                Recipient::Lookalike,
                "{lookalike:?}"
            );
        }
        // Another script's letters spell another domain: not ours.
        assert_eq!(
            recipient("bob@\u{0435}xample.test", &domains),
            Recipient::Foreign
        );
        // Invisible characters in a domain that is not ours change nothing.
        assert_eq!(
            recipient("bob@else\u{200B}where.test", &domains),
            Recipient::Foreign
        );
    }
}

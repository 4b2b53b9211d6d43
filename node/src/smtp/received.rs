//! The `Received` header we prepend to every accepted message (RFC 5321 §4.4).

use bulwark_model::{Client, MessageId};
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// `Received: from HELO ([IP]) by HOST (Bulwark) with PROTO id ID (TLS) for <RCPT>; DATE`
pub fn header(
    hostname: &str,
    client: &Client,
    protocol: &str,
    id: MessageId,
    rcpt_to: &[String],
    now: OffsetDateTime,
) -> String {
    let helo = client.helo.as_deref().map(ascii_name).unwrap_or_default();
    let ip = match client.ip {
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
        std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let mut h = format!(
        "Received: from {helo} ({ip})\r\n\tby {hostname} (Bulwark) with {protocol} id {id}"
    );
    if let Some(tls) = &client.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            clean(&tls.version),
            clean(&tls.cipher)
        ));
    }
    if let [one] = rcpt_to {
        h.push_str(&format!("\r\n\tfor <{}>", clean(one)));
    }
    let date = now
        .format(&Rfc2822)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}

/// A HELO name in ASCII: an internationalised name as `xn--`, anything else that is
/// not ASCII replaced, so the header stays 7-bit whatever the client said.
fn ascii_name(name: &str) -> String {
    if name.is_ascii() {
        return clean(name);
    }
    match idna::domain_to_ascii(name) {
        Ok(ascii) => clean(&ascii),
        Err(_) => clean(&name.replace(|c: char| !c.is_ascii(), "?")),
    }
}

/// What a client chose (its HELO name, an address) made safe inside a header:
/// no control characters (so no CR/LF), no parentheses or angle brackets.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() || "()<>;\\".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_helo_cannot_break_the_header() {
        let client = Client {
            ip: "2001:db8::1".parse().unwrap(),
            port: 1,
            helo: Some("evil)\r\nX-Injected: yes".into()),
            tls: None,
            proxy: None,
        };
        let now = OffsetDateTime::from_unix_timestamp(1_764_300_000).unwrap();
        let h = header(
            "mx.test",
            &client,
            "ESMTP",
            MessageId(1),
            &["a@example.test".into()],
            now,
        );
        assert!(h.starts_with("Received: from evil___X-Injected:_yes ([IPv6:2001:db8::1])\r\n"));
        assert!(h.contains("for <a@example.test>;"));
        assert!(h.ends_with("Fri, 28 Nov 2025 03:20:00 +0000\r\n"));
        assert_eq!(h.matches("\r\n").count(), 4);
        let idn = Client {
            helo: Some("clïent.test".into()),
            ..client.clone()
        };
        let h = header("mx.test", &idn, "ESMTP", MessageId(1), &[], now);
        assert!(h.starts_with("Received: from xn--clent-dta.test ("), "{h}");
        assert!(h.is_ascii());
        assert!(h
            .split("\r\n")
            .skip(1)
            .all(|l| l.is_empty() || l.starts_with('\t')));
    }
}

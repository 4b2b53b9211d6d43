//! RCPT TO (RFC 5321 §4.1.1.3): only our own domains, so we are never an open relay.

use tokio::io::{AsyncRead, AsyncWrite};

use super::command::Param;
use super::conn::Conn;
use super::session::{Flow, Session};

pub fn rcpt<T: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    conn: &mut Conn<T>,
    to: String,
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
    // RFC 5321 §4.5.1: <postmaster> without a domain is always accepted.
    let to = if to == "postmaster" {
        format!("postmaster@{}", s.settings().domains[0])
    } else {
        to
    };
    if !is_local(&to, &s.settings().domains) {
        let reply = format!("554 5.7.1 <{to}>: Relay access denied");
        conn.reply(&reply);
        let from = tx.mail_from.clone();
        s.reject_with("relay_denied", &reply, Some(from), vec![to]);
        return Flow::Continue;
    }
    let max = s.settings().max_recipients;
    let tx = s.tx.as_mut().expect("checked above");
    if tx.rcpt_to.len() >= max {
        conn.reply(&format!(
            "452 4.5.3 Error: too many recipients (the limit is {max})"
        ));
        return Flow::Continue;
    }
    tx.rcpt_to.push(to);
    conn.reply("250 2.1.5 Ok");
    Flow::Continue
}

/// The recipient's domain is one we accept mail for. `domains` are in ASCII form,
/// lower case; the recipient's domain is compared in the same form, so an
/// internationalised domain matches whether written in Unicode or as `xn--`.
fn is_local(address: &str, domains: &[String]) -> bool {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    if domain.starts_with('[') {
        return false;
    }
    super::ascii_domain(domain).is_some_and(|ascii| domains.contains(&ascii))
}

#[cfg(test)]
mod tests {
    use super::is_local;

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
}

//! Checks that patterns cannot express, written in Rust. Each is a rule by name:
//! `default.cf` gives it a score and a description, an administrator's file may
//! change them, and meta rules may read it.

use mail_parser::{HeaderName, Message, MimeHeaders};

use super::content::{host_of, registrable_domain, View};

/// A check written in Rust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heuristic {
    DateInFuture,
    DateInPast,
    DateInvalid,
    FromNoAddress,
    HtmlOnly,
    MimeBoundOutlookInvalid,
    MsgidOutlookInvalid,
    HtmlInvisibleText,
    HtmlLinkTextMismatch,
    SubjectAllCaps,
}

/// The rule names of the checks written in Rust.
pub(super) const BUILTINS: &[(&str, Heuristic)] = &[
    ("DATE_IN_FUTURE", Heuristic::DateInFuture),
    ("DATE_IN_PAST", Heuristic::DateInPast),
    ("DATE_INVALID", Heuristic::DateInvalid),
    ("FROM_NO_ADDRESS", Heuristic::FromNoAddress),
    ("HTML_ONLY", Heuristic::HtmlOnly),
    (
        "MIME_BOUND_OUTLOOK_INVALID",
        Heuristic::MimeBoundOutlookInvalid,
    ),
    ("MSGID_OUTLOOK_INVALID", Heuristic::MsgidOutlookInvalid),
    ("HTML_INVISIBLE_TEXT", Heuristic::HtmlInvisibleText),
    ("HTML_LINK_TEXT_MISMATCH", Heuristic::HtmlLinkTextMismatch),
    ("SUBJ_ALL_CAPS", Heuristic::SubjectAllCaps),
];

/// How far ahead of its receipt a message may be dated.
const FUTURE_SLACK_SECS: i64 = 24 * 3600;
/// How long before its receipt a message may be dated.
const PAST_SLACK_SECS: i64 = 4 * 24 * 3600;
/// Hidden characters that make HTML suspicious; newsletters hide a preview line of
/// up to about this much.
const INVISIBLE_CHARS_MIN: usize = 150;
/// How far the time in a Message-ID or MIME boundary of Outlook's form may be from
/// the Date header: they come from one clock, and the hams of the corpus' training
/// sets differ by at most six hours; spamware's made-up identifiers are years off.
const OUTLOOK_TIME_SLACK_SECS: i64 = 30 * 24 * 3600;
/// Seconds between 1601-01-01 (the start of Windows' FILETIME) and 1970-01-01.
const FILETIME_EPOCH_SECS: i64 = 11_644_473_600;
/// Capital letters a subject needs before "all capitals" means anything.
const CAPS_SUBJECT_MIN_CAPITALS: usize = 10;

/// What one message gives the checks.
pub(super) struct Facts<'a> {
    pub message: &'a mail_parser::Message<'a>,
    pub view: &'a View,
    /// Unix time now, used when no `Received` header dates the message's arrival.
    pub now: i64,
}

impl Facts<'_> {
    /// Runs one check: `Some(detail)` when it fires, the detail saying what it saw.
    pub fn check(&self, heuristic: Heuristic) -> Option<String> {
        match heuristic {
            Heuristic::DateInFuture => {
                let (date, received) = self.dates()?;
                (date - received > FUTURE_SLACK_SECS)
                    .then(|| format!("dated {} after it was received", span(date - received)))
            }
            Heuristic::DateInPast => {
                let (date, received) = self.dates()?;
                (received - date > PAST_SLACK_SECS)
                    .then(|| format!("dated {} before it was received", span(received - date)))
            }
            Heuristic::DateInvalid => {
                let present = has_header(self.message, HeaderName::Date);
                let valid = self.message.date().is_some_and(|d| d.is_valid());
                (present && !valid).then(|| "the Date header does not parse".to_owned())
            }
            Heuristic::FromNoAddress => {
                if !has_header(self.message, HeaderName::From) {
                    return None;
                }
                let valid = self.message.from().is_some_and(|from| {
                    from.iter().any(|a| a.address().is_some_and(valid_address))
                });
                (!valid).then(|| "From holds no valid address".to_owned())
            }
            Heuristic::HtmlOnly => (self.view.html_parts > 0 && self.view.text_parts == 0)
                .then(|| "no plain-text part".to_owned()),
            Heuristic::MimeBoundOutlookInvalid => {
                let boundary = self.message.content_type()?.attribute("boundary")?;
                self.outlook_time_off("MIME boundary", outlook_boundary_time(boundary)?)
            }
            Heuristic::MsgidOutlookInvalid => {
                let stamp = outlook_id_time(self.message.message_id()?)?;
                self.outlook_time_off("Message-ID", stamp)
            }
            Heuristic::HtmlInvisibleText => (self.view.invisible_chars >= INVISIBLE_CHARS_MIN)
                .then(|| format!("{} hidden characters", self.view.invisible_chars)),
            Heuristic::HtmlLinkTextMismatch => self.view.links.iter().find_map(|link| {
                let shown = domain_named_by(&link.text)?;
                let target = host_of(&link.href)?;
                if !link.href.to_ascii_lowercase().starts_with("http") {
                    return None;
                }
                (registrable_domain(&shown) != registrable_domain(&target))
                    .then(|| format!("link text names {shown} but leads to {target}"))
            }),
            Heuristic::SubjectAllCaps => {
                let subject = self.message.subject()?;
                // Only scripts with cases count: a subject in Chinese has no
                // lower-case letter and is not shouting.
                let capitals = subject.chars().filter(|c| c.is_uppercase()).count();
                let lower = subject.chars().any(char::is_lowercase);
                (capitals >= CAPS_SUBJECT_MIN_CAPITALS && !lower)
                    .then(|| "subject in capitals".to_owned())
            }
        }
    }

    /// Whether a time that Outlook wrote into `what` is far from the Date header,
    /// which the same program wrote from the same clock.
    fn outlook_time_off(&self, what: &str, stamp: i64) -> Option<String> {
        let date = self.date()?;
        let off = (stamp - date).abs();
        (off > OUTLOOK_TIME_SLACK_SECS)
            .then(|| format!("{what} made by Outlook {} from its Date", span(off)))
    }

    /// The Date header, when it parses, in Unix seconds.
    fn date(&self) -> Option<i64> {
        Some(self.message.date().filter(|d| d.is_valid())?.to_timestamp())
    }

    /// The Date header and the time of receipt (the newest `Received`, else now).
    fn dates(&self) -> Option<(i64, i64)> {
        let date = self.date()?;
        let received = self
            .message
            .received()
            .and_then(|r| r.date())
            .filter(|d| d.is_valid())
            .map_or(self.now, |d| d.to_timestamp());
        Some((date, received))
    }
}

fn has_header(message: &Message<'_>, name: HeaderName<'_>) -> bool {
    message.headers().iter().any(|h| h.name == name)
}

/// The time written in a Message-ID of the form Outlook and Outlook Express made,
/// `XXXXHHHHHHHH$XXXXXXXX$XXXXXXXX@host` in hexadecimal: after a 4-digit counter,
/// the high 32 bits of the sending clock's FILETIME.
fn outlook_id_time(id: &str) -> Option<i64> {
    let (local, _host) = id.split_once('@')?;
    let mut parts = local.split('$');
    let first = parts.next()?;
    let shaped = first.len() == 12
        && parts.next().is_some_and(|p| p.len() == 8)
        && parts.next().is_some_and(|p| p.len() == 8)
        && parts.next().is_none()
        && local.bytes().all(|b| b == b'$' || b.is_ascii_hexdigit());
    if !shaped {
        return None;
    }
    filetime_high(&first[4..])
}

/// The time written in a MIME boundary of the form Outlook made,
/// `----=_NextPart_DDD_XXXX_HHHHHHHH.LLLLLLLL`: the high and low 32 bits of the
/// sending clock's FILETIME, of which the high half tells the time.
fn outlook_boundary_time(boundary: &str) -> Option<i64> {
    let rest = boundary
        .trim_start_matches('-')
        .strip_prefix("=_NextPart_")?;
    let mut parts = rest.split('_');
    let (level, counter, time) = (parts.next()?, parts.next()?, parts.next()?);
    let (high, low) = time.split_once('.')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let shaped = level.len() == 3
        && level.bytes().all(|b| b.is_ascii_digit())
        && hex(counter, 4)
        && hex(high, 8)
        && hex(low, 8)
        && parts.next().is_none();
    if !shaped {
        return None;
    }
    filetime_high(high)
}

/// Unix seconds from the high 32 bits of a Windows FILETIME in hexadecimal (units of
/// 2^32 × 100 ns, about seven minutes, since 1601), to within those seven minutes.
fn filetime_high(hex: &str) -> Option<i64> {
    let high = u64::from_str_radix(hex, 16).ok()?;
    let since_1601 = i64::try_from((high << 32) / 10_000_000).ok()?;
    Some(since_1601 - FILETIME_EPOCH_SECS)
}

/// `local@domain.tld` with a plausible domain.
fn valid_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
}

/// Top-level domains common enough that a bare `name.tld` in link text is read as
/// a domain (with `http://` or `www.` any top-level domain counts).
const COMMON_TLDS: &[&str] = &[
    "at", "au", "be", "biz", "br", "ca", "ch", "cn", "co", "com", "de", "es", "eu", "fr", "in",
    "info", "io", "it", "jp", "me", "net", "nl", "no", "org", "pl", "ru", "se", "uk", "us",
];

/// The domain that link text shows, if the text is a URL or a domain name.
fn domain_named_by(text: &str) -> Option<String> {
    let text = text.trim().to_lowercase();
    let mut prefixed = false;
    let mut rest = text.as_str();
    for prefix in ["https://", "http://"] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            prefixed = true;
        }
    }
    if rest.starts_with("www.") {
        prefixed = true;
    }
    let host = rest
        .split(['/', '?', '#', ':'])
        .next()?
        .trim_end_matches('.');
    if host.contains(char::is_whitespace) {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let tld = labels.last()?;
    let well_formed = labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        && (2..=24).contains(&tld.len())
        && tld.chars().all(|c| c.is_ascii_alphabetic());
    (well_formed && (prefixed || COMMON_TLDS.contains(tld))).then(|| host.to_owned())
}

/// A duration in words: `3 days`, `5 hours`.
fn span(seconds: i64) -> String {
    if seconds >= 2 * 24 * 3600 {
        format!("{} days", seconds / (24 * 3600))
    } else {
        format!("{} hours", seconds / 3600)
    }
}

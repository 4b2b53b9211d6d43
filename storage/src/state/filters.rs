//! Which queued and quarantined messages a listing wants, and how an address pattern
//! matches: shared by the listings and the event index.

use crate::message::{QuarantineRecord, QueueRecord, QueueStatus};

/// Which queued messages a listing wants. Addresses compare without regard to ASCII
/// case; one starting with `@` matches every address of that domain, and `<>` (or
/// the empty string) the null sender.
#[derive(Clone, Debug, Default)]
pub struct QueueFilter {
    /// Envelope sender.
    pub sender: Option<String>,
    /// Some recipient, delivered or not.
    pub recipient: Option<String>,
    /// The message's [`QueueRecord::status`] at the time of the listing.
    pub status: Option<QueueStatus>,
}

impl QueueFilter {
    pub(super) fn matches(&self, record: &QueueRecord, now_ms: i64) -> bool {
        let e = &record.entry;
        self.sender
            .as_deref()
            .is_none_or(|s| address_matches(s, &e.mail_from))
            && self.recipient.as_deref().is_none_or(|want| {
                e.recipients
                    .iter()
                    .any(|r| address_matches(want, &r.address))
            })
            && self.status.is_none_or(|s| record.status(now_ms) == s)
    }
}

/// Which quarantined messages a listing wants; addresses as in [`QueueFilter`].
#[derive(Clone, Debug, Default)]
pub struct QuarantineFilter {
    /// Envelope sender.
    pub sender: Option<String>,
    /// Some recipient.
    pub recipient: Option<String>,
    /// Words of the verdict's reason, without regard to case (`malware`, `score`).
    pub reason: Option<String>,
    /// Words of the `Subject` header, without regard to case: every word given must
    /// appear in it (a message without one matches no word).
    pub subject: Option<String>,
    /// Quarantined at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Quarantined before this time.
    pub until_ms: Option<i64>,
}

impl QuarantineFilter {
    pub(super) fn matches(&self, record: &QuarantineRecord) -> bool {
        self.sender
            .as_deref()
            .is_none_or(|s| address_matches(s, &record.mail_from))
            && self
                .recipient
                .as_deref()
                .is_none_or(|want| record.recipients.iter().any(|r| address_matches(want, r)))
            && self
                .reason
                .as_deref()
                .is_none_or(|want| record.reason.to_lowercase().contains(&want.to_lowercase()))
            && self
                .subject
                .as_deref()
                .is_none_or(|want| subject_matches(want, record.subject.as_deref()))
            && self.since_ms.is_none_or(|t| record.time_ms >= t)
            && self.until_ms.is_none_or(|t| record.time_ms < t)
    }
}

/// True when every word of `want` appears in `subject`, without regard to case.
fn subject_matches(want: &str, subject: Option<&str>) -> bool {
    let subject = subject.unwrap_or_default().to_lowercase();
    want.to_lowercase()
        .split_whitespace()
        .all(|word| subject.contains(word))
}

pub(crate) fn address_matches(pattern: &str, address: &str) -> bool {
    if pattern == "<>" {
        return address.is_empty();
    }
    if pattern.starts_with('@') && pattern.len() > 1 {
        let (a, p) = (address.as_bytes(), pattern.as_bytes());
        return a.len() > p.len() && a[a.len() - p.len()..].eq_ignore_ascii_case(p);
    }
    pattern.eq_ignore_ascii_case(address)
}

//! The `[digest]` section: when the quarantine digest goes out, to whom, and where
//! its links point.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::quarantine::digest::Settings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDigest {
    /// Send digests (default false).
    enabled: Option<bool>,
    /// Times of day to send them at, `HH:MM` (or `HH:MM:SS`) in UTC (default
    /// `["08:00"]`).
    at: Option<Vec<String>>,
    /// Addresses and domains that get one; absent or empty: every recipient of
    /// `smtp.domains`.
    recipients: Option<Vec<String>>,
    /// The console's address as the links name it (default: the API's own, `http`
    /// or `https` as it is served; the SMTP host name for an API on every address).
    console_url: Option<String>,
    /// Days a digest's links last (default 3).
    link_valid_days: Option<f64>,
    /// The digest's `From` address (default `postmaster@` the SMTP host name).
    from: Option<String>,
    /// Held messages one digest lists at most (default 100).
    max_messages: Option<usize>,
}

/// Links lasting longer than this are refused: a link in an old mail stays a key.
const MAX_LINK_DAYS: f64 = 30.0;

pub(super) fn validate_digest(
    d: RawDigest,
    api_listen: Option<SocketAddr>,
    api_tls: bool,
    hostname: &str,
    problems: &mut Vec<String>,
) -> Settings {
    let defaults = Settings::default();
    let mut at = Vec::new();
    for text in d.at.unwrap_or_else(|| vec!["08:00".into()]) {
        match time_of_day(&text) {
            Some(seconds) => at.push(seconds),
            None => problems.push(format!(
                "digest.at: {text:?} is not a time of day (HH:MM or HH:MM:SS, UTC)"
            )),
        }
    }
    at.sort_unstable();
    at.dedup();
    let enabled = d.enabled.unwrap_or(false);
    if enabled && at.is_empty() {
        problems.push("digest.at: give at least one time when digest.enabled is true".into());
    }
    let mut recipients = Vec::new();
    for r in d.recipients.unwrap_or_default() {
        let lower = r.trim().to_lowercase();
        let domain = lower.rsplit('@').next().unwrap_or_default();
        if lower.is_empty() || crate::mail::ascii_domain(domain).is_none_or(|d| !d.contains('.')) {
            problems.push(format!(
                "digest.recipients: {r:?} is not an address or a domain"
            ));
        } else {
            recipients.push(lower);
        }
    }
    let console_url = match d.console_url {
        Some(url) => {
            let trimmed = url.trim_end_matches('/').to_string();
            let fine = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
                && trimmed.len() > "https://".len()
                && !trimmed.contains(char::is_whitespace)
                && !trimmed.contains(['"', '<', '>', '?', '#']);
            if !fine {
                problems.push(format!(
                    "digest.console_url: {url:?} is not an http:// or https:// address"
                ));
            }
            trimmed
        }
        // The API's own address; on every address of the machine (0.0.0.0, ::) the
        // SMTP host name with the API's port: a link names a host a person reaches.
        None => match api_listen {
            Some(addr) => {
                let scheme = if api_tls { "https" } else { "http" };
                if addr.ip().is_unspecified() {
                    format!("{scheme}://{hostname}:{}", addr.port())
                } else {
                    format!("{scheme}://{addr}")
                }
            }
            None => defaults.console_url.clone(),
        },
    };
    let days = d
        .link_valid_days
        .unwrap_or(defaults.link_valid.as_secs_f64() / 86_400.0);
    if !(days > 0.0 && days <= MAX_LINK_DAYS) {
        problems.push(format!(
            "digest.link_valid_days must be above 0 and at most {MAX_LINK_DAYS}, not {days}"
        ));
    }
    let from = d.from.unwrap_or_default();
    if !from.is_empty() && bulwark_storage::recipient::entry(&from).is_none_or(|e| !e.contains('@'))
    {
        problems.push(format!("digest.from: {from:?} is not an address"));
    }
    let max_messages = d.max_messages.unwrap_or(defaults.max_messages);
    if !(1..=1000).contains(&max_messages) {
        problems.push(format!(
            "digest.max_messages must be 1 to 1000, not {max_messages}"
        ));
    }
    Settings {
        enabled,
        at,
        recipients,
        console_url,
        link_valid: Duration::from_secs_f64(days.clamp(0.0, MAX_LINK_DAYS) * 86_400.0),
        from,
        max_messages,
    }
}

/// `HH:MM` or `HH:MM:SS` as seconds after midnight.
fn time_of_day(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let mut numbers = parts.iter().map(|p| p.parse::<u32>().ok());
    let (h, m) = (numbers.next()??, numbers.next()??);
    let s = numbers.next().flatten().unwrap_or(0);
    (h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_are_hours_minutes_and_seconds() {
        assert_eq!(time_of_day("08:00"), Some(8 * 3600));
        assert_eq!(time_of_day("23:59:59"), Some(86_399));
        for bad in [
            "8:00",
            "24:00",
            "12:60",
            "12:00:60",
            "12",
            "12:00:00:00",
            "ab:cd",
            "",
        ] {
            assert_eq!(time_of_day(bad), None, "{bad}");
        }
    }
}

//! Shipping the event log to SIEMs (`[[siem.exporters]]`): syslog over TCP or TLS
//! (JSON or CEF), Splunk's HTTP Event Collector, and a signed webhook.
//!
//! Each exporter's cursor (the last seq its receiver accepted) is in the replicated
//! state. Only the leader runs the exporters: it reads the events after the cursor
//! from its own log, sends a batch, and once the receiver has accepted it proposes
//! the new cursor. A new leader starts from the stored cursor, so nothing is skipped,
//! and what is sent twice is at most the batch that was in flight when the leader
//! changed. A receiver that is down costs retries with backoff, never memory: a
//! batch is all an exporter holds.

mod format;
mod hec;
mod runner;
mod syslog;
mod webhook;

use std::time::Duration;

pub use format::Payload;
pub use runner::{run, Metrics};

/// One `[[siem.exporters]]` entry, validated.
#[derive(Clone, Debug)]
pub struct Exporter {
    /// Unique; the key of the replicated cursor, so renaming starts from the top.
    pub name: String,
    pub kind: Kind,
    pub filter: Filter,
    /// Most events per batch.
    pub batch: usize,
    /// Longest pause between tries while the receiver fails.
    pub retry_max: Duration,
    /// Pause between looks at the log when there is nothing new.
    pub poll: Duration,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Syslog(syslog::Settings),
    Hec(hec::Settings),
    Webhook(webhook::Settings),
}

pub use hec::Settings as HecSettings;
pub use syslog::Settings as SyslogSettings;
pub use webhook::Settings as WebhookSettings;

/// Which events an exporter ships.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event types, exact (`scan.verdict`) or a family (`delivery.*`); empty: all.
    pub types: Vec<String>,
    /// The event's `action` (`reject`, `quarantine`, `queue.hold`, ...); empty: any,
    /// else events without one are left out.
    pub actions: Vec<String>,
}

impl Filter {
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        let kind = event["type"].as_str().unwrap_or_default();
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => kind.starts_with(prefix),
                None => t == kind,
            });
        let action_ok = self.actions.is_empty()
            || event["action"]
                .as_str()
                .is_some_and(|a| self.actions.iter().any(|want| want == a));
        type_ok && action_ok
    }
}

/// The HTTP client of the HEC and webhook exporters.
fn http_client(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<reqwest::Client, SendError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect would turn the POST into a GET without the batch, and its 2xx
        // would count the batch as accepted: a 3xx is a failure instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SendError::Refused(format!("HTTP client: {e}")))
}

/// Why a batch was not accepted; it is sent again after a pause.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The receiver could not be reached or did not accept the batch.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered in a way that needs the configuration changed.
    #[error("{0}")]
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn filters_take_exact_types_families_and_actions() {
        let verdict = serde_json::json!({ "type": "scan.verdict", "action": "reject" });
        let delivery = serde_json::json!({ "type": "delivery.deferred" });
        let all = Filter::default();
        assert!(all.matches(&verdict) && all.matches(&delivery));
        let family = Filter {
            types: vec!["delivery.*".into()],
            actions: vec![],
        };
        assert!(family.matches(&delivery) && !family.matches(&verdict));
        let rejects = Filter {
            types: vec!["scan.verdict".into()],
            actions: vec!["reject".into(), "quarantine".into()],
        };
        assert!(rejects.matches(&verdict));
        assert!(!rejects.matches(&delivery));
        let mut delivered = verdict.clone();
        delivered["action"] = "deliver".into();
        assert!(!rejects.matches(&delivered));
    }
}

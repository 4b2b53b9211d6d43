//! Shipping the event log to SIEMs: syslog over TCP, TLS or RELP (JSON or CEF),
//! Splunk's HTTP Event Collector, and a signed webhook. The exporters are the
//! cluster's, in its policy ([`Spec`]); each node builds them with its own files and
//! secrets ([`Local`]) and runs them while it leads, whichever node that is.
//!
//! Each exporter's cursor (the last seq its receiver accepted) and the number of
//! records it has shipped are in the replicated state. Only the leader runs the
//! exporters: it reads the events after the cursor from its own log, numbers them
//! after the count (`export.seq`, so a filtered feed is still 1, 2, 3, ... and a
//! missing number is a gap), sends a batch, and once the receiver has accepted it
//! proposes the new cursor and count. A new leader starts from the stored cursor, so
//! nothing is skipped; what is sent twice is a batch whose acceptance was not yet
//! stored, with the same numbers. A batch a receiver refuses for good is given up
//! after `dead_letter_after` refusals: `siem.dead_letter` is recorded with the cursor
//! moved past it, in one operation. A receiver that is down costs retries with
//! backoff, never memory: a batch is all an exporter holds.

mod format;
mod hec;
mod relp;
mod runner;
mod spec;
mod syslog;
mod webhook;

use std::time::Duration;

pub use format::Payload;
pub use runner::{run, Metrics};
pub use spec::{seed, Exporters, Local, Spec};

/// One exporter of the policy, built with this node's files and secrets.
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
    /// Refusals of one batch after which it is given up (`siem.dead_letter`).
    pub dead_letter_after: u32,
    /// Its settings as the policy writes them (JSON): a version that changes them
    /// restarts it.
    pub written: String,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Syslog(syslog::Settings),
    Hec(hec::Settings),
    Webhook(webhook::Settings),
}

pub use hec::Settings as HecSettings;
pub use syslog::{Settings as SyslogSettings, Transport as SyslogTransport};
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
    /// The receiver refused this batch for good (an HTTP 4xx about the request, a
    /// RELP 500, a HEC batch never acknowledged however often posted): after
    /// `dead_letter_after` of these the batch is given up.
    #[error("{0}")]
    Rejected(String),
}

/// Whether an HTTP answer refuses the batch itself, for good: a 4xx other than a
/// timeout (408), a rate limit (429) or the ones that say the exporter's settings
/// are wrong (401, 403, 404, 407), which would refuse every batch alike and are
/// retried until the configuration is fixed.
fn refuses_batch(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && ![401, 403, 404, 407, 408, 429].contains(&status.as_u16())
}

/// Counts the events a sink transmits again (`bulwark_siem_resent_events`): a batch
/// it already transmitted once, each of whose events the receiver may now hold twice.
pub struct Resends {
    counter: prometheus_client::metrics::counter::Counter,
    /// First and last seq of the batch last transmitted.
    last: Option<(u64, u64)>,
}

impl Resends {
    fn new(counter: prometheus_client::metrics::counter::Counter) -> Resends {
        Resends {
            counter,
            last: None,
        }
    }

    /// Called as `events` go out.
    fn transmitting(&mut self, events: &[serde_json::Value]) {
        let seq = |e: Option<&serde_json::Value>| e.and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        let batch = (seq(events.first()), seq(events.last()));
        if self.last == Some(batch) {
            self.counter.inc_by(events.len() as u64);
        }
        self.last = Some(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn only_a_refusal_of_the_batch_itself_counts_toward_a_dead_letter() {
        for (status, refuses) in [
            (400, true),
            (413, true),
            (422, true),
            (401, false),
            (403, false),
            (404, false),
            (408, false),
            (429, false),
            (500, false),
            (503, false),
        ] {
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            assert_eq!(super::refuses_batch(status), refuses, "{status}");
        }
    }

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

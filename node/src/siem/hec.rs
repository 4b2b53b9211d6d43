//! Splunk's HTTP Event Collector: a batch is one POST to `/services/collector/event`
//! (events concatenated, `Authorization: Splunk TOKEN`). With indexer
//! acknowledgement on, the batch counts as accepted only once
//! `/services/collector/ack` says Splunk has indexed it.
//!
//! A batch not acknowledged within `ack_timeout_secs` is a failed try. The next try
//! first asks again about every post of the batch so far (a late acknowledgement
//! accepts it without posting it again) and only then posts it again, counted in
//! `bulwark_siem_resent_events`. A batch is posted at most `1 + ack_resends` times;
//! tries after that only ask, and each one that finds no acknowledgement counts as a
//! refusal toward `dead_letter_after`. A 4xx about the batch itself (HEC's 400 for
//! data it cannot parse) is a refusal too.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::format::hec_event;
use super::{Resends, SendError};

/// `kind = "hec"`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Base URL of the collector, e.g. `https://splunk.example:8088`.
    pub url: reqwest::Url,
    pub token: String,
    /// Wait for indexer acknowledgement before a batch counts as accepted.
    pub ack: bool,
    /// How long to wait for that acknowledgement.
    pub ack_timeout: Duration,
    /// Posts of one unacknowledged batch after the first, at most.
    pub ack_resends: u32,
    pub index: Option<String>,
    pub sourcetype: String,
    /// Trust anchors for an `https` URL.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Longest a request may take.
    pub timeout: Duration,
}

pub struct Sink {
    settings: Settings,
    hostname: String,
    client: reqwest::Client,
    /// The channel acknowledgements are asked on (one per runner).
    channel: String,
    resends: Resends,
    /// The batch being tried: its first and last seq, and the ackId of each post.
    in_flight: Option<((u64, u64), Vec<u64>)>,
}

impl Sink {
    pub fn new(settings: Settings, hostname: String, resends: Resends) -> Result<Sink, SendError> {
        Ok(Sink {
            client: super::http_client(&settings.tls, settings.timeout)?,
            settings,
            hostname,
            channel: uuid::Uuid::new_v4().to_string(),
            resends,
            in_flight: None,
        })
    }

    pub async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        let seq = |e: Option<&Value>| e.and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        let batch = (seq(events.first()), seq(events.last()));
        let mut acks = match self.in_flight.take() {
            Some((tried, acks)) if tried == batch => acks,
            _ => Vec::new(),
        };
        let result = self.try_batch(events, &mut acks).await;
        if result.is_err() {
            self.in_flight = Some((batch, acks));
        }
        result
    }

    /// One try of a batch whose earlier posts got `acks` (this try's post added).
    async fn try_batch(&mut self, events: &[Value], acks: &mut Vec<u64>) -> Result<(), SendError> {
        if !acks.is_empty() && self.acknowledged(acks).await? {
            return Ok(());
        }
        let posts = acks.len() as u32;
        if posts > self.settings.ack_resends {
            return Err(SendError::Rejected(format!(
                "batch posted {posts} times and never acknowledged (ack_resends = {})",
                self.settings.ack_resends
            )));
        }
        let mut body = String::new();
        for event in events {
            body.push_str(
                &hec_event(
                    event,
                    &self.hostname,
                    &self.settings.sourcetype,
                    self.settings.index.as_deref(),
                )
                .to_string(),
            );
            body.push('\n');
        }
        self.resends.transmitting(events);
        let answer = self.post("services/collector/event", body).await?;
        if !self.settings.ack {
            return Ok(());
        }
        let Some(ack_id) = answer["ackId"].as_u64() else {
            // Accepted, and sending it again would only index it twice.
            tracing::warn!(
                "the collector gave no ackId: turn indexer acknowledgement on for the \
                 token, or set ack = false; the batch counts as accepted on its 200"
            );
            return Ok(());
        };
        acks.push(ack_id);
        let deadline = Instant::now() + self.settings.ack_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            if self.acknowledged(acks).await? {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                return Err(SendError::Transport(format!(
                    "batch {ack_id} not acknowledged within {} s",
                    self.settings.ack_timeout.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether Splunk has indexed any of the posts `acks` of the batch.
    async fn acknowledged(&self, acks: &[u64]) -> Result<bool, SendError> {
        let answer = self
            .post(
                "services/collector/ack",
                serde_json::json!({ "acks": acks }).to_string(),
            )
            .await?;
        Ok(acks.iter().any(|id| answer["acks"][id.to_string()] == true))
    }

    /// POSTs `body` to `path` under the collector's URL; the JSON answer of a 2xx.
    async fn post(&self, path: &str, body: String) -> Result<Value, SendError> {
        let url = self
            .settings
            .url
            .join(path)
            .map_err(|e| SendError::Refused(format!("collector URL: {e}")))?;
        let response = self
            .client
            .post(url.clone())
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Splunk {}", self.settings.token),
            )
            .header("X-Splunk-Request-Channel", &self.channel)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport(format!("{url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| SendError::Transport(format!("{url}: {e}")))?;
        if !status.is_success() {
            // HEC explains itself in {"text": ..., "code": N}.
            let why = format!(
                "{url}: {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            return Err(match super::refuses_batch(status) {
                true => SendError::Rejected(why),
                false => SendError::Transport(why),
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

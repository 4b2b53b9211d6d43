//! Splunk's HTTP Event Collector: a batch is one POST to `/services/collector/event`
//! (events concatenated, `Authorization: Splunk TOKEN`). With indexer
//! acknowledgement on, the batch counts as accepted only once
//! `/services/collector/ack` says Splunk has indexed it; until then, or if that does
//! not come in time, the batch is sent again.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::format::hec_event;
use super::SendError;

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
}

impl Sink {
    pub fn new(settings: Settings, hostname: String) -> Result<Sink, SendError> {
        Ok(Sink {
            client: super::http_client(&settings.tls, settings.timeout)?,
            settings,
            hostname,
            channel: uuid::Uuid::new_v4().to_string(),
        })
    }

    pub async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
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
        let deadline = Instant::now() + self.settings.ack_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let answer = self
                .post(
                    "services/collector/ack",
                    serde_json::json!({ "acks": [ack_id] }).to_string(),
                )
                .await?;
            if answer["acks"][ack_id.to_string()] == true {
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
            return Err(SendError::Transport(format!(
                "{url}: {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

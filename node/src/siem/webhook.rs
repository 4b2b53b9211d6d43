//! A generic HTTPS webhook: a batch is one POST of a JSON array of events, signed so
//! the receiver can tell it came from us and was not replayed from long ago:
//! `X-Bulwark-Timestamp: UNIX_SECONDS` and
//! `X-Bulwark-Signature: sha256=HEX(HMAC-SHA256(secret, TIMESTAMP "." BODY))`.
//! Any 2xx answer accepts the batch; a 4xx about the batch itself (see
//! [`super::refuses_batch`]) refuses it toward a dead letter; anything else is
//! tried again.

use serde_json::Value;

use super::{Resends, SendError};

/// `kind = "webhook"`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: reqwest::Url,
    /// The shared HMAC key.
    pub secret: Vec<u8>,
    /// Trust anchors for an `https` URL.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Longest a request may take.
    pub timeout: std::time::Duration,
}

pub struct Sink {
    settings: Settings,
    exporter: String,
    client: reqwest::Client,
    resends: Resends,
}

impl Sink {
    pub fn new(settings: Settings, exporter: String, resends: Resends) -> Result<Sink, SendError> {
        Ok(Sink {
            client: super::http_client(&settings.tls, settings.timeout)?,
            settings,
            exporter,
            resends,
        })
    }

    pub async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        let body = Value::Array(events.to_vec()).to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = signature(&self.settings.secret, timestamp, body.as_bytes());
        let url = &self.settings.url;
        self.resends.transmitting(events);
        let response = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Bulwark-Exporter", &self.exporter)
            .header("X-Bulwark-Timestamp", timestamp.to_string())
            .header("X-Bulwark-Signature", format!("sha256={signature}"))
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let why = format!(
            "{url}: {status}: {}",
            text.chars().take(200).collect::<String>()
        );
        Err(match super::refuses_batch(status) {
            true => SendError::Rejected(why),
            false => SendError::Transport(why),
        })
    }
}

/// Hex HMAC-SHA256 of `TIMESTAMP "." BODY` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    hex::encode(context.sign().as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Python: hmac.new(b"key", b"1700000000.[]", hashlib.sha256).hexdigest()
        assert_eq!(
            super::signature(b"key", 1_700_000_000, b"[]"),
            "2afce10b4f37880815b715635811bcfa4d5334e7213eea5bc2e130e1008055c3"
        );
    }
}

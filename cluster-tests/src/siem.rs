//! SIEM receivers for the export tests, on 127.0.0.1: a syslog listener (TCP or TLS,
//! RFC 6587 octet counting) and an HTTP server with Splunk HEC's endpoints and a
//! webhook endpoint that checks the HMAC signature. Each keeps what it received, and
//! can be taken down and brought back to test the exporters' retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One syslog message as received: the RFC 5424 header fields the tests check and
/// the payload (JSON or a CEF line).
#[derive(Clone, Debug)]
pub struct SyslogMessage {
    pub pri: u16,
    pub hostname: String,
    pub msgid: String,
    pub payload: String,
}

/// A syslog receiver; see the module documentation.
pub struct SyslogReceiver {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    received: Arc<Mutex<Vec<SyslogMessage>>>,
    /// Frames that did not parse.
    errors: Arc<Mutex<Vec<String>>>,
    task: Option<JoinHandle<()>>,
}

impl SyslogReceiver {
    /// Listens on a free loopback port, over TLS with `tls`.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Result<SyslogReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut receiver = SyslogReceiver {
            addr: listener.local_addr()?,
            tls,
            received: Arc::default(),
            errors: Arc::default(),
            task: None,
        };
        receiver.serve(listener);
        Ok(receiver)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tls, received, errors) =
            (self.tls.clone(), self.received.clone(), self.errors.clone());
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, received, errors) = (tls.clone(), received.clone(), errors.clone());
                connections.spawn(async move {
                    let result = match tls {
                        None => read_frames(tcp, &received).await,
                        Some(config) => {
                            match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                Ok(stream) => read_frames(stream, &received).await,
                                Err(e) => Err(anyhow::anyhow!("TLS handshake: {e}")),
                            }
                        }
                    };
                    if let Err(e) = result {
                        errors.lock().unwrap().push(format!("{e:#}"));
                    }
                });
            }
        }));
    }

    /// Stops listening and closes every connection (what was read is kept).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) -> Result<()> {
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("binding {} again", self.addr))?;
        self.serve(listener);
        Ok(())
    }

    pub fn messages(&self) -> Vec<SyslogMessage> {
        self.received.lock().unwrap().clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `LEN SP MSG` frames until the stream ends.
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: S,
    received: &Mutex<Vec<SyslogMessage>>,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = Vec::new();
        let n = reader.read_until(b' ', &mut len).await?;
        if n == 0 {
            return Ok(());
        }
        let len: usize = std::str::from_utf8(&len[..len.len() - 1])?
            .parse()
            .with_context(|| format!("frame length {:?}", String::from_utf8_lossy(&len)))?;
        let mut message = vec![0u8; len];
        reader.read_exact(&mut message).await?;
        let message = String::from_utf8(message)?;
        received.lock().unwrap().push(parse_5424(&message)?);
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID SD MSG` with empty structured data.
fn parse_5424(message: &str) -> Result<SyslogMessage> {
    let rest = message.strip_prefix('<').context("no PRI")?;
    let (pri, rest) = rest.split_once(">1 ").context("no version")?;
    let fields: Vec<&str> = rest.splitn(7, ' ').collect();
    if fields.len() != 7 || fields[5] != "-" {
        bail!("not RFC 5424 with empty structured data: {message:?}");
    }
    Ok(SyslogMessage {
        pri: pri.parse()?,
        hostname: fields[1].to_string(),
        msgid: fields[4].to_string(),
        payload: fields[6].to_string(),
    })
}

/// What the HTTP receiver got, per endpoint.
#[derive(Default)]
struct HttpState {
    hec: Vec<Value>,
    /// By the exporter named in `X-Bulwark-Exporter`.
    webhook: BTreeMap<String, Vec<Value>>,
    /// Requests refused for a wrong token or signature.
    refused: Vec<String>,
    /// HEC acknowledgement ids issued, and whether each was asked about before.
    acks: BTreeMap<u64, bool>,
}

struct Shared {
    hec_token: String,
    webhook_secret: Vec<u8>,
    up: AtomicBool,
    next_ack: AtomicU64,
    state: Mutex<HttpState>,
}

/// HEC (`/services/collector/event`, `/services/collector/ack`) and a webhook
/// (`/hook`) on one loopback port. HEC acknowledges a batch at the second time it is
/// asked about, so the exporter has to poll; while down, everything gets 503.
pub struct HttpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HttpReceiver {
    pub async fn start(hec_token: &str, webhook_secret: &[u8]) -> Result<HttpReceiver> {
        let shared = Arc::new(Shared {
            hec_token: hec_token.to_string(),
            webhook_secret: webhook_secret.to_vec(),
            up: AtomicBool::new(true),
            next_ack: AtomicU64::new(1),
            state: Mutex::default(),
        });
        let app = Router::new()
            .route("/services/collector/event", post(hec_event))
            .route("/services/collector/ack", post(hec_ack))
            .route("/hook", post(webhook))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HttpReceiver { addr, shared, task })
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While down, every request gets 503.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
    }

    /// The `event` of every HEC event received, in order.
    pub fn hec_events(&self) -> Vec<Value> {
        self.shared.state.lock().unwrap().hec.clone()
    }

    /// Every event the webhook received from `exporter`, in order.
    pub fn webhook_events(&self, exporter: &str) -> Vec<Value> {
        self.shared
            .state
            .lock()
            .unwrap()
            .webhook
            .get(exporter)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests refused for a wrong token or signature.
    pub fn refused(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().refused.clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn down() -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "text": "Server is busy", "code": 9 })),
    )
}

async fn hec_event(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    if !shared.up.load(Ordering::SeqCst) {
        return down();
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Splunk {}", shared.hec_token) {
        shared
            .state
            .lock()
            .unwrap()
            .refused
            .push(format!("HEC token {auth:?}"));
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "text": "Invalid token", "code": 4 })),
        );
    }
    if !headers.contains_key("x-splunk-request-channel") {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "text": "Data channel is missing", "code": 10 })),
        );
    }
    let mut events = Vec::new();
    for item in serde_json::Deserializer::from_str(&body).into_iter::<Value>() {
        match item {
            Ok(item) if item["event"].is_object() => events.push(item["event"].clone()),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({ "text": "Invalid data format", "code": 6 })),
                )
            }
        }
    }
    let ack = shared.next_ack.fetch_add(1, Ordering::SeqCst);
    let mut state = shared.state.lock().unwrap();
    state.hec.extend(events);
    state.acks.insert(ack, false);
    (
        StatusCode::OK,
        Json(serde_json::json!({ "text": "Success", "code": 0, "ackId": ack })),
    )
}

async fn hec_ack(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !shared.up.load(Ordering::SeqCst) {
        return down();
    }
    let mut state = shared.state.lock().unwrap();
    let mut answer = serde_json::Map::new();
    for id in body["acks"].as_array().into_iter().flatten() {
        let Some(id) = id.as_u64() else { continue };
        let done = match state.acks.get_mut(&id) {
            Some(asked) => {
                let done = *asked;
                *asked = true;
                done
            }
            None => false,
        };
        answer.insert(id.to_string(), done.into());
    }
    (StatusCode::OK, Json(serde_json::json!({ "acks": answer })))
}

async fn webhook(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if !shared.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let timestamp = header("x-bulwark-timestamp");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &shared.webhook_secret);
    let expected = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(
            &key,
            format!("{timestamp}.{body}").as_bytes()
        ))
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) < 300);
    if header("x-bulwark-signature") != expected || !fresh {
        shared
            .state
            .lock()
            .unwrap()
            .refused
            .push(format!("webhook signature at {timestamp:?}"));
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_str::<Vec<Value>>(&body) {
        Ok(events) => {
            shared
                .state
                .lock()
                .unwrap()
                .webhook
                .entry(header("x-bulwark-exporter"))
                .or_default()
                .extend(events);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// The seqs of `events` in the order received.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// Waits until `received()` holds every seq of `want`, or fails saying what is missing.
pub async fn wait_for_seqs(
    what: &str,
    want: &[u64],
    timeout: Duration,
    received: impl Fn() -> Vec<u64>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got: std::collections::BTreeSet<u64> = received().into_iter().collect();
        let missing: Vec<u64> = want.iter().copied().filter(|s| !got.contains(s)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: {} of {} events missing after {timeout:?}, first {:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

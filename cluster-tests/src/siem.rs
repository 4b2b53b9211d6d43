//! SIEM receivers for the export tests, on 127.0.0.1: a syslog listener (TCP or TLS,
//! RFC 6587 octet counting, or RELP) and an HTTP server with Splunk HEC's endpoints
//! and a webhook endpoint that checks the HMAC signature. Each keeps what it
//! received, and can be taken down and brought back to test the exporters' retries;
//! the syslog listener can also be made to die in the middle of a batch, and the
//! HTTP server to refuse one batch or to never acknowledge one.

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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;
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
    relp: bool,
    received: Arc<Mutex<Vec<SyslogMessage>>>,
    /// Frames that did not parse.
    errors: Arc<Mutex<Vec<String>>>,
    crash: Arc<Crash>,
    task: Option<JoinHandle<()>>,
}

/// A death armed by [`SyslogReceiver::die_at`].
#[derive(Default)]
struct Crash {
    /// The count of messages received at which the receiver dies.
    at: Mutex<Option<usize>>,
    now: Notify,
}

impl Crash {
    /// Called once a message is stored: true if the receiver dies now.
    fn due(&self, received: usize) -> bool {
        let mut at = self.at.lock().unwrap();
        if *at == Some(received) {
            *at = None;
            self.now.notify_one();
            return true;
        }
        false
    }
}

/// Where a connection's messages go.
struct Inbox<'a> {
    received: &'a Mutex<Vec<SyslogMessage>>,
    crash: &'a Crash,
}

impl Inbox<'_> {
    /// Stores a message; an error when the receiver dies on it.
    fn store(&self, message: SyslogMessage) -> Result<()> {
        let mut received = self.received.lock().unwrap();
        received.push(message);
        if self.crash.due(received.len()) {
            bail!("died as asked after {} messages", received.len());
        }
        Ok(())
    }
}

impl SyslogReceiver {
    /// Listens on a free loopback port for octet-counted syslog, over TLS with `tls`.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Result<SyslogReceiver> {
        SyslogReceiver::listen(tls, false).await
    }

    /// Listens on a free loopback port for RELP: every message is answered `200 OK`
    /// once stored.
    pub async fn start_relp() -> Result<SyslogReceiver> {
        SyslogReceiver::listen(None, true).await
    }

    async fn listen(tls: Option<Arc<rustls::ServerConfig>>, relp: bool) -> Result<SyslogReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut receiver = SyslogReceiver {
            addr: listener.local_addr()?,
            tls,
            relp,
            received: Arc::default(),
            errors: Arc::default(),
            crash: Arc::default(),
            task: None,
        };
        receiver.serve(listener);
        Ok(receiver)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dies (stops listening, drops every connection with whatever it had read and
    /// not stored) right after storing its `count`-th message in all, as a killed
    /// receiver would; [`SyslogReceiver::restart`] brings it back.
    pub fn die_at(&self, count: usize) {
        *self.crash.at.lock().unwrap() = Some(count);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tls, relp, received, errors, crash) = (
            self.tls.clone(),
            self.relp,
            self.received.clone(),
            self.errors.clone(),
            self.crash.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => return,
                    },
                    // Dropping the connections closes them, unread bytes and all.
                    _ = crash.now.notified() => return,
                };
                let (tls, received, errors, crash) =
                    (tls.clone(), received.clone(), errors.clone(), crash.clone());
                connections.spawn(async move {
                    let inbox = Inbox {
                        received: &received,
                        crash: &crash,
                    };
                    let result = match (tls, relp) {
                        (None, false) => read_frames(tcp, &inbox).await,
                        (None, true) => serve_relp(tcp, &inbox).await,
                        (Some(config), _) => {
                            match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                Ok(stream) => read_frames(stream, &inbox).await,
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
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(stream: S, inbox: &Inbox<'_>) -> Result<()> {
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
        inbox.store(parse_5424(&message)?)?;
    }
}

/// Serves one RELP session: `open` answered with our offers, each `syslog` stored
/// and answered `200 OK`, `close` answered and the connection closed.
async fn serve_relp(stream: tokio::net::TcpStream, inbox: &Inbox<'_>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        // TXNR SP COMMAND SP DATALEN, then SP DATA or nothing, then LF.
        let mut txnr = Vec::new();
        if reader.read_until(b' ', &mut txnr).await? == 0 {
            return Ok(());
        }
        let txnr = String::from_utf8_lossy(&txnr).trim_end().to_string();
        let mut command = Vec::new();
        reader.read_until(b' ', &mut command).await?;
        let command = String::from_utf8_lossy(&command).trim_end().to_string();
        let mut len = String::new();
        let end = loop {
            let byte = reader.read_u8().await?;
            if byte == b' ' || byte == b'\n' || len.len() > 9 {
                break byte;
            }
            len.push(char::from(byte));
        };
        let len: usize = len.parse().context("RELP data length")?;
        let mut data = vec![0u8; len];
        if end == b' ' {
            reader.read_exact(&mut data).await?;
            if reader.read_u8().await? != b'\n' {
                bail!("RELP frame {txnr} without its LF");
            }
        }
        let answer = match command.as_str() {
            "open" => {
                "200 OK\nrelp_version=0\nrelp_software=bulwark-test\ncommands=syslog".to_string()
            }
            "syslog" => {
                inbox.store(parse_5424(&String::from_utf8(data)?)?)?;
                "200 OK".to_string()
            }
            "close" => {
                write
                    .write_all(format!("{txnr} rsp 0\n").as_bytes())
                    .await?;
                return Ok(());
            }
            other => bail!("unknown RELP command {other:?}"),
        };
        write
            .write_all(format!("{txnr} rsp {} {answer}\n", answer.len()).as_bytes())
            .await?;
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
    /// Webhook batches answered 400 by [`HttpReceiver::refuse_batches_with`].
    refusals: usize,
}

struct Shared {
    hec_token: String,
    webhook_secret: Vec<u8>,
    up: AtomicBool,
    /// Whether HEC acknowledges what it was sent.
    acking: AtomicBool,
    /// Webhook batches holding this text are answered 400.
    refuse: Mutex<Option<String>>,
    next_ack: AtomicU64,
    state: Mutex<HttpState>,
}

/// HEC (`/services/collector/event`, `/services/collector/ack`) and a webhook
/// (`/hook`) on one loopback port. HEC acknowledges a batch at the second time it is
/// asked about, so the exporter has to poll (never, while acknowledgements are
/// off); while down, everything gets 503.
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
            acking: AtomicBool::new(true),
            refuse: Mutex::default(),
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

    /// While off, HEC answers every acknowledgement query "not yet".
    pub fn set_acking(&self, acking: bool) {
        self.shared.acking.store(acking, Ordering::SeqCst);
    }

    /// From now on the webhook answers 400 to every batch whose body holds `text`.
    pub fn refuse_batches_with(&self, text: &str) {
        *self.shared.refuse.lock().unwrap() = Some(text.to_string());
    }

    /// Webhook batches answered 400 so far.
    pub fn refusals(&self) -> usize {
        self.shared.state.lock().unwrap().refusals
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
    let acking = shared.acking.load(Ordering::SeqCst);
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
        answer.insert(id.to_string(), (done && acking).into());
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
    let refuse = shared.refuse.lock().unwrap().clone();
    if refuse.is_some_and(|text| body.contains(&text)) {
        shared.state.lock().unwrap().refusals += 1;
        return StatusCode::BAD_REQUEST;
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

//! A small client for the node's HTTP API, as the tests and the benchmark use it.
//!
//! It knows every node's base URL and where each node writes its admin token, reads the
//! token lazily (a node writes it only once it has started) and forgets it when the node
//! answers 401, so a restarted or wiped node that minted a new token is picked up again.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer};

/// `GET /v1/cluster` as the product reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    /// Raft's role of the node: `Leader`, `Follower`, `Candidate`, `Learner`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub leader_id: Option<u64>,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub term: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub commit_index: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub applied_index: u64,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub chain_head: String,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub event_count: u64,
    #[serde(default)]
    pub members: Vec<Member>,
    /// The highest feature level the node's build applies (0: a node before feature
    /// levels).
    #[serde(default)]
    pub feature_level: u32,
    /// The cluster's active feature level as the node has applied it.
    #[serde(default)]
    pub cluster_feature_level: u32,
}

impl ClusterStatus {
    /// One line for progress and failure messages.
    pub fn summary(&self) -> String {
        format!(
            "node {} leader={:?} term={} commit={} applied={} events={} head={}",
            self.node_id,
            self.leader_id,
            self.term,
            self.commit_index,
            self.applied_index,
            self.event_count,
            short(&self.chain_head)
        )
    }
}

/// One member as listed by `GET /v1/cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    pub id: u64,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub voter: bool,
    #[serde(default)]
    pub matched_index: Option<u64>,
    #[serde(default)]
    pub lag: Option<u64>,
}

/// One event of the hash-chained log (`GET /v1/events`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    #[serde(default)]
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub node: Option<u64>,
    pub hash: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub prev_hash: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub user: Option<serde_json::Value>,
    /// Every other field of the event (`message_id`, `email`, `source`, ...).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// A field outside the ones named above, `Null` when absent.
    pub fn field(&self, name: &str) -> &serde_json::Value {
        self.fields.get(name).unwrap_or(&serde_json::Value::Null)
    }

    /// The event's time in milliseconds since the Unix epoch (see [`unix_ms`]).
    pub fn time_ms(&self) -> Result<i64> {
        unix_ms(&self.time).with_context(|| format!("event {}: bad time {:?}", self.seq, self.time))
    }
}

/// Milliseconds since the Unix epoch of a UTC RFC 3339 time as the API writes it,
/// `2023-11-14T22:13:20.123Z` (fraction optional, any number of digits; `Z` only).
pub fn unix_ms(time: &str) -> Option<i64> {
    let b = time.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || !matches!(b[b.len() - 1], b'Z' | b'z') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => frac
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(3)
            .fold(0, |acc, c| acc * 10 + i64::from(c - b'0')),
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, Deserialize)]
pub struct EventsPage {
    pub events: Vec<Event>,
    #[serde(default)]
    pub next: Option<u64>,
}

/// The 201 answer of `POST /v1/notes`.
#[derive(Debug, Clone, Deserialize)]
pub struct NotePosted {
    pub seq: u64,
    pub hash: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// `GET /v1/events/verify` and `bulwark audit verify` output.
#[derive(Debug, Clone, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    #[serde(default)]
    pub checked: u64,
    #[serde(default)]
    pub head: Option<String>,
    #[serde(default)]
    pub first_bad_seq: Option<u64>,
}

/// Why one `POST /v1/notes` did not commit.
#[derive(Debug, Clone)]
pub struct PostError {
    /// HTTP status, `None` for transport errors (refused, reset, timeout).
    pub status: Option<u16>,
    /// Whether the same request may succeed later (no leader, node down, ...).
    pub retryable: bool,
    pub detail: String,
}

impl PostError {
    /// A short label for error histograms: the status code or the transport error kind.
    pub fn kind(&self) -> String {
        match self.status {
            Some(s) => format!("http {s}"),
            None => self
                .detail
                .split(':')
                .next()
                .unwrap_or("transport")
                .to_string(),
        }
    }
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.detail),
            None => write!(f, "{}", self.detail),
        }
    }
}

impl std::error::Error for PostError {}

#[derive(Debug)]
struct Endpoint {
    id: u64,
    base: String,
    token_path: PathBuf,
}

/// A cheap, cloneable handle to the API of every node of one cluster.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoints: Arc<Vec<Endpoint>>,
    tokens: Arc<Mutex<HashMap<u64, String>>>,
}

/// How long a status/health probe may take before the node counts as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one API request may take (a note waits for a quorum commit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most events one page may hold (the API's maximum).
pub const MAX_PAGE: u64 = 1000;

impl ApiClient {
    /// `nodes`: (node id, base URL like `http://127.0.0.1:8081`, path of `admin.token`).
    pub fn new(nodes: Vec<(u64, String, PathBuf)>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let endpoints = nodes
            .into_iter()
            .map(|(id, base, token_path)| Endpoint {
                id,
                base,
                token_path,
            })
            .collect();
        Ok(Self {
            http,
            endpoints: Arc::new(endpoints),
            tokens: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Node ids in the order given at construction.
    pub fn ids(&self) -> Vec<u64> {
        self.endpoints.iter().map(|e| e.id).collect()
    }

    /// The underlying keep-alive HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn endpoint(&self, id: u64) -> Result<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.id == id)
            .with_context(|| format!("no node with id {id} in this cluster"))
    }

    /// The base URL of node `id`'s API.
    pub fn base_url(&self, id: u64) -> Result<String> {
        Ok(self.endpoint(id)?.base.clone())
    }

    /// The admin token of node `id`, read from its `admin.token` file (cached).
    pub fn token(&self, id: u64) -> Result<String> {
        if let Some(t) = self.tokens.lock().expect("token cache").get(&id) {
            return Ok(t.clone());
        }
        let path = &self.endpoint(id)?.token_path;
        let raw = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin token {}", path.display()))?;
        let token = raw.trim().to_string();
        ensure!(
            !token.is_empty(),
            "admin token file {} is empty",
            path.display()
        );
        self.tokens
            .lock()
            .expect("token cache")
            .insert(id, token.clone());
        Ok(token)
    }

    /// Forgets the cached token of node `id` (after a wipe, or a 401).
    pub fn forget_token(&self, id: u64) {
        self.tokens.lock().expect("token cache").remove(&id);
    }

    /// `GET /healthz`: the status code, or an error if the node does not answer.
    pub async fn healthz(&self, id: u64) -> Result<u16> {
        let url = format!("{}/healthz", self.endpoint(id)?.base);
        let resp = self.http.get(&url).timeout(PROBE_TIMEOUT).send().await?;
        Ok(resp.status().as_u16())
    }

    /// `GET /readyz`: the status code, or an error if the node does not answer.
    pub async fn readyz(&self, id: u64) -> Result<u16> {
        let url = format!("{}/readyz", self.endpoint(id)?.base);
        let resp = self.http.get(&url).timeout(PROBE_TIMEOUT).send().await?;
        Ok(resp.status().as_u16())
    }

    /// `GET /v1/cluster` of node `id`.
    pub async fn status(&self, id: u64) -> Result<ClusterStatus> {
        let url = format!("{}/v1/cluster", self.endpoint(id)?.base);
        let resp = self
            .http
            .get(&url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("GET {url}"))?;
        ensure!(
            status.is_success(),
            "GET {url}: HTTP {status}: {}",
            clip(&body)
        );
        serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON: {}", clip(&body)))
    }

    /// One `POST /v1/notes` to node `id`, without retries.
    pub async fn post_note_once(&self, id: u64, text: &str) -> Result<NotePosted, PostError> {
        let transport = |detail: String| PostError {
            status: None,
            retryable: true,
            detail,
        };
        let ep = self.endpoint(id).map_err(|e| PostError {
            status: None,
            retryable: false,
            detail: e.to_string(),
        })?;
        // A node that has just started may not have written its token yet.
        let token = self
            .token(id)
            .map_err(|e| transport(format!("token: {e:#}")))?;
        let url = format!("{}/v1/notes", ep.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| transport(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| transport(format!("reading body: {}", describe_reqwest(&e))))?;
        match status {
            200 | 201 => serde_json::from_str(&body).map_err(|e| PostError {
                status: Some(status),
                retryable: false,
                detail: format!("bad JSON in 201 answer ({e}): {}", clip(&body)),
            }),
            401 => {
                self.forget_token(id);
                Err(PostError {
                    status: Some(status),
                    // Retryable once the token is re-read; callers bound the retries.
                    retryable: true,
                    detail: clip(&body),
                })
            }
            _ => Err(PostError {
                status: Some(status),
                retryable: status >= 500 || status == 429 || status == 408,
                detail: clip(&body),
            }),
        }
    }

    /// `POST /v1/notes` to node `id`, retrying retryable failures until `deadline` passes.
    /// Returns the acknowledgement and the number of attempts it took.
    pub async fn post_note(
        &self,
        id: u64,
        text: &str,
        deadline: Duration,
    ) -> Result<(NotePosted, u32)> {
        let end = Instant::now() + deadline;
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(20);
        loop {
            attempts += 1;
            match self.post_note_once(id, text).await {
                Ok(p) => return Ok((p, attempts)),
                Err(e) if !e.retryable => bail!("note to node {id} failed: {e}"),
                Err(e) if Instant::now() + backoff >= end => bail!(
                    "note to node {id} not committed after {attempts} attempts in {deadline:?}; last error: {e}"
                ),
                Err(_) => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// `POST /v1/notes` starting at node `ids[first % len]` and moving on to the next node
    /// after each retryable failure, until `deadline` passes. Returns the node that
    /// acknowledged, the acknowledgement and the number of attempts.
    pub async fn post_note_any(
        &self,
        first: usize,
        text: &str,
        deadline: Duration,
    ) -> Result<(u64, NotePosted, u32)> {
        let ids = self.ids();
        ensure!(!ids.is_empty(), "cluster has no nodes");
        let end = Instant::now() + deadline;
        let mut attempts = 0u32;
        let mut last;
        loop {
            let id = ids[(first + attempts as usize) % ids.len()];
            attempts += 1;
            match self.post_note_once(id, text).await {
                Ok(p) => return Ok((id, p, attempts)),
                Err(e) if !e.retryable => bail!("note to node {id} failed: {e}"),
                Err(e) => last = format!("node {id}: {e}"),
            }
            if Instant::now() >= end {
                bail!("note not committed after {attempts} attempts in {deadline:?}; last error: {last}");
            }
            // Back off only after a full round over every node failed.
            if (attempts as usize).is_multiple_of(ids.len()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// `GET path` on node `id` with its admin token; the 2xx body as JSON.
    pub async fn get_authed<T: serde::de::DeserializeOwned>(
        &self,
        id: u64,
        path: &str,
    ) -> Result<T> {
        let url = format!("{}{path}", self.endpoint(id)?.base);
        let token = self.token(id)?;
        let resp = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("GET {url}"))?;
        if status.as_u16() == 401 {
            self.forget_token(id);
        }
        ensure!(
            status.is_success(),
            "GET {url}: HTTP {status}: {}",
            clip(&body)
        );
        serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON: {}", clip(&body)))
    }

    /// `GET /v1/policy` on node `id`: the status and the answer.
    pub async fn policy(&self, id: u64) -> Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .get(format!("{}/v1/policy", self.base_url(id)?))
            .bearer_auth(self.token(id)?)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `PUT /v1/policy` to node `id` with `body` (`base_version`, `policy`,
    /// `reason`): the status and the answer.
    pub async fn put_policy(
        &self,
        id: u64,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .put(format!("{}/v1/policy", self.base_url(id)?))
            .bearer_auth(self.token(id)?)
            .json(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// One page of `GET /v1/events`.
    pub async fn events_page(
        &self,
        id: u64,
        after: u64,
        limit: u64,
        kind: Option<&str>,
    ) -> Result<EventsPage> {
        let mut path = format!("/v1/events?after={after}&limit={limit}");
        if let Some(k) = kind {
            path.push_str("&type=");
            path.push_str(k);
        }
        self.get_authed(id, &path).await
    }

    /// Every event of node `id` (optionally of one type), paging with `next`.
    /// Fails if paging does not advance or does not end within `timeout`.
    pub async fn events_all(
        &self,
        id: u64,
        kind: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Event>> {
        let end = Instant::now() + timeout;
        let mut out: Vec<Event> = Vec::new();
        let mut after = 0u64;
        loop {
            ensure!(
                Instant::now() < end,
                "paging through node {id}'s events did not finish in {timeout:?} ({} read, after={after})",
                out.len()
            );
            let page = self.events_page(id, after, MAX_PAGE, kind).await?;
            ensure!(
                page.events.len() as u64 <= MAX_PAGE,
                "node {id} returned {} events for limit={MAX_PAGE}",
                page.events.len()
            );
            for e in &page.events {
                ensure!(
                    e.seq > after,
                    "node {id}: event seq {} returned for after={after}",
                    e.seq
                );
            }
            out.extend(page.events);
            match page.next {
                None => return Ok(out),
                Some(n) => {
                    ensure!(
                        n > after,
                        "node {id}: events paging does not advance (after={after}, next={n})"
                    );
                    after = n;
                }
            }
        }
    }

    /// Up to [`MAX_PAGE`] events of node `id` about one message (its queue id, as in
    /// `250 … queued as ID`), oldest first: `GET /v1/events?message_id=`.
    pub async fn message_events(&self, id: u64, message_id: &str) -> Result<Vec<Event>> {
        ensure!(
            !message_id.is_empty() && message_id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "not a queue id: {message_id:?}"
        );
        let path = format!("/v1/events?message_id={message_id}&limit={MAX_PAGE}");
        Ok(self.get_authed::<EventsPage>(id, &path).await?.events)
    }

    /// `GET /v1/events/verify` of node `id`.
    pub async fn verify(&self, id: u64) -> Result<VerifyReport> {
        self.get_authed(id, "/v1/events/verify").await
    }
}

/// Checks that `events` (every type, in order) form one unbroken chain: consecutive
/// sequence numbers and each `prev_hash` equal to the previous event's `hash`.
pub fn check_chain(events: &[Event]) -> Result<()> {
    for w in events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        ensure!(
            b.seq == a.seq + 1,
            "gap in the event log: seq {} followed by {}",
            a.seq,
            b.seq
        );
        ensure!(
            b.prev_hash == a.hash,
            "chain broken at seq {}: prev_hash {} != hash {} of seq {}",
            b.seq,
            short(&b.prev_hash),
            short(&a.hash),
            a.seq
        );
    }
    Ok(())
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "transport"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The first 12 characters of a hash, for messages.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn clip(s: &str) -> String {
    const MAX: usize = 400;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::unix_ms;

    #[test]
    fn rfc3339_times_in_milliseconds() {
        assert_eq!(unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_ms("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(unix_ms("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(unix_ms("2000-02-29T12:00:00.000Z"), Some(951_825_600_000));
        assert_eq!(unix_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(
            unix_ms("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20.123",
            "2023-11-14T22:13:20.Z",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+01:00",
            "2023-11-14 22:13:20Z",
        ] {
            assert_eq!(unix_ms(bad), None, "{bad}");
        }
    }
}

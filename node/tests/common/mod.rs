//! Shared by the SMTP tests: a real `bulwark` process started from a generated config
//! on free loopback ports, a blocking line-level SMTP client, and readers for what
//! the node stored (events over HTTP, bodies from the stopped node's RocksDB).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bulwark_cluster_tests::dns::{DnsServer, Zone};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

pub struct Node {
    child: Option<Child>,
    _dns: Option<DnsServer>,
    dir: tempfile::TempDir,
    pub smtp: SocketAddr,
    pub api: String,
}

pub use bulwark_cluster_tests::ports::free as free_port;

/// A `[delivery]` section whose next hop refuses connections and whose first retry
/// is an hour away: accepted messages stay queued with their bodies, instead of the
/// embedded default's Maildir delivery removing them while a test reads them.
pub fn held_delivery() -> String {
    format!(
        "[delivery]\nrelay = \"127.0.0.1:{}\"\nretry_initial_secs = 3600\n",
        free_port()
    )
}

impl Node {
    /// Starts a single-node gateway whose `[smtp]` section is `listen` on a free port
    /// plus `smtp_extra` (TOML lines), and waits until it is ready. Delivery is held
    /// (see [`held_delivery`]) so that the stored bodies stay readable.
    pub fn start(smtp_extra: &str) -> Node {
        Self::start_with(smtp_extra, &held_delivery())
    }

    /// As [`Node::start`], with more TOML sections appended to the config. A port
    /// picked free and taken by someone else before the node bound it is picked again.
    pub fn start_with(smtp_extra: &str, more: &str) -> Node {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let mut node = Self::configure(smtp_extra, more);
            match node.spawn() {
                Ok(()) => return node,
                Err(log) if log.contains("Address already in use") && attempt < ATTEMPTS => {}
                Err(log) => panic!("the node exited while starting; log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn configure(smtp_extra: &str, more: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api = format!("127.0.0.1:{}", free_port());
        // Authentication asks DNS: a server on loopback that knows no names (every
        // lookup answered at once with NXDOMAIN), unless the test brings its own.
        let server = (!more.contains("[dns]"))
            .then(|| DnsServer::start(Zone::new()).expect("starting the test DNS"));
        let dns = server
            .as_ref()
            .map(|s| format!("[dns]\nnameservers = [\"{}\"]\n", s.addr()))
            .unwrap_or_default();
        let config = format!(
            "[node]\nid = 1\ndata_dir = \"data\"\n\n[api]\nlisten = \"{api}\"\n\n{dns}\n\
             [smtp]\nlisten = \"{smtp}\"\nhostname = \"mx.example.test\"\n{smtp_extra}\n{more}\n"
        );
        std::fs::write(dir.path().join("bulwark.toml"), config).unwrap();
        Node {
            child: None,
            _dns: server,
            dir,
            smtp,
            api: format!("http://{api}"),
        }
    }

    /// Starts the process and waits until it is ready; its log if it exits first.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("bulwark.toml"))
            .env("BULWARK_LOG", "info,bulwark=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bulwark");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("{}/readyz", self.api)) {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                self.child = None;
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node not ready in 30 s; log:\n{}", self.log());
    }

    /// The directory holding the config; certificates for tests go here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Waits until the cluster runs at this build's feature level (the leader raises
    /// a new cluster's just after it forms, after `/readyz`): before, what the last
    /// level brought is not proposed.
    pub fn wait_feature_level(&self) {
        self.wait_for_admin_get("/v1/cluster", "the cluster's feature level", |cluster| {
            cluster["cluster_feature_level"] == bulwark_model::feature::FEATURE_LEVEL
        });
    }

    /// Waits until the cluster has enrolled this node's admin token as its bootstrap
    /// admin (the leader proposes it just after it is elected, after `/readyz`): the
    /// console's sign-in with the token reads the replicated token, as its sessions do.
    pub fn wait_bootstrap_admin(&self) {
        self.wait_for_admin_get("/v1/tokens", "the bootstrap admin's enrollment", |listed| {
            listed["tokens"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "admin"))
        });
    }

    /// Polls `GET path` with the admin token until `ready` holds for its JSON, for at
    /// most 10 s; the assertion names `what` and shows the last answer and the log.
    fn wait_for_admin_get(&self, path: &str, what: &str, ready: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer: Option<Value> = Client::new()
                .get(format!("{}{path}", self.api))
                .bearer_auth(self.token())
                .send()
                .ok()
                .and_then(|r| r.json().ok());
            if answer.as_ref().is_some_and(&ready) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not there after 10 s (last answer {answer:?}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event of type `kind`, oldest first.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        let client = reqwest::blocking::Client::new();
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let page: Value = client
                .get(format!(
                    "{}/v1/events?type={kind}&after={after}&limit=1000",
                    self.api
                ))
                .bearer_auth(self.token())
                .send()
                .unwrap()
                .json()
                .unwrap();
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => return out,
            }
        }
    }

    /// Waits until at least `n` events of type `kind` are recorded (rejections are
    /// recorded off the reply path), and returns them.
    pub fn wait_events(&self, kind: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(kind);
            if events.len() >= n || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (at most `within`) for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node and returns the stored body of message `id` from its RocksDB.
    pub fn stop_and_read_body(&mut self, id: &str) -> Vec<u8> {
        if self.child.is_some() {
            self.terminate(Duration::from_secs(30));
        }
        let store = bulwark_storage::StateDir::open_offline(&self.data_dir()).unwrap();
        store
            .message_body(id.parse().unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("no body stored for {id}"))
    }

    /// Starts the stopped node again from the same config and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        if let Err(log) = self.spawn() {
            panic!("the node exited while restarting; log:\n{log}");
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reply: the code and every line's text after the code and separator.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The message id of `250 2.0.0 Ok: queued as ID`.
    pub fn queued_id(&self) -> String {
        assert_eq!(self.code, 250, "{self:?}");
        self.text()
            .rsplit(' ')
            .next()
            .expect("queued as ID")
            .to_string()
    }
}

/// A line-level SMTP client over a plain TCP socket, to say exactly what a test
/// needs, malformed or not.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr) -> Smtp {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Wraps a connected stream, without reading anything.
    pub fn from_stream(stream: TcpStream) -> Smtp {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Smtp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// A second handle on the socket, to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().unwrap()
    }

    /// Connects and checks the `220` greeting.
    pub fn connect(addr: SocketAddr) -> Smtp {
        let mut s = Self::connect_raw(addr);
        let greeting = s.read_reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        s
    }

    /// Connects, greets with EHLO and checks the reply.
    pub fn ehlo(addr: SocketAddr) -> Smtp {
        let mut s = Self::connect(addr);
        let r = s.cmd("EHLO client.test");
        assert_eq!(r.code, 250, "{r:?}");
        s
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends `line` with CRLF and reads one reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().expect("a reply")
    }

    /// One reply, or `None` when the server closed the connection first.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && lines.is_empty() => {
                    return None
                }
                Err(e) => panic!("reading a reply: {e} (after {lines:?})"),
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            let more = line.as_bytes()[3] == b'-';
            lines.push(line[4..].trim_end().to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// True when the server has closed the connection (EOF with nothing more).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// MAIL, RCPT each and DATA with `body` (CRLF lines, not dot-stuffed: this does it);
    /// returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.code, 250, "{r:?}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert_eq!(r.code, 250, "{r:?}");
        }
        let r = self.cmd("DATA");
        assert_eq!(r.code, 354, "{r:?}");
        let mut data = String::new();
        for line in body.split_inclusive("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
        }
        if !data.ends_with("\r\n") {
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.send(data.as_bytes());
        self.read_reply()
    }
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `type` of every event in `events`.
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

impl Node {
    /// Every event about message `id` (its queue id, as in `queued as ID`), oldest
    /// first.
    pub fn message_events(&self, id: &str) -> Vec<Value> {
        let page: Value = reqwest::blocking::Client::new()
            .get(format!("{}/v1/events?message_id={id}&limit=1000", self.api))
            .bearer_auth(self.token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let events = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events in {page}"));
        events.clone()
    }

    /// Waits (at most `within`) until the events about message `id` satisfy `done`,
    /// and returns them; panics saying `what` it waited for and what it saw.
    pub fn wait_message(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.message_events(id);
            if done(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "message {id}: no {what} within {within:?}; its events: {:?}\n{:#?}\n\
                     node log tail:\n{}",
                    types(&events),
                    events,
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until message `id` has at least `n` events of type `kind`; returns them.
    pub fn wait_message_event(
        &self,
        id: &str,
        kind: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Value> {
        let events = self.wait_message(id, within, &format!("{n} {kind}"), |events| {
            events.iter().filter(|e| e["type"] == kind).count() >= n
        });
        events.into_iter().filter(|e| e["type"] == kind).collect()
    }

    /// Stops the node and returns message `id`'s delivery queue entry, if it is still
    /// queued, and whether its body is still stored.
    pub fn stop_and_read_queue(&mut self, id: &str) -> (Option<bulwark_storage::QueueEntry>, bool) {
        if self.child.is_some() {
            self.terminate(Duration::from_secs(30));
        }
        let store = bulwark_storage::StateDir::open_offline(&self.data_dir()).unwrap();
        let id = id.parse().unwrap();
        (
            store.queue_entry(id).unwrap(),
            store.message_body(id).unwrap().is_some(),
        )
    }
}

impl Smtp {
    /// As [`Smtp::send_message`], with MAIL parameters (`"BODY=8BITMIME"`, `"SMTPUTF8"`).
    pub fn send_message_with(
        &mut self,
        from: &str,
        params: &str,
        to: &[&str],
        body: &str,
    ) -> Reply {
        let mail = if params.is_empty() {
            format!("MAIL FROM:<{from}>")
        } else {
            format!("MAIL FROM:<{from}> {params}")
        };
        let r = self.cmd(&mail);
        assert_eq!(r.code, 250, "{mail}: {r:?}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert_eq!(r.code, 250, "RCPT TO:<{rcpt}>: {r:?}");
        }
        let r = self.cmd("DATA");
        assert_eq!(r.code, 354, "{r:?}");
        let mut data = String::new();
        for line in body.split_inclusive("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
        }
        if !data.ends_with("\r\n") {
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.send(data.as_bytes());
        self.read_reply()
    }
}

/// The node's HTTP API with its admin token.
pub struct Api<'a> {
    node: &'a Node,
    pub client: Client,
    token: String,
}

impl<'a> Api<'a> {
    pub fn new(node: &'a Node) -> Self {
        Api {
            node,
            client: Client::new(),
            token: node.token(),
        }
    }

    /// The same API, called with `token` instead of the admin's.
    pub fn with_token(&self, token: &str) -> Api<'a> {
        Api {
            node: self.node,
            client: self.client.clone(),
            token: token.to_string(),
        }
    }

    /// Sends the request with the admin token; the status and the JSON body (a
    /// problem+json body for errors, checked to say so).
    pub fn send(&self, request: RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.token).send().unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = response.json().unwrap();
        if status >= 400 {
            assert_eq!(content_type, "application/problem+json", "{body}");
            assert_eq!(body["status"], status, "{body}");
        }
        (status, body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.node.api)))
    }

    pub fn post(&self, path: &str) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.node.api)))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.node.api)))
    }

    /// The ids of a listing's `items` (`path` with its query), and its `next` cursor.
    pub fn listed(&self, path: &str) -> (Vec<String>, Value) {
        let (status, page) = self.get(path);
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page["applied_index"].as_u64().unwrap() > 0, "{page}");
        let ids = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        (ids, page["next"].clone())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(body))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.put(self.url(path)).json(body))
    }

    /// The full URL of `path` on this node's API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.api)
    }

    /// `path` fetched with the admin token, as it came.
    pub fn get_raw(&self, path: &str) -> reqwest::blocking::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
    }
}

/// The text and HTML parts of a digest or portal-link message, decoded.
pub fn notice_parts(data: &[u8]) -> (String, String) {
    bulwark_cluster_tests::notice::parts(data)
        .unwrap_or_else(|| panic!("not a notice: {}", String::from_utf8_lossy(data)))
}

/// The links a notice's text part gives after `label: `, in order.
pub fn notice_links(text: &str, label: &str) -> Vec<String> {
    bulwark_cluster_tests::notice::links(text, label)
}

/// The local rule the console and quarantine tests hold mail with: a body saying
/// "fishy offer" scores 12, above the default quarantine threshold (10).
pub const FISHY_RULE: &str = "body LOCAL_FISHY /fishy offer/i\nscore LOCAL_FISHY 12.0\n";

/// A node judging with the rule file `rules` (`[scan] rules`), its `[smtp]` section
/// given `smtp_extra` and `more` appended to its config; the rule file's directory
/// lives as long as the returned guard.
pub fn with_rules(smtp_extra: &str, rules: &str, more: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.cf");
    std::fs::write(&path, rules).unwrap();
    let config = format!("{more}\n[scan]\nrules = [\"{}\"]\n", path.display());
    (Node::start_with(smtp_extra, &config), dir)
}

/// A `[delivery]` section relaying to `relay`, looking for work every 100 ms.
pub fn relay_to(relay: SocketAddr) -> String {
    format!("[delivery]\nrelay = \"{relay}\"\npoll_ms = 100\nretry_initial_secs = 1\n")
}

/// An HTTP client that follows no redirect and keeps no cookie: a test carries the
/// cookies by hand, so it sees every `Set-Cookie` and every redirect.
pub fn browser() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET path` with `cookie`.
pub fn get_page(node: &Node, cookie: &str, path: &str) -> reqwest::blocking::Response {
    browser()
        .get(format!("{}{path}", node.api))
        .header("cookie", cookie)
        .send()
        .unwrap()
}

/// Posts `fields` as a form to `path` with `cookie`.
pub fn post_form(
    node: &Node,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::blocking::Response {
    browser()
        .post(format!("{}{path}", node.api))
        .header("cookie", cookie)
        .form(fields)
        .send()
        .unwrap()
}

/// The hidden CSRF token of the first form on `page`.
pub fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf token")
        + 19;
    page[at..at + 32].to_string()
}

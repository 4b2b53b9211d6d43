#![forbid(unsafe_code)]
//! Multi-process cluster tests for Bulwark: a harness that runs the real `bulwark`
//! binary as separate processes, injects faults and checks invariants afterwards.
//!
//! What it owns: generating certificates and configs (through `bulwark cert`), spawning
//! nodes on free loopback ports in a temporary directory, killing (SIGKILL), stopping
//! (SIGTERM), restarting and wiping nodes, and talking to their HTTP API
//! ([`api::ApiClient`]). The tests in `tests/` and the benchmarks in `src/bin/` use it;
//! what only the benchmarks share (their flags, CPU sampling, figures) is in [`bench`].
//!
//! What it must never do: link the product crates. The product is tested from the
//! outside, as an operator runs it; the only private knowledge used is the documented
//! storage layout, by [`tamper`], to corrupt a stopped node's event log on purpose.
//!
//! Every wait is bounded by a deadline and fails with a message that says what it
//! waited for and what it saw last. When a [`Cluster`] is dropped without
//! [`Cluster::shutdown`] having succeeded (a failed or panicking test), it prints the
//! tail of every node's log, then kills every node.
//!
//! Clusters are heavy (three RocksDB-backed processes), so only one runs at a time on
//! a machine: [`ClusterBuilder::start`] takes an exclusive lock on
//! `$TMPDIR/bulwark-cluster-tests.lock` (set `BULWARK_CLUSTER_PARALLEL=1` to skip it).
//!
//! Environment: `BULWARK_BIN` (path of the binary; default: `bulwark` next to the
//! running executable's target profile dir), `BULWARK_KEEP_DIR=1` (keep the temporary
//! directory), `BULWARK_LOG_TAIL` (lines of each log printed on failure, default 80).

pub mod api;
pub mod bench;
pub mod disk;
pub mod dns;
pub mod load;
pub mod mta;
pub mod ports;
pub mod samples;
pub mod siem;
pub mod sink;
pub mod smtp;
pub mod tamper;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};

pub use api::{ApiClient, ClusterStatus, Event, NotePosted, VerifyReport};

/// How long a node may take from spawn to answering `/healthz`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful (SIGTERM) shutdown may take.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the machine-wide cluster lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(3600);
/// Polling interval of the wait loops.
const POLL: Duration = Duration::from_millis(50);

/// Optional `[raft]` settings.
#[derive(Debug, Clone, Default)]
pub struct RaftTuning {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub keep_logs: Option<u64>,
    pub commit_timeout_ms: Option<u64>,
}

/// Configures and starts a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    /// Nodes prepared but neither started nor members: to be added through the API.
    standby: usize,
    name: String,
    raft: Option<RaftTuning>,
    foreign: Vec<u64>,
    bin: Option<PathBuf>,
    smtp: Vec<(String, String)>,
    delivery: Vec<(String, String)>,
    scan: Vec<(String, String)>,
    /// TOML appended to every config as written (e.g. `[[siem.exporters]]` tables).
    extra: String,
    /// A backup every member is restored from (`bulwark restore`) before its first start.
    restore_from: Option<PathBuf>,
}

impl ClusterBuilder {
    /// A cluster of `nodes` nodes with ids `1..=nodes`.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            standby: 0,
            name: "cluster".into(),
            raft: None,
            foreign: Vec::new(),
            bin: None,
            smtp: Vec::new(),
            delivery: Vec::new(),
            scan: Vec::new(),
            extra: String::new(),
            restore_from: None,
        }
    }

    /// A new cluster from a backup: every member's empty data directory is seeded
    /// from `backup` with `bulwark restore` before its first start.
    pub fn restore_from(mut self, backup: &Path) -> Self {
        self.restore_from = Some(backup.to_path_buf());
        self
    }

    /// A name for the temporary directory and messages (e.g. the test's name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Prepares `n` more nodes (ids after the members', with certificates and
    /// configs naming the members and themselves as peers) that are not started and
    /// not members: start one with [`Cluster::restart`], then add it through the API.
    pub fn standby(mut self, n: usize) -> Self {
        self.standby = n;
        self
    }

    /// Writes a `[raft]` section into every node's config.
    pub fn raft(mut self, tuning: RaftTuning) -> Self {
        self.raft = Some(tuning);
        self
    }

    /// These nodes get a certificate and key from a second, unrelated CA. They still
    /// trust the cluster's real CA, so the only thing wrong with them is their identity.
    pub fn foreign_ca(mut self, ids: &[u64]) -> Self {
        self.foreign = ids.to_vec();
        self
    }

    /// Adds `key = value` (value written as TOML, e.g. `"5"` or `"\"reject\""`) to the
    /// `[smtp]` section of every config. The section always has `listen` on a free port.
    pub fn smtp(mut self, key: &str, value: &str) -> Self {
        self.smtp.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `key = value` (value written as TOML, e.g. `"6"` or `"\"127.0.0.1:2525\""`)
    /// to a `[delivery]` section of every config (e.g. `relay`, `concurrency`,
    /// `lease_secs`, `takeover_secs`, `poll_ms`). Without any, the configs have no
    /// `[delivery]` section and the nodes use their defaults (a Maildir in the data dir).
    pub fn delivery(mut self, key: &str, value: &str) -> Self {
        self.delivery.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `key = value` (written as TOML) to a `[scan]` section of every config.
    pub fn scan(mut self, key: &str, value: &str) -> Self {
        self.scan.push((key.to_string(), value.to_string()));
        self
    }

    /// Appends `text` (whole TOML tables, e.g. `[[siem.exporters]]`) to every config.
    pub fn toml(mut self, text: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(text);
        self
    }

    /// Sets `[delivery] relay` to `addr`: every node relays accepted mail there.
    pub fn relay(self, addr: SocketAddr) -> Self {
        self.delivery("relay", &toml_str(&addr.to_string()))
    }

    /// Use this `bulwark` binary instead of locating it.
    pub fn binary(mut self, bin: PathBuf) -> Self {
        self.bin = Some(bin);
        self
    }

    /// Generates certificates and configs, spawns every node and waits until each
    /// answers `/healthz`. Does not wait for a leader: see [`Cluster::wait_for_leader`].
    /// Ports are picked free and bound by the nodes a moment later; when another
    /// process took one meanwhile, the whole cluster is set up again on new ports.
    pub async fn start(self) -> Result<Cluster> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match self.clone().start_once().await {
                Err(e)
                    if attempt < ATTEMPTS
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    eprintln!(
                        "cluster {}: a port picked free was taken before a node bound it; \
                         starting again on new ports",
                        self.name
                    );
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_once(self) -> Result<Cluster> {
        ensure!(self.nodes >= 1, "a cluster needs at least one node");
        let bin = match self.bin {
            Some(b) => b,
            None => bulwark_bin()?,
        };
        ensure!(
            bin.is_file(),
            "bulwark binary not found at {} — build it first (`cargo build -p bulwark-node`, \
             add --release for the benchmark) or set BULWARK_BIN",
            bin.display()
        );
        let lock = acquire_lock(&self.name).await?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("bulwark-{}-", self.name))
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let root = dir.path().to_path_buf();

        // Certificates: the cluster CA and a certificate for every node; a foreign CA
        // and certificates for the nodes that should carry a foreign identity.
        let certs = root.join("certs");
        let foreign = root.join("foreign-certs");
        run_bin(&bin, &["cert", "ca", "--out"], &[&certs]).await?;
        let ids: Vec<u64> = (1..=(self.nodes + self.standby) as u64).collect();
        for id in &ids {
            node_cert(&bin, &certs, *id).await?;
        }
        for id in &self.foreign {
            ensure!(ids.contains(id), "foreign_ca: no node {id}");
        }
        if !self.foreign.is_empty() {
            run_bin(&bin, &["cert", "ca", "--out"], &[&foreign]).await?;
            for id in &self.foreign {
                node_cert(&bin, &foreign, *id).await?;
            }
        }

        let ports: Vec<u16> = (0..3 * ids.len()).map(|_| ports::free()).collect();
        let mut nodes = Vec::new();
        for (k, id) in ids.iter().copied().enumerate() {
            let dir = root.join(format!("n{id}"));
            let cert_dir = if self.foreign.contains(&id) {
                &foreign
            } else {
                &certs
            };
            let node = Node {
                id,
                data_dir: dir.join("data"),
                config_path: dir.join("bulwark.toml"),
                log_path: dir.join("node.log"),
                cluster_addr: loopback(ports[3 * k]),
                api_addr: loopback(ports[3 * k + 1]),
                smtp_addr: loopback(ports[3 * k + 2]),
                ca_path: certs.join("ca.pem"),
                cert_path: cert_dir.join(format!("node{id}.pem")),
                key_path: cert_dir.join(format!("node{id}.key")),
                foreign: self.foreign.contains(&id),
                child: None,
                starts: 0,
                dir,
            };
            std::fs::create_dir_all(&node.data_dir)
                .with_context(|| format!("creating {}", node.data_dir.display()))?;
            nodes.push(node);
        }
        let members = self.nodes;
        let peers_of = |node: &Node| -> Vec<(u64, SocketAddr)> {
            nodes
                .iter()
                .enumerate()
                .filter(|(k, n)| *k < members || n.id == node.id)
                .map(|(_, n)| (n.id, n.cluster_addr))
                .collect()
        };
        // Authentication asks DNS: a server on loopback that knows no names, so every
        // lookup is answered at once (NXDOMAIN) and nothing leaves the machine.
        let dns = dns::DnsServer::start(dns::Zone::new()).context("starting the test DNS")?;
        for n in &nodes {
            let config = n.config_toml(
                &peers_of(n),
                self.raft.as_ref(),
                &[
                    ("smtp", &self.smtp),
                    ("delivery", &self.delivery),
                    ("scan", &self.scan),
                ],
                dns.addr(),
            ) + &self.extra;
            std::fs::write(&n.config_path, config)
                .with_context(|| format!("writing {}", n.config_path.display()))?;
        }
        let api = ApiClient::new(
            nodes
                .iter()
                .map(|n| (n.id, n.api_url(), n.token_path()))
                .collect(),
        )?;
        let mut cluster = Cluster {
            name: self.name,
            bin,
            certs,
            foreign_certs: (!self.foreign.is_empty()).then_some(foreign),
            nodes,
            api,
            finished: false,
            dir: Some(dir),
            _dns: dns,
            _lock: lock,
        };
        if let Some(backup) = &self.restore_from {
            for n in cluster.nodes.iter().take(members) {
                run_bin(
                    &cluster.bin,
                    &["restore", "--config"],
                    &[&n.config_path, Path::new("--from"), backup],
                )
                .await?;
            }
        }
        for id in ids.iter().copied().take(members) {
            cluster.spawn(id)?;
        }
        for id in ids.into_iter().take(members) {
            cluster.wait_healthy(id, HEALTH_TIMEOUT).await?;
        }
        Ok(cluster)
    }
}

/// One node process of a [`Cluster`] and its files.
#[derive(Debug)]
pub struct Node {
    id: u64,
    dir: PathBuf,
    data_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    cluster_addr: SocketAddr,
    api_addr: SocketAddr,
    smtp_addr: SocketAddr,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    foreign: bool,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node's directory: config, log and data dir live in it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Base URL of the node's HTTP API, e.g. `http://127.0.0.1:41234`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The inter-node (Raft, mutual TLS) listen address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The node's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The CA the node trusts (always the cluster's real CA).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Whether this node carries a certificate from the foreign CA.
    pub fn is_foreign(&self) -> bool {
        self.foreign
    }

    /// Whether the harness started the process and has not stopped it.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// The admin bearer token the node wrote at startup.
    pub fn token(&self) -> Result<String> {
        let path = self.token_path();
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let t = t.trim().to_string();
        ensure!(!t.is_empty(), "{} is empty", path.display());
        Ok(t)
    }

    fn config_toml(
        &self,
        peers: &[(u64, SocketAddr)],
        raft: Option<&RaftTuning>,
        sections: &[(&str, &Vec<(String, String)>)],
        dns: SocketAddr,
    ) -> String {
        let mut s = String::new();
        let peers = peers
            .iter()
            .map(|(id, addr)| format!("\"{id}\" = {}", toml_str(&addr.to_string())))
            .collect::<Vec<_>>()
            .join(", ");
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "# Written by bulwark-cluster-tests.\n\
             [node]\nid = {id}\ndata_dir = {data}\n\n\
             [cluster]\nlisten = {listen}\npeers = {{ {peers} }}\nca = {ca}\ncert = {cert}\nkey = {key}\n\n\
             [api]\nlisten = {api}\n",
            id = self.id,
            data = toml_str(&self.data_dir.display().to_string()),
            listen = toml_str(&self.cluster_addr.to_string()),
            ca = toml_str(&self.ca_path.display().to_string()),
            cert = toml_str(&self.cert_path.display().to_string()),
            key = toml_str(&self.key_path.display().to_string()),
            api = toml_str(&self.api_addr.to_string()),
        );
        for (name, lines) in sections {
            // `[smtp]` is always there, with `listen` on a free port.
            if *name == "smtp" {
                let _ = write!(
                    s,
                    "\n[smtp]\nlisten = {}\n",
                    toml_str(&self.smtp_addr.to_string())
                );
            } else if !lines.is_empty() {
                let _ = write!(s, "\n[{name}]\n");
            }
            for (key, value) in lines.iter() {
                let _ = writeln!(s, "{key} = {value}");
            }
        }
        if let Some(r) = raft {
            s.push_str("\n[raft]\n");
            for (k, v) in [
                ("heartbeat_ms", r.heartbeat_ms),
                ("election_timeout_ms", r.election_timeout_ms),
                ("snapshot_every", r.snapshot_every),
                ("keep_logs", r.keep_logs),
                ("commit_timeout_ms", r.commit_timeout_ms),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(s, "{k} = {v}");
                }
            }
        }
        let _ = write!(s, "\n[dns]\nnameservers = [\"{dns}\"]\n");
        s
    }
}

/// The outcome of `bulwark audit verify --data-dir` on a stopped node.
#[derive(Debug)]
pub struct OfflineVerify {
    /// Process exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// The JSON report from stdout, if it parsed.
    pub report: Option<VerifyReport>,
    pub stdout: String,
    pub stderr: String,
}

/// A running multi-process cluster in a temporary directory.
pub struct Cluster {
    name: String,
    bin: PathBuf,
    certs: PathBuf,
    foreign_certs: Option<PathBuf>,
    nodes: Vec<Node>,
    api: ApiClient,
    finished: bool,
    dir: Option<tempfile::TempDir>,
    _dns: dns::DnsServer,
    _lock: Option<File>,
}

impl Cluster {
    /// Starts `n` nodes with default settings (see [`ClusterBuilder`]).
    pub async fn start(n: usize) -> Result<Self> {
        ClusterBuilder::new(n).start().await
    }

    /// The cluster's temporary directory.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    /// The `bulwark` binary in use.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// Directory with the cluster CA (`ca.pem`) and good node certificates (`nodeN.pem`
    /// for every node, including those started with a foreign identity).
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// Directory with the foreign CA and its node certificates, if any.
    pub fn foreign_certs_dir(&self) -> Option<&Path> {
        self.foreign_certs.as_deref()
    }

    /// Node ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id` (1-based). Panics on an unknown id: that is a bug in the test.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("cluster {} has no node {id}", self.name))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node> {
        let name = &self.name;
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("cluster {name} has no node {id}"))
    }

    /// Ids of the nodes the harness believes are running.
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Ids of every node except `id`.
    pub fn others(&self, id: u64) -> Vec<u64> {
        self.ids().into_iter().filter(|&i| i != id).collect()
    }

    /// A cloneable API handle (for concurrent writers).
    pub fn client(&self) -> ApiClient {
        self.api.clone()
    }

    /// The API handle.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// The admin token of node `id`.
    pub fn token(&self, id: u64) -> Result<String> {
        self.node(id).token()
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let bin = self.bin.clone();
        let node = self.node_mut(id)?;
        ensure!(node.child.is_none(), "node {id} is already running");
        node.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        writeln!(
            log,
            "==== bulwark-cluster-tests: start #{} of node {id} at {:?} ====",
            node.starts,
            SystemTime::now()
        )?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .spawn()
            .with_context(|| format!("spawning {} for node {id}", bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Fails (with the node's log) if a node the harness started has exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for n in &mut self.nodes {
            if let Some(child) = n.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    n.child = None;
                    dead.push((n.id, status));
                }
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        let mut msg = String::new();
        for (id, status) in dead {
            let _ = writeln!(
                msg,
                "node {id} exited unexpectedly ({status}); last log lines:\n{}",
                self.log_tail(id, log_tail_lines())
            );
        }
        bail!("{msg}")
    }

    /// Waits until node `id` answers `GET /healthz` with 200.
    pub async fn wait_healthy(&mut self, id: u64, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_alive()?;
            match self.api.healthz(id).await {
                Ok(200) => return Ok(()),
                Ok(s) => last = format!("HTTP {s}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= end {
                bail!(
                    "node {id} did not answer /healthz with 200 within {timeout:?} (last: {last}); log:\n{}",
                    self.log_tail(id, log_tail_lines())
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /v1/cluster` of node `id`.
    pub async fn cluster_status(&self, id: u64) -> Result<ClusterStatus> {
        self.api.status(id).await
    }

    /// Statuses of the given nodes; nodes that do not answer are left out, with why.
    pub async fn statuses(&self, ids: &[u64]) -> (BTreeMap<u64, ClusterStatus>, Vec<String>) {
        let futs = ids.iter().map(|&id| {
            let api = self.api.clone();
            async move { (id, api.status(id).await) }
        });
        let mut ok = BTreeMap::new();
        let mut errors = Vec::new();
        for (id, res) in futures_join_all(futs).await {
            match res {
                Ok(s) => {
                    ok.insert(id, s);
                }
                Err(e) => errors.push(format!("node {id}: {e:#}")),
            }
        }
        (ok, errors)
    }

    /// Waits until the running nodes agree on a leader: the leader reports itself as
    /// leader and a majority of the whole cluster (counting the leader) names it.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64> {
        self.wait_for_leader_excluding(None, timeout).await
    }

    /// Like [`Cluster::wait_for_leader`], but the leader must not be `old`. Returns the
    /// new leader and how long the wait took.
    pub async fn wait_for_new_leader(
        &mut self,
        old: u64,
        timeout: Duration,
    ) -> Result<(u64, Duration)> {
        let t0 = Instant::now();
        let l = self.wait_for_leader_excluding(Some(old), timeout).await?;
        Ok((l, t0.elapsed()))
    }

    async fn wait_for_leader_excluding(
        &mut self,
        exclude: Option<u64>,
        timeout: Duration,
    ) -> Result<u64> {
        let end = Instant::now() + timeout;
        let mut majority = self.nodes.len() / 2 + 1;
        loop {
            self.check_alive()?;
            let running = self.running_ids();
            let (st, errors) = self.statuses(&running).await;
            for (&id, s) in &st {
                if s.leader_id != Some(id) || Some(id) == exclude {
                    continue;
                }
                // A majority of the voters the leader knows (members change through
                // the API), else of the nodes the harness made.
                let voters = s.members.iter().filter(|m| m.voter).count();
                if voters > 0 {
                    majority = voters / 2 + 1;
                }
                let votes = st.values().filter(|o| o.leader_id == Some(id)).count();
                if votes >= majority {
                    return Ok(id);
                }
            }
            if Instant::now() >= end {
                bail!(
                    "no leader{} agreed by {majority} nodes within {timeout:?}; last statuses:\n{}",
                    exclude
                        .map(|x| format!(" other than {x}"))
                        .unwrap_or_default(),
                    describe(&st, &errors)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the given nodes have applied everything they know is committed and
    /// agree on applied index, chain head and event count. Returns one of the statuses.
    pub async fn wait_converged(
        &mut self,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<ClusterStatus> {
        ensure!(!ids.is_empty(), "wait_converged needs at least one node");
        let end = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let (st, errors) = self.statuses(ids).await;
            if errors.is_empty() && st.len() == ids.len() {
                let first = st.values().next().expect("non-empty");
                let same = st.values().all(|s| {
                    s.applied_index == first.applied_index
                        && s.commit_index == s.applied_index
                        && s.chain_head == first.chain_head
                        && s.event_count == first.event_count
                });
                if same && first.leader_id.is_some() {
                    return Ok(first.clone());
                }
            }
            if Instant::now() >= end {
                let odd: String = st
                    .values()
                    .filter(|s| s.applied_index > s.commit_index)
                    .map(|s| {
                        format!(
                            "\n  node {} reports applied_index {} > commit_index {}: \
                             a node cannot apply what is not committed (status reporting bug?)",
                            s.node_id, s.applied_index, s.commit_index
                        )
                    })
                    .collect();
                bail!(
                    "nodes {ids:?} did not converge within {timeout:?}; last statuses:\n{}{odd}",
                    describe(&st, &errors)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `POST /v1/notes` to node `id`, retrying 503s and connection errors for up to 30 s.
    pub async fn post_note(&self, id: u64, text: &str) -> Result<NotePosted> {
        Ok(self
            .api
            .post_note(id, text, Duration::from_secs(30))
            .await?
            .0)
    }

    /// Every event of node `id` (all types), paging through `/v1/events`.
    pub async fn events_all(&self, id: u64) -> Result<Vec<Event>> {
        self.api
            .events_all(id, None, Duration::from_secs(300))
            .await
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        child
            .kill()
            .with_context(|| format!("SIGKILL to node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        Ok(())
    }

    /// SIGTERM node `id` and wait (bounded) for it to exit; SIGKILL if it does not.
    /// Returns its exit status; errors if it did not exit in time.
    pub async fn terminate(&mut self, id: u64) -> Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("SIGTERM to node {id}"))?;
        let end = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "node {id} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM (killed it); log:\n{}",
                    self.log_tail(id, log_tail_lines())
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded) for node `id` to exit on its own and returns its status.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            let node = self.node_mut(id)?;
            let child = node
                .child
                .as_mut()
                .with_context(|| format!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            ensure!(
                Instant::now() < end,
                "node {id} still running {timeout:?} later; log:\n{}",
                self.log_tail(id, log_tail_lines())
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until node `id` answers `/readyz` with 200 and has applied everything the
    /// leader had committed when the wait began.
    pub async fn wait_caught_up(&mut self, id: u64, timeout: Duration) -> Result<()> {
        let leader = self.wait_for_leader(timeout).await?;
        let target = self.cluster_status(leader).await?.commit_index;
        let end = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let applied = self.api.status(id).await.map_or(0, |s| s.applied_index);
            let ready = self.api.readyz(id).await.ok() == Some(200);
            if ready && applied >= target {
                return Ok(());
            }
            ensure!(
                Instant::now() < end,
                "node {id} not caught up within {timeout:?}: applied {applied} of {target}, \
                 ready {ready}; log:\n{}",
                self.log_tail(id, log_tail_lines())
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts a stopped node again with the same config and waits for `/healthz`.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.api.forget_token(id);
        self.spawn(id)?;
        self.wait_healthy(id, HEALTH_TIMEOUT).await
    }

    /// Deletes a stopped node's data directory (and leaves an empty one in its place).
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        ensure!(node.child.is_none(), "wipe: node {id} is still running");
        std::fs::remove_dir_all(&node.data_dir)
            .with_context(|| format!("removing {}", node.data_dir.display()))?;
        std::fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("creating {}", node.data_dir.display()))?;
        self.api.forget_token(id);
        Ok(())
    }

    /// Runs `bulwark audit verify --data-dir` on a stopped node's data directory.
    pub async fn audit_verify_offline(&self, id: u64) -> Result<OfflineVerify> {
        let node = self.node(id);
        ensure!(
            !node.is_running(),
            "audit verify: node {id} must be stopped first"
        );
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("audit")
            .arg("verify")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .context("`bulwark audit verify` did not finish within 120 s")?
            .context("running `bulwark audit verify`")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = parse_last_json(&stdout);
        Ok(OfflineVerify {
            code: out.status.code(),
            report,
            stdout,
            stderr,
        })
    }

    /// The last `lines` lines of node `id`'s log (reads at most the last 256 KiB).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let path = &self.node(id).log_path;
        match tail_file(path, lines) {
            Ok(s) => s,
            Err(e) => format!("(cannot read {}: {e:#})", path.display()),
        }
    }

    /// Prints the tail of every node's log to stderr.
    pub fn dump_logs(&self) {
        let lines = log_tail_lines();
        for n in &self.nodes {
            eprintln!(
                "----- cluster {} node {} log ({}), last {lines} lines -----\n{}",
                self.name,
                n.id,
                n.log_path.display(),
                self.log_tail(n.id, lines)
            );
        }
    }

    /// Stops every running node with SIGTERM (bounded) and marks the run as successful,
    /// so no logs are printed on drop. Fails if a node does not exit in time.
    pub async fn shutdown(mut self) -> Result<()> {
        self.check_alive()?;
        let mut errors = Vec::new();
        for id in self.running_ids() {
            match self.terminate(id).await {
                Ok(status) if !status.success() => {
                    eprintln!("note: node {id} exited with {status} after SIGTERM")
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        ensure!(errors.is_empty(), "shutdown failed:\n{}", errors.join("\n"));
        self.finished = true;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.finished || std::thread::panicking() {
            eprintln!(
                "cluster {} did not finish cleanly; node logs follow",
                self.name
            );
            self.dump_logs();
        }
        if std::env::var_os("BULWARK_KEEP_DIR").is_some_and(|v| v != "0") {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping cluster directory {}", dir.keep().display());
            }
        }
    }
}

/// The `bulwark` binary: `$BULWARK_BIN`, else `bulwark` in the target profile directory
/// of the running executable (`<target>/<profile>/deps/test-…` or `<target>/<profile>/bench_raft`).
pub fn bulwark_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BULWARK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .with_context(|| format!("{} has no parent", dir.display()))?;
    }
    Ok(dir.join("bulwark"))
}

fn describe(st: &BTreeMap<u64, ClusterStatus>, errors: &[String]) -> String {
    let mut s = String::new();
    for v in st.values() {
        let _ = writeln!(s, "  {}", v.summary());
    }
    for e in errors {
        let _ = writeln!(s, "  {e}");
    }
    s
}

async fn futures_join_all<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("status task panicked"));
    }
    out
}

async fn node_cert(bin: &Path, dir: &Path, id: u64) -> Result<()> {
    let id = id.to_string();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["cert", "node", "--ca"])
        .arg(dir)
        .args(["--id", &id, "--san", "127.0.0.1,localhost", "--out"])
        .arg(dir);
    run(cmd).await
}

async fn run_bin(bin: &Path, args: &[&str], paths: &[&Path]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    run(cmd).await
}

async fn run(mut cmd: tokio::process::Command) -> Result<()> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("{shown} did not finish within 60 s"))?
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Finds the JSON object printed on stdout (the whole output, or its last `{` line).
fn parse_last_json(stdout: &str) -> Option<VerifyReport> {
    if let Ok(r) = serde_json::from_str(stdout.trim()) {
        return Some(r);
    }
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}


fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn log_tail_lines() -> usize {
    std::env::var("BULWARK_LOG_TAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80)
}

fn tail_file(path: &Path, lines: usize) -> Result<String> {
    const MAX: u64 = 256 * 1024;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

async fn acquire_lock(name: &str) -> Result<Option<File>> {
    if std::env::var_os("BULWARK_CLUSTER_PARALLEL").is_some_and(|v| v != "0") {
        return Ok(None);
    }
    let path = std::env::temp_dir().join("bulwark-cluster-tests.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let t0 = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        if !announced {
            eprintln!(
                "{name}: waiting for another cluster to finish ({})",
                path.display()
            );
            announced = true;
        }
        ensure!(
            t0.elapsed() < LOCK_TIMEOUT,
            "{name}: {} still locked after {LOCK_TIMEOUT:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

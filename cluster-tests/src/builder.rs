//! Starting a cluster: certificates, configs and processes for `n` nodes, with the
//! settings a test asks for, under the machine-wide cluster lock.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::*;

/// How long to wait for the machine-wide cluster lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

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
    /// Environment variables of one node's process: (node, name, value).
    env: Vec<(u64, String, String)>,
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
            env: Vec::new(),
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

    /// These nodes get a certificate, a key and a CA of a second, unrelated one: an
    /// impostor whose own identity holds together (a node whose certificate its
    /// configured CA did not sign refuses to start), so what is tested is that the
    /// cluster turns it away.
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

    /// Sets the environment variable `name` to `value` in node `id`'s process (each
    /// start), e.g. `BULWARK_TEST_CLOCK_OFFSET_MS` to run its clock off.
    pub fn node_env(mut self, id: u64, name: &str, value: &str) -> Self {
        self.env.push((id, name.to_string(), value.to_string()));
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

    pub(crate) async fn start_once(self) -> Result<Cluster> {
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
        for (id, name, _) in &self.env {
            ensure!(ids.contains(id), "node_env {name}: no node {id}");
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
                // A foreign node is an impostor with an identity of its own that
                // holds together (its CA and its certificate): a certificate the
                // node's own CA did not sign is refused at start instead.
                ca_path: cert_dir.join("ca.pem"),
                cert_path: cert_dir.join(format!("node{id}.pem")),
                key_path: cert_dir.join(format!("node{id}.key")),
                foreign: self.foreign.contains(&id),
                env: self
                    .env
                    .iter()
                    .filter(|(n, _, _)| *n == id)
                    .map(|(_, name, value)| (name.clone(), value.clone()))
                    .collect(),
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

pub(crate) async fn node_cert(bin: &Path, dir: &Path, id: u64) -> Result<()> {
    let id = id.to_string();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["cert", "node", "--ca"])
        .arg(dir)
        .args(["--id", &id, "--san", "127.0.0.1,localhost", "--out"])
        .arg(dir);
    run(cmd).await
}

pub(crate) async fn run_bin(bin: &Path, args: &[&str], paths: &[&Path]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    run(cmd).await
}

pub(crate) async fn run(mut cmd: tokio::process::Command) -> Result<()> {
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

pub(crate) fn toml_str(s: &str) -> String {
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

pub(crate) async fn acquire_lock(name: &str) -> Result<Option<File>> {
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

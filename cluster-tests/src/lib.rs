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
mod builder;
pub mod compose;
pub mod disk;
pub mod dns;
pub mod files;
pub mod load;
pub mod mta;
mod node;
pub mod notice;
pub mod ports;
pub mod release;
pub mod samples;
pub mod siem;
pub mod sink;
pub mod smtp;
pub mod tamper;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};

pub use api::{ApiClient, ClusterStatus, Event, NotePosted, VerifyReport};
use builder::toml_str;
pub use builder::{ClusterBuilder, RaftTuning};
use node::{log_tail_lines, parse_last_json, tail_file};
pub use node::{Node, OfflineVerify};

/// How long a node may take from spawn to answering `/healthz`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful (SIGTERM) shutdown may take.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling interval of the wait loops.
const POLL: Duration = Duration::from_millis(50);

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
            .envs(node.env.iter().map(|(k, v)| (k, v)))
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
                // A node that knows the leader but not yet the membership (its first
                // entries not replicated to it) still greets SMTP with 421.
                let votes = st
                    .values()
                    .filter(|o| o.leader_id == Some(id) && !o.members.is_empty())
                    .count();
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

    /// SIGSTOP (`stop`) or SIGCONT node `id`: a process paused as `docker pause` or a
    /// frozen VM pauses it, its monotonic clock running on.
    pub fn pause(&mut self, id: u64, stop: bool) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = node
            .child
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?;
        let pid = rustix::process::Pid::from_child(child);
        let signal = if stop {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("{signal:?} to node {id}"))?;
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

    /// Sets (`Some`) or removes (`None`) the environment variable `name` of node
    /// `id`'s process from its next start on (e.g. `BULWARK_TEST_FEATURE_LEVEL`, to
    /// restart it as a node of another release).
    pub fn set_node_env(&mut self, id: u64, name: &str, value: Option<&str>) -> Result<()> {
        let node = self.node_mut(id)?;
        node.env.retain(|(k, _)| k != name);
        if let Some(value) = value {
            node.env.push((name.to_string(), value.to_string()));
        }
        Ok(())
    }

    /// Starts a stopped node again without waiting for it (see [`Cluster::wait_exit`]
    /// for one expected to stop on its own).
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        self.api.forget_token(id);
        self.spawn(id)
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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

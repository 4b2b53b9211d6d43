//! One node of a cluster: its process, directories, ports and log, and what can be
//! done to it (kill, stop, restart, wipe, read offline).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{ensure, Context, Result};

use crate::*;

/// One node process of a [`Cluster`] and its files.
#[derive(Debug)]
pub struct Node {
    pub(crate) id: u64,
    pub(crate) dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) log_path: PathBuf,
    pub(crate) cluster_addr: SocketAddr,
    pub(crate) api_addr: SocketAddr,
    pub(crate) smtp_addr: SocketAddr,
    pub(crate) ca_path: PathBuf,
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) foreign: bool,
    /// Environment variables of this node's process beyond the harness's own.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) child: Option<Child>,
    pub(crate) starts: u32,
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

    pub(crate) fn token_path(&self) -> PathBuf {
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

    pub(crate) fn config_toml(
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

/// Finds the JSON object printed on stdout (the whole output, or its last `{` line).
pub(crate) fn parse_last_json(stdout: &str) -> Option<VerifyReport> {
    if let Ok(r) = serde_json::from_str(stdout.trim()) {
        return Some(r);
    }
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

pub(crate) fn log_tail_lines() -> usize {
    std::env::var("BULWARK_LOG_TAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80)
}

pub(crate) fn tail_file(path: &Path, lines: usize) -> Result<String> {
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

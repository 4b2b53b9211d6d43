//! The `[cluster]` and `[raft]` sections: this node's peers and their TLS, and Raft's
//! timings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulwark_consensus::{PeerConfig, RaftSettings};
use serde::Deserialize;

use super::{parse_addr, relative_to};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// Address for Raft traffic from the other nodes (mutual TLS).
    listen: Option<String>,
    /// Every voter by node id, this node included: `{ 1 = "host:port", ... }`.
    peers: Option<BTreeMap<String, String>>,
    /// Cluster CA certificate (PEM); relative paths are relative to the config file.
    ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRaft {
    /// Leader heartbeat in milliseconds (also the replication RPC timeout).
    heartbeat_ms: Option<u64>,
    /// Base election timeout in milliseconds; at least 4 heartbeats.
    election_timeout_ms: Option<u64>,
    /// Take a snapshot after this many log entries.
    snapshot_every: Option<u64>,
    /// Also take one after this many bytes of log entries (message bodies included).
    snapshot_log_bytes: Option<u64>,
    /// Log entries kept after a snapshot for followers that lag a little.
    keep_logs: Option<u64>,
    /// How long a write waits for a quorum before the client is told to retry.
    commit_timeout_ms: Option<u64>,
}

pub(super) fn validate_cluster(
    c: RawCluster,
    id: u64,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<PeerConfig> {
    let start = problems.len();
    let listen = c.listen.unwrap_or_default();
    if listen.is_empty() {
        problems.push("cluster.listen is required".into());
    } else {
        parse_addr("cluster.listen", &listen, problems);
    }
    let mut peers = BTreeMap::new();
    for (key, addr) in c.peers.unwrap_or_default() {
        match key.parse::<u64>() {
            Ok(peer) if peer > 0 => {
                if !addr.contains(':') {
                    problems.push(format!("cluster.peers.{key}: {addr:?} is not host:port"));
                }
                peers.insert(peer, addr);
            }
            _ => problems.push(format!(
                "cluster.peers: key {key:?} is not a positive node id"
            )),
        }
    }
    if peers.is_empty() {
        problems.push("cluster.peers must list every node, this one included".into());
    } else if !peers.contains_key(&id) {
        problems.push(format!(
            "cluster.peers does not list this node (node.id = {id})"
        ));
    }
    let mut file = |name: &str, value: Option<PathBuf>| -> PathBuf {
        let Some(path) = value else {
            problems.push(format!("cluster.{name} is required"));
            return PathBuf::new();
        };
        let path = relative_to(base, path);
        if !path.is_file() {
            problems.push(format!(
                "cluster.{name}: {} is not a readable file",
                path.display()
            ));
        }
        path
    };
    let ca = file("ca", c.ca);
    let cert = file("cert", c.cert);
    let key = file("key", c.key);
    (problems.len() == start).then_some(PeerConfig {
        listen,
        peers,
        ca,
        cert,
        key,
    })
}

/// The `[raft]` section: Raft's timings and snapshot policy, consensus' defaults for
/// what is not set.
pub(super) fn validate_raft(raft: Option<RawRaft>, problems: &mut Vec<String>) -> RaftSettings {
    let defaults = RaftSettings::default();
    let r = raft.unwrap_or(RawRaft {
        heartbeat_ms: None,
        election_timeout_ms: None,
        snapshot_every: None,
        snapshot_log_bytes: None,
        keep_logs: None,
        commit_timeout_ms: None,
    });
    let raft = RaftSettings {
        heartbeat_ms: r.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
        election_timeout_ms: r
            .election_timeout_ms
            .unwrap_or(defaults.election_timeout_ms),
        snapshot_every: r.snapshot_every.unwrap_or(defaults.snapshot_every),
        snapshot_log_bytes: r.snapshot_log_bytes.unwrap_or(defaults.snapshot_log_bytes),
        keep_logs: r.keep_logs.unwrap_or(defaults.keep_logs),
        commit_timeout_ms: r.commit_timeout_ms.unwrap_or(defaults.commit_timeout_ms),
    };
    if raft.heartbeat_ms < 10 {
        problems.push("raft.heartbeat_ms must be at least 10".into());
    }
    if raft.election_timeout_ms < 4 * raft.heartbeat_ms {
        problems.push(format!(
            "raft.election_timeout_ms ({}) must be at least 4 x raft.heartbeat_ms ({})",
            raft.election_timeout_ms, raft.heartbeat_ms
        ));
    }
    if raft.snapshot_every == 0 {
        problems.push("raft.snapshot_every must be positive".into());
    }
    if raft.snapshot_log_bytes < 1024 * 1024 {
        problems.push("raft.snapshot_log_bytes must be at least 1 MiB".into());
    }
    if raft.commit_timeout_ms < 100 {
        problems.push("raft.commit_timeout_ms must be at least 100".into());
    }
    raft
}

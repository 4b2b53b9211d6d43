//! The TOML configuration: parsed strictly, then validated with every problem
//! reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bulwark_consensus::{NodeConfig, PeerConfig, RaftSettings};
use serde::Deserialize;

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Option<RawNode>,
    cluster: Option<RawCluster>,
    api: Option<RawApi>,
    raft: Option<RawRaft>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    id: Option<u64>,
    /// Where the node keeps its data. Like every relative path in a config file, it
    /// is relative to the file's own directory.
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
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
struct RawApi {
    /// Address of the HTTP API.
    listen: Option<String>,
    /// File holding the admin bearer token, relative to data_dir; created at first start.
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    /// Leader heartbeat in milliseconds (also the replication RPC timeout).
    heartbeat_ms: Option<u64>,
    /// Base election timeout in milliseconds; at least 4 heartbeats.
    election_timeout_ms: Option<u64>,
    /// Take a snapshot after this many log entries.
    snapshot_every: Option<u64>,
    /// Log entries kept after a snapshot for followers that lag a little.
    keep_logs: Option<u64>,
    /// How long a write waits for a quorum before the client is told to retry.
    commit_timeout_ms: Option<u64>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub api_listen: SocketAddr,
    pub admin_token_file: PathBuf,
}

impl Config {
    /// The embedded default: a single-node cluster in `./bulwark-data`.
    pub fn embedded() -> Config {
        Self::validate(Raw::default(), Path::new(".")).expect("the embedded default is valid")
    }

    /// Reads and validates `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let raw: Raw =
            toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(raw, base)
    }

    fn validate(raw: Raw, base: &Path) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let node = raw.node.unwrap_or(RawNode {
            id: None,
            data_dir: None,
        });
        let id = node.id.unwrap_or(1);
        if id == 0 {
            problems.push("node.id must be a positive integer".to_string());
        }
        let data_dir = relative_to(
            base,
            node.data_dir
                .unwrap_or_else(|| PathBuf::from("bulwark-data")),
        );

        let cluster = raw
            .cluster
            .map(|c| validate_cluster(c, id, base, &mut problems));

        let api = raw.api.unwrap_or(RawApi {
            listen: None,
            admin_token_file: None,
        });
        let api_listen = parse_addr(
            "api.listen",
            api.listen.as_deref().unwrap_or("127.0.0.1:8080"),
            &mut problems,
        );
        let admin_token_file =
            data_dir.join(api.admin_token_file.unwrap_or_else(|| "admin.token".into()));

        let defaults = RaftSettings::default();
        let r = raw.raft.unwrap_or(RawRaft {
            heartbeat_ms: None,
            election_timeout_ms: None,
            snapshot_every: None,
            keep_logs: None,
            commit_timeout_ms: None,
        });
        let raft = RaftSettings {
            heartbeat_ms: r.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
            election_timeout_ms: r
                .election_timeout_ms
                .unwrap_or(defaults.election_timeout_ms),
            snapshot_every: r.snapshot_every.unwrap_or(defaults.snapshot_every),
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
        if raft.commit_timeout_ms < 100 {
            problems.push("raft.commit_timeout_ms must be at least 100".into());
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            node: NodeConfig {
                id,
                data_dir,
                cluster: cluster.flatten(),
                raft,
            },
            api_listen: api_listen.expect("checked above"),
            admin_token_file,
        })
    }
}

fn relative_to(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() && base != Path::new(".") && base != Path::new("") {
        base.join(path)
    } else {
        path
    }
}

fn parse_addr(field: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(e) => {
            problems.push(format!(
                "{field}: {value:?} is not an address (host:port): {e}"
            ));
            None
        }
    }
}

fn validate_cluster(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn embedded_default_is_single_node() {
        let c = Config::embedded();
        assert_eq!(c.node.id, 1);
        assert!(c.node.cluster.is_none());
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.admin_token_file,
            PathBuf::from("bulwark-data/admin.token")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = parse(
            r#"
            [node]
            id = 0
            [api]
            listen = "nowhere"
            [cluster]
            peers = { "x" = "127.0.0.1:1", "2" = "127.0.0.1:2" }
            ca = "missing-ca.pem"
            [raft]
            heartbeat_ms = 500
            election_timeout_ms = 1000
            "#,
        )
        .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "node.id must be a positive integer",
            "api.listen",
            "cluster.listen is required",
            "key \"x\" is not a positive node id",
            "does not list this node",
            "cluster.ca",
            "cluster.cert is required",
            "cluster.key is required",
            "election_timeout_ms (1000) must be at least 4 x",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let problems = parse("[node]\nid = 1\ncolour = \"red\"\n").unwrap_err();
        assert!(
            problems[0].contains("unknown field `colour`"),
            "{problems:?}"
        );
    }
}

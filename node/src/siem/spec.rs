//! An exporter as the cluster's policy holds it (`exporters`, seeded from the first
//! node's `[[siem.exporters]]`): every setting but the secrets. Those stay out of the
//! policy and its log, in files every node has (`token_file`, `secret_file`, the TLS
//! files, each named relative to the node's configuration file, so each node reads
//! its own), or inline in a node's own `[[siem.exporters]]` of the same name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Exporter;

/// One exporter's settings, as `[[siem.exporters]]` and the policy write them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Unique; the replicated cursor is kept under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `syslog`, `hec` or `webhook`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// syslog: the receiver's `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// syslog: `tcp` (default; a batch counts once the receiver closes the
    /// connection after it) or `relp` (each message acknowledged by the receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// syslog: `json` (default) or `cef`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// syslog: RFC 5425 TLS (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Extra trust anchors (PEM) besides the web PKI roots, for syslog TLS and https.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// syslog TLS: the name the receiver's certificate must carry (default: the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
    /// syslog TLS: our client certificate (PEM) and key, for receivers that ask for
    /// one (mutual TLS, RFC 5425 section 5.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// syslog: RFC 5424 facility number (default 13, log audit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facility: Option<u8>,
    /// hec: the collector's base URL; webhook: the URL to POST to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// hec: the HEC token, or a file holding it. Inline, only in a node's own
    /// `[[siem.exporters]]`: the policy refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// hec: wait for indexer acknowledgement (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<bool>,
    /// hec: seconds to wait for it (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_secs: Option<u64>,
    /// hec: posts of one unacknowledged batch after the first (default 2, at most 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_resends: Option<u32>,
    /// hec: index and sourcetype of the events (default: the token's index;
    /// `bulwark:event`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sourcetype: Option<String>,
    /// webhook: the HMAC key, or a file holding it; at least 16 bytes. Inline, only
    /// in a node's own `[[siem.exporters]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Event types to ship (`scan.verdict`, `delivery.*`); default: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Actions to ship (`reject`, `quarantine`, ...); default: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// Events per batch (default 500, at most 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Seconds a connection or request may take (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Longest pause between tries while the receiver fails, in seconds (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_max_secs: Option<u64>,
    /// Milliseconds between looks at the log when there is nothing new (default 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_ms: Option<u64>,
    /// Refusals of one batch (HTTP 4xx about the batch, RELP 500) after which it is
    /// recorded as `siem.dead_letter` and skipped (default 5, 1 to 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_after: Option<u32>,
}

/// What this node gives the cluster's exporters: where their files are, and the
/// secrets its own `[[siem.exporters]]` write inline.
#[derive(Clone, Debug, Default)]
pub struct Local {
    /// The directory of the node's configuration file; the files an exporter names
    /// are relative to it.
    pub base: PathBuf,
    /// HEC tokens given inline, by exporter name.
    pub tokens: BTreeMap<String, Vec<u8>>,
    /// Webhook secrets given inline, by exporter name.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The files the node's own `[[siem.exporters]]` name, as written: the policy
    /// may name these wherever they are.
    pub named: BTreeSet<PathBuf>,
}

impl Local {
    /// Whether the policy may have this node read `path` for an exporter: a file in
    /// the config's directory (relative, without `..`), or one the node's own file
    /// names. A policy changed over the API cannot make a node send its other
    /// files (a key, `/etc/shadow`) to a receiver as a token.
    pub fn may_read(&self, path: &Path) -> bool {
        let inside = path.is_relative()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        inside || self.named.contains(path)
    }
}

/// The exporters of the policy this node judges by.
#[derive(Debug, Default)]
pub struct Exporters {
    /// Every exporter the policy names, whether or not it can start here: their
    /// cursors hold the event retention back.
    pub names: Vec<String>,
    /// Those that start on this node (the others' problems were logged).
    pub ready: Vec<Exporter>,
}

/// The exporters a node's `[[siem.exporters]]` write, their inline secrets taken
/// out into `local`.
pub fn seed(written: Vec<Spec>, local: &mut Local) -> Vec<Spec> {
    written
        .into_iter()
        .map(|mut spec| {
            let name = spec.name.clone().unwrap_or_default();
            let files = [
                &spec.tls_ca,
                &spec.tls_cert,
                &spec.tls_key,
                &spec.token_file,
                &spec.secret_file,
            ];
            local.named.extend(files.into_iter().flatten().cloned());
            if let Some(token) = spec.token.take() {
                local.tokens.insert(name.clone(), token.into_bytes());
            }
            if let Some(secret) = spec.secret.take() {
                local.secrets.insert(name, secret.into_bytes());
            }
            spec
        })
        .collect()
}

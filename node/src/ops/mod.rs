//! Operations on a node from its own machine: `bulwark backup` and `bulwark ready`
//! ask the running node over its API (as the admin, with the token file its config
//! names), `bulwark restore` seeds a stopped node's empty data directory from a
//! backup; without a config, each works on the embedded default, as `bulwark serve`
//! without one runs it. From anywhere, over any node's API ([`remote`]): `bulwark
//! audit bundle`, the cluster's policy ([`policy`]), the quarantine ([`quarantine`]),
//! the delivery queue ([`queue`]) and the cluster's membership ([`cluster`]).

pub mod admin;
pub mod cluster;
pub mod policy;
pub mod progress;
pub mod quarantine;
pub mod queue;
pub mod remote;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulwark_consensus::backup::{self, BackupManifest};
use reqwest::Method;
use serde_json::json;

use crate::config::Config;
use progress::Tally;
use remote::Remote;

/// How long `bulwark ready` waits for an answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `bulwark backup` waits for the node to write the backup.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

fn load(config: &Path) -> Result<Config> {
    Config::load(config).map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))
}

/// The node `config` describes, or the embedded default without one.
fn node_config(config: Option<&Path>) -> Result<Config> {
    match config {
        Some(config) => load(config),
        None => Ok(Config::embedded()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `bulwark ready [--config FILE]`: whether the node answers `/readyz` with 200 (a
/// leader is known and it applied what is committed). For health checks.
pub fn ready(config: Option<&Path>) -> Result<bool> {
    let config = node_config(config)?;
    let api = Remote::local(&config, READY_TIMEOUT, false)?;
    match api.call(Method::GET, "/readyz", &[], None) {
        Ok((status, _)) => Ok(status == reqwest::StatusCode::OK),
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            Ok(false)
        }
    }
}

/// `bulwark backup [--config FILE] --to DIR`: the running node writes a consistent
/// backup of its state into DIR (a new or empty directory on its machine, inside the
/// backup directory its config names: `[backup] dir`, by default `backups` in its
/// data directory), reported as it grows.
pub fn backup(config: Option<&Path>, to: &Path) -> Result<()> {
    let config = node_config(config)?;
    let to = std::path::absolute(to).with_context(|| format!("{}", to.display()))?;
    let api = Remote::local(&config, BACKUP_TIMEOUT, true)?;
    let manifest: BackupManifest = progress::watch("backup", &to, None, || {
        let (status, body) = api
            .call(Method::POST, "/v1/backup", &[], Some(&json!({ "to": to })))
            .with_context(|| format!("asking the node at {} for a backup", api.base()))?;
        if !status.is_success() {
            // The problem's detail says why (outside the backup directory, not empty).
            return Err(remote::refusal(status, &body));
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("the node's answer: {}", String::from_utf8_lossy(&body)))
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&manifest).expect("manifest serialises")
    );
    eprintln!(
        "backup of node {} in {}: {} events up to log entry {}, {} bytes",
        manifest.node_id,
        to.display(),
        manifest.event_count,
        manifest.applied_index,
        manifest.bytes
    );
    Ok(())
}

/// `bulwark restore [--config FILE] --from DIR`: seeds the stopped node's empty data
/// directory from the backup in DIR, as a member of the cluster its config describes
/// (every node of a new cluster is restored from the same backup), reported as the
/// state is copied.
pub fn restore(config: Option<&Path>, from: &Path) -> Result<()> {
    let config = node_config(config)?;
    let voters: Vec<u64> = match &config.node.cluster {
        Some(cluster) => cluster.peers.keys().copied().collect(),
        None => vec![config.node.id],
    };
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("creating {}", config.node.data_dir.display()))?;
    crate::serve::check_node_id(&config.node.data_dir, config.node.id)?;
    let state = bulwark_storage::layout::state_root(&config.node.data_dir);
    let total = Tally::of(&bulwark_storage::layout::state_root(from));
    let manifest = progress::watch("restore", &state, Some(total), || {
        runtime()?
            .block_on(backup::restore(from, &config.node))
            .with_context(|| {
                format!(
                    "restoring {} into {}",
                    from.display(),
                    config.node.data_dir.display()
                )
            })
    })?;
    eprintln!(
        "node {} restored from {} (taken on node {}): {} events up to log entry {}, chain \
         head {}; voters {:?}. Start it with `bulwark serve`, and every other node of the \
         new cluster restored from the same backup.",
        config.node.id,
        from.display(),
        manifest.node_id,
        manifest.event_count,
        manifest.applied_index,
        manifest.chain_head,
        voters
    );
    Ok(())
}

/// What `bulwark audit bundle` asks for.
pub struct BundleRequest<'a> {
    pub api: &'a remote::ApiArgs,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub message: Option<&'a str>,
    pub out: &'a Path,
}

/// `bulwark audit bundle`: fetches the evidence bundle of a range or a message from
/// any node's API and writes it to a file, checked as `audit verify --bundle` would
/// (without pinned keys) so a bundle that does not hold is never handed over unsaid.
pub fn audit_bundle(request: &BundleRequest<'_>) -> Result<()> {
    let api = remote::Remote::new(request.api, BACKUP_TIMEOUT)?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    for (name, value) in [
        ("since", request.since),
        ("until", request.until),
        ("message_id", request.message),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    let body = api.get("/v1/audit/bundle", &query)?;
    let bundle: bulwark_storage::bundle::Bundle =
        serde_json::from_slice(&body).context("the node's answer is not a bundle")?;
    let report = bulwark_storage::bundle::verify(&bundle, &[]);
    std::fs::write(request.out, &body)
        .with_context(|| format!("writing {}", request.out.display()))?;
    eprintln!(
        "{}: {} events asked for, in a run of {} covered by {} signed checkpoint(s) through \
         event {}; signed by {}",
        request.out.display(),
        report.selected,
        report.events,
        report.checkpoints,
        report.covered_through,
        report.signers.join(", ")
    );
    match report.problem {
        None => Ok(()),
        Some(problem) => bail!("written, but it does not verify: {problem}"),
    }
}

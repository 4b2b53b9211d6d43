//! Signed checkpoints of the event chain (`[audit] checkpoint_secs`): every so often
//! the leader signs where the chain stands with its node key and records it as an
//! `audit.checkpoint` event. Rewriting history before a checkpoint and re-chaining
//! it then shows in `bulwark audit verify` and `GET /v1/events/verify`, unless the
//! checkpoint is forged too, which takes the signing node's key; the SIEM keeps
//! copies of the checkpoints out of reach of whoever holds the disks.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bulwark_consensus::RaftNode;
use bulwark_storage::{ChainCheckpoint, Command, EventKind};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio_util::sync::CancellationToken;

/// `[audit]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// How often the leader signs a checkpoint; `None` (`checkpoint_secs = 0`): never.
    pub checkpoint_every: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            checkpoint_every: Some(Duration::from_secs(3600)),
        }
    }
}

/// The file in the data dir holding the node's Ed25519 signing key (PKCS#8).
pub const KEY_FILE: &str = "audit-signing.key";

/// The node's signing key, created (readable by the owner only) at first start.
pub fn signing_key(data_dir: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating the audit signing key"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(pkcs8.as_ref())?;
        file.sync_all()?;
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display()))
}

/// Signs and records a checkpoint every `every` while this node leads and something
/// was recorded since the last one, until `stop` is cancelled.
pub async fn run(
    node: Arc<RaftNode>,
    key: Ed25519KeyPair,
    settings: Settings,
    stop: CancellationToken,
) {
    let Some(every) = settings.checkpoint_every else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: wait a whole period first.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !node.is_leader() {
            continue;
        }
        let state = node.state();
        let (seq, hash) = state.chain_head();
        let latest = tokio::task::spawn_blocking(move || state.event(seq)).await;
        match latest {
            Ok(Ok(Some(last))) if !matches!(last.event.kind, EventKind::ChainCheckpoint(_)) => {}
            // Nothing recorded since the last checkpoint, or an empty log.
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit checkpoint: reading the chain head");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint");
                return;
            }
        }
        let checkpoint = ChainCheckpoint {
            seq,
            hash,
            node: node.id(),
            public_key: key.public_key().as_ref().to_vec(),
            signature: key
                .sign(&ChainCheckpoint::message(seq, &hash))
                .as_ref()
                .to_vec(),
        };
        let command = Command::Record(EventKind::ChainCheckpoint(Box::new(checkpoint)));
        match node.proposer().propose(command).await {
            Ok(done) => tracing::debug!(seq, at = done.seq, "audit checkpoint recorded"),
            Err(e) => tracing::warn!(error = %e, "audit checkpoint: proposing"),
        }
    }
}

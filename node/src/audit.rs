//! The event log's own upkeep (`[audit]`): signed checkpoints and retention.
//!
//! Signed checkpoints of the event chain (`checkpoint_secs`): every so often
//! the leader signs where the chain stands with its node key and records it as an
//! `audit.checkpoint` event. Rewriting history before a checkpoint and re-chaining
//! it then shows in `bulwark audit verify` and `GET /v1/events/verify`, unless the
//! checkpoint is forged too, which takes the signing node's key; the SIEM keeps
//! copies of the checkpoints out of reach of whoever holds the disks.
//!
//! The signing key is read from `signing_key_file`, apart from the data it signs
//! (only the embedded default keeps it in the data directory, with a warning). The
//! key each node signs with is trusted through Raft: a node whose key is not the one
//! on record for it proposes it (`audit.key_rotated`, endorsed by the old key when
//! `previous_signing_key_file` names it) and signs nothing until that is committed,
//! and every verification pins the checkpoints to the keys on record.
//!
//! Retention (`retention_days`, `max_events`): the leader removes the oldest events
//! by a replicated command that records `audit.purged` (which events, and the hash
//! the chain now starts from), never silently; and never what a configured SIEM
//! exporter has not yet shipped, unless `retention_ignores_exporters`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bulwark_consensus::RaftNode;
use bulwark_storage::{
    ChainCheckpoint, Command, EventFilter, EventKind, EventPurge, SignerChanged,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio_util::sync::CancellationToken;

/// `[audit]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// How often the leader signs a checkpoint; `None` (`checkpoint_secs = 0`): never.
    pub checkpoint_every: Option<Duration>,
    /// Events older than this are removed; `None`: kept whatever their age.
    pub retention: Option<Duration>,
    /// `retention_days` as configured, for the recorded reason.
    pub retention_days: f64,
    /// Most events kept; `None`: no limit.
    pub max_events: Option<u64>,
    /// Remove events even if an exporter has not shipped them yet.
    pub retention_ignores_exporters: bool,
    /// How often the leader applies the retention.
    pub retention_check_every: Duration,
    /// The checkpoint signing key (PKCS#8); `None`: [`KEY_FILE`] in the data dir.
    pub signing_key_file: Option<PathBuf>,
    /// The key it replaces, to endorse the new one when it is first trusted.
    pub previous_signing_key_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            checkpoint_every: Some(Duration::from_secs(3600)),
            retention: None,
            retention_days: 0.0,
            max_events: None,
            retention_ignores_exporters: false,
            retention_check_every: Duration::from_secs(600),
            signing_key_file: None,
            previous_signing_key_file: None,
        }
    }
}

/// The file in the data dir holding the node's Ed25519 signing key (PKCS#8) when
/// `signing_key_file` is not set.
pub const KEY_FILE: &str = "audit-signing.key";

/// The node's signing keys: the one it signs with and, when configured, the one it
/// replaces.
pub struct Keys {
    pub current: Ed25519KeyPair,
    pub previous: Option<Ed25519KeyPair>,
}

impl Keys {
    /// The configured keys; the signing key is created (readable by the owner only)
    /// where it is missing, the previous one must exist.
    pub fn load(settings: &Settings, data_dir: &Path) -> anyhow::Result<Keys> {
        let current = match &settings.signing_key_file {
            Some(path) => signing_key(path)?,
            None => {
                tracing::warn!(
                    path = %data_dir.join(KEY_FILE).display(),
                    "the audit signing key is kept in the data directory, beside the log it \
                     signs: whoever can rewrite the log can then re-sign it; set \
                     [audit] signing_key_file to a path outside it"
                );
                signing_key(&data_dir.join(KEY_FILE))?
            }
        };
        let previous = match &settings.previous_signing_key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        Ok(Keys { current, previous })
    }
}

/// The key at `path`, created there (readable by the owner only) when missing.
fn signing_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    if !path.exists() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating the audit signing key"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(pkcs8.as_ref())?;
        file.sync_all()?;
        tracing::info!(path = %path.display(), "created the audit signing key");
    }
    read_key(path)
}

fn read_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display()))
}

/// How often a node whose key is not yet trusted asks again.
const ENROL_RETRY: Duration = Duration::from_secs(2);

/// True when the cluster trusts `key` as this node's signing key now.
fn trusted(node: &RaftNode, key: &Ed25519KeyPair) -> bool {
    match node.state().signers(node.id()) {
        Ok(signers) => signers.current() == Some(key.public_key().as_ref()),
        Err(e) => {
            tracing::warn!(error = %e, "audit: reading the trusted signers");
            false
        }
    }
}

/// Has the node's signing key trusted by the cluster, endorsed by the previous key
/// when that is the one on record; retries until it is committed or `stop`.
pub async fn enrol(node: Arc<RaftNode>, keys: Arc<Keys>, stop: CancellationToken) {
    loop {
        if trusted(&node, &keys.current) {
            return;
        }
        let public_key = keys.current.public_key().as_ref().to_vec();
        let on_record = node
            .state()
            .signers(node.id())
            .ok()
            .and_then(|s| s.current().map(<[u8]>::to_vec));
        let endorsement = keys
            .previous
            .as_ref()
            .filter(|p| on_record.as_deref() == Some(p.public_key().as_ref()))
            .map(|p| {
                p.sign(&SignerChanged::endorsed(node.id(), &public_key))
                    .as_ref()
                    .to_vec()
            });
        if on_record.is_some() && endorsement.is_none() {
            tracing::warn!(
                "audit: this node's signing key differs from the one on record for it and no \
                 previous_signing_key_file endorses it: the rotation is recorded unendorsed"
            );
        }
        let command = Command::TrustSigner(Box::new(SignerChanged {
            node: node.id(),
            public_key,
            previous: on_record,
            endorsement,
        }));
        let proposed = tokio::select! {
            proposed = node.proposer().propose(command) => proposed,
            _ = stop.cancelled() => return,
        };
        match proposed {
            Ok(done) => match done.refused {
                None => {
                    tracing::info!(seq = done.seq, "audit: the signing key is trusted");
                    return;
                }
                Some(reason) => {
                    tracing::error!(%reason, "audit: the signing key was refused");
                    return;
                }
            },
            Err(e) => tracing::debug!(error = %e, "audit: proposing the signing key"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ENROL_RETRY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Signs and records a checkpoint every `every` while this node leads and something
/// was recorded since the last one, until `stop` is cancelled.
pub async fn run(
    node: Arc<RaftNode>,
    keys: Arc<Keys>,
    settings: Settings,
    stop: CancellationToken,
) {
    let key = &keys.current;
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
        if !trusted(&node, key) {
            tracing::warn!("audit checkpoint: this node's signing key is not trusted yet");
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

/// Events removed per command: one Raft entry and one apply stay small.
const PURGE_PER_COMMAND: u32 = 10_000;
/// Commands per retention run at most; a large backlog goes over a few runs.
const PURGE_COMMANDS_PER_RUN: usize = 100;

/// Applies the event log's retention while this node leads, until `stop` is
/// cancelled. `exporters` are those of the cluster's policy, whose cursors hold the
/// purge back.
pub async fn retention(
    node: Arc<RaftNode>,
    settings: Settings,
    exporters: tokio::sync::watch::Receiver<Arc<crate::siem::Exporters>>,
    stop: CancellationToken,
) {
    if settings.retention.is_none() && settings.max_events.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(settings.retention_check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !node.is_leader() {
            continue;
        }
        for _ in 0..PURGE_COMMANDS_PER_RUN {
            let plan = {
                let (node, settings) = (node.clone(), settings.clone());
                let exporters = exporters.borrow().clone();
                tokio::task::spawn_blocking(move || plan(&node, &settings, &exporters.names)).await
            };
            let Plan { keep, purged, held } = match plan {
                Ok(Ok(plan)) => plan,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event retention: reading the log");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "event retention");
                    return;
                }
            };
            if let Some((exporter, cursor)) = &held {
                tracing::warn!(
                    exporter = %exporter,
                    cursor,
                    "event retention held back: the exporter has not shipped what would go"
                );
            }
            if keep <= purged + 1 {
                break;
            }
            let command = Command::PurgeEvents(Box::new(EventPurge {
                before_seq: keep,
                max: PURGE_PER_COMMAND,
                reason: reason(&settings),
            }));
            if let Err(e) = node.proposer().propose(command).await {
                tracing::warn!(error = %e, "event retention: proposing the purge");
                break;
            }
        }
    }
}

/// Why events are removed, as recorded with the purge.
fn reason(settings: &Settings) -> String {
    let mut reasons = Vec::new();
    if settings.retention.is_some() {
        reasons.push(format!("older than {} days", settings.retention_days));
    }
    if let Some(max) = settings.max_events {
        reasons.push(format!("beyond the newest {max} events"));
    }
    reasons.join("; ")
}

/// What one retention step is to do.
struct Plan {
    /// The first seq to keep.
    keep: u64,
    /// The last seq purged so far.
    purged: u64,
    /// The exporter (with its cursor) that holds the purge back, if one does.
    held: Option<(String, u64)>,
}

fn plan(
    node: &RaftNode,
    settings: &Settings,
    exporters: &[String],
) -> bulwark_storage::Result<Plan> {
    let state = node.state();
    let head = state.chain_head().0;
    let (purged, _) = state.purged_through()?;
    let first_young = match settings.retention {
        Some(age) => {
            let cutoff = crate::now_ms().saturating_sub(age.as_millis() as i64);
            let filter = EventFilter {
                since_ms: Some(cutoff),
                ..EventFilter::default()
            };
            let (young, next) = state.events(&filter, purged, 1)?;
            Some(match (young.first(), next) {
                (Some(event), _) => event.event.seq,
                // The query's scan limit was reached: all older up to there.
                (None, Some(scanned)) => scanned + 1,
                (None, None) => head + 1,
            })
        }
        None => None,
    };
    let mut cursors = Vec::new();
    if !settings.retention_ignores_exporters {
        for name in exporters {
            cursors.push((name.clone(), state.export_cursor(name)?));
        }
    }
    let (keep, held) = first_to_keep(head, purged, settings.max_events, first_young, &cursors);
    Ok(Plan { keep, purged, held })
}

/// The first seq the log keeps: after what `max_events` allows (trimmed to nine
/// tenths, so the purge's own event does not call for another) and what is older
/// than the age limit (`first_young`: the first event recorded since), but never
/// past an exporter's cursor.
fn first_to_keep(
    head: u64,
    purged: u64,
    max_events: Option<u64>,
    first_young: Option<u64>,
    cursors: &[(String, u64)],
) -> (u64, Option<(String, u64)>) {
    let mut keep = purged + 1;
    if let Some(max) = max_events {
        if head - purged > max {
            let target = max - max / 10;
            keep = keep.max((head + 1).saturating_sub(target));
        }
    }
    if let Some(first_young) = first_young {
        keep = keep.max(first_young);
    }
    keep = keep.min(head + 1);
    let mut held = None;
    for (name, cursor) in cursors {
        if cursor + 1 < keep {
            keep = cursor + 1;
            held = Some((name.clone(), *cursor));
        }
    }
    (keep, held)
}

#[cfg(test)]
mod tests {
    use super::first_to_keep;

    #[test]
    fn the_retention_keeps_what_size_age_and_exporters_ask_for() {
        // Within the limit: nothing goes.
        assert_eq!(first_to_keep(100, 0, Some(100), None, &[]), (1, None));
        // Beyond it: down to nine tenths.
        assert_eq!(first_to_keep(101, 0, Some(100), None, &[]), (12, None));
        assert_eq!(first_to_keep(250, 150, Some(100), None, &[]), (151, None));
        // Age: everything before the first young event; all of it if none is young.
        assert_eq!(first_to_keep(100, 10, None, Some(40), &[]), (40, None));
        assert_eq!(first_to_keep(100, 10, None, Some(101), &[]), (101, None));
        // Both: the later start.
        assert_eq!(
            first_to_keep(200, 0, Some(100), Some(150), &[]),
            (150, None)
        );
        // An exporter behind holds it back, and says so; one ahead does not.
        let cursors = [("ahead".to_string(), 190), ("behind".to_string(), 60)];
        assert_eq!(
            first_to_keep(200, 0, None, Some(150), &cursors),
            (61, Some(("behind".to_string(), 60)))
        );
        assert_eq!(
            first_to_keep(200, 0, None, Some(150), &cursors[..1]),
            (150, None)
        );
    }
}

//! Backups of a running node, and a new cluster restored from one.
//!
//! A backup is the node's applied state as a RocksDB checkpoint (SST files hard-linked
//! when on the same file system, so it is cheap and does not pause the node), laid out
//! like a data directory (`state/CURRENT`, `state/gen-000001/`) so that `bulwark audit
//! verify --data-dir BACKUP` reads it as it reads a stopped node, plus
//! [`MANIFEST`] saying what it holds. It is taken after a linearizable read: it holds
//! every write acknowledged before the backup began.
//!
//! A restore seeds an empty data directory from a backup for a node of a new cluster
//! (every node of it restored from the same backup): the state as backed up, its
//! membership replaced by the new cluster's voters, and a Raft log that starts after
//! the backup's last applied entry, with the vote at that entry's term so the first
//! election comes after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use bulwark_storage::{codec, layout, LogStore as Store, StateDir};
use openraft::{BasicNode, Membership};
use serde::{Deserialize, Serialize};

use crate::state_machine::Applied;
use crate::types::{NodeId, StoredMembership, Vote};
use crate::{Error, RaftNode};

/// The file of a backup that says what it holds.
pub const MANIFEST: &str = "bulwark-backup.json";
/// The layout of backups this build writes and restores.
pub const FORMAT: u32 = 1;

/// What a backup holds, as written to [`MANIFEST`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// When the backup was taken, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// The node that took it.
    pub node_id: NodeId,
    /// The last log entry the backed-up state holds.
    pub applied_index: u64,
    pub applied_term: u64,
    /// The voters of the cluster it came from, with their cluster addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Events in the log and the chain head (hex), for `audit verify` to compare.
    pub event_count: u64,
    pub chain_head: String,
    /// Bytes of the state's files.
    pub bytes: u64,
}

impl RaftNode {
    /// Writes a backup of this node's state into `to`, an absolute path that does not
    /// exist yet or is an empty directory, once every write acknowledged before the
    /// call is applied here (a linearizable read, bounded by `timeout`).
    pub async fn backup(&self, to: &Path, timeout: Duration) -> Result<BackupManifest, Error> {
        check_destination(to).map_err(Error::Backup)?;
        self.linearizable_read(timeout).await.map_err(|e| {
            Error::Unavailable(format!(
                "could not confirm with the leader that this node is up to date: {e}"
            ))
        })?;
        let state = self.state_dir().clone();
        let to = to.to_path_buf();
        let node_id = self.id();
        tokio::task::spawn_blocking(move || write_backup(&state, &to, node_id))
            .await
            .map_err(|e| Error::Backup(format!("backup task: {e}")))?
    }
}

/// Whether a backup may be written to `to`: an absolute path that does not exist yet
/// or is an empty directory.
pub fn check_destination(to: &Path) -> Result<(), String> {
    if !to.is_absolute() {
        return Err(format!("{} is not an absolute path", to.display()));
    }
    match fs::read_dir(to).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(format!(
            "{} is not empty: back up into a new directory",
            to.display()
        )),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", to.display())),
    }
}

fn write_backup(state: &StateDir, to: &Path, node_id: NodeId) -> Result<BackupManifest, Error> {
    fs::create_dir_all(to).map_err(|e| Error::Backup(format!("{}: {e}", to.display())))?;
    let copy = state.backup_into(to)?;
    let (applied, membership) = decode_applied(copy.applied()?)?;
    let applied = applied.ok_or_else(|| {
        Error::Backup("the node has applied nothing yet: nothing to back up".into())
    })?;
    let (event_count, head) = copy.chain_head();
    let manifest = BackupManifest {
        format: FORMAT,
        created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        node_id,
        applied_index: applied.index,
        applied_term: applied.leader_id.term,
        voters: membership
            .membership()
            .voter_ids()
            .filter_map(|id| {
                let node = membership.membership().get_node(&id)?;
                Some((id, node.addr.clone()))
            })
            .collect(),
        event_count,
        chain_head: hex::encode(head),
        bytes: tree_bytes(&layout::state_root(to)),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Backup(format!("manifest: {e}")))?;
    layout::write_atomic(&to.join(MANIFEST), &json)?;
    Ok(manifest)
}

/// Reads the manifest of the backup in `dir`.
pub fn read_manifest(dir: &Path) -> Result<BackupManifest, Error> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path)
        .map_err(|e| Error::Backup(format!("{}: {e} (not a Bulwark backup?)", path.display())))?;
    let manifest: BackupManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Backup(format!("{}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(Error::Backup(format!(
            "{}: backup format {} (this build reads format {FORMAT})",
            path.display(),
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Seeds the empty data directory `data_dir` of node `id` from the backup in `backup`
/// for a new cluster whose voters are `voters` (id → cluster address; for a single
/// node without a cluster, itself with an empty address). Returns the backup's
/// manifest. The node must not be running.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    voters: &BTreeMap<NodeId, String>,
) -> Result<BackupManifest, Error> {
    let manifest = read_manifest(backup)?;
    if !voters.contains_key(&id) {
        return Err(Error::Backup(format!(
            "node {id} is not among the new cluster's voters"
        )));
    }
    let log_dir = layout::raft_log_dir(data_dir);
    if log_dir.exists() {
        return Err(Error::Backup(format!(
            "{} exists: restore only into an empty data directory",
            log_dir.display()
        )));
    }
    let state = StateDir::restore_from(backup, data_dir)?;
    let (applied, _) = decode_applied(state.applied()?)?;
    let applied =
        applied.ok_or_else(|| Error::Backup("the backup holds no applied entry".into()))?;
    if applied.index != manifest.applied_index {
        return Err(Error::Backup(format!(
            "the backup's state holds entry {} but its manifest says {}",
            applied.index, manifest.applied_index
        )));
    }
    let nodes: BTreeMap<NodeId, BasicNode> = voters
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let ids: BTreeSet<NodeId> = voters.keys().copied().collect();
    let membership = StoredMembership::new(Some(applied), Membership::new(vec![ids], nodes));
    state.set_applied(&codec::encode(&(Some(applied), membership))?)?;
    let log = Store::open(&log_dir)?;
    crate::log_store::seed(&log, applied, Vote::new(applied.leader_id.term, id))?;
    Ok(manifest)
}

fn decode_applied(bytes: Option<Vec<u8>>) -> Result<Applied, Error> {
    crate::state_machine::decode_applied(bytes).map_err(|e| Error::Raft(e.to_string()))
}

/// Bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

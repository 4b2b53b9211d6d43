//! Backups of a running node, and a new cluster restored from one.
//!
//! A backup is the node's applied state as a RocksDB checkpoint (SST files hard-linked
//! when on the same file system, so it is cheap and does not pause the node), laid out
//! like a data directory (`state/CURRENT`, `state/gen-000001/`) so that `bulwark audit
//! verify --data-dir BACKUP` reads it as it reads a stopped node, plus
//! [`MANIFEST`] saying what it holds. It is taken after a linearizable read: it holds
//! every write acknowledged before the backup began, and no quarantined body deleted
//! or expired before it began.
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

use crate::network::NetworkFactory;
use crate::state_machine::Applied;
use crate::tls::TlsIdentity;
use crate::types::{NodeId, StoredMembership, Vote};
use crate::{Error, NodeConfig, PeerConfig, RaftNode};

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
        let existed = to.exists();
        let written = tokio::task::spawn_blocking({
            let to = to.clone();
            move || write_backup(&state, &to, node_id)
        })
        .await
        .map_err(|e| Error::Backup(format!("backup task: {e}")))?;
        if written.is_err() {
            // No half backup left behind to be taken for a whole one; an empty
            // directory given stays, empty.
            let _ = fs::remove_dir_all(&to);
            if existed {
                let _ = fs::create_dir(&to);
            }
        }
        written
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
    // A body dropped before the backup began is not copied into it, even if this
    // node's erasure has not run yet: the live state is rewritten without it first.
    let live = state.current();
    if live.erasure_due()?.is_some() {
        live.erase_dropped_bodies()?;
    }
    drop(live);
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

/// Seeds the empty data directory of the node `cfg` describes from the backup in
/// `backup`, for a new cluster whose voters are `cfg`'s peers (a single node without
/// a cluster: itself). Refused when the data directory holds Raft data, and when a
/// peer answers that it belongs to a running cluster already past the backup: a
/// restored member of a living cluster would have forgotten entries it helped commit
/// (add a new node instead). Every node of the new cluster is restored from the same
/// backup. The node must not be running. Returns the backup's manifest.
pub async fn restore(backup: &Path, cfg: &NodeConfig) -> Result<BackupManifest, Error> {
    let manifest = read_manifest(backup)?;
    let id = cfg.id;
    let voters: BTreeMap<NodeId, String> = match &cfg.cluster {
        Some(cluster) => cluster.peers.clone(),
        None => BTreeMap::from([(id, String::new())]),
    };
    if !voters.contains_key(&id) {
        return Err(Error::Backup(format!(
            "node {id} is not among the new cluster's voters"
        )));
    }
    let data_dir = &cfg.data_dir;
    for held in [
        layout::raft_log_dir(data_dir),
        layout::state_root(data_dir),
        layout::snapshots_dir(data_dir),
        layout::restore_marker(data_dir),
    ] {
        if held.exists() {
            return Err(Error::Backup(format!(
                "{} exists: restore only into an empty data directory",
                held.display()
            )));
        }
    }
    if let Some(cluster) = &cfg.cluster {
        refuse_living_cluster(cluster, id, manifest.applied_index).await?;
    }
    fs::create_dir_all(data_dir)
        .map_err(|e| Error::Backup(format!("{}: {e}", data_dir.display())))?;
    let marker = layout::restore_marker(data_dir);
    layout::write_atomic(&marker, backup.display().to_string().as_bytes())?;
    let (backup, data_dir) = (backup.to_path_buf(), data_dir.to_path_buf());
    let applied_index = manifest.applied_index;
    tokio::task::spawn_blocking(move || seed(&backup, &data_dir, id, &voters, applied_index))
        .await
        .map_err(|e| Error::Backup(format!("restore task: {e}")))??;
    fs::remove_file(&marker).map_err(|e| Error::Backup(format!("{}: {e}", marker.display())))?;
    layout::sync_dir(&cfg.data_dir)?;
    Ok(manifest)
}

/// Refuses a restore when a peer belongs to a cluster that applied more than the
/// backup holds. Peers that do not answer are taken for nodes of the new cluster,
/// not started yet.
async fn refuse_living_cluster(
    cluster: &PeerConfig,
    id: NodeId,
    applied: u64,
) -> Result<(), Error> {
    let tls = TlsIdentity::load(&cluster.ca, &cluster.cert, &cluster.key)?;
    let network = NetworkFactory::new(tls.client);
    for (peer, addr) in cluster.peers.iter().filter(|(p, _)| **p != id) {
        match network.status(*peer, addr).await {
            Ok((true, Some(theirs))) if theirs > applied => {
                return Err(Error::Backup(format!(
                    "node {peer} at {addr} is running in a cluster that has applied entry \
                     {theirs}, past the backup's {applied}: restoring one member of a living \
                     cluster would lose what it acknowledged since; add a new node to it \
                     instead, or stop every node before restoring them all"
                )))
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer, error = %e, "restore: peer not answering"),
        }
    }
    Ok(())
}

/// Copies the backup's state into `data_dir`, gives it the new voters, and starts the
/// Raft log after its last entry with the vote at that entry's term.
fn seed(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    voters: &BTreeMap<NodeId, String>,
    applied_index: u64,
) -> Result<(), Error> {
    let state = StateDir::restore_from(backup, data_dir)?;
    let (applied, _) = decode_applied(state.applied()?)?;
    let applied =
        applied.ok_or_else(|| Error::Backup("the backup holds no applied entry".into()))?;
    if applied.index != applied_index {
        return Err(Error::Backup(format!(
            "the backup's state holds entry {} but its manifest says {applied_index}",
            applied.index
        )));
    }
    let nodes: BTreeMap<NodeId, BasicNode> = voters
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let ids: BTreeSet<NodeId> = voters.keys().copied().collect();
    let membership = StoredMembership::new(Some(applied), Membership::new(vec![ids], nodes));
    let record =
        codec::encode(&(Some(applied), membership)).map_err(bulwark_storage::Error::from)?;
    state.set_applied(&record)?;
    let log = Store::open(&layout::raft_log_dir(data_dir))?;
    crate::log_store::seed(&log, applied, Vote::new(applied.leader_id.term, id))?;
    Ok(())
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

//! `POST /v1/backup`: a consistent copy of this node's state, written by the node
//! into a directory on its own machine (`bulwark backup` calls it). Recorded as an
//! `api.action` event (`node.backup`), taken or refused.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bulwark_consensus::backup::{check_destination, BackupManifest};
use bulwark_storage::{ApiAction, Command, EventKind};
use serde::{Deserialize, Serialize};

use crate::auth::{Access, ClientIp};
use crate::extract::Body;
use crate::routes::ApiState;
use crate::ApiError;

/// How long the node may wait for the leader to confirm it is up to date.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest name of one directory of a destination, in bytes (the usual file system
/// limit).
const MAX_COMPONENT: usize = 255;
/// Longest destination below the backup directory, in bytes.
const MAX_BELOW: usize = 1024;

/// Where to write: `to`, an absolute path inside the node's backup directory, or
/// `name`, a path relative to it; one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// Absolute path on the node's machine, inside its backup directory (`[backup]
    /// dir`); must not exist or be an empty directory.
    #[schema(example = "/var/lib/bulwark/backups/2026-11-28")]
    to: Option<String>,
    /// Path relative to the node's backup directory, e.g. `2026-11-28`; must not
    /// exist or be an empty directory.
    #[schema(example = "2026-11-28")]
    name: Option<String>,
}

/// A backup written: its manifest, as the backup's `bulwark-backup.json` holds it.
// The API's copy of [`BackupManifest`].
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Backup {
    /// The layout of the backup (1).
    format: u32,
    /// When it was taken, milliseconds since the Unix epoch.
    created_ms: i64,
    /// The node that took it.
    node_id: u64,
    /// The last log entry the backed-up state holds, and its term.
    applied_index: u64,
    applied_term: u64,
    /// The voters of the cluster, by node id, with their cluster addresses.
    #[schema(value_type = BTreeMap<String, String>)]
    voters: BTreeMap<u64, String>,
    /// Events in the log, and the chain head (hex), for `audit verify` to compare.
    event_count: u64,
    chain_head: String,
    /// Bytes of the state's files.
    bytes: u64,
}

impl From<BackupManifest> for Backup {
    fn from(manifest: BackupManifest) -> Self {
        // Every field named: one added to the manifest is a compile error here.
        let BackupManifest {
            format,
            created_ms,
            node_id,
            applied_index,
            applied_term,
            voters,
            event_count,
            chain_head,
            bytes,
        } = manifest;
        Backup {
            format,
            created_ms,
            node_id,
            applied_index,
            applied_term,
            voters,
            event_count,
            chain_head,
            bytes,
        }
    }
}

/// `POST /v1/backup {"name": "2026-11-28"}` or `{"to": "/var/lib/bulwark/backups/2026-11-28"}`:
/// writes the backup inside the node's backup directory (`[backup] dir`) and answers
/// with its manifest (applied index, event count, chain head, bytes). A destination
/// outside it (`..`, elsewhere, through a symbolic link) is refused with 400 and
/// nothing is written.
#[utoipa::path(post, path = "/v1/backup", tag = "cluster", request_body = BackupRequest, responses((status = 200, description = "written: the backup's manifest", body = Backup), (status = 400, description = "no destination, not an absolute path, outside the backup directory, or not empty"), (status = 403, description = "not the admin role"), (status = 503, description = "no leader confirmed the node is up to date")), operation_id = "backup")]
pub(crate) async fn backup(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Backup>, ApiError> {
    let caller = s.caller(&headers, Access::Backup)?;
    let request: BackupRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let to = match destination(&s.backup_dir, &request) {
        Ok(to) => to,
        Err(refused) => {
            tracing::warn!(to = ?request.to, name = ?request.name, %refused, "backup refused");
            record(&s, caller.name, client_ip, Some(refused.clone())).await;
            return Err(ApiError::bad_request(refused));
        }
    };
    let result = s.node.backup(&to, CONFIRM_TIMEOUT).await;
    let refused = result.as_ref().err().map(|e| e.to_string());
    match &result {
        Ok(m) => {
            tracing::info!(to = %to.display(), applied = m.applied_index, events = m.event_count, bytes = m.bytes, "backup written")
        }
        Err(e) => tracing::warn!(to = %to.display(), error = %e, "backup failed"),
    }
    record(&s, caller.name, client_ip, refused).await;
    match result {
        Ok(manifest) => Ok(Json(manifest.into())),
        Err(bulwark_consensus::Error::Unavailable(e)) => Err(ApiError::unavailable(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Records the call as an `api.action` event (`node.backup`), taken or refused. The
/// backup's own outcome is the answer; a record that could not be committed is
/// logged (the backup exists, or failed, either way).
async fn record(s: &ApiState, user: String, client_ip: Option<IpAddr>, refused: Option<String>) {
    let recorded = s
        .node
        .proposer()
        .propose(Command::Record(EventKind::ApiAction(Box::new(ApiAction {
            action: "node.backup".into(),
            user,
            client_ip,
            message_id: None,
            recipients: Vec::new(),
            refused,
        }))))
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "the node.backup event could not be recorded");
    }
}

/// The directory a backup `request` may be written to, inside `root` (created if
/// missing): `to` must name a place inside it (as configured, or as it resolves), or
/// `name` one relative to it; neither may hold `.` or `..`, nor pass through a
/// symbolic link or anything but a directory below `root`, and the destination must
/// not exist or be an empty directory.
///
/// The check is made once, before the node writes: someone who may change the
/// backup directory's contents meanwhile (the node's own user) could still redirect
/// it; the directory is the node's, like its data.
fn destination(root: &Path, request: &BackupRequest) -> Result<PathBuf, String> {
    let root_shown = root.display();
    fs::create_dir_all(root).map_err(|e| format!("the backup directory {root_shown}: {e}"))?;
    let resolved =
        fs::canonicalize(root).map_err(|e| format!("the backup directory {root_shown}: {e}"))?;
    let below: PathBuf = match (&request.to, &request.name) {
        (Some(to), None) => {
            let to = Path::new(to);
            if !to.is_absolute() {
                return Err(format!(
                    "{} is not an absolute path (or give \"name\", relative to the backup directory {root_shown})",
                    to.display()
                ));
            }
            plain(to)?;
            to.strip_prefix(root)
                .or_else(|_| to.strip_prefix(&resolved))
                .map_err(|_| {
                    format!(
                        "{} is outside the backup directory {root_shown} ([backup] dir in the node's config)",
                        to.display()
                    )
                })?
                .to_path_buf()
        }
        (None, Some(name)) => {
            let name = Path::new(name);
            if name.is_absolute() {
                return Err(format!(
                    "name: {} is absolute: a name is relative to the backup directory {root_shown} (an absolute path goes in \"to\")",
                    name.display()
                ));
            }
            plain(name)?;
            name.to_path_buf()
        }
        _ => {
            return Err(
                "give one of \"to\" (an absolute path in the backup directory) or \"name\" (relative to it)"
                    .into(),
            )
        }
    };
    if below.as_os_str().is_empty() {
        return Err(format!(
            "name a new directory inside the backup directory {root_shown}, not the directory itself"
        ));
    }
    if below.as_os_str().len() > MAX_BELOW {
        return Err(format!(
            "the destination is {} bytes long below the backup directory, at most {MAX_BELOW} allowed",
            below.as_os_str().len()
        ));
    }
    let mut at = resolved;
    for part in below.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link: a backup goes into the backup directory {root_shown} itself",
                    at.display()
                ))
            }
            Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", at.display())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    check_destination(&at)?;
    Ok(at)
}

/// Refuses a path with a `.` or `..` part, a NUL byte, or a part longer than
/// [`MAX_COMPONENT`] bytes.
fn plain(path: &Path) -> Result<(), String> {
    for part in path.components() {
        match part {
            Component::RootDir => {}
            Component::Normal(p) if p.as_encoded_bytes().contains(&0) => {
                return Err(format!("{:?} holds a NUL byte", path.display().to_string()))
            }
            Component::Normal(p) if p.len() > MAX_COMPONENT => {
                return Err(format!(
                    "a part of {} is longer than {MAX_COMPONENT} bytes",
                    path.display()
                ))
            }
            Component::Normal(_) => {}
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "{} holds \".\" or \"..\": name the destination plainly",
                    path.display()
                ))
            }
        }
    }
    Ok(())
}

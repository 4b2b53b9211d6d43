//! `POST /v1/backup`: a consistent copy of this node's state, written by the node
//! into a directory on its own machine (`bulwark backup` calls it). Recorded as an
//! `api.action` event (`node.backup`), taken or refused.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bulwark_consensus::backup::{check_destination, BackupManifest};
use bulwark_storage::{ApiAction, Command, EventKind};
use serde::Deserialize;

use crate::auth::{Access, ClientIp};
use crate::routes::ApiState;
use crate::ApiError;

/// How long the node may wait for the leader to confirm it is up to date.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// Absolute path on the node's machine; must not exist or be an empty directory.
    to: String,
}

/// `POST /v1/backup {"to": "/var/backups/bulwark/2026-11-28"}`: writes the backup
/// and answers with its manifest (applied index, event count, chain head, bytes).
#[utoipa::path(post, path = "/v1/backup", tag = "cluster", request_body = BackupRequest, responses((status = 200, description = "written: the backup's manifest"), (status = 400, description = "not an absolute path, or not empty"), (status = 503, description = "no leader confirmed the node is up to date")), operation_id = "backup")]
pub(crate) async fn backup(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BackupManifest>, ApiError> {
    let caller = s.caller(&headers, Access::Backup)?;
    let request: BackupRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let to = PathBuf::from(&request.to);
    check_destination(&to).map_err(|e| ApiError::bad_request(format!("to: {e}")))?;
    let result = s.node.backup(&to, CONFIRM_TIMEOUT).await;
    let refused = result.as_ref().err().map(|e| e.to_string());
    match &result {
        Ok(m) => {
            tracing::info!(to = %to.display(), applied = m.applied_index, events = m.event_count, bytes = m.bytes, "backup written")
        }
        Err(e) => tracing::warn!(to = %to.display(), error = %e, "backup failed"),
    }
    let recorded = s
        .node
        .proposer()
        .propose(Command::Record(EventKind::ApiAction(Box::new(ApiAction {
            action: "node.backup".into(),
            user: caller.name,
            client_ip,
            message_id: None,
            recipients: Vec::new(),
            refused,
        }))))
        .await;
    // The backup's own outcome is the answer; a record that could not be committed
    // is logged (the backup exists, or failed, either way).
    if let Err(e) = recorded {
        tracing::error!(to = %to.display(), error = %e, "the node.backup event could not be recorded");
    }
    match result {
        Ok(manifest) => Ok(Json(manifest)),
        Err(bulwark_consensus::Error::Unavailable(e)) => Err(ApiError::unavailable(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

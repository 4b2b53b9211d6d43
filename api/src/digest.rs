//! `POST /v1/digest/run`: the quarantine digest now, rather than at its next time of
//! day, and what the node does for the recipients' self-service (the digests and
//! their links, written and queued by the node, which knows mail).

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bulwark_storage::event::rfc3339;
use bulwark_storage::{ApiAction, Command, EventKind};
use serde::Serialize;

use crate::auth::{Access, ClientIp};
use crate::routes::ApiState;
use crate::ApiError;

/// A future the node's [`Notices`] answer with.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What a run of the digest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestRun {
    /// Digests queued, one a recipient.
    pub digests: usize,
    /// Held messages they list.
    pub messages: usize,
    /// Recipients who had a digest through this time already.
    pub already: usize,
}

/// The messages the node sends recipients about their quarantine.
pub trait Notices: Send + Sync {
    /// Queues, for every recipient with mail held since their last digest, a digest
    /// of what was held through `through_ms`.
    fn send_digests(&self, through_ms: i64) -> Answer<'_, DigestRun>;

    /// Queues a link to their portal for `address`, when it is one of the gateway's
    /// domains and has not had too many lately: true when it did.
    fn send_portal_link(&self, address: String, now_ms: i64) -> Answer<'_, bool>;
}

/// The answer of `POST /v1/digest/run`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DigestAnswer {
    /// Recipients who had a digest through this time already.
    already: usize,
    /// Digests queued, one a recipient.
    digests: usize,
    /// Held messages they list.
    messages: usize,
    /// The time through which the digests report (RFC 3339 UTC).
    through: String,
}

/// `POST /v1/digest/run`: sends every recipient with mail held since their last
/// digest a digest of it now (admin), and records the call as an `api.action`
/// (`digest.run`).
#[utoipa::path(post, path = "/v1/digest/run", tag = "quarantine", responses((status = 200, description = "digests queued", body = DigestAnswer), (status = 403, description = "a role other than admin"), (status = 503, description = "the digests could not be queued (no quorum)")), operation_id = "digest_run")]
pub(crate) async fn run(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
) -> Result<Json<DigestAnswer>, ApiError> {
    let caller = s.caller(&headers, Access::Digest)?;
    let through_ms = crate::queue::now_ms();
    let result = s.notices.send_digests(through_ms).await;
    let recorded = s
        .node
        .proposer()
        .propose(Command::Record(EventKind::ApiAction(Box::new(ApiAction {
            action: "digest.run".into(),
            user: caller.name,
            client_ip,
            message_id: None,
            recipients: Vec::new(),
            refused: result.as_ref().err().cloned(),
        }))))
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "the digest.run event could not be recorded");
    }
    let run = result.map_err(ApiError::unavailable)?;
    Ok(Json(DigestAnswer {
        already: run.already,
        digests: run.digests,
        messages: run.messages,
        through: rfc3339(through_ms),
    }))
}

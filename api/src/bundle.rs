//! `GET /v1/audit/bundle`: the events of a time range or of one message as evidence
//! an auditor checks on another machine (`bulwark audit verify --bundle`): the run of
//! the chain from the first of them to the signed checkpoint that covers the last,
//! each event as stored and as shown, and the signing keys the cluster trusts
//! (see [`bulwark_storage::bundle`]).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bulwark_storage::bundle::{self, Bundle, BundleEvent};
use bulwark_storage::event::rfc3339;
use bulwark_storage::{EventFilter, EventKind, MessageId, ReadKind, StateStore};
use bulwark_storage::{Signers, TrustedKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::access::Read;
use crate::auth::{Access, ClientIp};
use crate::events::Event;
use crate::routes::{time_ms, ApiState};
use crate::ApiError;

/// Most events in a bundle's run: a larger range is asked for in parts.
const MAX_RUN: u64 = 50_000;
/// Events read from the store per step while selecting.
const PAGE: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct BundleQuery {
    /// Events recorded at or after this time (RFC 3339).
    since: Option<String>,
    /// Events recorded before this time.
    until: Option<String>,
    /// Every event about this message.
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    message_id: Option<String>,
}

/// An audit bundle, as `bulwark audit verify --bundle` reads it.
// The API's copy of [`Bundle`].
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EvidenceBundle {
    /// bulwark-audit-bundle/1.
    format: String,
    /// When it was made (RFC 3339 UTC).
    created: String,
    /// The node that made it.
    node: u64,
    /// What was asked: since, until, message_id.
    #[schema(value_type = Object)]
    query: serde_json::Value,
    /// The seqs of the events asked for, all within `events`.
    selected: Vec<u64>,
    /// The run of the chain, in order, without gaps.
    events: Vec<EvidenceEvent>,
    /// The keys the cluster trusted for each node's checkpoints, by node id.
    #[schema(value_type = BTreeMap<String, EvidenceSigners>)]
    signers: BTreeMap<u64, EvidenceSigners>,
}

/// One event of a bundle: its stored encoding and its JSON.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EvidenceEvent {
    /// The event as stored (hex), so its hash can be recomputed.
    stored: String,
    event: Event,
}

/// A node's trusted checkpoint signing keys, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EvidenceSigners {
    keys: Vec<EvidenceKey>,
}

/// One Ed25519 public key and the first event seq whose checkpoint it may sign.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EvidenceKey {
    /// The key's 32 bytes.
    public_key: Vec<u8>,
    from_seq: u64,
}

impl From<Bundle> for EvidenceBundle {
    fn from(bundle: Bundle) -> Self {
        // Every field named: one added to the bundle is a compile error here.
        let Bundle {
            format,
            created,
            node,
            query,
            selected,
            events,
            signers,
        } = bundle;
        let events = events
            .into_iter()
            .map(|BundleEvent { stored, event }| EvidenceEvent {
                stored,
                event: Event(event),
            })
            .collect();
        let signers = signers
            .into_iter()
            .map(|(node, Signers { keys })| {
                let keys = keys
                    .into_iter()
                    .map(
                        |TrustedKey {
                             public_key,
                             from_seq,
                         }| EvidenceKey {
                            public_key,
                            from_seq,
                        },
                    )
                    .collect();
                (node, EvidenceSigners { keys })
            })
            .collect();
        EvidenceBundle {
            format,
            created,
            node,
            query,
            selected,
            events,
            signers,
        }
    }
}

/// `GET /v1/audit/bundle?since&until&message_id`: the evidence bundle (JSON) of the
/// events asked for; recorded as an `access.read` of kind `export`.
#[utoipa::path(get, path = "/v1/audit/bundle", tag = "events", params(BundleQuery), responses((status = 200, description = "the bundle: the run of the chain, the events asked for, the trusted signing keys", body = EvidenceBundle), (status = 400, description = "no filter, a malformed one, nothing matches, or a run longer than 50,000 events"), (status = 503, description = "the read could not be recorded (no quorum)")), operation_id = "audit_bundle")]
pub(crate) async fn bundle(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    query: Result<Query<BundleQuery>, QueryRejection>,
) -> Result<Json<EvidenceBundle>, ApiError> {
    let caller = s.caller(&headers, Access::Events)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.since.is_none() && q.until.is_none() && q.message_id.is_none() {
        return Err(ApiError::bad_request(
            "a bundle is of a range or a message: give since, until or message_id",
        ));
    }
    let message_id = q
        .message_id
        .as_deref()
        .map(|id| {
            id.parse::<MessageId>()
                .map_err(|e| ApiError::bad_request(format!("message_id: {e}")))
        })
        .transpose()?;
    let filter = EventFilter {
        message_id,
        since_ms: time_ms("since", q.since.as_deref())?,
        until_ms: time_ms("until", q.until.as_deref())?,
        ..EventFilter::default()
    };
    let described = json!({ "since": q.since, "until": q.until, "message_id": q.message_id });
    let read = Read {
        kind: ReadKind::Export,
        message_id,
        reason: None,
        query: crate::access::query(&[
            ("since", q.since.as_deref()),
            ("until", q.until.as_deref()),
            ("message_id", q.message_id.as_deref()),
        ])
        .map(|f| format!("audit/bundle?{f}")),
    };
    let node = s.node.clone();
    let made =
        tokio::task::spawn_blocking(move || assemble(&node.state(), &filter, node.id(), described))
            .await
            .map_err(ApiError::internal)??;
    s.record_read(&caller, client_ip, read).await?;
    Ok(Json(made.into()))
}

/// The bundle of the events `filter` selects, as this node's log holds them.
fn assemble(
    state: &StateStore,
    filter: &EventFilter,
    node: u64,
    query: serde_json::Value,
) -> Result<Bundle, ApiError> {
    let mut selected = Vec::new();
    let mut after = 0;
    loop {
        let (events, next) = state.events(filter, after, PAGE)?;
        selected.extend(events.iter().map(|e| e.event.seq));
        if let (Some(first), Some(last)) = (selected.first(), selected.last()) {
            if last - first >= MAX_RUN {
                return Err(too_long());
            }
        }
        match next {
            Some(next) => after = next,
            None => break,
        }
    }
    let (Some(&first), Some(&last)) = (selected.first(), selected.last()) else {
        return Err(ApiError::bad_request("no event matches: nothing to bundle"));
    };
    let end = covering_checkpoint(state, last)?.unwrap_or(last);
    if end - first >= MAX_RUN {
        return Err(too_long());
    }
    let mut events = Vec::with_capacity((end - first + 1) as usize);
    let mut signers = BTreeMap::new();
    for seq in first..=end {
        let stored = state
            .event(seq)?
            .ok_or_else(|| ApiError::internal(format!("event {seq} is not in the log")))?;
        if let EventKind::ChainCheckpoint(c) = &stored.event.kind {
            if let std::collections::btree_map::Entry::Vacant(entry) = signers.entry(c.node) {
                entry.insert(state.signers(c.node)?);
            }
        }
        events.push(BundleEvent::new(&stored).map_err(ApiError::internal)?);
    }
    Ok(Bundle {
        format: bundle::FORMAT.into(),
        created: rfc3339(crate::queue::now_ms()),
        node,
        query,
        selected,
        events,
        signers,
    })
}

/// The seq of the first checkpoint event that covers event `last`, if one does yet.
fn covering_checkpoint(state: &StateStore, last: u64) -> Result<Option<u64>, ApiError> {
    let filter = EventFilter {
        type_name: Some("audit.checkpoint".into()),
        ..EventFilter::default()
    };
    let mut after = last;
    loop {
        let (events, next) = state.events(&filter, after, PAGE)?;
        for e in &events {
            if let EventKind::ChainCheckpoint(c) = &e.event.kind {
                if c.seq >= last {
                    return Ok(Some(e.event.seq));
                }
            }
            if e.event.seq - last >= MAX_RUN {
                return Ok(None);
            }
        }
        match next {
            Some(next) if next - last < MAX_RUN => after = next,
            _ => return Ok(None),
        }
    }
}

fn too_long() -> ApiError {
    ApiError::bad_request(format!(
        "the events asked for span more than {MAX_RUN} events of the log: ask for a \
         shorter range"
    ))
}

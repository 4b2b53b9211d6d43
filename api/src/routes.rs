//! Routes and handlers.

use std::sync::Arc;

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bulwark_consensus::RaftNode;
use bulwark_storage::{Command, EventKind};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Access, ClientIp};
use crate::extract::Body;
use crate::{AdminToken, ApiError};

/// Largest request body accepted.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Largest audit note.
const MAX_NOTE: usize = 1024 * 1024;
/// Default and maximum page size of event listings.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<RaftNode>,
    pub admin: AdminToken,
    pub tokenizer: crate::Tokenizer,
    pub preview: crate::Previewer,
    pub metrics: std::sync::Arc<crate::Metrics>,
    /// The only directory backups are written into (`[backup] dir`).
    pub backup_dir: std::path::PathBuf,
    /// `api.public_status`: `/metrics` and `/v1/cluster` answer without a token.
    pub public_status: bool,
    /// The reads recorded lately, so a repeat within a minute is not recorded again.
    pub reads: Arc<crate::ReadLog>,
    /// Checks and simulates proposed policies.
    pub policy: Arc<dyn crate::PolicyEngine>,
    /// The API is served over TLS: the console's session cookies are `Secure`.
    pub tls: bool,
    /// The free bytes of this node's data directory's file system as last read, and
    /// the floor below which its SMTP refuses mail (`smtp.min_free_disk_mb`).
    pub disk_free: Arc<dyn Fn() -> (u64, u64) + Send + Sync>,
    /// Writes and queues the recipients' digests and portal links.
    pub notices: Arc<dyn crate::Notices>,
}

/// The OpenAPI document's frame; the paths come from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulwark",
        description = "The mail security gateway's HTTP API: the audit trail, message \
                       traces, the quarantine, the delivery queue and the cluster. \
                       Errors are application/problem+json. Any call takes \
                       `?consistent=true` for a linearizable read, and every answer \
                       states the Raft log index it was read at in the \
                       `Bulwark-Applied-Index` header."
    ),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The `bearer` security scheme every authenticated call names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// Every route with its documentation: the router and the OpenAPI document are both
/// made from this, so neither can have a route the other lacks.
fn documented() -> OpenApiRouter<ApiState> {
    let learn = OpenApiRouter::new()
        .routes(routes!(crate::bayes::learn))
        .layer(DefaultBodyLimit::max(crate::bayes::MAX_LESSON));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::metrics::scrape))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::cluster::status))
        .routes(routes!(crate::cluster::add))
        .routes(routes!(crate::cluster::remove))
        .routes(routes!(crate::cluster::promote))
        .routes(routes!(crate::backup::backup))
        .routes(routes!(crate::digest::run))
        .routes(routes!(add_note))
        .routes(routes!(crate::events::list))
        .routes(routes!(verify_events))
        .routes(routes!(crate::bundle::bundle))
        .routes(routes!(crate::events::export))
        .routes(routes!(crate::events::tail))
        .routes(routes!(crate::messages::trace))
        .routes(routes!(crate::quarantine::list))
        .routes(routes!(crate::quarantine::release_matching))
        .routes(routes!(crate::quarantine::delete_matching))
        .routes(routes!(
            crate::quarantine::detail,
            crate::quarantine::delete
        ))
        .routes(routes!(crate::quarantine::raw))
        .routes(routes!(crate::quarantine::release))
        .routes(routes!(crate::queue::list))
        .routes(routes!(crate::queue::delete))
        .routes(routes!(crate::queue::retry))
        .routes(routes!(crate::queue::hold))
        .routes(routes!(crate::queue::release))
        .routes(routes!(crate::tokens::list, crate::tokens::create))
        .routes(routes!(crate::tokens::revoke))
        .routes(routes!(crate::users::list, crate::users::create))
        .routes(routes!(crate::users::remove))
        .routes(routes!(crate::users::set_password))
        .routes(routes!(crate::bayes::counts))
        .routes(routes!(crate::policy::get, crate::policy::change))
        .routes(routes!(crate::policy::history))
        .routes(routes!(crate::policy::simulate))
        .merge(learn)
}

/// The OpenAPI document of [`documented`], built once.
fn openapi_document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = documented().into_openapi();
        declare_common_answers(&mut doc);
        doc.to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// Declares on every operation the answers that do not come from its handler alone,
/// and gives every error answer the problem+json schema (`Problem`, added to the
/// components with `OpenApiDocument`, which this document's own answer names):
/// - `consistent` (any call, see [`consistency`]): 400 when it is neither `true` nor
///   `false`, 503 when the leader could not confirm the read in time;
/// - 401 on every call that needs a token (none, or not a valid one), and 403 (its
///   role may not) on every call that cannot do without one: each such call needs
///   an [`Access`] that some role lacks (the metrics role has only
///   `Access::Status`, which the status pages ask for, and they take a token
///   without needing one);
/// - 400 also for a request body that does not parse, 413 for one too big.
///
/// Each success declares its own body with its handler.
fn declare_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
    use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type};

    let consistent = ParameterBuilder::new()
        .name("consistent")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(
            "true: a linearizable read (the node first applies what the leader had \
             committed when the call arrived)",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean)))
        .build();
    let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
    let add = |op: &mut Operation, status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .build()
                    .into()
            });
    };
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            op.parameters
                .get_or_insert_with(Vec::new)
                .push(consistent.clone());
            let malformed = if op.request_body.is_some() {
                "a malformed request body or parameter (consistent=...)"
            } else {
                "a malformed parameter (consistent=...)"
            };
            add(op, "400", malformed);
            add(op, "503", "no leader confirmed a consistent read in time");
            // None: the document's own requirement, a bearer token.
            let security = op.security.as_deref();
            let public = security.is_some_and(|s| s.iter().all(|r| *r == Default::default()));
            let anonymous = security.is_some_and(|s| s.iter().any(|r| *r == Default::default()));
            if !public {
                add(op, "401", "no token, or not a valid one");
                if !anonymous {
                    add(op, "403", "the token's role may not make this call");
                }
            }
            if op.request_body.is_some() {
                add(op, "413", "the request body is too big");
            }
            for (status, answer) in op.responses.responses.iter_mut() {
                let RefOr::T(answer) = answer else { continue };
                if status.starts_with(['4', '5']) {
                    answer.content.clear();
                    answer
                        .content
                        .insert("application/problem+json".into(), problem());
                }
            }
        }
    }
    // The answer of every error, as ApiError writes it (RFC 9457).
    let text = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
    };
    let problem_schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("An error (RFC 9457 application/problem+json)"))
        .property("type", text("always about:blank"))
        .property("title", text("the HTTP status's phrase, e.g. bad request"))
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(400))
                .maximum(Some(599))
                .description(Some("the HTTP status code")),
        )
        .property("detail", text("what was wrong, for a person"))
        .required("type")
        .required("title")
        .required("status")
        .required("detail");
    let schemas = &mut doc.components.get_or_insert_default().schemas;
    schemas.insert("Problem".into(), RefOr::T(problem_schema.into()));
    // What GET /v1/openapi.json answers: this document.
    schemas.insert(
        "OpenApiDocument".into(),
        schema_of(serde_json::json!({
            "type": "object",
            "description": "An OpenAPI 3.1 document",
            "properties": {
                "openapi": { "type": "string", "description": "3.1.0" },
                "info": { "type": "object" },
                "paths": { "type": "object" },
                "components": { "type": "object" },
            },
            "required": ["openapi", "info", "paths"],
            "additionalProperties": true,
        })),
    );
}

/// A schema written as JSON, for an answer whose shape the code that makes it does
/// not declare (a `serde_json::Value` from another crate, or this document).
pub(crate) fn schema_of(
    schema: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let read: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> =
        serde_json::from_value(schema.clone()).expect("a schema written here is a valid schema");
    // utoipa's model reads a schema as the closest of its kinds: it must lose nothing.
    debug_assert_eq!(
        serde_json::to_value(&read).ok(),
        Some(schema),
        "utoipa does not keep this schema as written"
    );
    read
}

/// The OpenAPI 3.1 document of this API, generated from the code (no token needed).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", security(), responses((status = 200, description = "this document", body = ref("#/components/schemas/OpenApiDocument"))), operation_id = "openapi_json")]
async fn openapi_json() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let metrics = state.metrics.clone();
    let (router, _) = documented().split_for_parts();
    router
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::time_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            consistency,
        ))
        .with_state(state)
}

/// How long a `?consistent=true` read may wait for the leader's confirmation and for
/// this node to apply up to it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The response header stating the Raft log index this node had applied when it
/// started reading: the answer reflects at least every entry up to it.
pub const APPLIED_INDEX_HEADER: &str = "bulwark-applied-index";

/// Reads are served from this node's state. With `?consistent=true` (any route) the
/// node first waits until it has applied every entry the leader had committed when
/// the request arrived, as the leader confirms with a quorum, so the answer reflects
/// every write acknowledged before it (a linearizable read). Every answer states the
/// applied index it was read at in [`APPLIED_INDEX_HEADER`].
async fn consistency(
    State(s): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let query = request.uri().query().unwrap_or("");
    let mut consistent = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "consistent" {
            rest.push(pair);
            continue;
        }
        consistent = match value {
            "true" => true,
            "false" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "consistent: {other:?} (expected true or false)"
                )))
            }
        };
    }
    if rest.len() != query.split('&').filter(|p| !p.is_empty()).count() {
        let path = request.uri().path();
        let rewritten = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", rest.join("&"))
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(rewritten.parse().map_err(ApiError::internal)?);
        *request.uri_mut() = Uri::from_parts(parts).map_err(ApiError::internal)?;
    }
    let applied = if consistent {
        s.node.linearizable_read(READ_TIMEOUT).await?
    } else {
        s.node.applied_index()
    };
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(APPLIED_INDEX_HEADER, HeaderValue::from(applied));
    Ok(response)
}

#[utoipa::path(get, path = "/healthz", tag = "health", security(), responses((status = 200, description = "the process answers", body = String, content_type = "text/plain")), operation_id = "healthz")]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Ready {
    /// Always true: a node that is not ready answers 503.
    ready: bool,
}

#[utoipa::path(get, path = "/readyz", tag = "health", security(), responses((status = 200, description = "a leader is known and the node applied up to the commit index", body = Ready), (status = 503, description = "not ready")), operation_id = "readyz")]
async fn readyz(State(s): State<ApiState>) -> Result<Json<Ready>, ApiError> {
    if s.node.is_ready() {
        Ok(Json(Ready { ready: true }))
    } else {
        Err(ApiError::unavailable(
            "no leader known, or not yet applied up to the commit index",
        ))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NoteRequest {
    text: String,
}

/// An event a call recorded.
// Fields in alphabetical order, here and in `MessageAction`: the answers were JSON
// objects, whose keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Recorded {
    /// The event's hash (hex).
    hash: String,
    /// The event's seq.
    seq: u64,
}

impl Recorded {
    pub(crate) fn new(seq: u64, hash: [u8; 32]) -> Self {
        Recorded {
            hash: hex::encode(hash),
            seq,
        }
    }
}

/// An action on one message, as recorded (`api.action` or `quarantine.*`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MessageAction {
    /// What was done, e.g. `queue.retry`, `quarantine.release`.
    action: &'static str,
    /// The event's hash (hex).
    hash: String,
    message_id: String,
    /// The event's seq.
    seq: u64,
}

impl MessageAction {
    pub(crate) fn new(
        action: &'static str,
        message_id: bulwark_storage::MessageId,
        seq: u64,
        hash: [u8; 32],
    ) -> Self {
        MessageAction {
            action,
            hash: hex::encode(hash),
            message_id: message_id.to_string(),
            seq,
        }
    }
}

/// Appends an administrator's note to the audit trail.
#[utoipa::path(post, path = "/v1/notes", tag = "events", request_body = NoteRequest, responses((status = 201, description = "recorded: the event's seq and hash", body = Recorded), (status = 400, description = "empty or too long"), (status = 403, description = "the siem role")), operation_id = "add_note")]
async fn add_note(
    State(s): State<ApiState>,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    let caller = s.caller(&headers, Access::Note)?.name;
    let note: NoteRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if note.text.trim().is_empty() {
        return Err(ApiError::bad_request("text is empty"));
    }
    if note.text.len() > MAX_NOTE {
        return Err(ApiError::bad_request(format!(
            "text is {} bytes, at most {MAX_NOTE} allowed",
            note.text.len()
        )));
    }
    let result = s
        .node
        .proposer()
        .propose(Command::Record(EventKind::Note {
            author: caller.to_string(),
            text: note.text,
            client_ip,
        }))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Recorded::new(result.seq, result.hash)),
    ))
}

/// The largest event seq a cursor may name: the OpenAPI document declares seqs as
/// int64, and no log reaches past it.
pub(crate) const MAX_SEQ: u64 = i64::MAX as u64;

/// An event seq given as a cursor (`after`, `Last-Event-ID`), if any: at most
/// [`MAX_SEQ`]; `what` names the parameter in the error.
pub(crate) fn seq(what: &str, value: Option<u64>) -> Result<Option<u64>, ApiError> {
    match value {
        Some(v) if v > MAX_SEQ => Err(ApiError::bad_request(format!(
            "{what} must be 0..={MAX_SEQ}, not {v}"
        ))),
        v => Ok(v),
    }
}

/// The page size a listing asked for: [`DEFAULT_LIMIT`] if none, else 1..=[`MAX_LIMIT`].
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    Ok(limit)
}

/// An RFC 3339 time parameter, if given, as Unix milliseconds; `what` names the
/// parameter in the error.
pub(crate) fn time_ms(what: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let Some(text) = text else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: {e} (expected RFC 3339, e.g. 2026-11-28T09:00:00Z)"
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{what}: out of range")))
}

/// What walking the hash chain found.
// The API's copy of [`bulwark_storage::VerifyReport`].
#[derive(Serialize, utoipa::ToSchema)]
struct Verification {
    /// Every event's hash and link held.
    ok: bool,
    /// Events checked.
    checked: u64,
    /// Signed checkpoints found and checked (signature, and the hash they name).
    checkpoints: u64,
    /// The keys that signed them, as `node:hex public key`.
    signers: Vec<String>,
    /// The last event removed by the log's retention (0: none); the walk starts after
    /// it, from the hash it had.
    purged_through: u64,
    /// Hash of the last event checked (hex); all zeros for an empty log.
    head: String,
    /// The first event that did not hold.
    #[schema(required)]
    first_bad_seq: Option<u64>,
    /// What was wrong at `first_bad_seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

impl From<bulwark_storage::VerifyReport> for Verification {
    fn from(report: bulwark_storage::VerifyReport) -> Self {
        // Every field named: one added to the report is a compile error here.
        let bulwark_storage::VerifyReport {
            ok,
            checked,
            checkpoints,
            signers,
            purged_through,
            head,
            first_bad_seq,
            problem,
        } = report;
        Verification {
            ok,
            checked,
            checkpoints,
            signers,
            purged_through,
            head,
            first_bad_seq,
            problem,
        }
    }
}

#[utoipa::path(get, path = "/v1/events/verify", tag = "events", responses((status = 200, description = "the hash chain walked: ok, checked, head, first_bad_seq", body = Verification)), operation_id = "verify_events")]
async fn verify_events(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Verification>, ApiError> {
    s.caller(&headers, Access::Events)?;
    let node = s.node.clone();
    let report = tokio::task::spawn_blocking(move || node.state().verify())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(report.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_builds_and_every_schema_written_as_json_is_kept_as_written() {
        // schema_of checks each (a debug assertion) as the document is built.
        let doc: serde_json::Value = serde_json::from_str(openapi_document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "Event",
            "Rendered",
            "Simulation",
            "OpenApiDocument",
            "Problem",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
    }
}

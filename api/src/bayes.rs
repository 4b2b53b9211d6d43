//! The Bayesian classifier's training: learn a message as spam or ham, forget it,
//! and read the counts. A lesson is one Raft operation recording `bayes.trained`
//! with the caller and its address, so every node learns it alike.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bulwark_storage::{BayesClass, BayesLesson, Command, MessageId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{Access, ClientIp};
use crate::extract::PathParam;
use crate::routes::ApiState;
use crate::ApiError;

/// Largest message accepted for learning.
pub(crate) const MAX_LESSON: usize = 32 * 1024 * 1024;

/// Turns a raw message into the classifier's token hashes: the scanning pipeline's
/// tokenizer, supplied by the node so that learning and scanning see the same tokens.
pub type Tokenizer = Arc<dyn Fn(&[u8]) -> Vec<u64> + Send + Sync>;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LessonQuery {
    /// A message the gateway holds (quarantined or queued), instead of a body.
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    message_id: Option<String>,
}

/// A lesson learned.
// Fields in alphabetical order, here and in the counts: they were JSON objects, whose
// keys serde_json sorts, and keep their bytes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Learned {
    /// SHA-256 of the message (hex): a message counts once.
    digest: String,
    /// The `bayes.trained` event's hash (hex).
    hash: String,
    /// spam, ham or forget.
    lesson: String,
    /// The stored message it was, if one was named.
    #[schema(required)]
    message_id: Option<String>,
    /// The `bayes.trained` event's seq.
    seq: u64,
    /// Tokens the message gave.
    tokens: usize,
}

/// What this node's classifier has learned (`GET /v1/bayes`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Counts {
    ham_messages: u64,
    spam_messages: u64,
    /// Distinct tokens.
    tokens: usize,
}

/// `POST /v1/bayes/{spam|ham|forget}`: the request body is the message
/// (message/rfc822), or empty with `?message_id=` naming a stored message.
#[utoipa::path(post, path = "/v1/bayes/{lesson}", tag = "bayes", params(("lesson" = String, Path, description = "spam, ham or forget", pattern = "^(spam|ham|forget)$"), LessonQuery), request_body(content = String, content_type = "message/rfc822"), responses((status = 200, description = "learned", body = Learned), (status = 400, description = "no body and no message_id, both, or a malformed message_id"), (status = 422, description = "the body gives no tokens: not an RFC 5322 message"), (status = 403, description = "a role that may not act on messages"), (status = 404, description = "no such lesson, or no such message")), operation_id = "bayes_learn")]
pub(crate) async fn learn(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    PathParam(lesson): PathParam<String>,
    query: Result<Query<LessonQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Learned>), ApiError> {
    let user = s.caller(&headers, Access::Act)?.name;
    let class = match lesson.as_str() {
        "spam" => Some(BayesClass::Spam),
        "ham" => Some(BayesClass::Ham),
        "forget" => None,
        other => {
            return Err(ApiError::not_found(format!(
                "no lesson {other:?}: spam, ham or forget"
            )))
        }
    };
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        title: "bad request body",
        detail: format!(
            "{} (a message to learn is at most {MAX_LESSON} bytes)",
            e.body_text()
        ),
    })?;
    let (raw, message_id) = match query.message_id {
        Some(id) => {
            if !body.is_empty() {
                return Err(ApiError::bad_request(
                    "give the message as the body or name it with message_id, not both",
                ));
            }
            let id = id
                .parse::<MessageId>()
                .map_err(|e| ApiError::bad_request(format!("message_id: {e}")))?;
            let state = s.node.state();
            let raw = tokio::task::spawn_blocking(move || state.message_body(id))
                .await
                .map_err(ApiError::internal)??
                .ok_or_else(|| {
                    ApiError::not_found(format!("message {id} is not held by the gateway"))
                })?;
            (Bytes::from(raw), Some(id))
        }
        None if body.is_empty() => {
            return Err(ApiError::bad_request(
                "the request body is empty: send the message (message/rfc822) or name a \
                 stored one with message_id",
            ))
        }
        None => (body, None),
    };
    let tokenizer = s.tokenizer.clone();
    let (digest, tokens) = tokio::task::spawn_blocking(move || {
        let digest: [u8; 32] = Sha256::digest(&raw).into();
        (digest, tokenizer(&raw))
    })
    .await
    .map_err(ApiError::internal)?;
    if tokens.is_empty() {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            title: "not a message",
            detail: "the body gives no tokens: it is not an RFC 5322 message".into(),
        });
    }
    let token_count = tokens.len();
    let result = s
        .node
        .proposer()
        .propose(Command::TrainBayes(Box::new(BayesLesson {
            digest,
            class,
            tokens,
            message_id,
            user: user.to_string(),
            client_ip,
        })))
        .await?;
    Ok((
        StatusCode::OK,
        Json(Learned {
            digest: hex::encode(digest),
            hash: hex::encode(result.hash),
            lesson,
            message_id: message_id.map(|id| id.to_string()),
            seq: result.seq,
            tokens: token_count,
        }),
    ))
}

/// `GET /v1/bayes`: what this node's classifier has learned.
#[utoipa::path(get, path = "/v1/bayes", tag = "bayes", responses((status = 200, description = "messages learned and distinct tokens", body = Counts), (status = 403, description = "the siem role")), operation_id = "bayes_counts")]
pub(crate) async fn counts(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Counts>, ApiError> {
    s.caller(&headers, Access::Messages)?;
    let state = s.node.state();
    let (spam, ham) = state.bayes_totals();
    Ok(Json(Counts {
        ham_messages: ham,
        spam_messages: spam,
        tokens: state.bayes_distinct_tokens(),
    }))
}

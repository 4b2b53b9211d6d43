use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_consensus::ProposeError;

/// An API failure, rendered as RFC 9457 `application/problem+json`.
#[derive(Debug, thiserror::Error)]
#[error("{title}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "bad request",
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            title: "not found",
            detail: detail.into(),
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            title: "unauthorized",
            detail: "a valid bearer token is required".into(),
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            title: "forbidden",
            detail: detail.into(),
        }
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            title: "conflict",
            detail: detail.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            title: "internal error",
            detail: detail.to_string(),
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "unavailable",
            detail: detail.into(),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        // Not known to be committed: the client should retry.
        ApiError::unavailable(e.to_string())
    }
}

/// A request body that could not be read: too large (413) or cut short (400).
impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        ApiError {
            status: e.status(),
            title: "bad request body",
            detail: e.body_text(),
        }
    }
}

/// A query string that does not parse into the call's parameters.
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

/// A path parameter that does not parse (not a number, not UTF-8).
impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError {
            status: e.status(),
            title: "bad request",
            detail: e.body_text(),
        }
    }
}

impl From<bulwark_storage::Error> for ApiError {
    fn from(e: bulwark_storage::Error) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

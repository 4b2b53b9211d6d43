//! Extractors whose refusals are problem+json like every other error ([`ApiError`]),
//! instead of axum's plain-text rejections: a path parameter that does not parse, a
//! request body too big or cut short.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A path parameter (`/v1/queue/{id}`): 400 when it does not parse (not a number, not
/// UTF-8 once decoded).
pub(crate) struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(PathParam(value))
    }
}

/// The request body: 413 beyond the route's limit, 400 when it cannot be read.
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Body(Bytes::from_request(request, state).await?))
    }
}

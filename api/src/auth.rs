//! Bearer-token authentication. Roles and API-managed tokens come with the API issue;
//! for now there is the admin token, compared by its SHA-256 digest.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// The admin token, kept only as a digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken {
            digest: Sha256::digest(token.trim().as_bytes()).into(),
        }
    }

    /// Checks the request's `Authorization: Bearer` header; returns the caller's name.
    pub fn check(&self, headers: &HeaderMap) -> Result<&'static str, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let differing = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differing == 0 {
            Ok("admin")
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// The address of the caller's connection, recorded with the actions it takes. Only
/// the peer address is used: a forwarding header is the client's word, not a fact.
/// `None` when the router is served without connection info (as in unit tests).
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

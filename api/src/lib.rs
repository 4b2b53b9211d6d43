//! Bulwark's HTTP API (axum): health, cluster status, the audit trail, the delivery
//! queue, the quarantine, the Bayesian classifier's training, the cluster's policy,
//! and the tokens that give each caller a role.
//!
//! Reads are served from the local node's applied state and say which Raft index
//! they reflect; writes go through the consensus crate's proposer, which forwards to
//! the leader, so any node answers any call. Errors are `application/problem+json`,
//! produced in one place ([`ApiError`]).
//!
//! It must never touch storage directly for writes: every change is a proposal.
#![forbid(unsafe_code)]

mod access;
mod auth;
mod backup;
mod bayes;
mod bundle;
mod cluster;
mod console;
mod digest;
mod error;
mod events;
mod extract;
mod messages;
mod metrics;
mod policy;
mod quarantine;
mod queue;
mod routes;
mod tokens;
mod users;

pub use access::ReadLog;
pub use auth::{AdminToken, BOOTSTRAP_ADMIN};
pub use bayes::Tokenizer;
pub use digest::{Answer, DigestRun, Notices};
pub use error::ApiError;
pub use metrics::Metrics;
pub use policy::PolicyEngine;
pub use quarantine::Previewer;
pub use routes::{router, ApiState};

/// Serves the API on `listener` (over TLS with `tls`) until `shutdown` completes,
/// then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // With the peer address of each connection: audited actions record it.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(None);
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    axum_server::from_tcp_rustls(listener.into_std()?, config)
        .handle(handle)
        .serve(app)
        .await
}

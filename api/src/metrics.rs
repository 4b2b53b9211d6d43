//! `GET /metrics`: Prometheus text (OpenMetrics). The node registers what it counts
//! itself (SMTP sessions, scan times) in the [`Registry`] it hands over; this module
//! adds the API's request durations and, read at each scrape, Raft's term and
//! indexes with each member's lag, the events applied by type, the verdicts by
//! action, and the depth of the delivery queue and of the quarantine.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulwark_consensus::RaftNode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::auth::Access;
use crate::routes::ApiState;
use crate::ApiError;

/// The node's metrics registry, completed with the API's own.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

impl Metrics {
    /// Adds the API's metrics and the scrape-time readings of `node` to `registry`.
    pub fn new(mut registry: Registry, node: Arc<RaftNode>) -> Arc<Self> {
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "bulwark_api_request_duration_seconds",
            "Time to answer an API request (to the first byte of a streamed body)",
            requests.clone(),
        );
        registry.register_collector(Box::new(NodeReadings { node }));
        Arc::new(Metrics { registry, requests })
    }

    fn render(&self) -> Result<String, ApiError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(ApiError::internal)?;
        Ok(out)
    }
}

/// `GET /metrics`: unauthenticated like `/healthz` (it says how busy the node is,
/// never what a message says) unless `api.public_status = false`, which asks for a
/// token of any role (`metrics` for Prometheus).
#[utoipa::path(get, path = "/metrics", tag = "health", security((), ("bearer" = [])), responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"), (status = 403, description = "api.public_status = false and a role that may not read it")), operation_id = "metrics_scrape")]
pub(crate) async fn scrape(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !s.public_status {
        s.caller(&headers, Access::Status)?;
    }
    let metrics = s.metrics.clone();
    // The collector reads RocksDB: off the async threads.
    let text = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .map_err(ApiError::internal)??;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// Times every request by its route pattern (not its path: ids would make a series
/// per message).
pub(crate) async fn time_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// What is read from the node at each scrape.
struct NodeReadings {
    node: Arc<RaftNode>,
}

impl std::fmt::Debug for NodeReadings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReadings").finish_non_exhaustive()
    }
}

impl Collector for NodeReadings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.node.status();
        let commit = status.commit_index.unwrap_or(0);
        let applied = status.applied_index.unwrap_or(0);
        let gauges = [
            ("bulwark_raft_term", "Current Raft term", status.term),
            (
                "bulwark_raft_is_leader",
                "1 on the leader, 0 elsewhere",
                u64::from(status.leader_id == Some(status.node_id)),
            ),
            (
                "bulwark_raft_last_log_index",
                "Last index in this node's Raft log",
                status.last_log_index.unwrap_or(0),
            ),
            ("bulwark_raft_commit_index", "Raft commit index", commit),
            (
                "bulwark_raft_applied_index",
                "Last index applied to this node's state",
                applied,
            ),
            (
                "bulwark_raft_apply_lag",
                "Committed entries not yet applied on this node",
                commit.saturating_sub(applied),
            ),
            (
                "bulwark_feature_level",
                "Highest feature level this node's build applies",
                u64::from(self.node.feature_level()),
            ),
            (
                "bulwark_cluster_feature_level",
                "The cluster's active feature level, as this node has applied it",
                u64::from(self.node.cluster_feature_level()),
            ),
            (
                "bulwark_events",
                "Events in this node's audit log (the cluster's log: the same on every \
                 node once caught up)",
                status.event_count,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let lags: Vec<_> = status
            .members
            .iter()
            .filter_map(|m| m.lag.map(|lag| (m.id, lag)))
            .collect();
        if !lags.is_empty() {
            let mut family = encoder.encode_descriptor(
                "bulwark_raft_member_lag",
                "Entries each member is behind the leader's log (on the leader)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (id, lag) in lags {
                let labels = [("member", id.to_string())];
                ConstGauge::new(lag as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let state = self.node.state();
        let counts = state.applied_counts();
        let families = [
            (
                "bulwark_events_applied",
                "Events applied on this node since it started, by type. Every node applies \
                 every event: over a cluster take max() or one node, a sum() counts each \
                 once per node",
                "type",
                &counts.events,
            ),
            (
                "bulwark_messages",
                "Scan verdicts applied on this node since it started, by action. Every node \
                 applies every verdict: over a cluster take max() or one node, a sum() \
                 counts each once per node",
                "action",
                &counts.verdicts,
            ),
        ];
        for (name, help, label, values) in families {
            if values.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (value, n) in values {
                let labels = [(label, *value)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let (queued, quarantined) = state.depths();
        for (name, help, value) in [
            (
                "bulwark_queue_messages",
                "Messages in the delivery queue (the cluster's: the same on every node)",
                queued,
            ),
            (
                "bulwark_quarantine_messages",
                "Messages in the quarantine (the cluster's: the same on every node)",
                quarantined,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

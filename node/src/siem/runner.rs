//! The loop that runs each exporter on the leader: read after the cursor, send a
//! batch, move the cursor once the receiver has accepted it.

use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_storage::{Command, EventFilter, StateStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{hec, syslog, webhook, Exporter, Filter, Kind, SendError};

/// First pause after a failed batch; it doubles up to the exporter's `retry_max`.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Events read from the log per batch at most, matching the filter or not, so that a
/// filter that matches little never makes one look at the log unbounded.
const SCAN_PER_BATCH: usize = 10_000;
/// How long a new leader waits to have applied everything committed before it
/// reads the cursors.
const CATCH_UP: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    exporter: String,
}

/// What the exporters count, by exporter.
#[derive(Default)]
pub struct Metrics {
    sent: Family<Label, Counter>,
    failures: Family<Label, Counter>,
    cursor: Family<Label, Gauge>,
    lag: Family<Label, Gauge>,
    running: Family<Label, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let metrics = Metrics::default();
        registry.register(
            "bulwark_siem_events_sent",
            "Events this node's exporters had accepted by their receiver",
            metrics.sent.clone(),
        );
        registry.register(
            "bulwark_siem_batch_failures",
            "Batches a receiver did not accept (sent again after a pause)",
            metrics.failures.clone(),
        );
        registry.register(
            "bulwark_siem_cursor",
            "Seq up to which the exporter's receiver has accepted the log (replicated)",
            metrics.cursor.clone(),
        );
        registry.register(
            "bulwark_siem_lag_events",
            "Events recorded after the exporter's cursor: the export queue's depth",
            metrics.lag.clone(),
        );
        registry.register(
            "bulwark_siem_running",
            "1 on the node that runs the exporter (the leader)",
            metrics.running.clone(),
        );
        Arc::new(metrics)
    }
}

/// Runs every exporter until `stop` is cancelled.
pub async fn run(
    node: Arc<RaftNode>,
    exporters: Vec<Exporter>,
    hostname: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for exporter in exporters {
        tasks.spawn(export(
            node.clone(),
            exporter,
            hostname.clone(),
            metrics.clone(),
            stop.clone(),
        ));
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "SIEM exporter task");
        }
    }
}

enum Sink {
    Syslog(syslog::Sink),
    Hec(hec::Sink),
    Webhook(webhook::Sink),
}

impl Sink {
    fn new(exporter: &Exporter, hostname: &str) -> Result<Sink, SendError> {
        Ok(match &exporter.kind {
            Kind::Syslog(s) => Sink::Syslog(syslog::Sink::new(s.clone(), hostname.to_string())),
            Kind::Hec(s) => Sink::Hec(hec::Sink::new(s.clone(), hostname.to_string())?),
            Kind::Webhook(s) => {
                Sink::Webhook(webhook::Sink::new(s.clone(), exporter.name.clone())?)
            }
        })
    }

    async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        match self {
            Sink::Syslog(sink) => sink.send(events).await,
            Sink::Hec(sink) => sink.send(events).await,
            Sink::Webhook(sink) => sink.send(events).await,
        }
    }
}

/// One exporter's loop, on every node; it sends only while the node leads.
async fn export(
    node: Arc<RaftNode>,
    exporter: Exporter,
    hostname: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let label = Label {
        exporter: exporter.name.clone(),
    };
    let mut sink = match Sink::new(&exporter, &hostname) {
        Ok(sink) => sink,
        Err(e) => {
            tracing::error!(exporter = %exporter.name, error = %e, "SIEM exporter not started");
            return;
        }
    };
    // Every series exists from the start, zero until something happens.
    let _ = metrics.sent.get_or_create(&label);
    let _ = metrics.failures.get_or_create(&label);
    let running = metrics.running.get_or_create(&label).clone();
    // The term in which this node caught up with the log as leader (a leadership
    // lost and won back between two looks is a new term, and catches up again).
    let mut caught_up: Option<u64> = None;
    let mut pause = RETRY_INITIAL;
    // The seq of a batch the receiver accepted whose cursor is not stored yet: it is
    // stored before anything more is sent, so a Raft that cannot commit never makes
    // the same batch go out again and again.
    let mut pending: Option<u64> = None;
    loop {
        if stop.is_cancelled() {
            running.set(0);
            return;
        }
        if let Some(seq) = pending {
            if !node.is_leader() {
                // The next leader sends the batch again from the stored cursor.
                pending = None;
                continue;
            }
            let command = Command::ExportCursor {
                exporter: exporter.name.clone(),
                seq,
            };
            match node.proposer().propose(command).await {
                Ok(_) => pending = None,
                Err(e) => {
                    tracing::warn!(exporter = %exporter.name, error = %e, "storing the export cursor");
                    if sleep_or_stop(exporter.poll, &stop).await {
                        return;
                    }
                }
            }
            continue;
        }
        let state = node.state();
        let head = state.chain_head().0;
        let cursor = match state.export_cursor(&exporter.name) {
            Ok(cursor) => cursor,
            Err(e) => {
                tracing::warn!(exporter = %exporter.name, error = %e, "reading the export cursor");
                if sleep_or_stop(exporter.poll, &stop).await {
                    return;
                }
                continue;
            }
        };
        metrics.cursor.get_or_create(&label).set(cursor as i64);
        metrics
            .lag
            .get_or_create(&label)
            .set(head.saturating_sub(cursor) as i64);
        let term = node.raft().metrics().borrow().current_term;
        if !node.is_leader() {
            caught_up = None;
            running.set(0);
            if sleep_or_stop(exporter.poll, &stop).await {
                return;
            }
            continue;
        }
        if caught_up != Some(term) {
            // The last leader's cursor may be committed but not yet applied here.
            match node.linearizable_read(CATCH_UP).await {
                Ok(_) => {
                    caught_up = Some(term);
                    running.set(1);
                    tracing::info!(exporter = %exporter.name, cursor, "SIEM exporter running on this node");
                }
                Err(e) => {
                    tracing::debug!(exporter = %exporter.name, error = %e, "catching up before exporting");
                    if sleep_or_stop(exporter.poll, &stop).await {
                        return;
                    }
                }
            }
            continue;
        }
        if cursor >= head {
            if sleep_or_stop(exporter.poll, &stop).await {
                return;
            }
            continue;
        }
        let filter = exporter.filter.clone();
        let batch = exporter.batch;
        let read =
            tokio::task::spawn_blocking(move || collect(&state, cursor, &filter, batch)).await;
        let (events, through) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::warn!(exporter = %exporter.name, error = %e, "reading the event log");
                if sleep_or_stop(exporter.poll, &stop).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(exporter = %exporter.name, error = %e, "reading the event log");
                return;
            }
        };
        if let Some(first) = events.first().and_then(|e| e["seq"].as_u64()) {
            if first > cursor + 1 && cursor < purged_through(&node) {
                tracing::warn!(
                    exporter = %exporter.name,
                    from = cursor + 1,
                    to = first - 1,
                    "events the exporter had not shipped were purged (retention_ignores_exporters, or an exporter added later)"
                );
            }
        }
        if !events.is_empty() {
            let sent = tokio::select! {
                sent = sink.send(&events) => sent,
                _ = stop.cancelled() => return,
            };
            if let Err(e) = sent {
                metrics.failures.get_or_create(&label).inc();
                tracing::warn!(
                    exporter = %exporter.name,
                    error = %e,
                    first_seq = cursor + 1,
                    retry_in_ms = pause.as_millis() as u64,
                    "SIEM receiver did not accept a batch"
                );
                if sleep_or_stop(pause, &stop).await {
                    return;
                }
                pause = (pause * 2).min(exporter.retry_max);
                continue;
            }
            metrics
                .sent
                .get_or_create(&label)
                .inc_by(events.len() as u64);
        }
        pause = RETRY_INITIAL;
        pending = Some(through);
    }
}

/// Up to `batch` events after `cursor` that pass `filter`, as JSON, and the seq up to
/// which the log was read (what the cursor becomes once they are accepted).
fn collect(
    state: &StateStore,
    cursor: u64,
    filter: &Filter,
    batch: usize,
) -> bulwark_storage::Result<(Vec<Value>, u64)> {
    let mut events = Vec::new();
    let mut through = cursor;
    let mut scanned = 0;
    while events.len() < batch && scanned < SCAN_PER_BATCH {
        let want = (batch - events.len()).min(SCAN_PER_BATCH - scanned);
        let (page, next) = state.events(&EventFilter::default(), through, want)?;
        for stored in &page {
            through = stored.event.seq;
            let json = stored.to_json();
            if filter.matches(&json) {
                events.push(json);
            }
        }
        scanned += page.len();
        if next.is_none() || page.is_empty() {
            break;
        }
    }
    Ok((events, through))
}

/// The last event the log's retention removed (0: none, or unreadable).
fn purged_through(node: &RaftNode) -> u64 {
    node.state().purged_through().map_or(0, |(seq, _)| seq)
}

/// Sleeps for `pause`; true if `stop` was cancelled meanwhile.
async fn sleep_or_stop(pause: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.cancelled() => true,
    }
}

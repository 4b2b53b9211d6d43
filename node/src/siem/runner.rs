//! The loops that run the policy's exporters on the leader, started, restarted and
//! stopped as its versions change them. Each one reads after the cursor, numbers the
//! batch after the exporter's count, sends it, and moves cursor and count once the
//! receiver has accepted it, or past it with a dead letter once the receiver has
//! refused it `dead_letter_after` times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_storage::rules::export::ExportPosition;
use bulwark_storage::{Command, EventFilter, ExportDeadLetter, ExportProgress, StateStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    hec, relp, syslog, webhook, Exporter, Exporters, Filter, Kind, Resends, SendError,
    SyslogTransport,
};

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
    resent: Family<Label, Counter>,
    dead_letters: Family<Label, Counter>,
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
            "bulwark_siem_resent_events",
            "Events sent again in a batch already sent once: each one a possible duplicate",
            metrics.resent.clone(),
        );
        registry.register(
            "bulwark_siem_dead_letters",
            "Batches given up after dead_letter_after refusals (siem.dead_letter)",
            metrics.dead_letters.clone(),
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

/// Runs the exporters of the policy this node follows until `stop` is cancelled:
/// each one the policy adds is started, each one it changes is started again with
/// its new settings (from its stored cursor), each one it takes out is stopped.
pub async fn run(
    node: Arc<RaftNode>,
    mut exporters: watch::Receiver<Arc<Exporters>>,
    hostname: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        let wanted = exporters.borrow_and_update().clone();
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, run)| {
                !wanted
                    .ready
                    .iter()
                    .any(|e| &e.name == *name && e.written == run.written)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let run = running.remove(&name).expect("listed above");
            run.stop.cancel();
            if let Err(e) = run.task.await {
                tracing::error!(exporter = %name, error = %e, "SIEM exporter task");
            }
            metrics
                .running
                .get_or_create(&Label {
                    exporter: name.clone(),
                })
                .set(0);
            tracing::info!(exporter = %name, "SIEM exporter stopped: the cluster's policy changed or removed it");
        }
        for exporter in &wanted.ready {
            if running.contains_key(&exporter.name) {
                continue;
            }
            let child = stop.child_token();
            let task = tokio::spawn(export(
                node.clone(),
                exporter.clone(),
                hostname.clone(),
                metrics.clone(),
                child.clone(),
            ));
            running.insert(
                exporter.name.clone(),
                Running {
                    written: exporter.written.clone(),
                    stop: child,
                    task,
                },
            );
        }
        tokio::select! {
            changed = exporters.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    for (name, run) in running {
        run.stop.cancel();
        if let Err(e) = run.task.await {
            tracing::error!(exporter = %name, error = %e, "SIEM exporter task");
        }
    }
}

/// An exporter's loop, started with these settings.
struct Running {
    written: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

enum Sink {
    Syslog(syslog::Sink),
    Relp(relp::Sink),
    Hec(hec::Sink),
    Webhook(webhook::Sink),
}

impl Sink {
    fn new(exporter: &Exporter, hostname: &str, resends: Resends) -> Result<Sink, SendError> {
        let hostname = hostname.to_string();
        Ok(match &exporter.kind {
            Kind::Syslog(s) if s.transport == SyslogTransport::Relp => {
                Sink::Relp(relp::Sink::new(s.clone(), hostname, resends))
            }
            Kind::Syslog(s) => Sink::Syslog(syslog::Sink::new(s.clone(), hostname, resends)),
            Kind::Hec(s) => Sink::Hec(hec::Sink::new(s.clone(), hostname, resends)?),
            Kind::Webhook(s) => Sink::Webhook(webhook::Sink::new(
                s.clone(),
                exporter.name.clone(),
                resends,
            )?),
        })
    }

    async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        match self {
            Sink::Syslog(sink) => sink.send(events).await,
            Sink::Relp(sink) => sink.send(events).await,
            Sink::Hec(sink) => sink.send(events).await,
            Sink::Webhook(sink) => sink.send(events).await,
        }
    }

    /// Ends what a sink keeps open (a RELP session) when this node stops exporting.
    async fn close(&mut self) {
        if let Sink::Relp(sink) = self {
            sink.close().await;
        }
    }
}

/// The batch being tried: tried again, it is the same batch (not one grown by what
/// was recorded meanwhile), and its refusals add up.
struct Attempt {
    /// The cursor the batch starts after.
    cursor: u64,
    /// The seq the log was read up to for it.
    through: u64,
    refusals: u32,
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
    let resends = Resends::new(metrics.resent.get_or_create(&label).clone());
    let mut sink = match Sink::new(&exporter, &hostname, resends) {
        Ok(sink) => sink,
        Err(e) => {
            tracing::error!(exporter = %exporter.name, error = %e, "SIEM exporter not started");
            return;
        }
    };
    // Every series exists from the start, zero until something happens.
    let _ = metrics.sent.get_or_create(&label);
    let _ = metrics.failures.get_or_create(&label);
    let _ = metrics.dead_letters.get_or_create(&label);
    let running = metrics.running.get_or_create(&label).clone();
    // The term in which this node caught up with the log as leader (a leadership
    // lost and won back between two looks is a new term, and catches up again).
    let mut caught_up: Option<u64> = None;
    let mut pause = RETRY_INITIAL;
    let mut attempt: Option<Attempt> = None;
    // A batch the receiver accepted (or that was given up) whose progress is not
    // stored yet: it is stored before anything more is sent, so a Raft that cannot
    // commit never makes the same batch go out again and again.
    let mut pending: Option<ExportProgress> = None;
    loop {
        if stop.is_cancelled() {
            running.set(0);
            return;
        }
        if let Some(progress) = &pending {
            if !node.is_leader() {
                // The next leader sends the batch again from the stored cursor.
                pending = None;
                continue;
            }
            let command = Command::ExportProgress(Box::new(progress.clone()));
            match node.proposer().propose(command).await {
                Ok(_) => {
                    if progress.dead_letter.is_some() {
                        metrics.dead_letters.get_or_create(&label).inc();
                    }
                    pending = None;
                }
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
        let position = match state.export_position(&exporter.name) {
            Ok(position) => position,
            Err(e) => {
                tracing::warn!(exporter = %exporter.name, error = %e, "reading the export cursor");
                if sleep_or_stop(exporter.poll, &stop).await {
                    return;
                }
                continue;
            }
        };
        let cursor = position.seq;
        metrics.cursor.get_or_create(&label).set(cursor as i64);
        metrics
            .lag
            .get_or_create(&label)
            .set(head.saturating_sub(cursor) as i64);
        let term = node.raft().metrics().borrow().current_term;
        if !node.is_leader() {
            if caught_up.take().is_some() {
                sink.close().await;
            }
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
        if attempt.as_ref().is_some_and(|a| a.cursor != cursor) {
            attempt = None;
        }
        let end = attempt.as_ref().map_or(u64::MAX, |a| a.through);
        let filter = exporter.filter.clone();
        let (name, batch) = (exporter.name.clone(), exporter.batch);
        let read = tokio::task::spawn_blocking(move || {
            collect(&state, &name, position, end, &filter, batch)
        })
        .await;
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
        let mut progress = ExportProgress {
            exporter: exporter.name.clone(),
            seq: through,
            shipped: position.shipped + events.len() as u64,
            dead_letter: None,
        };
        if !events.is_empty() {
            let sent = tokio::select! {
                sent = sink.send(&events) => sent,
                _ = stop.cancelled() => return,
            };
            if let Err(e) = sent {
                metrics.failures.get_or_create(&label).inc();
                let tried = attempt.get_or_insert(Attempt {
                    cursor,
                    through,
                    refusals: 0,
                });
                if matches!(e, SendError::Rejected(_)) {
                    tried.refusals += 1;
                }
                let refusals = tried.refusals;
                if refusals >= exporter.dead_letter_after {
                    tracing::error!(
                        exporter = %exporter.name,
                        error = %e,
                        first_seq = cursor + 1,
                        last_seq = through,
                        tries = refusals,
                        "SIEM receiver refused a batch for good: recorded as siem.dead_letter and skipped"
                    );
                    progress.dead_letter = Some(ExportDeadLetter {
                        exporter: exporter.name.clone(),
                        first_seq: cursor + 1,
                        last_seq: through,
                        events: events.len() as u32,
                        tries: refusals,
                        error: e.to_string().chars().take(500).collect(),
                    });
                    // The pause keeps growing: a receiver that refuses everything
                    // gets a dead letter every dead_letter_after slow tries.
                    pending = Some(progress);
                    continue;
                }
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
        pending = Some(progress);
    }
}

/// Up to `batch` events after the exporter's cursor, up to seq `end` at most, that
/// pass `filter` (or are this exporter's own dead letters, which explain the gaps
/// in its numbers), as JSON numbered after its count, and the seq up to which the
/// log was read (what the cursor becomes once they are accepted).
fn collect(
    state: &StateStore,
    exporter: &str,
    position: ExportPosition,
    end: u64,
    filter: &Filter,
    batch: usize,
) -> bulwark_storage::Result<(Vec<Value>, u64)> {
    let mut events = Vec::new();
    let mut through = position.seq;
    let mut scanned = 0;
    while events.len() < batch && scanned < SCAN_PER_BATCH && through < end {
        let want = (batch - events.len()).min(SCAN_PER_BATCH - scanned);
        let (page, next) = state.events(&EventFilter::default(), through, want)?;
        for stored in page.iter().take_while(|s| s.event.seq <= end) {
            through = stored.event.seq;
            let mut json = stored.to_json();
            let own_dead_letter =
                json["type"] == "siem.dead_letter" && json["siem"]["exporter"] == exporter;
            // Every receiver holds the anchors of the chain, whatever it filters: the
            // signed checkpoints and the keys trusted to sign them.
            let anchor = json["type"] == "audit.checkpoint" || json["type"] == "audit.key_rotated";
            if filter.matches(&json) || own_dead_letter || anchor {
                let seq = position.shipped + events.len() as u64 + 1;
                json["export"] = serde_json::json!({ "exporter": exporter, "seq": seq });
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

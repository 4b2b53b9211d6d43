//! Concurrent note writers: the write load the cluster tests put on a cluster.
//!
//! Each writer takes the next note number from a shared counter, posts the note to the
//! nodes round-robin (moving on to the next node when one fails) and records every
//! acknowledgement. An acknowledged note is a promise the cluster must keep; a note whose
//! request failed may or may not have been committed, and tests treat it that way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::ApiClient;

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent writer tasks.
    pub writers: usize,
    /// Stop after this many notes were started; `None` runs until `stop` is set.
    pub total: Option<u64>,
    /// Note texts are `"{prefix}-{number:06}"`.
    pub prefix: String,
    /// How long one note may be retried (across nodes) before it counts as failed.
    pub per_note_deadline: Duration,
    /// Hard bound on the whole run; writers stop starting notes after it.
    pub overall_deadline: Duration,
}

impl LoadSpec {
    /// `writers` writers posting `total` notes named `prefix-NNNNNN`.
    pub fn fixed(writers: usize, total: u64, prefix: &str) -> Self {
        Self {
            writers,
            total: Some(total),
            prefix: prefix.to_string(),
            per_note_deadline: Duration::from_secs(60),
            overall_deadline: Duration::from_secs(900),
        }
    }

    /// `writers` writers posting until told to stop.
    pub fn until_stopped(writers: usize, prefix: &str) -> Self {
        Self {
            writers,
            total: None,
            prefix: prefix.to_string(),
            per_note_deadline: Duration::from_secs(60),
            overall_deadline: Duration::from_secs(900),
        }
    }
}

/// One acknowledged note.
#[derive(Debug, Clone)]
pub struct Ack {
    pub seq: u64,
    pub hash: String,
    pub text: String,
    /// The node that answered 201.
    pub node: u64,
}

/// What a load run did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    /// Notes never acknowledged, with the last error (they may still be committed).
    pub failed: Vec<(String, String)>,
    /// Attempts beyond the first, summed over all notes.
    pub retries: u64,
    pub elapsed: Duration,
    /// Whether the overall deadline cut the run short.
    pub hit_deadline: bool,
}

impl LoadReport {
    /// Acknowledged notes per second over the run.
    pub fn rate(&self) -> f64 {
        self.acks.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Acknowledgements grouped by the node that answered.
    pub fn acks_by_node(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for a in &self.acks {
            *m.entry(a.node).or_insert(0) += 1;
        }
        m
    }
}

/// Shared controls of a running load: stop it, watch its progress.
#[derive(Clone, Default)]
pub struct LoadControl {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

impl LoadControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the writers to finish their current note and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Notes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` notes are acknowledged.
    pub async fn wait_acked(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        while self.acked() < n {
            anyhow::ensure!(
                Instant::now() < end,
                "only {} of {n} notes acknowledged after {timeout:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Runs the load to completion (total reached, `control.stop()`, or the overall deadline).
pub async fn write_notes(client: ApiClient, spec: LoadSpec, control: LoadControl) -> LoadReport {
    let started = Instant::now();
    let end = started + spec.overall_deadline;
    let next = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let mut tasks = Vec::with_capacity(spec.writers);
    for _ in 0..spec.writers {
        let client = client.clone();
        let spec = spec.clone();
        let control = control.clone();
        let next = next.clone();
        let report = report.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if control.stop.load(Ordering::SeqCst) {
                    return;
                }
                if Instant::now() >= end {
                    report.lock().expect("report").hit_deadline = true;
                    return;
                }
                let n = next.fetch_add(1, Ordering::SeqCst);
                if spec.total.is_some_and(|t| n >= t) {
                    return;
                }
                let text = format!("{}-{n:06}", spec.prefix);
                let res = client
                    .post_note_any(n as usize, &text, spec.per_note_deadline)
                    .await;
                let mut r = report.lock().expect("report");
                match res {
                    Ok((node, posted, attempts)) => {
                        r.retries += u64::from(attempts - 1);
                        r.acks.push(Ack {
                            seq: posted.seq,
                            hash: posted.hash,
                            text,
                            node,
                        });
                        control.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => r.failed.push((text, format!("{e:#}"))),
                }
            }
        }));
    }
    for t in tasks {
        // A writer only panics on a poisoned lock, i.e. after another panic.
        let _ = t.await;
    }
    let mut r = std::mem::take(&mut *report.lock().expect("report"));
    r.elapsed = started.elapsed();
    r.acks.sort_by_key(|a| a.seq);
    r
}

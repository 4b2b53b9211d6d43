//! t100: a rolling restart of all three nodes, one at a time, under continuous SMTP
//! load, as an operator does it (`systemctl restart`: SIGTERM, wait for the exit,
//! start, wait until the node is ready and caught up, next node). The leader goes
//! first, so its leadership must be handed over. Checked:
//!
//! - every node exits cleanly (status 0) within the harness's SIGTERM timeout;
//! - a stopping leader hands its leadership over before it exits: the two others
//!   already agree on a new leader when it is gone (no election timeout to wait);
//! - the MTAs in front see only what they retry: 4xx replies (421 at the drain) and
//!   refused connections to the stopped node; no 5xx, no attempt cut after the end
//!   of data (a graceful stop lets transactions finish);
//! - every message is finally accepted, and every accepted message reaches the next
//!   hop (an SMTP sink in the test).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bulwark_cluster_tests::mta::{MtaLoad, Running, Targets};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{self, Outcome};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

/// Upper bound of the load; it is stopped once the last node is back.
const MESSAGES: usize = 20_000;
const SESSIONS: usize = 6;
const SIZE: usize = 2_048;
/// Each session's pause between messages: a steady load the nodes keep up with.
const PACE: Duration = Duration::from_millis(20);
const MAX_ATTEMPTS: usize = 40;
const LOAD_DEADLINE: Duration = Duration::from_secs(240);
/// Accepted messages before the first node is stopped, and between two restarts.
const STEADY: u64 = 150;
/// How long those may take.
const WAIT: Duration = Duration::from_secs(60);
/// Once a stopping leader has exited, the others must agree on its successor this
/// fast: below the election timeout (1.5 s at least), so it was handed over.
const HANDED_OVER_WITHIN: Duration = Duration::from_millis(1_000);
const CATCH_UP: Duration = Duration::from_secs(60);
const DELIVERED_WITHIN: Duration = Duration::from_secs(120);

fn load() -> MtaLoad {
    MtaLoad {
        max_attempts: MAX_ATTEMPTS,
        deadline: LOAD_DEADLINE,
        pace: PACE,
        ..MtaLoad::new("t100", MESSAGES, SESSIONS, SIZE)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t100_rolling_restart_under_load_loses_nothing() -> Result<()> {
    let sink = Sink::start(SinkConfig::default());
    let mut cluster = ClusterBuilder::new(3)
        .name("t100-rolling-restart")
        .relay(sink.addr())
        .smtp("shutdown_grace_secs", "10")
        .delivery("retry_initial_secs", "1")
        .delivery("retry_max_secs", "2")
        .start()
        .await?;
    // On failure, dropping the cluster prints the tail of every node's log.
    let result = run(&mut cluster, &sink).await;
    sink.stop();
    result?;
    cluster.shutdown().await
}

async fn run(cluster: &mut Cluster, sink: &Sink) -> Result<()> {
    let first = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let started = Instant::now();
    let mtas = Running::start(load(), Targets::of(cluster, &cluster.ids()));

    // The leader first, then the others in turn.
    let mut order = vec![first];
    order.extend(cluster.others(first));
    for id in order {
        mtas.wait_for(STEADY, WAIT, cluster).await?;
        let was_leader = cluster.cluster_status(id).await?.leader_id == Some(id);
        let t0 = Instant::now();
        let status = cluster.terminate(id).await?;
        let stopped = t0.elapsed();
        ensure!(
            status.success(),
            "node {id} exited with {status} on SIGTERM"
        );
        let (leader, took) = cluster
            .wait_for_new_leader(id, Duration::from_secs(30))
            .await?;
        println!(
            "t100: node {id}{} stopped by SIGTERM in {} ms, {:.1} s into the load; node \
             {leader} agreed as leader {} ms after its exit",
            if was_leader { " (the leader)" } else { "" },
            stopped.as_millis(),
            started.elapsed().as_secs_f64(),
            took.as_millis()
        );
        if was_leader {
            ensure!(
                took <= HANDED_OVER_WITHIN,
                "node {id} led when stopped, and the others took {} ms after its exit to \
                 agree on a new leader: the leadership was not handed over",
                took.as_millis()
            );
        }
        cluster.restart(id).await?;
        let t1 = Instant::now();
        cluster.wait_caught_up(id, CATCH_UP).await?;
        println!(
            "t100: node {id} back, ready and caught up {} ms after its start",
            t1.elapsed().as_millis()
        );
    }
    mtas.wait_for(STEADY, WAIT, cluster).await?;
    let logs = mtas.finish().await?;
    let elapsed = started.elapsed();

    // What the MTAs saw.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut acked_tokens: HashMap<String, String> = HashMap::new();
    let mut refused = Vec::new();
    for (n, log) in logs.iter().enumerate() {
        for a in &log.attempts {
            match &a.outcome {
                Outcome::Accepted { id } => {
                    acked_tokens.insert(load().token(n), id.clone());
                }
                Outcome::TempFail { .. } | Outcome::Failed { .. } => {}
                Outcome::PermFail { .. }
                | Outcome::Unexpected { .. }
                | Outcome::Ambiguous { .. } => {
                    refused.push(format!("{}: {}", load().token(n), log.history()))
                }
            }
            if !matches!(a.outcome, Outcome::Accepted { .. }) {
                *kinds.entry(a.outcome.kind()).or_insert(0) += 1;
            }
        }
    }
    println!(
        "t100: {} messages of {SIZE} B over {SESSIONS} sessions in {:.1} s, {} accepted; \
         attempts that did not end in 250, by kind: {kinds:?}",
        logs.len(),
        elapsed.as_secs_f64(),
        acked_tokens.len()
    );
    ensure!(
        refused.is_empty(),
        "{} messages saw a 5xx, a protocol error or a connection cut after the end of \
         data, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let unacked: Vec<String> = logs
        .iter()
        .enumerate()
        .filter(|(_, l)| l.acked().is_none())
        .map(|(n, l)| format!("{}: {}", load().token(n), l.history()))
        .collect();
    ensure!(
        unacked.is_empty(),
        "{} messages never accepted, e.g. {:?}",
        unacked.len(),
        &unacked[..unacked.len().min(5)]
    );

    // Every accepted message reaches the next hop.
    let end = Instant::now() + DELIVERED_WITHIN;
    loop {
        let mut at_sink: HashMap<String, usize> = HashMap::new();
        for d in sink.received() {
            if let Some(token) = d
                .header("Message-ID")
                .as_deref()
                .and_then(smtp::token_of)
                .map(str::to_string)
            {
                *at_sink.entry(token).or_insert(0) += 1;
            }
        }
        let missing: Vec<&String> = acked_tokens
            .keys()
            .filter(|t| !at_sink.contains_key(*t))
            .collect();
        if missing.is_empty() {
            let twice = at_sink.values().filter(|&&c| c > 1).count();
            println!(
                "t100: all {} accepted messages delivered to the next hop ({twice} of them \
                 twice: a delivery in flight when its node stopped)",
                acked_tokens.len()
            );
            break;
        }
        if Instant::now() >= end {
            bail!(
                "{} accepted messages not at the next hop {DELIVERED_WITHIN:?} after the \
                 load, e.g. {:?}",
                missing.len(),
                missing
                    .iter()
                    .take(5)
                    .map(|t| (t, &acked_tokens[*t]))
                    .collect::<Vec<_>>()
            );
        }
        cluster.check_alive()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all = cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(60))
        .await?;
    println!("t100: after the rolling restart: {}", all.summary());
    for id in cluster.ids() {
        let report = cluster.api().verify(id).await?;
        ensure!(
            report.ok,
            "node {id}: the event chain does not verify: {report:?}"
        );
    }
    Ok(())
}

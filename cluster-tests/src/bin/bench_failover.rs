#![forbid(unsafe_code)]
//! bench_failover: what a sender sees when the leader of a three-node cluster is
//! killed with -9 under SMTP load.
//!
//! It starts three nodes from the `bulwark` binary next to this one (build both with
//! `cargo build --release --workspace --bins`) and sends `--messages` messages of
//! `--size` bytes, one per connection, over `--sessions` sessions spread over the
//! nodes, as an MTA does: a 4xx or a broken connection is tried again, on the next
//! node. Once `--kill-after` messages are accepted, the leader is killed with -9.
//!
//! It prints when a new leader was seen from outside, the longest time in which no
//! node answered `250` around the kill (from the last `250` before it to the first
//! after), the attempts refused meanwhile by kind, how many elections the load
//! caused before the kill (none is right: a heartbeat stuck behind large entries
//! would show here), and checks that every message that got `250` is in the
//! survivors' event log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::bench;
use bulwark_cluster_tests::mta::{self, MtaLoad, Targets};
use bulwark_cluster_tests::smtp::Outcome;
use bulwark_cluster_tests::ClusterBuilder;
use clap::Parser;

/// Kill the leader with -9 under SMTP load; measure the failover from outside.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Messages sent in all.
    #[arg(long, default_value_t = 6_000)]
    messages: usize,
    /// The leader is killed once this many were accepted.
    #[arg(long, default_value_t = 2_000)]
    kill_after: u64,
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 2_048)]
    size: usize,
    #[command(flatten)]
    binary: bench::Binary,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.kill_after < args.messages as u64,
        "--kill-after must be below --messages"
    );
    let builder =
        bench::allow_sessions(ClusterBuilder::new(3).name("bench-failover"), args.sessions);
    let (mut cluster, leader) = bench::start(builder, &args.binary).await?;
    let first_term = cluster.cluster_status(leader).await?.term;
    let targets = Arc::new(Targets::of(&cluster, &cluster.ids()));
    let acked = Arc::new(AtomicU64::new(0));
    let load = MtaLoad {
        rcpt: "user@example.test".into(),
        max_attempts: 40,
        ..MtaLoad::new("failover", args.messages, args.sessions, args.size)
    };
    let deadline = load.deadline + Duration::from_secs(60);
    let run = tokio::spawn(mta::run(
        load,
        targets,
        acked.clone(),
        Arc::new(AtomicBool::new(false)),
    ));

    let waited = Instant::now();
    while acked.load(Ordering::SeqCst) < args.kill_after {
        ensure!(!run.is_finished(), "the load ended before the kill");
        ensure!(
            waited.elapsed() < Duration::from_secs(120),
            "only {} messages accepted in 120 s",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = bench::leader(&cluster).await.unwrap_or(leader);
    let elections_before = cluster.cluster_status(leader).await?.term - first_term;
    cluster.kill(leader)?;
    let killed = Instant::now();
    let (new_leader, elected) = cluster
        .wait_for_new_leader(leader, Duration::from_secs(60))
        .await?;
    let logs = tokio::time::timeout(deadline, run)
        .await
        .context("the load did not end")??;

    // Every 250, in time; the gap around the kill is the time no node answered one.
    let mut acks: Vec<(Instant, String)> = logs
        .iter()
        .filter_map(|l| l.acked_at().map(|(id, at)| (at, id.to_string())))
        .collect();
    acks.sort();
    let before = acks.iter().rev().find(|(at, _)| *at <= killed).map(|a| a.0);
    let after = acks.iter().find(|(at, _)| *at > killed).map(|a| a.0);
    let (Some(before), Some(after)) = (before, after) else {
        anyhow::bail!("no 250 on one side of the kill");
    };
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in logs.iter().flat_map(|l| &l.attempts) {
        let during = attempt.ended > before && attempt.ended < after;
        if during && !matches!(attempt.outcome, Outcome::Accepted { .. }) {
            *refused.entry(attempt.outcome.kind()).or_default() += 1;
        }
    }
    let unacked = logs.iter().filter(|l| l.acked().is_none()).count();

    // Every acknowledged message is on the survivors' log.
    let survivors = cluster.others(leader);
    cluster
        .wait_converged(&survivors, Duration::from_secs(120))
        .await?;
    let received: BTreeSet<String> = cluster
        .events_all(new_leader)
        .await?
        .into_iter()
        .filter(|e| e.kind == "message.received")
        .filter_map(|e| e.field("message_id").as_str().map(str::to_string))
        .collect();
    let lost = acks.iter().filter(|(_, id)| !received.contains(id)).count();

    println!(
        "bench_failover: 3 nodes, {} messages of {} B over {} sessions; leader {leader} killed \
         (-9) after {} accepted",
        args.messages, args.size, args.sessions, args.kill_after
    );
    println!(
        "| elections before the kill | new leader seen (ms after the kill) | no 250 from any node (ms) | of which after the kill | attempts refused meanwhile | accepted | never accepted | acknowledged and lost |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|---:|");
    println!(
        "| {elections_before} | {} | {} | {} | {refused:?} | {} | {unacked} | {lost} |",
        elapsed_ms(elected),
        elapsed_ms(after - before),
        elapsed_ms(after - killed),
        acks.len()
    );
    ensure!(
        lost == 0,
        "{lost} acknowledged messages are not on the survivors"
    );
    cluster.shutdown().await
}

fn elapsed_ms(d: Duration) -> u128 {
    d.as_millis()
}

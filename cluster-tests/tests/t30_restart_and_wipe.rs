//! t30: a node killed with -9 catches up after a restart; every node killed with -9 at
//! once, its log purged behind frequent snapshots, holds every acknowledged write
//! again after a restart, applied anew from its own log (the state keeps only what
//! was flushed); a node whose data directory was wiped rejoins through a snapshot
//! after the leader purged its log.

use std::time::Duration;

use anyhow::{ensure, Result};
use bulwark_cluster_tests::api::check_chain;
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::{Cluster, ClusterBuilder, RaftTuning};

async fn write(cluster: &Cluster, writers: usize, n: u64, prefix: &str) -> Result<()> {
    let report = write_notes(
        cluster.client(),
        LoadSpec::fixed(writers, n, prefix),
        LoadControl::new(),
    )
    .await;
    ensure!(
        report.failed.is_empty() && report.acks.len() as u64 == n,
        "{prefix}: {} of {n} acknowledged; first failure: {:?}",
        report.acks.len(),
        report.failed.first()
    );
    Ok(())
}

/// All nodes hold the same events (seq and hash), and the chain is intact.
/// Checks that every node holds the same log up to seq `through` (where they
/// converged: the leader may record more meanwhile, an audit checkpoint on its timer,
/// between one node's read and the next).
async fn same_logs(cluster: &Cluster, through: u64) -> Result<usize> {
    let mut reference: Option<Vec<(u64, String)>> = None;
    for id in cluster.ids() {
        let events = cluster.events_all(id).await?;
        check_chain(&events)?;
        let digest: Vec<(u64, String)> = events
            .into_iter()
            .filter(|e| e.seq <= through)
            .map(|e| (e.seq, e.hash))
            .collect();
        ensure!(
            digest.len() as u64 == through,
            "node {id} holds {} of the {through} events converged on",
            digest.len()
        );
        match &reference {
            None => reference = Some(digest),
            Some(r) => ensure!(*r == digest, "node {id}'s event log differs from node 1's"),
        }
    }
    Ok(reference.map_or(0, |r| r.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_follower_restarted_after_kill9_catches_up() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3).name("t30-restart").start().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let follower = cluster.others(leader)[0];
    write(&cluster, 16, 300, "t30a-before").await?;

    cluster.kill(follower)?;
    write(&cluster, 16, 300, "t30a-while-down").await?;
    cluster.restart(follower).await?;
    let st = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(180))
        .await?;
    ensure!(st.event_count >= 600, "only {} events", st.event_count);
    let n = same_logs(&cluster, st.event_count).await?;
    println!(
        "t30: node {follower} caught up after kill -9: {n} events, {}",
        st.summary()
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_whole_cluster_killed_keeps_every_acknowledged_write() -> Result<()> {
    // Snapshots every 100 entries and the log purged right behind them: each node
    // dies with its state flushed only as far as its last snapshot, and what
    // follows only in its log.
    let mut cluster = ClusterBuilder::new(3)
        .name("t30-all")
        .raft(RaftTuning {
            snapshot_every: Some(100),
            keep_logs: Some(0),
            ..RaftTuning::default()
        })
        .start()
        .await?;
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    write(&cluster, 16, 400, "t30c").await?;
    for id in cluster.ids() {
        cluster.kill(id)?;
    }
    for id in cluster.ids() {
        cluster.restart(id).await?;
    }
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let st = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(180))
        .await?;
    let notes = cluster
        .events_all(1)
        .await?
        .iter()
        .filter(|e| e.kind == "audit.note")
        .count();
    ensure!(
        notes == 400,
        "{notes} of the 400 acknowledged notes after the restart"
    );
    let n = same_logs(&cluster, st.event_count).await?;
    println!(
        "t30: all killed and restarted: {n} events on every node, {}",
        st.summary()
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_wiped_node_rejoins_through_snapshot() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t30-wipe")
        .raft(RaftTuning {
            snapshot_every: Some(200),
            keep_logs: Some(50),
            ..RaftTuning::default()
        })
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    write(&cluster, 16, 1000, "t30b-before").await?;
    let before = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(120))
        .await?;

    // Stop a follower, wipe it, and write more while it is away, so it needs both a
    // snapshot (the leader's log starts long after index 1) and the entries after it.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap_or(leader);
    let victim = cluster.others(leader)[0];
    let status = cluster.terminate(victim).await?;
    println!(
        "t30: node {victim} stopped ({status}) at {}",
        before.summary()
    );
    cluster.wipe(victim)?;
    write(&cluster, 16, 200, "t30b-while-wiped").await?;
    cluster.restart(victim).await?;

    let st = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(120))
        .await?;
    ensure!(
        st.event_count >= 1200,
        "expected at least 1200 events, converged at {}",
        st.summary()
    );
    let victim_status = cluster.cluster_status(victim).await?;
    ensure!(
        victim_status.chain_head == st.chain_head && victim_status.event_count == st.event_count,
        "wiped node: {} vs cluster: {}",
        victim_status.summary(),
        st.summary()
    );
    let n = same_logs(&cluster, st.event_count).await?;
    let log = std::fs::read_to_string(cluster.node(victim).log_path()).unwrap_or_default();
    let mentions = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("snapshot"))
        .count();
    println!(
        "t30: wiped node {victim} rejoined: {n} events, {}; its log mentions \"snapshot\" on {mentions} lines",
        st.summary()
    );
    ensure!(
        log.contains("receiving snapshot"),
        "wiped node {victim} caught up without receiving a snapshot"
    );
    cluster.shutdown().await
}

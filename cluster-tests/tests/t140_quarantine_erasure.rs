//! t140: erasure on every node. A quarantined message, sent to a follower, is
//! replicated to all three nodes; it is deleted through the leader's API. Checked:
//!
//! - before the deletion, its body is in some file of every node's data directory;
//! - once `[quarantine] erase_within_secs` has passed, it is in no file of any
//!   node's data directory (each node erases its own copy: Raft log, state, WAL,
//!   snapshots), searched byte for byte;
//! - a message kept in the quarantine is still on every node's disk.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::files::files_holding;
use bulwark_cluster_tests::samples::{quarantined_with, unique_marker};
use bulwark_cluster_tests::smtp::{ClientConfig, Message, Outcome, SmtpConnection};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

const WAIT: Duration = Duration::from_secs(30);
const ERASE_WITHIN: Duration = Duration::from_secs(8);

async fn send(cluster: &Cluster, id: u64, content: String) -> Result<String> {
    let mut msg = Message::generate("t140", 0, "bob@example.test");
    msg.mail_from = "alice@sender.test".into();
    msg.content = content.into_bytes();
    let mut conn = SmtpConnection::open(cluster.node(id).smtp_addr(), &ClientConfig::default())
        .await
        .map_err(|o| anyhow::anyhow!("node {id}: {o}"))?;
    let queue_id = match conn.send(&msg).await.outcome {
        Outcome::Accepted { id } => id,
        other => anyhow::bail!("node {id}: {other}"),
    };
    conn.quit().await;
    Ok(queue_id)
}

/// Waits until every node holds an event of type `kind` about message `queue_id`.
async fn on_every_node(cluster: &Cluster, queue_id: &str, kind: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    for id in cluster.ids() {
        loop {
            let events = cluster.api().message_events(id, queue_id).await?;
            if events.iter().any(|e| e.kind == kind) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {id}: no {kind} for {queue_id}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(WAIT).await?;
    let follower = cluster.others(leader)[0];
    // A node that joined after the cluster formed answers 421 until it has caught up.
    cluster.wait_caught_up(follower, WAIT).await?;
    let (doomed, kept) = (unique_marker("t140doomed"), unique_marker("t140kept"));
    let doomed_id = send(cluster, follower, quarantined_with(&doomed, 100_000)).await?;
    let kept_id = send(cluster, follower, quarantined_with(&kept, 3_000)).await?;
    for queue_id in [&doomed_id, &kept_id] {
        on_every_node(cluster, queue_id, "message.quarantined").await?;
    }
    for id in cluster.ids() {
        let dir = cluster.node(id).data_dir();
        let holding = files_holding(dir, doomed.as_bytes());
        ensure!(
            !holding.is_empty(),
            "node {id}: the body is nowhere on disk"
        );
        println!("t140: node {id} holds the body in {holding:?}");
    }

    let api = cluster.api();
    let response = api
        .http()
        .delete(format!(
            "{}/v1/quarantine/{doomed_id}?reason=spam",
            api.base_url(leader)?
        ))
        .bearer_auth(api.token(leader)?)
        .send()
        .await?;
    ensure!(response.status() == 200, "delete: {}", response.status());
    let deleted_at = Instant::now();
    on_every_node(cluster, &doomed_id, "quarantine.deleted").await?;
    tokio::time::sleep(ERASE_WITHIN.saturating_sub(deleted_at.elapsed())).await;

    for id in cluster.ids() {
        let dir = cluster.node(id).data_dir();
        let holding = files_holding(dir, doomed.as_bytes());
        ensure!(
            holding.is_empty(),
            "node {id}: the body still on disk {:?} after its deletion: {holding:?}",
            deleted_at.elapsed()
        );
        ensure!(
            !files_holding(dir, kept.as_bytes()).is_empty(),
            "node {id}: the kept body is gone"
        );
        let log = std::fs::read_to_string(cluster.node(id).log_path())?;
        for line in log
            .lines()
            .filter(|l| l.contains("dropped quarantined bodies erased"))
        {
            println!("t140: node {id}: {line}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t140_a_deleted_body_is_erased_from_every_nodes_disk_within_the_bound() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t140")
        .delivery("relay", "\"127.0.0.1:9\"")
        .delivery("retry_initial_secs", "3600")
        .toml(&format!(
            "[quarantine]\nerase_within_secs = {}\n",
            ERASE_WITHIN.as_secs()
        ))
        .start()
        .await?;
    let result = run(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

//! t150: the policy is the cluster's. Three nodes seed one policy version between
//! them; a change made through one node judges the next messages on every node
//! within a second, with no restart; `policy.changed` (who, the diff, the version) is
//! on every node's log at the same place in the chain; each verdict names the
//! version it was judged under; a change from a stale version is refused on any node.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::smtp::{send_one, ClientConfig, Message, Outcome};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::{json, Value};

/// How soon every node must judge by a committed version.
const SWAP: Duration = Duration::from_secs(1);

/// Sends generated messages (from `load@load.test`) to node `id` until one is
/// refused for good; how long that took and the messages accepted before.
async fn until_refused(
    cluster: &Cluster,
    id: u64,
    n: &mut usize,
) -> Result<(Duration, Vec<String>)> {
    let started = Instant::now();
    let mut accepted = Vec::new();
    loop {
        *n += 1;
        let message = Message::generate(&format!("t150-{n}"), 600, "bob@example.test");
        let sent = send_one(
            cluster.node(id).smtp_addr(),
            &message,
            &ClientConfig::default(),
        )
        .await;
        match sent.outcome {
            Outcome::PermFail { reply, .. } => {
                ensure!(reply.code == 554, "node {id}: {reply:?}");
                return Ok((started.elapsed(), accepted));
            }
            Outcome::Accepted { id } => accepted.push(id),
            other => anyhow::bail!("node {id}: {other:?}"),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "node {id} never refused"
        );
    }
}

async fn verdict_version(cluster: &Cluster, node: u64, message: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = cluster.api().message_events(node, message).await?;
        if let Some(verdict) = events.iter().find(|e| e.kind == "scan.verdict") {
            return Ok(verdict.field("policy_version").clone());
        }
        ensure!(
            Instant::now() < deadline,
            "node {node}: no verdict for {message}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `id` judges by `version` (its `bulwark_policy_version`).
async fn judging(cluster: &Cluster, id: u64, version: u64) -> Result<()> {
    let api = cluster.api();
    let want = format!("\nbulwark_policy_version {version}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = api
            .http()
            .get(format!("{}/metrics", api.base_url(id)?))
            .send()
            .await?
            .text()
            .await?;
        if metrics.contains(&want) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "node {id} does not judge by version {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster.others(leader)[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in cluster.ids() {
        loop {
            let (status, current) = cluster.api().policy(id).await?;
            if status == 200 {
                ensure!(current["version"] == 1, "node {id}: {current}");
                judging(cluster, id, 1).await?;
                break;
            }
            ensure!(Instant::now() < deadline, "node {id}: no policy: {current}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("one policy version seeded, seen by every node");

    let mut n = 0;
    let mut before = Vec::new();
    for id in cluster.ids() {
        n += 1;
        let message = Message::generate(&format!("t150-{n}"), 600, "bob@example.test");
        match send_one(
            cluster.node(id).smtp_addr(),
            &message,
            &ClientConfig::default(),
        )
        .await
        .outcome
        {
            Outcome::Accepted { id: message } => before.push((id, message)),
            other => anyhow::bail!("node {id}: {other:?}"),
        }
    }
    for (id, message) in &before {
        let version = verdict_version(cluster, *id, message).await?;
        ensure!(version == 1, "node {id}: {message} judged under {version}");
    }

    let (_, current) = cluster.api().policy(follower).await?;
    let mut blocked = current["policy"].clone();
    blocked["block"] = json!(["load@load.test"]);
    let body = json!({ "base_version": 1, "policy": blocked, "reason": "t150 block" });
    let (status, answer) = cluster.api().put_policy(follower, &body).await?;
    ensure!(
        status == 200 && answer["version"] == 2,
        "{status}: {answer}"
    );
    let changed = Instant::now();
    for id in cluster.ids() {
        let (took, accepted) = until_refused(cluster, id, &mut n).await?;
        let since_change = changed.elapsed();
        println!(
            "node {id}: refused by version 2 after {took:?} ({since_change:?} since the change)"
        );
        ensure!(
            took < SWAP,
            "node {id} judged by the old version for {took:?} after the change"
        );
        for message in accepted {
            ensure!(verdict_version(cluster, id, &message).await? == 1);
        }
    }
    let (status, stale) = cluster.api().put_policy(leader, &body).await?;
    ensure!(
        status == 409,
        "a stale change through the leader: {status} {stale}"
    );

    let mut chains = Vec::new();
    for id in cluster.ids() {
        let events = cluster.events_all(id).await?;
        let changes: Vec<(u64, String, String, Value)> = events
            .iter()
            .filter(|e| e.kind == "policy.changed")
            .map(|e| {
                let policy = e.field("policy");
                (
                    e.seq,
                    e.hash.clone(),
                    e.user.clone().unwrap_or_default()["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    policy["diff"].clone(),
                )
            })
            .collect();
        ensure!(changes.len() == 2, "node {id}: {changes:?}");
        ensure!(
            changes[0].2.starts_with("config@node"),
            "node {id}: {changes:?}"
        );
        ensure!(
            changes[1].2 == format!("admin@node{follower}") || changes[1].2 == "admin",
            "node {id}: {changes:?}"
        );
        ensure!(
            changes[1].3 == json!([r#"block: + "load@load.test""#]),
            "node {id}: {changes:?}"
        );
        let rejected = events
            .iter()
            .filter(|e| e.kind == "scan.verdict" && e.field("policy_version") == 2)
            .count();
        ensure!(
            rejected >= 3,
            "node {id}: {rejected} verdicts under version 2"
        );
        chains.push(changes);
    }
    ensure!(
        chains.windows(2).all(|w| w[0] == w[1]),
        "the nodes' logs differ: {chains:?}"
    );
    let seeded_by = &chains[0][0].2;
    println!("policy.changed on every node at the same seq and hash; seeded by {seeded_by}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t150_a_policy_change_through_one_node_judges_the_next_messages_on_every_node() -> Result<()>
{
    let mut cluster = ClusterBuilder::new(3)
        .name("t150")
        .smtp("domains", "[\"example.test\"]")
        .start()
        .await?;
    let result = run(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

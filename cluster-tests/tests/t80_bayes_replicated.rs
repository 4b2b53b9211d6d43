//! t80: Bayesian training is replicated. In a three-node cluster with one follower
//! stopped, messages are learned through the API of the other two nodes (the
//! follower's lessons forwarded to the leader); the stopped node, restarted, catches
//! up. Checked:
//!
//! - every node reports the same counts, the ones taught, and holds the same
//!   `bayes.trained` events;
//! - the same unseen spam sent over SMTP to each node gets the same Bayesian symbol
//!   and the same total score on each.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::samples::{vocabulary_message, HAM_WORDS, SPAM_WORDS};
use bulwark_cluster_tests::smtp::{ClientConfig, Message, Outcome, SmtpConnection};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::Value;

const PER_CLASS: usize = 12;
async fn learn(cluster: &Cluster, id: u64, lesson: &str, body: String) -> Result<()> {
    let api = cluster.api();
    let response = api
        .http()
        .post(format!("{}/v1/bayes/{lesson}", api.base_url(id)?))
        .bearer_auth(api.token(id)?)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status == 200, "node {id}: {lesson}: {status} {text}");
    Ok(())
}

async fn counts(cluster: &Cluster, id: u64) -> Result<(u64, u64, u64)> {
    let api = cluster.api();
    let v: Value = api
        .http()
        .get(format!("{}/v1/bayes", api.base_url(id)?))
        .bearer_auth(api.token(id)?)
        .send()
        .await?
        .json()
        .await?;
    let field = |name: &str| v[name].as_u64().with_context(|| format!("{name} in {v}"));
    Ok((
        field("spam_messages")?,
        field("ham_messages")?,
        field("tokens")?,
    ))
}

/// The Bayesian symbol and the total score of message `queue_id`'s verdict on node `id`.
async fn judged(cluster: &Cluster, id: u64, queue_id: &str) -> Result<(String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = cluster.api().message_events(id, queue_id).await?;
        if let Some(verdict) = events.iter().find(|e| e.kind == "scan.verdict") {
            let scan = verdict.field("scan");
            let symbol = scan["symbols"]
                .as_array()
                .context("symbols")?
                .iter()
                .find(|s| s["engine"] == "bayes")
                .and_then(|s| s["name"].as_str())
                .unwrap_or("none")
                .to_string();
            return Ok((symbol, scan["score"].as_f64().context("score")?));
        }
        ensure!(
            Instant::now() < deadline,
            "node {id}: no verdict for {queue_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let followers = cluster.others(leader);
    let (stopped, follower) = (followers[0], followers[1]);
    cluster.terminate(stopped).await?;

    let teachers = [leader, follower];
    for n in 0..PER_CLASS {
        learn(
            cluster,
            teachers[n % 2],
            "spam",
            vocabulary_message(SPAM_WORDS, n, "spam"),
        )
        .await?;
        learn(
            cluster,
            teachers[(n + 1) % 2],
            "ham",
            vocabulary_message(HAM_WORDS, n, "ham"),
        )
        .await?;
    }
    // Learned again on the other node: counted once.
    learn(
        cluster,
        follower,
        "spam",
        vocabulary_message(SPAM_WORDS, 0, "spam"),
    )
    .await?;

    cluster.restart(stopped).await?;
    let want = (PER_CLASS as u64, PER_CLASS as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        seen.clear();
        for id in cluster.ids() {
            seen.push(counts(cluster, id).await?);
        }
        if seen.iter().all(|c| (c.0, c.1) == want && c.2 == seen[0].2) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "counts did not converge to {want:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "every node: {} spam, {} ham, {} tokens",
        seen[0].0, seen[0].1, seen[0].2
    );
    let trained: Vec<Vec<u64>> = {
        let mut all = Vec::new();
        for id in cluster.ids() {
            let events = cluster.events_all(id).await?;
            all.push(
                events
                    .iter()
                    .filter(|e| e.kind == "bayes.trained")
                    .map(|e| e.seq)
                    .collect(),
            );
        }
        all
    };
    ensure!(trained[0].len() == 2 * PER_CLASS + 1, "{trained:?}");
    ensure!(trained.iter().all(|t| *t == trained[0]), "{trained:?}");

    let mut results = Vec::new();
    for id in cluster.ids() {
        let mut msg = Message::generate(&format!("t80-{id}"), 0, "user@example.test");
        msg.content = vocabulary_message(SPAM_WORDS, 99, "spam").into_bytes();
        let addr = cluster.node(id).smtp_addr();
        let mut conn = SmtpConnection::open(addr, &ClientConfig::default())
            .await
            .map_err(|o| anyhow::anyhow!("node {id}: {o}"))?;
        let queue_id = match conn.send(&msg).await.outcome {
            Outcome::Accepted { id } => id,
            other => anyhow::bail!("node {id}: {other}"),
        };
        conn.quit().await;
        results.push(judged(cluster, id, &queue_id).await?);
    }
    println!("the same spam on each node: {results:?}");
    ensure!(results[0].0 == "BAYES_999", "{results:?}");
    ensure!(results.iter().all(|r| *r == results[0]), "{results:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t80_bayes_training_is_replicated_and_every_node_scores_alike() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t80")
        .smtp("domains", "[\"example.test\"]")
        .scan("bayes_min_messages", "10")
        .start()
        .await?;
    let result = run(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

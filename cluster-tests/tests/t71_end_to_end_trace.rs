//! t71: end to end through a three-node cluster. A message sent over SMTP to a
//! follower is scanned, committed, delivered to a next hop (a sink in this test) with
//! the added headers, and every node's `GET /v1/messages/{id}` shows the same trace:
//! received → verdict → attempted → succeeded.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{ClientConfig, Message, Outcome, SmtpConnection};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::Value;

const RCPT: &str = "user@example.test";

/// The message's trace as `node` has applied it; `None` while it knows nothing of
/// the message (404: a node that joined late may still be catching up).
async fn trace(cluster: &Cluster, node: u64, id: &str) -> Result<Option<Value>> {
    let api = cluster.api();
    let response = api
        .http()
        .get(format!("{}/v1/messages/{id}", api.base_url(node)?))
        .bearer_auth(api.token(node)?)
        .send()
        .await?;
    if response.status() == 404 {
        return Ok(None);
    }
    ensure!(
        response.status() == 200,
        "node {node}: {}",
        response.status()
    );
    Ok(Some(response.json().await?))
}

/// The event types of a trace, leases and reads left out (their number depends on
/// timing, and each trace read is itself recorded).
fn kinds(trace: &Value) -> Vec<String> {
    trace["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["type"].as_str())
                .filter(|k| *k != "delivery.leased" && *k != "access.read")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

async fn run(cluster: &mut Cluster, sink: &Sink) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster.others(leader)[0];
    // A node that joined after the cluster formed answers 421 until it has caught up.
    cluster
        .wait_caught_up(follower, Duration::from_secs(30))
        .await?;
    let message = Message::generate("t71", 2048, RCPT);
    let mut conn =
        SmtpConnection::open(cluster.node(follower).smtp_addr(), &ClientConfig::default())
            .await
            .map_err(|o| anyhow::anyhow!("node {follower}: {o}"))?;
    let id = match conn.send(&message).await.outcome {
        Outcome::Accepted { id } => id,
        other => bail!("node {follower}: {other}"),
    };
    conn.quit().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        if let Some(d) = sink.received().into_iter().next() {
            break d;
        }
        ensure!(
            Instant::now() < deadline,
            "nothing reached the sink in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        delivered.header("X-Bulwark-Id").as_deref() == Some(id.as_str()),
        "X-Bulwark-Id {:?}, queued as {id}",
        delivered.header("X-Bulwark-Id")
    );
    ensure!(delivered.header("X-Bulwark-Action").as_deref() == Some("deliver"));
    ensure!(delivered.header("X-Bulwark-Score").is_some());
    ensure!(delivered.header("Authentication-Results").is_some());
    ensure!(delivered.rcpt_to == [RCPT], "{:?}", delivered.rcpt_to);

    let want = [
        "message.received",
        "scan.verdict",
        "delivery.attempted",
        "delivery.succeeded",
    ];
    for node in cluster.ids() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let t = loop {
            let t = trace(cluster, node, &id).await?;
            if let Some(t) = t.as_ref().filter(|t| kinds(t) == want) {
                break t.clone();
            }
            ensure!(
                Instant::now() < deadline,
                "node {node}: trace {:?}, want {want:?}",
                t.as_ref().map(kinds)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(t["state"] == "delivered", "node {node}: {}", t["state"]);
        ensure!(
            t["recipients"][RCPT]["status"] == "delivered",
            "node {node}: {t}"
        );
        ensure!(
            t["received"]["node"] == follower,
            "node {node}: received by {}",
            t["received"]["node"]
        );
        ensure!(t["verdict"]["action"] == "deliver", "node {node}");
    }
    println!("message {id}: accepted by node {follower}, delivered, traced alike on every node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t71_a_message_through_the_cluster_is_delivered_and_traced_on_every_node() -> Result<()> {
    let sink = Sink::start(SinkConfig::default());
    let mut cluster = ClusterBuilder::new(3)
        .name("t71")
        .smtp("domains", "[\"example.test\"]")
        .relay(sink.addr())
        .delivery("poll_ms", "100")
        .start()
        .await
        .context("starting the cluster")?;
    let result = run(&mut cluster, &sink).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

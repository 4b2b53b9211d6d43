//! t130: the last node of a cluster stops on SIGTERM even when the reports of its
//! deliveries cannot be committed. A three-node cluster relays to a next hop that
//! waits [`DATA_DELAY`] before answering the end of data; [`MESSAGES`] messages are
//! accepted by the leader, which leases and delivers them all at once. While they
//! wait at the next hop, the other two nodes are stopped, so when the next hop
//! answers, no report of those deliveries can reach a quorum. Checked: the last node
//! exits, cleanly, within [`STOP_LIMIT`] of its SIGTERM (it used to retry each report
//! 20 times, up to 10 s a try, and outlive the harness' 30 s), and every message
//! reached the next hop (whose copy a restarted cluster would deliver again: twice,
//! never lost).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{send_one, ClientConfig, Message, Outcome};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

const MESSAGES: usize = 8;
const RCPT: &str = "user@example.test";
/// How long the next hop waits before answering the end of data: long enough to stop
/// two nodes meanwhile.
const DATA_DELAY: Duration = Duration::from_secs(5);
/// From SIGTERM to exit for the last node: the next hop's answer (5 s at most), one
/// more try of each report (the commit timeout, 10 s), an attempt to hand the
/// leadership over (5 s at most), with room to spare below the harness' 30 s.
const STOP_LIMIT: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t130_last_node_stops_with_reports_it_cannot_commit() -> Result<()> {
    let sink = Sink::start(SinkConfig {
        data_delay: DATA_DELAY,
        ..SinkConfig::default()
    });
    let mut cluster = ClusterBuilder::new(3)
        .name("t130-last-node-stops")
        .relay(sink.addr())
        .delivery("concurrency", &MESSAGES.to_string())
        .delivery("poll_ms", "100")
        .start()
        .await?;
    // On failure, dropping the cluster prints the tail of every node's log.
    let result = run(&mut cluster, &sink).await;
    sink.stop();
    result?;
    cluster.shutdown().await
}

async fn run(cluster: &mut Cluster, sink: &Sink) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let addr = cluster.node(leader).smtp_addr();
    for n in 0..MESSAGES {
        let msg = Message::generate(&format!("t130-{n}"), 1_024, RCPT);
        let outcome = send_one(addr, &msg, &ClientConfig::default()).await.outcome;
        ensure!(
            matches!(outcome, Outcome::Accepted { .. }),
            "message {n}: {outcome}"
        );
    }
    // Every message at the next hop, waiting for its answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.data_ends() < MESSAGES {
        ensure!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} messages reached the next hop",
            sink.data_ends()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_sink = Instant::now();
    for id in cluster.others(leader) {
        let status = cluster.terminate(id).await?;
        ensure!(status.success(), "node {id} exited with {status}");
    }
    ensure!(
        at_sink.elapsed() < DATA_DELAY,
        "the two other nodes took {:?} to stop: the next hop answered before they were gone",
        at_sink.elapsed()
    );
    let stopping = Instant::now();
    let status = cluster.terminate(leader).await?;
    let took = stopping.elapsed();
    eprintln!("t130: the last node exited {took:?} after SIGTERM ({status})");
    ensure!(status.success(), "the last node exited with {status}");
    ensure!(took < STOP_LIMIT, "the last node took {took:?} to stop");
    ensure!(
        sink.received().len() == MESSAGES,
        "{} of {MESSAGES} messages delivered",
        sink.received().len()
    );
    Ok(())
}

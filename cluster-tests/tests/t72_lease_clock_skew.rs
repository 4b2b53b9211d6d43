//! t72: delivery leases under clock skew. Three nodes relay to a slow next hop (an
//! in-test SMTP sink that waits before answering the end of data); node 1's wall
//! clock runs 30 s ahead and node 2's 30 s behind (`BULWARK_TEST_CLOCK_OFFSET_MS`,
//! test only: every time the node stamps or reads for the queue comes from that
//! clock), node 3's is right. The `[delivery]` settings are the defaults (a 30 s
//! lease, takeover after 20 s), so node 1 sees every message accepted by another
//! node as waiting past the takeover time at once, and node 2 sees node 1's as
//! accepted in the future. 300 messages are sent, spread over the three nodes'
//! SMTP ports. Checked:
//!
//! - every accepted message reaches the sink (none lost);
//! - no two transactions of the same message (by `X-Bulwark-Id`) were open at the
//!   sink at once: from the sink's MAIL to its reply to the end of data, each
//!   transaction's span is disjoint from every other of the same message.
//!
//! It prints how many messages each node accepted and delivered, the duplicates at
//! the sink (a message delivered twice one after the other is not what this test
//! is about, but it is counted) and the overlapping pairs with their spans.
//!
//! The second test pauses a node (SIGSTOP, as `docker pause`) for 10 s while it
//! delivers, with a 3 s lease and the same clocks: node 1, 30 s ahead and usually
//! the leader, so the pause also costs an election. The others take its leases over
//! once they have seen them unrenewed for a lease; resumed, it must not send beside
//! them. Checked as above; a message the paused node had sent whole before the pause
//! may be delivered again after it (counted and printed: RFC 1047's duplicate).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::sink::{Delivered, Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{send_until_accepted, ClientConfig, Message, SmtpConnection};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

const MESSAGES: usize = 300;
/// Concurrent SMTP sessions of the load, spread over the nodes.
const SESSIONS: usize = 6;
const SIZE: usize = 1_024;
const RCPT: &str = "user@example.test";
/// How long the sink waits before answering the end of data: each delivery holds
/// its lease at least this long.
const DATA_DELAY: Duration = Duration::from_millis(300);
/// Each skewed node's offset, in milliseconds: node 1 ahead, node 2 behind.
const SKEW_MS: i64 = 30_000;
const OFFSET_ENV: &str = "BULWARK_TEST_CLOCK_OFFSET_MS";
const POLL_MS: u64 = 200;
/// The paused-holder test: its lease, next hop delay, load and pause.
const PAUSE_LEASE_SECS: u64 = 3;
const PAUSE_DATA_DELAY: Duration = Duration::from_millis(1_000);
const PAUSE_MESSAGES: usize = 120;
const PAUSE_CONCURRENCY: usize = 20;
/// The node paused, once the sink has this many messages, and for how long.
const PAUSED: u64 = 1;
const PAUSE_AFTER: usize = 10;
const PAUSE_FOR: Duration = Duration::from_secs(10);
/// Bounds of the phases.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);
const DRAIN_DEADLINE: Duration = Duration::from_secs(180);
const TICK: Duration = Duration::from_millis(50);

fn token(n: usize) -> String {
    format!("t72-{n:05}")
}

/// A cluster of three: node 1's clock [`SKEW_MS`] ahead, node 2's behind.
fn skewed(name: &str, sink: &Sink) -> ClusterBuilder {
    ClusterBuilder::new(3)
        .name(name)
        .relay(sink.addr())
        .node_env(1, OFFSET_ENV, &SKEW_MS.to_string())
        .node_env(2, OFFSET_ENV, &(-SKEW_MS).to_string())
        .delivery("poll_ms", &POLL_MS.to_string())
        .delivery("retry_initial_secs", "1")
        .delivery("retry_max_secs", "2")
        .delivery("connect_timeout_secs", "5")
        .delivery("command_timeout_secs", "10")
        .delivery("data_timeout_secs", "10")
}

/// Sends every message over [`SESSIONS`] reused connections, session `k` to
/// `addrs[k % addrs.len()]`; a 4xx or a connection that failed before the end of
/// data is retried. Returns the queue id of each message and the node it went to.
async fn load(addrs: Vec<(u64, SocketAddr)>, messages: usize) -> Result<Vec<(String, u64)>> {
    let config = ClientConfig {
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let end = Instant::now() + LOAD_DEADLINE;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(vec![(String::new(), 0); messages]));
    let mut tasks = Vec::new();
    for k in 0..SESSIONS {
        let (node, addr) = addrs[k % addrs.len()];
        let (next, ids, config) = (next.clone(), ids.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<SmtpConnection> = None;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= messages {
                    break;
                }
                let msg = Message::generate(&token(n), SIZE, RCPT);
                let id = send_until_accepted(&mut conn, addr, &config, &msg, end).await?;
                ids.lock().expect("ids")[n] = (id, node);
            }
            if let Some(c) = conn {
                c.quit().await;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("a load session panicked")??;
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    Ok(ids)
}

/// One transaction at the sink that delivered a message.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    connection: u64,
    began: Instant,
    answered: Instant,
}

/// The `X-Bulwark-Id` of a delivered message, and its transaction's span.
fn span(d: &Delivered) -> Result<Span> {
    let id = d.header("X-Bulwark-Id").with_context(|| {
        format!(
            "the sink received a message without X-Bulwark-Id: {:?}",
            String::from_utf8_lossy(&d.data[..d.data.len().min(400)])
        )
    })?;
    Ok(Span {
        id,
        connection: d.connection,
        began: d.began,
        answered: d.answered,
    })
}

/// Pairs of transactions of the same message that were open at the sink at once.
fn overlaps(spans: &[Span]) -> Vec<(Span, Span)> {
    let mut by_id: HashMap<&str, Vec<&Span>> = HashMap::new();
    for s in spans {
        by_id.entry(s.id.as_str()).or_default().push(s);
    }
    let mut out = Vec::new();
    for list in by_id.values() {
        for (i, p) in list.iter().enumerate() {
            for q in &list[i + 1..] {
                if p.began < q.answered && q.began < p.answered {
                    out.push(((*p).clone(), (*q).clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_no_message_delivered_twice_at_once_with_clocks_30s_apart() -> Result<()> {
    let sink = Sink::start(SinkConfig {
        data_delay: DATA_DELAY,
        ..SinkConfig::default()
    });
    let mut cluster = skewed("t72-lease-clock-skew", &sink).start().await?;
    // On failure, dropping the cluster prints the tail of every node's log.
    let result = run(&mut cluster, &sink, MESSAGES, DATA_DELAY, None).await;
    sink.stop();
    result?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_a_paused_node_never_delivers_beside_the_node_that_took_over() -> Result<()> {
    let sink = Sink::start(SinkConfig {
        data_delay: PAUSE_DATA_DELAY,
        ..SinkConfig::default()
    });
    let mut cluster = skewed("t72-lease-pause", &sink)
        .delivery("lease_secs", &PAUSE_LEASE_SECS.to_string())
        .delivery("concurrency", &PAUSE_CONCURRENCY.to_string())
        .start()
        .await?;
    let pause = Some((PAUSED, PAUSE_AFTER, PAUSE_FOR));
    let result = run(&mut cluster, &sink, PAUSE_MESSAGES, PAUSE_DATA_DELAY, pause).await;
    // Never leave a stopped process behind, whatever happened.
    let _ = cluster.pause(PAUSED, false);
    sink.stop();
    result?;
    cluster.shutdown().await
}

/// Sends `messages` over the three nodes, pauses node `pause.0` for `pause.2` once
/// the sink has `pause.1` messages (when asked), and checks that every message
/// reaches the sink with no two transactions of one open at once.
async fn run(
    cluster: &mut Cluster,
    sink: &Sink,
    messages: usize,
    data_delay: Duration,
    pause: Option<(u64, usize, Duration)>,
) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let addrs: Vec<(u64, SocketAddr)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.node(id).smtp_addr()))
        .collect();

    // 1. The load, spread over the three nodes.
    let started = Instant::now();
    let load = tokio::spawn(load(addrs, messages));
    while !load.is_finished() {
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    let ids = load.await.context("the load panicked")??;
    let load_took = started.elapsed();
    let accepted: HashMap<&str, u64> = ids.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    ensure!(
        accepted.len() == messages,
        "{} queue ids for {messages} messages: an id was given twice",
        accepted.len()
    );
    let mut accepted_by: BTreeMap<u64, usize> = BTreeMap::new();
    for n in accepted.values() {
        *accepted_by.entry(*n).or_insert(0) += 1;
    }
    println!(
        "t72: {messages} messages accepted in {:.1} s, by node: {accepted_by:?} (node 1's \
         clock +{SKEW_MS} ms, node 2's -{SKEW_MS} ms, node 3's right; leader: node {leader})",
        load_took.as_secs_f64()
    );

    // 2. The pause of a node while it delivers.
    if let Some((node, after, length)) = pause {
        let end = Instant::now() + DRAIN_DEADLINE;
        while sink.received().len() < after {
            ensure!(
                Instant::now() < end,
                "fewer than {after} messages at the sink"
            );
            cluster.check_alive()?;
            tokio::time::sleep(TICK).await;
        }
        cluster.pause(node, true)?;
        let paused_at = started.elapsed();
        let at_pause = sink.received().len();
        tokio::time::sleep(length).await;
        let during = sink.received().len() - at_pause;
        cluster.pause(node, false)?;
        println!(
            "t72: node {node} paused {:.1} s after the load began for {length:?}, with \
             {at_pause} transactions at the sink; {during} more during the pause",
            paused_at.as_secs_f64()
        );
    }

    // 3. Every accepted message at the sink.
    let end = Instant::now() + DRAIN_DEADLINE;
    loop {
        let spans: Vec<Span> = sink.received().iter().map(span).collect::<Result<_>>()?;
        let missing = accepted
            .keys()
            .filter(|id| !spans.iter().any(|s| s.id == **id))
            .count();
        if missing == 0 {
            break;
        }
        ensure!(
            Instant::now() < end,
            "{missing} accepted messages not at the sink {DRAIN_DEADLINE:?} after the load"
        );
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    let drained = started.elapsed();
    // Deliveries still under way when the last message arrived are waited for: a
    // second transaction of a message may have begun and not ended yet.
    tokio::time::sleep(data_delay * 4).await;
    let spans: Vec<Span> = sink.received().iter().map(span).collect::<Result<_>>()?;
    let unknown: Vec<&str> = spans
        .iter()
        .filter(|s| !accepted.contains_key(s.id.as_str()))
        .map(|s| s.id.as_str())
        .collect();
    ensure!(
        unknown.is_empty(),
        "the sink received messages that were never accepted: {unknown:?}"
    );

    // Who delivered what, from the survivors' records.
    cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(60))
        .await?;
    let mut delivered_by: BTreeMap<u64, usize> = BTreeMap::new();
    for e in cluster
        .api()
        .events_all(leader, Some("delivery.succeeded"), Duration::from_secs(60))
        .await?
    {
        *delivered_by.entry(e.node.unwrap_or(0)).or_insert(0) += 1;
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in &spans {
        *count.entry(s.id.as_str()).or_insert(0) += 1;
    }
    let duplicates = count.values().filter(|&&c| c > 1).count();
    let overlapping = overlaps(&spans);
    println!(
        "t72: all {messages} at the sink {:.1} s after the load began; {} transactions, \
         {duplicates} messages delivered more than once, {} pairs of transactions of the \
         same message open at once; delivery.succeeded by node: {delivered_by:?}",
        drained.as_secs_f64(),
        spans.len(),
        overlapping.len()
    );
    let at = |t: Instant| t.duration_since(started).as_millis();
    let mut twice: Vec<&str> = count
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(id, _)| *id)
        .collect();
    twice.sort_unstable();
    for id in twice.iter().take(10) {
        let shown: Vec<String> = spans
            .iter()
            .filter(|s| s.id == *id)
            .map(|s| {
                format!(
                    "connection {} {}..{} ms",
                    s.connection,
                    at(s.began),
                    at(s.answered)
                )
            })
            .collect();
        println!("t72:   twice: {id}: {}", shown.join(", "));
    }
    for (p, q) in overlapping.iter().take(10) {
        println!(
            "t72:   {} ({}): connection {} {}..{} ms, connection {} {}..{} ms",
            p.id,
            accepted
                .get(p.id.as_str())
                .map_or("?".into(), |n| format!("accepted by node {n}")),
            p.connection,
            at(p.began),
            at(p.answered),
            q.connection,
            at(q.began),
            at(q.answered)
        );
    }
    ensure!(
        overlapping.is_empty(),
        "{} pairs of transactions delivered the same message at once (first ones above)",
        overlapping.len()
    );
    Ok(())
}

//! t101: the cluster's feature level during a rolling upgrade, with real processes.
//! Node 3 plays a node of the release before (the test-only
//! `BULWARK_TEST_FEATURE_LEVEL=1`: it tells the leader it supports level 1 and
//! refuses to apply anything above). Checked:
//!
//! - while it is a member, the cluster's active level stays at 1 on every node (the
//!   leader never proposes the raise node 3 could not apply), and mail flows as
//!   before: every message accepted meanwhile is delivered;
//! - once node 3 is restarted at the build's full level, the leader raises the
//!   cluster's level to the build's ([`FEATURE_LEVEL`]) on its own;
//! - a fourth node at level 1 is refused by `bulwark cluster add` (exit 1, naming
//!   both levels), and, told the cluster's level by that question, says so and
//!   exits;
//! - node 3 started again at level 1 on its data, which records the build's level,
//!   says so ("this build supports feature level 1, the cluster runs at 3: run a
//!   newer release") and exits with a non-zero status; the two others go on delivering,
//!   and no message is lost.
//!
//! The same upgrade between two real builds, in containers: t201_compose_upgrade.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{self, send_until_accepted, ClientConfig, Message};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use bulwark_model::feature::FEATURE_LEVEL;

const LEVEL_ENV: &str = "BULWARK_TEST_FEATURE_LEVEL";
/// The node that plays the older release.
const OLD: u64 = 3;
/// The node, not a member, that asks to join at the older release's level.
const JOINER: u64 = 4;
const RCPT: &str = "user@example.test";
/// Messages sent while node 3 is old, and after.
const BEFORE: usize = 20;
const AFTER: usize = 10;
/// How long the level must stay low with node 3 old: several of the leader's rounds
/// of asking (every 2 s).
const HELD: Duration = Duration::from_secs(10);
const RAISED_WITHIN: Duration = Duration::from_secs(30);
const DELIVERED_WITHIN: Duration = Duration::from_secs(90);
const EXIT_WITHIN: Duration = Duration::from_secs(60);
const SEND_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t101_feature_level_rises_only_once_every_member_supports_it() -> Result<()> {
    let sink = Sink::start(SinkConfig::default());
    let mut cluster = ClusterBuilder::new(3)
        .standby(1)
        .name("t101-feature-level")
        .relay(sink.addr())
        .node_env(OLD, LEVEL_ENV, "1")
        .node_env(JOINER, LEVEL_ENV, "1")
        .delivery("poll_ms", "200")
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

/// Sends message `token` through node `id` until it is accepted.
async fn send(cluster: &Cluster, id: u64, token: &str) -> Result<()> {
    let msg = Message::generate(token, 1_024, RCPT);
    let deadline = Instant::now() + SEND_WITHIN;
    let addr = cluster.node(id).smtp_addr();
    send_until_accepted(&mut None, addr, &ClientConfig::default(), &msg, deadline).await?;
    Ok(())
}

/// The feature levels of every node that answers: (its build's, the cluster's).
async fn levels(cluster: &Cluster, ids: &[u64]) -> BTreeMap<u64, (u32, u32)> {
    let (statuses, _) = cluster.statuses(ids).await;
    statuses
        .into_iter()
        .map(|(id, s)| (id, (s.feature_level, s.cluster_feature_level)))
        .collect()
}

/// How many times the sink received each token.
fn at_sink(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for d in sink.received() {
        if let Some(token) = d
            .header("Message-ID")
            .as_deref()
            .and_then(smtp::token_of)
            .map(str::to_string)
        {
            *seen.entry(token).or_insert(0) += 1;
        }
    }
    seen
}

/// Waits until the sink has every one of `tokens`.
async fn delivered(sink: &Sink, tokens: &[String]) -> Result<()> {
    let end = Instant::now() + DELIVERED_WITHIN;
    loop {
        let seen = at_sink(sink);
        let missing: Vec<&String> = tokens.iter().filter(|t| !seen.contains_key(*t)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < end,
            "{} of {} messages not delivered within {DELIVERED_WITHIN:?}, e.g. {:?}",
            missing.len(),
            tokens.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run(cluster: &mut Cluster, sink: &Sink) -> Result<()> {
    let ids: Vec<u64> = vec![1, 2, 3];
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let mut tokens = Vec::new();
    for n in 0..BEFORE {
        let token = format!("t101-before-{n:03}");
        send(cluster, 1 + (n as u64 % 3), &token).await?;
        tokens.push(token);
    }
    let held_from = Instant::now();
    while held_from.elapsed() < HELD {
        cluster.check_alive()?;
        let now = levels(cluster, &ids).await;
        for (id, (build, active)) in &now {
            let expected = if *id == OLD { 1 } else { FEATURE_LEVEL };
            ensure!(
                *build == expected,
                "node {id} says its build supports level {build}, expected {expected}"
            );
            ensure!(
                *active == 1,
                "node {id} says the cluster runs at level {active} while node {OLD} \
                 supports only 1"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    delivered(sink, &tokens).await?;
    println!(
        "t101: with node {OLD} at level 1, the cluster stayed at level 1 for {HELD:?}; \
         {BEFORE} messages accepted meanwhile, all delivered"
    );

    // Node 3 upgraded: restarted at the build's full level.
    let status = cluster.terminate(OLD).await?;
    ensure!(
        status.success(),
        "node {OLD} exited with {status} on SIGTERM"
    );
    cluster.set_node_env(OLD, LEVEL_ENV, None)?;
    cluster.restart(OLD).await?;
    let upgraded = Instant::now();
    loop {
        cluster.check_alive()?;
        let now = levels(cluster, &ids).await;
        if now.len() == ids.len() && now.values().all(|l| *l == (FEATURE_LEVEL, FEATURE_LEVEL)) {
            println!(
                "t101: node {OLD} back at level {FEATURE_LEVEL}; every node at cluster level \
                 {FEATURE_LEVEL} after {} ms",
                upgraded.elapsed().as_millis()
            );
            break;
        }
        ensure!(
            upgraded.elapsed() < RAISED_WITHIN,
            "the cluster's level not raised within {RAISED_WITHIN:?} of node {OLD}'s upgrade: \
             {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for n in 0..AFTER {
        let token = format!("t101-after-{n:03}");
        send(cluster, 1 + (n as u64 % 3), &token).await?;
        tokens.push(token);
    }
    delivered(sink, &tokens).await?;
    println!("t101: all {} messages delivered", tokens.len());

    // A node of the older release asks to join the cluster now at the build's level.
    cluster.restart(JOINER).await?;
    let addr = cluster.node(JOINER).cluster_addr().to_string();
    let out = tokio::process::Command::new(cluster.binary())
        .args([
            "cluster",
            "add",
            "--id",
            &JOINER.to_string(),
            "--addr",
            &addr,
        ])
        .arg("--api")
        .arg(cluster.api().base_url(1)?)
        .arg("--token-file")
        .arg(cluster.node(1).data_dir().join("admin.token"))
        .kill_on_drop(true)
        .output()
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && err.contains(&format!(
                "applies feature level 1, the cluster runs at {FEATURE_LEVEL}"
            )),
        "bulwark cluster add of a level-1 node: {:?}\n{err}",
        out.status.code()
    );
    println!(
        "t101: bulwark cluster add of node {JOINER} at level 1 refused: {}",
        err.trim()
    );
    let status = cluster.wait_exit(JOINER, EXIT_WITHIN).await?;
    let log = cluster.log_tail(JOINER, 40);
    let said = format!(
        "this build supports feature level 1, the cluster runs at {FEATURE_LEVEL}: run a newer \
         release"
    );
    ensure!(
        !status.success() && log.contains(&said),
        "node {JOINER}, told the cluster's level, exited with {status}; log:\n{log}"
    );
    let (statuses, _) = cluster.statuses(&ids).await;
    ensure!(
        statuses
            .values()
            .all(|s| s.members.iter().all(|m| m.id != JOINER)),
        "node {JOINER} became a member"
    );

    // A node of the older release started against the cluster now at the build's level.
    let status = cluster.terminate(OLD).await?;
    ensure!(
        status.success(),
        "node {OLD} exited with {status} on SIGTERM"
    );
    cluster.set_node_env(OLD, LEVEL_ENV, Some("1"))?;
    cluster.start_node(OLD)?;
    let status = cluster.wait_exit(OLD, EXIT_WITHIN).await?;
    let log = cluster.log_tail(OLD, 40);
    ensure!(
        !status.success(),
        "node {OLD} at level 1 against a cluster at {FEATURE_LEVEL} exited with {status}; \
         log:\n{log}"
    );
    ensure!(
        log.contains(&said),
        "node {OLD} exited ({status}) without saying {said:?}; log:\n{log}"
    );
    println!(
        "t101: node {OLD} started at level 1 against level {FEATURE_LEVEL} said so and exited \
         with {status}"
    );

    // The two others still deliver.
    let token = "t101-last".to_string();
    send(cluster, 1, &token).await?;
    tokens.push(token.clone());
    let end = Instant::now() + DELIVERED_WITHIN;
    while !at_sink(sink).contains_key(&token) {
        ensure!(
            Instant::now() < end,
            "{token} not delivered by the two remaining nodes within {DELIVERED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seen = at_sink(sink);
    let lost: Vec<&String> = tokens.iter().filter(|t| !seen.contains_key(*t)).collect();
    ensure!(lost.is_empty(), "lost: {lost:?}");
    println!(
        "t101: {} messages accepted, all delivered, none lost",
        tokens.len()
    );
    Ok(())
}

//! t110: one node's data disk fills up under SMTP load (its data directory is a small
//! tmpfs; filler files take the space). Checked:
//!
//! 1. below `[smtp] min_free_disk_mb`, that node answers MAIL with `452 4.3.1` while
//!    the others keep accepting, and it still replicates what they accept;
//! 2. with no space left at all, its Raft cannot write: the node stops on its own
//!    with a non-zero status (for the service manager to start it again), and the
//!    two others go on serving;
//! 3. once space returns and it is started again, it catches up; every message the
//!    MTAs were told `250` for is on all three nodes, and none got a 5xx.
//!
//! Needs the right to mount a tmpfs (root, as in CI); without it the test says so
//! and checks nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bulwark_cluster_tests::disk::SmallDisk;
use bulwark_cluster_tests::mta::{MtaLoad, Running, Targets};
use bulwark_cluster_tests::smtp::{self, ClientConfig, Message, Outcome, Stage};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

/// The node whose disk fills.
const SMALL: u64 = 3;
const DISK_MB: u64 = 512;
const MIN_FREE_MB: u64 = 64;
/// Free space left by the first filler: below the floor, not yet full.
const LOW_MB: u64 = 32;
const MESSAGES: usize = 20_000;
const SESSIONS: usize = 4;
const SIZE: usize = 4_096;
const PACE: Duration = Duration::from_millis(20);
const LOAD_DEADLINE: Duration = Duration::from_secs(240);
/// Accepted messages between two steps.
const STEADY: u64 = 100;
const WAIT: Duration = Duration::from_secs(60);

/// Large messages sent to the two other nodes once the disk is full, so that node 3
/// has much to write (RocksDB writes into space its log files reserved beforehand).
const BIG_MESSAGES: usize = 600;
const BIG_SIZE: usize = 512 * 1024;

fn load() -> MtaLoad {
    MtaLoad {
        deadline: LOAD_DEADLINE,
        pace: PACE,
        ..MtaLoad::new("t110", MESSAGES, SESSIONS, SIZE)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t110_full_disk_on_one_node_loses_nothing() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t110-full-disk")
        .smtp("min_free_disk_mb", &MIN_FREE_MB.to_string())
        .start()
        .await?;
    cluster.wait_for_leader(WAIT).await?;
    // Node 3's data moves onto the small disk while it is stopped.
    cluster.terminate(SMALL).await?;
    let data_dir = cluster.node(SMALL).data_dir().to_path_buf();
    let Some(mut disk) = SmallDisk::mount_over(&data_dir, DISK_MB)? else {
        println!("t110: SKIPPED: mounting a tmpfs is not permitted here (needs root)");
        return cluster.shutdown().await;
    };
    let result = run(&mut cluster, &mut disk).await;
    // On failure, dropping the cluster prints the tail of every node's log.
    result?;
    cluster.shutdown().await?;
    drop(disk);
    Ok(())
}

async fn run(cluster: &mut Cluster, disk: &mut SmallDisk) -> Result<()> {
    cluster.restart(SMALL).await?;
    cluster.wait_caught_up(SMALL, WAIT).await?;
    let mtas = Running::start(load(), Targets::of(cluster, &cluster.ids()));
    mtas.wait_for(STEADY, WAIT, cluster).await?;

    // 1. Below the floor: 452 at MAIL on node 3, the others accept.
    disk.fill_leaving(LOW_MB << 20)?;
    println!(
        "t110: node {SMALL}'s disk filled to {} MB free (floor {MIN_FREE_MB} MB)",
        disk.free()? >> 20
    );
    let probe = Message::generate("t110-probe", 512, "user@example.test");
    let addr = cluster.node(SMALL).smtp_addr();
    let end = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let d = smtp::send_one(addr, &probe, &ClientConfig::default()).await;
        match d.outcome {
            Outcome::TempFail {
                stage: Stage::Mail,
                reply,
            } => break reply,
            other => ensure!(
                Instant::now() < end && !matches!(other, Outcome::PermFail { .. }),
                "node {SMALL} below its disk floor answered {other}, not 452 at MAIL"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        refused.code == 452 && refused.to_string().contains("4.3.1"),
        "node {SMALL} below its disk floor: {refused}"
    );
    println!("t110: node {SMALL} below the floor answers MAIL with: {refused}");
    let applied_before = cluster.cluster_status(SMALL).await?.applied_index;
    mtas.wait_for(STEADY, WAIT, cluster).await?;
    let applied_after = cluster.cluster_status(SMALL).await?.applied_index;
    ensure!(
        applied_after > applied_before,
        "node {SMALL} stopped replicating below the floor ({applied_before} -> {applied_after})"
    );

    // 2. Full: node 3's Raft cannot write, the node stops; the others serve.
    disk.fill_leaving(0)?;
    let t0 = Instant::now();
    let big = MtaLoad {
        prefix: "t110big".into(),
        messages: BIG_MESSAGES,
        sessions: 2,
        size: BIG_SIZE,
        pace: Duration::ZERO,
        ..load()
    };
    let big_load = Running::start(big.clone(), Targets::of(cluster, &cluster.others(SMALL)));
    let status = cluster.wait_exit(SMALL, WAIT).await?;
    let big_logs = big_load.finish().await?;
    println!(
        "t110: node {SMALL}'s disk full: it stopped {} ms later with {status}",
        t0.elapsed().as_millis()
    );
    ensure!(
        status.code() == Some(1),
        "node {SMALL} on a full disk should stop with status 1, not {status}"
    );
    let log = cluster.log_tail(SMALL, 200);
    ensure!(
        log.contains("Raft stopped"),
        "node {SMALL} did not say why it stopped:\n{log}"
    );
    cluster.wait_for_leader(WAIT).await?;
    mtas.wait_for(STEADY, WAIT, cluster).await?;

    // 3. Space back: it starts again and catches up.
    disk.clear()?;
    cluster.restart(SMALL).await?;
    cluster.wait_caught_up(SMALL, WAIT).await?;
    let free = disk.free()? >> 20;
    ensure!(
        free > MIN_FREE_MB,
        "only {free} MB free after the fillers went: the test's disk is too small"
    );
    let back = smtp::send_one(addr, &probe, &ClientConfig::default()).await;
    let Outcome::Accepted { id: probe_id } = back.outcome else {
        bail!("node {SMALL}, its space back, answered {}", back.outcome);
    };
    println!(
        "t110: space back ({free} MB free); node {SMALL} restarted, caught up and takes mail \
         again"
    );
    mtas.wait_for(STEADY, WAIT, cluster).await?;
    let logs = mtas.finish().await?;

    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut acked_ids = BTreeSet::from([probe_id]);
    let mut bad = Vec::new();
    let tagged = logs
        .iter()
        .enumerate()
        .map(|(n, log)| (load().token(n), log))
        .chain(
            big_logs
                .iter()
                .enumerate()
                .map(|(n, log)| (big.token(n), log)),
        );
    for (token, log) in tagged {
        match log.acked() {
            Some(id) => {
                acked_ids.insert(id.to_string());
            }
            None => bad.push(format!("{token}: {}", log.history())),
        }
        for a in &log.attempts {
            if matches!(
                a.outcome,
                Outcome::PermFail { .. } | Outcome::Unexpected { .. }
            ) {
                bad.push(format!("{token}: {}", log.history()));
            }
            if !matches!(a.outcome, Outcome::Accepted { .. }) {
                *kinds.entry(a.outcome.kind()).or_insert(0) += 1;
            }
        }
    }
    println!(
        "t110: {} messages of {SIZE} B and {} of {BIG_SIZE} B, {} accepted; attempts that \
         did not end in 250: {kinds:?}",
        logs.len(),
        big_logs.len(),
        acked_ids.len()
    );
    ensure!(
        bad.is_empty(),
        "{} messages not accepted or refused for good, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let all = cluster.wait_converged(&cluster.ids(), WAIT).await?;
    for id in cluster.ids() {
        let stored: BTreeSet<String> =
            smtp::received_messages(cluster.api(), id, Duration::from_secs(120))
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
        let lost: Vec<&String> = acked_ids.difference(&stored).collect();
        if !lost.is_empty() {
            bail!(
                "node {id} lacks {} accepted messages, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
        }
    }
    println!(
        "t110: every accepted message on all three nodes: {}",
        all.summary()
    );
    Ok(())
}

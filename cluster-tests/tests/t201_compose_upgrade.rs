//! t201: a rolling upgrade between two real builds, in Compose. The three nodes of
//! `deploy/compose` start on an image of the previous release (commit
//! `release::PREVIOUS_RELEASE`, built from this repository's history: feature level
//! 1, and no word of feature levels), then move to an image of this tree one at a
//! time (`docker-compose up -d --no-deps nodeN` with that node's image changed),
//! each under a steady SMTP load from the client container: first the leader (it
//! hands its leadership to a node of the previous release), then an old node, the
//! leader if it is one, last the remaining one.
//!
//! Checked after each step, with both releases running: every node applies the same
//! entries (the same applied index and chain head on all three: had a node of this
//! tree proposed what the previous release cannot decode, that node would stop
//! applying), each upgraded node says it applies this tree's level while the
//! cluster's level stays 1; after the last, the leader raises the cluster's level to
//! it by itself. In
//! every step and in a last load on this tree alone, each message told `250` reaches
//! the sink: none lost; the longest time no node answered `250`, the drain and the
//! duplicates are printed per step.
//!
//! Needs a Docker engine with `docker-compose` (as t200), and the repository's
//! history to build the previous release (`release::previous_release_bin`, kept in
//! `<target>/previous-release` for later runs).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::compose::{self, Suite, RATE};
use bulwark_cluster_tests::release::{self, PREVIOUS_RELEASE};
use bulwark_cluster_tests::ClusterStatus;

const PROJECT: &str = "bulwarkt201";
const OLD_IMAGE: &str = "bulwark:t201-previous";
const NEW_IMAGE: &str = "bulwark:t201";
const KIT_IMAGE: &str = "bulwark-kit:t201";
/// This tree's feature level, and the previous release's (which has no word of it:
/// its API answers without the field).
const LEVEL: u32 = bulwark_model::feature::FEATURE_LEVEL;
const OLD_LEVEL: u32 = 1;
/// How long after the last upgrade the cluster's level must have risen.
const RAISED_WITHIN: Duration = Duration::from_secs(30);
/// Each step's load, the upgrade done 8 s into it.
const STEP_SECS: u64 = 30;

fn image_var(node: u64) -> String {
    format!("T201_IMAGE_{node}")
}

/// Every node's status; all three must answer.
async fn all(suite: &Suite) -> Result<Vec<(u64, ClusterStatus)>> {
    let mut out = Vec::new();
    for (node, status) in suite.statuses().await {
        out.push((node, status?));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t201_rolling_upgrade_from_the_previous_release_loses_nothing() -> Result<()> {
    if !compose::engine_here("t201")? {
        return Ok(());
    }
    let old_bin = release::previous_release_bin()?;
    compose::build_node_image(&old_bin, OLD_IMAGE)?;
    compose::build_node_image(&bulwark_cluster_tests::bulwark_bin()?, NEW_IMAGE)?;
    compose::build_kit_image(
        std::path::Path::new(env!("CARGO_BIN_EXE_compose_kit")),
        KIT_IMAGE,
    )?;
    let mut suite = Suite::new(
        PROJECT,
        OLD_IMAGE,
        KIT_IMAGE,
        &["cluster-tests/compose/upgrade.yaml"],
    )?;
    let mut release = std::collections::BTreeMap::new();
    for node in 1..=3u64 {
        suite.set_env(&image_var(node), OLD_IMAGE);
        release.insert(node, OLD_IMAGE);
    }
    let started = Instant::now();
    let leader = suite.up().await?;
    suite.converged(Duration::from_secs(60)).await?;
    for (node, status) in all(&suite).await? {
        ensure!(
            status.feature_level == 0,
            "node {node} of the previous release says feature level {}: is {OLD_IMAGE} \
             really {PREVIOUS_RELEASE}?",
            status.feature_level
        );
    }
    println!(
        "t201: three nodes of the previous release ({}) up, node {leader} leads, {:.1} s \
         after `up`",
        &PREVIOUS_RELEASE[..12],
        started.elapsed().as_secs_f64()
    );

    let mut reports = Vec::new();
    for step in 1..=3 {
        let leader = suite.leader(Duration::from_secs(60)).await?;
        let node = if release[&leader] == OLD_IMAGE {
            leader
        } else {
            *release
                .iter()
                .find(|(_, image)| **image == OLD_IMAGE)
                .expect("a node of the previous release")
                .0
        };
        let role = if node == leader {
            "the leader"
        } else {
            "a follower"
        };
        let name = format!("upgrade node {node} ({role}), {step} of 3");
        let load = suite.load(&format!("step{step}"), STEP_SECS)?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        suite.set_env(&image_var(node), NEW_IMAGE);
        release.insert(node, NEW_IMAGE);
        suite.compose_run(&["up", "-d", "--no-deps", &format!("node{node}")])?;
        reports.push(suite.settle(&name, load).await?);
        let took = suite.converged(Duration::from_secs(120)).await?;
        let leader = suite.leader(Duration::from_secs(60)).await?;
        println!(
            "t201: {name}: every node in agreement {:.1} s after the load; node {leader} \
             ({}) leads",
            took.as_secs_f64(),
            release[&leader]
        );
        if step < 3 {
            for (n, status) in all(&suite).await? {
                let build = if release[&n] == NEW_IMAGE { LEVEL } else { 0 };
                ensure!(
                    status.feature_level == build,
                    "node {n} ({}) says it applies feature level {}, expected {build}",
                    release[&n],
                    status.feature_level
                );
                ensure!(
                    release[&n] == OLD_IMAGE || status.cluster_feature_level == OLD_LEVEL,
                    "node {n} says the cluster runs at level {} while a node of the \
                     previous release is a member",
                    status.cluster_feature_level
                );
            }
        }
    }

    let upgraded = Instant::now();
    loop {
        let now = all(&suite).await;
        if let Ok(now) = &now {
            if now
                .iter()
                .all(|(_, s)| (s.feature_level, s.cluster_feature_level) == (LEVEL, LEVEL))
            {
                break;
            }
        }
        ensure!(
            upgraded.elapsed() < RAISED_WITHIN,
            "the cluster's level not raised to {LEVEL} within {RAISED_WITHIN:?} of the last \
             upgrade: {:?}",
            now.map(|n| n
                .iter()
                .map(|(id, s)| (*id, s.feature_level, s.cluster_feature_level))
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "t201: every node on this tree; the cluster's feature level raised to {LEVEL} (seen \
         {:.1} s after the last step's load ended)",
        upgraded.elapsed().as_secs_f64()
    );
    let load = suite.load("after", 20)?;
    let settled = format!("all on this tree, level {LEVEL}");
    reports.push(suite.settle(&settled, load).await?);
    let took = suite.converged(Duration::from_secs(60)).await?;
    println!(
        "t201: every chain head equal within {:.1} s",
        took.as_secs_f64()
    );

    println!("\nt201: {RATE} messages/s of 2 KiB from the client container, one per connection, to node1..node3 in turn");
    let failures = compose::table(&reports);
    println!(
        "t201: the whole upgrade took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    drop(suite);
    Ok(())
}

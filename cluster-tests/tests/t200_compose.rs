//! t200: the Compose fault suite. The three nodes of `deploy/compose` as shipped
//! (images built from this tree on a base made from Debian's mirror), their next hop
//! and an SMTP client each in its own container with its own address, on a Docker
//! engine. Under a steady SMTP load from the client, one fault at a time:
//!
//! 1. `docker kill` of the leader, started again 10 s later;
//! 2. `docker kill` of a follower, started again 10 s later;
//! 3. the leader cut off the cluster network (`docker network disconnect`) for 25 s:
//!    the client still reaches it on the mail network, and it must answer 451, never
//!    250; the majority goes on; after healing every node's chain head is the same;
//!    then a follower cut off the same way for 10 s: when it is back, the leader
//!    still leads at the same term on every node (the pre-vote: the follower, which
//!    kept timing out alone, never raised its term);
//! 4. `docker pause` of the leader for 30 s;
//! 5. node3's volume filled (a tmpfs of 1 GiB, filled by another container) for 15 s:
//!    it refuses mail, then stops itself; once space is back it is started again by
//!    Docker's restart policy and catches up;
//! 6. node3 removed with its volume and started from an empty one: it rejoins by
//!    snapshot.
//!
//! Each phase reports the attempts and replies, the longest time no node answered
//! `250`, the time from the end of the load until the sink had every message told
//! `250` (the drain), and the duplicates; the suite fails if one acknowledged message
//! never reaches the sink, or a minority node answers `250`, or the nodes do not
//! agree on the chain afterwards.
//!
//! Needs a Docker engine with `docker-compose` and, for the base image, root and
//! debootstrap (deploy/base-image.sh). Without a Docker engine the test says so and
//! checks nothing, unless `CI` is set: then it fails. What it shares with the
//! upgrade suite (t201) is `bulwark_cluster_tests::compose`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::compose::{self, docker, Suite, RATE};

/// Compose's project name (no punctuation: Compose v1 would strip it).
const PROJECT: &str = "bulwarkt200";
const IMAGE: &str = "bulwark:t200";
const KIT_IMAGE: &str = "bulwark-kit:t200";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t200_compose_faults_lose_no_acknowledged_message() -> Result<()> {
    if !compose::engine_here("t200")? {
        return Ok(());
    }
    compose::build_node_image(&bulwark_cluster_tests::bulwark_bin()?, IMAGE)?;
    compose::build_kit_image(Path::new(env!("CARGO_BIN_EXE_compose_kit")), KIT_IMAGE)?;
    let mut suite = Suite::new(
        PROJECT,
        IMAGE,
        KIT_IMAGE,
        &["cluster-tests/compose/faults.yaml"],
    )?;
    let started = Instant::now();
    let leader = suite.up().await?;
    println!(
        "t200: three nodes up, node {leader} leads, {:.1} s after `up`",
        started.elapsed().as_secs_f64()
    );

    let mut reports = Vec::new();
    let mut failures = Vec::new();

    // 1. kill -9 of the leader, then 2. of a follower (not node3, whose tmpfs volume
    // a kill would empty), each started again 10 s later.
    for role in ["leader", "follower"] {
        let leader = suite.leader(Duration::from_secs(60)).await?;
        let node = match role {
            "leader" => leader,
            _ => (1..=2).find(|&n| n != leader).expect("a follower"),
        };
        let name = format!("kill the {role} (node {node})");
        let prefix = format!("kill-{role}");
        let victim = suite.container(&format!("node{node}"))?;
        let ten = Duration::from_secs(10);
        let kill = ["kill", victim.as_str()];
        let start = ["start", victim.as_str()];
        let (report, _, _) = suite.around(name, &prefix, 30, ten, &kill, &start).await?;
        reports.push(report);
        suite.converged(Duration::from_secs(120)).await?;
    }

    // 3. the leader cut off the cluster network for 25 s: a minority of one, which
    // must answer 451 (after [raft] commit_timeout_ms, 10 s) and never 250.
    let leader = suite.leader(Duration::from_secs(60)).await?;
    let (report, cut_ms, healed_ms) = suite
        .cut_off(
            format!("partition the leader (node {leader}) 25 s"),
            "partition",
            leader,
            45,
            Duration::from_secs(25),
        )
        .await?;
    let isolated = format!("node{leader}:2525");
    let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
    for a in report
        .attempts
        .iter()
        .filter(|a| a.target == isolated && a.start_ms > cut_ms && a.end_ms < healed_ms)
    {
        *answered.entry(a.outcome.as_str()).or_default() += 1;
    }
    println!("t200: cut off, node {leader} answered what it was sent then: {answered:?}");
    if answered.contains_key("accepted") {
        failures.push(format!(
            "node {leader}, cut off, answered 250: {answered:?}"
        ));
    }
    if !answered.keys().any(|k| k.starts_with("451")) {
        failures.push(format!(
            "node {leader}, cut off, never answered 451: {answered:?}"
        ));
    }
    reports.push(report);
    let took = suite.converged(Duration::from_secs(120)).await?;
    println!(
        "t200: after healing, every chain head equal within {:.1} s",
        took.as_secs_f64()
    );

    // 3b. a follower cut off the cluster network for 10 s: back, it deposes no one.
    let leader = suite.leader(Duration::from_secs(60)).await?;
    let term = suite.status(leader).await?.term;
    let follower = (1..=2).find(|&n| n != leader).expect("a follower");
    let (report, _, _) = suite
        .cut_off(
            format!("partition a follower (node {follower}) 10 s"),
            "partition-follower",
            follower,
            25,
            Duration::from_secs(10),
        )
        .await?;
    reports.push(report);
    suite.converged(Duration::from_secs(120)).await?;
    let mut deposed = Vec::new();
    for (node, status) in suite.statuses().await {
        let status = status?;
        if (status.leader_id, status.term) != (Some(leader), term) {
            deposed.push(format!(
                "after node {follower} was cut off and healed, node {node} says leader {:?} \
                 at term {}, not node {leader} at term {term}",
                status.leader_id, status.term
            ));
        }
    }
    if deposed.is_empty() {
        println!(
            "t200: node {follower} cut off 10 s and healed: node {leader} still leads at term \
             {term} on every node"
        );
    }
    failures.extend(deposed);

    // 4. docker pause of the leader for 30 s.
    let leader = suite.leader(Duration::from_secs(60)).await?;
    let victim = suite.container(&format!("node{leader}"))?;
    let (report, _, _) = suite
        .around(
            format!("pause the leader (node {leader}) 30 s"),
            "pause",
            45,
            Duration::from_secs(30),
            &["pause", &victim],
            &["unpause", &victim],
        )
        .await?;
    reports.push(report);
    suite.converged(Duration::from_secs(120)).await?;

    // 5. node3's volume filled by another container, which holds it until told.
    let volume = format!("{PROJECT}_node3-data");
    let release = suite.out().join("fill.release");
    let load = suite.load("disk-full", 35)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let filler = docker(&[
        "run",
        "-d",
        "--rm",
        "-v",
        &format!("{volume}:/data"),
        "-v",
        &format!("{}:/out", suite.out().display()),
        KIT_IMAGE,
        "fill",
        "/data/filler",
        "--hold-until",
        "/out/fill.release",
        "--max-secs",
        "120",
    ])?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    std::fs::write(&release, b"")?;
    let filled = docker(&["wait", &filler]);
    reports.push(suite.settle("fill node3's volume 15 s", load).await?);
    let node3 = suite.container("node3")?;
    println!(
        "t200: the filler ended: {filled:?}; node3 restarted {} time(s)",
        docker(&["inspect", "-f", "{{.RestartCount}}", &node3])?
    );
    suite.converged(Duration::from_secs(180)).await?;

    // 6. node3 from an empty volume.
    let load = suite.load("empty-volume", 35)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    suite.compose_run(&["rm", "-s", "-f", "node3"])?;
    docker(&["volume", "rm", &volume])?;
    suite.compose_run(&["up", "-d", "--no-deps", "node3"])?;
    reports.push(suite.settle("node3 from an empty volume", load).await?);
    let took = suite.converged(Duration::from_secs(180)).await?;
    println!(
        "t200: node3 rejoined from an empty volume, in agreement within {:.1} s",
        took.as_secs_f64()
    );

    println!("\nt200: {RATE} messages/s of 2 KiB from the client container, one per connection, to node1..node3 in turn");
    failures.extend(compose::table(&reports));
    println!(
        "t200: the whole suite took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    drop(suite);
    Ok(())
}

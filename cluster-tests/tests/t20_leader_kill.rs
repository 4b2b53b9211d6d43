//! t20: kill -9 the leader under write load. A survivor takes over, no acknowledged
//! write is lost, and the killed node catches up after a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::api::check_chain;
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::ClusterBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_kill9_under_load_loses_no_acknowledged_write() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t20-leader-kill")
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;

    let control = LoadControl::new();
    let load = tokio::spawn(write_notes(
        cluster.client(),
        LoadSpec::until_stopped(16, "t20-note"),
        control.clone(),
    ));
    control.wait_acked(300, Duration::from_secs(120)).await?;

    let before = control.acked();
    cluster.kill(leader)?;
    let killed_at = Instant::now();
    let (new_leader, took) = cluster
        .wait_for_new_leader(leader, Duration::from_secs(60))
        .await?;
    println!(
        "t20: killed leader {leader} (kill -9) after {before} acknowledged writes; \
         node {new_leader} observed as new leader after {} ms",
        took.as_millis()
    );
    // Writes must flow again through the new leader.
    let resumed = control.acked();
    control
        .wait_acked(resumed + 300, Duration::from_secs(120))
        .await
        .context("writes did not resume after the new leader was elected")?;
    println!(
        "t20: first 300 writes after the election completed {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    control.stop();
    let report = load.await?;
    println!(
        "t20: {} acknowledged, {} unacknowledged (may or may not be committed), {} retries, \
         {:.0} writes/s, per node {:?}",
        report.acks.len(),
        report.failed.len(),
        report.retries,
        report.rate(),
        report.acks_by_node()
    );
    ensure!(!report.hit_deadline, "load hit its overall deadline");

    let survivors = cluster.others(leader);
    let converged = cluster
        .wait_converged(&survivors, Duration::from_secs(180))
        .await?;
    let mut reference = None;
    for &id in &survivors {
        let events = cluster.events_all(id).await?;
        check_chain(&events)?;
        check_acks(id, &events, &report.acks)?;
        let mut seen = std::collections::HashMap::new();
        for m in events.iter().filter_map(|e| e.message.as_deref()) {
            *seen.entry(m).or_insert(0u32) += 1;
        }
        let dups = seen.values().filter(|&&c| c > 1).count();
        println!(
            "t20: node {id}: {} events; {dups} note texts committed more than once \
             (a retry after an ambiguous failure: no idempotency key)",
            events.len()
        );
        let digest: Vec<(u64, String)> = events.iter().map(|e| (e.seq, e.hash.clone())).collect();
        match &reference {
            None => reference = Some(digest),
            Some(r) => ensure!(*r == digest, "survivors' event logs differ"),
        }
    }
    println!("t20: survivors agree: {}", converged.summary());

    cluster.restart(leader).await?;
    let all = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(180))
        .await?;
    ensure!(
        all.chain_head == converged.chain_head && all.event_count == converged.event_count,
        "restarted node converged to a different log: {} vs {}",
        all.summary(),
        converged.summary()
    );
    let events = cluster.events_all(leader).await?;
    check_acks(leader, &events, &report.acks)?;
    let digest: Vec<(u64, String)> = events.iter().map(|e| (e.seq, e.hash.clone())).collect();
    ensure!(
        Some(digest) == reference,
        "restarted node {leader}'s log differs"
    );
    println!("t20: restarted node {leader} caught up: {}", all.summary());
    cluster.shutdown().await
}

/// Every acknowledged note is in the log, at the seq its acknowledgement named.
fn check_acks(
    id: u64,
    events: &[bulwark_cluster_tests::Event],
    acks: &[bulwark_cluster_tests::load::Ack],
) -> Result<()> {
    let by_seq: BTreeMap<u64, &bulwark_cluster_tests::Event> =
        events.iter().map(|e| (e.seq, e)).collect();
    let texts: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e.message.as_deref()).collect();
    let mut lost = Vec::new();
    for a in acks {
        if !texts.contains(a.text.as_str()) {
            lost.push(format!(
                "{} (acked as seq {} by node {})",
                a.text, a.seq, a.node
            ));
            continue;
        }
        let e = by_seq.get(&a.seq);
        ensure!(
            e.and_then(|e| e.message.as_deref()) == Some(a.text.as_str()),
            "node {id}: seq {} was acknowledged for {:?} but holds {:?}",
            a.seq,
            a.text,
            e.map(|e| &e.message)
        );
        ensure!(
            e.map(|e| e.hash.as_str()) == Some(a.hash.as_str()),
            "node {id}: seq {} hash differs from the acknowledged hash",
            a.seq
        );
    }
    ensure!(
        lost.is_empty(),
        "node {id} lost {} acknowledged writes, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    Ok(())
}

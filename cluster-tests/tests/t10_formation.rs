//! t10: three nodes form a cluster by themselves and commit 10,000 concurrent writes;
//! afterwards every node holds the same hash-chained log.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Result};
use bulwark_cluster_tests::api::check_chain;
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::ClusterBuilder;

/// Notes to write (`BULWARK_T10_WRITES` overrides, for quick local runs).
fn writes() -> u64 {
    std::env::var("BULWARK_T10_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_three_nodes_form_and_commit_10k_writes() -> Result<()> {
    let total = writes();
    let mut cluster = ClusterBuilder::new(3).name("t10-formation").start().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let st = cluster.cluster_status(leader).await?;
    println!("t10: leader {leader} in term {}", st.term);
    let mut member_ids: Vec<u64> = st.members.iter().map(|m| m.id).collect();
    member_ids.sort_unstable();
    ensure!(member_ids == vec![1, 2, 3], "members: {:?}", st.members);
    ensure!(
        st.members.iter().all(|m| m.voter),
        "all three are voters: {:?}",
        st.members
    );

    let report = write_notes(
        cluster.client(),
        LoadSpec::fixed(32, total, "t10-note"),
        LoadControl::new(),
    )
    .await;
    println!(
        "t10: {} notes acknowledged in {:.1?} ({:.0}/s), {} retries, per node {:?}",
        report.acks.len(),
        report.elapsed,
        report.rate(),
        report.retries,
        report.acks_by_node()
    );
    ensure!(
        report.failed.is_empty() && !report.hit_deadline,
        "{} notes failed (deadline hit: {}); first: {:?}",
        report.failed.len(),
        report.hit_deadline,
        report.failed.first()
    );
    ensure!(report.acks.len() as u64 == total);
    // Each acknowledgement names a distinct position in the log.
    let seqs: HashSet<u64> = report.acks.iter().map(|a| a.seq).collect();
    ensure!(
        seqs.len() == report.acks.len(),
        "two acknowledgements share a seq"
    );

    let converged = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(180))
        .await?;
    println!("t10: converged: {}", converged.summary());

    let expected: HashSet<&str> = report.acks.iter().map(|a| a.text.as_str()).collect();
    let mut reference: Option<Vec<(u64, String)>> = None;
    for id in cluster.ids() {
        let events = cluster.events_all(id).await?;
        check_chain(&events)?;
        ensure!(
            events.len() as u64 == converged.event_count,
            "node {id}: /v1/events lists {} events, /v1/cluster says {}",
            events.len(),
            converged.event_count
        );
        ensure!(
            events.last().map(|e| e.hash.as_str()) == Some(converged.chain_head.as_str()),
            "node {id}: last event hash differs from chain_head"
        );
        let by_seq: BTreeMap<u64, &str> = events
            .iter()
            .map(|e| (e.seq, e.message.as_deref().unwrap_or("")))
            .collect();
        let notes: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == "audit.note")
            .filter_map(|e| e.message.as_deref())
            .collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &notes {
            *counts.entry(n).or_insert(0) += 1;
        }
        let missing = expected.iter().filter(|t| !counts.contains_key(*t)).count();
        ensure!(
            missing == 0,
            "node {id}: {missing} acknowledged notes missing"
        );
        if report.retries == 0 {
            ensure!(
                notes.len() as u64 == total,
                "node {id}: {} audit.note events, expected {total}",
                notes.len()
            );
        } else {
            // A retried request may have committed twice; every text still appears.
            println!(
                "t10: node {id}: {} audit.note events ({} retries)",
                notes.len(),
                report.retries
            );
        }
        if converged.event_count != total {
            println!(
                "t10: note: event_count {} includes {} events that are not notes",
                converged.event_count,
                converged.event_count - notes.len() as u64
            );
        }
        for a in &report.acks {
            ensure!(
                by_seq.get(&a.seq) == Some(&a.text.as_str()),
                "node {id}: seq {} holds {:?}, but it was acknowledged for {:?}",
                a.seq,
                by_seq.get(&a.seq),
                a.text
            );
        }
        let verify = cluster.api().verify(id).await?;
        ensure!(verify.ok, "node {id}: /v1/events/verify: {verify:?}");
        let digest: Vec<(u64, String)> = events.into_iter().map(|e| (e.seq, e.hash)).collect();
        match &reference {
            None => reference = Some(digest),
            Some(r) => ensure!(*r == digest, "node {id}: event log differs from node 1's"),
        }
    }
    cluster.shutdown().await
}

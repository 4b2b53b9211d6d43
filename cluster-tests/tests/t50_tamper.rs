//! t50: editing one stored event behind a stopped node's back is detected by
//! `bulwark audit verify`, which names the edited event.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::tamper::tamper_event;
use bulwark_cluster_tests::ClusterBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_offline_verify_detects_tampered_event() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3).name("t50-tamper").start().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    // What a new cluster records by itself (each node's signing key, the policy
    // seeded from the first leader's file) first, so the log stands still once the
    // notes below have converged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = cluster.events_all(leader).await?;
        let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
        if count("audit.key_rotated") == 3 && count("policy.changed") == 1 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the cluster's own start events: {} keys, {} policies",
            count("audit.key_rotated"),
            count("policy.changed")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts: Vec<String> = (1..=20)
        .map(|i| format!("t50 note {i:02}: evidence that must never change"))
        .collect();
    for (i, t) in texts.iter().enumerate() {
        cluster.post_note(1 + i as u64 % 3, t).await?;
    }
    let st = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(60))
        .await?;
    ensure!(st.event_count >= 20, "{}", st.summary());

    let victim = cluster.others(leader)[0];
    let online = cluster.api().verify(victim).await?;
    ensure!(online.ok, "online verify before stopping: {online:?}");
    let status = cluster.terminate(victim).await?;
    println!("t50: node {victim} stopped with {status}");

    let clean = cluster.audit_verify_offline(victim).await?;
    println!("t50: verify before tampering: {clean:?}");
    ensure!(
        clean.code == Some(0),
        "audit verify on an intact log exited {:?}: {}",
        clean.code,
        clean.stderr
    );
    let report = clean
        .report
        .context("audit verify printed no JSON report")?;
    ensure!(report.ok && report.first_bad_seq.is_none(), "{report:?}");
    ensure!(
        report.checked >= 20,
        "checked only {} events",
        report.checked
    );
    ensure!(
        report.head.as_deref() == Some(st.chain_head.as_str()),
        "offline head {:?} != chain_head {}",
        report.head,
        st.chain_head
    );

    let t = tamper_event(cluster.node(victim).data_dir(), 5, &texts)?;
    println!("t50: tampered: {t:?}");

    let broken = cluster.audit_verify_offline(victim).await?;
    println!("t50: verify after tampering: {broken:?}");
    ensure!(
        broken.code == Some(1),
        "audit verify on a tampered log exited {:?}",
        broken.code
    );
    let report = broken
        .report
        .context("audit verify printed no JSON report")?;
    ensure!(!report.ok, "tampering went unnoticed: {report:?}");
    ensure!(
        report.first_bad_seq == Some(5),
        "first_bad_seq should be 5: {report:?}"
    );

    // The other nodes' copies are untouched.
    for id in cluster.others(victim) {
        let v = cluster.api().verify(id).await?;
        ensure!(v.ok, "node {id} online verify: {v:?}");
    }
    cluster.shutdown().await
}

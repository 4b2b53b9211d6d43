//! t40: a node whose certificate comes from another CA cannot join the cluster or speak
//! Raft to it, and a raw TLS client with that certificate is turned away.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::tls::{probe, ClientIdentity, ProbeOutcome};
use bulwark_cluster_tests::ClusterBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_node_with_foreign_ca_cannot_join() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t40-foreign-ca")
        .foreign_ca(&[3])
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    ensure!(
        leader != 3,
        "the node with a foreign certificate became leader"
    );

    for i in 0..50u64 {
        let id = 1 + i % 2;
        cluster.post_note(id, &format!("t40-note-{i:03}")).await?;
    }
    let good = cluster
        .wait_converged(&[1, 2], Duration::from_secs(60))
        .await?;
    ensure!(good.event_count >= 50, "{}", good.summary());

    // Node 3 stays empty and leaderless for a while, not just at one instant.
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < end {
        cluster.check_alive()?;
        let s = cluster.cluster_status(3).await?;
        ensure!(
            s.event_count == 0,
            "node 3 received events: {}",
            s.summary()
        );
        ensure!(
            !matches!(s.leader_id, Some(1) | Some(2)),
            "node 3 learned the leader: {}",
            s.summary()
        );
        ensure!(
            s.chain_head != good.chain_head,
            "node 3 has the cluster's chain head: {}",
            s.summary()
        );
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "t40: node 3 stays out: {}",
        last.map(|s| s.summary()).unwrap_or_default()
    );

    // The leader never matched anything on node 3.
    let ls = cluster.cluster_status(leader).await?;
    if let Some(m) = ls.members.iter().find(|m| m.id == 3) {
        ensure!(
            m.matched_index.unwrap_or(0) == 0,
            "leader {leader} reports node 3 matched up to {:?}",
            m.matched_index
        );
    }

    // A note sent to node 3 cannot commit.
    match cluster.api().post_note_once(3, "t40-through-node-3").await {
        Ok(p) => anyhow::bail!("node 3 committed a note: {p:?}"),
        Err(e) => println!("t40: note via node 3 refused as expected: {e}"),
    }

    // Raw TLS: the foreign identity is refused by both good nodes; no certificate at all
    // is refused too; the same node id with a certificate from the real CA gets through.
    let foreign_dir = cluster
        .foreign_certs_dir()
        .context("foreign certs")?
        .to_path_buf();
    let good_dir = cluster.certs_dir().to_path_buf();
    let ca = good_dir.join("ca.pem");
    let payload = b"POST /raft/append HTTP/1.1\r\nHost: bulwark\r\nContent-Length: 0\r\n\r\n";
    let wait = Duration::from_secs(3);
    for id in [1u64, 2] {
        let addr = cluster.node(id).cluster_addr();
        let foreign = probe(
            addr,
            &ca,
            Some(ClientIdentity {
                cert_pem: &foreign_dir.join("node3.pem"),
                key_pem: &foreign_dir.join("node3.key"),
            }),
            payload,
            wait,
        )
        .await?;
        println!("t40: foreign certificate -> node {id}: {foreign:?}");
        ensure!(
            foreign.rejected(),
            "node {id} accepted a foreign certificate: {foreign:?}"
        );

        let anonymous = probe(addr, &ca, None, payload, wait).await?;
        println!("t40: no certificate -> node {id}: {anonymous:?}");
        ensure!(
            anonymous.rejected(),
            "node {id} accepted a client without certificate: {anonymous:?}"
        );
    }
    let addr = cluster.node(1).cluster_addr();
    let control = probe(
        addr,
        &ca,
        Some(ClientIdentity {
            cert_pem: &good_dir.join("node3.pem"),
            key_pem: &good_dir.join("node3.key"),
        }),
        b"",
        Duration::from_secs(1),
    )
    .await?;
    println!("t40: control (real CA certificate) -> node 1: {control:?}");
    ensure!(
        !matches!(
            control,
            ProbeOutcome::HandshakeFailed(_) | ProbeOutcome::ErrorAfterHandshake(_)
        ),
        "a certificate from the real CA was refused too, so the test proves nothing: {control:?}"
    );

    // The good nodes still work.
    cluster.post_note(1, "t40-after-probes").await?;
    cluster.shutdown().await
}

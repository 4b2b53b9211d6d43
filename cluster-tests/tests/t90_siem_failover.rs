//! t90: the SIEM exporters are the cluster's: they run on whichever node leads and
//! resume from the replicated cursor. No node's file names an exporter: a webhook, a
//! Splunk HEC, a RELP and a plain TCP syslog receiver on 127.0.0.1 are added to the
//! cluster's policy through one node's API, their secrets in files beside every
//! node's config. They take every event while notes are written; the leader is
//! killed (-9) mid-stream; the new leader resumes. Every event of the survivors' log
//! arrives, each numbered by its exporter as it was before (a copy sent again
//! carries the same number), and what arrived twice is at most the batch in flight
//! when the leader died. An exporter taken out of the policy stops at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::siem::{seqs, wait_for_seqs, HttpReceiver, SyslogReceiver};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::json;

const BATCH: usize = 25;
const SECRET: &str = "t90-webhook-secret-0123456789abcdef";
const TOKEN: &str = "t90-hec-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t90_exporters_resume_from_the_replicated_cursor_after_the_leader_dies() -> Result<()> {
    let http = HttpReceiver::start(TOKEN, SECRET.as_bytes()).await?;
    let relp = SyslogReceiver::start_relp().await?;
    let tcp = SyslogReceiver::start(None).await?;
    // The events a syslog receiver got, as JSON.
    let syslog = |receiver: &SyslogReceiver| -> Vec<serde_json::Value> {
        receiver
            .messages()
            .iter()
            .filter_map(|m| serde_json::from_str(&m.payload).ok())
            .collect()
    };
    let mut cluster = ClusterBuilder::new(3)
        .name("t90-siem-failover")
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    for id in cluster.ids() {
        let dir = cluster
            .node(id)
            .config_path()
            .parent()
            .expect("a dir")
            .to_path_buf();
        std::fs::write(dir.join("hook.secret"), format!("{SECRET}\n"))?;
        std::fs::write(dir.join("hec.token"), TOKEN)?;
    }
    let exporters = json!([
        { "name": "hook", "kind": "webhook", "url": format!("{}/hook", http.url()),
          "secret_file": "hook.secret", "batch": BATCH, "poll_ms": 20 },
        { "name": "splunk", "kind": "hec", "url": http.url(),
          "token_file": "hec.token", "batch": BATCH, "poll_ms": 20 },
        { "name": "soc-relp", "kind": "syslog", "transport": "relp",
          "address": relp.addr().to_string(), "batch": BATCH, "poll_ms": 20 },
        { "name": "soc-tcp", "kind": "syslog",
          "address": tcp.addr().to_string(), "batch": BATCH, "poll_ms": 20 },
    ]);
    let through = cluster.others(leader)[0];
    let version = change_policy(&cluster, through, "exporters", exporters.clone()).await?;
    println!(
        "t90: the exporters are in the cluster's policy version {version}, through node {through}"
    );

    let control = LoadControl::new();
    let load = tokio::spawn(write_notes(
        cluster.client(),
        LoadSpec::until_stopped(4, "t90-note"),
        control.clone(),
    ));
    // Mid-stream: the receivers have had some of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while http.webhook_events("hook").len() < 150
        || http.hec_events().len() < 150
        || relp.messages().len() < 150
        || tcp.messages().len() < 150
    {
        ensure!(
            Instant::now() < deadline,
            "the exporters shipped too little"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shipped = (
        http.webhook_events("hook").len(),
        http.hec_events().len(),
        relp.messages().len(),
        tcp.messages().len(),
    );
    cluster.kill(leader)?;
    let (new_leader, took) = cluster
        .wait_for_new_leader(leader, Duration::from_secs(60))
        .await?;
    println!(
        "t90: killed leader {leader} after {shipped:?} events shipped (webhook, hec, relp, tcp); node \
         {new_leader} leads after {} ms",
        took.as_millis()
    );
    let resumed = control.acked();
    control
        .wait_acked(resumed + 200, Duration::from_secs(120))
        .await?;
    control.stop();
    let report = load.await?;
    ensure!(!report.hit_deadline, "load hit its overall deadline");

    let survivors = cluster.others(leader);
    cluster
        .wait_converged(&survivors, Duration::from_secs(120))
        .await?;
    let log: Vec<u64> = cluster
        .events_all(new_leader)
        .await?
        .iter()
        .map(|e| e.seq)
        .collect();
    ensure!(log == (1..=log.len() as u64).collect::<Vec<_>>());
    wait_for_seqs("webhook", &log, Duration::from_secs(120), || {
        seqs(&http.webhook_events("hook"))
    })
    .await?;
    wait_for_seqs("hec", &log, Duration::from_secs(120), || {
        seqs(&http.hec_events())
    })
    .await?;
    wait_for_seqs("relp", &log, Duration::from_secs(120), || {
        seqs(&syslog(&relp))
    })
    .await?;
    wait_for_seqs("tcp", &log, Duration::from_secs(120), || {
        seqs(&syslog(&tcp))
    })
    .await?;

    for (name, events) in [
        ("webhook", http.webhook_events("hook")),
        ("hec", http.hec_events()),
        ("relp", syslog(&relp)),
        ("tcp", syslog(&tcp)),
    ] {
        // Unfiltered from the first event: the exporter's number is the seq, on
        // either leader and in every copy.
        let misnumbered = events
            .iter()
            .filter(|e| e["export"]["seq"] != e["seq"])
            .count();
        ensure!(
            misnumbered == 0,
            "{name}: {misnumbered} events numbered otherwise"
        );
        let received = seqs(&events);
        let distinct: BTreeSet<u64> = received.iter().copied().collect();
        let duplicates = received.len() - distinct.len();
        println!(
            "t90: {name}: {} events of a {}-event log received, {duplicates} twice",
            received.len(),
            log.len()
        );
        ensure!(
            distinct.iter().copied().eq(log.iter().copied()),
            "{name}: received seqs are not the log's"
        );
        // The killed leader's batch in flight, sent again by the new leader.
        ensure!(
            duplicates <= BATCH,
            "{name}: {duplicates} duplicates, more than one batch of {BATCH}"
        );
        // Apart from that resend, in order.
        let backwards = received.windows(2).filter(|w| w[1] <= w[0]).count();
        ensure!(
            backwards <= 1,
            "{name}: {backwards} steps back in the stream"
        );
    }
    ensure!(http.refused().is_empty(), "{:?}", http.refused());

    let metrics = reqwest::get(format!("{}/metrics", cluster.node(new_leader).api_url()))
        .await?
        .text()
        .await?;
    for exporter in ["hook", "splunk", "soc-relp", "soc-tcp"] {
        let running = format!("bulwark_siem_running{{exporter=\"{exporter}\"}} 1");
        ensure!(
            metrics.contains(&running),
            "no {running} on node {new_leader}"
        );
    }

    // Taken out of the policy, the TCP exporter stops; the others go on.
    let kept: Vec<serde_json::Value> = exporters.as_array().expect("a list")[..3].to_vec();
    change_policy(&cluster, new_leader, "exporters", json!(kept)).await?;
    let stopped = "bulwark_siem_running{exporter=\"soc-tcp\"} 0";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", cluster.node(new_leader).api_url()))
            .await?
            .text()
            .await?;
        if metrics.contains(stopped) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no {stopped} on node {new_leader}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = tcp.messages().len();
    let head = *log.last().expect("events");
    for n in 0..20 {
        cluster
            .api()
            .post_note(
                new_leader,
                &format!("t90-after-{n}"),
                Duration::from_secs(30),
            )
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs(&http.webhook_events("hook"))
        .iter()
        .filter(|s| **s > head)
        .count()
        < 20
    {
        ensure!(Instant::now() < deadline, "the webhook stopped shipping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        tcp.messages().len() == before,
        "the removed exporter shipped {} more",
        tcp.messages().len() - before
    );
    println!("t90: soc-tcp taken out of the policy shipped nothing more; the webhook went on");
    cluster.shutdown().await
}

/// Sets `key` of the cluster's policy to `value` through node `id`; the new version.
async fn change_policy(
    cluster: &Cluster,
    id: u64,
    key: &str,
    value: serde_json::Value,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (base, mut policy) = loop {
        let (status, current) = cluster.api().policy(id).await?;
        if status == 200 && current["version"].as_u64() > Some(0) {
            break (current["version"].clone(), current["policy"].clone());
        }
        ensure!(Instant::now() < deadline, "node {id}: no policy: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    policy[key] = value;
    let body = json!({ "base_version": base, "policy": policy, "reason": "t90" });
    let (status, answer) = cluster.api().put_policy(id, &body).await?;
    ensure!(status == 200, "{status}: {answer}");
    answer["version"].as_u64().context("no version")
}

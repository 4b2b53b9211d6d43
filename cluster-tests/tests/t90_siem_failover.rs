//! t90: the SIEM exporters run on the leader and resume from the replicated cursor.
//! A webhook, a Splunk HEC, a RELP and a plain TCP syslog receiver on 127.0.0.1 take
//! every event while notes are written; the leader is killed (-9) mid-stream; the new
//! leader resumes. Every event of the survivors' log arrives, each numbered by its
//! exporter as it was before (a copy sent again carries the same number), and what
//! arrived twice is at most the batch in flight when the leader died.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::siem::{seqs, wait_for_seqs, HttpReceiver, SyslogReceiver};
use bulwark_cluster_tests::ClusterBuilder;

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
        .toml(&format!(
            "[[siem.exporters]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\n\
             secret = \"{SECRET}\"\nbatch = {BATCH}\npoll_ms = 20\n\n\
             [[siem.exporters]]\nname = \"splunk\"\nkind = \"hec\"\nurl = \"{url}\"\n\
             token = \"{TOKEN}\"\nbatch = {BATCH}\npoll_ms = 20\n\n\
             [[siem.exporters]]\nname = \"soc-relp\"\nkind = \"syslog\"\ntransport = \"relp\"\n\
             address = \"{relp}\"\nbatch = {BATCH}\npoll_ms = 20\n\n\
             [[siem.exporters]]\nname = \"soc-tcp\"\nkind = \"syslog\"\n\
             address = \"{tcp}\"\nbatch = {BATCH}\npoll_ms = 20\n",
            url = http.url(),
            relp = relp.addr(),
            tcp = tcp.addr(),
        ))
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;

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
    cluster.shutdown().await
}

//! t120: an online backup taken under SMTP load (`bulwark backup` against a follower),
//! then a new three-node cluster restored from it (`bulwark restore` on each node).
//! Checked:
//!
//! - the backup holds every message the MTAs were told `250` for before it began,
//!   the quarantined messages and the audit notes; `bulwark audit verify --data-dir`
//!   reads it as a stopped node's data directory and finds the chain intact, with as
//!   many events as the manifest says;
//! - a destination that is not empty is refused with a clear error, and nothing is
//!   written there;
//! - the restored cluster elects a leader, serves the same events (chain verified by
//!   the API), the same quarantine, and takes new mail;
//! - a restore over a data directory that holds a node's data is refused, and so is
//!   restoring one wiped member while its peers run ahead of the backup.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::mta::{MtaLoad, Running, Targets};
use bulwark_cluster_tests::smtp::{self, ClientConfig, Message, Outcome};
use bulwark_cluster_tests::{Cluster, ClusterBuilder, VerifyReport};
use serde_json::Value;

/// The node the backup is taken from (a follower, usually: node 1 tends to lead).
const FROM: u64 = 2;
const QUARANTINED: usize = 5;
const WAIT: Duration = Duration::from_secs(60);

fn load() -> MtaLoad {
    MtaLoad {
        deadline: Duration::from_secs(180),
        pace: Duration::from_millis(20),
        ..MtaLoad::new("t120", 20_000, 4, 2_048)
    }
}

/// A message with a Windows program attached: quarantined by the default policy.
fn program(n: usize) -> Message {
    let content = format!(
        "From: Alice <alice@sender.test>\r\nTo: user@example.test\r\n\
         Subject: the tool {n}\r\nMessage-ID: <tool.{n}@sender.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nRun it.\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n"
    );
    Message {
        token: format!("tool.{n}"),
        mail_from: "alice@sender.test".into(),
        rcpt_to: vec!["user@example.test".into()],
        content: content.into_bytes(),
    }
}

async fn bulwark<S: AsRef<std::ffi::OsStr>>(bin: &Path, args: &[S]) -> Result<Output> {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("bulwark did not finish in time")??;
    Ok(out)
}

async fn quarantine_ids(cluster: &Cluster, id: u64) -> Result<BTreeSet<String>> {
    let page: Value = cluster
        .api()
        .get_authed(id, "/v1/quarantine?limit=100")
        .await?;
    Ok(page["items"]
        .as_array()
        .context("quarantine items")?
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t120_backup_under_load_restores_as_a_new_cluster() -> Result<()> {
    let place = tempfile::tempdir()?;
    let backup = place.path().join("backup");
    // The nodes write backups into `place` only (`[backup] dir`).
    let mut cluster = ClusterBuilder::new(3)
        .name("t120-backup")
        .toml(&format!(
            "[backup]\ndir = {}\n",
            serde_json::to_string(&place.path().display().to_string())?
        ))
        .start()
        .await?;
    let (before, quarantined, notes, manifest) = take(&mut cluster, &backup).await?;
    let bin = cluster.binary().to_path_buf();
    cluster.shutdown().await?;

    // The backup reads as a stopped node's data directory.
    let out = bulwark(
        &bin,
        &[
            "audit".as_ref(),
            "verify".as_ref(),
            "--data-dir".as_ref(),
            backup.as_os_str(),
        ],
    )
    .await?;
    let report: VerifyReport = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("audit verify: {}", String::from_utf8_lossy(&out.stderr)))?;
    ensure!(
        out.status.success() && report.ok,
        "audit verify of the backup: {report:?}"
    );
    ensure!(
        report.checked == manifest["event_count"].as_u64().unwrap_or(0),
        "audit verify checked {} events, the manifest says {}",
        report.checked,
        manifest["event_count"]
    );
    println!(
        "t120: audit verify --data-dir on the backup: ok, {} events, head {:?}",
        report.checked, report.head
    );

    // A new cluster from it.
    let mut restored = ClusterBuilder::new(3)
        .name("t120-restored")
        .restore_from(&backup)
        .start()
        .await?;
    let t0 = Instant::now();
    let leader = restored.wait_for_leader(WAIT).await?;
    println!(
        "t120: restored cluster: node {leader} leads {} ms after start",
        t0.elapsed().as_millis()
    );
    for id in restored.ids() {
        restored.wait_caught_up(id, WAIT).await?;
        let stored: BTreeSet<String> =
            smtp::received_messages(restored.api(), id, Duration::from_secs(120))
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
        let lost: Vec<&String> = before.difference(&stored).collect();
        ensure!(
            lost.is_empty(),
            "restored node {id} lacks {} messages accepted before the backup, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let held = quarantine_ids(&restored, id).await?;
        ensure!(
            quarantined.is_subset(&held),
            "restored node {id}'s quarantine: {held:?}, expected {quarantined:?}"
        );
        let events = restored.events_all(id).await?;
        for note in &notes {
            ensure!(
                events
                    .iter()
                    .any(|e| e.kind == "audit.note" && e.message.as_deref() == Some(note)),
                "restored node {id} lacks the note {note:?}"
            );
        }
        let report = restored.api().verify(id).await?;
        ensure!(report.ok, "restored node {id}: chain: {report:?}");
    }
    let addr = restored.node(leader).smtp_addr();
    let fresh = Message::generate("t120-after-restore", 1_024, "user@example.test");
    let sent = smtp::send_one(addr, &fresh, &ClientConfig::default()).await;
    ensure!(
        matches!(sent.outcome, Outcome::Accepted { .. }),
        "the restored cluster did not take new mail: {}",
        sent.outcome
    );
    let all = restored.wait_converged(&restored.ids(), WAIT).await?;
    println!(
        "t120: restored cluster holds the {} messages accepted before the backup, the \
         {QUARANTINED} quarantined, the notes; takes new mail; {}",
        before.len(),
        all.summary()
    );
    // A restore never overwrites a node's data.
    let config = restored.node(1).config_path().to_path_buf();
    let out = bulwark(
        &bin,
        &[
            "restore".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--from".as_ref(),
            backup.as_os_str(),
        ],
    )
    .await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("empty data directory"),
        "a restore over node 1's data: {} {said}",
        out.status
    );
    restored.wait_converged(&restored.ids(), WAIT).await?;
    println!(
        "t120: a restore over a node's data refused: {}",
        said.trim()
    );

    // `bulwark ready`, the containers' health check: 0 for a ready node, 1 for a
    // stopped one.
    let ready = |config: &Path| -> Vec<std::ffi::OsString> {
        vec!["ready".into(), "--config".into(), config.into()]
    };
    let stopped = restored.node(3).config_path().to_path_buf();
    // Ready means applied up to the commit index at the moment asked; with the
    // restored queue still being delivered, a probe can land between the two, so
    // it is asked a few times, as a health checker would.
    let mut up = bulwark(&bin, &ready(&config)).await?;
    for _ in 0..10 {
        if up.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        up = bulwark(&bin, &ready(&config)).await?;
    }
    restored.terminate(3).await?;
    let down = bulwark(&bin, &ready(&stopped)).await?;
    ensure!(
        up.status.code() == Some(0) && down.status.code() == Some(1),
        "bulwark ready: {} for a ready node, {} for a stopped one ({})",
        up.status,
        down.status,
        String::from_utf8_lossy(&down.stderr).trim()
    );

    // Node 3's data lost; restoring it alone from the backup would bring back a member
    // that forgot what it acknowledged since: refused while its peers run ahead.
    restored.wipe(3)?;
    let out = bulwark(
        &bin,
        &[
            "restore".as_ref(),
            "--config".as_ref(),
            stopped.as_os_str(),
            "--from".as_ref(),
            backup.as_os_str(),
        ],
    )
    .await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("add a new node"),
        "restoring one member of a living cluster: {} {said}",
        out.status
    );
    println!(
        "t120: restoring one member of a living cluster refused: {}",
        said.trim()
    );
    restored.shutdown().await
}

/// Runs load, quarantines messages, writes notes, takes the backup mid-load. Returns
/// the queue ids accepted before the backup began, the quarantined ids, the notes and
/// the backup's manifest.
async fn take(
    cluster: &mut Cluster,
    backup: &Path,
) -> Result<(BTreeSet<String>, BTreeSet<String>, Vec<String>, Value)> {
    cluster.wait_for_leader(WAIT).await?;
    let mut quarantined = BTreeSet::new();
    for n in 0..QUARANTINED {
        let d = smtp::send_one(
            cluster.node(1).smtp_addr(),
            &program(n),
            &ClientConfig::default(),
        )
        .await;
        match d.outcome {
            Outcome::Accepted { id } => quarantined.insert(id),
            other => anyhow::bail!("a program to quarantine: {other}"),
        };
    }
    let mut notes = Vec::new();
    for n in 0..3 {
        let text = format!("t120 note {n} before the backup");
        cluster.post_note(1 + n % 3, &text).await?;
        notes.push(text);
    }
    let mtas = Running::start(load(), Targets::of(cluster, &cluster.ids()));
    mtas.wait_for(300, WAIT, cluster).await?;

    let config = cluster.node(FROM).config_path().to_path_buf();
    let bin = cluster.binary().to_path_buf();
    let backup_args = |to: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "backup".into(),
            "--config".into(),
            config.clone().into(),
            "--to".into(),
            to.into(),
        ]
    };
    // A destination that is not empty: refused, nothing written.
    let not_empty = backup.with_extension("full");
    std::fs::create_dir_all(&not_empty)?;
    std::fs::write(not_empty.join("keep.txt"), b"mine")?;
    let out = bulwark(&bin, &backup_args(&not_empty)).await?;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        !out.status.success() && said.contains("not empty"),
        "a backup into a non-empty directory: {} {said}",
        out.status
    );
    ensure!(
        std::fs::read_dir(&not_empty)?.count() == 1,
        "the refused backup wrote into {}",
        not_empty.display()
    );
    println!(
        "t120: backup into a non-empty directory refused: {}",
        said.trim()
    );

    // The backup, mid-load.
    let began = Instant::now();
    let out = bulwark(&bin, &backup_args(backup)).await?;
    let took = began.elapsed();
    ensure!(
        out.status.success(),
        "bulwark backup failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).context("the manifest printed")?;
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(backup.join("bulwark-backup.json"))?)?;
    ensure!(manifest == on_disk, "printed and stored manifests differ");
    println!(
        "t120: backup of node {FROM} under load in {} ms: {} events up to entry {}, {} bytes",
        took.as_millis(),
        manifest["event_count"],
        manifest["applied_index"],
        manifest["bytes"]
    );
    mtas.wait_for(100, WAIT, cluster).await?;
    let logs = mtas.finish().await?;
    let before: BTreeSet<String> = logs
        .iter()
        .filter_map(|l| l.acked_at())
        .filter(|(_, at)| *at <= began)
        .map(|(id, _)| id.to_string())
        .collect();
    ensure!(
        logs.iter().all(|l| l.acked().is_some()),
        "messages not accepted: {:?}",
        logs.iter()
            .filter(|l| l.acked().is_none())
            .map(|l| l.history())
            .take(3)
            .collect::<Vec<_>>()
    );
    println!(
        "t120: {} messages accepted before the backup began, {} in all",
        before.len(),
        logs.len()
    );
    Ok((before, quarantined, notes, manifest))
}

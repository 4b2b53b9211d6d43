//! t60: SMTP under load while the leader is killed with -9. Every message that got
//! `250` is stored on every survivor; every message is finally accepted (a 4xx or a
//! broken connection is retried, like an MTA does); a message is stored more than
//! once only if an attempt ended ambiguously (connection lost after the end of data).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::mta::{self, Log, MtaLoad, Targets};
use bulwark_cluster_tests::smtp::{self, Outcome};
use bulwark_cluster_tests::ClusterBuilder;

const MESSAGES: usize = 2_000;
const SESSIONS: usize = 20;
const SIZE: usize = 2_048;
const RCPT: &str = "user@example.test";
/// The leader is killed once this many messages were accepted.
const KILL_AFTER: u64 = 500;
/// Attempts per message before the generator gives up on it.
const MAX_ATTEMPTS: usize = 25;
/// No attempt starts after this; every attempt is bounded by the client's timeouts.
const LOAD_DEADLINE: Duration = Duration::from_secs(75);

fn mta_load() -> MtaLoad {
    MtaLoad {
        rcpt: RCPT.into(),
        max_attempts: MAX_ATTEMPTS,
        deadline: LOAD_DEADLINE,
        ..MtaLoad::new("t60", MESSAGES, SESSIONS, SIZE)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_smtp_leader_kill9_loses_no_accepted_message() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t60-smtp-no-loss")
        .start()
        .await?;
    // On failure, dropping the cluster prints the tail of every node's log.
    run(&mut cluster).await?;
    cluster.shutdown().await
}

async fn run(cluster: &mut bulwark_cluster_tests::Cluster) -> Result<()> {
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let targets = Arc::new(Targets::of(cluster, &cluster.ids()));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let load = tokio::spawn(mta::run(
        mta_load(),
        targets,
        acked.clone(),
        Arc::new(AtomicBool::new(false)),
    ));

    // Kill the leader once KILL_AFTER messages were accepted.
    let wait_end = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        ensure!(
            !load.is_finished(),
            "the load ended after {} accepted messages, before the kill",
            acked.load(Ordering::SeqCst)
        );
        ensure!(
            Instant::now() < wait_end,
            "only {} messages accepted after 60 s",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kill(leader)?;
    let at_kill = acked.load(Ordering::SeqCst);
    let killed_at = started.elapsed();
    let (new_leader, took) = cluster
        .wait_for_new_leader(leader, Duration::from_secs(60))
        .await?;
    println!(
        "t60: killed leader {leader} (kill -9) {:.1} s into the load, after {at_kill} accepted \
         messages; node {new_leader} observed as new leader after {} ms",
        killed_at.as_secs_f64(),
        took.as_millis()
    );

    let logs = tokio::time::timeout(LOAD_DEADLINE + Duration::from_secs(90), load)
        .await
        .context("the load generator did not stop")??;
    let elapsed = started.elapsed();

    // What the generator saw.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut acked_ids: HashMap<String, usize> = HashMap::new();
    let (mut temp, mut failed, mut ambiguous) = (0, 0, 0);
    let mut longest = Duration::ZERO;
    for (n, log) in logs.iter().enumerate() {
        for a in &log.attempts {
            longest = longest.max(a.elapsed);
            match &a.outcome {
                Outcome::Accepted { id } => {
                    ensure!(
                        acked_ids.insert(id.clone(), n).is_none(),
                        "queue id {id} was given to two messages"
                    );
                }
                Outcome::TempFail { .. } => temp += 1,
                Outcome::Failed { .. } => failed += 1,
                Outcome::Ambiguous { .. } => ambiguous += 1,
                Outcome::PermFail { .. } | Outcome::Unexpected { .. } => {}
            }
            if !matches!(a.outcome, Outcome::Accepted { .. }) {
                *kinds.entry(a.outcome.kind()).or_insert(0) += 1;
            }
        }
    }
    let unacked: Vec<String> = logs
        .iter()
        .enumerate()
        .filter(|(_, l)| l.acked().is_none())
        .map(|(n, l)| format!("{}: {}", mta_load().token(n), l.history()))
        .collect();
    println!(
        "t60: {MESSAGES} messages of {SIZE} B over {SESSIONS} sessions in {:.1} s: {} accepted, \
         {temp} attempts retried after 4xx, {failed} after a connection failure before the \
         end of data, {ambiguous} ambiguous (connection lost after the end of data); longest \
         attempt {} ms",
        elapsed.as_secs_f64(),
        acked_ids.len(),
        longest.as_millis()
    );
    println!("t60: attempts that did not end in 250, by kind: {kinds:?}");
    // (b) Every message was finally accepted.
    ensure!(
        unacked.is_empty(),
        "{} messages never accepted, e.g. {:?}",
        unacked.len(),
        &unacked[..unacked.len().min(5)]
    );

    // (a), (c) on every survivor, (d) they agree.
    let survivors = cluster.others(leader);
    let converged = cluster
        .wait_converged(&survivors, Duration::from_secs(120))
        .await?;
    let mut reference: Option<(u64, BTreeSet<(String, usize)>)> = None;
    let mut duplicates = 0;
    for &id in &survivors {
        let (set, dups) = check_node(cluster, id, &logs, &acked_ids, ambiguous).await?;
        duplicates = dups;
        same_as(&mut reference, id, set)?;
    }
    println!(
        "t60: survivors agree: {}; {duplicates} messages stored twice (each after an \
         ambiguous attempt)",
        converged.summary()
    );

    // The killed node comes back with the same messages.
    cluster.restart(leader).await?;
    let all = cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(120))
        .await?;
    let (set, _) = check_node(cluster, leader, &logs, &acked_ids, ambiguous).await?;
    same_as(&mut reference, leader, set)?;
    println!("t60: restarted node {leader} caught up: {}", all.summary());
    Ok(())
}

/// Checks what node `id` stored against what the generator saw: (a) every `250`
/// is there under the message it was given for, (c) anything else comes from an
/// ambiguous attempt of the same message. Returns the stored (queue id, message)
/// pairs and how many messages are stored more than once.
async fn check_node(
    cluster: &bulwark_cluster_tests::Cluster,
    id: u64,
    logs: &[Log],
    acked_ids: &HashMap<String, usize>,
    ambiguous: usize,
) -> Result<(BTreeSet<(String, usize)>, usize)> {
    let stored = smtp::received_messages(cluster.api(), id, Duration::from_secs(60)).await?;
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_token: BTreeMap<usize, usize> = BTreeMap::new();
    for r in &stored {
        let n = r
            .header_message_id
            .as_deref()
            .and_then(smtp::token_of)
            .and_then(|t| mta_load().number_of(t))
            .with_context(|| format!("node {id}: a message that is not ours: {r:?}"))?;
        ensure!(
            by_id.insert(r.id.clone(), n).is_none(),
            "node {id}: queue id {} stored twice",
            r.id
        );
        *per_token.entry(n).or_insert(0) += 1;
    }
    let lost: Vec<String> = acked_ids
        .iter()
        .filter(|(qid, n)| by_id.get(*qid) != Some(n))
        .map(|(qid, &n)| format!("{} as {qid}: {}", mta_load().token(n), logs[n].history()))
        .collect();
    ensure!(
        lost.is_empty(),
        "node {id} lost {} accepted messages, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let mut extra: BTreeMap<usize, usize> = BTreeMap::new();
    for (qid, &n) in &by_id {
        if !acked_ids.contains_key(qid) {
            *extra.entry(n).or_insert(0) += 1;
        }
    }
    let unexplained: Vec<String> = extra
        .iter()
        .filter(|(&n, &count)| count > logs[n].ambiguous())
        .map(|(&n, &count)| {
            format!(
                "{} stored {count} time(s) without a 250: {}",
                mta_load().token(n),
                logs[n].history()
            )
        })
        .collect();
    ensure!(
        unexplained.is_empty(),
        "node {id} stored messages that no ambiguous attempt explains: {unexplained:?}"
    );
    let extras: usize = extra.values().sum();
    ensure!(
        stored.len() == acked_ids.len() + extras && extras <= ambiguous,
        "node {id}: {} stored, {} accepted, {extras} extra, {ambiguous} ambiguous attempts",
        stored.len(),
        acked_ids.len()
    );
    let dups = per_token.values().filter(|&&c| c > 1).count();
    println!(
        "t60: node {id}: {} messages stored = {} accepted + {extras} from ambiguous attempts; \
         {dups} messages stored more than once",
        stored.len(),
        acked_ids.len()
    );
    Ok((by_id.into_iter().collect(), dups))
}

/// The first node's set becomes the reference; every other node must hold the same.
fn same_as(
    reference: &mut Option<(u64, BTreeSet<(String, usize)>)>,
    id: u64,
    set: BTreeSet<(String, usize)>,
) -> Result<()> {
    match reference {
        None => *reference = Some((id, set)),
        Some((first, r)) => ensure!(
            *r == set,
            "nodes {first} and {id} hold different messages: {} only on {first}, {} only on {id}",
            r.difference(&set).count(),
            set.difference(r).count()
        ),
    }
    Ok(())
}

//! t70: delivery takeover. A three-node cluster relays to a slow next hop (an in-test
//! SMTP sink that waits before answering the end of data); 1,000 messages are accepted
//! by one node, which therefore holds their delivery leases. Once the sink has some of
//! them, that node is killed with -9. Checked:
//!
//! - every accepted message reaches the sink (the survivors deliver the rest);
//! - a message reaches it twice only if the killed node was delivering it at the kill
//!   (a lease of the killed node that it never reported on), so at most its
//!   `concurrency` messages;
//! - a survivor takes over within [`TAKEOVER_LIMIT`] of the kill;
//! - no two nodes ever held a lease on the same message at once, from the
//!   `delivery.leased` events (all nodes run on this machine, so their clocks are one);
//! - the killed node, restarted, does not deliver anything again.
//!
//! It prints the takeover time (first survivor lease, first delivery at the sink on a
//! connection opened after the kill, first `delivery.succeeded` of a survivor), the
//! duplicates with their history, and the delivery rates before and after the kill.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{send_until_accepted, ClientConfig, Message, SmtpConnection};
use bulwark_cluster_tests::{Cluster, ClusterBuilder, Event};

const MESSAGES: usize = 1_000;
/// Concurrent SMTP sessions of the load, all to the same node.
const SESSIONS: usize = 8;
const SIZE: usize = 1_024;
const RCPT: &str = "user@example.test";
/// How long the sink waits before answering the end of data.
const DATA_DELAY: Duration = Duration::from_millis(100);
/// `[delivery]` settings of every node.
const CONCURRENCY: usize = 4;
const LEASE_SECS: u64 = 6;
/// Long enough that the survivors leave the accepting node's messages alone until
/// it is killed (the load and the first deliveries take a few seconds).
const TAKEOVER_SECS: u64 = 10;
const POLL_MS: u64 = 200;
/// The accepting node is killed once the sink has this many distinct messages.
const KILL_AFTER: usize = 100;
/// A survivor must have taken a lease this soon after the kill.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);
/// Bounds of the phases.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);
const KILL_WAIT: Duration = Duration::from_secs(60);
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// How long the restarted node is watched for deliveries it should not make.
const QUIET_AFTER_RESTART: Duration = Duration::from_secs(4);
const TICK: Duration = Duration::from_millis(25);

fn token(n: usize) -> String {
    format!("t70-{n:05}")
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `X-Bulwark-Id` header of a relayed message.
fn bulwark_id(data: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"x-bulwark-id:";
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header
        }
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            return Some(
                String::from_utf8_lossy(&line[NAME.len()..])
                    .trim()
                    .to_string(),
            );
        }
    }
    None
}

/// One message as the sink received it, first seen by the test at `at`.
#[derive(Debug, Clone)]
struct Arrival {
    id: String,
    at: Instant,
    connection: u64,
}

/// What the sink received so far, read incrementally.
#[derive(Default)]
struct SinkWatch {
    seen: usize,
    arrivals: Vec<Arrival>,
    count: HashMap<String, usize>,
}

impl SinkWatch {
    fn poll(&mut self, sink: &Sink) -> Result<()> {
        let all = sink.received();
        let now = Instant::now();
        ensure!(
            all.len() >= self.seen,
            "the sink's list of received messages shrank ({} after {})",
            all.len(),
            self.seen
        );
        for d in &all[self.seen..] {
            let id = bulwark_id(&d.data).with_context(|| {
                format!(
                    "the sink received a message without X-Bulwark-Id: {:?}",
                    String::from_utf8_lossy(&d.data[..d.data.len().min(400)])
                )
            })?;
            *self.count.entry(id.clone()).or_insert(0) += 1;
            self.arrivals.push(Arrival {
                id,
                at: now,
                connection: d.connection,
            });
        }
        self.seen = all.len();
        Ok(())
    }

    fn distinct(&self) -> usize {
        self.count.len()
    }
}

/// Sends every message to `addr` over [`SESSIONS`] reused connections; a 4xx or a
/// connection that failed before the end of data is retried. Returns the queue id
/// of each message.
async fn load(addr: SocketAddr) -> Result<Vec<String>> {
    let config = ClientConfig {
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let end = Instant::now() + LOAD_DEADLINE;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(vec![String::new(); MESSAGES]));
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let (next, ids, config) = (next.clone(), ids.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<SmtpConnection> = None;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= MESSAGES {
                    break;
                }
                let msg = Message::generate(&token(n), SIZE, RCPT);
                let id = send_until_accepted(&mut conn, addr, &config, &msg, end).await?;
                ids.lock().expect("ids")[n] = id;
            }
            if let Some(c) = conn {
                c.quit().await;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("a load session panicked")??;
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    Ok(ids)
}

/// A `delivery.leased` event that granted the lease.
#[derive(Debug, Clone)]
struct Grant {
    seq: u64,
    holder: u64,
    /// The operation's time: the lease runs from here...
    start_ms: i64,
    /// ...to here, unless the holder reports before.
    until_ms: i64,
}

/// The delivery events of one message, in log order.
#[derive(Debug, Default, Clone)]
struct History {
    grants: Vec<Grant>,
    /// `delivery.attempted`: (seq, node, time): each releases that node's lease.
    reports: Vec<(u64, u64, i64)>,
    /// `delivery.succeeded`: (node, time).
    succeeded: Vec<(u64, i64)>,
}

impl History {
    /// Whether `node` reported on the message between the log positions `from` and `to`.
    fn released(&self, node: u64, from: u64, to: u64) -> bool {
        self.reports
            .iter()
            .any(|&(seq, n, _)| n == node && seq > from && seq < to)
    }

    /// Pairs of grants to different nodes whose leases ran at the same time: the later
    /// one (in log order) was granted before the earlier one ran out, and the earlier
    /// holder had not released it by reporting.
    fn overlaps(&self) -> Vec<(Grant, Grant)> {
        let mut out = Vec::new();
        for (i, p) in self.grants.iter().enumerate() {
            for q in &self.grants[i + 1..] {
                if q.holder != p.holder
                    && q.start_ms < p.until_ms
                    && !self.released(p.holder, p.seq, q.seq)
                {
                    out.push((p.clone(), q.clone()));
                }
            }
        }
        out
    }

    fn describe(&self, kill_ms: i64) -> String {
        let rel = |t: i64| format!("{:+} ms", t - kill_ms);
        let mut s = String::new();
        for g in &self.grants {
            let _ = write!(
                s,
                "lease to {} at {} until {}; ",
                g.holder,
                rel(g.start_ms),
                rel(g.until_ms)
            );
        }
        for &(_, node, t) in &self.reports {
            let _ = write!(s, "attempt reported by {node} at {}; ", rel(t));
        }
        for &(node, t) in &self.succeeded {
            let _ = write!(s, "succeeded via {node} at {}; ", rel(t));
        }
        s.trim_end_matches("; ").to_string()
    }
}

fn str_field<'a>(e: &'a Event, v: &'a serde_json::Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{} event {}: no {what}: {:?}", e.kind, e.seq, e.fields))
}

/// Reads the delivery events of node `id` into a history per message.
async fn histories(cluster: &Cluster, id: u64) -> Result<HashMap<String, History>> {
    let api = cluster.api();
    let timeout = Duration::from_secs(60);
    let mut out: HashMap<String, History> = HashMap::new();
    for e in api.events_all(id, Some("delivery.leased"), timeout).await? {
        let lease = e.field("lease");
        if lease["granted"].as_bool() != Some(true) {
            continue;
        }
        let message = str_field(&e, e.field("message_id"), "message_id")?.to_string();
        let holder = lease["holder"]
            .as_u64()
            .with_context(|| format!("lease event {}: no holder: {:?}", e.seq, e.fields))?;
        let until = str_field(&e, &lease["until"], "lease.until")?;
        let until_ms = bulwark_cluster_tests::api::unix_ms(until)
            .with_context(|| format!("lease event {}: bad until {until:?}", e.seq))?;
        out.entry(message).or_default().grants.push(Grant {
            seq: e.seq,
            holder,
            start_ms: e.time_ms()?,
            until_ms,
        });
    }
    for e in api
        .events_all(id, Some("delivery.attempted"), timeout)
        .await?
    {
        let message = str_field(&e, e.field("message_id"), "message_id")?.to_string();
        let node = e
            .node
            .with_context(|| format!("event {} has no node", e.seq))?;
        out.entry(message)
            .or_default()
            .reports
            .push((e.seq, node, e.time_ms()?));
    }
    for e in api
        .events_all(id, Some("delivery.succeeded"), timeout)
        .await?
    {
        let message = str_field(&e, e.field("message_id"), "message_id")?.to_string();
        let node = e
            .node
            .with_context(|| format!("event {} has no node", e.seq))?;
        out.entry(message)
            .or_default()
            .succeeded
            .push((node, e.time_ms()?));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_delivery_takeover_after_kill9_of_the_lease_holder() -> Result<()> {
    let sink = Sink::start(SinkConfig {
        data_delay: DATA_DELAY,
        ..SinkConfig::default()
    });
    let mut cluster = ClusterBuilder::new(3)
        .name("t70-delivery-takeover")
        .relay(sink.addr())
        // The survivors take over a backlog: flow control would pace the load to
        // the slow sink and leave none, so it is off here.
        .smtp("in_flow_delay_ms", "0")
        .delivery("concurrency", &CONCURRENCY.to_string())
        .delivery("lease_secs", &LEASE_SECS.to_string())
        .delivery("takeover_secs", &TAKEOVER_SECS.to_string())
        .delivery("poll_ms", &POLL_MS.to_string())
        // Should anything be deferred, it is tried again soon.
        .delivery("retry_initial_secs", "1")
        .delivery("retry_max_secs", "2")
        .delivery("connect_timeout_secs", "5")
        .delivery("command_timeout_secs", "10")
        .delivery("data_timeout_secs", "10")
        .start()
        .await?;
    // On failure, dropping the cluster prints the tail of every node's log.
    let result = run(&mut cluster, &sink).await;
    sink.stop();
    result?;
    cluster.shutdown().await
}

async fn run(cluster: &mut Cluster, sink: &Sink) -> Result<()> {
    // The accepting node is the leader, so the kill also costs an election.
    let owner = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let survivors = cluster.others(owner);
    let mut watch = SinkWatch::default();

    // 1. The load: every message to the owner's SMTP port.
    let started = Instant::now();
    let load = tokio::spawn(load(cluster.node(owner).smtp_addr()));
    while !load.is_finished() {
        watch.poll(sink)?;
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    let ids = load.await.context("the load panicked")??;
    let load_took = started.elapsed();
    let accepted: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n))
        .collect();
    ensure!(
        accepted.len() == MESSAGES,
        "{} queue ids for {MESSAGES} messages: an id was given twice",
        accepted.len()
    );
    println!(
        "t70: {MESSAGES} messages of {SIZE} B accepted by node {owner} (the leader) over \
         {SESSIONS} sessions in {:.1} s ({:.0} msgs/s); {} already at the sink",
        load_took.as_secs_f64(),
        MESSAGES as f64 / load_took.as_secs_f64(),
        watch.distinct()
    );

    // 2. Kill the owner once the sink has KILL_AFTER of them.
    let end = Instant::now() + KILL_WAIT;
    while watch.distinct() < KILL_AFTER {
        ensure!(
            Instant::now() < end,
            "only {} messages at the sink {KILL_WAIT:?} after the load",
            watch.distinct()
        );
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
        watch.poll(sink)?;
    }
    let connections_before_kill = sink.connections();
    cluster.kill(owner)?;
    let killed = Instant::now();
    let kill_ms = unix_ms_now();
    watch.poll(sink)?;
    let at_kill = watch.arrivals.len();
    let distinct_at_kill = watch.distinct();
    let first_arrival = watch.arrivals.first().map_or(started, |a| a.at);
    let owner_rate = distinct_at_kill as f64
        / killed
            .duration_since(first_arrival)
            .as_secs_f64()
            .max(0.001);
    println!(
        "t70: killed node {owner} (kill -9) {:.1} s after the load began, with {distinct_at_kill} \
         messages at the sink ({owner_rate:.1} msgs/s from node {owner} alone; at most {:.0} \
         with {CONCURRENCY} deliveries of >= {} ms at once)",
        killed.duration_since(started).as_secs_f64(),
        CONCURRENCY as f64 / DATA_DELAY.as_secs_f64(),
        DATA_DELAY.as_millis()
    );

    // 3. Wait until every accepted message is at the sink.
    let end = Instant::now() + DRAIN_DEADLINE;
    loop {
        watch.poll(sink)?;
        if accepted.keys().all(|id| watch.count.contains_key(*id)) {
            break;
        }
        if Instant::now() >= end {
            let missing: Vec<&str> = accepted
                .keys()
                .filter(|id| !watch.count.contains_key(**id))
                .copied()
                .collect();
            let mut evidence = String::new();
            for id in missing.iter().take(3) {
                let events = cluster.api().message_events(survivors[0], id).await;
                let _ = writeln!(evidence, "  {id}: {events:#?}");
            }
            bail!(
                "{} accepted messages not at the sink {DRAIN_DEADLINE:?} after the kill \
                 ({} delivered), e.g. {:?}; events of some on node {}:\n{evidence}",
                missing.len(),
                watch.distinct(),
                &missing[..missing.len().min(10)],
                survivors[0]
            );
        }
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    let drained = killed.elapsed();
    let unknown: Vec<&String> = watch
        .count
        .keys()
        .filter(|id| !accepted.contains_key(id.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "the sink received messages that were never accepted: {unknown:?}"
    );

    // 4. Wait until the survivors have committed a success for every message, then
    //    read the delivery events.
    let end = Instant::now() + Duration::from_secs(60);
    let history = loop {
        cluster
            .wait_converged(&survivors, Duration::from_secs(60))
            .await?;
        let h = histories(cluster, survivors[0]).await?;
        let unreported: Vec<&str> = accepted
            .keys()
            .filter(|id| h.get(**id).is_none_or(|h| h.succeeded.is_empty()))
            .copied()
            .collect();
        if unreported.is_empty() {
            break h;
        }
        ensure!(
            Instant::now() < end,
            "{} messages at the sink have no delivery.succeeded event on node {} 60 s later, \
             e.g. {:?}",
            unreported.len(),
            survivors[0],
            &unreported[..unreported.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Takeover: the first lease a survivor was granted at or after the kill, the
    // first message at the sink on a connection opened after the kill (only the
    // survivors can open one), the first success a survivor reported.
    let first_lease = history
        .values()
        .flat_map(|h| &h.grants)
        .filter(|g| g.holder != owner && g.start_ms >= kill_ms)
        .min_by_key(|g| g.start_ms)
        .cloned()
        .context("no survivor was granted a lease after the kill")?;
    let takeover = Duration::from_millis((first_lease.start_ms - kill_ms) as u64);
    let first_new_connection = watch.arrivals[at_kill..]
        .iter()
        .find(|a| a.connection > connections_before_kill)
        .map(|a| a.at.duration_since(killed));
    let first_success = history
        .values()
        .flat_map(|h| &h.succeeded)
        .filter(|&&(node, t)| node != owner && t >= kill_ms)
        .map(|&(_, t)| t - kill_ms)
        .min();
    let before_kill_by_survivors = history
        .values()
        .flat_map(|h| &h.grants)
        .filter(|g| g.holder != owner && g.start_ms < kill_ms)
        .count();
    let mut delivered_by: BTreeMap<u64, usize> = BTreeMap::new();
    for h in history.values() {
        for &(node, _) in &h.succeeded {
            *delivered_by.entry(node).or_insert(0) += 1;
        }
    }
    let after_kill = watch.arrivals.len() - at_kill;
    let survivor_window = watch
        .arrivals
        .last()
        .map(|a| a.at.duration_since(killed))
        .unwrap_or_default()
        .saturating_sub(takeover);
    println!(
        "t70: takeover: first survivor lease (node {}) {} ms after the kill; first message \
         at the sink on a new connection after {}; first delivery.succeeded of a survivor \
         after {} (lease {LEASE_SECS} s, takeover {TAKEOVER_SECS} s, poll {POLL_MS} ms; \
         {before_kill_by_survivors} survivor leases before the kill)",
        first_lease.holder,
        takeover.as_millis(),
        first_new_connection.map_or("(none)".into(), |d| format!("{} ms", d.as_millis())),
        first_success.map_or("(none)".into(), |t| format!("{t} ms")),
    );
    println!(
        "t70: all {MESSAGES} messages at the sink {:.1} s after the kill ({:.1} s in all); \
         {after_kill} arrivals after the kill in {:.1} s from the takeover ({:.1} msgs/s \
         from {} survivors); successes reported by node: {delivered_by:?}",
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        survivor_window.as_secs_f64(),
        after_kill as f64 / survivor_window.as_secs_f64().max(0.001),
        survivors.len()
    );

    // Messages the owner was delivering at the kill: leased to it, never reported.
    let in_flight: BTreeSet<&str> = history
        .iter()
        .filter(|(_, h)| {
            h.grants.iter().any(|g| g.holder == owner)
                && !h.reports.iter().any(|&(_, n, _)| n == owner)
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let duplicates: BTreeMap<&str, usize> = watch
        .count
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(id, &c)| (id.as_str(), c))
        .collect();
    println!(
        "t70: {} distinct messages delivered, {} arrivals; {} in flight at the kill \
         (leased by node {owner}, never reported): {in_flight:?}",
        watch.distinct(),
        watch.arrivals.len(),
        in_flight.len()
    );
    println!(
        "t70: {} duplicates at the sink (expected: only messages in flight at the kill):",
        duplicates.len()
    );
    for (id, count) in &duplicates {
        let h = history.get(*id).cloned().unwrap_or_default();
        println!(
            "t70:   {id} ({}) x{count}: {}",
            token(accepted[*id]),
            h.describe(kill_ms)
        );
    }

    // Leases: never two holders at once.
    let mut overlaps = Vec::new();
    let mut grants = 0;
    for (id, h) in &history {
        grants += h.grants.len();
        for (p, q) in h.overlaps() {
            overlaps.push(format!(
                "{id}: node {} leased it at {} until {} (seq {}), node {} at {} (seq {}) \
                 before that ran out; history: {}",
                p.holder,
                p.start_ms - kill_ms,
                p.until_ms - kill_ms,
                p.seq,
                q.holder,
                q.start_ms - kill_ms,
                q.seq,
                h.describe(kill_ms)
            ));
        }
    }
    println!(
        "t70: {grants} granted leases checked, {} overlapping (times in ms from the kill)",
        overlaps.len()
    );
    ensure!(
        overlaps.is_empty(),
        "two nodes held a lease on the same message at once:\n{}",
        overlaps.join("\n")
    );
    let unexplained: Vec<&&str> = duplicates
        .keys()
        .filter(|id| !in_flight.contains(**id))
        .collect();
    ensure!(
        unexplained.is_empty(),
        "messages delivered twice that node {owner} was not delivering at the kill: \
         {unexplained:?}"
    );
    ensure!(
        duplicates.len() <= CONCURRENCY,
        "{} messages delivered twice, more than node {owner}'s {CONCURRENCY} deliveries at once",
        duplicates.len()
    );
    ensure!(
        takeover <= TAKEOVER_LIMIT,
        "the survivors took over {} ms after the kill (limit {TAKEOVER_LIMIT:?})",
        takeover.as_millis()
    );

    // 5. The killed node comes back, catches up and delivers nothing again.
    let before_restart = watch.arrivals.len();
    cluster.restart(owner).await?;
    cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(60))
        .await?;
    let end = Instant::now() + QUIET_AFTER_RESTART;
    while Instant::now() < end {
        cluster.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    watch.poll(sink)?;
    let again: Vec<&str> = watch.arrivals[before_restart..]
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    ensure!(
        again.is_empty(),
        "node {owner}, restarted, delivered {} messages again: {again:?}",
        again.len()
    );
    println!(
        "t70: node {owner} restarted and caught up; nothing delivered again in {:?}",
        QUIET_AFTER_RESTART
    );
    Ok(())
}

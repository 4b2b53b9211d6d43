#![forbid(unsafe_code)]
//! bench_smtp: SMTP ingress throughput and latency of a Bulwark cluster.
//!
//! Starts a cluster of `--nodes` nodes from the `bulwark` binary next to this one
//! (build both with `cargo build --release --workspace --bins`), then for every message
//! size × session count runs a warm-up and a timed phase in which each session sends
//! one message per connection (connect, EHLO, pipelined MAIL/RCPT/DATA, content, QUIT:
//! what Postfix does by default) to the nodes round-robin. A message counts once its
//! `250 … queued as ID` arrived, i.e. once a Raft quorum committed it.
//!
//! Prints a markdown table of accepted messages/s, the latency from the end of data
//! (`.` written) to the `250` (p50, p99, max), the whole connection's p50, and errors
//! by kind; then one with the CPU time each node process (and this load generator,
//! which shares the machine) spent per accepted message, read from `/proc/<pid>/stat`.
//!
//! Every session connects from 127.0.0.1, so the nodes' per-IP session limit
//! (`smtp.max_sessions_per_ip`, default 50) is raised to 1000 (`--max-sessions-per-ip`),
//! and the per-network one (`smtp.max_sessions_per_network`, default 200) with it:
//! the sessions stand for many sending MTAs, not one.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::bench::{self, CpuClock};
use bulwark_cluster_tests::smtp::{self, ClientConfig, Message, Outcome, SmtpConnection};
use bulwark_cluster_tests::ClusterBuilder;
use clap::Parser;
use hdrhistogram::Histogram;

/// Benchmark SMTP ingress (end of data to a quorum-committed `250`) on a local cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Nodes in the cluster (1 or 3).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Message sizes in bytes (header and body), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2048usize, 51200])]
    sizes: Vec<usize>,
    /// Concurrent SMTP session counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 50])]
    sessions: Vec<usize>,
    #[command(flatten)]
    times: bench::PhaseTimes,
    /// Messages per connection (1: a new connection for every message, like Postfix).
    #[arg(long, default_value_t = 1)]
    per_connection: u32,
    /// Send MAIL, RCPT and DATA one by one, waiting for each reply, instead of
    /// pipelining them (RFC 2920).
    #[arg(long)]
    no_pipelining: bool,
    /// `smtp.max_sessions_per_ip` and `smtp.max_sessions_per_network` of every node.
    /// Every session comes from 127.0.0.1, so the defaults (50, 200) would refuse
    /// sessions that stand for many sending MTAs.
    #[arg(long, default_value_t = 1000)]
    max_sessions_per_ip: usize,
    /// Offered load in messages per second over all sessions (0: as fast as the
    /// sessions go). Latency at a fixed rate below saturation is what senders see
    /// in normal operation; without a rate the tail is queueing at saturation.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Also print, for each phase, when the answers slower than this many
    /// milliseconds (end of data to `250`) came, in 100 ms windows of the phase: a
    /// tail that comes in bursts is a stall, one spread evenly is queueing (0: off).
    #[arg(long, default_value_t = 0)]
    slow_over_ms: u64,
    #[command(flatten)]
    binary: bench::Binary,
}

/// What one phase measured.
struct Phase {
    size: usize,
    sessions: usize,
    stats: Stats,
    elapsed: Duration,
    /// CPU time per node id, then this process under id 0.
    cpu: BTreeMap<u64, Duration>,
    leader: Option<u64>,
}

/// What the sessions of one phase saw.
struct Stats {
    accepted: u64,
    errors: BTreeMap<String, u64>,
    /// End of data written to `250` read, µs.
    end_of_data: Histogram<u64>,
    /// Connect to `250` (first message of a connection) or MAIL to `250`, µs.
    whole: Histogram<u64>,
    /// The 100 ms windows of the phase in which answers slower than
    /// `--slow-over-ms` came, with how many.
    slow: BTreeMap<u64, u64>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            accepted: 0,
            errors: BTreeMap::new(),
            end_of_data: bench::histogram(LATENCY_MAX),
            whole: bench::histogram(LATENCY_MAX),
            slow: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Stats) {
        self.accepted += other.accepted;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        let _ = self.end_of_data.add(other.end_of_data);
        let _ = self.whole.add(other.whole);
        for (window, n) in other.slow {
            *self.slow.entry(window).or_insert(0) += n;
        }
    }

    fn record(&mut self, d: &smtp::Delivery) {
        match &d.outcome {
            Outcome::Accepted { .. } => {
                self.accepted += 1;
                if let Some(eod) = d.end_of_data {
                    let _ = self.end_of_data.record(bench::micros(eod));
                }
                let _ = self.whole.record(bench::micros(d.elapsed));
            }
            other => *self.errors.entry(other.kind()).or_insert(0) += 1,
        }
    }
}

/// The longest latency the histograms hold.
const LATENCY_MAX: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.times.seconds > 0, "--seconds must be positive");
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        args.per_connection >= 1,
        "--per-connection must be at least 1"
    );
    ensure!(!args.sizes.is_empty() && !args.sessions.is_empty());
    ensure!(
        args.sessions.iter().all(|&s| s >= 1),
        "--sessions must be positive"
    );
    let builder = bench::allow_sessions(
        ClusterBuilder::new(args.nodes).name("bench-smtp"),
        args.max_sessions_per_ip,
    );
    let (mut cluster, leader) = bench::start(builder, &args.binary).await?;
    let bin = cluster.binary().display().to_string();
    eprintln!(
        "bench_smtp: {} node(s), leader {leader}, binary {bin}, {} s per phase after {} s \
         warm-up, {} message(s) per connection, pipelining {}, offered load {}, {} CPUs",
        args.nodes,
        args.times.seconds,
        args.times.warmup,
        args.per_connection,
        if args.no_pipelining { "off" } else { "on" },
        if args.rate > 0 {
            format!("{}/s", args.rate)
        } else {
            "unlimited".to_string()
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(
        cluster
            .ids()
            .into_iter()
            .map(|id| cluster.node(id).smtp_addr())
            .collect(),
    );
    let config = ClientConfig {
        pipelining: !args.no_pipelining,
        ..ClientConfig::default()
    };
    let seq = Arc::new(AtomicU64::new(0));

    let mut phases = Vec::new();
    let mut warm_accepted = 0;
    for &size in &args.sizes {
        for &sessions in &args.sessions {
            cluster.check_alive()?;
            let run = |seconds| PhaseRun {
                addrs: addrs.clone(),
                config: config.clone(),
                seq: seq.clone(),
                size,
                sessions,
                per_connection: args.per_connection,
                duration: Duration::from_secs(seconds),
                pacer: (args.rate > 0).then(|| Pacer::new(args.rate)),
                slow_over: (args.slow_over_ms > 0)
                    .then(|| Duration::from_millis(args.slow_over_ms)),
                started: Instant::now(),
            };
            if args.times.warmup > 0 {
                warm_accepted += run(args.times.warmup).go().await.accepted;
            }
            let clock = CpuClock::start(bench::node_pids(&cluster))?;
            let started = Instant::now();
            let stats = run(args.times.seconds).go().await;
            let elapsed = started.elapsed();
            let cpu = clock.spent()?;
            let leader = bench::leader(&cluster).await;
            let p = Phase {
                size,
                sessions,
                stats,
                elapsed,
                cpu,
                leader,
            };
            eprintln!("{}", row(args.nodes, &p));
            if args.slow_over_ms > 0 {
                let windows: Vec<String> = p
                    .stats
                    .slow
                    .iter()
                    .map(|(w, n)| format!("{:.1}s:{n}", *w as f64 / 10.0))
                    .collect();
                eprintln!(
                    "  answers over {} ms, by when in the phase they came: {}",
                    args.slow_over_ms,
                    windows.join(" ")
                );
            }
            phases.push(p);
        }
    }
    let st = cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(300))
        .await?;
    eprintln!("bench_smtp: converged after the run: {}", st.summary());
    let accepted = warm_accepted + phases.iter().map(|p| p.stats.accepted).sum::<u64>();
    let drained = drain(&cluster, Duration::from_secs(600)).await?;
    eprintln!(
        "bench_smtp: delivery queue empty {} s after the run",
        drained.as_secs()
    );
    let footprint: Vec<Footprint> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let node = cluster.node(id);
            Footprint::of(id, node.data_dir(), node.pid())
        })
        .collect();
    cluster.shutdown().await?;

    println!(
        "| nodes | size | sessions | accepted msgs/s | EOD→250 p50 ms | p99 ms | max ms | \
         connection p50 ms | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in &phases {
        println!("{}", row(args.nodes, p));
    }
    println!();
    println!(
        "{}",
        bench::cpu_table_head(&["nodes", "size", "sessions"], args.nodes, "msg")
    );
    for p in &phases {
        let cells = [
            args.nodes.to_string(),
            bench::size_label(p.size),
            p.sessions.to_string(),
        ];
        let row = bench::cpu_table_row(&cells, args.nodes, &p.cpu, p.stats.accepted, p.leader);
        println!("{row}");
    }
    println!();
    println!(
        "After {accepted} accepted messages (warm-ups included), all delivered (each to \
         the Maildir of the node that took it, not counted); hard-linked files counted once:"
    );
    println!();
    println!(
        "| node | raft log MB | state MB | snapshots MB | data bytes per message | peak RSS MB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for f in &footprint {
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            f.id,
            mb(f.raft_log),
            mb(f.state),
            mb(f.snapshots),
            (f.raft_log + f.state + f.snapshots) as f64 / accepted.max(1) as f64,
            f.peak_rss_kb
                .map_or("?".to_string(), |kb| format!("{:.0}", kb as f64 / 1024.0))
        );
    }
    Ok(())
}

/// What a node holds on disk and in memory after the run.
struct Footprint {
    id: u64,
    raft_log: u64,
    state: u64,
    snapshots: u64,
    /// Peak resident memory (`VmHWM`), kB.
    peak_rss_kb: Option<u64>,
}

impl Footprint {
    fn of(id: u64, data_dir: &Path, pid: Option<u32>) -> Self {
        let peak_rss_kb = pid.and_then(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        });
        // Snapshots hard-link the state's files: each file is counted once, where it
        // is met first (the state before the snapshots).
        let mut seen = HashSet::new();
        Footprint {
            id,
            raft_log: tree_bytes(&data_dir.join("raft-log"), &mut seen),
            state: tree_bytes(&data_dir.join("state"), &mut seen),
            snapshots: tree_bytes(&data_dir.join("snapshots"), &mut seen),
            peak_rss_kb,
        }
    }
}

/// Bytes of the files under `dir` not in `seen` (by device and inode), which it
/// extends.
fn tree_bytes(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += tree_bytes(&entry.path(), seen),
            Ok(m) if seen.insert((m.dev(), m.ino())) => total += m.len(),
            _ => {}
        }
    }
    total
}

/// Waits until every node's delivery queue is empty (`bulwark_queue_messages 0`):
/// delivered bodies are deleted, so the footprint is what stays per message.
async fn drain(cluster: &bulwark_cluster_tests::Cluster, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut queued = 0;
        for id in cluster.ids() {
            let text = cluster
                .api()
                .http()
                .get(format!("{}/metrics", cluster.node(id).api_url()))
                .send()
                .await?
                .text()
                .await?;
            queued += text
                .lines()
                .find_map(|l| l.strip_prefix("bulwark_queue_messages "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .context("bulwark_queue_messages in /metrics")?;
        }
        if queued == 0 {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "{queued} messages still queued {timeout:?} after the run"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn row(nodes: usize, p: &Phase) -> String {
    let s = &p.stats;
    let errors = if s.errors.is_empty() {
        "0".to_string()
    } else {
        s.errors
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "| {nodes} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} |",
        bench::size_label(p.size),
        p.sessions,
        s.accepted as f64 / p.elapsed.as_secs_f64(),
        bench::quantile_ms(&s.end_of_data, 0.50),
        bench::quantile_ms(&s.end_of_data, 0.99),
        bench::max_ms(&s.end_of_data),
        bench::quantile_ms(&s.whole, 0.50),
    )
}

/// One phase: `sessions` tasks sending messages of `size` bytes until `duration` has
/// passed; each connection goes to the next node in turn.
struct PhaseRun {
    addrs: Arc<Vec<SocketAddr>>,
    config: ClientConfig,
    seq: Arc<AtomicU64>,
    size: usize,
    sessions: usize,
    per_connection: u32,
    duration: Duration,
    pacer: Option<Pacer>,
    /// `--slow-over-ms`, when set.
    slow_over: Option<Duration>,
    /// When the phase started (made when it is about to).
    started: Instant,
}

/// Spreads message starts evenly at a fixed rate over all sessions.
struct Pacer {
    next: std::sync::Mutex<Instant>,
    interval: Duration,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer {
            next: std::sync::Mutex::new(Instant::now()),
            interval: Duration::from_secs(1) / u32::try_from(rate).unwrap_or(u32::MAX),
        }
    }

    /// Waits for this caller's turn.
    async fn turn(&self) {
        let at = {
            let mut next = self.next.lock().expect("pacer lock");
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

impl PhaseRun {
    async fn go(self) -> Stats {
        let end = Instant::now() + self.duration;
        let this = Arc::new(self);
        let mut tasks = Vec::with_capacity(this.sessions);
        for s in 0..this.sessions {
            let this = this.clone();
            tasks.push(tokio::spawn(async move { this.session(s, end).await }));
        }
        let mut total = Stats::new();
        for t in tasks {
            match t.await {
                Ok(stats) => total.merge(stats),
                Err(e) => {
                    *total
                        .errors
                        .entry(format!("session panicked: {e}"))
                        .or_insert(0) += 1
                }
            }
        }
        total
    }

    /// One session task: connection after connection until `end` (each message and
    /// each wait is bounded by the client's timeouts).
    async fn session(&self, s: usize, end: Instant) -> Stats {
        let mut stats = Stats::new();
        let mut turn = s;
        while Instant::now() < end {
            if let Some(pacer) = &self.pacer {
                pacer.turn().await;
            }
            let addr = self.addrs[turn % self.addrs.len()];
            turn += 1;
            let first = self.message();
            if self.per_connection == 1 {
                let d = smtp::send_one(addr, &first, &self.config).await;
                self.after(&mut stats, &d).await;
                continue;
            }
            let started = Instant::now();
            let mut conn = match SmtpConnection::open(addr, &self.config).await {
                Ok(conn) => conn,
                Err(outcome) => {
                    let d = smtp::Delivery {
                        outcome,
                        end_of_data: None,
                        elapsed: started.elapsed(),
                    };
                    self.after(&mut stats, &d).await;
                    continue;
                }
            };
            let mut msg = first;
            for k in 0..self.per_connection {
                if k > 0 {
                    if Instant::now() >= end || !conn.is_usable() {
                        break;
                    }
                    msg = self.message();
                }
                let mut d = conn.send(&msg).await;
                if k == 0 {
                    d.elapsed = started.elapsed();
                }
                self.after(&mut stats, &d).await;
            }
            conn.quit().await;
        }
        stats
    }

    fn message(&self) -> Message {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Message::generate(&format!("bench-{n}"), self.size, "user@example.test")
    }

    async fn after(&self, stats: &mut Stats, d: &smtp::Delivery) {
        stats.record(d);
        if let (Outcome::Accepted { .. }, Some(eod), Some(over)) =
            (&d.outcome, d.end_of_data, self.slow_over)
        {
            if eod > over {
                let window = self.started.elapsed().as_millis() as u64 / 100;
                *stats.slow.entry(window).or_insert(0) += 1;
            }
        }
        if !matches!(d.outcome, Outcome::Accepted { .. }) {
            // Do not spin on a node that refuses connections.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#![forbid(unsafe_code)]
//! bench_delivery: end-to-end throughput (SMTP in → next hop) of a Bulwark cluster,
//! or of any other SMTP relay pointed at the same sink (the Postfix yardstick).
//!
//! The benchmark runs the next hop itself: a [`Sink`] in this process. Then either
//!
//! * (default) it starts a cluster of `--nodes` nodes from the `bulwark` binary next to
//!   this one (build both with `cargo build --release --workspace --bins`), with
//!   `[delivery] relay` pointing at the sink, and sends to the nodes round-robin; or
//! * with `--target host:port`, it sends to that SMTP server, which must relay to the
//!   sink listening on `--sink-port` (see `cluster-tests/postfix-yardstick.sh`).
//!
//! For every message size it sends a fixed number of messages over `--sessions`
//! concurrent SMTP sessions (one message per connection by default, pipelined, as
//! `bench_smtp` does), as fast as they go, and waits (bounded) until every accepted
//! message has arrived at the sink. A message is recognised at the sink by its
//! `Message-ID` (`<e2e-N@load.test>`, chosen here); for a Bulwark cluster its
//! `X-Bulwark-Id` header is also checked against the id in the `250 … queued as ID`.
//!
//! Figures per size: accepted messages/s (first connection to last `250`), end-to-end
//! messages/s at the sink (first `250` to last arrival: what the whole path sustains),
//! the latency from a message's `250` to its arrival at the sink (p50, p99, max),
//! messages accepted but missing at the sink, duplicates, and refusals by kind; for a
//! cluster, the CPU time of each node per delivered message and the bytes it wrote to
//! disk per delivered message; for any system, the CPU time of the whole machine per
//! delivered message less this process's (the load generator and the sink), which
//! counts the short-lived processes of a relay such as Postfix too.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::bench::{self, CpuClock, DiskClock};
use bulwark_cluster_tests::sink::{Sink, SinkConfig, Stage};
use bulwark_cluster_tests::smtp::{self, ClientConfig, Message, Outcome};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use clap::Parser;
use hdrhistogram::Histogram;

/// Benchmark end-to-end relaying (SMTP in → a next-hop sink in this process).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Nodes in the Bulwark cluster (ignored with --target).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Send to this SMTP server instead of starting a cluster; it must relay to the
    /// sink on --sink-port.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Port of the sink on 127.0.0.1 (0: any free port; required with --target).
    #[arg(long, default_value_t = 0)]
    sink_port: u16,
    /// Message sizes in bytes (header and body), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2048usize, 51200])]
    sizes: Vec<usize>,
    /// Messages per size, comma-separated, one per size (or one for all sizes).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000u64, 3_000])]
    messages: Vec<u64>,
    /// Concurrent SMTP sessions sending.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Unmeasured messages sent (and waited for at the sink) before each size.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Give up waiting for the sink when no message arrived for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Seconds to wait after the last expected arrival for late duplicates.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// `[delivery] concurrency` of every node (node default: 100).
    #[arg(long)]
    concurrency: Option<usize>,
    /// `[delivery] max_connections_per_destination` of every node (node default: 20).
    #[arg(long)]
    max_connections: Option<usize>,
    /// `[delivery] poll_ms` of every node (node default: 500).
    #[arg(long)]
    poll_ms: Option<u64>,
    /// `smtp.max_sessions_per_ip` and `smtp.max_sessions_per_network` of every node:
    /// every session comes from 127.0.0.1.
    #[arg(long, default_value_t = 1000)]
    max_sessions_per_ip: usize,
    #[command(flatten)]
    binary: bench::Binary,
}

/// When each message arrived at the sink, in the order of [`Sink::received`].
///
/// The sink calls its script at every end of data and, for a default (2xx) answer,
/// records the message right after, on its single-threaded runtime without yielding
/// in between; this script never overrides an answer, so the n-th stamp belongs to
/// the n-th received message.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

fn arrivals_script(arrivals: Arrivals) -> SinkConfig {
    SinkConfig::scripted(move |stage| {
        if let Stage::Data { .. } = stage {
            arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now());
        }
        None
    })
}

/// The system under test.
enum Target {
    Cluster(Box<Cluster>),
    External(SocketAddr),
}

impl Target {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Target::Cluster(c) => c
                .ids()
                .into_iter()
                .map(|id| c.node(id).smtp_addr())
                .collect(),
            Target::External(a) => vec![*a],
        }
    }

    fn name(&self) -> String {
        match self {
            Target::Cluster(c) => format!("Bulwark, {} node(s)", c.ids().len()),
            Target::External(a) => format!("{a}"),
        }
    }

    fn pids(&self) -> Vec<(u64, u32)> {
        match self {
            Target::Cluster(c) => bench::node_pids(c),
            Target::External(_) => Vec::new(),
        }
    }
}

/// The longest time from a `250` to the sink the latency histogram holds.
const LATENCY_MAX: Duration = Duration::from_secs(3600);

/// One message accepted by the system under test.
struct Sent {
    /// When its `250` was read.
    at: Instant,
    /// The id in `250 … queued as ID`.
    queue_id: String,
}

/// What the sending sessions of one run saw.
#[derive(Default)]
struct SendReport {
    accepted: HashMap<String, Sent>,
    errors: BTreeMap<String, u64>,
    started: Option<Instant>,
    last_accept: Option<Instant>,
}

/// The figures of one measured size.
struct Row {
    size: usize,
    offered: u64,
    accepted: usize,
    ingest_rate: f64,
    e2e_rate: f64,
    latency: Histogram<u64>,
    missing: usize,
    duplicates: usize,
    /// Arrivals whose `X-Bulwark-Id` is not the queue id of their `250` (cluster only).
    id_mismatch: usize,
    /// Arrivals that were not sent in this run (e.g. late ones from the warm-up).
    foreign: usize,
    errors: BTreeMap<String, u64>,
    /// CPU per arrived message, by node id, from the first send to the last arrival.
    cpu_ms: BTreeMap<u64, f64>,
    /// CPU per arrived message over the same time of the whole machine less this
    /// process: the system under test, whatever its processes, with the kernel's
    /// work for all of them.
    system_ms: f64,
    /// Bytes each node wrote to disk per arrived message, by node id, over the same
    /// time.
    written: BTreeMap<u64, f64>,
    /// First connection to last arrival.
    wall: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.sessions >= 1, "--sessions must be positive");
    ensure!(!args.sizes.is_empty(), "--sizes is empty");
    ensure!(
        args.messages.len() == 1 || args.messages.len() == args.sizes.len(),
        "--messages needs one count, or one per size"
    );
    ensure!(
        args.target.is_none() || args.sink_port != 0,
        "--target needs --sink-port (where the target relays to)"
    );

    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let config = arrivals_script(arrivals.clone());
    let sink = if args.sink_port == 0 {
        Sink::start(config)
    } else {
        Sink::start_on(SocketAddr::from(([127, 0, 0, 1], args.sink_port)), config)
    };
    let mut target = match args.target {
        Some(addr) => Target::External(addr),
        None => Target::Cluster(Box::new(start_cluster(&args, sink.addr()).await?)),
    };
    eprintln!(
        "bench_delivery: {} → sink {}, {} sessions, {} warm-up message(s) per size, {} CPUs",
        target.name(),
        sink.addr(),
        args.sessions,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let addrs = Arc::new(target.addrs());
    let seq = Arc::new(AtomicU64::new(0));
    let mut rows = Vec::new();
    let mut outcome = Ok(());
    for (i, &size) in args.sizes.iter().enumerate() {
        let count = args.messages[i.min(args.messages.len() - 1)];
        match measure(
            &args,
            &mut target,
            &sink,
            &arrivals,
            &addrs,
            &seq,
            size,
            count,
        )
        .await
        {
            Ok(row) => {
                eprintln!("{}", table_row(&target.name(), args.sessions, &row));
                rows.push(row);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    // A last look for duplicates over the whole run (late redeliveries).
    let all = sink.received();
    let mut by_token: HashMap<String, usize> = HashMap::new();
    for d in &all {
        if let Some(token) = d.header("message-id").as_deref().and_then(smtp::token_of) {
            *by_token.entry(token.to_string()).or_insert(0) += 1;
        }
    }
    let dups: usize = by_token.values().map(|n| n - 1).sum();
    eprintln!(
        "bench_delivery: {} message(s) at the sink in all, {} distinct, {dups} duplicate(s)",
        all.len(),
        by_token.len()
    );
    drop(all);
    if let Target::Cluster(cluster) = target {
        if outcome.is_err() {
            cluster.dump_logs();
        }
        cluster.shutdown().await?;
    }
    sink.stop();
    outcome?;

    println!(
        "| system | size | sessions | messages | accepted msgs/s | end-to-end msgs/s | \
         250→sink p50 ms | p99 ms | max ms | missing | duplicates | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in &rows {
        println!("{}", table_row(&target_label(&args), args.sessions, row));
    }
    println!();
    println!(
        "| size | CPU ms per delivered message: the machine less the load generator and sink \
         | by node | load generator and sink |"
    );
    println!("|---:|---:|---|---:|");
    for row in &rows {
        let nodes = row
            .cpu_ms
            .iter()
            .filter(|(id, _)| **id != 0)
            .map(|(id, ms)| format!("node {id}: {ms:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {:.3} | {} | {:.3} |",
            bench::size_label(row.size),
            row.system_ms,
            if nodes.is_empty() { "-" } else { &nodes },
            row.cpu_ms.get(&0).copied().unwrap_or(f64::NAN)
        );
    }
    if rows.iter().any(|r| !r.written.is_empty()) {
        println!();
        println!("| size | disk written per delivered message, by node (times the message) |");
        println!("|---:|---|");
        for row in &rows {
            let nodes = row
                .written
                .iter()
                .map(|(id, b)| {
                    let times = b / row.size.max(1) as f64;
                    format!("node {id}: {:.1} KiB ({times:.1}×)", b / 1024.0)
                })
                .collect::<Vec<_>>()
                .join(", ");
            println!("| {} | {nodes} |", bench::size_label(row.size));
        }
    }
    Ok(())
}

fn target_label(args: &Args) -> String {
    match args.target {
        Some(a) => format!("{a}"),
        None => format!("Bulwark, {} node(s)", args.nodes),
    }
}

async fn start_cluster(args: &Args, sink: SocketAddr) -> Result<Cluster> {
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let mut builder = bench::allow_sessions(
        ClusterBuilder::new(args.nodes).name("bench-delivery"),
        args.max_sessions_per_ip,
    )
    .relay(sink);
    if let Some(c) = args.concurrency {
        builder = builder.delivery("concurrency", &c.to_string());
    }
    if let Some(c) = args.max_connections {
        builder = builder.delivery("max_connections_per_destination", &c.to_string());
    }
    if let Some(p) = args.poll_ms {
        builder = builder.delivery("poll_ms", &p.to_string());
    }
    let (cluster, leader) = bench::start(builder, &args.binary).await?;
    let bin = cluster.binary().display().to_string();
    eprintln!(
        "bench_delivery: cluster up, leader {leader}, binary {bin}, delivery: concurrency {}, \
         max_connections_per_destination {}, poll_ms {}",
        args.concurrency.map_or("default".into(), |c| c.to_string()),
        args.max_connections
            .map_or("default".into(), |c| c.to_string()),
        args.poll_ms.map_or("default".into(), |c| c.to_string()),
    );
    Ok(cluster)
}

/// A warm-up, then `count` measured messages of `size` bytes, each waited for at the
/// sink (bounded by `--stall-secs` without progress).
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    target: &mut Target,
    sink: &Sink,
    arrivals: &Arrivals,
    addrs: &Arc<Vec<SocketAddr>>,
    seq: &Arc<AtomicU64>,
    size: usize,
    count: u64,
) -> Result<Row> {
    let stall = Duration::from_secs(args.stall_secs);
    if args.warmup > 0 {
        let before = arrived(arrivals);
        let warm = send_all(addrs.clone(), seq.clone(), size, args.warmup, args.sessions).await;
        wait_arrivals(target, arrivals, before + warm.accepted.len(), stall).await?;
    }
    if let Target::Cluster(c) = target {
        c.check_alive()?;
    }
    let clock = CpuClock::start(target.pids())?;
    let disk = DiskClock::start(target.pids())?;
    let before = arrived(arrivals);
    let report = send_all(addrs.clone(), seq.clone(), size, count, args.sessions).await;
    let expected = before + report.accepted.len();
    let waited = wait_arrivals(target, arrivals, expected, stall).await;
    let spent = clock.spent()?;
    let machine = clock.machine_spent()?;
    let wrote = disk.written()?;
    if let Err(e) = &waited {
        eprintln!("bench_delivery: {e:#}");
    }
    if args.settle_secs > 0 {
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    }

    let received = sink.received();
    let stamps = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        received.len() <= stamps.len(),
        "the sink recorded {} messages but only {} ends of data",
        received.len(),
        stamps.len()
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut latency = bench::histogram(LATENCY_MAX);
    let (mut id_mismatch, mut foreign) = (0, 0);
    let mut first_250 = None::<Instant>;
    let mut last_arrival = None::<Instant>;
    for sent in report.accepted.values() {
        first_250 = Some(first_250.map_or(sent.at, |f| f.min(sent.at)));
    }
    for (d, at) in received.iter().zip(&stamps).skip(before) {
        let id = d.header("message-id");
        let Some(token) = id.as_deref().and_then(smtp::token_of) else {
            foreign += 1;
            continue;
        };
        let Some((key, sent)) = report.accepted.get_key_value(token) else {
            foreign += 1;
            continue;
        };
        let n = seen.entry(key.as_str()).or_insert(0);
        *n += 1;
        if *n > 1 {
            continue;
        }
        if matches!(target, Target::Cluster(_))
            && d.header("x-bulwark-id").as_deref() != Some(sent.queue_id.as_str())
        {
            id_mismatch += 1;
        }
        let _ = latency.record(bench::micros(at.saturating_duration_since(sent.at)));
        last_arrival = Some(last_arrival.map_or(*at, |l| l.max(*at)));
    }
    let delivered = seen.len();
    let duplicates = seen.values().map(|n| n - 1).sum();
    let started = report.started.context("nothing was sent")?;
    let ingest = report
        .last_accept
        .map_or(Duration::ZERO, |l| l.duration_since(started));
    let e2e = match (first_250, last_arrival) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    let per_message = |n: f64| n / delivered.max(1) as f64;
    let written = wrote
        .iter()
        .map(|(id, bytes)| (*id, per_message(*bytes as f64)))
        .collect();
    let cpu_ms = spent
        .iter()
        .map(|(id, t)| (*id, per_message(t.as_secs_f64() * 1e3)))
        .collect();
    let own = spent.get(&0).copied().unwrap_or_default();
    let system_ms = per_message(machine.saturating_sub(own).as_secs_f64() * 1e3);
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    Ok(Row {
        size,
        offered: count,
        accepted: report.accepted.len(),
        ingest_rate: rate(report.accepted.len(), ingest),
        e2e_rate: rate(delivered, e2e),
        latency,
        missing: report.accepted.len() - delivered,
        duplicates,
        id_mismatch,
        foreign,
        errors: report.errors,
        cpu_ms,
        system_ms,
        written,
        wall: last_arrival.map_or(Duration::ZERO, |l| l.duration_since(started)),
    })
}

fn arrived(arrivals: &Arrivals) -> usize {
    arrivals.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Waits until `expected` messages arrived at the sink in all; fails when none arrived
/// for `stall` (or a node died).
async fn wait_arrivals(
    target: &mut Target,
    arrivals: &Arrivals,
    expected: usize,
    stall: Duration,
) -> Result<()> {
    let mut last = arrived(arrivals);
    let mut progress = Instant::now();
    while last < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = arrived(arrivals);
        if now > last {
            last = now;
            progress = Instant::now();
        } else if progress.elapsed() >= stall {
            bail!(
                "{} of {expected} message(s) at the sink; none for {stall:?}",
                last
            );
        }
        if let Target::Cluster(c) = target {
            if progress.elapsed() >= Duration::from_secs(1) {
                c.check_alive()?;
            }
        }
    }
    Ok(())
}

/// Sends `count` messages of `size` bytes over `sessions` sessions (one message per
/// connection, pipelined), connections to `addrs` round-robin; no retries.
async fn send_all(
    addrs: Arc<Vec<SocketAddr>>,
    seq: Arc<AtomicU64>,
    size: usize,
    count: u64,
    sessions: usize,
) -> SendReport {
    let taken = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for s in 0..sessions {
        let (addrs, seq, taken) = (addrs.clone(), seq.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let config = ClientConfig::default();
            let mut report = SendReport::default();
            let mut turn = s;
            while taken.fetch_add(1, Ordering::Relaxed) < count {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let msg = Message::generate(&format!("e2e-{n}"), size, "user@example.test");
                let addr = addrs[turn % addrs.len()];
                turn += 1;
                let begun = Instant::now();
                let d = smtp::send_one(addr, &msg, &config).await;
                match d.outcome {
                    Outcome::Accepted { id } => {
                        // `elapsed` runs from connecting to the final reply (not QUIT).
                        let at = begun + d.elapsed;
                        report.last_accept = Some(report.last_accept.map_or(at, |l| l.max(at)));
                        report.accepted.insert(msg.token, Sent { at, queue_id: id });
                    }
                    other => {
                        *report.errors.entry(other.kind()).or_insert(0) += 1;
                        // Do not spin on a server that refuses.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            report
        }));
    }
    let mut total = SendReport {
        started: Some(started),
        ..SendReport::default()
    };
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.accepted.extend(r.accepted);
                for (k, v) in r.errors {
                    *total.errors.entry(k).or_insert(0) += v;
                }
                total.last_accept = total.last_accept.max(r.last_accept);
            }
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

fn table_row(system: &str, sessions: usize, r: &Row) -> String {
    let mut errors: Vec<String> = r.errors.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    if r.id_mismatch > 0 {
        errors.push(format!("{} × X-Bulwark-Id ≠ queue id", r.id_mismatch));
    }
    if r.foreign > 0 {
        errors.push(format!("{} × unknown arrival", r.foreign));
    }
    let errors = if errors.is_empty() {
        "0".to_string()
    } else {
        errors.join(", ")
    };
    format!(
        "| {system} | {} | {sessions} | {} of {} in {:.1} s | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {errors} |",
        bench::size_label(r.size),
        r.accepted,
        r.offered,
        r.wall.as_secs_f64(),
        r.ingest_rate,
        r.e2e_rate,
        bench::quantile_ms(&r.latency, 0.50),
        bench::quantile_ms(&r.latency, 0.99),
        bench::max_ms(&r.latency),
        r.missing,
        r.duplicates,
    )
}

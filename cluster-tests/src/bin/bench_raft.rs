#![forbid(unsafe_code)]
//! bench_raft: write throughput and latency of a three-node Bulwark cluster.
//!
//! Starts a cluster from the `bulwark` binary next to this one (build both with
//! `cargo build --release --workspace --bins`), then for every
//! payload size × writer count runs a timed phase in which writers POST audit notes to
//! all nodes round-robin over keep-alive connections. Prints a markdown table of
//! committed writes/s, p50/p99 latency and errors, and a second one with the CPU time
//! each node process (and this load generator) spent per committed write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bulwark_cluster_tests::bench::{self, CpuClock};
use bulwark_cluster_tests::{ApiClient, ClusterBuilder};
use clap::Parser;
use hdrhistogram::Histogram;

/// Benchmark committed writes through Raft on a local three-node cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    times: bench::PhaseTimes,
    /// Note sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1024usize, 65536])]
    payloads: Vec<usize>,
    /// Concurrent writer counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64])]
    writers: Vec<usize>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[command(flatten)]
    binary: bench::Binary,
}

/// The longest write latency the histograms hold.
const LATENCY_MAX: Duration = Duration::from_secs(120);

/// What one phase measured.
struct Phase {
    payload: usize,
    writers: usize,
    ok: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    hist: Histogram<u64>,
    /// CPU time per node id, then this process under id 0.
    cpu: BTreeMap<u64, Duration>,
    leader: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.times.seconds > 0, "--seconds must be positive");
    ensure!(!args.payloads.is_empty() && !args.writers.is_empty());
    let builder = ClusterBuilder::new(args.nodes).name("bench");
    let (mut cluster, leader) = bench::start(builder, &args.binary).await?;
    let bin = cluster.binary().display().to_string();
    eprintln!(
        "bench_raft: {} nodes, leader {leader}, binary {bin}, {} s per phase after {} s warm-up, {} CPUs",
        args.nodes,
        args.times.seconds,
        args.times.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut phases = Vec::new();
    for &payload in &args.payloads {
        for &writers in &args.writers {
            cluster.check_alive()?;
            let client = cluster.client();
            if args.times.warmup > 0 {
                run_phase(
                    &client,
                    payload,
                    writers,
                    Duration::from_secs(args.times.warmup),
                )
                .await;
            }
            let clock = CpuClock::start(bench::node_pids(&cluster))?;
            let (ok, errors, elapsed, hist) = run_phase(
                &client,
                payload,
                writers,
                Duration::from_secs(args.times.seconds),
            )
            .await;
            let cpu = clock.spent()?;
            let leader = bench::leader(&cluster).await;
            let p = Phase {
                payload,
                writers,
                ok,
                errors,
                elapsed,
                hist,
                cpu,
                leader,
            };
            eprintln!("{}", row(&p));
            phases.push(p);
        }
    }
    let st = cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(300))
        .await?;
    eprintln!("bench_raft: converged after the run: {}", st.summary());
    cluster.shutdown().await?;

    println!("| payload | writers | committed writes/s | p50 ms | p99 ms | errors |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        println!("{}", row(p));
    }
    println!();
    println!(
        "{}",
        bench::cpu_table_head(&["payload", "writers"], args.nodes, "write")
    );
    for p in &phases {
        let cells = [bench::size_label(p.payload), p.writers.to_string()];
        println!(
            "{}",
            bench::cpu_table_row(&cells, args.nodes, &p.cpu, p.ok, p.leader)
        );
    }
    let errors: BTreeMap<&str, u64> = phases
        .iter()
        .flat_map(|p| p.errors.iter().map(|(k, v)| (k.as_str(), *v)))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k).or_insert(0) += v;
            m
        });
    if !errors.is_empty() {
        println!("\nerrors by kind: {errors:?}");
    }
    Ok(())
}

fn row(p: &Phase) -> String {
    let errors: u64 = p.errors.values().sum();
    format!(
        "| {} | {} | {:.1} | {:.2} | {:.2} | {} |",
        bench::size_label(p.payload),
        p.writers,
        p.ok as f64 / p.elapsed.as_secs_f64(),
        p.hist.value_at_quantile(0.50) as f64 / 1e3,
        p.hist.value_at_quantile(0.99) as f64 / 1e3,
        errors
    )
}

/// Runs `writers` writers for `duration`; each request goes to the next node in turn.
/// Returns committed writes, errors by kind, the wall time until the last writer
/// finished, and the latency histogram of committed writes (µs).
async fn run_phase(
    client: &ApiClient,
    payload: usize,
    writers: usize,
    duration: Duration,
) -> (u64, BTreeMap<String, u64>, Duration, Histogram<u64>) {
    let start = Instant::now();
    let end = start + duration;
    let ids = Arc::new(client.ids());
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let ids = ids.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = bench::histogram(LATENCY_MAX);
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut ok = 0u64;
            let mut i = w;
            while Instant::now() < end {
                let node = ids[i % ids.len()];
                i += 1;
                let text = note(payload, seq.fetch_add(1, Ordering::Relaxed));
                let t0 = Instant::now();
                match client.post_note_once(node, &text).await {
                    Ok(_) => {
                        ok += 1;
                        let _ = hist.record(bench::micros(t0.elapsed()));
                    }
                    Err(e) => {
                        *errors.entry(e.kind()).or_insert(0) += 1;
                        // Do not spin on a node that refuses connections.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, errors, hist)
        }));
    }
    let mut ok = 0;
    let mut errors = BTreeMap::new();
    let mut hist = bench::histogram(LATENCY_MAX);
    for t in tasks {
        match t.await {
            Ok((o, e, h)) => {
                ok += o;
                for (k, v) in e {
                    *errors.entry(k).or_insert(0) += v;
                }
                let _ = hist.add(h);
            }
            Err(e) => *errors.entry(format!("writer panicked: {e}")).or_insert(0) += 1,
        }
    }
    (ok, errors, start.elapsed(), hist)
}

/// A note of exactly `payload` bytes (ASCII), unique by `n`.
fn note(payload: usize, n: u64) -> String {
    let mut s = format!("bench {n} ");
    if s.len() < payload {
        s.extend(std::iter::repeat_n('x', payload - s.len()));
    }
    s.truncate(payload.max(1));
    s
}

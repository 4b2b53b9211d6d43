//! bench_learners: the SMTP rate a cluster accepts with three voters, and with three
//! voters and two learners, in Compose (deploy/compose as shipped, with
//! deploy/compose/learners.yaml for the learners). Each node's container is held to
//! `--cpus` CPUs, as a host of its own would be: on one machine, unlimited nodes
//! would share the same cores and a learner could only take CPU from the voters.
//!
//! For each setup: `up`, the learners added with `bulwark cluster add` (run in
//! node1's container), then the client container offers `--rate` messages a second
//! for `--secs` seconds, one per connection, to every node in turn, at most
//! `--sessions` at once per node (an attempt finding them all busy is skipped and
//! counted as `busy`). Printed: the accepted rate, the replies, the time to deliver
//! the last accepted message after the load ended, and each container's CPU time.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! $CARGO_TARGET_DIR/release/bench_learners        # --help for the knobs
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::compose::{self, docker, Suite};
use clap::Parser;

const PROJECT: &str = "bulwarkbench";
const IMAGE: &str = "bulwark:bench";
const KIT_IMAGE: &str = "bulwark-kit:bench";

#[derive(Parser)]
struct Args {
    /// Seconds of load per setup.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Messages offered a second (more than the cluster takes: the accepted rate is
    /// its capacity).
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Connections open at once per node.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// CPUs each node's container may use (`docker run --cpus`).
    #[arg(long, default_value = "0.3")]
    cpus: String,
    /// The `bulwark` binary for the image (default: the one beside this program).
    #[arg(long)]
    bulwark: Option<PathBuf>,
}

struct Row {
    setup: String,
    report: compose::PhaseReport,
    secs: u64,
    cpu: Vec<(String, f64)>,
}

/// CPU seconds each running container of the project has used
/// (`/sys/fs/cgroup/.../cpu.stat` is not reachable from here: `docker stats` is).
fn cpu_seconds(suite: &Suite, nodes: u64) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for node in 1..=nodes {
        let id = suite.container(&format!("node{node}"))?;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &id])?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading node{node}'s /proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("a /proc stat line")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        out.push((format!("node{node}"), ticks / 100.0));
    }
    Ok(out)
}

async fn setup(args: &Args, learners: bool) -> Result<Row> {
    let (nodes, files, setup) = if learners {
        (
            5,
            vec![
                "cluster-tests/compose/bench.yaml",
                "deploy/compose/learners.yaml",
                "cluster-tests/compose/bench-learners.yaml",
            ],
            "3 voters + 2 learners",
        )
    } else {
        (3, vec!["cluster-tests/compose/bench.yaml"], "3 voters")
    };
    let mut suite = Suite::with_nodes(PROJECT, nodes, IMAGE, KIT_IMAGE, &files)?;
    suite.set_env("BENCH_NODE_CPUS", &args.cpus);
    let leader = suite.up().await?;
    eprintln!("{setup}: node {leader} leads");
    for node in 4..=nodes {
        suite.compose_run(&[
            "exec",
            "-T",
            &format!("node{leader}"),
            "bulwark",
            "cluster",
            "add",
            "--id",
            &node.to_string(),
            "--addr",
            &format!("node{node}-raft:7001"),
            "--config",
            "/etc/bulwark/bulwark.toml",
        ])?;
    }
    suite.converged(Duration::from_secs(120)).await?;
    let before = cpu_seconds(&suite, nodes)?;
    let load = suite.load_with(
        "bench",
        args.secs,
        &[
            "--rate",
            &args.rate.to_string(),
            "--sessions",
            &args.sessions.to_string(),
            "--size",
            &args.size.to_string(),
        ],
    )?;
    let report = suite.settle(setup, load).await?;
    let after = cpu_seconds(&suite, nodes)?;
    let cpu = before
        .into_iter()
        .zip(after)
        .map(|((name, b), (_, a))| (name, a - b))
        .collect();
    ensure!(
        report.lost.is_empty(),
        "{setup}: {} acknowledged messages never reached the sink",
        report.lost.len()
    );
    Ok(Row {
        setup: setup.to_string(),
        report,
        secs: args.secs,
        cpu,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?
        .parent()
        .context("this program's directory")?
        .to_path_buf();
    let bulwark = args.bulwark.clone().unwrap_or_else(|| here.join("bulwark"));
    compose::build_node_image(&bulwark, IMAGE)?;
    compose::build_kit_image(&here.join("compose_kit"), KIT_IMAGE)?;
    let mut rows = Vec::new();
    for learners in [false, true] {
        rows.push(setup(&args, learners).await?);
    }
    println!(
        "\nbench_learners: {} messages/s of {} bytes offered for {} s, one per connection, \
         at most {} at once per node; each node held to {} CPU",
        args.rate, args.size, args.secs, args.sessions, args.cpus
    );
    println!("| setup | accepted/s | other replies | drain after the load | CPU s per node during the load |");
    println!("|---|---:|---|---:|---|");
    for row in &rows {
        let others: Vec<String> = row
            .report
            .outcomes
            .iter()
            .filter(|(k, _)| *k != "accepted")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let cpu: Vec<String> = row.cpu.iter().map(|(n, s)| format!("{n} {s:.1}")).collect();
        println!(
            "| {} | {:.0} | {} | {:.1} s | {} |",
            row.setup,
            row.report.accepted as f64 / row.secs as f64,
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            },
            row.report.drain_ms as f64 / 1000.0,
            cpu.join(", ")
        );
    }
    Ok(())
}

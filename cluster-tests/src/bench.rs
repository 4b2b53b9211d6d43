//! What the benchmarks in `src/bin/` (`bench_raft`, `bench_smtp`, `bench_delivery`,
//! `bench_failover`) share, so that they read their flags, measure and print their
//! figures one way.
//!
//! What it owns: the flags the benchmarks mean the same by (`--seconds` and `--warmup`
//! of the timed phases, `--bin`) and starting a benchmark's cluster (warning when the
//! binary is a debug build, waiting for a leader); the CPU time of the node processes
//! and of this one, read from `/proc/<pid>/stat`, and of the whole machine
//! (`/proc/stat`), and the bytes each node had written to disk (`/proc/<pid>/io`); the
//! table of CPU time per unit of work that more than
//! one benchmark prints; latency histograms in microseconds,
//! their quantiles in milliseconds and the size labels of the printed tables.
//!
//! What it must never do: change a benchmark's flags, defaults or printed format on
//! its own. The READMEs quote them, and figures are compared across runs and commits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;

use crate::{Cluster, ClusterBuilder};

/// How long each phase of a timed benchmark runs (`--seconds`, `--warmup`).
#[derive(clap::Args, Debug)]
pub struct PhaseTimes {
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

/// The `bulwark` binary a benchmark starts its cluster from (`--bin`).
#[derive(clap::Args, Debug)]
pub struct Binary {
    /// The `bulwark` binary (default: `$BULWARK_BIN`, else next to this program).
    #[arg(long)]
    pub bin: Option<PathBuf>,
}

/// Starts the cluster `builder` describes, from the binary `--bin` names when given,
/// and waits for its first leader, which it returns with the cluster. Warns on stderr
/// when the binary is a debug build: its figures say little about a release.
pub async fn start(mut builder: ClusterBuilder, bin: &Binary) -> Result<(Cluster, u64)> {
    if let Some(b) = &bin.bin {
        builder = builder.binary(b.clone());
    }
    let mut cluster = builder.start().await?;
    let path = cluster.binary().display().to_string();
    if path.contains("/debug/") {
        eprintln!("warning: {path} is a debug build; figures will not be representative");
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    Ok((cluster, leader))
}

/// Raises a cluster's `smtp.max_sessions_per_ip` and `smtp.max_sessions_per_network`
/// to `sessions`: a benchmark's sessions all come from 127.0.0.1 but stand for many
/// sending MTAs, which the defaults (50, 200) would refuse.
pub fn allow_sessions(builder: ClusterBuilder, sessions: usize) -> ClusterBuilder {
    builder
        .smtp("max_sessions_per_ip", &sessions.to_string())
        .smtp("max_sessions_per_network", &sessions.to_string())
}

/// The process id of every running node of `cluster`, by node id: what a
/// [`CpuClock`] samples for a cluster.
pub fn node_pids(cluster: &Cluster) -> Vec<(u64, u32)> {
    cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.node(id).pid().map(|p| (id, p)))
        .collect()
}

/// CPU time (user + system) consumed so far by process `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: unexpected format"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "{path}: too few fields");
    let utime: u64 = f[11].parse().with_context(|| format!("{path}: utime"))?;
    let stime: u64 = f[12].parse().with_context(|| format!("{path}: stime"))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

/// The CPU time that a set of node processes and this process (under id 0: the load
/// generator, and the sink where the benchmark runs one) spend from [`CpuClock::start`]
/// on. The load generator shares the machine with the nodes, so its share is printed
/// too.
pub struct CpuClock {
    pids: Vec<(u64, u32)>,
    start: BTreeMap<u64, Duration>,
    machine: Duration,
}

impl CpuClock {
    /// Samples the CPU time so far of the processes in `pids` (node id, process id),
    /// of this one and of the whole machine.
    pub fn start(pids: Vec<(u64, u32)>) -> Result<Self> {
        let machine = machine_cpu_time()?;
        let start = cpu_snapshot(&pids)?;
        Ok(CpuClock {
            pids,
            start,
            machine,
        })
    }

    /// The CPU time the whole machine spent since [`CpuClock::start`], on every
    /// process and in the kernel: what a system of short-lived processes (Postfix's
    /// `smtpd`, `cleanup` and `smtp`) spends, which leave no account behind in
    /// `/proc/<pid>/stat` once they exit.
    pub fn machine_spent(&self) -> Result<Duration> {
        Ok(machine_cpu_time()?.saturating_sub(self.machine))
    }

    /// The CPU time each process spent since [`CpuClock::start`], by node id, this
    /// process under id 0.
    pub fn spent(&self) -> Result<BTreeMap<u64, Duration>> {
        let now = cpu_snapshot(&self.pids)?;
        Ok(now
            .iter()
            .map(|(id, t)| (*id, t.saturating_sub(self.start[id])))
            .collect())
    }
}

/// CPU time the machine has spent busy since it started, from the first line of
/// `/proc/stat`: user, nice, system, irq and softirq (guest time is counted in user;
/// idle, iowait and the time a hypervisor stole are not).
fn machine_cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("/proc/stat: cpu field"))
        .collect::<Result<_>>()?;
    ensure!(f.len() >= 7, "/proc/stat: too few cpu fields");
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// CPU time of every node (by id) and of this process (id 0).
fn cpu_snapshot(pids: &[(u64, u32)]) -> Result<BTreeMap<u64, Duration>> {
    let mut m = sample(pids, cpu_time)?;
    m.insert(0, cpu_time(std::process::id())?);
    Ok(m)
}

/// `read` of every process of `pids`, by node id.
fn sample<T>(pids: &[(u64, u32)], read: fn(u32) -> Result<T>) -> Result<BTreeMap<u64, T>> {
    pids.iter()
        .map(|&(id, pid)| Ok((id, read(pid).with_context(|| format!("node {id}"))?)))
        .collect()
}

/// Bytes process `pid` has caused to be written to disk so far, from `/proc/<pid>/io`:
/// the pages it dirtied (counted when dirtied, whenever the kernel writes them back)
/// less those dropped unwritten because their file was truncated or deleted first.
fn disk_written(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .with_context(|| format!("{path}: no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("{path}: {name}"))
    };
    Ok(field("write_bytes")?.saturating_sub(field("cancelled_write_bytes")?))
}

/// The bytes each node process of a set writes to disk from [`DiskClock::start`] on
/// (see `disk_written`): its Raft log, its state and what else it keeps.
pub struct DiskClock {
    pids: Vec<(u64, u32)>,
    start: BTreeMap<u64, u64>,
}

impl DiskClock {
    pub fn start(pids: Vec<(u64, u32)>) -> Result<Self> {
        let start = sample(&pids, disk_written)?;
        Ok(DiskClock { pids, start })
    }

    /// Bytes written since [`DiskClock::start`], by node id.
    pub fn written(&self) -> Result<BTreeMap<u64, u64>> {
        let now = sample(&self.pids, disk_written)?;
        Ok(now
            .iter()
            .map(|(id, b)| (*id, b.saturating_sub(self.start[id])))
            .collect())
    }
}

/// The leader as the first node sees it, or `None` when it does not answer: printed
/// beside each phase's CPU figures, since the leader does most of the work.
pub async fn leader(cluster: &Cluster) -> Option<u64> {
    cluster
        .cluster_status(cluster.ids()[0])
        .await
        .ok()
        .and_then(|s| s.leader_id)
}

/// The head (names, then alignment) of the markdown table of CPU time per unit of
/// work that `bench_raft` and `bench_smtp` print, one row a phase: `columns` that
/// name the phase, then the CPU milliseconds per `unit` of each of `nodes` nodes and
/// of the load generator, then the leader.
pub fn cpu_table_head(columns: &[&str], nodes: usize, unit: &str) -> String {
    let mut head = String::from("|");
    let mut sep = String::from("|");
    for c in columns {
        head.push_str(&format!(" {c} |"));
        sep.push_str("---:|");
    }
    for id in 1..=nodes {
        head.push_str(&format!(" node {id} CPU ms/{unit} |"));
        sep.push_str("---:|");
    }
    head.push_str(&format!(" load generator CPU ms/{unit} | leader |"));
    sep.push_str("---:|---:|");
    format!("{head}\n{sep}")
}

/// One row of the table [`cpu_table_head`] heads: `cells` under its columns, then
/// the CPU time in `spent` (by node id, this process under 0) of each of `nodes`
/// nodes and of this process divided by the `done` units of work of the phase, and
/// the `leader` after the phase.
pub fn cpu_table_row(
    cells: &[String],
    nodes: usize,
    spent: &BTreeMap<u64, Duration>,
    done: u64,
    leader: Option<u64>,
) -> String {
    let mut line = String::from("|");
    for c in cells {
        line.push_str(&format!(" {c} |"));
    }
    for id in (1..=nodes as u64).chain(std::iter::once(0)) {
        let ms = spent.get(&id).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        line.push_str(&format!(" {:.3} |", ms / done.max(1) as f64));
    }
    line.push_str(&format!(
        " {} |",
        leader.map_or("?".to_string(), |l| l.to_string())
    ));
    line
}

/// A latency histogram in microseconds, from 1 µs to `max`, to three significant
/// digits.
pub fn histogram(max: Duration) -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, micros(max), 3).expect("histogram bounds")
}

/// `d` in whole microseconds, at least 1: the lowest value a [`histogram`] records.
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The `q` quantile of `h` (µs) in milliseconds, or NaN when `h` is empty: a phase
/// in which nothing succeeded has no latency, not one of 0 ms.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

/// The largest value of `h` (µs) in milliseconds, or NaN when `h` is empty.
pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.max() as f64 / 1e3
    }
}

/// A message or payload size as the tables print it: whole KiB as `64 KiB`, any
/// other size in bytes (`2000 B`).
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_labelled_in_kib_when_whole() {
        assert_eq!(size_label(65536), "64 KiB");
        assert_eq!(size_label(51200), "50 KiB");
        assert_eq!(size_label(2000), "2000 B");
        assert_eq!(size_label(512), "512 B");
    }

    #[test]
    fn empty_histograms_have_no_latency() {
        let mut h = histogram(Duration::from_secs(1));
        assert!(quantile_ms(&h, 0.5).is_nan());
        assert!(max_ms(&h).is_nan());
        h.record(micros(Duration::from_micros(1500)))
            .expect("in bounds");
        assert_eq!(quantile_ms(&h, 0.5), 1.5);
        assert_eq!(max_ms(&h), 1.5);
    }

    #[test]
    fn cpu_table_has_a_column_per_node_and_divides_by_the_work() {
        assert_eq!(
            cpu_table_head(&["size", "writers"], 2, "write"),
            "| size | writers | node 1 CPU ms/write | node 2 CPU ms/write | \
             load generator CPU ms/write | leader |\n|---:|---:|---:|---:|---:|---:|"
        );
        let spent = BTreeMap::from([
            (0, Duration::from_millis(10)),
            (1, Duration::from_millis(40)),
        ]);
        assert_eq!(
            cpu_table_row(&["1 KiB".into(), "64".into()], 2, &spent, 20, Some(1)),
            "| 1 KiB | 64 | 2.000 | NaN | 0.500 | 1 |"
        );
        assert_eq!(
            cpu_table_row(&["1 KiB".into()], 1, &spent, 0, None),
            "| 1 KiB | 40.000 | 10.000 | ? |"
        );
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let clock = CpuClock::start(Vec::new()).expect("own /proc/self/stat");
        let spent = clock.spent().expect("own /proc/self/stat");
        assert_eq!(spent.keys().copied().collect::<Vec<_>>(), vec![0]);
    }
}

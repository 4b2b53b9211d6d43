//! t200: the Compose fault suite. The three nodes of `deploy/compose` as shipped
//! (images built from this tree on a base made from Debian's mirror), their next hop
//! and an SMTP client each in its own container with its own address, on a Docker
//! engine. Under a steady SMTP load from the client, one fault at a time:
//!
//! 1. `docker kill` of the leader, started again 10 s later;
//! 2. `docker kill` of a follower, started again 10 s later;
//! 3. the leader cut off the cluster network (`docker network disconnect`) for 25 s:
//!    the client still reaches it on the mail network, and it must answer 451, never
//!    250; the majority goes on; after healing every node's chain head is the same;
//! 4. `docker pause` of the leader for 30 s;
//! 5. node3's volume filled (a tmpfs of 1 GiB, filled by another container) for 15 s:
//!    it refuses mail, then stops itself; once space is back it is started again by
//!    Docker's restart policy and catches up;
//! 6. node3 removed with its volume and started from an empty one: it rejoins by
//!    snapshot.
//!
//! Each phase reports the attempts and replies, the longest time no node answered
//! `250`, the time from the end of the load until the sink had every message told
//! `250` (the drain), and the duplicates; the suite fails if one acknowledged message
//! never reaches the sink, or a minority node answers `250`, or the nodes do not
//! agree on the chain afterwards.
//!
//! Needs a Docker engine with `docker-compose` and, for the base image, root and
//! debootstrap (deploy/base-image.sh). Without a Docker engine the test says so and
//! checks nothing, unless `CI` is set: then it fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::api::ClusterStatus;

/// Compose's project name (no punctuation: Compose v1 would strip it).
const PROJECT: &str = "bulwarkt200";
const IMAGE: &str = "bulwark:t200";
const KIT_IMAGE: &str = "bulwark-kit:t200";
const BASE_IMAGE: &str = "bulwark-base:bookworm";
/// Messages a second from the client.
const RATE: u32 = 40;
/// The longest wait for the sink to get every acknowledged message after a phase.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a command to its end; its standard output if it succeeded.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Suite {
    repo: PathBuf,
    out: tempfile::TempDir,
    env: Vec<(String, String)>,
    api_ports: BTreeMap<u64, u16>,
    http: Option<reqwest::Client>,
}

impl Suite {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.repo)
            .args(["-p", PROJECT, "-f", "deploy/compose/compose.yaml"])
            .args(["-f", "cluster-tests/compose/faults.yaml"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn compose_run(&self, args: &[&str]) -> Result<String> {
        run(self.compose().args(args))
    }

    /// The container of `service` (also when it has exited).
    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose_run(&["ps", "-a", "-q", service])?;
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id)
    }

    fn network(&self, name: &str) -> String {
        format!("{PROJECT}_{name}")
    }

    async fn status(&self, node: u64) -> Result<ClusterStatus> {
        let http = self.http.as_ref().context("no HTTPS client yet")?;
        let url = format!("https://127.0.0.1:{}/v1/cluster", self.api_ports[&node]);
        let response = http
            .get(&url)
            .timeout(Duration::from_secs(3))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    async fn statuses(&self) -> BTreeMap<u64, Result<ClusterStatus>> {
        let mut all = BTreeMap::new();
        for node in 1..=3 {
            all.insert(node, self.status(node).await);
        }
        all
    }

    /// The leader all reachable nodes agree on.
    async fn leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let leaders: HashSet<Option<u64>> = self
                .statuses()
                .await
                .into_values()
                .filter_map(|s| s.ok().map(|s| s.leader_id))
                .collect();
            if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..] {
                return Ok(leader);
            }
            ensure!(Instant::now() < deadline, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until all three nodes answer with the same leader, applied index and
    /// chain head; returns how long that took.
    async fn converged(&self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let all = self.statuses().await;
            let ok: Vec<&ClusterStatus> = all.values().filter_map(|s| s.as_ref().ok()).collect();
            if ok.len() == 3
                && ok[0].leader_id.is_some()
                && ok.iter().all(|s| {
                    s.leader_id == ok[0].leader_id
                        && s.applied_index == ok[0].applied_index
                        && s.chain_head == ok[0].chain_head
                })
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                let seen: Vec<String> = all
                    .iter()
                    .map(|(n, s)| match s {
                        Ok(s) => s.summary(),
                        Err(e) => format!("node {n}: {e:#}"),
                    })
                    .collect();
                bail!(
                    "the nodes did not agree within {within:?}:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Starts the client's load for `secs` seconds, tokens `prefix-N`.
    fn load(&self, prefix: &str, secs: u64) -> Result<Load> {
        let child = self
            .compose()
            .args(["run", "--rm", "--no-deps", "client", "load"])
            .args(["--target", "node1:2525", "--target", "node2:2525"])
            .args(["--target", "node3:2525", "--rate", &RATE.to_string()])
            .args(["--secs", &secs.to_string(), "--prefix", prefix])
            .args(["--out", &format!("/out/{prefix}.client")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the client")?;
        Ok(Load {
            child,
            prefix: prefix.to_string(),
            started_ms: now_ms(),
            secs,
        })
    }

    /// A load of `secs` seconds with `docker FAULT` done 8 s into it and `docker
    /// HEAL` `hold` later; the phase's figures, and when the fault and the healing
    /// were done.
    async fn around(
        &self,
        name: String,
        prefix: &str,
        secs: u64,
        hold: Duration,
        fault: &[&str],
        heal: &[&str],
    ) -> Result<(PhaseReport, i64, i64)> {
        let load = self.load(prefix, secs)?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        docker(fault)?;
        let faulted_ms = now_ms();
        tokio::time::sleep(hold).await;
        let healed_ms = now_ms();
        docker(heal)?;
        Ok((self.settle(&name, load).await?, faulted_ms, healed_ms))
    }

    /// The sink's record: token to the times it was accepted.
    fn sink(&self) -> Result<HashMap<String, Vec<i64>>> {
        let text = std::fs::read_to_string(self.out.path().join("sink.log")).unwrap_or_default();
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for line in text.lines() {
            let mut fields = line.split(' ');
            if let (Some(time), Some(token)) = (fields.next(), fields.next()) {
                seen.entry(token.to_string())
                    .or_default()
                    .push(time.parse().unwrap_or(0));
            }
        }
        Ok(seen)
    }

    /// Waits for the load to end and for the sink to get what it was told `250`
    /// for; the phase's figures.
    async fn settle(&self, name: &str, load: Load) -> Result<PhaseReport> {
        let Load {
            mut child,
            prefix,
            started_ms,
            secs,
        } = load;
        let limit = Instant::now() + Duration::from_secs(secs + 120);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > limit {
                let _ = child.kill();
                bail!("{name}: the client did not finish");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ended_ms = now_ms();
        ensure!(status.success(), "{name}: the client failed: {status}");
        let attempts = read_attempts(&self.out.path().join(format!("{prefix}.client")))?;
        let accepted: HashSet<&str> = attempts
            .iter()
            .filter(|a| a.outcome == "accepted")
            .map(|a| a.token.as_str())
            .collect();
        let drain_started = Instant::now();
        let (missing, sink) = loop {
            let sink = self.sink()?;
            let missing: Vec<&str> = accepted
                .iter()
                .filter(|t| !sink.contains_key(**t))
                .copied()
                .collect();
            if missing.is_empty() || drain_started.elapsed() > DRAIN_LIMIT {
                break (missing, sink);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let drained_ms = sink
            .iter()
            .filter(|(t, _)| accepted.contains(t.as_str()))
            .filter_map(|(_, times)| times.iter().min().copied())
            .max()
            .unwrap_or(ended_ms);
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for a in &attempts {
            *outcomes.entry(a.outcome.clone()).or_default() += 1;
        }
        let accepted_count = accepted.len();
        let longest_without_250_ms = longest_gap(&attempts, started_ms, ended_ms);
        let lost = missing.iter().map(|t| t.to_string()).collect();
        let duplicates = sink
            .iter()
            .filter(|(t, times)| t.starts_with(&format!("{prefix}-")) && times.len() > 1)
            .count();
        Ok(PhaseReport {
            name: name.to_string(),
            attempts,
            outcomes,
            accepted: accepted_count,
            lost,
            duplicates,
            longest_without_250_ms,
            drain_ms: (drained_ms - ended_ms).max(0),
        })
    }
}

struct Load {
    child: Child,
    prefix: String,
    started_ms: i64,
    secs: u64,
}

/// One attempt of the client: `START_MS END_MS TARGET OUTCOME TOKEN`.
#[derive(Debug)]
struct Attempt {
    start_ms: i64,
    end_ms: i64,
    target: String,
    outcome: String,
    token: String,
}

fn read_attempts(file: &Path) -> Result<Vec<Attempt>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            ensure!(f.len() == 5, "bad client line {line:?}");
            Ok(Attempt {
                start_ms: f[0].parse()?,
                end_ms: f[1].parse()?,
                target: f[2].to_string(),
                outcome: f[3].to_string(),
                token: f[4].to_string(),
            })
        })
        .collect()
}

/// The longest stretch of `[from, to]` in which no attempt got its `250`.
fn longest_gap(attempts: &[Attempt], from: i64, to: i64) -> i64 {
    let mut ends: Vec<i64> = attempts
        .iter()
        .filter(|a| a.outcome == "accepted")
        .map(|a| a.end_ms)
        .collect();
    ends.sort_unstable();
    let mut last = from;
    let mut longest = 0;
    for &t in ends.iter().chain(std::iter::once(&to)) {
        longest = longest.max(t - last);
        last = last.max(t);
    }
    longest
}

struct PhaseReport {
    name: String,
    attempts: Vec<Attempt>,
    outcomes: BTreeMap<String, usize>,
    accepted: usize,
    lost: Vec<String>,
    duplicates: usize,
    longest_without_250_ms: i64,
    drain_ms: i64,
}

impl fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let others: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(k, _)| *k != "accepted")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        write!(
            f,
            "| {} | {} | {} | {} | {:.1} s | {:.1} s | {} | {} |",
            self.name,
            self.attempts.len(),
            self.accepted,
            if others.is_empty() {
                "none".into()
            } else {
                others.join(", ")
            },
            self.longest_without_250_ms as f64 / 1000.0,
            self.drain_ms as f64 / 1000.0,
            self.lost.len(),
            self.duplicates
        )
    }
}

/// Builds the three images: the base from Debian's mirror (kept when present), the
/// node's from the binary under test, the kit's from this package's `compose_kit`.
fn build_images(repo: &Path) -> Result<()> {
    run(Command::new(repo.join("deploy/base-image.sh")).arg(BASE_IMAGE))?;
    let bin = bulwark_cluster_tests::bulwark_bin()?;
    run(Command::new(repo.join("deploy/image.sh"))
        .arg(&bin)
        .arg(IMAGE)
        .env("RUNTIME_IMAGE", BASE_IMAGE))?;
    let context = tempfile::tempdir()?;
    std::fs::copy(
        env!("CARGO_BIN_EXE_compose_kit"),
        context.path().join("compose_kit"),
    )?;
    // A single stage: the classic builder does, where the client has no BuildKit
    // (23 and later without the buildx plugin).
    let buildkit = if docker(&["buildx", "version"]).is_ok() {
        "1"
    } else {
        "0"
    };
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", buildkit)
        .args(["build", "--quiet", "-f"])
        .arg(repo.join("cluster-tests/compose/kit.Dockerfile"))
        .args(["--build-arg", &format!("RUNTIME_IMAGE={BASE_IMAGE}")])
        .args(["-t", KIT_IMAGE])
        .arg(context.path()))?;
    let size: f64 = docker(&["image", "inspect", "-f", "{{.Size}}", IMAGE])?.parse()?;
    println!(
        "t200: image {IMAGE} from {}: {:.0} MB",
        bin.display(),
        size / 1e6
    );
    Ok(())
}

impl Drop for Suite {
    fn drop(&mut self) {
        if std::env::var_os("T200_KEEP").is_none() {
            let _ = self
                .compose()
                .args(["down", "-v", "--remove-orphans", "-t", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("docker-compose")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t200_compose_faults_lose_no_acknowledged_message() -> Result<()> {
    if !docker_available() {
        ensure!(
            std::env::var_os("CI").is_none(),
            "CI is set and there is no Docker engine with docker-compose"
        );
        eprintln!("t200: no Docker engine with docker-compose here: nothing checked");
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the repository")?
        .to_path_buf();
    build_images(&repo)?;

    let out = tempfile::tempdir()?;
    let mut env = vec![
        ("BULWARK_IMAGE".to_string(), IMAGE.to_string()),
        ("T200_KIT_IMAGE".into(), KIT_IMAGE.into()),
        ("T200_OUT".into(), out.path().display().to_string()),
        ("BULWARK_SINK_PORT".into(), free_port()?.to_string()),
    ];
    let mut api_ports = BTreeMap::new();
    for node in 1..=3u64 {
        let api = free_port()?;
        api_ports.insert(node, api);
        env.push((format!("BULWARK_API_PORT_{node}"), api.to_string()));
        env.push((
            format!("BULWARK_SMTP_PORT_{node}"),
            free_port()?.to_string(),
        ));
    }
    let mut suite = Suite {
        repo,
        out,
        env,
        api_ports,
        http: None,
    };
    // What an earlier run left behind.
    suite.compose_run(&["down", "-v", "--remove-orphans", "-t", "1"])?;
    let started = Instant::now();
    suite.compose_run(&["up", "-d"])?;
    let certs = suite.container("certs")?;
    let ca = suite.out.path().join("ca.pem");
    docker(&[
        "cp",
        &format!("{certs}:/certs/ca.pem"),
        &ca.display().to_string(),
    ])?;
    suite.http = Some(
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
            .build()?,
    );
    let leader = suite.leader(Duration::from_secs(120)).await?;
    println!(
        "t200: three nodes up, node {leader} leads, {:.1} s after `up`",
        started.elapsed().as_secs_f64()
    );

    let mut reports = Vec::new();
    let mut failures = Vec::new();

    // 1. kill -9 of the leader, then 2. of a follower (not node3, whose tmpfs volume
    // a kill would empty), each started again 10 s later.
    for role in ["leader", "follower"] {
        let leader = suite.leader(Duration::from_secs(60)).await?;
        let node = match role {
            "leader" => leader,
            _ => (1..=2).find(|&n| n != leader).expect("a follower"),
        };
        let name = format!("kill the {role} (node {node})");
        let prefix = format!("kill-{role}");
        let victim = suite.container(&format!("node{node}"))?;
        let ten = Duration::from_secs(10);
        let kill = ["kill", victim.as_str()];
        let start = ["start", victim.as_str()];
        let (report, _, _) = suite.around(name, &prefix, 30, ten, &kill, &start).await?;
        reports.push(report);
        suite.converged(Duration::from_secs(120)).await?;
    }

    // 3. the leader cut off the cluster network for 25 s: a minority of one, which
    // must answer 451 (after [raft] commit_timeout_ms, 10 s) and never 250.
    let leader = suite.leader(Duration::from_secs(60)).await?;
    let victim = suite.container(&format!("node{leader}"))?;
    let cluster_net = suite.network("cluster");
    let alias = format!("node{leader}-raft");
    let (report, cut_ms, healed_ms) = suite
        .around(
            format!("partition the leader (node {leader}) 25 s"),
            "partition",
            45,
            Duration::from_secs(25),
            &["network", "disconnect", &cluster_net, &victim],
            &[
                "network",
                "connect",
                "--alias",
                &alias,
                &cluster_net,
                &victim,
            ],
        )
        .await?;
    let isolated = format!("node{leader}:2525");
    let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
    for a in report
        .attempts
        .iter()
        .filter(|a| a.target == isolated && a.start_ms > cut_ms && a.end_ms < healed_ms)
    {
        *answered.entry(a.outcome.as_str()).or_default() += 1;
    }
    println!("t200: cut off, node {leader} answered what it was sent then: {answered:?}");
    if answered.contains_key("accepted") {
        failures.push(format!(
            "node {leader}, cut off, answered 250: {answered:?}"
        ));
    }
    if !answered.keys().any(|k| k.starts_with("451")) {
        failures.push(format!(
            "node {leader}, cut off, never answered 451: {answered:?}"
        ));
    }
    reports.push(report);
    let took = suite.converged(Duration::from_secs(120)).await?;
    println!(
        "t200: after healing, every chain head equal within {:.1} s",
        took.as_secs_f64()
    );

    // 4. docker pause of the leader for 30 s.
    let leader = suite.leader(Duration::from_secs(60)).await?;
    let victim = suite.container(&format!("node{leader}"))?;
    let (report, _, _) = suite
        .around(
            format!("pause the leader (node {leader}) 30 s"),
            "pause",
            45,
            Duration::from_secs(30),
            &["pause", &victim],
            &["unpause", &victim],
        )
        .await?;
    reports.push(report);
    suite.converged(Duration::from_secs(120)).await?;

    // 5. node3's volume filled by another container, which holds it until told.
    let volume = format!("{PROJECT}_node3-data");
    let release = suite.out.path().join("fill.release");
    let load = suite.load("disk-full", 35)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let filler = docker(&[
        "run",
        "-d",
        "--rm",
        "-v",
        &format!("{volume}:/data"),
        "-v",
        &format!("{}:/out", suite.out.path().display()),
        KIT_IMAGE,
        "fill",
        "/data/filler",
        "--hold-until",
        "/out/fill.release",
        "--max-secs",
        "120",
    ])?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    std::fs::write(&release, b"")?;
    let filled = docker(&["wait", &filler]);
    reports.push(suite.settle("fill node3's volume 15 s", load).await?);
    let node3 = suite.container("node3")?;
    println!(
        "t200: the filler ended: {filled:?}; node3 restarted {} time(s)",
        docker(&["inspect", "-f", "{{.RestartCount}}", &node3])?
    );
    suite.converged(Duration::from_secs(180)).await?;

    // 6. node3 from an empty volume.
    let load = suite.load("empty-volume", 35)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    suite.compose_run(&["rm", "-s", "-f", "node3"])?;
    docker(&["volume", "rm", &volume])?;
    suite.compose_run(&["up", "-d", "--no-deps", "node3"])?;
    reports.push(suite.settle("node3 from an empty volume", load).await?);
    let took = suite.converged(Duration::from_secs(180)).await?;
    println!(
        "t200: node3 rejoined from an empty volume, in agreement within {:.1} s",
        took.as_secs_f64()
    );

    println!("\nt200: {RATE} messages/s of 2 KiB from the client container, one per connection, to node1..node3 in turn");
    println!("| fault | attempts | 250 | other replies | longest with no 250 | drain | lost | duplicates |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for report in &reports {
        println!("{report}");
        if !report.lost.is_empty() {
            failures.push(format!(
                "{}: {} acknowledged messages never reached the sink, e.g. {:?}",
                report.name,
                report.lost.len(),
                &report.lost[..report.lost.len().min(5)]
            ));
        }
    }
    println!(
        "t200: the whole suite took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    drop(suite);
    Ok(())
}

//! What the Compose suites (tests t200_compose, t201_compose_upgrade) share: the
//! images they build, the project they run (`deploy/compose/compose.yaml` as shipped,
//! with `compose/kit.yaml`'s sink and client laid over it, and each suite's own file),
//! the client's load and what became of it.
//!
//! The kit (`compose_kit`, its image made by [`build_kit_image`]) replaces Mailpit as the next hop
//! and records every message it accepts in `OUT/sink.log`; the client container
//! sends the load and records every attempt in `OUT/PREFIX.client`, where `OUT` is the
//! suite's temporary directory, mounted in both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};

use crate::api::ClusterStatus;
use crate::ports::free;

/// The base image both the nodes' and the kit's images are built on.
pub const BASE_IMAGE: &str = "bulwark-base:bookworm";
/// Messages a second from the client.
pub const RATE: u32 = 40;
/// The longest wait for the sink to get every acknowledged message after a phase.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a command to its end; its standard output if it succeeded.
pub fn run(cmd: &mut Command) -> Result<String> {
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

pub fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

/// A Compose project of the three nodes, the sink and the client.
pub struct Suite {
    repo: PathBuf,
    project: String,
    /// The Compose files after `deploy/compose/compose.yaml` and `kit.yaml`.
    files: Vec<PathBuf>,
    out: tempfile::TempDir,
    env: Vec<(String, String)>,
    api_ports: BTreeMap<u64, u16>,
    http: Option<reqwest::Client>,
}

/// The repository this package is in.
pub fn repo() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the repository")?
        .to_path_buf())
}

impl Suite {
    /// A project named `project` (letters and digits: Compose v1 strips the rest)
    /// of three nodes with the image `image`, the kit's `kit_image`, and `files`
    /// (paths from the repository) laid over the shipped file and the kit's. Every
    /// published port is a free one; nothing is started.
    pub fn new(project: &str, image: &str, kit_image: &str, files: &[&str]) -> Result<Self> {
        Self::with_nodes(project, 3, image, kit_image, files)
    }

    /// As [`Suite::new`] with `nodes` nodes (`node1`..: more than three when a file
    /// adds them, as deploy/compose/learners.yaml does).
    pub fn with_nodes(
        project: &str,
        nodes: u64,
        image: &str,
        kit_image: &str,
        files: &[&str],
    ) -> Result<Self> {
        let out = tempfile::tempdir()?;
        let mut env = vec![
            ("BULWARK_IMAGE".to_string(), image.to_string()),
            ("BULWARK_KIT_IMAGE".into(), kit_image.into()),
            ("BULWARK_KIT_OUT".into(), out.path().display().to_string()),
            ("BULWARK_SINK_PORT".into(), free().to_string()),
        ];
        let mut api_ports = BTreeMap::new();
        for node in 1..=nodes {
            let api = free();
            api_ports.insert(node, api);
            env.push((format!("BULWARK_API_PORT_{node}"), api.to_string()));
            env.push((format!("BULWARK_SMTP_PORT_{node}"), free().to_string()));
        }
        Ok(Suite {
            repo: repo()?,
            project: project.to_string(),
            files: files.iter().map(PathBuf::from).collect(),
            out,
            env,
            api_ports,
            http: None,
        })
    }

    /// Sets an environment variable for every later Compose command (a file's
    /// `${NAME}`).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// The directory mounted as `/out` in the sink and the client.
    pub fn out(&self) -> &Path {
        self.out.path()
    }

    pub fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.repo)
            .args(["-p", &self.project, "-f", "deploy/compose/compose.yaml"])
            .args(["-f", "cluster-tests/compose/kit.yaml"]);
        for file in &self.files {
            cmd.arg("-f").arg(file);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Removes what an earlier run left, starts the project, and trusts the
    /// cluster's CA for the API; waits for a leader and returns it.
    pub async fn up(&mut self) -> Result<u64> {
        self.compose_run(&["down", "-v", "--remove-orphans", "-t", "1"])?;
        self.compose_run(&["up", "-d"])?;
        let certs = self.container("certs")?;
        let ca = self.out.path().join("ca.pem");
        docker(&[
            "cp",
            &format!("{certs}:/certs/ca.pem"),
            &ca.display().to_string(),
        ])?;
        self.http = Some(
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
                .build()?,
        );
        self.leader(Duration::from_secs(120)).await
    }

    pub fn compose_run(&self, args: &[&str]) -> Result<String> {
        run(self.compose().args(args))
    }

    /// The container of `service` (also when it has exited).
    pub fn container(&self, service: &str) -> Result<String> {
        let id = self.compose_run(&["ps", "-a", "-q", service])?;
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id)
    }

    pub fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    pub async fn status(&self, node: u64) -> Result<ClusterStatus> {
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

    pub async fn statuses(&self) -> BTreeMap<u64, Result<ClusterStatus>> {
        let mut all = BTreeMap::new();
        for &node in self.api_ports.keys() {
            all.insert(node, self.status(node).await);
        }
        all
    }

    /// The leader every node that answers and knows one agrees on (a node not yet
    /// added to the cluster knows none).
    pub async fn leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let leaders: HashSet<u64> = self
                .statuses()
                .await
                .into_values()
                .filter_map(|s| s.ok().and_then(|s| s.leader_id))
                .collect();
            if let [leader] = leaders.into_iter().collect::<Vec<_>>()[..] {
                return Ok(leader);
            }
            ensure!(Instant::now() < deadline, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every node answers with the same leader, applied index and
    /// chain head; returns how long that took.
    pub async fn converged(&self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let all = self.statuses().await;
            let ok: Vec<&ClusterStatus> = all.values().filter_map(|s| s.as_ref().ok()).collect();
            if ok.len() == self.api_ports.len()
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

    /// Starts the client's load for `secs` seconds at [`RATE`] messages a second,
    /// tokens `prefix-N`.
    pub fn load(&self, prefix: &str, secs: u64) -> Result<Load> {
        self.load_with(prefix, secs, &["--rate", &RATE.to_string()])
    }

    /// Starts the client's load for `secs` seconds to every node in turn, tokens
    /// `prefix-N`, with `args` for `compose_kit load` (`--rate`, `--sessions`,
    /// `--size`).
    pub fn load_with(&self, prefix: &str, secs: u64, args: &[&str]) -> Result<Load> {
        let mut cmd = self.compose();
        cmd.args(["run", "--rm", "--no-deps", "client", "load"]);
        for node in self.api_ports.keys() {
            cmd.args(["--target", &format!("node{node}:2525")]);
        }
        let child = cmd
            .args(args)
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
    pub async fn around(
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

    /// [`Suite::around`] with node `node` cut off the cluster network for `hold`
    /// (`docker network disconnect`), then connected again with its `nodeN-raft`
    /// alias; the client still reaches it on the mail network.
    pub async fn cut_off(
        &self,
        name: String,
        prefix: &str,
        node: u64,
        secs: u64,
        hold: Duration,
    ) -> Result<(PhaseReport, i64, i64)> {
        let victim = self.container(&format!("node{node}"))?;
        let cluster_net = self.network("cluster");
        let alias = format!("node{node}-raft");
        let disconnect = ["network", "disconnect", &cluster_net, &victim];
        let connect = [
            "network",
            "connect",
            "--alias",
            &alias,
            &cluster_net,
            &victim,
        ];
        self.around(name, prefix, secs, hold, &disconnect, &connect)
            .await
    }

    /// The sink's record: token to the times it was accepted.
    pub fn sink(&self) -> Result<HashMap<String, Vec<i64>>> {
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
    pub async fn settle(&self, name: &str, load: Load) -> Result<PhaseReport> {
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
        // From the client's first attempt: its container takes a moment to start.
        let first_ms = attempts
            .iter()
            .map(|a| a.start_ms)
            .min()
            .unwrap_or(started_ms);
        let longest_without_250_ms = longest_gap(&attempts, first_ms, ended_ms);
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

pub struct Load {
    child: Child,
    prefix: String,
    started_ms: i64,
    secs: u64,
}

/// One attempt of the client: `START_MS END_MS TARGET OUTCOME TOKEN`.
#[derive(Debug)]
pub struct Attempt {
    pub start_ms: i64,
    pub end_ms: i64,
    pub target: String,
    pub outcome: String,
    pub token: String,
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

pub struct PhaseReport {
    pub name: String,
    pub attempts: Vec<Attempt>,
    pub outcomes: BTreeMap<String, usize>,
    pub accepted: usize,
    pub lost: Vec<String>,
    pub duplicates: usize,
    pub longest_without_250_ms: i64,
    pub drain_ms: i64,
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

/// Builds the base image from Debian's mirror (kept when present) and the node's
/// image `tag` from the binary `bin` (deploy/image.sh); prints the image's size.
pub fn build_node_image(bin: &Path, tag: &str) -> Result<()> {
    let repo = repo()?;
    run(Command::new(repo.join("deploy/base-image.sh")).arg(BASE_IMAGE))?;
    run(Command::new(repo.join("deploy/image.sh"))
        .arg(bin)
        .arg(tag)
        .env("RUNTIME_IMAGE", BASE_IMAGE))?;
    let size: f64 = docker(&["image", "inspect", "-f", "{{.Size}}", tag])?.parse()?;
    println!("image {tag} from {}: {:.0} MB", bin.display(), size / 1e6);
    Ok(())
}

/// Builds the kit's image `tag` from the `compose_kit` binary `kit` (on the base
/// image, which [`build_node_image`] makes).
pub fn build_kit_image(kit: &Path, tag: &str) -> Result<()> {
    let context = tempfile::tempdir()?;
    std::fs::copy(kit, context.path().join("compose_kit"))?;
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
        .arg(repo()?.join("cluster-tests/compose/kit.Dockerfile"))
        .args(["--build-arg", &format!("RUNTIME_IMAGE={BASE_IMAGE}")])
        .args(["-t", tag])
        .arg(context.path()))?;
    Ok(())
}

/// Whether to run a Compose suite: a Docker engine with docker-compose answers.
/// Without one the suite says so and checks nothing, unless `CI` is set: then it
/// fails.
pub fn engine_here(suite: &str) -> Result<bool> {
    if docker_available() {
        return Ok(true);
    }
    ensure!(
        std::env::var_os("CI").is_none(),
        "CI is set and there is no Docker engine with docker-compose"
    );
    eprintln!("{suite}: no Docker engine with docker-compose here: nothing checked");
    Ok(false)
}

/// Prints the phases as a Markdown table, and returns what failed: every
/// acknowledged message that never reached the sink.
pub fn table(reports: &[PhaseReport]) -> Vec<String> {
    println!("| phase | attempts | 250 | other replies | longest with no 250 | drain | lost | duplicates |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    for report in reports {
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
    failures
}

impl Drop for Suite {
    /// Takes the project down with its volumes, unless `BULWARK_COMPOSE_KEEP` is set
    /// (to look at what a failed run left).
    fn drop(&mut self) {
        if std::env::var_os("BULWARK_COMPOSE_KEEP").is_none() {
            let _ = self
                .compose()
                .args(["down", "-v", "--remove-orphans", "-t", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn docker_available() -> bool {
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

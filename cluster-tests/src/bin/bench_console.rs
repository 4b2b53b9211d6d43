#![forbid(unsafe_code)]
//! bench_console: how long each page of the web console takes to answer with a
//! full quarantine.
//!
//! It starts one node from the `bulwark` binary next to this one (build both with
//! `cargo build --release --workspace --bins`) whose local rule quarantines every
//! message it is sent, sends `--messages` messages of `--size` bytes over
//! `--sessions` SMTP sessions, waits until the quarantine holds them all, signs in to the console as `admin`
//! with the node's token, then asks for each page `--rounds` times, one request at a
//! time, as a person's browser would: the mail flow, the quarantine (whole, by
//! sender, by subject word, a page from the middle, a sender with no mail there, a
//! subject word no message has: every record read), a message, the queue, the event
//! log (whole and by type), the cluster, the policy and the users; then, as the recipient of all
//! that mail, a link of their quarantine digest (sent with `POST /v1/digest/run`, read
//! from the node's Maildir) and their portal. It prints each page's answer times
//! (from the request to the last byte of the page) and the digest's, and fails when a
//! page's slowest answer took `--limit-ms` or more.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::bench;
use bulwark_cluster_tests::mta::{self, MtaLoad, Targets};
use bulwark_cluster_tests::notice;
use bulwark_cluster_tests::ClusterBuilder;
use clap::Parser;

/// Time each console page with a full quarantine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Messages quarantined before the pages are timed.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Concurrent SMTP sessions while filling the quarantine.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 2_048)]
    size: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The slowest answer any page may take, in milliseconds.
    #[arg(long, default_value_t = 200)]
    limit_ms: u64,
    #[command(flatten)]
    binary: bench::Binary,
}

/// Every message the load sends has this in its subject (`load test TOKEN`).
const RULE: &str = "header LOCAL_BENCH Subject =~ /load test/\nscore LOCAL_BENCH 12.0\n\
                    describe LOCAL_BENCH Sent by bench_console\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let rules = tempfile::tempdir()?;
    let rule_file = rules.path().join("bench.cf");
    std::fs::write(&rule_file, RULE)?;
    let builder = bench::allow_sessions(
        ClusterBuilder::new(1)
            .name("bench-console")
            .scan("rules", &format!("[{:?}]", rule_file.display().to_string())),
        args.sessions,
    );
    let (cluster, leader) = bench::start(builder, &args.binary).await?;
    let node = cluster.node(leader);
    let (api, token) = (node.api_url(), cluster.token(leader)?);

    // Fill the quarantine.
    let filling = Instant::now();
    let mut load = MtaLoad::new("console", args.messages, args.sessions, args.size);
    load.deadline = Duration::from_secs(3_600);
    let logs = mta::run(
        load,
        Arc::new(Targets::of(&cluster, &[leader])),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let ids: Vec<String> = logs
        .iter()
        .filter_map(|l| l.acked().map(str::to_string))
        .collect();
    ensure!(
        ids.len() == args.messages,
        "{} of {} messages accepted",
        ids.len(),
        args.messages
    );
    let sent = filling.elapsed();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let depth = |http: reqwest::Client| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let metrics = http
                .get(format!("{api}/metrics"))
                .bearer_auth(&token)
                .send()
                .await?
                .text()
                .await?;
            let held = metrics
                .lines()
                .find_map(|l| l.strip_prefix("bulwark_quarantine_messages "))
                .context("bulwark_quarantine_messages in /metrics")?;
            Ok::<u64, anyhow::Error>(held.trim().parse()?)
        }
    };
    let waited = Instant::now();
    while depth(http.clone()).await? < args.messages as u64 {
        ensure!(
            waited.elapsed() < Duration::from_secs(300),
            "the quarantine holds {} of {} after 5 minutes",
            depth(http.clone()).await?,
            args.messages
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "bench_console: 1 node, {} messages of {} B quarantined in {:.1} s ({:.0} msgs/s over {} sessions)",
        args.messages,
        args.size,
        sent.as_secs_f64(),
        args.messages as f64 / sent.as_secs_f64(),
        args.sessions
    );

    // Sign in as a person would.
    let signed = http
        .post(format!("{api}/ui/signin"))
        .form(&[
            ("name", "admin"),
            ("password", token.as_str()),
            ("next", "/ui/flow"),
        ])
        .send()
        .await?;
    ensure!(signed.status() == 303, "sign-in: {}", signed.status());
    let cookie = set_cookie(&signed, "bulwark_session").context("a session cookie")?;

    // The recipient of all that mail: a digest, read from the Maildir as their mail
    // program would, one of its links, and their portal through its portal link.
    let digesting = Instant::now();
    let run = http
        .post(format!("{api}/v1/digest/run"))
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(run.status() == 200, "digest: {}", run.status());
    let run: serde_json::Value = run.json().await?;
    println!(
        "bench_console: a digest of {} held messages (the newest 100 listed) written and queued in {:.0} ms",
        run["messages"],
        digesting.elapsed().as_secs_f64() * 1e3
    );
    let digest = delivered(&node.data_dir().join("delivered").join("new")).await?;
    let (text, _) = notice::parts(&digest).context("the digest's text and HTML")?;
    let release = notice::links(&text, "Release")
        .first()
        .context("a release link in the digest")?
        .clone();
    let portal = notice::portal_link(&text).context("a portal link in the digest")?;
    let entered = http
        .post(format!("{api}{}", notice::path(&portal)))
        .send()
        .await?;
    ensure!(
        entered.status() == 303,
        "the portal link: {}",
        entered.status()
    );
    let pass = set_cookie(&entered, "bulwark_my").context("the portal's cookie")?;

    let middle = &ids[ids.len() / 2];
    let person = |name: &'static str, path: String| (name, path, cookie.clone());
    let pages = [
        person("mail flow", "/ui/flow".to_string()),
        person("quarantine", "/ui/quarantine".to_string()),
        person(
            "quarantine by sender",
            "/ui/quarantine?sender=load.test".to_string(),
        ),
        person(
            "quarantine by subject word",
            "/ui/quarantine?subject=test".to_string(),
        ),
        person(
            "quarantine, a middle page",
            format!("/ui/quarantine?after={middle}"),
        ),
        // Matches none: the address index answers at once.
        person(
            "quarantine by a sender with none",
            "/ui/quarantine?sender=nobody.test".to_string(),
        ),
        // Matches none, and no index serves it: every record is read (a page stops
        // after 100,000).
        person(
            "quarantine by a subject word with none",
            "/ui/quarantine?subject=unheard".to_string(),
        ),
        person("a message", format!("/ui/messages/{middle}")),
        person("queue", "/ui/queue".to_string()),
        person("events", "/ui/events".to_string()),
        person(
            "events by type",
            "/ui/events?type=message.quarantined".to_string(),
        ),
        person("cluster", "/ui/cluster".to_string()),
        person("policy", "/ui/policy".to_string()),
        person("users", "/ui/users".to_string()),
        (
            "a digest's release link",
            notice::path(&release).to_string(),
            String::new(),
        ),
        (
            "the recipient's portal",
            "/ui/my/".to_string(),
            pass.clone(),
        ),
    ];
    println!("| page | answers | p50 ms | p99 ms | slowest ms |");
    println!("|---|---:|---:|---:|---:|");
    let mut slowest = Vec::new();
    for (name, path, cookie) in &pages {
        let mut times = bench::histogram(Duration::from_secs(60));
        for _ in 0..args.rounds {
            let asked = Instant::now();
            let answer = http
                .get(format!("{api}{path}"))
                .header("cookie", cookie)
                .send()
                .await?;
            let status = answer.status();
            let page = answer.bytes().await?;
            let took = asked.elapsed();
            ensure!(status == 200, "{path}: {status}");
            ensure!(page.len() > 500, "{path}: a page of {} bytes", page.len());
            times.record(bench::micros(took))?;
        }
        println!(
            "| {name} (`{path}`) | {} | {:.1} | {:.1} | {:.1} |",
            times.len(),
            bench::quantile_ms(&times, 0.5),
            bench::quantile_ms(&times, 0.99),
            bench::max_ms(&times)
        );
        slowest.push((name, times.max()));
    }
    cluster.shutdown().await?;
    let over: Vec<_> = slowest
        .iter()
        .filter(|(_, us)| *us >= args.limit_ms * 1_000)
        .collect();
    ensure!(
        over.is_empty(),
        "pages slower than {} ms: {over:?}",
        args.limit_ms
    );
    Ok(())
}

/// The first message delivered to the Maildir directory `new`, waited for.
async fn delivered(new: &std::path::Path) -> Result<Vec<u8>> {
    let waited = Instant::now();
    loop {
        if let Ok(mut entries) = std::fs::read_dir(new) {
            if let Some(entry) = entries.next() {
                return Ok(std::fs::read(entry?.path())?);
            }
        }
        ensure!(
            waited.elapsed() < Duration::from_secs(60),
            "no digest in {} after a minute",
            new.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `name=value` of the cookie `name` that `response` sets.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
}

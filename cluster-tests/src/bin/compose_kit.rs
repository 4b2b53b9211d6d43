//! The programs the Compose fault suite (tests/t200_compose.rs) runs in containers
//! of its own beside the three nodes, each on its own address:
//!
//! - `sink`: the next hop the nodes relay to; every message it accepts is a line
//!   `TIME_MS TOKEN CONNECTION` in `--out` (TOKEN from `Message-ID: <TOKEN@load.test>`).
//! - `load`: the client; messages at a steady rate to the nodes in turn, one per
//!   connection as an MTA sends them, every attempt a line
//!   `START_MS END_MS TARGET OUTCOME TOKEN` in `--out` (OUTCOME: `accepted`, or what
//!   became of it, e.g. `451_at_end_of_data`).
//! - `fill`: writes a file into a directory until its file system is full, keeps it
//!   until told to let go, then removes it.
//! - `dns`: the name server the nodes' queries go to (through Docker's own, which
//!   forwards what is not a container's name): it knows no name and answers each
//!   query at once with NXDOMAIN, as the Internet would for the test domains; with
//!   no server at all, every SPF, DKIM and DMARC lookup would wait out its timeout.
//!
//! Each stops by itself: the sink and the name server after `--max-secs`, the load
//! after `--secs` and the last reply, the fill when the disk is full or after
//! `--max-bytes`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bulwark_cluster_tests::dns::{DnsServer, Zone};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use bulwark_cluster_tests::smtp::{send_one, token_of, ClientConfig, Message};
use clap::{Parser, Subcommand};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Sink {
        #[arg(long, default_value = "0.0.0.0:1025")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    Load(Load),
    Dns {
        #[arg(long, default_value = "0.0.0.0:53")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    Fill {
        /// The file to write (in the directory to fill).
        file: PathBuf,
        #[arg(long, default_value_t = 8 << 30)]
        max_bytes: u64,
        /// Once full, keep the file (and so the volume mounted) until this file
        /// exists, then remove it.
        #[arg(long)]
        hold_until: PathBuf,
        /// The longest hold.
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
}

#[derive(clap::Args)]
struct Load {
    /// `host:port` of a node; repeat for each.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Messages started per second.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    #[arg(long)]
    secs: u64,
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Tokens are PREFIX-N.
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value = "rcpt@example.test")]
    rcpt: String,
    /// Most connections open at once to one target, as an MTA bounds its
    /// concurrency per destination (under the node's 50 per client address), so
    /// that a node that hangs holds up only its own share.
    #[arg(long, default_value_t = 40)]
    sessions: usize,
    #[arg(long)]
    out: PathBuf,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Sink {
            listen,
            out,
            max_secs,
        } => sink(listen, &out, Duration::from_secs(max_secs)),
        Command::Load(spec) => tokio::runtime::Runtime::new()?.block_on(load(spec)),
        Command::Dns { listen, max_secs } => {
            let server = DnsServer::start_on(listen, Zone::new())
                .with_context(|| format!("name server on {listen}"))?;
            eprintln!("dns: answering NXDOMAIN on {}", server.addr());
            std::thread::sleep(Duration::from_secs(max_secs));
            Ok(())
        }
        Command::Fill {
            file,
            max_bytes,
            hold_until,
            max_secs,
        } => {
            fill(&file, max_bytes)?;
            let started = std::time::Instant::now();
            while !hold_until.exists() && started.elapsed() < Duration::from_secs(max_secs) {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            eprintln!("fill: {} removed", file.display());
            Ok(())
        }
    }
}

fn sink(listen: SocketAddr, out: &PathBuf, max: Duration) -> Result<()> {
    let sink = Sink::start_on(listen, SinkConfig::default());
    let mut file = std::fs::File::create(out).with_context(|| format!("{}", out.display()))?;
    eprintln!(
        "sink: listening on {listen}, recording in {}",
        out.display()
    );
    let started = std::time::Instant::now();
    let mut written = 0;
    while started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(100));
        let received = sink.received();
        for d in &received[written..] {
            let token = d
                .header("Message-ID")
                .and_then(|id| token_of(&id).map(str::to_string))
                .unwrap_or_else(|| "-".into());
            writeln!(file, "{} {token} {}", now_ms(), d.connection)?;
        }
        written = received.len();
        file.flush()?;
    }
    Ok(())
}

async fn load(spec: Load) -> Result<()> {
    let (lines, mut written) = tokio::sync::mpsc::unbounded_channel::<String>();
    let out = spec.out.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut file = std::fs::File::create(&out).with_context(|| format!("{}", out.display()))?;
        while let Some(line) = written.blocking_recv() {
            writeln!(file, "{line}")?;
            file.flush()?;
        }
        Ok(())
    });
    let config = Arc::new(ClientConfig {
        helo: "client.compose.test".into(),
        timeout: Duration::from_secs(20),
        pipelining: true,
    });
    let sessions: Vec<Arc<Semaphore>> = spec
        .targets
        .iter()
        .map(|_| Arc::new(Semaphore::new(spec.sessions)))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.rate.max(1));
    let total = u64::from(spec.rate) * spec.secs;
    let mut running = tokio::task::JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let k = n as usize % spec.targets.len();
        let target = spec.targets[k].clone();
        let token = format!("{}-{n}", spec.prefix);
        let msg = Message::generate(&token, spec.size, &spec.rcpt);
        let (config, lines) = (config.clone(), lines.clone());
        // A target with all its sessions busy is skipped, not waited for.
        let Ok(permit) = sessions[k].clone().try_acquire_owned() else {
            let _ = lines.send(format!("{} {} {target} busy {token}", now_ms(), now_ms()));
            continue;
        };
        running.spawn(async move {
            let start = now_ms();
            let outcome = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
                Ok(Some(addr)) => send_one(addr, &msg, &config).await.outcome.kind(),
                _ => "unresolved".into(),
            };
            drop(permit);
            let outcome = outcome.replace(' ', "_");
            let _ = lines.send(format!("{start} {} {target} {outcome} {token}", now_ms()));
        });
    }
    while running.join_next().await.is_some() {}
    drop(lines);
    writer.await??;
    Ok(())
}

fn fill(file: &PathBuf, max_bytes: u64) -> Result<()> {
    let mut f = std::fs::File::create(file).with_context(|| format!("{}", file.display()))?;
    let block = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    while written < max_bytes {
        match f.write_all(&block) {
            Ok(()) => written += block.len() as u64,
            Err(e) => {
                eprintln!(
                    "fill: {} full after {} MiB: {e}",
                    file.display(),
                    written >> 20
                );
                let _ = f.sync_all();
                return Ok(());
            }
        }
    }
    eprintln!("fill: stopped at --max-bytes ({} MiB)", written >> 20);
    Ok(())
}

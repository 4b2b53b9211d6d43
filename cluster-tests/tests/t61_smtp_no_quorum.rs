//! t61: a node that has lost its quorum answers `451 4.3.0` to the end of data (the
//! sender keeps the message and retries), its session carries on, and the retry is
//! accepted once the quorum is back. Nothing is acknowledged that a quorum does not
//! hold, and nothing is read that could not be recorded: a message trace asked of
//! the node without a quorum answers 503, and is served (and recorded) once the
//! quorum is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::{ClusterBuilder, RaftTuning};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SMTP session, line by line, every read bounded.
struct Session {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Session {
    async fn open(addr: SocketAddr) -> Result<Session> {
        let stream = TcpStream::connect(addr).await?;
        let (r, w) = stream.into_split();
        let mut s = Session {
            reader: BufReader::new(r),
            writer: w,
        };
        s.expect(220).await?;
        s.cmd("EHLO t61.test", 250).await?;
        Ok(s)
    }

    async fn reply(&mut self) -> Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.reader.read_line(&mut line))
                .await
                .context("no reply in 30 s")??;
            ensure!(n > 0, "connection closed");
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((line[..3].parse()?, text.trim_end().to_string()));
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<String> {
        let (got, text) = self.reply().await?;
        ensure!(got == code, "expected {code}, got {text:?}");
        Ok(text)
    }

    async fn cmd(&mut self, line: &str, code: u16) -> Result<String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.expect(code).await
    }

    /// Sends one message; returns the final reply.
    async fn message(&mut self, token: &str) -> Result<(u16, String)> {
        self.message_with(token, "body\r\n").await
    }

    /// Sends one message with `content` (CRLF lines, none starting with a dot).
    async fn message_with(&mut self, token: &str, content: &str) -> Result<(u16, String)> {
        self.cmd("MAIL FROM:<sender@t61.test>", 250).await?;
        self.cmd("RCPT TO:<user@example.test>", 250).await?;
        self.cmd("DATA", 354).await?;
        let head = format!("Message-ID: <{token}@t61.test>\r\nSubject: {token}\r\n\r\n");
        self.writer.write_all(head.as_bytes()).await?;
        self.writer.write_all(content.as_bytes()).await?;
        self.writer.write_all(b".\r\n").await?;
        self.reply().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_no_quorum_answers_451_and_the_retry_is_accepted() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t61-no-quorum")
        .raft(RaftTuning {
            commit_timeout_ms: Some(1500),
            ..RaftTuning::default()
        })
        .start()
        .await?;
    if let Err(e) = run(&mut cluster).await {
        cluster.dump_logs();
        return Err(e);
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_a_message_near_the_size_limit_is_replicated_to_every_node() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3).name("t61-large").start().await?;
    let result = async {
        let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
        // Through a follower, so the 24 MiB entry is forwarded, then replicated.
        let follower = cluster.others(leader)[0];
        // A node that joined after the cluster formed answers 421 until caught up.
        cluster
            .wait_caught_up(follower, Duration::from_secs(60))
            .await?;
        let mut session = Session::open(cluster.node(follower).smtp_addr()).await?;
        let line = format!("{}\r\n", "x".repeat(1022));
        let content = line.repeat(24 * 1024);
        let started = Instant::now();
        let (code, text) = session.message_with("large", &content).await?;
        println!(
            "t61: a {} MiB message: {text} in {} ms",
            content.len() >> 20,
            started.elapsed().as_millis()
        );
        ensure!(code == 250, "{text}");
        let (code, text) = session.message("small-after").await?;
        ensure!(code == 250, "{text}");
        let ids = cluster.ids();
        cluster
            .wait_converged(&ids, Duration::from_secs(120))
            .await?;
        for id in ids {
            let events = cluster.events_all(id).await?;
            let large = events
                .iter()
                .find(|e| e.field("email")["message_id"] == "<large@t61.test>")
                .with_context(|| format!("node {id} lacks the large message"))?;
            let size = large.field("size").as_u64().unwrap_or(0);
            ensure!(size > content.len() as u64, "node {id}: size {size}");
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        cluster.dump_logs();
        return Err(e);
    }
    cluster.shutdown().await
}

async fn run(cluster: &mut bulwark_cluster_tests::Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let keep = cluster.others(leader)[0];
    cluster
        .wait_caught_up(keep, Duration::from_secs(60))
        .await?;
    let addr = cluster.node(keep).smtp_addr();
    let mut session = Session::open(addr).await?;
    let (code, text) = session.message("before").await?;
    ensure!(code == 250, "with a quorum: {text}");
    let before_id = text.rsplit(' ').next().unwrap_or_default().to_string();
    let trace_url = format!(
        "{}/v1/messages/{before_id}?reason=t61",
        cluster.api().base_url(keep)?
    );
    let keep_token = cluster.api().token(keep)?;
    // Every node has applied what was accepted (a follower applies a commit after
    // the leader acknowledges it), so that the trace below is refused for want of a
    // quorum to record the read, not because the node knows nothing of the message.
    cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(10))
        .await?;

    for id in cluster.others(keep) {
        cluster.kill(id)?;
    }
    let started = Instant::now();
    let (code, text) = session.message("during").await?;
    let waited = started.elapsed();
    println!(
        "t61: without a quorum after {} ms: {text}",
        waited.as_millis()
    );
    ensure!(
        code == 451 && text.starts_with("451 4.3.0"),
        "expected 451 4.3.0, got {text:?}"
    );
    ensure!(waited < Duration::from_secs(10), "the 451 took {waited:?}");
    // A read that cannot be recorded is not served.
    let refused = cluster
        .api()
        .http()
        .get(&trace_url)
        .bearer_auth(&keep_token)
        .send()
        .await?;
    let status = refused.status().as_u16();
    let body = refused.text().await?;
    ensure!(status == 503, "a trace without a quorum: {status} {body}");
    ensure!(!body.contains("<before@t61.test>"), "{body}");
    // The session is still usable, and a new one can be opened.
    session.cmd("NOOP", 250).await?;
    let mut second = Session::open(addr).await?;
    second.cmd("QUIT", 221).await?;

    for id in cluster.ids() {
        if id != keep {
            cluster.restart(id).await?;
        }
    }
    // The sender retries the same message until it is accepted (bounded).
    let deadline = Instant::now() + Duration::from_secs(90);
    let accepted_id = loop {
        ensure!(Instant::now() < deadline, "the retry was never accepted");
        let (code, text) = match session.message("during").await {
            Ok(reply) => reply,
            Err(e) => {
                println!("t61: retry: {e:#}; reconnecting");
                session = Session::open(addr).await?;
                continue;
            }
        };
        match code {
            250 => break text.rsplit(' ').next().unwrap_or_default().to_string(),
            451 => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => bail!("unexpected reply to the retry: {text}"),
        }
    };
    println!("t61: retry accepted as {accepted_id}");

    // With the quorum back the trace is served, and on record once, with its reason.
    let served = cluster
        .api()
        .http()
        .get(&trace_url)
        .bearer_auth(&keep_token)
        .send()
        .await?;
    ensure!(
        served.status() == 200,
        "a trace with a quorum: {}",
        served.status()
    );
    let ids = cluster.ids();
    cluster
        .wait_converged(&ids, Duration::from_secs(120))
        .await?;
    for id in cluster.ids() {
        let reads: Vec<_> = cluster
            .events_all(id)
            .await?
            .into_iter()
            .filter(|e| e.kind == "access.read")
            .collect();
        ensure!(
            reads.len() == 1,
            "node {id}: {} reads recorded",
            reads.len()
        );
        ensure!(reads[0].field("message_id") == before_id.as_str());
        ensure!(reads[0].field("event")["reason"] == "t61");
    }
    let mut reference = None;
    for id in ids {
        let events = cluster.events_all(id).await?;
        let received: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "message.received")
            .collect();
        let tokens: Vec<String> = received
            .iter()
            .filter_map(|e| e.field("email")["message_id"].as_str().map(str::to_string))
            .collect();
        let during = tokens.iter().filter(|t| *t == "<during@t61.test>").count();
        ensure!(
            tokens.iter().filter(|t| *t == "<before@t61.test>").count() == 1,
            "node {id}: {tokens:?}"
        );
        // The entry proposed without a quorum may still commit later (the 451 says
        // "not known to be stored", not "discarded"), so one or two copies.
        ensure!(
            (1..=2).contains(&during),
            "node {id}: {during} copies of the retried message"
        );
        ensure!(
            received
                .iter()
                .any(|e| e.field("message_id") == accepted_id.as_str()),
            "node {id} lacks the acknowledged {accepted_id}"
        );
        println!(
            "t61: node {id}: {} messages, {during} of the retried one",
            received.len()
        );
        let ids: Vec<String> = received
            .iter()
            .map(|e| {
                e.field("message_id")
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        match &reference {
            None => reference = Some(ids),
            Some(r) => ensure!(r == &ids, "node {id} holds different messages"),
        }
    }
    Ok(())
}

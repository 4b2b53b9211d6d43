//! t83: `bulwark cluster` run as an operator would, against a real three-node cluster
//! (and a fourth and fifth node). Bad input first: no token (2), a node that is not a
//! member (1), an address that is not `host:port` (1). Then `status` through a
//! follower (the leader's view: every voter answering, one failure survived), a
//! fourth node added (waited for until it caught up; added again, waited for again;
//! at another address, refused) and promoted, a follower replaced
//! by a fifth node (add, catch up, promote, remove), the fifth removed. With three
//! voters left: removing one that answers is refused (3: it would leave no room for a
//! failure); one voter killed, removing another is refused (3: the two left would not
//! be a majority that answers) and so is removing the leader; with `--force` the
//! removal is made, and waits for the killed voter to come back to commit.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::Value;

/// The longest one command may take (an add waits for the node to catch up).
const WAIT: Duration = Duration::from_secs(120);

/// `bulwark cluster ARGS` against node `via`'s API with its admin token.
fn command(cluster: &Cluster, via: u64, args: &[&str]) -> Result<tokio::process::Command> {
    let token = cluster.node(via).data_dir().join("admin.token");
    command_with(cluster, via, &token, args)
}

/// `bulwark cluster ARGS` against node `via`'s API with the token in `token`.
fn command_with(
    cluster: &Cluster,
    via: u64,
    token: &Path,
    args: &[&str],
) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(cluster.binary());
    cmd.arg("cluster")
        .args(args)
        .arg("--api")
        .arg(cluster.api().base_url(via)?)
        .arg("--token-file")
        .arg(token)
        .kill_on_drop(true);
    Ok(cmd)
}

async fn finish(cmd: &mut tokio::process::Command) -> Result<Output> {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .context("bulwark cluster did not finish in time")?
        .context("running bulwark cluster")
}

/// Runs `bulwark cluster ARGS` through node `via`; checks its exit code.
async fn run(cluster: &Cluster, via: u64, args: &[&str], code: i32) -> Result<(String, String)> {
    let out = finish(&mut command(cluster, via, args)?).await?;
    said(args, out, code)
}

/// The output of a command that exited with `code`, or why not.
fn said(args: &[&str], out: Output, code: i32) -> Result<(String, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(code),
        "bulwark cluster {}: exit {:?}, not {code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" "),
        out.status.code()
    );
    println!(
        "$ bulwark cluster {} → {code}\n{stdout}{stderr}",
        args.join(" ")
    );
    Ok((stdout, stderr))
}

/// `bulwark cluster status --json` through `via`.
async fn status(cluster: &Cluster, via: u64) -> Result<Value> {
    let (out, _) = run(cluster, via, &["status", "--json"], 0).await?;
    serde_json::from_str(&out).context("status --json")
}

/// The voters in a `status --json`.
fn voters(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["cluster"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["voter"] == Value::Bool(true))
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ids.sort();
    ids
}

/// Waits until the leader's view, read through `via`, says member `id` is
/// `healthy` (or not).
async fn wait_health(cluster: &Cluster, via: u64, id: u64, healthy: bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(cluster, via).await?;
        let member = status["cluster"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == id)
            .cloned();
        if member.as_ref().is_some_and(|m| m["healthy"] == healthy) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("node {id} is not healthy={healthy} in the leader's view: {status}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn scenario(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let others = cluster.others(leader);
    let (f1, f2) = (others[0], others[1]);
    for i in 0..10 {
        cluster.post_note(leader, &format!("before {i}")).await?;
    }

    // Bad input: nothing changes.
    let missing = Path::new("/nonexistent/admin.token");
    let no_token = finish(&mut command_with(
        cluster,
        f1,
        missing,
        &["remove", "--id", &f2.to_string()],
    )?)
    .await?;
    let (_, err) = said(&["remove", "(no token)"], no_token, 2)?;
    ensure!(err.contains("reading the token"), "{err}");
    let (_, err) = run(cluster, f1, &["promote", "--id", "9"], 1).await?;
    ensure!(err.contains("node 9 is not a member"), "{err}");
    let (_, err) = run(cluster, f1, &["remove", "--id", "9"], 1).await?;
    ensure!(err.contains("node 9 is not a member"), "{err}");
    let (_, err) = run(
        cluster,
        f1,
        &["add", "--id", "4", "--addr", "no port", "--no-wait"],
        1,
    )
    .await?;
    ensure!(err.contains("not host:port"), "{err}");

    // Status through a follower: the leader's view.
    let (table, _) = run(cluster, f1, &["status"], 0).await?;
    ensure!(
        table.starts_with(&format!("leader {leader}, term "))
            && table.contains("3 voter(s), 0 learner(s); feature level ")
            && table.contains("; 3 of 3 voters answer, 2 needed: survives 1 more failure(s)")
            && table.contains("ID  ROLE")
            && table.contains(&format!("{leader}   leader")),
        "status:\n{table}"
    );
    let json = status(cluster, f1).await?;
    ensure!(
        json["view"] == "leader" && json["quorum"]["tolerates"] == 1 && voters(&json) == [1, 2, 3],
        "status --json: {json}"
    );

    // A fourth node added, waited for, promoted.
    cluster.restart(4).await?;
    let addr4 = cluster.node(4).cluster_addr().to_string();
    let (_, err) = run(cluster, f1, &["add", "--id", "4", "--addr", &addr4], 0).await?;
    ensure!(err.contains("node 4 has caught up"), "{err}");
    // Run again: it waits for the learner again; at another address, refused.
    let (_, err) = run(cluster, f1, &["add", "--id", "4", "--addr", &addr4], 0).await?;
    ensure!(err.contains("node 4 is already a learner"), "{err}");
    let elsewhere = ["add", "--id", "4", "--addr", "127.0.0.1:9"];
    let (_, err) = run(cluster, f1, &elsewhere, 1).await?;
    ensure!(err.contains("already a member"), "{err}");
    run(cluster, leader, &["promote", "--id", "4"], 0).await?;
    ensure!(voters(&status(cluster, 4).await?) == [1, 2, 3, 4]);

    // A follower replaced by a fifth node, in the safe order.
    cluster.restart(5).await?;
    let addr5 = cluster.node(5).cluster_addr().to_string();
    let (_, err) = run(
        cluster,
        4,
        &[
            "replace",
            "--old",
            &f2.to_string(),
            "--new",
            "5",
            "--addr",
            &addr5,
        ],
        0,
    )
    .await?;
    for step in 1..=4 {
        ensure!(err.contains(&format!("step {step}/4")), "{err}");
    }
    let mut expected = vec![leader, f1, 4, 5];
    expected.sort();
    ensure!(voters(&status(cluster, leader).await?) == expected);
    cluster.terminate(f2).await?;

    // Four voters to three, all answering: safe.
    run(cluster, leader, &["remove", "--id", "5"], 0).await?;
    cluster.terminate(5).await?;
    // Three to two: refused, the cluster would survive no failure.
    let (_, err) = run(cluster, leader, &["remove", "--id", "4"], 3).await?;
    ensure!(
        err.contains("survives one failure now, none after"),
        "{err}"
    );

    // One voter down: removing another, or the leader, would lose the quorum.
    cluster.kill(4)?;
    wait_health(cluster, f1, 4, false).await?;
    let (table, _) = run(cluster, f1, &["status"], 0).await?;
    ensure!(
        table.contains("2 of 3 voters answer, 2 needed: survives 0 more failure(s)")
            && table.contains("unreachable"),
        "status:\n{table}"
    );
    let (_, err) = run(cluster, f1, &["remove", "--id", &f1.to_string()], 3).await?;
    ensure!(
        err.contains("1 of 2 voters") && err.contains("--force"),
        "{err}"
    );
    run(cluster, f1, &["remove", "--id", &leader.to_string()], 3).await?;
    let mut still = vec![leader, f1, 4];
    still.sort();
    ensure!(voters(&status(cluster, f1).await?) == still);

    // Forced: made, but it commits only once node 4 is back.
    let mut forced = command(
        cluster,
        leader,
        &["remove", "--id", &f1.to_string(), "--force"],
    )?;
    let forced = tokio::spawn(async move { finish(&mut forced).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        !forced.is_finished(),
        "the forced removal committed without node 4"
    );
    cluster.restart(4).await?;
    let (_, err) = said(&["remove", "--force"], forced.await??, 0)?;
    ensure!(err.contains("--force: "), "{err}");
    let mut left = vec![leader, 4];
    left.sort();
    ensure!(voters(&wait_health(cluster, leader, 4, true).await?) == left);
    cluster.terminate(f1).await?;
    cluster.post_note(4, "after the changes").await?;
    cluster
        .wait_converged(&left, Duration::from_secs(30))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t83_cluster_commands_change_membership_and_refuse_to_lose_the_quorum() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .standby(2)
        .name("t83")
        .start()
        .await?;
    let result = scenario(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

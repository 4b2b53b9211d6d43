//! t82: cluster membership through the API. A fourth node, started with the members
//! as its peers, is added as a learner through a follower (the call goes on to the
//! leader), catches up, and is promoted to voter; a read with `?consistent=true` on it
//! sees a write acknowledged just before through another node; a member is removed and
//! stopped; then the leader is killed and the two voters left, the new node among
//! them, elect a leader and go on. Refused: an operator's token, promoting a node that
//! is not a member, a malformed address, adding a member twice; each change and
//! refusal is an `api.action` event.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::{json, Value};

/// `method path` on node `id` with the admin token (and a JSON body): status and body.
async fn call(
    cluster: &Cluster,
    id: u64,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    call_as(cluster, id, &cluster.api().token(id)?, method, path, body).await
}

async fn call_as(
    cluster: &Cluster,
    id: u64,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let api = cluster.api();
    let url = format!("{}{path}", api.base_url(id)?);
    let request = match method {
        "GET" => api.http().get(url),
        "DELETE" => api.http().delete(url),
        _ => api.http().post(url),
    };
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.bearer_auth(token).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Voters and learners as node `id` sees them.
async fn members(cluster: &Cluster, id: u64) -> Result<(Vec<u64>, Vec<u64>)> {
    let status = cluster.cluster_status(id).await?;
    let voters = status.members.iter().filter(|m| m.voter).map(|m| m.id);
    let learners = status.members.iter().filter(|m| !m.voter).map(|m| m.id);
    Ok((voters.collect(), learners.collect()))
}

/// Waits until every node of `ids` sees exactly these voters and learners.
async fn wait_members(
    cluster: &Cluster,
    ids: &[u64],
    voters: &[u64],
    learners: &[u64],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let seen = members(cluster, *id).await?;
            if seen == (voters.to_vec(), learners.to_vec()) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {id} sees voters and learners {seen:?}, not {voters:?} {learners:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster.others(leader)[0];
    for i in 0..20 {
        cluster.post_note(leader, &format!("before {i}")).await?;
    }
    cluster.restart(4).await?;
    let addr = cluster.node(4).cluster_addr().to_string();

    // Refusals first: nothing changes.
    let (code, body) = call(
        cluster,
        follower,
        "POST",
        "/v1/cluster/members/4/promote",
        None,
    )
    .await?;
    ensure!(code == 404, "promoting a non-member: {code} {body}");
    let (code, body) = call(
        cluster,
        follower,
        "POST",
        "/v1/cluster/members",
        Some(json!({ "id": 4, "addr": "no port" })),
    )
    .await?;
    ensure!(code == 400, "a malformed address: {code} {body}");
    let (code, made) = call(
        cluster,
        leader,
        "POST",
        "/v1/tokens",
        Some(json!({ "name": "ops", "role": "operator" })),
    )
    .await?;
    ensure!(code == 201 || code == 200, "token: {code} {made}");
    let operator = made["token"].as_str().context("token")?.to_string();
    let (code, body) = call_as(
        cluster,
        leader,
        &operator,
        "POST",
        "/v1/cluster/members",
        Some(json!({ "id": 4, "addr": addr })),
    )
    .await?;
    ensure!(code == 403, "an operator adding a member: {code} {body}");
    wait_members(cluster, &[1, 2, 3], &[1, 2, 3], &[]).await?;

    // Added as a learner through a follower.
    let (code, body) = call(
        cluster,
        follower,
        "POST",
        "/v1/cluster/members",
        Some(json!({ "id": 4, "addr": addr })),
    )
    .await?;
    ensure!(code == 200, "adding node 4: {code} {body}");
    let (code, body) = call(
        cluster,
        leader,
        "POST",
        "/v1/cluster/members",
        Some(json!({ "id": 4, "addr": addr })),
    )
    .await?;
    ensure!(code == 409, "adding node 4 twice: {code} {body}");
    wait_members(cluster, &[1, 2, 3, 4], &[1, 2, 3], &[4]).await?;
    println!("node 4 is a learner on every node");

    // Promoted once caught up (the leader refuses while it is far behind).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call(cluster, 4, "POST", "/v1/cluster/members/4/promote", None).await?;
        match code {
            200 => break,
            409 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => bail!("promoting node 4: {code} {body}"),
        }
    }
    wait_members(cluster, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]).await?;
    println!("node 4 is a voter on every node");

    // A linearizable read on the new node sees a write acknowledged through another.
    let posted = cluster.post_note(leader, "after promotion").await?;
    let response = cluster
        .api()
        .http()
        .get(format!(
            "{}/v1/events?type=audit.note&consistent=true&after={}",
            cluster.api().base_url(4)?,
            posted.seq - 1
        ))
        .bearer_auth(cluster.api().token(4)?)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "consistent read: {}",
        response.status()
    );
    let applied: u64 = response
        .headers()
        .get("bulwark-applied-index")
        .context("no bulwark-applied-index header")?
        .to_str()?
        .parse()?;
    let page: Value = response.json().await?;
    ensure!(
        page["events"][0]["seq"] == json!(posted.seq),
        "the consistent read at index {applied} missed seq {}: {page}",
        posted.seq
    );
    let (code, body) = call(cluster, 4, "GET", "/v1/events?consistent=maybe", None).await?;
    ensure!(code == 400, "consistent=maybe: {code} {body}");

    // A member removed through the new node, then stopped.
    let removed = cluster
        .others(leader)
        .into_iter()
        .find(|id| *id != 4)
        .context("a follower other than 4")?;
    let (code, body) = call(
        cluster,
        4,
        "DELETE",
        &format!("/v1/cluster/members/{removed}"),
        None,
    )
    .await?;
    ensure!(code == 200, "removing node {removed}: {code} {body}");
    let mut voters: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    voters.sort();
    wait_members(cluster, &voters, &voters, &[]).await?;
    cluster.terminate(removed).await?;
    println!("node {removed} removed and stopped; voters {voters:?}");

    // The leader killed: the two voters left, node 4 among them, elect one and go on.
    cluster.kill(leader)?;
    let (new_leader, took) = cluster
        .wait_for_new_leader(leader, Duration::from_secs(30))
        .await?;
    println!("leader {leader} killed: node {new_leader} leads after {took:?}");
    let survivors: Vec<u64> = voters.iter().copied().filter(|id| *id != leader).collect();
    ensure!(survivors.contains(&4), "survivors {survivors:?}");
    cluster.post_note(4, "after the leader died").await?;
    cluster
        .wait_converged(&survivors, Duration::from_secs(30))
        .await?;

    let actions: Vec<(String, String)> = cluster
        .events_all(4)
        .await?
        .iter()
        .filter(|e| {
            e.field("action")
                .as_str()
                .is_some_and(|a| a.starts_with("cluster."))
        })
        .map(|e| {
            (
                e.field("action").as_str().unwrap_or("").to_string(),
                e.field("event")["outcome"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let pair = |a: &str, o: &str| (a.to_string(), o.to_string());
    let refused_promotion = pair("cluster.promote", "failure");
    // Promotions refused while node 4 caught up are recorded too.
    let after_first: Vec<(String, String)> = actions
        .iter()
        .skip(1)
        .filter(|a| **a != refused_promotion)
        .cloned()
        .collect();
    ensure!(
        actions.first() == Some(&refused_promotion)
            && after_first
                == [
                    pair("cluster.add_learner", "success"),
                    pair("cluster.add_learner", "failure"),
                    pair("cluster.promote", "success"),
                    pair("cluster.remove", "success"),
                ],
        "api.action events: {actions:?}"
    );
    let report = cluster.api().verify(4).await?;
    ensure!(report.ok, "verify on node 4: {report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t82_a_node_joins_as_learner_becomes_voter_and_survives_the_leader() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .standby(1)
        .name("t82")
        .start()
        .await?;
    let result = run(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

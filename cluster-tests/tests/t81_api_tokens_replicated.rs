//! t81: API tokens are replicated. A token made through a follower's API (forwarded
//! to the leader) works on every node with its role's rights and no more; revoked
//! through the leader, it stops working on every node. The first leader's admin token
//! file is the cluster's one bootstrap admin, `admin`, on every node; the other
//! nodes' own files work on their node only, recorded as `admin@nodeN`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};
use serde_json::{json, Value};

/// The status of `method path` on node `id` with `token`.
async fn status(cluster: &Cluster, id: u64, token: &str, method: &str, path: &str) -> Result<u16> {
    let api = cluster.api();
    let url = format!("{}{path}", api.base_url(id)?);
    let request = match method {
        "GET" => api.http().get(url),
        _ => api.http().post(url).body("Subject: x\r\n\r\nx\r\n"),
    };
    Ok(request.bearer_auth(token).send().await?.status().as_u16())
}

/// Waits until `method path` answers `want` on every node.
async fn everywhere(
    cluster: &Cluster,
    token: &str,
    method: &str,
    path: &str,
    want: u16,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in cluster.ids() {
        loop {
            let got = status(cluster, id, token, method, path).await?;
            if got == want {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {id}: {method} {path} answered {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster.others(leader)[0];
    let api = cluster.api();

    // One node's file token is the bootstrap admin and works everywhere; each other
    // node's works on its own node only.
    let mut bootstrap = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while bootstrap.is_none() {
        for id in cluster.ids() {
            let token = api.token(id)?;
            let mut everywhere = true;
            for other in cluster.ids() {
                everywhere &= status(cluster, other, &token, "GET", "/v1/tokens").await? == 200;
            }
            if everywhere {
                ensure!(bootstrap.is_none(), "two bootstrap admins");
                bootstrap = Some(id);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no node's token works on every node"
        );
        if bootstrap.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let bootstrap = bootstrap.expect("found above");
    for id in cluster.others(bootstrap) {
        let own = api.token(id)?;
        ensure!(status(cluster, id, &own, "GET", "/v1/tokens").await? == 200);
        for other in cluster.others(id) {
            let got = status(cluster, other, &own, "GET", "/v1/tokens").await?;
            ensure!(got == 401, "node {id}'s own token on node {other}: {got}");
        }
    }
    println!("node {bootstrap}'s admin token is the cluster's bootstrap admin");
    let made: Value = api
        .http()
        .post(format!("{}/v1/tokens", api.base_url(follower)?))
        .bearer_auth(api.token(follower)?)
        .json(&json!({ "name": "splunk", "role": "siem" }))
        .send()
        .await?
        .json()
        .await?;
    let token = made["token"]
        .as_str()
        .with_context(|| format!("{made}"))?
        .to_string();

    everywhere(cluster, &token, "GET", "/v1/events?limit=1", 200).await?;
    everywhere(cluster, &token, "POST", "/v1/bayes/spam", 403).await?;
    println!("the SIEM token reads events and may not train, on every node");

    let revoked = api
        .http()
        .delete(format!("{}/v1/tokens/splunk", api.base_url(leader)?))
        .bearer_auth(api.token(bootstrap)?)
        .send()
        .await?
        .status();
    ensure!(revoked == 200, "revocation: {revoked}");
    everywhere(cluster, &token, "GET", "/v1/events?limit=1", 401).await?;
    println!("revoked through the leader: refused on every node");

    let maker = if follower == bootstrap {
        "admin".to_string()
    } else {
        format!("admin@node{follower}")
    };
    for id in cluster.ids() {
        let tokens: Vec<(String, String, String)> = cluster
            .events_all(id)
            .await?
            .iter()
            .filter(|e| e.kind.starts_with("token."))
            .map(|e| {
                let name = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    e.kind.clone(),
                    name(&e.field("token")["name"]),
                    name(&e.user.clone().unwrap_or_default()["name"]),
                )
            })
            .collect();
        let want = [
            ("token.created", "admin", "bootstrap"),
            ("token.created", "splunk", maker.as_str()),
            ("token.revoked", "splunk", "admin"),
        ];
        ensure!(
            tokens
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
                .eq(want),
            "node {id}: {tokens:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t81_api_tokens_work_on_every_node_and_revocation_reaches_them_all() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3).name("t81").start().await?;
    let result = run(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    cluster.shutdown().await?;
    result
}

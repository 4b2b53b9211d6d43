//! t21: a follower that comes back never deposes a healthy leader (the pre-vote of
//! `consensus/src/election.rs`). Under write load, a follower is paused (SIGSTOP) for
//! several election timeouts and let go, then killed with -9 and restarted: through
//! both, and for a while after each, every node names the same leader at the same
//! term, and writes go on being acknowledged.
//!
//! Without the pre-vote (openraft 0.9's own timer), the follower, finding its timeout
//! long past, stands at a higher term at once; the leader sees that term in the
//! follower's answer to its next entries and steps down.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bulwark_cluster_tests::load::{write_notes, LoadControl, LoadSpec};
use bulwark_cluster_tests::{Cluster, ClusterBuilder};

/// How long the follower stays paused: several of its election timeouts.
const PAUSED: Duration = Duration::from_secs(4);
/// How long the leader and term are watched after the follower is back.
const WATCHED: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_returning_follower_never_deposes_the_leader() -> Result<()> {
    let mut cluster = ClusterBuilder::new(3)
        .name("t21-no-disruption")
        .start()
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let follower = cluster.others(leader)[0];
    let control = LoadControl::new();
    let load = tokio::spawn(write_notes(
        cluster.client(),
        LoadSpec::until_stopped(8, "t21-note"),
        control.clone(),
    ));
    control.wait_acked(100, Duration::from_secs(120)).await?;
    let term = term_of(&cluster, leader).await?;
    println!("t21: node {leader} leads at term {term}; node {follower} will come back twice");

    cluster.pause(follower, true)?;
    let paused = watch(&cluster, &cluster.others(follower), leader, term, PAUSED).await;
    cluster.pause(follower, false)?;
    paused?;
    let came_back = Back {
        leader,
        term,
        follower,
    };
    came_back
        .unchanged(&cluster, &control, &format!("paused {PAUSED:?} and let go"))
        .await?;

    cluster.kill(follower)?;
    cluster.start_node(follower)?;
    cluster
        .wait_caught_up(follower, Duration::from_secs(60))
        .await?;
    came_back
        .unchanged(&cluster, &control, "killed with -9 and restarted")
        .await?;

    control.stop();
    let report = load.await?;
    ensure!(!report.hit_deadline, "load hit its overall deadline");
    cluster.shutdown().await
}

/// The leader and its term before `follower` went away.
struct Back {
    leader: u64,
    term: u64,
    follower: u64,
}

impl Back {
    /// For [`WATCHED`] after the follower came back (`how`): every node names the
    /// same leader at the same term, and writes are acknowledged meanwhile.
    async fn unchanged(&self, cluster: &Cluster, control: &LoadControl, how: &str) -> Result<()> {
        let Back {
            leader,
            term,
            follower,
        } = *self;
        let acked = control.acked();
        watch(cluster, &cluster.ids(), leader, term, WATCHED).await?;
        ensure!(
            control.acked() > acked,
            "no write acknowledged in the {WATCHED:?} after node {follower} was {how}"
        );
        println!(
            "t21: node {follower} {how}: node {leader} still leads at term {term} on every \
             node, {} writes acknowledged meanwhile",
            control.acked() - acked
        );
        Ok(())
    }
}

async fn term_of(cluster: &Cluster, id: u64) -> Result<u64> {
    Ok(cluster.cluster_status(id).await?.term)
}

/// For `how_long`, every 50 ms: each of `ids` that answers names `leader` at `term`
/// (a node that does not answer, restarting, is passed over), and `leader` says it
/// leads.
async fn watch(
    cluster: &Cluster,
    ids: &[u64],
    leader: u64,
    term: u64,
    how_long: Duration,
) -> Result<()> {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let (statuses, _) = cluster.statuses(ids).await;
        for (id, s) in &statuses {
            let leads = s.leader_id == Some(leader) && s.term == term;
            let knows_none = s.leader_id.is_none() && s.term == term && *id != leader;
            if !(leads || knows_none) {
                bail!(
                    "node {id} says leader {:?} at term {} ({}), expected node {leader} at term \
                     {term}",
                    s.leader_id,
                    s.term,
                    s.state
                );
            }
            if *id == leader && s.state != "Leader" {
                bail!("node {leader} no longer leads: {}", s.state);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

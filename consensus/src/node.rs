//! A running Raft node: storage opened, Raft started, network served, cluster
//! bootstrapped, proposer ready.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_storage::{layout, LogStore as Store, SnapshotStore, StateDir, StateStore};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::election::{Driver, LeaderContact, Timing};
use crate::leader::{LeaderCall, LeaderCallError};
use crate::log_store::LogStore;
use crate::network::{serve, NetworkFactory, ServerContext};
use crate::state_machine::{SnapshotBuilds, StateMachine};
use crate::tls::TlsIdentity;
use crate::types::{NodeId, Raft};
use crate::{Error, Proposer};

/// Raft timing and log-retention settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// Leader heartbeat, also the AppendEntries RPC timeout in openraft 0.9.
    pub heartbeat_ms: u64,
    /// openraft's leader lease: a follower that has heard from no leader for this long
    /// (plus a margin, then a step per place among the voters) stands for election
    /// once a majority grants it a pre-vote (see `crate::election`).
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Also build one after this many bytes of entries: message bodies travel in
    /// entries, so a count alone could let the log grow to many gigabytes.
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log after a snapshot, for lagging followers.
    pub keep_logs: u64,
    /// How long a proposal may wait for a commit before the caller is told to retry.
    pub commit_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 250,
            election_timeout_ms: 1000,
            snapshot_every: 10_000,
            snapshot_log_bytes: 256 * 1024 * 1024,
            keep_logs: 1_000,
            commit_timeout_ms: 10_000,
        }
    }
}

/// How this node reaches its peers.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub listen: String,
    /// Every voter of the cluster by id, this node included.
    pub peers: BTreeMap<NodeId, String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// None: a single-node cluster with no network.
    pub cluster: Option<PeerConfig>,
    pub raft: RaftSettings,
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    /// Last log index known to be replicated to it (leader only).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's log (leader only).
    pub lag: Option<u64>,
    /// Milliseconds since it last answered the leader's heartbeats or entries (leader
    /// only; 0 for the leader itself; None too when it never answered this leader).
    pub last_contact_ms: Option<u64>,
    /// It answered the leader within two election timeouts (leader only).
    pub healthy: Option<bool>,
}

/// The node's view of the cluster.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub chain_head: String,
    pub event_count: u64,
    pub members: Vec<MemberStatus>,
}

/// What a node's status is read from: shared by the node and its peer server, which
/// answers a follower asking for the leader's view.
#[derive(Clone)]
pub(crate) struct StatusSource {
    id: NodeId,
    raft: Raft,
    state: Arc<StateDir>,
    committed: Arc<AtomicU64>,
    network: Option<NetworkFactory>,
    /// A member that answered the leader within this long is healthy.
    healthy_within: Duration,
}

impl StatusSource {
    pub(crate) fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let store = self.state.current();
        let (event_count, head) = store.chain_head();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let leads = m.current_leader == Some(self.id) && m.state == ServerState::Leader;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|matched| matched.map_or(0, |l| l.index));
                let since_contact = match (leads, *id == self.id) {
                    (false, _) => None,
                    (true, true) => Some(Duration::ZERO),
                    (true, false) => self.network.as_ref().and_then(|n| n.since_contact(*id)),
                };
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|i| last_log.saturating_sub(i)),
                    last_contact_ms: since_contact.map(|d| d.as_millis() as u64),
                    healthy: leads.then(|| since_contact.is_some_and(|d| d <= self.healthy_within)),
                }
            })
            .collect();
        let committed = self.committed.load(Ordering::Relaxed);
        ClusterStatus {
            node_id: self.id,
            state: format!("{:?}", m.state),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            // Applied entries are committed: after installing a snapshot Raft may not
            // have saved a commit index yet.
            commit_index: (committed != u64::MAX)
                .then_some(committed)
                .max(m.last_applied.map(|l| l.index)),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            chain_head: hex::encode(head),
            event_count,
            members,
        }
    }
}

/// A running node.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    state: Arc<StateDir>,
    /// The Raft log's database and the snapshots, which erasure rewrites and prunes.
    pub(crate) log: Store,
    pub(crate) snapshots: Arc<SnapshotStore>,
    pub(crate) builds: SnapshotBuilds,
    proposer: Proposer,
    /// How this node reaches the leader (None: a single-node cluster).
    network: Option<NetworkFactory>,
    committed: Arc<AtomicU64>,
    /// Set when this node, stopping, hands its leadership over.
    handing_over: Arc<AtomicBool>,
    /// Set at SIGTERM: the node no longer stands for election.
    stopping: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    status: StatusSource,
    /// Set, with what to say, when the leader says the cluster runs at a feature
    /// level above this build's ([`RaftNode::too_old`]).
    too_old: Arc<watch::Sender<Option<String>>>,
}

fn raft_config(cfg: &NodeConfig, timing: &Timing) -> Result<Config, Error> {
    let s = &cfg.raft;
    let (election_timeout_min, election_timeout_max) = timing.openraft_range();
    let config = Config {
        cluster_name: "bulwark".into(),
        heartbeat_interval: s.heartbeat_ms,
        election_timeout_min,
        // Also openraft's leader lease, during which a voter refuses any candidate.
        election_timeout_max,
        // With peers, `crate::election` decides when to stand (after a pre-vote); a
        // single node elects itself at once.
        enable_elect: cfg.cluster.is_none(),
        install_snapshot_timeout: s.heartbeat_ms.max(1000),
        max_payload_entries: 1024,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_every),
        max_in_snapshot_log_to_keep: s.keep_logs,
        // Purge in steps of a quarter snapshot interval: deletes are range deletes,
        // and a follower that lost its data must find the log start purged to be
        // sent a snapshot rather than the whole history.
        purge_batch_size: (s.snapshot_every / 4).clamp(1, 1024),
        ..Default::default()
    };
    config.validate().map_err(|e| Error::Config(e.to_string()))
}

impl RaftNode {
    /// Opens storage under `data_dir`, starts Raft and, for a cluster, the network and
    /// bootstrap.
    pub async fn start(cfg: NodeConfig) -> Result<Self, Error> {
        let id = cfg.id;
        let marker = layout::restore_marker(&cfg.data_dir);
        if marker.exists() {
            return Err(Error::Backup(format!(
                "{} exists: a restore into this data directory did not finish; empty the \
                 directory and restore again",
                marker.display()
            )));
        }
        let log_dir = layout::raft_log_dir(&cfg.data_dir);
        let log = Store::open(&log_dir)?;
        if !log.direct_io() {
            tracing::info!(
                dir = %log_dir.display(),
                "the Raft log's filesystem refuses direct I/O: its flushes go through the page cache"
            );
        }
        let fresh = log.last()?.is_none() && log.get_meta("vote")?.is_none();
        let state = Arc::new(StateDir::open(&layout::state_root(&cfg.data_dir))?);
        let (supported, active) = (crate::feature::supported(), state.current().feature_level());
        if active > supported {
            return Err(Error::TooOld(bulwark_storage::feature::too_old(
                supported, active,
            )));
        }
        let too_old = Arc::new(watch::channel(None).0);
        let snapshots = Arc::new(SnapshotStore::open(&layout::snapshots_dir(&cfg.data_dir))?);
        let log_store = LogStore::new(log.clone());
        let committed = log_store.committed_index();
        let appended = log_store.appended_bytes();
        let state_machine = StateMachine::new(state.clone(), snapshots.clone());
        let builds = state_machine.builds();
        let timing = Timing::new(&cfg.raft);
        let config = Arc::new(raft_config(&cfg, &timing)?);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let commit_timeout = Duration::from_millis(cfg.raft.commit_timeout_ms);
        let handing_over = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));

        let status_of = |raft: &Raft, network: Option<NetworkFactory>| StatusSource {
            id,
            raft: raft.clone(),
            state: state.clone(),
            committed: committed.clone(),
            network,
            healthy_within: Duration::from_millis(2 * cfg.raft.election_timeout_ms),
        };
        let (raft, network) = match &cfg.cluster {
            None => {
                let tls_less = NetworkFactory::disconnected();
                let raft = Raft::new(id, config, tls_less, log_store, state_machine)
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?;
                if !raft
                    .is_initialized()
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?
                {
                    let members = BTreeMap::from([(id, BasicNode::new(""))]);
                    raft.initialize(members)
                        .await
                        .map_err(|e| Error::Raft(e.to_string()))?;
                }
                (raft, None)
            }
            Some(peers) => {
                let tls = TlsIdentity::load(&peers.ca, &peers.cert, &peers.key)?;
                if tls.node_id != id {
                    return Err(Error::Config(format!(
                        "certificate {} is for node {}, this is node {id}",
                        peers.cert.display(),
                        tls.node_id
                    )));
                }
                if !peers.peers.contains_key(&id) {
                    return Err(Error::Config(format!(
                        "node {id} is not among cluster.peers"
                    )));
                }
                let network = NetworkFactory::new(tls.client.clone());
                let raft = Raft::new(id, config, network.clone(), log_store, state_machine)
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?;
                let listener =
                    TcpListener::bind(&peers.listen)
                        .await
                        .map_err(|source| Error::Listen {
                            addr: peers.listen.clone(),
                            source,
                        })?;
                // A node starting with no log and no vote may be a member that lost its
                // data: it must not vote until it has caught up again.
                let abstain = Arc::new(AtomicBool::new(fresh));
                let contact = LeaderContact::new();
                let ctx = ServerContext {
                    raft: raft.clone(),
                    acceptor: tokio_rustls::TlsAcceptor::from(tls.server.clone()),
                    peers: Arc::new(peers.peers.keys().copied().collect::<BTreeSet<_>>()),
                    snapshots: snapshots.clone(),
                    abstain: abstain.clone(),
                    handing_over: handing_over.clone(),
                    stopping: stopping.clone(),
                    status: status_of(&raft, Some(network.clone())),
                    too_old: too_old.clone(),
                    network: network.clone(),
                    state: state.clone(),
                    contact: contact.clone(),
                    timing,
                };
                tasks.push(tokio::spawn(serve(listener, ctx, stop_rx.clone())));
                let driver = Driver {
                    id,
                    raft: raft.clone(),
                    network: network.clone(),
                    contact,
                    timing,
                    abstain: abstain.clone(),
                    stopping: stopping.clone(),
                };
                tasks.push(tokio::spawn(driver.run(stop_rx.clone())));
                tasks.push(tokio::spawn(report_waiting(
                    id,
                    raft.clone(),
                    network.clone(),
                    peers.peers.clone(),
                    stop_rx.clone(),
                )));
                tasks.push(tokio::spawn(bootstrap(
                    id,
                    raft.clone(),
                    network.clone(),
                    peers.peers.clone(),
                    stop_rx.clone(),
                )));
                if fresh {
                    tasks.push(tokio::spawn(rejoin(
                        id,
                        raft.clone(),
                        network.clone(),
                        peers.peers.clone(),
                        abstain,
                        stop_rx,
                    )));
                }
                (raft, Some(network))
            }
        };
        tasks.push(tokio::spawn(snapshot_by_bytes(
            raft.clone(),
            appended,
            cfg.raft.snapshot_log_bytes,
        )));
        let status = status_of(&raft, network.clone());
        let proposer = Proposer::start(
            raft.clone(),
            network.clone(),
            id,
            commit_timeout,
            handing_over.clone(),
            state.clone(),
        );
        tasks.push(tokio::spawn(crate::feature::raise(
            id,
            raft.clone(),
            state.clone(),
            network.clone(),
            proposer.clone(),
            stop.subscribe(),
        )));
        Ok(RaftNode {
            id,
            raft,
            state,
            log,
            snapshots,
            builds,
            proposer,
            network,
            committed,
            handing_over,
            stopping,
            stop,
            tasks,
            status,
            too_old,
        })
    }

    /// The highest feature level this node applies (its build's, unless a test
    /// lowered it).
    pub fn feature_level(&self) -> u32 {
        crate::feature::supported()
    }

    /// The cluster's active feature level, as this node's state records it.
    pub fn cluster_feature_level(&self) -> u32 {
        self.proposer.feature_level()
    }

    /// Resolves, with what to say, once the leader has told this node that the
    /// cluster runs at a feature level above this build's: the node must stop (a
    /// command it cannot apply may come next).
    pub async fn too_old(&self) -> String {
        let mut told = self.too_old.subscribe();
        let said = told
            .wait_for(Option::is_some)
            .await
            .map(|said| said.clone().unwrap_or_default());
        match said {
            Ok(said) => said,
            // The node holds the sender: it never closes while the node runs.
            Err(_) => std::future::pending().await,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The live state's directory (backups checkpoint it).
    pub(crate) fn state_dir(&self) -> &Arc<StateDir> {
        &self.state
    }

    /// The live state (event log and projections), read locally.
    pub fn state(&self) -> Arc<StateStore> {
        self.state.current()
    }

    /// Asks the leader (here or over the network) to answer `call`; see [`LeaderCall`].
    pub async fn leader_call(
        &self,
        call: LeaderCall,
        timeout: Duration,
    ) -> Result<u64, LeaderCallError> {
        crate::leader::call(
            &self.raft,
            self.network.as_ref(),
            &self.state,
            &call,
            timeout,
        )
        .await
    }

    /// Waits until this node has applied every entry committed before the call, as
    /// confirmed by the leader with a quorum: a read of the local state after this
    /// sees every write acknowledged before it started. Returns that log index.
    pub async fn linearizable_read(&self, timeout: Duration) -> Result<u64, LeaderCallError> {
        let started = Instant::now();
        let index = self.leader_call(LeaderCall::ReadIndex, timeout).await?;
        let remaining = timeout.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| {
                LeaderCallError::Unavailable(format!(
                    "not applied up to the read index {index} within {} ms",
                    timeout.as_millis()
                ))
            })?;
        Ok(index)
    }

    /// The index of the last log entry applied to this node's state (0: none yet).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// True when the node knows a leader and has applied everything it knows committed.
    pub fn is_ready(&self) -> bool {
        let status = self.status();
        status.leader_id.is_some() && status.applied_index >= status.commit_index
    }

    /// True when the node knows a leader and has applied all but at most `lag` of the
    /// entries it knows committed: under load a follower is a few entries behind at
    /// almost every moment, so [`RaftNode::is_ready`] would seldom hold there.
    pub fn is_ready_within(&self, lag: u64) -> bool {
        let (leader, applied) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (
                metrics.current_leader,
                metrics.last_applied.map_or(0, |l| l.index),
            )
        };
        let committed = match self.committed.load(Ordering::Relaxed) {
            u64::MAX => applied,
            committed => committed,
        };
        leader.is_some() && committed.saturating_sub(applied) <= lag
    }

    pub fn status(&self) -> ClusterStatus {
        self.status.status()
    }

    /// The leader's view of the cluster (this node's own if it leads, else asked of
    /// the leader over the cluster network): the only one with each member's
    /// replication and health.
    pub async fn leader_status(&self, timeout: Duration) -> Result<ClusterStatus, LeaderCallError> {
        let status = self.status();
        if status.leader_id == Some(self.id) {
            return Ok(status);
        }
        let Some(leader) = status.leader_id else {
            return Err(LeaderCallError::Unavailable(
                "this node knows no leader: the cluster may have lost its quorum".into(),
            ));
        };
        let addr = status
            .members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.addr.clone());
        let (Some(network), Some(addr)) = (&self.network, addr) else {
            return Err(LeaderCallError::Unavailable(format!(
                "leader {leader} is not a member this node can reach"
            )));
        };
        network
            .cluster_status(leader, &addr, timeout)
            .await
            .map_err(|e| LeaderCallError::Unavailable(format!("asking leader {leader}: {e}")))
    }

    /// Is this node the leader right now?
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Marks this node as stopping (call it first thing at SIGTERM): from now on it
    /// does not stand for election, and refuses to when a stopping leader asks.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.raft.runtime_config().elect(false);
    }

    /// Before this node stops: if it leads, hands the leadership to a voter that holds
    /// its whole log, so the cluster does not wait an election timeout for a new leader
    /// (Raft's leadership transfer). From the call on, nothing more is appended here
    /// (forwarded writes and membership changes are sent back to retry with the next
    /// leader, local proposals wait for it) and this node no longer stands for
    /// election. The chosen voter is told to stand at once, once it holds the last
    /// entry; in a cluster of three it wins with its own vote and this node's. A
    /// leader elected less than its lease ago refuses that vote; the candidate's
    /// higher term then makes it step down, and the candidate is asked again. A voter
    /// that cannot be asked (unreachable, an older release, stopping too) is passed
    /// over for the next. Returns the new leader, or None if this node did not lead or
    /// no leader took over within `timeout`; then heartbeats stop, so the others'
    /// leases run out and they elect a leader while this node finishes stopping.
    pub async fn hand_over_leadership(&self, timeout: Duration) -> Option<NodeId> {
        let network = self.network.as_ref()?;
        let m = self.raft.metrics().borrow().clone();
        let others = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .count();
        if m.state != ServerState::Leader || others == 0 {
            return None;
        }
        self.handing_over.store(true, Ordering::Release);
        self.raft.runtime_config().elect(false);
        let started = Instant::now();
        let deadline = started + timeout;
        // Entries proposed just before the flag commit within moments: let them, so the
        // voter asked holds the very last one.
        let settle = started + SETTLE;
        while Instant::now() < settle {
            let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
            if self.committed.load(Ordering::Relaxed) == last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut passed_over = BTreeSet::new();
        let mut stood_for: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut asked: Option<Instant> = None;
        loop {
            let m = self.raft.metrics().borrow().clone();
            if let Some(next) = m.current_leader.filter(|l| *l != self.id) {
                tracing::info!(
                    leader = next,
                    ms = started.elapsed().as_millis() as u64,
                    "leadership handed over"
                );
                return Some(next);
            }
            if Instant::now() >= deadline || m.running_state.is_err() {
                break;
            }
            if passed_over.len() >= others {
                // Every voter refused or stood in vain (a candidacy that had not
                // settled yet, say): ask them all again.
                passed_over.clear();
                stood_for.clear();
            }
            if asked.is_none_or(|at| at.elapsed() >= ASK_AGAIN) {
                if let Some((id, addr)) = next_voter(&m, self.id, &passed_over) {
                    asked = Some(Instant::now());
                    // What the voter must hold: every committed entry (once this node
                    // stepped down, entries it alone holds may never reach anyone).
                    let committed = self.committed.load(Ordering::Relaxed);
                    let last = m.last_log_index.unwrap_or(0);
                    let needed = if committed == u64::MAX {
                        last
                    } else {
                        committed.min(last)
                    };
                    match network.timeout_now(id, &addr, needed).await {
                        // A voter that stood twice without winning lacks entries the
                        // others hold (they refuse it): the next one is asked.
                        Ok(()) => {
                            let stood = stood_for.entry(id).or_insert(0);
                            *stood += 1;
                            if *stood >= 2 {
                                passed_over.insert(id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(target = id, error = %e, "handing the leadership over: trying another voter");
                            passed_over.insert(id);
                            if passed_over.len() < others {
                                asked = None;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.raft.runtime_config().heartbeat(false);
        tracing::warn!(
            ms = started.elapsed().as_millis() as u64,
            "no leader took over: heartbeats stopped, the others elect one"
        );
        None
    }

    /// Stops the network and Raft; storage closes when the last handle drops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// How long a stopping leader waits for the voter it asked to win before asking again.
const ASK_AGAIN: Duration = Duration::from_millis(500);

/// How long a stopping leader lets entries proposed before it stopped taking them
/// commit before it asks a voter to stand.
const SETTLE: Duration = Duration::from_millis(500);

/// The voter to ask to stand, other than `me` and those passed over, with its address:
/// while this node leads, the one holding most of its log; once it stepped down (for
/// the higher term of a voter that could not win at once), any.
fn next_voter(
    m: &crate::types::RaftMetrics,
    me: NodeId,
    passed_over: &BTreeSet<NodeId>,
) -> Option<(NodeId, String)> {
    let membership = m.membership_config.membership();
    let matched = |id: &NodeId| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(id).copied().flatten())
            .map_or(0, |l| l.index)
    };
    membership
        .voter_ids()
        .filter(|id| *id != me && !passed_over.contains(id))
        .max_by_key(matched)
        .and_then(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
}

/// Builds a snapshot whenever `threshold` bytes of entries were appended since the
/// last one this task asked for; openraft then purges the log up to it (keeping
/// `keep_logs` entries). Runs until the node's tasks are aborted at shutdown.
async fn snapshot_by_bytes(raft: Raft, appended: Arc<AtomicU64>, threshold: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if appended.load(Ordering::Relaxed) < threshold {
            continue;
        }
        appended.store(0, Ordering::Relaxed);
        tracing::info!(
            threshold,
            "raft log grew by the snapshot threshold: building a snapshot"
        );
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "snapshot trigger");
            return;
        }
    }
}

/// How often a node that is not part of a cluster yet says what it waits for.
const WAITING_REPORT: Duration = Duration::from_secs(5);

/// While this node is not part of a cluster, says every [`WAITING_REPORT`] which
/// peers it cannot reach and why, so an operator is not left with a node that shows
/// no members and logs nothing.
async fn report_waiting(
    id: NodeId,
    raft: Raft,
    network: NetworkFactory,
    peers: BTreeMap<NodeId, String>,
    mut stop: watch::Receiver<bool>,
) {
    let initiator = peers.keys().next().copied().unwrap_or(id);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(WAITING_REPORT) => {}
        }
        if !matches!(raft.is_initialized().await, Ok(false)) {
            return;
        }
        let mut unreachable = Vec::new();
        for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
            if let Err(e) = network.status(*peer, addr).await {
                unreachable.push(format!("node {peer} at {addr}: {e}"));
            }
        }
        let how = if initiator == id {
            "this node forms the cluster once a majority of the peers answer"
        } else {
            "the lowest-numbered peer forms the cluster"
        };
        if unreachable.is_empty() {
            tracing::info!(
                initiator,
                "not part of a cluster yet, every peer answers; {how}"
            );
        } else {
            tracing::warn!(
                unreachable = %unreachable.join("; "),
                "not part of a cluster yet, waiting for peers; {how}"
            );
        }
    }
}

/// Forms the cluster on first start: the lowest-numbered peer initialises the
/// membership once a majority of the peers (itself included) answer that they have
/// never been part of a cluster. If any peer already belongs to one, nothing is
/// initialised: this node is a member that lost its data and will be caught up by
/// the leader (through a snapshot if the log was purged).
async fn bootstrap(
    id: NodeId,
    raft: Raft,
    network: NetworkFactory,
    peers: BTreeMap<NodeId, String>,
    mut stop: watch::Receiver<bool>,
) {
    let initiator = peers.keys().next().copied() == Some(id);
    if !initiator {
        return;
    }
    let majority = peers.len() / 2 + 1;
    loop {
        match raft.is_initialized().await {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        let mut fresh = 1;
        let mut someone_initialized = false;
        for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
            match network.status(*peer, addr).await {
                Ok((true, _)) => someone_initialized = true,
                Ok((false, _)) => fresh += 1,
                Err(e) => tracing::debug!(peer, error = %e, "bootstrap: peer not answering yet"),
            }
        }
        if someone_initialized {
            tracing::info!(
                "bootstrap: a peer already belongs to the cluster; waiting to be caught up"
            );
            return;
        }
        if fresh >= majority {
            let members = peers
                .iter()
                .map(|(p, addr)| (*p, BasicNode::new(addr)))
                .collect::<BTreeMap<_, _>>();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(voters = peers.len(), "bootstrap: cluster initialised"),
                Err(e) => tracing::warn!(error = %e, "bootstrap: initialise"),
            }
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Keeps a node that started with an empty data directory out of elections until it
/// is safe for it to vote.
///
/// A member whose data was wiped has forgotten entries it helped commit. If it voted
/// at once, it could elect a peer that lacks those entries and they would be lost.
/// So it abstains until it knows which case it is in: a new cluster (a majority of
/// the peers, itself included, has never had a leader: applied index below 1) lets it
/// vote at once; an existing cluster (some peer has applied entries) makes it wait
/// until it has applied as far as the most advanced peer it heard from.
async fn rejoin(
    id: NodeId,
    raft: Raft,
    network: NetworkFactory,
    peers: BTreeMap<NodeId, String>,
    abstain: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let majority = peers.len() / 2 + 1;
    let mut target: Option<u64> = None;
    loop {
        if target.is_none() {
            let mut never_led = 1;
            for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
                match network.status(*peer, addr).await {
                    Ok((_, Some(applied))) if applied >= 1 => {
                        target = Some(target.map_or(applied, |t: u64| t.max(applied)));
                    }
                    Ok(_) => never_led += 1,
                    Err(e) => tracing::debug!(peer, error = %e, "rejoin: peer not answering"),
                }
            }
            if target.is_none() && never_led >= majority {
                abstain.store(false, Ordering::Release);
                return;
            }
            if let Some(t) = target {
                tracing::info!(
                    up_to = t,
                    "empty data directory and the cluster has entries (a node joining \
                     a cluster that just formed, or one that lost its data): not voting \
                     until caught up"
                );
            }
        }
        if let Some(t) = target {
            let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            if applied >= t {
                tracing::info!(applied, "caught up with the cluster: voting");
                abstain.store(false, Ordering::Release);
                return;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

//! The server side: accepts peers' connections and hands their requests to Raft.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_storage::{Proposal, SnapshotFile, SnapshotStore, StateDir};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::frame::{read_frame, write_frame};
use super::message::{ForwardRefused, Request, Response};
use super::NetworkFactory;
use crate::election::{LeaderContact, Timing};
use crate::node::StatusSource;
use crate::tls::node_id_of;
use crate::types::{NodeId, Raft, Snapshot, SnapshotData, SnapshotMeta, Vote};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest snapshot accepted from a peer.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// What the accept loop needs to serve peers.
#[derive(Clone)]
pub struct ServerContext {
    pub raft: Raft,
    pub acceptor: TlsAcceptor,
    /// Node ids allowed to connect besides the members of the cluster: the
    /// configured peers.
    pub peers: Arc<BTreeSet<NodeId>>,
    pub snapshots: Arc<SnapshotStore>,
    /// While true this node refuses to vote: it lost its data and has not yet caught
    /// up (see `node::rejoin`).
    pub abstain: Arc<AtomicBool>,
    /// Set while this node, stopping, hands its leadership over: forwarded writes and
    /// membership changes are sent back (their senders retry with the next leader) so
    /// the log stops growing.
    pub handing_over: Arc<AtomicBool>,
    /// Set once this node is stopping: it no longer stands for election.
    pub stopping: Arc<AtomicBool>,
    /// This node's view of the cluster, for a member that asks the leader's.
    pub(crate) status: StatusSource,
    /// Set (with what to say) when the leader tells this node the cluster runs at a
    /// feature level above this build's: the node then stops.
    pub too_old: Arc<watch::Sender<Option<String>>>,
    /// To ask a node being added which feature level it applies.
    pub network: NetworkFactory,
    /// Where the cluster's active feature level is read.
    pub state: Arc<StateDir>,
    /// When a leader was last heard from: updated here, read to answer pre-votes and
    /// by this node's own election driver.
    pub(crate) contact: Arc<LeaderContact>,
    pub(crate) timing: Timing,
}

impl ServerContext {
    /// May node `peer` talk to this one: a configured peer, or a member (a node added
    /// through the API is in the membership, not in this node's configuration).
    fn accepts(&self, peer: NodeId) -> bool {
        self.peers.contains(&peer)
            || self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&peer)
                .is_some()
    }
}

/// Accepts peer connections until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctx: ServerContext, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(tcp, &ctx, shutdown).await {
                            tracing::debug!(%remote, error = %e, "peer connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn handle(
    tcp: TcpStream,
    ctx: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let remote = tcp.peer_addr()?;
    let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let why = crate::tls::handshake_failure(&e);
            tracing::warn!(%remote, error = %why, "refused a cluster connection: TLS handshake failed");
            return Err(e);
        }
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    let peer = conn
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(node_id_of);
    let Some(peer) = peer.filter(|p| ctx.accepts(*p)) else {
        tracing::warn!(%remote, ?peer, "refused a cluster connection: certificate is not a configured peer's or a member's");
        return Ok(());
    };
    loop {
        let request: Request = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            request = read_frame(&mut conn) => request?,
        };
        let arrived = Instant::now();
        let response = match request {
            Request::Snapshot { vote, meta, files } => {
                let sent_with = vote;
                let response = receive_snapshot(&mut conn, ctx, peer, vote, meta, files).await?;
                // Installed for the leader this node follows (a deposed one is
                // answered with the higher vote).
                if matches!(&response, Response::Snapshot(Ok(r)) if r.vote <= sent_with) {
                    ctx.contact.heard(arrived);
                }
                response
            }
            other => dispatch(ctx, peer, other, arrived).await,
        };
        write_frame(&mut conn, &response).await?;
    }
}

/// Refuses a Raft message that claims to come from another node than its certificate.
fn check_sender(peer: NodeId, vote: &Vote) -> Result<(), Response> {
    match vote.leader_id().voted_for() {
        Some(claimed) if claimed == peer => Ok(()),
        claimed => Err(Response::Refused(format!(
            "certificate of node {peer} used for a message from {claimed:?}"
        ))),
    }
}

/// Answers one request of `peer`, which arrived at `arrived`.
async fn dispatch(
    ctx: &ServerContext,
    peer: NodeId,
    request: Request,
    arrived: Instant,
) -> Response {
    match request {
        Request::AppendEntries(rpc) => match check_sender(peer, &rpc.vote) {
            Ok(()) => {
                let result = ctx.raft.append_entries(rpc).await;
                // Entries or a heartbeat from the leader this node follows (a deposed
                // one is answered with the higher vote).
                if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    ctx.contact.heard(arrived);
                }
                Response::AppendEntries(result)
            }
            Err(refused) => refused,
        },
        Request::Vote(rpc) => match check_sender(peer, &rpc.vote) {
            Ok(()) if ctx.abstain.load(Ordering::Acquire) => Response::Refused(
                "empty data directory: not voting until caught up with the cluster".into(),
            ),
            Ok(()) => Response::Vote(ctx.raft.vote(rpc).await),
            Err(refused) => refused,
        },
        Request::Forward(_) if ctx.handing_over.load(Ordering::Acquire) => {
            Response::Forward(Err(ForwardRefused::NotLeader(None)))
        }
        Request::Forward(ops) => {
            Response::Forward(match ctx.raft.client_write(Proposal { ops }).await {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ForwardRefused::NotLeader(f.leader_id))
                }
                Err(e) => Err(ForwardRefused::Failed(e.to_string())),
            })
        }
        Request::Status => Response::Status {
            initialized: ctx.raft.is_initialized().await.unwrap_or(true),
            applied: ctx.raft.metrics().borrow().last_applied.map(|l| l.index),
        },
        Request::Snapshot { .. } => Response::Refused("snapshot header out of place".into()),
        Request::Leader(crate::leader::LeaderCall::Membership(_))
            if ctx.handing_over.load(Ordering::Acquire) =>
        {
            Response::Leader(Err(crate::leader::LeaderCallError::NotLeader(None)))
        }
        Request::Leader(call) => Response::Leader(
            crate::leader::answer(&ctx.raft, Some(&ctx.network), &ctx.state, &call).await,
        ),
        Request::TimeoutNow { last_log_index } => {
            Response::TimeoutNow(timeout_now(ctx, peer, last_log_index).await)
        }
        Request::ClusterStatus => Response::ClusterStatus(Box::new(ctx.status.status())),
        Request::FeatureLevel { active } => {
            let supported = crate::feature::supported();
            if active > supported {
                let said = bulwark_storage::feature::too_old(supported, active);
                tracing::error!(leader = peer, "{said}");
                ctx.too_old.send_replace(Some(said));
            }
            Response::FeatureLevel { supported }
        }
        Request::PreVote { last_log_id } => {
            let answer = crate::election::answer(
                &ctx.raft,
                &ctx.contact,
                &ctx.timing,
                &ctx.abstain,
                last_log_id,
            )
            .await;
            if let Err(why) = &answer {
                tracing::debug!(candidate = peer, %why, "pre-vote refused");
            } else {
                tracing::info!(candidate = peer, "pre-vote granted");
            }
            Response::PreVote(answer)
        }
    }
}

/// How long a node asked to stand waits for the leader's last entries to reach it.
const CATCH_UP_TO_STAND: Duration = Duration::from_secs(1);

/// Starts an election because the leader, `peer`, asked: it is stopping, and this
/// node holds its committed log up to `last_log_index` (or will within a moment). Only
/// the leader this node follows may ask, or any member while no leader is known (the
/// stopping leader stepped down after a first try failed: it asks again). Never a
/// node that is itself stopping, or still catching up after losing its data.
async fn timeout_now(ctx: &ServerContext, peer: NodeId, last_log_index: u64) -> Result<(), String> {
    let m = ctx.raft.metrics().borrow().clone();
    if m.current_leader.is_some_and(|l| l != peer) {
        return Err(format!(
            "node {peer} is not the leader this node follows ({:?})",
            m.current_leader
        ));
    }
    if ctx.stopping.load(Ordering::Acquire) {
        return Err("this node is stopping too".into());
    }
    if ctx.abstain.load(Ordering::Acquire) {
        return Err("empty data directory: not standing until caught up".into());
    }
    ctx.raft
        .wait(Some(CATCH_UP_TO_STAND))
        .log_index_at_least(Some(last_log_index), "the stopping leader's log")
        .await
        .map_err(|_| format!("the log did not reach entry {last_log_index} in time"))?;
    tracing::info!(
        from = peer,
        "the leader is stopping and hands over: starting an election"
    );
    ctx.raft.trigger().elect().await.map_err(|e| e.to_string())
}

async fn receive_snapshot(
    conn: &mut TlsStream<TcpStream>,
    ctx: &ServerContext,
    peer: NodeId,
    vote: Vote,
    meta: SnapshotMeta,
    files: Vec<SnapshotFile>,
) -> io::Result<Response> {
    if let Err(refused) = check_sender(peer, &vote) {
        return Ok(refused);
    }
    let total: u64 = files.iter().map(|f| f.len).sum();
    if total > MAX_SNAPSHOT_BYTES
        || files
            .iter()
            .any(|f| !SnapshotStore::is_safe_file_name(&f.name))
    {
        // The stream cannot be resynchronised after refusing its body: close it.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unacceptable snapshot file list",
        ));
    }
    let dir = ctx.snapshots.incoming_dir().map_err(io::Error::other)?;
    tracing::info!(from = peer, bytes = total, files = files.len(), snapshot = %meta.snapshot_id, "receiving snapshot");
    for file in &files {
        write_file(conn, &dir, file).await?;
    }
    bulwark_storage::layout::sync_dir(&dir).map_err(io::Error::other)?;
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(SnapshotData { dir: dir.clone() }),
    };
    let result = ctx.raft.install_full_snapshot(vote, snapshot).await;
    tokio::fs::remove_dir_all(&dir).await.ok();
    Ok(Response::Snapshot(result.map_err(|e| e.to_string())))
}

async fn write_file(
    conn: &mut TlsStream<TcpStream>,
    dir: &Path,
    file: &SnapshotFile,
) -> io::Result<()> {
    let path = dir.join(&file.name);
    let mut out = tokio::fs::File::create(&path).await?;
    let mut body = (&mut *conn).take(file.len);
    let copied = tokio::io::copy(&mut body, &mut out).await?;
    if copied != file.len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} cut short", file.name),
        ));
    }
    out.sync_all().await
}

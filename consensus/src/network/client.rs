//! The client side: openraft's network factory, snapshot streaming, forwarding.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_storage::{Op, OpResult, SnapshotStore};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::frame::{read_frame, write_frame};
use super::message::{ForwardRefused, Request, Response};
use crate::leader::{LeaderCall, LeaderCallError};
use crate::node::ClusterStatus;
use crate::tls::node_id_of;
use crate::types::{LogId, NodeId, Snapshot, TypeConfig, Vote};

type Conn = TlsStream<TcpStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle forwarding connections kept per leader.
const POOL_PER_PEER: usize = 8;

/// Dials peers. Cheap to clone; shared by Raft's replication streams, the proposer
/// and bootstrap.
#[derive(Clone)]
pub struct NetworkFactory {
    /// None for a single-node cluster, which never dials anyone.
    connector: Option<TlsConnector>,
    pool: Arc<Mutex<HashMap<String, Vec<Conn>>>>,
    /// When each peer last answered one of Raft's calls (on the leader: its
    /// heartbeats and entries) or took in a file of a snapshot, for the members'
    /// health in the status.
    contacts: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("talking to {addr}: {source}")]
    Network { addr: String, source: io::Error },
    #[error("{addr} refused: {reason}")]
    Refused { addr: String, reason: String },
}

impl CallError {
    /// Connected, then the connection closed without an answer: what a node of an
    /// older release does with a request it cannot decode (a variant appended after
    /// its time).
    pub(crate) fn closed_unanswered(&self) -> bool {
        matches!(
            self,
            CallError::Network { source, .. } if matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            )
        )
    }
}

impl NetworkFactory {
    pub fn new(client: Arc<rustls::ClientConfig>) -> Self {
        NetworkFactory {
            connector: Some(TlsConnector::from(client)),
            pool: Arc::default(),
            contacts: Arc::default(),
        }
    }

    /// A factory for a node without peers: every dial fails.
    pub fn disconnected() -> Self {
        NetworkFactory {
            connector: None,
            pool: Arc::default(),
            contacts: Arc::default(),
        }
    }

    /// How long ago node `id` last answered a Raft call of this node (None: never).
    pub(crate) fn since_contact(&self, id: NodeId) -> Option<Duration> {
        let contacts = self.contacts.lock().expect("contacts lock");
        contacts.get(&id).map(Instant::elapsed)
    }

    fn contacted(&self, id: NodeId) {
        let mut contacts = self.contacts.lock().expect("contacts lock");
        contacts.insert(id, Instant::now());
    }

    /// Opens a mutually authenticated connection to node `target` at `addr`, checking
    /// that the certificate presented is that node's.
    async fn connect(&self, target: NodeId, addr: &str) -> Result<Conn, CallError> {
        let unreachable = |source| CallError::Unreachable {
            addr: addr.to_string(),
            source,
        };
        let Some(connector) = &self.connector else {
            return Err(unreachable(io::Error::other(
                "single-node cluster: no peers",
            )));
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        tcp.set_nodelay(true).map_err(unreachable)?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
            .map_err(|e| {
                unreachable(io::Error::new(e.kind(), crate::tls::handshake_failure(&e)))
            })?;
        let presented = conn
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(node_id_of);
        if presented != Some(target) {
            return Err(CallError::Refused {
                addr: addr.to_string(),
                reason: format!("expected node {target}, certificate is for {presented:?}"),
            });
        }
        Ok(conn)
    }

    /// One request and its response on `conn`, within `ttl`.
    async fn exchange(
        conn: &mut Conn,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        let io = async {
            write_frame(conn, request).await?;
            read_frame::<_, Response>(conn).await
        };
        let network = |source| CallError::Network {
            addr: addr.to_string(),
            source,
        };
        let response = tokio::time::timeout(ttl, io)
            .await
            .map_err(|_| network(io::ErrorKind::TimedOut.into()))?
            .map_err(network)?;
        if let Response::Refused(reason) = response {
            return Err(CallError::Refused {
                addr: addr.to_string(),
                reason,
            });
        }
        Ok(response)
    }

    /// Sends operations to `leader` to commit.
    pub async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        ops: Vec<Op>,
        ttl: Duration,
    ) -> Result<Result<Vec<OpResult>, ForwardRefused>, CallError> {
        match self
            .ask_leader(leader, addr, &Request::Forward(ops), ttl)
            .await?
        {
            Response::Forward(result) => Ok(result),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// Sends a call only the leader can answer to `leader`.
    pub async fn leader_call(
        &self,
        leader: NodeId,
        addr: &str,
        call: LeaderCall,
        ttl: Duration,
    ) -> Result<Result<u64, LeaderCallError>, CallError> {
        match self
            .ask_leader(leader, addr, &Request::Leader(call), ttl)
            .await?
        {
            Response::Leader(result) => Ok(result),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// One request to `leader` and its response; connections are pooled per leader.
    async fn ask_leader(
        &self,
        leader: NodeId,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        let pooled = self
            .pool
            .lock()
            .expect("pool lock")
            .get_mut(addr)
            .and_then(Vec::pop);
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect(leader, addr).await?,
        };
        let response = Self::exchange(&mut conn, addr, request, ttl).await?;
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.entry(addr.to_string()).or_default();
        if idle.len() < POOL_PER_PEER {
            idle.push(conn);
        }
        Ok(response)
    }

    /// Asks `target`, which holds this leader's whole log (up to `last_log_index`), to
    /// start an election now.
    pub async fn timeout_now(
        &self,
        target: NodeId,
        addr: &str,
        last_log_index: u64,
    ) -> Result<(), CallError> {
        let mut conn = self.connect(target, addr).await?;
        let request = Request::TimeoutNow { last_log_index };
        match Self::exchange(&mut conn, addr, &request, CONNECT_TIMEOUT).await? {
            Response::TimeoutNow(Ok(())) => Ok(()),
            Response::TimeoutNow(Err(reason)) => Err(CallError::Refused {
                addr: addr.to_string(),
                reason,
            }),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// Asks `target` (the leader) for its view of the cluster: only the leader knows
    /// how far each member is replicated and when each last answered.
    pub async fn cluster_status(
        &self,
        target: NodeId,
        addr: &str,
        ttl: Duration,
    ) -> Result<ClusterStatus, CallError> {
        let mut conn = self.connect(target, addr).await?;
        match Self::exchange(&mut conn, addr, &Request::ClusterStatus, ttl).await? {
            Response::ClusterStatus(status) => Ok(*status),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// Asks member `target` which feature level it supports, telling it the
    /// cluster's (`active`).
    pub async fn feature_level(
        &self,
        target: NodeId,
        addr: &str,
        active: u32,
    ) -> Result<u32, CallError> {
        let mut conn = self.connect(target, addr).await?;
        let request = Request::FeatureLevel { active };
        match Self::exchange(&mut conn, addr, &request, CONNECT_TIMEOUT).await? {
            Response::FeatureLevel { supported } => Ok(supported),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// Asks voter `target` whether it would vote for this node, whose log ends at
    /// `last_log_id` (see `crate::election`): `Ok(Err(why))` when it would not.
    pub async fn pre_vote(
        &self,
        target: NodeId,
        addr: &str,
        last_log_id: Option<LogId>,
    ) -> Result<Result<(), String>, CallError> {
        let mut conn = self.connect(target, addr).await?;
        let request = Request::PreVote { last_log_id };
        match Self::exchange(&mut conn, addr, &request, CONNECT_TIMEOUT).await? {
            Response::PreVote(answer) => Ok(answer),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// Asks a peer whether it already belongs to a cluster, and how far it applied.
    pub async fn status(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<(bool, Option<u64>), CallError> {
        let mut conn = self.connect(target, addr).await?;
        match Self::exchange(&mut conn, addr, &Request::Status, CONNECT_TIMEOUT).await? {
            Response::Status {
                initialized,
                applied,
            } => Ok((initialized, applied)),
            other => Err(unexpected(addr, &other)),
        }
    }
}

fn unexpected(addr: &str, response: &Response) -> CallError {
    CallError::Network {
        addr: addr.to_string(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected response {response:?}"),
        ),
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            factory: self.clone(),
            target,
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

/// Raft's client to one peer; connects lazily and reconnects after any error.
pub struct PeerClient {
    factory: NetworkFactory,
    target: NodeId,
    addr: String,
    conn: Option<Conn>,
}

type RpcError = RPCError<NodeId, BasicNode, RaftError<NodeId>>;

impl PeerClient {
    async fn call(&mut self, request: Request, ttl: Duration) -> Result<Response, RpcError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self
                .factory
                .connect(self.target, &self.addr)
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?,
        };
        let response = NetworkFactory::exchange(&mut conn, &self.addr, &request, ttl)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.conn = Some(conn);
        self.factory.contacted(self.target);
        Ok(response)
    }

    fn remote(&self, e: RaftError<NodeId>) -> RpcError {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }

    fn unexpected(&self, response: &Response) -> RpcError {
        RPCError::Network(NetworkError::new(&unexpected(&self.addr, response)))
    }

    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<NodeId>, CallError> {
        let dir = snapshot.snapshot.dir.clone();
        let files = SnapshotStore::files(&dir).map_err(|e| CallError::Network {
            addr: self.addr.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let network = |source| CallError::Network {
            addr: self.addr.clone(),
            source,
        };
        let mut conn = self.factory.connect(self.target, &self.addr).await?;
        let header = Request::Snapshot {
            vote,
            meta: snapshot.meta.clone(),
            files: files.clone(),
        };
        write_frame(&mut conn, &header).await.map_err(network)?;
        for file in &files {
            let mut src = tokio::fs::File::open(dir.join(&file.name))
                .await
                .map_err(network)?;
            let copied = tokio::io::copy(&mut src, &mut conn)
                .await
                .map_err(network)?;
            if copied != file.len {
                return Err(network(io::Error::other(format!(
                    "{} changed size while sending ({} != {})",
                    file.name, copied, file.len
                ))));
            }
            // It takes the snapshot in: no heartbeat reaches it meanwhile, yet it is
            // there (a long transfer must not show it as unreachable).
            self.factory.contacted(self.target);
        }
        conn.flush().await.map_err(network)?;
        match read_frame::<_, Response>(&mut conn)
            .await
            .map_err(network)?
        {
            Response::Snapshot(Ok(resp)) => Ok(resp),
            Response::Snapshot(Err(reason)) | Response::Refused(reason) => {
                Err(CallError::Refused {
                    addr: self.addr.clone(),
                    reason,
                })
            }
            other => Err(unexpected(&self.addr, &other)),
        }
    }
}

/// Time allowed for a snapshot of `bytes`: generous, since it may be several GB.
fn snapshot_deadline(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(bytes / (10 * 1024))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            Response::AppendEntries(Ok(resp)) => Ok(resp),
            Response::AppendEntries(Err(e)) => Err(self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(Ok(resp)) => Ok(resp),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let bytes: u64 = SnapshotStore::files(&snapshot.snapshot.dir)
            .map(|files| files.iter().map(|f| f.len).sum())
            .unwrap_or(0);
        let deadline = snapshot_deadline(bytes);
        tracing::info!(target = self.target, bytes, snapshot = %snapshot.meta.snapshot_id, "sending snapshot");
        let send = tokio::time::timeout(deadline, self.send_snapshot(vote, snapshot));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => match result {
                Err(_) => Err(StreamingError::Network(NetworkError::new(&io::Error::from(io::ErrorKind::TimedOut)))),
                Ok(Err(e @ CallError::Unreachable { .. })) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Ok(Err(e)) => Err(StreamingError::Network(NetworkError::new(&e))),
                Ok(Ok(resp)) => {
                    self.factory.contacted(self.target);
                    Ok(resp)
                }
            },
        }
    }
}

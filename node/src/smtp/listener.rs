//! The SMTP listener: accepts connections within the session limits (table.rs),
//! reads the PROXY header when configured, refuses early talkers, greets, and runs
//! sessions; at shutdown it stops accepting and gives running transactions a grace
//! period.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use bulwark_consensus::Proposer;
use bulwark_model::{Client, Rejection};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::accept::Ingress;
use super::budget::Budget;
use super::conn::Conn;
use super::rejections::RejectionLog;
use super::session::{Flow, Session, Shared};
use super::table::{Refusal, Seat, Table};
use super::{proxy, Settings};
use crate::delivery::Backlog;
use crate::disk::DiskSpace;
use crate::scan::Scanner;

/// A bound SMTP listener, ready to run.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listener and loads the STARTTLS certificate, so that a bad address
    /// or certificate stops the node at start-up, before Raft starts.
    pub async fn bind(settings: Settings) -> Result<Bound> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding SMTP to {}", settings.listen))?;
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        Ok(Bound {
            listener,
            tls,
            settings,
        })
    }

    /// Adds the session counts to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "bulwark_smtp_sessions",
            "SMTP sessions opened since start",
            self.shared.opened.clone(),
        );
        registry.register(
            "bulwark_smtp_sessions_open",
            "SMTP sessions open now",
            self.shared.open.clone(),
        );
        registry.register(
            "bulwark_smtp_sessions_shed",
            "Idle SMTP sessions closed to make room for a new connection",
            self.shared.table.shed.clone(),
        );
        registry.register(
            "bulwark_smtp_command_timeout_seconds",
            "Time allowed for an SMTP command now (shorter as the session table fills)",
            self.shared.table.timeout_now.clone(),
        );
    }

    /// Accepts connections until `stop` is cancelled; then idle sessions get `421`,
    /// transactions in flight have `shutdown_grace` to finish, and the rest are cut.
    pub async fn run(self, stop: CancellationToken) {
        let mut running = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = stop.cancelled() => break,
            };
            while running.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "SMTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            match shared.table.admit() {
                Some(seat) => {
                    running.spawn(connection(shared, stream, peer, seat));
                }
                None => {
                    running.spawn(refuse_busy(shared, stream, peer));
                }
            }
        }
        drop(self.listener);
        self.shared.shutdown.cancel();
        while running.try_join_next().is_some() {}
        let grace = self.shared.settings.shutdown_grace;
        tracing::info!(
            sessions = running.len(),
            "SMTP: no longer accepting; draining sessions"
        );
        let drained = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sessions = running.len(),
                "SMTP sessions still running after the shutdown grace; closing them"
            );
            running.shutdown().await;
        }
    }
}

/// A bound listener waiting for the node's proposer.
pub struct Bound {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    settings: Settings,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.settings.listen)
    }

    /// The server, judging mail with `scanner` and committing it through `proposer`
    /// as node `node`, taking mail only while `disk` has room, and pacing new mail
    /// while `backlog` says delivery is behind.
    pub fn serve_with(
        self,
        proposer: Proposer,
        scanner: Arc<Scanner>,
        node: u64,
        disk: Arc<DiskSpace>,
        backlog: Arc<Backlog>,
    ) -> Server {
        let Bound {
            listener,
            tls,
            settings,
        } = self;
        let shared = Arc::new(Shared {
            tls,
            ingress: Ingress::new(proposer.clone(), scanner, node),
            rejections: RejectionLog::start(proposer),
            shutdown: CancellationToken::new(),
            budget: Budget::new(settings.max_buffered_bytes),
            disk,
            opened: Default::default(),
            open: Default::default(),
            table: Table::new(&settings),
            backlog,
            settings,
        });
        Server { listener, shared }
    }
}

/// Counts a session out of the open ones when it ends, however it ends.
struct OpenSession<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn client_of(peer: SocketAddr, proxy: Option<IpAddr>) -> Client {
    Client {
        ip: peer.ip(),
        port: peer.port(),
        helo: None,
        tls: None,
        proxy,
    }
}

/// Writes one reply and closes, without waiting long on a client that does not read.
async fn say_and_close(stream: &mut TcpStream, reply: &str) {
    let line = format!("{reply}\r\n");
    let write = stream.write_all(line.as_bytes());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
    let _ = stream.shutdown().await;
}

async fn refuse_busy(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let (reply, reason) = refusal(&shared.settings, Refusal::Full, peer.ip());
    say_and_close(&mut stream, &reply).await;
    record(&shared, client_of(peer, None), reason, &reply);
}

/// The reply a refused connection from `ip` hears, and the reason recorded.
fn refusal(settings: &Settings, refusal: Refusal, ip: IpAddr) -> (String, &'static str) {
    let host = &settings.hostname;
    match refusal {
        Refusal::Address => (
            format!("421 4.7.0 {host} Error: too many connections from {ip}"),
            "too_many_sessions_from_ip",
        ),
        Refusal::Network(network) => (
            format!("421 4.7.0 {host} Error: too many connections from {network}"),
            "too_many_sessions_from_network",
        ),
        Refusal::Full => (
            format!("421 4.7.0 {host} Error: too many connections; try again later"),
            "too_many_sessions",
        ),
    }
}

fn record(shared: &Shared, client: Client, reason: &str, reply: &str) {
    shared.rejections.record(Rejection {
        client,
        mail_from: None,
        rcpt_to: Vec::new(),
        reason: reason.to_string(),
        reply: reply.to_string(),
    });
}

async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, mut seat: Seat) {
    shared.opened.inc();
    shared.open.inc();
    let _open = OpenSession(&shared.open);
    let settings = &shared.settings;
    let mut client = client_of(peer, None);
    if settings.proxy_protocol {
        let timeout = settings
            .first_command_timeout
            .min(shared.table.command_timeout());
        let header = tokio::time::timeout(timeout, proxy::read_header(&mut stream));
        let header = tokio::select! {
            header = header => header,
            _ = seat.shed() => return,
        };
        match header {
            Ok(Ok(Some(addr))) => client = client_of(addr, Some(peer.ip())),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer, error = %e, "PROXY protocol header refused");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no PROXY protocol header in time");
                return;
            }
        }
    }
    if let Err(refused) = seat.claim(client.ip) {
        // A refused connection gives its place back before the client hears of
        // the refusal, so a client that connects after hearing it finds it free.
        drop(seat);
        let (reply, reason) = refusal(settings, refused, client.ip);
        say_and_close(&mut stream, &reply).await;
        record(&shared, client, reason, &reply);
        return;
    }
    if !shared.ingress.is_formed() {
        // Nothing given to this node could commit: the client had better try
        // another server now than send a whole message for a 451.
        drop(seat);
        let reply = format!(
            "421 4.3.0 {} is not part of a cluster yet; try another server",
            settings.hostname
        );
        say_and_close(&mut stream, &reply).await;
        return;
    }
    if !settings.greet_delay.is_zero() {
        let mut probe = [0u8; 1];
        match tokio::time::timeout(settings.greet_delay, stream.peek(&mut probe)).await {
            Err(_) => {}
            Ok(Ok(n)) if n > 0 => {
                drop(seat);
                let reply = format!(
                    "554 5.5.1 {} Error: SMTP protocol violation: talked before the greeting",
                    settings.hostname
                );
                say_and_close(&mut stream, &reply).await;
                record(&shared, client, "early_talker", &reply);
                return;
            }
            Ok(_) => return,
        }
    }
    let mut session = Session::new(shared.clone(), client, seat);
    let mut conn = Conn::new(stream);
    conn.reply(&format!("220 {} ESMTP Bulwark", settings.hostname));
    if session.run(&mut conn).await != Flow::StartTls {
        return;
    }
    let Some(acceptor) = shared.tls.clone() else {
        return;
    };
    let handshake = tokio::time::timeout(
        shared.table.command_timeout(),
        acceptor.accept(conn.into_stream()),
    );
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(client = %session.client.ip, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %session.client.ip, "TLS handshake timed out");
            return;
        }
    };
    let tls = stream.get_ref().1;
    session.tls_started(crate::tls::info(tls, tls.server_name()));
    let mut conn = Conn::new(stream);
    session.run(&mut conn).await;
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor> {
    let config =
        crate::tls::server_config(cert, key, &[]).context("the STARTTLS certificate and key")?;
    Ok(tokio_rustls::TlsAcceptor::from(config))
}

//! Syslog over TCP (RFC 6587, octet counting) or TLS (RFC 5425), one connection a
//! batch.
//!
//! Plain syslog has no acknowledgement, so a batch counts as accepted on the one
//! sign TCP gives that the receiver read all of it: after the batch we close our side
//! of the connection (TLS: `close_notify`, then FIN), and the receiver, having read
//! through to that end of stream, closes its side in turn, within `timeout_secs` and
//! without a reset. A receiver that died or was cut off before reading the whole
//! batch resets the connection or never closes it: the batch is not accepted and
//! goes out again on a new connection, so delivery is at-least-once. What this cannot
//! see: a receiver that read every byte off the socket and died before storing them
//! closes like a healthy one; only RELP (see [`super::relp`]) rules that out.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::format::{syslog_frame, Payload};
use super::{Resends, SendError};

/// Bytes a receiver may write on a plain syslog connection (against the protocol)
/// before its close; past that the batch is not counted as accepted.
const MAX_UNEXPECTED: usize = 64 * 1024;

/// `kind = "syslog"`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` of the receiver.
    pub address: String,
    /// RFC 5425: the client configuration and the name the receiver's certificate
    /// must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pub transport: Transport,
    pub payload: Payload,
    /// RFC 5424 facility, 0 to 23 (default 13, log audit).
    pub facility: u8,
    pub timeout: Duration,
}

/// How messages travel (`transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// RFC 6587 octet counting; a batch is accepted when the receiver closes after it.
    Tcp,
    /// rsyslog's RELP; a message is accepted when the receiver answers it `200`.
    Relp,
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Sink {
    settings: Settings,
    hostname: String,
    resends: Resends,
}

impl Sink {
    pub fn new(settings: Settings, hostname: String, resends: Resends) -> Sink {
        Sink {
            settings,
            hostname,
            resends,
        }
    }

    /// Sends the batch on a new connection and waits for the receiver to close it.
    pub async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        let mut frames = Vec::new();
        for event in events {
            frames.extend(syslog_frame(
                event,
                self.settings.payload,
                self.settings.facility,
                &self.hostname,
            ));
        }
        let mut connection = connect(&self.settings).await?;
        self.resends.transmitting(events);
        let address = &self.settings.address;
        let timeout = self.settings.timeout;
        let exchange = async {
            connection
                .write_all(&frames)
                .await
                .map_err(|e| SendError::Transport(format!("writing to {address}: {e}")))?;
            connection
                .shutdown()
                .await
                .map_err(|e| SendError::Transport(format!("closing to {address}: {e}")))?;
            receiver_closed(connection.as_mut(), address).await
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            SendError::Transport(format!(
                "{address}: the receiver did not read the batch through and close within {} s",
                timeout.as_secs()
            ))
        })?
    }
}

/// Reads until the receiver's end of stream: `Ok` when it closed cleanly (for TLS,
/// also without `close_notify`: a receiver may just close the socket), an error when
/// it reset the connection, which it does when it closes with unread bytes.
async fn receiver_closed(connection: &mut dyn Stream, address: &str) -> Result<(), SendError> {
    let mut buffer = [0u8; 1024];
    let mut unexpected = 0;
    loop {
        match connection.read(&mut buffer).await {
            Ok(0) => return Ok(()),
            Ok(n) => {
                unexpected += n;
                if unexpected > MAX_UNEXPECTED {
                    return Err(SendError::Transport(format!(
                        "{address}: the receiver writes instead of closing"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => {
                return Err(SendError::Transport(format!(
                    "{address}: the connection broke before the receiver closed it: {e}"
                )))
            }
        }
    }
}

/// A new connection to the receiver, TLS if so configured.
pub(super) async fn connect(settings: &Settings) -> Result<Box<dyn Stream>, SendError> {
    let address = &settings.address;
    let failed = |e: String| SendError::Transport(format!("connecting to {address}: {e}"));
    let connect = async {
        let tcp = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        Ok::<Box<dyn Stream>, SendError>(match &settings.tls {
            None => Box::new(tcp),
            Some((config, name)) => Box::new(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed(format!("TLS: {e}")))?,
            ),
        })
    };
    tokio::time::timeout(settings.timeout, connect)
        .await
        .map_err(|_| failed(format!("no answer within {} s", settings.timeout.as_secs())))?
}

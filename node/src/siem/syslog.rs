//! Syslog over TCP (RFC 6587, octet counting) or TLS (RFC 5425).
//!
//! Syslog has no acknowledgement: a batch counts as accepted once the receiver's TCP
//! stack has taken every byte. Before each batch the connection is checked for an
//! end of stream (a receiver never writes, so anything readable means it closed),
//! so a receiver that went away is noticed before a batch is written into a dead
//! socket. Still, what sat in either side's buffers when a connection broke (the
//! receiver crashed, the network reset it) is lost: syslog over TCP is at-most-once
//! at that moment, which only an acknowledging protocol (HEC with acknowledgement,
//! the webhook) rules out.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::format::{syslog_frame, Payload};
use super::SendError;

/// `kind = "syslog"`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` of the receiver.
    pub address: String,
    /// RFC 5425: the client configuration and the name the receiver's certificate
    /// must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pub payload: Payload,
    /// RFC 5424 facility, 0 to 23 (default 13, log audit).
    pub facility: u8,
    pub timeout: Duration,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Sink {
    settings: Settings,
    hostname: String,
    connection: Option<Box<dyn Stream>>,
}

impl Sink {
    pub fn new(settings: Settings, hostname: String) -> Sink {
        Sink {
            settings,
            hostname,
            connection: None,
        }
    }

    /// Writes the batch in one go; any failure drops the connection, so the next
    /// try starts on a new one.
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
        if let Some(connection) = &mut self.connection {
            if closed(connection.as_mut()).await {
                self.connection = None;
            }
        }
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => connect(&self.settings).await?,
        };
        let timeout = self.settings.timeout;
        let written = tokio::time::timeout(timeout, async {
            connection.write_all(&frames).await?;
            connection.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.connection = Some(connection);
                Ok(())
            }
            Ok(Err(e)) => Err(SendError::Transport(format!(
                "writing to {}: {e}",
                self.settings.address
            ))),
            Err(_) => Err(SendError::Transport(format!(
                "writing to {}: no progress within {} s",
                self.settings.address,
                timeout.as_secs()
            ))),
        }
    }
}

/// A new connection to the receiver, TLS if so configured.
async fn connect(settings: &Settings) -> Result<Box<dyn Stream>, SendError> {
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

/// True when the receiver has closed the connection or reset it (or, against the
/// protocol, written something).
async fn closed(connection: &mut dyn Stream) -> bool {
    let mut byte = [0u8; 1];
    // Polled once: a healthy connection has nothing to read and is pending.
    tokio::time::timeout(Duration::ZERO, connection.read(&mut byte))
        .await
        .is_ok()
}

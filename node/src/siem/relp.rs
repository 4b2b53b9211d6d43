//! rsyslog's Reliable Event Logging Protocol (`kind = "syslog"`, `transport =
//! "relp"`), the client side: frames `TXNR SP COMMAND SP DATALEN [SP DATA] LF`, a
//! session opened with `open` (offering `relp_version=0` and `commands=syslog`), one
//! `syslog` command per message, each answered by an `rsp` carrying `200 OK` or a
//! `500` refusal, and `close` to end the session.
//!
//! A batch is accepted when every message of it was answered `200`: the receiver
//! answers a message once it has taken it in, so a connection that breaks leaves
//! unanswered messages that go out again. A `500` refuses the batch
//! ([`SendError::Rejected`], toward a dead letter). The session stays open between
//! batches; transaction numbers run on across them (1 to 999,999,999, then 1 again).

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

use super::format::syslog_message;
use super::syslog::{connect, Settings, Stream};
use super::{Resends, SendError};

/// Largest transaction number; the next is 1.
const MAX_TXNR: u64 = 999_999_999;
/// Longest command name and data a receiver's frame may carry.
const MAX_COMMAND: usize = 32;
const MAX_DATA: usize = 64 * 1024;

pub struct Sink {
    settings: Settings,
    hostname: String,
    resends: Resends,
    session: Option<Session>,
}

struct Session {
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    /// The transaction number of the next command.
    txnr: u64,
}

/// One frame as received.
struct Frame {
    txnr: u64,
    command: String,
    data: Vec<u8>,
}

impl Sink {
    pub fn new(settings: Settings, hostname: String, resends: Resends) -> Sink {
        Sink {
            settings,
            hostname,
            resends,
            session: None,
        }
    }

    /// Sends every message of the batch and waits for each one's answer; any failure
    /// but a refusal drops the session, so the next try opens a new one.
    pub async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        let timeout = self.settings.timeout;
        let address = self.settings.address.clone();
        let attempt = async {
            let mut session = match self.session.take() {
                Some(session) => session,
                None => open(&self.settings).await?,
            };
            self.resends.transmitting(events);
            let refused = exchange(&mut session, events, &self.settings, &self.hostname).await?;
            self.session = Some(session);
            match refused {
                None => Ok(()),
                Some(why) => Err(SendError::Rejected(format!("{address}: {why}"))),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transport(format!(
                "{address}: not every message answered within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// Ends the session with `close` (when the node stops exporting).
    pub async fn close(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        let txnr = session.next_txnr();
        let closing = async {
            session
                .writer
                .write_all(format!("{txnr} close 0\n").as_bytes())
                .await
                .map_err(|e| SendError::Transport(e.to_string()))?;
            session
                .writer
                .flush()
                .await
                .map_err(|e| SendError::Transport(e.to_string()))?;
            read_frame(&mut session.reader).await
        };
        if let Ok(Err(e)) = tokio::time::timeout(self.settings.timeout, closing).await {
            tracing::debug!(error = %e, "closing the RELP session");
        }
    }
}

impl Session {
    fn next_txnr(&mut self) -> u64 {
        let txnr = self.txnr;
        self.txnr = if txnr >= MAX_TXNR { 1 } else { txnr + 1 };
        txnr
    }
}

/// A new session: connected, `open` offered and answered `200`.
async fn open(settings: &Settings) -> Result<Session, SendError> {
    let (read, write) = tokio::io::split(connect(settings).await?);
    let mut session = Session {
        reader: BufReader::new(read),
        writer: write,
        txnr: 1,
    };
    let offers = format!(
        "relp_version=0\nrelp_software=bulwark,{}\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    );
    let txnr = session.next_txnr();
    let broken = |e: std::io::Error| SendError::Transport(format!("{}: {e}", settings.address));
    session
        .writer
        .write_all(frame(txnr, "open", offers.as_bytes()).as_slice())
        .await
        .map_err(broken)?;
    session.writer.flush().await.map_err(broken)?;
    let answer = read_frame(&mut session.reader).await?;
    let data = String::from_utf8_lossy(&answer.data).into_owned();
    if answer.txnr != txnr || answer.command != "rsp" {
        return Err(SendError::Transport(format!(
            "{}: not a RELP server (answered {} {})",
            settings.address, answer.txnr, answer.command
        )));
    }
    if !data.starts_with("200") {
        return Err(SendError::Refused(format!(
            "{}: the RELP server refused the session: {data}",
            settings.address
        )));
    }
    let commands = data.lines().find_map(|l| l.strip_prefix("commands="));
    if commands.is_some_and(|c| !c.split(',').any(|c| c == "syslog")) {
        return Err(SendError::Refused(format!(
            "{}: the RELP server does not take syslog messages: {data}",
            settings.address
        )));
    }
    Ok(session)
}

/// Writes one `syslog` command per event while reading the answers; the first
/// refusal, if any (every message is answered before this returns).
async fn exchange(
    session: &mut Session,
    events: &[Value],
    settings: &Settings,
    hostname: &str,
) -> Result<Option<String>, SendError> {
    let mut commands = Vec::new();
    let mut waiting = std::collections::HashSet::new();
    for event in events {
        let message = syslog_message(event, settings.payload, settings.facility, hostname);
        let txnr = session.next_txnr();
        waiting.insert(txnr);
        commands.extend(frame(txnr, "syslog", message.as_bytes()));
    }
    let address = &settings.address;
    let broken = |e: std::io::Error| SendError::Transport(format!("{address}: {e}"));
    let (reader, writer) = (&mut session.reader, &mut session.writer);
    let write = async {
        writer.write_all(&commands).await.map_err(broken)?;
        writer.flush().await.map_err(broken)
    };
    let read = async {
        let mut refused = None;
        while !waiting.is_empty() {
            let answer = read_frame(reader).await?;
            match answer.command.as_str() {
                "rsp" if waiting.remove(&answer.txnr) => {
                    let data = String::from_utf8_lossy(&answer.data);
                    if !data.starts_with("200") && refused.is_none() {
                        refused = Some(format!("message {} answered {data}", answer.txnr));
                    }
                }
                "serverclose" => {
                    return Err(SendError::Transport(format!(
                        "{address}: the RELP server closed the session"
                    )))
                }
                other => {
                    return Err(SendError::Transport(format!(
                        "{address}: unexpected RELP frame {} {other}",
                        answer.txnr
                    )))
                }
            }
        }
        Ok(refused)
    };
    let ((), refused) = tokio::try_join!(write, read)?;
    Ok(refused)
}

/// `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
fn frame(txnr: u64, command: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{txnr} {command} {}", data.len()).into_bytes();
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// Reads one frame, every part of it bounded.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Frame, SendError> {
    let bad = |what: &str| SendError::Transport(format!("malformed RELP frame: {what}"));
    let (txnr, _) = token(reader, 9).await?;
    let txnr = txnr.parse().map_err(|_| bad("transaction number"))?;
    let (command, _) = token(reader, MAX_COMMAND).await?;
    let (len, end) = token(reader, 9).await?;
    let len: usize = len.parse().map_err(|_| bad("data length"))?;
    if len > MAX_DATA {
        return Err(bad("data too long"));
    }
    let mut data = vec![0u8; len];
    if len > 0 {
        if end != b' ' {
            return Err(bad("no data after its length"));
        }
        reader.read_exact(&mut data).await.map_err(read_failed)?;
        if reader.read_u8().await.map_err(read_failed)? != b'\n' {
            return Err(bad("no LF after the data"));
        }
    } else if end != b'\n' {
        return Err(bad("no LF after an empty frame"));
    }
    Ok(Frame {
        txnr,
        command,
        data,
    })
}

/// Up to `max` bytes before a space or a line feed; the text and which ended it.
async fn token<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<(String, u8), SendError> {
    let mut text = String::new();
    loop {
        let byte = reader.read_u8().await.map_err(read_failed)?;
        if byte == b' ' || byte == b'\n' {
            if text.is_empty() {
                return Err(SendError::Transport(
                    "malformed RELP frame: empty field".into(),
                ));
            }
            return Ok((text, byte));
        }
        if text.len() == max || !byte.is_ascii_graphic() {
            return Err(SendError::Transport(
                "malformed RELP frame: field too long or not printable".into(),
            ));
        }
        text.push(char::from(byte));
    }
}

fn read_failed(e: std::io::Error) -> SendError {
    SendError::Transport(format!("reading the RELP server's answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_written_and_read_as_the_relp_grammar_says() {
        assert_eq!(frame(7, "close", b""), b"7 close 0\n");
        assert_eq!(frame(2, "syslog", b"<110>1 x"), b"2 syslog 8 <110>1 x\n");
        let mut input: &[u8] = b"1 rsp 6 200 OK\n0 serverclose 0\n3 rsp 2 500\n";
        let first = read_frame(&mut input).await.ok().unwrap();
        assert_eq!((first.txnr, first.command.as_str()), (1, "rsp"));
        assert_eq!(first.data, b"200 OK");
        let second = read_frame(&mut input).await.ok().unwrap();
        assert_eq!((second.txnr, second.command.as_str()), (0, "serverclose"));
        assert!(second.data.is_empty());
        // A length that does not match its data.
        assert!(read_frame(&mut input).await.is_err());
        for bad in [
            &b"x rsp 0\n"[..],
            b"1 rsp 99999999999 x\n",
            b"1 rsp 3 abc",
            b"1 rsp 1\nx\n",
        ] {
            let mut input = bad;
            assert!(read_frame(&mut input).await.is_err(), "{bad:?}");
        }
    }
}

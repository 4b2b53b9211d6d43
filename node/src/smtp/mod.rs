//! The SMTP ingress: an ESMTP server (RFC 5321) whose `250` to the end of data is
//! sent only once the message is committed by a Raft quorum.
//!
//! The path of a connection, one file a step:
//!
//! ```text
//! listener.rs   accept, PROXY protocol (proxy.rs), early talkers
//! table.rs      session limits in total, per address and network; idle sessions shed
//! session.rs    the command loop and its state; one file per verb:
//!               ehlo.rs, mail.rs, rcpt.rs, data.rs, bdat.rs, starttls (session.rs)
//! conn.rs       buffered reads with line limits and deadlines, pipelined replies
//! accept.rs     end of data: Received header, scanning seam, one Raft entry, 250
//! rejections.rs refusals worth auditing, recorded in batches off the reply path
//! ```
//!
//! Nothing here blocks on disk: the only durable step is the proposal, which the
//! proposer batches with every other session's (group commit).

mod accept;
mod bdat;
mod budget;
pub mod command;
mod conn;
mod data;
mod ehlo;
mod listener;
mod mail;
mod proxy;
mod rcpt;
mod received;
mod rejections;
mod session;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use listener::Server;

/// How a bare CR or LF (one not part of CRLF) in a message is handled. Either way,
/// only CRLF.CRLF ends the data, so a message can never be smuggled past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareNewline {
    /// Store it as CRLF (Postfix's `smtpd_forbid_bare_newline = normalize`).
    Normalize,
    /// Refuse the message with `550 5.5.2` (Postfix's `reject`).
    Reject,
}

/// What happens to a message whose content holds NUL octets, which neither RFC 5322
/// text nor 8BITMIME allows and which the next hop or a mail client may read as the
/// end of a string, seeing less than the scanner saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NulBytes {
    /// Refuse it with `554 5.6.0`.
    Reject,
    /// Remove them before scanning and storing (Postfix's `message_strip_characters = \0`).
    Strip,
}

/// The validated `[smtp]` section.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Our name in the greeting, EHLO reply and `Received` header.
    pub hostname: String,
    /// Recipient domains we accept mail for, lower case; anything else is relaying.
    pub domains: Vec<String>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Certificate chain and key for STARTTLS; `None`: STARTTLS not offered.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse mail until the client has started TLS (530 5.7.0).
    pub require_tls: bool,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// Most sessions from one client network (/24 for IPv4, /64 for IPv6).
    pub max_sessions_per_network: usize,
    /// A session waiting this long for a command outside a transaction may lose its
    /// place to a new connection when all places are taken.
    pub shed_idle_after: Duration,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Longest line of message content, CRLF included.
    pub max_data_line_length: usize,
    /// Errors (unknown commands, bad syntax, bad sequence) before the session ends.
    pub max_errors: u32,
    /// Time allowed for one whole command line to arrive.
    pub command_timeout: Duration,
    /// Time allowed for the PROXY header and for the first command after the
    /// greeting (at most `command_timeout`).
    pub first_command_timeout: Duration,
    /// The command timeout when the session table is nearly full.
    pub stress_timeout: Duration,
    /// Time allowed for the whole content of one message (DATA or all BDAT chunks).
    pub data_timeout: Duration,
    /// Pause before the greeting; a client that talks during it is refused.
    pub greet_delay: Duration,
    /// Expect a HAProxy PROXY protocol v2 header on every connection.
    pub proxy_protocol: bool,
    pub bare_newline: BareNewline,
    pub nul_bytes: NulBytes,
    /// Client networks whose recipients may route through the local part (`%`,
    /// `!`, a second `@`) or a source route; from any other, RCPT gets `550 5.7.1`.
    pub allow_routing_from: Vec<ipnet::IpNet>,
    /// How long in-flight transactions may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Most octets of message content all sessions together hold in memory until
    /// it is committed; beyond it a message gets 452 4.3.1.
    pub max_buffered_bytes: u64,
    /// Free octets the data directory must keep; below it MAIL gets 452 4.3.1.
    pub min_free_disk: u64,
    /// Longest a new transaction's MAIL waits while delivery is behind (see
    /// `crate::delivery::Backlog`); zero: never.
    pub in_flow_delay: Duration,
}

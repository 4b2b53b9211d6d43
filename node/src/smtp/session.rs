//! One SMTP session: the command loop, the session and transaction state, and the
//! replies that are not a verb's own (errors, limits, shutdown).

use std::sync::Arc;
use std::time::Instant as StdInstant;

use bulwark_model::{Client, Rejection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::accept::Ingress;
use super::bdat::Chunks;
use super::budget::Budget;
use super::command::{self, Command, ParseError};
use super::conn::{Conn, ConnError};
use super::rejections::RejectionLog;
use super::table::{Seat, Table};
use super::{bdat, data, ehlo, mail, rcpt, BareNewline, Settings};
use crate::delivery::Backlog;

/// What every session of one listener shares.
pub struct Shared {
    pub settings: Settings,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub ingress: Ingress,
    pub rejections: RejectionLog,
    /// Memory for message content, shared by all sessions.
    pub budget: Arc<Budget>,
    /// Free space on the data directory.
    pub disk: Arc<crate::disk::DiskSpace>,
    /// Cancelled at SIGTERM: idle sessions answer 421, transactions may finish.
    pub shutdown: CancellationToken,
    /// Sessions opened since start, and open now.
    pub opened: prometheus_client::metrics::counter::Counter,
    pub open: prometheus_client::metrics::gauge::Gauge,
    /// The places of all sessions: limits, shedding, timeouts under pressure.
    pub table: Arc<Table>,
    /// Whether this node's delivery is behind: MAIL then waits (in_flow_delay).
    pub backlog: Arc<Backlog>,
}

/// What the command loop tells its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
    /// The client asked for TLS and got `220`: hand the stream to the TLS acceptor.
    StartTls,
}

/// A mail transaction: from MAIL to the end of data (or RSET).
pub struct Transaction {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Set once the client starts sending the content with BDAT.
    pub chunks: Option<Chunks>,
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub client: Client,
    /// The client greeted with EHLO (not HELO).
    pub esmtp: bool,
    pub started: StdInstant,
    pub tx: Option<Transaction>,
    errors: u32,
    /// NOOP, RSET, VRFY and HELP commands so far.
    junk: u32,
    /// Commands so far, of any kind.
    commands: u64,
    /// This session's place in the session table.
    seat: Seat,
}

/// Junk commands (NOOP, RSET, VRFY, HELP) a session may send before each further one
/// counts as an error, so a client cannot hold a session by chattering (Postfix's
/// `smtpd_junk_command_limit`).
const JUNK_LIMIT: u32 = 100;

impl Session {
    pub fn new(shared: Arc<Shared>, client: Client, seat: Seat) -> Self {
        Session {
            shared,
            client,
            esmtp: false,
            started: StdInstant::now(),
            tx: None,
            errors: 0,
            junk: 0,
            commands: 0,
            seat,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Runs commands until the client quits, the session ends, or STARTTLS.
    pub async fn run<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        loop {
            let flow = self.next_command(conn).await;
            if flow == Flow::Close {
                // The place is given back before the last reply goes out.
                self.seat.leave();
            }
            if flow != Flow::Continue {
                let _ = conn.flush().await;
                return flow;
            }
        }
    }

    async fn next_command<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
    ) -> Flow {
        let idle = self.tx.is_none();
        let shutdown = self.shared.shutdown.clone();
        if idle && shutdown.is_cancelled() {
            let reply = format!(
                "421 4.3.2 {} Service shutting down, closing transmission channel",
                self.settings().hostname
            );
            conn.reply(&reply);
            return Flow::Close;
        }
        let settings = self.settings();
        let mut timeout = self.shared.table.command_timeout();
        if self.commands == 0 {
            timeout = timeout.min(settings.first_command_timeout);
        }
        let deadline = Instant::now() + timeout;
        let max_line = settings.max_line_length;
        if idle {
            self.seat.waiting();
        }
        let line = tokio::select! {
            line = conn.read_line(max_line, deadline) => line,
            _ = shutdown.cancelled(), if idle => return Flow::Continue,
            _ = self.seat.shed(), if idle => return self.shed(conn),
        };
        if idle && !self.seat.busy() {
            return self.shed(conn);
        }
        self.commands += 1;
        let line = match line {
            Ok(line) => line,
            Err(ConnError::Timeout) => {
                let reply = format!(
                    "421 4.4.2 {} Error: timeout exceeded",
                    self.settings().hostname
                );
                conn.reply(&reply);
                return Flow::Close;
            }
            Err(e) => {
                tracing::debug!(client = %self.client.ip, error = %e, "session ended");
                return Flow::Close;
            }
        };
        if line.too_long {
            let reply = format!(
                "500 5.5.2 Error: line too long (the limit is {} octets)",
                self.settings().max_line_length
            );
            return self.error(conn, &reply);
        }
        if line.bare_lf && self.settings().bare_newline == BareNewline::Reject {
            return self.error(conn, "500 5.5.2 Error: bare <LF> received");
        }
        let command = match command::parse(&line.text) {
            Ok(command) => command,
            Err(ParseError::Unknown) => {
                return self.error(conn, "500 5.5.2 Error: command not recognized")
            }
            Err(ParseError::Syntax(text)) => return self.error(conn, &format!("501 5.5.4 {text}")),
            Err(ParseError::Address(text)) => {
                return self.error(conn, &format!("553 5.1.3 {text}"))
            }
        };
        if matches!(
            command,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help
        ) {
            self.junk += 1;
            if self.junk > JUNK_LIMIT {
                self.errors += 1;
            }
        }
        match command {
            Command::Ehlo(name) => ehlo::ehlo(self, conn, name, true),
            Command::Helo(name) => ehlo::ehlo(self, conn, name, false),
            Command::Mail { from, params } => mail::mail(self, conn, from, params).await,
            Command::Rcpt {
                to,
                source_route,
                params,
            } => rcpt::rcpt(self, conn, to, source_route, params),
            Command::Data => data::data(self, conn).await,
            Command::Bdat { size, last } => bdat::bdat(self, conn, size, last).await,
            Command::Rset => {
                self.tx = None;
                conn.reply("250 2.0.0 Ok");
                self.check_errors(conn)
            }
            Command::Noop => {
                conn.reply("250 2.0.0 Ok");
                self.check_errors(conn)
            }
            Command::Quit => {
                conn.reply("221 2.0.0 Bye");
                Flow::Close
            }
            Command::Vrfy => {
                conn.reply("252 2.5.2 Cannot VRFY user; send mail and delivery will be attempted");
                self.check_errors(conn)
            }
            Command::Expn => self.error(conn, "502 5.5.1 Error: EXPN is disabled"),
            Command::Help => {
                conn.reply(
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS",
                );
                self.check_errors(conn)
            }
            Command::StartTls => self.starttls(conn),
        }
    }

    /// The session was idle and lost its place to a new connection.
    fn shed<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        let reply = format!(
            "421 4.7.0 {} Error: too many connections; closing an idle session",
            self.settings().hostname
        );
        conn.reply(&reply);
        self.reject("idle_session_shed", &reply);
        Flow::Close
    }

    /// RFC 3207: `220`, then the caller runs the TLS handshake on the bare stream;
    /// whatever the client pipelined after STARTTLS is discarded with the buffer.
    fn starttls<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        if self.shared.tls.is_none() {
            return self.error(conn, "502 5.5.1 Error: STARTTLS is not offered");
        }
        if self.client.tls.is_some() {
            return self.error(conn, "503 5.5.1 Error: TLS already active");
        }
        if self.tx.is_some() {
            return self.error(conn, "503 5.5.1 Error: MAIL transaction in progress");
        }
        conn.reply("220 2.0.0 Ready to start TLS");
        Flow::StartTls
    }

    /// After the TLS handshake: the session starts over (RFC 3207 §4.2), EHLO first.
    pub fn tls_started(&mut self, tls: bulwark_model::TlsInfo) {
        self.client.tls = Some(tls);
        self.client.helo = None;
        self.esmtp = false;
        self.tx = None;
    }

    /// Replies with an error and counts it; too many end the session.
    pub fn error<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        reply: &str,
    ) -> Flow {
        self.errors += 1;
        conn.reply(reply);
        self.check_errors(conn)
    }

    /// Ends the session with 421 once it has made too many errors.
    fn check_errors<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        if self.errors >= self.settings().max_errors {
            let reply = format!(
                "421 4.7.0 {} Error: too many errors",
                self.settings().hostname
            );
            conn.reply(&reply);
            self.reject("too_many_errors", &reply);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Records a refusal worth auditing (`message.rejected`), off the reply path,
    /// with the open transaction's sender and recipients.
    pub fn reject(&self, reason: &str, reply: &str) {
        let (mail_from, rcpt_to) = match &self.tx {
            Some(tx) => (Some(tx.mail_from.clone()), tx.rcpt_to.clone()),
            None => (None, Vec::new()),
        };
        self.reject_with(reason, reply, mail_from, rcpt_to);
    }

    /// As [`Session::reject`], naming the sender and recipients.
    pub fn reject_with(
        &self,
        reason: &str,
        reply: &str,
        mail_from: Option<String>,
        rcpt_to: Vec<String>,
    ) {
        self.shared.rejections.record(Rejection {
            client: self.client.clone(),
            mail_from,
            rcpt_to,
            reason: reason.to_string(),
            reply: reply.to_string(),
        });
    }
}

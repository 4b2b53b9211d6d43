//! The `[smtp]` section: the listener, its limits, timeouts and TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{networks, parse_addr, tls_pair};
use crate::smtp;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    /// Address the SMTP server listens on.
    listen: Option<String>,
    /// Our name in the greeting, the EHLO reply and the `Received` header.
    hostname: Option<String>,
    /// Recipient domains we accept mail for; any other recipient is refused as relaying.
    domains: Option<Vec<String>>,
    /// Largest message in octets (announced with SIZE; bigger ones get 552 5.3.4).
    max_message_size: Option<u64>,
    /// Most recipients of one message (further RCPTs get 452 4.5.3).
    max_recipients: Option<usize>,
    /// Certificate chain (PEM) for STARTTLS; with `tls_key`, enables STARTTLS.
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for STARTTLS.
    tls_key: Option<PathBuf>,
    /// Refuse MAIL until the client has started TLS (530 5.7.0); needs tls_cert.
    require_tls: Option<bool>,
    /// Most SMTP sessions at once; more get 421 4.7.0.
    max_sessions: Option<usize>,
    /// Most SMTP sessions from one client address at once.
    max_sessions_per_ip: Option<usize>,
    /// Most SMTP sessions from one client network (/24 for IPv4, /64 for IPv6) at
    /// once; more get 421 4.7.0.
    max_sessions_per_network: Option<usize>,
    /// Seconds a session must have waited for a command, outside a transaction,
    /// before a new connection arriving at a full table may take its place (the
    /// session gets 421 4.7.0).
    shed_idle_after_secs: Option<u64>,
    /// Longest command line in octets, CRLF included (RFC 5321 asks for at least 512).
    max_line_length: Option<usize>,
    /// Longest line of message content in octets, CRLF included (RFC 5321: 1000).
    max_data_line_length: Option<usize>,
    /// Errors a session may make before it is closed with 421.
    max_errors: Option<u32>,
    /// Seconds allowed for one whole command line to arrive (RFC 5321: 5 minutes).
    command_timeout_secs: Option<u64>,
    /// Seconds allowed for the PROXY header and for the first command after the
    /// greeting (at most command_timeout_secs).
    first_command_timeout_secs: Option<u64>,
    /// Seconds allowed for a command when the session table is nine tenths full;
    /// from half full the command timeout shortens towards it.
    stress_timeout_secs: Option<u64>,
    /// Seconds allowed for the whole content of one message (RFC 5321: 10 minutes).
    data_timeout_secs: Option<u64>,
    /// Pause before the greeting in milliseconds; clients that talk first are refused.
    greet_delay_ms: Option<u64>,
    /// Expect a HAProxy PROXY protocol v2 header on every connection. Only for a
    /// listener that nothing but the load balancer can reach.
    proxy_protocol: Option<bool>,
    /// `normalize` (bare CR/LF stored as CRLF) or `reject` (550 5.5.2).
    bare_newline: Option<String>,
    /// `reject` (NUL octets in content: 554 5.6.0) or `strip` (removed).
    nul_bytes: Option<String>,
    /// Client networks (or addresses) whose recipients may route through the local
    /// part (`%`, `!`, a second `@`) or a source route; others get 550 5.7.1.
    allow_routing_from: Option<Vec<String>>,
    /// Seconds running transactions may take to finish after SIGTERM.
    shutdown_grace_secs: Option<u64>,
    /// Most octets of message content all sessions together hold in memory until it
    /// is committed (at least max_message_size); beyond it a message gets 452 4.3.1.
    max_buffered_bytes: Option<u64>,
    /// Megabytes the data directory's file system must keep free; below it MAIL gets
    /// 452 4.3.1 (default: twice max_message_size, at least 256).
    min_free_disk_mb: Option<u64>,
    /// Milliseconds a new transaction's MAIL may wait while this node has more due
    /// messages than free delivery slots, until a delivery starts (Postfix's
    /// in_flow_delay); 0: never wait.
    in_flow_delay_ms: Option<u64>,
}

/// The longest `smtp.in_flow_delay_ms` (Postfix's limit too): a sender waits at
/// most this for one message, however far behind delivery is.
const MAX_IN_FLOW_DELAY_MS: u64 = 10_000;

pub(super) fn validate_smtp(
    s: RawSmtp,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<smtp::Settings> {
    let start = problems.len();
    let listen = parse_addr(
        "smtp.listen",
        s.listen.as_deref().unwrap_or("127.0.0.1:2525"),
        problems,
    );
    let hostname = s.hostname.unwrap_or_else(|| "localhost".into());
    if hostname.is_empty()
        || !hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
    {
        problems.push(format!("smtp.hostname: {hostname:?} is not a host name"));
    }
    let domains: Vec<String> = s
        .domains
        .unwrap_or_else(|| vec!["localhost".into(), "example.test".into()])
        .into_iter()
        .filter_map(|d| match crate::mail::ascii_domain(&d) {
            Some(ascii)
                if !ascii.is_empty()
                    && ascii
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)) =>
            {
                Some(ascii)
            }
            _ => {
                problems.push(format!("smtp.domains: {d:?} is not a domain"));
                None
            }
        })
        .collect();
    if domains.is_empty() {
        problems.push("smtp.domains must name at least one domain".into());
    }
    let positive = |name: &str, value: Option<u64>, default: u64, problems: &mut Vec<String>| {
        let value = value.unwrap_or(default);
        if value == 0 {
            problems.push(format!("smtp.{name} must be positive"));
        }
        value
    };
    let max_message_size = positive("max_message_size", s.max_message_size, 26_214_400, problems);
    let max_recipients = positive(
        "max_recipients",
        s.max_recipients.map(|v| v as u64),
        100,
        problems,
    );
    let max_sessions = positive(
        "max_sessions",
        s.max_sessions.map(|v| v as u64),
        1000,
        problems,
    );
    let max_sessions_per_ip = positive(
        "max_sessions_per_ip",
        s.max_sessions_per_ip.map(|v| v as u64),
        50,
        problems,
    );
    let max_sessions_per_network = positive(
        "max_sessions_per_network",
        s.max_sessions_per_network.map(|v| v as u64),
        200,
        problems,
    );
    let max_errors = positive("max_errors", s.max_errors.map(u64::from), 10, problems);
    let command_timeout = positive(
        "command_timeout_secs",
        s.command_timeout_secs,
        300,
        problems,
    );
    let first_command_timeout = positive(
        "first_command_timeout_secs",
        s.first_command_timeout_secs,
        30,
        problems,
    );
    let stress_timeout = positive("stress_timeout_secs", s.stress_timeout_secs, 10, problems);
    let data_timeout = positive("data_timeout_secs", s.data_timeout_secs, 600, problems);
    let max_buffered_bytes = s.max_buffered_bytes.unwrap_or(512 * 1024 * 1024);
    if max_buffered_bytes < max_message_size {
        problems.push(format!(
            "smtp.max_buffered_bytes ({max_buffered_bytes}) must be at least \
             smtp.max_message_size ({max_message_size})"
        ));
    }
    let min_free_disk = match s.min_free_disk_mb.map(|mb| mb.checked_mul(1 << 20)) {
        None => max_message_size.saturating_mul(2).max(256 << 20),
        Some(Some(bytes)) => bytes,
        Some(None) => {
            problems.push("smtp.min_free_disk_mb is too large".into());
            0
        }
    };
    let max_line_length = s.max_line_length.unwrap_or(2048);
    if max_line_length < 512 {
        problems.push("smtp.max_line_length must be at least 512 (RFC 5321 §4.5.3.1.4)".into());
    }
    let max_data_line_length = s.max_data_line_length.unwrap_or(65_536);
    if max_data_line_length < 1000 {
        problems
            .push("smtp.max_data_line_length must be at least 1000 (RFC 5321 §4.5.3.1.6)".into());
    }
    let tls = tls_pair("smtp", s.tls_cert, s.tls_key, base, problems);
    let require_tls = s.require_tls.unwrap_or(false);
    if require_tls && tls.is_none() {
        problems.push("smtp.require_tls needs smtp.tls_cert and smtp.tls_key".into());
    }
    let bare_newline = match s.bare_newline.as_deref().unwrap_or("normalize") {
        "normalize" => smtp::BareNewline::Normalize,
        "reject" => smtp::BareNewline::Reject,
        other => {
            problems.push(format!(
                "smtp.bare_newline: {other:?} is not \"normalize\" or \"reject\""
            ));
            smtp::BareNewline::Normalize
        }
    };
    let nul_bytes = match s.nul_bytes.as_deref().unwrap_or("reject") {
        "reject" => smtp::NulBytes::Reject,
        "strip" => smtp::NulBytes::Strip,
        other => {
            problems.push(format!(
                "smtp.nul_bytes: {other:?} is not \"reject\" or \"strip\""
            ));
            smtp::NulBytes::Reject
        }
    };
    let in_flow_delay_ms = s.in_flow_delay_ms.unwrap_or(1000);
    if in_flow_delay_ms > MAX_IN_FLOW_DELAY_MS {
        problems.push(format!(
            "smtp.in_flow_delay_ms must be at most {MAX_IN_FLOW_DELAY_MS}"
        ));
    }
    let allow_routing_from = networks(
        "smtp.allow_routing_from",
        s.allow_routing_from.unwrap_or_default(),
        problems,
    );
    (problems.len() == start).then(|| smtp::Settings {
        listen: listen.expect("checked above"),
        hostname,
        domains,
        max_message_size,
        max_recipients: max_recipients as usize,
        tls,
        require_tls,
        max_sessions: max_sessions as usize,
        max_sessions_per_ip: max_sessions_per_ip as usize,
        max_sessions_per_network: max_sessions_per_network as usize,
        shed_idle_after: Duration::from_secs(s.shed_idle_after_secs.unwrap_or(2)),
        max_line_length,
        max_data_line_length,
        max_errors: max_errors as u32,
        command_timeout: Duration::from_secs(command_timeout),
        first_command_timeout: Duration::from_secs(first_command_timeout),
        stress_timeout: Duration::from_secs(stress_timeout),
        data_timeout: Duration::from_secs(data_timeout),
        greet_delay: Duration::from_millis(s.greet_delay_ms.unwrap_or(0)),
        proxy_protocol: s.proxy_protocol.unwrap_or(false),
        bare_newline,
        nul_bytes,
        allow_routing_from,
        shutdown_grace: Duration::from_secs(s.shutdown_grace_secs.unwrap_or(30)),
        max_buffered_bytes,
        min_free_disk,
        in_flow_delay: Duration::from_millis(in_flow_delay_ms),
    })
}

//! The TOML configuration: parsed strictly, then validated with every problem
//! reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use bulwark_consensus::{NodeConfig, PeerConfig, RaftSettings};
use serde::Deserialize;

use crate::policy::Policy;
use crate::{delivery, smtp};

mod scanning;
mod siem;

pub use scanning::{DnsConfig, ScanConfig};

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Option<RawNode>,
    cluster: Option<RawCluster>,
    api: Option<RawApi>,
    raft: Option<RawRaft>,
    smtp: Option<RawSmtp>,
    delivery: Option<RawDelivery>,
    scan: Option<scanning::RawScan>,
    dns: Option<scanning::RawDns>,
    policy: Option<scanning::RawPolicy>,
    quarantine: Option<RawQuarantine>,
    siem: Option<siem::RawSiem>,
    audit: Option<RawAudit>,
    backup: Option<RawBackup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    /// The directory `POST /v1/backup` and `bulwark backup` write backups into, and
    /// nowhere else; relative to data_dir (default `backups` there). Created at the
    /// first backup if missing.
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// Seconds between signed checkpoints of the event chain (default 3600; 0: none).
    checkpoint_secs: Option<u64>,
    /// Days events are kept (fractions allowed); absent or 0: whatever their age.
    retention_days: Option<f64>,
    /// Most events kept; beyond it the oldest go (down to nine tenths of it).
    max_events: Option<u64>,
    /// Remove events a SIEM exporter has not shipped yet (default false).
    retention_ignores_exporters: Option<bool>,
    /// Seconds between runs of the retention (default 600).
    retention_check_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    /// Days a quarantined message is kept (fractions allowed); 0: until someone acts.
    retention_days: Option<f64>,
    /// How often the leader looks for messages past the retention, in seconds.
    check_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    /// Next hop (`host:port`) for accepted mail; absent: the Maildir below.
    relay: Option<String>,
    /// Maildir for accepted mail when there is no relay, relative to data_dir.
    maildir: Option<PathBuf>,
    /// Deliveries in progress at once on this node (default 32).
    concurrency: Option<usize>,
    /// Seconds a delivery lease lasts (renewed while sending).
    lease_secs: Option<u64>,
    /// Seconds another node waits before delivering a message its accepting node has
    /// not delivered (that node may be down).
    takeover_secs: Option<u64>,
    /// First retry delay after a temporary failure, in seconds; doubles each time.
    retry_initial_secs: Option<u64>,
    /// Longest retry delay, in seconds.
    retry_max_secs: Option<u64>,
    /// Seconds after acceptance when a recipient still deferred fails for good.
    max_age_secs: Option<u64>,
    /// Seconds to connect to the next hop.
    connect_timeout_secs: Option<u64>,
    /// Seconds to wait for each reply of the next hop (RFC 5321: 5 minutes).
    command_timeout_secs: Option<u64>,
    /// Seconds to wait for the reply to the end of data (RFC 5321: 10 minutes).
    data_timeout_secs: Option<u64>,
    /// Milliseconds between scans of the queue for due messages.
    poll_ms: Option<u64>,
    /// STARTTLS to the relay: `none`, `opportunistic` (default) or `required`.
    tls: Option<String>,
    /// Extra trust anchors (PEM) for `required` TLS, besides the web PKI roots.
    tls_ca: Option<PathBuf>,
    /// Name the relay's certificate must carry (default: the relay's host).
    tls_name: Option<String>,
    /// Connections open at once from this node to one next hop.
    max_connections_per_destination: Option<usize>,
    /// Seconds an unused connection stays open for the next message (0: never).
    connection_cache_secs: Option<u64>,
    /// Per-domain next hops: `"example.test" = { relay = "host:port" }`; a key
    /// starting with `.` covers every subdomain.
    routes: Option<BTreeMap<String, RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// Next hop `host:port` for the domain (or `mx = true`).
    relay: Option<String>,
    /// Deliver to the recipient domain's MX hosts, looked up through `[dns]`.
    mx: Option<bool>,
    /// Port of the MX hosts (default 25).
    port: Option<u16>,
    /// As `delivery.tls`; default: the `[delivery]` value.
    tls: Option<String>,
    /// As `delivery.tls_ca`; default: the `[delivery]` value.
    tls_ca: Option<PathBuf>,
    /// As `delivery.tls_name`; default: the route's host.
    tls_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    id: Option<u64>,
    /// Where the node keeps its data. Like every relative path in a config file, it
    /// is relative to the file's own directory.
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// Address for Raft traffic from the other nodes (mutual TLS).
    listen: Option<String>,
    /// Every voter by node id, this node included: `{ 1 = "host:port", ... }`.
    peers: Option<BTreeMap<String, String>>,
    /// Cluster CA certificate (PEM); relative paths are relative to the config file.
    ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    /// Address of the HTTP API.
    listen: Option<String>,
    /// File holding the admin bearer token, relative to data_dir; created at first start.
    admin_token_file: Option<PathBuf>,
    /// Certificate chain (PEM); with `tls_key`, the API is served over HTTPS only.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    /// Leader heartbeat in milliseconds (also the replication RPC timeout).
    heartbeat_ms: Option<u64>,
    /// Base election timeout in milliseconds; at least 4 heartbeats.
    election_timeout_ms: Option<u64>,
    /// Take a snapshot after this many log entries.
    snapshot_every: Option<u64>,
    /// Also take one after this many bytes of log entries (message bodies included).
    snapshot_log_bytes: Option<u64>,
    /// Log entries kept after a snapshot for followers that lag a little.
    keep_logs: Option<u64>,
    /// How long a write waits for a quorum before the client is told to retry.
    commit_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
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
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub api_listen: SocketAddr,
    /// Certificate chain and key of the API's HTTPS (`[api] tls_cert`, `tls_key`).
    pub api_tls: Option<(PathBuf, PathBuf)>,
    pub admin_token_file: PathBuf,
    /// Where backups may be written (`[backup] dir`).
    pub backup_dir: PathBuf,
    pub smtp: smtp::Settings,
    pub delivery: delivery::Settings,
    pub scan: ScanConfig,
    pub dns: DnsConfig,
    pub policy: Policy,
    pub quarantine: crate::quarantine::Settings,
    /// `[[siem.exporters]]`.
    pub siem: Vec<crate::siem::Exporter>,
    pub audit: crate::audit::Settings,
}

impl Config {
    /// The embedded default: a single-node cluster in `./bulwark-data`.
    pub fn embedded() -> Config {
        Self::validate(Raw::default(), Path::new(".")).expect("the embedded default is valid")
    }

    /// Reads and validates `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let raw: Raw =
            toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(raw, base)
    }

    fn validate(raw: Raw, base: &Path) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let node = raw.node.unwrap_or(RawNode {
            id: None,
            data_dir: None,
        });
        let id = node.id.unwrap_or(1);
        if id == 0 {
            problems.push("node.id must be a positive integer".to_string());
        }
        let data_dir = relative_to(
            base,
            node.data_dir
                .unwrap_or_else(|| PathBuf::from("bulwark-data")),
        );

        let cluster = raw
            .cluster
            .map(|c| validate_cluster(c, id, base, &mut problems));

        let api = raw.api.unwrap_or(RawApi {
            listen: None,
            admin_token_file: None,
            tls_cert: None,
            tls_key: None,
        });
        let api_tls = tls_pair("api", api.tls_cert, api.tls_key, base, &mut problems);
        let api_listen = parse_addr(
            "api.listen",
            api.listen.as_deref().unwrap_or("127.0.0.1:8080"),
            &mut problems,
        );
        let admin_token_file =
            data_dir.join(api.admin_token_file.unwrap_or_else(|| "admin.token".into()));
        let backup_dir = data_dir.join(
            raw.backup
                .and_then(|b| b.dir)
                .unwrap_or_else(|| "backups".into()),
        );
        if data_dir.starts_with(&backup_dir) {
            problems.push(format!(
                "backup.dir ({}) must not be the data directory or hold it",
                backup_dir.display()
            ));
        }

        let defaults = RaftSettings::default();
        let r = raw.raft.unwrap_or(RawRaft {
            heartbeat_ms: None,
            election_timeout_ms: None,
            snapshot_every: None,
            snapshot_log_bytes: None,
            keep_logs: None,
            commit_timeout_ms: None,
        });
        let raft = RaftSettings {
            heartbeat_ms: r.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
            election_timeout_ms: r
                .election_timeout_ms
                .unwrap_or(defaults.election_timeout_ms),
            snapshot_every: r.snapshot_every.unwrap_or(defaults.snapshot_every),
            snapshot_log_bytes: r.snapshot_log_bytes.unwrap_or(defaults.snapshot_log_bytes),
            keep_logs: r.keep_logs.unwrap_or(defaults.keep_logs),
            commit_timeout_ms: r.commit_timeout_ms.unwrap_or(defaults.commit_timeout_ms),
        };
        if raft.heartbeat_ms < 10 {
            problems.push("raft.heartbeat_ms must be at least 10".into());
        }
        if raft.election_timeout_ms < 4 * raft.heartbeat_ms {
            problems.push(format!(
                "raft.election_timeout_ms ({}) must be at least 4 x raft.heartbeat_ms ({})",
                raft.election_timeout_ms, raft.heartbeat_ms
            ));
        }
        if raft.snapshot_every == 0 {
            problems.push("raft.snapshot_every must be positive".into());
        }
        if raft.snapshot_log_bytes < 1024 * 1024 {
            problems.push("raft.snapshot_log_bytes must be at least 1 MiB".into());
        }
        if raft.commit_timeout_ms < 100 {
            problems.push("raft.commit_timeout_ms must be at least 100".into());
        }

        let smtp = validate_smtp(raw.smtp.unwrap_or_default(), base, &mut problems);
        let delivery = validate_delivery(
            raw.delivery.unwrap_or_default(),
            base,
            &data_dir,
            smtp.as_ref().map_or("localhost", |s| s.hostname.as_str()),
            &mut problems,
        );

        let scan = scanning::validate_scan(raw.scan.unwrap_or_default(), base, &mut problems);
        let dns = scanning::validate_dns(raw.dns.unwrap_or_default(), &mut problems);
        let policy = scanning::validate_policy(raw.policy.unwrap_or_default(), &mut problems);
        let quarantine = validate_quarantine(raw.quarantine.unwrap_or_default(), &mut problems);
        let siem = siem::validate_siem(raw.siem.unwrap_or_default(), base, &mut problems);
        let audit = validate_audit(raw.audit.unwrap_or_default(), &mut problems);

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            node: NodeConfig {
                id,
                data_dir,
                cluster: cluster.flatten(),
                raft,
            },
            api_listen: api_listen.expect("checked above"),
            api_tls,
            admin_token_file,
            backup_dir,
            smtp: smtp.expect("checked above"),
            delivery: delivery.expect("checked above"),
            scan,
            dns,
            policy,
            quarantine,
            siem,
            audit,
        })
    }
}

fn validate_audit(a: RawAudit, problems: &mut Vec<String>) -> crate::audit::Settings {
    let defaults = crate::audit::Settings::default();
    let days = a.retention_days.unwrap_or(0.0);
    let retention = retention_days(
        "audit.retention_days",
        days,
        "keep whatever the age",
        problems,
    );
    if a.max_events.is_some_and(|m| m < 10) {
        problems.push("audit.max_events must be at least 10".into());
    }
    let check_secs = a
        .retention_check_secs
        .unwrap_or(defaults.retention_check_every.as_secs());
    if check_secs == 0 {
        problems.push("audit.retention_check_secs must be positive".into());
    }
    crate::audit::Settings {
        checkpoint_every: match a.checkpoint_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => defaults.checkpoint_every,
        },
        retention,
        retention_days: days,
        max_events: a.max_events,
        retention_ignores_exporters: a.retention_ignores_exporters.unwrap_or(false),
        retention_check_every: Duration::from_secs(check_secs.max(1)),
    }
}

/// A retention in days (fractions allowed): 0 means none, up to 100 years.
fn retention_days(
    field: &str,
    days: f64,
    zero_means: &str,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    if !(0.0..=36_500.0).contains(&days) {
        problems.push(format!(
            "{field} must be 0 ({zero_means}) to 36500, not {days}"
        ));
        return None;
    }
    (days > 0.0).then(|| Duration::from_secs_f64(days * 86_400.0))
}

fn validate_quarantine(
    q: RawQuarantine,
    problems: &mut Vec<String>,
) -> crate::quarantine::Settings {
    let defaults = crate::quarantine::Settings::default();
    let days = q.retention_days.unwrap_or(defaults.retention_days);
    let retention = retention_days(
        "quarantine.retention_days",
        days,
        "keep until someone acts",
        problems,
    );
    let check_secs = q.check_secs.unwrap_or(defaults.check_every.as_secs());
    if check_secs == 0 {
        problems.push("quarantine.check_secs must be positive".into());
    }
    crate::quarantine::Settings {
        retention,
        retention_days: days,
        check_every: Duration::from_secs(check_secs.max(1)),
    }
}

fn validate_delivery(
    d: RawDelivery,
    base: &Path,
    data_dir: &Path,
    hostname: &str,
    problems: &mut Vec<String>,
) -> Option<delivery::Settings> {
    let start = problems.len();
    let default_tls = d.tls.as_deref().unwrap_or("opportunistic");
    let default_ca = d.tls_ca.map(|ca| relative_to(base, ca));
    let default = match d.relay {
        Some(relay) => relay_route(
            "delivery",
            relay,
            default_tls,
            default_ca.as_deref(),
            d.tls_name,
            problems,
        ),
        None => Some(delivery::Route::Maildir(
            data_dir.join(d.maildir.unwrap_or_else(|| "delivered".into())),
        )),
    };
    let mut domains = Vec::new();
    for (domain, route) in d.routes.unwrap_or_default() {
        let (dot, name) = match domain.strip_prefix('.') {
            Some(rest) => (".", rest),
            None => ("", domain.as_str()),
        };
        let Some(ascii) = crate::mail::ascii_domain(name).filter(|a| !a.is_empty()) else {
            problems.push(format!("delivery.routes: {domain:?} is not a domain"));
            continue;
        };
        let ca = route.tls_ca.map(|ca| relative_to(base, ca));
        let section = format!("delivery.routes.{domain:?}");
        let tls = route.tls.as_deref().unwrap_or(default_tls);
        let ca = ca.as_deref().or(default_ca.as_deref());
        let built = match (route.relay, route.mx.unwrap_or(false)) {
            (Some(relay), false) => relay_route(&section, relay, tls, ca, route.tls_name, problems),
            (None, true) => mx_route(&section, route.port.unwrap_or(25), tls, ca, problems),
            _ => {
                problems.push(format!("{section}: give either relay or mx = true"));
                None
            }
        };
        if let Some(built) = built {
            domains.push((format!("{dot}{ascii}"), built));
        }
    }
    let mut secs = |name: &str, value: Option<u64>, default: u64| {
        let value = value.unwrap_or(default);
        if value == 0 {
            problems.push(format!("delivery.{name} must be positive"));
        }
        Duration::from_secs(value)
    };
    let lease = secs("lease_secs", d.lease_secs, 30);
    let takeover_after = secs("takeover_secs", d.takeover_secs, 20);
    let retry_initial = secs("retry_initial_secs", d.retry_initial_secs, 300);
    let retry_max = secs("retry_max_secs", d.retry_max_secs, 4000);
    let max_age = secs("max_age_secs", d.max_age_secs, 5 * 86_400);
    let connect_timeout = secs("connect_timeout_secs", d.connect_timeout_secs, 30);
    let command_timeout = secs("command_timeout_secs", d.command_timeout_secs, 300);
    let data_timeout = secs("data_timeout_secs", d.data_timeout_secs, 600);
    let concurrency = d.concurrency.unwrap_or(32);
    if concurrency == 0 {
        problems.push("delivery.concurrency must be positive".into());
    }
    let poll = Duration::from_millis(d.poll_ms.unwrap_or(500).max(10));
    let max_connections_per_destination = d.max_connections_per_destination.unwrap_or(20);
    if max_connections_per_destination == 0 {
        problems.push("delivery.max_connections_per_destination must be positive".into());
    }
    let connection_cache = Duration::from_secs(d.connection_cache_secs.unwrap_or(5));
    (problems.len() == start).then(|| delivery::Settings {
        routes: delivery::Routes {
            default: default.expect("checked above"),
            domains,
        },
        max_connections_per_destination,
        connection_cache,
        hostname: hostname.to_string(),
        concurrency,
        lease,
        takeover_after,
        retry_initial,
        retry_max,
        max_age,
        connect_timeout,
        command_timeout,
        data_timeout,
        poll,
    })
}

/// A route to the recipient domain's MX hosts.
fn mx_route(
    section: &str,
    port: u16,
    tls: &str,
    ca: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<delivery::Route> {
    let start = problems.len();
    let policy = tls_policy(section, tls, problems);
    let verified = client_config(section, ca, problems);
    (problems.len() == start).then(|| {
        delivery::Route::Mx(delivery::Mx {
            domain: String::new(),
            port,
            tls: policy.expect("checked above"),
            verified,
        })
    })
}

/// A route's `tls` value, or a problem.
fn tls_policy(section: &str, tls: &str, problems: &mut Vec<String>) -> Option<delivery::TlsPolicy> {
    let policy = delivery::TlsPolicy::parse(tls);
    if policy.is_none() {
        problems.push(format!(
            "{section}.tls: {tls:?} is not none, opportunistic or required"
        ));
    }
    policy
}

/// The TLS client of `required`: the web PKI roots plus the CA file, if any.
pub(crate) fn client_config(
    section: &str,
    ca: Option<&Path>,
    problems: &mut Vec<String>,
) -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(root_store(section, ca, problems))
            .with_no_client_auth(),
    )
}

/// The web PKI roots and those of `ca`.
fn root_store(
    section: &str,
    ca: Option<&Path>,
    problems: &mut Vec<String>,
) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = ca {
        match crate::tls::load_certs(ca) {
            Ok(certs) => {
                for cert in certs {
                    if let Err(e) = roots.add(cert) {
                        problems.push(format!("{section}.tls_ca {}: {e}", ca.display()));
                    }
                }
            }
            Err(e) => problems.push(format!("{section}.tls_ca: {e:#}")),
        }
    }
    roots
}

/// An SMTP next hop from its config: address, TLS policy, trust anchors and name.
fn relay_route(
    section: &str,
    relay: String,
    tls: &str,
    ca: Option<&Path>,
    tls_name: Option<String>,
    problems: &mut Vec<String>,
) -> Option<delivery::Route> {
    let start = problems.len();
    let host = match relay.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        _ => {
            problems.push(format!("{section}.relay: {relay:?} is not host:port"));
            String::new()
        }
    };
    let policy = tls_policy(section, tls, problems);
    let verified = client_config(section, ca, problems);
    (problems.len() == start).then(|| {
        delivery::Route::Relay(delivery::Relay {
            address: relay,
            tls: policy.expect("checked above"),
            tls_name: tls_name.unwrap_or(host),
            verified,
        })
    })
}

fn validate_smtp(s: RawSmtp, base: &Path, problems: &mut Vec<String>) -> Option<smtp::Settings> {
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
    })
}

/// A list of networks (`10.0.0.0/8`) or single addresses; each item that is neither
/// is reported.
fn networks(name: &str, list: Vec<String>, problems: &mut Vec<String>) -> Vec<ipnet::IpNet> {
    list.into_iter()
        .filter_map(|item| {
            let parsed = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    problems.push(format!(
                        "{name}: {item:?} is neither an address nor a network (10.0.0.0/8)"
                    ));
                    None
                }
            }
        })
        .collect()
}

/// A certificate chain and key given as `SECTION.tls_cert` and `SECTION.tls_key`:
/// both or neither, each a readable file (relative to the config's directory).
fn tls_pair(
    section: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<(PathBuf, PathBuf)> {
    match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let (cert, key) = (relative_to(base, cert), relative_to(base, key));
            for (name, path) in [("tls_cert", &cert), ("tls_key", &key)] {
                if !path.is_file() {
                    problems.push(format!(
                        "{section}.{name}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
            Some((cert, key))
        }
        _ => {
            problems.push(format!(
                "{section}.tls_cert and {section}.tls_key go together"
            ));
            None
        }
    }
}

fn relative_to(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() && base != Path::new(".") && base != Path::new("") {
        base.join(path)
    } else {
        path
    }
}

fn parse_addr(field: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(e) => {
            problems.push(format!(
                "{field}: {value:?} is not an address (host:port): {e}"
            ));
            None
        }
    }
}

fn validate_cluster(
    c: RawCluster,
    id: u64,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<PeerConfig> {
    let start = problems.len();
    let listen = c.listen.unwrap_or_default();
    if listen.is_empty() {
        problems.push("cluster.listen is required".into());
    } else {
        parse_addr("cluster.listen", &listen, problems);
    }
    let mut peers = BTreeMap::new();
    for (key, addr) in c.peers.unwrap_or_default() {
        match key.parse::<u64>() {
            Ok(peer) if peer > 0 => {
                if !addr.contains(':') {
                    problems.push(format!("cluster.peers.{key}: {addr:?} is not host:port"));
                }
                peers.insert(peer, addr);
            }
            _ => problems.push(format!(
                "cluster.peers: key {key:?} is not a positive node id"
            )),
        }
    }
    if peers.is_empty() {
        problems.push("cluster.peers must list every node, this one included".into());
    } else if !peers.contains_key(&id) {
        problems.push(format!(
            "cluster.peers does not list this node (node.id = {id})"
        ));
    }
    let mut file = |name: &str, value: Option<PathBuf>| -> PathBuf {
        let Some(path) = value else {
            problems.push(format!("cluster.{name} is required"));
            return PathBuf::new();
        };
        let path = relative_to(base, path);
        if !path.is_file() {
            problems.push(format!(
                "cluster.{name}: {} is not a readable file",
                path.display()
            ));
        }
        path
    };
    let ca = file("ca", c.ca);
    let cert = file("cert", c.cert);
    let key = file("key", c.key);
    (problems.len() == start).then_some(PeerConfig {
        listen,
        peers,
        ca,
        cert,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn embedded_default_is_single_node() {
        let c = Config::embedded();
        assert_eq!(c.node.id, 1);
        assert!(c.node.cluster.is_none());
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.admin_token_file,
            PathBuf::from("bulwark-data/admin.token")
        );
        assert_eq!(c.smtp.listen.to_string(), "127.0.0.1:2525");
        assert_eq!(c.smtp.domains, vec!["localhost", "example.test"]);
        assert_eq!(c.smtp.max_message_size, 26_214_400);
        assert!(c.smtp.tls.is_none());
        assert_eq!(c.backup_dir, PathBuf::from("bulwark-data/backups"));
    }

    #[test]
    fn the_backup_directory_is_relative_to_the_data_directory_and_apart_from_it() {
        let c =
            parse("[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"/var/backups/b\"\n").unwrap();
        assert_eq!(c.backup_dir, PathBuf::from("/var/backups/b"));
        let c = parse("[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"saved\"\n").unwrap();
        assert_eq!(c.backup_dir, PathBuf::from("/srv/b/saved"));
        for dir in ["", "/srv", "/"] {
            let problems = parse(&format!(
                "[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"{dir}\"\n"
            ))
            .unwrap_err();
            assert!(
                problems[0].contains("must not be the data directory or hold it"),
                "{dir:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = parse(
            r#"
            [node]
            id = 0
            [api]
            listen = "nowhere"
            [cluster]
            peers = { "x" = "127.0.0.1:1", "2" = "127.0.0.1:2" }
            ca = "missing-ca.pem"
            [raft]
            heartbeat_ms = 500
            election_timeout_ms = 1000
            [smtp]
            listen = "localhost"
            domains = ["a b"]
            max_message_size = 0
            tls_cert = "smtp.pem"
            bare_newline = "strip"
            [quarantine]
            retention_days = -1
            check_secs = 0
            "#,
        )
        .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "node.id must be a positive integer",
            "api.listen",
            "cluster.listen is required",
            "key \"x\" is not a positive node id",
            "does not list this node",
            "cluster.ca",
            "cluster.cert is required",
            "cluster.key is required",
            "election_timeout_ms (1000) must be at least 4 x",
            "smtp.listen",
            "smtp.domains: \"a b\" is not a domain",
            "smtp.max_message_size must be positive",
            "smtp.tls_cert and smtp.tls_key go together",
            "smtp.bare_newline",
            "quarantine.retention_days must be 0 (keep until someone acts) to 36500, not -1",
            "quarantine.check_secs must be positive",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn smtp_allow_routing_from_takes_networks_and_addresses() {
        let problems =
            parse("[smtp]\nallow_routing_from = [\"10.0.0.0/8\", \"nowhere\", \"10.0.0.0/99\"]\n")
                .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "smtp.allow_routing_from: \"nowhere\" is neither",
            "smtp.allow_routing_from: \"10.0.0.0/99\" is neither",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let c = parse("[smtp]\nallow_routing_from = [\"10.1.2.3/8\", \"2001:db8::1\"]\n").unwrap();
        let nets: Vec<String> = c
            .smtp
            .allow_routing_from
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "2001:db8::1/128"]);
        assert!(Config::embedded().smtp.allow_routing_from.is_empty());
    }

    #[test]
    fn smtp_nul_bytes_is_reject_or_strip() {
        let problems = parse("[smtp]\nnul_bytes = \"keep\"\n").unwrap_err();
        assert_eq!(
            problems,
            ["smtp.nul_bytes: \"keep\" is not \"reject\" or \"strip\""]
        );
        let c = parse("[smtp]\nnul_bytes = \"strip\"\n").unwrap();
        assert_eq!(c.smtp.nul_bytes, smtp::NulBytes::Strip);
        assert_eq!(Config::embedded().smtp.nul_bytes, smtp::NulBytes::Reject);
    }

    #[test]
    fn smtp_session_limits_and_timeouts_are_checked_together() {
        let problems = parse(
            r#"
            [smtp]
            max_sessions_per_network = 0
            first_command_timeout_secs = 0
            stress_timeout_secs = 0
            "#,
        )
        .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "smtp.max_sessions_per_network must be positive",
            "smtp.first_command_timeout_secs must be positive",
            "smtp.stress_timeout_secs must be positive",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let d = Config::embedded().smtp;
        assert_eq!(d.max_sessions_per_network, 200);
        assert_eq!(d.first_command_timeout, Duration::from_secs(30));
        assert_eq!(d.stress_timeout, Duration::from_secs(10));
        assert_eq!(d.shed_idle_after, Duration::from_secs(2));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let problems = parse("[node]\nid = 1\ncolour = \"red\"\n").unwrap_err();
        assert!(
            problems[0].contains("unknown field `colour`"),
            "{problems:?}"
        );
    }
}

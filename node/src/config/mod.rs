//! The TOML configuration: parsed strictly, then validated with every problem
//! reported at once.
//!
//! One file a section, each turning its part of the file into the runtime settings of
//! the code it configures: [`cluster`] (`[cluster]`, `[raft]`), [`smtp`],
//! [`delivery`], [`scanning`] (`[scan]`, `[dns]`), [`quarantine`], [`digest`],
//! [`audit`], [`siem`] and [`log`]. This file holds the whole file's shape, `[node]`, `[api]`
//! and `[backup]`, and the checks the sections share. [`preflight`] checks what the
//! file names on this machine (certificates, the data directory), for `check-config`,
//! which also prints [`Config::warnings`]: what a cluster leaves open. `[policy]` is the document of
//! [`crate::policy::Document`]: the cluster's policy, seeded from the first node's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_consensus::NodeConfig;
use serde::Deserialize;

mod audit;
mod cluster;
mod delivery;
mod digest;
mod log;
mod preflight;
mod quarantine;
mod scanning;
mod siem;
mod smtp;
#[cfg(test)]
mod tests;

pub use scanning::{DnsConfig, ScanConfig};
pub(crate) use siem::{exporter, exporters, section};

/// The sections of a configuration file: a file with one of them is a node's
/// configuration, not a policy's keys alone.
pub const SECTIONS: [&str; 15] = [
    "node",
    "cluster",
    "api",
    "raft",
    "smtp",
    "delivery",
    "scan",
    "dns",
    "policy",
    "quarantine",
    "digest",
    "siem",
    "audit",
    "backup",
    "log",
];

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Option<RawNode>,
    cluster: Option<cluster::RawCluster>,
    api: Option<RawApi>,
    raft: Option<cluster::RawRaft>,
    smtp: Option<smtp::RawSmtp>,
    delivery: Option<delivery::RawDelivery>,
    scan: Option<scanning::RawScan>,
    dns: Option<scanning::RawDns>,
    policy: Option<crate::policy::Document>,
    quarantine: Option<quarantine::RawQuarantine>,
    digest: Option<digest::RawDigest>,
    siem: Option<siem::RawSiem>,
    audit: Option<audit::RawAudit>,
    backup: Option<RawBackup>,
    log: Option<log::RawLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    /// The directory `POST /v1/backup` and `bulwark backup` write backups into, and
    /// nowhere else; relative to data_dir (default `backups` there). Created at the
    /// first backup if missing.
    dir: Option<PathBuf>,
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
struct RawApi {
    /// Address of the HTTP API.
    listen: Option<String>,
    /// File holding the admin bearer token, relative to data_dir; created at first start.
    admin_token_file: Option<PathBuf>,
    /// Certificate chain (PEM); with `tls_key`, the API is served over HTTPS only.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// `/metrics` and `/v1/cluster` answer without a token (default true); false:
    /// a token of any role, `metrics` for Prometheus.
    public_status: Option<bool>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub api_listen: SocketAddr,
    /// Certificate chain and key of the API's HTTPS (`[api] tls_cert`, `tls_key`).
    pub api_tls: Option<(PathBuf, PathBuf)>,
    pub admin_token_file: PathBuf,
    /// `[api] public_status`: `/metrics` and `/v1/cluster` without a token.
    pub public_status: bool,
    /// Where backups may be written (`[backup] dir`).
    pub backup_dir: PathBuf,
    pub smtp: crate::smtp::Settings,
    pub delivery: crate::delivery::Settings,
    pub scan: ScanConfig,
    pub dns: DnsConfig,
    /// The `[policy]` section as written, defaults filled in, with the rule and
    /// signature files `[scan]` names: what this node judges by until it has read the
    /// cluster's policy, and what a new cluster's first policy is seeded from.
    pub policy_document: crate::policy::Document,
    pub quarantine: crate::quarantine::Settings,
    /// `[digest]`: the quarantine digest and the recipients' links.
    pub digest: crate::quarantine::digest::Settings,
    /// The exporters of `policy_document`, built with `siem_local`.
    pub siem: Vec<crate::siem::Exporter>,
    /// What this node gives the cluster's exporters: the directory their files are
    /// named relative to, the secrets its `[[siem.exporters]]` write inline.
    pub siem_local: crate::siem::Local,
    pub audit: crate::audit::Settings,
    /// `[log]`: the mail log.
    pub mail_log: crate::maillog::Settings,
}

/// Most TOML mistakes reported from one file.
const MAX_TOML_PROBLEMS: usize = 50;

/// The file as written, and each TOML mistake in it: after a mistake its lines are
/// set aside (commented out, so later line numbers stay true; a table that cannot be
/// read with all its keys) and the file is read again, until it reads or the same
/// place fails twice. `None` when it never read.
fn read(path: &Path, text: &str) -> (Option<Raw>, Vec<String>) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut problems = Vec::new();
    let mut last_start = None;
    while problems.len() < MAX_TOML_PROBLEMS {
        let current = lines.join("\n");
        let error = match toml::from_str::<Raw>(&current) {
            Ok(raw) => return (Some(raw), problems),
            Err(error) => error,
        };
        let span = error.span();
        let first = span.as_ref().map(|s| line_number(&current, s.start));
        let message = error.message().trim_end().replace('\n', " ");
        problems.push(match first {
            Some(line) => format!("{} line {}: {message}", path.display(), line + 1),
            None => format!("{}: {message}", path.display()),
        });
        let Some(span) = span else { break };
        let first = line_number(&current, span.start);
        let mut last = line_number(&current, span.end.saturating_sub(1).max(span.start));
        if lines[first].trim_start().starts_with('[') {
            // A table that cannot be read goes with its keys, up to the next table.
            last = (first + 1..lines.len())
                .find(|&i| lines[i].trim_start().starts_with('['))
                .map_or(lines.len() - 1, |next| next - 1);
        }
        if last_start == Some(span.start) {
            break;
        }
        last_start = Some(span.start);
        for line in &mut lines[first..=last] {
            line.insert(0, '#');
        }
    }
    (None, problems)
}

/// The 0-based line of byte `offset` in `text`.
fn line_number(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

impl Config {
    /// The embedded default: a single-node cluster in `./bulwark-data`.
    pub fn embedded() -> Config {
        Self::validate(Raw::default(), Path::new(".")).expect("the embedded default is valid")
    }

    /// What the scanner takes from the sections beside `[scan]`.
    pub fn site(&self) -> crate::scan::Site<'_> {
        crate::scan::Site {
            hostname: &self.smtp.hostname,
            domains: &self.smtp.domains,
            dns_timeout: self.dns.timeout,
            suffixes: &self.dns.suffixes,
        }
    }

    /// Reads and validates `path`, reporting every problem found: each TOML mistake
    /// (syntax, an unknown key, a wrong type) and then every problem of what the file
    /// means, read without the lines those mistakes are on.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let (raw, mut problems) = read(path, &text);
        let base = path.parent().unwrap_or(Path::new("."));
        match (
            raw.map(|raw| Self::validate(raw, base)),
            problems.is_empty(),
        ) {
            (Some(Ok(config)), true) => Ok(config),
            (Some(Ok(_)), false) | (None, _) => Err(problems),
            (Some(Err(more)), _) => {
                problems.extend(more);
                Err(problems)
            }
        }
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
            .map(|c| cluster::validate_cluster(c, id, base, &mut problems));

        let api = raw.api.unwrap_or(RawApi {
            listen: None,
            admin_token_file: None,
            tls_cert: None,
            tls_key: None,
            public_status: None,
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

        let raft = cluster::validate_raft(raw.raft, &mut problems);

        let smtp = smtp::validate_smtp(raw.smtp.unwrap_or_default(), base, &mut problems);
        let delivery = delivery::validate_delivery(
            raw.delivery.unwrap_or_default(),
            base,
            &data_dir,
            smtp.as_ref().map_or("localhost", |s| s.hostname.as_str()),
            &mut problems,
        );

        let raw_scan = raw.scan.unwrap_or_default();
        let scan = scanning::validate_scan(&raw_scan, &mut problems);
        let dns = scanning::validate_dns(raw.dns.unwrap_or_default(), base, &mut problems);
        let mut policy_document = raw.policy.unwrap_or_default();
        scanning::seed(raw_scan, base, &mut policy_document, &mut problems);
        if let Err(found) = policy_document.compile() {
            problems.extend(found);
        }
        let quarantine =
            quarantine::validate_quarantine(raw.quarantine.unwrap_or_default(), &mut problems);
        let digest = digest::validate_digest(
            raw.digest.unwrap_or_default(),
            api_listen,
            api_tls.is_some(),
            smtp.as_ref().map_or("localhost", |s| s.hostname.as_str()),
            &mut problems,
        );
        let mut siem_local = crate::siem::Local {
            base: base.to_path_buf(),
            ..crate::siem::Local::default()
        };
        let key = seed_exporters(
            raw.siem,
            &mut siem_local,
            &mut policy_document,
            &mut problems,
        );
        let siem = siem::exporters(
            key,
            policy_document.exporters.as_deref().unwrap_or_default(),
            &siem_local,
            &mut problems,
        );
        let audit = audit::validate_audit(
            raw.audit.unwrap_or_default(),
            base,
            &data_dir,
            &mut problems,
        );
        let mail_log = log::validate_log(raw.log.unwrap_or_default(), &data_dir, &mut problems);

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
            public_status: api.public_status.unwrap_or(true),
            backup_dir,
            smtp: smtp.expect("checked above"),
            delivery: delivery.expect("checked above"),
            scan,
            dns,
            policy_document: policy_document.complete(),
            quarantine,
            digest,
            siem,
            siem_local,
            audit,
            mail_log,
        })
    }
}

impl Config {
    /// What this file leaves open that `serve` still accepts: in a cluster of several
    /// nodes (whose members run on hosts of their own), the API or SMTP listening
    /// without TLS on an address other hosts reach. Each warning names the keys that
    /// close it.
    pub fn warnings(&self) -> Vec<String> {
        let clustered = self
            .node
            .cluster
            .as_ref()
            .is_some_and(|c| c.peers.len() > 1);
        if !clustered {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        if self.api_tls.is_none() && reachable(self.api_listen) {
            warnings.push(format!(
                "api.listen {} is reached from other hosts over plain HTTP: the admin \
                 token and the quarantined mail cross the network in clear; set \
                 api.tls_cert and api.tls_key, or listen on a loopback address",
                self.api_listen
            ));
        }
        if self.smtp.tls.is_none() && reachable(self.smtp.listen) {
            warnings.push(format!(
                "smtp.listen {} is reached from other hosts without STARTTLS: mail \
                 arrives in clear; set smtp.tls_cert and smtp.tls_key, or listen on a \
                 loopback address",
                self.smtp.listen
            ));
        }
        warnings
    }
}

/// Whether a listener on `addr` can be reached from other hosts: any address but a
/// loopback one (`0.0.0.0` and `[::]` listen on every interface).
fn reachable(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// The policy a configuration file holds: its `[policy]` section with the rule and
/// signature files its `[scan]` names (relative to the file) and its
/// `[[siem.exporters]]` (their inline secrets left out), the other sections ignored. What `bulwark policy apply --file` sends for a node's config file, as a
/// new cluster would be seeded from it.
pub fn policy_of(path: &Path) -> Result<crate::policy::Document, Vec<String>> {
    #[derive(Deserialize)]
    struct Parts {
        policy: Option<crate::policy::Document>,
        scan: Option<scanning::RawScan>,
        siem: Option<siem::RawSiem>,
        #[serde(flatten)]
        _others: toml::Table,
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let parts: Parts =
        toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut problems = Vec::new();
    let mut document = parts.policy.unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new("."));
    scanning::seed(
        parts.scan.unwrap_or_default(),
        base,
        &mut document,
        &mut problems,
    );
    // Inline secrets stay in the file: the policy names the exporter only.
    seed_exporters(
        parts.siem,
        &mut crate::siem::Local::default(),
        &mut document,
        &mut problems,
    );
    match problems.is_empty() {
        true => Ok(document),
        false => Err(problems),
    }
}

/// Adds `[[siem.exporters]]` to `policy` as its `exporters`, their inline secrets
/// taken out into `local`; both set is a problem. Says where the exporters were
/// written, to name their problems.
fn seed_exporters(
    siem: Option<siem::RawSiem>,
    local: &mut crate::siem::Local,
    policy: &mut crate::policy::Document,
    problems: &mut Vec<String>,
) -> &'static str {
    let Some(written) = siem.and_then(|s| s.exporters) else {
        return "policy.exporters";
    };
    if policy.exporters.is_some() {
        problems.push("siem.exporters and policy.exporters: one or the other".into());
        return "policy.exporters";
    }
    policy.exporters = Some(crate::siem::seed(written, local));
    "siem.exporters"
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

/// A listen address: an IP address and a port. A host name is refused with what to
/// write instead, since a listener binds to one address and a name may have several.
fn parse_addr(field: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let hint = match value.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => {
                    if host.eq_ignore_ascii_case("localhost") {
                        format!("a listen address is an IP address: write 127.0.0.1:{port}")
                    } else if host.contains(':') && !host.starts_with('[') {
                        format!("an IPv6 address goes in brackets: write [{host}]:{port}")
                    } else {
                        format!(
                            "a listen address is an IP address, not a host name: write \
                             0.0.0.0:{port} (every interface) or the one address to listen on"
                        )
                    }
                }
                _ => "a listen address is an IP address and a port, e.g. 127.0.0.1:2525 \
                      or [::1]:2525"
                    .to_string(),
            };
            problems.push(format!("{field}: {value:?}: {hint}"));
            None
        }
    }
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

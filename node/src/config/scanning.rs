//! The `[scan]` and `[dns]` sections. `[policy]` is the cluster's (see
//! [`crate::policy::Document`]); the rule and signature files `[scan]` names seed it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::relative_to;
use crate::policy::{Document, Source};
use crate::scan::suffixes::Suffixes;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScan {
    /// Milliseconds the whole scan of one message may take (default 10000).
    budget_ms: Option<u64>,
    /// SPF, DKIM, DMARC and ARC checks (default true; turn off only behind another
    /// gateway that authenticates and whose results you trust).
    authentication: Option<bool>,
    /// Spam rule files in SpamAssassin's syntax, read after the built-in rules.
    rules: Option<Vec<PathBuf>>,
    /// Files of SHA-256 hashes of known malware, one a line (a name may follow).
    malware_hashes: Option<Vec<PathBuf>>,
    /// ClamAV hash signature files (`.hdb`, `.hsb`).
    clamav_hashes: Option<Vec<PathBuf>>,
    /// DNS blocklists, `"zone=score[:kind[:codes]]"`: `"zone=score"` for client IPs,
    /// `"zone=score:domain"` for link domains, `"zone=score:ip:127.0.0.2,127.0.0.4"`
    /// to count only those answers (the kind comes before the codes).
    blocklists: Option<Vec<String>>,
    /// Attachment extensions to block, replacing the built-in list.
    blocked_extensions: Option<Vec<String>>,
    /// Archives inside archives opened at most this deep (default 5).
    max_archive_depth: Option<u32>,
    /// Files listed at most per message, archive members included (default 1000).
    max_archive_files: Option<usize>,
    /// Octets unpacked at most per message (default 100 MiB).
    max_unpacked_bytes: Option<u64>,
    /// Largest unpacked/packed ratio of an archive member (default 100).
    max_ratio: Option<u64>,
    /// The Bayesian classifier (default true); it scores once it has learned
    /// `bayes_min_messages` spam and as many ham (default 200, as SpamAssassin).
    bayes: Option<bool>,
    bayes_min_messages: Option<u64>,
    /// Distinct tokens the classifier keeps at most (default 1,000,000; 0: no
    /// limit): past it the longest unlearned are expired down to three quarters.
    bayes_max_tokens: Option<u64>,
    /// YARA rule files, compiled at start by boreal.
    yara_rules: Option<Vec<PathBuf>>,
    /// A clamd to send every message to.
    clamd: Option<RawClamd>,
    /// Our own relays in front of the gateway (addresses or networks): mail from
    /// them is judged by SPF and the IP blocklists as from the host they received
    /// it from, read from their `Received` headers.
    trusted_relays: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClamd {
    /// `ip:port` of its TCPSocket, or the path of its LocalSocket.
    address: String,
    /// Milliseconds allowed for one message (default 30000).
    timeout_ms: Option<u64>,
    /// When clamd cannot answer: true treats the message as malware, false (the
    /// default) lets it through with a `CLAMD_UNAVAILABLE` symbol.
    fail_closed: Option<bool>,
}

/// The validated `[scan.clamd]` section.
#[derive(Clone, Debug)]
pub struct ClamdConfig {
    pub address: crate::scan::clamd::ClamdAddress,
    pub timeout: Duration,
    pub fail_closed: bool,
}

/// The validated `[scan]` section: what this node runs the pipeline with. The rule
/// and signature files, blocklists and blocked extensions it names are the policy's
/// (see [`seed`]).
#[derive(Clone, Debug)]
pub struct ScanConfig {
    pub budget: Duration,
    pub authentication: bool,
    pub max_archive_depth: u32,
    pub max_archive_files: usize,
    pub max_unpacked_bytes: u64,
    pub max_ratio: u64,
    pub bayes: bool,
    pub bayes_min_messages: u64,
    /// `None`: no limit.
    pub bayes_max_tokens: Option<u64>,
    pub clamd: Option<ClamdConfig>,
    pub trusted_relays: Vec<ipnet::IpNet>,
}

impl ScanConfig {
    /// The limits on unpacking one message.
    pub fn limits(&self) -> crate::scan::contents::Limits {
        crate::scan::contents::Limits {
            max_depth: self.max_archive_depth,
            max_files: self.max_archive_files,
            max_total_bytes: self.max_unpacked_bytes,
            max_ratio: self.max_ratio,
        }
    }
}

/// The smallest `scan.bayes_max_tokens`: one message gives about a hundred.
const MIN_BAYES_TOKENS: u64 = 100;

pub(super) fn validate_scan(s: &RawScan, problems: &mut Vec<String>) -> ScanConfig {
    let budget_ms = s.budget_ms.unwrap_or(10_000);
    if budget_ms < 10 {
        problems.push("scan.budget_ms must be at least 10".into());
    }
    let trusted_relays = super::networks(
        "scan.trusted_relays",
        s.trusted_relays.clone().unwrap_or_default(),
        problems,
    );
    let config = ScanConfig {
        trusted_relays,
        budget: Duration::from_millis(budget_ms),
        authentication: s.authentication.unwrap_or(true),
        max_archive_depth: s.max_archive_depth.unwrap_or(5),
        max_archive_files: s.max_archive_files.unwrap_or(1000),
        max_unpacked_bytes: s.max_unpacked_bytes.unwrap_or(100 << 20),
        max_ratio: s.max_ratio.unwrap_or(100),
        bayes: s.bayes.unwrap_or(true),
        bayes_min_messages: s.bayes_min_messages.unwrap_or(200),
        bayes_max_tokens: match s.bayes_max_tokens.unwrap_or(1_000_000) {
            0 => None,
            n if n < MIN_BAYES_TOKENS => {
                problems.push(format!(
                    "scan.bayes_max_tokens must be 0 (no limit) or at least {MIN_BAYES_TOKENS}"
                ));
                None
            }
            n => Some(n),
        },
        clamd: s.clamd.clone().and_then(|c| validate_clamd(c, problems)),
    };
    if config.max_archive_files == 0 || config.max_unpacked_bytes == 0 || config.max_ratio == 0 {
        problems.push(
            "scan.max_archive_files, max_unpacked_bytes and max_ratio must be positive".into(),
        );
    }
    config
}

/// Adds to `policy` what `[scan]` names of the policy's: the rule and signature files
/// (read now, so their mistakes are reported with the rest), the blocklists and the
/// blocked extensions. A key set in both sections is a problem.
pub(super) fn seed(s: RawScan, base: &Path, policy: &mut Document, problems: &mut Vec<String>) {
    let mut files = |key: &str, paths: Option<Vec<PathBuf>>, into: &mut Option<Vec<Source>>| {
        let Some(paths) = paths else { return };
        if into.is_some() {
            problems.push(format!("scan.{key} and policy.{key}: one or the other"));
            return;
        }
        let mut sources: Vec<Source> = Vec::new();
        for path in paths {
            match Source::read(&relative_to(base, path)) {
                Ok(source) if sources.iter().any(|s| s.name == source.name) => {
                    problems.push(format!("scan.{key}: two files named {}", source.name))
                }
                Ok(source) => sources.push(source),
                Err(e) => problems.push(format!("scan.{key}: {e}")),
            }
        }
        *into = Some(sources);
    };
    files("rules", s.rules, &mut policy.rules);
    files("yara_rules", s.yara_rules, &mut policy.yara_rules);
    files(
        "malware_hashes",
        s.malware_hashes,
        &mut policy.malware_hashes,
    );
    files("clamav_hashes", s.clamav_hashes, &mut policy.clamav_hashes);
    for (key, from, into) in [
        ("blocklists", s.blocklists, &mut policy.blocklists),
        (
            "blocked_extensions",
            s.blocked_extensions,
            &mut policy.blocked_extensions,
        ),
    ] {
        match (from, into.is_some()) {
            (Some(_), true) => {
                problems.push(format!("scan.{key} and policy.{key}: one or the other"))
            }
            (Some(list), false) => *into = Some(list),
            (None, _) => {}
        }
    }
}

fn validate_clamd(c: RawClamd, problems: &mut Vec<String>) -> Option<ClamdConfig> {
    use crate::scan::clamd::ClamdAddress;
    let address = if c.address.starts_with('/') {
        ClamdAddress::Unix(PathBuf::from(&c.address))
    } else if let Ok(address) = c.address.parse::<SocketAddr>() {
        ClamdAddress::Tcp(address)
    } else {
        problems.push(format!(
            "scan.clamd.address: {:?} is neither ip:port nor an absolute socket path",
            c.address
        ));
        return None;
    };
    let timeout_ms = c.timeout_ms.unwrap_or(30_000);
    if !(100..=600_000).contains(&timeout_ms) {
        problems.push("scan.clamd.timeout_ms must be between 100 and 600000".into());
    }
    Some(ClamdConfig {
        address,
        timeout: Duration::from_millis(timeout_ms),
        fail_closed: c.fail_closed.unwrap_or(false),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// Nameservers (`ip:port`, or an IP for port 53); absent: the system resolver
    /// configuration.
    nameservers: Option<Vec<String>>,
    /// Milliseconds to wait for one answer (default 2000).
    timeout_ms: Option<u64>,
    /// A Public Suffix List file for DMARC's organizational domain; absent: the copy
    /// built into the binary.
    public_suffix_list: Option<String>,
}

/// The validated `[dns]` section.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Empty: the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    /// The public suffixes DMARC's alignment uses.
    pub suffixes: Arc<Suffixes>,
}

pub(super) fn validate_dns(d: RawDns, base: &Path, problems: &mut Vec<String>) -> DnsConfig {
    let mut nameservers = Vec::new();
    for server in d.nameservers.unwrap_or_default() {
        let parsed = server
            .parse::<SocketAddr>()
            .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(addr) => nameservers.push(addr),
            Err(_) => problems.push(format!(
                "dns.nameservers: {server:?} is not an IP address or ip:port"
            )),
        }
    }
    let timeout_ms = d.timeout_ms.unwrap_or(2000);
    if !(10..=30_000).contains(&timeout_ms) {
        problems.push("dns.timeout_ms must be between 10 and 30000".into());
    }
    let suffixes = match d.public_suffix_list {
        Some(file) => Suffixes::from_file(&base.join(file)).unwrap_or_else(|e| {
            problems.push(format!("dns.public_suffix_list: {e}"));
            Suffixes::BuiltIn
        }),
        None => Suffixes::BuiltIn,
    };
    DnsConfig {
        nameservers,
        timeout: Duration::from_millis(timeout_ms),
        suffixes: Arc::new(suffixes),
    }
}

//! The `[delivery]` section: the next hop or Maildir, per-domain routes, their TLS,
//! retries and timeouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{client_config, relative_to};
use crate::delivery;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    /// Next hop (`host:port`) for accepted mail; absent: the Maildir below.
    relay: Option<String>,
    /// Maildir for accepted mail when there is no relay, relative to data_dir.
    maildir: Option<PathBuf>,
    /// Deliveries in progress at once on this node (default 100, as Postfix's
    /// process limit); connections per next hop are bounded apart.
    concurrency: Option<usize>,
    /// Seconds a delivery lease lasts, by monotonic clocks: the holder sends for nine
    /// tenths of it, renewing every quarter; another node takes over a lease it has seen
    /// unrenewed this long.
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

pub(super) fn validate_delivery(
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
    let concurrency = d.concurrency.unwrap_or(100);
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

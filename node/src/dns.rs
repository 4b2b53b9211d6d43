//! The node's one DNS resolver (hickory, through mail-auth's re-export): the
//! `[dns]` nameservers or the system's, a shared cache, a timeout per lookup. Used
//! by authentication, blocklists and MX lookups for delivery.

use std::net::SocketAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::system_conf::read_system_conf;
pub use mail_auth::hickory_resolver::TokioResolver;

/// Times hickory tries a lookup that failed or timed out before giving up.
const DNS_ATTEMPTS: usize = 2;
/// Answers the resolver keeps, shared by every user.
const DNS_CACHE_ENTRIES: u64 = 16_384;

/// A resolver that asks `nameservers` (UDP, with TCP for truncated answers), or the
/// system's resolvers when the list is empty (the local server when the system has
/// no configuration), allowing `timeout` per lookup.
pub fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let system = if nameservers.is_empty() {
        match read_system_conf() {
            Ok(system) => Some(system),
            Err(e) => {
                // As the C library does without /etc/resolv.conf: the local server.
                tracing::warn!(error = %e, "no system DNS configuration; asking 127.0.0.1:53");
                None
            }
        }
    } else {
        None
    };
    let local = [SocketAddr::from(([127, 0, 0, 1], 53))];
    let nameservers = if nameservers.is_empty() && system.is_none() {
        &local[..]
    } else {
        nameservers
    };
    let (config, mut options) = if let Some(system) = system {
        system
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut connection| {
                        connection.port = addr.port();
                        connection
                    })
                    .collect();
                NameServerConfig::new(addr.ip(), true, connections)
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.use_hosts_file = ResolveHosts::Never;
        (ResolverConfig::from_name_servers(servers), options)
    };
    options.timeout = timeout;
    options.attempts = DNS_ATTEMPTS;
    options.cache_size = DNS_CACHE_ENTRIES;
    options.edns0 = true;
    options.try_tcp_on_error = true;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("building the DNS resolver: {e}"))
}

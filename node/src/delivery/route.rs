//! Which next hop a recipient's mail goes to, and how it is protected on the way.

use std::path::PathBuf;
use std::sync::Arc;

/// STARTTLS to the next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never, even when offered.
    None,
    /// When offered, without checking the certificate (RFC 7435); a failed
    /// handshake falls back to a plain connection.
    Opportunistic,
    /// Always, with the certificate verified against the route's trust anchors and
    /// name; a next hop without STARTTLS or with a bad certificate defers the mail.
    Required,
}

impl TlsPolicy {
    pub fn parse(value: &str) -> Option<TlsPolicy> {
        match value {
            "none" => Some(TlsPolicy::None),
            "opportunistic" => Some(TlsPolicy::Opportunistic),
            "required" => Some(TlsPolicy::Required),
            _ => None,
        }
    }
}

/// An SMTP next hop.
#[derive(Clone, Debug)]
pub struct Relay {
    /// `host:port`.
    pub address: String,
    pub tls: TlsPolicy,
    /// The name the certificate must carry (default: the host of `address`).
    pub tls_name: String,
    /// The TLS client of `Required`: the web PKI roots plus any configured CA.
    pub verified: Arc<rustls::ClientConfig>,
}

impl Relay {
    /// See [`Route::key`].
    pub fn key(&self) -> String {
        format!(
            "{}|{:?}|{}|{:p}",
            self.address,
            self.tls,
            self.tls_name,
            Arc::as_ptr(&self.verified)
        )
    }
}

/// Mail for a domain goes to the hosts its MX records name (RFC 5321 §5.1), in
/// order of preference, on `port`; the certificate must name the MX host.
#[derive(Clone, Debug)]
pub struct Mx {
    /// The recipient domain, IDNA ASCII; set when recipients are grouped.
    pub domain: String,
    pub port: u16,
    pub tls: TlsPolicy,
    pub verified: Arc<rustls::ClientConfig>,
}

/// Where mail for some recipients goes.
#[derive(Clone, Debug)]
pub enum Route {
    Relay(Relay),
    /// Looked up in DNS, per recipient domain.
    Mx(Mx),
    /// A Maildir (the embedded default).
    Maildir(PathBuf),
}

impl Route {
    /// What makes two routes the same: recipients are sent together, and a cached
    /// connection is reused, only under the same address, TLS policy, name and trust
    /// anchors.
    pub fn key(&self) -> String {
        match self {
            Route::Relay(relay) => relay.key(),
            Route::Mx(mx) => format!(
                "mx:{}:{}|{:?}|{:p}",
                mx.domain,
                mx.port,
                mx.tls,
                Arc::as_ptr(&mx.verified)
            ),
            Route::Maildir(root) => format!("maildir:{}", root.display()),
        }
    }

    /// How the route is named in events and logs.
    pub fn name(&self) -> String {
        match self {
            Route::Relay(relay) => relay.address.clone(),
            Route::Mx(mx) => format!("mx:{}", mx.domain),
            Route::Maildir(root) => format!("maildir:{}", root.display()),
        }
    }
}

/// The default route and the per-domain ones of `[delivery.routes]`.
#[derive(Clone, Debug)]
pub struct Routes {
    pub default: Route,
    /// `(domain, route)`: a domain matches itself; a key starting with `.` matches
    /// every subdomain. Lowercase, IDNA ASCII.
    pub domains: Vec<(String, Route)>,
}

impl Routes {
    /// The route for `address`: its exact domain first, then the closest parent
    /// `.domain` entry, then the default.
    pub fn for_recipient(&self, address: &str) -> &Route {
        let domain = domain_of(address);
        if let Some((_, route)) = self.domains.iter().find(|(key, _)| *key == domain) {
            return route;
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            let key = format!(".{parent}");
            if let Some((_, route)) = self.domains.iter().find(|(k, _)| *k == key) {
                return route;
            }
            rest = parent;
        }
        &self.default
    }

    /// Recipients grouped by route, in the order of first appearance; an MX route
    /// makes one group per recipient domain.
    pub fn group<'a>(&self, recipients: &[&'a str]) -> Vec<(Route, Vec<&'a str>)> {
        let mut groups: Vec<(String, Route, Vec<&'a str>)> = Vec::new();
        for &address in recipients {
            let mut route = self.for_recipient(address).clone();
            if let Route::Mx(mx) = &mut route {
                mx.domain = domain_of(address);
            }
            let name = route.key();
            match groups.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, _, list)) => list.push(address),
                None => groups.push((name, route, vec![address])),
            }
        }
        groups.into_iter().map(|(_, r, list)| (r, list)).collect()
    }
}

/// The domain of `address`, lowercase IDNA ASCII (empty if it has none).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .and_then(|(_, d)| crate::mail::ascii_domain(d))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(address: &str) -> Route {
        Route::Relay(Relay {
            address: address.into(),
            tls: TlsPolicy::Opportunistic,
            tls_name: "mx.test".into(),
            verified: Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        })
    }

    #[test]
    fn exact_domain_then_parent_then_default() {
        let routes = Routes {
            default: relay("default:25"),
            domains: vec![
                ("example.test".into(), relay("exact:25")),
                (".example.test".into(), relay("sub:25")),
                (".test".into(), relay("tld:25")),
                ("xn--bcher-kva.test".into(), relay("idna:25")),
            ],
        };
        let hop = |a: &str| routes.for_recipient(a).name();
        assert_eq!(hop("a@example.test"), "exact:25");
        assert_eq!(hop("a@EXAMPLE.test"), "exact:25");
        assert_eq!(hop("a@deep.mx.example.test"), "sub:25");
        assert_eq!(hop("a@other.test"), "tld:25");
        assert_eq!(hop("a@bücher.test"), "idna:25");
        assert_eq!(hop("a@elsewhere.org"), "default:25");
        let groups = routes.group(&["a@example.test", "b@elsewhere.org", "c@example.test"]);
        let names: Vec<_> = groups.iter().map(|(r, l)| (r.name(), l.len())).collect();
        assert_eq!(names, [("exact:25".into(), 2), ("default:25".into(), 1)]);
        // The same address under another TLS policy is another route.
        let mut strict = relay("default:25");
        if let Route::Relay(r) = &mut strict {
            r.tls = TlsPolicy::Required;
        }
        let routes = Routes {
            default: relay("default:25"),
            domains: vec![("bank.test".into(), strict)],
        };
        assert_eq!(routes.group(&["a@bank.test", "b@other.test"]).len(), 2);
    }
}

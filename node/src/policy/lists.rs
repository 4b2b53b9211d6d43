//! Allow and block lists: sender addresses, sender domains (and their subdomains with
//! a leading dot) and client networks.

use std::net::IpAddr;

use ipnet::IpNet;

/// One list's entries.
#[derive(Clone, Debug, Default)]
pub struct List {
    /// Lowercase addresses: `boss@partner.test`.
    addresses: Vec<String>,
    /// Lowercase IDNA ASCII domains; `.partner.test` also covers subdomains.
    domains: Vec<String>,
    networks: Vec<IpNet>,
}

/// An entry that is neither an address, a domain, an IP nor a network.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address, a domain, an IP address or a network")]
pub struct ListEntryError(pub String);

impl List {
    /// Adds `entry`: `user@domain`, `domain`, `.domain`, an IP address or a CIDR network.
    pub fn add(&mut self, entry: &str) -> Result<(), ListEntryError> {
        let bad = || ListEntryError(entry.to_string());
        let entry = entry.trim();
        if let Ok(ip) = entry.parse::<IpAddr>() {
            self.networks.push(IpNet::from(ip));
        } else if let Ok(net) = entry.parse::<IpNet>() {
            self.networks.push(net.trunc());
        } else if let Some((local, domain)) = entry.rsplit_once('@') {
            let domain = crate::mail::ascii_domain(domain).filter(|d| !d.is_empty());
            match (local.is_empty(), domain) {
                (false, Some(domain)) => self
                    .addresses
                    .push(format!("{}@{domain}", local.to_lowercase())),
                _ => return Err(bad()),
            }
        } else {
            let (dot, name) = match entry.strip_prefix('.') {
                Some(rest) => (".", rest),
                None => ("", entry),
            };
            let domain = crate::mail::ascii_domain(name)
                .filter(|d| {
                    !d.is_empty()
                        && d.split('.').all(|label| !label.is_empty())
                        && d.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                })
                .ok_or_else(bad)?;
            self.domains.push(format!("{dot}{domain}"));
        }
        Ok(())
    }

    /// The first entry matching any of the sender addresses or the client IP.
    pub fn matches(&self, senders: &[Option<&str>], ip: IpAddr) -> Option<String> {
        if let Some(net) = self.networks.iter().find(|n| n.contains(&ip)) {
            return Some(net.to_string());
        }
        for sender in senders.iter().flatten() {
            let Some((local, domain)) = sender.rsplit_once('@') else {
                continue;
            };
            let Some(domain) = crate::mail::ascii_domain(domain) else {
                continue;
            };
            let address = format!("{}@{domain}", local.to_lowercase());
            if let Some(a) = self.addresses.iter().find(|a| **a == address) {
                return Some(a.clone());
            }
            let hit = self.domains.iter().find(|d| match d.strip_prefix('.') {
                Some(parent) => domain == parent || domain.ends_with(d.as_str()),
                None => domain == **d,
            });
            if let Some(d) = hit {
                return Some(d.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_addresses_domains_subdomains_and_networks() {
        let mut list = List::default();
        for entry in [
            "Boss@Partner.test",
            "vendor.test",
            ".bank.test",
            "2001:db8::/32",
            "192.0.2.7",
            "bücher.test",
        ] {
            list.add(entry).unwrap();
        }
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let m = |sender: &str, addr: &str| list.matches(&[Some(sender)], ip(addr));
        assert_eq!(
            m("boss@partner.TEST", "10.0.0.1").as_deref(),
            Some("boss@partner.test")
        );
        assert_eq!(m("other@partner.test", "10.0.0.1"), None);
        assert_eq!(
            m("x@vendor.test", "10.0.0.1").as_deref(),
            Some("vendor.test")
        );
        assert_eq!(m("x@mail.vendor.test", "10.0.0.1"), None);
        assert_eq!(
            m("x@mail.bank.test", "10.0.0.1").as_deref(),
            Some(".bank.test")
        );
        assert_eq!(m("x@bank.test", "10.0.0.1").as_deref(), Some(".bank.test"));
        assert_eq!(m("x@evilbank.test", "10.0.0.1"), None);
        assert_eq!(
            m("x@xn--bcher-kva.test", "10.0.0.1").as_deref(),
            Some("xn--bcher-kva.test")
        );
        assert_eq!(m("", "2001:db8::5").as_deref(), Some("2001:db8::/32"));
        assert_eq!(m("", "192.0.2.7").as_deref(), Some("192.0.2.7/32"));
        assert_eq!(m("", "192.0.2.8"), None);
        assert_eq!(
            list.matches(&[None, Some("x@vendor.test")], ip("10.0.0.1"))
                .as_deref(),
            Some("vendor.test")
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        let mut list = List::default();
        for bad in ["@partner.test", "a@", "not a domain", "10.0.0.0/33", ""] {
            assert!(list.add(bad).is_err(), "{bad:?}");
        }
    }
}

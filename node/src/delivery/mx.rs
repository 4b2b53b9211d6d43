//! MX lookups for routes that ask for them (RFC 5321 §5.1): the exchanges of a
//! domain in order of preference, the domain itself when it has none (implicit MX),
//! nothing for a null MX (RFC 7505), and each exchange's addresses.

use std::net::IpAddr;

use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::RData;

use super::client::Reply;
use crate::dns::TokioResolver;

/// Most exchanges tried per domain, as many MTAs limit it.
const MAX_EXCHANGES: usize = 10;

/// The hosts to try for `domain`, most preferred first; a reply for the recipients
/// when there are none: permanent for a domain that does not exist or a null MX,
/// temporary when DNS failed.
pub async fn exchanges(resolver: &TokioResolver, domain: &str) -> Result<Vec<String>, Reply> {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let lookup = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => lookup,
        Err(e) => {
            return match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(Reply::local(
                    550,
                    &format!("5.1.2 {domain}: no such domain"),
                )),
                Some(_) => Ok(vec![domain.to_string()]),
                None => Err(Reply::local(
                    451,
                    &format!("4.4.3 MX lookup for {domain} failed: {e}"),
                )),
            };
        }
    };
    let mut found: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    if found.is_empty() {
        return Ok(vec![domain.to_string()]);
    }
    if found.len() == 1 && found[0].1.trim_end_matches('.').is_empty() {
        return Err(Reply::local(
            556,
            &format!("5.1.10 {domain} accepts no mail (null MX)"),
        ));
    }
    found.sort_by_key(|(preference, _)| *preference);
    Ok(found
        .into_iter()
        .map(|(_, host)| host.trim_end_matches('.').to_ascii_lowercase())
        .filter(|host| !host.is_empty())
        .take(MAX_EXCHANGES)
        .collect())
}

/// The addresses of `host` (A and AAAA); a reply when it has none.
pub async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, Reply> {
    let fqdn = format!("{host}.");
    match resolver.lookup_ip(fqdn.as_str()).await {
        Ok(lookup) => {
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                Err(Reply::local(451, &format!("4.4.4 {host} has no address")))
            } else {
                Ok(ips)
            }
        }
        Err(e) => Err(Reply::local(
            451,
            &format!("4.4.4 address lookup for {host} failed: {e}"),
        )),
    }
}

/// The response code of an answer without records (NXDOMAIN or NODATA).
fn no_records(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => Some(none.response_code),
        _ => None,
    }
}

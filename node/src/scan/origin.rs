//! Where a message came from when our own relays hand it over (`[scan]
//! trusted_relays`). Behind an internal relay the SMTP client is that relay, and SPF
//! and the IP blocklists would judge it instead of the sender. Each trusted relay
//! writes a `Received` header naming who gave it the message, so the origin is the
//! first host, reading those headers from the top, that is not one of ours; headers
//! below it were written by hosts we do not trust and are never read.

use std::net::IpAddr;

use ipnet::IpNet;
use mail_parser::{Host, MessageParser};

/// `Received` headers read at most: relays chains are short, forged ones long.
const MAX_HOPS: usize = 20;

/// The host SPF and the IP blocklists judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ip: IpAddr,
    pub helo: String,
    /// The trusted relay that received it from `ip`, when it came through ours.
    pub via: Option<IpAddr>,
}

/// The origin of a message from `client_ip` (which said `helo`) with headers `raw`.
pub fn origin(trusted: &[IpNet], client_ip: IpAddr, helo: &str, raw: &[u8]) -> Origin {
    let ours = |ip: IpAddr| {
        let ip = ip.to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    };
    let mut origin = Origin {
        ip: client_ip,
        helo: helo.to_string(),
        via: None,
    };
    if !ours(client_ip) {
        return origin;
    }
    let Some(headers) = MessageParser::new().parse_headers(raw) else {
        return origin;
    };
    for received in headers.received_all().take(MAX_HOPS) {
        // A relay of ours that does not say whom it received from: stop at it.
        let Some(from) = received.from_ip else {
            break;
        };
        origin.via = Some(origin.ip);
        origin.ip = from;
        origin.helo = match received.helo.as_ref().or(received.from.as_ref()) {
            Some(Host::Name(name)) => name.to_string(),
            Some(Host::IpAddr(ip)) => format!("[{ip}]"),
            None => String::new(),
        };
        if !ours(from) {
            break;
        }
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_origin_is_the_first_host_not_ours_reading_down_from_the_top() {
        let raw = b"Received: from edge.corp.test (edge.corp.test [10.1.0.5])\r\n\
            \tby hub.corp.test (Postfix) with ESMTP id 1; Sat, 28 Nov 2026 10:00:02 +0000\r\n\
            Received: from mail.sender.test (mail.sender.test [192.0.2.10])\r\n\
            \tby edge.corp.test (Postfix) with ESMTPS id 2; Sat, 28 Nov 2026 10:00:01 +0000\r\n\
            Received: from forged.test ([10.1.0.9]) by spoofed.test; Sat, 28 Nov 2026 09:00:00 +0000\r\n\
            Subject: hi\r\n\r\nbody\r\n";
        let trusted = nets(&["10.1.0.0/24", "10.2.0.7/32"]);
        let hub: IpAddr = "10.2.0.7".parse().unwrap();
        // Through two relays of ours: the sender's host, never the forged line below.
        assert_eq!(
            origin(&trusted, hub, "hub.corp.test", raw),
            Origin {
                ip: "192.0.2.10".parse().unwrap(),
                helo: "mail.sender.test".into(),
                via: Some("10.1.0.5".parse().unwrap()),
            }
        );
        // A client that is not ours is the origin, whatever its headers say.
        let outside: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(origin(&trusted, outside, "x.test", raw).ip, outside);
        // As an IPv4-mapped IPv6 address too.
        let mapped: IpAddr = "::ffff:10.2.0.7".parse().unwrap();
        assert_eq!(
            origin(&trusted, mapped, "hub", raw).ip,
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
        // A relay of ours whose header names no address: it is where we stop.
        let bare = b"Received: by hub.corp.test; Sat, 28 Nov 2026 10:00:02 +0000\r\n\r\nx\r\n";
        let found = origin(&trusted, hub, "hub", bare);
        assert_eq!((found.ip, found.via), (hub, None));
        // Mail that never left our relays: the last of them.
        let internal = b"Received: from app.corp.test ([10.1.0.20]) by hub.corp.test; Sat, 28 Nov 2026 10:00:02 +0000\r\n\r\nx\r\n";
        let found = origin(&trusted, hub, "hub", internal);
        assert_eq!(found.ip, "10.1.0.20".parse::<IpAddr>().unwrap());
        assert_eq!(found.via, Some(hub));
    }
}

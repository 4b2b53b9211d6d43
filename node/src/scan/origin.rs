//! Where a message came from when our own relays hand it over (`[scan]
//! trusted_relays`). Behind an internal relay the SMTP client is that relay, and SPF
//! and the IP blocklists would judge it instead of the sender. Each trusted relay
//! writes a `Received` header naming who gave it the message, so the origin is the
//! first host, reading those headers from the top, that is not one of ours; headers
//! below it were written by hosts we do not trust and are never read.
//!
//! The relay that took the message from outside also tells whether the sender gave
//! it a Message-ID: sendmail, Postfix and Exim write one for mail that has none, made
//! of the queue id they name in their `Received` header.

use std::net::IpAddr;

use ipnet::IpNet;
use mail_parser::{Host, MessageParser};

/// `Received` headers read at most: relays chains are short, forged ones long.
const MAX_HOPS: usize = 20;
/// The shortest queue id matched in a Message-ID: sendmail's are 12 characters,
/// Postfix's 10 or more, Exim's 16; a shorter one could be found by chance.
const MIN_QUEUE_ID: usize = 6;

/// The host SPF and the IP blocklists judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ip: IpAddr,
    pub helo: String,
    /// The trusted relay that received it from `ip`, when it came through ours.
    pub via: Option<IpAddr>,
    /// For mail from outside, the queue id one of our relays gave the message, if its
    /// Message-ID carries it: our relay wrote that Message-ID, the sender gave none.
    pub message_id_by_relay: Option<String>,
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
        message_id_by_relay: None,
    };
    if !ours(client_ip) {
        return origin;
    }
    let Some(headers) = MessageParser::new().parse_headers(raw) else {
        return origin;
    };
    // The queue ids of our relays, each named in the header it wrote.
    let mut queue_ids = Vec::new();
    for received in headers.received_all().take(MAX_HOPS) {
        queue_ids.extend(received.id.as_deref().filter(|id| id.len() >= MIN_QUEUE_ID));
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
            origin.message_id_by_relay = headers.message_id().and_then(|message_id| {
                queue_ids
                    .iter()
                    .find(|id| message_id.contains(*id))
                    .map(|id| id.to_string())
            });
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
                message_id_by_relay: None,
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

    #[test]
    fn a_message_id_made_of_our_relays_queue_id_was_written_by_our_relay() {
        let trusted = nets(&["10.1.0.0/24"]);
        let relay: IpAddr = "10.1.0.5".parse().unwrap();
        let message = |message_id: &str, received_by: &str| {
            format!(
                "Received: from sender.test (dsl-1.isp.test [192.0.2.10])\r\n\
                 \tby {received_by}; Sat, 28 Nov 2026 10:00:01 +0000\r\n\
                 Message-ID: {message_id}\r\nSubject: hi\r\n\r\nbody\r\n"
            )
        };
        let by_relay = |message_id: &str, received_by: &str| {
            origin(
                &trusted,
                relay,
                "edge",
                message(message_id, received_by).as_bytes(),
            )
            .message_id_by_relay
        };
        // sendmail's, Postfix's and Exim's own.
        for (message_id, received_by, id) in [
            (
                "<200208270031.BAA28619@edge.corp.test>",
                "edge.corp.test (8.9.3/8.9.3) with ESMTP id BAA28619",
                "BAA28619",
            ),
            (
                "<20261128100001.4F2A61C0A3@edge.corp.test>",
                "edge.corp.test (Postfix) with ESMTP id 4F2A61C0A3",
                "4F2A61C0A3",
            ),
            (
                "<E1tQx2b-0004Zk-3C@edge.corp.test>",
                "edge.corp.test with esmtp (Exim 4.96) id 1tQx2b-0004Zk-3C",
                "1tQx2b-0004Zk-3C",
            ),
        ] {
            assert_eq!(
                by_relay(message_id, received_by).as_deref(),
                Some(id),
                "{message_id}"
            );
        }
        // Written by the relay further in, which got it from the edge.
        let hub = format!(
            "Received: from edge.corp.test (edge.corp.test [10.1.0.5])\r\n\
             \tby hub.corp.test (Postfix) with ESMTP id 9C0FFEE123; Sat, 28 Nov 2026 10:00:02 +0000\r\n{}",
            message(
                "<20261128100002.9C0FFEE123@hub.corp.test>",
                "edge.corp.test with ESMTP"
            )
        );
        let hub_ip: IpAddr = "10.1.0.7".parse().unwrap();
        assert_eq!(
            origin(&trusted, hub_ip, "hub", hub.as_bytes())
                .message_id_by_relay
                .as_deref(),
            Some("9C0FFEE123")
        );
        // The sender's own Message-ID; a queue id too short to tell; none named.
        let relay_line = "edge.corp.test (Postfix) with ESMTP id 4F2A61C0A3";
        assert_eq!(by_relay("<a1b2c3@sender.test>", relay_line), None);
        assert_eq!(
            by_relay("<x.12345@sender.test>", "edge with ESMTP id 12345"),
            None
        );
        assert_eq!(
            by_relay("<x.4F2A61C0A3@sender.test>", "edge with ESMTP"),
            None
        );
        // A message from outside straight to us, or one that never left our relays:
        // no relay of ours took it from outside.
        let raw = message("<20261128100001.4F2A61C0A3@edge.corp.test>", relay_line);
        let outside: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            origin(&trusted, outside, "x", raw.as_bytes()).message_id_by_relay,
            None
        );
        let internal = raw.replace("192.0.2.10", "10.1.0.20");
        assert_eq!(
            origin(&trusted, relay, "x", internal.as_bytes()).message_id_by_relay,
            None
        );
    }
}

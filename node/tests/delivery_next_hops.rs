//! How delivery reaches next hops, seen from outside: STARTTLS by policy, routes by
//! domain, bounces to the sender's route, and connections reused and limited per
//! destination. Real nodes, real sinks on loopback.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::sink::{Delivered, Sink, SinkConfig, Stage};
use common::{types, Node, Smtp};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A `[delivery]` section to `relay` with fast timings and `extra` lines.
fn delivery(relay: SocketAddr, extra: &str) -> String {
    format!(
        "[delivery]\nrelay = \"{relay}\"\npoll_ms = 100\nretry_initial_secs = 1\n\
         retry_max_secs = 2\nconnect_timeout_secs = 2\ncommand_timeout_secs = 5\n\
         data_timeout_secs = 5\n{extra}\n"
    )
}

/// Waits until `sink` holds `n` messages passing `pick`; returns them.
fn wait_for(
    sink: &Sink,
    n: usize,
    what: &str,
    pick: impl Fn(&Delivered) -> bool,
) -> Vec<Delivered> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Vec<Delivered> = sink.received().into_iter().filter(|d| pick(d)).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the sink at {} has {} of {n} within {WAIT:?}; commands: {:#?}",
            sink.addr(),
            got.len(),
            sink.commands()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn id_is(id: &str) -> impl Fn(&Delivered) -> bool + '_ {
    move |d| d.header("X-Bulwark-Id").as_deref() == Some(id)
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A CA, written as `ca.pem` under `dir`, and a certificate it signed for `name`.
fn ca_and_leaf(dir: &Path, name: &str) -> (String, String) {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Test next-hop CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    (leaf.pem(), key.serialize_pem())
}

fn self_signed(name: &str) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

fn send(node: &Node, from: &str, to: &[&str]) -> String {
    let mut s = Smtp::ehlo(node.smtp);
    let body = format!("From: {from}\r\nSubject: next hop\r\n\r\nhello\r\n");
    s.send_message(from, to, &body).queued_id()
}

#[test]
fn required_tls_verifies_the_next_hop_or_defers_with_the_reason() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca_and_leaf(certs.path(), "sink.test");
    let ca = certs.path().join("ca.pem");

    // A next hop with a certificate from the configured CA, for the configured name:
    // delivered over TLS, and the attempt says which TLS.
    let good = Sink::start(SinkConfig {
        starttls: Some((cert, key)),
        ..SinkConfig::default()
    });
    let extra = format!(
        "tls = \"required\"\ntls_name = \"sink.test\"\ntls_ca = \"{}\"",
        ca.display()
    );
    let node = Node::start_with("", &delivery(good.addr(), &extra));
    let id = send(&node, "alice@sender.test", &["bob@example.test"]);
    let got = wait_for(&good, 1, "verified TLS", id_is(&id));
    assert!(got[0].tls, "sent in plain text under tls = required");
    let attempted = node.wait_message_event(&id, "delivery.attempted", 1, WAIT);
    let tls = &attempted[0]["destination"]["tls"];
    assert!(
        tls["version"].as_str().unwrap().starts_with("TLSv1."),
        "{attempted:#?}"
    );
    assert!(
        tls["cipher"].as_str().unwrap().starts_with("TLS_"),
        "{attempted:#?}"
    );
    drop(node);

    // No STARTTLS offered: deferred with 4.7.5 and why; the message never left.
    let plain = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &delivery(plain.addr(), "tls = \"required\""));
    let id = send(&node, "alice@sender.test", &["bob@example.test"]);
    let deferred = node.wait_message_event(&id, "delivery.deferred", 1, WAIT);
    let reply = deferred[0]["smtp"]["reply"].as_str().unwrap();
    assert!(
        reply.starts_with("451 4.7.5") && reply.contains("does not offer STARTTLS"),
        "{reply}"
    );
    assert!(
        !plain.commands().iter().any(|(_, c)| c.starts_with("MAIL")),
        "a transaction began without TLS: {:#?}",
        plain.commands()
    );
    drop(node);

    // A certificate that does not chain to a trusted root: deferred, not sent.
    let (cert, key) = self_signed("sink.test");
    let untrusted = Sink::start(SinkConfig {
        starttls: Some((cert.clone(), key.clone())),
        ..SinkConfig::default()
    });
    let extra = format!(
        "tls = \"required\"\ntls_name = \"sink.test\"\ntls_ca = \"{}\"",
        ca.display()
    );
    let node = Node::start_with("", &delivery(untrusted.addr(), &extra));
    let id = send(&node, "alice@sender.test", &["bob@example.test"]);
    let deferred = node.wait_message_event(&id, "delivery.deferred", 1, WAIT);
    let reply = deferred[0]["smtp"]["reply"].as_str().unwrap();
    assert!(reply.starts_with("451 4.7.5 TLS with"), "{reply}");
    assert!(untrusted.received().is_empty());
    drop(node);

    // The same next hop under the opportunistic policy: encrypted, not verified.
    let node = Node::start_with("", &delivery(untrusted.addr(), "tls = \"opportunistic\""));
    let id = send(&node, "alice@sender.test", &["bob@example.test"]);
    let got = wait_for(&untrusted, 1, "opportunistic TLS", id_is(&id));
    assert!(got[0].tls, "opportunistic TLS was offered but not used");
    drop(node);

    // And under tls = "none": plain text although STARTTLS is offered.
    let node = Node::start_with("", &delivery(untrusted.addr(), "tls = \"none\""));
    let id = send(&node, "alice@sender.test", &["bob@example.test"]);
    let got = wait_for(&untrusted, 1, "no TLS", id_is(&id));
    assert!(!got[0].tls);
}

#[test]
fn routes_split_recipients_and_bounces_reach_the_sender_once_without_looping() {
    // The default next hop refuses one user; other.test and sender.test have their
    // own next hop, which refuses the sender "loop" (so that the bounce to it fails).
    let main = Sink::start(SinkConfig::scripted(|stage| match stage {
        Stage::Rcpt { to, .. } if to.starts_with("nobody@") => {
            Some(format!("550 5.1.1 <{to}>: no such user"))
        }
        _ => None,
    }));
    let side = Sink::start(SinkConfig::scripted(|stage| match stage {
        Stage::Rcpt { to, .. } if to.starts_with("loop@") => {
            Some("550 5.1.1 no such sender".to_string())
        }
        _ => None,
    }));
    let routes = format!(
        "\n[delivery.routes]\n\"other.test\" = {{ relay = \"{0}\" }}\n\
         \".sender.test\" = {{ relay = \"{0}\" }}\n\"sender.test\" = {{ relay = \"{0}\" }}\n",
        side.addr()
    );
    let node = Node::start_with(
        "domains = [\"example.test\", \"other.test\"]",
        &delivery(main.addr(), &routes),
    );
    let to = ["ok@example.test", "b@other.test", "nobody@example.test"];
    let id = send(&node, "alice@sender.test", &to);

    // One transaction per route, each with its own recipients.
    let at_main = wait_for(&main, 1, "default route", id_is(&id));
    assert_eq!(at_main[0].rcpt_to, ["ok@example.test"]);
    let at_side = wait_for(&side, 1, "other.test route", id_is(&id));
    assert_eq!(at_side[0].rcpt_to, ["b@other.test"]);

    // The bounce for nobody@ goes to the sender through sender.test's route, from
    // the null sender, as a multipart/report.
    let bounces = wait_for(&side, 1, "bounce", |d| d.mail_from.is_empty());
    assert_eq!(bounces.len(), 1);
    let dsn = &bounces[0];
    assert_eq!(dsn.rcpt_to, ["alice@sender.test"]);
    let text = String::from_utf8(dsn.data.clone()).unwrap();
    let content_type = dsn.header("Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/report; report-type=delivery-status"),
        "{content_type}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Action: failed\r\nStatus: 5.1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Remote-MTA: dns; {}\r\n", main.addr().ip())),
        "{text}"
    );
    assert!(text.contains("Subject: next hop\r\n"), "{text}");
    assert!(
        !text.contains("ok@example.test"),
        "only the failed recipient is reported"
    );

    let events = node.wait_message(&id, WAIT, "delivery.bounced", |e| {
        !of_type(e, "delivery.bounced").is_empty()
    });
    let attempted = of_type(&events, "delivery.attempted");
    let hops: Vec<&str> = attempted
        .iter()
        .map(|e| e["destination"]["address"].as_str().unwrap())
        .collect();
    assert_eq!(hops.len(), 2, "{events:#?}");
    assert!(hops.contains(&main.addr().to_string().as_str()), "{hops:?}");
    assert!(hops.contains(&side.addr().to_string().as_str()), "{hops:?}");
    let bounced = of_type(&events, "delivery.bounced");
    assert_eq!(bounced.len(), 1, "{events:#?}");
    let dsn_id = bounced[0]["dsn"]["message_id"].as_str().unwrap();
    assert_eq!(dsn.header("X-Bulwark-Id").as_deref(), Some(dsn_id));
    assert_eq!(
        bounced[0]["email"]["to"]["address"][0],
        "nobody@example.test"
    );

    // A bounce that fails itself is not bounced again.
    let id = send(&node, "loop@sender.test", &["nobody@example.test"]);
    let bounced = node.wait_message_event(&id, "delivery.bounced", 1, WAIT);
    let dsn_id = bounced[0]["dsn"]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dsn_events = node.wait_message_event(&dsn_id, "delivery.failed", 1, WAIT);
    assert!(!dsn_events.is_empty());
    std::thread::sleep(Duration::from_millis(800));
    let dsn_events = node.message_events(&dsn_id);
    assert!(
        of_type(&dsn_events, "delivery.bounced").is_empty(),
        "a bounce bounced: {:?}",
        types(&dsn_events)
    );
    let null_sender_mail = side
        .received()
        .iter()
        .filter(|d| d.mail_from.is_empty())
        .count();
    assert_eq!(null_sender_mail, 1, "only the first bounce was accepted");
}

#[test]
fn connections_are_reused_and_limited_per_destination() {
    let sink = Sink::start(SinkConfig {
        data_delay: Duration::from_millis(50),
        ..SinkConfig::default()
    });
    let node = Node::start_with(
        "",
        &delivery(
            sink.addr(),
            "concurrency = 8\nmax_connections_per_destination = 2\nconnection_cache_secs = 30",
        ),
    );
    let mut s = Smtp::ehlo(node.smtp);
    let ids: Vec<String> = (0..24)
        .map(|i| {
            let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
            s.send_message("alice@sender.test", &["bob@example.test"], &body)
                .queued_id()
        })
        .collect();
    let got = wait_for(&sink, ids.len(), "all messages", |_| true);
    for id in &ids {
        assert_eq!(got.iter().filter(|d| id_is(id)(d)).count(), 1, "{id}");
    }
    let connections = sink.connections();
    assert!(
        connections <= 2,
        "{connections} connections opened to one next hop limited to 2"
    );
    let commands = sink.commands();
    let rsets = commands.iter().filter(|(_, c)| c == "RSET").count();
    assert!(
        rsets as u64 >= ids.len() as u64 - connections,
        "messages after the first on a connection begin with RSET: {commands:#?}"
    );
    println!(
        "{} messages over {connections} connection(s), {rsets} RSETs",
        ids.len()
    );
}

#[test]
fn mx_routes_follow_preference_implicit_mx_and_null_mx() {
    use bulwark_cluster_tests::dns::{DnsServer, Record, Zone};
    let sink = Sink::start(SinkConfig::default());
    let port = sink.addr().port();
    let mut zone = Zone::new();
    zone.add(
        "partner.test",
        Record::Mx {
            preference: 10,
            exchange: "mx1.partner.test".into(),
        },
    )
    .add(
        "partner.test",
        Record::Mx {
            preference: 20,
            exchange: "mx2.partner.test".into(),
        },
    )
    // The preferred exchange refuses connections; the second one is the sink.
    .add("mx1.partner.test", Record::A("127.0.0.3".parse().unwrap()))
    .add("mx2.partner.test", Record::A("127.0.0.1".parse().unwrap()))
    .add("implicit.test", Record::A("127.0.0.1".parse().unwrap()))
    .add(
        "nullmx.test",
        Record::Mx {
            preference: 0,
            exchange: ".".into(),
        },
    );
    let dns = DnsServer::start(zone).unwrap();
    let routes = format!(
        "\n[delivery.routes]\n\"partner.test\" = {{ mx = true, port = {port}, tls = \"none\" }}\n\
         \"implicit.test\" = {{ mx = true, port = {port} }}\n\
         \"nullmx.test\" = {{ mx = true, port = {port} }}\n\
         \"nowhere.test\" = {{ mx = true, port = {port} }}\n\n\
         [dns]\nnameservers = [\"{}\"]\n",
        dns.addr()
    );
    let node = Node::start_with(
        "domains = [\"partner.test\", \"implicit.test\", \"nullmx.test\", \"nowhere.test\"]",
        &delivery(sink.addr(), &routes),
    );
    let to = [
        "a@partner.test",
        "b@implicit.test",
        "c@nullmx.test",
        "d@nowhere.test",
    ];
    let id = send(&node, "alice@sender.test", &to);

    let got = wait_for(&sink, 2, "MX deliveries", id_is(&id));
    let mut rcpts: Vec<&str> = got.iter().map(|d| d.rcpt_to[0].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@partner.test", "b@implicit.test"]);

    // The null MX and the missing domain fail for good (a bounce per route).
    let bounces = wait_for(&sink, 2, "bounces", |d| d.mail_from.is_empty());
    let text: String = bounces
        .iter()
        .map(|b| String::from_utf8_lossy(&b.data).to_string())
        .collect();
    assert!(
        text.contains("Final-Recipient: rfc822; c@nullmx.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; d@nowhere.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.2"), "{text}");

    let events = node.wait_message(&id, WAIT, "delivery.bounced", |e| {
        !of_type(e, "delivery.bounced").is_empty()
    });
    let hops: Vec<&str> = of_type(&events, "delivery.attempted")
        .iter()
        .map(|e| e["destination"]["address"].as_str().unwrap())
        .collect();
    for hop in [
        "mx:partner.test",
        "mx:implicit.test",
        "mx:nullmx.test",
        "mx:nowhere.test",
    ] {
        assert!(hops.contains(&hop), "{hop} missing from {hops:?}");
    }
    assert!(dns.query_count() >= 4);
}

//! Delivery seen from outside: a real node relays what it accepted to a next-hop
//! SMTP sink on loopback (or writes its Maildir), and every test checks both what the
//! next hop received and the `delivery.*` events the node recorded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::sink::{Delivered, Sink, SinkConfig, Stage};
use common::{free_port, types, Node, Smtp};
use serde_json::{json, Value};

const SENDER: &str = "alice@sender.test";
/// Long enough for an attempt and its retries in these tests' timings, short enough
/// for a failing test to say so soon.
const WAIT: Duration = Duration::from_secs(15);

/// A `[delivery]` section with fast timings: the queue scanned every 100 ms, the
/// first retry after 1 s, then 2 s; `extra` adds keys.
fn delivery(relay: Option<SocketAddr>, extra: &str) -> String {
    let mut s = String::from(
        "[delivery]\npoll_ms = 100\nretry_initial_secs = 1\nretry_max_secs = 2\n\
         connect_timeout_secs = 2\ncommand_timeout_secs = 5\ndata_timeout_secs = 5\n",
    );
    if let Some(addr) = relay {
        s.push_str(&format!("relay = \"{addr}\"\n"));
    }
    s.push_str(extra);
    s
}

/// What the sink received of message `id` (by its `X-Bulwark-Id`); DSNs and other
/// messages are left out.
fn of(received: Vec<Delivered>, id: &str) -> Vec<Delivered> {
    received
        .into_iter()
        .filter(|d| d.header("X-Bulwark-Id").as_deref() == Some(id))
        .collect()
}

/// Waits until the sink has received message `id` `n` times; returns those copies.
fn wait_at_sink(sink: &Sink, node: &Node, id: &str, n: usize) -> Vec<Delivered> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = of(sink.received(), id);
        if got.len() >= n {
            return got;
        }
        if Instant::now() > deadline {
            panic!(
                "the sink at {} got message {id} {} time(s), not {n}, within {WAIT:?}; \
                 sink commands: {:#?}\nevents: {:#?}\nnode log tail:\n{}",
                sink.addr(),
                got.len(),
                sink.commands(),
                node.message_events(id),
                common::tail(&node.log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `delivery.*` events of a message, in order.
fn delivery_types(events: &[Value]) -> Vec<String> {
    types(events)
        .into_iter()
        .filter(|t| t.starts_with("delivery."))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn has(events: &[Value], kind: &str) -> bool {
    events.iter().any(|e| e["type"] == kind)
}

/// Whether some event of type `kind` reports `address` among its recipients.
fn reports(events: &[Value], kind: &str, address: &str) -> bool {
    of_type(events, kind).iter().any(|e| {
        e["email"]["to"]["address"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == address))
    })
}

fn unix_ms(rfc3339: &Value) -> i64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A sender-side counter of the ends of data the sink saw from [`SENDER`] (DSNs come
/// from the null sender and are not counted).
fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// Checks that `d` is `body` as the client meant it, below our headers, the
/// node's `Authentication-Results` and its `Received` header, byte for byte.
fn check_content(d: &Delivered, id: &str, body: &str) {
    let prefix = format!("X-Bulwark-Id: {id}\r\nX-Bulwark-Action: deliver\r\n");
    let data = String::from_utf8(d.data.clone()).expect("UTF-8 content");
    assert!(data.starts_with(&prefix), "{data:?}");
    assert!(data.ends_with(body), "content changed on the way: {data:?}");
    let after_ours = &data[prefix.len()..data.len() - body.len()];
    let score = after_ours
        .strip_prefix("X-Bulwark-Score: ")
        .expect("a score header");
    let after_score = &score[score.find("\r\n").expect("CRLF") + 2..];
    let results = after_score
        .strip_prefix("Authentication-Results: mx.example.test;")
        .expect("our Authentication-Results next");
    let between = &results[results.find("\r\nReceived: ").expect("then Received") + 2..];
    assert!(between.starts_with("Received: "), "{between:?}");
    assert!(between.ends_with("\r\n"), "{between:?}");
    for line in between.trim_end_matches("\r\n").split("\r\n").skip(1) {
        assert!(
            line.starts_with([' ', '\t']),
            "only the Received header may come between ours and the message: {between:?}"
        );
    }
}

#[test]
fn delivery_relays_once_to_every_recipient_byte_for_byte() {
    let sink = Sink::start(SinkConfig::default());
    let mut node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    // 8-bit text and lines starting with dots, one of them alone on its line: the
    // node must stuff them again towards the next hop.
    let body = "From: Alice <alice@sender.test>\r\n\
        To: bob@example.test, carol@example.test\r\n\
        Subject: relayed\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\
        \r\n\
        Grüße aus Köln\r\n\
        .\r\n\
        ..two dots\r\n\
        .leading dot\r\n\
        last line\r\n";
    let to = ["bob@example.test", "carol@example.test"];
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message_with(SENDER, "BODY=8BITMIME", &to, body)
        .queued_id();

    let got = wait_at_sink(&sink, &node, &id, 1);
    let d = &got[0];
    assert_eq!(d.mail_from, SENDER);
    assert_eq!(d.rcpt_to, to);
    assert!(d.has_param("BODY=8BITMIME"), "{:?}", d.mail_params);
    assert!(!d.has_param("SMTPUTF8"), "{:?}", d.mail_params);
    check_content(d, &id, body);
    assert_eq!(d.header("X-Bulwark-Action").as_deref(), Some("deliver"));

    let events = node.wait_message(&id, WAIT, "delivery.succeeded", |e| {
        has(e, "delivery.succeeded")
    });
    assert_eq!(
        delivery_types(&events),
        [
            "delivery.leased",
            "delivery.attempted",
            "delivery.succeeded"
        ],
        "{events:#?}"
    );
    let leased = of_type(&events, "delivery.leased")[0];
    assert_eq!(leased["lease"]["granted"], true, "{leased:#}");
    assert_eq!(leased["lease"]["holder"], 1, "{leased:#}");
    let attempted = of_type(&events, "delivery.attempted")[0];
    assert_eq!(
        attempted["destination"]["address"],
        sink.addr().to_string(),
        "{attempted:#}"
    );
    let results = attempted["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{attempted:#}");
    for (result, address) in results.iter().zip(to) {
        assert_eq!(result["address"], address, "{attempted:#}");
        assert_eq!(result["outcome"], "delivered", "{attempted:#}");
        assert!(
            result["reply"].as_str().unwrap().starts_with("250"),
            "{attempted:#}"
        );
    }
    let succeeded = of_type(&events, "delivery.succeeded")[0];
    assert_eq!(
        succeeded["email"]["to"]["address"],
        json!(to),
        "{succeeded:#}"
    );

    // Several queue scans later, still exactly one copy, and the queue is empty.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(of(sink.received(), &id).len(), 1);
    assert_eq!(sink.data_ends(), 1, "{:#?}", sink.commands());
    assert_eq!(delivery_types(&node.message_events(&id)).len(), 3);
    let (entry, body_kept) = node.stop_and_read_queue(&id);
    assert!(entry.is_none(), "still queued: {entry:?}");
    assert!(
        !body_kept,
        "the body of a delivered message is still stored"
    );
}

#[test]
fn delivery_of_mail_accepted_while_delivery_keeps_up_takes_its_lease_with_the_acceptance() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    // Until the new cluster's level is raised, a message is accepted without its
    // lease, as an older member would need.
    node.wait_feature_level();
    for n in 0..3 {
        let mut s = Smtp::ehlo(node.smtp);
        let id = s
            .send_message(
                SENDER,
                &["bob@example.test"],
                &format!("Subject: leased {n}\r\n\r\nhi\r\n"),
            )
            .queued_id();
        wait_at_sink(&sink, &node, &id, 1);
        let events: Vec<Value> = node
            .wait_message(&id, WAIT, "delivery.succeeded", |e| {
                has(e, "delivery.succeeded")
            })
            .into_iter()
            .filter(|e| e["type"] != "access.read")
            .collect();
        // A look at the queue between the commit and the hand-over may renew the
        // lease first (and the hand-over then finds the message under way): more
        // `delivery.leased` may follow the first, nothing else.
        let mut kinds = types(&events);
        kinds.dedup();
        assert_eq!(
            kinds,
            [
                "message.received",
                "scan.verdict",
                "delivery.leased",
                "delivery.attempted",
                "delivery.succeeded"
            ],
            "{events:#?}"
        );
        let (received, leased) = (&events[0], &events[2]);
        // One operation (the same Raft entry and time, the events in a row), and the
        // lease runs `lease_secs` (30) from it.
        assert_eq!(leased["raft_index"], received["raft_index"], "{events:#?}");
        assert_eq!(leased["time"], received["time"], "{events:#?}");
        assert_eq!(
            leased["seq"].as_u64().unwrap(),
            received["seq"].as_u64().unwrap() + 2,
            "{events:#?}"
        );
        assert_eq!(leased["lease"]["granted"], true, "{leased:#}");
        assert_eq!(leased["lease"]["holder"], 1, "{leased:#}");
        assert_eq!(
            unix_ms(&leased["lease"]["until"]) - unix_ms(&received["time"]),
            30_000,
            "{leased:#}"
        );
    }
    assert_eq!(sink.data_ends(), 3, "{:#?}", sink.commands());
}

#[test]
fn delivery_retries_after_a_temporary_failure_at_end_of_data() {
    let ends = counter();
    let seen = ends.clone();
    let sink = Sink::start(SinkConfig::scripted(move |stage| match stage {
        Stage::Data { from, .. } if *from == SENDER => {
            (seen.fetch_add(1, Ordering::SeqCst) == 0).then(|| "451 4.3.0 try later".into())
        }
        _ => None,
    }));
    let node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(
            SENDER,
            &["bob@example.test"],
            "Subject: retry\r\n\r\nhi\r\n",
        )
        .queued_id();

    let events = node.wait_message(&id, WAIT, "delivery.succeeded", |e| {
        has(e, "delivery.succeeded")
    });
    assert_eq!(
        delivery_types(&events),
        [
            "delivery.leased",
            "delivery.attempted",
            "delivery.deferred",
            "delivery.leased",
            "delivery.attempted",
            "delivery.succeeded"
        ],
        "{events:#?}"
    );
    let deferred = of_type(&events, "delivery.deferred")[0];
    assert_eq!(
        deferred["email"]["to"]["address"],
        json!(["bob@example.test"])
    );
    let reply = deferred["smtp"]["reply"].as_str().unwrap();
    assert!(reply.contains("451 4.3.0 try later"), "{deferred:#}");
    // The first retry comes `retry_initial_secs` (1 s) after the attempt.
    let wait = unix_ms(&deferred["next_attempt"]) - unix_ms(&deferred["time"]);
    assert!(
        (900..=2500).contains(&wait),
        "next attempt {wait} ms later: {deferred:#}"
    );
    let attempts = of_type(&events, "delivery.attempted");
    assert_eq!(attempts[0]["results"][0]["outcome"], "deferred");
    assert_eq!(attempts[1]["results"][0]["outcome"], "delivered");
    let retried_after = unix_ms(&attempts[1]["time"]) - unix_ms(&deferred["time"]);
    assert!(
        retried_after >= 900,
        "retried {retried_after} ms after the deferral"
    );

    let got = wait_at_sink(&sink, &node, &id, 1);
    assert_eq!(got[0].rcpt_to, ["bob@example.test"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(of(sink.received(), &id).len(), 1);
    assert_eq!(ends.load(Ordering::SeqCst), 2);
}

#[test]
fn delivery_fails_for_good_on_a_permanent_reply_without_retrying() {
    let ends = counter();
    let seen = ends.clone();
    let sink = Sink::start(SinkConfig::scripted(move |stage| match stage {
        Stage::Data { from, .. } if *from == SENDER => {
            seen.fetch_add(1, Ordering::SeqCst);
            Some("554 5.7.1 rejected by test policy".into())
        }
        _ => None,
    }));
    let mut node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(SENDER, &["bob@example.test"], "Subject: no\r\n\r\nhi\r\n")
        .queued_id();

    let failed = node.wait_message_event(&id, "delivery.failed", 1, WAIT);
    assert_eq!(
        failed[0]["email"]["to"]["address"],
        json!(["bob@example.test"])
    );
    let reply = failed[0]["smtp"]["reply"].as_str().unwrap();
    assert!(
        reply.contains("554 5.7.1 rejected by test policy"),
        "{:#}",
        failed[0]
    );

    // Three seconds cover three retries at these timings: there must be none.
    std::thread::sleep(Duration::from_secs(3));
    let events = node.message_events(&id);
    assert_eq!(
        delivery_types(&events)
            .into_iter()
            .filter(|t| t != "delivery.bounced")
            .collect::<Vec<_>>(),
        ["delivery.leased", "delivery.attempted", "delivery.failed"],
        "{events:#?}"
    );
    assert_eq!(ends.load(Ordering::SeqCst), 1, "{:#?}", sink.commands());
    assert_eq!(sink.rcpt_seen("bob@example.test"), 1);
    assert!(of(sink.received(), &id).is_empty());
    let (entry, _) = node.stop_and_read_queue(&id);
    assert!(
        entry.is_none(),
        "a failed message is still queued: {entry:?}"
    );
}

#[test]
fn delivery_gives_each_recipient_its_own_outcome() {
    let sink = Sink::start(SinkConfig::scripted(|stage| match stage {
        Stage::Rcpt { to, .. } if *to == "bad@example.test" => {
            Some("550 5.1.1 no such user".into())
        }
        Stage::Rcpt { to, seen: 0 } if *to == "later@example.test" => {
            Some("451 4.2.1 mailbox busy".into())
        }
        _ => None,
    }));
    let mut node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    let mut s = Smtp::ehlo(node.smtp);
    let to = ["ok@example.test", "bad@example.test", "later@example.test"];
    let id = s
        .send_message(SENDER, &to, "Subject: mixed\r\n\r\nhi\r\n")
        .queued_id();

    let first = wait_at_sink(&sink, &node, &id, 1);
    assert_eq!(first[0].rcpt_to, ["ok@example.test"]);
    let events = node.wait_message(&id, WAIT, "the late recipient's delivery", |e| {
        reports(e, "delivery.succeeded", "later@example.test")
    });
    let succeeded = of_type(&events, "delivery.succeeded");
    assert_eq!(succeeded.len(), 2, "{events:#?}");
    assert_eq!(
        succeeded[0]["email"]["to"]["address"],
        json!(["ok@example.test"])
    );
    assert_eq!(
        succeeded[1]["email"]["to"]["address"],
        json!(["later@example.test"])
    );
    let failed = of_type(&events, "delivery.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(
        failed[0]["email"]["to"]["address"],
        json!(["bad@example.test"])
    );
    let reply = failed[0]["smtp"]["reply"].as_str().unwrap();
    assert!(reply.contains("550 5.1.1 no such user"), "{:#}", failed[0]);
    let deferred = of_type(&events, "delivery.deferred");
    assert_eq!(deferred.len(), 1, "{events:#?}");
    assert_eq!(
        deferred[0]["email"]["to"]["address"],
        json!(["later@example.test"])
    );
    let reply = deferred[0]["smtp"]["reply"].as_str().unwrap();
    assert!(
        reply.contains("451 4.2.1 mailbox busy"),
        "{:#}",
        deferred[0]
    );
    // The second attempt is for the late recipient only.
    let attempts = of_type(&events, "delivery.attempted");
    assert_eq!(attempts.len(), 2, "{events:#?}");
    assert_eq!(attempts[1]["results"].as_array().unwrap().len(), 1);
    assert_eq!(attempts[1]["results"][0]["address"], "later@example.test");

    let got = wait_at_sink(&sink, &node, &id, 2);
    assert_eq!(got[1].rcpt_to, ["later@example.test"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(of(sink.received(), &id).len(), 2);
    assert_eq!(sink.rcpt_seen("ok@example.test"), 1);
    assert_eq!(sink.rcpt_seen("bad@example.test"), 1);
    assert_eq!(sink.rcpt_seen("later@example.test"), 2);
    let (entry, _) = node.stop_and_read_queue(&id);
    assert!(entry.is_none(), "still queued: {entry:?}");
}

#[test]
fn delivery_waits_for_a_next_hop_that_is_down_then_up() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = Node::start_with("", &delivery(Some(addr), ""));
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(
            SENDER,
            &["bob@example.test"],
            "Subject: later\r\n\r\nhi\r\n",
        )
        .queued_id();

    let deferred = node.wait_message_event(&id, "delivery.deferred", 1, WAIT);
    let reply = deferred[0]["smtp"]["reply"].as_str().unwrap();
    assert!(reply.starts_with("4"), "{:#}", deferred[0]);
    assert!(reply.contains("cannot connect"), "{:#}", deferred[0]);
    assert!(deferred[0]["next_attempt"].is_string(), "{:#}", deferred[0]);

    let sink = Sink::start_on(addr, SinkConfig::default());
    let got = wait_at_sink(&sink, &node, &id, 1);
    assert_eq!(got[0].rcpt_to, ["bob@example.test"]);
    let events = node.wait_message(&id, WAIT, "delivery.succeeded", |e| {
        has(e, "delivery.succeeded")
    });
    assert!(!has(&events, "delivery.failed"), "{events:#?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(of(sink.received(), &id).len(), 1);
}

#[test]
fn delivery_of_smtputf8_mail_needs_a_next_hop_that_offers_it() {
    let ascii_only = Sink::start(SinkConfig {
        smtputf8: false,
        ..SinkConfig::default()
    });
    let addr = ascii_only.addr();
    let node = Node::start_with(
        "domains = [\"example.test\", \"exämple.test\"]",
        &delivery(Some(addr), ""),
    );
    let (from, to) = ("andré@sender.test", "josé@exämple.test");
    let body = "From: André <andré@sender.test>\r\nSubject: Grüße ✓\r\n\r\nHallo José\r\n";

    let mut s = Smtp::ehlo(node.smtp);
    let refused = s
        .send_message_with(from, "SMTPUTF8", &[to], body)
        .queued_id();
    let failed = node.wait_message_event(&refused, "delivery.failed", 1, WAIT);
    assert_eq!(failed[0]["email"]["to"]["address"], json!([to]));
    let reply = failed[0]["smtp"]["reply"].as_str().unwrap();
    assert!(
        reply.starts_with('5') && reply.contains("5.6.7"),
        "{:#}",
        failed[0]
    );
    // Refused before MAIL: the next hop never saw the message, not even its envelope.
    assert!(
        !ascii_only
            .commands()
            .iter()
            .any(|(_, line)| line.starts_with("MAIL")),
        "{:#?}",
        ascii_only.commands()
    );
    ascii_only.stop();

    let utf8 = Sink::start_on(addr, SinkConfig::default());
    let id = s
        .send_message_with(from, "SMTPUTF8", &[to], body)
        .queued_id();
    let got = wait_at_sink(&utf8, &node, &id, 1);
    assert_eq!(got[0].mail_from, from);
    assert_eq!(got[0].rcpt_to, [to]);
    assert!(got[0].has_param("SMTPUTF8"), "{:?}", got[0].mail_params);
    check_content(&got[0], &id, body);
    node.wait_message_event(&id, "delivery.succeeded", 1, WAIT);
    assert!(of(utf8.received(), &refused).is_empty());
}

#[test]
fn delivery_without_a_relay_writes_the_maildir() {
    let node = Node::start_with("", "[delivery]\npoll_ms = 100\n");
    let body = "Subject: local\r\n\r\n.dot\r\nhi\r\n";
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(SENDER, &["bob@example.test", "carol@example.test"], body)
        .queued_id();
    let events = node.wait_message(&id, WAIT, "delivery.succeeded", |e| {
        has(e, "delivery.succeeded")
    });
    assert_eq!(
        delivery_types(&events),
        [
            "delivery.leased",
            "delivery.attempted",
            "delivery.succeeded"
        ],
        "{events:#?}"
    );
    let attempted = of_type(&events, "delivery.attempted")[0];
    let hop = attempted["destination"]["address"].as_str().unwrap();
    assert!(hop.starts_with("maildir:"), "{attempted:#}");

    let maildir = node.data_dir().join("delivered");
    let files: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one file for the message, whatever its recipients: {files:?}"
    );
    let content = std::fs::read(&files[0]).unwrap();
    let d = Delivered {
        mail_from: SENDER.into(),
        mail_params: String::new(),
        rcpt_to: Vec::new(),
        data: content,
        tls: false,
        connection: 0,
        ehlo: String::new(),
        began: Instant::now(),
        answered: Instant::now(),
    };
    check_content(&d, &id, body);
    let tmp = std::fs::read_dir(maildir.join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "a file left in tmp/");
}

#[test]
fn delivery_gives_up_on_a_recipient_deferred_past_max_age() {
    let sink = Sink::start(SinkConfig::scripted(|stage| match stage {
        Stage::Rcpt { to, .. } if *to == "doomed@example.test" => {
            Some("451 4.2.0 still busy".into())
        }
        _ => None,
    }));
    let node = Node::start_with("", &delivery(Some(sink.addr()), "max_age_secs = 3\n"));
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(
            SENDER,
            &["doomed@example.test"],
            "Subject: doomed\r\n\r\nhi\r\n",
        )
        .queued_id();

    let failed = node.wait_message_event(&id, "delivery.failed", 1, WAIT);
    assert_eq!(
        failed[0]["email"]["to"]["address"],
        json!(["doomed@example.test"])
    );
    let reply = failed[0]["smtp"]["reply"].as_str().unwrap();
    assert!(reply.contains("451 4.2.0 still busy"), "{:#}", failed[0]);
    let events = node.message_events(&id);
    let received = of_type(&events, "message.received")[0];
    let age = unix_ms(&failed[0]["time"]) - unix_ms(&received["time"]);
    assert!(
        age >= 3000,
        "failed {age} ms after acceptance, before max_age: {events:#?}"
    );
    assert!(
        !of_type(&events, "delivery.deferred").is_empty(),
        "retried before giving up: {events:#?}"
    );
    assert!(sink.rcpt_seen("doomed@example.test") >= 2);
    assert!(of(sink.received(), &id).is_empty());
}

#[test]
fn delivery_sink_speaks_starttls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let sink = Sink::start(SinkConfig {
        starttls: Some((cert.cert.pem(), cert.key_pair.serialize_pem())),
        ..SinkConfig::default()
    });
    let mut s = Smtp::connect(sink.addr());
    let ehlo = s.cmd("EHLO client.test");
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert_eq!(s.cmd("STARTTLS").code, 220);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tls = rustls::StreamOwned::new(conn, s.writer());
    let mut tls = std::io::BufReader::new(tls);
    let mut say = |line: &str| -> String {
        use std::io::{BufRead, Write};
        tls.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            assert!(tls.read_line(&mut l).unwrap() > 0, "EOF after {line}");
            reply.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    };
    let again = say("EHLO client.test");
    assert!(
        again.starts_with("250") && !again.contains("STARTTLS"),
        "{again}"
    );
    assert!(say("MAIL FROM:<a@x.test>").starts_with("250"));
    assert!(say("RCPT TO:<b@y.test>").starts_with("250"));
    assert!(say("DATA").starts_with("354"));
    assert!(say("Subject: tls\r\n\r\nhi\r\n.").starts_with("250"));
    let got = sink.wait_for(1, Duration::from_secs(5));
    assert!(got[0].tls);
    assert_eq!(got[0].data, b"Subject: tls\r\n\r\nhi\r\n");
}

#[test]
fn delivery_breaks_lines_over_998_octets_as_postfix_does() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &delivery(Some(sink.addr()), ""));
    // A 2,500-octet line (accepted at ingress: under max_data_line_length) and a
    // line of exactly 998.
    let long = "x".repeat(2500);
    let exact = "y".repeat(998);
    let body = format!("Subject: long lines\r\n\r\n{long}\r\n{exact}\r\nend\r\n");
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(SENDER, &["bob@example.test"], &body)
        .queued_id();

    let got = wait_at_sink(&sink, &node, &id, 1);
    let lines: Vec<&[u8]> = got[0]
        .data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    assert!(
        lines.iter().all(|l| l.len() <= 998),
        "a line over 998 reached the sink"
    );
    let start = lines
        .iter()
        .position(|l| l.starts_with(b"xxx"))
        .expect("the long line");
    assert_eq!(lines[start].len(), 998);
    assert_eq!(lines[start + 1].len(), 998);
    assert_eq!(lines[start + 2].len(), 1 + 2500 - 998 - 997);
    let rejoined: Vec<u8> = [lines[start], &lines[start + 1][1..], &lines[start + 2][1..]].concat();
    assert_eq!(
        rejoined,
        long.as_bytes(),
        "each continuation is one space and the rest"
    );
    assert_eq!(lines[start + 3], exact.as_bytes(), "998 octets pass whole");
}

/// `GET /v1/messages/{id}` of `node`: status and JSON.
fn trace(node: &Node, id: &str, token: Option<&str>) -> (u16, Value) {
    let mut request =
        reqwest::blocking::Client::new().get(format!("{}/v1/messages/{id}", node.api));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn delivery_end_to_end_trace_shows_received_verdict_attempted_succeeded() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with(
        "domains = [\"example.test\"]",
        &delivery(Some(sink.addr()), "\n[policy]\nreject_score = 2000.0\n"),
    );
    let token = node.token();
    let mut s = Smtp::ehlo(node.smtp);
    let body = "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n\
                Subject: traced\r\nMessage-ID: <traced@sender.test>\r\n\r\nhello\r\n";
    let id = s
        .send_message(SENDER, &["bob@example.test", "carol@example.test"], body)
        .queued_id();
    let got = wait_at_sink(&sink, &node, &id, 1);
    assert_eq!(got[0].header("X-Bulwark-Id").as_deref(), Some(id.as_str()));
    assert_eq!(
        got[0].header("X-Bulwark-Action").as_deref(),
        Some("deliver")
    );
    assert!(got[0].header("Authentication-Results").is_some());

    node.wait_message_event(&id, "delivery.succeeded", 1, WAIT);
    let (status, t) = trace(&node, &id, Some(&token));
    assert_eq!(status, 200, "{t:#}");
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["state"], "delivered", "{t:#}");
    assert_eq!(t["received"]["sender"], SENDER);
    assert_eq!(t["received"]["subject"], "traced");
    assert_eq!(t["received"]["source"]["ip"], "127.0.0.1");
    assert_eq!(t["verdict"]["action"], "deliver");
    assert!(
        t["verdict"]["engines"].as_array().unwrap().len() >= 4,
        "{t:#}"
    );
    for rcpt in ["bob@example.test", "carol@example.test"] {
        assert_eq!(t["recipients"][rcpt]["status"], "delivered", "{t:#}");
    }
    let kinds: Vec<&str> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        // The test's own waits read the message's events: on record as reads of it.
        .filter(|k| *k != "delivery.leased" && *k != "access.read")
        .collect();
    assert_eq!(
        kinds,
        [
            "message.received",
            "scan.verdict",
            "delivery.attempted",
            "delivery.succeeded"
        ],
        "{t:#}"
    );
    let seqs: Vec<u64> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");

    // A quarantined message: GTUBE scores 1000, over the quarantine score and under
    // this node's reject score.
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let held = s
        .send_message(
            SENDER,
            &["bob@example.test"],
            &format!("Subject: q\r\n\r\n{gtube}\r\n"),
        )
        .queued_id();
    let (status, t) = trace(&node, &held, Some(&token));
    assert_eq!(status, 200);
    assert_eq!(t["state"], "quarantined", "{t:#}");
    assert_eq!(t["verdict"]["action"], "quarantine", "{t:#}");

    // Refused: unknown id, a malformed one, no token.
    assert_eq!(
        trace(&node, "00000000000000000000000000", Some(&token)).0,
        404
    );
    assert_eq!(trace(&node, "not-an-id", Some(&token)).0, 400);
    assert_eq!(trace(&node, &id, None).0, 401);
}

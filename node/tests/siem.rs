//! SIEM export (`[[siem.exporters]]`) from a real node to receivers on 127.0.0.1:
//! syslog over TCP (JSON), TLS (CEF) and RELP, Splunk HEC with indexer
//! acknowledgement, and a signed webhook. Every event arrives once, in order, as the
//! API shows it, numbered by its exporter; a receiver that is down gets everything
//! once it is back, and one killed in the middle of a batch gets it again; a batch
//! refused for good becomes a dead letter and the feed goes on; HEC posts an
//! unacknowledged batch a bounded number of times; the signed checkpoints reach a
//! filtered feed; bad exporter settings are all reported by check-config.

mod common;

use std::time::{Duration, Instant};

use bulwark_cluster_tests::siem::{seqs, wait_for_seqs, HttpReceiver, SyslogReceiver};
use common::{Api, Node, Smtp};
use serde_json::Value;

const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "a-webhook-secret-of-32-bytes-len";
const WAIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every event in the node's log, in order.
fn log(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/v1/events?limit=1000");
    assert_eq!(status, 200, "{page}");
    assert!(page["next"].is_null(), "the test's log fits one page");
    page["events"].as_array().unwrap().clone()
}

/// Waits until each receiver holds every event of the log and the log has stopped
/// growing; returns the log.
fn settle(
    rt: &tokio::runtime::Runtime,
    api: &Api,
    receivers: &[(&str, &dyn Fn() -> Vec<u64>)],
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = log(api);
        let want = seqs(&before);
        for (what, received) in receivers {
            rt.block_on(wait_for_seqs(what, &want, WAIT, received))
                .unwrap();
        }
        let after = log(api);
        if after.len() == before.len() {
            return after;
        }
        assert!(Instant::now() < deadline, "the log kept growing");
    }
}

/// `events` without the exporter's number: the API's JSON.
fn unnumbered(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("export");
            e
        })
        .collect()
}

/// The `export.seq` of each of `events`, checking they are `exporter`'s.
fn numbers(events: &[Value], exporter: &str) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e["export"]["exporter"], exporter, "{e}");
            e["export"]["seq"].as_u64().unwrap()
        })
        .collect()
}

/// 1, 2, ..., n.
fn one_to(n: usize) -> Vec<u64> {
    (1..=n as u64).collect()
}

fn metric(node: &Node, name: &str, exporter: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", node.api))
        .unwrap()
        .text()
        .unwrap();
    let prefix = format!("{name}{{exporter=\"{exporter}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until each exporter's replicated cursor has reached `head`: its receiver
/// accepted (for HEC: acknowledged) everything up to there.
fn wait_cursors(node: &Node, exporters: &[&str], head: usize) {
    let deadline = Instant::now() + WAIT;
    for exporter in exporters {
        while metric(node, "bulwark_siem_cursor", exporter) < head as f64 {
            assert!(
                Instant::now() < deadline,
                "{exporter}: cursor not at {head}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The TLS syslog receiver's configuration: a self-signed certificate for
/// `localhost` (written to `siem-ca.pem` for the exporter to trust), and client
/// certificates required, from a CA whose signed `client.pem`/`client.key` are
/// written for the exporter to present.
fn tls_receiver(dir: &std::path::Path) -> std::sync::Arc<rustls::ServerConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("siem-ca.pem"), server.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(server.key_pair.serialize_der()).unwrap();

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["bulwark-node-1".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert.der().clone()], key)
            .unwrap(),
    )
}

#[test]
fn every_event_reaches_each_receiver_once_in_order_in_its_format() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let server_tls = tls_receiver(certs.path());
    let plain = rt.block_on(SyslogReceiver::start(None)).unwrap();
    let tls = rt
        .block_on(SyslogReceiver::start(Some(server_tls)))
        .unwrap();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    let ca = certs.path().join("siem-ca.pem");
    let exporters = format!(
        r#"
[[siem.exporters]]
name = "soc-json"
kind = "syslog"
address = "{plain}"
batch = 7

[[siem.exporters]]
name = "soc-cef"
kind = "syslog"
address = "{tls}"
tls = true
tls_name = "localhost"
tls_ca = "{ca}"
tls_cert = "{client}.pem"
tls_key = "{client}.key"
format = "cef"
facility = 16

[[siem.exporters]]
name = "splunk"
kind = "hec"
url = "{http}"
token = "{HEC_TOKEN}"
index = "mail"

[[siem.exporters]]
name = "hook"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"

[[siem.exporters]]
name = "notes-only"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"
types = ["audit.*"]
"#,
        plain = plain.addr(),
        tls = tls.addr(),
        ca = ca.display(),
        client = certs.path().join("client").display(),
        http = http.url(),
    );
    let node = Node::start_with(
        "domains = [\"example.test\"]\n",
        &(common::held_delivery() + &exporters),
    );
    let api = Api::new(&node);
    let odd_note = "pipe | equals = backslash \\ and\na second line";
    for text in ["first note", odd_note] {
        let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": text }));
        assert_eq!(status, 201, "{body}");
    }
    let mut smtp = Smtp::ehlo(node.smtp);
    let reply = smtp.send_message(
        "alice@sender.test",
        &["bob@example.test"],
        "From: alice@sender.test\r\nTo: bob@example.test\r\n\
         Subject: =?utf-8?q?pipe=7Cequals=3Dback=5Cslash=0Anewline?=\r\n\r\nHello.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = smtp.send_message(
        "carol@sender.test",
        &["bob@example.test", "dave@example.test"],
        "From: carol@sender.test\r\nSubject: plain\r\n\r\nHi.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": "last" }));
    assert_eq!(status, 201, "{body}");

    let syslog_seqs = |r: &SyslogReceiver| -> Vec<u64> {
        r.messages()
            .iter()
            .filter_map(|m| {
                let seq = match m.payload.starts_with("CEF:") {
                    true => m
                        .payload
                        .split(' ')
                        .find_map(|f| f.strip_prefix("externalId="))?
                        .to_string(),
                    false => serde_json::from_str::<Value>(&m.payload).ok()?["seq"].to_string(),
                };
                seq.parse().ok()
            })
            .collect()
    };
    let events = settle(
        &rt,
        &api,
        &[
            ("syslog json", &|| syslog_seqs(&plain)),
            ("syslog cef", &|| syslog_seqs(&tls)),
            ("hec", &|| seqs(&http.hec_events())),
            ("webhook", &|| seqs(&http.webhook_events("hook"))),
        ],
    );
    let all: Vec<u64> = seqs(&events);
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
    assert!(
        all.len() >= 7,
        "3 notes, 2 messages received with their verdicts: {all:?}"
    );

    // Syslog JSON: once each, in order, the API's JSON exactly, with a header that
    // says what it is.
    let messages = plain.messages();
    assert_eq!(syslog_seqs(&plain), all, "syslog json: once each, in order");
    let payloads: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect();
    assert_eq!(numbers(&payloads, "soc-json"), one_to(all.len()));
    assert_eq!(unnumbered(&payloads), events);
    for (message, event) in messages.iter().zip(&events) {
        assert_eq!(message.msgid, event["type"].as_str().unwrap());
        assert_eq!(message.hostname, "mx.example.test");
        assert!([13 * 8 + 4, 13 * 8 + 5, 13 * 8 + 6].contains(&message.pri));
    }
    assert!(plain.errors().is_empty(), "{:?}", plain.errors());

    // CEF over TLS, with each special character escaped where it stands.
    assert_eq!(syslog_seqs(&tls), all, "syslog cef: once each, in order");
    let cef: Vec<String> = tls.messages().into_iter().map(|m| m.payload).collect();
    assert!(cef.iter().all(|l| l.starts_with("CEF:0|Bulwark|Bulwark|")));
    assert!(cef.iter().all(|l| !l.contains('\n')));
    for (n, line) in cef.iter().enumerate() {
        assert!(
            line.contains(&format!(" cn1={} cs6=soc-cef ", n + 1)),
            "{line}"
        );
    }
    assert!(
        cef.iter()
            .any(|l| l.contains(r"msg=pipe | equals \= backslash \\ and\na second line")),
        "{cef:#?}"
    );
    let subject = cef
        .iter()
        .find(|l| l.contains("|message.received|"))
        .unwrap();
    assert!(
        subject.contains(r"msg=pipe|equals\=back\\slash\nnewline"),
        "{subject}"
    );
    assert!(subject.contains("suser=alice@sender.test"), "{subject}");
    assert!(subject.contains("duser=bob@example.test"), "{subject}");
    assert!(tls.messages().iter().all(|m| m.pri / 8 == 16));

    // HEC: acknowledged batches, the API's JSON as the event.
    assert_eq!(seqs(&http.hec_events()), all, "hec: once each, in order");
    assert_eq!(numbers(&http.hec_events(), "splunk"), one_to(all.len()));
    assert_eq!(unnumbered(&http.hec_events()), events);

    // Webhook: signed (a wrong signature would be refused), and the chain continues
    // across batches so the receiver can check it.
    let hooked = http.webhook_events("hook");
    assert_eq!(numbers(&hooked, "hook"), one_to(all.len()));
    assert_eq!(unnumbered(&hooked), events);
    for pair in hooked.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    assert!(http.refused().is_empty(), "{:?}", http.refused());
    let notes: Vec<u64> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("audit."))
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    // A filtered feed is numbered 1, 2, 3, ... all the same: no number, no gap. It
    // ships on its own schedule, so it is waited for like the others.
    rt.block_on(wait_for_seqs("notes-only", &notes, WAIT, || {
        seqs(&http.webhook_events("notes-only"))
    }))
    .unwrap();
    let filtered = http.webhook_events("notes-only");
    assert_eq!(seqs(&filtered), notes);
    assert_eq!(numbers(&filtered, "notes-only"), one_to(notes.len()));

    // What the exporters say about themselves.
    let head = all.len() as f64;
    for exporter in ["soc-json", "soc-cef", "splunk", "hook", "notes-only"] {
        assert_eq!(metric(&node, "bulwark_siem_running", exporter), 1.0);
        let deadline = Instant::now() + WAIT;
        while metric(&node, "bulwark_siem_cursor", exporter) < head {
            assert!(
                Instant::now() < deadline,
                "{exporter}: cursor not at {head}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        metric(&node, "bulwark_siem_events_sent_total", "hook"),
        head
    );
    assert_eq!(
        metric(&node, "bulwark_siem_events_sent_total", "notes-only"),
        notes.len() as f64
    );
}

#[test]
fn a_receiver_that_was_down_gets_everything_once_it_is_back() {
    let rt = runtime();
    let mut syslog = rt.block_on(SyslogReceiver::start(None)).unwrap();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    let exporters = format!(
        r#"
[[siem.exporters]]
name = "soc"
kind = "syslog"
address = "{syslog}"
retry_max_secs = 1

[[siem.exporters]]
name = "splunk"
kind = "hec"
url = "{http}"
token = "{HEC_TOKEN}"
batch = 5
retry_max_secs = 1

[[siem.exporters]]
name = "hook"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"
batch = 3
retry_max_secs = 1
"#,
        syslog = syslog.addr(),
        http = http.url(),
    );
    let node = Node::start_with("", &(common::held_delivery() + &exporters));
    let api = Api::new(&node);
    let note = |text: &str| {
        let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": text }));
        assert_eq!(status, 201, "{body}");
    };
    let syslog_seqs = |r: &SyslogReceiver| -> Vec<u64> {
        r.messages()
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(&m.payload).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    note("before");
    let before = settle(
        &rt,
        &api,
        &[
            ("syslog", &|| syslog_seqs(&syslog)),
            ("hec", &|| seqs(&http.hec_events())),
            ("webhook", &|| seqs(&http.webhook_events("hook"))),
        ],
    );
    // Accepted and acknowledged: taking the receivers down now interrupts nothing.
    wait_cursors(&node, &["soc", "splunk", "hook"], before.len());
    let shipped = (
        syslog.messages().len(),
        http.hec_events().len(),
        http.webhook_events("hook").len(),
    );

    // Down: the syslog listener closed, the HTTP endpoints answering 503.
    syslog.stop();
    http.set_up(false);
    for n in 0..20 {
        note(&format!("while down {n}"));
    }
    let deadline = Instant::now() + WAIT;
    for exporter in ["soc", "splunk", "hook"] {
        while metric(&node, "bulwark_siem_batch_failures_total", exporter) < 2.0 {
            assert!(
                Instant::now() < deadline,
                "{exporter}: no failed tries counted"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(metric(&node, "bulwark_siem_lag_events", exporter) >= 20.0);
    }
    assert_eq!(
        (
            syslog.messages().len(),
            http.hec_events().len(),
            http.webhook_events("hook").len()
        ),
        shipped,
        "nothing arrives while down"
    );

    // Back: everything, without a gap, and nothing twice.
    rt.block_on(syslog.restart()).unwrap();
    http.set_up(true);
    note("after");
    let events = settle(
        &rt,
        &api,
        &[
            ("syslog", &|| syslog_seqs(&syslog)),
            ("hec", &|| seqs(&http.hec_events())),
            ("webhook", &|| seqs(&http.webhook_events("hook"))),
        ],
    );
    let all = seqs(&events);
    assert_eq!(syslog_seqs(&syslog), all);
    assert_eq!(seqs(&http.hec_events()), all);
    assert_eq!(seqs(&http.webhook_events("hook")), all);
    for exporter in ["soc", "splunk", "hook"] {
        let deadline = Instant::now() + WAIT;
        while metric(&node, "bulwark_siem_lag_events", exporter) > 0.0 {
            assert!(Instant::now() < deadline, "{exporter}: lag stays");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `siem.dead_letter` events in the log.
fn dead_letters(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/v1/events?type=siem.dead_letter&limit=100");
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// How many times each seq was received.
fn counts(seqs: &[u64]) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for seq in seqs {
        *counts.entry(*seq).or_default() += 1;
    }
    counts
}

#[test]
fn a_syslog_receiver_killed_mid_batch_gets_every_event_again_over_tcp_and_relp() {
    let rt = runtime();
    let mut tcp = rt.block_on(SyslogReceiver::start(None)).unwrap();
    let mut relp = rt.block_on(SyslogReceiver::start_relp()).unwrap();
    // Down while the log fills, so that the first batch is a full one.
    tcp.stop();
    relp.stop();
    let exporters = format!(
        r#"
[[siem.exporters]]
name = "soc-tcp"
kind = "syslog"
address = "{tcp}"
batch = 40
retry_max_secs = 1

[[siem.exporters]]
name = "soc-relp"
kind = "syslog"
transport = "relp"
address = "{relp}"
batch = 40
retry_max_secs = 1
"#,
        tcp = tcp.addr(),
        relp = relp.addr(),
    );
    let node = Node::start_with("", &(common::held_delivery() + &exporters));
    let api = Api::new(&node);
    // Long notes: a batch is far more than the receiver reads from its socket at
    // once, so it dies with bytes unread.
    let filler = "x".repeat(1000);
    for n in 0..60 {
        let (status, body) = api.post_json(
            "/v1/notes",
            &serde_json::json!({ "text": format!("note {n} {filler}") }),
        );
        assert_eq!(status, 201, "{body}");
    }
    let exporters = ["soc-tcp", "soc-relp"];
    let deadline = Instant::now() + WAIT;
    for exporter in exporters {
        while metric(&node, "bulwark_siem_batch_failures_total", exporter) < 1.0 {
            assert!(Instant::now() < deadline, "{exporter}: never tried");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let syslog_seqs = |r: &SyslogReceiver| -> Vec<u64> {
        r.messages()
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(&m.payload).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    // Back, to die after storing the 10th message of the batch of 40.
    for receiver in [&mut tcp, &mut relp] {
        receiver.die_at(10);
        rt.block_on(receiver.restart()).unwrap();
    }
    for (exporter, receiver) in exporters.iter().zip([&tcp, &relp]) {
        let deadline = Instant::now() + WAIT;
        while receiver.messages().len() < 10 {
            assert!(Instant::now() < deadline, "{exporter}: nothing received");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The exporter did not count the batch as shipped.
        std::thread::sleep(Duration::from_millis(500));
        let received = syslog_seqs(receiver);
        assert_eq!(received.len(), 10, "{exporter}: died at 10");
        assert!(
            metric(&node, "bulwark_siem_cursor", exporter) < received[9] as f64,
            "{exporter}: the cursor passed a batch the receiver died in"
        );
        assert!(metric(&node, "bulwark_siem_batch_failures_total", exporter) >= 2.0);
    }
    for receiver in [&mut tcp, &mut relp] {
        rt.block_on(receiver.restart()).unwrap();
    }
    let events = settle(
        &rt,
        &api,
        &[
            ("syslog tcp", &|| syslog_seqs(&tcp)),
            ("syslog relp", &|| syslog_seqs(&relp)),
        ],
    );
    wait_cursors(&node, &exporters, events.len());
    for (exporter, receiver) in exporters.iter().zip([&tcp, &relp]) {
        let received = syslog_seqs(receiver);
        let counts = counts(&received);
        assert_eq!(counts.len(), events.len(), "{exporter}: every event");
        // Twice: only what the dead receiver had stored of the batch it died in,
        // and every copy counted.
        let twice: Vec<u64> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, _)| *s)
            .collect();
        assert!(counts.values().all(|n| *n <= 2), "{exporter}: {counts:?}");
        // The batch it died in is the tail of what it stored (a first, smaller batch
        // of what the node recorded at start may have gone through before it).
        assert!(
            !twice.is_empty() && received[..10].ends_with(&twice),
            "{exporter}: twice {twice:?}, stored before dying {:?}",
            &received[..10]
        );
        let resent = metric(&node, "bulwark_siem_resent_events_total", exporter);
        assert!(
            (10.0..=40.0).contains(&resent),
            "{exporter}: resent {resent}"
        );
        assert!(
            receiver
                .errors()
                .iter()
                .all(|e| e.contains("died as asked")),
            "{:?}",
            receiver.errors()
        );
    }
}

#[test]
fn a_batch_refused_for_good_is_dead_lettered_and_the_feeds_go_on() {
    let rt = runtime();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    let exporters = format!(
        r#"
[[siem.exporters]]
name = "hook"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"
dead_letter_after = 3
retry_max_secs = 1

[[siem.exporters]]
name = "notes-only"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"
types = ["audit.note"]
dead_letter_after = 3
retry_max_secs = 1
"#,
        http = http.url(),
    );
    let node = Node::start_with("", &(common::held_delivery() + &exporters));
    let api = Api::new(&node);
    let note = |text: &str| {
        let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": text }));
        assert_eq!(status, 201, "{body}");
        body["seq"].as_u64().unwrap()
    };
    let before = note("before");
    settle(
        &rt,
        &api,
        &[("hook", &|| seqs(&http.webhook_events("hook")))],
    );
    rt.block_on(wait_for_seqs("notes-only", &[before], WAIT, || {
        seqs(&http.webhook_events("notes-only"))
    }))
    .unwrap();
    http.refuse_batches_with("poison pill");
    let poison = note("poison pill");
    let deadline = Instant::now() + WAIT;
    while dead_letters(&api).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no dead letters: {:?}",
            dead_letters(&api)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = note("after");
    let dead = dead_letters(&api);
    assert_eq!(dead.len(), 2, "{dead:?}");
    for exporter in ["hook", "notes-only"] {
        let letter = dead
            .iter()
            .find(|d| d["siem"]["exporter"] == exporter)
            .unwrap_or_else(|| panic!("{exporter}: {dead:?}"));
        let (first, last) = (
            letter["siem"]["first_seq"].as_u64().unwrap(),
            letter["siem"]["last_seq"].as_u64().unwrap(),
        );
        assert!(first <= poison && poison <= last, "{letter}");
        assert_eq!(letter["siem"]["events"], 1, "{letter}");
        assert_eq!(letter["siem"]["tries"], 3, "{letter}");
        assert_eq!(letter["event"]["outcome"], "failure");
        assert!(
            letter["event"]["reason"].as_str().unwrap().contains("400"),
            "{letter}"
        );
        assert_eq!(
            metric(&node, "bulwark_siem_dead_letters_total", exporter),
            1.0
        );
    }
    assert_eq!(http.refusals(), 6, "three tries each");
    // Everything after the refused batch arrives; the refused one never did.
    let log_seqs = seqs(&log(&api));
    let want: Vec<u64> = log_seqs.iter().copied().filter(|s| *s != poison).collect();
    rt.block_on(wait_for_seqs("hook", &want, WAIT, || {
        seqs(&http.webhook_events("hook"))
    }))
    .unwrap();
    let hooked = http.webhook_events("hook");
    assert_eq!(seqs(&hooked), want, "once each, the refused one left out");
    // The numbers jump once, by the one event given up.
    let numbered = numbers(&hooked, "hook");
    let gap = numbered.windows(2).position(|w| w[1] != w[0] + 1).unwrap();
    assert_eq!(numbered[gap + 1], numbered[gap] + 2, "{numbered:?}");
    assert_eq!(
        numbered.iter().filter(|n| **n != numbered[gap] + 1).count(),
        numbered.len()
    );
    // The filtered feed: its notes, a gap where the refused one was, and its own
    // dead letter (though only audit.note passes its filter) to explain it.
    rt.block_on(wait_for_seqs("notes-only", &[after], WAIT, || {
        seqs(&http.webhook_events("notes-only"))
    }))
    .unwrap();
    let filtered = http.webhook_events("notes-only");
    // The anchors of the chain reach every feed: the node's signing key, on record
    // at start (before or after the first note, as the node's tasks ran).
    let types: Vec<&str> = filtered
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let anchors = types.iter().filter(|t| **t == "audit.key_rotated").count();
    assert_eq!(anchors, 1, "{filtered:#?}");
    let shown: Vec<&str> = types
        .iter()
        .copied()
        .filter(|t| *t != "audit.key_rotated")
        .collect();
    assert_eq!(shown, ["audit.note", "siem.dead_letter", "audit.note"]);
    // Numbered 1 to 5 but for the refused note's number.
    let numbered: Vec<u64> = filtered
        .iter()
        .map(|e| e["export"]["seq"].as_u64().unwrap())
        .collect();
    let poison_number = (1..=5).find(|n| !numbered.contains(n)).unwrap();
    assert_eq!(numbered.len(), 4, "{numbered:?}");
    assert!(numbered.iter().all(|n| (1..=5).contains(n)), "{numbered:?}");
    let letter = filtered
        .iter()
        .find(|e| e["type"] == "siem.dead_letter")
        .unwrap();
    assert_eq!(letter["siem"]["exporter"], "notes-only");
    assert_eq!(letter["export"]["seq"], poison_number + 1, "{filtered:#?}");
}

#[test]
fn the_signed_checkpoints_reach_a_filtered_feed_as_the_log_holds_them() {
    let rt = runtime();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[[siem.exporters]]
name = "notes-only"
kind = "webhook"
url = "{http}/hook"
secret = "{SECRET}"
types = ["audit.note"]
retry_max_secs = 1

[audit]
checkpoint_secs = 1
signing_key_file = "{key}"
"#,
        http = http.url(),
        key = keys.path().join("signing.key").display(),
    );
    let node = Node::start_with("", &(common::held_delivery() + &config));
    let api = Api::new(&node);
    let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": "anchored" }));
    assert_eq!(status, 201, "{body}");
    let noted = body["seq"].as_u64().unwrap();
    // A checkpoint signed over the note, in the log.
    let deadline = Instant::now() + WAIT;
    let checkpoint = loop {
        let found = log(&api).into_iter().find(|e| {
            e["type"] == "audit.checkpoint" && e["checkpoint"]["seq"].as_u64().unwrap() >= noted
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no checkpoint after {noted}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = checkpoint["seq"].as_u64().unwrap();
    rt.block_on(wait_for_seqs("notes-only", &[noted, at], WAIT, || {
        seqs(&http.webhook_events("notes-only"))
    }))
    .unwrap();
    // The feed of notes holds the anchors too, exactly as the log shows them, and
    // numbers them with the notes without a gap.
    let feed = http.webhook_events("notes-only");
    let shipped = unnumbered(&feed);
    let got = shipped.iter().find(|e| e["seq"] == at).unwrap();
    assert_eq!(*got, checkpoint);
    let kinds: std::collections::BTreeSet<&str> =
        feed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["audit.checkpoint", "audit.key_rotated", "audit.note"],
        "{feed:#?}"
    );
    assert_eq!(numbers(&feed, "notes-only"), one_to(feed.len()));
}

#[test]
fn hec_posts_an_unacknowledged_batch_a_bounded_number_of_times_and_counts_them() {
    let rt = runtime();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    http.set_acking(false);
    let exporters = format!(
        r#"
[[siem.exporters]]
name = "splunk"
kind = "hec"
url = "{http}"
token = "{HEC_TOKEN}"
ack_timeout_secs = 1
ack_resends = 1
dead_letter_after = 2
retry_max_secs = 1
"#,
        http = http.url(),
    );
    let node = Node::start_with("", &(common::held_delivery() + &exporters));
    let api = Api::new(&node);
    let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": "unacked" }));
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + WAIT;
    while dead_letters(&api).is_empty() {
        assert!(Instant::now() < deadline, "never given up");
        std::thread::sleep(Duration::from_millis(100));
    }
    http.set_acking(true);
    let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": "acked" }));
    assert_eq!(status, 201, "{body}");
    let events = settle(&rt, &api, &[("hec", &|| seqs(&http.hec_events()))]);
    wait_cursors(&node, &["splunk"], events.len());
    let received = counts(&seqs(&http.hec_events()));
    assert_eq!(received.len(), events.len(), "every event arrives");
    // Each batch given up was posted 1 + ack_resends = 2 times, no more.
    let dead = dead_letters(&api);
    for letter in &dead {
        assert_eq!(letter["siem"]["tries"], 2, "{letter}");
        let (first, last) = (
            letter["siem"]["first_seq"].as_u64().unwrap(),
            letter["siem"]["last_seq"].as_u64().unwrap(),
        );
        for seq in first..=last {
            assert_eq!(received[&seq], 2, "seq {seq} of {letter}");
        }
    }
    assert!(received.values().all(|n| *n <= 2), "{received:?}");
    // Every duplicate counted.
    let copies: usize = received.values().sum();
    assert_eq!(
        metric(&node, "bulwark_siem_resent_events_total", "splunk"),
        (copies - received.len()) as f64
    );
    assert_eq!(
        metric(&node, "bulwark_siem_dead_letters_total", "splunk"),
        dead.len() as f64
    );
}

/// The cluster's policy, once it has one.
fn policy(api: &Api) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api.get("/v1/policy");
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "no policy: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_exporters_are_the_policys_changed_without_restart_and_their_secrets_stay_out_of_the_log() {
    let rt = runtime();
    let http = rt
        .block_on(HttpReceiver::start(HEC_TOKEN, SECRET.as_bytes()))
        .unwrap();
    // Seeded from the node's file, whose inline secret stays in the file.
    let hook = format!(
        "[[siem.exporters]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\n\
         secret = \"{SECRET}\"\npoll_ms = 20\n",
        http.url()
    );
    let node = Node::start_with("", &(common::held_delivery() + &hook));
    let api = Api::new(&node);
    let current = policy(&api);
    let exporters = current["policy"]["exporters"].clone();
    assert_eq!(exporters[0]["name"], "hook", "{current}");
    assert!(exporters[0].get("secret").is_none(), "{exporters}");
    let note = |text: &str| {
        let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": text }));
        assert_eq!(status, 201, "{body}");
        body["seq"].as_u64().unwrap()
    };
    let first = note("shipped by the seeded exporter");
    rt.block_on(wait_for_seqs("webhook", &[first], WAIT, || {
        seqs(&http.webhook_events("hook"))
    }))
    .unwrap();

    // A secret written into the policy is refused, and so are a file this node does
    // not have and files outside its config's directory (an admin token cannot make
    // the node send its other files as a token): every problem at once, nothing
    // changed.
    let mut bad = current["policy"].clone();
    bad["exporters"] = serde_json::json!([
        { "name": "splunk", "kind": "hec", "url": http.url(), "token": HEC_TOKEN },
        { "name": "soar", "kind": "webhook", "url": http.url(), "secret_file": "absent.key" },
        { "name": "exfil", "kind": "hec", "url": http.url(), "token_file": "/etc/hostname" },
        { "name": "up", "kind": "hec", "url": http.url(), "token_file": "../data/admin.token" },
    ]);
    let (status, refused) = api.put_json(
        "/v1/policy",
        &serde_json::json!({ "base_version": current["version"], "policy": bad }),
    );
    assert_eq!(status, 422, "{refused}");
    let errors = refused["errors"].to_string();
    for expected in [
        "policy.exporters[0] (splunk): token: a secret stays out of the cluster's policy",
        "policy.exporters[1] (soar): secret_file",
        "absent.key",
        "policy.exporters[2] (exfil): token_file: /etc/hostname: the policy names files in",
        "policy.exporters[3] (up): token_file: ../data/admin.token: the policy names files",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in {errors}");
    }
    assert_eq!(policy(&api)["version"], current["version"]);

    // With its token in a file beside the config, an exporter added to the policy
    // ships at once, from its first event; the one taken out stops.
    std::fs::write(node.dir().join("hec.token"), format!("{HEC_TOKEN}\n")).unwrap();
    let mut changed = current["policy"].clone();
    changed["exporters"] = serde_json::json!([
        { "name": "splunk", "kind": "hec", "url": http.url(), "token_file": "hec.token",
          "ack": false, "poll_ms": 20 },
    ]);
    let (status, answer) = api.put_json(
        "/v1/policy",
        &serde_json::json!({ "base_version": current["version"], "policy": changed,
                             "reason": "the SOC's Splunk instead of the webhook" }),
    );
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + WAIT;
    while metric(&node, "bulwark_siem_running", "hook") != 0.0 {
        assert!(Instant::now() < deadline, "the webhook exporter still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = http.webhook_events("hook").len();
    let last = note("shipped by the added exporter");
    let want: Vec<u64> = (1..=last).collect();
    rt.block_on(wait_for_seqs("hec", &want, WAIT, || {
        seqs(&http.hec_events())
    }))
    .unwrap();
    assert_eq!(http.webhook_events("hook").len(), received);

    // The secrets are nowhere in what the log and the policy's versions hold.
    let export = reqwest::blocking::Client::new()
        .get(format!("{}/v1/events/export", node.api))
        .bearer_auth(node.token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(export.contains(r#"exporters: + \"splunk\""#), "{export}");
    let (_, history) = api.get("/v1/policy/history");
    let versions: Vec<String> = (1..=history.as_array().unwrap().len())
        .map(|v| api.get(&format!("/v1/policy?version={v}")).1.to_string())
        .collect();
    assert!(versions.last().unwrap().contains("hec.token"));
    for text in versions.iter().chain([&export, &history.to_string()]) {
        assert!(!text.contains(SECRET) && !text.contains(HEC_TOKEN));
    }
}

#[test]
fn check_config_reports_every_bad_exporter_setting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        r#"
[[siem.exporters]]
name = "dup"
kind = "syslog"
address = "no-port"
format = "xml"
url = "http://x"

[[siem.exporters]]
name = "dup"
kind = "hec"
url = "ftp://splunk"
tls_cert = "client.pem"
ack_timeout_secs = 0

[[siem.exporters]]
name = "hook"
kind = "webhook"
url = "https://siem.example/hook"
secret = "short"
types = ["Scan Verdict", "delivery*"]
batch = 0

[[siem.exporters]]
name = "what"
kind = "kafka"

[[siem.exporters]]
kind = "syslog"
address = "127.0.0.1:514"
facility = 24
tls_ca = "missing.pem"
transport = "udp"

[[siem.exporters]]
name = "again"
kind = "hec"
url = "https://splunk.example:8088"
token = "t"
transport = "relp"
ack_resends = 101
dead_letter_after = 0
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["check-config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for expected in [
        "siem.exporters[0] (dup): address must be host:port",
        "siem.exporters[0] (dup): url is not a setting of kind = \"syslog\"",
        "siem.exporters[1] (dup): the name \"dup\" is taken",
        "siem.exporters[1] (dup): url \"ftp://splunk\" is not an http(s) URL",
        "siem.exporters[1] (dup): token or token_file is required",
        "siem.exporters[1] (dup): ack_timeout_secs must be 1 to 3600, not 0",
        "siem.exporters[2] (hook): the secret must be at least 16 bytes",
        "siem.exporters[2] (hook): types: \"Scan Verdict\"",
        "siem.exporters[2] (hook): types: \"delivery*\"",
        "siem.exporters[2] (hook): batch must be 1 to 10000",
        "siem.exporters[3] (what): kind must be syslog, hec or webhook",
        "siem.exporters[4]: name must be",
        "siem.exporters[4]: facility must be 0 to 23",
        "siem.exporters[4]: tls_ca and tls_cert need tls = true",
        "siem.exporters[1] (dup): tls_cert is not a setting of kind = \"hec\"",
        "missing.pem",
        "siem.exporters[4]: transport must be tcp or relp, not \"udp\"",
        "siem.exporters[5] (again): transport is not a setting of kind = \"hec\"",
        "siem.exporters[5] (again): ack_resends must be 0 to 100, not 101",
        "siem.exporters[5] (again): dead_letter_after must be 1 to 1000, not 0",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

//! Every SMTP limit and malformed case, over real sockets against the real binary:
//! each shows the reply the client gets, that the session (or the server) carries
//! on, and what was or was not stored.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, Smtp};

const MSG: &str = "Subject: test\r\n\r\nhello\r\n";

fn received_count(node: &Node) -> usize {
    node.events("message.received").len()
}

/// The reasons of the `message.rejected` events, once at least `n` are recorded.
fn rejection_reasons(node: &Node, n: usize) -> Vec<String> {
    node.wait_events("message.rejected", n)
        .iter()
        .map(|e| e["event"]["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits for `wait` refusals on record, then checks that `expected` of them give
/// `reason`.
fn assert_refusals(node: &Node, wait: usize, reason: &str, expected: usize) {
    let reasons = rejection_reasons(node, wait);
    assert_eq!(
        reasons.iter().filter(|r| *r == reason).count(),
        expected,
        "{reason}: {reasons:?}"
    );
}

#[test]
fn limits_relay_is_denied_and_the_session_carries_on() {
    let node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    for outside in [
        "RCPT TO:<bob@elsewhere.test>",
        "RCPT TO:<bob@sub.example.test>",
        "RCPT TO:<\"bob@example.test\"@elsewhere.test>",
        "RCPT TO:<bob@[127.0.0.1]>",
    ] {
        let r = s.cmd(outside);
        assert_eq!(r.code, 554, "{outside}: {r:?}");
        assert!(r.text().starts_with("5.7.1 "), "{r:?}");
        assert!(r.text().contains("Relay access denied"), "{r:?}");
    }
    assert_eq!(s.cmd("RCPT TO:<bob@EXAMPLE.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<Postmaster>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(MSG.as_bytes());
    s.send(b".\r\n");
    let id = s.read_reply().queued_id();
    let received = node.events("message.received");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["message_id"], id.as_str());
    assert_eq!(
        received[0]["email"]["to"]["address"],
        serde_json::json!(["bob@example.test", "postmaster@localhost"])
    );
    let rejected = node.wait_events("message.rejected", 4);
    assert_eq!(rejected.len(), 4);
    assert!(rejected
        .iter()
        .all(|e| e["event"]["reason"] == "relay_denied"));
    // Refusals are recorded in batches committed side by side: find this one by
    // its address, not by its place in the log.
    let elsewhere = rejected
        .iter()
        .find(|e| e["email"]["to"]["address"][0] == "bob@elsewhere.test")
        .expect("the refusal of bob@elsewhere.test");
    assert_eq!(elsewhere["email"]["sender"]["address"], "a@sender.test");
    assert_eq!(elsewhere["source"]["ip"], "127.0.0.1");
}

#[test]
fn limits_message_size_recipients_and_line_length() {
    let node = Node::start("max_message_size = 2000\nmax_recipients = 3");
    let mut s = Smtp::ehlo(node.smtp);
    let ehlo = s.cmd("EHLO again.test");
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 2000"), "{ehlo:?}");

    // Declared too big at MAIL.
    let r = s.cmd("MAIL FROM:<a@sender.test> SIZE=2001");
    assert_eq!((r.code, &r.text()[..5]), (552, "5.3.4"), "{r:?}");
    // Too big in DATA: read to the end, then refused; nothing stored.
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test> SIZE=100").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    let line = format!("{}\r\n", "x".repeat(990));
    s.send(format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(3)).as_bytes());
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (552, "5.3.4"), "{r:?}");
    assert_eq!(s.cmd("RSET").code, 250);
    // Too big in BDAT.
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    s.send(format!("BDAT 1500\r\n{}", "y".repeat(1500)).as_bytes());
    assert_eq!(s.read_reply().code, 250);
    s.send(format!("BDAT 600 LAST\r\n{}", "z".repeat(600)).as_bytes());
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (552, "5.3.4"), "{r:?}");
    assert_eq!(received_count(&node), 0);

    // Recipients: the fourth is refused with 452 (try later), the three go through.
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    for i in 0..3 {
        assert_eq!(s.cmd(&format!("RCPT TO:<r{i}@example.test>")).code, 250);
    }
    let r = s.cmd("RCPT TO:<r3@example.test>");
    assert_eq!((r.code, &r.text()[..5]), (452, "4.5.3"), "{r:?}");
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(format!("{MSG}.\r\n").as_bytes());
    s.read_reply().queued_id();
    let stored = node.events("message.received");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["email"]["to"]["address"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A command line over the limit: 500, then the session goes on.
    let r = s.cmd(&format!("NOOP {}", "n".repeat(3000)));
    assert_eq!((r.code, &r.text()[..5]), (500, "5.5.2"), "{r:?}");
    assert!(r.text().contains("too long"), "{r:?}");
    assert_eq!(s.cmd("NOOP").code, 250);

    // A content line over max_data_line_length (default 65536) is refused as 554 5.6.0.
    let node2 = Node::start("");
    let mut s = Smtp::ehlo(node2.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "l".repeat(70_000)).as_bytes());
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (554, "5.6.0"), "{r:?}");
    assert_eq!(s.cmd("NOOP").code, 250);
    assert_eq!(received_count(&node2), 0);

    assert_refusals(&node, 3, "message_too_big", 3);
}

#[test]
fn limits_bad_sequence_unknown_commands_and_the_error_cap() {
    let node = Node::start("max_errors = 5");
    let mut s = Smtp::connect(node.smtp);
    let r = s.cmd("MAIL FROM:<a@sender.test>");
    assert_eq!((r.code, &r.text()[..5]), (503, "5.5.1"), "{r:?}");
    assert_eq!(s.cmd("EHLO client.test").code, 250);
    let r = s.cmd("RCPT TO:<b@example.test>");
    assert_eq!((r.code, &r.text()[..5]), (503, "5.5.1"), "{r:?}");
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    let r = s.cmd("DATA");
    assert_eq!((r.code, &r.text()[..5]), (503, "5.5.1"), "{r:?}");
    let r = s.cmd("MAIL FROM:<a@sender.test>");
    assert_eq!(r.code, 503, "nested MAIL: {r:?}");
    // Error number 5 ends the session.
    let r = s.cmd("XYZZY");
    assert_eq!((r.code, &r.text()[..5]), (500, "5.5.2"), "{r:?}");
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.7.0"), "{r:?}");
    assert!(s.is_closed());

    // Syntax errors have their own codes; VRFY is refused politely.
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:no-brackets@sender.test").code, 501);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test> BODY=BINARYMIME").code, 555);
    assert_eq!(s.cmd("MAIL FROM:<josé@sender.test>").code, 553);
    assert_eq!(s.cmd("VRFY bob").code, 252);
    assert_eq!(s.cmd("NOOP").code, 250);
    assert_eq!(s.cmd("QUIT").code, 221);
    assert!(s.is_closed());

    // Chatter: 100 NOOP/RSET are free, each further one counts as an error.
    let mut s = Smtp::ehlo(node.smtp);
    s.send("NOOP\r\nRSET\r\n".repeat(50).as_bytes());
    for _ in 0..100 {
        assert_eq!(s.read_reply().code, 250);
    }
    for _ in 0..4 {
        assert_eq!(s.cmd("NOOP").code, 250);
    }
    let r = s.cmd("NOOP");
    assert_eq!(r.code, 250);
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.7.0"), "{r:?}");
    assert!(s.is_closed());

    let reasons = rejection_reasons(&node, 2);
    assert_eq!(reasons, vec!["too_many_errors", "too_many_errors"]);
}

#[test]
fn limits_timeouts_end_idle_and_slow_clients() {
    let node = Node::start("command_timeout_secs = 1\ndata_timeout_secs = 2");
    // Idle after the greeting.
    let started = Instant::now();
    let mut idle = Smtp::connect(node.smtp);
    let r = idle.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(idle.is_closed());

    // Slowloris: a byte every 100 ms never completes a line in time.
    let mut slow = Smtp::connect(node.smtp);
    let started = Instant::now();
    let slowloris = trickle(&slow, b"EHLO slow.client.test.with.a.long.name\r\n", 1);
    let r = slow.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    slowloris.join().unwrap();

    // Trickled content: the whole message must arrive within data_timeout_secs.
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    let started = Instant::now();
    let trickler = trickle(
        &s,
        &b"a line that arrives far too slowly\r\n".repeat(40),
        40,
    );
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(3500));
    trickler.join().unwrap();
    assert_eq!(received_count(&node), 0);

    // The server itself is fine.
    let mut s = Smtp::ehlo(node.smtp);
    s.send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
}

/// Writes `bytes` `chunk` at a time, one chunk every 100 ms, until done or the
/// server closes the connection.
fn trickle(s: &Smtp, bytes: &[u8], chunk: usize) -> std::thread::JoinHandle<()> {
    let mut writer = s.writer();
    let bytes = bytes.to_vec();
    std::thread::spawn(move || {
        for piece in bytes.chunks(chunk) {
            if writer.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn limits_sessions_in_total_and_per_client_address() {
    let node = Node::start("max_sessions = 3\nmax_sessions_per_ip = 2");
    let a = Smtp::connect(node.smtp);
    let b = Smtp::connect(node.smtp);
    // Third from 127.0.0.1: over the per-address limit.
    let mut c = Smtp::connect_raw(node.smtp);
    let r = c.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.7.0"), "{r:?}");
    assert!(r.text().contains("127.0.0.1"), "{r:?}");
    assert!(c.is_closed());
    // From another loopback address: allowed, and it fills the total.
    let mut d = connect_from("127.0.0.2", node.smtp);
    assert_eq!(d.read_reply().code, 220);
    let mut e = connect_from("127.0.0.3", node.smtp);
    let r = e.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.7.0"), "{r:?}");
    assert!(r.text().contains("too many connections"), "{r:?}");
    // Sessions that fit still work, and a closed one frees its place.
    assert_eq!(d.cmd("EHLO d.test").code, 250);
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut f = Smtp::connect_raw(node.smtp);
        let r = f.read_reply();
        if r.code == 220 {
            assert_eq!(f.cmd("EHLO f.test").code, 250);
            f.send_message("a@sender.test", &["b@example.test"], MSG)
                .queued_id();
            break;
        }
        assert!(Instant::now() < deadline, "a place never freed up: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reasons = rejection_reasons(&node, 2);
    assert!(
        reasons.contains(&"too_many_sessions_from_ip".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"too_many_sessions".to_string()),
        "{reasons:?}"
    );
}

fn connect_from(local: &str, to: SocketAddr) -> Smtp {
    connect_all_from(&[local.to_string()], to)
        .pop()
        .expect("one connection")
}

#[test]
fn limits_early_talkers_are_refused() {
    let node = Node::start("greet_delay_ms = 400");
    let mut rude = Smtp::connect_raw(node.smtp);
    rude.send(b"EHLO rude.test\r\n");
    let r = rude.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (554, "5.5.1"), "{r:?}");
    assert!(rude.is_closed());
    let started = Instant::now();
    let mut polite = Smtp::connect(node.smtp);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(polite.cmd("EHLO polite.test").code, 250);
    polite
        .send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    assert_eq!(rejection_reasons(&node, 1), vec!["early_talker"]);
}

#[test]
fn limits_proxy_protocol_v2_gives_the_real_client() {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let node = Node::start("proxy_protocol = true");
    let header = |src: &str| {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = "10.0.0.25:25".parse().unwrap();
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .build()
            .unwrap()
    };
    let mut s = Smtp::connect_raw(node.smtp);
    s.send(&header("198.51.100.7:40001"));
    assert_eq!(s.read_reply().code, 220);
    assert_eq!(s.cmd("EHLO behind.lb.test").code, 250);
    let id = s
        .send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    let event = &node.events("message.received")[0];
    assert_eq!(event["message_id"], id.as_str());
    assert_eq!(event["source"]["ip"], "198.51.100.7");
    assert_eq!(event["source"]["port"], 40001);
    assert_eq!(event["source"]["proxy_ip"], "127.0.0.1");

    // No header, or a v1 text header: closed without a greeting.
    for first in [
        &b"EHLO direct.test\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        let mut s = Smtp::connect_raw(node.smtp);
        s.send(first);
        assert!(s.try_read_reply().is_none());
    }
    // The per-address limit counts the real client, not the balancer.
    let mut again = Smtp::connect_raw(node.smtp);
    again.send(&header("198.51.100.8:1"));
    assert_eq!(again.read_reply().code, 220);
}

#[test]
fn limits_bare_newlines_never_end_the_data() {
    // normalize: the smuggled "\n.\n" and "\r\n.\n" are content, stored as CRLF;
    // the commands after them are content too: one message, not two.
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(
        b"Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<evil@sender.test>\r\n\
          RCPT TO:<victim@example.test>\r\nDATA\r\nsecond\r\n.\nthird\r.\r\n.\r\n",
    );
    let id = s.read_reply().queued_id();
    assert_eq!(s.cmd("NOOP").code, 250);
    assert_eq!(received_count(&node), 1);
    let body = node.stop_and_read_body(&id);
    let content = &body[body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        content,
        &b"first\r\n\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.test>\r\n\
           DATA\r\nsecond\r\n\r\nthird\r\n.\r\n"[..]
    );
    assert!(
        !body
            .windows(2)
            .enumerate()
            .any(|(i, w)| (w[1] == b'\n' && w[0] != b'\r')
                || (w[0] == b'\r' && w[1] != b'\n' && i + 1 < body.len())),
        "a bare CR or LF was stored"
    );

    // reject: refused with 550 5.5.2 after the real end; the session goes on.
    let node = Node::start("bare_newline = \"reject\"");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(b"Subject: smuggle\r\n\r\nfirst\n.\nsecond\r\n.\r\n");
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (550, "5.5.2"), "{r:?}");
    s.send(b"NOOP\n");
    let r = s.read_reply();
    assert_eq!(r.code, 500, "a bare LF ending a command: {r:?}");
    s.send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    assert_eq!(received_count(&node), 1);
    assert_eq!(rejection_reasons(&node, 1), vec!["bare_newline"]);
}

#[test]
fn limits_starttls_discards_what_was_pipelined_before_the_handshake() {
    // The certificate must exist before the node starts.
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["mx.example.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = certs.path().join("smtp.pem");
    let key_path = certs.path().join("smtp.key");
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let node = Node::start(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        pem.display().to_string(),
        key_path.display().to_string()
    ));

    let stream = TcpStream::connect(node.smtp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut plain = Smtp::from_stream(stream.try_clone().unwrap());
    assert_eq!(plain.read_reply().code, 220);
    let ehlo = plain.cmd("EHLO client.test");
    assert!(ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    // The injection: commands after STARTTLS in the same packet, in plaintext.
    plain.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n");
    let r = plain.read_reply();
    assert_eq!(r.code, 220, "{r:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("mx.example.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    // After the handshake the session starts over: the injected MAIL must not have
    // been taken, so MAIL now (before EHLO) is a bad sequence, and after EHLO the
    // transaction starts fresh with no sender.
    tls.write_all(b"EHLO client.test\r\n").unwrap();
    let ehlo = read_tls_reply(&mut tls);
    assert!(ehlo.starts_with("250-mx.example.test"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    tls.write_all(b"RCPT TO:<b@example.test>\r\n").unwrap();
    let r = read_tls_reply(&mut tls);
    assert!(
        r.starts_with("503 5.5.1"),
        "the injected MAIL was kept: {r}"
    );
    tls.write_all(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        .unwrap();
    for expected in ["250", "250", "354"] {
        let r = read_tls_reply(&mut tls);
        assert!(r.starts_with(expected), "{r}");
    }
    tls.write_all(format!("{MSG}.\r\n").as_bytes()).unwrap();
    let r = read_tls_reply(&mut tls);
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    tls.write_all(b"STARTTLS\r\n").unwrap();
    let r = read_tls_reply(&mut tls);
    assert!(r.starts_with("503"), "{r}");

    let event = &node.events("message.received")[0];
    assert_eq!(event["email"]["sender"]["address"], "a@sender.test");
    assert_eq!(event["smtp"]["protocol"], "ESMTPS");
    assert!(event["tls"]["version"]
        .as_str()
        .unwrap()
        .starts_with("TLSv1."));

    // With require_tls, no mail before STARTTLS.
    let strict = Node::start(&format!(
        "tls_cert = {:?}\ntls_key = {:?}\nrequire_tls = true",
        pem.display().to_string(),
        key_path.display().to_string()
    ));
    let mut s = Smtp::ehlo(strict.smtp);
    let r = s.cmd("MAIL FROM:<a@sender.test>");
    assert_eq!((r.code, &r.text()[..5]), (530, "5.7.0"), "{r:?}");
    assert_eq!(s.cmd("STARTTLS").code, 220);
}

fn read_tls_reply(tls: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        tls.read_exact(&mut byte).unwrap();
        out.push(byte[0]);
        if out.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&out).to_string();
            let last = text.trim_end().rsplit("\r\n").next().unwrap().to_string();
            if last.len() >= 4 && last.as_bytes()[3] == b' ' {
                return text;
            }
        }
    }
}

#[test]
fn limits_sigterm_lets_transactions_finish_and_answers_421() {
    let mut node = Node::start("shutdown_grace_secs = 10");
    let mut idle = Smtp::ehlo(node.smtp);
    let mut busy = Smtp::ehlo(node.smtp);
    assert_eq!(busy.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(busy.cmd("RCPT TO:<b@example.test>").code, 250);

    let addr = node.smtp;
    let finisher = std::thread::spawn(move || {
        // Give SIGTERM time to land, then finish the transaction.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(busy.cmd("DATA").code, 354);
        busy.send(format!("{MSG}.\r\n").as_bytes());
        let id = busy.read_reply().queued_id();
        let r = busy.cmd("MAIL FROM:<a@sender.test>");
        assert_eq!((r.code, &r.text()[..5]), (421, "4.3.2"), "{r:?}");
        id
    });
    let started = Instant::now();
    let status = {
        let term = std::thread::scope(|scope| {
            let idle_reply = scope.spawn(|| idle.read_reply());
            let status = node.terminate(Duration::from_secs(20));
            (status, idle_reply.join().unwrap())
        });
        let (status, idle_reply) = term;
        assert_eq!(
            (idle_reply.code, &idle_reply.text()[..5]),
            (421, "4.3.2"),
            "{idle_reply:?}"
        );
        status
    };
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let id = finisher.join().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    let body = node.stop_and_read_body(&id);
    assert!(body.ends_with(b"\r\n\r\nhello\r\n"));
}

#[test]
fn limits_memory_budget_gives_452_and_recovers() {
    let node = Node::start("max_message_size = 100000\nmax_buffered_bytes = 150000");
    let line = format!("{}\r\n", "m".repeat(998));
    let content = format!("Subject: budget\r\n\r\n{}", line.repeat(90));
    // A: content in flight, its end not sent yet.
    let mut a = Smtp::ehlo(node.smtp);
    assert_eq!(a.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(a.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(a.cmd("DATA").code, 354);
    a.send(content.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    // B does not fit beside it: 452, try later; its session carries on.
    let mut b = Smtp::ehlo(node.smtp);
    assert_eq!(b.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(b.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(b.cmd("DATA").code, 354);
    b.send(format!("{content}.\r\n").as_bytes());
    let r = b.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (452, "4.3.1"), "{r:?}");
    // A completes; then B's retry fits.
    a.send(b".\r\n");
    a.read_reply().queued_id();
    b.send_message("a@sender.test", &["b@example.test"], &content)
        .queued_id();
    assert_eq!(received_count(&node), 2);
    assert_eq!(rejection_reasons(&node, 1), vec!["insufficient_resources"]);
}

#[test]
fn limits_a_busy_smtp_port_stops_the_node_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:{}\"\n[smtp]\nlisten = \"{}\"\n",
            common::free_port(),
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("binding SMTP to"), "{stderr}");
    assert!(
        !stderr.contains("RaftCore"),
        "Raft was started before the check: {stderr}"
    );
}

#[test]
fn limits_mail_waits_for_room_on_the_data_disk() {
    // A floor above the free space: every MAIL gets 452 4.3.1, the session goes on.
    let full = Node::start("min_free_disk_mb = 1000000000");
    let mut s = Smtp::ehlo(full.smtp);
    for _ in 0..2 {
        let r = s.cmd("MAIL FROM:<a@sender.test>");
        assert_eq!(r.code, 452, "{r:?}");
        assert!(r.text().starts_with("4.3.1 "), "{r:?}");
        assert!(r.text().contains("insufficient system storage"), "{r:?}");
    }
    assert_eq!(s.cmd("NOOP").code, 250);
    assert_eq!(received_count(&full), 0);
    assert!(rejection_reasons(&full, 2)
        .iter()
        .all(|r| r == "insufficient_storage"));

    // A floor 1 GiB below the free space (RocksDB reserves room for its logs as the
    // node starts): mail is taken, unless its announced SIZE would take the disk
    // below the floor.
    let free = rustix::fs::statvfs(std::env::temp_dir()).unwrap();
    let free_mb = (free.f_bavail * free.f_frsize) >> 20;
    assert!(
        free_mb > 3072,
        "this test needs 3 GiB free, has {free_mb} MiB"
    );
    let node = Node::start(&format!(
        "min_free_disk_mb = {}\nmax_message_size = {big}\nmax_buffered_bytes = {big}",
        free_mb - 1024,
        big = 3_u64 << 30
    ));
    let mut s = Smtp::ehlo(node.smtp);
    let r = s.cmd(&format!("MAIL FROM:<a@sender.test> SIZE={}", 2_u64 << 30));
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text().starts_with("4.3.1 "), "{r:?}");
    let reply = s.send_message("a@sender.test", &["bob@example.test"], MSG);
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(received_count(&node), 1);
}

/// Connects to `to` from each of `sources` in turn (loopback addresses), all on one
/// runtime, and returns the connections without reading anything. Binding a source
/// address needs a socket before connect; std has no such API, so this goes through
/// tokio's TcpSocket on a small runtime.
fn connect_all_from(sources: &[String], to: SocketAddr) -> Vec<Smtp> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    sources
        .iter()
        .map(|local| {
            let stream = rt.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
                socket.connect(to).await.unwrap()
            });
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            Smtp::from_stream(stream)
        })
        .collect()
}

/// The recipients of accepted message `id`, as stored.
fn recipients_of(node: &Node, id: &str) -> serde_json::Value {
    let received = node.events("message.received");
    let event = received
        .iter()
        .find(|e| e["message_id"] == id)
        .unwrap_or_else(|| panic!("no message.received for {id} in {received:#?}"));
    event["email"]["to"]["address"].clone()
}

/// Every sample of a `/metrics` scrape: `name{labels}` → value.
fn scrape(node: &Node) -> std::collections::HashMap<String, f64> {
    let text = reqwest::blocking::get(format!("{}/metrics", node.api))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn limits_routing_through_the_local_part_is_refused_unless_trusted() {
    let node = Node::start("allow_routing_from = [\"127.0.5.0/24\"]");
    let routed = [
        "victim%foreign.test@example.test",
        "foreign.test!victim@example.test",
        "victim@foreign.test@example.test",
        "\"victim@foreign.test\"@example.test",
        "@relay.test,@other.test:victim@example.test",
    ];
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    for to in routed {
        let r = s.cmd(&format!("RCPT TO:<{to}>"));
        assert_eq!((r.code, &r.text()[..6]), (550, "5.7.1 "), "{to}: {r:?}");
        assert!(r.text().contains("routing"), "{r:?}");
    }
    // The transaction carries on with the plain recipient only.
    assert_eq!(s.cmd("RCPT TO:<bob@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(format!("{MSG}.\r\n").as_bytes());
    let id = s.read_reply().queued_id();
    assert_eq!(
        recipients_of(&node, &id),
        serde_json::json!(["bob@example.test"])
    );
    assert_refusals(&node, routed.len(), "routing_refused", routed.len());

    // From a network in allow_routing_from the same recipients are taken (a source
    // route is dropped, RFC 5321 §C); foreign domains are still relaying.
    let mut trusted = connect_from("127.0.5.1", node.smtp);
    assert_eq!(trusted.read_reply().code, 220);
    assert_eq!(trusted.cmd("EHLO trusted.test").code, 250);
    assert_eq!(trusted.cmd("MAIL FROM:<a@sender.test>").code, 250);
    for to in routed {
        let r = trusted.cmd(&format!("RCPT TO:<{to}>"));
        assert_eq!(r.code, 250, "{to}: {r:?}");
    }
    let r = trusted.cmd("RCPT TO:<victim%example.test@foreign.test>");
    assert_eq!((r.code, &r.text()[..6]), (554, "5.7.1 "), "{r:?}");
    assert_eq!(trusted.cmd("DATA").code, 354);
    trusted.send(format!("{MSG}.\r\n").as_bytes());
    let id = trusted.read_reply().queued_id();
    assert_eq!(
        recipients_of(&node, &id),
        serde_json::json!([
            "victim%foreign.test@example.test",
            "foreign.test!victim@example.test",
            "victim@foreign.test@example.test",
            "\"victim@foreign.test\"@example.test",
            "victim@example.test",
        ])
    );
}

#[test]
fn limits_lookalikes_of_local_domains_are_mapped_or_refused() {
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test> SMTPUTF8").code, 250);
    // Fullwidth letters: the same domain after UTS #46 mapping, taken in that form.
    assert_eq!(s.cmd("RCPT TO:<bob@ｅｘａｍｐｌｅ.ｔｅｓｔ>").code, 250);
    // Capitals: the domain in its mapped form, the local part as given.
    assert_eq!(s.cmd("RCPT TO:<Bob@EXAMPLE.TEST>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<Carol@Example.Test>").code, 250);
    // Characters that vanish in the mapping: a lookalike, refused.
    for lookalike in [
        "carol@exa\u{200B}mple.test",
        "dave@exam\u{00AD}ple.test",
        "erin@example\u{200D}.test",
    ] {
        let r = s.cmd(&format!("RCPT TO:<{lookalike}>"));
        assert_eq!(
            (r.code, &r.text()[..6]),
            (550, "5.7.1 "),
            "{lookalike:?}: {r:?}"
        );
        assert!(r.text().contains("invisible"), "{r:?}");
    }
    // A Cyrillic е spells another domain: not ours, relaying.
    let r = s.cmd("RCPT TO:<frank@\u{0435}xample.test>");
    assert_eq!((r.code, &r.text()[..6]), (554, "5.7.1 "), "{r:?}");
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(format!("{MSG}.\r\n").as_bytes());
    let id = s.read_reply().queued_id();
    assert_eq!(
        recipients_of(&node, &id),
        serde_json::json!(["bob@example.test", "Bob@example.test", "Carol@example.test"])
    );
    assert_refusals(&node, 4, "lookalike_domain", 3);
    // The queue holds them so, to be forwarded as they are.
    let (entry, _) = node.stop_and_read_queue(&id);
    let queued: Vec<String> = entry
        .expect("queued")
        .recipients
        .into_iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(
        queued,
        ["bob@example.test", "Bob@example.test", "Carol@example.test"]
    );
}

#[test]
fn limits_idle_connections_from_one_network_leave_room_for_others() {
    let node = Node::start("");
    // 1,000 connections that never send a command, 50 from each of 20 addresses
    // (the per-address limit), all in 127.0.0.0/24.
    let sources: Vec<String> = (2..22)
        .flat_map(|i| std::iter::repeat_n(format!("127.0.0.{i}"), 50))
        .collect();
    let mut idle = connect_all_from(&sources, node.smtp);
    let mut greeted = Vec::new();
    for (i, s) in idle.iter_mut().enumerate() {
        let r = s.read_reply();
        match r.code {
            220 => greeted.push(i),
            421 => {
                assert!(r.text().starts_with("4.7.0 "), "{r:?}");
                assert!(
                    r.text().contains("too many connections from 127.0.0.0/24"),
                    "{r:?}"
                );
            }
            _ => panic!("{r:?}"),
        }
    }
    // max_sessions_per_network (200) of them hold a session; the rest were refused.
    assert_eq!(greeted.len(), 200);
    // A client from another network speaks and is served at once.
    let started = Instant::now();
    let mut client = connect_from("127.0.1.1", node.smtp);
    assert_eq!(client.read_reply().code, 220);
    assert_eq!(client.cmd("EHLO client.test").code, 250);
    client
        .send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    assert!(started.elapsed() < Duration::from_secs(5));
    // The idle sessions that were let in are unharmed.
    let first = &mut idle[greeted[0]];
    assert_eq!(first.cmd("EHLO idle.test").code, 250);
    assert_eq!(first.cmd("NOOP").code, 250);
    assert!(rejection_reasons(&node, 800).contains(&"too_many_sessions_from_network".to_string()));
}

#[test]
fn limits_a_full_table_sheds_the_longest_idle_session() {
    let node = Node::start("max_sessions = 1001\nshed_idle_after_secs = 1");
    // The oldest session is in a transaction: it is never shed.
    let mut busy = Smtp::ehlo(node.smtp);
    assert_eq!(busy.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(busy.cmd("RCPT TO:<b@example.test>").code, 250);
    // 1,000 idle connections, 50 from each of 20 addresses in 20 networks, fill
    // the table.
    let sources: Vec<String> = (10..30)
        .flat_map(|n| std::iter::repeat_n(format!("127.0.{n}.2"), 50))
        .collect();
    let mut idle = connect_all_from(&sources, node.smtp);
    for s in idle.iter_mut() {
        let r = s.read_reply();
        assert_eq!(r.code, 220, "{r:?}");
    }
    let m = scrape(&node);
    assert_eq!(m["bulwark_smtp_sessions_open"], 1001.0);
    // Full: commands get the stress timeout (10 s) instead of 300 s.
    assert_eq!(m["bulwark_smtp_command_timeout_seconds"], 10.0);
    // The idle sessions must have waited shed_idle_after_secs to be shed.
    std::thread::sleep(Duration::from_millis(1100));

    // A client that speaks gets a place at once and sends its message.
    let started = Instant::now();
    let mut client = connect_from("127.0.100.1", node.smtp);
    let r = client.read_reply();
    assert_eq!(r.code, 220, "{r:?}");
    assert_eq!(client.cmd("EHLO client.test").code, 250);
    client
        .send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    assert!(started.elapsed() < Duration::from_secs(5));
    // The longest idle session made room: 421 4.7.0, closed.
    let r = idle[0].read_reply();
    assert_eq!((r.code, &r.text()[..6]), (421, "4.7.0 "), "{r:?}");
    assert!(r.text().contains("idle"), "{r:?}");
    assert!(idle[0].is_closed());
    // The others and the transaction carry on.
    assert_eq!(idle[1].cmd("NOOP").code, 250);
    assert_eq!(busy.cmd("DATA").code, 354);
    busy.send(format!("{MSG}.\r\n").as_bytes());
    busy.read_reply().queued_id();
    assert_eq!(scrape(&node)["bulwark_smtp_sessions_shed_total"], 1.0);
    assert!(rejection_reasons(&node, 1).contains(&"idle_session_shed".to_string()));
}

#[test]
fn limits_a_newcomer_over_its_own_limit_sheds_no_one() {
    let node = Node::start("max_sessions = 4\nmax_sessions_per_ip = 2\nshed_idle_after_secs = 1");
    // Two idle sessions from each of two addresses fill the table.
    let sources: Vec<String> = ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
        .map(String::from)
        .to_vec();
    let mut idle = connect_all_from(&sources, node.smtp);
    for s in idle.iter_mut() {
        let r = s.read_reply();
        assert_eq!(r.code, 220, "{r:?}");
    }
    // Every one of them has idled long enough to be shed.
    std::thread::sleep(Duration::from_millis(1100));

    // A third connection from 127.0.0.2 is over its address's limit: refused, and
    // no one made room for it.
    let mut over = connect_from("127.0.0.2", node.smtp);
    let r = over.read_reply();
    assert_eq!((r.code, &r.text()[..6]), (421, "4.7.0 "), "{r:?}");
    assert!(
        r.text().contains("too many connections from 127.0.0.2"),
        "{r:?}"
    );
    assert!(over.is_closed());
    let m = scrape(&node);
    assert_eq!(m["bulwark_smtp_sessions_shed_total"], 0.0);
    assert_eq!(m["bulwark_smtp_sessions_open"], 4.0);
    for s in idle.iter_mut() {
        let r = s.cmd("NOOP");
        assert_eq!(r.code, 250, "an idle session was shed: {r:?}");
    }
    assert_refusals(&node, 1, "too_many_sessions_from_ip", 1);

    // A newcomer within its limits still gets the longest-idle session's place.
    std::thread::sleep(Duration::from_millis(1100));
    let mut within = connect_from("127.0.0.4", node.smtp);
    assert_eq!(within.read_reply().code, 220);
    assert_eq!(within.cmd("EHLO within.test").code, 250);
    assert_eq!(scrape(&node)["bulwark_smtp_sessions_shed_total"], 1.0);
    let r = idle[0].read_reply();
    assert_eq!((r.code, &r.text()[..6]), (421, "4.7.0 "), "{r:?}");
    assert!(r.text().contains("idle"), "{r:?}");
}

#[test]
fn limits_first_command_and_stress_timeouts_are_short() {
    let node =
        Node::start("max_sessions = 10\nfirst_command_timeout_secs = 1\nstress_timeout_secs = 2");
    // Silent after the greeting: closed after first_command_timeout_secs, not 300 s.
    let started = Instant::now();
    let mut silent = Smtp::connect(node.smtp);
    let r = silent.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(silent.is_closed());
    // Once it spoke, a client has the full command timeout while the table is empty.
    let mut talker = Smtp::ehlo(node.smtp);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(talker.cmd("NOOP").code, 250);
    assert_eq!(scrape(&node)["bulwark_smtp_command_timeout_seconds"], 300.0);
    // With nine of ten places taken, a command gets stress_timeout_secs.
    let mut others: Vec<Smtp> = (0..8).map(|_| Smtp::ehlo(node.smtp)).collect();
    assert_eq!(talker.cmd("NOOP").code, 250);
    let started = Instant::now();
    assert_eq!(scrape(&node)["bulwark_smtp_command_timeout_seconds"], 2.0);
    let r = talker.read_reply();
    assert_eq!((r.code, &r.text()[..5]), (421, "4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // As the table empties, the full timeout comes back, and mail flows.
    drop(talker);
    others.truncate(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(&node)["bulwark_smtp_command_timeout_seconds"] != 300.0 {
        assert!(Instant::now() < deadline, "the timeout never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    others[0]
        .send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
}

#[test]
fn limits_bdat_over_the_size_limit_is_refused_as_soon_as_declared() {
    let node = Node::start("max_message_size = 2000");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    // The refusal comes before the chunk is sent.
    let r = s.cmd("BDAT 5000000");
    assert_eq!((r.code, &r.text()[..6]), (552, "5.3.4 "), "{r:?}");
    // The chunk still follows the command: it is read and dropped, in step.
    s.send(&vec![b'x'; 5_000_000]);
    assert_eq!(s.cmd("NOOP").code, 250);
    // The transaction is over.
    s.send(b"BDAT 5 LAST\r\nhello");
    assert_eq!(s.read_reply().code, 503);

    // Cumulative: the chunk that takes the total over the limit is refused at once.
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    s.send(format!("BDAT 1500\r\n{}", "y".repeat(1500)).as_bytes());
    assert_eq!(s.read_reply().code, 250);
    let r = s.cmd("BDAT 600");
    assert_eq!((r.code, &r.text()[..6]), (552, "5.3.4 "), "{r:?}");
    s.send("z".repeat(600).as_bytes());
    assert_eq!(s.cmd("NOOP").code, 250);

    // The session still takes mail, in chunks within the limit.
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    s.send(format!("BDAT {} LAST\r\n{MSG}", MSG.len()).as_bytes());
    s.read_reply().queued_id();
    assert_eq!(received_count(&node), 1);
    let reasons = rejection_reasons(&node, 2);
    assert_eq!(reasons, vec!["message_too_big", "message_too_big"]);
}

#[test]
fn limits_nul_bytes_are_refused_or_stripped() {
    let with_nul = "Subject: nul\r\n\r\nhello\0world\r\n";
    // Default: refused with 554 5.6.0, in DATA and in BDAT; the session goes on.
    let node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(format!("{with_nul}.\r\n").as_bytes());
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..6]), (554, "5.6.0 "), "{r:?}");
    assert!(r.text().contains("NUL"), "{r:?}");
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(s.cmd("RCPT TO:<b@example.test>").code, 250);
    s.send(format!("BDAT {} LAST\r\n{with_nul}", with_nul.len()).as_bytes());
    let r = s.read_reply();
    assert_eq!((r.code, &r.text()[..6]), (554, "5.6.0 "), "{r:?}");
    s.send_message("a@sender.test", &["b@example.test"], MSG)
        .queued_id();
    assert_eq!(received_count(&node), 1);
    assert_eq!(rejection_reasons(&node, 2), vec!["nul_bytes", "nul_bytes"]);

    // strip: taken, stored without them.
    let mut node = Node::start("nul_bytes = \"strip\"");
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message("a@sender.test", &["b@example.test"], with_nul)
        .queued_id();
    let body = node.stop_and_read_body(&id);
    assert!(!body.contains(&0), "a NUL was stored");
    assert!(body.ends_with(b"\r\n\r\nhelloworld\r\n"));
}

/// A client that keeps exactly `max_sessions_per_ip` sessions open, each quitting and
/// reconnecting the moment it hears `221`, is never refused: a session gives its
/// place back before its last reply goes out.
#[test]
fn a_client_reconnecting_at_exactly_the_per_address_limit_is_never_refused() {
    const SESSIONS: usize = 50;
    const ROUNDS: usize = 40;
    let node = Node::start(&format!("max_sessions_per_ip = {SESSIONS}"));
    let addr = node.smtp;
    let refused: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..SESSIONS)
            .map(|_| {
                scope.spawn(move || {
                    let mut refused = Vec::new();
                    let mut smtp = Smtp::connect(addr);
                    for _ in 0..ROUNDS {
                        assert_eq!(smtp.cmd("EHLO client.test").code, 250);
                        smtp.send_message("a@sender.test", &["b@example.test"], MSG)
                            .queued_id();
                        let bye = smtp.cmd("QUIT");
                        assert_eq!(bye.code, 221, "{bye:?}");
                        smtp = Smtp::connect_raw(addr);
                        let greeting = smtp.read_reply();
                        if greeting.code != 220 {
                            refused.push(greeting.text());
                            std::thread::sleep(Duration::from_millis(200));
                            smtp = Smtp::connect(addr);
                        }
                    }
                    assert_eq!(smtp.cmd("QUIT").code, 221);
                    refused
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client thread"))
            .collect()
    });
    assert!(
        refused.is_empty(),
        "{} of {} reconnections refused at the limit: {:?}",
        refused.len(),
        SESSIONS * ROUNDS,
        &refused[..refused.len().min(3)]
    );
}

/// Sends `n` messages in one session as fast as the node answers; returns how long
/// each MAIL took to be answered, and the whole run.
fn mail_waits(node: &Node, n: usize) -> (Vec<Duration>, Duration) {
    let mut smtp = Smtp::ehlo(node.smtp);
    let run = Instant::now();
    let waits = (0..n)
        .map(|i| {
            let asked = Instant::now();
            let r = smtp.cmd("MAIL FROM:<a@sender.test>");
            let waited = asked.elapsed();
            assert_eq!(r.code, 250, "message {i}: {r:?}");
            assert_eq!(smtp.cmd("RCPT TO:<b@example.test>").code, 250);
            assert_eq!(smtp.cmd("DATA").code, 354);
            smtp.send(format!("Subject: {i}\r\n\r\nhello\r\n.\r\n").as_bytes());
            let r = smtp.read_reply();
            assert_eq!(r.code, 250, "message {i}: {r:?}");
            waited
        })
        .collect();
    (waits, run.elapsed())
}

/// [`mail_waits`] from `senders` sessions at once; every MAIL's wait, and the whole run.
fn mail_waits_from(node: &Node, senders: usize, each: usize) -> (Vec<Duration>, Duration) {
    let run = Instant::now();
    let waits = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..senders)
            .map(|_| scope.spawn(|| mail_waits(node, each).0))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("sender thread"))
            .collect()
    });
    (waits, run.elapsed())
}

/// Flow control (`in_flow_delay_ms`, Postfix's in_flow_delay): three senders at once,
/// a next hop that takes 700 ms a message and one delivery slot, so delivery stays
/// behind. MAIL then waits until the node starts one more delivery: each start lets
/// one waiting sender go, so no MAIL waits the whole 5 s delay, and the senders are
/// paced to the rate mail leaves. Nothing is refused, and every message reaches the
/// next hop. With 0 nothing waits.
#[test]
fn limits_mail_waits_while_delivery_is_behind_and_nothing_is_refused() {
    use bulwark_cluster_tests::sink::{Sink, SinkConfig};
    const SENDERS: usize = 3;
    const EACH: usize = 4;
    const MESSAGES: usize = SENDERS * EACH;
    let waited_long = Duration::from_millis(300);
    let sink = Sink::start(SinkConfig {
        data_delay: Duration::from_millis(700),
        ..SinkConfig::default()
    });
    let delivery = format!(
        "[delivery]\nrelay = \"{}\"\npoll_ms = 100\nconcurrency = 1\n",
        sink.addr()
    );
    let paced = Node::start_with("in_flow_delay_ms = 5000", &delivery);
    paced.wait_feature_level();
    // Delivery behind before the senders begin: the one slot busy with a first
    // message, a second one due, and the worker's next poll has seen both.
    mail_waits(&paced, 2);
    std::thread::sleep(Duration::from_millis(300));
    let (waits, run) = mail_waits_from(&paced, SENDERS, EACH);
    let waited = waits.iter().filter(|w| **w >= waited_long).count();
    assert!(
        waited >= 4 && run >= Duration::from_secs(3),
        "MAIL waited for delivery {waited} times in {run:?}: {waits:?}"
    );
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(4500)),
        "each delivery started lets a sender go, so none waits the whole delay: {waits:?}"
    );
    assert_eq!(
        sink.wait_for(MESSAGES + 2, Duration::from_secs(60)).len(),
        MESSAGES + 2
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", paced.api))
        .unwrap()
        .text()
        .unwrap();
    let delayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bulwark_smtp_in_flow_delayed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no in-flow counter: {metrics}"));
    assert!(delayed >= waited as u64, "{delayed} counted, {waited} seen");
    // A message accepted while delivery kept up took its lease in the operation that
    // queued it; one accepted while behind was queued without, claimed later.
    let accepted_in: std::collections::HashMap<String, u64> = paced
        .events("message.received")
        .iter()
        .map(|e| {
            (
                e["message_id"].to_string(),
                e["raft_index"].as_u64().unwrap(),
            )
        })
        .collect();
    let first_lease_in: std::collections::HashMap<String, u64> = paced
        .events("delivery.leased")
        .iter()
        .rev()
        .map(|e| {
            (
                e["message_id"].to_string(),
                e["raft_index"].as_u64().unwrap(),
            )
        })
        .collect();
    let with_acceptance = accepted_in
        .iter()
        .filter(|(id, index)| first_lease_in.get(*id) == Some(index))
        .count();
    assert!(
        (1..=MESSAGES + 2 - 4).contains(&with_acceptance),
        "{with_acceptance} of {} leased with their acceptance",
        MESSAGES + 2
    );
    drop(paced);

    let unpaced = Node::start_with("in_flow_delay_ms = 0", &delivery);
    let (waits, _) = mail_waits_from(&unpaced, SENDERS, EACH);
    assert!(
        waits.iter().all(|w| *w < waited_long),
        "in_flow_delay_ms = 0 never waits: {waits:?}"
    );
    assert_eq!(
        sink.wait_for(2 * MESSAGES + 1, Duration::from_secs(60))
            .len(),
        2 * MESSAGES + 1
    );
}

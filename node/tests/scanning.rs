//! The scanning pipeline seen from outside: real SMTP sessions to a real node, a
//! next-hop sink and a DNS server on loopback. Each test shows the reply the client
//! got, the `scan.verdict` event recorded, and what reached (or did not reach) the
//! next hop.

mod common;

use std::time::{Duration, Instant};

use bulwark_cluster_tests::dns::{DnsServer, Fault, Record, Zone};
use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use common::{Node, Smtp};
use serde_json::Value;

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// `[delivery]` to `sink`, polled fast, and `extra` sections after it.
fn relay_to(sink: &Sink, extra: &str) -> String {
    format!(
        "[delivery]\nrelay = \"{}\"\npoll_ms = 100\n\n{extra}",
        sink.addr()
    )
}

fn plain(subject: &str, text: &str) -> String {
    format!(
        "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{}@sender.test>\r\n\r\n{text}\r\n",
        rand_id()
    )
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Sends one message and returns the final reply.
fn send(node: &Node, from: &str, body: &str) -> common::Reply {
    let mut s = Smtp::ehlo(node.smtp);
    let r = s.cmd(&format!("MAIL FROM:<{from}>"));
    assert_eq!(r.code, 250, "{r:?}");
    let r = s.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(r.code, 250, "{r:?}");
    let r = s.cmd("DATA");
    assert_eq!(r.code, 354, "{r:?}");
    s.send(body.as_bytes());
    s.send(b".\r\n");
    s.read_reply()
}

/// The `scan.verdict` event of message `id` (waiting for it a little).
fn verdict(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = node
            .events("scan.verdict")
            .into_iter()
            .find(|e| e["message_id"] == id);
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no scan.verdict for {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn symbols(verdict: &Value) -> Vec<String> {
    verdict["scan"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// The first symbol of `verdict` whose `field` is `value`.
fn symbol_where(verdict: &Value, field: &str, value: &str) -> Value {
    verdict["scan"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[field] == value)
        .cloned()
        .unwrap_or_else(|| panic!("no symbol with {field} = {value}: {verdict:#}"))
}

/// The names of the engines that ran for `verdict`.
fn engine_names(verdict: &Value) -> Vec<String> {
    verdict["scan"]["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// The id in a `554 5.7.1 Message rejected: ... (id ID)` reply.
fn rejected_id(reply: &common::Reply) -> String {
    let text = reply.text();
    let start = text.rfind("(id ").expect("an id in the reply") + 4;
    text[start..start + 26].to_string()
}

#[test]
fn scanning_gtube_is_rejected_at_end_of_data_and_the_session_carries_on() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &relay_to(&sink, ""));
    let mut s = Smtp::ehlo(node.smtp);
    let reply = s.send_message(
        "alice@sender.test",
        &["bob@example.test"],
        &plain("hi", GTUBE),
    );
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(reply.text().contains("5.7.1"), "{reply:?}");
    let id = rejected_id(&reply);
    let v = verdict(&node, &id);
    assert_eq!(v["action"], "reject", "{v:#}");
    assert!(symbols(&v).contains(&"GTUBE".to_string()), "{v:#}");
    assert!(v["scan"]["score"].as_f64().unwrap() >= 1000.0, "{v:#}");
    assert_eq!(v["scan"]["thresholds"]["reject"], 20.0);
    let engines = engine_names(&v);
    for engine in ["malware", "attachments", "spam", "phishing", "auth"] {
        assert!(engines.contains(&engine.to_string()), "{engine}: {v:#}");
    }
    let rejected = node.wait_events("message.rejected", 1);
    assert_eq!(rejected[0]["event"]["reason"], "policy", "{rejected:#?}");
    assert_eq!(
        rejected[0]["smtp"]["reply"],
        format!("554 {}", reply.text().trim_end())
    );
    assert!(node
        .message_events(&id)
        .iter()
        .all(|e| e["type"] != "message.received"));

    // The same session goes on; a clean message is accepted and delivered.
    let ok = s.send_message(
        "alice@sender.test",
        &["bob@example.test"],
        &plain("hello", "see you"),
    );
    let ok_id = ok.queued_id();
    let got = sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("X-Bulwark-Id").as_deref(),
        Some(ok_id.as_str())
    );
    assert_eq!(
        got[0].header("X-Bulwark-Action").as_deref(),
        Some("deliver")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.received().len(),
        1,
        "the rejected message was never delivered"
    );
}

#[test]
fn scanning_malware_is_rejected_whatever_its_name() {
    let node = Node::start("");
    let attachment = "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=";
    let body = format!(
        "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: invoice\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nplease pay\r\n\
         --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"
    );
    assert!(
        EICAR.len() == 68,
        "the base64 above is the 68-byte EICAR test file"
    );
    let reply = send(&node, "alice@sender.test", &body);
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(
        reply.text().contains("malware Eicar-Test-Signature"),
        "{reply:?}"
    );
    let v = verdict(&node, &rejected_id(&reply));
    let findings = v["scan"]["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "malware" && f["name"] == "Eicar-Test-Signature"),
        "{v:#}"
    );
}

/// EICAR as an attachment, encoded as `encoding` with `body`, in a multipart whose
/// final boundary line is `close`.
fn eicar_wrapped(encoding: &str, body: &str, close: &str) -> String {
    format!(
        "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: invoice\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nplease pay\r\n\
         --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
         {encoding}\r\n{body}\r\n{close}"
    )
}

#[test]
fn scanning_malware_is_rejected_however_its_encoding_is_damaged() {
    let node = Node::start("");
    let encoded = "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=";
    let (head, tail) = encoded.split_at(40);
    let base64 = "Content-Transfer-Encoding: base64\r\n";
    let qp = "Content-Transfer-Encoding: quoted-printable\r\n";
    let lower_escaped: String = EICAR.bytes().map(|b| format!("={b:02x}")).collect();
    let (qp_head, qp_tail) = EICAR.split_at(30);
    let close = "--b--\r\n";
    let variants = [
        (
            "a stray `!` first",
            eicar_wrapped(base64, &format!("!{encoded}"), close),
        ),
        (
            "a stray `*` within",
            eicar_wrapped(base64, &format!("{head}*{tail}"), close),
        ),
        (
            "a stray `%` within",
            eicar_wrapped(base64, &format!("{head}%{tail}"), close),
        ),
        (
            "a control character",
            eicar_wrapped(base64, &format!("{head}\u{1}{tail}"), close),
        ),
        (
            "a leading `.`",
            eicar_wrapped(base64, &format!(".{encoded}"), close),
        ),
        (
            "junk after the padding",
            eicar_wrapped(base64, &format!("{encoded}\r\n!!junk"), close),
        ),
        (
            "base64 after the padding",
            eicar_wrapped(base64, &format!("{encoded}QUJD"), close),
        ),
        (
            "no padding",
            eicar_wrapped(base64, encoded.trim_end_matches('='), close),
        ),
        (
            "lines of odd lengths",
            eicar_wrapped(base64, &format!("{head}\r\n{tail}"), close),
        ),
        (
            "no final boundary",
            eicar_wrapped(base64, &format!("!{encoded}"), ""),
        ),
        (
            "a second, conflicting transfer encoding",
            eicar_wrapped(
                &format!("Content-Transfer-Encoding: 7bit\r\n{base64}"),
                &format!("!{encoded}"),
                close,
            ),
        ),
        (
            "a final boundary with trailing characters",
            eicar_wrapped(base64, &format!("*{encoded}"), "--b--junk\r\n"),
        ),
        (
            "two transfer encodings, the second base64 after quoted-printable",
            eicar_wrapped(
                &format!("Content-Transfer-Encoding: quoted-printable\r\n{base64}"),
                encoded,
                close,
            ),
        ),
        (
            "two transfer encodings, the second base64 after 8bit",
            eicar_wrapped(
                &format!("Content-Transfer-Encoding: 8bit\r\n{base64}"),
                encoded,
                close,
            ),
        ),
        (
            "quoted-printable, every character escaped in lower case",
            eicar_wrapped(qp, &lower_escaped, close),
        ),
        (
            "quoted-printable, soft line breaks with blanks after the `=`",
            eicar_wrapped(qp, &format!("{qp_head}= \t\r\n{qp_tail}=  \r\n"), close),
        ),
        (
            "quoted-printable, a lone `=` at the end",
            eicar_wrapped(qp, &format!("{EICAR}="), close),
        ),
        (
            "quoted-printable, escapes of what needs none and an escaped line ending",
            eicar_wrapped(
                qp,
                &format!("=58=35=4F{}{qp_tail}=0D=0A", &qp_head[3..]),
                close,
            ),
        ),
        (
            "uuencode",
            eicar_wrapped(
                "Content-Transfer-Encoding: x-uuencode\r\n",
                "begin 644 invoice.pdf\r\n\
                 M6#5/(5`E0$%06S1<4%I8-30H4%XI-T-#*3=])$5)0T%2+5-404Y$05)$+4%.\r\n\
                 75$E625)54RU415-4+49)3$4A)$@K2\"H`\r\n`\r\nend",
                close,
            ),
        ),
    ];
    // mail-parser 0.11.9 panics on an attached message holding an attached message
    // as the last part: the scan must not end with it.
    let nested = format!(
        "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: fwd\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\
         Content-Type: message/rfc822\r\n\r\nSubject: innermost\r\n\
         Content-Type: application/pdf; name=\"invoice.pdf\"\r\n{base64}\r\n{encoded}\r\n--b--\r\n"
    );
    // A file written into a plain text body, as old mailers and news clients do and
    // mail clients still show as an attachment: uuencoded, and in yEnc.
    let plain = |body: &str| {
        format!(
            "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: the file\r\n\r\n\
             Here it is:\r\n\r\n{body}\r\n\r\nBye.\r\n"
        )
    };
    let inline = [(
        "uuencoded in a plain text body",
        plain(
            "begin 644 invoice.pdf\r\n\
                 M6#5/(5`E0$%06S1<4%I8-30H4%XI-T-#*3=])$5)0T%2+5-404Y$05)$+4%.\r\n\
                 75$E625)54RU415-4+49)3$4A)$@K2\"H`\r\n`\r\nend",
        ),
    )];
    let variants: Vec<(&str, String)> = variants
        .into_iter()
        .chain(inline)
        .chain([("nested attached messages", nested)])
        .collect();
    let mut s = Smtp::ehlo(node.smtp);
    for (what, body) in &variants {
        let reply = s.send_message("alice@sender.test", &["bob@example.test"], body);
        assert_eq!(reply.code, 554, "{what}: {reply:?}");
        assert!(
            reply.text().contains("malware Eicar-Test-Signature"),
            "{what}: {reply:?}"
        );
        let v = verdict(&node, &rejected_id(&reply));
        assert!(
            v["scan"]["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "malware" && f["name"] == "Eicar-Test-Signature"),
            "{what}: {v:#}"
        );
    }
    // yEnc is 8-bit: its bytes go as they are, not as a Rust string.
    let mut yenc = plain("=ybegin line=128 size=68 name=invoice.pdf\r\n").into_bytes();
    let cut = yenc.len() - "\r\n\r\nBye.\r\n".len();
    let tail = yenc.split_off(cut);
    for e in EICAR.bytes().map(|b| b.wrapping_add(42)) {
        if matches!(e, 0 | b'\n' | b'\r' | b'=' | b'.') {
            yenc.extend_from_slice(&[b'=', e.wrapping_add(64)]);
        } else {
            yenc.push(e);
        }
    }
    yenc.extend_from_slice(b"\r\n=yend size=68");
    yenc.extend_from_slice(&tail);
    yenc.extend_from_slice(b".\r\n");
    assert_eq!(
        s.cmd("MAIL FROM:<alice@sender.test> BODY=8BITMIME").code,
        250
    );
    assert_eq!(s.cmd("RCPT TO:<bob@example.test>").code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    s.send(&yenc);
    let reply = s.read_reply();
    assert_eq!(reply.code, 554, "yEnc in a plain text body: {reply:?}");
    assert!(
        reply.text().contains("malware Eicar-Test-Signature"),
        "{reply:?}"
    );
    // The session goes on: the same message without the malware is accepted.
    let clean = eicar_wrapped(base64, "aGVsbG8=", close);
    let reply = s.send_message("alice@sender.test", &["bob@example.test"], &clean);
    assert_eq!(reply.code, 250, "{reply:?}");
}

#[test]
fn scanning_a_blocked_name_is_seen_however_rfc_2231_spells_it() {
    let node = Node::start("");
    let variants = [
        (
            "filename continuations",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename*0=\"set\"; filename*1=\"up.exe\"",
        ),
        (
            "filename continuations, the first one encoded",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename*0*=utf-8''se%74; filename*1=\"up.exe\"",
        ),
        (
            "name continuations, out of order",
            "Content-Type: application/octet-stream; name*1=\".exe\"; name*0=\"setup\"",
        ),
        (
            "an encoded filename",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename*=utf-8''setup%2Eexe",
        ),
        (
            "an encoded name in another charset",
            "Content-Type: application/octet-stream; name*=iso-8859-1'en'r%E9sum%E9.exe",
        ),
        (
            "an encoded filename after a plain one that clients preferring RFC 2231 ignore",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"invoice.pdf\"; filename*=utf-8''setup.exe",
        ),
    ];
    let mut s = Smtp::ehlo(node.smtp);
    for (what, headers) in variants {
        let body = format!(
            "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: tool\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nrun this\r\n\
             --b\r\n{headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             cnVuIG1lIQ==\r\n--b--\r\n"
        );
        let reply = s.send_message("alice@sender.test", &["bob@example.test"], &body);
        let id = reply.queued_id();
        let q = node
            .wait_message_event(&id, "message.quarantined", 1, Duration::from_secs(10))
            .remove(0);
        let reason = q["event"]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("blocked content extension:exe"),
            "{what}: {q:#}"
        );
    }
}

#[test]
fn scanning_tags_quarantines_and_rewrites_what_the_policy_says() {
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    std::fs::write(
        &rules,
        "body LOCAL_CHEAP_PILLS /cheap pills/i\nscore LOCAL_CHEAP_PILLS 6.0\n\
         describe LOCAL_CHEAP_PILLS Talks about cheap pills\n",
    )
    .unwrap();
    let extra = format!(
        "[scan]\nrules = [\"{}\"]\n\n[policy]\nsubject_prefix = \"[SPAM]\"\n",
        rules.display()
    );
    let node = Node::start_with("", &relay_to(&sink, &extra));

    // Tagged: delivered with the prefix, our headers and the forged results gone.
    let forged = format!(
        "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=ceo@example.test\r\n\
         Authentication-Results: elsewhere.test; spf=pass\r\n{}",
        plain("offer", "Cheap pills, today only")
    );
    let tagged = send(&node, "alice@sender.test", &forged).queued_id();
    let got = sink.wait_for(1, Duration::from_secs(15));
    let d = &got[0];
    assert_eq!(d.header("X-Bulwark-Id").as_deref(), Some(tagged.as_str()));
    assert_eq!(d.header("X-Bulwark-Action").as_deref(), Some("tag"));
    let score: f64 = d.header("X-Bulwark-Score").unwrap().parse().unwrap();
    assert!((6.0..10.0).contains(&score), "{score}");
    assert_eq!(d.header("Subject").as_deref(), Some("[SPAM] offer"));
    let data = String::from_utf8_lossy(&d.data);
    assert_eq!(
        data.matches("Authentication-Results: mx.example.test;")
            .count(),
        1,
        "only our own results remain: {data}"
    );
    assert!(!data.contains("smtp.mailfrom=ceo@example.test"), "{data}");
    assert!(data.contains("Authentication-Results: elsewhere.test; spf=pass"));
    let v = verdict(&node, &tagged);
    assert_eq!(v["action"], "tag");
    let hit = symbol_where(&v, "name", "LOCAL_CHEAP_PILLS");
    assert_eq!(hit["score"], 6.0);
    assert_eq!(hit["description"], "Talks about cheap pills");

    // Quarantined: a blocked attachment is accepted (the sender is not told) and
    // kept, never delivered.
    let exe = "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: tool\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nrun this\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";
    let reply = send(&node, "alice@sender.test", exe);
    assert_eq!(reply.code, 250, "{reply:?}");
    let held = reply.queued_id();
    let q = node
        .wait_message_event(&held, "message.quarantined", 1, Duration::from_secs(10))
        .remove(0);
    assert!(
        q["event"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("blocked content"),
        "{q:#}"
    );
    assert_eq!(verdict(&node, &held)["action"], "quarantine");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        sink.received()
            .iter()
            .all(|d| d.header("X-Bulwark-Id").as_deref() != Some(held.as_str())),
        "a quarantined message reached the next hop"
    );
    assert!(node
        .message_events(&held)
        .iter()
        .all(|e| !e["type"].as_str().unwrap().starts_with("delivery.")));
}

#[test]
fn scanning_symbols_that_add_up_to_the_tag_score_reach_it() {
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    // Fifty symbols of 0.1: 5 in decimal, 4.999999999999998 added up in binary
    // floating point, whatever their order.
    let mut cf = String::new();
    for n in 0..50 {
        cf.push_str(&format!(
            "body LOCAL_CARROT_{n:02} /carrots/i\nscore LOCAL_CARROT_{n:02} 0.1\n"
        ));
    }
    std::fs::write(&rules, cf).unwrap();
    let extra = format!(
        "[scan]\nrules = [\"{}\"]\n\n[policy]\ntag_score = 5.0\n",
        rules.display()
    );
    let node = Node::start_with("", &relay_to(&sink, &extra));

    // Dated now, so that no date rule scores.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap();
    let message = |text: &str| {
        format!(
            "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: lunch\r\n\
             Date: {now}\r\nMessage-ID: <{}@sender.test>\r\n\r\n{text}\r\n",
            rand_id()
        )
    };

    // Without the word, no symbol scores: the fifty alone make the score below.
    let control = send(&node, "alice@sender.test", &message("Beans today")).queued_id();
    let v = verdict(&node, &control);
    assert_eq!(v["scan"]["score"].as_f64(), Some(0.0), "{v:#}");
    assert_eq!(v["action"], "deliver");

    let id = send(&node, "alice@sender.test", &message("Carrots today")).queued_id();
    let v = verdict(&node, &id);
    let carrots = v["scan"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("LOCAL_CARROT_"))
        .count();
    assert_eq!(carrots, 50, "{v:#}");
    assert_eq!(v["scan"]["score"].as_f64(), Some(5.0), "{v:#}");
    assert_eq!(v["action"], "tag", "{v:#}");
    let got = sink.wait_for(2, Duration::from_secs(15));
    let tagged = got
        .iter()
        .find(|d| d.header("X-Bulwark-Id").as_deref() == Some(id.as_str()))
        .expect("the tagged message at the next hop");
    assert_eq!(tagged.header("X-Bulwark-Action").as_deref(), Some("tag"));
    assert_eq!(tagged.header("X-Bulwark-Score").as_deref(), Some("5.0"));
}

#[test]
fn scanning_allow_and_block_lists_decide_before_scores() {
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[policy]\nallow = [\"partner.test\"]\nblock = [\"spammer.test\"]\n",
            common::held_delivery()
        ),
    );
    let reply = send(&node, "news@partner.test", &plain("hi", GTUBE));
    assert_eq!(reply.code, 250, "{reply:?}");
    let v = verdict(&node, &reply.queued_id());
    assert_eq!(v["action"], "deliver");
    assert_eq!(v["event"]["reason"], "allow-listed: partner.test");
    assert!(
        symbols(&v).contains(&"GTUBE".to_string()),
        "still recorded: {v:#}"
    );

    let reply = send(&node, "x@spammer.test", &plain("hello", "nothing wrong"));
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(
        reply.text().contains("block-listed: spammer.test"),
        "{reply:?}"
    );
}

#[test]
fn scanning_authenticates_with_spf_and_dmarc_and_enforces_p_reject() {
    let mut zone = Zone::new();
    zone.txt("good.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("_dmarc.good.test", "v=DMARC1; p=reject")
        .txt("forged.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.forged.test", "v=DMARC1; p=reject");
    let dns = DnsServer::start(zone).unwrap();
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with(
        "",
        &relay_to(
            &sink,
            &format!(
                "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n",
                dns.addr()
            ),
        ),
    );
    let message = |domain: &str| {
        format!(
            "From: a@{domain}\r\nTo: bob@example.test\r\nSubject: hi\r\n\
             Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{}@{domain}>\r\n\r\nhello\r\n",
            rand_id()
        )
    };
    let good = send(&node, "a@good.test", &message("good.test")).queued_id();
    let got = sink.wait_for(1, Duration::from_secs(15));
    let results = got[0].header("Authentication-Results").unwrap();
    assert!(results.starts_with("mx.example.test;"), "{results}");
    assert!(
        results.contains("spf=pass smtp.mailfrom=a@good.test"),
        "{results}"
    );
    assert!(results.contains("dmarc=pass"), "{results}");
    let v = verdict(&node, &good);
    let auth = v["scan"]["authentication"].as_array().unwrap();
    assert!(
        auth.iter()
            .any(|a| a["method"] == "dmarc" && a["result"] == "pass"),
        "{v:#}"
    );

    let reply = send(&node, "a@forged.test", &message("forged.test"));
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(reply.text().contains("DMARC"), "{reply:?}");
    let v = verdict(&node, &rejected_id(&reply));
    assert!(symbols(&v).contains(&"SPF_FAIL".to_string()), "{v:#}");
    assert!(
        symbols(&v).contains(&"DMARC_FAIL_REJECT".to_string()),
        "{v:#}"
    );
    assert!(dns.query_count() > 0);
}

#[test]
fn behind_a_trusted_relay_spf_judges_the_host_it_received_the_message_from() {
    let mut zone = Zone::new();
    zone.txt("remote.test", "v=spf1 ip4:192.0.2.10 -all");
    let dns = DnsServer::start(zone).unwrap();
    let sink = Sink::start(SinkConfig::default());
    // The test's client (127.0.0.1) is our relay.
    let node = Node::start_with(
        "",
        &relay_to(
            &sink,
            &format!(
                "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n\n\
                 [scan]\ntrusted_relays = [\"127.0.0.0/8\", \"10.9.0.1\"]\n",
                dns.addr()
            ),
        ),
    );
    let message = |received: &str| {
        format!(
            "{received}From: a@remote.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\
             Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{}@remote.test>\r\n\r\nhello\r\n",
            rand_id()
        )
    };
    // Our relay received it from the sender's host, which SPF allows.
    let relayed = send(
        &node,
        "a@remote.test",
        &message(
            "Received: from mail.remote.test (mail.remote.test [192.0.2.10])\r\n\
             \tby relay.example.test with ESMTP; Sat, 28 Nov 2026 07:00:01 +0000\r\n",
        ),
    )
    .queued_id();
    let v = verdict(&node, &relayed);
    assert!(
        symbols(&v).contains(&"RCVD_VIA_TRUSTED_RELAY".to_string()),
        "{v:#}"
    );
    let spf: Vec<&Value> = v["scan"]["authentication"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["method"] == "spf")
        .collect();
    assert!(spf.iter().any(|a| a["result"] == "pass"), "{v:#}");
    assert!(
        !symbols(&v).contains(&"MSGID_ADDED_BY_RELAY".to_string()),
        "{v:#}"
    );
    // The sender gave no Message-ID; our relay wrote one from its queue id. The
    // built-in rules score it 2.
    let queue_id = format!("{:X}", rand_id());
    let unnamed = format!(
        "Received: from mail.remote.test (mail.remote.test [192.0.2.10])\r\n\
         \tby relay.example.test with ESMTP id {queue_id}; Sat, 28 Nov 2026 07:00:01 +0000\r\n\
         From: a@remote.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\n\
         Message-ID: <20261128070001.{queue_id}@relay.example.test>\r\n\r\nhello\r\n"
    );
    let unnamed = send(&node, "a@remote.test", &unnamed).queued_id();
    let v = verdict(&node, &unnamed);
    let named = symbols(&v);
    assert_eq!(
        named
            .iter()
            .filter(|n| *n == "MSGID_ADDED_BY_RELAY")
            .count(),
        1,
        "{v:#}"
    );
    let added = symbol_where(&v, "name", "MSGID_ADDED_BY_RELAY");
    assert_eq!(added["score"], 2.0, "{v:#}");
    assert!(
        added["description"]
            .as_str()
            .unwrap()
            .contains(&format!("queue id {queue_id}")),
        "{v:#}"
    );
    // Without such a header the relay itself is judged, and SPF does not allow it.
    let direct = send(&node, "a@remote.test", &message("")).queued_id();
    let v = verdict(&node, &direct);
    assert!(
        !symbols(&v).contains(&"RCVD_VIA_TRUSTED_RELAY".to_string()),
        "{v:#}"
    );
    assert!(symbols(&v).contains(&"SPF_FAIL".to_string()), "{v:#}");
    let got = sink.wait_for(3, Duration::from_secs(15));
    let first = got
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains(&relayed))
        .unwrap();
    let results = first.header("Authentication-Results").unwrap();
    assert!(
        results.contains("spf=pass smtp.mailfrom=a@remote.test"),
        "{results}"
    );
}

#[test]
fn scanning_a_bad_policy_or_rule_file_is_reported_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("bad.cf");
    std::fs::write(&rules, "body BROKEN\n").unwrap();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[scan]\nrules = [\"{}\"]\nbudget_ms = 1\ntrusted_relays = [\"10.0.0.0/33\"]\n\n[dns]\nnameservers = [\"not-an-ip\"]\n\n\
             [policy]\ntag_score = 9.0\nquarantine_score = 5.0\nmalware = \"tag\"\n\
             allow = [\"@nowhere\"]\nsubject_prefix = \"bad\\r\\nBcc: x@y.test\"\n",
            rules.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for expected in [
        "scan.budget_ms",
        "dns.nameservers",
        "tag_score (9) <= quarantine_score (5)",
        "policy.malware",
        "policy.allow",
        "policy.subject_prefix",
        "bad.cf:1",
        "scan.trusted_relays: \"10.0.0.0/33\"",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn scanning_a_silent_nameserver_costs_the_budget_not_the_message() {
    let mut zone = Zone::new();
    zone.fault_everything(Fault::Silent);
    let dns = DnsServer::start(zone).unwrap();
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[scan]\nbudget_ms = 300\n\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n",
            common::held_delivery(),
            dns.addr()
        ),
    );
    let started = Instant::now();
    let reply = send(&node, "alice@sender.test", &plain("hi", "hello"));
    let took = started.elapsed();
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(took < Duration::from_secs(3), "the reply took {took:?}");
    let v = verdict(&node, &reply.queued_id());
    assert_eq!(v["action"], "deliver");
    let auth = v["scan"]["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "auth")
        .cloned()
        .unwrap();
    assert_eq!(auth["timed_out"], true, "{v:#}");
    let timeout = symbol_where(&v, "name", "SCAN_TIMEOUT");
    assert_eq!(timeout["engine"], "auth");
    let spam = v["scan"]["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "spam")
        .cloned()
        .unwrap();
    assert_eq!(
        spam["timed_out"], false,
        "the content engines still ran: {v:#}"
    );
}

#[test]
fn scanning_a_link_domain_on_a_blocklist_scores() {
    let mut zone = Zone::new();
    zone.add(
        "bad-links.test.uribl.example",
        Record::A("127.0.0.2".parse().unwrap()),
    );
    let dns = DnsServer::start(zone).unwrap();
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[scan]\nblocklists = [\"zen.example=3.0\", \"uribl.example=6.0:domain\"]\n\n\
             [dns]\nnameservers = [\"{}\"]\n",
            common::held_delivery(),
            dns.addr()
        ),
    );
    let listed = send(
        &node,
        "alice@sender.test",
        &plain("offer", "see https://www.bad-links.test/deal now"),
    );
    let v = verdict(&node, &listed.queued_id());
    let hit = symbol_where(&v, "name", "URIBL_URIBL_EXAMPLE");
    assert_eq!(hit["score"], 6.0);
    assert!(hit["description"]
        .as_str()
        .unwrap()
        .contains("bad-links.test"));
    assert_eq!(v["action"], "tag", "{v:#}");

    let clean = send(
        &node,
        "alice@sender.test",
        &plain("hello", "see https://docs.good.test/ now"),
    );
    let v = verdict(&node, &clean.queued_id());
    assert!(
        !symbols(&v).iter().any(|s| s.starts_with("URIBL_")),
        "{v:#}"
    );
    assert!(
        !symbols(&v).iter().any(|s| s.starts_with("RBL_")),
        "a loopback client is never looked up: {v:#}"
    );
}

/// A clamd on 127.0.0.1 speaking INSTREAM: a stream holding `marker` is reported as
/// `Test.Marker FOUND`, anything else `OK`. Serves `sessions` connections, then stops.
fn fake_clamd(marker: &'static [u8], sessions: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(sessions) {
            let Ok(mut stream) = stream else { return };
            let mut command = [0u8; 10];
            if stream.read_exact(&mut command).is_err() || &command != b"zINSTREAM\0" {
                continue;
            }
            let mut data = Vec::new();
            loop {
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).is_err() {
                    break;
                }
                let len = u32::from_be_bytes(len) as usize;
                if len == 0 {
                    break;
                }
                let mut chunk = vec![0u8; len];
                if stream.read_exact(&mut chunk).is_err() {
                    break;
                }
                data.extend_from_slice(&chunk);
            }
            let found = data.windows(marker.len()).any(|w| w == marker);
            let reply: &[u8] = if found {
                b"stream: Test.Marker FOUND\0"
            } else {
                b"stream: OK\0"
            };
            let _ = stream.write_all(reply);
        }
    });
    addr
}

#[test]
fn scanning_yara_rules_and_clamd_find_malware_and_a_dead_clamd_fails_as_configured() {
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.yar");
    std::fs::write(
        &rules,
        "rule Invoice_Dropper { strings: $a = \"invoice-dropper-v2\" condition: $a }\n\
         rule Weak_Hint { meta: score = 3 strings: $a = \"weak-hint-token\" condition: $a }\n",
    )
    .unwrap();
    let clamd = fake_clamd(b"CLAMD-TEST-MARKER", 3);
    let scan = format!(
        "[scan]\nyara_rules = [\"{}\"]\n\n[scan.clamd]\naddress = \"{clamd}\"\ntimeout_ms = 2000\n",
        rules.display()
    );
    let node = Node::start_with("", &relay_to(&sink, &scan));

    let reply = send(
        &node,
        "a@sender.test",
        &plain("pay", "see invoice-dropper-v2 here"),
    );
    assert_eq!(reply.code, 554, "{reply:?}");
    let v = verdict(&node, &rejected_id(&reply));
    assert_eq!(v["action"], "reject", "{v:#}");
    assert_eq!(
        v["scan"]["findings"][0]["name"], "YARA:Invoice_Dropper",
        "{v:#}"
    );

    let reply = send(
        &node,
        "a@sender.test",
        &plain("x", "carrying CLAMD-TEST-MARKER"),
    );
    assert_eq!(reply.code, 554, "{reply:?}");
    let v = verdict(&node, &rejected_id(&reply));
    assert!(symbols(&v).contains(&"CLAMD_VIRUS".to_string()), "{v:#}");
    let finding = &v["scan"]["findings"].as_array().unwrap()[0];
    assert_eq!(finding["engine"], "clamd", "{v:#}");
    assert!(
        finding["name"].as_str().unwrap().contains("Test.Marker"),
        "{v:#}"
    );

    // A weak YARA hint adds its score and nothing else; clamd saw it clean.
    let id = send(
        &node,
        "a@sender.test",
        &plain("hi", "a weak-hint-token only"),
    )
    .queued_id();
    let v = verdict(&node, &id);
    assert_eq!(v["action"], "deliver", "{v:#}");
    let yara = symbol_where(&v, "engine", "yara");
    assert_eq!(yara["score"], 3.0);
    let engines = engine_names(&v);
    assert!(
        engines.contains(&"clamd".into()) && engines.contains(&"yara".into()),
        "{v:#}"
    );
    sink.wait_for(1, Duration::from_secs(15));
    drop(node);

    // clamd gone (its three sessions are served): open lets mail through with a
    // record of why; closed refuses it as malware.
    for (fail_closed, code) in [(false, 250), (true, 554)] {
        let scan = format!(
            "[scan.clamd]\naddress = \"{clamd}\"\ntimeout_ms = 500\nfail_closed = {fail_closed}\n"
        );
        let node = Node::start_with("", &relay_to(&sink, &scan));
        let reply = send(&node, "a@sender.test", &plain("hi", "nothing here"));
        assert_eq!(reply.code, code, "fail_closed = {fail_closed}: {reply:?}");
        let id = if code == 250 {
            reply.queued_id()
        } else {
            rejected_id(&reply)
        };
        let v = verdict(&node, &id);
        let want = if fail_closed {
            "CLAMD_FAIL"
        } else {
            "CLAMD_UNAVAILABLE"
        };
        assert!(symbols(&v).contains(&want.to_string()), "{v:#}");
    }
}

#[test]
fn scanning_a_message_without_headers_or_empty_gets_a_whole_verdict() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &relay_to(&sink, ""));
    for body in ["just some words and no header at all\r\n", ""] {
        let id = send(&node, "alice@sender.test", body).queued_id();
        let v = verdict(&node, &id);
        let names = symbols(&v);
        for missing in ["MISSING_FROM", "MISSING_DATE", "MISSING_MESSAGE_ID"] {
            assert!(names.iter().any(|n| n == missing), "{missing}: {v:#}");
        }
        assert!(
            v["scan"]["engines"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["timed_out"] == false),
            "every engine finished: {v:#}"
        );
        assert!(engine_names(&v).iter().any(|n| n == "spam"), "{v:#}");
    }
    sink.wait_for(2, Duration::from_secs(15));
}

#[test]
fn scanning_the_built_in_rules_know_bulk_mail_of_the_old_school() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &relay_to(&sink, ""));
    let bulk = format!(
        "From: =?iso-2022-jp?B?c2FsZXM=?=@offers.test\r\nTo: bob@example.test\r\n\
         Subject: Lower your mortgage today          8812XQ\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{}@offers.test>\r\n\r\n\
         Call toll free 1-888-555-0199 to save $12,500 on your loan.\r\n\
         To be removed from our list, reply with REMOVE in the subject.\r\n",
        rand_id()
    );
    let id = send(&node, "sales@offers.test", &bulk).queued_id();
    let v = verdict(&node, &id);
    let names = symbols(&v);
    let rules = [
        "FROM_ENCODED_ADDR",
        "SUBJ_TRAILING_JUNK",
        "SUBJ_MONEY",
        "TOLL_FREE",
        "MONEY_AMOUNT",
        "FINANCE_OFFER",
        "OPT_OUT_REMOVE",
    ];
    for rule in rules {
        assert!(names.iter().any(|n| n == rule), "{rule}: {names:?}");
    }
    assert_ne!(v["action"], "deliver", "{v:#}");
    // A plain note between colleagues hits none of them.
    let note = plain("lunch", "Shall we meet at noon? I'll bring the slides.");
    let id = send(&node, "alice@sender.test", &note).queued_id();
    let v = verdict(&node, &id);
    assert_eq!(v["action"], "deliver", "{v:#}");
    let names = symbols(&v);
    assert!(
        !rules.iter().any(|r| names.contains(&r.to_string())),
        "{names:?}"
    );
}

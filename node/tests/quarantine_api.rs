//! The quarantine seen from outside: messages come in over SMTP and are quarantined
//! by their verdicts; an administrator lists them over HTTP, reads a safe preview,
//! downloads one raw, releases one (it reaches the next hop) and deletes another
//! (its body is gone); every decision is on record with who took it and why.

mod common;

use std::time::{Duration, Instant};

use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use common::{Api, Node, Smtp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(15);

/// An HTML message with a Windows program attached: quarantined as blocked content.
const PROGRAM: &str = "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n\
    Subject: the tool\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\n\
    Message-ID: <tool.1@sender.test>\r\nMIME-Version: 1.0\r\n\
    Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/html\r\n\r\n\
    <p>Run <b>this</b> now<script>alert('x')</script></p>\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";

/// The attachment of [`PROGRAM`], decoded.
const PROGRAM_BYTES: &[u8] = &[
    0x4d, 0x5a, 0x90, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0xff, 0xff, 0, 0, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0x40,
    0, 0, 0, 0, 0, 0, 0,
];

fn scored(from: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\r\n\
         This is a fishy offer.\r\n"
    )
}

fn send(node: &Node, from: &str, body: &str) -> String {
    let mut s = Smtp::ehlo(node.smtp);
    let reply = s.send_message(from, &["bob@example.test"], body);
    assert_eq!(reply.code, 250, "{reply:?}");
    reply.queued_id()
}

/// The ids of a quarantine listing's items, and its `next` cursor.
fn listed(api: &Api, query: &str) -> (Vec<String>, Value) {
    api.listed(&format!("/v1/quarantine?{query}"))
}

#[test]
fn quarantine_lists_previews_releases_and_deletes_with_an_audit_trail() {
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    std::fs::write(
        &rules,
        "body LOCAL_FISHY /fishy offer/i\nscore LOCAL_FISHY 12.0\n\
         describe LOCAL_FISHY A fishy offer\n",
    )
    .unwrap();
    let node = Node::start_with(
        "",
        &format!(
            "[delivery]\nrelay = \"{}\"\npoll_ms = 100\n\n[scan]\nrules = [\"{}\"]\n",
            sink.addr(),
            rules.display()
        ),
    );
    let api = Api::new(&node);
    let program = send(&node, "alice@sender.test", PROGRAM);
    let fishy = send(
        &node,
        "carol@sender.test",
        &scored("carol@sender.test", "offer"),
    );
    let other = send(
        &node,
        "mallory@bad.test",
        &scored("mallory@bad.test", "again"),
    );
    for id in [program.as_str(), &fishy, &other] {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }

    // Listing: all three, oldest first; filters; pages.
    let (all, next) = listed(&api, "");
    assert_eq!(all, [program.as_str(), &fishy, &other]);
    assert_eq!(next, Value::Null);
    assert_eq!(listed(&api, "sender=@BAD.test").0, [other.as_str()]);
    assert_eq!(
        listed(&api, "recipient=bob@example.test&reason=blocked").0,
        [program.as_str()]
    );
    let (first, next) = listed(&api, "limit=2");
    assert_eq!(first, [program.as_str(), &fishy]);
    let (rest, end) = listed(&api, &format!("limit=2&after={}", next.as_str().unwrap()));
    assert_eq!((rest, end), (vec![other.clone()], Value::Null));
    let (_, page) = api.get("/v1/quarantine");
    let item = &page["items"][1];
    assert_eq!(item["sender"], "carol@sender.test");
    assert_eq!(item["recipients"], json!(["bob@example.test"]));
    assert_eq!(item["subject"], "offer");
    assert!(item["score"].as_f64().unwrap() >= 12.0, "{item}");
    let when = item["quarantined"].as_str().unwrap().to_string();
    assert_eq!(
        listed(&api, &format!("since={when}&until={when}")).0.len(),
        0
    );
    assert!(listed(&api, &format!("since={when}")).0.contains(&fishy));
    assert_eq!(listed(&api, "until=2000-01-01T00:00:00Z").0.len(), 0);
    for bad in ["since=yesterday", "limit=0", "after=nonsense", "colour=red"] {
        let (status, problem) = api.get(&format!("/v1/quarantine?{bad}"));
        assert_eq!(status, 400, "{bad}: {problem}");
    }

    // Detail: the verdict and a preview that shows the HTML as text and lists the
    // program, never its markup.
    let (status, detail) = api.get(&format!("/v1/quarantine/{program}"));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["verdict"]["action"], "quarantine", "{detail:#}");
    assert!(detail["reason"]
        .as_str()
        .unwrap()
        .starts_with("blocked content"));
    let preview = &detail["preview"];
    let subject = preview["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "Subject")
        .unwrap();
    assert_eq!(subject["value"], "the tool");
    let html = preview["html_text"].as_str().unwrap();
    assert!(html.contains("Run this now"), "{html}");
    assert!(!html.contains('<') && !html.contains("alert"), "{html}");
    let attachment = &preview["attachments"][0];
    assert_eq!(attachment["name"], "setup.exe");
    assert_eq!(attachment["size"], PROGRAM_BYTES.len());
    assert_eq!(
        attachment["sha256"],
        hex::encode(Sha256::digest(PROGRAM_BYTES))
    );

    // Raw: the message as received, as a download.
    let raw = api.get_raw(&format!("/v1/quarantine/{program}/raw"));
    assert_eq!(raw.status().as_u16(), 200);
    let header = |name: &str| raw.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "message/rfc822");
    assert_eq!(
        header("content-disposition"),
        format!("attachment; filename=\"{program}.eml\"")
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    let raw = raw.text().unwrap();
    assert!(
        raw.ends_with(&PROGRAM[PROGRAM.find("--b\r\n").unwrap()..]),
        "{raw}"
    );

    // Release: a reason is required; then the message reaches the next hop, once.
    let release = format!("/v1/quarantine/{fishy}/release");
    let (status, problem) = api.post_json(&release, &json!({ "reason": " " }));
    assert_eq!(status, 400, "{problem}");
    let (status, problem) = api.post(&release);
    assert_eq!(status, 400, "{problem}");
    let (status, done) = api.post_json(&release, &json!({ "reason": "a customer's offer" }));
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["action"], "quarantine.release");
    let (status, again) = api.post_json(&release, &json!({ "reason": "twice" }));
    assert_eq!(status, 404, "{again}");
    let got = sink.wait_for(1, WAIT);
    assert_eq!(
        got[0].header("X-Bulwark-Id").as_deref(),
        Some(fishy.as_str())
    );
    assert_eq!(got[0].header("Subject").as_deref(), Some("offer"));
    assert_eq!(got[0].rcpt_to, ["bob@example.test"]);
    let released = node.wait_message_event(&fishy, "quarantine.released", 1, WAIT);
    assert_eq!(released[0]["user"]["name"], "admin");
    assert_eq!(released[0]["source"]["ip"], "127.0.0.1");
    assert_eq!(released[0]["event"]["reason"], "a customer's offer");
    assert_eq!(released[0]["seq"], done["seq"]);
    node.wait_message_event(&fishy, "delivery.succeeded", 1, WAIT);
    let refusal = node.wait_message_event(&fishy, "api.action", 1, WAIT);
    assert_eq!(refusal[0]["event"]["outcome"], "failure");

    // Delete: the body is gone, nothing is delivered.
    let (status, done) = api.delete(&format!("/v1/quarantine/{other}?reason=phishing"));
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["action"], "quarantine.delete");
    for path in [
        format!("/v1/quarantine/{other}"),
        format!("/v1/quarantine/{other}/raw"),
    ] {
        let (status, problem) = api.get(&path);
        assert_eq!(status, 404, "{path}: {problem}");
    }
    let deleted = node.wait_message_event(&other, "quarantine.deleted", 1, WAIT);
    assert_eq!(deleted[0]["event"]["reason"], "phishing");
    assert_eq!(deleted[0]["email"]["sender"]["address"], "mallory@bad.test");

    // What was not touched is still there; nothing else reached the next hop.
    assert_eq!(listed(&api, "").0, [program.as_str()]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.received().len(), 1);

    // Refusals: no token, a bad id, a message never quarantined.
    let anonymous = api.client.get(api.url("/v1/quarantine")).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(api.get("/v1/quarantine/not-an-id").0, 400);
    let (status, _) = api.delete(&format!("/v1/quarantine/{}", delivered_id(&node, &sink)));
    assert_eq!(status, 404);
}

#[test]
fn quarantine_bulk_release_and_delete_act_on_what_the_filters_match_page_by_page() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with(
        "",
        &format!("[delivery]\nrelay = \"{}\"\npoll_ms = 100\n", sink.addr()),
    );
    let api = Api::new(&node);
    let spam: Vec<String> = (0..3)
        .map(|i| send(&node, &format!("s{i}@spam.test"), PROGRAM))
        .collect();
    let wanted: Vec<String> = (0..2)
        .map(|i| send(&node, &format!("w{i}@partner.test"), PROGRAM))
        .collect();
    for id in spam.iter().chain(&wanted) {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }

    // No filter, no reason for a release, a bad filter: refused, nothing touched.
    let reason = json!({ "reason": "campaign" });
    for (path, body) in [
        ("/v1/quarantine/delete", json!({})),
        (
            "/v1/quarantine/release?sender=@partner.test",
            json!({ "reason": "" }),
        ),
        ("/v1/quarantine/delete?since=soon", reason.clone()),
    ] {
        let (status, problem) = api.post_json(path, &body);
        assert_eq!(status, 400, "{path}: {problem}");
    }
    assert_eq!(listed(&api, "").0.len(), 5);

    // Delete the campaign two at a time.
    let (status, page) = api.post_json("/v1/quarantine/delete?sender=@spam.test&limit=2", &reason);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["action"], "quarantine.delete");
    assert_eq!(page["done"], json!(spam[..2]));
    assert_eq!(page["refused"], json!([]));
    assert_eq!(
        (&page["failed"], &page["error"]),
        (&json!([]), &Value::Null)
    );
    let next = page["next"].as_str().unwrap();
    let (status, page) = api.post_json(
        &format!("/v1/quarantine/delete?sender=@spam.test&limit=2&after={next}"),
        &reason,
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["done"], json!([spam[2]]));
    assert_eq!(page["next"], Value::Null);
    assert_eq!(listed(&api, "").0, wanted);
    for id in &spam {
        let deleted = node.wait_message_event(id, "quarantine.deleted", 1, WAIT);
        assert_eq!(deleted[0]["event"]["reason"], "campaign");
        assert_eq!(api.get(&format!("/v1/quarantine/{id}/raw")).0, 404);
    }

    // Release the partner's messages: both reach the next hop.
    let (status, page) = api.post_json(
        "/v1/quarantine/release?sender=@partner.test",
        &json!({ "reason": "partner confirmed" }),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["done"], json!(wanted));
    let got = sink.wait_for(2, WAIT);
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| d.header("X-Bulwark-Id").unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, wanted);
    assert_eq!(listed(&api, "").0.len(), 0);
}

#[test]
fn quarantine_retention_removes_what_it_held_too_long_and_records_it() {
    let sink = Sink::start(SinkConfig::default());
    // About two seconds of retention, checked every second.
    let node = Node::start_with(
        "",
        &format!(
            "[delivery]\nrelay = \"{}\"\npoll_ms = 100\n\n\
             [quarantine]\nretention_days = 0.000025\ncheck_secs = 1\n",
            sink.addr()
        ),
    );
    let api = Api::new(&node);
    let old = send(&node, "alice@sender.test", PROGRAM);
    node.wait_message_event(&old, "message.quarantined", 1, WAIT);
    assert_eq!(listed(&api, "").0, [old.as_str()]);
    let expired = node.wait_message_event(&old, "quarantine.expired", 1, WAIT);
    assert_eq!(expired[0]["user"]["name"], "retention");
    assert_eq!(
        expired[0]["event"]["reason"],
        "held longer than 0.000025 days"
    );
    assert_eq!(listed(&api, "").0.len(), 0);
    assert_eq!(api.get(&format!("/v1/quarantine/{old}/raw")).0, 404);
    let runs = node.events("quarantine.retention");
    assert!(
        runs.iter().any(|r| r["quarantine"]["expired"] == 1),
        "{runs:#?}"
    );
    // Expired, never delivered.
    assert!(sink.received().is_empty());
}

/// The id of a message that was never quarantined: one sent clean, once delivered.
fn delivered_id(node: &Node, sink: &Sink) -> String {
    let clean = "From: <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: lunch\r\n\
        Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <lunch@sender.test>\r\n\r\n\
        Noon?\r\n";
    let id = send(node, "alice@sender.test", clean);
    let deadline = Instant::now() + WAIT;
    while !sink
        .received()
        .iter()
        .any(|d| d.header("X-Bulwark-Id").as_deref() == Some(id.as_str()))
    {
        assert!(Instant::now() < deadline, "{id} never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    id
}

//! The mail log seen from outside: real SMTP sessions to a node started here, a next
//! hop on loopback, and the node's `mail.log` (or standard error) read line by line:
//! each stage of a message is one line with its id, envelope, client, relay and
//! reply, in text or JSON, and nothing a sender writes can break a line or add a
//! field.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::sink::{Sink, SinkConfig, Stage};
use common::{Api, Node, Smtp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// The EICAR test file, base64.
const EICAR_BASE64: &str =
    "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=";

/// `[delivery]` to `relay` with fast retries, and `log` as the `[log]` section.
fn config(relay: std::net::SocketAddr, log: &str) -> String {
    format!(
        "[delivery]\nrelay = \"{relay}\"\npoll_ms = 100\nretry_initial_secs = 1\n\
         retry_max_secs = 2\nconnect_timeout_secs = 2\n\n[log]\n{log}\n"
    )
}

/// One text line as `key → value`, values unquoted and unescaped; panics on anything
/// that is not `key=value` pairs or names a key twice.
fn parse_text(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase()),
            "bad key {key:?} in {line:?}"
        );
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("unclosed quote: {line:?}"))
                {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('r') => value.push('\r'),
                        Some('t') => value.push('\t'),
                        Some('u') => {
                            assert_eq!(chars.next(), Some('{'), "{line:?}");
                            let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                            let code = u32::from_str_radix(&hex, 16).unwrap();
                            value.push(char::from_u32(code).unwrap());
                        }
                        Some(c @ ('"' | '\\')) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    c => value.push(c),
                }
            }
            assert!(matches!(chars.next(), None | Some(' ')), "{line:?}");
        } else {
            value = chars.by_ref().take_while(|c| *c != ' ').collect();
        }
        assert!(
            fields.insert(key.clone(), value).is_none(),
            "{key} twice: {line:?}"
        );
    }
    fields
}

/// A text line's `to`, item by item (a comma inside an address is escaped).
fn recipients(line: &BTreeMap<String, String>) -> Vec<String> {
    line["to"].split(',').map(str::to_string).collect()
}

/// Reads the mail log at `path` until `done` holds for its lines (each parsed by
/// `parse`), and returns them.
fn wait_lines<T: std::fmt::Debug>(
    path: &PathBuf,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
    node: &Node,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "a line is cut: {text:?}"
        );
        let lines: Vec<T> = text.lines().filter_map(&parse).collect();
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the mail log within {WAIT:?}: {lines:#?}\nnode log tail:\n{}",
            common::tail(&node.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text_lines(
    path: &PathBuf,
    what: &str,
    node: &Node,
    done: impl Fn(&[Fields]) -> bool,
) -> Vec<Fields> {
    wait_lines(path, |l| Some(parse_text(l)), what, node, done)
}

type Fields = BTreeMap<String, String>;

fn find<'a>(lines: &'a [Fields], stage: &str, id: &str) -> Option<&'a Fields> {
    lines
        .iter()
        .find(|l| l["stage"] == stage && l.get("id").map(String::as_str) == Some(id))
}

fn has(lines: &[Fields], stage: &str, id: &str) -> bool {
    find(lines, stage, id).is_some()
}

#[test]
fn mail_log_received_then_delivered_with_the_same_id_relay_and_reply() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &config(sink.addr(), ""));
    let path = node.data_dir().join("mail.log");
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(
            "alice@sender.test",
            &["bob@example.test", "carol@example.test"],
            "Subject: hello\r\nMessage-ID: <m1@sender.test>\r\n\r\nhi\r\n",
        )
        .queued_id();

    let lines = text_lines(&path, "delivered line", &node, |l| has(l, "delivered", &id));
    let received = find(&lines, "received", &id).expect("a received line");
    assert_eq!(received["node"], "1");
    assert_eq!(received["from"], "alice@sender.test");
    assert_eq!(
        recipients(received),
        ["bob@example.test", "carol@example.test"]
    );
    assert_eq!(received["client"], "127.0.0.1");
    assert_eq!(received["helo"], "client.test");
    assert_eq!(received["proto"], "ESMTP");
    assert_eq!(received["msgid"], "<m1@sender.test>");
    assert_eq!(received["action"], "deliver");
    received["score"].parse::<f64>().expect("a score");
    received["size"].parse::<u64>().expect("a size");
    assert!(!received.contains_key("subject"), "{received:?}");
    let delivered = find(&lines, "delivered", &id).unwrap();
    assert_eq!(delivered["relay"], sink.addr().to_string());
    assert_eq!(
        recipients(delivered),
        ["bob@example.test", "carol@example.test"]
    );
    assert!(
        delivered["reply"].starts_with("250 2.0.0 Ok"),
        "{delivered:?}"
    );
    delivered["delay"].parse::<f64>().expect("a delay");
    assert!(received["time"] <= delivered["time"], "{lines:#?}");
    // Each stage once, in order; nothing else about the message.
    let stages: Vec<&str> = lines
        .iter()
        .filter(|l| l.get("id") == Some(&id))
        .map(|l| l["stage"].as_str())
        .collect();
    assert_eq!(stages, ["received", "delivered"]);
    assert_eq!(
        metric(&node, "bulwark_mail_log_lines_total{stage=\"delivered\"}"),
        Some(1)
    );
}

#[test]
fn mail_log_rejected_by_the_policy_with_the_reply_the_client_got() {
    let node = Node::start_with("", &config(common_unused_relay(), ""));
    let path = node.data_dir().join("mail.log");
    let mut s = Smtp::ehlo(node.smtp);
    let gtube = s.send_message(
        "alice@sender.test",
        &["bob@example.test"],
        &format!("Subject: spam\r\n\r\n{GTUBE}\r\n"),
    );
    assert_eq!(gtube.code, 554, "{gtube:?}");
    let eicar = s.send_message(
        "alice@sender.test",
        &["carol@example.test"],
        &format!(
            "Subject: invoice\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nplease pay\r\n\
             --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{EICAR_BASE64}\r\n--b--\r\n"
        ),
    );
    assert_eq!(eicar.code, 554, "{eicar:?}");
    // A refusal before any message: no id, the reply as given.
    assert_eq!(s.cmd("MAIL FROM:<alice@sender.test>").code, 250);
    let denied = s.cmd("RCPT TO:<x@foreign.test>");
    assert_eq!(denied.code, 554, "{denied:?}");

    let lines = text_lines(&path, "three rejected lines", &node, |l| {
        l.iter().filter(|l| l["stage"] == "rejected").count() >= 3
    });
    let rejected: Vec<&Fields> = lines.iter().filter(|l| l["stage"] == "rejected").collect();
    for (line, reply, to) in [
        (rejected[0], &gtube, "bob@example.test"),
        (rejected[1], &eicar, "carol@example.test"),
    ] {
        assert_eq!(line["reply"], format!("{} {}", reply.code, reply.text()));
        assert!(reply.text().contains(&line["id"]), "{line:?} {reply:?}");
        assert_eq!(line["to"], to);
        assert_eq!(line["from"], "alice@sender.test");
        assert_eq!(line["client"], "127.0.0.1");
        line["score"].parse::<f64>().expect("a score");
    }
    assert!(
        rejected[1]["reason"].contains("Eicar-Test-Signature"),
        "{:?}",
        rejected[1]
    );
    assert!(!rejected[2].contains_key("id"), "{:?}", rejected[2]);
    assert_eq!(rejected[2]["reason"], "relay_denied");
    assert_eq!(rejected[2]["to"], "x@foreign.test");
    assert_eq!(
        rejected[2]["reply"],
        format!("{} {}", denied.code, denied.text())
    );
    assert!(
        !lines.iter().any(|l| l["stage"] == "received"),
        "{lines:#?}"
    );
}

/// A next hop that no test here reaches (the rejected messages are never relayed).
fn common_unused_relay() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap()
}

#[test]
fn mail_log_in_json_quarantined_released_then_delivered() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &config(sink.addr(), "mail_log_format = \"json\""));
    let path = node.data_dir().join("mail.log");
    let exe = "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: tool\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nrun this\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message("alice@sender.test", &["bob@example.test"], exe)
        .queued_id();
    let json = |line: &str| Some(serde_json::from_str::<Value>(line).expect("a JSON line"));
    let of = |lines: &[Value], stage: &str| -> Option<Value> {
        lines
            .iter()
            .find(|l| l["stage"] == stage && l["id"] == id.as_str())
            .cloned()
    };
    let lines = wait_lines(&path, json, "quarantined line", &node, |l| {
        of(l, "quarantined").is_some()
    });
    let received = of(&lines, "received").expect("a received line");
    assert_eq!(received["action"], "quarantine");
    assert_eq!(received["to"], json!(["bob@example.test"]));
    assert_eq!(received["node"], 1);
    let quarantined = of(&lines, "quarantined").unwrap();
    assert!(
        quarantined["reason"]
            .as_str()
            .unwrap()
            .starts_with("blocked content"),
        "{quarantined}"
    );
    assert!(quarantined["score"].is_number(), "{quarantined}");
    assert!(of(&lines, "delivered").is_none(), "{lines:#?}");

    let (status, body) = Api::new(&node).post_json(
        &format!("/v1/quarantine/{id}/release"),
        &json!({ "reason": "the tool is expected" }),
    );
    assert_eq!(status, 200, "{body}");
    let lines = wait_lines(&path, json, "delivered line", &node, |l| {
        of(l, "delivered").is_some()
    });
    let released = of(&lines, "released").expect("a released line");
    assert_eq!(released["user"], "admin");
    assert_eq!(released["client"], "127.0.0.1");
    assert_eq!(released["reason"], "the tool is expected");
    assert_eq!(released["from"], "alice@sender.test");
    let delivered = of(&lines, "delivered").unwrap();
    assert_eq!(delivered["relay"], sink.addr().to_string());
    assert!(
        delivered["reply"].as_str().unwrap().starts_with("250"),
        "{delivered}"
    );
    let stages: Vec<&str> = lines
        .iter()
        .filter(|l| l["id"] == id.as_str())
        .map(|l| l["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["received", "quarantined", "released", "delivered"]);
    for line in &lines {
        for key in ["time", "node", "stage"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
}

#[test]
fn mail_log_deferred_on_4xx_bounced_on_5xx_and_the_dsn_delivered() {
    let sink = Sink::start(SinkConfig::scripted(|stage| match stage {
        Stage::Rcpt { to, .. } if *to == "later@example.test" => {
            Some("451 4.2.1 mailbox busy".into())
        }
        Stage::Rcpt { to, .. } if *to == "bad@example.test" => {
            Some("550 5.1.1 no such user".into())
        }
        _ => None,
    }));
    let node = Node::start_with("", &config(sink.addr(), ""));
    let path = node.data_dir().join("mail.log");
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message(
            "alice@sender.test",
            &["later@example.test", "bad@example.test"],
            "Subject: two fates\r\n\r\nhi\r\n",
        )
        .queued_id();

    let lines = text_lines(&path, "deferred and bounced lines", &node, |l| {
        has(l, "deferred", &id)
            && find(l, "bounced", &id)
                .and_then(|b| find(l, "delivered", &b["dsn"]))
                .is_some()
    });
    let deferred = find(&lines, "deferred", &id).unwrap();
    assert_eq!(deferred["to"], "later@example.test");
    assert_eq!(deferred["relay"], sink.addr().to_string());
    assert!(
        deferred["reply"].contains("451 4.2.1 mailbox busy"),
        "{deferred:?}"
    );
    assert!(deferred["next"] > deferred["time"], "{deferred:?}");
    let bounced = find(&lines, "bounced", &id).unwrap();
    assert_eq!(bounced["to"], "bad@example.test");
    assert!(
        bounced["reply"].contains("550 5.1.1 no such user"),
        "{bounced:?}"
    );
    // The notification to the sender is a message of its own, delivered.
    let dsn = find(&lines, "delivered", &bounced["dsn"]).unwrap();
    assert_eq!(dsn["to"], "alice@sender.test");
    assert!(!has(&lines, "delivered", &id), "{lines:#?}");
}

#[test]
fn mail_log_values_cannot_break_a_line_or_forge_a_field() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &config(sink.addr(), "mail_log = \"stderr\""));
    // Quoted local parts may hold spaces, `=`, quotes and backslashes; SMTPUTF8 lets
    // in a line separator. None of them may end a line or look like a field.
    let hostile = [
        r#""bob stage=delivered relay=evil.test"@example.test"#,
        r#""a\"b\\r\\n time=0 stage=bounced"@example.test"#,
        "\"line\u{2028}break\u{202e}\"@example.test",
        "plain+0D+0Astage=delivered@example.test",
    ];
    let mut s = Smtp::ehlo(node.smtp);
    let id = s
        .send_message_with(
            "alice@sender.test",
            "SMTPUTF8",
            &hostile,
            "Subject: hostile\r\n\r\nhi\r\n",
        )
        .queued_id();
    let stored: Vec<String> = node
        .wait_message_event(&id, "message.received", 1, WAIT)
        .remove(0)["email"]["to"]["address"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored.len(), hostile.len(), "{stored:?}");

    let log = node.dir().join("node.log");
    let ours = |line: &str| line.starts_with("time=").then(|| parse_text(line));
    let lines = wait_lines(&log, ours, "delivered line on stderr", &node, |l| {
        has(l, "delivered", &id)
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["id"], id, "{line:?}");
        assert_eq!(recipients(line), stored, "{line:?}");
        assert!(!line.contains_key("relay") || line["stage"] == "delivered");
    }
    assert_eq!(lines[0]["stage"], "received");
    assert_eq!(lines[1]["stage"], "delivered");
    assert_eq!(lines[1]["relay"], sink.addr().to_string());
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains('\u{2028}'), "a raw line separator in the log");
    assert!(
        !node.data_dir().join("mail.log").exists(),
        "stderr is the only target"
    );
}

#[test]
fn mail_log_is_reopened_at_sighup_after_logrotate_moved_it() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with("", &config(sink.addr(), ""));
    let path = node.data_dir().join("mail.log");
    let rotated = node.data_dir().join("mail.log.1");
    let send = |subject: &str| {
        Smtp::ehlo(node.smtp)
            .send_message(
                "alice@sender.test",
                &["bob@example.test"],
                &format!("Subject: {subject}\r\n\r\nhi\r\n"),
            )
            .queued_id()
    };
    let first = send("before");
    text_lines(&path, "the first delivery", &node, |l| {
        has(l, "delivered", &first)
    });
    std::fs::rename(&path, &rotated).unwrap();
    let pid: i32 = std::fs::read_to_string(node.data_dir().join("bulwark.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(Instant::now() < deadline, "no new mail.log after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = send("after");
    let lines = text_lines(&path, "the second delivery", &node, |l| {
        has(l, "delivered", &second)
    });
    assert!(has(&lines, "received", &second), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.get("id") == Some(&first)),
        "{lines:#?}"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains(&second), "written to the rotated file: {old}");
    let mut node = node;
    assert!(node.is_running(), "SIGHUP stopped the node");
}

/// A sample's value in the node's `/metrics`, by its name and labels as written.
fn metric(node: &Node, sample: &str) -> Option<u64> {
    let text = reqwest::blocking::get(format!("{}/metrics", node.api))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

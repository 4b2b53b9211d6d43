//! `bulwark quarantine` and `bulwark queue`, run as real processes against real nodes
//! over HTTP: what each prints, its exit status (0 done, 1 some refused, 2 not carried
//! out), and what the node records.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use common::{free_port, Api, Node, Smtp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// A message with a Windows program attached: quarantined as blocked content.
const PROGRAM: &str = "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n\
    Subject: the tool\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\n\
    Message-ID: <tool.1@sender.test>\r\nMIME-Version: 1.0\r\n\
    Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/plain\r\n\r\nRun this now.\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";

/// `bulwark ARGS` run in `cwd`: its exit code, stdout and stderr.
fn bulwark(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run bulwark");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bulwark ARGS --api NODE --token-file FILE`, run in the node's directory.
fn against(node: &Node, token_file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    let token = token_file.to_str().unwrap();
    all.extend(["--api", &node.api, "--token-file", token]);
    bulwark(node.dir(), &all)
}

fn send(smtp: std::net::SocketAddr, from: &str, body: &str) -> String {
    Smtp::ehlo(smtp)
        .send_message(from, &["bob@example.test"], body)
        .queued_id()
}

/// A token of `role` named `name`, written to a file in the node's directory.
fn token_file(node: &Node, name: &str, role: &str) -> PathBuf {
    let (status, made) =
        Api::new(node).post_json("/v1/tokens", &json!({ "name": name, "role": role }));
    assert_eq!(status, 201, "{made}");
    let file = node.dir().join(format!("{name}.token"));
    std::fs::write(&file, made["token"].as_str().unwrap()).unwrap();
    file
}

#[test]
fn quarantine_cli_lists_shows_releases_and_deletes_each_on_record() {
    let sink = Sink::start(SinkConfig::default());
    let node = Node::start_with(
        "",
        &format!("[delivery]\nrelay = \"{}\"\npoll_ms = 100\n", sink.addr()),
    );
    let alice = token_file(&node, "alice", "operator");
    let kept = send(node.smtp, "alice@sender.test", PROGRAM);
    let released = send(node.smtp, "carol@partner.test", PROGRAM);
    let deleted = send(node.smtp, "mallory@bad.test", PROGRAM);
    for id in [&kept, &released, &deleted] {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }

    // A table a person reads: a header, a row a message, oldest first.
    let (code, table, said) = against(&node, &alice, &["quarantine", "list"]);
    assert_eq!(code, 0, "{said}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SENDER") && lines[0].contains("REASON"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    for (line, (id, sender)) in lines[1..].iter().zip([
        (&kept, "alice@sender.test"),
        (&released, "carol@partner.test"),
        (&deleted, "mallory@bad.test"),
    ]) {
        assert!(line.starts_with(id.as_str()), "{table}");
        assert!(
            line.contains(sender) && line.contains("bob@example.test"),
            "{table}"
        );
        assert!(
            line.contains("the tool") && line.contains("blocked content"),
            "{table}"
        );
    }

    // JSON for scripts; the API's filters; pages followed and where to go on.
    let (code, listed, said) = against(
        &node,
        &alice,
        &["quarantine", "list", "--sender", "@partner.test", "--json"],
    );
    assert_eq!(code, 0, "{said}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["id"], released.as_str());
    assert_eq!(listed["next"], Value::Null);
    let (code, listed, said) = against(
        &node,
        &alice,
        &["quarantine", "list", "--limit", "2", "--json"],
    );
    assert_eq!(code, 0, "{said}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert_eq!(listed["next"], released.as_str());
    assert!(said.contains(&format!("--after {released}")), "{said}");
    let (code, _, said) = against(
        &node,
        &alice,
        &["quarantine", "list", "--since", "yesterday"],
    );
    assert_eq!(code, 2, "a filter the API refuses: {said}");
    assert!(said.contains("400") && said.contains("since"), "{said}");

    // One message: why it is held and what it carries.
    let (code, shown, said) = against(
        &node,
        &alice,
        &["quarantine", "show", &kept, "--reason", "ticket 7"],
    );
    assert_eq!(code, 0, "{said}");
    for expected in [
        kept.as_str(),
        "blocked content",
        "verdict      quarantine",
        "Subject: the tool",
        "Run this now.",
        "setup.exe",
    ] {
        assert!(shown.contains(expected), "{expected} not in:\n{shown}");
    }
    let reads = node.events("access.read");
    assert!(
        reads.iter().any(|r| r["message_id"] == kept.as_str()
            && r["user"]["name"] == "alice"
            && r["event"]["reason"] == "ticket 7"),
        "{reads:#?}"
    );
    let raw = node.dir().join("kept.eml");
    let (code, _, said) = against(
        &node,
        &alice,
        &["quarantine", "show", &kept, "--raw", raw.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    assert!(std::fs::read_to_string(&raw).unwrap().contains("setup.exe"));

    // Release with a reason: it reaches the next hop; on record with alice and why.
    let (code, out, said) = against(
        &node,
        &alice,
        &[
            "quarantine",
            "release",
            &released,
            "--reason",
            "partner confirmed",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, format!("released {released}").as_str()),
        "{said}"
    );
    let got = sink.wait_for(1, WAIT);
    assert_eq!(
        got[0].header("X-Bulwark-Id").as_deref(),
        Some(released.as_str())
    );
    let event = &node.wait_message_event(&released, "quarantine.released", 1, WAIT)[0];
    assert_eq!(event["event"]["reason"], "partner confirmed", "{event:#}");
    assert_eq!(event["user"]["name"], "alice", "{event:#}");

    // Delete, as JSON: the outcome of each id.
    let (code, out, said) = against(
        &node,
        &alice,
        &[
            "quarantine",
            "delete",
            &deleted,
            "--reason",
            "phishing",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{said}");
    let outcomes: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes[0]["id"], deleted.as_str(), "{outcomes}");
    assert_eq!(outcomes[0]["outcome"], "done", "{outcomes}");
    let event = &node.wait_message_event(&deleted, "quarantine.deleted", 1, WAIT)[0];
    assert_eq!(event["event"]["reason"], "phishing");
    assert_eq!(event["user"]["name"], "alice");

    // Some refused: each said with why, the rest done, exit 1.
    let (code, out, said) = against(
        &node,
        &alice,
        &[
            "quarantine",
            "delete",
            "not-an-id",
            &released,
            &kept,
            "--reason",
            "cleanup",
        ],
    );
    assert_eq!(code, 1, "{out}{said}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("refused not-an-id: ") && lines[0].contains("not a message id"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("refused {released}: "))
            && lines[1].contains("not in the quarantine"),
        "{out}"
    );
    assert_eq!(lines[2], format!("deleted {kept}"), "{out}");
    let (code, _, said) = against(&node, &alice, &["quarantine", "show", &kept]);
    assert_eq!(code, 1);
    assert!(said.contains("not in the quarantine"), "{said}");

    // Not carried out: a token the node does not take, a role that may not, no node.
    let wrong = node.dir().join("wrong.token");
    std::fs::write(&wrong, "bwk_not_a_token").unwrap();
    let (code, out, said) = against(&node, &wrong, &["quarantine", "list"]);
    assert_eq!(code, 2, "{out}{said}");
    assert!(
        said.contains("does not take the token in") && said.contains("wrong.token"),
        "{said}"
    );
    let auditor = token_file(&node, "audrey", "auditor");
    let (code, _, said) = against(
        &node,
        &auditor,
        &["quarantine", "release", &kept, "--reason", "x"],
    );
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("may not do this") && said.contains("act on messages"),
        "{said}"
    );
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, _, said) = bulwark(
        node.dir(),
        &[
            "quarantine",
            "list",
            "--api",
            &nobody,
            "--token-file",
            alice.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{said}");
    assert!(said.contains(&nobody), "{said}");
    let (code, _, said) = bulwark(node.dir(), &["quarantine", "release", &kept]);
    assert_eq!(
        code, 2,
        "a release without --reason is a usage error: {said}"
    );

    // --config: the node's own API and admin token.
    let (code, out, said) = bulwark(
        node.dir(),
        &["quarantine", "list", "--config", "bulwark.toml"],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "no quarantined message matches"),
        "{said}"
    );
}

#[test]
fn queue_cli_lists_holds_releases_retries_and_deletes_a_deferred_message() {
    let dead = free_port();
    let node = Node::start_with(
        "",
        &format!(
            "[delivery]\nrelay = \"127.0.0.1:{dead}\"\nretry_initial_secs = 3600\n\
             poll_ms = 100\nconnect_timeout_secs = 2\n"
        ),
    );
    let admin = node.data_dir().join("admin.token");
    let id = send(
        node.smtp,
        "alice@sender.test",
        "Subject: hi\r\n\r\nhello\r\n",
    );
    node.wait_message_event(&id, "delivery.deferred", 1, WAIT);

    let (code, table, said) = against(&node, &admin, &["queue", "list"]);
    assert_eq!(code, 0, "{said}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("NEXT ATTEMPT") && lines[0].contains("LAST REPLY"),
        "{table}"
    );
    assert!(lines[1].starts_with(id.as_str()), "{table}");
    assert!(
        lines[1].contains("deferred") && lines[1].contains("alice@sender.test"),
        "{table}"
    );

    let (code, out, said) = against(&node, &admin, &["queue", "hold", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("held {id}").as_str()),
        "{said}"
    );
    let (code, listed, said) = against(
        &node,
        &admin,
        &["queue", "list", "--status", "held", "--json"],
    );
    assert_eq!(code, 0, "{said}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["items"][0]["held"], true, "{listed}");
    let (code, shown, said) = against(&node, &admin, &["queue", "show", &id]);
    assert_eq!(code, 0, "{said}");
    assert!(shown.contains("state      held"), "{shown}");
    assert!(
        shown.contains("delivery.deferred") && shown.contains("queue.hold"),
        "{shown}"
    );

    let (code, out, said) = against(&node, &admin, &["queue", "release", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("released {id}").as_str()),
        "{said}"
    );
    let (code, out, said) = against(&node, &admin, &["queue", "retry", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("retried {id}").as_str()),
        "{said}"
    );
    node.wait_message_event(&id, "delivery.deferred", 2, WAIT);
    let (code, out, said) = against(&node, &admin, &["queue", "delete", &id, "--json"]);
    assert_eq!(code, 0, "{said}");
    let outcomes: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes[0]["outcome"], "done", "{outcomes}");

    let (code, out, _) = against(&node, &admin, &["queue", "hold", &id]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("refused {id}: ")) && out.contains("not in the queue"),
        "{out}"
    );
    let actions: Vec<(String, String)> = node
        .events("api.action")
        .iter()
        .filter(|e| e["message_id"] == id.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["event"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |a: &str, o: &str| (format!("queue.{a}"), o.to_string());
    assert_eq!(
        actions,
        [
            row("hold", "success"),
            row("release", "success"),
            row("retry", "success"),
            row("delete", "success"),
            row("hold", "failure"),
        ]
    );
}

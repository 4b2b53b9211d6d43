//! The audit trail of reads and identities, from outside: every read of a message's
//! preview, raw body or trace, and every search and export, is an `access.read` event
//! naming who read what, from where and why, committed before the answer; the status
//! pages go behind a token when `api.public_status = false`; the checkpoint signing
//! key lives outside the data directory and its rotation is on record.

mod common;

use std::time::{Duration, Instant};

use common::{Api, Node, Smtp};
use serde_json::{json, Value};

/// Quarantined by a local rule's score.
const FISHY: &str = "From: <carol@sender.test>\r\nTo: bob@example.test\r\nSubject: offer\r\n\
    Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <offer@sender.test>\r\n\r\n\
    This is a fishy offer.\r\n";

/// A node whose rule quarantines [`FISHY`], with `more` appended to its config.
fn quarantining_node(more: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    std::fs::write(
        &rules,
        "body LOCAL_FISHY /fishy offer/i\nscore LOCAL_FISHY 12.0\n",
    )
    .unwrap();
    let config = format!(
        "{}[scan]\nrules = [\"{}\"]\n{more}",
        common::held_delivery(),
        rules.display()
    );
    (Node::start_with("", &config), dir)
}

/// A new token of `role` named `name`.
fn token(api: &Api, name: &str, role: &str) -> String {
    let (status, body) = api.post_json("/v1/tokens", &json!({ "name": name, "role": role }));
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// The `access.read` events matching `query` (more filters, `&`-joined).
fn reads(api: &Api, query: &str) -> Vec<Value> {
    let (status, page) = api.get(&format!("/v1/events?type=access.read&limit=1000&{query}"));
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[test]
fn every_read_of_content_or_verdicts_is_on_record_with_who_where_and_why() {
    let (node, _rules) = quarantining_node("");
    let admin = Api::new(&node);
    let id = Smtp::ehlo(node.smtp)
        .send_message("carol@sender.test", &["bob@example.test"], FISHY)
        .queued_id();
    node.wait_message_event(&id, "message.quarantined", 1, Duration::from_secs(15));
    let operator = admin.with_token(&token(&admin, "olivia", "operator"));
    let auditor = admin.with_token(&token(&admin, "arthur", "auditor"));

    let siem = admin.with_token(&token(&admin, "splunk", "siem"));

    // Olivia previews it for a ticket, downloads it, reads its trace; the instants
    // between her reads are noted for the question "what did she read, and when".
    let (status, detail) = operator.get(&format!("/v1/quarantine/{id}?reason=ticket%2042"));
    assert_eq!(status, 200, "{detail}");
    assert!(detail["preview"]["text"].is_string(), "{detail}");
    let after_preview = instant_between_reads();
    let raw = operator.get_raw(&format!("/v1/quarantine/{id}/raw"));
    assert_eq!(raw.status(), 200);
    assert!(String::from_utf8_lossy(&raw.bytes().unwrap()).contains("fishy offer"));
    let after_raw = instant_between_reads();
    let (status, _) = operator.get(&format!("/v1/messages/{id}"));
    assert_eq!(status, 200);
    // The same preview again within the minute is covered by the first record.
    let (status, _) = operator.get(&format!("/v1/quarantine/{id}?reason=ticket%2042"));
    assert_eq!(status, 200);
    // Arthur sees the record without its content: a read of its verdict.
    let (status, detail) = auditor.get(&format!("/v1/quarantine/{id}"));
    assert_eq!(status, 200);
    assert!(detail["preview"]["withheld"].is_string(), "{detail}");
    // Arthur searches by a person, reads the message's events (its verdict, subject
    // and envelope) from the log, and exports the verdicts.
    let (status, _) = auditor.get("/v1/events?sender=carol@sender.test");
    assert_eq!(status, 200);
    let (status, page) = auditor.get(&format!("/v1/events?message_id={id}"));
    assert_eq!(status, 200);
    let verdict = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "message.quarantined")
        .unwrap_or_else(|| panic!("{page:#}"));
    assert_eq!(verdict["email"]["subject"], "offer");
    let export = auditor.get_raw("/v1/events/export?type=scan.verdict");
    assert_eq!(export.status(), 200);
    // The SIEM pulls the feed by sequence and type: the feed itself, not on record.
    let (status, page) = siem.get("/v1/events?after=0&type=scan.verdict&limit=10");
    assert_eq!(status, 200);
    assert_eq!(page["events"][0]["message_id"], id.as_str(), "{page:#}");

    // Who read message X: every read of it, kind, caller, address, reason; the
    // test's own wait for the quarantine and this question too, which read the log
    // about the message.
    let of_message = reads(&admin, &format!("message_id={id}"));
    let seen: Vec<(String, String, Value, Value)> = of_message
        .iter()
        .map(|e| {
            (
                e["user"]["name"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
                e["event"]["reason"].clone(),
                e["query"].clone(),
            )
        })
        .collect();
    let asked = |query: &str| json!(format!("events?{query}"));
    assert_eq!(
        seen,
        vec![
            (
                "admin".into(),
                "trace".into(),
                Value::Null,
                asked(&format!("message_id={id}"))
            ),
            (
                "olivia".into(),
                "preview".into(),
                json!("ticket 42"),
                Value::Null
            ),
            ("olivia".into(), "raw".into(), Value::Null, Value::Null),
            ("olivia".into(), "trace".into(), Value::Null, Value::Null),
            ("arthur".into(), "trace".into(), Value::Null, Value::Null),
            (
                "arthur".into(),
                "trace".into(),
                Value::Null,
                asked(&format!("message_id={id}"))
            ),
            (
                "admin".into(),
                "trace".into(),
                Value::Null,
                asked(&format!("type=access.read&message_id={id}"))
            ),
        ],
        "{of_message:#?}"
    );
    for e in &of_message {
        assert_eq!(e["source"]["ip"], "127.0.0.1", "{e}");
        assert_eq!(e["message_id"], id.as_str());
    }

    // What did Arthur read: his reads, searches and exports, nothing of Olivia's.
    let arthur = reads(&admin, "user=arthur");
    let done: Vec<(&str, &Value)> = arthur
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), &e["query"]))
        .collect();
    assert_eq!(
        done,
        [
            ("trace", &Value::Null),
            ("search", &asked("sender=carol@sender.test")),
            ("trace", &asked(&format!("message_id={id}"))),
            ("export", &json!("events/export?type=scan.verdict")),
        ],
        "{arthur:#?}"
    );
    assert!(arthur.iter().all(|e| e["user"]["name"] == "arthur"));
    // The SIEM's pull of the feed left nothing on record.
    assert!(reads(&admin, "user=splunk").is_empty());

    // What did Olivia read between two instants ("in March"): her download, not
    // the preview before it nor the trace after it.
    let between = reads(
        &admin,
        &format!("user=olivia&since={after_preview}&until={after_raw}"),
    );
    let kinds: Vec<&str> = between
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["raw"], "{between:#?}");
    assert_eq!(between[0]["message_id"], id.as_str());

    // A reason too long is refused, and nothing is read or recorded.
    let long = "x".repeat(1025);
    let (status, body) = operator.get(&format!("/v1/quarantine/{id}/raw?reason={long}"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(reads(&admin, &format!("message_id={id}")).len(), 7);
    // A read of nothing (no such message) records nothing either.
    let missing = "0000000000000000000000000A";
    let (status, _) = operator.get(&format!("/v1/quarantine/{missing}"));
    assert_eq!(status, 404);
    assert!(reads(&admin, &format!("message_id={missing}&user=olivia")).is_empty());
}

/// An RFC 3339 instant after the reads made so far and before the next one, so that
/// a time range can fall between two reads.
fn instant_between_reads() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    bulwark_storage::event::rfc3339(now.as_millis() as i64)
}

#[test]
fn the_status_pages_ask_for_a_token_when_they_are_not_public() {
    let open = Node::start("");
    for path in ["/metrics", "/v1/cluster"] {
        let status = reqwest::blocking::get(Api::new(&open).url(path))
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path} is public by default");
    }

    let mut node = Node::start("");
    node.terminate(Duration::from_secs(30));
    let config = node.dir().join("bulwark.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[api]\n", "[api]\npublic_status = false\n", 1);
    std::fs::write(&config, text).unwrap();
    node.restart();
    let admin = Api::new(&node);
    let prometheus = token(&admin, "prometheus", "metrics");
    let client = reqwest::blocking::Client::new();
    for path in ["/metrics", "/v1/cluster"] {
        let anonymous = client.get(admin.url(path)).send().unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let scraped = client
            .get(admin.url(path))
            .bearer_auth(&prometheus)
            .send()
            .unwrap();
        assert_eq!(scraped.status(), 200, "{path}");
        let text = scraped.text().unwrap();
        assert!(
            text.contains("bulwark_") || text.contains("leader_id"),
            "{path}: {text}"
        );
    }
    // The metrics role reads nothing else.
    let metrics = admin.with_token(&prometheus);
    for path in ["/v1/events", "/v1/quarantine", "/v1/tokens"] {
        let (status, body) = metrics.get(path);
        assert_eq!(status, 403, "{path}: {body}");
    }
    // Health stays open for load balancers.
    let health = client.get(admin.url("/readyz")).send().unwrap();
    assert_eq!(health.status(), 200);
}

/// Waits for `n` events of type `kind` and returns them.
fn wait_for(api: &Api, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = api.get(&format!("/v1/events?type={kind}&limit=1000"));
        assert_eq!(status, 200, "{page}");
        let found = page["events"].as_array().unwrap().clone();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} {kind} events, not {n}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_signing_key_lives_apart_and_its_rotation_is_on_record_and_pinned() {
    let keys = tempfile::tempdir().unwrap();
    let (first, second) = (
        keys.path().join("first.key"),
        keys.path().join("second.key"),
    );
    let audit = |key: &std::path::Path, previous: Option<&std::path::Path>| {
        let mut section = format!(
            "[audit]\ncheckpoint_secs = 1\nsigning_key_file = \"{}\"\n",
            key.display()
        );
        if let Some(previous) = previous {
            section += &format!("previous_signing_key_file = \"{}\"\n", previous.display());
        }
        section
    };
    let mut node = Node::start_with("", &(common::held_delivery() + &audit(&first, None)));
    let api = Api::new(&node);
    // The key was made where configured, not in the data directory.
    assert!(first.is_file());
    assert!(!node.data_dir().join("audit-signing.key").exists());
    assert!(!node.log().contains("kept in the data directory"));
    let enrolled = wait_for(&api, "audit.key_rotated", 1);
    assert_eq!(enrolled[0]["signer"]["node"], 1);
    assert_eq!(enrolled[0]["signer"]["previous"], Value::Null);
    let first_key = enrolled[0]["signer"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = api.post_json("/v1/notes", &json!({ "text": "before" }));
    assert_eq!(status, 201);
    let signed = wait_for(&api, "audit.checkpoint", 1);
    assert_eq!(signed[0]["checkpoint"]["public_key"], first_key.as_str());

    // Rotated: the new key, endorsed by the old one, trusted from its event on.
    node.terminate(Duration::from_secs(30));
    let config = node.dir().join("bulwark.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&audit(&first, None), &audit(&second, Some(&first)));
    std::fs::write(&config, text).unwrap();
    node.restart();
    let api = Api::new(&node);
    let rotated = wait_for(&api, "audit.key_rotated", 2);
    let r = &rotated[1]["signer"];
    assert_eq!(r["previous"], first_key.as_str(), "{r}");
    assert_eq!(r["endorsed"], true, "{r}");
    let second_key = r["public_key"].as_str().unwrap().to_string();
    assert_ne!(second_key, first_key);
    let (status, _) = api.post_json("/v1/notes", &json!({ "text": "after" }));
    assert_eq!(status, 201);
    let signed = wait_for(&api, "audit.checkpoint", 2);
    let last = signed.last().unwrap();
    assert_eq!(last["checkpoint"]["public_key"], second_key.as_str());
    let (status, report) = api.get("/v1/events/verify");
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    let signers = report["signers"].as_array().unwrap();
    assert_eq!(signers.len(), 2, "{report}");
}

#[test]
fn a_signing_key_inside_the_data_directory_is_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        "[node]\nid = 1\ndata_dir = \"data\"\n\n[smtp]\nhostname = \"mx.example.test\"\n\n\
         [audit]\nsigning_key_file = \"data/keys/signing.key\"\n\
         previous_signing_key_file = \"missing.key\"\n",
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
    assert!(
        text.contains("must be outside the data directory"),
        "{text}"
    );
    assert!(text.contains("missing.key) is not a file"), "{text}");
}

/// `bulwark` run with `args`: its exit code and what it printed on stdout.
fn bulwark(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bundle_of_a_message_verifies_offline_and_shows_any_edit() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signing.key");
    let (node, _rules) = quarantining_node(&format!(
        "[audit]\ncheckpoint_secs = 1\nsigning_key_file = \"{}\"\n",
        key.display()
    ));
    let admin = Api::new(&node);
    let id = Smtp::ehlo(node.smtp)
        .send_message("carol@sender.test", &["bob@example.test"], FISHY)
        .queued_id();
    node.wait_message_event(&id, "message.quarantined", 1, Duration::from_secs(15));
    let (status, _) = admin.post_json("/v1/notes", &json!({ "text": "after the message" }));
    assert_eq!(status, 201);
    let signer = wait_for(&admin, "audit.key_rotated", 1)[0]["signer"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // A checkpoint after the message's last event.
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = node.message_events(&id).last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    while wait_for(&admin, "audit.checkpoint", 1)
        .iter()
        .all(|c| c["checkpoint"]["seq"].as_u64().unwrap() < last)
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint after event {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let token_file = keys.path().join("auditor.token");
    std::fs::write(&token_file, token(&admin, "auditor-anna", "auditor")).unwrap();
    let file = keys.path().join("evidence.json");
    let (code, _, err) = bulwark(&[
        "audit",
        "bundle",
        "--api",
        &admin.url(""),
        "--token-file",
        token_file.to_str().unwrap(),
        "--message",
        &id,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    // Checked elsewhere: with no node, no data directory.
    let path = file.to_str().unwrap();
    let (code, out, err) = bulwark(&["audit", "verify", "--bundle", path]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["selected"].as_u64().unwrap() >= 3, "{report}");
    assert!(
        report["covered_through"].as_u64().unwrap() >= last,
        "{report}"
    );
    let pinned = format!("1:{signer}");
    let (code, _, _) = bulwark(&[
        "audit",
        "verify",
        "--bundle",
        path,
        "--trusted-signer",
        &pinned,
    ]);
    assert_eq!(code, Some(0));
    let other = format!("1:{}", "ab".repeat(32));
    let (code, out, _) = bulwark(&[
        "audit",
        "verify",
        "--bundle",
        path,
        "--trusted-signer",
        &other,
    ]);
    assert_eq!(code, Some(1), "{out}");
    // The bundle holds the message's events, as the API shows them.
    let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let selected: Vec<u64> = bundle["selected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let of_message: Vec<u64> = node
        .message_events(&id)
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() <= last)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(selected, of_message);
    // The fetch is on record as a read by the auditor.
    let recorded = reads(&admin, "user=auditor-anna");
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["kind"], "export");
    assert_eq!(recorded[0]["message_id"], id.as_str());

    // Any edit shows: the verdict's action in the readable JSON, or an event removed.
    let mut edited = bundle.clone();
    let verdict = edited["events"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["event"]["type"] == "scan.verdict")
        .unwrap();
    verdict["event"]["action"] = "deliver".into();
    std::fs::write(&file, edited.to_string()).unwrap();
    let (code, out, _) = bulwark(&["audit", "verify", "--bundle", path]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("differs"), "{out}");
    let mut shortened = bundle.clone();
    shortened["events"].as_array_mut().unwrap().remove(1);
    std::fs::write(&file, shortened.to_string()).unwrap();
    let (code, out, _) = bulwark(&["audit", "verify", "--bundle", path]);
    assert_eq!(code, Some(1), "{out}");
    std::fs::write(&file, "not json").unwrap();
    let (code, _, err) = bulwark(&["audit", "verify", "--bundle", path]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn the_bootstrap_admin_is_named_and_its_file_stays_a_named_break_glass_token() {
    let node = Node::start("");
    let admin = Api::new(&node);
    let created = wait_for(&admin, "token.created", 1);
    assert_eq!(created[0]["token"]["name"], "admin");
    assert_eq!(created[0]["user"]["name"], "bootstrap");
    let (status, _) = admin.post_json("/v1/notes", &json!({ "text": "as admin" }));
    assert_eq!(status, 201);
    let olivia = admin.with_token(&token(&admin, "olivia", "admin"));
    // The replicated bootstrap admin revoked: the node's own file still lets its
    // operator in, on this node, under a name that says which file it was.
    let (status, body) = olivia.delete("/v1/tokens/admin");
    assert_eq!(status, 200, "{body}");
    let (status, _) = admin.post_json("/v1/notes", &json!({ "text": "break glass" }));
    assert_eq!(status, 201);
    let notes = wait_for(&admin, "audit.note", 2);
    let by: Vec<&str> = notes
        .iter()
        .map(|n| n["user"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["admin", "admin@node1"]);
}

#[test]
fn a_token_name_is_given_once_and_never_one_the_system_acts_under() {
    let node = Node::start("");
    let admin = Api::new(&node);
    // The names the log gives the system for what it did by itself.
    let enrolled = wait_for(&admin, "token.created", 1);
    assert_eq!(enrolled[0]["user"]["name"], "bootstrap");
    let seeded = wait_for(&admin, "policy.changed", 1);
    assert_eq!(seeded[0]["user"]["name"], "config@node1");
    for (name, status, says) in [
        ("admin", 409, "bootstrap admin"),
        ("ADMIN", 409, "bootstrap admin"),
        ("bootstrap", 409, "what it does by itself"),
        ("Retention", 409, "what it does by itself"),
        ("config@node1", 400, "A-Z a-z 0-9"),
    ] {
        let (got, problem) =
            admin.post_json("/v1/tokens", &json!({ "name": name, "role": "siem" }));
        assert_eq!(got, status, "{name}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{name}: {problem}");
    }

    // A revoked token's name stays its own.
    token(&admin, "splunk", "siem");
    let (status, body) = admin.delete("/v1/tokens/splunk");
    assert_eq!(status, 200, "{body}");
    let (status, problem) =
        admin.post_json("/v1/tokens", &json!({ "name": "splunk", "role": "admin" }));
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("a revoked token had that name: splunk"),
        "{problem}"
    );
    let (_, listed) = admin.get("/v1/tokens");
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");
    // On record as a refused creation; the name in the log is the first token only.
    let refusals = wait_for(&admin, "api.action", 1);
    let refused = refusals
        .iter()
        .find(|e| e["action"] == "token.create")
        .unwrap_or_else(|| panic!("{refusals:#?}"));
    assert_eq!(refused["event"]["outcome"], "failure", "{refused}");
    assert_eq!(refused["user"]["name"], "admin", "{refused}");
    let created = wait_for(&admin, "token.created", 2);
    let names: Vec<(&str, &str)> = created
        .iter()
        .map(|e| {
            (
                e["token"]["name"].as_str().unwrap(),
                e["token"]["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("admin", "admin"), ("splunk", "siem")]);
}

/// Delivered (held at the next hop): no rule quarantines it.
const LUNCH: &str = "From: <gina@sender.test>\r\nTo: bob@example.test\r\nSubject: lunch\r\n\
    Date: Sat, 28 Nov 2026 08:00:00 +0000\r\nMessage-ID: <lunch@sender.test>\r\n\r\n\
    See you at noon.\r\n";

/// Every event after `after`, in order.
fn events_after(api: &Api, mut after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (status, page) = api.get(&format!("/v1/events?after={after}&limit=1000"));
        assert_eq!(status, 200, "{page}");
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

#[test]
fn every_change_made_through_the_api_carries_one_marker_and_the_callers_name() {
    let (node, _rules) = quarantining_node("");
    let admin = Api::new(&node);
    let send = |from: &str, body: &str| {
        Smtp::ehlo(node.smtp)
            .send_message(from, &["bob@example.test"], body)
            .queued_id()
    };
    let quarantined = [
        "carol@sender.test",
        "dave@sender.test",
        "erin@one.test",
        "frank@two.test",
    ]
    .map(|from| send(from, FISHY));
    for id in &quarantined {
        node.wait_message_event(id, "message.quarantined", 1, Duration::from_secs(15));
    }
    let [released, deleted, _, _] = &quarantined;
    let queued = send("gina@sender.test", LUNCH);
    let marta = admin.with_token(&token(&admin, "marta", "admin"));
    let start = events_after(&admin, 0).last().unwrap()["seq"]
        .as_u64()
        .unwrap();

    // Every mutating route, once.
    let ok = |(status, body): (u16, Value), want: u16| assert_eq!(status, want, "{body}");
    ok(
        marta.post_json("/v1/notes", &json!({ "text": "review" })),
        201,
    );
    let temp = json!({ "name": "temp-siem", "role": "siem" });
    ok(marta.post_json("/v1/tokens", &temp), 201);
    ok(marta.delete("/v1/tokens/temp-siem"), 200);
    let (_, current) = marta.get("/v1/policy");
    let mut policy = current["policy"].clone();
    policy["tag_score"] = json!(4.5);
    let change =
        json!({ "base_version": current["version"], "policy": policy, "reason": "tighter" });
    ok(marta.put_json("/v1/policy", &change), 200);
    ok(
        marta.post(&format!("/v1/bayes/ham?message_id={queued}")),
        200,
    );
    let reason = json!({ "reason": "reviewed" });
    ok(
        marta.post_json(&format!("/v1/quarantine/{released}/release"), &reason),
        200,
    );
    ok(
        marta.delete(&format!("/v1/quarantine/{deleted}?reason=spam")),
        200,
    );
    ok(
        marta.post_json("/v1/quarantine/release?sender=erin@one.test", &reason),
        200,
    );
    ok(
        marta.post_json("/v1/quarantine/delete?sender=frank@two.test", &reason),
        200,
    );
    for action in ["hold", "release", "retry"] {
        ok(marta.post(&format!("/v1/queue/{queued}/{action}")), 200);
    }
    ok(marta.delete(&format!("/v1/queue/{queued}")), 200);
    ok(
        marta.post_json("/v1/backup", &json!({ "name": "review" })),
        200,
    );
    // Membership changes a one-node cluster refuses: on record all the same.
    let member = json!({ "id": 1, "addr": "127.0.0.1:7001" });
    ok(marta.post_json("/v1/cluster/members", &member), 409);
    ok(marta.post("/v1/cluster/members/1/promote"), 409);
    ok(marta.delete("/v1/cluster/members/1"), 409);

    // One rule, event.provider = "api", sees each of them, with Marta's name.
    let after = events_after(&admin, start);
    let marked: Vec<&Value> = after
        .iter()
        .filter(|e| e["event"]["provider"] == "api")
        .collect();
    let seen: Vec<(&str, &Value)> = marked
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), &e["event"]["action"]))
        .collect();
    let did = |kind: &'static str, action: &str| (kind, json!(action));
    let want = [
        ("audit.note", Value::Null),
        did("token.created", "token.create"),
        did("token.revoked", "token.revoke"),
        did("policy.changed", "policy.change"),
        did("bayes.trained", "learn"),
        did("quarantine.released", "quarantine.release"),
        did("quarantine.deleted", "quarantine.delete"),
        did("quarantine.released", "quarantine.release"),
        did("quarantine.deleted", "quarantine.delete"),
        did("api.action", "queue.hold"),
        did("api.action", "queue.release"),
        did("api.action", "queue.retry"),
        did("api.action", "queue.delete"),
        did("api.action", "node.backup"),
        did("api.action", "cluster.add_learner"),
        did("api.action", "cluster.promote"),
        did("api.action", "cluster.remove"),
    ];
    let want: Vec<(&str, &Value)> = want.iter().map(|(k, a)| (*k, a)).collect();
    assert_eq!(seen, want, "{marked:#?}");
    for e in &marked {
        assert_eq!(e["user"]["name"], "marta", "{e}");
        assert_eq!(e["source"]["ip"], "127.0.0.1", "{e}");
    }
    // Nothing else Marta did is unmarked but her reads; what the system did by
    // itself is not marked.
    for e in &after {
        if e["user"]["name"] == "marta" && e["event"]["provider"] != "api" {
            assert_eq!(e["type"], "access.read", "{e}");
        }
    }
    let system: Vec<Value> = events_after(&admin, 0)
        .into_iter()
        .filter(|e| {
            ["bootstrap", "config@node1"].contains(&e["user"]["name"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(system.len(), 2, "{system:#?}");
    assert!(
        system.iter().all(|e| e["event"]["provider"].is_null()),
        "{system:#?}"
    );
}

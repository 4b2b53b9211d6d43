//! The policy as replicated, versioned cluster state, seen from outside: seeded from
//! the first node's `[policy]`, changed over the API and the `bulwark policy` commands
//! without a restart, each change a `policy.changed` event with who, from where, why
//! and the diff, each verdict naming the version it was judged under; a stale base
//! version refused (409), an invalid policy refused with every problem (422), roles
//! enforced, and a node whose file differs judging by the cluster's and saying so.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Api, Node, Smtp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);
/// How soon a committed version must judge the next message.
const SWAP: Duration = Duration::from_secs(1);

fn start(policy: &str) -> Node {
    Node::start_with(
        "domains = [\"example.test\"]\n",
        &format!("{}\n[policy]\n{policy}\n", common::held_delivery()),
    )
}

/// The cluster's current policy once it has one.
fn current(api: &Api) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api.get("/v1/policy");
        if status == 200 {
            return body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "no policy seeded: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the node judges by `version` (its `bulwark_policy_version` metric).
fn judging(node: &Node, version: u64) {
    let deadline = Instant::now() + WAIT;
    let want = format!("\nbulwark_policy_version {version}\n");
    loop {
        let metrics = reqwest::blocking::get(format!("{}/metrics", node.api))
            .unwrap()
            .text()
            .unwrap();
        if metrics.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not judging by version {version}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(node: &Node, from: &str) -> common::Reply {
    Smtp::ehlo(node.smtp).send_message(
        from,
        &["bob@example.test"],
        &format!("From: {from}\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"),
    )
}

/// The verdict recorded about the message `reply` accepted.
fn verdict(node: &Node, reply: &common::Reply) -> Value {
    let id = reply.queued_id();
    node.message_events(&id)
        .into_iter()
        .find(|e| e["type"] == "scan.verdict")
        .unwrap_or_else(|| panic!("no verdict for {id}"))
}

/// Sends from `from` until the node rejects it; how long that took.
fn until_rejected(node: &Node, from: &str) -> Duration {
    let started = Instant::now();
    loop {
        let reply = send(node, from);
        if reply.code == 554 {
            return started.elapsed();
        }
        assert_eq!(reply.code, 250, "{}", reply.text());
        assert!(started.elapsed() < WAIT, "never rejected");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with(policy: &Value, key: &str, value: Value) -> Value {
    let mut policy = policy.clone();
    policy[key] = value;
    policy
}

#[test]
fn the_policy_is_seeded_changed_without_restart_and_every_verdict_names_its_version() {
    let node = start("tag_score = 6.0");
    let api = Api::new(&node);
    let first = current(&api);
    assert_eq!(first["version"], 1, "{first}");
    assert_eq!(first["by"], "config@node1");
    assert_eq!(first["policy"]["tag_score"], 6.0);
    // Every default is written out: the version says exactly what it decides.
    assert_eq!(first["policy"]["reject_score"], 20.0);
    assert_eq!(first["policy"]["block"], json!([]));
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    judging(&node, 1);
    assert_eq!(current(&api)["judging"], 1);

    let before = send(&node, "alice@sender.test");
    assert_eq!(before.code, 250, "{}", before.text());
    assert_eq!(verdict(&node, &before)["policy_version"], 1);
    let (_, trace) = api.get(&format!("/v1/messages/{}", before.queued_id()));
    assert_eq!(trace["verdict"]["policy_version"], 1, "{trace}");

    let blocked = with(&first["policy"], "block", json!(["alice@sender.test"]));
    let (status, changed) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 1, "policy": blocked, "reason": "phishing wave" }),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["version"].as_u64(), changed["changed"].as_bool()),
        (Some(2), Some(true))
    );
    let took = until_rejected(&node, "alice@sender.test");
    assert!(took < SWAP, "judged by the new version after {took:?}");
    let verdicts = node.events("scan.verdict");
    let last = verdicts.last().unwrap();
    assert_eq!(last["policy_version"], 2, "{last}");
    assert_eq!(last["event"]["reason"], "block-listed: alice@sender.test");
    assert_eq!(send(&node, "carol@sender.test").code, 250);

    let changes = node.events("policy.changed");
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(changes[0]["user"]["name"], "config@node1");
    assert!(changes[0]["policy"]["diff"]
        .as_array()
        .unwrap()
        .contains(&json!("tag_score: (unset) -> 6.0")));
    let second = &changes[1];
    assert_eq!(second["policy"]["version"], 2);
    assert_eq!(second["user"]["name"], "admin");
    assert_eq!(second["source"]["ip"], "127.0.0.1");
    assert_eq!(second["event"]["reason"], "phishing wave");
    assert_eq!(
        second["policy"]["diff"],
        json!([r#"block: + "alice@sender.test""#])
    );

    let (_, history) = api.get("/v1/policy/history");
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(history[1]["hash"], second["policy"]["hash"]);
    let (status, old) = api.get("/v1/policy?version=1");
    assert_eq!((status, &old["policy"]["block"]), (200, &json!([])));
    assert_eq!(api.get("/v1/policy?version=3").0, 404);
    assert_eq!(api.get("/v1/policy?version=x").0, 400);
    assert!(node
        .log()
        .contains("judging by the cluster's policy version 2"));
}

#[test]
fn concurrent_changes_from_one_base_one_wins_and_bad_policies_are_refused_whole() {
    let node = start("");
    let api = Api::new(&node);
    let base = current(&api);
    let attempts: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [3.0, 4.0]
            .into_iter()
            .map(|tag| {
                let api = &api;
                let policy = with(&base["policy"], "tag_score", json!(tag));
                scope.spawn(move || {
                    api.put_json(
                        "/v1/policy",
                        &json!({ "base_version": 1, "policy": policy, "reason": format!("tag at {tag}") }),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = attempts.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{attempts:#?}");
    let (_, lost) = attempts.iter().find(|(s, _)| *s == 409).unwrap();
    assert!(
        lost["detail"]
            .as_str()
            .unwrap()
            .starts_with("the policy has changed since the base version"),
        "{lost}"
    );
    let now = current(&api);
    assert_eq!(now["version"], 2);
    let winner = attempts.iter().find(|(s, _)| *s == 200).unwrap();
    assert_eq!(winner.1["version"], 2);
    assert_eq!(
        now["reason"],
        format!("tag at {}", now["policy"]["tag_score"].as_f64().unwrap())
    );
    assert_eq!(node.events("policy.changed").len(), 2);

    // Every problem at once, and nothing changed.
    let bad = json!({
        "tag_score": 30.0,
        "malware": "deliver",
        "allow": ["not an entry!"],
        "recipients": { "nobody": {} },
    });
    let (status, problem) =
        api.put_json("/v1/policy", &json!({ "base_version": 2, "policy": bad }));
    assert_eq!(status, 422, "{problem}");
    let errors: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors.iter().any(|e| e.starts_with("policy.malware")));
    let (status, problem) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 2, "policy": { "tag_scor": 3.0 } }),
    );
    assert_eq!(status, 422);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("unknown field `tag_scor`"));
    let (status, _) = api.post_json(
        "/v1/policy/simulate",
        &json!({ "policy": {}, "after": 9_223_372_036_854_775_808_u64 }),
    );
    assert_eq!(status, 400);
    for body in [
        json!({ "base_version": 9_223_372_036_854_775_808_u64, "policy": {} }),
        json!({ "policy": {} }),
        json!({ "base_version": 2, "policy": {}, "reason": "x".repeat(1025) }),
        json!({ "base_version": 2, "policy": {}, "extra": 1 }),
    ] {
        assert_eq!(api.put_json("/v1/policy", &body).0, 400, "{body}");
    }
    // The same policy again: no new version.
    let (status, same) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 2, "policy": now["policy"] }),
    );
    assert_eq!((status, same["changed"].as_bool()), (200, Some(false)));
    assert_eq!(current(&api)["version"], 2);
    assert_eq!(node.events("policy.changed").len(), 2);
}

#[test]
fn admins_change_operators_change_lists_only_and_auditors_and_siems_read() {
    let node = start("");
    let admin = Api::new(&node);
    let base = current(&admin);
    let token = |name: &str, role: &str| {
        let (status, made) = admin.post_json("/v1/tokens", &json!({ "name": name, "role": role }));
        assert_eq!(status, 201, "{made}");
        admin.with_token(made["token"].as_str().unwrap())
    };
    let operator = token("desk", "operator");
    let auditor = token("audit", "auditor");
    let siem = token("splunk", "siem");
    let metrics = token("prom", "metrics");
    for reader in [&auditor, &siem, &operator] {
        assert_eq!(reader.get("/v1/policy").0, 200);
        assert_eq!(reader.get("/v1/policy/history").0, 200);
    }
    assert_eq!(metrics.get("/v1/policy").0, 403);
    assert_eq!(admin.with_token("nonsense").get("/v1/policy").0, 401);

    let listed = with(&base["policy"], "allow", json!(["partner.test"]));
    let change = |api: &Api, policy: &Value, version: u64| {
        api.put_json(
            "/v1/policy",
            &json!({ "base_version": version, "policy": policy, "reason": "desk ticket 42" }),
        )
    };
    for outsider in [&auditor, &siem] {
        assert_eq!(change(outsider, &listed, 1).0, 403);
    }
    let (status, done) = change(&operator, &listed, 1);
    assert_eq!(status, 200, "{done}");
    let looser = with(&listed, "tag_score", json!(9.0));
    let (status, refused) = change(&operator, &looser, 2);
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("tag_score"),
        "{refused}"
    );
    assert_eq!(change(&admin, &looser, 2).0, 200);
    let by: Vec<String> = node
        .events("policy.changed")
        .iter()
        .map(|e| e["user"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(by, ["config@node1", "desk", "admin"]);
}

#[test]
fn a_node_whose_file_differs_judges_by_the_clusters_policy_and_says_so() {
    let mut node = start("tag_score = 6.0");
    let api = Api::new(&node);
    let base = current(&api);
    let blocked = with(&base["policy"], "block", json!(["alice@sender.test"]));
    let (status, body) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 1, "policy": blocked, "reason": "block alice" }),
    );
    assert_eq!(status, 200, "{body}");
    node.terminate(WAIT);
    let config = node.dir().join("bulwark.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("tag_score = 6.0", "reject_score = 15.0"),
    )
    .unwrap();
    node.restart();
    let api = Api::new(&node);
    assert_eq!(current(&api)["version"], 2);
    // Judged by the cluster's version from the first message, before any poll.
    let reply = send(&node, "alice@sender.test");
    assert_eq!(reply.code, 554, "{}", reply.text());
    let log = node.log();
    assert!(
        log.contains("this node's [policy] differs from the cluster's policy version 2"),
        "{}",
        common::tail(&log, 30)
    );
    assert!(log.contains("reject_score"), "the differences are named");
    assert_eq!(node.events("policy.changed").len(), 2, "nothing re-seeded");
}

fn bulwark(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bulwark_policy_reads_diffs_applies_and_rolls_back_over_the_api() {
    let node = start("tag_score = 6.0");
    let api = Api::new(&node);
    current(&api);
    let token_file = node.data_dir().join("admin.token");
    let remote = |command: &str, more: &[&str]| {
        let mut args = vec![
            "policy",
            command,
            "--api",
            &node.api,
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        bulwark(&args)
    };
    let (code, printed, err) = remote("get", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        printed.starts_with("# The cluster's policy version 1, by config@node1"),
        "{printed}"
    );
    assert!(printed.contains("[policy]\ntag_score = 6.0\n"), "{printed}");

    // The printed section, edited, is the next version.
    let file = node.dir().join("policy.toml");
    let edited = printed.replace("block = []", "block = [\"alice@sender.test\"]");
    assert_ne!(edited, printed);
    std::fs::write(&file, &edited).unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = remote("diff", &["--file", path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(r#"block: + "alice@sender.test""#), "{out}");
    let (code, out, err) = remote("apply", &["--file", path, "--reason", "ticket 7"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("the cluster's policy is version 2 now"),
        "{out}"
    );
    assert!(until_rejected(&node, "alice@sender.test") < SWAP);
    let (code, out, _) = remote("diff", &["--file", path]);
    assert_eq!((code, out.trim()), (0, "no difference from version 2"));
    // A node's whole config file is read as the policy it would seed: its
    // `[[siem.exporters]]` too, the other sections ignored.
    let config = node.dir().join("node.toml");
    std::fs::write(
        &config,
        "[api]\nlisten = \"127.0.0.1:1\"\n[policy]\ntag_score = 6.0\n\
         block = [\"alice@sender.test\"]\n[[siem.exporters]]\nname = \"soc\"\n\
         kind = \"syslog\"\naddress = \"127.0.0.1:6514\"\n",
    )
    .unwrap();
    let (code, out, err) = remote("diff", &["--file", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.trim(),
        "changes from version 2:\n  exporters: + \"soc\""
    );

    // A stale base version is refused and says why.
    let (code, _, err) = remote(
        "apply",
        &["--file", path, "--reason", "x", "--base-version", "1"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("someone changed the policy meanwhile"),
        "{err}"
    );

    // A bad file: every problem, nothing sent.
    let bad = node.dir().join("bad.toml");
    std::fs::write(&bad, "[policy]\ntag_score = 30.0\nmalware = \"deliver\"\n").unwrap();
    let (code, _, err) = remote("apply", &["--file", bad.to_str().unwrap(), "--reason", "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("policy.malware") && err.contains("tag_score (30)"),
        "{err}"
    );
    let misspelled = node.dir().join("misspelled.json");
    std::fs::write(&misspelled, r#"{"policy": {"tag_scor": 1}}"#).unwrap();
    let (code, _, err) = remote("diff", &["--file", misspelled.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("tag_scor"), "{err}");

    let (code, out, err) = remote("rollback", &["--to", "1", "--reason", "false alarm"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"block: - "alice@sender.test""#), "{out}");
    assert!(out.contains("version 3 now"), "{out}");
    judging(&node, 3);
    let (code, out, _) = remote("history", &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("version 3") && out.contains("roll back to version 1: false alarm"),
        "{out}"
    );
    assert!(out.contains("by admin from 127.0.0.1  ticket 7"), "{out}");
    assert_eq!(send(&node, "alice@sender.test").code, 250);
}

/// A program attached: blocked content.
const PROGRAM: &str = "From: <erin@sender.test>\r\nTo: bob@example.test\r\nSubject: tool\r\n\
    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/plain\r\n\r\nrun this\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The message id a reply names: `queued as ID`, or a rejection's `(id ID)`.
fn id_of(reply: &common::Reply) -> String {
    match reply.code {
        250 => reply.queued_id(),
        _ => reply
            .text()
            .rsplit_once("(id ")
            .and_then(|(_, id)| id.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no id in {}", reply.text()))
            .to_string(),
    }
}

/// The action the node took on a message: its verdict's.
fn action_of(node: &Node, id: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = node
            .message_events(id)
            .into_iter()
            .find(|e| e["type"] == "scan.verdict")
        {
            return v["action"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no verdict for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_simulated_policy_predicts_exactly_what_it_does_to_the_same_messages_sent_again() {
    let node = start("");
    let api = Api::new(&node);
    current(&api);
    judging(&node, 1);
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // (envelope sender, From header, body): a clean message, one from a sender the
    // new policy blocks, a program, GTUBE from a sender whose From header alone the
    // new policy allows, GTUBE from elsewhere, and a message for the CEO.
    let messages: Vec<(&str, String, String)> = vec![
        (
            "alice@sender.test",
            "alice@sender.test".into(),
            "Hello.".into(),
        ),
        (
            "carol@sender.test",
            "carol@sender.test".into(),
            "Hello again.".into(),
        ),
        ("erin@sender.test", String::new(), PROGRAM.into()),
        (
            "bounce@lists.test",
            "news@partner.test".into(),
            GTUBE.into(),
        ),
        (
            "frank@sender.test",
            "frank@sender.test".into(),
            GTUBE.into(),
        ),
        (
            "gina@sender.test",
            "gina@sender.test".into(),
            "Quarterly figures.".into(),
        ),
    ];
    let send_all = || -> Vec<common::Reply> {
        messages
            .iter()
            .map(|(from, header_from, body)| {
                let content = match header_from.is_empty() {
                    true => body.clone(),
                    false => format!(
                        "From: {header_from}\r\nTo: bob@example.test\r\nSubject: s\r\n\r\n{body}\r\n"
                    ),
                };
                let to: &[&str] = match *from {
                    "gina@sender.test" => &["ceo@example.test"],
                    _ => &["bob@example.test"],
                };
                Smtp::ehlo(node.smtp).send_message(from, to, &content)
            })
            .collect()
    };
    let first: Vec<String> = send_all().iter().map(id_of).collect();
    let recorded: Vec<String> = first.iter().map(|id| action_of(&node, id)).collect();
    assert_eq!(
        recorded,
        [
            "deliver",
            "deliver",
            "quarantine",
            "reject",
            "reject",
            "deliver"
        ]
    );

    let base = current(&api)["policy"].clone();
    let mut proposed = base.clone();
    proposed["attachments"] = json!("reject");
    proposed["block"] = json!(["carol@sender.test"]);
    proposed["allow"] = json!(["partner.test"]);
    proposed["tag_score"] = json!(-100.0);
    proposed["recipients"] =
        json!({ "ceo@example.test": { "tag_score": -200.0, "quarantine_score": -100.0 } });
    let (status, answer) = api.post_json(
        "/v1/policy/simulate",
        &json!({ "policy": proposed, "since": since }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["judged"], 6, "{answer}");
    assert_eq!(answer["next"], Value::Null);
    assert_eq!(answer["without_header_from"], 0);
    let mut predicted = recorded.clone();
    for change in answer["changes"].as_array().unwrap() {
        for id in change["examples"].as_array().unwrap() {
            let i = first
                .iter()
                .position(|f| f == id.as_str().unwrap())
                .unwrap();
            assert_eq!(change["from"], recorded[i].as_str());
            predicted[i] = change["to"].as_str().unwrap().to_string();
        }
    }
    assert_eq!(
        predicted,
        ["tag", "reject", "reject", "deliver", "reject", "quarantine"],
        "{answer:#}"
    );
    assert_eq!(answer["changed"], 5);

    let (status, body) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 1, "policy": proposed, "reason": "as simulated" }),
    );
    assert_eq!(status, 200, "{body}");
    judging(&node, 2);
    let again: Vec<String> = send_all()
        .iter()
        .map(|reply| action_of(&node, &id_of(reply)))
        .collect();
    assert_eq!(again, predicted, "the same messages sent again");

    // What the simulation refuses.
    let (status, problem) = api.post_json(
        "/v1/policy/simulate",
        &json!({ "policy": { "tag_score": 50.0, "dmarc": "maybe" } }),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
    let (status, _) = api.post_json(
        "/v1/policy/simulate",
        &json!({ "policy": {}, "since": "yesterday" }),
    );
    assert_eq!(status, 400);
    let (_, made) = api.post_json("/v1/tokens", &json!({ "name": "splunk", "role": "siem" }));
    let siem = api.with_token(made["token"].as_str().unwrap());
    assert_eq!(
        siem.post_json("/v1/policy/simulate", &json!({ "policy": {} }))
            .0,
        403
    );
    // An empty range: nothing judged.
    let (status, none) = api.post_json(
        "/v1/policy/simulate",
        &json!({ "policy": {}, "since": "2030-01-01T00:00:00Z" }),
    );
    assert_eq!((status, &none["judged"]), (200, &json!(0)));
}

#[test]
fn rules_and_signatures_are_the_clusters_too_seeded_from_the_files_and_changed_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    std::fs::write(
        &rules,
        "body LOCAL_SEEDED /seeded-marker/\nscore LOCAL_SEEDED 6.0\n",
    )
    .unwrap();
    let node = Node::start_with(
        "domains = [\"example.test\"]\n",
        &format!(
            "{}\n[scan]\nrules = [\"{}\"]\n",
            common::held_delivery(),
            rules.display()
        ),
    );
    let api = Api::new(&node);
    let seeded = current(&api);
    assert_eq!(
        seeded["policy"]["rules"],
        json!([{ "name": "local.cf", "text": "body LOCAL_SEEDED /seeded-marker/\nscore LOCAL_SEEDED 6.0\n" }])
    );
    assert!(seeded["policy"]["blocked_extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("exe")));
    judging(&node, 1);
    let body = |marker: &str| {
        format!("From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: s\r\n\r\n{marker}\r\n")
    };
    let tagged = Smtp::ehlo(node.smtp).send_message(
        "alice@sender.test",
        &["bob@example.test"],
        &body("seeded-marker"),
    );
    assert_eq!(action_of(&node, &tagged.queued_id()), "tag");

    // A rule and a YARA signature through the API: the next messages are judged by
    // them, no restart.
    let mut changed = seeded["policy"].clone();
    changed["rules"][0]["text"] =
        json!("body LOCAL_SEEDED /seeded-marker/\nscore LOCAL_SEEDED 25.0\n");
    changed["yara_rules"] = json!([{ "name": "drop.yar", "text": "rule Policy_Dropper { strings: $a = \"policy-yara-marker\" condition: $a }" }]);
    // What-if first: a rule changed needs the messages read again, and says so.
    let (status, simulated) = api.post_json("/v1/policy/simulate", &json!({ "policy": changed }));
    assert_eq!(status, 200, "{simulated}");
    assert_eq!(simulated["needs_rescan"], json!(["rules", "yara_rules"]));
    let (status, body_of) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 1, "policy": changed, "reason": "raise the marker" }),
    );
    assert_eq!(status, 200, "{body_of}");
    let diff = &node.events("policy.changed")[1]["policy"]["diff"];
    assert_eq!(
        diff,
        &json!([
            r#"rules."local.cf".text: - "score LOCAL_SEEDED 6.0""#,
            r#"rules."local.cf".text: + "score LOCAL_SEEDED 25.0""#,
            r#"yara_rules: + "drop.yar""#,
        ])
    );
    judging(&node, 2);
    let rejected = send_body(&node, &body("seeded-marker"));
    assert_eq!(rejected.code, 554, "{}", rejected.text());
    assert!(rejected.text().contains("score"), "{}", rejected.text());
    let malware = send_body(&node, &body("policy-yara-marker"));
    assert_eq!(malware.code, 554, "{}", malware.text());
    assert!(
        malware.text().contains("Policy_Dropper"),
        "{}",
        malware.text()
    );

    // Broken rules are refused whole, with where they are broken.
    let mut broken = changed.clone();
    broken["rules"][0]["text"] = json!("score\n");
    broken["yara_rules"][0]["text"] = json!("rule {");
    let (status, problem) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 2, "policy": broken }),
    );
    assert_eq!(status, 422, "{problem}");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{problem}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .starts_with("policy.rules: local.cf:1:"),
        "{problem}"
    );
    assert!(
        errors[1]
            .as_str()
            .unwrap()
            .starts_with("policy.yara_rules: drop.yar:1:"),
        "{problem}"
    );
    assert_eq!(current(&api)["version"], 2);

    // A protected name (a VIP list) used by an outsider.
    let mut protected = changed.clone();
    protected["protected_names"] = json!(["Maria Chief"]);
    let (status, body_of) = api.put_json(
        "/v1/policy",
        &json!({ "base_version": 2, "policy": protected, "reason": "protect the CFO" }),
    );
    assert_eq!(status, 200, "{body_of}");
    judging(&node, 3);
    let impostor = Smtp::ehlo(node.smtp).send_message(
        "maria.chief@freemail.test",
        &["bob@example.test"],
        "From: Maria Chief <maria.chief@freemail.test>\r\nTo: bob@example.test\r\n\
         Subject: wire\r\n\r\nPay this today.\r\n",
    );
    let verdict = verdict(&node, &impostor);
    let symbols: Vec<&str> = verdict["scan"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(symbols.contains(&"PHISH_PROTECTED_NAME"), "{verdict}");
    assert_eq!(verdict["policy_version"], 3);
}

fn send_body(node: &Node, body: &str) -> common::Reply {
    Smtp::ehlo(node.smtp).send_message("alice@sender.test", &["bob@example.test"], body)
}

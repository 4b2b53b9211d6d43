//! Roles seen from outside: the admin creates tokens for an operator, an auditor and a
//! SIEM over HTTP; each is allowed what its role allows and refused the rest (403,
//! problem+json); actions are recorded under the token's name; a revoked token stops
//! working at once.

mod common;

use std::time::Duration;

use common::{Api, Node, Smtp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// A message with a Windows program attached: quarantined as blocked content.
const PROGRAM: &str = "From: <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: tool\r\n\
    Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <tool.2@sender.test>\r\n\
    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/plain\r\n\r\nrun this\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";

/// Creates a token; returns it.
fn create(admin: &Api, name: &str, role: &str) -> String {
    let (status, made) = admin.post_json("/v1/tokens", &json!({ "name": name, "role": role }));
    assert_eq!(status, 201, "{made}");
    assert_eq!(
        (made["name"].as_str(), made["role"].as_str()),
        (Some(name), Some(role))
    );
    let token = made["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("bwk_") && token.len() == 68, "{token}");
    token
}

/// The status of `method path` for `api`'s token.
fn status(api: &Api, method: &str, path: &str) -> u16 {
    match method {
        "GET" if path.contains("/export") => api.get_raw(path).status().as_u16(),
        "GET" => api.get(path).0,
        "DELETE" => api.delete(path).0,
        _ if path == "/v1/notes" => api.post_json(path, &json!({ "text": "checked" })).0,
        _ => api.post_json(path, &json!({ "reason": "checked" })).0,
    }
}

#[test]
fn roles_allow_what_they_should_refuse_the_rest_and_revocation_is_immediate() {
    let node = Node::start("");
    let admin = Api::new(&node);
    let mut s = Smtp::ehlo(node.smtp);
    let held = s
        .send_message("alice@sender.test", &["bob@example.test"], PROGRAM)
        .queued_id();
    node.wait_message_event(&held, "message.quarantined", 1, WAIT);

    let operator = admin.with_token(&create(&admin, "ops-desk", "operator"));
    let auditor = admin.with_token(&create(&admin, "audit.2026", "auditor"));
    let siem = admin.with_token(&create(&admin, "splunk", "siem"));

    // Bad requests for tokens.
    for (body, expected) in [
        (json!({ "name": "splunk", "role": "siem" }), 409),
        (json!({ "name": "x", "role": "root" }), 400),
        (json!({ "name": "admin", "role": "siem" }), 409),
        (json!({ "name": "Admin", "role": "siem" }), 409),
        (json!({ "name": "a b", "role": "siem" }), 400),
        (json!({ "name": "x" }), 400),
    ] {
        let (status, problem) = admin.post_json("/v1/tokens", &body);
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let (_, listed) = admin.get("/v1/tokens");
    let names: Vec<(&str, &str)> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("admin", "admin"),
            ("audit.2026", "auditor"),
            ("ops-desk", "operator"),
            ("splunk", "siem")
        ]
    );
    assert!(!listed.to_string().contains("bwk_"), "{listed}");

    // What each role may do (200/201) and may not (403); reads first.
    let quarantined = format!("/v1/quarantine/{held}");
    let reads = [
        ("GET", "/v1/events?limit=5".to_string()),
        ("GET", "/v1/events/verify".to_string()),
        ("GET", "/v1/events/export?type=token.created".to_string()),
        ("GET", "/v1/queue".to_string()),
        ("GET", format!("/v1/messages/{held}")),
        ("GET", "/v1/quarantine".to_string()),
        ("GET", quarantined.clone()),
        ("GET", "/v1/bayes".to_string()),
        ("POST", "/v1/notes".to_string()),
        ("GET", "/v1/tokens".to_string()),
    ];
    let expected: [(&Api, [u16; 10]); 3] = [
        (&siem, [200, 200, 200, 403, 403, 403, 403, 403, 403, 403]),
        (&auditor, [200, 200, 200, 200, 200, 200, 200, 200, 201, 403]),
        (
            &operator,
            [200, 200, 200, 200, 200, 200, 200, 200, 201, 403],
        ),
    ];
    for (api, statuses) in expected {
        let got: Vec<u16> = reads.iter().map(|(m, p)| status(api, m, p)).collect();
        assert_eq!(got, statuses, "{reads:?}");
    }
    // The auditor sees the metadata and the verdict, not what the message says.
    let (_, seen) = auditor.get(&quarantined);
    assert_eq!(seen["verdict"]["action"], "quarantine", "{seen}");
    assert!(seen["preview"]["withheld"].is_string(), "{seen}");
    assert_eq!(status(&auditor, "GET", &format!("{quarantined}/raw")), 403);
    let (_, seen) = operator.get(&quarantined);
    assert_eq!(
        seen["preview"]["attachments"][0]["name"], "setup.exe",
        "{seen}"
    );

    // Actions: refused to the auditor and the SIEM, done by the operator under its
    // own name.
    let release = format!("{quarantined}/release");
    for api in [&auditor, &siem] {
        let (code, problem) = api.post_json(&release, &json!({ "reason": "no" }));
        assert_eq!(code, 403, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("may not act"),
            "{problem}"
        );
    }
    assert_eq!(status(&operator, "POST", "/v1/tokens"), 403);
    // The membership is the admin's alone; a single node is its only voter.
    for api in [&operator, &auditor, &siem] {
        assert_eq!(status(api, "POST", "/v1/cluster/members"), 403);
        assert_eq!(status(api, "POST", "/v1/cluster/members/2/promote"), 403);
        assert_eq!(status(api, "DELETE", "/v1/cluster/members/1"), 403);
        assert_eq!(status(api, "POST", "/v1/backup"), 403);
    }
    // Backups too; a destination must be an absolute path on the node's machine.
    let (code, problem) = admin.post_json("/v1/backup", &json!({ "to": "backups/today" }));
    assert_eq!(code, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not an absolute path"),
        "{problem}"
    );
    let (code, problem) = admin.post_json("/v1/cluster/members/2/promote", &json!({}));
    assert_eq!(code, 404, "{problem}");
    let (code, problem) = admin.delete("/v1/cluster/members/1");
    assert_eq!(code, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("only voter"),
        "{problem}"
    );
    let (code, problem) =
        admin.post_json("/v1/cluster/members", &json!({ "id": 0, "addr": "x:1" }));
    assert_eq!(code, 400, "{problem}");
    // Linearizable reads on a single node: the node confirms its own leadership.
    let response = auditor.get_raw("/v1/queue?consistent=true");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().contains_key("bulwark-applied-index"));
    assert_eq!(status(&auditor, "GET", "/v1/queue?consistent=yes"), 400);
    let (code, done) = operator.post_json(&release, &json!({ "reason": "customer asked" }));
    assert_eq!(code, 200, "{done}");
    let released = node.wait_message_event(&held, "quarantine.released", 1, WAIT);
    assert_eq!(released[0]["user"]["name"], "ops-desk");
    let notes = node.events("audit.note");
    assert!(
        notes
            .iter()
            .any(|n| n["user"]["name"] == "audit.2026" && n["source"]["ip"] == "127.0.0.1"),
        "{notes:#?}"
    );

    // Revocation: at once, on record, and once.
    let (code, revoked) = admin.delete("/v1/tokens/audit.2026");
    assert_eq!(code, 200, "{revoked}");
    assert_eq!(status(&auditor, "GET", "/v1/events?limit=1"), 401);
    assert_eq!(admin.delete("/v1/tokens/audit.2026").0, 404);
    let created = node.events("token.created");
    assert_eq!(created.len(), 4);
    // The bootstrap admin first, then the three it made, under its name.
    assert_eq!(created[0]["token"]["name"], "admin");
    assert_eq!(created[0]["user"]["name"], "bootstrap");
    assert!(created[1..].iter().all(|e| e["user"]["name"] == "admin"));
    let revoked: Vec<Value> = node.events("token.revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["token"]["name"], "audit.2026");
    assert_eq!(revoked[0]["source"]["ip"], "127.0.0.1");
    let (_, page) = admin.get("/v1/events?limit=1000");
    assert!(
        !page.to_string().contains("bwk_"),
        "a token leaked into the event log"
    );

    // No token, a wrong one.
    assert_eq!(admin.with_token("bwk_nope").get("/v1/events").0, 401);
    // Who is calling is checked before what the call says: a stranger's malformed
    // release is a 401, not a 400 that would tell it the route's rules.
    let stranger = admin.with_token("bwk_nope");
    assert_eq!(stranger.post(&format!("{quarantined}/release")).0, 401);
    assert_eq!(stranger.post("/v1/quarantine/release").0, 401);
    assert_eq!(stranger.delete(&format!("{quarantined}?bogus=1")).0, 401);
}

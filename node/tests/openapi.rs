//! The OpenAPI document, seen from outside: served without a token, OpenAPI 3.1, and
//! true to the router. Every documented operation is routed (a request to it gets an
//! answer from its handler, not the router's own 404 or 405); the document holds
//! exactly the operations of the API; every path parameter is declared; the calls that
//! need no token say so and answer without one, the others name the bearer scheme;
//! every call a role can be refused declares its 403; every success declares the
//! schema of its body, every `$ref` resolves, and what each call really answers on a
//! node holding mail, a policy and tokens matches the schema it declares, field by
//! field.

mod common;

use std::collections::BTreeSet;

use common::{Api, Node};
use serde_json::Value;

/// Every operation of the API, as `METHOD path`.
const OPERATIONS: [&str; 42] = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/openapi.json",
    "GET /v1/cluster",
    "POST /v1/cluster/members",
    "DELETE /v1/cluster/members/{id}",
    "POST /v1/cluster/members/{id}/promote",
    "POST /v1/backup",
    "POST /v1/digest/run",
    "POST /v1/notes",
    "GET /v1/events",
    "GET /v1/events/verify",
    "GET /v1/audit/bundle",
    "GET /v1/events/export",
    "GET /v1/events/stream",
    "GET /v1/messages/{id}",
    "GET /v1/quarantine",
    "POST /v1/quarantine/release",
    "POST /v1/quarantine/delete",
    "GET /v1/quarantine/{id}",
    "DELETE /v1/quarantine/{id}",
    "GET /v1/quarantine/{id}/raw",
    "POST /v1/quarantine/{id}/release",
    "GET /v1/queue",
    "DELETE /v1/queue/{id}",
    "POST /v1/queue/{id}/retry",
    "POST /v1/queue/{id}/hold",
    "POST /v1/queue/{id}/release",
    "GET /v1/tokens",
    "POST /v1/tokens",
    "DELETE /v1/tokens/{name}",
    "GET /v1/users",
    "POST /v1/users",
    "PUT /v1/users/{name}/password",
    "DELETE /v1/users/{name}",
    "GET /v1/bayes",
    "POST /v1/bayes/{lesson}",
    "GET /v1/policy",
    "PUT /v1/policy",
    "GET /v1/policy/history",
    "POST /v1/policy/simulate",
];

/// Calls that need no token.
const PUBLIC: [&str; 3] = ["GET /healthz", "GET /readyz", "GET /v1/openapi.json"];

/// Calls that need no token unless `api.public_status = false`: their security is
/// "none or a bearer token".
const STATUS: [&str; 2] = ["GET /metrics", "GET /v1/cluster"];

/// A request to operation `name` (`METHOD path`) with harmless arguments: nothing
/// they name exists, so nothing changes.
fn harmless(api: &Api, name: &str) -> reqwest::blocking::RequestBuilder {
    let (method, path) = name.split_once(' ').unwrap();
    let path = path
        .replace("{id}", "99")
        .replace("{name}", "nobody")
        .replace("{lesson}", "forget");
    let path = if path == "/v1/events/stream" {
        "/v1/events/stream?after=0".to_string()
    } else {
        path
    };
    let url = api.url(&path);
    match method {
        "GET" => api.client.get(url),
        "POST" => api.client.post(url),
        "DELETE" => api.client.delete(url),
        "PUT" => api.client.put(url),
        other => panic!("{other}"),
    }
}

#[test]
fn the_openapi_document_covers_every_route_and_only_routes() {
    let node = Node::start("");
    let api = Api::new(&node);
    let response = api.client.get(api.url("/v1/openapi.json")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.json().unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Bulwark");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], Value::Array(Vec::new()));

    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            // Every `{param}` of the path is declared as a path parameter.
            for param in path.split('/').filter_map(|s| s.strip_prefix('{')) {
                let param = param.trim_end_matches('}');
                let declared = operation["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == param && p["in"] == "path"));
                assert!(declared, "{name}: {{{param}}} is not declared");
            }
            let public = operation["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|r| r.is_empty()))
            });
            assert_eq!(
                public,
                PUBLIC.contains(&name.as_str()),
                "{name}: {operation}"
            );
            if STATUS.contains(&name.as_str()) {
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{}, { "bearer": [] }]),
                    "{name}"
                );
            }
            let id = operation["operationId"].as_str().unwrap().to_string();
            assert!(
                operation_ids.insert(id.clone()),
                "{name}: operationId {id} twice"
            );
            documented.insert(name);
        }
    }
    let known: BTreeSet<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, known);

    // Each documented operation reaches its handler.
    for name in &documented {
        let request = harmless(&api, name);
        let public = PUBLIC.contains(&name.as_str()) || STATUS.contains(&name.as_str());
        let request = if public {
            request
        } else {
            request.bearer_auth(node.token())
        };
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert_ne!(status, 405, "{name}: the router has no such method");
        assert!(
            status != 404 || content_type == "application/problem+json",
            "{name}: the router has no such route ({status}, {content_type:?})"
        );
        if public {
            assert_eq!(status, 200, "{name} without a token");
        }
    }
    // And a route that does not exist is the router's 404, which the loop tells apart.
    let response = api.client.get(api.url("/v1/nothing")).send().unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.headers().get("content-type").is_none());
}

/// Every operation declares the answers it can give besides its own: 401 where it
/// needs a token, 400 where it takes parameters or a body, 413 where it takes a body,
/// each error as problem+json, each success with its media type; numeric parameters carry their bounds, and the node
/// holds to them (a seq past int64, a page size out of range, a node id of 0 or past
/// int64: 400), as it does for a path parameter that does not decode and a body too
/// big (problem+json, not axum's plain text).
#[test]
fn every_operation_declares_its_error_answers_and_the_node_keeps_to_the_bounds() {
    let node = Node::start("");
    let api = Api::new(&node);
    let doc: Value = api
        .client
        .get(api.url("/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        doc["components"]["schemas"]["Problem"]["required"],
        serde_json::json!(["type", "title", "status", "detail"])
    );
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let answers = operation["responses"].as_object().unwrap();
            let has = |status: &str| answers.contains_key(status);
            if !PUBLIC.contains(&name.as_str()) {
                assert!(has("401"), "{name} lacks 401");
            }
            let takes_parameters = operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty());
            if takes_parameters || operation.get("requestBody").is_some() {
                assert!(has("400"), "{name} lacks 400");
            }
            if operation.get("requestBody").is_some() {
                assert!(has("413"), "{name} lacks 413");
            }
            for (status, answer) in answers {
                if status.starts_with('2') {
                    let declared = answer["content"].as_object().map_or(0, |c| c.len());
                    assert!(declared > 0, "{name} {status}: no media type");
                }
                if status.starts_with(['4', '5']) {
                    assert_eq!(
                        answer["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{name} {status}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, OPERATIONS.len());
    let after = doc["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "after")
        .unwrap()
        .clone();
    assert_eq!(after["schema"]["format"], "int64", "{after}");
    assert_eq!(after["schema"]["minimum"], 0, "{after}");
    assert_eq!(after["schema"]["maximum"], i64::MAX, "{after}");

    let status_of = |request: reqwest::blocking::RequestBuilder| {
        let response = request.bearer_auth(node.token()).send().unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (response.status().as_u16(), content_type)
    };
    let problem = |status: u16| (status, "application/problem+json".to_string());
    for (path, expected) in [
        ("/v1/events?after=9223372036854775807", 200),
        ("/v1/events?after=9223372036854775808", 400),
        ("/v1/events?after=18446744073709551616", 400),
        ("/v1/events?after=-1", 400),
        ("/v1/events/export?after=9223372036854775808", 400),
        ("/v1/events/stream?after=9223372036854775808", 400),
        ("/v1/events?limit=0", 400),
        ("/v1/events?limit=-1", 400),
        ("/v1/events?limit=1001", 400),
        ("/v1/events?limit=1000", 200),
        ("/v1/quarantine?limit=0", 400),
        ("/v1/queue?limit=1001", 400),
        ("/v1/policy?version=9223372036854775808", 400),
        ("/v1/events?consistent=maybe", 400),
        ("/v1/messages/%FF", 400),
        ("/v1/quarantine/%FF%FE", 400),
    ] {
        let (status, content_type) = status_of(api.client.get(api.url(path)));
        assert_eq!(status, expected, "{path}");
        if expected != 200 {
            assert_eq!(content_type, "application/problem+json", "{path}");
        }
    }
    let (status, _) = status_of(
        api.client
            .get(api.url("/v1/events/stream"))
            .header("last-event-id", "9223372036854775808"),
    );
    assert_eq!(status, 400);
    for id in ["0", "9223372036854775808", "x"] {
        let promote = api.url(&format!("/v1/cluster/members/{id}/promote"));
        assert_eq!(status_of(api.client.post(promote)), problem(400), "{id}");
        let remove = api.url(&format!("/v1/cluster/members/{id}"));
        assert_eq!(status_of(api.client.delete(remove)), problem(400), "{id}");
    }
    let too_big = vec![b'x'; 3 * 1024 * 1024];
    assert_eq!(
        status_of(api.client.post(api.url("/v1/notes")).body(too_big)),
        problem(413)
    );
}

/// Every operation a role can be refused declares 403, found by calling each one that
/// needs a token with a token of every role but admin: whatever any of them answers
/// 403 declares it. The metrics role, which may read the status pages only, is
/// refused every other call that needs a token, so each of those must declare 403.
#[test]
fn every_operation_a_role_can_be_refused_declares_403() {
    let node = Node::start("");
    let api = Api::new(&node);
    let doc: Value = api
        .client
        .get(api.url("/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let tokens: Vec<(&str, String)> = ["operator", "auditor", "siem", "metrics"]
        .into_iter()
        .map(|role| {
            let (status, body) = api.post_json(
                "/v1/tokens",
                &serde_json::json!({ "name": format!("a-{role}"), "role": role }),
            );
            assert_eq!(status, 201, "{body}");
            (role, body["token"].as_str().unwrap().to_string())
        })
        .collect();
    let mut refused_to_metrics = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            if PUBLIC.contains(&name.as_str()) {
                continue;
            }
            let declared = operation["responses"].get("403").is_some();
            for (role, token) in &tokens {
                let status = harmless(&api, &name)
                    .bearer_auth(token)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16();
                assert!(
                    status != 403 || declared,
                    "{name} refuses the {role} role (403) without declaring it"
                );
                if *role == "metrics" && status == 403 {
                    refused_to_metrics.insert(name.clone());
                }
            }
        }
    }
    let needing_a_token: BTreeSet<String> = OPERATIONS
        .iter()
        .filter(|o| !PUBLIC.contains(o) && !STATUS.contains(o))
        .map(|o| o.to_string())
        .collect();
    assert_eq!(refused_to_metrics, needing_a_token);
    for name in [
        "GET /v1/events",
        "GET /v1/events/export",
        "GET /v1/events/stream",
        "GET /v1/audit/bundle",
        "GET /v1/events/verify",
    ] {
        assert!(refused_to_metrics.contains(name), "{name}");
    }
}

/// A message with a Windows program attached: quarantined as blocked content.
fn program(from: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: bob@example.test\r\nSubject: the tool\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/html\r\n\r\n<p>Run <b>this</b> now</p>\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n"
    )
}

/// A plain message, accepted and queued.
fn plain(from: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: bob@example.test\r\nSubject: minutes\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <minutes@sender.test>\r\n\r\n\
         The minutes of the meeting.\r\n"
    )
}

/// One answer of the node: to a call of `operation` (`METHOD path` as documented).
struct Answer {
    operation: &'static str,
    call: String,
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Calls every operation of the API so that it succeeds, on a node holding what each
/// answer shows: quarantined messages, a deferred one, a note, a policy, a lesson, a
/// token, a backup. The live tail's answer is its first event.
fn every_success(node: &Node) -> Vec<Answer> {
    use std::io::Read;
    const WAIT: std::time::Duration = std::time::Duration::from_secs(15);
    let api = Api::new(node);
    let token = node.token();
    let send = |from: &str, body: &str| {
        let mut smtp = common::Smtp::ehlo(node.smtp);
        smtp.send_message(from, &["bob@example.test"], body)
            .queued_id()
    };
    let mut answers = Vec::new();
    let mut call = |operation: &'static str, request: reqwest::blocking::RequestBuilder| {
        let request = request.bearer_auth(&token).build().unwrap();
        let call = format!("{} {}", request.method(), request.url());
        let mut response = api.client.execute(request).unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut body = Vec::new();
        if content_type == "text/event-stream" {
            // The first event, then the tail is left.
            let mut chunk = [0; 4096];
            while !body.windows(2).any(|w| w == b"\n\n") {
                let n = response.read(&mut chunk).unwrap();
                assert!(n > 0, "{call}: the stream ended");
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            response.read_to_end(&mut body).unwrap();
        }
        assert!(
            (200..300).contains(&status),
            "{call}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
        let answer = json(&body);
        answers.push(Answer {
            operation,
            call,
            status,
            content_type,
            body,
        });
        answer
    };
    let get = |path: &str| api.client.get(api.url(path));
    let post = |path: &str| api.client.post(api.url(path));
    let delete = |path: &str| api.client.delete(api.url(path));
    let put = |path: &str| api.client.put(api.url(path));

    // The node seeds the cluster's policy from its file once it leads: until that is
    // applied, /readyz may see a commit index ahead of the applied one.
    let deadline = std::time::Instant::now() + WAIT;
    let current = loop {
        let (status, current) = api.get("/v1/policy");
        if status == 200 && api.get("/readyz").0 == 200 {
            break current;
        }
        assert!(std::time::Instant::now() < deadline, "no policy: {current}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    call("GET /healthz", get("/healthz"));
    call("GET /readyz", get("/readyz"));
    call("GET /metrics", get("/metrics"));
    call("GET /v1/openapi.json", get("/v1/openapi.json"));
    call("GET /v1/cluster", get("/v1/cluster"));
    call("GET /v1/cluster", get("/v1/cluster?view=leader"));
    call(
        "POST /v1/notes",
        post("/v1/notes").json(&serde_json::json!({ "text": "a note" })),
    );

    let released = send("alice@sender.test", &program("alice@sender.test"));
    let deleted = send("alice@sender.test", &program("alice@sender.test"));
    let bulk_released = send("dave@bulk.test", &program("dave@bulk.test"));
    let bulk_deleted = send("erin@bulk.test", &program("erin@bulk.test"));
    let queued = send("carol@sender.test", &plain("carol@sender.test"));
    for id in [&released, &deleted, &bulk_released, &bulk_deleted] {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }
    node.wait_message_event(&queued, "delivery.deferred", 1, WAIT);

    call("GET /v1/events", get("/v1/events?limit=1000"));
    call(
        "GET /v1/events/export",
        get(&format!("/v1/events/export?message_id={queued}")),
    );
    call("GET /v1/events/stream", get("/v1/events/stream?after=0"));
    call("GET /v1/events/verify", get("/v1/events/verify"));
    call(
        "GET /v1/audit/bundle",
        get(&format!("/v1/audit/bundle?message_id={released}")),
    );
    for id in [&queued, &released] {
        call("GET /v1/messages/{id}", get(&format!("/v1/messages/{id}")));
    }
    call("GET /v1/quarantine", get("/v1/quarantine"));
    call(
        "GET /v1/quarantine/{id}",
        get(&format!("/v1/quarantine/{released}")),
    );
    call(
        "GET /v1/quarantine/{id}/raw",
        get(&format!("/v1/quarantine/{released}/raw")),
    );
    call(
        "POST /v1/quarantine/{id}/release",
        post(&format!("/v1/quarantine/{released}/release"))
            .json(&serde_json::json!({ "reason": "a tool we use" })),
    );
    call(
        "DELETE /v1/quarantine/{id}",
        delete(&format!("/v1/quarantine/{deleted}?reason=malware")),
    );
    call(
        "POST /v1/quarantine/release",
        post("/v1/quarantine/release?sender=dave@bulk.test")
            .json(&serde_json::json!({ "reason": "dave's tools" })),
    );
    call(
        "POST /v1/quarantine/delete",
        post("/v1/quarantine/delete?sender=erin@bulk.test"),
    );

    call("GET /v1/queue", get("/v1/queue"));
    for action in ["hold", "release", "retry"] {
        let operation = match action {
            "hold" => "POST /v1/queue/{id}/hold",
            "release" => "POST /v1/queue/{id}/release",
            _ => "POST /v1/queue/{id}/retry",
        };
        call(operation, post(&format!("/v1/queue/{queued}/{action}")));
    }

    call("GET /v1/policy", get("/v1/policy"));
    let mut policy = current["policy"].clone();
    call(
        "PUT /v1/policy",
        put("/v1/policy").json(&serde_json::json!({
            "base_version": current["version"], "policy": policy, "reason": "unchanged",
        })),
    );
    policy["tag_score"] = serde_json::json!(4.5);
    call(
        "PUT /v1/policy",
        put("/v1/policy").json(&serde_json::json!({
            "base_version": current["version"], "policy": policy, "reason": "tag sooner",
        })),
    );
    call("GET /v1/policy/history", get("/v1/policy/history"));
    call(
        "POST /v1/policy/simulate",
        post("/v1/policy/simulate").json(&serde_json::json!({ "policy": policy })),
    );

    call(
        "POST /v1/bayes/{lesson}",
        post("/v1/bayes/spam").body(plain("spammer@sender.test")),
    );
    call(
        "POST /v1/bayes/{lesson}",
        post(&format!("/v1/bayes/ham?message_id={queued}")),
    );
    call("GET /v1/bayes", get("/v1/bayes"));
    call(
        "DELETE /v1/queue/{id}",
        delete(&format!("/v1/queue/{queued}")),
    );

    call(
        "POST /v1/tokens",
        post("/v1/tokens").json(&serde_json::json!({ "name": "grafana", "role": "metrics" })),
    );
    call("GET /v1/tokens", get("/v1/tokens"));
    call("DELETE /v1/tokens/{name}", delete("/v1/tokens/grafana"));
    call(
        "POST /v1/users",
        post("/v1/users").json(&serde_json::json!({
            "name": "helpdesk", "role": "operator", "password": "a long passphrase",
        })),
    );
    call("GET /v1/users", get("/v1/users"));
    call(
        "PUT /v1/users/{name}/password",
        put("/v1/users/helpdesk/password")
            .json(&serde_json::json!({ "password": "another long passphrase" })),
    );
    call("DELETE /v1/users/{name}", delete("/v1/users/helpdesk"));

    call(
        "POST /v1/backup",
        post("/v1/backup").json(&serde_json::json!({ "name": "nightly" })),
    );
    call("POST /v1/digest/run", post("/v1/digest/run"));
    let learner = format!("127.0.0.1:{}", common::free_port());
    call(
        "POST /v1/cluster/members",
        post("/v1/cluster/members").json(&serde_json::json!({ "id": 2, "addr": learner })),
    );
    call(
        "DELETE /v1/cluster/members/{id}",
        delete("/v1/cluster/members/2"),
    );
    answers
}

/// Every success answer declares its body: a JSON one by a named schema of the
/// document's components (or an array of one), a text one (plain, metrics, a raw
/// message) as a string, a stream (NDJSON, server-sent events) by the schema of each
/// of its items; a 204 declares no body. Every `$ref` of the document names a schema
/// it holds.
#[test]
fn every_success_declares_its_schema_and_every_ref_resolves() {
    let node = Node::start("");
    let api = Api::new(&node);
    let doc: Value = api
        .client
        .get(api.url("/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut declared = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let successes: Vec<(&String, &Value)> = operation["responses"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(status, _)| status.starts_with('2'))
                .collect();
            assert!(!successes.is_empty(), "{name}: no success answer");
            for (status, answer) in successes {
                let content = answer["content"].as_object();
                if status == "204" {
                    assert!(content.is_none_or(|c| c.is_empty()), "{name} 204: {answer}");
                    continue;
                }
                let content = content
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| panic!("{name} {status}: no body declared"));
                for (media, body) in content {
                    let schema = &body["schema"];
                    assert!(schema.is_object(), "{name} {status} {media}: no schema");
                    match media.as_str() {
                        "application/json" | "application/x-ndjson" | "text/event-stream" => {
                            let named = |s: &Value| {
                                s["$ref"]
                                    .as_str()
                                    .is_some_and(|r| r.starts_with("#/components/schemas/"))
                            };
                            assert!(
                                named(schema)
                                    || (schema["type"] == "array" && named(&schema["items"])),
                                "{name} {status} {media}: not a named schema: {schema}"
                            )
                        }
                        _ => assert_eq!(schema["type"], "string", "{name} {status} {media}"),
                    }
                }
            }
            declared += 1;
        }
    }
    assert_eq!(declared, OPERATIONS.len());
    let mut refs = Vec::new();
    references(&doc, &mut refs);
    assert!(refs.len() > OPERATIONS.len(), "{refs:?}");
    for reference in refs {
        let target = resolve(&doc, &reference);
        assert!(target.is_object(), "{reference} does not resolve");
    }
}

/// Every `$ref` in `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// What a `$ref` of the document names (`Null` if nothing).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    match reference.strip_prefix('#') {
        Some(pointer) => doc.pointer(pointer).unwrap_or(&Value::Null),
        None => &Value::Null,
    }
}

/// Every operation answered with success on a node holding what each answer shows,
/// and each answer checked against the schema its operation declares for its status
/// and media type: a JSON body whole, each line of NDJSON, the data of each
/// server-sent event. Promotion is left out: on one node, no learner catches up.
#[test]
fn what_every_operation_answers_matches_the_schema_it_declares() {
    let node = Node::start("");
    let answers = every_success(&node);
    let doc: Value = Api::new(&node)
        .client
        .get(Api::new(&node).url("/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut answered = BTreeSet::new();
    for answer in &answers {
        let (method, path) = answer.operation.split_once(' ').unwrap();
        let operation = &doc["paths"][path][method.to_lowercase()];
        let media = answer.content_type.split(';').next().unwrap().trim();
        let schema = &operation["responses"][answer.status.to_string()]["content"][media]["schema"];
        let call = &answer.call;
        assert!(
            schema.is_object(),
            "{call}: {} {media} is not declared",
            answer.status
        );
        let body = String::from_utf8_lossy(&answer.body);
        let items: Vec<Value> = match media {
            "application/json" => vec![serde_json::from_str(&body).unwrap()],
            "application/x-ndjson" => body
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
            "text/event-stream" => body
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .map(|data| serde_json::from_str(data).unwrap())
                .collect(),
            _ => vec![Value::String(body.to_string())],
        };
        assert!(!items.is_empty(), "{call}: nothing answered");
        for item in &items {
            let mut wrong = Vec::new();
            mismatches(&doc, schema, item, "$", &mut wrong);
            let shown: String = item.to_string().chars().take(2000).collect();
            assert!(
                wrong.is_empty(),
                "{call} answered what its schema does not say:\n{}\nschema: {schema}\n\
                 answer: {shown}",
                wrong.join("\n")
            );
        }
        answered.insert(answer.operation);
    }
    let expected: BTreeSet<&str> = OPERATIONS
        .into_iter()
        .filter(|o| *o != "POST /v1/cluster/members/{id}/promote")
        .collect();
    assert_eq!(answered, expected);
}

/// What in `value` does not match `schema` (JSON Schema as OpenAPI 3.1 uses it, its
/// `$ref`s into `doc`), each with its place from `at`. Stricter than JSON Schema in
/// one way, so that every field of an answer is declared: an object schema that
/// names its properties allows no others unless it says so (`additionalProperties`).
/// A keyword it does not know is a mismatch, never passed over.
fn mismatches(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        out.push(format!("{at}: the schema {schema} is not an object"));
        return;
    };
    // What `value` does not match in `schema`.
    let against = |schema: &Value| {
        let mut wrong = Vec::new();
        mismatches(doc, schema, value, at, &mut wrong);
        wrong
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$ref" => {
                let target = resolve(doc, rule.as_str().unwrap_or_default());
                mismatches(doc, target, value, at, out);
            }
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::Array(types) => types.iter().filter_map(Value::as_str).collect(),
                    other => other.as_str().into_iter().collect(),
                };
                let is = |t: &str| match t {
                    "null" => value.is_null(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "string" => value.is_string(),
                    "array" => value.is_array(),
                    "object" => value.is_object(),
                    _ => false,
                };
                if !types.iter().any(|t| is(t)) {
                    let shown: String = value.to_string().chars().take(200).collect();
                    out.push(format!("{at}: {shown} is not {rule}"));
                }
            }
            "properties" => {
                let (Some(properties), Some(fields)) = (rule.as_object(), value.as_object()) else {
                    continue;
                };
                for (name, field) in fields {
                    match properties.get(name) {
                        Some(property) => {
                            mismatches(doc, property, field, &format!("{at}.{name}"), out)
                        }
                        None if !schema.contains_key("additionalProperties") => {
                            out.push(format!("{at}.{name}: not declared"))
                        }
                        None => {}
                    }
                }
            }
            "additionalProperties" => {
                let Some(fields) = value.as_object() else {
                    continue;
                };
                let named = |name: &str| {
                    schema
                        .get("properties")
                        .is_some_and(|p| p.get(name).is_some())
                };
                for (name, field) in fields.iter().filter(|(name, _)| !named(name)) {
                    match rule {
                        Value::Bool(true) => {}
                        Value::Bool(_) => out.push(format!("{at}.{name}: not declared")),
                        rule => mismatches(doc, rule, field, &format!("{at}.{name}"), out),
                    }
                }
            }
            "propertyNames" => {
                for name in value.as_object().into_iter().flat_map(|f| f.keys()) {
                    let name = Value::String(name.clone());
                    mismatches(doc, rule, &name, &format!("{at}.{name}"), out);
                }
            }
            "required" => {
                let Some(fields) = value.as_object() else {
                    continue;
                };
                for name in rule.as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap_or_default();
                    if !fields.contains_key(name) {
                        out.push(format!("{at}.{name}: missing"));
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    mismatches(doc, rule, item, &format!("{at}[{i}]"), out);
                }
            }
            "oneOf" | "anyOf" => {
                let wrong: Vec<Vec<String>> =
                    rule.as_array().into_iter().flatten().map(against).collect();
                let fitting = wrong.iter().filter(|w| w.is_empty()).count();
                if fitting == 0 {
                    let why: Vec<String> = wrong.into_iter().flatten().collect();
                    out.push(format!("{at}: fits none of {keyword}: {}", why.join("; ")));
                } else if keyword == "oneOf" && fitting > 1 {
                    out.push(format!("{at}: fits {fitting} of oneOf {rule}"));
                }
            }
            "enum" => {
                if !rule.as_array().is_some_and(|values| values.contains(value)) {
                    out.push(format!("{at}: {value} is none of {rule}"));
                }
            }
            "minimum" | "maximum" => {
                let (Some(n), Some(bound)) = (value.as_f64(), rule.as_f64()) else {
                    continue;
                };
                if (keyword == "minimum" && n < bound) || (keyword == "maximum" && n > bound) {
                    out.push(format!("{at}: {value} is past its {keyword} {rule}"));
                }
            }
            "maxLength" => {
                let (Some(text), Some(most)) = (value.as_str(), rule.as_u64()) else {
                    continue;
                };
                if text.chars().count() as u64 > most {
                    out.push(format!("{at}: longer than {most}"));
                }
            }
            // Annotations: they say what a value means, not what it may be.
            "description" | "format" | "title" | "example" | "examples" | "default" => {}
            other => out.push(format!("{at}: the check does not know {other:?}")),
        }
    }
}

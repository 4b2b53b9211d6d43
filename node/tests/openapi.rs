//! The OpenAPI document, seen from outside: served without a token, OpenAPI 3.1, and
//! true to the router. Every documented operation is routed (a request to it gets an
//! answer from its handler, not the router's own 404 or 405); the document holds
//! exactly the operations of the API; every path parameter is declared; the calls that
//! need no token say so and answer without one, the others name the bearer scheme;
//! every call a role can be refused declares its 403.

mod common;

use std::collections::BTreeSet;

use common::{Api, Node};
use serde_json::Value;

/// Every operation of the API, as `METHOD path`.
const OPERATIONS: [&str; 37] = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/openapi.json",
    "GET /v1/cluster",
    "POST /v1/cluster/members",
    "DELETE /v1/cluster/members/{id}",
    "POST /v1/cluster/members/{id}/promote",
    "POST /v1/backup",
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

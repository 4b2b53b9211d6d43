//! The queue API seen from outside: a real node whose next hop refuses connections
//! defers what it accepts, and an administrator lists the queue, holds, retries,
//! releases and deletes messages over HTTP; every action is an `api.action` event.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Api, Node, Smtp};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A node relaying to a port nobody listens on: every attempt is deferred, and the
/// next one is an hour away unless an administrator asks for it.
fn deferring_node() -> Node {
    let dead = free_port();
    Node::start_with(
        "",
        &format!(
            "[delivery]\nrelay = \"127.0.0.1:{dead}\"\nretry_initial_secs = 3600\n\
             poll_ms = 100\nconnect_timeout_secs = 2\n"
        ),
    )
}

impl Api<'_> {
    /// The ids a listing returns, and its `next` cursor.
    fn list(&self, query: &str) -> (Vec<String>, Value) {
        self.listed(&format!("/v1/queue?{query}"))
    }

    /// The listing's item for message `id`.
    fn item(&self, id: &str) -> Value {
        let (_, page) = self.get("/v1/queue?limit=1000");
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {page}"))
            .clone()
    }

    /// Takes `action` on message `id`; returns the `seq` of its event.
    fn act(&self, action: &str, id: &str) -> u64 {
        let (status, body) = if action == "delete" {
            self.delete(&format!("/v1/queue/{id}"))
        } else {
            self.post(&format!("/v1/queue/{id}/{action}"))
        };
        assert_eq!(status, 200, "{action} {id}: {body}");
        assert_eq!(body["message_id"], id, "{body}");
        assert_eq!(body["action"], format!("queue.{action}"), "{body}");
        body["seq"].as_u64().unwrap()
    }
}

fn attempts(node: &Node, id: &str) -> usize {
    node.message_events(id)
        .iter()
        .filter(|e| e["type"] == "delivery.attempted")
        .count()
}

#[test]
fn queue_api_lists_holds_retries_releases_and_deletes_with_an_audit_trail() {
    let node = deferring_node();
    let api = Api::new(&node);
    let mut s = Smtp::ehlo(node.smtp);
    let body = "Subject: queued\r\n\r\nhello\r\n";
    let a = s
        .send_message("alice@sender.test", &["bob@example.test"], body)
        .queued_id();
    let b = s
        .send_message("carol@other.test", &["dave@example.test"], body)
        .queued_id();
    let c = s
        .send_message("alice@sender.test", &["erin@example.test"], body)
        .queued_id();
    for id in [&a, &b, &c] {
        node.wait_message_event(id, "delivery.deferred", 1, WAIT);
    }

    // Listing: arrival order, every field, filters and pages.
    let (all, next) = api.list("");
    assert_eq!(all, [a.clone(), b.clone(), c.clone()]);
    assert_eq!(next, Value::Null);
    let item = api.item(&a);
    assert_eq!(item["sender"], "alice@sender.test");
    assert_eq!(item["status"], "deferred", "{item:#}");
    assert_eq!(item["held"], false);
    assert_eq!(item["lease"], Value::Null, "the attempt released its lease");
    assert_eq!(item["received_by"], 1);
    assert!(
        item["received"].as_str().unwrap().ends_with('Z'),
        "{item:#}"
    );
    let rcpt = &item["recipients"][0];
    assert_eq!(rcpt["address"], "bob@example.test");
    assert_eq!(rcpt["status"], "deferred");
    assert_eq!(rcpt["attempts"], 1);
    assert!(rcpt["next_attempt"].is_string(), "{rcpt}");
    assert!(!rcpt["last_reply"].as_str().unwrap().is_empty(), "{rcpt}");
    assert_eq!(
        api.list("sender=carol@other.test").0,
        std::slice::from_ref(&b)
    );
    assert_eq!(api.list("sender=%40sender.test").0, [a.clone(), c.clone()]);
    assert_eq!(
        api.list("recipient=ERIN@example.test").0,
        std::slice::from_ref(&c)
    );
    assert_eq!(api.list("status=deferred").0.len(), 3);
    assert!(api.list("status=held").0.is_empty());
    let (first, next) = api.list("limit=2");
    assert_eq!(first, [a.clone(), b.clone()]);
    assert_eq!(next, b.as_str());
    assert_eq!(
        api.list(&format!("after={b}&limit=2")),
        (vec![c.clone()], Value::Null)
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=stuck",
        "after=nope",
        "colour=red",
    ] {
        let (status, problem) = api.get(&format!("/v1/queue?{bad}"));
        assert_eq!(status, 400, "{bad}: {problem}");
    }

    // No token, no queue.
    let anonymous = Client::new();
    let status = |r: RequestBuilder| r.send().unwrap().status().as_u16();
    assert_eq!(status(anonymous.get(format!("{}/v1/queue", node.api))), 401);
    let hold_a = format!("{}/v1/queue/{a}/hold", node.api);
    assert_eq!(status(anonymous.post(&hold_a)), 401);
    assert_eq!(status(anonymous.post(&hold_a).bearer_auth("wrong")), 401);
    assert_eq!(
        api.item(&a)["held"],
        false,
        "refused callers change nothing"
    );

    // Hold a; retry b: only b is tried again, at once.
    api.act("hold", &a);
    let item = api.item(&a);
    assert_eq!(item["held"], true, "{item:#}");
    assert_eq!(item["status"], "held", "{item:#}");
    assert_eq!(api.list("status=held").0, std::slice::from_ref(&a));
    let asked = Instant::now();
    api.act("retry", &b);
    node.wait_message_event(&b, "delivery.deferred", 2, WAIT);
    let retried_in = asked.elapsed();
    assert_eq!(api.item(&b)["recipients"][0]["attempts"], 2);
    api.act("release", &a);
    let item = api.item(&a);
    assert_eq!(item["held"], false, "{item:#}");
    assert_eq!(item["status"], "deferred", "{item:#}");

    // Retrying a held message lifts the hold.
    api.act("hold", &c);
    api.act("retry", &c);
    node.wait_message_event(&c, "delivery.deferred", 2, WAIT);
    assert_eq!(api.item(&c)["held"], false);

    // Delete b: gone from the queue, and a second delete finds nothing.
    api.act("delete", &b);
    assert_eq!(api.list("").0, [a.clone(), c.clone()]);
    let (status, problem) = api.delete(&format!("/v1/queue/{b}"));
    assert_eq!(status, 404, "{problem}");
    let (status, _) = api.post(&format!("/v1/queue/{b}/retry"));
    assert_eq!(status, 404);
    let (status, _) = api.post("/v1/queue/not-an-id/hold");
    assert_eq!(status, 400);
    assert_eq!(
        attempts(&node, &a),
        1,
        "a was never due: no attempt but the first"
    );

    // Every action is on record: who, from where, on what, and how it went.
    let actions: Vec<(String, String, String)> = node
        .events("api.action")
        .iter()
        .map(|e| {
            assert_eq!(e["user"]["name"], "admin", "{e:#}");
            assert_eq!(e["source"]["ip"], "127.0.0.1", "{e:#}");
            assert_eq!(e["event"]["action"], e["action"], "{e:#}");
            (
                e["action"].as_str().unwrap().to_string(),
                e["message_id"].as_str().unwrap().to_string(),
                e["event"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |action: &str, id: &str, outcome: &str| {
        (
            format!("queue.{action}"),
            id.to_string(),
            outcome.to_string(),
        )
    };
    assert_eq!(
        actions,
        [
            row("hold", &a, "success"),
            row("retry", &b, "success"),
            row("release", &a, "success"),
            row("hold", &c, "success"),
            row("retry", &c, "success"),
            row("delete", &b, "success"),
            row("delete", &b, "failure"),
            row("retry", &b, "failure"),
        ]
    );
    // A message's history tells what the administrator did to it.
    let history: Vec<String> = node
        .message_events(&b)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    let on_record = history.iter().filter(|t| *t == "api.action").count();
    assert_eq!(on_record, 4, "{history:?}");
    eprintln!("retry to the next attempt's report: {retried_in:?}");
}

//! `/metrics` seen from outside: after a message over SMTP and an API call, a scrape
//! (no token needed) reports the sessions, the scan time, the verdict's action, the
//! events applied, Raft's state, the queue's depth and the API's request times, in
//! the OpenMetrics text format.

mod common;

use std::collections::HashMap;

use common::{Api, Node, Smtp};
use serde_json::json;

/// Every sample of a scrape: `name{labels}` → value.
fn scrape(node: &Node) -> HashMap<String, f64> {
    let response = reqwest::blocking::get(format!("{}/metrics", node.api)).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_report_sessions_scans_verdicts_raft_queue_and_api_times() {
    let node = Node::start("");
    let api = Api::new(&node);
    let mut s = Smtp::ehlo(node.smtp);
    let body = "From: <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\
        Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <m.1@sender.test>\r\n\r\nhello\r\n";
    let id = s
        .send_message("alice@sender.test", &["bob@example.test"], body)
        .queued_id();
    node.wait_message_event(&id, "scan.verdict", 1, std::time::Duration::from_secs(10));
    let (status, _) = api.post_json("/v1/notes", &json!({ "text": "scraped" }));
    assert_eq!(status, 201);

    let m = scrape(&node);
    let get = |name: &str| *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:#?}"));
    assert!(get("bulwark_smtp_sessions_total") >= 1.0);
    assert_eq!(get("bulwark_smtp_sessions_open"), 1.0);
    assert!(get("bulwark_scan_duration_seconds_count") >= 1.0);
    assert!(get("bulwark_scan_duration_seconds_sum") > 0.0);
    assert_eq!(get("bulwark_messages_total{action=\"deliver\"}"), 1.0);
    assert_eq!(
        get("bulwark_events_applied_total{type=\"audit.note\"}"),
        1.0
    );
    assert_eq!(
        get("bulwark_events_applied_total{type=\"message.received\"}"),
        1.0
    );
    assert_eq!(get("bulwark_raft_is_leader"), 1.0);
    let version = format!(
        "bulwark_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(get(&version), 1.0);
    assert!(get("process_cpu_seconds_total") > 0.0);
    assert!(get("process_resident_memory_bytes") > 10e6);
    assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
    assert!(get("process_open_fds") >= 10.0);
    assert!(get("process_max_fds") >= get("process_open_fds"));
    let started = get("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );
    assert!(get("bulwark_raft_term") >= 1.0);
    assert!(get("bulwark_raft_applied_index") >= 1.0);
    assert!(get("bulwark_events") >= 3.0);
    // Delivery is held in these tests: the message waits in the queue.
    assert_eq!(get("bulwark_queue_messages"), 1.0);
    assert_eq!(get("bulwark_quarantine_messages"), 0.0);
    assert_eq!(
        get("bulwark_api_request_duration_seconds_count{route=\"/v1/notes\",method=\"POST\",status=\"201\"}"),
        1.0
    );
    drop(s);

    // A second scrape sees the first one timed, and the session closed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let m = scrape(&node);
    assert_eq!(m["bulwark_smtp_sessions_open"], 0.0);
    assert_eq!(
        m["bulwark_api_request_duration_seconds_count{route=\"/metrics\",method=\"GET\",status=\"200\"}"],
        1.0
    );
}

/// Every metric family a node exposes is in deploy/README.md's table, so the reference
/// cannot fall behind the code.
#[test]
fn every_metric_family_is_documented_in_the_readme() {
    let readme = include_str!("../../deploy/README.md");
    let table = &readme[readme
        .find("### Metrics (`/metrics`)")
        .expect("deploy/README.md's metrics section")..];
    let node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    let body = "From: <alice@sender.test>\r\nSubject: hi\r\n\r\nhello\r\n";
    let id = s
        .send_message("alice@sender.test", &["bob@example.test"], body)
        .queued_id();
    node.wait_message_event(&id, "scan.verdict", 1, std::time::Duration::from_secs(10));
    let text = reqwest::blocking::get(format!("{}/metrics", node.api))
        .unwrap()
        .text()
        .unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() >= 20, "{text}");
    let missing: Vec<_> = families
        .iter()
        .filter(|family| !table.contains(&format!("`{family}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in deploy/README.md's table: {missing:?}"
    );
}

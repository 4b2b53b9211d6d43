//! Erasure that erases, seen from outside: a quarantined message's body, deleted over
//! the API or expired by the retention, is in no file of the node's data directory
//! (Raft log, state, WAL, snapshots, backups taken since) once
//! `[quarantine] erase_within_secs` has passed; every byte of every file is searched.
//! Each test first finds the body on disk, so that it can fail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::files::files_holding;
use bulwark_cluster_tests::samples::{quarantined_with, unique_marker};
use common::{held_delivery, Api, Node, Smtp};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);
/// The erasure bound the tests configure.
const ERASE_WITHIN: Duration = Duration::from_secs(6);

fn send(node: &Node, body: &str) -> String {
    let mut s = Smtp::ehlo(node.smtp);
    let reply = s.send_message("alice@sender.test", &["bob@example.test"], body);
    assert_eq!(reply.code, 250, "{reply:?}");
    reply.queued_id()
}

fn backup(api: &Api, to: &Path) {
    let (status, answer) = api.post_json("/v1/backup", &json!({ "to": to }));
    assert_eq!(status, 200, "{answer}");
}

/// The erasures the node logged, for the test's output (how long each took).
fn erasures_logged(node: &Node) -> Vec<String> {
    node.log()
        .lines()
        .filter(|l| l.contains("dropped quarantined bodies erased"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_deleted_body_is_in_no_file_of_the_data_directory_nor_a_later_backup_within_the_bound() {
    let backups = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[quarantine]\nerase_within_secs = {}\n\n[backup]\ndir = \"{}\"\n",
            held_delivery(),
            ERASE_WITHIN.as_secs(),
            backups.path().display()
        ),
    );
    let api = Api::new(&node);
    // Deleted: one stored in an SST, one in a blob file. Kept: one of each too.
    let (small, large) = (unique_marker("small"), unique_marker("large"));
    let (kept_small, kept_large) = (unique_marker("keptsmall"), unique_marker("keptlarge"));
    let small_id = send(&node, &quarantined_with(&small, 2_000));
    let kept_small_id = send(&node, &quarantined_with(&kept_small, 2_000));
    let large_id = send(&node, &quarantined_with(&large, 200_000));
    let kept_large_id = send(&node, &quarantined_with(&kept_large, 150_000));
    for id in [&small_id, &large_id, &kept_small_id, &kept_large_id] {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }
    let data = node.data_dir();
    for m in [&small, &large, &kept_small, &kept_large] {
        let holding = files_holding(&data, m.as_bytes());
        assert!(
            !holding.is_empty(),
            "{m} is nowhere on disk before deletion"
        );
        eprintln!("before deletion, {m} is in {holding:?}");
    }
    // A backup taken before the deletion keeps the bodies, as api/README.md says.
    let before = backups.path().join("before");
    backup(&api, &before);
    for m in [&small, &large] {
        assert!(!files_holding(&before, m.as_bytes()).is_empty(), "{m}");
    }

    let deleted_at = Instant::now();
    for id in [&small_id, &large_id] {
        let (status, answer) = api.delete(&format!("/v1/quarantine/{id}?reason=spam"));
        assert_eq!(status, 200, "{answer}");
    }
    // A backup taken once the deletion is acknowledged holds neither body, even
    // before the node's erasure has run.
    let right_after = backups.path().join("right-after");
    backup(&api, &right_after);
    for m in [&small, &large] {
        let holding = files_holding(&right_after, m.as_bytes());
        assert!(
            holding.is_empty(),
            "{m} in a backup taken after its deletion: {holding:?}"
        );
    }
    for m in [&kept_small, &kept_large] {
        assert!(!files_holding(&right_after, m.as_bytes()).is_empty(), "{m}");
    }

    std::thread::sleep(ERASE_WITHIN.saturating_sub(deleted_at.elapsed()));
    for m in [&small, &large] {
        let holding = files_holding(&data, m.as_bytes());
        assert!(
            holding.is_empty(),
            "{m} still on disk {:?} after its deletion: {holding:?}\nnode log tail:\n{}",
            deleted_at.elapsed(),
            common::tail(&node.log(), 30)
        );
    }
    // The kept bodies are still there, on disk and over the API.
    for (m, id) in [(&kept_small, &kept_small_id), (&kept_large, &kept_large_id)] {
        assert!(!files_holding(&data, m.as_bytes()).is_empty(), "{m}");
        let raw = api
            .client
            .get(format!("{}/v1/quarantine/{id}/raw", node.api))
            .bearer_auth(node.token())
            .send()
            .unwrap();
        assert_eq!(raw.status(), 200);
        assert!(raw.text().unwrap().contains(m.as_str()));
    }
    for id in [&small_id, &large_id] {
        assert_eq!(api.get(&format!("/v1/quarantine/{id}/raw")).0, 404);
    }
    let after = backups.path().join("after");
    backup(&api, &after);
    for m in [&small, &large] {
        assert!(files_holding(&after, m.as_bytes()).is_empty(), "{m}");
        assert!(files_holding(backups.path(), m.as_bytes())
            .iter()
            .all(|f| f.starts_with(&before)));
    }
    let erasures = erasures_logged(&node);
    assert!(!erasures.is_empty(), "no erasure logged");
    eprintln!("erasures:\n{}", erasures.join("\n"));
}

#[test]
fn an_expired_body_is_in_no_file_of_the_data_directory_within_the_bound() {
    // About four seconds of retention, checked every second.
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[quarantine]\nretention_days = 0.00005\ncheck_secs = 1\n\
             erase_within_secs = {}\n",
            held_delivery(),
            ERASE_WITHIN.as_secs()
        ),
    );
    let (small, large) = (unique_marker("expsmall"), unique_marker("explarge"));
    let small_id = send(&node, &quarantined_with(&small, 2_000));
    let large_id = send(&node, &quarantined_with(&large, 120_000));
    let data = node.data_dir();
    for m in [&small, &large] {
        assert!(!files_holding(&data, m.as_bytes()).is_empty(), "{m}");
    }
    for id in [&small_id, &large_id] {
        node.wait_message_event(id, "quarantine.expired", 1, WAIT);
    }
    let expired_at = Instant::now();
    std::thread::sleep(ERASE_WITHIN);
    for m in [&small, &large] {
        let holding = files_holding(&data, m.as_bytes());
        assert!(
            holding.is_empty(),
            "{m} still on disk {:?} after its expiry: {holding:?}\nnode log tail:\n{}",
            expired_at.elapsed(),
            common::tail(&node.log(), 30)
        );
    }
    eprintln!("erasures:\n{}", erasures_logged(&node).join("\n"));
}

//! Message bodies travel in Raft entries, so the log is snapshotted (and then
//! purged) by bytes as well as by entry count.

mod common;

use std::time::{Duration, Instant};

use common::{held_delivery, Node, Smtp};

#[test]
fn retention_a_log_that_grows_by_bytes_is_snapshotted() {
    let mut node = Node::start_with(
        "",
        &format!(
            "[raft]\nsnapshot_every = 100000\nsnapshot_log_bytes = 1048576\nkeep_logs = 5\n{}",
            held_delivery()
        ),
    );
    let line = format!("{}\r\n", "b".repeat(998));
    let body = format!("Subject: bulk\r\n\r\n{}", line.repeat(200));
    let mut ids = Vec::new();
    for _ in 0..12 {
        let mut s = Smtp::ehlo(node.smtp);
        ids.push(
            s.send_message("a@sender.test", &["b@example.test"], &body)
                .queued_id(),
        );
    }
    let snapshots = node.data_dir().join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let taken = std::fs::read_dir(&snapshots)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("snap-"))
            })
            .unwrap_or(false);
        if taken {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot after 2.4 MB of entries; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.log().contains("building a snapshot"));
    // Everything is still there after a restart from snapshot and log.
    let body = node.stop_and_read_body(&ids[11]);
    assert!(body.len() > 200_000);
    node.restart();
    assert_eq!(node.events("message.received").len(), 12);
}

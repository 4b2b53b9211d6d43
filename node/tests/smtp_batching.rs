//! Many sessions at once: accepted messages share Raft entries (group commit), and a
//! flood of refusals neither stalls acceptance nor goes unrecorded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Node, Smtp};

#[test]
fn batching_concurrent_sessions_share_raft_entries() {
    let node = Node::start("");
    let sessions = 30;
    let per_session = 10;
    let threads: Vec<_> = (0..sessions)
        .map(|t| {
            let addr = node.smtp;
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..per_session {
                    let mut s = Smtp::ehlo(addr);
                    let body = format!("Subject: batch {t}/{i}\r\n\r\nhello\r\n");
                    ids.push(
                        s.send_message("a@sender.test", &["b@example.test"], &body)
                            .queued_id(),
                    );
                    s.cmd("QUIT");
                }
                ids
            })
        })
        .collect();
    let acked: BTreeSet<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(acked.len(), sessions * per_session);
    let events = node.events("message.received");
    let stored: BTreeSet<String> = events
        .iter()
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acked);
    let entries: BTreeSet<u64> = events
        .iter()
        .map(|e| e["raft_index"].as_u64().unwrap())
        .collect();
    println!(
        "{} messages from {sessions} concurrent sessions in {} Raft entries",
        acked.len(),
        entries.len()
    );
    assert!(
        entries.len() < acked.len(),
        "every message had its own Raft entry: no group commit"
    );
}

#[test]
fn batching_a_flood_of_refusals_is_recorded_without_stalling_acceptance() {
    let node = Node::start("");
    let sessions = 8;
    let per_session = 1000;
    let flood: Vec<_> = (0..sessions)
        .map(|_| {
            let addr = node.smtp;
            std::thread::spawn(move || {
                let mut s = Smtp::ehlo(addr);
                assert_eq!(s.cmd("MAIL FROM:<spammer@sender.test>").code, 250);
                // Pipelined: all the RCPTs in one write, then every reply.
                let rcpts: String = (0..per_session)
                    .map(|i| format!("RCPT TO:<victim{i}@elsewhere.test>\r\n"))
                    .collect();
                s.send(rcpts.as_bytes());
                for _ in 0..per_session {
                    assert_eq!(s.read_reply().code, 554);
                }
            })
        })
        .collect();
    // Meanwhile, real mail still gets through promptly.
    let started = Instant::now();
    let mut s = Smtp::ehlo(node.smtp);
    let body = "Subject: during the flood\r\n\r\nhello\r\n";
    s.send_message("a@sender.test", &["b@example.test"], body)
        .queued_id();
    let took = started.elapsed();
    for t in flood {
        t.join().unwrap();
    }
    println!("a message during a flood of refusals was accepted in {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "acceptance stalled: {took:?}"
    );

    // Every refusal is accounted for: recorded one by one, or counted in a
    // suppressed-refusals event.
    let total = sessions * per_session;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (recorded, suppressed) = loop {
        let events = node.events("message.rejected");
        let recorded = events
            .iter()
            .filter(|e| e["event"]["reason"] == "relay_denied")
            .count();
        let suppressed: u64 = events
            .iter()
            .filter(|e| e["event"]["reason"] == "suppressed")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        if recorded + suppressed as usize >= total || Instant::now() > deadline {
            break (recorded, suppressed);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("{total} refusals: {recorded} recorded one by one, {suppressed} counted in bulk");
    assert_eq!(recorded + suppressed as usize, total);
}

//! Filtered queries over a large event log, through the secondary indexes.
//!
//! `cargo bench --workspace --bench event_query` records about 1,000,000 events (the
//! received, verdict, quarantined and rejected events of some 480,000 messages from
//! 20,000 senders in 2,000 domains to 10,000 recipients in 50 domains, from 30,000
//! client addresses, over 28 days of three nodes' slightly skewed clocks) into a state
//! database through [`StateStore::apply`], as Raft would, then times the queries the
//! API serves (a page of at most 100 events) and prints, for each, the events found,
//! the first run and the median and slowest of the next 30.
//!
//! `-- --events N` records N events instead; `-- --dir DIR` keeps the database in DIR
//! and reuses it when run again.

use std::time::{Duration, Instant};

use bulwark_model::samples::traffic::{self, message_id, op, shape};
use bulwark_storage::{EventFilter, Op, StateDir};

/// Operations per applied batch, about what Raft hands the state machine under load.
const BATCH: usize = 500;
const RUNS: usize = 30;
const LIMIT: usize = 100;

fn main() {
    let (want, keep) = traffic::bench_args("--events", 1_000_000);
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    let state = StateDir::open(&dir).expect("state database");
    let store = state.current();

    let (mut events, _) = store.chain_head();
    let mut messages = events / 2;
    if events < want {
        let started = Instant::now();
        let before = events;
        let mut next = 0u64;
        while events < want {
            let ops: Vec<Op> = (next..next + BATCH as u64).map(op).collect();
            next += BATCH as u64;
            store.apply(&[(next, &ops[..])], b"bench").expect("apply");
            events = store.chain_head().0;
        }
        messages = next;
        let took = started.elapsed();
        println!(
            "recorded {} events ({} messages) in {:.1} s: {:.0} events/s applied, indexes included",
            events - before,
            messages,
            took.as_secs_f64(),
            (events - before) as f64 / took.as_secs_f64()
        );
    }
    println!("{events} events in {}", dir.display());

    // The queries name values the log holds: those of a message in its middle.
    let middle = messages / 2;
    let s = shape(middle);
    let domain = |address: &str| address[address.rfind('@').unwrap_or(0)..].to_string();
    let hour = |from: i64| (Some(from), Some(from + 3_600_000));
    let (since, until) = hour(s.time_ms);
    let queries: Vec<(String, EventFilter)> = vec![
        (
            format!("sender={}", s.sender),
            EventFilter {
                sender: Some(s.sender.clone()),
                ..Default::default()
            },
        ),
        (
            format!("recipient={}", s.recipients[0]),
            EventFilter {
                recipient: Some(s.recipients[0].clone()),
                ..Default::default()
            },
        ),
        (
            format!("recipient={}", domain(&s.recipients[0])),
            EventFilter {
                recipient: Some(domain(&s.recipients[0])),
                ..Default::default()
            },
        ),
        (
            format!("client_ip={}", s.ip),
            EventFilter {
                client_ip: Some(s.ip.parse().expect("address")),
                ..Default::default()
            },
        ),
        (
            format!("message_id={}", message_id(middle)),
            EventFilter {
                message_id: Some(message_id(middle)),
                ..Default::default()
            },
        ),
        (
            "action=quarantine".into(),
            EventFilter {
                action: Some("quarantine".into()),
                ..Default::default()
            },
        ),
        (
            "type=message.rejected, one hour mid-log".into(),
            EventFilter {
                type_name: Some("message.rejected".into()),
                since_ms: since,
                until_ms: until,
                ..Default::default()
            },
        ),
        (
            format!("sender={} action=quarantine", domain(&s.sender)),
            EventFilter {
                sender: Some(domain(&s.sender)),
                action: Some("quarantine".into()),
                ..Default::default()
            },
        ),
        (
            format!(
                "sender={} recipient={}",
                domain(&s.sender),
                domain(&s.recipients[0])
            ),
            EventFilter {
                sender: Some(domain(&s.sender)),
                recipient: Some(domain(&s.recipients[0])),
                ..Default::default()
            },
        ),
        (
            "action=tag type=message.quarantined (none)".into(),
            EventFilter {
                action: Some("tag".into()),
                type_name: Some("message.quarantined".into()),
                ..Default::default()
            },
        ),
    ];

    println!(
        "\n{:<58} {:>7} {:>10} {:>11} {:>8}",
        "query (a page of at most 100)", "events", "first ms", "median ms", "max ms"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, filter) in &queries {
        let timed = || {
            let started = Instant::now();
            let (found, _) = store.events(filter, 0, LIMIT).expect("query");
            (found.len(), started.elapsed())
        };
        let (found, first) = timed();
        let mut times: Vec<Duration> = (0..RUNS).map(|_| timed().1).collect();
        times.sort();
        println!(
            "{name:<58} {found:>7} {:>10.2} {:>11.2} {:>8.2}",
            ms(first),
            ms(times[RUNS / 2]),
            ms(times[RUNS - 1])
        );
    }
}

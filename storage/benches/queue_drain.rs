//! Finding the next message to deliver in a large backlog, and how that cost moves
//! as the backlog drains.
//!
//! `cargo bench --workspace --bench queue_drain` queues 200,000 messages accepted by
//! three nodes through [`StateStore::apply`], as Raft would, then drains the queue as
//! one node's delivery worker does: it asks for the due messages its free slots can
//! take (64), then applies a lease and a delivered report for each, in batches. It
//! prints, per 1,000 messages delivered, the time spent finding them and the time of
//! the whole step, for the first and the last thousand and the slowest in between:
//! the finding must not grow as delivered messages pile up behind it.
//!
//! `-- --messages N` queues N messages instead.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bulwark_model::samples::{self, traffic};
use bulwark_storage::{AcceptedMessage, Command, DeliveryCommand, MessageId, Op, StateDir};

/// Operations per applied batch, about what Raft hands the state machine under load.
const BATCH: usize = 500;
/// The free slots a worker asks for at once (`delivery.concurrency`).
const SLOTS: usize = 64;
/// Messages per line of the report.
const STEP: usize = 1_000;

fn main() {
    let (messages, _) = traffic::bench_args("--messages", 200_000);
    let temp = tempfile::tempdir().expect("temporary directory");
    let state = StateDir::open(temp.path()).expect("state database");
    let store = state.current();
    let mut op_id = 0u128;
    let mut op = |node: u64, time_ms: i64, command: Command| {
        op_id += 1;
        Op {
            id: op_id,
            time_ms,
            node,
            command,
        }
    };

    let started = Instant::now();
    let mut index = 0u64;
    for first in (0..messages).step_by(BATCH) {
        let ops: Vec<Op> = (first..(first + BATCH as u64).min(messages))
            .map(|n| {
                let mut received = samples::received();
                received.message_id = MessageId::new(1_764_300_000_000 + n as i64, n as u128);
                let verdict = samples::verdict(received.message_id);
                let accepted = AcceptedMessage {
                    verdict,
                    received,
                    body: b"Subject: bench\r\n\r\nbody\r\n".to_vec(),
                };
                let time_ms = 1_764_300_000_000 + n as i64;
                op(
                    1 + n % 3,
                    time_ms,
                    Command::AcceptMessage(Box::new(accepted)),
                )
            })
            .collect();
        index += 1;
        store.apply(&[(index, &ops[..])], b"bench").expect("apply");
    }
    println!(
        "queued {messages} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Node 1 drains everything: the others' messages are long past the takeover.
    let now = 1_764_400_000_000i64;
    let (mut delivered, mut finding, mut step) = (0usize, Duration::ZERO, Instant::now());
    let mut lines: Vec<(usize, Duration, Duration)> = Vec::new();
    let drained = Instant::now();
    loop {
        let looked = Instant::now();
        let due = store
            .due_deliveries(1, now, 20_000, SLOTS, &HashSet::new())
            .expect("due deliveries");
        finding += looked.elapsed();
        if due.is_empty() {
            break;
        }
        let mut ops = Vec::with_capacity(due.len() * 2);
        for entry in &due {
            let message_id = entry.message_id;
            ops.push(op(
                1,
                now,
                Command::Delivery(Box::new(DeliveryCommand::Claim {
                    message_id,
                    lease_ms: 30_000,
                    replaces: None,
                })),
            ));
            let report = samples::delivered(message_id);
            ops.push(op(
                1,
                now,
                Command::Delivery(Box::new(DeliveryCommand::Report {
                    report,
                    bounce: None,
                })),
            ));
        }
        index += 1;
        store.apply(&[(index, &ops[..])], b"bench").expect("apply");
        let before = delivered;
        delivered += due.len();
        if delivered / STEP > before / STEP {
            lines.push((delivered, finding, step.elapsed()));
            finding = Duration::ZERO;
            step = Instant::now();
        }
    }
    assert_eq!(delivered as u64, messages, "every message delivered once");
    let per = |d: Duration| d.as_secs_f64() * 1e6 / STEP as f64;
    let show = |what: &str, line: &(usize, Duration, Duration)| {
        println!(
            "{what:>8} (to {:>7}): finding {:>6.1} us/message, the whole step {:>6.1} us/message",
            line.0,
            per(line.1),
            per(line.2)
        );
    };
    show("first", &lines[0]);
    let slowest = lines
        .iter()
        .max_by_key(|l| l.1)
        .expect("at least one thousand");
    show("slowest", slowest);
    show("last", lines.last().expect("at least one thousand"));
    println!(
        "drained {delivered} messages in {:.1} s: {:.0} messages/s found, leased and reported",
        drained.elapsed().as_secs_f64(),
        delivered as f64 / drained.elapsed().as_secs_f64()
    );
}

//! What-if over a large log: a proposed policy tried on every decision on record.
//!
//! `cargo bench --bench policy_simulate` records 1,000,000 scanned messages (the
//! made-up traffic of `bulwark_model::samples::traffic`, each verdict with six scored
//! symbols and, for the quarantined, a finding) into a state database through
//! `StateStore::apply`, as Raft would, then asks what a stricter policy would have
//! done to all of them, as `POST /v1/policy/simulate` does: a part at a time within
//! its 5 s budget, each part going on from the previous one's cursor. It prints the
//! decisions tried, what would change, the parts and the time, for three runs.
//!
//! `-- --messages N` records N messages instead; `-- --dir DIR` keeps the database
//! in DIR and reuses it when run again.

use std::time::{Duration, Instant};

use bulwark_model::samples::traffic;
use bulwark_node::policy::simulate::{simulate, Range};
use bulwark_storage::{Action, Command, Finding, JudgedRejection, Op, StateDir, Symbol};
use serde_json::json;

/// Operations per applied batch, about what Raft hands the state machine under load.
const BATCH: u64 = 500;
/// What the API gives one call.
const BUDGET: Duration = Duration::from_secs(5);
const RUNS: usize = 3;

/// Message `n` as the ingress records it today: symbols that add up to its score, a
/// finding for what is quarantined, and a rejection that keeps the From address.
fn recorded(n: u64) -> Op {
    let mut op = traffic::op(n);
    let verdict = match &mut op.command {
        Command::AcceptMessage(m) => &mut m.verdict,
        Command::RejectMessage(r) => &mut r.verdict,
        _ => unreachable!("the traffic is accepted or rejected messages"),
    };
    let names = [
        "MISSING_DATE",
        "HTML_MESSAGE",
        "SPF_PASS",
        "BAYES_50",
        "URI_COUNT",
        "FREEMAIL_FROM",
    ];
    let share = verdict.score / names.len() as f64;
    verdict.symbols = names
        .iter()
        .map(|name| Symbol {
            name: (*name).into(),
            score: share,
            description: format!("{name}: what the rule found, in words, as rules describe it"),
            engine: "spam".into(),
        })
        .collect();
    if verdict.action == Action::Quarantine {
        verdict.findings.push(Finding {
            kind: "blocked_attachment".into(),
            name: "extension:exe".into(),
            location: "part 2".into(),
            engine: "attachments".into(),
        });
    }
    if let Command::RejectMessage(r) = op.command {
        op.command = Command::RejectJudged(Box::new(JudgedRejection {
            header_from: r.rejection.mail_from.clone(),
            rejection: r.rejection,
            verdict: r.verdict,
        }));
    }
    op
}

fn main() {
    let (want, keep) = traffic::bench_args("--messages", 1_000_000);
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    let state = StateDir::open(&dir).expect("state database");
    let store = state.current();

    let started = Instant::now();
    let mut next = store.chain_head().0 / 2;
    let recorded_before = next;
    while next < want {
        let ops: Vec<Op> = (next..(next + BATCH).min(want)).map(recorded).collect();
        next += ops.len() as u64;
        store.apply(&[(next, &ops[..])], b"bench").expect("apply");
    }
    if next > recorded_before {
        println!(
            "recorded {} messages ({} events) in {:.1} s",
            next - recorded_before,
            store.chain_head().0,
            started.elapsed().as_secs_f64()
        );
    }

    // Stricter: tag from 3, quarantine from 8, attachments rejected, two hundred
    // senders' domains blocked, a partner allowed.
    let blocked: Vec<String> = (0..200).map(|d| format!("sender{d}.test")).collect();
    let proposed = json!({
        "tag_score": 3.0,
        "quarantine_score": 8.0,
        "attachments": "reject",
        "block": blocked,
        "allow": ["sender1999.test"],
    });
    println!("| run | decisions tried | would change | parts | seconds | decisions/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for run in 1..=RUNS {
        let started = Instant::now();
        let (mut judged, mut changed, mut parts) = (0u64, 0u64, 0u32);
        let mut range = Range::default();
        loop {
            let outcome = simulate(&store, &proposed, range, BUDGET)
                .expect("reading the log")
                .expect("a valid policy");
            parts += 1;
            judged += outcome.judged;
            changed += outcome.changes.values().map(|(n, _)| n).sum::<u64>();
            match outcome.next {
                Some(after) => range.after = after,
                None => break,
            }
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "| {run} | {judged} | {changed} | {parts} | {took:.2} | {:.0} |",
            judged as f64 / took
        );
    }
}

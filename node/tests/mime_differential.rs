//! Differential decoding: what Python's `email` package decodes from a message,
//! Bulwark's scanner must have looked at (invariant 7).
//!
//! Messages are generated from the evasion classes that split gateways from mail
//! clients (stray characters in base64, missing or early padding, bad
//! quoted-printable escapes, repeated or odd `Content-Transfer-Encoding` headers,
//! boundary tricks, missing final boundaries, RFC 2231 continuations, uuencode,
//! encoded attached messages), then mutated at random from a fixed seed, and, for a
//! share of them, byte by byte. Each message is decoded by Bulwark's unpacker and
//! by `node/tests/data/mime/parts.py`; every leaf part Python decodes must be among
//! the files the scanner judged (its bytes, or for a text part its text), else the
//! test fails naming the message, which is kept for a look.
//!
//! Bounded: `BULWARK_DIFF_MESSAGES` messages (default 10,000) or 90 seconds for the
//! whole run, whichever comes first: messages are generated, read by Python and
//! compared in batches until either runs out, and Python is stopped at the bound;
//! `BULWARK_DIFF_SEED` picks another seed.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_node::scan::contents::{unpack, Limits};
use sha2::{Digest, Sha256};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A small deterministic generator (xorshift64*), so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn base64_lines(data: &[u8], width: usize) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    encoded
        .as_bytes()
        .chunks(width.max(4))
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn quoted_printable(data: &[u8], rng: &mut Rng) -> String {
    let mut out = String::new();
    let mut line = 0;
    for &b in data {
        let piece = if (b.is_ascii_graphic() && b != b'=') || (b == b' ' && rng.chance(80)) {
            (b as char).to_string()
        } else if rng.chance(20) {
            format!("={b:02x}")
        } else {
            format!("={b:02X}")
        };
        if line + piece.len() > 72 {
            out.push_str(if rng.chance(10) { "=  \r\n" } else { "=\r\n" });
            line = 0;
        }
        line += piece.len();
        out.push_str(&piece);
    }
    out
}

fn uuencode(data: &[u8], name: &str) -> String {
    let mut out = format!("begin 644 {name}\r\n");
    let char_of = |v: u8| if v == 0 { '`' } else { (v + 32) as char };
    for chunk in data.chunks(45) {
        out.push(char_of(chunk.len() as u8));
        for group in chunk.chunks(3) {
            let b = [
                group[0],
                *group.get(1).unwrap_or(&0),
                *group.get(2).unwrap_or(&0),
            ];
            out.push(char_of(b[0] >> 2));
            out.push(char_of(((b[0] & 3) << 4) | (b[1] >> 4)));
            out.push(char_of(((b[1] & 15) << 2) | (b[2] >> 6)));
            out.push(char_of(b[2] & 63));
        }
        out.push_str("\r\n");
    }
    out.push_str("`\r\nend\r\n");
    out
}

/// Breaks an encoded body the way evasions do.
fn damage_base64(encoded: String, rng: &mut Rng) -> String {
    let mut s = encoded;
    match rng.below(7) {
        0 => {
            let junk = *rng.pick(&["!", "*", "%", "\u{1}", ".", "\u{7f}", "~", "-", "\u{e9}"]);
            let at = rng.below(s.len());
            let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            s.insert_str(at, junk);
        }
        1 => s = s.trim_end_matches('=').to_owned(),
        2 => s.push_str("\r\n!!junk after the padding"),
        3 => {
            use base64::Engine as _;
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(b"more data"));
        }
        4 => s = format!(".{s}"),
        5 => s = s.replace("\r\n", "\r\n "),
        _ => {}
    }
    s
}

fn damage_qp(encoded: String, rng: &mut Rng) -> String {
    let mut s = encoded;
    let insert = *rng.pick(&["=ZZ", "==", "=4", "= ", "=\t\r\n", "=\r\n"]);
    let at = rng.below(s.len() + 1);
    let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.insert_str(at, insert);
    s
}

fn payload(rng: &mut Rng) -> (Vec<u8>, &'static str, &'static str) {
    match rng.below(4) {
        0 => (EICAR.to_vec(), "application/octet-stream", "eicar.com"),
        1 => {
            let len = 1 + rng.below(600);
            let data = (0..len).map(|_| rng.next() as u8).collect();
            (data, "application/pdf", "invoice.pdf")
        }
        2 => (
            b"Cheap pills, visit http://spam.example/now - limited offer!\r\n".to_vec(),
            "text/plain",
            "note.txt",
        ),
        _ => (
            b"<html><body><a href=\"http://phish.example/login\">Your bank</a></body></html>"
                .to_vec(),
            "text/html",
            "page.html",
        ),
    }
}

/// One part's headers and body, the transfer encoding chosen and damaged at random.
fn part(rng: &mut Rng) -> String {
    let (data, content_type, name) = payload(rng);
    let (cte, body) = match rng.below(5) {
        0 | 1 => {
            let width = *rng.pick(&[76, 64, 10, 1000]);
            let encoded = base64_lines(&data, width);
            let encoded = if rng.chance(60) {
                damage_base64(encoded, rng)
            } else {
                encoded
            };
            ("base64", encoded)
        }
        2 => {
            let encoded = quoted_printable(&data, rng);
            let encoded = if rng.chance(50) {
                damage_qp(encoded, rng)
            } else {
                encoded
            };
            ("quoted-printable", encoded)
        }
        3 => ("x-uuencode", uuencode(&data, name)),
        _ => ("7bit", String::from_utf8_lossy(&data).into_owned()),
    };
    let mut headers = Vec::new();
    let disposition = match rng.below(4) {
        0 => format!("attachment; filename=\"{name}\""),
        1 => {
            let (stem, ext) = name.split_once('.').unwrap();
            format!("attachment; filename*0*=utf-8''{stem}; filename*1=\".{ext}\"")
        }
        2 => "inline".to_owned(),
        _ => String::new(),
    };
    headers.push(format!("Content-Type: {content_type}; name=\"{name}\""));
    if !disposition.is_empty() {
        headers.push(format!("Content-Disposition: {disposition}"));
    }
    let cte_value = match rng.below(6) {
        0 => cte.to_ascii_uppercase(),
        1 => format!(" {cte} "),
        2 => format!("{cte} (as sent)"),
        _ => cte.to_owned(),
    };
    headers.push(format!("Content-Transfer-Encoding: {cte_value}"));
    if rng.chance(15) {
        let other = *rng.pick(&["7bit", "base64", "quoted-printable", "8bit"]);
        let line = format!("Content-Transfer-Encoding: {other}");
        if rng.chance(50) {
            headers.push(line);
        } else {
            headers.insert(0, line);
        }
    }
    let separator = if rng.chance(3) { "" } else { "\r\n" };
    format!("{}\r\n{separator}{body}", headers.join("\r\n"))
}

/// A whole message: one part, a multipart (perhaps nested, perhaps with boundary
/// tricks) or an attached message.
fn message(rng: &mut Rng, depth: usize) -> String {
    let top = "From: a@sender.test\r\nTo: b@example.test\r\nSubject: test\r\nMIME-Version: 1.0\r\n";
    let headers = if depth == 0 { top } else { "" };
    match rng.below(if depth > 2 { 1 } else { 4 }) {
        0 => format!("{headers}{}", part(rng)),
        3 => {
            let inner = message(rng, depth + 1);
            let inner = format!("From: c@sender.test\r\nSubject: inner\r\n{inner}");
            if rng.chance(40) {
                format!(
                    "{headers}Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
                    base64_lines(inner.as_bytes(), 76)
                )
            } else {
                format!("{headers}Content-Type: message/rfc822\r\n\r\n{inner}")
            }
        }
        _ => {
            let boundary = format!("b{}", rng.below(1000));
            let param = match rng.below(5) {
                0 => format!("boundary={boundary}"),
                1 => {
                    let (a, b) = boundary.split_at(1);
                    format!("boundary*0=\"{a}\"; boundary*1=\"{b}\"")
                }
                2 => format!("boundary=\"{boundary}\"; boundary=\"other{boundary}\""),
                3 => format!("boundary=\"{boundary}\"  "),
                _ => format!("boundary=\"{boundary}\""),
            };
            let mut out =
                format!("{headers}Content-Type: multipart/mixed; {param}\r\n\r\npreamble\r\n");
            let parts = 1 + rng.below(3);
            for _ in 0..parts {
                let line_tail = *rng.pick(&["", "", "", " ", "\t "]);
                out.push_str(&format!("--{boundary}{line_tail}\r\n"));
                if rng.chance(25) {
                    out.push_str(&message(rng, depth + 1));
                } else {
                    out.push_str(&part(rng));
                }
                out.push_str("\r\n");
            }
            if !rng.chance(20) {
                out.push_str(&format!("--{boundary}--\r\nepilogue\r\n"));
            }
            out
        }
    }
}

/// A few random byte edits: the fuzzing share of the corpus.
fn mutate_bytes(raw: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        if raw.is_empty() {
            return;
        }
        let at = rng.below(raw.len());
        match rng.below(3) {
            0 => raw[at] = *rng.pick(b"=-\r\n \t!:;\"ABz0"),
            1 => {
                raw.remove(at);
            }
            _ => raw.insert(at, *rng.pick(b"=-\r\n \t!:;\"ABz0")),
        }
    }
}

/// The message as the gateway stores and relays it: the SMTP ingress turns every
/// bare CR and bare LF into CRLF (`bare_newline = "normalize"`; `"reject"` refuses
/// them), so no reader ever sees a line ended otherwise.
fn as_stored(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'\r' if raw.get(at + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                at += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        at += 1;
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What Bulwark's scanner judges of `raw`: the hash of every file it lists.
fn bulwark_hashes(raw: &[u8]) -> HashSet<String> {
    let message = bulwark_node::scan::parse(raw).unwrap_or_else(|| mail_parser::Message {
        parts: vec![mail_parser::MessagePart::default()],
        raw_message: raw.into(),
        ..Default::default()
    });
    unpack(&message, &Limits::default())
        .files
        .iter()
        .map(|f| sha256_hex(&f.data))
        .collect()
}

/// Python's reading of every message in `dir`, one JSON value a message; `None` when
/// it is not done by `deadline` (it is stopped then).
fn python_parts(dir: &Path, deadline: Instant) -> Option<Vec<serde_json::Value>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mime/parts.py");
    let (out, err) = (dir.join("parts.jsonl"), dir.join("parts.err"));
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("python3 runs (the differential test needs Python's email package)");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "parts.py failed: {}",
        std::fs::read_to_string(err).unwrap()
    );
    Some(
        std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// Messages generated, read by Python and compared at a time.
const BATCH: usize = 500;
/// The whole run's bound: generating, Python's reading and the comparison.
const BOUND: Duration = Duration::from_secs(90);

#[test]
fn every_part_python_decodes_is_scanned() {
    let count: usize = std::env::var("BULWARK_DIFF_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("BULWARK_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_b01d_face);
    let mut rng = Rng(seed.max(1));
    let deadline = Instant::now() + BOUND;
    let mut written = 0;
    let mut messages = 0;
    let mut compared = 0;
    let mut skipped = 0;
    let mut failures = Vec::new();
    let mut python_failed = 0;
    let mut kept = Vec::new();
    while written < count && Instant::now() < deadline {
        let dir = tempfile::tempdir().unwrap();
        let first = written;
        while written < count.min(first + BATCH) && Instant::now() < deadline {
            let mut raw = message(&mut rng, 0).into_bytes();
            if rng.chance(25) {
                mutate_bytes(&mut raw, &mut rng);
            }
            let raw = as_stored(&raw);
            let mut file =
                std::fs::File::create(dir.path().join(format!("{written:05}.eml"))).unwrap();
            file.write_all(&raw).unwrap();
            written += 1;
        }
        let Some(lines) = python_parts(dir.path(), deadline) else {
            break;
        };
        let failed_before = failures.len();
        let mut out_of_time = false;
        for line in lines {
            if Instant::now() >= deadline {
                out_of_time = true;
                break;
            }
            messages += 1;
            let name = line["file"].as_str().unwrap();
            if line.get("error").is_some() {
                python_failed += 1;
                continue;
            }
            let raw = std::fs::read(dir.path().join(name)).unwrap();
            let ours = bulwark_hashes(&raw);
            for part in line["parts"].as_array().unwrap() {
                if part.get("skip").is_some() {
                    skipped += 1;
                    continue;
                }
                compared += 1;
                let found = ours.contains(part["sha256"].as_str().unwrap())
                    || part["text_sha256"].as_array().is_some_and(|texts| {
                        texts.iter().any(|h| ours.contains(h.as_str().unwrap()))
                    });
                if !found {
                    failures.push(format!(
                        "{name}: {} of {} bytes (Python's defects {}) starting {}",
                        part["type"], part["len"], part["defects"], part["head"]
                    ));
                }
            }
        }
        if failures.len() > failed_before {
            kept.push(dir.keep());
        }
        if out_of_time {
            break;
        }
    }
    println!(
        "{written} messages generated, {messages} compared ({python_failed} Python could not \
         read), {compared} parts compared, {skipped} skipped (Python kept the encoded text, \
         or empty), {} not scanned",
        failures.len()
    );
    if !failures.is_empty() {
        panic!(
            "parts Python decodes that the scanner did not see (messages kept in {kept:?}):\n{}",
            failures
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(messages > 0, "no message compared within {BOUND:?}");
    assert!(
        compared > messages,
        "too few parts compared: {compared} in {messages} messages"
    );
}

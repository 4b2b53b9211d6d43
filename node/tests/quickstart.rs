//! The README's quick starts run as written: every `sh` block marked
//! `<!-- quickstart -->` in README.md, in order, as one shell script, with the
//! `bulwark` just built on `PATH`, in an empty directory. A README that drifts from
//! the binary fails here.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest the whole walk-through may take (DNS lookups of the example domains may
/// time out on a machine without a resolver; each costs the scan budget at most).
const BOUND: Duration = Duration::from_secs(300);

/// The marked blocks, in order.
fn quick_starts(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- quickstart -->" {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a quickstart mark not followed by a sh block"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

#[test]
fn the_readme_quick_starts_run_as_written() {
    let readme = include_str!("../../README.md");
    let blocks = quick_starts(readme);
    assert!(
        blocks.len() >= 2,
        "the README marks {} quick starts",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_bulwark")).parent().unwrap();
    // What a reader's shell gives for free: every background job stopped at the end.
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{}\n",
        blocks.join("\n")
    );
    std::fs::write(dir.path().join("quickstart.sh"), &script).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg("quickstart.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "the quick starts failed ({status}, {:?}):\n--- stdout\n{}\n--- stderr\n{}",
        started.elapsed(),
        read("out.log"),
        read("err.log")
    );
    // What the walk-through says happened: the first message, the released one and
    // the two the cluster relayed reached the single node's Maildir (a relayed
    // retry after a 451 may add a copy), and the mail log tells the quarantine.
    let delivered = || {
        std::fs::read_dir(dir.path().join("bulwark-data/delivered/new"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        delivered() >= 4,
        "{} delivered:\n{}",
        delivered(),
        read("out.log")
    );
    let mail_log = read("bulwark-data/mail.log");
    for stage in [
        "stage=received",
        "stage=quarantined",
        "stage=released",
        "stage=delivered",
    ] {
        assert!(
            mail_log.contains(stage),
            "no {stage} in the mail log:\n{mail_log}"
        );
    }
}

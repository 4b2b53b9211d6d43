//! `bulwark backup` and `bulwark restore` without a config, beside the data directory
//! of a node run as the embedded default (`bulwark serve` without a config): they
//! find its API, admin token and data directory as it does, report their progress,
//! and the node restored from the backup holds what it held (read with `bulwark
//! quarantine list`, every option left to its default).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Smtp;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A message with a Windows program attached: quarantined as blocked content.
const PROGRAM: &str = "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n\
    Subject: the tool\r\nMIME-Version: 1.0\r\n\
    Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/plain\r\n\r\nRun this now.\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";

/// `bulwark ARGS` run in `cwd`: its exit code, stdout and stderr.
fn bulwark(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run bulwark");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bulwark serve` without a config in a directory of its own: the embedded default
/// (API on 127.0.0.1:8080, SMTP on 127.0.0.1:2525, data in ./bulwark-data).
struct Embedded {
    child: Child,
}

impl Embedded {
    const API: &'static str = "http://127.0.0.1:8080";

    fn start(dir: &Path) -> Embedded {
        // Its ports are fixed: wait for another test's node to let go of them.
        let deadline = Instant::now() + Duration::from_secs(120);
        while ["127.0.0.1:8080", "127.0.0.1:2525"]
            .iter()
            .any(|a| TcpListener::bind(a).is_err())
        {
            assert!(Instant::now() < deadline, "8080 or 2525 stays taken");
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .arg("serve")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bulwark");
        let node = Embedded { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::blocking::get(format!("{}/readyz", Self::API));
            if ready.is_ok_and(|r| r.status() == 200) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "not ready in 30 s:\n{}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids `bulwark quarantine list --json` gives with every default: the embedded
/// default's API and admin token.
fn quarantined(dir: &Path) -> Vec<String> {
    let (code, out, said) = bulwark(dir, &["quarantine", "list", "--json"]);
    assert_eq!(code, 0, "{said}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// The files under `dir`.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            match e.file_type().unwrap().is_dir() {
                true => files_under(&e.path()),
                false => 1,
            }
        })
        .sum()
}

#[test]
fn backup_and_restore_of_the_embedded_default_need_no_config_and_report_progress() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Embedded::start(d);
    let id = Smtp::ehlo("127.0.0.1:2525".parse().unwrap())
        .send_message("alice@sender.test", &["bob@example.test"], PROGRAM)
        .queued_id();
    let deadline = Instant::now() + WAIT;
    while quarantined(d) != [id.clone()] {
        assert!(Instant::now() < deadline, "{id} never quarantined");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, manifest, said) = bulwark(d, &["backup", "--to", "bulwark-data/backups/first"]);
    assert_eq!(code, 0, "{said}");
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    let last = said.lines().rev().nth(1).unwrap_or_default();
    let files = files_under(&d.join("bulwark-data/backups/first"));
    assert!(
        last.starts_with(&format!("backup: {files} files, ")) && last.contains(" in "),
        "no final progress line:\n{said}"
    );
    assert!(said.contains("backup of node 1 in"), "{said}");
    assert!(manifest["event_count"].as_u64().unwrap() > 0, "{manifest}");
    node.stop();

    // A new data directory from the backup, then the node again: the message is there.
    std::fs::rename(d.join("bulwark-data"), d.join("old")).unwrap();
    let (code, _, said) = bulwark(d, &["restore", "--from", "old/backups/first"]);
    assert_eq!(code, 0, "{said}");
    let last = said
        .lines()
        .rfind(|l| l.starts_with("restore: "))
        .unwrap_or_else(|| panic!("no progress line:\n{said}"));
    let files = files_under(&d.join("old/backups/first/state"));
    assert!(
        last.starts_with(&format!("restore: {files} files, ")) && last.contains(" in "),
        "{said}"
    );
    let node = Embedded::start(d);
    assert_eq!(quarantined(d), [id]);
    node.stop();
}

//! The HTTP API under a schema-driven fuzzer: `openapi_fuzz.sh` runs Schemathesis
//! against a real single node holding a quarantined and a queued message, with the
//! admin token, and every answer must be one the OpenAPI document declares (status,
//! content type, schema), no 5xx, and invalid input refused. Without the
//! `schemathesis` command the test says loudly that it did not run, and passes,
//! unless `CI` is set: in CI it must run (`.ci/run` installs it).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tail, Node, Smtp};

/// How long the whole fuzz run may take (the script's own budget is shorter).
const DEADLINE: Duration = Duration::from_secs(300);

/// A message with a Windows program attached: quarantined as blocked content.
const QUARANTINED: &str = "From: <alice@sender.test>\r\nTo: bob@example.test\r\n\
    Subject: the tool\r\nMIME-Version: 1.0\r\n\
    Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/plain\r\n\r\nRun this.\r\n\
    --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
    Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n";

/// A plain message: accepted and queued (the node's next hop refuses: it stays).
const QUEUED: &str = "From: <alice@sender.test>\r\nTo: bob@example.test\r\n\
    Subject: minutes\r\n\r\nThe minutes of the meeting.\r\n";

#[test]
fn schemathesis_finds_no_mismatch_and_no_server_error() {
    let installed = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and `schemathesis` is not installed: pip install it (see .ci/run)"
        );
        eprintln!(
            "\n*** SKIPPED schemathesis_finds_no_mismatch_and_no_server_error: no `schemathesis` \
             command (pip install schemathesis, the version .ci/run pins) ***\n"
        );
        return;
    }
    let node = Node::start("");
    // A quarantined message and a queued one, so that the listings answer with items
    // and their schemas are checked on them.
    for body in [QUARANTINED, QUEUED] {
        let mut smtp = Smtp::ehlo(node.smtp);
        let reply = smtp.send_message("alice@sender.test", &["bob@example.test"], body);
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_fuzz.sh");
    let output = node.dir().join("schemathesis.log");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(&node.api)
        .arg(node.data_dir().join("admin.token"))
        .arg(node.dir().join("schemathesis-report"))
        // Schemathesis keeps a cache in its working directory: the node's.
        .current_dir(node.dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::fs::File::create(node.dir().join("schemathesis.err")).unwrap())
        .spawn()
        .expect("running openapi_fuzz.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&output).unwrap_or_default();
    let err = std::fs::read_to_string(node.dir().join("schemathesis.err")).unwrap_or_default();
    // Its summary (shown with --nocapture, and in a failure's message).
    println!("{}", tail(&said, 30));
    match status {
        Some(status) => assert!(
            status.success(),
            "schemathesis found problems ({status}):\n{said}\n{err}\nnode log:\n{}",
            tail(&node.log(), 40)
        ),
        None => panic!(
            "schemathesis did not finish in {DEADLINE:?}:\n{}\n{err}",
            tail(&said, 60)
        ),
    }
    // The fuzzer's requests reached the node: the run was not empty.
    assert!(said.contains(" passed"), "{said}");
}

//! Signed checkpoints of the event chain (`[audit] checkpoint_secs`): the leader
//! signs where the chain stands with its node's Ed25519 key, only when something was
//! recorded since the last checkpoint; the signature checks out against the
//! documented message with an independent implementation; both verifiers count the
//! checkpoints and name the key.

mod common;

use std::time::{Duration, Instant};

use common::{Api, Node};
use serde_json::Value;

fn checkpoints(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/v1/events?type=audit.checkpoint&limit=100");
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

fn wait_checkpoints(api: &Api, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = checkpoints(api);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} checkpoints, not {n}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the node and runs `bulwark audit verify` on its data dir: the report, which
/// must say the chain is whole.
fn stop_and_verify(node: &mut Node) -> Value {
    node.terminate(Duration::from_secs(30));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["audit", "verify", "--data-dir"])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_leader_signs_checkpoints_that_both_verifiers_check() {
    let mut node = Node::start_with(
        "",
        &(common::held_delivery() + "[audit]\ncheckpoint_secs = 1\n"),
    );
    let api = Api::new(&node);
    let mut last = 0;
    for text in ["one", "two"] {
        let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": text }));
        assert_eq!(status, 201, "{body}");
        last = body["seq"].as_u64().unwrap();
    }
    let first = wait_checkpoints(&api, 1).remove(0);
    let c = &first["checkpoint"];
    assert_eq!(c["node"], 1);
    assert_eq!(c["seq"], last, "{first}");
    let (status, named) = api.get(&format!("/v1/events?after={}&limit=1", last - 1));
    assert_eq!(status, 200);
    assert_eq!(
        c["hash"], named["events"][0]["hash"],
        "the hash of the last note"
    );

    // Checked here with ring directly against the documented message:
    // "bulwark.checkpoint" || seq (u64 big-endian) || hash.
    let hex = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let mut message = b"bulwark.checkpoint".to_vec();
    message.extend_from_slice(&last.to_be_bytes());
    message.extend_from_slice(&hex(&c["hash"]));
    let key = hex(&c["public_key"]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(&message, &hex(&c["signature"]))
        .expect("the checkpoint's signature verifies");
    let mut other = message.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(&other, &hex(&c["signature"]))
            .is_err()
    );

    // Idle: no checkpoint of a checkpoint.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(checkpoints(&api).len(), 1);
    let (status, body) = api.post_json("/v1/notes", &serde_json::json!({ "text": "three" }));
    assert_eq!(status, 201, "{body}");
    let both = wait_checkpoints(&api, 2);
    assert_eq!(
        both[1]["checkpoint"]["public_key"], c["public_key"],
        "one key per node"
    );

    let signer = format!("1:{}", c["public_key"].as_str().unwrap());
    let (status, report) = api.get("/v1/events/verify");
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checkpoints"], 2, "{report}");
    assert_eq!(report["signers"], serde_json::json!([signer]));

    // The key stays in the data dir, readable by the owner only, across restarts.
    let key_file = node.data_dir().join("audit-signing.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let offline = stop_and_verify(&mut node);
    assert_eq!(offline["checkpoints"], 2, "{offline}");
    assert_eq!(offline["signers"], serde_json::json!([signer]));
    // An auditor who pinned the node's key passes; one expecting another key does not.
    let pinned = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["audit", "verify", "--trusted-signer", key, "--data-dir"])
            .arg(node.data_dir())
            .output()
            .unwrap()
    };
    assert!(pinned(&signer).status.success());
    let other = format!("1:{}", "ab".repeat(32));
    let refused = pinned(&other);
    assert_eq!(refused.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["problem"].as_str().unwrap().contains(&signer),
        "{report}"
    );
    node.restart();
    let (status, body) =
        Api::new(&node).post_json("/v1/notes", &serde_json::json!({ "text": "four" }));
    assert_eq!(status, 201, "{body}");
    let three = wait_checkpoints(&Api::new(&node), 3);
    assert_eq!(three[2]["checkpoint"]["public_key"], c["public_key"]);
}

#[test]
fn the_retention_purges_on_record_only_what_the_exporters_have_shipped() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let secret = "retention-test-webhook-secret";
    let http = rt
        .block_on(bulwark_cluster_tests::siem::HttpReceiver::start(
            "unused",
            secret.as_bytes(),
        ))
        .unwrap();
    http.set_up(false);
    let config = format!(
        "[audit]\nmax_events = 20\nretention_check_secs = 1\n\n\
         [[siem.exporters]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\n\
         secret = \"{secret}\"\nretry_max_secs = 1\n",
        http.url()
    );
    let mut node = Node::start_with("", &(common::held_delivery() + &config));
    let api = Api::new(&node);
    for n in 0..30 {
        let (status, body) = api.post_json(
            "/v1/notes",
            &serde_json::json!({ "text": format!("note {n}") }),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (_, status) = api.get("/v1/cluster");
    let recorded = status["event_count"].as_u64().unwrap();
    // The exporter's receiver is down: nothing may go, however far over the limit.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, first) = api.get("/v1/events?limit=1");
    assert_eq!(first["events"][0]["seq"], 1, "{first}");
    assert!(node.log().contains("event retention held back"));

    // Shipped: the oldest go, down to nine tenths of the limit, on record.
    http.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let purged = loop {
        let (_, page) = api.get("/v1/events?type=audit.purged");
        if let Some(event) = page["events"].get(0) {
            break event.clone();
        }
        assert!(Instant::now() < deadline, "no purge");
        std::thread::sleep(Duration::from_millis(100));
    };
    let through = purged["purge"]["through_seq"].as_u64().unwrap();
    assert_eq!(purged["purge"]["first_seq"], 1);
    assert_eq!(
        through,
        recorded - 18,
        "{recorded} events (30 notes), the newest 18 kept: {purged}"
    );
    assert_eq!(purged["event"]["reason"], "beyond the newest 20 events");
    let (_, page) = api.get("/v1/events?limit=1000");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events[0]["seq"], through + 1);
    assert_eq!(events[0]["prev_hash"], purged["purge"]["through_hash"]);
    assert!(events.len() <= 20, "{} events kept", events.len());
    let (status, report) = api.get("/v1/events/verify");
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["purged_through"], through);
    // The exporter shipped every event before it went, and the purge too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bulwark_cluster_tests::siem::seqs(&http.webhook_events("hook"))
        .contains(&purged["seq"].as_u64().unwrap())
    {
        assert!(Instant::now() < deadline, "the purge was not exported");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shipped = bulwark_cluster_tests::siem::seqs(&http.webhook_events("hook"));
    assert!((1..=through).all(|s| shipped.contains(&s)));

    let offline = stop_and_verify(&mut node);
    assert_eq!(offline["purged_through"], through, "{offline}");
    // Keys pinned but no checkpoint to check them against: not a pass.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["audit", "verify", "--trusted-signer", "1:00", "--data-dir"])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no signed checkpoint"));
}

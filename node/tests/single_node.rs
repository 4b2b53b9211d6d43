//! A single-node gateway run as a real process and driven over real HTTP: the audit
//! trail's write and read paths, its limits, persistence across restarts, and the
//! embedded default.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_cluster_tests::ports::free as free_port;
use serde_json::{json, Value};

struct Node {
    child: Child,
    dir: PathBuf,
    api: String,
}

impl Node {
    fn start(dir: &Path, config: Option<&Path>, api: &str) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulwark"));
        cmd.arg("serve").current_dir(dir);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bulwark");
        let node = Node {
            child,
            dir: dir.to_path_buf(),
            api: format!("http://{api}"),
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("{}/readyz", self.api)) {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node not ready in 30 s; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn stop(mut self) {
        // SIGTERM through the standard library would need unsafe or a spawned `kill`;
        // a clean stop is exercised by the cluster tests. Here: crash-stop.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

/// Waits until a new node has recorded what it records at its first start (the
/// cluster's bootstrap admin, its signing key and the policy seeded from its
/// `[policy]`: three events) and returns the count.
fn settled(api: &str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cluster: Value = client()
            .get(format!("{api}/v1/cluster"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let count = cluster["event_count"].as_u64().unwrap();
        if count >= 3 {
            assert_eq!(count, 3, "{cluster}");
            return count;
        }
        assert!(std::time::Instant::now() < deadline, "{cluster}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn notes_are_chained_listed_verified_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 1\ndata_dir = \"data\"\n[api]\nlisten = \"{api}\"\n\
             [smtp]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let node = Node::start(dir.path(), Some(&config), &api);
    let token = token(&dir.path().join("data"));
    let c = client();
    let base = settled(&node.api);

    let mut hashes = Vec::new();
    for i in 1..=5 {
        let r = c
            .post(format!("{}/v1/notes", node.api))
            .bearer_auth(&token)
            .json(&json!({ "text": format!("note {i}") }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
        let body: Value = r.json().unwrap();
        assert_eq!(body["seq"], base + i);
        hashes.push(body["hash"].as_str().unwrap().to_string());
    }

    let page: Value = c
        .get(format!("{}/v1/events?after={}&limit=2", node.api, base + 1))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["seq"], base + 2);
    assert_eq!(events[0]["type"], "audit.note");
    assert_eq!(events[0]["message"], "note 2");
    assert_eq!(events[0]["user"]["name"], "admin");
    assert_eq!(events[0]["prev_hash"], hashes[0]);
    assert_eq!(events[1]["hash"], hashes[2]);
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page["next"], base + 3);

    let verify: Value = c
        .get(format!("{}/v1/events/verify", node.api))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(verify["ok"], true);
    assert_eq!(verify["checked"], base + 5);
    assert_eq!(verify["head"], hashes[4]);

    node.stop();
    let node = Node::start(dir.path(), Some(&config), &api);
    let cluster: Value = c
        .get(format!("{}/v1/cluster", node.api))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(cluster["event_count"], base + 5, "{cluster}");
    assert_eq!(cluster["chain_head"], hashes[4]);
    assert_eq!(cluster["leader_id"], 1);
    let r = c
        .post(format!("{}/v1/notes", node.api))
        .bearer_auth(&token)
        .json(&json!({ "text": "after restart" }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["seq"], base + 6);
    node.stop();
}

#[test]
fn bad_requests_get_problem_json_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"data\"\n[api]\nlisten = \"{api}\"\n\
             [smtp]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let node = Node::start(dir.path(), Some(&config), &api);
    let token = token(&dir.path().join("data"));
    let c = client();
    let notes = format!("{}/v1/notes", node.api);
    let base = settled(&node.api);

    let cases: Vec<(reqwest::blocking::RequestBuilder, u16)> = vec![
        (c.post(&notes).json(&json!({ "text": "no token" })), 401),
        (
            c.post(&notes)
                .bearer_auth("wrong")
                .json(&json!({ "text": "x" })),
            401,
        ),
        (
            c.post(&notes)
                .bearer_auth(&token)
                .json(&json!({ "text": "  " })),
            400,
        ),
        (
            c.post(&notes)
                .bearer_auth(&token)
                .json(&json!({ "text": "x", "extra": 1 })),
            400,
        ),
        (c.post(&notes).bearer_auth(&token).body("not json"), 400),
        (
            c.post(&notes)
                .bearer_auth(&token)
                .json(&json!({ "text": "x".repeat(1024 * 1024 + 1) })),
            400,
        ),
        (
            // Its own client: the server answers 413 and closes the connection
            // without reading the rest of the body, which a pooled connection would
            // carry into the next case.
            client()
                .post(&notes)
                .bearer_auth(&token)
                .body(vec![b'a'; 3 * 1024 * 1024]),
            413,
        ),
        (
            c.get(format!("{}/v1/events?limit=0", node.api))
                .bearer_auth(&token),
            400,
        ),
        (
            c.get(format!("{}/v1/events?limit=1001", node.api))
                .bearer_auth(&token),
            400,
        ),
        (
            c.get(format!("{}/v1/events?after=abc", node.api))
                .bearer_auth(&token),
            400,
        ),
        (c.get(format!("{}/v1/events", node.api)), 401),
        (c.get(format!("{}/v1/events/verify", node.api)), 401),
    ];
    for (i, (request, expected)) in cases.into_iter().enumerate() {
        let r = request.send().unwrap();
        assert_eq!(r.status().as_u16(), expected, "case {i}");
        if expected != 413 {
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "case {i}"
            );
            let body: Value = r.json().unwrap();
            assert_eq!(body["status"], expected, "case {i}");
        }
    }
    let cluster: Value = c
        .get(format!("{}/v1/cluster", node.api))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        cluster["event_count"], base,
        "a refused request wrote something"
    );
    let r = c
        .post(&notes)
        .bearer_auth(&token)
        .json(&json!({ "text": "still fine" }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    node.stop();
}

#[test]
fn embedded_default_runs_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), None, "127.0.0.1:8080");
    let data = dir.path().join("bulwark-data");
    assert!(data.join("admin.token").is_file());
    assert!(
        node.log().contains("admin.token"),
        "token path not logged:\n{}",
        node.log()
    );
    let cluster: Value = client()
        .get(format!("{}/v1/cluster", node.api))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(cluster["node_id"], 1);
    assert_eq!(cluster["members"].as_array().unwrap().len(), 1);
    node.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["audit", "verify", "--data-dir", "bulwark-data"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second `bulwark serve` on a data directory in use is refused, naming the
/// process that has it, and the first goes on unharmed; after a crash the directory
/// is free again.
#[test]
fn a_data_directory_in_use_is_refused_naming_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let path = dir.path().join(name);
        let api = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "[node]\nid = 1\ndata_dir = \"data\"\n[api]\nlisten = \"{api}\"\n\
             [smtp]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        );
        std::fs::write(&path, text).unwrap();
        (path, api)
    };
    let (first_config, first_api) = config("first.toml");
    let first = Node::start(dir.path(), Some(&first_config), &first_api);
    let pid = first.child.id();
    let (second_config, _) = config("second.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .arg("serve")
        .arg("--config")
        .arg(&second_config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!("is in use by another bulwark (pid {pid})")),
        "{said}"
    );
    let ready = reqwest::blocking::get(format!("{}/readyz", first.api)).unwrap();
    assert_eq!(ready.status(), 200, "the first node was harmed");
    first.stop();
    let (third_config, third_api) = config("third.toml");
    Node::start(dir.path(), Some(&third_config), &third_api).stop();
}

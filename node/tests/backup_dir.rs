//! Backups go into the node's backup directory (`[backup] dir`, by default `backups`
//! in its data directory) and nowhere else, seen from outside: over `POST /v1/backup`
//! and through `bulwark backup`. A destination outside it (elsewhere, through `..`,
//! through a symbolic link) is refused with a problem+json 400 naming why, nothing is
//! written there, and the refusal is on record as a failed `node.backup`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Api, Node};
use serde_json::{json, Value};

/// Whether `dir` holds nothing (or does not exist).
fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// `POST /v1/backup` with `body`: the status and the problem's detail ("" for 200).
fn backup(api: &Api, body: &Value) -> (u16, String) {
    let (status, answer) = api.post_json("/v1/backup", body);
    let detail = answer["detail"].as_str().unwrap_or_default().to_string();
    (status, detail)
}

#[test]
fn a_backup_is_written_inside_the_backup_directory_and_nowhere_else() {
    let node = Node::start("");
    let api = Api::new(&node);
    let root = node.data_dir().join("backups");
    let elsewhere = node.dir().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();

    // Inside: by name, by name with sub-directories, by absolute path.
    let (status, detail) = backup(&api, &json!({ "name": "first" }));
    assert_eq!(status, 200, "{detail}");
    assert!(root.join("first/bulwark-backup.json").is_file());
    let (status, detail) = backup(&api, &json!({ "name": "2026/12/05" }));
    assert_eq!(status, 200, "{detail}");
    assert!(root.join("2026/12/05/bulwark-backup.json").is_file());
    let (status, detail) = backup(&api, &json!({ "to": root.join("second") }));
    assert_eq!(status, 200, "{detail}");
    assert!(root.join("second/bulwark-backup.json").is_file());

    // Outside, however it is put.
    std::os::unix::fs::symlink(&elsewhere, root.join("link")).unwrap();
    let refusals = [
        (
            json!({ "to": elsewhere.join("b") }),
            "outside the backup directory",
        ),
        (
            json!({ "to": node.dir().join("b") }),
            "outside the backup directory",
        ),
        (
            json!({ "to": "/tmp/bulwark-backup-test" }),
            "outside the backup directory",
        ),
        (json!({ "to": root.join("../b") }), "\"..\""),
        (json!({ "to": root.join("x/../../b") }), "\"..\""),
        (json!({ "name": "../b" }), "\"..\""),
        (json!({ "name": "x/../../../elsewhere/b" }), "\"..\""),
        (json!({ "name": elsewhere.join("b") }), "is absolute"),
        (json!({ "name": "link" }), "symbolic link"),
        (json!({ "name": "link/b" }), "symbolic link"),
        (json!({ "to": root.join("link/b") }), "symbolic link"),
        (
            json!({ "name": "first/bulwark-backup.json/b" }),
            "not a directory",
        ),
        (json!({ "name": "first" }), "not empty"),
        (json!({ "name": "" }), "not the directory itself"),
        (json!({ "to": root }), "not the directory itself"),
        (json!({}), "give one of"),
        (json!({ "to": root.join("c"), "name": "c" }), "give one of"),
        (json!({ "name": "x".repeat(256) }), "longer than 255 bytes"),
    ];
    for (body, why) in &refusals {
        let (status, detail) = backup(&api, body);
        assert_eq!(status, 400, "{body}: {detail}");
        assert!(detail.contains(why), "{body}: {detail:?} lacks {why:?}");
    }
    assert!(
        empty(&elsewhere),
        "a refused backup wrote into {elsewhere:?}"
    );
    assert!(!node.dir().join("b").exists());
    assert!(!node.data_dir().join("b").exists());
    assert!(!Path::new("/tmp/bulwark-backup-test").exists());
    assert!(!root.join("c").exists());

    // Each refusal is on record, with why.
    let backups: Vec<Value> = node
        .events("api.action")
        .into_iter()
        .filter(|e| e["event"]["action"] == "node.backup")
        .collect();
    let failed = backups
        .iter()
        .filter(|e| e["event"]["outcome"] == "failure")
        .count();
    assert_eq!(backups.len(), 3 + refusals.len(), "{backups:?}");
    assert_eq!(failed, refusals.len(), "{backups:?}");
}

#[test]
fn bulwark_backup_writes_inside_the_configured_directory_and_refuses_outside() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved");
    let node = Node::start_with(
        "",
        &format!(
            "{}\n[backup]\ndir = {}\n",
            common::held_delivery(),
            serde_json::to_string(&saved.display().to_string()).unwrap()
        ),
    );
    let run = |to: &Path| {
        Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .arg("backup")
            .arg("--config")
            .arg(node.dir().join("bulwark.toml"))
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };

    // Outside the configured directory (here: the default one in the data
    // directory): a clear error, nothing written.
    let outside = node.data_dir().join("backups/today");
    let out = run(&outside);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("outside the backup directory") && said.contains("[backup] dir"),
        "{said}"
    );
    assert!(!outside.exists());

    let out = run(&saved.join("today"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored: Value =
        serde_json::from_slice(&std::fs::read(saved.join("today/bulwark-backup.json")).unwrap())
            .unwrap();
    assert_eq!(manifest, stored);
}

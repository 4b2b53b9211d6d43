//! `deploy/CONFIGURATION.md` is the configuration reference: it stays true to the code.
//!
//! The built binary is asked which keys each table of a config file takes: serde's
//! message for an unknown key lists them all ("unknown field `__probe`, expected one
//! of `a`, `b`"), and `check-config` reports every such mistake with its line. The
//! tables are found the same way, from the top down: a key is a table when a probe
//! written as its value is refused as an unknown field of it. Every table must have
//! its heading in the reference (`### [smtp]`; `### [[siem.exporters]]`; a map's
//! entries as `### [delivery.routes."DOMAIN"]`; one heading may name several tables
//! of the same keys, separated by `, `), every key a row under it whose first cell
//! is the key in backticks, and nothing else: a key added to the code and not
//! documented fails, so does one documented and gone from the code. The reference's
//! minimal production configuration must pass `check-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

const REFERENCE: &str = include_str!("../../deploy/CONFIGURATION.md");

/// Most probes written in one file: `check-config` reports at most 50 TOML mistakes.
const PROBES_PER_FILE: usize = 40;

fn bulwark(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run bulwark")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One step from the top of the file to a table.
#[derive(Clone, Debug)]
enum Step {
    /// A key whose value is the table (or the map or list below).
    Key(String),
    /// An entry of a map of tables (`[delivery.routes."DOMAIN"]`).
    Entry,
    /// An item of a list of tables (`[[siem.exporters]]`).
    Item,
}

/// The table's name as the reference's headings write it, quoted map keys as `*`.
fn name(path: &[Step]) -> String {
    let mut dotted = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                dotted.push_str(key);
            }
            Step::Entry => dotted.push_str(".*"),
            Step::Item => {}
        }
    }
    match path.last() {
        Some(Step::Item) => format!("[[{dotted}]]"),
        _ => format!("[{dotted}]"),
    }
}

/// The TOML lines that open the table at `path`, so that the next lines are its keys.
fn header(path: &[Step]) -> String {
    let mut lines = String::new();
    let mut dotted = String::new();
    for (n, step) in path.iter().enumerate() {
        match step {
            Step::Key(key) => {
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                dotted.push_str(key);
            }
            Step::Entry => dotted.push_str(".\"example.test\""),
            Step::Item if n + 1 < path.len() => lines.push_str(&format!("[[{dotted}]]\n")),
            Step::Item => {}
        }
    }
    match path.last() {
        None => {}
        Some(Step::Item) => lines.push_str(&format!("[[{dotted}]]\n")),
        Some(_) => lines.push_str(&format!("[{dotted}]\n")),
    }
    lines
}

/// What `check-config` says of `file`: for each line it reports an unknown key on,
/// that key and the keys the table expects.
fn unknown_fields(dir: &Path, file: &str) -> BTreeMap<usize, (String, Vec<String>)> {
    std::fs::write(dir.join("probe.toml"), file).unwrap();
    let out = bulwark(&["check-config", "probe.toml"], dir);
    let report = text(&out);
    let mut found = BTreeMap::new();
    for line in report.lines() {
        let Some(rest) = line.strip_prefix("probe.toml line ") else {
            continue;
        };
        let Some((number, message)) = rest.split_once(": ") else {
            continue;
        };
        let Some(message) = message.strip_prefix("unknown field `") else {
            continue;
        };
        let (field, expected) = message.split_once('`').expect("a quoted field");
        // "expected one of `a`, `b`", "expected `a` or `b`", "expected `a`"
        let keys = expected.split('`').skip(1).step_by(2).map(str::to_string);
        found.insert(
            number.parse().expect("a line number"),
            (field.to_string(), keys.collect()),
        );
    }
    found
}

/// The keys of the table at `path`.
fn keys_of(dir: &Path, path: &[Step]) -> Vec<String> {
    let file = format!("{}__probe = 1\n", header(path));
    let found = unknown_fields(dir, &file);
    let (field, keys) = found
        .into_values()
        .next()
        .unwrap_or_else(|| panic!("{}: no unknown-field report for\n{file}", name(path)));
    assert_eq!(field, "__probe");
    keys
}

/// Writes `probe(key)` as the value of each of `keys` in the table at `path`, and
/// returns the unknown field each one reports, if any.
fn probe_each(dir: &Path, path: &[Step], keys: &[String], probe: &str) -> BTreeMap<String, String> {
    let mut answers = BTreeMap::new();
    for chunk in keys.chunks(PROBES_PER_FILE) {
        let head = header(path);
        let first = head.lines().count() + 1;
        let mut file = head;
        for key in chunk {
            file.push_str(&format!("{key} = {probe}\n"));
        }
        for (line, (field, _)) in unknown_fields(dir, &file) {
            if let Some(key) = line.checked_sub(first).and_then(|n| chunk.get(n)) {
                answers.insert(key.clone(), field);
            }
        }
    }
    answers
}

/// The tables under the table at `path` with `keys`: a struct refuses `__outer`, a
/// map of tables its entry's `__inner`, a list of tables its item's `__inner`.
fn nested(dir: &Path, path: &[Step], keys: &[String]) -> Vec<Vec<Step>> {
    let under = |steps: &[Step]| [path, steps].concat();
    let mut tables = Vec::new();
    let mut others = Vec::new();
    let as_map = probe_each(dir, path, keys, "{ __outer = { __inner = 1 } }");
    for key in keys {
        match as_map.get(key).map(String::as_str) {
            Some("__outer") => tables.push(under(&[Step::Key(key.clone())])),
            Some("__inner") => tables.push(under(&[Step::Key(key.clone()), Step::Entry])),
            _ => others.push(key.clone()),
        }
    }
    let as_list = probe_each(dir, path, &others, "[{ __inner = 1 }]");
    for key in others {
        if as_list.get(&key).map(String::as_str) == Some("__inner") {
            tables.push(under(&[Step::Key(key), Step::Item]));
        }
    }
    tables
}

/// Every table of a config file, the top level first, with its keys.
fn tables(dir: &Path) -> Vec<(Vec<Step>, Vec<String>)> {
    let mut found = Vec::new();
    let mut todo = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let keys = keys_of(dir, &path);
        todo.extend(nested(dir, &path, &keys));
        found.push((path, keys));
    }
    found
}

/// The reference's tables: for each name a heading gives, the heading's line and the
/// keys of the rows under it.
fn documented() -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut tables = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    let mut fenced = false;
    for (n, line) in REFERENCE.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with('#') {
            current = match line.strip_prefix("### ") {
                Some(heading) => heading
                    .split(", ")
                    .filter(|item| item.starts_with('['))
                    .map(unquote)
                    .collect(),
                None => Vec::new(),
            };
            for table in &current {
                let previous = tables.insert(table.clone(), (n + 1, BTreeSet::new()));
                assert!(previous.is_none(), "{table} has two headings");
            }
            continue;
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let key = row.split('`').next().unwrap_or_default();
        for table in &current {
            tables.get_mut(table).unwrap().1.insert(key.to_string());
        }
    }
    tables
}

/// A heading's table name with its quoted map key written as `*`.
fn unquote(item: &str) -> String {
    let mut out = String::new();
    for (n, part) in item.split('"').enumerate() {
        out.push_str(if n % 2 == 1 { "*" } else { part });
    }
    out
}

#[test]
fn every_table_and_key_the_binary_takes_is_in_the_reference_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let found = tables(dir.path());
    let documented = documented();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut key_count = 0;
    for (path, keys) in &found {
        if path.is_empty() {
            // The top level holds tables only, each with its own heading.
            let sections: BTreeSet<_> = found
                .iter()
                .filter_map(|(p, _)| match p.as_slice() {
                    [Step::Key(key)] => Some(key.clone()),
                    _ => None,
                })
                .collect();
            for key in keys.iter().filter(|k| !sections.contains(*k)) {
                problems.push(format!("the top-level key `{key}` is not a table"));
            }
            continue;
        }
        let table = name(path);
        names.insert(table.clone());
        key_count += keys.len();
        let Some((line, rows)) = documented.get(&table) else {
            problems.push(format!("{table} has no heading `### {table}`"));
            continue;
        };
        for key in keys.iter().filter(|k| !rows.contains(*k)) {
            problems.push(format!("{table} (line {line}): `{key}` is not documented"));
        }
        for key in rows.iter().filter(|k| !keys.contains(k)) {
            problems.push(format!(
                "{table} (line {line}): `{key}` is documented but not a key of it"
            ));
        }
    }
    for (table, (line, _)) in &documented {
        if !names.contains(table) {
            problems.push(format!("line {line}: {table} is not a table of the code"));
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/CONFIGURATION.md is not the code's configuration:\n{}",
        problems.join("\n")
    );
    // The probes did find the tables, not next to nothing.
    for table in [
        "[smtp]",
        "[scan.clamd]",
        "[delivery.routes.*]",
        "[[siem.exporters]]",
    ] {
        assert!(names.contains(table), "{table} not found: {names:?}");
    }
    println!("{} tables, {key_count} keys", names.len());
}

/// The reference's minimal production configuration, its certificates made with
/// `bulwark cert` where it names them and its data directory in a temporary one,
/// passes `check-config` without a warning.
#[test]
fn the_minimal_production_configuration_passes_check_config() {
    let section = REFERENCE
        .split("\n## A minimal production configuration\n")
        .nth(1)
        .expect("the section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a toml block");
    let mut data_dirs = 0;
    let config: String = block
        .lines()
        .map(|line| match line.starts_with("data_dir = ") {
            true => {
                data_dirs += 1;
                "data_dir = \"data\"".to_string()
            }
            false => line.to_string(),
        })
        .map(|line| line + "\n")
        .collect();
    assert_eq!(data_dirs, 1, "one data_dir in\n{block}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table: toml::Table = toml::from_str(&config).unwrap();
    let get = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let id = table["node"]["id"]
        .as_integer()
        .expect("node.id")
        .to_string();
    let hostname = get("smtp", "hostname").expect("smtp.hostname");
    let run = |args: &[&str]| {
        let out = bulwark(args, d);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    run(&["cert", "ca", "--out", "made/ca"]);
    let node = ["--id", &id, "--san", "127.0.0.1", "--out", "made/node"];
    run(&[&["cert", "node", "--ca", "made/ca"][..], &node].concat());
    let smtp = ["--id", "99", "--san", &hostname, "--out", "made/smtp"];
    run(&[&["cert", "node", "--ca", "made/ca"][..], &smtp].concat());
    let made = [
        ("cluster", "ca", "made/ca/ca.pem".to_string()),
        ("cluster", "cert", format!("made/node/node{id}.pem")),
        ("cluster", "key", format!("made/node/node{id}.key")),
        ("smtp", "tls_cert", "made/smtp/node99.pem".to_string()),
        ("smtp", "tls_key", "made/smtp/node99.key".to_string()),
    ];
    for (section, key, from) in made {
        let to = d.join(get(section, key).unwrap_or_else(|| panic!("{section}.{key}")));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(d.join(from), to).unwrap();
    }
    std::fs::write(d.join("bulwark.toml"), &config).unwrap();
    let out = bulwark(&["check-config", "bulwark.toml"], d);
    assert!(out.status.success(), "{config}\n{}", text(&out));
    assert!(text(&out).contains("bulwark.toml: ok"), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
}

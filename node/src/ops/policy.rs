//! `bulwark policy`: the cluster's policy over any node's API, so that a routine
//! change is one command and never curl. A policy file is TOML (a node's
//! configuration: its `[policy]` section with the rule and signature files its
//! `[scan]` names; or the keys alone) or JSON (`GET /v1/policy`'s answer, or the keys
//! alone); it is checked here, every problem at once, before anything is sent.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulwark_storage::policy::diff as policy_diff;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::remote::{problem_error, ApiArgs, Remote};
use crate::policy::Document;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `bulwark policy get`: the current version (or `version`) as a `[policy]` section
/// to edit and apply, or as the API's JSON.
pub fn get(api: &ApiArgs, version: Option<u64>, as_json: bool) -> Result<()> {
    let remote = Remote::new(api, TIMEOUT)?;
    let number = version.map(|v| v.to_string());
    let query: Vec<(&str, &str)> = number.iter().map(|v| ("version", v.as_str())).collect();
    let answer = remote.get_json("/v1/policy", &query)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let document: Document = serde_json::from_value(answer["policy"].clone())
        .context("the node's policy is not one this release reads")?;
    println!(
        "# The cluster's policy version {}, by {} at {}: {}\n# hash {}",
        answer["version"],
        answer["by"].as_str().unwrap_or_default(),
        answer["time"].as_str().unwrap_or_default(),
        answer["reason"].as_str().unwrap_or_default(),
        answer["hash"].as_str().unwrap_or_default(),
    );
    print!("{}", toml_section(&document)?);
    Ok(())
}

/// `bulwark policy diff --file F`: what applying F would change; true when it would.
pub fn diff(api: &ApiArgs, file: &Path) -> Result<bool> {
    let proposed = read(file)?;
    let remote = Remote::new(api, TIMEOUT)?;
    let (version, current) = current(&remote)?;
    let lines = policy_diff(&current, &proposed);
    print_diff(version, &lines);
    Ok(!lines.is_empty())
}

/// `bulwark policy apply --file F --reason R`: F becomes the next version, made from
/// `base_version` (default: the version current when the command starts, whose
/// changes it prints first).
pub fn apply(api: &ApiArgs, file: &Path, reason: &str, base_version: Option<u64>) -> Result<()> {
    let proposed = read(file)?;
    let remote = Remote::new(api, TIMEOUT)?;
    let (version, current) = current(&remote)?;
    let lines = policy_diff(&current, &proposed);
    print_diff(version, &lines);
    put(&remote, base_version.unwrap_or(version), proposed, reason)
}

/// `bulwark policy rollback --to N --reason R`: version N's policy becomes the next
/// version (history is never rewritten).
pub fn rollback(api: &ApiArgs, to: u64, reason: &str) -> Result<()> {
    let remote = Remote::new(api, TIMEOUT)?;
    let old = remote.get_json("/v1/policy", &[("version", &to.to_string())])?;
    let (version, current) = current(&remote)?;
    let lines = policy_diff(&current, &old["policy"]);
    print_diff(version, &lines);
    let reason = format!("roll back to version {to}: {reason}");
    put(&remote, version, old["policy"].clone(), &reason)
}

/// `bulwark policy history`: every version, who, when, why and what it changed.
pub fn history(api: &ApiArgs) -> Result<()> {
    let remote = Remote::new(api, TIMEOUT)?;
    let versions = remote.get_json("/v1/policy/history", &[])?;
    for v in versions.as_array().into_iter().flatten() {
        println!(
            "version {}  {}  by {}{}  {}",
            v["version"],
            v["time"].as_str().unwrap_or_default(),
            v["by"].as_str().unwrap_or_default(),
            v["source_ip"]
                .as_str()
                .map(|ip| format!(" from {ip}"))
                .unwrap_or_default(),
            v["reason"].as_str().unwrap_or_default(),
        );
        for line in v["diff"].as_array().into_iter().flatten() {
            println!("    {}", line.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `bulwark policy simulate --file F [--since] [--until]`: what F would have done to
/// the decisions on record in the range, asked a part at a time until it is done.
pub fn simulate(
    api: &ApiArgs,
    file: &Path,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<()> {
    let proposed = read(file)?;
    let remote = Remote::new(api, TIMEOUT)?;
    let mut after = 0u64;
    let (mut judged, mut without_from) = (0u64, 0u64);
    let mut changes: std::collections::BTreeMap<(String, String), (u64, Vec<String>)> =
        Default::default();
    loop {
        let body = json!({ "policy": proposed, "since": since, "until": until, "after": after });
        let (status, answer) = remote.send_json(Method::POST, "/v1/policy/simulate", &body)?;
        if !status.is_success() {
            return Err(problem_error(
                status,
                &answer,
                answer.to_string().as_bytes(),
            ));
        }
        if after == 0 {
            for key in answer["needs_rescan"].as_array().into_iter().flatten() {
                println!(
                    "{} changes: that needs the messages scanned again, which a simulation \
                     does not do; the decisions below use the scores and findings on record",
                    key.as_str().unwrap_or_default()
                );
            }
        }
        judged += answer["judged"].as_u64().unwrap_or(0);
        without_from += answer["without_header_from"].as_u64().unwrap_or(0);
        for change in answer["changes"].as_array().into_iter().flatten() {
            let key = (
                change["from"].as_str().unwrap_or_default().to_string(),
                change["to"].as_str().unwrap_or_default().to_string(),
            );
            let entry = changes.entry(key).or_default();
            entry.0 += change["count"].as_u64().unwrap_or(0);
            for id in change["examples"].as_array().into_iter().flatten() {
                if entry.1.len() < 10 {
                    entry.1.push(id.as_str().unwrap_or_default().to_string());
                }
            }
        }
        match answer["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let changed: u64 = changes.values().map(|(n, _)| n).sum();
    println!("{judged} decisions on record tried; {changed} would change");
    for ((from, to), (count, examples)) in &changes {
        println!("  {from} -> {to}: {count} (e.g. {})", examples.join(", "));
    }
    if without_from > 0 {
        println!(
            "{without_from} of them were rejections recorded before the From address was kept: \
             tried with the envelope sender alone"
        );
    }
    Ok(())
}

/// The current version's number and policy.
fn current(remote: &Remote) -> Result<(u64, Value)> {
    let answer = remote.get_json("/v1/policy", &[])?;
    let version = answer["version"]
        .as_u64()
        .context("the node's answer has no version")?;
    Ok((version, answer["policy"].clone()))
}

fn put(remote: &Remote, base_version: u64, policy: Value, reason: &str) -> Result<()> {
    let body = json!({ "base_version": base_version, "policy": policy, "reason": reason });
    let (status, answer) = remote.send_json(Method::PUT, "/v1/policy", &body)?;
    match status {
        s if s.is_success() && answer["changed"] == false => {
            println!(
                "no change: the cluster's policy is version {}",
                answer["version"]
            );
            Ok(())
        }
        s if s.is_success() => {
            println!("the cluster's policy is version {} now", answer["version"]);
            Ok(())
        }
        StatusCode::CONFLICT => bail!(
            "{}\nsomeone changed the policy meanwhile: look at `bulwark policy diff` again",
            answer["detail"].as_str().unwrap_or_default()
        ),
        s => Err(problem_error(s, &answer, answer.to_string().as_bytes())),
    }
}

fn print_diff(version: u64, lines: &[String]) {
    if lines.is_empty() {
        println!("no difference from version {version}");
        return;
    }
    println!("changes from version {version}:");
    for line in lines {
        println!("  {line}");
    }
}

/// A policy file, checked whole: its canonical JSON, or every problem in it.
fn read(file: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let document: Document = if file.extension().is_some_and(|e| e == "json") {
        let mut value: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        if value.get("policy").is_some_and(Value::is_object) {
            value = value["policy"].take();
        }
        serde_json::from_value(value).with_context(|| format!("{}", file.display()))?
    } else {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", file.display()))?;
        if table
            .keys()
            .any(|k| crate::config::SECTIONS.contains(&k.as_str()))
        {
            crate::config::policy_of(file)
                .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n  ")))?
        } else {
            toml::Value::Table(table)
                .try_into()
                .with_context(|| format!("{}", file.display()))?
        }
    };
    if let Err(problems) = document.compile() {
        bail!("{}:\n  {}", file.display(), problems.join("\n  "));
    }
    Ok(serde_json::from_str(&document.canonical())?)
}

/// `document` as a `[policy]` section.
fn toml_section(document: &Document) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Section<'a> {
        policy: &'a Document,
    }
    Ok(toml::to_string(&Section { policy: document })?)
}

//! `bulwark quarantine`: the quarantine over any node's API, for an administrator
//! without the console. Each read is recorded by the node as the API records it (a
//! search, a preview, a raw download), each release and deletion as
//! `quarantine.released` or `quarantine.deleted` with the token's name and the reason
//! given.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use super::admin::{self, addresses, cut, text, when, Answer, Outcome, Table};
use super::remote::{ApiArgs, Remote};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Subcommand)]
pub enum Command {
    /// The quarantined messages, oldest first, that match the filters: a table, or
    /// the API's JSON with --json. Recorded as a search.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// The envelope sender (`@domain` for a domain).
        #[arg(long)]
        sender: Option<String>,
        /// A recipient (`@domain` for a domain).
        #[arg(long)]
        recipient: Option<String>,
        /// Words of the verdict's reason (e.g. `blocked`, `malware`).
        #[arg(long)]
        reason: Option<String>,
        /// Quarantined at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Quarantined before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Messages after this id (where an earlier listing stopped).
        #[arg(long)]
        after: Option<String>,
        /// Messages shown at most.
        #[arg(long, default_value_t = admin::DEFAULT_LIMIT as u32, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// The API's JSON instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One quarantined message: why it is held (the verdict's score and rules), its
    /// headers, text and attachments (nothing of it run or rendered). Recorded as a
    /// preview with the reason given; --raw writes the message as received.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The message id, as in `250 2.0.0 Ok: queued as ID`.
        id: String,
        /// Why you read it: recorded with the read.
        #[arg(long)]
        reason: Option<String>,
        /// Write the message as received (RFC 822) to FILE, `-` for stdout, instead.
        #[arg(long, value_name = "FILE")]
        raw: Option<PathBuf>,
        /// The API's JSON instead, for scripts.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
    },
    /// Release messages: each joins the delivery queue for all its recipients,
    /// recorded with the token's name and the reason. Prints each id released or
    /// refused; exit 1 if any was refused.
    Release {
        #[command(flatten)]
        api: ApiArgs,
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why: recorded with each release.
        #[arg(long)]
        reason: String,
        /// Each id's outcome as one JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete messages and erase their bodies, recorded with the token's name and
    /// the reason. Prints each id deleted or refused; exit 1 if any was refused.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why: recorded with each deletion.
        #[arg(long)]
        reason: Option<String>,
        /// Each id's outcome as one JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `command`.
pub fn run(command: &Command) -> Result<Outcome> {
    match command {
        Command::List {
            api,
            sender,
            recipient,
            reason,
            since,
            until,
            after,
            limit,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            admin::show_list(
                &remote,
                &admin::Listing {
                    path: "/v1/quarantine",
                    filters: &[
                        ("sender", sender),
                        ("recipient", recipient),
                        ("reason", reason),
                        ("since", since),
                        ("until", until),
                    ],
                    after: after.as_deref(),
                    limit: *limit as usize,
                    json: *json,
                    table,
                    empty: "no quarantined message matches",
                },
            )?;
            Ok(Outcome::Done)
        }
        Command::Show {
            api,
            id,
            reason,
            raw,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            show(&remote, id, reason.as_deref(), raw.as_ref(), *json)
        }
        Command::Release {
            api,
            ids,
            reason,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            let body = json!({ "reason": reason });
            admin::each(ids, *json, "released", |id| {
                let path = format!("/v1/quarantine/{id}/release");
                admin::ask(&remote, Method::POST, &path, &[], Some(&body))
            })
        }
        Command::Delete {
            api,
            ids,
            reason,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            let query: Vec<(&str, &str)> = reason.iter().map(|r| ("reason", r.as_str())).collect();
            admin::each(ids, *json, "deleted", |id| {
                let path = format!("/v1/quarantine/{id}");
                admin::ask(&remote, Method::DELETE, &path, &query, None)
            })
        }
    }
}

/// The listing as a table.
fn table(items: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "QUARANTINED",
        "SCORE",
        "SENDER",
        "RECIPIENTS",
        "SUBJECT",
        "REASON",
    ]);
    for item in items {
        let recipients: Vec<&str> = item["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        table.row(vec![
            text(&item["id"]),
            when(&item["quarantined"]),
            score(&item["score"]),
            cut(&text(&item["sender"]), 40),
            addresses(&recipients),
            cut(&text(&item["subject"]), 40),
            cut(&text(&item["reason"]), 60),
        ]);
    }
    table
}

fn score(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |s| format!("{s:.1}"))
}

/// `bulwark quarantine show`: the detail as text (or JSON), or the raw message.
fn show(
    remote: &Remote,
    id: &str,
    reason: Option<&str>,
    raw: Option<&PathBuf>,
    json: bool,
) -> Result<Outcome> {
    let id = match admin::message_id(id) {
        Ok(id) => id,
        Err(why) => {
            eprintln!("bulwark: {id}: {why}");
            return Ok(Outcome::SomeRefused);
        }
    };
    let query: Vec<(&str, &str)> = reason.iter().map(|r| ("reason", *r)).collect();
    if let Some(file) = raw {
        let path = format!("/v1/quarantine/{id}/raw");
        let (status, body) = remote.call(Method::GET, &path, &query, None)?;
        if let Answer::Refused(_, why) = admin::sort(remote, status, &body)? {
            eprintln!("bulwark: {why}");
            return Ok(Outcome::SomeRefused);
        }
        if file.as_os_str() == "-" {
            std::io::stdout().write_all(&body)?;
        } else {
            std::fs::write(file, &body).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("{}: {} bytes", file.display(), body.len());
        }
        return Ok(Outcome::Done);
    }
    let path = format!("/v1/quarantine/{id}");
    let detail = match admin::ask(remote, Method::GET, &path, &query, None)? {
        Answer::Done(detail) => detail,
        Answer::Refused(_, why) => {
            eprintln!("bulwark: {why}");
            return Ok(Outcome::SomeRefused);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print!("{}", describe(&detail));
    }
    Ok(Outcome::Done)
}

/// A quarantined message's detail as a person reads it.
fn describe(d: &Value) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<12} {value}\n"));
    let list = |v: &Value| {
        let all: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        if all.is_empty() {
            "-".to_string()
        } else {
            all.join(", ")
        }
    };
    field("id", text(&d["id"]));
    field("quarantined", text(&d["quarantined"]));
    field("reason", text(&d["reason"]));
    field("score", score(&d["score"]));
    field("sender", text(&d["sender"]));
    field("recipients", list(&d["recipients"]));
    field("from", text(&d["from"]));
    field("subject", text(&d["subject"]));
    field("size", format!("{} bytes", text(&d["size"])));
    let verdict = &d["verdict"];
    if !verdict.is_null() {
        field(
            "verdict",
            format!(
                "{}, score {} (tag {}, quarantine {}, reject {}), policy version {}",
                text(&verdict["action"]),
                score(&verdict["scan"]["score"]),
                text(&verdict["scan"]["thresholds"]["tag"]),
                text(&verdict["scan"]["thresholds"]["quarantine"]),
                text(&verdict["scan"]["thresholds"]["reject"]),
                text(&verdict["policy_version"]),
            ),
        );
        for symbol in verdict["scan"]["symbols"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:>6}  {}  {}\n",
                score(&symbol["score"]),
                text(&symbol["name"]),
                cut(symbol["description"].as_str().unwrap_or_default(), 80)
            ));
        }
    }
    let preview = &d["preview"];
    if let Some(withheld) = preview["withheld"].as_str() {
        out.push_str(&format!("content withheld: {withheld}\n"));
        return out;
    }
    if let Some(headers) = preview["headers"].as_array() {
        out.push_str("headers:\n");
        for h in headers {
            out.push_str(&format!(
                "  {}: {}\n",
                text(&h["name"]),
                cut(h["value"].as_str().unwrap_or_default(), 200)
            ));
        }
    }
    for (name, title) in [("text", "text:"), ("html_text", "HTML, as text:")] {
        if let Some(body) = preview[name].as_str() {
            out.push_str(title);
            out.push('\n');
            for line in body.lines() {
                out.push_str(&format!("  {}\n", cut(line, 200)));
            }
        }
    }
    if let Some(files) = preview["attachments"].as_array() {
        if !files.is_empty() {
            out.push_str("attachments:\n");
        }
        for f in files {
            let kind = f["detected_type"]
                .as_str()
                .or(f["declared_type"].as_str())
                .unwrap_or("-");
            out.push_str(&format!(
                "  {}  {kind}  {} bytes  sha256 {}{}\n",
                f["name"].as_str().unwrap_or("(no name)"),
                text(&f["size"]),
                text(&f["sha256"]),
                if f["in_archive"] == true {
                    "  (in an archive)"
                } else {
                    ""
                },
            ));
        }
    }
    if preview["truncated"] == true {
        out.push_str("(the preview is cut to its limits: --raw for the whole message)\n");
    }
    out
}

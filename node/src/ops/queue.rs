//! `bulwark queue`: the delivery queue over any node's API, for an administrator
//! without the console: list it, trace one message, hold, release, retry or delete
//! messages. Each action is recorded by the node as an `api.action` event with the
//! token's name (the API takes no reason for these).

use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::Value;

use super::admin::{self, addresses, cut, text, when, Answer, Outcome, Table};
use super::remote::{ApiArgs, Remote};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The actions taken on messages by id.
#[derive(clap::Args)]
pub struct Ids {
    #[command(flatten)]
    api: ApiArgs,
    /// Message ids, as in `250 2.0.0 Ok: queued as ID`.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Each id's outcome as one JSON array, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// The queued messages, oldest first, that match the filters: each with its
    /// status, recipients, attempts, next attempt and last reply; a table, or the
    /// API's JSON with --json. Recorded as a search.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// The envelope sender (`@domain` for a domain).
        #[arg(long)]
        sender: Option<String>,
        /// A recipient (`@domain` for a domain).
        #[arg(long)]
        recipient: Option<String>,
        /// pending, deferred, held or leased.
        #[arg(long)]
        status: Option<String>,
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
    /// One message's trace: its state, envelope, verdict, where each recipient
    /// stands and every event about it. Recorded as a trace with the reason given.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The message id.
        id: String,
        /// Why you read it: recorded with the read.
        #[arg(long)]
        reason: Option<String>,
        /// The API's JSON instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Hold messages: no delivery is attempted until they are released (or retried).
    Hold(Ids),
    /// Release held messages: delivered when next due.
    Release(Ids),
    /// Make messages due now (held ones too, lifting the hold).
    Retry(Ids),
    /// Drop messages from the queue, without a DSN to their senders.
    Delete(Ids),
}

/// Runs `command`.
pub fn run(command: &Command) -> Result<Outcome> {
    let (ids, method, action, done) = match command {
        Command::List {
            api,
            sender,
            recipient,
            status,
            after,
            limit,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            admin::show_list(
                &remote,
                &admin::Listing {
                    path: "/v1/queue",
                    filters: &[
                        ("sender", sender),
                        ("recipient", recipient),
                        ("status", status),
                    ],
                    after: after.as_deref(),
                    limit: *limit as usize,
                    json: *json,
                    table,
                    empty: "no queued message matches",
                },
            )?;
            return Ok(Outcome::Done);
        }
        Command::Show {
            api,
            id,
            reason,
            json,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            return show(&remote, id, reason.as_deref(), *json);
        }
        Command::Hold(ids) => (ids, Method::POST, "/hold", "held"),
        Command::Release(ids) => (ids, Method::POST, "/release", "released"),
        Command::Retry(ids) => (ids, Method::POST, "/retry", "retried"),
        Command::Delete(ids) => (ids, Method::DELETE, "", "deleted"),
    };
    let remote = Remote::new(&ids.api, TIMEOUT)?;
    admin::each(&ids.ids, ids.json, done, |id| {
        let path = format!("/v1/queue/{id}{action}");
        admin::ask(&remote, method.clone(), &path, &[], None)
    })
}

/// The listing as a table: per message, the attempts of its most tried recipient,
/// the earliest next attempt, and the last reply of the first recipient that has one.
fn table(items: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "RECEIVED",
        "STATUS",
        "SENDER",
        "RECIPIENTS",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST REPLY",
    ]);
    for item in items {
        let recipients: Vec<&Value> = item["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let names: Vec<&str> = recipients
            .iter()
            .filter_map(|r| r["address"].as_str())
            .collect();
        let attempts = recipients
            .iter()
            .filter_map(|r| r["attempts"].as_u64())
            .max();
        let next = recipients
            .iter()
            .filter_map(|r| r["next_attempt"].as_str())
            .min();
        let reply = recipients.iter().find_map(|r| r["last_reply"].as_str());
        table.row(vec![
            text(&item["id"]),
            when(&item["received"]),
            text(&item["status"]),
            cut(&text(&item["sender"]), 40),
            addresses(&names),
            attempts.map_or_else(|| "-".into(), |a| a.to_string()),
            next.map_or_else(|| "-".into(), |n| when(&Value::from(n))),
            cut(reply.unwrap_or("-"), 60),
        ]);
    }
    table
}

/// `bulwark queue show`: the message's trace as text, or as the API's JSON.
fn show(remote: &Remote, id: &str, reason: Option<&str>, json: bool) -> Result<Outcome> {
    let id = match admin::message_id(id) {
        Ok(id) => id,
        Err(why) => {
            eprintln!("bulwark: {id}: {why}");
            return Ok(Outcome::SomeRefused);
        }
    };
    let query: Vec<(&str, &str)> = reason.iter().map(|r| ("reason", *r)).collect();
    let path = format!("/v1/messages/{id}");
    let trace = match admin::ask(remote, Method::GET, &path, &query, None)? {
        Answer::Done(trace) => trace,
        Answer::Refused(_, why) => {
            eprintln!("bulwark: {why}");
            return Ok(Outcome::SomeRefused);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print!("{}", describe(&trace));
    }
    Ok(Outcome::Done)
}

/// A message's trace as a person reads it.
fn describe(t: &Value) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<10} {value}\n"));
    let r = &t["received"];
    field("id", text(&t["id"]));
    field("state", text(&t["state"]));
    if !r.is_null() {
        field(
            "received",
            format!(
                "{} by node {} from {}",
                text(&r["time"]),
                text(&r["node"]),
                text(&r["source"]["ip"])
            ),
        );
        field("sender", text(&r["sender"]));
        field("subject", text(&r["subject"]));
    }
    let v = &t["verdict"];
    if !v.is_null() {
        field(
            "verdict",
            format!(
                "{}, score {} ({})",
                text(&v["action"]),
                text(&v["score"]),
                text(&v["reason"])
            ),
        );
    }
    if let Some(recipients) = t["recipients"].as_object() {
        out.push_str("recipients:\n");
        for (address, state) in recipients {
            out.push_str(&format!("  {address}  {}", text(&state["status"])));
            if let Some(reply) = state["reply"].as_str() {
                out.push_str(&format!("  {}", cut(reply, 120)));
            }
            out.push('\n');
        }
    }
    out.push_str("events:\n");
    for e in t["events"].as_array().into_iter().flatten() {
        let about = [
            &e["smtp"]["reply"],
            &e["event"]["reason"],
            &e["action"],
            &e["user"]["name"],
        ]
        .iter()
        .filter_map(|v| v.as_str())
        .map(|s| cut(s, 100))
        .collect::<Vec<_>>()
        .join("; ");
        out.push_str(&format!(
            "  {}  {:>6}  {}  {about}\n",
            when(&e["time"]),
            text(&e["seq"]),
            text(&e["type"]),
        ));
    }
    if t["events_truncated"] == true {
        out.push_str("  (the first 1000 events only: /v1/events?message_id=ID has them all)\n");
    }
    out
}

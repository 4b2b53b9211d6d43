//! What `bulwark quarantine` and `bulwark queue` share: calls sorted into what was
//! done, what the node refused, and what stops the command (no answer, a token it
//! does not take or whose role may not); listings followed page by page; an action
//! taken on each of many messages, each outcome printed; tables a person reads, or
//! JSON for scripts. Exit status: 0 when everything asked was done, 1 when the node
//! refused or failed some of it, 2 when the command could not be carried out.

use anyhow::{bail, Result};
use bulwark_storage::MessageId;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::remote::{detail, Remote};

/// Messages a listing shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most the API gives in one page.
const PAGE: usize = 1000;

/// How a command that ran to its end went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked was done.
    Done,
    /// The node refused or failed some of it; each is said.
    SomeRefused,
}

/// What the node answered a call it took.
#[derive(Debug)]
pub enum Answer {
    /// Done: the answer.
    Done(Value),
    /// Not done: the status and the problem's detail.
    Refused(StatusCode, String),
}

/// Calls `method path?query` (with a JSON body if any) and sorts the answer. An error
/// when there is none, the token is refused (401), or its role may not (403): no
/// call of the command would go otherwise.
pub fn ask(
    remote: &Remote,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer> {
    let (status, raw) = remote.call(method, path, query, body)?;
    sort(remote, status, &raw)
}

/// Sorts an answer of `remote` as [`ask`] does.
pub fn sort(remote: &Remote, status: StatusCode, raw: &[u8]) -> Result<Answer> {
    let answer: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let token = remote
        .token_file()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    match status {
        s if s.is_success() => Ok(Answer::Done(answer)),
        StatusCode::UNAUTHORIZED => bail!(
            "the node at {} does not take the token in {token} ({status}: {}): give \
             --token-file with a token of this cluster",
            remote.base(),
            detail(&answer, raw)
        ),
        StatusCode::FORBIDDEN => bail!(
            "the token in {token} may not do this ({status}: {})",
            detail(&answer, raw)
        ),
        s => Ok(Answer::Refused(s, detail(&answer, raw))),
    }
}

/// `id` checked as a message id (so that nothing else lands in a URL path), or why
/// it is not one.
pub fn message_id(id: &str) -> Result<String, String> {
    id.parse::<MessageId>()
        .map(|_| id.to_string())
        .map_err(|e| format!("{e} (as in `250 2.0.0 Ok: queued as ID`)"))
}

/// One `list` command: the API path, the filters given, where to start and how
/// many, and how its rows are shown.
pub struct Listing<'a> {
    pub path: &'a str,
    /// Each filter's query name and value, if the command was given it.
    pub filters: &'a [(&'a str, &'a Option<String>)],
    pub after: Option<&'a str>,
    pub limit: usize,
    pub json: bool,
    pub table: fn(&[Value]) -> Table,
    /// What is printed when nothing matches.
    pub empty: &'a str,
}

/// Runs `listing` against `remote`: the pages fetched, then printed.
pub fn show_list(remote: &Remote, listing: &Listing<'_>) -> Result<()> {
    let query: Vec<(&str, &str)> = listing
        .filters
        .iter()
        .filter_map(|(name, value)| value.as_deref().map(|value| (*name, value)))
        .collect();
    let (items, next) = fetch(remote, listing.path, &query, listing.after, listing.limit)?;
    print_list(
        &items,
        next.as_deref(),
        listing.json,
        (listing.table)(&items),
        listing.empty,
    );
    Ok(())
}

/// A listing's items: pages of `path?query` followed from `after` until `limit`
/// items or the end; the cursor after the last item when more match. A refusal (a
/// malformed filter) is an error.
fn fetch(
    remote: &Remote,
    path: &str,
    query: &[(&str, &str)],
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>)> {
    let mut items = Vec::new();
    let mut after = after.map(str::to_string);
    loop {
        let page_size = (limit - items.len()).min(PAGE).to_string();
        let mut page_query = query.to_vec();
        page_query.push(("limit", &page_size));
        if let Some(after) = &after {
            page_query.push(("after", after));
        }
        let page = match ask(remote, Method::GET, path, &page_query, None)? {
            Answer::Done(page) => page,
            Answer::Refused(status, why) => bail!("the node answered {status}: {why}"),
        };
        items.extend(page["items"].as_array().into_iter().flatten().cloned());
        after = page["next"].as_str().map(str::to_string);
        if after.is_none() || items.len() >= limit {
            return Ok((items, after));
        }
    }
}

/// Prints a listing: its table (or `empty` when it has no row), or with `json` the
/// API's shape; on stderr, how to go on when more match.
fn print_list(items: &[Value], next: Option<&str>, json: bool, table: Table, empty: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "items": items, "next": next }))
                .expect("JSON serialises")
        );
    } else if table.rows.is_empty() {
        println!("{empty}");
    } else {
        print!("{table}");
    }
    if let Some(next) = next {
        eprintln!(
            "{} shown; more match: go on with --after {next}",
            items.len()
        );
    }
}

/// How one message of an action went.
struct Taken {
    id: String,
    outcome: &'static str,
    status: Option<u16>,
    detail: Option<String>,
    seq: Option<u64>,
}

/// Takes an action on each of `ids` with `act` (given the checked id), printing
/// `done` and the id for each done, `refused` or `failed` and why for the others (a
/// 5xx: not known to be done, try again); with `json`, one array of every outcome at
/// the end. Stops at the first error (no answer, a token not taken), after printing
/// what was done before it.
pub fn each(
    ids: &[String],
    json: bool,
    done: &str,
    act: impl Fn(&str) -> Result<Answer>,
) -> Result<Outcome> {
    let mut taken = Vec::new();
    let mut stopped = None;
    for id in ids {
        let answer = match message_id(id) {
            Ok(id) => match act(&id) {
                Ok(answer) => answer,
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            },
            Err(why) => Answer::Refused(StatusCode::BAD_REQUEST, why),
        };
        let one = match answer {
            Answer::Done(answer) => Taken {
                id: id.clone(),
                outcome: "done",
                status: None,
                detail: None,
                seq: answer["seq"].as_u64(),
            },
            Answer::Refused(status, why) => Taken {
                id: id.clone(),
                outcome: if status.is_server_error() {
                    "failed"
                } else {
                    "refused"
                },
                status: Some(status.as_u16()),
                detail: Some(why),
                seq: None,
            },
        };
        if !json {
            match one.outcome {
                "done" => println!("{done} {}", one.id),
                "failed" => println!(
                    "failed {}: {} (not known to be done: try again)",
                    one.id,
                    one.detail.as_deref().unwrap_or_default()
                ),
                _ => println!(
                    "refused {}: {}",
                    one.id,
                    one.detail.as_deref().unwrap_or_default()
                ),
            }
        }
        taken.push(one);
    }
    if json {
        let all: Vec<Value> = taken
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "outcome": t.outcome,
                    "status": t.status,
                    "detail": t.detail,
                    "seq": t.seq,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("JSON serialises")
        );
    }
    if let Some(e) = stopped {
        let left = ids.len() - taken.len();
        return Err(e.context(format!("{left} of {} not tried", ids.len())));
    }
    Ok(match taken.iter().all(|t| t.outcome == "done") {
        true => Outcome::Done,
        false => Outcome::SomeRefused,
    })
}

/// Rows under a header, each column as wide as its widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l.get(c).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// `text` on one line and at most `max` characters, an ellipsis marking a cut.
pub fn cut(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= max {
        return line;
    }
    let mut kept: String = line.chars().take(max.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// A JSON string or number as text; `-` for anything else.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "-".into(),
    }
}

/// An RFC 3339 time of the API to the second: `2026-12-05T10:11:12Z`.
pub fn when(value: &Value) -> String {
    match value.as_str() {
        Some(t) => match (t.find('.'), t.ends_with('Z')) {
            (Some(dot), true) => format!("{}Z", &t[..dot]),
            _ => t.to_string(),
        },
        None => "-".into(),
    }
}

/// A list of addresses as one cell: the first, and how many more.
pub fn addresses(list: &[&str]) -> String {
    match list {
        [] => "-".into(),
        [one] => cut(one, 40),
        [first, rest @ ..] => format!("{} +{}", cut(first, 40), rest.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let mut table = Table::new(vec!["ID", "SENDER", "SUBJECT"]);
        table.row(vec!["1".into(), "alice@sender.test".into(), "hi".into()]);
        table.row(vec!["22".into(), "b@x".into(), "".into()]);
        assert_eq!(
            table.to_string(),
            "ID  SENDER             SUBJECT\n\
             1   alice@sender.test  hi\n\
             22  b@x\n"
        );
    }

    #[test]
    fn cells_are_one_line_and_cut_with_an_ellipsis() {
        assert_eq!(cut("a\r\nb", 10), "a  b");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abcd", 4), "abcd");
        assert_eq!(
            when(&json!("2026-12-05T10:11:12.345Z")),
            "2026-12-05T10:11:12Z"
        );
        assert_eq!(when(&Value::Null), "-");
        assert_eq!(addresses(&["a@x", "b@x", "c@x"]), "a@x +2");
        assert_eq!(addresses(&[]), "-");
        assert_eq!(text(&json!(12.5)), "12.5");
    }

    #[test]
    fn only_a_message_id_goes_into_a_path() {
        assert!(message_id("01KBXQ3T9Y4Z5V6W7X8Y9Z0A1B").is_ok());
        for bad in [
            "../tokens",
            "x/y",
            "nope",
            "",
            "01KBXQ3T9Y4Z5V6W7X8Y9Z0A1B/..",
        ] {
            let why = message_id(bad).unwrap_err();
            assert!(why.contains("not a message id"), "{bad}: {why}");
        }
    }
}

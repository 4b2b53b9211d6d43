//! The lines of one operation: what each stage of a message's path came to, read from
//! the events the operation recorded, and each line as `key=value` text or as a JSON
//! object. Pure functions over the events, tested without a node.
//!
//! Values come from outside (addresses, replies, reasons an administrator typed) and
//! must never break a line or forge a field: in text, a value with a space, `=`, `"`,
//! `\` or anything that is not printable is quoted and escaped; in JSON, a string
//! holds no raw character that any line reader takes for a line break.

use std::fmt::Write as _;

use bulwark_model::event::rfc3339;
use bulwark_model::{
    ApiAction, Client, DeliveryReport, Event, EventKind, MessageId, MessageReceived,
    QuarantineAction, QuarantineDecided, QuarantineRecord, Rejection, Verdict,
};

/// A field's value.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Text(String),
    /// Addresses: comma-separated in text, an array in JSON.
    List(Vec<String>),
    /// A score or a delay, rounded to two decimals.
    Number(f64),
    Count(u64),
}

/// One line of the mail log: when, on which node, which stage, and its fields in
/// the order they are written.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    time_ms: i64,
    node: u64,
    pub stage: &'static str,
    fields: Vec<(&'static str, Value)>,
}

impl Line {
    fn new(event: &Event, stage: &'static str) -> Line {
        Line {
            time_ms: event.time_ms,
            node: event.node,
            stage,
            fields: Vec::new(),
        }
    }

    fn text(mut self, key: &'static str, value: impl Into<String>) -> Line {
        self.fields.push((key, Value::Text(value.into())));
        self
    }

    fn some_text(self, key: &'static str, value: Option<&str>) -> Line {
        match value {
            Some(value) => self.text(key, value),
            None => self,
        }
    }

    fn list(mut self, key: &'static str, values: &[String]) -> Line {
        if !values.is_empty() {
            self.fields.push((key, Value::List(values.to_vec())));
        }
        self
    }

    fn number(mut self, key: &'static str, value: f64) -> Line {
        self.fields
            .push((key, Value::Number((value * 100.0).round() / 100.0)));
        self
    }

    fn count(mut self, key: &'static str, value: u64) -> Line {
        self.fields.push((key, Value::Count(value)));
        self
    }

    fn id(self, id: MessageId) -> Line {
        self.text("id", id.to_string())
    }

    fn client(self, client: &Client) -> Line {
        self.text("client", client.ip.to_string())
            .some_text("helo", client.helo.as_deref())
    }

    /// `time=… node=… stage=… key=value…`, without the line break.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "time={} node={} stage={}",
            rfc3339(self.time_ms),
            self.node,
            self.stage
        );
        for (key, value) in &self.fields {
            out.push(' ');
            out.push_str(key);
            out.push('=');
            match value {
                Value::Text(text) => quoted(&mut out, &[text], ""),
                Value::List(items) => quoted(&mut out, items, ","),
                Value::Number(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Count(n) => {
                    let _ = write!(out, "{n}");
                }
            }
        }
        out
    }

    /// One JSON object with the fields in the order of the text, without the line
    /// break.
    pub fn to_json(&self) -> String {
        let mut out = format!(
            "{{\"time\":\"{}\",\"node\":{},\"stage\":\"{}\"",
            rfc3339(self.time_ms),
            self.node,
            self.stage
        );
        for (key, value) in &self.fields {
            let value = match value {
                Value::Text(text) => serde_json::Value::from(text.as_str()),
                Value::List(items) => serde_json::Value::from(items.clone()),
                Value::Number(n) => serde_json::Value::from(*n),
                Value::Count(n) => serde_json::Value::from(*n),
            };
            let _ = write!(out, ",\"{key}\":{value}");
        }
        out.push('}');
        // serde_json leaves these raw in strings; some line readers break lines there.
        out.replace('\u{85}', "\\u0085")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    }
}

/// Writes `items` joined by `separator` as one value: as it is when it is plain,
/// else in double quotes with `"` and `\` escaped and every character that is not
/// printable written as an escape (`\n`, `\r`, `\t`, `\u{hex}`); a separator inside
/// an item is escaped too, so that a list reads back item by item.
fn quoted(out: &mut String, items: &[impl AsRef<str>], separator: &str) {
    let plain = items.iter().all(|item| {
        let item = item.as_ref();
        !item.is_empty()
            && item.chars().all(|c| {
                !(matches!(c, ' ' | '=' | '"' | '\\') || unprintable(c) || separator.contains(c))
            })
    });
    if plain {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(separator);
            }
            out.push_str(item.as_ref());
        }
        return;
    }
    out.push('"');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        for c in item.as_ref().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if unprintable(c) || separator.contains(c) => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// A character that does not show as itself: controls (C0, DEL, C1), blanks other
/// than the space (line and paragraph separators among them), and the marks that
/// reorder text on screen (a right-to-left override could make a value read as
/// another field).
fn unprintable(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// The lines of one operation's events (all recorded by one operation: same node,
/// same time), in the order of its events; none for what is not a stage of a
/// message (leases, notes, tokens, refused API calls, ...).
pub fn lines(op: &[Event]) -> Vec<Line> {
    let verdict = op.iter().find_map(|e| match &e.kind {
        EventKind::ScanVerdict(v) => Some(v.as_ref()),
        _ => None,
    });
    let attempt = op.iter().find_map(|e| match &e.kind {
        EventKind::DeliveryAttempted(r) => Some(r.as_ref()),
        _ => None,
    });
    let dsn = op.iter().find_map(|e| match &e.kind {
        EventKind::DeliveryBounced { dsn_id, .. } => Some(*dsn_id),
        _ => None,
    });
    let mut out = Vec::new();
    for event in op {
        match &event.kind {
            EventKind::MessageReceived(m) => out.push(received(event, m, verdict)),
            EventKind::MessageQuarantined(q) => out.push(quarantined(event, q)),
            EventKind::PolicyRejected(r) => out.push(rejected(event, &r.rejection, verdict)),
            EventKind::MessageRejected(r) => out.push(rejected(event, r, verdict)),
            EventKind::RejectionsSuppressed { count } => out.push(
                Line::new(event, "rejected")
                    .text("reason", "suppressed")
                    .count("count", *count),
            ),
            EventKind::QuarantineDecided(d) => out.push(decided(event, d)),
            EventKind::ApiAction(a) => out.extend(queue_action(event, a)),
            EventKind::DeliverySucceeded {
                message_id,
                recipients,
            } => out.extend(delivery(
                event,
                "delivered",
                *message_id,
                recipients,
                "",
                attempt,
            )),
            EventKind::DeliveryDeferred {
                message_id,
                recipients,
                next_attempt_ms,
                reply,
            } => out.extend(
                delivery(event, "deferred", *message_id, recipients, reply, attempt)
                    .into_iter()
                    .map(|line| line.text("next", rfc3339(*next_attempt_ms))),
            ),
            EventKind::DeliveryFailed {
                message_id,
                recipients,
                reply,
            } => out.extend(
                delivery(event, "bounced", *message_id, recipients, reply, attempt)
                    .into_iter()
                    .map(|line| match dsn {
                        Some(dsn) => line.text("dsn", dsn.to_string()),
                        None => line,
                    }),
            ),
            _ => {}
        }
    }
    out
}

fn received(event: &Event, m: &MessageReceived, verdict: Option<&Verdict>) -> Line {
    let line = Line::new(event, "received")
        .id(m.message_id)
        .text("from", m.envelope.mail_from.as_str())
        .list("to", &m.envelope.rcpt_to)
        .client(&m.client)
        .text("proto", m.protocol.as_str())
        .count("size", m.size)
        .some_text("msgid", m.header_message_id.as_deref())
        .text("action", m.action.as_str());
    match verdict {
        Some(v) if v.message_id == m.message_id => line.number("score", v.score),
        _ => line,
    }
}

fn quarantined(event: &Event, q: &QuarantineRecord) -> Line {
    Line::new(event, "quarantined")
        .id(q.message_id)
        .text("from", q.mail_from.as_str())
        .list("to", &q.recipients)
        .number("score", q.score)
        .text("reason", q.reason.as_str())
}

/// A refusal: of a whole message by the policy (with its id and verdict), or of a
/// command before there was a message (no id, as Postfix's `NOQUEUE`).
fn rejected(event: &Event, r: &Rejection, verdict: Option<&Verdict>) -> Line {
    let line = Line::new(event, "rejected");
    let line = match verdict {
        Some(v) => line.id(v.message_id),
        None => line,
    };
    let line = line
        .some_text("from", r.mail_from.as_deref())
        .list("to", &r.rcpt_to)
        .client(&r.client);
    let line = match verdict {
        Some(v) => line
            .number("score", v.score)
            .text("reason", v.reason.as_str()),
        None => line.text("reason", r.reason.as_str()),
    };
    line.text("reply", r.reply.as_str())
}

/// An administrator's release or deletion of a quarantined message, or the
/// retention's expiry of it.
fn decided(event: &Event, d: &QuarantineDecided) -> Line {
    let stage = match d.decision.action {
        QuarantineAction::Release => "released",
        QuarantineAction::Delete => "deleted",
        QuarantineAction::Expire => "expired",
    };
    let line = Line::new(event, stage)
        .id(d.decision.message_id)
        .text("from", d.mail_from.as_str())
        .list("to", &d.recipients)
        .text("user", d.decision.user.as_str());
    let line = match d.decision.client_ip {
        Some(ip) => line.text("client", ip.to_string()),
        None => line,
    };
    line.text("reason", d.decision.reason.as_str())
}

/// An administrator's action on a queued message that was done (a refused one
/// changed nothing).
fn queue_action(event: &Event, a: &ApiAction) -> Option<Line> {
    let stage = match a.action.as_str() {
        "queue.hold" => "held",
        "queue.release" => "unheld",
        "queue.retry" => "requeued",
        "queue.delete" => "deleted",
        _ => return None,
    };
    let id = a.message_id.filter(|_| a.refused.is_none())?;
    let line = Line::new(event, stage)
        .id(id)
        .list("to", &a.recipients)
        .text("user", a.user.as_str());
    Some(match a.client_ip {
        Some(ip) => line.text("client", ip.to_string()),
        None => line,
    })
}

/// The lines of one outcome of a delivery attempt: its recipients grouped by the
/// reply each got (from the attempt's report; `reply` for any it does not name), a
/// line a reply.
fn delivery(
    event: &Event,
    stage: &'static str,
    id: MessageId,
    recipients: &[String],
    reply: &str,
    attempt: Option<&DeliveryReport>,
) -> Vec<Line> {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for address in recipients {
        let got = attempt
            .and_then(|a| a.results.iter().find(|r| &r.address == address))
            .map_or(reply, |r| r.reply.as_str());
        match groups.iter_mut().find(|(r, _)| *r == got) {
            Some((_, addresses)) => addresses.push(address.clone()),
            None => groups.push((got, vec![address.clone()])),
        }
    }
    // The id's first 48 bits are when the message was received (Unix ms).
    let received_ms = (id.0 >> 80) as i64;
    let delay = (event.time_ms - received_ms).max(0) as f64 / 1000.0;
    groups
        .into_iter()
        .map(|(reply, to)| {
            let line = Line::new(event, stage).id(id).list("to", &to);
            let line = match attempt {
                Some(a) => line
                    .text("relay", a.next_hop.as_str())
                    .some_text("tls", a.tls.as_ref().map(|t| t.version.as_str())),
                None => line,
            };
            line.number("delay", delay).text("reply", reply)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use bulwark_model::{
        Action, Envelope, QuarantineCommand, RecipientOutcome, RecipientResult, Thresholds, Timings,
    };

    use super::*;

    const T: i64 = 1_764_900_000_000;

    fn id() -> MessageId {
        MessageId::new(T, 42)
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            time_ms: T + 1500,
            node: 2,
            raft_index: seq,
            op_id: 7,
            kind,
        }
    }

    fn client() -> Client {
        Client {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 40000,
            helo: Some("mail.sender.test".into()),
            tls: None,
            proxy: None,
        }
    }

    fn verdict(action: Action, score: f64, reason: &str) -> Verdict {
        Verdict {
            message_id: id(),
            action,
            reason: reason.into(),
            score,
            thresholds: Thresholds {
                tag: 5.0,
                quarantine: 10.0,
                reject: 20.0,
            },
            symbols: Vec::new(),
            authentication: Vec::new(),
            findings: Vec::new(),
            engines: Vec::new(),
        }
    }

    fn received(to: &[&str], action: Action) -> EventKind {
        EventKind::MessageReceived(Box::new(MessageReceived {
            message_id: id(),
            envelope: Envelope {
                mail_from: "alice@sender.test".into(),
                rcpt_to: to.iter().map(|s| s.to_string()).collect(),
                smtputf8: false,
                eight_bit: false,
            },
            client: client(),
            protocol: "ESMTP".into(),
            size: 1532,
            subject: Some("secret plans".into()),
            header_from: None,
            header_message_id: Some("<abc@sender.test>".into()),
            action,
            timings: Timings {
                session_ms: 1,
                transfer_ms: 1,
                scan_ms: 1,
            },
        }))
    }

    fn texts(op: &[Event]) -> Vec<String> {
        lines(op).iter().map(Line::to_text).collect()
    }

    #[test]
    fn an_accepted_message_is_one_received_line_with_its_score() {
        let op = [
            event(1, received(&["bob@example.test"], Action::Deliver)),
            event(
                2,
                EventKind::ScanVerdict(Box::new(verdict(Action::Deliver, 0.304, "ok"))),
            ),
        ];
        assert_eq!(
            texts(&op),
            [format!(
                "time=2025-12-05T02:00:01.500Z node=2 stage=received id={} \
                 from=alice@sender.test to=bob@example.test client=192.0.2.10 \
                 helo=mail.sender.test proto=ESMTP size=1532 msgid=<abc@sender.test> \
                 action=deliver score=0.3",
                id()
            )]
        );
        let json: serde_json::Value = serde_json::from_str(&lines(&op)[0].to_json()).unwrap();
        assert_eq!(json["stage"], "received");
        assert_eq!(json["to"], serde_json::json!(["bob@example.test"]));
        assert_eq!(json["score"], 0.3);
        assert_eq!(json["size"], 1532);
        assert!(
            json.get("subject").is_none(),
            "no subject in the log: {json}"
        );
    }

    #[test]
    fn a_quarantined_message_is_received_then_quarantined() {
        let op = [
            event(1, received(&["bob@example.test"], Action::Quarantine)),
            event(
                2,
                EventKind::ScanVerdict(Box::new(verdict(
                    Action::Quarantine,
                    12.0,
                    "blocked content extension:exe",
                ))),
            ),
            event(
                3,
                EventKind::MessageQuarantined(Box::new(QuarantineRecord {
                    message_id: id(),
                    received_seq: 1,
                    time_ms: T,
                    mail_from: "alice@sender.test".into(),
                    recipients: vec!["bob@example.test".into()],
                    subject: None,
                    header_from: None,
                    size: 1532,
                    score: 12.0,
                    reason: "blocked content extension:exe".into(),
                })),
            ),
        ];
        let stages: Vec<_> = lines(&op).iter().map(|l| l.stage).collect();
        assert_eq!(stages, ["received", "quarantined"]);
        assert!(texts(&op)[1].ends_with("score=12 reason=\"blocked content extension:exe\""));
    }

    #[test]
    fn a_refusal_before_the_message_has_no_id_and_the_reply() {
        let op = [event(
            1,
            EventKind::MessageRejected(Box::new(Rejection {
                client: client(),
                mail_from: Some(String::new()),
                rcpt_to: vec!["x@foreign.test".into()],
                reason: "relay_denied".into(),
                reply: "554 5.7.1 <x@foreign.test>: Relay access denied".into(),
            })),
        )];
        assert_eq!(
            texts(&op),
            [
                "time=2025-12-05T02:00:01.500Z node=2 stage=rejected from=\"\" to=x@foreign.test \
              client=192.0.2.10 helo=mail.sender.test reason=relay_denied \
              reply=\"554 5.7.1 <x@foreign.test>: Relay access denied\""
            ]
        );
    }

    #[test]
    fn a_delivery_gives_a_line_per_outcome_and_reply() {
        let report = DeliveryReport {
            message_id: id(),
            next_hop: "127.0.0.1:2600".into(),
            tls: None,
            results: vec![
                RecipientResult {
                    address: "a@example.test".into(),
                    reply: "250 2.0.0 Ok".into(),
                    outcome: RecipientOutcome::Delivered,
                },
                RecipientResult {
                    address: "b@example.test".into(),
                    reply: "451 4.2.1 busy".into(),
                    outcome: RecipientOutcome::Deferred {
                        next_attempt_ms: T + 60_000,
                    },
                },
                RecipientResult {
                    address: "c@example.test".into(),
                    reply: "550 5.1.1 no such user".into(),
                    outcome: RecipientOutcome::Failed,
                },
                RecipientResult {
                    address: "d@example.test".into(),
                    reply: "550 5.7.1 refused".into(),
                    outcome: RecipientOutcome::Failed,
                },
            ],
            duration_ms: 12,
            release_lease: true,
        };
        let dsn = MessageId::new(T + 1500, 9);
        let failed: Vec<String> = vec!["c@example.test".into(), "d@example.test".into()];
        let op = [
            event(1, EventKind::DeliveryAttempted(Box::new(report))),
            event(
                2,
                EventKind::DeliverySucceeded {
                    message_id: id(),
                    recipients: vec!["a@example.test".into()],
                },
            ),
            event(
                3,
                EventKind::DeliveryDeferred {
                    message_id: id(),
                    recipients: vec!["b@example.test".into()],
                    next_attempt_ms: T + 60_000,
                    reply: "451 4.2.1 busy".into(),
                },
            ),
            event(
                4,
                EventKind::DeliveryFailed {
                    message_id: id(),
                    recipients: failed.clone(),
                    reply: "550 5.1.1 no such user".into(),
                },
            ),
            event(
                5,
                EventKind::DeliveryBounced {
                    message_id: id(),
                    dsn_id: dsn,
                    sender: "alice@sender.test".into(),
                    recipients: failed,
                },
            ),
        ];
        let id = id();
        let head = "time=2025-12-05T02:00:01.500Z node=2";
        assert_eq!(
            texts(&op),
            [
                format!(
                    "{head} stage=delivered id={id} to=a@example.test relay=127.0.0.1:2600 \
                     delay=1.5 reply=\"250 2.0.0 Ok\""
                ),
                format!(
                    "{head} stage=deferred id={id} to=b@example.test relay=127.0.0.1:2600 \
                     delay=1.5 reply=\"451 4.2.1 busy\" next=2025-12-05T02:01:00.000Z"
                ),
                format!(
                    "{head} stage=bounced id={id} to=c@example.test relay=127.0.0.1:2600 \
                     delay=1.5 reply=\"550 5.1.1 no such user\" dsn={dsn}"
                ),
                format!(
                    "{head} stage=bounced id={id} to=d@example.test relay=127.0.0.1:2600 \
                     delay=1.5 reply=\"550 5.7.1 refused\" dsn={dsn}"
                ),
            ]
        );
    }

    #[test]
    fn decisions_on_the_quarantine_and_the_queue_name_who() {
        let decided = |action| {
            event(
                1,
                EventKind::QuarantineDecided(Box::new(QuarantineDecided {
                    decision: QuarantineCommand {
                        message_id: id(),
                        action,
                        reason: "false positive".into(),
                        user: "ops".into(),
                        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    },
                    mail_from: "alice@sender.test".into(),
                    recipients: vec!["bob@example.test".into()],
                })),
            )
        };
        for (action, stage) in [
            (QuarantineAction::Release, "released"),
            (QuarantineAction::Delete, "deleted"),
            (QuarantineAction::Expire, "expired"),
        ] {
            assert_eq!(
                texts(&[decided(action)]),
                [format!(
                    "time=2025-12-05T02:00:01.500Z node=2 stage={stage} id={} \
                     from=alice@sender.test to=bob@example.test user=ops client=127.0.0.1 \
                     reason=\"false positive\"",
                    id()
                )]
            );
        }
        let action = |name: &str, refused: Option<&str>| {
            event(
                1,
                EventKind::ApiAction(Box::new(ApiAction {
                    action: name.into(),
                    user: "ops".into(),
                    client_ip: None,
                    message_id: Some(id()),
                    recipients: vec!["bob@example.test".into()],
                    refused: refused.map(str::to_string),
                })),
            )
        };
        for (name, stage) in [
            ("queue.hold", "held"),
            ("queue.release", "unheld"),
            ("queue.retry", "requeued"),
            ("queue.delete", "deleted"),
        ] {
            let got = lines(&[action(name, None)]);
            assert_eq!(got.len(), 1, "{name}");
            assert_eq!(got[0].stage, stage);
        }
        assert!(lines(&[action("queue.hold", Some("not in the queue"))]).is_empty());
        assert!(lines(&[action("token.create", None)]).is_empty());
    }

    #[test]
    fn values_cannot_break_a_line_or_forge_a_field() {
        let hostile = [
            "\"bob stage=delivered relay=evil\"@example.test",
            "\"a\\r\\nstage=delivered\"@example.test",
            "x\r\ntime=0 stage=delivered@example.test",
            "line\u{2028}sep\u{85}nel\u{202e}rlo@example.test",
            "comma,inside@example.test",
            "",
        ];
        let to: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
        let op = [event(
            1,
            EventKind::MessageRejected(Box::new(Rejection {
                client: client(),
                mail_from: Some("tab\there@sender.test".into()),
                rcpt_to: to.clone(),
                reason: "relay_denied".into(),
                reply: "554 5.7.1 \"quoted\" back\\slash".into(),
            })),
        )];
        let line = &lines(&op)[0];
        let text = line.to_text();
        assert!(
            !text.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{202e}']),
            "{text:?}"
        );
        assert_eq!(
            text,
            "time=2025-12-05T02:00:01.500Z node=2 stage=rejected from=\"tab\\there@sender.test\" \
             to=\"\\\"bob stage=delivered relay=evil\\\"@example.test,\
             \\\"a\\\\r\\\\nstage=delivered\\\"@example.test,\
             x\\r\\ntime=0 stage=delivered@example.test,\
             line\\u{2028}sep\\u{85}nel\\u{202e}rlo@example.test,\
             comma\\u{2c}inside@example.test,\" \
             client=192.0.2.10 helo=mail.sender.test reason=relay_denied \
             reply=\"554 5.7.1 \\\"quoted\\\" back\\\\slash\""
        );
        let json = line.to_json();
        assert!(
            !json.contains(['\n', '\r', '\u{85}', '\u{2028}']),
            "{json:?}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["to"], serde_json::json!(to));
        assert_eq!(parsed["reply"], "554 5.7.1 \"quoted\" back\\slash");
    }

    #[test]
    fn what_is_no_stage_of_a_message_gives_no_line() {
        let op = [event(
            1,
            EventKind::DeliveryLeased {
                message_id: id(),
                holder: 2,
                until_ms: T,
                granted: true,
            },
        )];
        assert!(lines(&op).is_empty());
        let note = [event(
            1,
            EventKind::AuditNote {
                author: "a".into(),
                text: "t".into(),
            },
        )];
        assert!(lines(&note).is_empty());
    }
}

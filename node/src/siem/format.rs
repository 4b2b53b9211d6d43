//! How an event looks on the wire: the API's JSON (Elastic Common Schema names) with
//! the exporter's own number added (`export: {"exporter", "seq"}`), or ArcSight's
//! Common Event Format; framed for syslog (RFC 5424 with RFC 6587 octet counting, or
//! RELP), or wrapped for Splunk's HTTP Event Collector.

use serde_json::Value;

/// The payload of a syslog message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Json,
    Cef,
}

/// How much an event matters to a SOC, for syslog's severity and CEF's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Mail flowing as it should, administrators' routine actions.
    Info,
    /// Mail refused at the door or tagged.
    Notice,
    /// Mail quarantined or rejected for its content, mail that could not be
    /// delivered, actions refused.
    Warning,
}

impl Level {
    /// The level of an event in the API's JSON.
    pub fn of(event: &Value) -> Level {
        let action = event["action"].as_str().unwrap_or_default();
        match event["type"].as_str().unwrap_or_default() {
            "scan.verdict" => match action {
                "reject" | "quarantine" => Level::Warning,
                "tag" => Level::Notice,
                _ => Level::Info,
            },
            "message.quarantined" | "delivery.failed" | "delivery.bounced" => Level::Warning,
            "message.rejected" => Level::Notice,
            _ if event["event"]["outcome"] == "failure" => Level::Warning,
            _ => Level::Info,
        }
    }

    /// RFC 5424 severity: warning (4), notice (5), informational (6).
    fn syslog(self) -> u8 {
        match self {
            Level::Info => 6,
            Level::Notice => 5,
            Level::Warning => 4,
        }
    }

    /// CEF severity, 0 (lowest) to 10.
    fn cef(self) -> u8 {
        match self {
            Level::Info => 3,
            Level::Notice => 5,
            Level::Warning => 7,
        }
    }
}

/// One RFC 5424 message framed by octet counting (RFC 6587 3.4.1):
/// `LEN SP MESSAGE`, the message as [`syslog_message`] writes it.
pub fn syslog_frame(event: &Value, payload: Payload, facility: u8, hostname: &str) -> Vec<u8> {
    let message = syslog_message(event, payload, facility, hostname);
    let mut frame = format!("{} ", message.len()).into_bytes();
    frame.extend_from_slice(message.as_bytes());
    frame
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME bulwark - TYPE - PAYLOAD`. The
/// payload is sent without a byte-order mark (RFC 5424's MSG-ANY); the structured
/// data is empty because seq, node and hashes are in the payload.
pub fn syslog_message(event: &Value, payload: Payload, facility: u8, hostname: &str) -> String {
    let pri = u16::from(facility) * 8 + u16::from(Level::of(event).syslog());
    let time = event["time"].as_str().unwrap_or("-");
    let msgid = header_token(event["type"].as_str().unwrap_or("-"), 32);
    let host = header_token(hostname, 255);
    let body = match payload {
        Payload::Json => event.to_string(),
        Payload::Cef => cef(event, hostname),
    };
    format!("<{pri}>1 {time} {host} bulwark - {msgid} - {body}")
}

/// A syslog header field: printable US-ASCII without spaces, at most `max` long,
/// `-` when nothing is left.
fn header_token(value: &str, max: usize) -> String {
    let token: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if token.is_empty() {
        "-".into()
    } else {
        token
    }
}

/// One event for Splunk's HTTP Event Collector (`/services/collector/event`).
pub fn hec_event(
    event: &Value,
    hostname: &str,
    sourcetype: &str,
    index: Option<&str>,
) -> serde_json::Value {
    let time_ms = event["time"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
    let mut wrapped = serde_json::json!({
        // Seconds with milliseconds, as HEC takes them.
        "time": time_ms as f64 / 1000.0,
        "host": hostname,
        "source": "bulwark",
        "sourcetype": sourcetype,
        "event": event,
    });
    if let Some(index) = index {
        wrapped["index"] = index.into();
    }
    wrapped
}

/// The CEF line of an event (ArcSight Common Event Format, revision 0):
/// `CEF:0|Bulwark|Bulwark|VERSION|TYPE|NAME|SEVERITY|EXTENSIONS`. Which JSON field
/// becomes which CEF key is the table in api/README.md ("CEF").
pub fn cef(event: &Value, hostname: &str) -> String {
    let kind = event["type"].as_str().unwrap_or_default();
    let action = event["action"].as_str();
    let name = match action {
        Some(action) => format!("{kind} {action}"),
        None => kind.to_string(),
    };
    let mut out = format!(
        "CEF:0|Bulwark|Bulwark|{}|{}|{}|{}|",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(kind),
        cef_header(&name),
        Level::of(event).cef()
    );
    let mut ext: Vec<(&str, String)> = Vec::new();
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect();
                (!items.is_empty()).then(|| items.join(","))
            }
            _ => None,
        }
    };
    if let Some(time) = event["time"].as_str().and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    }) {
        ext.push(("rt", (time.unix_timestamp_nanos() / 1_000_000).to_string()));
    }
    ext.push(("dvchost", hostname.to_string()));
    let email = &event["email"];
    let user = text(&event["user"]["name"]);
    let fields: [(&str, &Value); 15] = [
        ("externalId", &event["seq"]),
        ("cn1", &event["export"]["seq"]),
        ("cs6", &event["export"]["exporter"]),
        ("deviceExternalId", &event["node"]),
        ("spt", &event["source"]["port"]),
        ("shost", &event["source"]["domain"]),
        ("duser", &email["to"]["address"]),
        ("dhost", &event["destination"]["address"]),
        ("act", &event["event"]["action"]),
        ("outcome", &event["event"]["outcome"]),
        ("reason", &event["event"]["reason"]),
        ("cat", &event["event"]["provider"]),
        ("cs1", &event["message_id"]),
        ("cs2", &event["hash"]),
        ("cs3", &event["prev_hash"]),
    ];
    for (key, value) in fields {
        if let Some(value) = text(value) {
            ext.push((key, value));
        }
    }
    // CEF keeps IPv6 addresses apart from `src`.
    if let Some(ip) = text(&event["source"]["ip"]) {
        ext.push((if ip.contains(':') { "c6a2" } else { "src" }, ip));
    }
    if let Some(sender) = text(&email["sender"]["address"]).or_else(|| user.clone()) {
        ext.push(("suser", sender));
    }
    if let Some(subject) = text(&email["subject"]).or_else(|| text(&event["message"])) {
        ext.push(("msg", subject));
    }
    if let Some(from) = text(&email["from"]["address"]) {
        ext.push(("cs4", from));
    }
    if let Some(user) = user {
        ext.push(("cs5", user));
    }
    if let Some(score) = text(&event["scan"]["score"]).or_else(|| text(&event["score"])) {
        ext.push(("cfp1", score));
    }
    let labels = [
        ("cs1", "cs1Label", "messageId"),
        ("cs2", "cs2Label", "hash"),
        ("cs3", "cs3Label", "prevHash"),
        ("cs4", "cs4Label", "headerFrom"),
        ("cs5", "cs5Label", "user"),
        ("cs6", "cs6Label", "exporter"),
        ("cn1", "cn1Label", "exportSeq"),
        ("cfp1", "cfp1Label", "score"),
        ("c6a2", "c6a2Label", "sourceIPv6"),
    ];
    for (field, label, value) in labels {
        if ext.iter().any(|(k, _)| *k == field) {
            ext.push((label, value.to_string()));
        }
    }
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(key, value)| format!("{key}={}", cef_value(&value)))
        .collect();
    out.push_str(&ext.join(" "));
    out
}

/// A CEF header field: `\` and `|` escaped; line breaks, which a header may not
/// hold, become spaces.
fn cef_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A CEF extension value: `\` and `=` escaped, line breaks written `\n` and `\r`
/// (a pipe needs no escape there).
fn cef_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantined(subject: &str) -> Value {
        serde_json::json!({
            "seq": 42,
            "time": "2026-11-28T10:00:00.250Z",
            "type": "message.quarantined",
            "node": 2,
            "hash": "ab",
            "prev_hash": "cd",
            "message_id": "0190aa",
            "action": "quarantine",
            "event": { "action": "quarantine", "reason": "score 12 >= 10" },
            "email": {
                "sender": { "address": "eve@evil.test" },
                "to": { "address": ["a@example.test", "b@example.test"] },
                "from": { "address": ["ceo@example.test"] },
                "subject": subject,
            },
            "score": 12.5,
        })
    }

    #[test]
    fn cef_escapes_each_special_character_where_it_stands() {
        let line = cef(&quarantined("a|b=c\\d\r\ne"), "mx|1.example.test");
        assert!(
            line.starts_with(
                "CEF:0|Bulwark|Bulwark|0.1.0|message.quarantined|message.quarantined quarantine|7|"
            ),
            "{line}"
        );
        assert!(line.contains(r"msg=a|b\=c\\d\r\ne"), "{line}");
        assert!(line.contains("dvchost=mx|1.example.test"), "{line}");
        assert!(line.contains(r"reason=score 12 >\= 10"), "{line}");
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(line.contains("rt=1795860000250"), "{line}");
        assert!(
            line.contains("duser=a@example.test,b@example.test"),
            "{line}"
        );
        assert!(line.contains("suser=eve@evil.test"), "{line}");
        assert!(line.contains("cs1=0190aa cs2=ab cs3=cd"), "{line}");
        assert!(line.contains("cs1Label=messageId"), "{line}");
        assert!(
            line.contains("cfp1=12.5") && line.contains("cfp1Label=score"),
            "{line}"
        );
        assert!(line.contains("externalId=42 deviceExternalId=2"), "{line}");
        let mut numbered = quarantined("x");
        numbered["export"] = serde_json::json!({ "exporter": "soc", "seq": 7 });
        let line = cef(&numbered, "mx");
        assert!(line.contains("externalId=42 cn1=7 cs6=soc "), "{line}");
        assert!(
            line.contains("cs6Label=exporter cn1Label=exportSeq"),
            "{line}"
        );
        // A change made through the API: its marker as the category.
        let mut by_api = quarantined("x");
        by_api["event"]["provider"] = "api".into();
        let line = cef(&by_api, "mx");
        assert!(line.contains(r" reason=score 12 >\= 10 cat=api "), "{line}");
        // A header field with a pipe or a backslash.
        let mut odd = quarantined("x");
        odd["type"] = "a|b\\c\nd".into();
        let line = cef(&odd, "mx");
        assert!(line.contains(r"|a\|b\\c d|"), "{line}");
    }

    #[test]
    fn syslog_frames_count_octets_and_carry_priority_and_type() {
        let event = quarantined("Grüße");
        let frame = syslog_frame(&event, Payload::Json, 13, "mx 1");
        let text = String::from_utf8(frame).unwrap();
        let (len, message) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), message.len());
        // log audit (13) * 8 + warning (4).
        assert!(
            message.starts_with(
                "<108>1 2026-11-28T10:00:00.250Z mx1 bulwark - message.quarantined - {"
            ),
            "{message}"
        );
        let json = message.split_once(" - {").unwrap().1;
        let parsed: Value = serde_json::from_str(&format!("{{{json}")).unwrap();
        assert_eq!(parsed, event);
        let cef_frame = String::from_utf8(syslog_frame(&event, Payload::Cef, 16, "mx")).unwrap();
        assert!(cef_frame.contains("<132>1 ") && cef_frame.contains(" - CEF:0|"));
    }

    #[test]
    fn levels_follow_what_happened() {
        let mut verdict = serde_json::json!({ "type": "scan.verdict", "action": "deliver" });
        assert_eq!(Level::of(&verdict), Level::Info);
        verdict["action"] = "tag".into();
        assert_eq!(Level::of(&verdict), Level::Notice);
        verdict["action"] = "reject".into();
        assert_eq!(Level::of(&verdict), Level::Warning);
        let refused =
            serde_json::json!({ "type": "api.action", "event": { "outcome": "failure" } });
        assert_eq!(Level::of(&refused), Level::Warning);
        let hec = hec_event(&quarantined("x"), "mx", "bulwark:event", Some("mail"));
        assert_eq!(hec["time"], 1_795_860_000.25);
        assert_eq!(hec["index"], "mail");
        assert_eq!(hec["event"]["seq"], 42);
    }
}

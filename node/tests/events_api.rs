//! The audit trail for machines, seen from outside: the export streams every event
//! as NDJSON, in order, filtered as asked; the live tail sends each new event as a
//! server-sent event and resumes where a client left off (`Last-Event-ID`).

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{Api, Node};
use serde_json::{json, Value};

fn note(api: &Api, text: &str) -> u64 {
    let (status, posted) = api.post_json("/v1/notes", &json!({ "text": text }));
    assert_eq!(status, 201, "{posted}");
    posted["seq"].as_u64().unwrap()
}

/// The events of an export, each line parsed.
fn export(api: &Api, query: &str) -> Vec<Value> {
    let response = api.get_raw(&format!("/v1/events/export?{query}"));
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = response.text().unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Reads server-sent events from `reader` until `n` have come: (id, type, data).
fn sse(reader: &mut impl BufRead, n: usize) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    let (mut id, mut kind, mut data) = (None, None, None);
    while out.len() < n {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(v).unwrap());
        } else if line.is_empty() {
            if let (Some(i), Some(k), Some(d)) = (id.take(), kind.take(), data.take()) {
                out.push((i, k, d));
            }
        }
    }
    out
}

#[test]
fn events_export_streams_ndjson_and_the_tail_resumes_from_last_event_id() {
    let node = Node::start("");
    let api = Api::new(&node);
    let seqs: Vec<u64> = (0..5).map(|i| note(&api, &format!("note {i}"))).collect();

    // The whole log, in order, as the listing has it.
    let all = export(&api, "");
    let (_, listed) = api.get("/v1/events?limit=1000");
    assert_eq!(all, listed["events"].as_array().unwrap().clone());
    assert!(all
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    // Filtered, and from a cursor.
    let notes = export(&api, "type=audit.note");
    assert_eq!(notes.len(), 5);
    let after = export(&api, &format!("type=audit.note&after={}", seqs[1]));
    let texts: Vec<&str> = after
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["note 2", "note 3", "note 4"]);
    assert!(export(&api, "after=999999").is_empty());
    for bad in ["after=-1", "message_id=nope", "colour=red"] {
        let (status, problem) = api.get(&format!("/v1/events/export?{bad}"));
        assert_eq!(status, 400, "{bad}: {problem}");
    }

    // The tail: what came after the cursor, then what is written while it runs.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let open = |query: &str, last: Option<u64>| {
        let mut request = client
            .get(api.url(&format!("/v1/events/stream?{query}")))
            .bearer_auth(node.token());
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        BufReader::new(response)
    };
    let mut tail = open(&format!("type=audit.note&after={}", seqs[2]), None);
    let got = sse(&mut tail, 2);
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        [seqs[3], seqs[4]]
    );
    assert!(got.iter().all(|e| e.1 == "audit.note"));
    let live = note(&api, "written while tailing");
    let got = sse(&mut tail, 1);
    assert_eq!(got[0].0, live);
    assert_eq!(got[0].2["message"], "written while tailing");
    drop(tail);

    // Resumed: Last-Event-ID wins over after=.
    let mut resumed = open("type=audit.note&after=0", Some(seqs[4]));
    assert_eq!(sse(&mut resumed, 1)[0].0, live);
    // From the end: only what comes next.
    let mut fresh = open("", None);
    let next = note(&api, "after the fresh tail opened");
    let got = sse(&mut fresh, 1);
    assert_eq!((got[0].0, got[0].1.as_str()), (next, "audit.note"));

    let bad = client
        .get(api.url("/v1/events/stream"))
        .bearer_auth(node.token())
        .header("Last-Event-ID", "yesterday")
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[test]
fn events_filter_by_sender_recipient_action_client_ip_and_time() {
    let node = Node::start("");
    let api = Api::new(&node);
    let mut s = common::Smtp::ehlo(node.smtp);
    let plain = "Subject: hello\r\n\r\nhello\r\n";
    let kept = s
        .send_message("alice@a.test", &["bob@example.test"], plain)
        .queued_id();
    let gtube = "Subject: test\r\n\r\n\
        XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    s.send(b"MAIL FROM:<eve@evil.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n");
    for _ in 0..3 {
        s.read_reply();
    }
    s.send(format!("{gtube}.\r\n").as_bytes());
    assert_eq!(s.read_reply().code, 554);
    node.wait_events("message.rejected", 1);
    let marker = note(&api, "after the mail");

    let types = |query: &str| -> Vec<String> {
        let (status, page) = api.get(&format!("/v1/events?{query}"));
        assert_eq!(status, 200, "{query}: {page}");
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(types("sender=eve@evil.test"), ["message.rejected"]);
    assert_eq!(types("sender=@A.TEST"), ["message.received"]);
    assert_eq!(types("recipient=carol@example.test"), ["message.rejected"]);
    assert_eq!(
        types("recipient=@example.test&type=message.received"),
        ["message.received"]
    );
    assert_eq!(types("action=reject"), ["scan.verdict"]);
    assert_eq!(types("action=deliver&type=scan.verdict"), ["scan.verdict"]);
    assert!(types("client_ip=127.0.0.1").contains(&"message.received".to_string()));
    assert!(types("client_ip=::ffff:192.0.2.1").is_empty());
    assert!(types("until=2000-01-01T00:00:00Z").is_empty());
    // Since the note's own time: the note and nothing older than it.
    let (_, page) = api.get(&format!("/v1/events?type=audit.note&after={}", marker - 1));
    let since = page["events"][0]["time"].as_str().unwrap().to_string();
    let (_, page) = api.get(&format!("/v1/events?since={since}"));
    assert!(page["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["seq"].as_u64().unwrap() >= marker));
    // The export takes the same filters.
    let exported = export(&api, "sender=eve@evil.test");
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["type"], "message.rejected");
    let verdict = export(&api, &format!("message_id={kept}&type=scan.verdict"));
    assert_eq!(verdict[0]["action"], "deliver");
    for bad in [
        "/v1/events?client_ip=localhost",
        "/v1/events?since=today",
        "/v1/events/export?limit=10",
    ] {
        let (status, problem) = api.get(bad);
        assert_eq!(status, 400, "{bad}: {problem}");
    }
}

/// Follows `next` through `/v1/events?{query}&after=…` until the end of the log as it
/// stands, once `done` says the writers have stopped; returns every seq listed.
fn page_through(api: &Api, query: &str, done: &std::sync::atomic::AtomicBool) -> Vec<u64> {
    let (mut seqs, mut after) = (Vec::new(), 0u64);
    for _ in 0..100_000 {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        let (status, page) = api.get(&format!("/v1/events?{query}&after={after}"));
        assert_eq!(status, 200, "{page}");
        for event in page["events"].as_array().unwrap() {
            seqs.push(event["seq"].as_u64().unwrap());
        }
        match page["next"].as_u64() {
            Some(next) => after = next,
            None if finished => return seqs,
            // The end of the log for now: go on from the last event seen.
            None => after = seqs.last().copied().unwrap_or(after),
        }
    }
    panic!("pagination did not end");
}

#[test]
fn pagination_under_concurrent_writes_neither_skips_nor_repeats() {
    let node = Node::start("");
    let api = Api::new(&node);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (all, notes) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let api = &api;
                scope.spawn(move || {
                    for i in 0..100 {
                        note(api, &format!("writer {w} note {i}"));
                    }
                })
            })
            .collect();
        let all = scope.spawn(|| page_through(&api, "limit=7", &done));
        let notes = scope.spawn(|| page_through(&api, "type=audit.note&limit=5", &done));
        for writer in writers {
            writer.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (all.join().unwrap(), notes.join().unwrap())
    });
    // In order, so never twice; and exactly what a listing after the writes holds.
    for (seqs, query) in [(&all, "limit=1000"), (&notes, "type=audit.note&limit=1000")] {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{query}: out of order"
        );
        let quiet = std::sync::atomic::AtomicBool::new(true);
        assert_eq!(*seqs, page_through(&api, query, &quiet), "{query}");
    }
    assert_eq!(notes.len(), 400);
    assert!(all.len() >= 400);
}

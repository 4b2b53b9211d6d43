//! The Bayesian classifier seen from outside: messages learned over the HTTP API
//! change how the next messages sent over SMTP are scored, each lesson is an audited
//! `bayes.trained` event, a message counts once, and every malformed request gets a
//! clear problem+json answer without changing the counts.

mod common;

use bulwark_cluster_tests::samples::{vocabulary_message, HAM_WORDS, SPAM_WORDS};
use common::{Node, Smtp};
use reqwest::blocking::{Client, Response};
use serde_json::Value;

struct Api {
    base: String,
    token: String,
    client: Client,
}

impl Api {
    fn new(node: &Node) -> Api {
        Api {
            base: node.api.clone(),
            token: node.token(),
            client: Client::new(),
        }
    }

    fn learn_raw(&self, lesson: &str, body: Vec<u8>) -> Response {
        self.client
            .post(format!("{}/v1/bayes/{lesson}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "message/rfc822")
            .body(body)
            .send()
            .unwrap()
    }

    /// Learns `body` as `lesson` and returns the answer, asserting 200.
    fn learn(&self, lesson: &str, body: &str) -> Value {
        let r = self.learn_raw(lesson, body.as_bytes().to_vec());
        assert_eq!(r.status(), 200, "{lesson}");
        r.json().unwrap()
    }

    fn counts(&self) -> (u64, u64, u64) {
        let v: Value = self
            .client
            .get(format!("{}/v1/bayes", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        (
            v["spam_messages"].as_u64().unwrap(),
            v["ham_messages"].as_u64().unwrap(),
            v["tokens"].as_u64().unwrap(),
        )
    }
}

/// The problem+json answer of a refused request, with its status.
fn problem(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let content_type = r.headers()["content-type"].clone();
    let body: Value = r.json().unwrap();
    assert_eq!(
        content_type, "application/problem+json",
        "status {status}: {body}"
    );
    (status, body)
}

/// The classifier's symbol of message `id` and its score, if it gave one; the
/// verdict's score is the sum of its symbols'.
fn bayes_hit(node: &Node, id: &str) -> Option<(String, f64)> {
    let verdict = node
        .wait_message_event(id, "scan.verdict", 1, std::time::Duration::from_secs(10))
        .pop()
        .unwrap();
    let symbols = verdict["scan"]["symbols"].as_array().unwrap();
    let total: f64 = symbols.iter().map(|s| s["score"].as_f64().unwrap()).sum();
    assert!((verdict["scan"]["score"].as_f64().unwrap() - total).abs() < 1e-9);
    symbols.iter().find(|s| s["engine"] == "bayes").map(|s| {
        (
            s["name"].as_str().unwrap().to_string(),
            s["score"].as_f64().unwrap(),
        )
    })
}

fn bayes_symbol(node: &Node, id: &str) -> Option<String> {
    bayes_hit(node, id).map(|(name, _)| name)
}

/// Sends an unseen message in the words of `words` and returns its queue id.
fn send_unseen(smtp: &mut Smtp, words: &[&str], kind: &str) -> String {
    smtp.send_message(
        &format!("x@{kind}.test"),
        &["bob@example.test"],
        &vocabulary_message(words, 101, kind),
    )
    .queued_id()
}

#[test]
fn learned_messages_change_the_scores_of_the_next_ones_and_each_lesson_is_audited() {
    let node = Node::start_with(
        "domains = [\"example.test\"]",
        &format!(
            "{}\n[scan]\nbayes_min_messages = 10\n",
            common::held_delivery()
        ),
    );
    let api = Api::new(&node);
    let mut smtp = Smtp::ehlo(node.smtp);

    // Untrained: the engine says nothing.
    let id = smtp
        .send_message(
            "x@spam.test",
            &["bob@example.test"],
            &vocabulary_message(SPAM_WORDS, 100, "spam"),
        )
        .queued_id();
    assert_eq!(bayes_symbol(&node, &id), None);

    for n in 0..10 {
        let answer = api.learn("spam", &vocabulary_message(SPAM_WORDS, n, "spam"));
        assert!(answer["tokens"].as_u64().unwrap() > 10, "{answer}");
        assert_eq!(answer["lesson"], "spam");
        api.learn("ham", &vocabulary_message(HAM_WORDS, n, "ham"));
    }
    let (spam, ham, tokens) = api.counts();
    assert_eq!((spam, ham), (10, 10));
    assert!(tokens > 40, "{tokens} distinct tokens");

    // Unseen messages of each kind now get the far ends of the scale.
    let spammy = send_unseen(&mut smtp, SPAM_WORDS, "spam");
    assert_eq!(bayes_symbol(&node, &spammy).as_deref(), Some("BAYES_999"));
    let hammy = send_unseen(&mut smtp, HAM_WORDS, "ham");
    assert_eq!(bayes_symbol(&node, &hammy).as_deref(), Some("BAYES_00"));

    // The same message again changes nothing; as the other class it moves; forgotten
    // it leaves; a stored message is learned by its id.
    let first = vocabulary_message(SPAM_WORDS, 0, "spam");
    api.learn("spam", &first);
    assert_eq!((api.counts().0, api.counts().1), (10, 10));
    api.learn("ham", &first);
    assert_eq!((api.counts().0, api.counts().1), (9, 11));
    api.learn("forget", &first);
    assert_eq!((api.counts().0, api.counts().1), (9, 10));
    let by_id: Value = api
        .client
        .post(format!("{}/v1/bayes/spam?message_id={spammy}", api.base))
        .bearer_auth(&api.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(by_id["message_id"], spammy.as_str(), "{by_id}");
    assert_eq!((api.counts().0, api.counts().1), (10, 10));

    let events = node.events("bayes.trained");
    assert_eq!(events.len(), 24);
    let last_four: Vec<(Value, Value, Value)> = events[20..]
        .iter()
        .map(|e| {
            let b = &e["bayes"];
            (
                b["class"].clone(),
                b["previous"].clone(),
                b["changed"].clone(),
            )
        })
        .collect();
    let row = |c: Value, p: Value, ch: bool| (c, p, Value::Bool(ch));
    assert_eq!(
        last_four,
        [
            row("spam".into(), "spam".into(), false),
            row("ham".into(), "spam".into(), true),
            row(Value::Null, "ham".into(), true),
            row("spam".into(), Value::Null, true),
        ]
    );
    assert_eq!(events[23]["message_id"], spammy.as_str());
    assert_eq!(events[23]["user"]["name"], "admin");
    assert_eq!(events[23]["source"]["ip"], "127.0.0.1");
    assert_eq!(events[23]["event"]["action"], "learn");
    assert_eq!(events[22]["event"]["action"], "forget");

    // The counts are the replicated state's: they survive a restart.
    let before = api.counts();
    let mut node = node;
    node.terminate(std::time::Duration::from_secs(30));
    node.restart();
    assert_eq!(Api::new(&node).counts(), before);
}

#[test]
fn a_rule_file_sets_the_classifiers_scores() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.cf");
    std::fs::write(
        &rules,
        "# A site that trusts its classifier less at the top and more at the bottom.\n\
         score BAYES_999 2.5\n\
         score BAYES_00 -4\n",
    )
    .unwrap();
    let node = Node::start_with(
        "domains = [\"example.test\"]",
        &format!(
            "{}\n[scan]\nbayes_min_messages = 10\nrules = [\"{}\"]\n",
            common::held_delivery(),
            rules.display()
        ),
    );
    let api = Api::new(&node);
    for n in 0..10 {
        api.learn("spam", &vocabulary_message(SPAM_WORDS, n, "spam"));
        api.learn("ham", &vocabulary_message(HAM_WORDS, n, "ham"));
    }
    let mut smtp = Smtp::ehlo(node.smtp);
    let spammy = send_unseen(&mut smtp, SPAM_WORDS, "spam");
    assert_eq!(bayes_hit(&node, &spammy), Some(("BAYES_999".into(), 2.5)));
    let hammy = send_unseen(&mut smtp, HAM_WORDS, "ham");
    assert_eq!(bayes_hit(&node, &hammy), Some(("BAYES_00".into(), -4.0)));
    // Both names are the classifier's: neither is logged as unknown.
    assert!(
        !node.log().contains("neither a rule nor a symbol"),
        "{}",
        common::tail(&node.log(), 20)
    );
}

/// Today, in days since the Unix epoch (UTC), as the classifier stamps its tokens.
fn day() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_secs() / 86_400
}

/// A message of `words` words of its own (`note{n}w{i}`): tokens learned once.
fn one_off_message(n: usize, words: usize) -> String {
    let words: Vec<String> = (0..words).map(|i| format!("note{n}w{i}")).collect();
    format!(
        "From: <once{n}@notes.test>\r\nTo: user@example.test\r\nSubject: note{n}\r\n\
         Message-ID: <once-{n}@notes.test>\r\n\r\n{}\r\n",
        words.join(" ")
    )
}

#[test]
fn past_its_maximum_the_classifier_forgets_its_rarest_tokens_and_keeps_judging() {
    let node = Node::start_with(
        "domains = [\"example.test\"]",
        &format!(
            "{}\n[scan]\nbayes_min_messages = 10\nbayes_max_tokens = 200\n",
            common::held_delivery()
        ),
    );
    let api = Api::new(&node);
    let today = day();
    for n in 0..10 {
        api.learn("spam", &vocabulary_message(SPAM_WORDS, n, "spam"));
        api.learn("ham", &vocabulary_message(HAM_WORDS, n, "ham"));
    }
    let (_, _, vocabulary) = api.counts();
    assert!(
        vocabulary < 200,
        "{vocabulary} tokens before the one-off notes"
    );
    // One note of 400 words seen nowhere else takes it past 200 in one lesson. The
    // leader looks every 5 s.
    api.learn("ham", &one_off_message(1, 400));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let expired = loop {
        match node.events("bayes.expired").pop() {
            Some(event) => break event,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            None => panic!(
                "no bayes.expired in 30 s: {}",
                common::tail(&node.log(), 20)
            ),
        }
    };
    let (spam, ham, tokens) = api.counts();
    assert_eq!((spam, ham), (10, 11), "every message learned stays counted");
    assert_eq!(tokens, 150, "kept to three quarters of the maximum");
    let b = &expired["bayes"];
    assert_eq!(b["max_tokens"], 200);
    assert_eq!(
        b["tokens_removed"].as_u64().unwrap() + 150,
        b["tokens_before"].as_u64().unwrap()
    );
    assert!(
        b["removed_last_learned_by"]
            .as_str()
            .unwrap()
            .starts_with("20"),
        "{b}"
    );
    assert_eq!(expired["event"]["action"], "expire");
    assert!(
        expired.get("user").is_none(),
        "the cluster's own act: {expired}"
    );

    // Tokens seen once went first (all were learned the same day): the vocabulary
    // the classifier judges by is intact. Across midnight (UTC) the vocabulary would
    // be a day older than the note, and go first.
    if day() != today {
        return;
    }
    let mut smtp = Smtp::ehlo(node.smtp);
    let spammy = send_unseen(&mut smtp, SPAM_WORDS, "spam");
    assert_eq!(bayes_symbol(&node, &spammy).as_deref(), Some("BAYES_999"));
    let hammy = send_unseen(&mut smtp, HAM_WORDS, "ham");
    assert_eq!(bayes_symbol(&node, &hammy).as_deref(), Some("BAYES_00"));
    assert_eq!(
        node.events("bayes.expired").len(),
        1,
        "one expiry was enough"
    );
}

#[test]
fn malformed_lessons_are_refused_clearly_and_change_nothing() {
    let node = Node::start("domains = [\"example.test\"]");
    let api = Api::new(&node);
    api.learn("spam", &vocabulary_message(SPAM_WORDS, 1, "spam"));
    let before = api.counts();

    let (status, p) = problem(api.learn_raw("eggs", b"Subject: x\r\n\r\nx\r\n".to_vec()));
    assert_eq!(status, 404);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("spam, ham or forget"),
        "{p}"
    );

    let (status, p) = problem(api.learn_raw("spam", Vec::new()));
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("empty"), "{p}");

    let (status, p) = problem(api.learn_raw("spam", vec![0xff; 64]));
    assert_eq!(status, 422, "{p}");

    let too_big = vec![b'a'; 32 * 1024 * 1024 + 1];
    let (status, p) = problem(api.learn_raw("spam", too_big));
    assert_eq!(status, 413, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("at most"), "{p}");

    let both = api
        .client
        .post(format!(
            "{}/v1/bayes/ham?message_id=0000000000000000000000000",
            api.base
        ))
        .bearer_auth(&api.token)
        .body("Subject: x\r\n\r\nx\r\n")
        .send()
        .unwrap();
    let (status, p) = problem(both);
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("not both"), "{p}");

    let by_id = |id: &str| {
        api.client
            .post(format!("{}/v1/bayes/ham?message_id={id}", api.base))
            .bearer_auth(&api.token)
            .send()
            .unwrap()
    };
    assert_eq!(problem(by_id("nonsense")).0, 400);
    let (status, p) = problem(by_id("00000000000000000000000000"));
    assert_eq!(status, 404);
    assert!(p["detail"].as_str().unwrap().contains("not held"), "{p}");

    let anonymous = api
        .client
        .post(format!("{}/v1/bayes/spam", api.base))
        .body(vocabulary_message(SPAM_WORDS, 2, "spam"))
        .send()
        .unwrap();
    assert_eq!(problem(anonymous).0, 401);

    assert_eq!(api.counts(), before);
    assert_eq!(node.events("bayes.trained").len(), 1);
}

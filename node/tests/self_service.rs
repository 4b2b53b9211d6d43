//! The recipients' self-service from outside: a real node, a next hop on loopback
//! that receives what it delivers (the digests among it), links read out of the
//! digests as a mail program shows them, and plain HTTP as a recipient's browser (or
//! an attacker's) sends it.
//!
//! - A digest lists what was held for each recipient, with hostile subjects as text;
//!   its release link releases that recipient's copy alone, once; a link used twice,
//!   changed (another recipient, message or action), or expired explains itself; the
//!   same run again sends nobody a second digest.
//! - The portal: a link asked for by address (sent only to one of our domains, a few
//!   times an hour), its cookie, the recipient's own mail only, their allow and block
//!   lists applied by the scanner to their next mail and to no one else's, CSRF.
//! - The console's "release and allow sender" for every recipient of a message.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bulwark_cluster_tests::dns::{DnsServer, Zone};
use bulwark_cluster_tests::sink::{Delivered, Sink, SinkConfig};
use common::{browser, csrf, get_page, post_form, Api, Node, Smtp};
use reqwest::blocking::Response;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A node relaying to `sink` quickly, holding "fishy offer" (see [`common::FISHY_RULE`]),
/// with `digest` as its `[digest]` section; its DNS says 127.0.0.0/8 sends
/// sender.test's mail (SPF) and only 192.0.2.1 bank.test's.
fn node(sink: &Sink, digest: &str) -> (Node, (tempfile::TempDir, DnsServer)) {
    let mut zone = Zone::new();
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("bank.test", "v=spf1 ip4:192.0.2.1 -all");
    let dns = DnsServer::start(zone).unwrap();
    let more = format!(
        "{}\n[digest]\n{digest}\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n",
        common::relay_to(sink.addr()),
        dns.addr()
    );
    let (node, rules) = common::with_rules("", common::FISHY_RULE, &more);
    (node, (rules, dns))
}

fn send(node: &Node, from: &str, to: &[&str], subject: &str, body: &str) -> (u16, String) {
    let mut smtp = Smtp::ehlo(node.smtp);
    let message = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\n\r\n{body}\r\n",
        to.join(", ")
    );
    let address = from
        .rsplit_once('<')
        .map_or(from, |(_, a)| a.trim_end_matches('>'));
    let reply = smtp.send_message(address, to, &message);
    let id = if reply.code == 250 {
        reply.queued_id()
    } else {
        String::new()
    };
    (reply.code, id)
}

/// Waits until the sink holds a message to `rcpt` that `pick` accepts.
fn wait_for(sink: &Sink, what: &str, pick: impl Fn(&Delivered) -> bool) -> Delivered {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = sink.received().into_iter().find(|d| pick(d)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the sink got no {what} within {WAIT:?}; it has {:#?}",
            sink.received()
                .iter()
                .map(|d| (d.mail_from.clone(), d.rcpt_to.clone(), d.header("Subject")))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The digest (or portal link) the sink received for `rcpt`, the `n`th.
fn notice_for(sink: &Sink, rcpt: &str, n: usize) -> Delivered {
    wait_for(sink, &format!("notice #{n} to {rcpt}"), |d| {
        d.mail_from.is_empty()
            && d.rcpt_to == [rcpt]
            && sink
                .received()
                .iter()
                .filter(|o| o.mail_from.is_empty() && o.rcpt_to == [rcpt])
                .count()
                >= n
    });
    sink.received()
        .into_iter()
        .filter(|d| d.mail_from.is_empty() && d.rcpt_to == [rcpt])
        .nth(n - 1)
        .unwrap()
}

fn parts(notice: &Delivered) -> (String, String) {
    common::notice_parts(&notice.data)
}

fn links(text: &str, label: &str) -> Vec<String> {
    common::notice_links(text, label)
}

fn path(link: &str) -> String {
    bulwark_cluster_tests::notice::path(link).to_string()
}

fn held_for(api: &Api, id: &str) -> Vec<String> {
    let (status, detail) = api.get(&format!("/v1/quarantine/{id}"));
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{detail}");
    detail["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn events(api: &Api, kind: &str) -> Vec<Value> {
    let (status, page) = api.get(&format!("/v1/events?type={kind}"));
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// A link with its payload changed by `change` and its signature kept.
fn forged(link: &str, change: impl Fn(&mut Vec<u8>)) -> String {
    let token = link.rsplit('/').next().unwrap();
    let (payload, mac) = token.split_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    change(&mut bytes);
    let start = &link[..link.len() - token.len()];
    format!("{start}{}.{mac}", URL_SAFE_NO_PAD.encode(bytes))
}

#[test]
fn a_digest_link_releases_one_recipient_s_copy_once_and_tells_why_it_cannot_again() {
    let sink = Sink::start(SinkConfig::default());
    let (node, _rules) = node(&sink, "");
    let api = Api::new(&node);
    let hostile = "<script>alert(1)</script> fishy offer";
    let (code, both) = send(
        &node,
        "\"<b>Eve</b>\" <eve@sender.test>",
        &["bob@example.test", "carol@example.test"],
        hostile,
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    let (_, carols) = send(
        &node,
        "eve@sender.test",
        &["carol@example.test"],
        "Another fishy offer",
        "A fishy offer again.",
    );
    assert_eq!(
        held_for(&api, &both),
        ["bob@example.test", "carol@example.test"]
    );

    // Only an admin sends the digest now.
    let operator = api
        .post_json(
            "/v1/tokens",
            &serde_json::json!({"name": "desk", "role": "operator"}),
        )
        .1;
    let desk = api.with_token(operator["token"].as_str().unwrap());
    assert_eq!(desk.post("/v1/digest/run").0, 403);
    let (status, run) = api.post("/v1/digest/run");
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (run["digests"].as_u64(), run["messages"].as_u64()),
        (Some(2), Some(3)),
        "{run}"
    );
    let bobs = notice_for(&sink, "bob@example.test", 1);
    let carol_digest = notice_for(&sink, "carol@example.test", 1);
    assert_eq!(
        bobs.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert_eq!(
        bobs.header("Subject").as_deref(),
        Some("1 message held for you")
    );
    assert_eq!(
        carol_digest.header("Subject").as_deref(),
        Some("2 messages held for you")
    );
    let (text, html) = parts(&bobs);
    assert!(text.contains(hostile), "{text}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt; fishy offer"),
        "{html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains("<b>Eve"),
        "{html}"
    );
    assert_eq!(events(&api, "quarantine.digest").len(), 2);
    // The same run again: nothing new, nobody gets a second digest.
    let (_, again) = api.post("/v1/digest/run");
    assert_eq!(again["digests"], 0, "{again}");

    let release = &links(&text, "Release")[0];
    let bob_delete = &links(&text, "Delete")[0];
    // Opening the link shows the message (as text) and does nothing yet.
    for _ in 0..2 {
        let page = get_page(&node, "", &path(release));
        assert_eq!(page.status(), 200);
        let page = page.text().unwrap();
        assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
    }
    assert_eq!(held_for(&api, &both).len(), 2);

    // A link changed in any part is refused: another recipient, another message, or
    // the delete link made into a release.
    let to_carol = forged(release, |p| {
        let at = p.len() - "bob@example.test".len();
        p[at..at + 3].copy_from_slice(b"eve");
    });
    let other_message = forged(release, |p| p[30] ^= 1);
    let delete_as_release = forged(bob_delete, |p| p[1] = b'r');
    for forged in [&to_carol, &other_message, &delete_as_release] {
        let answer = post_form(&node, "", &path(forged), &[]);
        assert_eq!(answer.status(), 403, "{forged}");
        assert!(answer.text().unwrap().contains("not one of ours"));
    }

    // Posted from another site's page: refused, and the link not spent.
    let elsewhere = browser()
        .post(format!("{}{}", node.api, path(release)))
        .header("origin", "http://evil.test")
        .send()
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    assert_eq!(held_for(&api, &both).len(), 2);

    // Used: Bob's copy alone goes to the next hop; Carol's stays held.
    let done = post_form(&node, "", &path(release), &[]);
    assert_eq!(done.status(), 200);
    assert!(done.text().unwrap().contains("on its way to your mailbox"));
    let delivered = wait_for(&sink, "Bob's released copy", |d| {
        d.header("X-Bulwark-Id").as_deref() == Some(&both)
    });
    assert_eq!(delivered.rcpt_to, ["bob@example.test"]);
    assert_eq!(held_for(&api, &both), ["carol@example.test"]);
    // Twice: refused, and says when it was used; so does opening it.
    let twice = post_form(&node, "", &path(release), &[]);
    assert_eq!(twice.status(), 410);
    assert!(twice.text().unwrap().contains("used already"));
    let opened = get_page(&node, "", &path(release));
    assert_eq!(opened.status(), 410);
    assert!(opened.text().unwrap().contains("was used already, at"));
    // Bob's delete link for the same message: his copy is gone from the quarantine.
    let gone = get_page(&node, "", &path(bob_delete));
    assert_eq!(gone.status(), 404);
    assert!(gone.text().unwrap().contains("no longer held for you"));

    // Carol deletes hers of the first message, releases the second and allows its
    // sender: her list holds the sender, the record is gone.
    let (carol_text, _) = parts(&carol_digest);
    let carol_ids: Vec<String> = links(&carol_text, "Delete");
    assert_eq!(carol_ids.len(), 2);
    // The digest lists the newest first.
    let allow = &links(&carol_text, "Release and always allow this sender")[0];
    assert_eq!(post_form(&node, "", &path(allow), &[]).status(), 200);
    assert_eq!(
        post_form(&node, "", &path(&carol_ids[1]), &[]).status(),
        200
    );
    assert!(held_for(&api, &both).is_empty() && held_for(&api, &carols).is_empty());
    wait_for(&sink, "Carol's released copy", |d| {
        d.header("X-Bulwark-Id").as_deref() == Some(&carols)
    });

    // On record, each with the recipient's address and the link as the way.
    let acted = events(&api, "recipient.action");
    let summary: Vec<(String, String, String)> = acted
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["email"]["to"]["address"][0].as_str().unwrap().to_string(),
                e["event"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // A link used again is refused without a record of its own: its use is on record.
    let expected = [
        ("quarantine.release", "bob@example.test", "success"),
        ("quarantine.release_allow", "carol@example.test", "success"),
        ("quarantine.delete", "carol@example.test", "success"),
    ];
    assert_eq!(
        summary,
        expected.map(|(a, r, o)| (a.to_string(), r.to_string(), o.to_string())),
        "{acted:#?}"
    );
    assert!(acted.iter().all(|e| e["event"]["via"] == "link"));
    assert_eq!(acted[1]["entry"], "eve@sender.test");
    let released = events(&api, "quarantine.released");
    assert_eq!(
        released[0]["email"]["to"]["address"],
        serde_json::json!(["bob@example.test"])
    );
    assert_eq!(released[0]["user"]["name"], "bob@example.test");
}

#[test]
fn an_expired_link_says_when_it_expired() {
    let sink = Sink::start(SinkConfig::default());
    // Links last 2 seconds.
    let (node, _rules) = node(&sink, "link_valid_days = 0.000023\n");
    let api = Api::new(&node);
    let (_, id) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test"],
        "fishy offer",
        "A fishy offer.",
    );
    assert_eq!(api.post("/v1/digest/run").0, 200);
    let (text, _) = parts(&notice_for(&sink, "bob@example.test", 1));
    let release = &links(&text, "Release")[0];
    std::thread::sleep(Duration::from_millis(2500));
    for answer in [
        get_page(&node, "", &path(release)),
        post_form(&node, "", &path(release), &[]),
    ] {
        assert_eq!(answer.status(), 410);
        let page = answer.text().unwrap();
        assert!(page.contains("This link expired at"), "{page}");
    }
    assert_eq!(held_for(&api, &id), ["bob@example.test"]);
}

/// The `bulwark_my` cookie a response sets, whole.
fn portal_cookie(response: &Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("bulwark_my="))
        .unwrap_or_default()
}

#[test]
fn the_portal_shows_a_recipient_their_own_mail_and_their_lists_steer_their_mail_alone() {
    let sink = Sink::start(SinkConfig::default());
    let (node, _rules) = node(&sink, "");
    let api = Api::new(&node);
    let (_, bobs) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test"],
        "fishy offer",
        "A fishy offer.",
    );
    let (_, carols) = send(
        &node,
        "eve@sender.test",
        &["carol@example.test"],
        "fishy offer 2",
        "A fishy offer.",
    );

    // Asking for a link: the same answer for an address of ours and one that is
    // not; only ours gets mail, and at most three an hour.
    for address in [
        "bob@example.test",
        "someone@elsewhere.test",
        "bob@example.test",
        "Bob@Example.test",
        "bob@example.test",
    ] {
        let answer = post_form(&node, "", "/ui/my/", &[("address", address)]);
        assert_eq!(answer.status(), 200);
        assert!(answer.text().unwrap().contains("is on its way"));
    }
    let first = notice_for(&sink, "bob@example.test", 3);
    std::thread::sleep(Duration::from_millis(500));
    let notices = sink
        .received()
        .into_iter()
        .filter(|d| d.mail_from.is_empty())
        .count();
    assert_eq!(notices, 3, "three links, all to Bob");
    assert_eq!(events(&api, "recipient.link_sent").len(), 3);
    let (text, _) = parts(&first);
    let link = text
        .lines()
        .find(|l| l.contains("/ui/my/l/"))
        .unwrap()
        .to_string();

    // The link opens the portal once, with a cookie for it alone.
    let shown = get_page(&node, "", &path(&link));
    assert_eq!(shown.status(), 200);
    assert!(shown.text().unwrap().contains("Open my quarantine"));
    let entered = post_form(&node, "", &path(&link), &[]);
    assert_eq!(entered.status(), 303);
    let cookie = portal_cookie(&entered);
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/ui/my/",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(flag), "{flag}: {cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_string();
    assert_eq!(post_form(&node, "", &path(&link), &[]).status(), 410);

    // Bob's mail, not Carol's.
    let page = get_page(&node, &cookie, "/ui/my/").text().unwrap();
    assert!(page.contains("Mail held for bob@example.test"), "{page}");
    assert!(page.contains(&bobs) && !page.contains(&carols), "{page}");
    let token = csrf(&page);
    // A cookie changed to name Carol is no pass at all.
    let value = cookie.trim_start_matches("bulwark_my=");
    let (payload, mac) = value.split_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    let at = bytes.len() - "bob@example.test".len();
    bytes[at..at + 3].copy_from_slice(b"eve");
    let forged = format!("bulwark_my={}.{mac}", URL_SAFE_NO_PAD.encode(bytes));
    let page = get_page(&node, &forged, "/ui/my/").text().unwrap();
    assert!(page.contains("Send me a link"), "{page}");
    // Bob cannot act on Carol's message by its id, nor without the form's token.
    let refused = post_form(
        &node,
        &cookie,
        "/ui/my/act",
        &[("csrf", &token), ("action", "release"), ("id", &carols)],
    );
    assert_eq!(refused.status(), 303);
    assert!(refused.headers()["location"]
        .to_str()
        .unwrap()
        .contains("refused="));
    assert_eq!(held_for(&api, &carols), ["carol@example.test"]);
    let no_csrf = post_form(
        &node,
        &cookie,
        "/ui/my/act",
        &[("action", "delete"), ("id", &bobs)],
    );
    assert_eq!(no_csrf.status(), 403);
    assert_eq!(held_for(&api, &bobs), ["bob@example.test"]);
    // An entry that is no address or domain is refused and said so.
    let bad = post_form(
        &node,
        &cookie,
        "/ui/my/act",
        &[
            ("csrf", &token),
            ("action", "allow.add"),
            ("entry", "10.0.0.1"),
        ],
    );
    let back = bad.headers()["location"].to_str().unwrap().to_string();
    let page = get_page(&node, &cookie, &back).text().unwrap();
    assert!(
        page.contains("Refused: not an address or a domain"),
        "{page}"
    );

    // Bob allows eve's domain and blocks spam.test: his next mail from them is
    // delivered and refused; Carol's from eve is still held.
    for (action, entry) in [
        ("allow.add", "sender.test"),
        ("block.add", "spam.test"),
        ("allow.add", "bank.test"),
    ] {
        let done = post_form(
            &node,
            &cookie,
            "/ui/my/act",
            &[("csrf", &token), ("action", action), ("entry", entry)],
        );
        assert_eq!(done.status(), 303);
    }
    let page = get_page(&node, &cookie, "/ui/my/").text().unwrap();
    assert!(
        page.contains("sender.test") && page.contains("spam.test"),
        "{page}"
    );
    let (code, allowed) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test"],
        "fishy offer 3",
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    let verdict = api.get(&format!("/v1/messages/{allowed}")).1;
    let verdict_text = verdict.to_string();
    assert!(
        verdict_text.contains("allow-listed by the recipient: sender.test"),
        "{verdict}"
    );
    wait_for(&sink, "the allowed message", |d| {
        d.header("X-Bulwark-Id").as_deref() == Some(&allowed)
    });
    let (code, _) = send(
        &node,
        "eve@sender.test",
        &["carol@example.test"],
        "fishy offer 4",
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    // Bob allowed bank.test too, but this mail's sender did not authenticate (SPF
    // fails from here): a forged address of an allowed sender is still judged.
    let (code, forged) = send(
        &node,
        "alerts@bank.test",
        &["bob@example.test"],
        "fishy offer 5",
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    let trace = api.get(&format!("/v1/messages/{forged}")).1.to_string();
    assert!(!trace.contains("allow-listed by the recipient"), "{trace}");
    assert_eq!(events(&api, "message.quarantined").len(), 4);
    let (code, _) = send(
        &node,
        "x@spam.test",
        &["bob@example.test"],
        "hello",
        "Hello.",
    );
    assert_eq!(code, 554, "blocked by Bob");
    let (code, _) = send(
        &node,
        "x@spam.test",
        &["carol@example.test"],
        "hello",
        "Hello.",
    );
    assert_eq!(code, 250, "not blocked by Carol");
    // Both recipients must have the sender on their lists for the lists to decide.
    let (code, both) = send(
        &node,
        "x@spam.test",
        &["bob@example.test", "carol@example.test"],
        "hello",
        "Hello.",
    );
    assert_eq!(code, 250);
    assert!(!both.is_empty());

    // Bob releases his held message with its sender allowed, then signs out.
    let done = post_form(
        &node,
        &cookie,
        "/ui/my/act",
        &[("csrf", &token), ("action", "release_allow"), ("id", &bobs)],
    );
    assert_eq!(done.status(), 303);
    assert!(held_for(&api, &bobs).is_empty());
    wait_for(&sink, "Bob's released message", |d| {
        d.header("X-Bulwark-Id").as_deref() == Some(&bobs)
    });
    let out = post_form(&node, &cookie, "/ui/my/signout", &[]);
    assert!(portal_cookie(&out).contains("Max-Age=0"));
    let acted = events(&api, "recipient.action");
    let actions: Vec<&str> = acted
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "portal.open",
            "quarantine.release",
            "allow.add",
            "allow.add",
            "block.add",
            "allow.add",
            "quarantine.release_allow"
        ],
        "{acted:#?}"
    );
    assert_eq!(
        acted[1]["event"]["reason"],
        "not in the quarantine for this recipient"
    );
    assert!(acted[1..]
        .iter()
        .all(|e| e["event"]["via"] == "portal" && e["user"]["name"] == "bob@example.test"));
}

#[test]
fn the_console_releases_to_every_recipient_and_allows_the_sender_for_each() {
    let sink = Sink::start(SinkConfig::default());
    let (node, _rules) = node(&sink, "");
    let api = Api::new(&node);
    let (_, id) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test", "carol@example.test"],
        "fishy offer",
        "A fishy offer.",
    );
    let signed_in = browser()
        .post(format!("{}/ui/signin", node.api))
        .form(&[
            ("name", "admin"),
            ("password", node.token().as_str()),
            ("next", "/ui/quarantine"),
        ])
        .send()
        .unwrap();
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = get_page(&node, &session, &format!("/ui/messages/{id}"))
        .text()
        .unwrap();
    assert!(page.contains("Release and allow sender"), "{page}");
    let done = post_form(
        &node,
        &session,
        "/ui/quarantine/act",
        &[
            ("csrf", &csrf(&page)),
            ("action", "release_allow"),
            ("id", &id),
        ],
    );
    assert_eq!(done.status(), 303);
    assert!(done.headers()["location"]
        .to_str()
        .unwrap()
        .contains("done=1"));
    // Two releases, one a recipient: one delivery or two, to both.
    let rcpts = |sink: &Sink| {
        let mut all: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|d| d.header("X-Bulwark-Id").as_deref() == Some(&id))
            .flat_map(|d| d.rcpt_to)
            .collect();
        all.sort();
        all
    };
    wait_for(&sink, "the released message to both", |_| {
        rcpts(&sink).len() >= 2
    });
    assert_eq!(rcpts(&sink), ["bob@example.test", "carol@example.test"]);
    let acted = events(&api, "recipient.action");
    assert_eq!(acted.len(), 2);
    assert!(acted.iter().all(|e| e["user"]["name"] == "admin"
        && e["event"]["via"] == "console"
        && e["entry"] == "eve@sender.test"));
    // Both now have eve on their own lists: her next message to both is delivered.
    let (code, next) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test", "carol@example.test"],
        "fishy offer 2",
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    let trace = api.get(&format!("/v1/messages/{next}")).1.to_string();
    assert!(
        trace.contains("allow-listed by the recipient: eve@sender.test"),
        "{trace}"
    );
}

#[test]
fn digests_go_out_at_their_time_to_the_recipients_chosen() {
    let sink = Sink::start(SinkConfig::default());
    // A time of day twenty seconds from now (UTC): the node starts, and the mail is
    // held once its schedule has looked while leading (a tick every 5 s), so that the
    // look's catching up on yesterday's time, with nothing held yet, sends nothing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let slot = (now + 20) % 86_400;
    let at = format!("{:02}:{:02}:{:02}", slot / 3600, slot / 60 % 60, slot % 60);
    let (node, _rules) = node(
        &sink,
        &format!("enabled = true\nat = [\"{at}\"]\nrecipients = [\"bob@example.test\"]\n"),
    );
    let api = Api::new(&node);
    std::thread::sleep(Duration::from_secs(6));
    let (code, _) = send(
        &node,
        "eve@sender.test",
        &["bob@example.test", "carol@example.test"],
        "fishy offer",
        "A fishy offer.",
    );
    assert_eq!(code, 250);
    let held_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        held_at < now + 20,
        "the node took too long to start for this test"
    );
    assert!(
        events(&api, "quarantine.digest").is_empty(),
        "not before its time"
    );
    let digest = notice_for(&sink, "bob@example.test", 1);
    assert_eq!(
        digest.header("Subject").as_deref(),
        Some("1 message held for you")
    );
    std::thread::sleep(Duration::from_secs(1));
    let sent = events(&api, "quarantine.digest");
    assert_eq!(sent.len(), 1, "Bob's alone: {sent:?}");
    assert_eq!(sent[0]["email"]["to"]["address"][0], "bob@example.test");
    assert!(sink
        .received()
        .iter()
        .all(|d| d.rcpt_to != ["carol@example.test"]));
}

#[test]
fn mail_held_for_its_attachment_is_an_administrator_s_to_release() {
    let sink = Sink::start(SinkConfig::default());
    let (node, _guards) = node(&sink, "");
    let api = Api::new(&node);
    let tool = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                --b\r\nContent-Type: text/plain\r\n\r\nhere it is\r\n--b\r\n\
                Content-Type: application/octet-stream; name=\"setup.exe\"\r\n\
                Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--";
    let mut smtp = Smtp::ehlo(node.smtp);
    let message =
        format!("From: eve@sender.test\r\nTo: bob@example.test\r\nSubject: the tool\r\n{tool}\r\n");
    let reply = smtp.send_message("eve@sender.test", &["bob@example.test"], &message);
    assert_eq!(reply.code, 250, "{reply:?}");
    let id = reply.queued_id();
    assert_eq!(held_for(&api, &id), ["bob@example.test"]);
    assert_eq!(api.post("/v1/digest/run").0, 200);
    let (text, html) = parts(&notice_for(&sink, "bob@example.test", 1));
    assert!(text.contains("Why: blocked content"), "{text}");
    assert!(
        text.contains("Only an administrator can release it."),
        "{text}"
    );
    assert!(links(&text, "Release").is_empty(), "{text}");
    assert!(!html.contains(">Release<"), "{html}");
    // Bob may delete his copy.
    let delete = &links(&text, "Delete")[0];
    assert_eq!(get_page(&node, "", &path(delete)).status(), 200);
    assert_eq!(post_form(&node, "", &path(delete), &[]).status(), 200);
    assert!(held_for(&api, &id).is_empty());
}

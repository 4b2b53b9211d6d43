//! The web console over plain HTTP, as an attacker and a careless browser would use
//! it: sign-in with a token and with a named user, the session cookie's flags, a
//! form without its CSRF token, a sign-in posted from another site, a redirect to
//! elsewhere, the lock after five failures (on record, lifted by a new password,
//! which also ends older sessions), a removed user's session, a role that may not
//! read the quarantine, hostile markup in a message shown as text, and the security
//! headers of every page. The browser test (`console_browser.rs`) drives the same
//! pages in Chromium.

mod common;

use common::{browser, csrf, get_page as get, post_form, Api, Node, Smtp};
use reqwest::blocking::Response;
use serde_json::{json, Value};

/// The `bulwark_session` cookie a response sets, with its attributes.
fn set_cookie(response: &Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("bulwark_session="))
        .unwrap_or_default()
}

/// The cookie's `name=value` part.
fn pair(cookie: &str) -> String {
    cookie.split(';').next().unwrap().to_string()
}

fn location(response: &Response) -> String {
    response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Signs in through the form: the response (a 303 with the cookie, or the form
/// again with a 401).
fn sign_in(node: &Node, name: &str, password: &str, next: &str) -> Response {
    browser()
        .post(format!("{}/ui/signin", node.api))
        .form(&[("name", name), ("password", password), ("next", next)])
        .send()
        .unwrap()
}

/// Signs in and returns the session cookie (`bulwark_session=...`).
fn session(node: &Node, name: &str, password: &str) -> String {
    let response = sign_in(node, name, password, "/ui/quarantine");
    assert_eq!(response.status(), 303, "{}", response.text().unwrap());
    pair(&set_cookie(&response))
}

/// The events of `kind` about console sign-ins and users.
fn events(api: &Api, kind: &str) -> Vec<Value> {
    let (status, page) = api.get(&format!("/v1/events?type={kind}"));
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[test]
fn sign_in_sessions_csrf_and_lockout_hold_from_outside() {
    let node = Node::start("");
    let api = Api::new(&node);
    let token = node.token();

    // Not signed in: every page sends the browser to the sign-in form, which comes
    // back to the page; the form itself says how to get in the first time.
    let response = get(&node, "", "/ui/quarantine?sender=a%40b.test");
    assert_eq!(response.status(), 303);
    assert_eq!(
        location(&response),
        "/ui/signin?next=%2Fui%2Fquarantine%3Fsender%3Da%2540b.test"
    );
    let form = get(&node, "", "/ui/signin").text().unwrap();
    assert!(form.contains("admin.token"), "{form}");

    // Every console answer carries the security headers.
    let headers = get(&node, "", "/ui/signin");
    let csp = headers.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers.headers()["x-frame-options"], "DENY");
    assert_eq!(headers.headers()["cache-control"], "no-store");

    // The admin token signs in as admin once the cluster has enrolled it; the cookie
    // is HttpOnly and SameSite=Strict (and not Secure: this API is plain HTTP); the
    // redirect never leaves the console.
    node.wait_bootstrap_admin();
    let response = sign_in(&node, "admin", &token, "https://evil.test/");
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/ui/");
    let cookie = set_cookie(&response);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(flag), "{flag}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let admin = pair(&cookie);
    let page = get(&node, &admin, "/ui/quarantine");
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    assert!(page.contains("admin · admin"), "{page}");

    // A named user, made over the API; a short password is refused with the rule.
    let (status, problem) = api.post_json(
        "/v1/users",
        &json!({"name": "helpdesk", "role": "operator", "password": "short"}),
    );
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("at least 12"));
    let (status, made) = api.post_json(
        "/v1/users",
        &json!({"name": "helpdesk", "role": "operator", "password": "a long passphrase"}),
    );
    assert_eq!(status, 201, "{made}");
    for taken in ["helpdesk", "admin"] {
        let (status, problem) = api.post_json(
            "/v1/users",
            &json!({"name": taken, "role": "auditor", "password": "a long passphrase"}),
        );
        assert_eq!(status, 409, "{taken}: {problem}");
    }
    let (status, problem) =
        api.post_json("/v1/tokens", &json!({"name": "helpdesk", "role": "siem"}));
    assert_eq!(status, 409, "a token may not take a user's name: {problem}");
    let (_, users) = api.get("/v1/users");
    assert_eq!(users["users"][0]["name"], "helpdesk", "{users}");
    assert_eq!(users["users"][0]["role"], "operator", "{users}");
    assert!(!users.to_string().contains("argon2"), "{users}");
    let helpdesk = session(&node, "helpdesk", "a long passphrase");
    let page = get(&node, &helpdesk, "/ui/quarantine").text().unwrap();
    assert!(page.contains("helpdesk · operator"), "{page}");

    // A form without the session's CSRF token, or with another session's, is
    // refused; with its own it works.
    let token_of_admin = csrf(&get(&node, &admin, "/ui/quarantine").text().unwrap());
    let forged = browser()
        .post(format!("{}/ui/signout", node.api))
        .header("cookie", &helpdesk)
        .form(&[("csrf", token_of_admin.as_str())])
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().unwrap().contains("not made by your session"));
    let none = browser()
        .post(format!("{}/ui/quarantine/act", node.api))
        .header("cookie", &helpdesk)
        .form(&[("action", "delete"), ("id", "0000000000000000000000000A")])
        .send()
        .unwrap();
    assert_eq!(none.status(), 403);

    // A sign-in posted from another site's page is refused, right password or not.
    let cross = browser()
        .post(format!("{}/ui/signin", node.api))
        .header("origin", "https://evil.test")
        .form(&[("name", "admin"), ("password", token.as_str())])
        .send()
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert!(set_cookie(&cross).is_empty());

    // Five wrong passwords in a row lock the user: the right one is refused then,
    // and all of it is on record with the name and address.
    for _ in 0..5 {
        let wrong = sign_in(&node, "helpdesk", "not the passphrase", "/ui/");
        assert_eq!(wrong.status(), 401);
        assert!(wrong
            .text()
            .unwrap()
            .contains("Wrong user name or password"));
    }
    let locked = sign_in(&node, "helpdesk", "a long passphrase", "/ui/");
    assert_eq!(locked.status(), 401);
    assert!(locked.text().unwrap().contains("locked"));
    let unknown = sign_in(&node, "nobody", "whatever it is", "/ui/");
    assert_eq!(unknown.status(), 401);
    let failed = events(&api, "console.signin_failed");
    assert_eq!(failed.len(), 7, "{failed:#?}");
    assert!(failed
        .iter()
        .all(|e| e["source"]["ip"] == "127.0.0.1" && e["event"]["outcome"] == "failure"));
    assert!(failed[4]["locked_until"].is_string(), "{:#}", failed[4]);
    assert_eq!(failed[6]["user"]["target"]["name"], "nobody");
    let (_, users) = api.get("/v1/users");
    assert!(users["users"][0]["locked_until"].is_string(), "{users}");

    // A new password lifts the lock and ends the sessions begun before it.
    let (status, changed) = api.put_json(
        "/v1/users/helpdesk/password",
        &json!({"password": "another long passphrase"}),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(get(&node, &helpdesk, "/ui/quarantine").status(), 303);
    let helpdesk = session(&node, "helpdesk", "another long passphrase");
    assert_eq!(get(&node, &helpdesk, "/ui/quarantine").status(), 200);

    // A removed user's session ends at once; the name is never given again.
    let (status, _) = api.delete("/v1/users/helpdesk");
    assert_eq!(status, 200);
    assert_eq!(get(&node, &helpdesk, "/ui/quarantine").status(), 303);
    let (status, _) = api.delete("/v1/users/helpdesk");
    assert_eq!(status, 404);
    let (status, _) = api.post_json(
        "/v1/users",
        &json!({"name": "helpdesk", "role": "operator", "password": "a long passphrase"}),
    );
    assert_eq!(status, 409);

    // The roles for programs have no console: a siem token does not sign in, and no
    // user is given such a role.
    let (status, siem) = api.post_json("/v1/tokens", &json!({"name": "feed", "role": "siem"}));
    assert_eq!(status, 201, "{siem}");
    let refused = sign_in(&node, "feed", siem["token"].as_str().unwrap(), "/ui/");
    assert_eq!(refused.status(), 401);
    assert!(refused.text().unwrap().contains("siem role has no pages"));
    let (status, problem) = api.post_json(
        "/v1/users",
        &json!({"name": "exporter", "role": "metrics", "password": "a long passphrase"}),
    );
    assert_eq!(status, 400, "{problem}");

    // An auditor reads the quarantine but may not manage users.
    let (status, _) = api.post_json(
        "/v1/users",
        &json!({"name": "audit", "role": "auditor", "password": "a long passphrase"}),
    );
    assert_eq!(status, 201);
    let audit = session(&node, "audit", "a long passphrase");
    assert_eq!(get(&node, &audit, "/ui/quarantine").status(), 200);
    let refused = get(&node, &audit, "/ui/users");
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .unwrap()
        .contains("only an admin manages users"));

    // A name that no one can have is refused before anything is looked up.
    let odd = sign_in(&node, "<script>", "whatever it is", "/ui/");
    assert_eq!(odd.status(), 400);

    // Signing out ends the session on record.
    let page = get(&node, &admin, "/ui/quarantine").text().unwrap();
    let out = browser()
        .post(format!("{}/ui/signout", node.api))
        .header("cookie", &admin)
        .form(&[("csrf", csrf(&page).as_str())])
        .send()
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(set_cookie(&out).contains("Max-Age=0"));
    assert_eq!(get(&node, &admin, "/ui/quarantine").status(), 303);
    let kinds: Vec<String> = ["console.signin", "console.signout", "user.created"]
        .iter()
        .map(|k| format!("{k}:{}", events(&api, k).len()))
        .collect();
    assert_eq!(
        kinds,
        ["console.signin:4", "console.signout:1", "user.created:2"]
    );
    let signed_in = events(&api, "console.signin");
    assert_eq!(signed_in[0]["user"]["name"], "admin", "{:#}", signed_in[0]);
}

/// A message whose every field a mail client shows carries markup or script.
const HOSTILE: &str = "From: \"<img src=x onerror=alert(1)>\" <eve@sender.test>\r\n\
    To: bob@example.test\r\nSubject: <script>alert('subject')</script> fishy offer\r\n\
    Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <hostile.1@sender.test>\r\n\
    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
    --b\r\nContent-Type: text/html\r\n\r\n\
    <p onclick=\"alert(2)\">A fishy offer<script>alert(3)</script><iframe src=\"https://evil.test/\"></iframe></p>\r\n\
    --b\r\nContent-Type: text/plain; name=\"<b>notes</b>.txt\"\r\n\
    Content-Disposition: attachment; filename=\"<svg onload=alert(4)>.txt\"\r\n\r\n\
    just text\r\n--b--\r\n";

#[test]
fn hostile_markup_in_a_message_is_text_on_every_page() {
    let rules = format!(
        "{}describe LOCAL_FISHY A <i>fishy</i> offer\n",
        common::FISHY_RULE
    );
    let (node, _rules) = common::with_rules("", &rules, &common::held_delivery());
    let mut smtp = Smtp::ehlo(node.smtp);
    let reply = smtp.send_message("eve@sender.test", &["bob@example.test"], HOSTILE);
    assert_eq!(reply.code, 250, "{reply:?}");
    let id = reply.queued_id();
    node.wait_message_event(
        &id,
        "message.quarantined",
        1,
        std::time::Duration::from_secs(15),
    );
    let admin = session(&node, "admin", &node.token());
    let list = get(&node, &admin, "/ui/quarantine").text().unwrap();
    let view = get(&node, &admin, &format!("/ui/messages/{id}"))
        .text()
        .unwrap();
    for (name, page) in [("list", &list), ("view", &view)] {
        for markup in [
            "<script", "<img", "<iframe", "<svg", "onclick=", "<i>fishy", "<b>notes",
        ] {
            assert!(!page.contains(markup), "{name} page has {markup}:\n{page}");
        }
    }
    assert!(list.contains("&lt;script&gt;alert('subject')&lt;/script&gt; fishy offer"));
    assert!(view.contains("&lt;svg onload=alert(4)&gt;.txt"), "{view}");
    assert!(view.contains("A &lt;i&gt;fishy&lt;/i&gt; offer"), "{view}");
    assert!(view.contains("LOCAL_FISHY"), "{view}");
    // Released from the list's own form, searched by sender: the list comes back with
    // the same search, saying what was done.
    let list = get(&node, &admin, "/ui/quarantine?sender=sender.test")
        .text()
        .unwrap();
    assert!(list.contains(&id), "{list}");
    let acted = browser()
        .post(format!("{}/ui/quarantine/act", node.api))
        .header("cookie", &admin)
        .form(&[
            ("csrf", csrf(&list).as_str()),
            ("action", "release"),
            ("id", id.as_str()),
            ("back", "/ui/quarantine?sender=sender.test"),
        ])
        .send()
        .unwrap();
    assert_eq!(acted.status(), 303);
    let back = location(&acted);
    assert!(
        back.starts_with("/ui/quarantine?sender=sender.test&"),
        "{back}"
    );
    let after = get(&node, &admin, &back);
    assert_eq!(after.status(), 200);
    let after = after.text().unwrap();
    assert!(after.contains("Released 1 message."), "{after}");
    assert!(
        after.contains("Nothing in the quarantine matches."),
        "{after}"
    );

    // The message view's read is on record, as the API's preview is.
    let api = Api::new(&node);
    let reads = events(&api, "access.read");
    assert!(
        reads
            .iter()
            .any(|r| r["message_id"] == id.as_str() && r["user"]["name"] == "admin"),
        "{reads:#?}"
    );
}

/// The totals the flow page gives `label`: the last day's, then the last two weeks'.
fn totals(page: &str, label: &str) -> Vec<u64> {
    let marker = format!("{label}<span class=\"total\">");
    page.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &page[at + marker.len()..];
            rest[..rest.find('<').unwrap()].parse().unwrap()
        })
        .collect()
}

#[test]
fn the_flow_queue_events_and_cluster_pages_show_what_happened_and_act() {
    let (node, _rules) = common::with_rules("", common::FISHY_RULE, &common::held_delivery());
    let mut smtp = Smtp::ehlo(node.smtp);
    let mut ids = Vec::new();
    for (from, subject) in [
        ("ann@news.test", "Weekly news"),
        ("bea@news.test", "More news"),
        ("eve@sender.test", "A fishy offer"),
    ] {
        let body = format!(
            "From: {from}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nA {subject}.\r\n"
        );
        let reply = smtp.send_message(from, &["bob@example.test", "carol@example.test"], &body);
        assert_eq!(reply.code, 250, "{reply:?}");
        ids.push(reply.queued_id());
    }
    assert_eq!(smtp.cmd("MAIL FROM:<x@spam.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<elsewhere@relay.test>").code, 554);
    node.wait_events("message.rejected", 1);
    node.wait_message_event(
        &ids[0],
        "delivery.deferred",
        1,
        std::time::Duration::from_secs(15),
    );
    node.wait_message_event(
        &ids[1],
        "delivery.deferred",
        1,
        std::time::Duration::from_secs(15),
    );
    let admin = session(&node, "admin", &node.token());

    // Mail flow: the counts of the last day and the day's top lists.
    let flow = get(&node, &admin, "/ui/flow");
    assert_eq!(flow.status(), 200);
    let flow = flow.text().unwrap();
    assert_eq!(totals(&flow, "Received"), [3, 3], "{flow}");
    assert_eq!(totals(&flow, "Quarantined"), [1, 1], "{flow}");
    assert_eq!(totals(&flow, "Refused"), [1, 1], "{flow}");
    assert_eq!(totals(&flow, "Delivered"), [0, 0], "{flow}");
    assert!(
        flow.contains("<td class=\"addr\">news.test</td><td class=\"num\">2</td>"),
        "{flow}"
    );
    assert!(
        flow.contains("<td class=\"addr\">example.test</td><td class=\"num\">3</td>"),
        "{flow}"
    );
    assert!(
        flow.contains("<td class=\"addr\">LOCAL_FISHY</td><td class=\"num\">1</td>"),
        "{flow}"
    );
    assert!(
        flow.contains("<td class=\"addr\">relay_denied</td><td class=\"num\">1</td>"),
        "{flow}"
    );
    assert!(flow.contains("<svg class=\"chart received\""), "{flow}");
    let bad_day = get(&node, &admin, "/ui/flow?day=yesterday");
    assert_eq!(bad_day.status(), 400);

    // The queue: both deferred messages with the next hop's failure, one held from
    // the page's own form, on record under the person's name.
    let queue = get(&node, &admin, "/ui/queue?sender=news.test")
        .text()
        .unwrap();
    assert!(
        queue.contains(&ids[0]) && queue.contains(&ids[1]),
        "{queue}"
    );
    assert!(!queue.contains(&ids[2]), "quarantined, not queued: {queue}");
    assert!(queue.contains("badge deferred"), "{queue}");
    let acted = post_form(
        &node,
        &admin,
        "/ui/queue/act",
        &[
            ("csrf", csrf(&queue).as_str()),
            ("action", "hold"),
            ("id", ids[0].as_str()),
            ("back", "/ui/queue?sender=news.test"),
        ],
    );
    assert_eq!(acted.status(), 303);
    let back = location(&acted);
    assert!(
        back.starts_with("/ui/queue?sender=news.test&action=hold&done=1"),
        "{back}"
    );
    let told = get(&node, &admin, &back).text().unwrap();
    assert!(told.contains("Held: 1."), "{told}");
    let held = get(&node, &admin, "/ui/queue?status=held").text().unwrap();
    assert!(held.contains(&ids[0]) && !held.contains(&ids[1]), "{held}");
    assert!(held.contains("badge held"), "{held}");
    let elsewhere = post_form(
        &node,
        &admin,
        "/ui/queue/act",
        &[
            ("csrf", csrf(&queue).as_str()),
            ("action", "retry"),
            ("id", ids[1].as_str()),
            ("back", "/ui/users"),
        ],
    );
    assert_eq!(
        location(&elsewhere).split('?').next(),
        Some("/ui/queue"),
        "back only to the queue"
    );
    let no_csrf = post_form(
        &node,
        &admin,
        "/ui/queue/act",
        &[("action", "delete"), ("id", ids[1].as_str())],
    );
    assert_eq!(no_csrf.status(), 403);
    let api = Api::new(&node);
    let actions = events(&api, "api.action");
    assert!(
        actions.iter().any(|a| a["action"] == "queue.hold"
            && a["message_id"] == ids[0].as_str()
            && a["user"]["name"] == "admin"),
        "{actions:#?}"
    );
    let (status, entry) = api.get("/v1/queue?status=held");
    assert_eq!(status, 200);
    assert_eq!(entry["items"].as_array().unwrap().len(), 1, "{entry}");

    // The event log: filtered by type, exported with the same filter as NDJSON.
    let log = get(&node, &admin, "/ui/events?type=message.received&sender=")
        .text()
        .unwrap();
    assert_eq!(
        log.matches("<span class=\"badge\">message.received</span>")
            .count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("/ui/events/export?type=message.received"),
        "{log}"
    );
    let export = get(&node, &admin, "/ui/events/export?type=message.received");
    assert_eq!(export.status(), 200);
    assert!(export.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let lines: Vec<Value> = export
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["type"] == "message.received"));
    let reads = events(&api, "access.read");
    assert!(
        reads
            .iter()
            .any(|r| r["user"]["name"] == "admin"
                && r["query"] == "events/export?type=message.received"),
        "{reads:#?}"
    );
    let bad = get(&node, &admin, "/ui/events?client_ip=not-an-address");
    assert_eq!(bad.status(), 400);

    // Cluster health: this node leads a cluster of one, with its disk.
    let cluster = get(&node, &admin, "/ui/cluster").text().unwrap();
    assert!(cluster.contains("Node 1 leads, term"), "{cluster}");
    assert!(cluster.contains("1 of 1 members answer it"), "{cluster}");
    assert!(cluster.contains(" free"), "{cluster}");

    // An auditor reads the flow and the queue but may not act on it.
    let (status, made) = api.post_json(
        "/v1/users",
        &json!({"name": "audrey", "role": "auditor", "password": "a long enough password"}),
    );
    assert_eq!(status, 201, "{made}");
    let auditor = session(&node, "audrey", "a long enough password");
    assert_eq!(get(&node, &auditor, "/ui/flow").status(), 200);
    let queue = get(&node, &auditor, "/ui/queue").text().unwrap();
    assert!(!queue.contains("Retry now"), "{queue}");
    let refused = post_form(
        &node,
        &auditor,
        "/ui/queue/act",
        &[
            ("csrf", csrf(&queue).as_str()),
            ("action", "delete"),
            ("id", ids[1].as_str()),
        ],
    );
    assert_eq!(refused.status(), 403);
}

#[test]
fn the_policy_page_shows_every_version_tries_a_change_and_applies_it() {
    let (node, _rules) = common::with_rules("", common::FISHY_RULE, &common::held_delivery());
    let api = Api::new(&node);
    let mut smtp = Smtp::ehlo(node.smtp);
    let body =
        "From: eve@sender.test\r\nTo: bob@example.test\r\nSubject: deal\r\n\r\nA fishy offer.\r\n";
    let held = smtp.send_message("eve@sender.test", &["bob@example.test"], body);
    assert_eq!(held.code, 250);
    node.wait_events("message.quarantined", 1);
    let admin = session(&node, "admin", &node.token());
    let page = get(&node, &admin, "/ui/policy").text().unwrap();
    assert!(page.contains("Version <strong>1</strong>"), "{page}");
    assert!(
        page.contains("<h2>History</h2>") && page.contains("config@node1"),
        "{page}"
    );
    let token = csrf(&page);
    let (_, current) = api.get("/v1/policy");
    let mut raised = current["policy"].clone();
    raised["quarantine_score"] = json!(20.0);
    let raised = raised.to_string();
    let policy_form =
        |cookie: &str, fields: &[(&str, &str)]| post_form(&node, cookie, "/ui/policy/try", fields);

    // What if: the held message would have been tagged; nothing is applied.
    let tried = policy_form(
        &admin,
        &[
            ("csrf", &token),
            ("policy", &raised),
            ("base", "1"),
            ("do", "try"),
        ],
    );
    assert_eq!(tried.status(), 200);
    let tried = tried.text().unwrap();
    assert!(tried.contains("<strong>1 would change</strong>"), "{tried}");
    assert!(tried.contains(&held.queued_id()), "{tried}");
    assert_eq!(api.get("/v1/policy").1["version"], 1);

    // Not JSON, or not a policy: said on the page, nothing applied.
    for (bad, said) in [
        ("{not json", "is not JSON"),
        (r#"{"tag_score": "high"}"#, "does not validate"),
    ] {
        let page = policy_form(
            &admin,
            &[
                ("csrf", &token),
                ("policy", bad),
                ("base", "1"),
                ("do", "apply"),
            ],
        );
        let page = page.text().unwrap();
        assert!(page.contains(said), "{said}: {page}");
    }

    // An operator may not raise thresholds; an auditor may try but not apply.
    for (name, role) in [("olga", "operator"), ("audrey", "auditor")] {
        let made = api.post_json(
            "/v1/users",
            &json!({"name": name, "role": role, "password": "a long enough password"}),
        );
        assert_eq!(made.0, 201, "{made:?}");
        let cookie = session(&node, name, "a long enough password");
        let token = csrf(&get(&node, &cookie, "/ui/policy").text().unwrap());
        let answer = policy_form(
            &cookie,
            &[
                ("csrf", &token),
                ("policy", &raised),
                ("base", "1"),
                ("do", "apply"),
            ],
        );
        if role == "operator" {
            assert!(answer
                .text()
                .unwrap()
                .contains("changes the allow and block lists only"));
        } else {
            assert_eq!(answer.status(), 403);
        }
    }
    assert_eq!(api.get("/v1/policy").1["version"], 1);

    // Applied by the admin, with a reason: version 2, on record under the name.
    let applied = policy_form(
        &admin,
        &[
            ("csrf", &token),
            ("policy", &raised),
            ("base", "1"),
            ("do", "apply"),
            ("reason", "fewer held newsletters"),
        ],
    );
    assert_eq!(applied.status(), 303);
    assert_eq!(applied.headers()["location"], "/ui/policy?applied=2");
    let page = get(&node, &admin, "/ui/policy?applied=2").text().unwrap();
    assert!(
        page.contains("Version 2 is the cluster's policy now."),
        "{page}"
    );
    assert!(page.contains("quarantine_score: 10.0 -&gt; 20.0"), "{page}");
    assert!(page.contains("fewer held newsletters"), "{page}");
    let changed = events(&api, "policy.changed");
    assert_eq!(
        changed.last().unwrap()["user"]["name"],
        "admin",
        "{changed:?}"
    );
    // Made from version 1 again: refused, someone changed it meanwhile.
    let stale = policy_form(
        &admin,
        &[
            ("csrf", &token),
            ("policy", &raised),
            ("base", "1"),
            ("do", "apply"),
        ],
    );
    assert!(stale
        .text()
        .unwrap()
        .contains("the policy has changed since the base version"));
    // An earlier version, read only.
    let old = get(&node, &admin, "/ui/policy?version=1").text().unwrap();
    assert!(
        old.contains("an earlier version") && !old.contains("<textarea"),
        "{old}"
    );
    assert_eq!(get(&node, &admin, "/ui/policy?version=9").status(), 404);
}

//! The console in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) as a person would use it. They open the console, are
//! sent to the sign-in form, sign in with the admin token, search the quarantine by
//! sender, open the invoice that never arrived, read why it was held, release it
//! with a reason, and watch its timeline until it is delivered; the next hop got it,
//! and the release is on record under their name with the reason. A page with a
//! hostile subject runs none of it. They make a user for the help desk, look at
//! the mail flow's charts, find the release in the event log, see the cluster's
//! health and the policy's versions, then sign out.
//!
//! A recipient opens the release link of their quarantine digest, releases their
//! message, opens their quarantine from the digest, allows a sender and releases
//! what else was held for them.
//!
//! `.ci/run` installs `chromium` and `chromium-driver`; without them the test says
//! so and passes, but fails under CI. With `BULWARK_SCREENSHOTS=DIR` it saves the
//! pages it sees there as PNG (the README's pictures).

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_cluster_tests::sink::{Sink, SinkConfig};
use common::{free_port, Api, Smtp};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free loopback port, stopped with the test.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver, or says why not: `None` outside CI when it is not installed.
fn chromedriver() -> Option<Driver> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromedriver"))
            .find(|path| path.is_file())
    });
    let Some(path) = found else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is not installed: .ci/run installs chromium and chromium-driver"
        );
        eprintln!("skipped: no chromedriver (apt-get install chromium chromium-driver)");
        return None;
    };
    let port = free_port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen in 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// A headless Chromium session at a laptop's window size.
async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Saves what the browser shows as `DIR/console-NAME.png` when `BULWARK_SCREENSHOTS=DIR`.
async fn picture(c: &Client, name: &str) {
    let Some(dir) = std::env::var_os("BULWARK_SCREENSHOTS") else {
        return;
    };
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(PathBuf::from(dir).join(format!("console-{name}.png")), png).unwrap();
}

/// Waits until the browser is on a page whose address `wanted` accepts.
async fn settled(c: &Client, wanted: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = c.current_url().await.unwrap().to_string();
        if wanted(&url) {
            return;
        }
        assert!(Instant::now() < deadline, "still on {url} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page says `words`; what it says then.
async fn says(c: &Client, words: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let said = text(c).await;
        if said.contains(words) {
            return said;
        }
        assert!(
            Instant::now() < deadline,
            "the page never said {words:?}: {said}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks what `locator` finds.
async fn click(c: &Client, locator: Locator<'_>) {
    c.find(locator).await.unwrap().click().await.unwrap();
}

/// Types `keys` into the field with id `id`.
async fn type_in(c: &Client, id: &str, keys: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// The path of the page the browser is on.
async fn path(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_string()
}

/// What the page says, as a person reads it (no markup); read again when the page
/// changed under the reading (a navigation still finishing).
async fn text(c: &Client) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let read = match c.find(Locator::Css("body")).await {
            Ok(body) => body.text().await,
            Err(e) => Err(e),
        };
        match read {
            Ok(text) => return text,
            Err(e) => assert!(Instant::now() < deadline, "the page: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(subject: &str, from: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{}@sender.test>\r\n\r\n\
         Please find the fishy offer attached.\r\n",
        subject.len()
    )
}

#[test]
fn a_person_signs_in_finds_opens_and_releases_a_quarantined_message_in_chromium() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let sink = Sink::start(SinkConfig::default());
    let rules = format!(
        "{}describe LOCAL_FISHY Offers a fishy deal\n",
        common::FISHY_RULE
    );
    let (node, _rules) = common::with_rules("", &rules, &common::relay_to(sink.addr()));
    let mut ids = Vec::new();
    for (subject, from) in [
        ("Invoice 4471 for November", "billing@supplier.test"),
        (
            "<script>document.title='owned'</script>Cheap watches",
            "deals@bulk.test",
        ),
        ("Your parcel is waiting", "noreply@parcels.test"),
    ] {
        let mut smtp = Smtp::ehlo(node.smtp);
        let reply = smtp.send_message(from, &["bob@example.test"], &message(subject, from));
        assert_eq!(reply.code, 250, "{reply:?}");
        ids.push(reply.queued_id());
    }
    for id in &ids {
        node.wait_message_event(id, "message.quarantined", 1, WAIT);
    }
    let token = node.token();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = browser(&driver).await;

        // The console sends a person who has not signed in to the form.
        c.goto(&format!("{}/ui/", node.api)).await.unwrap();
        assert_eq!(path(&c).await, "/ui/signin");
        type_in(&c, "name", "admin").await;
        type_in(&c, "password", "not the token").await;
        click(&c, Locator::Css("button[type=submit]")).await;
        says(&c, "Wrong user name or password").await;
        type_in(&c, "password", &token).await;
        click(&c, Locator::Css("button[type=submit]")).await;
        settled(&c, |url| url.ends_with("/ui/quarantine")).await;
        let listed = says(&c, "Invoice 4471 for November").await;
        // The hostile subject is text: shown as written, run never.
        assert!(listed.contains("<script>document.title='owned'</script>Cheap watches"));
        assert_eq!(c.title().await.unwrap(), "Quarantine · Bulwark");
        picture(&c, "quarantine").await;

        // Search by the sender's domain: only the invoice.
        type_in(&c, "sender", "supplier.test").await;
        click(&c, Locator::Css("form.search button[type=submit]")).await;
        settled(&c, |url| url.contains("sender=supplier.test")).await;
        let rows = c.find_all(Locator::Css("tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 1);

        // Open it: why it was held, symbol by symbol, and what it says.
        click(&c, Locator::LinkText("Invoice 4471 for November")).await;
        settled(&c, |url| url.ends_with(&format!("/ui/messages/{}", ids[0]))).await;
        let page = says(&c, "Timeline").await;
        for said in [
            "LOCAL_FISHY",
            "Offers a fishy deal",
            "quarantined",
            "billing@supplier.test",
        ] {
            assert!(page.contains(said), "{said}: {page}");
        }
        picture(&c, "message").await;

        // Release it with a reason; the page says so, and its timeline shows the
        // delivery once the next hop took it.
        type_in(&c, "reason", "a supplier's invoice").await;
        click(&c, Locator::Css("button[value=release]")).await;
        settled(&c, |url| url.contains("action=release")).await;
        says(&c, "Released 1 message.").await;
        let deadline = Instant::now() + WAIT;
        loop {
            let page = text(&c).await;
            if page.contains("delivery.succeeded") {
                assert!(page.contains("quarantine.released"), "{page}");
                assert!(
                    page.contains("Invoice 4471 for November delivered"),
                    "{page}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not delivered in {WAIT:?}: {page}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.refresh().await.unwrap();
        }
        picture(&c, "delivered").await;

        // The hostile message's own page: nothing of it ran.
        c.goto(&format!("{}/ui/messages/{}", node.api, ids[1]))
            .await
            .unwrap();
        assert_eq!(
            c.title().await.unwrap(),
            "<script>document.title='owned'</script>Cheap watches · Bulwark"
        );
        assert!(c
            .find_all(Locator::Css("main script"))
            .await
            .unwrap()
            .is_empty());

        // A user for the help desk, made in the console.
        click(&c, Locator::LinkText("Users")).await;
        settled(&c, |url| url.ends_with("/ui/users")).await;
        type_in(&c, "new-name", "helpdesk").await;
        type_in(&c, "new-password", "a long passphrase").await;
        click(&c, Locator::Css("form.search button[type=submit]")).await;
        let users = says(&c, "helpdesk was made.").await;
        assert!(users.contains("operator"), "{users}");
        picture(&c, "users").await;

        // The mail flow, the event log and the cluster, from the navigation.
        click(&c, Locator::LinkText("Mail flow")).await;
        settled(&c, |url| url.ends_with("/ui/flow")).await;
        let flow = says(&c, "Top of").await;
        for said in ["supplier.test", "LOCAL_FISHY", "Quarantined\n3"] {
            assert!(flow.contains(said), "{said}: {flow}");
        }
        let charts = c.find_all(Locator::Css("svg.chart")).await.unwrap();
        assert_eq!(charts.len(), 12, "six kinds, by hour and by day");
        picture(&c, "flow").await;
        click(&c, Locator::LinkText("Events")).await;
        settled(&c, |url| url.ends_with("/ui/events")).await;
        type_in(&c, "type", "quarantine.released").await;
        click(&c, Locator::Css("form.search button[type=submit]")).await;
        settled(&c, |url| url.contains("type=quarantine.released")).await;
        let log = says(&c, "a supplier's invoice").await;
        assert!(!log.contains("message.received"), "{log}");
        picture(&c, "events").await;
        click(&c, Locator::LinkText("Cluster")).await;
        settled(&c, |url| url.ends_with("/ui/cluster")).await;
        says(&c, "Node 1 leads").await;
        picture(&c, "cluster").await;
        click(&c, Locator::LinkText("Policy")).await;
        settled(&c, |url| url.ends_with("/ui/policy")).await;
        let policy = says(&c, "History").await;
        assert!(policy.contains("config@node1"), "{policy}");
        picture(&c, "policy").await;

        // Signing out ends it: the console asks for a sign-in again.
        click(&c, Locator::Css("form.who button")).await;
        settled(&c, |url| url.ends_with("/ui/signin")).await;
        c.goto(&format!("{}/ui/quarantine", node.api))
            .await
            .unwrap();
        assert_eq!(path(&c).await, "/ui/signin");
        c.close().await.unwrap();
    });

    // The next hop got the invoice, and only it; the release is on record.
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Invoice 4471"));
    let api = Api::new(&node);
    let (status, page) = api.get(&format!(
        "/v1/events?type=quarantine.released&message_id={}",
        ids[0]
    ));
    assert_eq!(status, 200, "{page}");
    let released: &Value = &page["events"][0];
    assert_eq!(released["user"]["name"], "admin", "{released:#}");
    assert!(
        released.to_string().contains("a supplier's invoice"),
        "{released:#}"
    );
    let (_, users) = api.get("/v1/users");
    assert_eq!(users["users"][0]["name"], "helpdesk", "{users}");
    assert_eq!(users["users"][0]["created_by"], "admin", "{users}");
}

#[test]
fn a_recipient_follows_a_digest_link_and_releases_their_own_message_in_chromium() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let sink = Sink::start(SinkConfig::default());
    let (node, _rules) = common::with_rules("", common::FISHY_RULE, &common::relay_to(sink.addr()));
    let mut ids = Vec::new();
    for (subject, from) in [
        ("Your order 1182 has shipped", "orders@shop.test"),
        ("Spring sale: 20% off", "news@shop.test"),
    ] {
        let mut smtp = Smtp::ehlo(node.smtp);
        let reply = smtp.send_message(from, &["bob@example.test"], &message(subject, from));
        assert_eq!(reply.code, 250, "{reply:?}");
        ids.push(reply.queued_id());
    }
    let api = Api::new(&node);
    let (status, run) = api.post("/v1/digest/run");
    assert_eq!((status, run["digests"].as_u64()), (200, Some(1)), "{run}");
    let digest = sink.wait_for(1, WAIT).remove(0);
    assert_eq!(digest.rcpt_to, ["bob@example.test"]);
    let (text, _) = common::notice_parts(&digest.data);
    // The digest lists the newest first: the sale, then the order.
    let release = common::notice_links(&text, "Release")[1].clone();
    let portal = bulwark_cluster_tests::notice::portal_link(&text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = browser(&driver).await;

        // The link shows the message and a button; nothing happens until it is pressed.
        c.goto(&release).await.unwrap();
        let page = says(&c, "Release this message").await;
        assert!(page.contains("Your order 1182 has shipped"), "{page}");
        assert!(page.contains("orders@shop.test"), "{page}");
        picture(&c, "my-link").await;
        click(&c, Locator::Css("button[type=submit]")).await;
        says(&c, "Released: the message is on its way to your mailbox.").await;

        // The portal from the digest: what is still held, and their own lists.
        c.goto(&portal).await.unwrap();
        click(&c, Locator::Css("button[type=submit]")).await;
        settled(&c, |url| url.ends_with("/ui/my/")).await;
        let page = says(&c, "Mail held for bob@example.test").await;
        assert!(page.contains("Spring sale: 20% off"), "{page}");
        assert!(!page.contains("Your order 1182"), "{page}");
        c.find(Locator::Css("input[name=entry]"))
            .await
            .unwrap()
            .send_keys("shop.test")
            .await
            .unwrap();
        click(
            &c,
            Locator::Css("section.card form.inline button[type=submit]:not(.link)"),
        )
        .await;
        says(&c, "Added to your allow list.").await;
        picture(&c, "my-portal").await;
        click(&c, Locator::Css("td form.inline button.primary")).await;
        let page = says(&c, "Released: the message is on its way to your mailbox.").await;
        assert!(page.contains("Nothing is held for you."), "{page}");
        c.close().await.unwrap();
    });

    // Both reached the next hop, the order by its link and the sale from the portal.
    let deadline = Instant::now() + WAIT;
    while sink
        .received()
        .iter()
        .filter(|d| {
            ids.iter()
                .any(|id| d.header("X-Bulwark-Id").as_deref() == Some(id))
        })
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "not both delivered in {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, page) = api.get("/v1/events?type=recipient.action");
    let via: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["via"].as_str().unwrap())
        .collect();
    assert_eq!(via, ["link", "link", "portal", "portal"], "{page}");
}

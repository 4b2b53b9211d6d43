//! The quarantine digest (`[digest]`) and the recipients' portal links: messages to
//! the people the quarantine holds mail for, sent through the delivery queue like
//! any other.
//!
//! At each time of day in `digest.at` (UTC) the leader writes, for every recipient
//! with mail held since their last digest, a message listing its sender, subject,
//! reason and date, each with signed links to release it, release it and allow its
//! sender, or delete it, and a link to their portal. A digest reports what was held
//! through its scheduled time, and the state takes one per recipient and time: a new
//! leader running the same time again sends nobody a second one.
//!
//! A recipient can also ask for a link to their portal at `/ui/my/` by typing their
//! address: it is sent to that address only, only for a domain of ours, a few times
//! an hour at most; the page says the same whether or not it was sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bulwark_api::DigestRun;
use bulwark_consensus::RaftNode;
use bulwark_storage::recipient::{
    releasable_by_recipient, DigestCommand, DigestMark, Link, LinkAction, DIGEST_SENT,
};
use bulwark_storage::{Command, MessageId, QuarantineRecord};
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::mail::one_line;

/// How far back a digest looks for held mail a recipient has not been told of.
const LOOKBACK_MS: i64 = 7 * 86_400_000;
/// Digests proposed at once.
const AT_ONCE: usize = 32;
/// How long a portal link a recipient asked for lasts.
const PORTAL_LINK_MS: i64 = 3_600_000;
/// Portal links one address may be sent per hour, by one node.
const LINKS_PER_HOUR: usize = 3;
/// Portal links one node sends per minute at most, whatever the addresses: a flood
/// of requests for made-up addresses of our domains does not become a flood of mail.
const LINKS_PER_MINUTE: usize = 60;
/// How long the leader waits for the link key it proposed to be applied here.
const KEY_WAIT: Duration = Duration::from_secs(10);

/// `[digest]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Send digests at the times in `at`.
    pub enabled: bool,
    /// Times of day (UTC) to send them at, in seconds after midnight, sorted.
    pub at: Vec<u32>,
    /// Who gets one: lowercase addresses and domains; empty: every recipient of the
    /// gateway's domains.
    pub recipients: Vec<String>,
    /// The console's address as the links name it (`https://host:port`, no slash at
    /// the end).
    pub console_url: String,
    /// How long a digest's links last.
    pub link_valid: Duration,
    /// The digest's `From` address.
    pub from: String,
    /// Held messages one digest lists at most (the portal shows them all).
    pub max_messages: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: false,
            at: vec![8 * 3600],
            recipients: Vec::new(),
            console_url: "http://127.0.0.1:8080".into(),
            link_valid: Duration::from_secs(3 * 86_400),
            from: String::new(),
            max_messages: 100,
        }
    }
}

/// Writes and queues the digests and portal links of one node.
pub struct Notices {
    node: Arc<RaftNode>,
    settings: Settings,
    hostname: String,
    /// The gateway's domains (IDNA ASCII, lowercase).
    domains: Vec<String>,
    /// Portal links sent lately: when, by address and all together.
    asked: Mutex<Asked>,
}

impl Notices {
    pub fn new(
        node: Arc<RaftNode>,
        settings: Settings,
        hostname: &str,
        domains: &[String],
    ) -> Self {
        Notices {
            node,
            settings,
            hostname: hostname.to_string(),
            domains: domains.to_vec(),
            asked: Mutex::default(),
        }
    }

    /// Sends every recipient with mail held since their last digest a digest of it,
    /// as the digest of time `slot_ms` (one per recipient and time).
    pub async fn send_digests(&self, slot_ms: i64) -> anyhow::Result<DigestRun> {
        let key = self.key().await?;
        let node = self.node.clone();
        let (chosen, domains) = (self.settings.recipients.clone(), self.domains.clone());
        let most = self.settings.max_messages;
        let (held, through_seq, already) = tokio::task::spawn_blocking(move || {
            held_since_last_digest(&node, slot_ms, most, &chosen, &domains)
        })
        .await??;
        let mut run = DigestRun {
            already,
            ..DigestRun::default()
        };
        // Links last from now, even for a time of day a new leader catches up on.
        let now_ms = crate::now_ms();
        let commands: Vec<(usize, Command)> = held
            .into_iter()
            .map(|(recipient, held)| {
                let (digest_id, body) = self.digest(&key, &recipient, &held, now_ms);
                let command = Command::Digest(Box::new(DigestCommand {
                    recipient,
                    through_ms: Some(slot_ms),
                    through_seq,
                    messages: held.count as u32,
                    digest_id,
                    body,
                }));
                (held.count, command)
            })
            .collect();
        let proposer = self.node.proposer();
        let mut results = stream::iter(commands)
            .map(|(n, command)| async move { (n, proposer.propose(command).await) })
            .buffer_unordered(AT_ONCE);
        while let Some((n, result)) = results.next().await {
            match result {
                Ok(done) if done.refused.is_none() => {
                    run.digests += 1;
                    run.messages += n;
                }
                Ok(done) if done.refused.as_deref() == Some(DIGEST_SENT) => run.already += 1,
                Ok(done) => tracing::warn!(refused = ?done.refused, "a digest was refused"),
                Err(e) => return Err(anyhow::anyhow!("proposing a digest: {e}")),
            }
        }
        Ok(run)
    }

    /// Sends `address` a link to their portal when it is an address of one of our
    /// domains and has not been sent too many lately; true when it was sent.
    pub async fn send_portal_link(&self, address: &str, now_ms: i64) -> anyhow::Result<bool> {
        let Some(address) = local_address(address, &self.domains) else {
            return Ok(false);
        };
        {
            let mut asked = self.asked.lock().expect("portal link limiter lock");
            if !asked.allow(&address, now_ms) {
                return Ok(false);
            }
        }
        let key = self.key().await?;
        let link = Link {
            action: LinkAction::Portal,
            recipient: address.clone(),
            message_id: MessageId(0),
            expires_ms: now_ms + PORTAL_LINK_MS,
            nonce: rand::random(),
        };
        let url = self.url(&link.sign(&key));
        let text = format!(
            "Someone (we hope you) asked for a link to the mail the gateway holds for you.\r\n\r\n\
             Open your quarantine (the link works once, for an hour):\r\n{url}\r\n\r\n\
             If it was not you, ignore this message: nothing happens unless the link is used.\r\n"
        );
        let html = format!(
            "<p>Someone (we hope you) asked for a link to the mail the gateway holds for \
             you.</p><p><a href=\"{url}\">Open your quarantine</a> (the link works once, for \
             an hour).</p><p>If it was not you, ignore this message: nothing happens unless \
             the link is used.</p>",
            url = escape(&url)
        );
        let id = MessageId::new(now_ms, rand::random());
        let body = self.message(id, &address, "Your quarantine", &text, &html, now_ms);
        let command = Command::Digest(Box::new(DigestCommand {
            recipient: address,
            through_ms: None,
            through_seq: 0,
            messages: 0,
            digest_id: id,
            body,
        }));
        let done = self
            .node
            .proposer()
            .propose(command)
            .await
            .map_err(|e| anyhow::anyhow!("proposing the portal link: {e}"))?;
        Ok(done.refused.is_none())
    }

    /// The cluster's link key: proposed (a random one) when it has none yet, the first
    /// one applied winning.
    async fn key(&self) -> anyhow::Result<[u8; 32]> {
        if let Some(key) = self.node.state().link_key()? {
            return Ok(key);
        }
        let proposed: [u8; 32] = rand::random();
        self.node
            .proposer()
            .propose(Command::LinkKey { key: proposed })
            .await
            .map_err(|e| anyhow::anyhow!("proposing the link key: {e}"))?;
        let deadline = tokio::time::Instant::now() + KEY_WAIT;
        loop {
            if let Some(key) = self.node.state().link_key()? {
                return Ok(key);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the link key was not applied here within {KEY_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, token: &str) -> String {
        format!("{}/ui/my/l/{token}", self.settings.console_url)
    }

    /// One recipient's digest of what is `held` for them: its id and the message.
    fn digest(
        &self,
        key: &[u8; 32],
        recipient: &str,
        held: &Held,
        now_ms: i64,
    ) -> (MessageId, Vec<u8>) {
        let count = held.count;
        let expires_ms = now_ms + self.settings.link_valid.as_millis() as i64;
        let link = |action, message_id| {
            let link = Link {
                action,
                recipient: recipient.to_string(),
                message_id,
                expires_ms,
                nonce: rand::random(),
            };
            self.url(&link.sign(key))
        };
        let valid = crate::delivery::dsn::date(expires_ms);
        let mut text = format!(
            "The gateway holds {} message{} for you that arrived since your last digest.\r\n\
             Release what you want; the links work once, until {valid}.\r\n\r\n",
            count,
            if count == 1 { "" } else { "s" },
        );
        let mut html = format!(
            "<p>The gateway holds {} message{} for you that arrived since your last digest. \
             Release what you want; the links work once, until {}.</p>\
             <table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\
             <tr><th>Date</th><th>From</th><th>Subject</th><th>Why held</th><th></th></tr>",
            count,
            if count == 1 { "" } else { "s" },
            escape(&valid),
        );
        for r in held.newest.iter().rev() {
            let from = r.header_from.as_deref().unwrap_or(&r.mail_from);
            let from = if from.is_empty() { "<>" } else { from };
            let subject = r.subject.as_deref().unwrap_or("(no subject)");
            let date = crate::delivery::dsn::date(r.time_ms);
            let delete = link(LinkAction::Delete, r.message_id);
            // Held for malware, a blocked attachment or DMARC: an administrator's to
            // release, so no release link.
            let (text_links, html_links) = if releasable_by_recipient(&r.reason) {
                let release = link(LinkAction::Release, r.message_id);
                let allow = link(LinkAction::ReleaseAllow, r.message_id);
                (
                    format!(
                        "Release: {release}\r\nRelease and always allow this sender: {allow}\r\n"
                    ),
                    format!(
                        "<a href=\"{}\">Release</a> · <a href=\"{}\">Release and allow sender</a> · ",
                        escape(&release),
                        escape(&allow)
                    ),
                )
            } else {
                (
                    "Only an administrator can release it.\r\n".to_string(),
                    "Only an administrator can release it. ".to_string(),
                )
            };
            let _ = write!(
                text,
                "{date}\r\nFrom: {}\r\nSubject: {}\r\nWhy: {}\r\n{text_links}Delete: {delete}\r\n\r\n",
                one_line(from, 254),
                one_line(subject, 200),
                one_line(&r.reason, 200),
            );
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{html_links}\
                 <a href=\"{}\">Delete</a></td></tr>",
                escape(&date),
                escape(&one_line(from, 254)),
                escape(&one_line(subject, 200)),
                escape(&one_line(&r.reason, 200)),
                escape(&delete),
            );
        }
        html.push_str("</table>");
        if count > held.newest.len() {
            let more = count - held.newest.len();
            let _ = write!(text, "... and {more} more, in your quarantine.\r\n\r\n");
            let _ = write!(html, "<p>... and {more} more, in your quarantine.</p>");
        }
        let portal = link(LinkAction::Portal, MessageId(0));
        let _ = write!(
            text,
            "Everything held for you, and your own allow and block lists:\r\n{portal}\r\n"
        );
        let _ = write!(
            html,
            "<p><a href=\"{}\">Everything held for you, and your own allow and block \
             lists</a></p>",
            escape(&portal)
        );
        let id = MessageId::new(now_ms, rand::random());
        let subject = format!(
            "{count} message{} held for you",
            if count == 1 { "" } else { "s" }
        );
        let body = self.message(id, recipient, &subject, &text, &html, now_ms);
        (id, body)
    }

    /// A `multipart/alternative` message of `text` and `html`, each base64 (a subject
    /// quoted in it may be in any script, and the next hop need not take 8-bit mail).
    fn message(
        &self,
        id: MessageId,
        to: &str,
        subject: &str,
        text: &str,
        html: &str,
        now_ms: i64,
    ) -> Vec<u8> {
        let hostname = &self.hostname;
        let boundary = format!("=_bulwark_{id}");
        let from = if self.settings.from.is_empty() {
            format!("postmaster@{hostname}")
        } else {
            self.settings.from.clone()
        };
        let mut out = String::with_capacity(8192 + text.len() * 3);
        for (name, value) in [
            ("From", format!("Quarantine <{from}>")),
            ("To", format!("<{to}>")),
            ("Subject", subject.to_string()),
            ("Date", crate::delivery::dsn::date(now_ms)),
            ("Message-ID", format!("<{id}@{hostname}>")),
            ("Auto-Submitted", "auto-generated".into()),
            ("X-Bulwark-Id", id.to_string()),
            ("MIME-Version", "1.0".into()),
            (
                "Content-Type",
                format!("multipart/alternative; boundary=\"{boundary}\""),
            ),
        ] {
            let _ = write!(out, "{name}: {}\r\n", one_line(&value, 900));
        }
        out.push_str("\r\n");
        let html = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head>\
             <body>{html}</body></html>",
            escape(subject)
        );
        for (kind, part) in [("plain", text), ("html", html.as_str())] {
            let _ = write!(
                out,
                "--{boundary}\r\nContent-Type: text/{kind}; charset=utf-8\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n"
            );
            let encoded = STANDARD.encode(part.as_bytes());
            for line in encoded.as_bytes().chunks(76) {
                out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
                out.push_str("\r\n");
            }
        }
        let _ = write!(out, "--{boundary}--\r\n");
        out.into_bytes()
    }
}

/// The portal links a node sent lately.
#[derive(Default)]
struct Asked {
    /// By address, in the last hour.
    by_address: HashMap<String, VecDeque<i64>>,
    /// All of them, in the last minute.
    all: VecDeque<i64>,
}

impl Asked {
    /// Counts a link to `address` at `now_ms`, unless it would be one too many.
    fn allow(&mut self, address: &str, now_ms: i64) -> bool {
        self.by_address.retain(|_, times| {
            times.retain(|t| now_ms - t < 3_600_000);
            !times.is_empty()
        });
        self.all.retain(|t| now_ms - t < 60_000);
        let times = self.by_address.entry(address.to_string()).or_default();
        if times.len() >= LINKS_PER_HOUR || self.all.len() >= LINKS_PER_MINUTE {
            return false;
        }
        times.push_back(now_ms);
        self.all.push_back(now_ms);
        true
    }
}

/// What the API asks of the node for the recipients.
impl bulwark_api::Notices for Notices {
    fn send_digests(&self, through_ms: i64) -> bulwark_api::Answer<'_, bulwark_api::DigestRun> {
        Box::pin(async move {
            self.send_digests(through_ms)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn send_portal_link(&self, address: String, now_ms: i64) -> bulwark_api::Answer<'_, bool> {
        Box::pin(async move {
            self.send_portal_link(&address, now_ms)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// What a recipient's digest lists: how many held messages are new to them, and the
/// newest of them (at most the digest's `max_messages`, oldest first).
struct Held {
    count: usize,
    newest: VecDeque<QuarantineRecord>,
}

/// The held messages of each recipient chosen (lowercase) that were quarantined after
/// their last digest was written and by now (by the log's order: `received_seq`), as
/// the digest of `slot_ms` lists them; the log's last seq they go to; and how many
/// recipients had the digest of this time (or a later one) already.
fn held_since_last_digest(
    node: &RaftNode,
    slot_ms: i64,
    most: usize,
    chosen: &[String],
    domains: &[String],
) -> anyhow::Result<(BTreeMap<String, Held>, u64, usize)> {
    let state = node.state();
    // Whatever is applied after this seq goes to the next digest.
    let (through_seq, _) = state.chain_head();
    let mut marks: HashMap<String, Option<DigestMark>> = HashMap::new();
    let mut failed = None;
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let from = MessageId::new(slot_ms.min(crate::now_ms()) - LOOKBACK_MS, 0);
    state.quarantined_from(from, &mut |record| {
        if record.received_seq > through_seq {
            return true;
        }
        for r in &record.recipients {
            let lower = r.to_ascii_lowercase();
            if !wanted(&lower, chosen, domains) {
                continue;
            }
            let mark = match marks.get(&lower) {
                Some(mark) => *mark,
                None => match state.digest_through(&lower) {
                    Ok(mark) => *marks.entry(lower.clone()).or_insert(mark),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                },
            };
            if mark.is_some_and(|m| m.slot_ms >= slot_ms || record.received_seq <= m.through_seq) {
                continue;
            }
            let entry = held.entry(lower).or_insert_with(|| Held {
                count: 0,
                newest: VecDeque::new(),
            });
            entry.count += 1;
            if entry.newest.len() == most {
                entry.newest.pop_front();
            }
            entry.newest.push_back(record.clone());
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let already = marks
        .values()
        .filter(|m| m.is_some_and(|m| m.slot_ms >= slot_ms))
        .count();
    Ok((held, through_seq, already))
}

/// Whether `recipient` (lowercase) gets digests: named, or of a named domain, or,
/// with none named, of one of the gateway's domains.
fn wanted(recipient: &str, chosen: &[String], domains: &[String]) -> bool {
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return false;
    };
    let domain = crate::mail::ascii_domain(domain).unwrap_or_default();
    if chosen.is_empty() {
        return domains.contains(&domain);
    }
    chosen
        .iter()
        .any(|c| *c == recipient || crate::mail::ascii_domain(c).is_some_and(|d| d == domain))
}

/// `address` as the quarantine keeps recipients (local part as typed, in lower case),
/// when its domain is one of ours.
fn local_address(address: &str, domains: &[String]) -> Option<String> {
    let address = address.trim().to_ascii_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    let ascii = crate::mail::ascii_domain(domain)?;
    let fine = !local.is_empty()
        && local.len() <= 64
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c));
    (fine && domains.contains(&ascii)).then_some(address)
}

/// Text for HTML, every character that could open markup escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The most recent scheduled time at or before `now_ms` (Unix milliseconds).
fn last_slot(at: &[u32], now_ms: i64) -> Option<i64> {
    const DAY: i64 = 86_400_000;
    let today = now_ms.div_euclid(DAY) * DAY;
    [today, today - DAY]
        .into_iter()
        .flat_map(|day| at.iter().map(move |s| day + i64::from(*s) * 1000))
        .filter(|t| *t <= now_ms)
        .max()
}

/// Sends the digests at their times while this node leads, until `stop`.
pub async fn schedule(notices: Arc<Notices>, stop: CancellationToken) {
    if !notices.settings.enabled {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done: Option<i64> = None;
    // The time whose failure was logged: tried again every tick, said once.
    let mut failed: Option<i64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !notices.node.is_leader() {
            // Another node runs the schedule; what it sent is in the state.
            done = None;
            continue;
        }
        let Some(slot) = last_slot(&notices.settings.at, crate::now_ms()) else {
            continue;
        };
        if done == Some(slot) {
            continue;
        }
        match notices.send_digests(slot).await {
            Ok(run) => {
                done = Some(slot);
                tracing::info!(
                    digests = run.digests,
                    messages = run.messages,
                    already = run.already,
                    "quarantine digests sent"
                );
            }
            Err(e) if failed != Some(slot) => {
                failed = Some(slot);
                tracing::warn!(
                    error = %e,
                    "quarantine digests: not sent yet (tried again every 5 s; during a \
                     rolling upgrade, until every member runs a release that has them)"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_links_are_limited_by_address_and_all_together() {
        let mut asked = Asked::default();
        let t = 1_764_300_000_000;
        for n in 0..3 {
            assert!(asked.allow("bob@example.test", t + n));
        }
        assert!(
            !asked.allow("bob@example.test", t + 3),
            "a fourth in the hour"
        );
        assert!(
            asked.allow("bob@example.test", t + 3_600_000),
            "an hour later"
        );
        let others: usize = (0..100)
            .filter(|n| asked.allow(&format!("u{n}@example.test"), t + 3_600_001))
            .count();
        assert_eq!(others, LINKS_PER_MINUTE - 1, "the minute's cap, with Bob's");
        assert!(asked.allow("late@example.test", t + 3_600_001 + 60_000));
    }

    #[test]
    fn the_last_slot_is_today_s_or_yesterday_s() {
        let day = 86_400_000;
        let at = [8 * 3600, 16 * 3600];
        let t = 20_000 * day;
        assert_eq!(
            last_slot(&at, t + 7 * 3_600_000),
            Some(t - day + 16 * 3_600_000)
        );
        assert_eq!(last_slot(&at, t + 8 * 3_600_000), Some(t + 8 * 3_600_000));
        assert_eq!(last_slot(&at, t + 23 * 3_600_000), Some(t + 16 * 3_600_000));
        assert_eq!(last_slot(&[], t), None);
    }

    #[test]
    fn digests_go_to_the_chosen_recipients_and_links_to_our_domains_only() {
        let domains = ["example.test".to_string(), "xn--bcher-kva.test".to_string()];
        assert!(wanted("bob@example.test", &[], &domains));
        assert!(wanted("bob@bücher.test", &[], &domains));
        assert!(!wanted("bob@other.test", &[], &domains));
        let chosen = ["carol@example.test".to_string(), "bücher.test".to_string()];
        assert!(wanted("carol@example.test", &chosen, &domains));
        assert!(!wanted("bob@example.test", &chosen, &domains));
        assert!(wanted("x@xn--bcher-kva.test", &chosen, &domains));
        assert_eq!(
            local_address(" Bob@Example.TEST ", &domains).as_deref(),
            Some("bob@example.test")
        );
        for bad in [
            "bob@other.test",
            "@example.test",
            "a b@example.test",
            "<b@example.test>",
        ] {
            assert_eq!(local_address(bad, &domains), None, "{bad}");
        }
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}

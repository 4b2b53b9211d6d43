//! The message as the rules read it, built once per message: the rendered body text
//! (subject first, HTML turned into the text a reader sees), the raw decoded body, the
//! links, and what the HTML hides.

use std::collections::HashSet;
use std::net::IpAddr;

use mail_parser::{Message, PartType};
use memchr::memmem;

use super::html::{self, push_collapsed, Link};
use crate::scan::engine::Contents;

/// Text read from one body part at most (SpamAssassin stops at 50 000 by default).
const PART_TEXT_LIMIT: usize = 64 * 1024;
/// Links collected from one message at most.
const MAX_URLS: usize = 1000;

/// What the rules and heuristics read from one message.
#[derive(Debug, Default)]
pub struct View {
    /// Subject, then the text of every text part and the rendered text of every HTML
    /// part shown as the body, one paragraph a line.
    pub body: String,
    /// The decoded text of every text and HTML part, markup included, lines as sent.
    pub rawbody: String,
    /// Every URL in the text and every link target, in order, without duplicates.
    pub uris: Vec<String>,
    /// The links of the HTML parts with the text shown for them.
    pub(super) links: Vec<Link>,
    /// Non-blank characters the HTML hides from the reader.
    pub invisible_chars: usize,
    /// Plain-text body parts.
    pub text_parts: usize,
    /// HTML body parts.
    pub html_parts: usize,
}

/// Reads a message once for the rules: its text and HTML bodies, then every body
/// text only the second reading found (`contents::unpack`).
pub(crate) fn view(message: &Message<'_>, contents: &Contents) -> View {
    let mut view = View::default();
    let mut uris = Uris::default();
    if let Some(subject) = message.subject() {
        push_collapsed(&mut view.body, subject);
        view.body.push('\n');
    }
    let mut seen = Vec::new();
    for &id in message.text_body.iter().chain(&message.html_body) {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let shown_as_body = message.text_body.contains(&id);
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        match &part.body {
            PartType::Text(text) if shown_as_body => {
                view.text_parts += 1;
                read_plain(text, &mut view, &mut uris);
            }
            PartType::Html(markup) => {
                view.html_parts += 1;
                read_html(markup, shown_as_body, &mut view, &mut uris);
            }
            _ => {}
        }
    }
    for file in contents
        .files
        .iter()
        .filter(|f| f.other_reading && f.inline_body)
    {
        let text = String::from_utf8_lossy(&file.data);
        if file.declared_type.as_deref() == Some("text/html") {
            read_html(&text, true, &mut view, &mut uris);
        } else {
            read_plain(&text, &mut view, &mut uris);
        }
    }
    view.uris = uris.list;
    view
}

/// Adds a plain-text body part to the view.
fn read_plain(text: &str, view: &mut View, uris: &mut Uris) {
    let text = truncate(text, PART_TEXT_LIMIT);
    push_line(&mut view.rawbody, text);
    render_plain(text, &mut view.body);
    uris.find_in_text(text);
}

/// Adds an HTML part to the view: its markup to the raw body, its links, and its
/// rendered text to the body when it is `shown_as_body`.
fn read_html(markup: &str, shown_as_body: bool, view: &mut View, uris: &mut Uris) {
    let markup = truncate(markup, PART_TEXT_LIMIT);
    push_line(&mut view.rawbody, markup);
    let rendered = html::render(markup);
    if shown_as_body {
        push_line(&mut view.body, &rendered.text);
    }
    uris.find_in_text(&rendered.text);
    for link in &rendered.links {
        uris.add_href(&link.href);
    }
    view.links.extend(rendered.links);
    view.invisible_chars += rendered.invisible_chars;
}

/// The hosts of every URL written in the message's text and HTML parts (link
/// targets included), without duplicates. Cheaper than [`view`]: the HTML is searched
/// as it is, not rendered.
pub(crate) fn link_hosts(message: &Message<'_>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    for &id in message.text_body.iter().chain(&message.html_body) {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let text = match message.parts.get(id as usize).map(|p| &p.body) {
            Some(PartType::Text(text) | PartType::Html(text)) => truncate(text, PART_TEXT_LIMIT),
            _ => continue,
        };
        for_each_url(text, |url| {
            if let Some(host) = host_of(url) {
                if hosts.len() < MAX_URLS && !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        });
    }
    hosts
}

#[derive(Default)]
struct Uris {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Uris {
    fn find_in_text(&mut self, text: &str) {
        for_each_url(text, |url| self.add(url));
    }

    fn add_href(&mut self, href: &str) {
        let lower = href.get(..8).unwrap_or(href).to_ascii_lowercase();
        if ["http://", "https://", "ftp://", "mailto:", "www."]
            .iter()
            .any(|scheme| lower.starts_with(scheme))
        {
            self.add(href);
        }
    }

    fn add(&mut self, url: &str) {
        if self.list.len() >= MAX_URLS {
            return;
        }
        let url = if url.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("www.")) {
            format!("http://{url}")
        } else {
            url.to_owned()
        };
        if self.seen.insert(url.clone()) {
            self.list.push(url);
        }
    }
}

/// Calls `found` with every URL written out in `text`: after `http://`, `https://`
/// or `ftp://`, or starting with `www.`; trailing punctuation is left out.
fn for_each_url(text: &str, mut found: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    for at in memmem::find_iter(bytes, b"://") {
        let start = bytes[..at]
            .iter()
            .rposition(|b| !b.is_ascii_alphabetic())
            .map_or(0, |i| i + 1);
        let scheme = &text[start..at];
        if ["http", "https", "ftp"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            emit_url(text, start, at + 3, &mut found);
        }
    }
    for prefix in [&b"www."[..], b"WWW."] {
        for at in memmem::find_iter(bytes, prefix) {
            let glued = at > 0
                && (bytes[at - 1].is_ascii_alphanumeric() || b"./-@:".contains(&bytes[at - 1]));
            if !glued {
                emit_url(text, at, at + 4, &mut found);
            }
        }
    }
}

/// Passes on the URL that starts at `start` and whose host starts at `host`, if
/// anything follows the prefix.
fn emit_url(text: &str, start: usize, host: usize, found: &mut impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut end = host;
    while end < bytes.len() {
        let b = bytes[end];
        if b.is_ascii() {
            if b.is_ascii_whitespace()
                || b.is_ascii_control()
                || matches!(
                    b,
                    b'<' | b'>'
                        | b'"'
                        | b'\''
                        | b'`'
                        | b'{'
                        | b'}'
                        | b'|'
                        | b'\\'
                        | b'^'
                        | b'['
                        | b']'
                )
            {
                break;
            }
            end += 1;
        } else {
            let c = text[end..].chars().next().unwrap_or(' ');
            if c.is_whitespace() {
                break;
            }
            end += c.len_utf8();
        }
    }
    let url = text[start..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '\'', '"']);
    if url.len() > host - start {
        found(url);
    }
}

/// The host a URL points to (or the domain of a `mailto:` address), lowercase,
/// without user, port or trailing dot.
pub(crate) fn host_of(url: &str) -> Option<String> {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => {
            let lower = url.get(..7).unwrap_or(url).to_ascii_lowercase();
            if lower == "mailto:" {
                let address = url[7..].split(['?', ',']).next()?;
                return address
                    .rsplit_once('@')
                    .map(|(_, domain)| domain.trim_end_matches('.').to_lowercase())
                    .filter(|domain| !domain.is_empty());
            }
            url
        }
    };
    let authority = rest.split(['/', '?', '#', '\\']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    let host = host.trim_end_matches('.').to_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Second-level labels under which country domains register names (`co.uk`).
const SECOND_LEVEL: &[&str] = &[
    "ac", "co", "com", "edu", "go", "gob", "gov", "ltd", "mil", "ne", "net", "nic", "or", "org",
    "plc",
];

/// The part of a host name its owner registered: `mail.example.com` → `example.com`,
/// `www.example.co.uk` → `example.co.uk`. Without the public suffix list, this is a
/// good guess rather than the truth.
pub(crate) fn registrable_domain(host: &str) -> &str {
    if host.parse::<IpAddr>().is_ok() {
        return host;
    }
    let mut dots = host.rmatch_indices('.').map(|(i, _)| i);
    let (Some(last), Some(second)) = (dots.next(), dots.next()) else {
        return host;
    };
    let second_level = &host[second + 1..last];
    if host.len() - last == 3 && SECOND_LEVEL.contains(&second_level) {
        return dots.next().map_or(host, |third| &host[third + 1..]);
    }
    &host[second + 1..]
}

/// Plain text as SpamAssassin renders it: the lines of a paragraph joined, one
/// paragraph a line.
fn render_plain(text: &str, body: &mut String) {
    for line in text.lines() {
        if line.trim().is_empty() {
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
        } else {
            push_collapsed(body, line);
            body.push(' ');
        }
    }
    push_line(body, "");
}

/// Appends text and ends the line.
fn push_line(out: &mut String, text: &str) {
    out.push_str(text);
    while out.ends_with(' ') {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// The longest prefix of `text` of at most `limit` bytes ending on a character.
/// The text a reader sees of an HTML document, one paragraph a line.
pub(crate) fn html_text(markup: &str) -> String {
    html::render(markup).text
}

pub(crate) fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

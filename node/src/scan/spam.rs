//! The spam rule engine: scored symbols from header, body, URI, raw and meta rules
//! written in SpamAssassin's syntax (the subset that maps onto Rust's `regex`), plus
//! checks written in Rust that patterns cannot express.
//!
//! The built-in rules (`default.cf`) load first, then the administrator's files in
//! order; a later definition, `score` or `describe` of a name wins. Every pattern is
//! compiled once; each text (rendered body, raw body, each URL, the raw message) is
//! matched by its area's patterns together, as one [`regex::bytes::RegexSet`], or
//! pattern by pattern when each starts with literals (`rules::AreaSet`).

#![forbid(unsafe_code)]

mod content;
mod heuristics;
mod html;
mod rules;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderValue, Message};

use super::engine::{Engine, Hit, Outcome, Parsed};
use crate::policy::Source;
use heuristics::{Facts, BUILTINS};
use rules::{HeaderForm, HeaderSource, HeaderTest, Loader, RuleSet, Test};

pub use rules::Scores;

pub use content::View;
pub(crate) use content::{host_of, html_text, link_hosts, registrable_domain, truncate, view};

/// The rules Bulwark ships, loaded before the administrator's files.
const DEFAULT_RULES: &str = include_str!("default.cf");
/// Bytes of the raw message that `full` rules read at most.
const FULL_LIMIT: usize = 1 << 20;

/// The spam engine: a compiled rule set.
#[derive(Debug)]
pub struct SpamEngine {
    rules: RuleSet,
    version: String,
}

impl SpamEngine {
    /// Loads the built-in rules, then `rule_files` in order. Returns the engine and a
    /// note (`file:line: why`) for every line skipped; a line that does not parse is
    /// an error naming its file and line.
    pub fn new(rule_files: &[Source]) -> Result<(Self, Vec<String>), String> {
        let mut loader = Loader::new(BUILTINS);
        let mut hash = Fnv::new();
        loader.load("default.cf", DEFAULT_RULES)?;
        hash.write(DEFAULT_RULES.as_bytes());
        for file in rule_files {
            loader.load(&file.name, &file.text)?;
            hash.write(file.text.as_bytes());
        }
        let (rules, notes) = loader.finish()?;
        let version = format!("rules:{}/{:08x}", rules.rules.len(), hash.finish() as u32);
        Ok((SpamEngine { rules, version }, notes))
    }

    /// The scores the rule files set for other engines' symbols, by name.
    pub fn engine_scores(&self) -> &HashMap<String, Scores> {
        &self.rules.engine_scores
    }

    /// Scores one message as of `now` (Unix seconds, used to date a message that
    /// has no `Received` header).
    fn evaluate(&self, parsed: &Parsed<'_>, now: i64) -> Vec<Hit> {
        let message = parsed.message;
        let view = parsed.view;
        let facts = Facts { message, view, now };
        let headers = Headers::read(message);
        let rules = &self.rules;
        let mut fired = vec![false; rules.rules.len()];
        let mut details: Vec<(usize, String)> = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            match &rule.test {
                Test::Header { source, test } => fired[i] = headers.test(source, test),
                Test::Builtin(heuristic) => {
                    if let Some(detail) = facts.check(*heuristic) {
                        fired[i] = true;
                        details.push((i, detail));
                    }
                }
                Test::Pattern { .. } | Test::Meta(_) | Test::Never => {}
            }
        }
        rules.body.mark(view.body.as_bytes(), &mut fired);
        rules.rawbody.mark(view.rawbody.as_bytes(), &mut fired);
        for uri in &view.uris {
            rules.uri.mark(uri.as_bytes(), &mut fired);
        }
        let full = &parsed.raw[..parsed.raw.len().min(FULL_LIMIT)];
        rules.full.mark(full, &mut fired);
        rules.evaluate_metas(&mut fired);

        let mut hits = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            let score = rule.score.get(parsed.bayes);
            if !fired[i] || score == 0.0 || rule.name.starts_with("__") {
                continue;
            }
            let description = match details.iter().find(|(d, _)| *d == i) {
                Some((_, detail)) => format!("{}: {detail}", rule.description),
                None => rule.description.clone(),
            };
            hits.push(Hit::new(rule.name.clone(), score, description));
        }
        hits
    }
}

impl Engine for SpamEngine {
    fn name(&self) -> &'static str {
        "spam"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn scan(&self, message: &Parsed<'_>) -> Outcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Outcome {
            hits: self.evaluate(message, now),
            findings: Vec::new(),
        }
    }
}

/// The top-level headers of a message, read once.
struct Headers<'a> {
    message: &'a Message<'a>,
    /// Lowercase name, name as sent, decoded value, raw value.
    list: Vec<(String, &'a str, String, Cow<'a, str>)>,
}

impl<'a> Headers<'a> {
    fn read(message: &'a Message<'a>) -> Self {
        let list = headers_raw(message)
            .map(|(name, raw)| (name.to_ascii_lowercase(), name, decoded(&raw), raw))
            .collect();
        Headers { message, list }
    }

    fn test(&self, source: &HeaderSource, test: &HeaderTest) -> bool {
        let (value, present) = match source {
            HeaderSource::All => {
                let mut all = String::new();
                for (_, name, decoded, _) in &self.list {
                    all.push_str(name);
                    all.push_str(": ");
                    all.push_str(decoded);
                    all.push('\n');
                }
                (all, true)
            }
            HeaderSource::Named { names, form } => self.values(names, *form),
        };
        match test {
            HeaderTest::Exists => present,
            HeaderTest::Matches {
                regex,
                negate,
                if_unset,
            } => {
                let value = match (present, if_unset) {
                    (false, Some(default)) => default.as_str(),
                    _ => value.as_str(),
                };
                regex.is_match(value.as_bytes()) != *negate
            }
        }
    }

    /// The values of the named headers, one a line, and whether any is present.
    fn values(&self, names: &[String], form: HeaderForm) -> (String, bool) {
        let mut out = String::new();
        let mut present = false;
        for (index, (lower, _, decoded, raw)) in self.list.iter().enumerate() {
            if !names.contains(lower) {
                continue;
            }
            present = true;
            if !out.is_empty() {
                out.push('\n');
            }
            match form {
                HeaderForm::Decoded => out.push_str(decoded),
                HeaderForm::Raw => out.push_str(raw.trim()),
                HeaderForm::Addr | HeaderForm::Name => {
                    let parsed = self.message.headers().get(index).map(|h| &h.value);
                    match parsed.and_then(HeaderValue::as_address) {
                        Some(address) => {
                            let parts: Vec<&str> = address
                                .iter()
                                .filter_map(|a| match form {
                                    HeaderForm::Addr => a.address(),
                                    _ => a.name(),
                                })
                                .collect();
                            out.push_str(&parts.join(", "));
                        }
                        None if form == HeaderForm::Addr => out.push_str(decoded),
                        None => {}
                    }
                }
            }
        }
        (out, present)
    }
}

/// A header field's value as text: encoded words decoded, folding undone, trimmed.
/// Every top-level header field with its raw value, in order. mail-parser's own
/// `headers_raw` leaves out a field whose value is not UTF-8, so a Subject with one
/// byte of raw Latin-1 would vanish from the rules (and read as missing) while every
/// mail client shows it; such a value is read as Latin-1 here, byte for character.
pub(crate) fn headers_raw<'a>(
    message: &'a Message<'a>,
) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + 'a {
    let raw_message: &'a [u8] = message.raw_message.as_ref();
    let top = message
        .parts
        .first()
        .map_or(&[][..], |part| &part.headers[..]);
    top.iter().map(move |header| {
        let bytes = raw_message
            .get(header.offset_start as usize..header.offset_end as usize)
            .unwrap_or_default();
        let value = match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        };
        (header.name.as_str(), value)
    })
}

pub(crate) fn decoded(raw: &str) -> String {
    match MessageStream::new(raw.as_bytes()).parse_unstructured() {
        HeaderValue::Text(text) => text.trim().to_owned(),
        _ => String::new(),
    }
}

/// FNV-1a, 64 bits: a stable fingerprint of the loaded rule text.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::Contents;
    use super::*;
    use mail_parser::MessageParser;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn engine_with(rules: &str) -> (SpamEngine, Vec<String>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.cf");
        std::fs::write(&path, rules).unwrap();
        let (engine, notes) = SpamEngine::new(&[Source::read(&path).unwrap()]).unwrap();
        (engine, notes, dir)
    }

    fn hits(engine: &SpamEngine, raw: &str) -> Vec<Hit> {
        hits_in_set(engine, raw, false)
    }

    /// The hits of `raw` with the score set of a judging classifier (`bayes`) or not.
    fn hits_in_set(engine: &SpamEngine, raw: &str, bayes: bool) -> Vec<Hit> {
        hits_of_bytes(engine, raw.as_bytes(), bayes)
    }

    fn hits_of_bytes(engine: &SpamEngine, raw: &[u8], bayes: bool) -> Vec<Hit> {
        let message = MessageParser::default().parse(raw).unwrap();
        let contents = Contents::default();
        let view = view(&message, &contents);
        let parsed = Parsed {
            rcpt_to: &[],
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            raw,
            message: &message,
            contents: &contents,
            view: &view,
            local_domains: &[],
            bayes,
        };
        engine.evaluate(&parsed, NOW)
    }

    fn fired(hits: &[Hit], symbol: &str) -> bool {
        hits.iter().any(|h| h.symbol == symbol)
    }

    fn total(hits: &[Hit]) -> f64 {
        hits.iter().map(|h| h.score).sum()
    }

    /// A well-formed message with the given extra headers, subject and text body.
    fn message(extra: &str, subject: &str, body: &str) -> String {
        format!(
            "Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\
             \tby mx.example.net; Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             From: Alice Example <alice@example.org>\r\n\
             To: Bob <bob@example.net>\r\n\
             Subject: {subject}\r\n\
             Date: Wed, 31 Dec 2025 23:59:00 +0000\r\n\
             Message-ID: <1234@mail.example.org>\r\n\
             MIME-Version: 1.0\r\n\
             {extra}\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             {body}\r\n"
        )
    }

    fn html_message(html: &str) -> String {
        format!(
            "Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\
             \tby mx.example.net; Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             From: Shop <news@shop.example>\r\n\
             To: bob@example.net\r\n\
             Subject: News\r\n\
             Date: Wed, 31 Dec 2025 23:59:00 +0000\r\n\
             Message-ID: <1@shop.example>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             \r\n\
             {html}\r\n"
        )
    }

    const HAM_BODY: &str = "Hi Bob,\r\n\r\nthe minutes of Tuesday's meeting are on the \
        wiki at https://wiki.example.org/meetings/2025-12-30 as promised.\r\n\
        Let me know if anything is missing.\r\n\r\nAlice\r\n";

    #[test]
    fn gtube_scores_above_reject() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let raw = message(
            "",
            "Test spam mail (GTUBE)",
            "This is the GTUBE, the\r\n\r\n\
             XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n\r\n\
             You should send this test mail from an account outside of your network.",
        );
        let hits = hits(&engine, &raw);
        assert!(fired(&hits, "GTUBE"), "{hits:?}");
        assert!(total(&hits) >= 1000.0);
    }

    #[test]
    fn plain_ham_scores_below_two() {
        let (engine, notes) = SpamEngine::new(&[]).unwrap();
        assert!(
            notes.is_empty(),
            "the default rules load cleanly: {notes:?}"
        );
        let hits = hits(
            &engine,
            &message("", "Minutes of Tuesday's meeting", HAM_BODY),
        );
        assert!(total(&hits) < 2.0, "{hits:?}");
    }

    #[test]
    fn version_counts_rules_and_changes_with_them() {
        let (plain, _) = SpamEngine::new(&[]).unwrap();
        let (more, _, _dir) = engine_with("body EXTRA_RULE /zzz/\n");
        assert!(plain.version().starts_with("rules:"));
        assert_ne!(plain.version(), more.version());
        assert_eq!(plain.name(), "spam");
    }

    #[test]
    fn header_rules_match_and_negate() {
        let (engine, notes, _dir) = engine_with(
            "header T_SUBJ Subject =~ /minutes/i\n\
             header T_SUBJ_NOT Subject !~ /minutes/i\n\
             header T_MISSING_NEG X-Nothing !~ /x/\n\
             header T_UNSET X-Nothing =~ /^fallback$/ [if-unset: fallback]\n\
             header T_FROM_ADDR From:addr =~ /^alice\\@example\\.org$/\n\
             header T_FROM_NAME From:name =~ /^Alice Example$/\n\
             header T_TOCC ToCc =~ /bob\\@/\n\
             header T_ALL ALL =~ /^Message-ID: <1234\\@/m\n\
             header T_ENCODED Subject =~ /café/\n",
        );
        assert!(notes.is_empty(), "{notes:?}");
        let raw = message("", "=?utf-8?q?Minutes_caf=C3=A9?=", HAM_BODY);
        let hits = hits(&engine, &raw);
        for symbol in [
            "T_SUBJ",
            "T_MISSING_NEG",
            "T_UNSET",
            "T_FROM_ADDR",
            "T_FROM_NAME",
            "T_TOCC",
            "T_ALL",
            "T_ENCODED",
        ] {
            assert!(fired(&hits, symbol), "{symbol} should fire: {hits:?}");
        }
        assert!(!fired(&hits, "T_SUBJ_NOT"));
    }

    #[test]
    fn exists_rules() {
        let (engine, _, _dir) =
            engine_with("header T_HAS_LIST exists:List-Id\nheader T_HAS_FOO exists:X-Foo\n");
        let hits = hits(
            &engine,
            &message("List-Id: <x.example.org>\r\n", "Hi", HAM_BODY),
        );
        assert!(fired(&hits, "T_HAS_LIST"));
        assert!(!fired(&hits, "T_HAS_FOO"));
    }

    #[test]
    fn body_rules_read_rendered_text_and_subject() {
        let (engine, _, _dir) = engine_with(
            "body T_SUBJ_IN_BODY /^Quarterly report$/m\n\
             body T_HTML_TEXT /cheap watches here/i\n\
             body T_NO_MARKUP /<b>/\n\
             body T_ENTITY /Tom & Jerry/\n\
             body T_JOINED /first line second line/\n",
        );
        let html = html_message(
            "<html><body><p>Cheap <b>WATCHES</b>\r\nhere</p><p>Tom &amp; Jerry</p></body></html>",
        );
        let hits = hits(&engine, &html);
        assert!(fired(&hits, "T_HTML_TEXT"), "{hits:?}");
        assert!(fired(&hits, "T_ENTITY"), "{hits:?}");
        assert!(!fired(&hits, "T_NO_MARKUP"));
        let plain = message("", "Quarterly report", "first line\r\nsecond line\r\n");
        let hits = super::tests::hits(&engine, &plain);
        assert!(fired(&hits, "T_SUBJ_IN_BODY"), "{hits:?}");
        assert!(fired(&hits, "T_JOINED"), "{hits:?}");
    }

    #[test]
    fn rawbody_uri_and_full_rules() {
        let (engine, _, _dir) = engine_with(
            "rawbody T_RAW_TAG /<b>cheap/i\n\
             uri T_URI_HOST /^https?:\\/\\/track\\.example\\.com\\//\n\
             uri T_URI_TEXT /wiki\\.example\\.org/\n\
             full T_FULL /^X-Campaign: 42/m\n",
        );
        let html = html_message(
            "<p><b>Cheap</b> <a href=\"http://track.example.com/c?id=1\">offer</a></p>",
        );
        let hits = hits(&engine, &html);
        assert!(fired(&hits, "T_RAW_TAG"), "{hits:?}");
        assert!(fired(&hits, "T_URI_HOST"), "{hits:?}");
        assert!(!fired(&hits, "T_URI_TEXT"));
        let plain = message("X-Campaign: 42\r\n", "Hi", HAM_BODY);
        let hits = super::tests::hits(&engine, &plain);
        assert!(fired(&hits, "T_URI_TEXT"), "{hits:?}");
        assert!(fired(&hits, "T_FULL"), "{hits:?}");
        assert!(!fired(&hits, "T_RAW_TAG"));
    }

    #[test]
    fn meta_rules_combine_others() {
        let (engine, _, _dir) = engine_with(
            "body __T_A /alpha/\n\
             body __T_B /beta/\n\
             body __T_C /gamma/\n\
             meta T_AND __T_A && __T_B\n\
             meta T_NOT __T_A && !__T_C\n\
             meta T_SUM (__T_A + __T_B + __T_C) >= 2\n\
             meta T_SUM_ALL __T_A + __T_B + __T_C > 2\n\
             meta T_OR __T_C || (__T_A && !__T_B)\n\
             meta T_NESTED T_AND && T_NOT\n\
             meta T_UNKNOWN __T_A && NO_SUCH_RULE\n\
             meta T_LOOP_A T_LOOP_B\n\
             meta T_LOOP_B T_LOOP_A\n",
        );
        let hits = hits(&engine, &message("", "Hi", "alpha and beta"));
        for symbol in ["T_AND", "T_NOT", "T_SUM", "T_NESTED"] {
            assert!(fired(&hits, symbol), "{symbol}: {hits:?}");
        }
        for symbol in ["T_SUM_ALL", "T_OR", "T_UNKNOWN", "T_LOOP_A", "T_LOOP_B"] {
            assert!(!fired(&hits, symbol), "{symbol}: {hits:?}");
        }
        assert!(!hits.iter().any(|h| h.symbol.starts_with("__")));
    }

    #[test]
    fn meta_notes_unknown_names_and_cycles() {
        let (_, notes, _dir) = engine_with(
            "meta T_UNKNOWN NO_SUCH_RULE\nmeta T_LOOP_A T_LOOP_B\nmeta T_LOOP_B T_LOOP_A\n",
        );
        assert!(notes
            .iter()
            .any(|n| n.contains("local.cf:1") && n.contains("NO_SUCH_RULE")));
        assert!(notes.iter().any(|n| n.contains("depends on itself")));
    }

    #[test]
    fn score_and_describe_override_and_default() {
        let (engine, _, _dir) = engine_with(
            "body T_DEFAULT /alpha/\n\
             body T_SCORED /alpha/\n\
             score T_SCORED 2.5\n\
             score T_SCORED 3.5 3.5 1 1\n\
             describe T_SCORED Mentions the first letter\n\
             body T_ZERO /alpha/\n\
             score T_ZERO 0\n\
             score GTUBE 50\n\
             describe GTUBE Test string\n",
        );
        let hits = hits(&engine, &message("", "Hi", "alpha"));
        let find = |s: &str| hits.iter().find(|h| h.symbol == s).cloned();
        assert_eq!(find("T_DEFAULT").unwrap().score, 1.0);
        let scored = find("T_SCORED").unwrap();
        assert_eq!(scored.score, 3.5);
        assert_eq!(scored.description, "Mentions the first letter");
        assert!(find("T_ZERO").is_none());
        let gtube = super::tests::hits(
            &engine,
            &message(
                "",
                "Hi",
                "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X",
            ),
        );
        let gtube = gtube.iter().find(|h| h.symbol == "GTUBE").unwrap();
        assert_eq!(
            (gtube.score, gtube.description.as_str()),
            (50.0, "Test string")
        );
    }

    #[test]
    fn scores_for_other_engines_symbols_are_kept_and_typos_noted() {
        let (engine, notes, _dir) =
            engine_with("score BAYES_99 3.5\nscore SPF_FAIL 0 6 0 4\nscore BAYES99 2\nscore LIST_UNSUBSCRIBE_ONE_CLICK_SIGNED -1\nscore MSGID_ADDED_BY_RELAY 3\n");
        let mut kept: Vec<_> = engine
            .engine_scores()
            .iter()
            .map(|(name, s)| (name.as_str(), s.get(false), s.get(true)))
            .collect();
        kept.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            kept,
            [
                ("BAYES_99", 3.5, 3.5),
                ("LIST_UNSUBSCRIBE_ONE_CLICK_SIGNED", -1.0, -1.0),
                ("MSGID_ADDED_BY_RELAY", 3.0, 3.0),
                ("SPF_FAIL", 6.0, 4.0)
            ]
        );
        // The built-in rules' own score for it, where no rule file changes it.
        let (engine, _, _dir) = engine_with("");
        assert_eq!(
            engine
                .engine_scores()
                .get("MSGID_ADDED_BY_RELAY")
                .map(|s| (s.get(false), s.get(true))),
            Some((2.0, 2.0))
        );
        assert_eq!(
            notes,
            ["local.cf:3: score for BAYES99, neither a rule nor a symbol of another engine; ignored"]
        );
    }

    #[test]
    fn four_scores_are_spamassassins_sets_and_the_classifier_chooses() {
        let (engine, notes, _dir) = engine_with(
            "body T_SETS /alpha/\nscore T_SETS 9 2 9 4\n\
             body T_ONE /alpha/\nscore T_ONE 1.5\n\
             body T_ONLY_ALONE /alpha/\nscore T_ONLY_ALONE 0 3 0 0\n",
        );
        assert!(notes.is_empty(), "{notes:?}");
        let scored = |bayes: bool| {
            let mut hits: Vec<(String, f64)> =
                hits_in_set(&engine, &message("", "Hi", "alpha"), bayes)
                    .into_iter()
                    .filter(|h| h.symbol.starts_with("T_"))
                    .map(|h| (h.symbol, h.score))
                    .collect();
            hits.sort_by(|a, b| a.0.cmp(&b.0));
            hits
        };
        let row = |name: &str, score: f64| (name.to_string(), score);
        assert_eq!(
            scored(false),
            [
                row("T_ONE", 1.5),
                row("T_ONLY_ALONE", 3.0),
                row("T_SETS", 2.0)
            ]
        );
        assert_eq!(scored(true), [row("T_ONE", 1.5), row("T_SETS", 4.0)]);
    }

    #[test]
    fn a_header_with_raw_latin1_bytes_is_read_not_dropped() {
        let (engine, _, _dir) = engine_with(
            "header T_SUBJ_GROW Subject =~ /^Grow Up And Be A Man!. abm$/\n\
             header T_FROM_NAME From:raw =~ /^Jos\u{e9} </\n",
        );
        // As a bulk mailer of 2002 wrote it: a no-break space (0xA0) and an é (0xE9)
        // in raw Latin-1, with no encoded word and no charset. mail-parser's raw
        // headers leave such fields out; every mail client shows them.
        let raw = b"Received: from a (a [192.0.2.1]) by b; Thu, 01 Jan 2026 00:00:00 +0000\r\n\
            From: Jos\xe9 <jose@example.org>\r\n\
            To: bob@example.net\r\n\
            Subject: Grow Up And Be A Man!\xa0 abm\r\n\
            Date: Wed, 31 Dec 2025 23:59:00 +0000\r\n\
            Message-ID: <1234@example.org>\r\n\
            \r\n\
            Hello there.\r\n";
        let hits = hits_of_bytes(&engine, raw, false);
        for rule in ["T_SUBJ_GROW", "T_FROM_NAME"] {
            assert!(fired(&hits, rule), "{rule}: {hits:?}");
        }
        for rule in ["MISSING_SUBJECT", "MISSING_FROM"] {
            assert!(!fired(&hits, rule), "{rule}: {hits:?}");
        }
    }

    #[test]
    fn redefinition_replaces_the_test() {
        let (engine, _, _dir) = engine_with("body GTUBE /alpha/\n");
        let hits = hits(&engine, &message("", "Hi", "alpha"));
        assert!(fired(&hits, "GTUBE"));
    }

    #[test]
    fn flags_apply() {
        let (engine, notes, _dir) = engine_with(
            "body T_CASE /ALPHA/i\n\
             body T_NOCASE /ALPHA/\n\
             body T_X /al pha/x\n\
             rawbody T_S /one.two/s\n\
             rawbody T_NOS /one.two/\n\
             body T_M m{^alpha}\n\
             header T_HDR_M Subject =~ m!^hi$!i\n",
        );
        assert!(notes.is_empty(), "{notes:?}");
        let hits = hits(&engine, &message("", "HI", "alpha\r\n\r\none\ntwo"));
        for symbol in ["T_CASE", "T_X", "T_S", "T_M", "T_HDR_M"] {
            assert!(fired(&hits, symbol), "{symbol}: {hits:?}");
        }
        assert!(!fired(&hits, "T_NOCASE"));
        assert!(!fired(&hits, "T_NOS"));
    }

    #[test]
    fn unsupported_patterns_and_settings_are_skipped_with_notes() {
        let (engine, notes, _dir) = engine_with(
            "body T_BACKREF /(a)\\1/\n\
             body T_LOOKAHEAD /foo(?=bar)/\n\
             body T_FLAG /foo/g\n\
             header T_EVAL eval:check_for_something()\n\
             tflags T_OK nice\n\
             lang fr describe T_OK Bonjour\n\
             ifplugin Mail::SpamAssassin::Plugin::Example\n\
             endif\n\
             required_score 5\n\
             body T_OK /alpha/ # a comment\n",
        );
        for (line, why) in [
            (1, "does not compile"),
            (2, "does not compile"),
            (3, "/g flag"),
            (4, "eval"),
            (5, "tflags"),
            (6, "lang"),
            (7, "ifplugin"),
            (8, "endif"),
            (9, "required_score"),
        ] {
            let at = format!("local.cf:{line}:");
            assert!(
                notes.iter().any(|n| n.contains(&at) && n.contains(why)),
                "{at} {why}: {notes:?}"
            );
        }
        assert_eq!(notes.len(), 9, "{notes:?}");
        let hits = hits(&engine, &message("", "Hi", "alpha"));
        assert!(fired(&hits, "T_OK"));
        assert!(!fired(&hits, "T_BACKREF"));
    }

    #[test]
    fn malformed_lines_are_errors_with_file_and_line() {
        for (rules, line) in [
            ("body T_OK /a/\nbody T_BAD /unclosed\n", 2),
            ("score T_X many\n", 1),
            ("body T_X /a/\nscore T_X 1 2\n", 2),
            ("score T_X\n", 1),
            ("\n\nheader T_X Subject ~ /a/\n", 3),
            ("meta T_X (A && B\n", 1),
            ("meta T_X A &&\n", 1),
            ("body 9BAD /a/\n", 1),
            ("body T_X\n", 1),
            ("/orphan/\n", 1),
            ("uri T_X /a/ trailing\n", 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bad.cf");
            std::fs::write(&path, rules).unwrap();
            let error = SpamEngine::new(&[Source::read(&path).unwrap()]).unwrap_err();
            assert!(
                error.contains(&format!("bad.cf:{line}:")),
                "{rules:?} gave {error}"
            );
        }
        let missing = Source::read(&PathBuf::from("/nonexistent/rules.cf")).unwrap_err();
        assert!(missing.contains("/nonexistent/rules.cf"));
    }

    #[test]
    fn missing_headers() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let raw = "To: bob@example.net\r\nSubject: hello\r\n\r\nHello there.\r\n";
        let hits = hits(&engine, raw);
        for symbol in ["MISSING_DATE", "MISSING_MESSAGE_ID", "MISSING_FROM"] {
            assert!(fired(&hits, symbol), "{symbol}: {hits:?}");
        }
        let hits = super::tests::hits(&engine, &message("", "Hi", HAM_BODY));
        assert!(
            !hits.iter().any(|h| h.symbol.starts_with("MISSING_")),
            "{hits:?}"
        );
    }

    #[test]
    fn dates_far_from_receipt() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let dated = |date: &str| {
            message("", "Hi", HAM_BODY).replace("Wed, 31 Dec 2025 23:59:00 +0000", date)
        };
        let future = hits(&engine, &dated("Sat, 10 Jan 2026 10:00:00 +0000"));
        assert!(fired(&future, "DATE_IN_FUTURE"), "{future:?}");
        let past = hits(&engine, &dated("Mon, 01 Dec 2025 10:00:00 +0000"));
        assert!(fired(&past, "DATE_IN_PAST"), "{past:?}");
        let invalid = hits(&engine, &dated("yesterday around noon"));
        assert!(fired(&invalid, "DATE_INVALID"), "{invalid:?}");
        let near = hits(&engine, &dated("Thu, 01 Jan 2026 10:00:00 +0000"));
        assert!(
            !near.iter().any(|h| h.symbol.starts_with("DATE_")),
            "{near:?}"
        );
    }

    #[test]
    fn from_without_valid_address() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let raw = message("", "Hi", HAM_BODY).replace(
            "From: Alice Example <alice@example.org>",
            "From: Your Bank Security Team",
        );
        assert!(fired(&hits(&engine, &raw), "FROM_NO_ADDRESS"));
    }

    #[test]
    fn html_only_and_invisible_text() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let hidden = "buy cheap meds now ".repeat(12);
        let html = html_message(&format!(
            "<html><body bgcolor=\"#ffffff\"><p>Hello</p>\
             <div style=\"display:none\">{hidden}</div>\
             <span style=\"font-size:0px\">{hidden}</span>\
             <font color=\"white\">{hidden}</font></body></html>"
        ));
        let hits = hits(&engine, &html);
        assert!(fired(&hits, "HTML_ONLY"), "{hits:?}");
        let invisible = hits
            .iter()
            .find(|h| h.symbol == "HTML_INVISIBLE_TEXT")
            .unwrap();
        // Three copies of 12 × 15 visible characters.
        assert!(
            invisible.description.contains("540 hidden characters"),
            "{invisible:?}"
        );
        let shown = html_message("<p>Hello, this is our news.</p>");
        assert!(!fired(
            &super::tests::hits(&engine, &shown),
            "HTML_INVISIBLE_TEXT"
        ));
    }

    #[test]
    fn link_text_naming_another_domain() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let html = html_message(
            "<p>Log in at <a href=\"http://evil.example/login\">www.bank.example</a></p>",
        );
        let hits = hits(&engine, &html);
        let hit = hits
            .iter()
            .find(|h| h.symbol == "HTML_LINK_TEXT_MISMATCH")
            .unwrap();
        assert!(hit.description.contains("www.bank.example"), "{hit:?}");
        assert!(hit.description.contains("evil.example"), "{hit:?}");
        let same = html_message(
            "<p><a href=\"https://www.shop.example/a\">shop.example</a> \
             <a href=\"https://x.example/\">click here</a></p>",
        );
        assert!(!fired(
            &super::tests::hits(&engine, &same),
            "HTML_LINK_TEXT_MISMATCH"
        ));
    }

    #[test]
    fn shouting_subject_exclamations_and_shorteners() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let raw = message(
            "",
            "LIMITED OFFER FOR YOU TODAY!!!",
            "Amazing!!!!! See https://bit.ly/3xYzAbC now",
        );
        let hits = hits(&engine, &raw);
        for symbol in [
            "SUBJ_ALL_CAPS",
            "SUBJ_EXCLAIM_MANY",
            "BODY_EXCLAIM_RUN",
            "URI_SHORTENER",
        ] {
            assert!(fired(&hits, symbol), "{symbol}: {hits:?}");
        }
    }

    #[test]
    fn text_in_east_asian_charsets_is_decoded_and_not_shouting() {
        let (engine, _, _dir) = engine_with("body T_WORLD /你好，世界/\n");
        // Subject "会议通知", body "你好，世界。会议通知", in GB2312, base64: the
        // rule's words are in the body only.
        let raw = "From: Alice Example <alice@example.org>\r\n\
             To: Bob <bob@example.net>\r\n\
             Subject: =?gb2312?B?u+HS6c2o1qo=?=\r\n\
             Date: Wed, 31 Dec 2025 23:59:00 +0000\r\n\
             Message-ID: <1234@mail.example.org>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=gb2312\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             xOO6w6OsysC956Gju+HS6c2o1qo=\r\n";
        assert!(fired(&hits(&engine, raw), "T_WORLD"));
        // Ten letters of a script without cases, none lower-case: not capitals.
        let chinese = message("", "重要通知您的账户已经更新", "ok");
        assert!(!fired(&hits(&engine, &chinese), "SUBJ_ALL_CAPS"));
        let shouting = message("", "IMPORTANT NOTICE", "ok");
        assert!(fired(&hits(&engine, &shouting), "SUBJ_ALL_CAPS"));
    }

    #[test]
    fn phishing_style_links() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let raw = message(
            "",
            "Account notice",
            "Your account has been suspended. Verify your account at \
             http://203.0.113.9/secure/login.php or http://www.bank.example@evil.example/",
        );
        let hits = hits(&engine, &raw);
        for symbol in [
            "URI_IP_HOST",
            "URI_USERINFO",
            "ACCOUNT_SUSPENDED",
            "VERIFY_ACCOUNT",
        ] {
            assert!(fired(&hits, symbol), "{symbol}: {hits:?}");
        }
        assert!(total(&hits) >= 5.0, "{hits:?}");
    }

    /// A message written by Outlook on the date of [`message`]'s Date header, or
    /// made up by spamware: its Message-ID and MIME boundary carry Outlook's clock.
    fn outlook_message(id: &str, boundary: &str, mailer: &str) -> String {
        message("", "Hi", "")
            .replace("<1234@mail.example.org>", &format!("<{id}@pc.example.org>"))
            .replace(
                "Content-Type: text/plain; charset=utf-8\r\n\r\n",
                &format!(
                    "X-Mailer: {mailer}\r\n\
                     Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
                     --{boundary}\r\nContent-Type: text/plain\r\n\r\n{HAM_BODY}\r\n--{boundary}--"
                ),
            )
    }

    #[test]
    fn outlook_clocks_that_disagree_with_the_date_are_made_up() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let outlook = "Microsoft Outlook Express 6.00.2800.1106";
        // 01DC7AB1 is the high half of the FILETIME of 2025-12-31 23:59 UTC.
        let genuine = outlook_message(
            "000701dc7ab1$6ebdba00$0a01a8c0",
            "----=_NextPart_000_0007_01DC7AB1.6EBDBA00",
            outlook,
        );
        let genuine = hits(&engine, &genuine);
        for rule in [
            "MSGID_OUTLOOK_INVALID",
            "MIME_BOUND_OUTLOOK_INVALID",
            "MSGID_OUTLOOK_OTHER_MUA",
        ] {
            assert!(!fired(&genuine, rule), "{rule}: {genuine:?}");
        }
        let made_up = outlook_message(
            "026b34a08d1d$4638c0a2$7cc54de3",
            "----=_NextPart_000_00B4_26B74D8A.B2187A61",
            outlook,
        );
        let made_up = hits(&engine, &made_up);
        let id = made_up
            .iter()
            .find(|h| h.symbol == "MSGID_OUTLOOK_INVALID")
            .expect("MSGID_OUTLOOK_INVALID");
        assert!(id.description.contains("days from its Date"), "{id:?}");
        assert!(fired(&made_up, "MIME_BOUND_OUTLOOK_INVALID"), "{made_up:?}");
        // A clock six hours off is a wrong time zone; sixty days off is made up.
        let boundary = "----=_NextPart_000_0007_01DC7AB1.6EBDBA00";
        let skewed = hits(
            &engine,
            &outlook_message("000701dc7ae3$6ebdba00$0a01a8c0", boundary, outlook),
        );
        assert!(!fired(&skewed, "MSGID_OUTLOOK_INVALID"), "{skewed:?}");
        let stale = hits(
            &engine,
            &outlook_message("000701dc4b8b$6ebdba00$0a01a8c0", boundary, outlook),
        );
        assert!(fired(&stale, "MSGID_OUTLOOK_INVALID"), "{stale:?}");
        let id = "000701dc7ab1$6ebdba00$0a01a8c0";
        let skewed = hits(
            &engine,
            &outlook_message(id, "----=_NextPart_000_0007_01DC7AE3.6EBDBA00", outlook),
        );
        assert!(!fired(&skewed, "MIME_BOUND_OUTLOOK_INVALID"), "{skewed:?}");
        let stale = hits(
            &engine,
            &outlook_message(id, "----=_NextPart_000_0007_01DC4B8B.6EBDBA00", outlook),
        );
        assert!(fired(&stale, "MIME_BOUND_OUTLOOK_INVALID"), "{stale:?}");
        // Outlook's Message-ID from a program that names itself otherwise.
        let the_bat = outlook_message(
            "000701dc7ab1$6ebdba00$0a01a8c0",
            "----=_NextPart_000_0007_01DC7AB1.6EBDBA00",
            "The Bat! (v1.52f) Business",
        );
        assert!(fired(&hits(&engine, &the_bat), "MSGID_OUTLOOK_OTHER_MUA"));
    }

    #[test]
    fn headers_that_spamware_forges() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let with = |find: &str, replace: &str| message("", "Hi", HAM_BODY).replace(find, replace);
        let date = "Date: Wed, 31 Dec 2025 23:59:00 +0000";
        let from = "From: Alice Example <alice@example.org>";
        let received = "Received: from mail.example.org (mail.example.org [192.0.2.1])";
        for (find, replace, rule) in [
            (
                date,
                "Date: Wed, 31 Dec 2025 23:59:00 -1900",
                "DATE_TZ_ABSURD",
            ),
            (
                date,
                "Date: Wed, 31 Dec 2025 23:59:00 +0075",
                "DATE_TZ_ABSURD",
            ),
            (
                from,
                "From: Haley <vy4tyht6c8986@yahoo.com>",
                "FORGED_YAHOO_RCVD",
            ),
            (from, "From: Pat <pat@hotmail.com>", "FORGED_HOTMAIL_RCVD"),
            (
                received,
                "Received: from mx1.mail.yahoo.com (ACC04C42.ipt.aol.com [172.192.76.66])",
                "RCVD_HELO_FREEMAIL_MX",
            ),
            (
                received,
                "Received: from [77.142.51.6] by rly-yk04.aolmd.com with NNFMP; \
                 Sun, 01 Sep 2002 08:00:47 -0100\r\n{received}",
                "RCVD_FORGED_RELAY_CHAIN",
            ),
            (
                "Subject: Hi",
                "Subject: ADV: Extended Auto Warranties",
                "SUBJ_ADV",
            ),
            (
                "MIME-Version: 1.0",
                "X-Mailer: ArHA8IFlSSFNGzAMo\r\nMIME-Version: 1.0",
                "X_MAILER_RANDOM",
            ),
            (
                "MIME-Version: 1.0",
                "X-Mailer: Microsoft CDO for Windows 2000\r\nMIME-Version: 1.0",
                "X_MAILER_CDO",
            ),
        ] {
            let raw = with(find, &replace.replace("{received}", received));
            assert!(fired(&hits(&engine, &raw), rule), "{rule}: {raw}");
        }
        // What real senders write hits none of them.
        let forged = [
            "DATE_TZ_ABSURD",
            "FORGED_YAHOO_RCVD",
            "FORGED_HOTMAIL_RCVD",
            "RCVD_HELO_FREEMAIL_MX",
            "RCVD_FORGED_RELAY_CHAIN",
            "SUBJ_ADV",
            "X_MAILER_RANDOM",
            "X_MAILER_CDO",
        ];
        for (find, replace) in [
            (date, "Date: Wed, 31 Dec 2025 23:59:00 +1400"),
            (date, "Date: Thu, 01 Jan 2026 05:29:00 +0530"),
            (date, "Date: Thu, 01 Jan 2026 12:44:00 +1245"),
            (date, "Date: Thu, 01 Jan 2026 13:44:00 +1345"),
            (date, "Date: 31-12-2025 23:59:00 +0000"),
            (
                // Hotmail's mail today passes Outlook's servers, named so.
                "From: Alice Example <alice@example.org>\r\n",
                "From: Pat <pat@hotmail.com>\r\nReceived: from DS0PR84MB3746.NAMPRD84.PROD.OUTLOOK.COM \
                 ([fe80::1]) by DS0PR84MB3746.NAMPRD84.PROD.OUTLOOK.COM ([fe80::1%5]) \
                 with mapi id 15.20.9253.013; Wed, 31 Dec 2025 23:59:00 +0000\r\n",
            ),
            (
                received,
                "Received: from rly-xa01.mx.aol.com (rly-xa01.mx.aol.com [205.188.156.1]) \
                 by mail.example.org with ESMTP\r\n{received}",
            ),
            (
                "From: Alice Example <alice@example.org>\r\n",
                "From: Alice <alice@yahoo.com>\r\nReceived: from web12.mail.yahoo.com \
                 (web12.mail.yahoo.com [216.136.173.1])\r\n\tby smtp012.mail.yahoo.com \
                 with NNFMP; Wed, 31 Dec 2025 23:59:00 +0000\r\n",
            ),
            (
                "From: Alice Example <alice@example.org>\r\n",
                "From: Pat <pat@hotmail.com>\r\nList-Id: <friends.lists.example.org>\r\n",
            ),
            (
                "MIME-Version: 1.0",
                "X-Mailer: Microsoft Outlook Express 6.00.2800.1106\r\nMIME-Version: 1.0",
            ),
            (
                "MIME-Version: 1.0",
                "X-Mailer: PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)\r\n\
                 MIME-Version: 1.0",
            ),
            ("Subject: Hi", "Subject: Advance notice: the wiki moves"),
        ] {
            let raw = with(find, &replace.replace("{received}", received));
            let hits = hits(&engine, &raw);
            assert!(
                !forged.iter().any(|rule| fired(&hits, rule)),
                "{replace}: {hits:?}"
            );
        }
    }

    #[test]
    fn advance_fee_fraud_needs_several_of_its_ingredients() {
        let (engine, _) = SpamEngine::new(&[]).unwrap();
        let fraud = message(
            "",
            "Seeking your partnership",
            "I got your contact through the internet. The sum of USD48M was lodged \
             into a security company by the late head of state. We need a foreign \
             partner in whose account we would transfer the fund; you keep 20% of \
             the total sum. Maintain a high level of secrecy.",
        );
        let fraud = hits(&engine, &fraud);
        for rule in ["ADVANCE_FEE", "ADVANCE_FEE_STRONG", "ADVANCE_FEE_MANY"] {
            assert!(fired(&fraud, rule), "{rule}: {fraud:?}");
        }
        assert!(total(&fraud) >= 5.0, "{fraud:?}");
        // A news story about a payment company names a bank account and a security
        // company, and a quote asks a share of the total to a bank account: not
        // fraud.
        let news = message(
            "",
            "InfoWorld profile",
            "He explains PayPal as a security company accepting credit card or bank \
             account payments for purchases.",
        );
        let news = hits(&engine, &news);
        let quote = message(
            "",
            "Your quote",
            "Please pay a deposit of 30% of the total amount to our bank account \
             before we start; the rest is due on delivery.",
        );
        let quote = hits(&engine, &quote);
        assert!(
            !quote.iter().any(|h| h.symbol.starts_with("ADVANCE_FEE")),
            "{quote:?}"
        );
        assert!(
            !news.iter().any(|h| h.symbol.starts_with("ADVANCE_FEE")),
            "{news:?}"
        );
    }

    #[test]
    fn helpers_find_hosts_and_registered_domains() {
        assert_eq!(
            content::host_of("https://user@Mail.Example.COM:8443/x").as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(
            content::host_of("mailto:a@b.example?subject=x").as_deref(),
            Some("b.example")
        );
        assert_eq!(registrable_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(registrable_domain("www.example.com"), "example.com");
        assert_eq!(registrable_domain("192.0.2.1"), "192.0.2.1");
    }
}

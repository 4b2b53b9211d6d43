//! The Bayesian classifier: a message becomes a set of tokens, each token's spam and
//! ham counts become a probability (Gary Robinson's f(w)), and the most telling
//! probabilities are combined with Fisher's method into one spam probability, reported
//! as one of the `BAYES_*` symbols SpamAssassin users know.
//!
//! This module is the pure part: tokenizer and arithmetic. Where the counts live is
//! behind [`TokenCounts`]; in the cluster they are replicated (learning is a Raft
//! command, `bulwark_model::bayes`), so every node that scores a message reads the
//! same counts and scores it alike.
//!
//! Tokens are stored, so their form is a contract: a token is a string, hashed with
//! [`token_hash`] (the first 8 bytes of its SHA-256, big-endian), or a pair of words
//! ([`pair_hash`]). Changing how a message is turned into token strings, or the
//! hashes, invalidates every count trained so far and must bump the `bayes:` version.
//! Adding a new kind of token keeps them usable (counts trained before simply lack
//! it, as for a token never seen), with one flaw: forgetting or moving a message
//! learned before takes away tokens of the new kind it never added (counts stop at
//! zero, but come out of other messages' counts). `bayes:2` added the word pairs and
//! the balanced sightings of `token_probability`; `bayes:3` cut Chinese, Japanese and
//! Korean text into two-character pieces (before, a run of it was one word, mostly
//! `long:`); `bayes:4` counts sightings as they are again, with a stronger
//! background (the tokens and the counts learned are the same as `bayes:3`'s, only
//! the probabilities made of them differ). The strings are:
//!
//! - body words (the rendered body, subject first): lowercase, 3 to 24 characters, made
//!   of letters, digits and `' - . _ @ $`, trimmed of that punctuation at both ends,
//!   and holding a letter or `$` (so dates and bare numbers are left out); a longer
//!   word becomes `long:` and its first 7 characters; runs of Han, Kana or Hangul
//!   inside words are taken out of them and become every two characters that follow
//!   each other (a run of one, that one), wherever words are taken;
//! - body word pairs: two such words that follow each other (words of other forms
//!   in between are skipped, long ones too; a word holding Han, Kana or Hangul ends
//!   the chain, and the words cut out of it make no pairs), stored not as a string
//!   but as [`pair_hash`] of the two words' hashes;
//! - header words, prefixed by the header's name: `Subject:`, `From:` (display name
//!   words, the address, its domain and registrable domain), `Reply-To:` (domains),
//!   `Message-ID:` (domains), `X-Mailer:` and `User-Agent:` (words), `Content-Type:`
//!   (every part's type), `Charset:`, `Encoding:` (transfer encodings);
//! - `Url:` and the host and registrable domain of every link;
//! - `Meta:` facts: `html_only`, `text_and_html`, `invisible_text`, `no_subject`,
//!   `list` (mailing-list headers), `url_ip`, `urls:<bucket>`;
//! - `Attach:` and the declared type and the extension (`Attach:.pdf`) of every file
//!   that is not the body, `Attach:archived` for files inside archives, and `Finding:`
//!   and the kind of every unpacking finding.
//!
//! The header and meta tokens are taken before the body's words, so the cap of
//! [`MAX_TOKENS`] a message never crowds them out.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use mail_parser::{Address, Message, MimeHeaders};
use sha2::{Digest, Sha256};

pub use bulwark_model::BayesCounts;

pub mod expiry;

use super::contents::{unpack, Limits};
use super::engine::{Engine, Hit, Outcome, Parsed};
use super::spam::{host_of, registrable_domain, view};

/// Distinct tokens taken from one message at most.
pub const MAX_TOKENS: usize = 3000;
/// Shortest word kept, in characters.
const MIN_WORD: usize = 3;
/// Longest word kept as it is, in characters; longer ones are cut to [`LONG_KEEP`].
const MAX_WORD: usize = 24;
/// Characters of an over-long word kept in its `long:` token.
const LONG_KEEP: usize = 7;
/// Whether `c` may be part of a word: letters, digits and `' - . _ @ $`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_trimmed(c) || c == '$'
}

/// Punctuation trimmed from both ends of a word.
fn is_trimmed(c: char) -> bool {
    matches!(c, '\'' | '-' | '.' | '_' | '@')
}

/// Whether `c` belongs to a script written without spaces between words, or whose
/// words are too long to be seen twice whole: Han ideographs, Hiragana, Katakana and
/// Hangul. Runs of them become overlapping two-character tokens, as Lucene's CJK
/// analyser cuts them.
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}'     // Hangul Jamo
        | '\u{3005}'..='\u{3007}'   // 々 〆 〇
        | '\u{3031}'..='\u{3035}'   // Kana repeat marks
        | '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
        | '\u{3130}'..='\u{318F}'   // Hangul compatibility Jamo
        | '\u{31F0}'..='\u{31FF}'   // Katakana phonetic extensions
        | '\u{3400}'..='\u{4DBF}'   // CJK extension A
        | '\u{4E00}'..='\u{9FFF}'   // CJK unified ideographs
        | '\u{AC00}'..='\u{D7AF}'   // Hangul syllables
        | '\u{F900}'..='\u{FAFF}'   // CJK compatibility ideographs
        | '\u{FF66}'..='\u{FF9F}'   // halfwidth Katakana
        | '\u{20000}'..='\u{2FA1F}' // CJK extensions B to F, supplement
        | '\u{30000}'..='\u{323AF}' // CJK extensions G and H
    )
}

/// Robinson's strength of the background belief (s): how many sightings a token needs
/// before its own counts outweigh [`BACKGROUND`]. At 2 a word seen in one spam and
/// no ham is 0.67, not surely spam: mail of a kind the classifier was never taught
/// as ham (newsletters, receipts) is full of such words (see `token_probability`).
const STRENGTH: f64 = 2.0;
/// Robinson's background belief (x): the probability of a token never seen.
const BACKGROUND: f64 = 0.5;
/// A token takes part only if its probability is further than this from 0.5.
const MIN_INTEREST: f64 = 0.1;
/// Tokens combined per message at most, the most telling first.
const MAX_INTERESTING: usize = 150;

/// The symbols, each with the upper bound (exclusive) of its probability band and its
/// score; the last band reaches 1. The bands are SpamAssassin's, whose `BAYES_999`
/// is a band of its own here. No band tags a message alone: mail of a kind the
/// classifier never learned as ham (newsletters, receipts, lists it was not taught)
/// can land as high as spam does (on the other fold of the cross-validation, 29 of
/// 1,250 hams from 0.99 to 0.999 and 17 above), so the rules must agree. Chosen on
/// both folds of the training sets' cross-validation (`examples/corpus.rs`); a rule
/// file's `score BAYES_99 ...` changes them. `BAYES_999` gives 4.5: with sightings
/// counted as they are (`bayes:4`) a fourth as many such hams reach it as before
/// (76), and at 4.5 it tags 4 of that fold's hams (6 before, when it gave 3.7) and
/// catches a spam more there and one less on the first fold.
const BANDS: &[(f64, &str, f64)] = &[
    (0.01, "BAYES_00", -1.5),
    (0.05, "BAYES_05", -0.5),
    (0.20, "BAYES_20", -0.1),
    (0.40, "BAYES_40", 0.0),
    (0.60, "BAYES_50", 0.8),
    (0.80, "BAYES_60", 1.5),
    (0.95, "BAYES_80", 3.0),
    (0.99, "BAYES_95", 3.5),
    (0.999, "BAYES_99", 3.5),
    (f64::INFINITY, "BAYES_999", 4.5),
];

/// The stable hash of a token string: the first 8 bytes of its SHA-256, big-endian.
pub fn token_hash(token: &str) -> u64 {
    let digest = Sha256::digest(token.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The hash of a pair of body words, from the hashes of its two words (SplitMix64's
/// finaliser over the first rotated by half and the second, so order counts). A
/// SHA-256 of every pair's string would cost as much as the rest of the scan. Unlike
/// a string token's, a pair's hash can be aimed at a chosen value with about 2^32
/// work; all that buys a sender is a pair counted as another token.
pub fn pair_hash(first: u64, second: u64) -> u64 {
    let mut z = first.rotate_left(32) ^ second;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The tokens of a message (see the module documentation), hashed, sorted and
/// without duplicates; at most [`MAX_TOKENS`].
pub fn tokens(parsed: &Parsed<'_>) -> Vec<u64> {
    let message = parsed.message;
    let view = parsed.view;
    let mut tokens = Collector::default();

    tokens.headers(message);
    if view.html_parts > 0 && view.text_parts == 0 {
        tokens.add("Meta:", "html_only");
    }
    if view.html_parts > 0 && view.text_parts > 0 {
        tokens.add("Meta:", "text_and_html");
    }
    if view.invisible_chars > 0 {
        tokens.add("Meta:", "invisible_text");
    }
    // Attachments as mail-parser lists them; a second reading's files are for the
    // content engines (its body text reaches the classifier through the view).
    for file in parsed
        .contents
        .files
        .iter()
        .filter(|f| !f.inline_body && !f.other_reading)
    {
        if let Some(declared) = &file.declared_type {
            tokens.add("Attach:", declared);
        }
        let extension = file.name.as_deref().and_then(|n| n.rsplit_once('.'));
        if let Some((_, extension)) = extension {
            if (1..=8).contains(&extension.len())
                && extension.chars().all(|c| c.is_ascii_alphanumeric())
            {
                tokens.add("Attach:.", extension);
            }
        }
        if file.depth > 0 {
            tokens.add("Attach:", "archived");
        }
    }
    for finding in &parsed.contents.findings {
        tokens.add("Finding:", finding.kind.as_str());
    }
    let bucket = match view.uris.len() {
        0 => "0",
        1 => "1",
        2..=4 => "2-4",
        5..=9 => "5-9",
        _ => "10+",
    };
    tokens.add("Meta:urls:", bucket);
    for host in view.uris.iter().filter_map(|uri| host_of(uri)) {
        if host.parse::<IpAddr>().is_ok() {
            tokens.add("Meta:", "url_ip");
        }
        tokens.domain("Url:", &host);
    }
    tokens.words("", &view.body, true);
    let mut hashes = tokens.hashes;
    hashes.sort_unstable();
    // Two strings of one hash count once, as they would in the stored counts.
    hashes.dedup();
    hashes
}

/// Gathers the distinct tokens of one message, hashed, up to [`MAX_TOKENS`].
struct Collector {
    /// The tokens' hashes (two strings of one hash are deduplicated at the end).
    hashes: Vec<u64>,
    /// The token strings taken so far, by a quick 64-bit hash of the string, and
    /// their token hashes: a word met again is neither copied nor hashed with SHA-256
    /// again. Two strings of one message sharing a quick hash (about one message in
    /// 10^13 by chance; the seed is random, though foldhash claims no resistance to a
    /// determined attacker) would give the second the first one's token: a token
    /// lost, nothing else.
    texts: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// The hasher of `texts`' keys.
    quick: foldhash::fast::RandomState,
    /// The word pairs taken so far.
    pairs: HashSet<u64, foldhash::fast::RandomState>,
    /// The token being built, reused.
    buf: String,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            // Room for the tokens of a typical message without growing.
            hashes: Vec::with_capacity(2048),
            texts: HashMap::with_capacity_and_hasher(1024, Default::default()),
            quick: Default::default(),
            pairs: HashSet::with_capacity_and_hasher(1024, Default::default()),
            buf: String::new(),
        }
    }
}

impl Collector {
    fn is_full(&self) -> bool {
        self.hashes.len() >= MAX_TOKENS
    }

    /// Adds `prefix` followed by `value` lowercased; returns the token's hash, or
    /// `None` once the cap is reached.
    fn add(&mut self, prefix: &str, value: &str) -> Option<u64> {
        self.buf.clear();
        self.buf.push_str(prefix);
        push_lowercase(&mut self.buf, value);
        let quick = self.quick.hash_one(self.buf.as_str());
        if let Some(&hash) = self.texts.get(&quick) {
            return Some(hash);
        }
        if self.is_full() {
            return None;
        }
        let hash = token_hash(&self.buf);
        self.hashes.push(hash);
        self.texts.insert(quick, hash);
        Some(hash)
    }

    /// Adds every word of `text`, each after `prefix`, until the cap; with `pairs`,
    /// each word also as a pair with the word kept before it. Runs of Chinese,
    /// Japanese or Korean script are cut out of the words they are in and added as
    /// their overlapping two-character pieces (see [`is_cjk`]); such a word ends the
    /// chain of pairs, and what is cut out of it makes none.
    fn words(&mut self, prefix: &str, text: &str, pairs: bool) {
        let long_prefix = format!("{prefix}long:");
        let mut previous = None;
        for piece in text.split(|c: char| !is_word_char(c)) {
            if self.is_full() {
                return;
            }
            if piece.is_ascii() || !piece.chars().any(is_cjk) {
                let hash = self.word(prefix, &long_prefix, piece);
                if pairs && hash.is_some() {
                    self.pair(previous, hash);
                    previous = hash;
                }
                continue;
            }
            previous = None;
            let mut rest = piece;
            while let Some(start) = rest.find(is_cjk) {
                self.word(prefix, &long_prefix, &rest[..start]);
                let run = &rest[start..];
                let end = run.find(|c: char| !is_cjk(c)).unwrap_or(run.len());
                self.cjk_run(prefix, &run[..end]);
                rest = &run[end..];
            }
            self.word(prefix, &long_prefix, rest);
        }
    }

    /// Adds one word (see the module documentation for which are kept); returns its
    /// token's hash when it was kept as a word of its own (not cut to `long:`).
    fn word(&mut self, prefix: &str, long_prefix: &str, piece: &str) -> Option<u64> {
        let word = piece.trim_matches(is_trimmed);
        if word.len() < MIN_WORD || !word.chars().any(|c| c.is_alphabetic() || c == '$') {
            return None;
        }
        let length = if word.is_ascii() {
            word.len()
        } else {
            word.chars().count()
        };
        if length > MAX_WORD {
            let cut = word
                .char_indices()
                .nth(LONG_KEEP)
                .map_or(word.len(), |(i, _)| i);
            self.add(long_prefix, &word[..cut]);
            None
        } else if length >= MIN_WORD {
            self.add(prefix, word)
        } else {
            None
        }
    }

    /// Adds the pair of two words that follow each other, when both were kept.
    fn pair(&mut self, first: Option<u64>, second: Option<u64>) {
        if let (Some(first), Some(second)) = (first, second) {
            let pair = pair_hash(first, second);
            if !self.is_full() && self.pairs.insert(pair) {
                self.hashes.push(pair);
            }
        }
    }

    /// Adds a run of Chinese, Japanese or Korean characters: every two characters
    /// that follow each other, or the one character of a run of one.
    fn cjk_run(&mut self, prefix: &str, run: &str) {
        if run.chars().nth(1).is_none() {
            self.add(prefix, run);
            return;
        }
        let mut chars = run.char_indices().peekable();
        while let Some((start, _)) = chars.next() {
            let Some(&(second, c)) = chars.peek() else {
                return;
            };
            self.add(prefix, &run[start..second + c.len_utf8()]);
        }
    }

    /// Adds a host and, when it differs, the domain its owner registered.
    fn domain(&mut self, prefix: &str, host: &str) {
        let host = host.trim_end_matches('.').to_lowercase();
        if host.is_empty() {
            return;
        }
        self.add(prefix, &host);
        let registered = registrable_domain(&host);
        if registered != host {
            self.add(prefix, registered);
        }
    }

    /// The domain of every address of a header.
    fn address_domains(&mut self, prefix: &str, address: Option<&Address<'_>>) {
        let Some(address) = address else {
            return;
        };
        let addrs: Vec<_> = match address {
            Address::List(list) => list.iter().collect(),
            Address::Group(groups) => groups.iter().flat_map(|g| &g.addresses).collect(),
        };
        for addr in addrs {
            if let Some((_, domain)) = addr.address().and_then(|a| a.rsplit_once('@')) {
                self.domain(prefix, domain);
            }
        }
    }

    fn headers(&mut self, message: &Message<'_>) {
        match message.subject() {
            Some(subject) if !subject.trim().is_empty() => self.words("Subject:", subject, false),
            _ => {
                self.add("Meta:", "no_subject");
            }
        }
        if let Some(from) = message.from().and_then(Address::first) {
            if let Some(name) = from.name() {
                self.words("From:", name, false);
            }
            if let Some(address) = from.address() {
                self.add("From:", address);
            }
        }
        self.address_domains("From:", message.from());
        self.address_domains("Reply-To:", message.reply_to());
        if let Some((_, domain)) = message.message_id().and_then(|id| id.rsplit_once('@')) {
            self.domain("Message-ID:", domain);
        }
        for name in ["X-Mailer", "User-Agent"] {
            if let Some(value) = message.header_raw(name) {
                self.words(&format!("{name}:"), value, false);
            }
        }
        if message.header_raw("List-Id").is_some()
            || message.header_raw("List-Unsubscribe").is_some()
        {
            self.add("Meta:", "list");
        }
        for part in &message.parts {
            if let Some(content_type) = part.content_type() {
                match content_type.subtype() {
                    Some(subtype) => {
                        let full = format!("{}/{subtype}", content_type.ctype());
                        self.add("Content-Type:", &full);
                    }
                    None => {
                        self.add("Content-Type:", content_type.ctype());
                    }
                }
                if let Some(charset) = content_type.attribute("charset") {
                    self.add("Charset:", charset);
                }
            }
            if let Some(encoding) = part.content_transfer_encoding() {
                self.add("Encoding:", encoding);
            }
        }
    }
}

/// Appends `text` lowercased.
fn push_lowercase(out: &mut String, text: &str) {
    if text.is_ascii() {
        let start = out.len();
        out.push_str(text);
        out[start..].make_ascii_lowercase();
    } else {
        out.extend(text.chars().flat_map(char::to_lowercase));
    }
}

/// Where the trained counts are read from.
pub trait TokenCounts: Send + Sync {
    /// How many spam and how many ham messages were trained.
    fn totals(&self) -> (u64, u64);
    /// The spam and ham counts of each token, in the order given; `(0, 0)` for a
    /// token never trained.
    fn counts(&self, tokens: &[u64]) -> Vec<(u32, u32)>;
}

impl TokenCounts for BayesCounts {
    fn totals(&self) -> (u64, u64) {
        BayesCounts::totals(self)
    }

    fn counts(&self, tokens: &[u64]) -> Vec<(u32, u32)> {
        BayesCounts::counts(self, tokens)
    }
}

/// Turns whole messages into tokens, for learning: parsed and unpacked as the
/// pipeline does before it scans, so a message learned and the same message scanned
/// give the same tokens.
#[derive(Clone)]
pub struct Tokenizer {
    limits: Limits,
}

impl Tokenizer {
    pub fn new(limits: Limits) -> Self {
        Tokenizer { limits }
    }

    /// The tokens of a raw RFC 5322 message; empty when it is not one (it does not
    /// start with a header field, after an mbox `From ` line if any, or cannot be
    /// parsed).
    pub fn tokens(&self, raw: &[u8]) -> Vec<u64> {
        if !starts_with_header_field(raw) {
            return Vec::new();
        }
        let Some(message) = super::parse(raw) else {
            return Vec::new();
        };
        let contents = unpack(&message, &self.limits);
        let view = view(&message, &contents);
        tokens(&Parsed {
            rcpt_to: &[],
            client_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            raw,
            message: &message,
            contents: &contents,
            view: &view,
            local_domains: &[],
            bayes: false,
        })
    }
}

/// Whether `raw` starts with `field-name:` (RFC 5322: printable ASCII but `:`),
/// after one mbox `From ` line if there is one.
fn starts_with_header_field(raw: &[u8]) -> bool {
    let raw = match raw.strip_prefix(b"From ") {
        Some(rest) => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&[][..], |end| &rest[end + 1..]),
        None => raw,
    };
    let name = raw.iter().take_while(|&&b| b != b':').count();
    name > 0 && name < raw.len() && raw[..name].iter().all(|b| (33..=126).contains(b))
}

/// What the classifier made of one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// The probability that the message is spam, 0 to 1.
    pub probability: f64,
    /// Tokens combined (the most telling ones, at most 150).
    pub used: usize,
    /// Tokens of the message that were seen in training.
    pub known: usize,
}

/// The Bayesian engine: scores a message against the trained counts once at least
/// `min_messages` of each class have been trained.
#[derive(Clone)]
pub struct BayesEngine {
    counts: Arc<dyn TokenCounts>,
    min_messages: u64,
}

impl BayesEngine {
    /// An engine reading `counts` that stays silent until `min_messages` spam and
    /// `min_messages` ham have been trained (SpamAssassin waits for 200 of each).
    pub fn new(counts: Arc<dyn TokenCounts>, min_messages: u64) -> Self {
        BayesEngine {
            counts,
            min_messages,
        }
    }

    /// The spam probability of a message given its [`tokens`]; `None` while too few
    /// messages are trained or when no token of the message tells anything.
    pub fn classify(&self, tokens: &[u64]) -> Option<Classification> {
        let totals = self.counts.totals();
        self.classify_with(totals, tokens)
    }

    /// Whether the classifier has learned enough of each class to judge.
    pub fn is_ready(&self) -> bool {
        self.is_trained(self.counts.totals())
    }

    fn is_trained(&self, (spam, ham): (u64, u64)) -> bool {
        spam >= self.min_messages.max(1) && ham >= self.min_messages.max(1)
    }

    fn classify_with(&self, totals: (u64, u64), tokens: &[u64]) -> Option<Classification> {
        if !self.is_trained(totals) {
            return None;
        }
        let (spam_total, ham_total) = totals;
        let counts = self.counts.counts(tokens);
        let mut known = 0;
        // (distance from 0.5, token, probability)
        let mut telling: Vec<(f64, u64, f64)> = Vec::new();
        for (&token, &(spam, ham)) in tokens.iter().zip(&counts) {
            if spam == 0 && ham == 0 {
                continue;
            }
            known += 1;
            let probability = token_probability(spam, ham, spam_total, ham_total);
            let distance = (probability - 0.5).abs();
            if distance > MIN_INTEREST {
                telling.push((distance, token, probability));
            }
        }
        if telling.is_empty() {
            return None;
        }
        // The token breaks ties, so every node picks the same tokens in the same order.
        let most_telling =
            |a: &(f64, u64, f64), b: &(f64, u64, f64)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if telling.len() > MAX_INTERESTING {
            telling.select_nth_unstable_by(MAX_INTERESTING, most_telling);
            telling.truncate(MAX_INTERESTING);
        }
        telling.sort_unstable_by(most_telling);
        let probabilities: Vec<f64> = telling.iter().map(|t| t.2).collect();
        Some(Classification {
            probability: combine(&probabilities),
            used: probabilities.len(),
            known,
        })
    }
}

impl Engine for BayesEngine {
    fn name(&self) -> &'static str {
        "bayes"
    }

    fn version(&self) -> String {
        let (spam, ham) = self.counts.totals();
        format!("bayes:4 spam={spam} ham={ham}")
    }

    fn scan(&self, message: &Parsed<'_>) -> Outcome {
        let totals = self.counts.totals();
        if !self.is_trained(totals) {
            return Outcome::default();
        }
        let tokens = tokens(message);
        let hits = self
            .classify_with(totals, &tokens)
            .map(|c| band_hit(&c, tokens.len()))
            .into_iter()
            .collect();
        Outcome {
            hits,
            findings: Vec::new(),
        }
    }
}

/// The `BAYES_*` symbol of a classification.
fn band_hit(classification: &Classification, tokens: usize) -> Hit {
    let p = classification.probability;
    let (_, symbol, score) = BANDS
        .iter()
        .find(|(upper, _, _)| p < *upper)
        .unwrap_or(&BANDS[BANDS.len() - 1]);
    Hit::new(
        *symbol,
        *score,
        format!(
            "Bayes spam probability {p:.4} ({} of {tokens} tokens used)",
            classification.used
        ),
    )
}

/// Robinson's f(w): the token's spam probability from its counts, pulled towards
/// [`BACKGROUND`] while it has been seen only a few times. At least one count is not 0.
///
/// The probability compares the token's share of each class, so learning five times
/// more ham than spam turns no word towards ham; the evidence that weighs against
/// the background is the sightings themselves, spam and ham alike, so such a site
/// grows sure of its ham words sooner than of its spam words (the side that spares
/// mail).
///
/// `bayes:2` and `bayes:3` counted a spam sighting for up to three (as if both
/// classes had been learned alike), so a word seen in a single spam was 0.875: mail
/// of a kind never learned as ham, full of commercial words seen only in a spam or
/// two, came out as sure as spam (on the other fold of the cross-validation, 213 of
/// 1,250 hams at 0.95 or above; counted as they are, with [`STRENGTH`] 2, 90).
fn token_probability(spam: u32, ham: u32, spam_total: u64, ham_total: u64) -> f64 {
    let spam_ratio = (f64::from(spam) / spam_total as f64).min(1.0);
    let ham_ratio = (f64::from(ham) / ham_total as f64).min(1.0);
    let p = spam_ratio / (spam_ratio + ham_ratio);
    let seen = f64::from(spam) + f64::from(ham);
    (STRENGTH * BACKGROUND + seen * p) / (STRENGTH + seen)
}

/// Fisher's method as Robinson applies it: how unlikely the probabilities are if the
/// tokens were hammy (S) and if they were spammy (H), folded into one spam
/// probability `(1 + S - H) / 2`. Each probability is strictly between 0 and 1.
fn combine(probabilities: &[f64]) -> f64 {
    let degrees = 2 * probabilities.len() as u32;
    let (mut ln_spam, mut ln_ham) = (0.0, 0.0);
    for &p in probabilities {
        ln_spam += p.ln();
        ln_ham += (1.0 - p).ln();
    }
    let spamminess = 1.0 - chi2_q(-2.0 * ln_ham, degrees);
    let hamminess = 1.0 - chi2_q(-2.0 * ln_spam, degrees);
    ((1.0 + spamminess - hamminess) / 2.0).clamp(0.0, 1.0)
}

/// The probability that a chi-square variable with `degrees` (even) degrees of
/// freedom is at least `x`: for 2k degrees, `e^-m · Σ_{i<k} m^i / i!` with `m = x/2`.
fn chi2_q(x: f64, degrees: u32) -> f64 {
    let m = x / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..degrees / 2 {
        term *= m / f64::from(i);
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::super::engine::{Contents, File, Finding, FindingKind};
    use super::*;
    use bulwark_model::BayesClass;
    use mail_parser::MessageParser;
    use std::net::Ipv4Addr;

    fn with_parsed<T>(raw: &str, contents: &Contents, f: impl FnOnce(&Parsed<'_>) -> T) -> T {
        let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let view = view(&message, contents);
        let parsed = Parsed {
            rcpt_to: &[],
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            raw: raw.as_bytes(),
            message: &message,
            contents,
            view: &view,
            local_domains: &[],
            bayes: false,
        };
        f(&parsed)
    }

    /// Whether `tokens` (sorted) hold the token string `token`.
    fn has(tokens: &[u64], token: &str) -> bool {
        tokens.binary_search(&token_hash(token)).is_ok()
    }

    fn tokens_of(raw: &str) -> Vec<u64> {
        with_parsed(raw, &Contents::default(), tokens)
    }

    fn plain(subject: &str, body: &str) -> String {
        format!(
            "From: Alice Example <alice@mail.example.org>\r\n\
             To: bob@example.net\r\n\
             Subject: {subject}\r\n\
             Message-ID: <1@mail.example.org>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             {body}\r\n"
        )
    }

    /// The header tokens of every message [`plain`] writes, subject aside.
    const PLAIN_HEADERS: &[&str] = &[
        "From:alice",
        "From:example",
        "From:alice@mail.example.org",
        "From:mail.example.org",
        "From:example.org",
        "Message-ID:mail.example.org",
        "Message-ID:example.org",
        "Content-Type:text/plain",
        "Charset:utf-8",
    ];

    /// The token of a pair of body words.
    fn pair(first: &str, second: &str) -> u64 {
        pair_hash(token_hash(first), token_hash(second))
    }

    /// Checks that `tokens` are exactly `expected` hashed and the `pairs` of body
    /// words, naming what is missing.
    fn assert_exactly(tokens: &[u64], expected: &[&str], pairs: &[(&str, &str)]) {
        let missing: Vec<&&str> = expected.iter().filter(|t| !has(tokens, t)).collect();
        assert!(missing.is_empty(), "missing {missing:?}");
        let missing: Vec<_> = pairs
            .iter()
            .filter(|(a, b)| !tokens.contains(&pair(a, b)))
            .collect();
        assert!(missing.is_empty(), "missing pairs {missing:?}");
        let mut hashes: Vec<u64> = expected.iter().map(|t| token_hash(t)).collect();
        hashes.extend(pairs.iter().map(|(a, b)| pair(a, b)));
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(
            tokens,
            hashes,
            "{} tokens, {} expected",
            tokens.len(),
            hashes.len()
        );
    }

    const KNOWN: &str = "Buy cheap viagra at https://shop.example.co.uk/x today, it's \
        2025-12-30 and $100 off!\r\nAn extraordinarilyincrediblylongword here. ok.";

    #[test]
    fn known_message_gives_exactly_these_tokens() {
        let tokens = tokens_of(&plain("Cheap VIAGRA now", KNOWN));
        let mut expected = PLAIN_HEADERS.to_vec();
        expected.extend([
            "Subject:cheap",
            "Subject:viagra",
            "Subject:now",
            "Meta:urls:1",
            "Url:shop.example.co.uk",
            "Url:example.co.uk",
            "cheap",
            "viagra",
            "now",
            "buy",
            "https",
            "shop.example.co.uk",
            "today",
            "it's",
            "and",
            "$100",
            "off",
            "long:extraor",
            "here",
        ]);
        // The body as rendered starts with the subject; "at" (short), the date (no
        // letter) and the long word are no words and are skipped between pairs.
        let pairs = [
            ("cheap", "viagra"),
            ("viagra", "now"),
            ("now", "buy"),
            ("buy", "cheap"),
            ("viagra", "https"),
            ("https", "shop.example.co.uk"),
            ("shop.example.co.uk", "today"),
            ("today", "it's"),
            ("it's", "and"),
            ("and", "$100"),
            ("$100", "off"),
            ("off", "here"),
        ];
        assert_exactly(&tokens, &expected, &pairs);
        assert_eq!(tokens.len(), 40);
    }

    #[test]
    fn word_pairs_keep_their_order() {
        assert_ne!(pair("cheap", "pills"), pair("pills", "cheap"));
        assert_ne!(pair("free", "free"), token_hash("free"));
        let forward = tokens_of(&plain("x", "cheap pills"));
        let backward = tokens_of(&plain("x", "pills cheap"));
        assert!(forward.contains(&pair("cheap", "pills")));
        assert!(!forward.contains(&pair("pills", "cheap")));
        assert!(backward.contains(&pair("pills", "cheap")));
    }

    #[test]
    fn token_hashes_are_the_first_eight_bytes_of_sha256() {
        // printf '%s' 'Subject:viagra' | sha256sum
        assert_eq!(token_hash("Subject:viagra"), 0x7bcd_0e5d_e6e1_153d);
        assert_eq!(token_hash("From:example.org"), 0x1407_a9ee_1e15_737d);
        let tokens = tokens_of(&plain("Cheap VIAGRA now", KNOWN));
        assert!(tokens.contains(&0x7bcd_0e5d_e6e1_153d));
        assert!(tokens.contains(&0x1407_a9ee_1e15_737d));
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct"
        );
    }

    #[test]
    fn repeated_words_count_once() {
        let tokens = tokens_of(&plain("free", "free Free FREE free. -free- FrEe!"));
        let mut expected = PLAIN_HEADERS.to_vec();
        expected.extend(["Subject:free", "Meta:urls:0", "free"]);
        assert_exactly(&tokens, &expected, &[("free", "free")]);
    }

    #[test]
    fn short_numeric_and_long_words() {
        let body = "ab 12345 3.14 abc Ünïcödé ÀBCDEFGHIJKLMNOPQRSTUVWXYZ";
        let tokens = tokens_of(&plain("x", body));
        let mut expected = PLAIN_HEADERS.to_vec();
        // No `Subject:x` (too short) and no `Meta:no_subject` (there is one).
        expected.extend(["Meta:urls:0", "abc", "ünïcödé", "long:àbcdefg"]);
        assert_exactly(&tokens, &expected, &[("abc", "ünïcödé")]);
    }

    #[test]
    fn chinese_japanese_and_korean_text_becomes_two_character_pieces() {
        let body = "明天开会。Meeting 会议室B, 楼 ハローWorld 안녕하세요 ok thanks";
        let tokens = tokens_of(&plain("会议通知", body));
        let mut expected = PLAIN_HEADERS.to_vec();
        expected.extend([
            "Subject:会议",
            "Subject:议通",
            "Subject:通知",
            "Meta:urls:0",
            "会议",
            "议通",
            "通知",
            "明天",
            "天开",
            "开会",
            "meeting",
            "议室",
            "楼",
            "ハロ",
            "ロー",
            "world",
            "안녕",
            "녕하",
            "하세",
            "세요",
            "thanks",
        ]);
        // No whole run ("明天开会", "会议室") and no pair across one ("meeting",
        // "thanks").
        assert_exactly(&tokens, &expected, &[]);
    }

    #[test]
    fn text_in_a_chinese_charset_gives_the_tokens_of_the_same_text_in_utf8() {
        let message = |charset: &str, subject: &str, body: &str| {
            format!(
                "From: Alice Example <alice@mail.example.org>\r\n\
                 Subject: =?{charset}?B?{subject}?=\r\n\
                 Message-ID: <1@mail.example.org>\r\n\
                 Content-Type: text/plain; charset={charset}\r\n\
                 Content-Transfer-Encoding: base64\r\n\
                 \r\n\
                 {body}\r\n"
            )
        };
        // "会议通知" and "你好，世界。会议通知".
        let gb2312 = tokens_of(&message(
            "gb2312",
            "u+HS6c2o1qo=",
            "xOO6w6OsysC956Gju+HS6c2o1qo=",
        ));
        let utf8 = tokens_of(&message(
            "utf-8",
            "5Lya6K6u6YCa55+l",
            "5L2g5aW977yM5LiW55WM44CC5Lya6K6u6YCa55+l",
        ));
        for token in ["Subject:会议", "你好", "世界", "会议", "通知"] {
            assert!(has(&gb2312, token), "{token}");
        }
        let only = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter().filter(|t| !b.contains(t)).copied().collect()
        };
        assert_eq!(only(&gb2312, &utf8), [token_hash("Charset:gb2312")]);
        assert_eq!(only(&utf8, &gb2312), [token_hash("Charset:utf-8")]);
    }

    #[test]
    fn tokens_are_capped_and_headers_survive_the_cap() {
        let body: Vec<String> = (0..5000).map(|i| format!("word{i}")).collect();
        let tokens = tokens_of(&plain("Cheap VIAGRA now", &body.join(" ")));
        assert_eq!(tokens.len(), MAX_TOKENS);
        assert!(has(&tokens, "Subject:viagra"));
        assert!(has(&tokens, "From:example.org"));
        assert!(has(&tokens, "word0"));
        assert!(tokens.contains(&pair("word0", "word1")));
        assert!(!has(&tokens, "word4999"));
    }

    #[test]
    fn html_only_message_reads_the_rendered_text() {
        let raw = "From: shop@shop.example\r\nSubject: Deal\r\nMIME-Version: 1.0\r\n\
            Content-Type: text/html; charset=utf-8\r\n\r\n\
            <html><body><p>Hello <b>friend</b></p>\
            <a href=\"http://198.51.100.7/win\">click here</a></body></html>\r\n";
        let tokens = tokens_of(raw);
        for expected in [
            "Meta:html_only",
            "Meta:url_ip",
            "Url:198.51.100.7",
            "Content-Type:text/html",
            "hello",
            "friend",
            "click",
            "here",
            "Subject:deal",
        ] {
            assert!(has(&tokens, expected), "{expected}");
        }
        for absent in [
            "href",
            "html",
            "body",
            "Meta:no_subject",
            "Meta:text_and_html",
        ] {
            assert!(!has(&tokens, absent), "{absent}");
        }
    }

    #[test]
    fn attachments_and_findings_become_tokens() {
        let contents = Contents {
            files: vec![
                File {
                    location: "part 1".into(),
                    name: None,
                    declared_type: Some("text/plain".into()),
                    depth: 0,
                    inline_body: true,
                    other_reading: false,
                    data: Vec::new(),
                },
                File {
                    location: "part 2".into(),
                    name: Some("Invoice.PDF".into()),
                    declared_type: Some("application/pdf".into()),
                    depth: 0,
                    inline_body: false,
                    other_reading: false,
                    data: Vec::new(),
                },
                File {
                    location: "part 3/a.zip/run.exe".into(),
                    name: Some("run.exe".into()),
                    declared_type: None,
                    depth: 1,
                    inline_body: false,
                    other_reading: false,
                    data: Vec::new(),
                },
            ],
            findings: vec![Finding {
                kind: FindingKind::Encrypted,
                name: "encrypted".into(),
                location: "part 3".into(),
            }],
        };
        let tokens = with_parsed(&plain("Invoice", "see attached"), &contents, tokens);
        for expected in [
            "Attach:application/pdf",
            "Attach:.pdf",
            "Attach:.exe",
            "Attach:archived",
            "Finding:encrypted",
        ] {
            assert!(has(&tokens, expected), "{expected}");
        }
        assert!(
            !has(&tokens, "Attach:text/plain"),
            "the body is no attachment"
        );
    }

    #[test]
    fn chi_square_survival_matches_known_values() {
        assert!((chi2_q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-15);
        assert!((chi2_q(4.0, 4) - 3.0 * (-2.0f64).exp()).abs() < 1e-15);
        // Table values: the 5% critical points for 4 and 10 degrees of freedom.
        assert!((chi2_q(9.487_729, 4) - 0.05).abs() < 1e-6);
        assert!((chi2_q(18.307_038, 10) - 0.05).abs() < 1e-6);
        // The 1% critical point for 300 degrees of freedom: many terms, no overflow.
        assert!((chi2_q(359.906_2, 300) - 0.01).abs() < 1e-4);
        assert_eq!(chi2_q(0.0, 10), 1.0);
        assert!(chi2_q(5000.0, 300) < 1e-300);
    }

    #[test]
    fn robinson_probability_and_fisher_combination() {
        // One sighting in spam, none in ham: (2 × 0.5 + 1) / (2 + 1).
        assert!((token_probability(1, 0, 10, 10) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_probability(5, 5, 10, 10), 0.5);
        // The share of each class decides the direction: as often in 100 spams as
        // in 200 hams is neither.
        assert_eq!(token_probability(10, 20, 100, 200), 0.5);
        // Five times more ham learned than spam: a word in 3 of 2,500 hams and one in
        // 2 of 500 spams each lean their own way, and the ham word, seen more often,
        // is the surer (counted as if both classes were learned alike, it was not).
        let rare_ham = token_probability(0, 3, 500, 2500);
        let rare_spam = token_probability(2, 0, 500, 2500);
        assert!(rare_ham < 0.5 && rare_spam > 0.5);
        assert!(0.5 - rare_ham > rare_spam - 0.5, "{rare_spam} {rare_ham}");
        // A word seen in a single spam beside a hundred times more ham is no surer
        // for it: one sighting is one, 0.67, whatever the totals.
        let one_spam = token_probability(1, 0, 200, 20_000);
        assert!((one_spam - 2.0 / 3.0).abs() < 1e-12, "{one_spam}");
        // Evidence grows with the sightings: ten spams tell more than two.
        assert!(token_probability(10, 0, 500, 2500) > token_probability(2, 0, 500, 2500));
        assert!(token_probability(100, 0, 100, 100) > 0.99);
        assert!(token_probability(0, 100, 100, 100) < 0.01);
        assert!(combine(&[0.99; 10]) > 0.99);
        assert!(combine(&[0.01; 10]) < 0.01);
        assert!((combine(&[0.9, 0.1, 0.8, 0.2]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn bands_follow_spamassassin() {
        let symbol = |p: f64| {
            let c = Classification {
                probability: p,
                used: 1,
                known: 1,
            };
            band_hit(&c, 1).symbol
        };
        assert_eq!(symbol(0.0), "BAYES_00");
        assert_eq!(symbol(0.009), "BAYES_00");
        assert_eq!(symbol(0.01), "BAYES_05");
        assert_eq!(symbol(0.1), "BAYES_20");
        assert_eq!(symbol(0.3), "BAYES_40");
        assert_eq!(symbol(0.5), "BAYES_50");
        assert_eq!(symbol(0.7), "BAYES_60");
        assert_eq!(symbol(0.9), "BAYES_80");
        assert_eq!(symbol(0.97), "BAYES_95");
        assert_eq!(symbol(0.99), "BAYES_99");
        assert_eq!(symbol(0.998), "BAYES_99");
        assert_eq!(symbol(0.999), "BAYES_999");
        assert_eq!(symbol(1.0), "BAYES_999");
    }

    /// SplitMix64: a small seeded generator for reproducible test corpora.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
            list[(self.next() % list.len() as u64) as usize]
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const SPAM_WORDS: &[&str] = &[
        "viagra",
        "casino",
        "winner",
        "lottery",
        "pills",
        "discount",
        "bitcoin",
        "prize",
        "urgent",
        "offer",
        "free",
        "guaranteed",
        "cash",
        "credit",
        "loan",
        "unsubscribe",
        "limited",
        "exclusive",
        "bonus",
        "million",
        "investment",
        "click",
        "deal",
        "cheap",
        "pharmacy",
        "weight",
        "claim",
        "congratulations",
        "risk-free",
        "$$$",
    ];
    const HAM_WORDS: &[&str] = &[
        "meeting",
        "agenda",
        "minutes",
        "project",
        "review",
        "budget",
        "schedule",
        "report",
        "deadline",
        "team",
        "draft",
        "release",
        "patch",
        "thanks",
        "lunch",
        "tuesday",
        "quarterly",
        "customer",
        "invoice",
        "design",
        "document",
        "question",
        "wiki",
        "repository",
        "build",
        "test",
        "conference",
        "slides",
        "colleague",
        "feedback",
    ];
    const COMMON_WORDS: &[&str] = &[
        "the", "and", "with", "this", "that", "have", "from", "will", "your", "about", "there",
        "their", "what", "which", "when", "would", "make", "like", "time", "just", "know", "take",
        "people", "into", "year", "good", "some", "could", "them", "other", "than", "then", "now",
        "look", "only", "come", "over", "think", "also", "back",
    ];

    fn generated(rng: &mut Rng, spam: bool) -> String {
        let (names, domains, own, link) = if spam {
            (
                &[
                    "Lucky Winner",
                    "Pharmacy Deals",
                    "Crypto Desk",
                    "Support Team",
                ][..],
                &[
                    "promo-deals.biz",
                    "cheap-meds.info",
                    "win-prize.top",
                    "mail.example.org",
                ][..],
                SPAM_WORDS,
                "http://offers.win-prize.top/claim",
            )
        } else {
            (
                &[
                    "Alice Example",
                    "Bob Builder",
                    "Carol Partner",
                    "Support Team",
                ][..],
                &[
                    "example.org",
                    "partner.example",
                    "mail.example.org",
                    "win-prize.top",
                ][..],
                HAM_WORDS,
                "https://wiki.example.org/meetings",
            )
        };
        let mut subject = Vec::new();
        for _ in 0..4 {
            subject.push(if rng.chance(50) {
                rng.pick(own)
            } else {
                rng.pick(COMMON_WORDS)
            });
        }
        let mut body = Vec::new();
        for i in 0..80 {
            if i % 12 == 11 {
                body.push("\r\n".to_owned());
            }
            let word = if rng.chance(30) {
                rng.pick(own)
            } else {
                rng.pick(COMMON_WORDS)
            };
            body.push(word.to_owned());
        }
        if rng.chance(70) {
            body.push(link.to_owned());
        }
        format!(
            "From: {} <user{}@{}>\r\nTo: bob@example.net\r\nSubject: {}\r\n\
             Message-ID: <{}@{}>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            rng.pick(names),
            rng.next() % 50,
            rng.pick(domains),
            subject.join(" "),
            rng.next(),
            rng.pick(domains),
            body.join(" "),
        )
    }

    fn trained(per_class: usize, seed: u64) -> BayesCounts {
        let mut rng = Rng(seed);
        let mut counts = BayesCounts::new();
        for _ in 0..per_class {
            counts.learn(&tokens_of(&generated(&mut rng, true)), BayesClass::Spam);
            counts.learn(&tokens_of(&generated(&mut rng, false)), BayesClass::Ham);
        }
        counts
    }

    fn scan(engine: &BayesEngine, raw: &str) -> Vec<Hit> {
        with_parsed(raw, &Contents::default(), |parsed| engine.scan(parsed).hits)
    }

    #[test]
    fn trained_classifier_separates_unseen_spam_and_ham() {
        let engine = BayesEngine::new(Arc::new(trained(300, 1)), 200);
        assert_eq!(engine.name(), "bayes");
        assert_eq!(engine.version(), "bayes:4 spam=300 ham=300");
        let mut rng = Rng(2);
        for _ in 0..50 {
            let spam = generated(&mut rng, true);
            let hits = scan(&engine, &spam);
            assert_eq!(hits.len(), 1, "{hits:?}");
            assert!(
                ["BAYES_95", "BAYES_99", "BAYES_999"].contains(&hits[0].symbol.as_str()),
                "{hits:?}\n{spam}"
            );
            assert!(hits[0].score >= 3.0);
            let probability: f64 = hits[0].description["Bayes spam probability ".len()..]
                .split(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap();
            assert!(probability >= 0.95, "{}", hits[0].description);

            let ham = generated(&mut rng, false);
            let hits = scan(&engine, &ham);
            assert_eq!(hits.len(), 1, "{hits:?}");
            assert!(
                ["BAYES_00", "BAYES_05"].contains(&hits[0].symbol.as_str()),
                "{hits:?}\n{ham}"
            );
            assert!(hits[0].score < 0.0);
        }
    }

    #[test]
    fn silent_below_the_training_minimum() {
        let counts = Arc::new(trained(150, 1));
        let engine = BayesEngine::new(counts.clone(), 200);
        assert_eq!(engine.version(), "bayes:4 spam=150 ham=150");
        let spam = generated(&mut Rng(2), true);
        assert!(scan(&engine, &spam).is_empty());
        assert_eq!(engine.classify(&tokens_of(&spam)), None);
        let engine = BayesEngine::new(counts, 150);
        assert_eq!(scan(&engine, &spam).len(), 1);
        let empty = BayesEngine::new(Arc::new(BayesCounts::new()), 0);
        assert!(scan(&empty, &spam).is_empty(), "nothing trained at all");
    }

    #[test]
    fn unknown_tokens_give_no_symbol() {
        let engine = BayesEngine::new(Arc::new(trained(200, 1)), 200);
        assert_eq!(engine.classify(&[1, 2, 3]), None);
        assert_eq!(engine.classify(&[]), None);
    }

    #[test]
    fn classification_does_not_depend_on_token_order() {
        let engine = BayesEngine::new(Arc::new(trained(200, 1)), 200);
        let mut tokens = tokens_of(&generated(&mut Rng(3), true));
        let forward = engine.classify(&tokens).unwrap();
        tokens.reverse();
        assert_eq!(engine.classify(&tokens).unwrap(), forward);
        assert!(forward.used <= MAX_INTERESTING && forward.used <= forward.known);
    }

    #[test]
    fn the_tokenizer_takes_messages_with_or_without_an_mbox_line_and_nothing_else() {
        let tokenizer = Tokenizer::new(Limits::default());
        let message = plain("Cheap VIAGRA now", KNOWN);
        let tokens = tokenizer.tokens(message.as_bytes());
        assert_eq!(tokens, tokens_of(&message));
        assert!(!tokens.is_empty());
        let mbox = format!("From alice@mail.example.org  Sat Nov 28 07:00:00 2026\r\n{message}");
        assert_eq!(tokenizer.tokens(mbox.as_bytes()), tokens);
        for not_a_message in [&b""[..], &[0xff; 64], b"hello world\r\n", b": no name\r\n"] {
            assert!(
                tokenizer.tokens(not_a_message).is_empty(),
                "{not_a_message:?}"
            );
        }
    }
}

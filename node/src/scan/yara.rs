//! The YARA engine: administrators' YARA rules, compiled in-process by boreal (a
//! pure-Rust YARA implementation), matched against the raw message and against
//! every file of it (MIME parts and archive members).
//!
//! Scores follow one convention, so that a rule file can carry both malware
//! signatures and weaker indicators:
//!
//! - a rule without a `score` metadata is a malware signature: its match is a
//!   [`FindingKind::Malware`] finding named `YARA:<rule>` and a `YARA_MATCH` hit of
//!   score 100;
//! - a rule with an integer `score` metadata (`meta: score = 40`) adds a
//!   `YARA_MATCH` hit of that score, and is a malware finding only when the score
//!   is 100 or more. A `score` that is not an integer is refused when loading.
//!
//! A rule counts once per message: its hit carries the score once and names every
//! place it matched, and each place is its own finding. (The raw message contains
//! its text parts verbatim, so a rule matching one would otherwise count twice.)
//!
//! The rule set is exactly the files listed: `include` is refused, so the rule
//! hash recorded in each verdict covers every rule that ran. Only boreal's built-in
//! modules that need no optional feature are available (`time`, `math`, `string`);
//! `pe`, `elf`, `hash` and `magic` are not compiled in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use boreal::compiler::{generate_description, CompilerParams};
use boreal::scanner::{ScanError, ScanParams};
use boreal::{Compiler, MetadataValue, Scanner};
use sha2::{Digest, Sha256};

use super::engine::{Engine, Finding, FindingKind, Hit, Outcome, Parsed};
use crate::policy::Source;

/// The library doing the matching, as recorded in verdicts; the same version as
/// pinned in `Cargo.toml`.
const BOREAL_VERSION: &str = "boreal 1.4.0";

/// The score of a match of a rule without a `score` metadata, and the score from
/// which a match is a malware finding.
const MALWARE_SCORE: i64 = 100;

/// The metadata that gives a rule its score.
const SCORE_META: &str = "score";

/// How long matching may take for one message unless
/// [`YaraEngine::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// YARA rules matched against a message's files.
pub struct YaraEngine {
    scanner: Scanner,
    /// Rules in the set (private and global rules included).
    rules: usize,
    /// The first 12 hex digits of the SHA-256 of the rule files' text.
    hash: String,
    /// Time allowed for all the matching of one message.
    timeout: Duration,
    /// What the compiler warned about, as `file:line:column: warning: ...`.
    warnings: Vec<String>,
}

/// Where one rule matched in one message, and what it weighs.
struct RuleMatch {
    score: i64,
    locations: Vec<String>,
}

impl YaraEngine {
    /// Compiles `rule_files` into one rule set (one namespace: rule names must be
    /// unique across files). An unreadable file, a syntax or compilation error, an
    /// `include` or a `score` metadata that is not an integer is an error; errors
    /// in the rules name the file, line and column.
    pub fn new(rule_files: &[Source]) -> Result<Self, String> {
        let mut compiler = Compiler::new();
        compiler.set_params(CompilerParams::default().disable_includes(true));
        let mut hasher = Sha256::new();
        let mut warnings = Vec::new();
        for file in rule_files {
            let (name, text) = (&file.name, &file.text);
            let status = compiler
                .add_rules_str(text)
                .map_err(|e| generate_description(&e.to_diagnostic(), name, text))?;
            warnings.extend(
                status
                    .warnings()
                    .map(|w| generate_description(&w.to_diagnostic(), name, text)),
            );
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        let scanner = compiler.finalize();
        for rule in scanner.rules() {
            for meta in rule.metadatas {
                if scanner.get_string_symbol(meta.name) == SCORE_META
                    && !matches!(meta.value, MetadataValue::Integer(_))
                {
                    return Err(format!(
                        "YARA rule {}: the {SCORE_META} metadata must be an integer",
                        rule.name
                    ));
                }
            }
        }
        let rules = scanner.rules().count();
        let digest = hasher.finalize();
        Ok(YaraEngine {
            scanner,
            rules,
            hash: hex::encode(&digest[..6]),
            timeout: DEFAULT_TIMEOUT,
            warnings,
        })
    }

    /// Sets the time allowed for all the matching of one message. Past it,
    /// matching stops: what matched so far is reported, with a `YARA_TIMEOUT` hit
    /// of score 0 saying where it stopped.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Rules in the set.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// What the compiler warned about (the rules still load), each as
    /// `file:line:column: warning: ...`, for the caller to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The hit saying that the time allowed ran out `when` (`in part 2`).
    fn timed_out(&self, when: &str) -> Hit {
        Hit::new(
            "YARA_TIMEOUT",
            0.0,
            format!(
                "matching stopped {when}: the {} ms allowed ran out",
                self.timeout.as_millis()
            ),
        )
    }

    /// The score a matching rule gives: its `score` metadata, or 100.
    fn score_of(&self, metadatas: &[boreal::Metadata]) -> i64 {
        metadatas
            .iter()
            .find(|m| self.scanner.get_string_symbol(m.name) == SCORE_META)
            .and_then(|m| match m.value {
                MetadataValue::Integer(score) => Some(score),
                _ => None,
            })
            .unwrap_or(MALWARE_SCORE)
    }
}

impl Engine for YaraEngine {
    fn name(&self) -> &'static str {
        "yara"
    }

    fn version(&self) -> String {
        format!(
            "{BOREAL_VERSION}; {} rules sha256:{}",
            self.rules, self.hash
        )
    }

    fn scan(&self, message: &Parsed<'_>) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        // The scanner is an `Arc` and a few parameters: a copy per message lets
        // each file get what remains of the message's time.
        let mut scanner = self.scanner.clone();
        let inputs = std::iter::once(("message", message.raw)).chain(
            message
                .contents
                .files
                .iter()
                .map(|f| (f.location.as_str(), f.data.as_slice())),
        );
        // Rule name → score and locations, in name order for a stable verdict.
        let mut matched: BTreeMap<String, RuleMatch> = BTreeMap::new();
        let mut outcome = Outcome::default();
        for (location, data) in inputs {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                outcome
                    .hits
                    .push(self.timed_out(&format!("before {location}")));
                break;
            }
            scanner.set_scan_params(ScanParams::default().timeout_duration(Some(remaining)));
            let (result, error) = match scanner.scan_mem(data) {
                Ok(result) => (result, None),
                Err((error, partial)) => (partial, Some(error)),
            };
            for rule in result.rules.iter().filter(|r| r.matched) {
                matched
                    .entry(rule.name.to_owned())
                    .or_insert_with(|| RuleMatch {
                        score: self.score_of(rule.metadatas),
                        locations: Vec::new(),
                    })
                    .locations
                    .push(location.to_owned());
            }
            if let Some(error) = error {
                outcome.hits.push(match error {
                    ScanError::Timeout => self.timed_out(&format!("in {location}")),
                    other => Hit::new(
                        "YARA_ERROR",
                        0.0,
                        format!("matching stopped in {location}: {other}"),
                    ),
                });
                break;
            }
        }
        for (rule, found) in matched {
            let mut description = format!("YARA rule {rule} matched {}", found.locations[0]);
            if found.locations.len() > 1 {
                description.push_str(&format!(" and {} more", found.locations.len() - 1));
            }
            outcome
                .hits
                .push(Hit::new("YARA_MATCH", found.score as f64, description));
            if found.score >= MALWARE_SCORE {
                outcome
                    .findings
                    .extend(found.locations.into_iter().map(|location| Finding {
                        kind: FindingKind::Malware,
                        name: format!("YARA:{rule}"),
                        location,
                    }));
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::contents::tests::{message_with, scan_raw, zip_of};
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn read(paths: &[PathBuf]) -> Vec<Source> {
        paths.iter().map(|p| Source::read(p).unwrap()).collect()
    }

    const RULES: &str = r#"
rule Bulwark_Test_Dropper
{
    meta:
        description = "a marker string of our own"
    strings:
        $marker = "BULWARK-YARA-TEST-MARKER"
    condition:
        $marker
}

rule Suspicious_Invoice
{
    meta:
        score = 40
    strings:
        $a = "urgent invoice payment" nocase
    condition:
        $a
}

private rule Helper
{
    strings:
        $h = "never reported on its own"
    condition:
        $h
}
"#;

    fn engine() -> (tempfile::TempDir, YaraEngine) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "test.yar", RULES);
        let engine = YaraEngine::new(&read(&[path])).unwrap();
        (dir, engine)
    }

    #[test]
    fn a_string_inside_a_zipped_attachment_is_malware() {
        let (_dir, engine) = engine();
        let zip = zip_of(&[(
            "docs/run.bin",
            b"padding BULWARK-YARA-TEST-MARKER padding".as_slice(),
        )]);
        let raw = message_with(&[("invoice.zip", "application/zip", &zip)]);
        let outcome = scan_raw(&engine, &raw);
        assert_eq!(
            outcome.findings,
            vec![Finding {
                kind: FindingKind::Malware,
                name: "YARA:Bulwark_Test_Dropper".into(),
                location: "part 2/docs/run.bin".into(),
            }]
        );
        assert_eq!(outcome.hits.len(), 1);
        assert_eq!(outcome.hits[0].symbol, "YARA_MATCH");
        assert_eq!(outcome.hits[0].score, 100.0);
        assert!(outcome.hits[0].description.contains("Bulwark_Test_Dropper"));
    }

    #[test]
    fn a_rule_in_the_body_and_the_raw_message_counts_once_with_both_places() {
        let (_dir, engine) = engine();
        let raw = b"From: a@example.org\r\nSubject: x\r\n\r\nBULWARK-YARA-TEST-MARKER\r\n";
        let outcome = scan_raw(&engine, raw);
        assert_eq!(outcome.hits.len(), 1);
        assert!(outcome.hits[0].description.ends_with("and 1 more"));
        let places: Vec<&str> = outcome
            .findings
            .iter()
            .map(|f| f.location.as_str())
            .collect();
        assert_eq!(places, ["message", "part 0"]);
    }

    #[test]
    fn a_rule_scored_below_100_adds_only_a_hit() {
        let (_dir, engine) = engine();
        let raw = message_with(&[(
            "note.txt",
            "text/plain",
            b"Please process this URGENT INVOICE PAYMENT today.".as_slice(),
        )]);
        let outcome = scan_raw(&engine, &raw);
        assert!(outcome.findings.is_empty(), "{:?}", outcome.findings);
        assert_eq!(outcome.hits.len(), 1);
        assert_eq!(outcome.hits[0].symbol, "YARA_MATCH");
        assert_eq!(outcome.hits[0].score, 40.0);
        assert!(outcome.hits[0].description.contains("Suspicious_Invoice"));
    }

    #[test]
    fn a_clean_message_matches_nothing() {
        let (_dir, engine) = engine();
        let zip = zip_of(&[("readme.txt", b"nothing to see, never reported".as_slice())]);
        let raw = message_with(&[("files.zip", "application/zip", &zip)]);
        let outcome = scan_raw(&engine, &raw);
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
        assert!(outcome.findings.is_empty());
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.yar", RULES);
        let bad = write(
            dir.path(),
            "bad.yar",
            "rule Fine { condition: true }\n\nrule Broken {\n  strings:\n    $a = \"x\n  condition: $a\n}\n",
        );
        let error = YaraEngine::new(&read(&[good, bad])).err().unwrap();
        let prefix = "bad.yar:5:";
        assert!(error.starts_with(prefix), "{error}");
    }

    #[test]
    fn a_missing_file_an_include_and_a_text_score_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yar");
        let error = Source::read(&missing).unwrap_err();
        assert!(error.contains("missing.yar: cannot read"), "{error}");

        let other = write(dir.path(), "other.yar", "rule Other { condition: true }\n");
        let include = write(
            dir.path(),
            "index.yar",
            &format!("include \"{}\"\n", other.display()),
        );
        let error = YaraEngine::new(&read(&[include])).err().unwrap();
        assert!(error.starts_with("index.yar:1:"), "{error}");

        let text_score = write(
            dir.path(),
            "score.yar",
            "rule Text_Score { meta: score = \"40\" condition: true }\n",
        );
        let error = YaraEngine::new(&read(&[text_score])).err().unwrap();
        assert!(error.contains("Text_Score"), "{error}");
    }

    #[test]
    fn the_version_names_boreal_the_rule_count_and_a_hash_of_the_rules() {
        let (dir, engine) = engine();
        assert_eq!(engine.rules(), 3);
        assert!(engine.warnings().is_empty(), "{:?}", engine.warnings());
        let version = engine.version();
        assert!(
            version.starts_with("boreal 1.4.0; 3 rules sha256:"),
            "{version}"
        );
        let changed = write(dir.path(), "changed.yar", &RULES.replace("40", "41"));
        let other = YaraEngine::new(&read(&[changed])).unwrap();
        assert_ne!(other.version(), version);
    }

    #[test]
    fn running_out_of_time_is_reported_not_hung() {
        let (_dir, engine) = engine();
        let engine = engine.with_timeout(Duration::ZERO);
        let outcome = scan_raw(&engine, &message_with(&[]));
        assert_eq!(outcome.hits.len(), 1, "{:?}", outcome.hits);
        assert_eq!(outcome.hits[0].symbol, "YARA_TIMEOUT");
        assert_eq!(outcome.hits[0].score, 0.0);
    }
}

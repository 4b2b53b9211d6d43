//! The rule language: the part of SpamAssassin's rule syntax that maps cleanly onto
//! Rust's `regex` crate, read from text and compiled once.
//!
//! Understood: `header` (`Name =~ /re/`, `!~`, `exists:Name`, `ALL`, `ToCc`, the
//! `:raw`, `:addr` and `:name` forms, `[if-unset: ...]`), `body`, `rawbody`, `uri`,
//! `full`, `meta`, `score`, `describe`, `#` comments. Lines that are valid
//! SpamAssassin but mean nothing here (`tflags`, `lang`, `if`, `ifplugin`, `eval:`
//! tests, other settings) and patterns the `regex` crate cannot compile
//! (backreferences, lookaround) are skipped with a note; anything else that does not
//! parse is an error naming the file and line.

use std::collections::HashMap;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::super::engine::is_engine_symbol;
use super::heuristics::Heuristic;

/// The most memory one compiled pattern or pattern set may take.
const REGEX_SIZE_LIMIT: usize = 64 << 20;

/// Which text a pattern rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Area {
    Body,
    RawBody,
    Uri,
    Full,
}

/// Which header values a `header` rule reads.
#[derive(Debug)]
pub(super) enum HeaderSource {
    /// Every header as `Name: value` lines.
    All,
    /// The values of the named headers (lowercase), one a line.
    Named {
        names: Vec<String>,
        form: HeaderForm,
    },
}

/// How a header value is presented to a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeaderForm {
    /// Unfolded, RFC 2047 words decoded.
    Decoded,
    /// As sent, folding included.
    Raw,
    /// The addresses only.
    Addr,
    /// The display names only.
    Name,
}

/// What a `header` rule tests.
#[derive(Debug)]
pub(super) enum HeaderTest {
    Exists,
    Matches {
        regex: Regex,
        negate: bool,
        if_unset: Option<String>,
    },
}

/// A meta expression over other rules.
#[derive(Debug)]
pub(super) enum Expr {
    Number(f64),
    /// A rule name before the rule set is complete.
    Name(String),
    /// A rule, by index, once resolved.
    Rule(usize),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// A binary operator of a meta expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

/// What a rule tests.
#[derive(Debug)]
pub(super) enum Test {
    Header {
        source: HeaderSource,
        test: HeaderTest,
    },
    /// A pattern over an area; it is compiled into that area's [`AreaSet`].
    Pattern {
        area: Area,
        pattern: String,
    },
    Meta(Expr),
    /// A check written in Rust (see `heuristics.rs`).
    Builtin(Heuristic),
    /// A meta rule that depends on itself: never fires.
    Never,
}

/// A score as SpamAssassin sets it: one value, or one per score set. Bulwark always
/// asks DNS (authentication), so of SpamAssassin's four sets it takes the two with
/// network tests: the second while the Bayesian classifier is silent (untrained or
/// off), the fourth while it judges. `score NAME 2.0` is 2.0 in both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub without_bayes: f64,
    pub with_bayes: f64,
}

impl Scores {
    pub fn both(score: f64) -> Scores {
        Scores {
            without_bayes: score,
            with_bayes: score,
        }
    }

    /// The score of the set in force: with the classifier judging or without.
    pub fn get(self, bayes: bool) -> f64 {
        if bayes {
            self.with_bayes
        } else {
            self.without_bayes
        }
    }
}

/// One named rule.
#[derive(Debug)]
pub(super) struct Rule {
    pub name: String,
    pub score: Scores,
    pub description: String,
    pub test: Test,
}

/// The pattern rules of one area.
#[derive(Debug)]
pub(super) struct AreaSet {
    matcher: Matcher,
    rules: Vec<usize>,
}

/// How an area's patterns are matched against a text.
///
/// A [`RegexSet`] runs one automaton over the whole text, about 2 ns a byte whatever
/// the patterns (a 50 KB body takes ~0.1 ms). A single pattern that starts with
/// literals is found by a literal search that skips most of the text, 10 to 50 times
/// faster. So an area whose every pattern starts with literals (the HTML tags of
/// `rawbody`, say) is matched pattern by pattern; an area with any pattern that must
/// be run as an automaton is matched as one set, since that pass is paid anyway.
/// Each literal search still reads the text (on spam's text a twentieth to a
/// thirtieth of the set's pass), so an area of more than [`MAX_PATTERN_BY_PATTERN`]
/// patterns stays a set, whose one pass does not grow with them.
/// `uri` patterns read one URL at a time, where a call per pattern costs more than
/// the set's pass over a few dozen bytes (6x on spam-2's 8,518 URLs): always a set.
#[derive(Debug)]
enum Matcher {
    Set(RegexSet),
    Each(Vec<Regex>),
}

/// The shortest literal a pattern may start with and still be searched by its
/// literals alone: one or two bytes occur too often in text to skip much of it.
const MIN_LEADING_LITERAL: usize = 3;

/// The most patterns an area is matched one by one (the built-in rawbody rules are
/// 11: on 60 KB of spam's text, 14–62 µs one by one, 110–195 µs as a set).
const MAX_PATTERN_BY_PATTERN: usize = 16;

impl AreaSet {
    fn new(area: Area, patterns: Vec<String>, rules: Vec<usize>) -> Result<Self, String> {
        let long_texts = area != Area::Uri;
        let matcher = if long_texts
            && patterns.len() <= MAX_PATTERN_BY_PATTERN
            && patterns.iter().all(|p| starts_with_literals(p))
        {
            let each = patterns
                .iter()
                .map(|p| RegexBuilder::new(p).size_limit(REGEX_SIZE_LIMIT).build())
                .collect::<Result<_, _>>();
            Matcher::Each(each.map_err(|e| one_line(&e))?)
        } else {
            let set = RegexSetBuilder::new(&patterns)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build();
            Matcher::Set(set.map_err(|e| one_line(&e))?)
        };
        Ok(AreaSet { matcher, rules })
    }

    /// Marks in `fired` every rule whose pattern matches `haystack`.
    pub fn mark(&self, haystack: &[u8], fired: &mut [bool]) {
        match &self.matcher {
            Matcher::Set(set) => {
                for i in set.matches(haystack).iter() {
                    fired[self.rules[i]] = true;
                }
            }
            Matcher::Each(each) => {
                for (regex, &rule) in each.iter().zip(&self.rules) {
                    if regex.is_match(haystack) {
                        fired[rule] = true;
                    }
                }
            }
        }
    }

    /// Whether the area is matched pattern by pattern.
    #[cfg(test)]
    fn pattern_by_pattern(&self) -> bool {
        matches!(self.matcher, Matcher::Each(_))
    }
}

/// Whether every match of `pattern` starts with one of a finite set of literals of
/// at least [`MIN_LEADING_LITERAL`] bytes, which a literal search can look for.
fn starts_with_literals(pattern: &str) -> bool {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
    else {
        return false;
    };
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    prefixes.is_finite()
        && prefixes
            .min_literal_len()
            .is_some_and(|len| len >= MIN_LEADING_LITERAL)
}

/// The compiled rule set.
#[derive(Debug)]
pub(super) struct RuleSet {
    pub rules: Vec<Rule>,
    pub body: AreaSet,
    pub rawbody: AreaSet,
    pub uri: AreaSet,
    pub full: AreaSet,
    /// Meta rules (indexes) in an order where each comes after those it reads.
    pub meta_order: Vec<usize>,
    /// Scores set for the symbols of other engines (`score BAYES_99 3.5`).
    pub engine_scores: HashMap<String, Scores>,
}

impl RuleSet {
    /// Evaluates the meta rules once every other rule's result is in `fired`.
    pub fn evaluate_metas(&self, fired: &mut [bool]) {
        for &index in &self.meta_order {
            if let Test::Meta(expr) = &self.rules[index].test {
                fired[index] = eval(expr, fired) != 0.0;
            }
        }
    }
}

fn eval(expr: &Expr, fired: &[bool]) -> f64 {
    let truth = |b: bool| if b { 1.0 } else { 0.0 };
    match expr {
        Expr::Number(n) => *n,
        Expr::Name(_) => 0.0,
        Expr::Rule(i) => truth(fired[*i]),
        Expr::Not(e) => truth(eval(e, fired) == 0.0),
        Expr::Negate(e) => -eval(e, fired),
        Expr::Binary(op, a, b) => {
            let a = eval(a, fired);
            // Short-circuit like Perl.
            match op {
                Op::Or if a != 0.0 => return a,
                Op::And if a == 0.0 => return 0.0,
                _ => {}
            }
            let b = eval(b, fired);
            match op {
                Op::Or | Op::And => b,
                Op::Eq => truth(a == b),
                Op::Ne => truth(a != b),
                Op::Lt => truth(a < b),
                Op::Le => truth(a <= b),
                Op::Gt => truth(a > b),
                Op::Ge => truth(a >= b),
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
                Op::Div if b == 0.0 => 0.0,
                Op::Div => a / b,
            }
        }
    }
}

/// A rule as defined, with where it was defined.
struct Definition {
    test: Test,
    origin: String,
}

/// Reads rule files in order; later definitions, scores and descriptions win.
pub(super) struct Loader {
    names: Vec<String>,
    index: HashMap<String, usize>,
    definitions: Vec<Definition>,
    scores: HashMap<String, (Scores, String)>,
    descriptions: HashMap<String, String>,
    notes: Vec<String>,
}

impl Loader {
    /// A loader that knows the checks written in Rust by name.
    pub fn new(builtins: &[(&str, Heuristic)]) -> Self {
        let mut loader = Loader {
            names: Vec::new(),
            index: HashMap::new(),
            definitions: Vec::new(),
            scores: HashMap::new(),
            descriptions: HashMap::new(),
            notes: Vec::new(),
        };
        for (name, heuristic) in builtins {
            loader.define(name, Test::Builtin(*heuristic), "built-in check".to_owned());
        }
        loader
    }

    fn define(&mut self, name: &str, test: Test, origin: String) {
        let definition = Definition { test, origin };
        match self.index.get(name) {
            Some(&i) => self.definitions[i] = definition,
            None => {
                self.index.insert(name.to_owned(), self.names.len());
                self.names.push(name.to_owned());
                self.definitions.push(definition);
            }
        }
    }

    /// Reads one file's text; `file` names it in notes and errors.
    pub fn load(&mut self, file: &str, text: &str) -> Result<(), String> {
        for (number, line) in text.lines().enumerate() {
            let origin = format!("{file}:{}", number + 1);
            match self.line(line, &origin) {
                Ok(None) => {}
                Ok(Some(note)) => self.notes.push(format!("{origin}: {note}")),
                Err(e) => return Err(format!("{origin}: {e}")),
            }
        }
        Ok(())
    }

    /// Reads one line: `Ok(Some(note))` when it is skipped.
    fn line(&mut self, line: &str, origin: &str) -> Result<Option<String>, String> {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            return Ok(None);
        }
        let (directive, rest) = split_word(line);
        let directive = directive.to_ascii_lowercase();
        if !directive
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || !directive.as_bytes()[0].is_ascii_lowercase()
        {
            return Err(format!("not a rule or setting: {line:?}"));
        }
        let area = match directive.as_str() {
            "body" => Some(Area::Body),
            "rawbody" => Some(Area::RawBody),
            "uri" => Some(Area::Uri),
            "full" => Some(Area::Full),
            _ => None,
        };
        match directive.as_str() {
            "header" | "body" | "rawbody" | "uri" | "full" | "meta" => {
                let (name, spec) = split_word(rest);
                check_name(name)?;
                if spec.is_empty() {
                    return Err(format!("{directive} {name}: the test is missing"));
                }
                if spec.starts_with("eval:") {
                    return Ok(Some(format!(
                        "{directive} {name}: eval tests belong to SpamAssassin plugins; skipped"
                    )));
                }
                let test = match (directive.as_str(), area) {
                    ("header", _) => match header_test(spec)? {
                        Ok(test) => test,
                        Err(why) => return Ok(Some(format!("header {name}: {why}; skipped"))),
                    },
                    ("meta", _) => Test::Meta(parse_meta(spec)?),
                    (_, Some(area)) => {
                        let (pattern, flags, rest) = split_pattern(spec)?;
                        if !rest.is_empty() {
                            return Err(format!("{directive} {name}: text after the pattern"));
                        }
                        // Body and rawbody rules match line by line in SpamAssassin:
                        // `^` and `$` anchor at lines here too.
                        let line_anchors = matches!(area, Area::Body | Area::RawBody);
                        match to_rust_pattern(pattern, flags, line_anchors) {
                            Ok(pattern) => Test::Pattern { area, pattern },
                            Err(why) => {
                                return Ok(Some(format!("{directive} {name}: {why}; skipped")))
                            }
                        }
                    }
                    _ => unreachable!("every pattern directive has an area"),
                };
                self.define(name, test, origin.to_owned());
                Ok(None)
            }
            "score" => {
                let (name, values) = split_word(rest);
                check_name(name)?;
                let values = values
                    .split_whitespace()
                    .map(|v| {
                        v.trim_start_matches('(')
                            .trim_end_matches(')')
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| format!("score {name}: {v:?} is not a number"))
                    })
                    .collect::<Result<Vec<f64>, String>>()?;
                let scores = match values[..] {
                    [score] => Scores::both(score),
                    [_, without_bayes, _, with_bayes] => Scores {
                        without_bayes,
                        with_bayes,
                    },
                    _ => {
                        return Err(format!(
                            "score {name}: one score, or four (SpamAssassin's score sets), not {}",
                            values.len()
                        ))
                    }
                };
                self.scores
                    .insert(name.to_owned(), (scores, origin.to_owned()));
                Ok(None)
            }
            "describe" => {
                let (name, text) = split_word(rest);
                check_name(name)?;
                self.descriptions.insert(name.to_owned(), text.to_owned());
                Ok(None)
            }
            "tflags" | "lang" | "if" | "ifplugin" | "else" | "endif" | "priority" => Ok(Some(
                format!("{directive} is not used by Bulwark's rule engine; skipped"),
            )),
            _ => Ok(Some(format!("{directive}: unsupported setting; skipped"))),
        }
    }

    /// Compiles every rule; returns the set and the notes on what was skipped.
    pub fn finish(self) -> Result<(RuleSet, Vec<String>), String> {
        let Loader {
            names,
            index,
            definitions,
            mut scores,
            mut descriptions,
            mut notes,
        } = self;
        let mut rules = Vec::with_capacity(names.len());
        let mut patterns: HashMap<Area, (Vec<String>, Vec<usize>)> = HashMap::new();
        for (i, (name, definition)) in names.into_iter().zip(definitions).enumerate() {
            let mut test = definition.test;
            match &mut test {
                Test::Pattern { area, pattern } => {
                    let entry = patterns.entry(*area).or_default();
                    entry.0.push(pattern.clone());
                    entry.1.push(i);
                }
                Test::Meta(expr) => resolve(expr, &index, &name, &definition.origin, &mut notes),
                _ => {}
            }
            let score = match scores.remove(&name) {
                Some((score, _)) => score,
                None if name.starts_with("__") => Scores::both(0.0),
                None => Scores::both(1.0),
            };
            let description = descriptions.remove(&name).unwrap_or_else(|| name.clone());
            rules.push(Rule {
                name,
                score,
                description,
                test,
            });
        }
        let mut unknown: Vec<_> = scores.into_iter().collect();
        unknown.sort_by(|a, b| a.1 .1.cmp(&b.1 .1));
        let mut engine_scores = HashMap::new();
        for (name, (score, origin)) in unknown {
            if is_engine_symbol(&name) {
                engine_scores.insert(name, score);
            } else {
                notes.push(format!(
                    "{origin}: score for {name}, neither a rule nor a symbol of another engine; ignored"
                ));
            }
        }
        let meta_order = order_metas(&mut rules, &mut notes);
        let mut area = |which: Area| -> Result<AreaSet, String> {
            let (list, rules) = patterns.remove(&which).unwrap_or_default();
            AreaSet::new(which, list, rules)
                .map_err(|e| format!("the {which:?} patterns do not compile together: {e}"))
        };
        let set = RuleSet {
            body: area(Area::Body)?,
            rawbody: area(Area::RawBody)?,
            uri: area(Area::Uri)?,
            full: area(Area::Full)?,
            rules,
            meta_order,
            engine_scores,
        };
        Ok((set, notes))
    }
}

/// Replaces rule names by indexes; unknown names count as rules that never fire.
fn resolve(
    expr: &mut Expr,
    index: &HashMap<String, usize>,
    rule: &str,
    origin: &str,
    notes: &mut Vec<String>,
) {
    match expr {
        Expr::Name(name) => match index.get(name.as_str()) {
            Some(&i) => *expr = Expr::Rule(i),
            None => {
                notes.push(format!(
                    "{origin}: meta {rule} reads {name}, a rule not defined; it counts as false"
                ));
                *expr = Expr::Number(0.0);
            }
        },
        Expr::Not(e) | Expr::Negate(e) => resolve(e, index, rule, origin, notes),
        Expr::Binary(_, a, b) => {
            resolve(a, index, rule, origin, notes);
            resolve(b, index, rule, origin, notes);
        }
        Expr::Number(_) | Expr::Rule(_) => {}
    }
}

/// Orders the meta rules so each follows those it reads; a meta rule in a cycle is
/// disabled with a note.
fn order_metas(rules: &mut [Rule], notes: &mut Vec<String>) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn deps(expr: &Expr, out: &mut Vec<usize>) {
        match expr {
            Expr::Rule(i) => out.push(*i),
            Expr::Not(e) | Expr::Negate(e) => deps(e, out),
            Expr::Binary(_, a, b) => {
                deps(a, out);
                deps(b, out);
            }
            Expr::Number(_) | Expr::Name(_) => {}
        }
    }
    let mut marks = vec![Mark::New; rules.len()];
    let mut order = Vec::new();
    let mut cyclic = Vec::new();
    for start in 0..rules.len() {
        if !matches!(rules[start].test, Test::Meta(_)) || marks[start] != Mark::New {
            continue;
        }
        // Depth-first, with an explicit stack of (rule, its dependencies, next one).
        let mut stack: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        let open = |i: usize, marks: &mut Vec<Mark>| {
            marks[i] = Mark::Open;
            let mut d = Vec::new();
            if let Test::Meta(expr) = &rules[i].test {
                deps(expr, &mut d);
            }
            (i, d, 0)
        };
        stack.push(open(start, &mut marks));
        while let Some((rule, dependencies, next)) = stack.last_mut() {
            if let Some(&dep) = dependencies.get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::Open => cyclic.push(dep),
                    Mark::New if matches!(rules[dep].test, Test::Meta(_)) => {
                        let frame = open(dep, &mut marks);
                        stack.push(frame);
                    }
                    _ => {}
                }
            } else {
                let rule = *rule;
                marks[rule] = Mark::Done;
                order.push(rule);
                stack.pop();
            }
        }
    }
    cyclic.sort_unstable();
    cyclic.dedup();
    for i in cyclic {
        notes.push(format!(
            "meta {} depends on itself; disabled",
            rules[i].name
        ));
        rules[i].test = Test::Never;
        order.retain(|&o| o != i);
    }
    order
}

/// Drops a `#` comment; `\#` is a literal `#`.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'#' => return &line[..i],
            _ => i += 1,
        }
    }
    line
}

/// The first word and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a rule name"))
    }
}

/// Parses a `header` test. The outer error is a malformed line; the inner one a valid
/// line this engine skips.
fn header_test(spec: &str) -> Result<Result<Test, String>, String> {
    if let Some(name) = spec.strip_prefix("exists:") {
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("exists:{name} does not name one header"));
        }
        return Ok(Ok(Test::Header {
            source: HeaderSource::Named {
                names: vec![name.to_ascii_lowercase()],
                form: HeaderForm::Decoded,
            },
            test: HeaderTest::Exists,
        }));
    }
    let (target, rest) = split_word(spec);
    let (operator, pattern) = split_word(rest);
    let negate = match operator {
        "=~" => false,
        "!~" => true,
        _ => {
            return Err(format!(
                "expected =~ or !~ after {target}, found {operator:?}"
            ))
        }
    };
    let (header, form) = match target.split_once(':') {
        None => (target, HeaderForm::Decoded),
        Some((header, "raw")) => (header, HeaderForm::Raw),
        Some((header, "addr")) => (header, HeaderForm::Addr),
        Some((header, "name")) => (header, HeaderForm::Name),
        Some((_, other)) => return Ok(Err(format!("the :{other} header form is not supported"))),
    };
    let source = match header {
        "ALL" => HeaderSource::All,
        "ToCc" => HeaderSource::Named {
            names: vec!["to".to_owned(), "cc".to_owned()],
            form,
        },
        _ => HeaderSource::Named {
            names: vec![header.to_ascii_lowercase()],
            form,
        },
    };
    let (pattern, flags, rest) = split_pattern(pattern)?;
    let if_unset = if rest.is_empty() {
        None
    } else {
        let value = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.trim().strip_prefix("if-unset:"))
            .ok_or_else(|| format!("unexpected text after the pattern: {rest:?}"))?;
        Some(value.trim().to_owned())
    };
    let pattern = match to_rust_pattern(pattern, flags, false) {
        Ok(pattern) => pattern,
        Err(why) => return Ok(Err(why)),
    };
    let regex = match RegexBuilder::new(&pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(regex) => regex,
        Err(e) => {
            return Ok(Err(format!(
                "the pattern does not compile: {}",
                one_line(&e)
            )))
        }
    };
    Ok(Ok(Test::Header {
        source,
        test: HeaderTest::Matches {
            regex,
            negate,
            if_unset,
        },
    }))
}

/// Splits `/re/flags rest` or `m{re}flags rest` into pattern, flags and the rest.
fn split_pattern(spec: &str) -> Result<(&str, &str, &str), String> {
    let (open, start) = if spec.starts_with('/') {
        ('/', 1)
    } else if let Some(delimiter) = spec.strip_prefix('m').and_then(|r| r.chars().next()) {
        if delimiter.is_alphanumeric() || delimiter.is_whitespace() {
            return Err(format!("not a pattern: {spec:?}"));
        }
        (delimiter, 1 + delimiter.len_utf8())
    } else {
        return Err(format!("not a pattern: {spec:?}"));
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        other => other,
    };
    let mut depth = 0usize;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in spec[start..].char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == close && depth == 0 {
            end = Some(start + i);
            break;
        } else if c == close {
            depth -= 1;
        } else if c == open && open != close {
            depth += 1;
        }
    }
    let end = end.ok_or_else(|| format!("the pattern is not closed: {spec:?}"))?;
    let pattern = &spec[start..end];
    let after = &spec[end + close.len_utf8()..];
    let flags_end = after
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(after.len());
    Ok((pattern, &after[..flags_end], after[flags_end..].trim()))
}

/// Turns a Perl pattern and its flags into a pattern for the `regex` crate, or says
/// why it cannot be used.
fn to_rust_pattern(pattern: &str, flags: &str, line_anchors: bool) -> Result<String, String> {
    let mut inline = String::new();
    for flag in flags.chars() {
        match flag {
            'i' | 'm' | 's' | 'x' => inline.push(flag),
            other => return Err(format!("the /{other} flag is not supported")),
        }
    }
    if line_anchors && !inline.contains('m') {
        inline.push('m');
    }
    let mut rust = String::with_capacity(pattern.len() + 8);
    if !inline.is_empty() {
        rust.push_str("(?");
        rust.push_str(&inline);
        rust.push(')');
    }
    // `\/` and `\@` are Perl escapes of the delimiter and of interpolation. Word
    // boundaries are made ASCII ones, as in Perl on bytes: a Unicode `\b` stops the
    // fast DFA at the first non-ASCII byte and makes non-English mail ~30x slower.
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('/') => rust.push('/'),
                Some('@') => rust.push('@'),
                Some(boundary @ ('b' | 'B')) if !in_class => {
                    rust.push_str("(?-u:\\");
                    rust.push(boundary);
                    rust.push(')');
                }
                Some(next) => {
                    rust.push('\\');
                    rust.push(next);
                }
                None => rust.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                rust.push('[');
                // A `]` first in a class (after an optional `^`) is literal.
                if chars.peek() == Some(&'^') {
                    rust.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    rust.push_str("\\]");
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                rust.push(']');
            }
            _ => rust.push(c),
        }
    }
    match RegexBuilder::new(&rust)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(_) => Ok(rust),
        Err(e) => Err(format!("the pattern does not compile: {}", one_line(&e))),
    }
}

/// The last line of a regex error, which says what is wrong.
fn one_line(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid pattern")
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// Parses a meta expression.
fn parse_meta(text: &str) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = MetaParser { tokens, pos: 0 };
    let expr = parser.or()?;
    match parser.tokens.get(parser.pos) {
        None => Ok(expr),
        Some(token) => Err(format!("unexpected {token:?} in meta expression")),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Op(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    const OPERATORS: &[&str] = &[
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "(", ")",
    ];
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_ascii_digit() || c == '.' {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number = rest[..end]
                .parse::<f64>()
                .map_err(|_| format!("{:?} is not a number", &rest[..end]))?;
            tokens.push(Token::Number(number));
            rest = &rest[end..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            tokens.push(Token::Name(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if let Some(op) = OPERATORS.iter().find(|op| rest.starts_with(**op)) {
            tokens.push(Token::Op(op));
            rest = &rest[op.len()..];
        } else {
            return Err(format!("unexpected {c:?} in meta expression"));
        }
        rest = rest.trim_start();
    }
    if tokens.is_empty() {
        return Err("empty meta expression".to_owned());
    }
    Ok(tokens)
}

/// Precedence climbing, loosest first: `||`, `&&`, comparisons, `+ -`, `* /`, unary.
struct MetaParser {
    tokens: Vec<Token>,
    pos: usize,
}

impl MetaParser {
    fn peek_op(&self, ops: &[(&str, Op)]) -> Option<Op> {
        match self.tokens.get(self.pos) {
            Some(Token::Op(op)) => ops.iter().find(|(s, _)| s == op).map(|(_, o)| *o),
            _ => None,
        }
    }

    fn level(
        &mut self,
        ops: &[(&str, Op)],
        next: fn(&mut Self) -> Result<Expr, String>,
    ) -> Result<Expr, String> {
        let mut left = next(self)?;
        while let Some(op) = self.peek_op(ops) {
            self.pos += 1;
            let right = next(self)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, String> {
        self.level(&[("||", Op::Or)], Self::and)
    }

    fn and(&mut self) -> Result<Expr, String> {
        self.level(&[("&&", Op::And)], Self::comparison)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        self.level(
            &[
                ("==", Op::Eq),
                ("!=", Op::Ne),
                ("<=", Op::Le),
                (">=", Op::Ge),
                ("<", Op::Lt),
                (">", Op::Gt),
            ],
            Self::sum,
        )
    }

    fn sum(&mut self) -> Result<Expr, String> {
        self.level(&[("+", Op::Add), ("-", Op::Sub)], Self::product)
    }

    fn product(&mut self) -> Result<Expr, String> {
        self.level(&[("*", Op::Mul), ("/", Op::Div)], Self::unary)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        match token {
            Some(Token::Op("!")) => Ok(Expr::Not(Box::new(self.unary()?))),
            Some(Token::Op("-")) => Ok(Expr::Negate(Box::new(self.unary()?))),
            Some(Token::Op("(")) => {
                let inner = self.or()?;
                match self.tokens.get(self.pos) {
                    Some(Token::Op(")")) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err("missing ) in meta expression".to_owned()),
                }
            }
            Some(Token::Number(n)) => Ok(Expr::Number(n)),
            Some(Token::Name(name)) => Ok(Expr::Name(name)),
            Some(Token::Op(op)) => Err(format!("unexpected {op:?} in meta expression")),
            None => Err("meta expression ends too early".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{heuristics::BUILTINS, DEFAULT_RULES};
    use super::*;

    fn built_in() -> RuleSet {
        let mut loader = Loader::new(BUILTINS);
        loader.load("default.cf", DEFAULT_RULES).unwrap();
        loader.finish().unwrap().0
    }

    /// The built-in patterns of `area`, with their rules' indexes.
    fn patterns_of(rules: &RuleSet, which: Area) -> (Vec<String>, Vec<usize>) {
        let mut out = (Vec::new(), Vec::new());
        for (i, rule) in rules.rules.iter().enumerate() {
            if let Test::Pattern { area, pattern } = &rule.test {
                if *area == which {
                    out.0.push(pattern.clone());
                    out.1.push(i);
                }
            }
        }
        out
    }

    fn fired(area: &AreaSet, text: &[u8], rules: usize) -> Vec<usize> {
        let mut fired = vec![false; rules];
        area.mark(text, &mut fired);
        (0..rules).filter(|&i| fired[i]).collect()
    }

    #[test]
    fn which_patterns_start_with_literals() {
        for pattern in [
            "(?im)<script(?-u:\\b)",
            "(?im)<center(?-u:\\b)|align=[\"']?center",
            "(?im)window\\.open\\s*\\(",
            "(?im)^dear (?:friend|sir)",
            "(?m)!{4,}",
        ] {
            assert!(starts_with_literals(pattern), "{pattern}");
        }
        for pattern in [
            "(?m)\\$\\$+",                  // two bytes: too common to skip text
            "(?im)[a-z]+ million",          // a class too large to list
            "(?m)^[A-Z0-9 ,.!?$%'-]{60,}$", // the same
            "(?i)(?:xyz|)ab",               // may start with two bytes only
            "(?m)(?:!.*){6}",
            "(",
        ] {
            assert!(!starts_with_literals(pattern), "{pattern}");
        }
    }

    #[test]
    fn an_area_of_long_texts_is_matched_pattern_by_pattern_only_when_every_pattern_starts_with_literals(
    ) {
        let rules = built_in();
        // The built-in rawbody rules look for HTML tags and attributes; the body rules
        // include patterns such as runs of capitals that no literal search can find.
        assert!(rules.rawbody.pattern_by_pattern());
        assert!(!rules.body.pattern_by_pattern());
        let (patterns, indexes) = patterns_of(&rules, Area::RawBody);
        assert!(patterns.len() >= 10);
        // The same patterns over URLs, one short text at a time, stay one set.
        let (uri, uri_rules) = patterns_of(&rules, Area::Uri);
        assert!(uri.iter().all(|p| starts_with_literals(p)));
        assert!(!rules.uri.pattern_by_pattern());
        let as_uri = AreaSet::new(Area::Uri, patterns.clone(), indexes.clone()).unwrap();
        assert!(!as_uri.pattern_by_pattern());
        assert!(AreaSet::new(Area::Full, uri, uri_rules)
            .unwrap()
            .pattern_by_pattern());

        let mut mixed = patterns.clone();
        mixed.push("(?m)\\$\\$+".to_string());
        let mut mixed_rules = indexes.clone();
        mixed_rules.push(rules.rules.len());
        let mixed = AreaSet::new(Area::RawBody, mixed, mixed_rules).unwrap();
        assert!(!mixed.pattern_by_pattern());
        // Too many literal searches cost more than the set's one pass.
        let many: Vec<String> = (0..=MAX_PATTERN_BY_PATTERN)
            .map(|i| format!("(?i)<tag{i}\\b"))
            .collect();
        let many_rules = (0..many.len()).collect();
        assert!(many.iter().all(|p| starts_with_literals(p)));
        let many = AreaSet::new(Area::RawBody, many, many_rules).unwrap();
        assert!(!many.pattern_by_pattern());
        let empty = AreaSet::new(Area::RawBody, Vec::new(), Vec::new()).unwrap();
        assert_eq!(fired(&empty, b"<script>", 0), Vec::<usize>::new());
    }

    /// Pattern by pattern or as one set, every built-in area finds the same rules in
    /// the same texts: HTML that fires the rawbody rules, body text that fires the body
    /// rules, Latin-1 bytes, an empty text and a large one.
    #[test]
    fn matching_pattern_by_pattern_finds_what_the_set_finds() {
        let rules = built_in();
        let mut large = b"<html><body bgcolor=white>".to_vec();
        while large.len() < 60_000 {
            large.extend_from_slice(b"Plain words of a newsletter, nothing more.\n");
        }
        large.extend_from_slice(b"<CENTER><font size=+3 color=red>CLICK HERE</font>\n");
        large.extend_from_slice(b"<img width=1 height=1 src='https://t.example/p.gif'>");
        let texts: [&[u8]; 7] = [
            b"",
            b"<html><body bgcolor=\"#fff\"><script>window.open ('x')</script></body>",
            b"<form action=x><iframe src=y><font color=\"#FF0000\">Act now!!!!</font>",
            b"Dear friend,\nclick here to verify your account: $$$ 100% guaranteed\n",
            b"caf\xe9 <SCRIPT>\xff\xfe charset=\"big5\" align='center'",
            b"WIN WIN WIN MONEY FREE CASH NOW TODAY!!!! $1,000,000 million dollars",
            &large,
        ];
        for which in [Area::Body, Area::RawBody, Area::Uri] {
            let (patterns, indexes) = patterns_of(&rules, which);
            let set = AreaSet {
                matcher: Matcher::Set(RegexSetBuilder::new(&patterns).build().unwrap()),
                rules: indexes.clone(),
            };
            let each = AreaSet {
                matcher: Matcher::Each(patterns.iter().map(|p| Regex::new(p).unwrap()).collect()),
                rules: indexes,
            };
            let mut any = false;
            for text in texts {
                let found = fired(&set, text, rules.rules.len());
                any |= !found.is_empty();
                assert_eq!(fired(&each, text, rules.rules.len()), found, "{which:?}");
            }
            if which != Area::Uri {
                assert!(any, "{which:?}: the texts fire none of its rules");
            }
        }
    }
}

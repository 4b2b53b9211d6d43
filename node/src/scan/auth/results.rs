//! The text of our RFC 8601 `Authentication-Results` header: property values,
//! comments and tokens made safe from whatever the message or the client sent, and
//! the folding of the whole into lines.

use super::AuthResult;

/// Longest property value or comment we copy into the header, in characters.
const MAX_VALUE_CHARS: usize = 200;
/// Lines of the header are folded before they grow past this (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;
/// `Authentication-Results: `, which precedes the first line of our value.
pub(super) const FIELD_PREFIX_LEN: usize = 24;

pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Drops control characters (so no CR or LF) and cuts to [`MAX_VALUE_CHARS`].
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_VALUE_CHARS)
        .collect()
}

/// Text safe inside an RFC 5322 comment: printable, without parentheses or
/// backslashes, whitespace collapsed.
pub(super) fn comment_text(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .take(MAX_VALUE_CHARS)
        .map(|c| {
            if c.is_control() || matches!(c, '(' | ')' | '\\') {
                ' '
            } else {
                c
            }
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An RFC 2045 token: printable ASCII except specials; everything else dropped.
pub(super) fn token(text: &str) -> String {
    text.chars()
        .filter(|c| is_token_char(*c))
        .take(MAX_VALUE_CHARS)
        .collect()
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

/// An RFC 8601 property value: as it is when it is a token or `local-part@domain`
/// in dot-atom form, else a quoted-string.
pub(super) fn pvalue(text: &str) -> String {
    let text = printable(text);
    let is_atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    let is_domain = |d: &str| {
        !d.is_empty()
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    let plain = match text.rsplit_once('@') {
        Some((local, domain)) => local.chars().all(is_atext) && is_domain(domain),
        None => !text.is_empty() && text.chars().all(is_token_char),
    };
    if plain {
        return text;
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `authserv-id; method=result detail; ...`, one result a line, folded at spaces
/// that are ours (never inside a quoted value) when a line would pass [`FOLD_AT`].
pub(super) fn header_value(authserv_id: &str, results: &[AuthResult]) -> String {
    let mut out = String::from(authserv_id);
    if results.is_empty() {
        out.push_str("; none");
        return out;
    }
    for result in results {
        out.push_str(";\r\n\t");
        let mut line_len = 1;
        let mut words = vec![format!("{}={}", result.method, result.result)];
        words.extend(split_outside_quotes(&result.detail));
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                if line_len + 1 + word.len() > FOLD_AT {
                    out.push_str("\r\n\t");
                    line_len = 1;
                } else {
                    out.push(' ');
                    line_len += 1;
                }
            }
            out.push_str(word);
            line_len += word.len();
        }
    }
    debug_assert!(out
        .split("\r\n")
        .all(|line| line.len() + FIELD_PREFIX_LEN < 998));
    out
}

/// Splits at spaces that are not inside a quoted-string.
fn split_outside_quotes(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ' ' && !quoted {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assert_header_safe, base_zone, message, Fixture, CLIENT, ID};
    use super::*;

    #[tokio::test]
    async fn header_never_carries_line_breaks_from_the_message() {
        let fixture = Fixture::new(base_zone());
        let raw = message("ceo@example.com", "Hi.\r\n");
        let sender = format!("\"evil\r\nX-Injected: yes\"{}@example.com", "a".repeat(400));
        let helo = "mx.example.com\r\nX-Injected: yes";
        let outcome = fixture.check(&raw, CLIENT, helo, &sender).await;
        assert_header_safe(&outcome.header);
        assert!(!outcome.header.contains("\r\nX-Injected"));
        assert!(outcome
            .results
            .iter()
            .all(|r| !r.detail.contains(['\r', '\n'])));
    }

    #[test]
    fn values_are_quoted_when_they_are_not_tokens() {
        assert_eq!(pvalue("a@b.test"), "a@b.test");
        assert_eq!(pvalue("b.test"), "b.test");
        assert_eq!(pvalue("ab/cd+ef"), "\"ab/cd+ef\"");
        assert_eq!(pvalue("a b\"c@d.test"), "\"a b\\\"c@d.test\"");
        assert_eq!(pvalue("x\r\ny"), "xy");
        assert_eq!(pvalue(""), "\"\"");
        assert_eq!(comment_text("a (b) \\c\r\nd"), "a b c d");
        assert_eq!(token("mx.example.com;\r\n x=y"), "mx.example.comxy");
        assert_eq!(base64(b"\x00\x01\x02\xff\xfe\xfd"), "AAEC//79");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn long_results_fold_at_our_spaces() {
        let results = vec![AuthResult {
            method: "dkim",
            result: "pass",
            detail: format!(
                "(a comment with words) header.d={} header.s=\"a quoted value\"",
                "d".repeat(90)
            ),
        }];
        let header = header_value(ID, &results);
        assert!(header.contains("header.s=\"a quoted value\""));
        for line in header.split("\r\n").skip(1) {
            assert!(line.starts_with('\t'));
            assert!(line.len() < 998);
        }
        assert_eq!(header_value(ID, &[]), format!("{ID}; none"));
    }
}

//! A second, independent reading of a message's MIME structure.
//!
//! mail-parser is the first reading. Parsers disagree on malformed structure
//! (a boundary line with trailing characters, a missing final boundary, a
//! `Content-Type` given twice, RFC 2231 continuations, a header block with no blank
//! line after it), and an attacker picks the spelling the gateway reads one way and
//! the recipient's client another. This reader follows Python's `email` package
//! (its feed parser, the model of many clients and tools) on those points, so the
//! scanner judges the parts either reading finds (invariant 7).
//!
//! It only splits: each leaf comes back with its raw body and every transfer
//! encoding it was declared with; [`super::decode`] turns those into readings.
//! Depth and part counts are bounded; what lies beyond a bound is one more leaf.

use std::borrow::Cow;

use super::decode::TransferEncoding;

/// Nested multiparts and messages read at most; deeper content is a leaf as it is.
const MAX_DEPTH: usize = 32;

/// A leaf part of the second reading.
#[derive(Debug)]
pub struct Leaf<'a> {
    /// Where it sits: `1`, `2.1`, ... (dot-separated part numbers from 1).
    pub path: String,
    /// The media type (the first `Content-Type`), lowercase, no parameters; a
    /// missing or malformed one reads as `text/plain`.
    pub content_type: String,
    /// Its `charset` parameter, if any.
    pub charset: Option<String>,
    /// Every file name clients may give it, Python's first: each `filename` of each
    /// `Content-Disposition`, then each `name` of each `Content-Type`, the plain
    /// ones before the RFC 2231 form (continuations joined, charsets decoded).
    /// Clients differ on which they show (the first plain one, the last, the RFC
    /// 2231 one), so each is judged.
    pub names: Vec<String>,
    /// Every distinct transfer encoding its headers name, in order (none: identity).
    pub encodings: Vec<TransferEncoding>,
    /// The body as sent, before any transfer decoding.
    pub body: Cow<'a, [u8]>,
}

/// The leaves of `raw`, at most `max_parts` of them.
pub fn leaves(raw: &[u8], max_parts: usize) -> Vec<Leaf<'_>> {
    let mut reader = Reader {
        out: Vec::new(),
        max_parts,
    };
    reader.entity(Cow::Borrowed(raw), String::new(), 0, Ends::Message);
    reader.out
}

struct Reader<'a> {
    out: Vec<Leaf<'a>>,
    max_parts: usize,
}

/// How an entity ends, which decides whose its last line ending is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// At the end of the message, as the message itself: the line ending is the
    /// body's.
    Message,
    /// At the end of the message, as the last part of a multipart that never
    /// closed: a leaf's last line ending is dropped (Python's feed parser).
    OpenPart,
    /// At a boundary line, which owns the line ending before it: a leaf drops it.
    /// (A multipart read as one leaf always keeps it.)
    Boundary,
}

impl<'a> Reader<'a> {
    /// Reads one entity (headers and body) and what it holds.
    fn entity(&mut self, raw: Cow<'a, [u8]>, path: String, depth: usize, ends: Ends) {
        if self.out.len() >= self.max_parts {
            return;
        }
        let (headers, body_at) = header_block(&raw);
        let content_type = headers.first("content-type");
        let media = content_type.map_or_else(|| "text/plain".to_owned(), media_type);
        let params = content_type.map(parameters).unwrap_or_default();
        let encodings = headers.encodings();
        let mut names: Vec<String> = Vec::new();
        for (field, key) in [
            ("content-disposition", "filename"),
            ("content-type", "name"),
        ] {
            for value in headers.all(field) {
                for name in param_values(&parameters(value), key) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        let child_path = |n: usize| {
            if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}.{n}")
            }
        };
        let mut body_end = raw.len();
        if depth < MAX_DEPTH {
            if media.starts_with("multipart/") {
                if let Some(boundary) = param(&params, "boundary").map(|b| b.trim_end().to_owned())
                {
                    match split(&raw[body_at..], boundary.as_bytes()) {
                        Err(preamble) => body_end = body_at + preamble,
                        Ok(split) => {
                            let count = split.parts.len();
                            for (n, (start, end)) in split.parts.into_iter().enumerate() {
                                let range = body_at + start..body_at + end;
                                let part = match &raw {
                                    Cow::Borrowed(all) => Cow::Borrowed(&all[range]),
                                    Cow::Owned(all) => Cow::Owned(all[range].to_vec()),
                                };
                                let part_ends = match (n + 1 == count && !split.closed, ends) {
                                    (false, _) | (true, Ends::Boundary) => Ends::Boundary,
                                    (true, _) => Ends::OpenPart,
                                };
                                self.entity(part, child_path(n + 1), depth + 1, part_ends);
                            }
                            return;
                        }
                    }
                }
            } else if media.starts_with("message/") && media != "message/delivery-status" {
                // An attached message: decoded when it was encoded, as most clients
                // show it, and also read as it is, as Python reads it.
                for (n, &encoding) in encodings.iter().enumerate() {
                    if encoding != TransferEncoding::Identity {
                        let inner = encoding.decode(&raw[body_at..]).first;
                        self.entity(
                            Cow::Owned(inner),
                            child_path(n + 2),
                            depth + 1,
                            Ends::Message,
                        );
                    }
                }
                return self.entity(slice_from(raw, body_at), child_path(1), depth + 1, ends);
            }
        }
        let path = if path.is_empty() {
            "1".to_owned()
        } else {
            path
        };
        let mut body = match slice_from(raw, body_at) {
            Cow::Borrowed(all) => Cow::Borrowed(&all[..body_end - body_at]),
            Cow::Owned(mut all) => {
                all.truncate(body_end - body_at);
                Cow::Owned(all)
            }
        };
        let multipart = media.starts_with("multipart/");
        if !multipart && ends != Ends::Message {
            let ending = if body.ends_with(b"\r\n") {
                2
            } else {
                usize::from(body.ends_with(b"\n"))
            };
            let keep = body.len() - ending;
            body = match body {
                Cow::Borrowed(all) => Cow::Borrowed(&all[..keep]),
                Cow::Owned(mut all) => {
                    all.truncate(keep);
                    Cow::Owned(all)
                }
            };
        }
        self.out.push(Leaf {
            path,
            charset: param(&params, "charset"),
            content_type: media,
            names,
            encodings,
            body,
        });
    }
}

fn slice_from(raw: Cow<'_, [u8]>, at: usize) -> Cow<'_, [u8]> {
    match raw {
        Cow::Borrowed(all) => Cow::Borrowed(&all[at..]),
        Cow::Owned(mut all) => {
            all.drain(..at);
            Cow::Owned(all)
        }
    }
}

/// The lines of `data` with their starts: `(start, line without its ending, next)`.
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8], usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let start = at;
        let (line, next) = match memchr::memchr(b'\n', &data[at..]) {
            Some(n) => (&data[at..at + n], at + n + 1),
            None => (&data[at..], data.len()),
        };
        at = next;
        Some((start, line.strip_suffix(b"\r").unwrap_or(line), next))
    })
}

/// The parts of a multipart body, as Python's feed parser splits it.
struct Split {
    /// `(start, end)` of each part in the body.
    parts: Vec<(usize, usize)>,
    /// Whether the final boundary was found.
    closed: bool,
}

/// Splits a multipart body; without a first boundary line, the length of the
/// preamble instead (up to a final boundary line, or all): the multipart is then
/// read as one leaf of that much, as Python does.
///
/// A boundary line is `--BOUNDARY`, then `--` for the last, then blanks only. Each
/// part runs to the start of the next boundary line, its last line ending
/// included (the reader of the part decides whose it is, see [`Ends`]); a missing
/// final boundary ends the last part at the end of the body.
fn split(body: &[u8], boundary: &[u8]) -> Result<Split, usize> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    for (start, line, next) in lines(body) {
        let Some(kind) = boundary_line(line, boundary) else {
            continue;
        };
        if let Some(begin) = open.take() {
            parts.push((begin, start.max(begin)));
        }
        if kind == Boundary::Close {
            if parts.is_empty() {
                return Err(start);
            }
            return Ok(Split {
                parts,
                closed: true,
            });
        }
        open = Some(next);
    }
    parts.push((open.ok_or(body.len())?, body.len()));
    Ok(Split {
        parts,
        closed: false,
    })
}

#[derive(PartialEq, Eq)]
enum Boundary {
    Next,
    Close,
}

fn boundary_line(line: &[u8], boundary: &[u8]) -> Option<Boundary> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (kind, rest) = match rest.strip_prefix(b"--") {
        Some(rest) => (Boundary::Close, rest),
        None => (Boundary::Next, rest),
    };
    rest.iter()
        .all(|&c| c == b' ' || c == b'\t')
        .then_some(kind)
}

/// A header field: its name (lowercase), its value unfolded and trimmed, and
/// whether it was folded or carries blanks after its value.
struct Field {
    name: String,
    value: String,
    untidy: bool,
}

/// The header fields of an entity, in order.
struct Headers(Vec<Field>);

impl Headers {
    fn first<'h>(&'h self, name: &'h str) -> Option<&'h str> {
        self.all(name).next()
    }

    fn all<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h str> {
        self.0
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// Every reading of the part's `Content-Transfer-Encoding` headers: each one's
    /// encoding as clients read it, and the bytes as they are where a strict
    /// reader (Python's) does not know the value: folded, followed by blanks or a
    /// comment, quoted.
    fn encodings(&self) -> Vec<TransferEncoding> {
        let mut found = Vec::new();
        for field in self
            .0
            .iter()
            .filter(|f| f.name == "content-transfer-encoding")
        {
            let encoding = TransferEncoding::from_header(&field.value);
            let strict = !field.untidy
                && !field
                    .value
                    .contains(|c: char| c.is_whitespace() || matches!(c, '(' | '"' | ';'));
            for reading in [encoding, TransferEncoding::Identity] {
                if !found.contains(&reading) {
                    found.push(reading);
                }
                if strict || encoding == TransferEncoding::Identity {
                    break;
                }
            }
        }
        found
    }
}

/// The header block at the start of `raw` and where the body starts. The block
/// ends at a blank line, or (as Python reads it) at the first line that is neither
/// a field nor a continuation, which then starts the body. An mbox `From ` line
/// first is skipped.
fn header_block(raw: &[u8]) -> (Headers, usize) {
    let mut fields: Vec<Field> = Vec::new();
    for (start, line, next) in lines(raw) {
        if start == 0 && line.starts_with(b"From ") {
            continue;
        }
        if line.is_empty() {
            return (Headers(fields), next);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(field) = fields.last_mut() {
                field.value.push(' ');
                field.value.push_str(String::from_utf8_lossy(line).trim());
                field.untidy = true;
            }
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return (Headers(fields), start);
        };
        let name = &line[..colon];
        if !name.iter().all(|&c| (0x21..=0x7e).contains(&c)) {
            return (Headers(fields), start);
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        fields.push(Field {
            name: String::from_utf8_lossy(name).to_ascii_lowercase(),
            value: value.trim().to_owned(),
            untidy: value.trim_start() != value.trim(),
        });
    }
    (Headers(fields), raw.len())
}

/// The media type of a `Content-Type` value, lowercase; `text/plain` when it has
/// not exactly one `/` (so `multipart/` is still a multipart, as Python reads it).
fn media_type(value: &str) -> String {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.matches('/').count() == 1 {
        media
    } else {
        "text/plain".to_owned()
    }
}

/// The parameters of a header value (`type; a=1; b="x;y"`), names lowercase,
/// values unquoted, in order.
fn parameters(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match split_unquoted(value) {
        Some(at) => &value[at + 1..],
        None => return out,
    };
    loop {
        let end = split_unquoted(rest).unwrap_or(rest.len());
        let item = &rest[..end];
        if let Some((name, value)) = item.split_once('=') {
            out.push((name.trim().to_ascii_lowercase(), unquote(value.trim())));
        }
        if end >= rest.len() {
            return out;
        }
        rest = &rest[end + 1..];
    }
}

/// The first `;` outside a quoted string.
fn split_unquoted(value: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return Some(at),
            _ => {}
        }
    }
    None
}

/// A quoted string's content; a value not both opened and closed by a quote is
/// taken as it is (as Python takes it).
fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
    else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

/// Parameter `name`: the first plain `name=` if any, else its RFC 2231 form.
fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.clone())
        .or_else(|| extended(params, name))
}

/// Every value of parameter `name`: each plain `name=` in order, then its RFC 2231
/// form.
fn param_values(params: &[(String, String)], name: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, value)| value.clone())
        .chain(extended(params, name))
        .collect()
}

/// The RFC 2231 form of parameter `name` (`name*=charset'lang'value`, or sections
/// `name*0`, `name*1*`, ... joined in order, the starred ones percent-decoded).
fn extended(params: &[(String, String)], name: &str) -> Option<String> {
    let mut sections: Vec<(u32, bool, &str)> = Vec::new();
    for (key, value) in params {
        let Some(rest) = key.strip_prefix(name).and_then(|r| r.strip_prefix('*')) else {
            continue;
        };
        let (number, encoded) = match rest.strip_suffix('*') {
            Some(number) => (number, true),
            None if rest.is_empty() => ("0", true),
            None => (rest, false),
        };
        if let Ok(number) = number.parse::<u32>() {
            if !sections.iter().any(|(n, _, _)| *n == number) {
                sections.push((number, encoded, value));
            }
        }
    }
    if sections.is_empty() {
        return None;
    }
    sections.sort_by_key(|(n, _, _)| *n);
    let mut bytes = Vec::new();
    let mut charset = String::new();
    for (number, encoded, value) in sections {
        if !encoded {
            bytes.extend_from_slice(value.as_bytes());
            continue;
        }
        let mut value = value;
        if number == 0 {
            // charset'language'value
            let mut pieces = value.splitn(3, '\'');
            if let (Some(cs), Some(_), Some(rest)) = (pieces.next(), pieces.next(), pieces.next()) {
                charset = cs.to_ascii_lowercase();
                value = rest;
            }
        }
        bytes.extend(percent_decode(value.as_bytes()));
    }
    Some(match charset.as_str() {
        "iso-8859-1" | "latin1" | "us-ascii" | "windows-1252" => {
            bytes.iter().map(|&b| char::from(b)).collect()
        }
        _ => String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn percent_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut at = 0;
    while at < value.len() {
        let hex = |i: usize| value.get(i).and_then(|&c| (c as char).to_digit(16));
        match (value[at], hex(at + 1), hex(at + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                at += 3;
            }
            (c, _, _) => {
                out.push(c);
                at += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(raw: &[u8]) -> Vec<(String, String, Vec<u8>)> {
        leaves(raw, 100)
            .into_iter()
            .map(|l| (l.path, l.content_type, l.body.into_owned()))
            .collect()
    }

    #[test]
    fn a_message_without_mime_is_one_text_leaf() {
        let leaves = bodies(b"Subject: hi\r\n\r\nHello\r\n");
        assert_eq!(
            leaves,
            [("1".into(), "text/plain".into(), b"Hello\r\n".to_vec())]
        );
    }

    #[test]
    fn multipart_parts_end_before_the_line_ending_of_the_boundary() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\none\r\n--b \t\r\n\r\ntwo\r\n\r\n--b--\r\nepilogue\r\n";
        let leaves = bodies(raw);
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[0].2, b"one");
        assert_eq!(leaves[1].2, b"two\r\n");
        assert_eq!(leaves[1].0, "2");
    }

    #[test]
    fn a_missing_final_boundary_ends_the_part_at_the_end() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nlast part\n";
        assert_eq!(bodies(raw)[0].2, b"last part");
    }

    #[test]
    fn a_boundary_with_trailing_characters_is_not_one() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--bx\ntwo\n--b--\n";
        assert_eq!(bodies(raw)[0].2, b"one\n--bx\ntwo");
    }

    #[test]
    fn no_boundary_line_reads_the_multipart_as_one_leaf() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\n\nno parts here\n";
        let leaves = bodies(raw);
        assert_eq!(
            leaves,
            [(
                "1".into(),
                "multipart/mixed".into(),
                b"no parts here\n".to_vec()
            )]
        );
    }

    #[test]
    fn the_first_content_type_and_the_first_plain_parameter_win() {
        let raw = b"Content-Type: multipart/mixed; boundary=a; boundary=b\n\
            Content-Type: text/plain\n\n--a\n\nA\n--a--\n";
        assert_eq!(bodies(raw)[0].2, b"A");
    }

    #[test]
    fn rfc2231_continuations_and_charsets() {
        let raw = b"Content-Type: multipart/mixed; boundary*0=\"ab\"; boundary*1=\"cd\"\n\n\
            --abcd\nContent-Disposition: attachment; filename*0*=utf-8''ev%69l; filename*1=\".exe\"\n\n\
            X\n--abcd--\n";
        let leaves = leaves(raw, 10);
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].names, ["evil.exe"]);
        assert_eq!(&*leaves[0].body, b"X");
    }

    #[test]
    fn every_name_of_a_part_is_kept_pythons_first() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\
            Content-Type: application/octet-stream; name=\"a.txt\"; name*=utf-8''b.exe\n\
            Content-Disposition: attachment; filename=\"c.pdf\"; filename=\"d.js\"\n\
            Content-Disposition: inline; filename*0=\"e.\"; filename*1=\"scr\"\n\n\
            X\n--b--\n";
        assert_eq!(
            leaves(raw, 10)[0].names,
            ["c.pdf", "d.js", "e.scr", "a.txt", "b.exe"]
        );
        let plain = b"Content-Type: text/plain; name=\"a.txt\"\n\
            Content-Disposition: attachment; filename=\"a.txt\"\n\nX\n";
        assert_eq!(leaves(plain, 10)[0].names, ["a.txt"]);
    }

    #[test]
    fn a_header_block_without_a_blank_line_ends_at_a_line_that_is_no_field() {
        let raw = b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\nQUJD\n";
        let leaves = leaves(raw, 10);
        assert_eq!(&*leaves[0].body, b"QUJD\n");
        assert_eq!(leaves[0].encodings, [TransferEncoding::Base64]);
    }

    #[test]
    fn every_transfer_encoding_named_is_kept() {
        let raw = b"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: BASE64\n\
            Content-Transfer-Encoding: 7bit\n\nQUJD\n";
        assert_eq!(
            leaves(raw, 10)[0].encodings,
            [TransferEncoding::Identity, TransferEncoding::Base64]
        );
    }

    #[test]
    fn an_encoded_attached_message_is_read_decoded() {
        let inner = "Content-Type: application/octet-stream\n\nPAYLOAD";
        let raw = format!(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\
             Content-Transfer-Encoding: base64\n\n{}\n--b--\n",
            crate::scan::contents::tests::base64(inner.as_bytes())
        );
        let leaves = leaves(raw.as_bytes(), 10);
        assert_eq!(leaves[0].path, "1.2");
        assert_eq!(&*leaves[0].body, b"PAYLOAD");
        // Read as it is, the encoded text is a headerless text body.
        assert_eq!(leaves[1].path, "1.1");
        assert_eq!(leaves[1].content_type, "text/plain");
    }

    #[test]
    fn depth_and_count_are_bounded() {
        let mut raw = Vec::new();
        for _ in 0..10_000 {
            raw.extend_from_slice(b"Content-Type: message/rfc822\n\n");
        }
        raw.extend_from_slice(b"deep");
        let found = leaves(&raw, 10);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path.split('.').count(), MAX_DEPTH);
        let many = format!(
            "Content-Type: multipart/mixed; boundary=b\n\n{}--b--\n",
            "--b\n\nx\n".repeat(500)
        );
        assert_eq!(leaves(many.as_bytes(), 10).len(), 10);
    }
}

//! Transfer decodings as lenient as the mail clients people read mail with.
//!
//! A decoder that refuses what a mail client decodes is an evasion: the recipient
//! opens a file the scanner never saw (invariant 7). RFC 2045 §6.8 tells base64
//! decoders to ignore characters outside the alphabet; clients also decode with the
//! padding missing, and stop at the padding or read on past it. So each decoder
//! here accepts anything and returns every reading a client may make of the bytes:
//! where two clients differ, both readings are judged.
//!
//! Pure functions over byte slices; nothing here allocates more than the output.

/// The readings of one encoded body: the first is what most clients decode; the
/// second, when present, is another client's different reading of the same bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Readings {
    pub first: Vec<u8>,
    pub second: Option<Vec<u8>>,
}

/// A `Content-Transfer-Encoding` as clients understand its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEncoding {
    Base64,
    QuotedPrintable,
    Uuencode,
    /// `7bit`, `8bit`, `binary`, and any value a client does not know: the bytes
    /// as they are.
    Identity,
}

impl TransferEncoding {
    /// The encoding a header value names: its first word, any case; comments and
    /// trailing words (`base64 (sent by X)`) are ignored, as clients ignore them.
    pub fn from_header(value: &str) -> TransferEncoding {
        let word = value
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .to_ascii_lowercase();
        match word.as_str() {
            "base64" => TransferEncoding::Base64,
            "quoted-printable" => TransferEncoding::QuotedPrintable,
            "x-uuencode" | "uuencode" | "x-uue" | "uue" => TransferEncoding::Uuencode,
            _ => TransferEncoding::Identity,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TransferEncoding::Base64 => "base64",
            TransferEncoding::QuotedPrintable => "quoted-printable",
            TransferEncoding::Uuencode => "uuencode",
            TransferEncoding::Identity => "identity",
        }
    }

    /// Every reading of `raw` under this encoding.
    pub fn decode(self, raw: &[u8]) -> Readings {
        match self {
            TransferEncoding::Base64 => base64(raw),
            TransferEncoding::QuotedPrintable => quoted_printable(raw),
            TransferEncoding::Uuencode => Readings {
                first: uudecode(raw).unwrap_or_else(|| raw.to_vec()),
                second: None,
            },
            TransferEncoding::Identity => Readings {
                first: raw.to_vec(),
                second: None,
            },
        }
    }
}

const fn base64_table() -> [u8; 256] {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
}

const INVALID: u8 = 0xff;
static BASE64: [u8; 256] = base64_table();

/// Base64 as clients decode it: characters outside the alphabet are skipped
/// wherever they stand (RFC 2045 §6.8), missing padding is forgiven, a lone last
/// character is dropped. The first reading stops at the padding that ends a group
/// (Python's `email`, binascii); the second reads on past it, as decoders that
/// treat `=` as the end of one group only, so two encodings written one after the
/// other become one file.
pub fn base64(raw: &[u8]) -> Readings {
    let mut first = Base64Groups::with_capacity(raw.len());
    let mut second: Option<Base64Groups> = None;
    let mut pads = 0u8;
    let mut at = 0;
    while at < raw.len() {
        // The common case first: whole groups of four characters of the alphabet.
        if first.pending == 0 {
            while let Some(&[a, b, c, d]) = raw.get(at..at + 4) {
                let values = [a, b, c, d].map(|ch| BASE64[ch as usize]);
                if values.contains(&INVALID) {
                    break;
                }
                let [_, x, y, z] = values
                    .iter()
                    .fold(0u32, |group, &v| (group << 6) | u32::from(v))
                    .to_be_bytes();
                first.out.extend_from_slice(&[x, y, z]);
                pads = 0;
                at += 4;
            }
        }
        let Some(&ch) = raw.get(at) else {
            break;
        };
        at += 1;
        if ch == b'=' {
            pads = pads.saturating_add(1);
            if first.pending >= 2 && first.pending + pads >= 4 {
                // Padding ends the first reading. If anything of the alphabet follows,
                // the second reading goes on from the same state.
                let rest = &raw[at..];
                if rest.iter().any(|&c| BASE64[c as usize] != INVALID) {
                    let mut on = first.clone();
                    on.flush();
                    for &c in rest {
                        on.push_lenient(c);
                    }
                    on.flush();
                    second = Some(on);
                }
                first.flush();
                return Readings {
                    first: first.out,
                    second: second.map(|s| s.out),
                };
            }
            continue;
        }
        let value = BASE64[ch as usize];
        if value != INVALID {
            pads = 0;
            first.push(value);
        }
    }
    first.flush();
    Readings {
        first: first.out,
        second: None,
    }
}

#[derive(Clone)]
struct Base64Groups {
    out: Vec<u8>,
    group: u32,
    /// Characters of the current group read so far (0 to 3).
    pending: u8,
}

impl Base64Groups {
    fn with_capacity(encoded: usize) -> Self {
        Base64Groups {
            out: Vec::with_capacity(encoded / 4 * 3 + 3),
            group: 0,
            pending: 0,
        }
    }

    fn push(&mut self, value: u8) {
        self.group = (self.group << 6) | u32::from(value);
        self.pending += 1;
        if self.pending == 4 {
            let [_, a, b, c] = self.group.to_be_bytes();
            self.out.extend_from_slice(&[a, b, c]);
            self.group = 0;
            self.pending = 0;
        }
    }

    /// Reads one character where `=` ends the current group and decoding goes on.
    fn push_lenient(&mut self, ch: u8) {
        if ch == b'=' {
            self.flush();
        } else if BASE64[ch as usize] != INVALID {
            self.push(BASE64[ch as usize]);
        }
    }

    /// Ends the current group: two or three characters give one or two bytes, as if
    /// padded; a lone character gives nothing.
    fn flush(&mut self) {
        match self.pending {
            2 => self.out.push((self.group >> 4) as u8),
            3 => {
                let value = self.group >> 2;
                self.out
                    .extend_from_slice(&[(value >> 8) as u8, value as u8]);
            }
            _ => {}
        }
        self.group = 0;
        self.pending = 0;
    }
}

fn hex_value(ch: u8) -> Option<u8> {
    (ch as char).to_digit(16).map(|v| v as u8)
}

/// Quoted-printable as clients decode it; nothing is ever refused. The first
/// reading is Python's (binascii): `=` and two hex digits (either case) is a byte,
/// `=` right before the line's end joins the lines, `==` is one `=`, every other
/// `=` is kept as it is, as are all other bytes. The second, when it differs, is
/// RFC 2045's (§6.7) and mail-parser's: blanks at the end of a line were added in
/// transport and are dropped first, so `=` followed by blanks joins lines too.
pub fn quoted_printable(raw: &[u8]) -> Readings {
    let first = qp_decode(raw);
    let trimmed = trim_line_ends(raw);
    let second = match &trimmed {
        Some(trimmed) => qp_decode(trimmed),
        None => first.clone(),
    };
    Readings {
        second: (second != first).then_some(second),
        first,
    }
}

/// `raw` without blanks before its line endings and at its end, or `None` when
/// it has none.
fn trim_line_ends(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut changed = false;
    for line in raw.split_inclusive(|&c| c == b'\n') {
        let (text, ending) = match line.strip_suffix(b"\r\n") {
            Some(text) => (text, &b"\r\n"[..]),
            None => match line.strip_suffix(b"\n") {
                Some(text) => (text, &b"\n"[..]),
                None => (line, &b""[..]),
            },
        };
        let kept = text.trim_ascii_end();
        changed |= kept.len() != text.len();
        out.extend_from_slice(kept);
        out.extend_from_slice(ending);
    }
    changed.then_some(out)
}

fn qp_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        let ch = raw[at];
        at += 1;
        if ch != b'=' {
            out.push(ch);
            continue;
        }
        let rest = &raw[at..];
        match rest.first() {
            None => break,
            // A soft line break; after a CR, up to the next LF.
            Some(b'\n') => at += 1,
            Some(b'\r') => {
                at += memchr::memchr(b'\n', rest).map_or(rest.len(), |n| n + 1);
            }
            Some(b'=') => {
                out.push(b'=');
                at += 1;
            }
            Some(&high) => match (hex_value(high), rest.get(1).copied().and_then(hex_value)) {
                (Some(high), Some(low)) => {
                    out.push((high << 4) | low);
                    at += 2;
                }
                _ => out.push(b'='),
            },
        }
    }
    out
}

/// A uuencoded body (`begin MODE NAME` ... `end`) decoded, or `None` when it has no
/// `begin` line. A missing `end` is forgiven; lines are decoded as far as their
/// length character says, short ones padded, as clients do.
pub fn uudecode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut lines = raw
        .split(|&c| c == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    lines.by_ref().find(|line| is_uu_begin(line))?;
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for line in lines {
        if line.trim_ascii() == b"end" {
            break;
        }
        let Some((&count, data)) = line.split_first() else {
            continue;
        };
        let count = usize::from(count.wrapping_sub(b' ') & 0x3f);
        if count == 0 {
            continue;
        }
        let value = |i: usize| u32::from(data.get(i).map_or(0, |c| c.wrapping_sub(b' ') & 0x3f));
        let mut decoded = Vec::with_capacity(count + 2);
        let mut i = 0;
        while decoded.len() < count {
            let group =
                (value(i) << 18) | (value(i + 1) << 12) | (value(i + 2) << 6) | value(i + 3);
            let [_, a, b, c] = group.to_be_bytes();
            decoded.extend_from_slice(&[a, b, c]);
            i += 4;
        }
        decoded.truncate(count);
        out.extend_from_slice(&decoded);
    }
    Some(out)
}

/// A file carried inside a text body, as old mailers and news clients write them
/// and mail clients still open: a uuencoded block (`begin MODE NAME` … `end`) or a
/// yEnc one (`=ybegin … name=NAME` … `=yend`).
pub struct Embedded {
    pub name: String,
    pub how: &'static str,
    pub data: Vec<u8>,
}

/// Every uuencoded or yEnc block in `text`, decoded, at most `max` of them.
pub fn embedded(text: &[u8], max: usize) -> Vec<Embedded> {
    let lines: Vec<&[u8]> = text
        .split(|&c| c == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() && found.len() < max {
        let line = lines[i];
        let (how, end): (&'static str, &[u8]) = if is_uu_begin(line) {
            ("uuencoded in the text", b"end")
        } else if line.starts_with(b"=ybegin ") {
            ("yEnc in the text", b"=yend")
        } else {
            i += 1;
            continue;
        };
        let last = (i + 1..lines.len())
            .find(|&j| lines[j].trim_ascii().starts_with(end))
            .unwrap_or(lines.len());
        let block = &lines[i..last.min(lines.len())];
        let name = if how == "yEnc in the text" {
            yenc_name(line)
        } else {
            String::from_utf8_lossy(line.splitn(3, |&c| c == b' ').nth(2).unwrap_or_default())
                .trim()
                .to_string()
        };
        let data = if how == "yEnc in the text" {
            ydecode(&block[1..])
        } else {
            uudecode(&block.join(&b"\n"[..])).unwrap_or_default()
        };
        if !data.is_empty() {
            found.push(Embedded { name, how, data });
        }
        i = last + 1;
    }
    found
}

/// The `name=` of a `=ybegin` line: the rest of the line, as yEnc puts it last.
fn yenc_name(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    text.split_once(" name=")
        .map_or("", |(_, name)| name)
        .trim()
        .to_string()
}

/// yEnc data lines decoded: each byte less 42, `=` escaping the next (less 64 more);
/// `=ypart` and other keyword lines skipped.
fn ydecode(lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with(b"=y") {
            continue;
        }
        let mut bytes = line.iter();
        while let Some(&b) = bytes.next() {
            let b = if b == b'=' {
                match bytes.next() {
                    Some(&escaped) => escaped.wrapping_sub(64),
                    None => break,
                }
            } else {
                b
            };
            out.push(b.wrapping_sub(42));
        }
    }
    out
}

/// `begin `, then an octal mode (blanks, a sign, `0o` and `_` allowed, as Python
/// reads a number), then a name: the first line of a uuencoded file.
fn is_uu_begin(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"begin ") else {
        return false;
    };
    let mode = rest
        .split(|&c| c == b' ')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let mode = mode
        .strip_prefix(b"+")
        .or(mode.strip_prefix(b"-"))
        .unwrap_or(mode);
    let mode = mode
        .strip_prefix(b"0o")
        .or(mode.strip_prefix(b"0O"))
        .unwrap_or(mode);
    mode.first().is_some_and(|c| (b'0'..=b'7').contains(c))
        && mode.iter().all(|c| (b'0'..=b'7').contains(c) || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::contents::tests::base64 as encode;

    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn first(raw: &[u8]) -> Vec<u8> {
        base64(raw).first
    }

    #[test]
    fn base64_skips_what_is_outside_the_alphabet() {
        let encoded = encode(EICAR);
        for junk in ["!", "*", "%", "\u{1}", ".", "\u{7f}", "-", "\t", "ä"] {
            for at in [0, 1, 7, encoded.len() / 2, encoded.len() - 2] {
                let mut raw = encoded.clone().into_bytes();
                raw.splice(at..at, junk.bytes());
                assert_eq!(first(&raw), EICAR, "{junk:?} at {at}");
            }
        }
    }

    #[test]
    fn base64_without_padding_or_with_junk_after_it() {
        let encoded = encode(EICAR);
        assert!(encoded.ends_with('='));
        assert_eq!(first(encoded.trim_end_matches('=').as_bytes()), EICAR);
        let junk = format!("{encoded}\r\n!!junk after the padding");
        assert_eq!(first(junk.as_bytes()), EICAR);
        // Base64 after the padding: the first reading stops, the second reads on.
        let more = format!("{encoded}{}", encode(b"ABC"));
        let readings = base64(more.as_bytes());
        assert_eq!(readings.first, EICAR);
        assert_eq!(readings.second.unwrap(), [EICAR, b"ABC"].concat());
    }

    #[test]
    fn base64_a_lone_last_character_and_stray_padding() {
        assert_eq!(first(b"QUJD" as &[u8]), b"ABC");
        assert_eq!(first(b"QUJDR"), b"ABC");
        assert_eq!(first(b"QUI"), b"AB");
        assert_eq!(first(b"QQ"), b"A");
        // A `=` before two characters of a group is not padding: it is skipped.
        assert_eq!(first(b"=QU=JD"), b"ABC");
        assert_eq!(base64(b"").first, b"");
    }

    #[test]
    fn quoted_printable_keeps_what_it_cannot_decode() {
        let first = |raw: &[u8]| quoted_printable(raw).first;
        assert_eq!(first(b"a=3Db=3db"), b"a=b=b");
        assert_eq!(first(b"soft=\r\nbreak=\nhere="), b"softbreakhere");
        assert_eq!(
            first(b"bad =ZZ ==41 =4 <h==tml>"),
            b"bad =ZZ =41 =4 <h=tml>"
        );
        assert_eq!(quoted_printable(b"no blanks\r\n").second, None);
    }

    #[test]
    fn quoted_printable_blanks_at_the_end_of_a_line_are_read_both_ways() {
        let readings = quoted_printable(b"line \t\r\nnext =20 \r\nsoft=  \r\nlast  ");
        assert_eq!(readings.first, b"line \t\r\nnext   \r\nsoft=  \r\nlast  ");
        assert_eq!(readings.second.unwrap(), b"line\r\nnext  \r\nsoftlast");
    }

    #[test]
    fn files_embedded_in_a_text_body_are_found_uuencoded_or_in_yenc() {
        let yenc: Vec<u8> = EICAR
            .iter()
            .flat_map(|&b| {
                let e = b.wrapping_add(42);
                if matches!(e, 0 | b'\n' | b'\r' | b'=') {
                    vec![b'=', e.wrapping_add(64)]
                } else {
                    vec![e]
                }
            })
            .collect();
        let mut text = b"Hello,\r\nthe file:\r\n\r\nbegin 644 eicar.com\r\n\
            M6#5/(5`E0$%06S1<4%I8-30H4%XI-T-#*3=])$5)0T%2+5-404Y$05)$+4%.\r\n\
            75$E625)54RU415-4+49)3$4A)$@K2\"H`\r\n`\r\nend\r\n\r\nand again:\r\n\
            =ybegin line=128 size=68 name=eicar two.com\r\n"
            .to_vec();
        text.extend_from_slice(&yenc);
        text.extend_from_slice(b"\r\n=yend size=68\r\nBye.\r\n");
        let found = embedded(&text, 10);
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].name.as_str(), found[0].data.as_slice()),
            ("eicar.com", EICAR)
        );
        assert_eq!(
            (found[1].name.as_str(), found[1].data.as_slice()),
            ("eicar two.com", EICAR)
        );
        assert!(embedded(b"begin here, said the text\r\nend", 10).is_empty());
    }

    #[test]
    fn uuencode_decodes_with_or_without_end() {
        let body = b"begin 644 eicar.com\n\
            M6#5/(5`E0$%06S1<4%I8-30H4%XI-T-#*3=])$5)0T%2+5-404Y$05)$+4%.\n\
            75$E625)54RU415-4+49)3$4A)$@K2\"H`\n`\nend\n";
        assert_eq!(uudecode(body).unwrap(), EICAR);
        let no_end = &body[..body.len() - 6];
        assert_eq!(uudecode(no_end).unwrap(), EICAR);
        assert_eq!(uudecode(b"no begin line"), None);
        let odd = b"begin \t0o6_44 a\n#86)C\n\t end \n#86)C\n";
        assert_eq!(uudecode(odd).unwrap(), b"abc");
        assert_eq!(uudecode(b"begin 9 a\n#86)C\nend\n"), None);
    }

    #[test]
    fn transfer_encoding_names_as_clients_read_them() {
        for (value, encoding) in [
            (" Base64 ", TransferEncoding::Base64),
            ("base64 (sent by X)", TransferEncoding::Base64),
            ("\"quoted-printable\"", TransferEncoding::QuotedPrintable),
            ("x-uue", TransferEncoding::Uuencode),
            ("8bit", TransferEncoding::Identity),
            ("gzip", TransferEncoding::Identity),
        ] {
            assert_eq!(TransferEncoding::from_header(value), encoding, "{value}");
        }
    }
}

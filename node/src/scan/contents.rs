//! Unpacking: a parsed message becomes the list of files the content engines judge.
//!
//! Every leaf MIME part (also inside attached messages) is one [`File`]; every
//! archive among them (zip, gzip, tar, recognised by content, never by name) is
//! opened recursively and its members become files one level deeper. Hostile input
//! ends as a [`FindingKind::Bomb`] finding, never as a crash: each read is bounded by
//! what remains of the budget, by the member's declared size and by the compression
//! ratio, so memory and time stay bounded whatever the archive claims. A corrupt
//! archive is not an error: what can be read is listed.

use std::io::{Cursor, Read};

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};

use super::decode::{self, TransferEncoding};
use super::engine::{Contents, File, Finding, FindingKind};
use super::mime;

/// How far unpacking may go before it stops with a [`FindingKind::Bomb`] finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The deepest archive member listed: members of an archive attached to the
    /// message are at depth 1, members of an archive inside it at depth 2.
    pub max_depth: u32,
    /// How many files (MIME parts and archive members, listed or refused) are
    /// looked at in one message.
    pub max_files: usize,
    /// How many bytes may be extracted from archives in one message, all together.
    pub max_total_bytes: u64,
    /// The largest expansion of one compressed member (uncompressed size over
    /// compressed size) for members larger than 1 MiB.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 5,
            max_files: 1000,
            max_total_bytes: 100 * 1024 * 1024,
            max_ratio: 100,
        }
    }
}

/// Members up to this size are never refused for their ratio: small runs of one
/// byte compress far beyond any ratio a real bomb needs.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// Findings recorded per message at most; a bomb of bombs would otherwise list
/// thousands of them.
const MAX_FINDINGS: usize = 64;

/// Lists every file of `message`, opening archives within `limits`: the parts as
/// mail-parser reads them, then every part or decoding that the second reading
/// ([`mime`], [`decode`]) finds and the first did not (invariant 7).
pub fn unpack(message: &Message<'_>, limits: &Limits) -> Contents {
    let mut unpacker = Unpacker {
        limits,
        contents: Contents::default(),
        seen: 0,
        extracted: 0,
        stopped: false,
    };
    unpacker.message(message, "");
    unpacker.other_readings(&message.raw_message);
    unpacker.contents
}

/// The archive formats opened, as recognised by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Archive {
    Zip,
    Gzip,
    Tar,
}

fn archive_kind(data: &[u8]) -> Option<Archive> {
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        Some(Archive::Zip)
    } else if data.starts_with(&[0x1f, 0x8b, 0x08]) {
        Some(Archive::Gzip)
    } else if data.get(257..262) == Some(b"ustar") {
        Some(Archive::Tar)
    } else {
        None
    }
}

struct Unpacker<'l> {
    limits: &'l Limits,
    contents: Contents,
    /// Files looked at so far, listed or refused, against `max_files`.
    seen: usize,
    /// Bytes extracted from archives so far, against `max_total_bytes`.
    extracted: u64,
    /// Set once `max_files` is reached: nothing more is looked at.
    stopped: bool,
}

impl Unpacker<'_> {
    fn message(&mut self, message: &Message<'_>, prefix: &str) {
        for (id, part) in message.parts.iter().enumerate() {
            if self.stopped {
                return;
            }
            let location = format!("{prefix}part {id}");
            match &part.body {
                PartType::Multipart(_) => {}
                PartType::Message(inner) => self.message(inner, &format!("{location}/")),
                PartType::Text(_)
                | PartType::Html(_)
                | PartType::Binary(_)
                | PartType::InlineBinary(_) => {
                    if !self.admit(&location) {
                        return;
                    }
                    let inline_body = part.is_text()
                        && u32::try_from(id).is_ok_and(|id| {
                            message.text_body.contains(&id) || message.html_body.contains(&id)
                        });
                    let data = if inline_body {
                        part.contents().to_vec()
                    } else {
                        attachment_bytes(message, part)
                    };
                    self.add(File {
                        location,
                        name: part.attachment_name().map(str::to_owned),
                        declared_type: declared_type(part),
                        depth: 0,
                        inline_body,
                        other_reading: false,
                        data,
                    });
                }
            }
        }
    }

    /// Lists what the second reading of `raw` finds that the first did not: a part
    /// only it splits out, a decoding mail-parser refused or made differently, a
    /// second `Content-Transfer-Encoding`, a second reading of the same base64, a
    /// name mail-parser did not give the part (each name a client may show is
    /// judged with the data).
    fn other_readings(&mut self, raw: &[u8]) {
        for leaf in mime::leaves(raw, self.limits.max_files) {
            let encodings = if leaf.encodings.is_empty() {
                vec![TransferEncoding::Identity]
            } else {
                leaf.encodings.clone()
            };
            let names: Vec<Option<&String>> = if leaf.names.is_empty() {
                vec![None]
            } else {
                leaf.names.iter().map(Some).collect()
            };
            for encoding in encodings {
                let readings = encoding.decode(&leaf.body);
                let two = readings.second.is_some();
                for (n, data) in std::iter::once(readings.first)
                    .chain(readings.second)
                    .enumerate()
                {
                    let unjudged: Vec<Option<&String>> = names
                        .iter()
                        .copied()
                        .filter(|name| !self.known(&data, &leaf, *name))
                        .collect();
                    let how = match (encoding, n) {
                        (TransferEncoding::Base64, 1) => "base64, read past the padding",
                        (TransferEncoding::QuotedPrintable, 1) => {
                            "quoted-printable, blanks at line ends dropped"
                        }
                        _ => encoding.as_str(),
                    };
                    // A text body read differently is still a body: the rules read
                    // it with the others; an attachment stays an attachment. Python's
                    // reading of quoted-printable, which keeps blanks clients drop,
                    // is the same words with stray `=`: a file for the content
                    // engines, not more text for the rules.
                    let python_only_qp =
                        encoding == TransferEncoding::QuotedPrintable && two && n == 0;
                    let inline_body = leaf.names.is_empty()
                        && !python_only_qp
                        && matches!(leaf.content_type.as_str(), "text/plain" | "text/html");
                    if leaf.content_type.starts_with("text/") || leaf.content_type.is_empty() {
                        for block in decode::embedded(&data, self.limits.max_files) {
                            if self.known(&block.data, &leaf, None) {
                                continue;
                            }
                            let location = format!(
                                "reading 2 part {} ({}, named {:?})",
                                leaf.path, block.how, block.name
                            );
                            if !self.admit(&location) {
                                return;
                            }
                            self.add(File {
                                location,
                                name: Some(block.name),
                                declared_type: None,
                                depth: 0,
                                inline_body: false,
                                other_reading: true,
                                data: block.data,
                            });
                        }
                    }
                    let mut data = data;
                    for (i, name) in unjudged.iter().enumerate() {
                        let location = match name {
                            Some(name) if leaf.names.len() > 1 => {
                                format!("reading 2 part {} ({how}, named {name:?})", leaf.path)
                            }
                            _ => format!("reading 2 part {} ({how})", leaf.path),
                        };
                        if !self.admit(&location) {
                            return;
                        }
                        let data = if i + 1 == unjudged.len() {
                            std::mem::take(&mut data)
                        } else {
                            data.clone()
                        };
                        self.add(File {
                            location,
                            name: name.cloned(),
                            declared_type: Some(leaf.content_type.clone()),
                            depth: 0,
                            inline_body,
                            other_reading: true,
                            data,
                        });
                    }
                }
            }
        }
    }

    /// Whether `data`, a reading of `leaf`, is already listed as a MIME part named
    /// `name` (any name for `None`): as it is, or (for text, which mail-parser
    /// lists in UTF-8) once decoded from its charset.
    fn known(&self, data: &[u8], leaf: &mime::Leaf<'_>, name: Option<&String>) -> bool {
        let parts = || {
            self.contents
                .files
                .iter()
                .filter(|f| f.depth == 0 && name.is_none_or(|n| f.name.as_ref() == Some(n)))
        };
        if parts().any(|f| f.data == data) {
            return true;
        }
        if !leaf.content_type.starts_with("text/") {
            return false;
        }
        let text = match leaf
            .charset
            .as_deref()
            .and_then(|c| charset_decoder(c.as_bytes()))
        {
            Some(decode) => decode(data),
            None => String::from_utf8_lossy(data).into_owned(),
        };
        parts().any(|f| f.data == text.as_bytes())
    }

    /// Lists `file`, already admitted, and, if it is an archive, what it holds.
    fn add(&mut self, file: File) {
        let kind = archive_kind(&file.data);
        self.contents.files.push(file);
        let Some(kind) = kind else {
            return;
        };
        let index = self.contents.files.len() - 1;
        let file = &mut self.contents.files[index];
        // Members are appended after the archive, so its index stays valid; its data
        // is lent out meanwhile rather than copied.
        let data = std::mem::take(&mut file.data);
        let location = file.location.clone();
        let name = file.name.clone();
        let depth = file.depth + 1;
        if depth > self.limits.max_depth {
            self.finding(FindingKind::Bomb, "limit:depth", &location);
        } else {
            match kind {
                Archive::Zip => self.zip(&data, &location, depth),
                Archive::Gzip => self.gzip(&data, &location, name.as_deref(), depth),
                Archive::Tar => self.tar(&data, &location, depth),
            }
        }
        self.contents.files[index].data = data;
    }

    /// Counts one more file against `max_files`; false once the limit is reached.
    fn admit(&mut self, location: &str) -> bool {
        if self.stopped {
            return false;
        }
        if self.seen >= self.limits.max_files {
            self.finding(FindingKind::Bomb, "limit:files", location);
            self.stopped = true;
            return false;
        }
        self.seen += 1;
        true
    }

    fn finding(&mut self, kind: FindingKind, name: &str, location: &str) {
        let findings = &mut self.contents.findings;
        if findings.len() >= MAX_FINDINGS
            || findings
                .iter()
                .any(|f| f.kind == kind && f.name == name && f.location == location)
        {
            return;
        }
        findings.push(Finding {
            kind,
            name: name.to_owned(),
            location: location.to_owned(),
        });
    }

    fn remaining(&self) -> u64 {
        self.limits.max_total_bytes.saturating_sub(self.extracted)
    }

    /// How many bytes a member may expand to, or `None` (with a finding) when its
    /// declared size alone breaks a limit. `compressed` is what it is read from.
    fn allowance(&mut self, declared: Option<u64>, compressed: u64, location: &str) -> Option<u64> {
        let by_ratio = compressed
            .saturating_mul(self.limits.max_ratio)
            .max(RATIO_FLOOR);
        let remaining = self.remaining();
        match declared {
            Some(size) if size > by_ratio => {
                self.finding(FindingKind::Bomb, "limit:ratio", location);
                None
            }
            Some(size) if size > remaining => {
                self.finding(FindingKind::Bomb, "limit:total", location);
                None
            }
            Some(size) => Some(size),
            None => Some(by_ratio.min(remaining)),
        }
    }

    /// Reads one member through `reader`, at most `allowed` bytes, and lists it.
    /// `declared` is the size its archive claims, when it claims one.
    fn member(
        &mut self,
        reader: impl Read,
        allowed: u64,
        declared: Option<u64>,
        name: String,
        location: String,
        depth: u32,
    ) {
        // One byte more than allowed tells an overrun from an exact fit. The initial
        // capacity trusts the declaration only as far as the allowance goes.
        let capacity = usize::try_from(allowed.min(RATIO_FLOOR)).unwrap_or(0);
        let mut data = Vec::with_capacity(capacity);
        // A read error (corrupt stream, bad checksum) keeps what was read before it.
        let _ = reader.take(allowed + 1).read_to_end(&mut data);
        if data.len() as u64 > allowed {
            let limit = if declared.is_some() {
                "limit:declared_size"
            } else if allowed == self.remaining() {
                "limit:total"
            } else {
                "limit:ratio"
            };
            self.finding(FindingKind::Bomb, limit, &location);
            return;
        }
        self.extracted += data.len() as u64;
        self.add(File {
            location,
            name: Some(name),
            declared_type: None,
            depth,
            inline_body: false,
            other_reading: false,
            data,
        });
    }

    fn zip(&mut self, data: &[u8], parent: &str, depth: u32) {
        let mut archive = match zip::ZipArchive::new(Cursor::new(data)) {
            Ok(archive) => archive,
            // No readable central directory: walk the local headers instead.
            Err(_) => return self.zip_stream(data, parent, depth),
        };
        let mut encrypted = false;
        for index in 0..archive.len() {
            let Ok(entry) = archive.by_index_raw(index) else {
                continue;
            };
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().to_owned();
            let (size, compressed, is_encrypted) =
                (entry.size(), entry.compressed_size(), entry.encrypted());
            drop(entry);
            let location = format!("{parent}/{name}");
            if !self.admit(&location) {
                return;
            }
            if is_encrypted {
                if !encrypted {
                    encrypted = true;
                    self.finding(FindingKind::Encrypted, "encrypted_archive", parent);
                }
                continue;
            }
            let Some(allowed) = self.allowance(Some(size), compressed, &location) else {
                continue;
            };
            // Methods not built in (bzip2, lzma, ...) cannot be read; skip them.
            let Ok(reader) = archive.by_index(index) else {
                continue;
            };
            self.member(reader, allowed, Some(size), name, location, depth);
        }
    }

    /// Reads a zip whose central directory is missing or damaged, entry by entry
    /// from the start, as far as the local headers allow.
    fn zip_stream(&mut self, data: &[u8], parent: &str, depth: u32) {
        let mut cursor = Cursor::new(data);
        loop {
            let entry = match zip::read::read_zipfile_from_stream(&mut cursor) {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(zip::result::ZipError::UnsupportedArchive(_)) => {
                    // The stream reader refuses encrypted entries and cannot skip them.
                    self.finding(FindingKind::Encrypted, "encrypted_archive", parent);
                    return;
                }
                Err(_) => return,
            };
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().to_owned();
            let location = format!("{parent}/{name}");
            if !self.admit(&location) {
                return;
            }
            let size = entry.size();
            let Some(allowed) = self.allowance(Some(size), entry.compressed_size(), &location)
            else {
                continue;
            };
            // Dropping the entry skips its unread compressed bytes without inflating them.
            self.member(entry, allowed, Some(size), name, location, depth);
        }
    }

    fn gzip(&mut self, data: &[u8], parent: &str, parent_name: Option<&str>, depth: u32) {
        let mut decoder = flate2::read::MultiGzDecoder::new(data);
        // The header, and with it the original file name, is parsed on first read.
        let mut first = [0u8; 1];
        let first_len = decoder.read(&mut first).unwrap_or(0);
        let name = decoder
            .header()
            .and_then(|h| h.filename())
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
            .and_then(|n| basename(&n).map(str::to_owned))
            .unwrap_or_else(|| gunzipped_name(parent_name));
        let location = format!("{parent}/{name}");
        if !self.admit(&location) {
            return;
        }
        let Some(allowed) = self.allowance(None, data.len() as u64, &location) else {
            return;
        };
        let reader = Cursor::new(&first[..first_len]).chain(decoder);
        self.member(reader, allowed, None, name, location, depth);
    }

    fn tar(&mut self, data: &[u8], parent: &str, depth: u32) {
        let mut archive = tar::Archive::new(Cursor::new(data));
        let Ok(entries) = archive.entries() else {
            return;
        };
        for entry in entries {
            // A damaged header ends the walk; what came before it is listed.
            let Ok(entry) = entry else {
                return;
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let location = format!("{parent}/{name}");
            if !self.admit(&location) {
                return;
            }
            let size = entry.size();
            // Tar stores members as they are: the ratio is one.
            let Some(allowed) = self.allowance(Some(size), size, &location) else {
                continue;
            };
            self.member(entry, allowed, Some(size), name, location, depth);
        }
    }
}

/// The last component of a path inside an archive, if it has one.
fn basename(path: &str) -> Option<&str> {
    path.rsplit(['/', '\\']).next().filter(|n| !n.is_empty())
}

/// The name of what a gzip file holds when its header does not say: `a.tar.gz`
/// and `a.tgz` hold `a.tar`, `a.gz` holds `a`.
fn gunzipped_name(archive: Option<&str>) -> String {
    let Some(archive) = archive.and_then(basename) else {
        return "gunzipped".to_owned();
    };
    let lower = archive.to_ascii_lowercase();
    if lower.ends_with(".tgz") {
        format!("{}.tar", &archive[..archive.len() - 4])
    } else if lower.ends_with(".gz") && archive.len() > 3 {
        archive[..archive.len() - 3].to_owned()
    } else {
        format!("{archive}.gunzipped")
    }
}

/// The declared `Content-Type`, lowercase, without parameters.
fn declared_type(part: &MessagePart<'_>) -> Option<String> {
    part.content_type().map(|ct| match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
        None => ct.ctype().to_ascii_lowercase(),
    })
}

/// An attachment's bytes as sent. mail-parser turns text parts into UTF-8, which
/// would mangle a binary declared as text (and change its hash), so those are
/// decoded again from the raw part; binary parts are already as sent.
fn attachment_bytes(message: &Message<'_>, part: &MessagePart<'_>) -> Vec<u8> {
    if part.is_text() {
        let raw = message
            .raw_message
            .get(part.offset_body as usize..part.offset_end as usize);
        match (part.encoding, raw) {
            (Encoding::Base64, Some(raw)) => return decode::base64(raw).first,
            // Also a part whose encoding mail-parser could not decode: the bytes
            // as sent, not their UTF-8 rendering.
            (Encoding::None, Some(raw)) => return raw.to_vec(),
            (Encoding::QuotedPrintable, Some(raw)) => {
                // mail-parser's own reading of the text; the other is the second
                // reading's.
                let readings = decode::quoted_printable(raw);
                return readings.second.unwrap_or(readings.first);
            }
            _ => {}
        }
    }
    part.contents().to_vec()
}

/// Builders of test material (MIME messages, zip, gzip, tar) shared by the tests
/// of the scanning engines.
#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;

    /// A multipart/mixed message with a text body and each attachment as
    /// `(file name, content type, data)`, base64-encoded.
    pub(crate) fn message_with(attachments: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut out = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n\
            --XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n"
            .to_vec();
        for (name, content_type, data) in attachments {
            let encoded = base64(data);
            write!(
                out,
                "--XYZ\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
                 Content-Disposition: attachment; filename=\"{name}\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
            )
            .unwrap();
        }
        out.extend_from_slice(b"--XYZ--\r\n");
        out
    }

    /// Base64 in lines of 76, as mail carries it.
    pub(crate) fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for (i, chunk) in data.chunks(3).enumerate() {
            if i > 0 && i % 19 == 0 {
                out.push_str("\r\n");
            }
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// A zip of `(name, data)` entries, deflated.
    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    /// A zip of `(name, data)` entries stored as they are.
    pub(crate) fn stored_zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    /// Sets the "encrypted" flag of every entry, in local and central headers, as
    /// a ZipCrypto writer would.
    pub(crate) fn mark_encrypted(zip: &mut [u8]) {
        for i in 0..zip.len().saturating_sub(10) {
            if zip[i..].starts_with(b"PK\x03\x04") {
                zip[i + 6] |= 1;
            } else if zip[i..].starts_with(b"PK\x01\x02") {
                zip[i + 8] |= 1;
            }
        }
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    pub(crate) fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn unpack_raw(raw: &[u8], limits: &Limits) -> Contents {
        let message = mail_parser::MessageParser::default().parse(raw).unwrap();
        unpack(&message, limits)
    }

    /// What `engine` reports about the message `raw`, unpacked with default limits.
    pub(crate) fn scan_raw(
        engine: &dyn super::super::engine::Engine,
        raw: &[u8],
    ) -> super::super::engine::Outcome {
        let message = mail_parser::MessageParser::default().parse(raw).unwrap();
        let contents = unpack(&message, &Limits::default());
        let view = crate::scan::spam::view(&message, &contents);
        let parsed = super::super::engine::Parsed {
            rcpt_to: &[],
            client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
            raw,
            message: &message,
            contents: &contents,
            view: &view,
            local_domains: &[],
            bayes: false,
        };
        engine.scan(&parsed)
    }

    fn locations(contents: &Contents) -> Vec<(&str, u32)> {
        contents
            .files
            .iter()
            .map(|f| (f.location.as_str(), f.depth))
            .collect()
    }

    #[test]
    fn mime_parts_become_files_with_names_types_and_decoded_data() {
        let raw = message_with(&[("report.pdf", "Application/PDF", b"%PDF-1.4 tiny")]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(contents.files.len(), 2);
        let body = &contents.files[0];
        assert!(body.inline_body);
        assert_eq!(body.declared_type.as_deref(), Some("text/plain"));
        assert_eq!(body.data, b"Hello.");
        let pdf = &contents.files[1];
        assert_eq!(pdf.location, "part 2");
        assert!(!pdf.inline_body);
        assert_eq!(pdf.name.as_deref(), Some("report.pdf"));
        assert_eq!(pdf.declared_type.as_deref(), Some("application/pdf"));
        assert_eq!(pdf.data, b"%PDF-1.4 tiny");
        assert!(contents.findings.is_empty());
    }

    #[test]
    fn every_name_a_part_is_given_is_judged_with_its_data() {
        // mail-parser and Python name it by the plain `filename`; clients that
        // prefer the RFC 2231 form show `setup.exe`.
        let raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n\
            Content-Type: application/octet-stream\r\nContent-Disposition: attachment; \
            filename=\"invoice.pdf\"; filename*=utf-8''setup.exe\r\n\r\ndata\r\n--B--\r\n";
        let contents = unpack_raw(raw, &Limits::default());
        let named: Vec<(Option<&str>, &str, &[u8])> = contents
            .files
            .iter()
            .map(|f| (f.name.as_deref(), f.location.as_str(), f.data.as_slice()))
            .collect();
        assert_eq!(
            named,
            [
                (Some("invoice.pdf"), "part 1", &b"data"[..]),
                (
                    Some("setup.exe"),
                    "reading 2 part 1 (identity, named \"setup.exe\")",
                    b"data"
                ),
            ]
        );
    }

    #[test]
    fn binary_declared_as_text_keeps_its_bytes() {
        let data: Vec<u8> = (0u8..=255).collect();
        let raw = message_with(&[("notes.txt", "text/plain", &data)]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(contents.files[1].data, data);
    }

    #[test]
    fn attached_message_parts_are_listed_with_a_nested_location() {
        let inner = message_with(&[("a.bin", "application/octet-stream", b"inner data")]);
        let mut raw = b"From: a@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"OUT\"\r\n\r\n--OUT\r\n\
            Content-Type: text/plain\r\n\r\nSee attached.\r\n--OUT\r\n\
            Content-Type: message/rfc822\r\n\r\n"
            .to_vec();
        raw.extend_from_slice(&inner);
        raw.extend_from_slice(b"\r\n--OUT--\r\n");
        let contents = unpack_raw(&raw, &Limits::default());
        let nested = contents
            .files
            .iter()
            .find(|f| f.data == b"inner data")
            .expect("nested attachment listed");
        assert_eq!(nested.location, "part 2/part 2");
        assert_eq!(nested.name.as_deref(), Some("a.bin"));
    }

    #[test]
    fn archives_are_opened_recursively_by_content() {
        let inner = zip_of(&[("a/b.exe", b"MZ inner")]);
        let tgz = gzip(&tar_of(&[("docs/readme.txt", b"read me")]));
        let outer = zip_of(&[("inner.zip", &inner), ("bundle.tgz", &tgz)]);
        // The name says PDF; the content says zip.
        let raw = message_with(&[("invoice.pdf", "application/pdf", &outer)]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(
            locations(&contents),
            [
                ("part 1", 0),
                ("part 2", 0),
                ("part 2/inner.zip", 1),
                ("part 2/inner.zip/a/b.exe", 2),
                ("part 2/bundle.tgz", 1),
                ("part 2/bundle.tgz/bundle.tar", 2),
                ("part 2/bundle.tgz/bundle.tar/docs/readme.txt", 3),
            ]
        );
        let exe = &contents.files[3];
        assert_eq!(exe.name.as_deref(), Some("a/b.exe"));
        assert_eq!(exe.data, b"MZ inner");
        assert_eq!(contents.files[6].data, b"read me");
        assert!(contents.findings.is_empty(), "{:?}", contents.findings);
    }

    #[test]
    fn zip_bomb_ends_as_a_finding_quickly() {
        // 50 MB of zeros deflate to about 50 KB: a ratio near 1000.
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("zeros.bin", options).unwrap();
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..50 {
            writer.write_all(&chunk).unwrap();
        }
        writer.start_file("after.txt", options).unwrap();
        writer.write_all(b"still listed").unwrap();
        let bomb = writer.finish().unwrap().into_inner();
        assert!(bomb.len() < 1024 * 1024);
        let raw = message_with(&[("bomb.zip", "application/zip", &bomb)]);

        let started = Instant::now();
        let contents = unpack_raw(&raw, &Limits::default());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            contents.findings,
            [Finding {
                kind: FindingKind::Bomb,
                name: "limit:ratio".into(),
                location: "part 2/zeros.bin".into(),
            }]
        );
        assert!(contents.files.iter().all(|f| f.data.len() < 1024 * 1024));
        assert!(contents
            .files
            .iter()
            .any(|f| f.location == "part 2/after.txt"));
    }

    #[test]
    fn gzip_bomb_is_cut_at_the_ratio() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..20 {
            encoder.write_all(&chunk).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        let raw = message_with(&[("zeros.gz", "application/gzip", &bomb)]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(contents.findings.len(), 1);
        assert_eq!(contents.findings[0].name, "limit:ratio");
        assert_eq!(contents.findings[0].location, "part 2/zeros");
        assert_eq!(contents.files.len(), 2);
    }

    #[test]
    fn nested_zips_stop_at_the_depth_limit() {
        let mut archive = zip_of(&[("eicar.com", b"payload")]);
        for level in 0..7 {
            archive = zip_of(&[(&format!("level{level}.zip"), &archive)]);
        }
        let raw = message_with(&[("nested.zip", "application/zip", &archive)]);
        let contents = unpack_raw(&raw, &Limits::default());
        let deepest = contents.files.iter().map(|f| f.depth).max().unwrap();
        assert_eq!(deepest, 5);
        assert_eq!(contents.findings.len(), 1);
        assert_eq!(contents.findings[0].kind, FindingKind::Bomb);
        assert_eq!(contents.findings[0].name, "limit:depth");
    }

    #[test]
    fn file_count_and_total_size_are_limited() {
        let data = vec![7u8; 1000];
        let names: Vec<String> = (0..20).map(|i| format!("f{i}.txt")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
        let raw = message_with(&[("many.zip", "application/zip", &zip_of(&entries))]);

        let few = Limits {
            max_files: 5,
            ..Limits::default()
        };
        let contents = unpack_raw(&raw, &few);
        assert_eq!(contents.files.len(), 5);
        assert_eq!(contents.findings[0].name, "limit:files");

        let small = Limits {
            max_total_bytes: 4500,
            ..Limits::default()
        };
        let contents = unpack_raw(&raw, &small);
        // Two MIME parts and four members of 1000 bytes fit in 4500.
        assert_eq!(contents.files.len(), 6);
        assert!(contents.findings.iter().all(|f| f.name == "limit:total"));
        assert!(!contents.findings.is_empty());
    }

    #[test]
    fn a_member_larger_than_declared_is_refused() {
        let mut zip = stored_zip_of(&[("liar.bin", &[1u8; 100])]);
        // Declare 10 bytes instead of 100, in the local and the central header.
        for i in 0..zip.len() - 30 {
            if zip[i..].starts_with(b"PK\x03\x04") {
                zip[i + 22..i + 26].copy_from_slice(&10u32.to_le_bytes());
            } else if zip[i..].starts_with(b"PK\x01\x02") {
                zip[i + 24..i + 28].copy_from_slice(&10u32.to_le_bytes());
            }
        }
        let raw = message_with(&[("liar.zip", "application/zip", &zip)]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(contents.findings.len(), 1);
        assert_eq!(contents.findings[0].name, "limit:declared_size");
        assert_eq!(contents.files.len(), 2);
    }

    #[test]
    fn encrypted_members_are_flagged_and_the_archive_listed() {
        let mut zip = stored_zip_of(&[("secret.exe", b"MZ secret"), ("b.txt", b"b")]);
        mark_encrypted(&mut zip);
        let raw = message_with(&[("secret.zip", "application/zip", &zip)]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert_eq!(
            contents.findings,
            [Finding {
                kind: FindingKind::Encrypted,
                name: "encrypted_archive".into(),
                location: "part 2".into(),
            }]
        );
        assert_eq!(locations(&contents), [("part 1", 0), ("part 2", 0)]);
    }

    #[test]
    fn corrupt_archives_list_what_can_be_read() {
        let zip = zip_of(&[("first.txt", b"first"), ("second.txt", b"second")]);
        // Cut before the central directory: only the local headers remain.
        let cut = zip.len() - 150;
        let raw = message_with(&[
            ("cut.zip", "application/zip", &zip[..cut]),
            ("junk.gz", "application/gzip", b"\x1f\x8b\x08\0garbage"),
            ("junk.tar", "application/x-tar", &[b'u'; 600]),
        ]);
        let contents = unpack_raw(&raw, &Limits::default());
        assert!(contents.files.iter().any(|f| f.data == b"first"));
        assert!(contents.findings.is_empty());
    }
}

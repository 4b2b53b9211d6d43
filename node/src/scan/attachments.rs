//! The attachments engine: what an attachment really is against what it claims,
//! blocked extensions (also inside archives), double extensions, and active
//! content: Office macros, PDFs with JavaScript or launch actions, HTML that
//! smuggles a payload. It also scores what unpacking found (bombs, encryption).

use std::collections::HashSet;
use std::io::{Cursor, Read};

use super::engine::{Engine, File, Finding, FindingKind, Hit, Outcome, Parsed};

/// Extensions blocked by default: executables, scripts, shortcuts, installers and
/// disk images that Windows opens with one click.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "ade",
    "adp",
    "app",
    "appinstaller",
    "appx",
    "appxbundle",
    "application",
    "bas",
    "bat",
    "cab",
    "chm",
    "cmd",
    "com",
    "cpl",
    "crt",
    "diagcab",
    "exe",
    "gadget",
    "hlp",
    "hta",
    "img",
    "inf",
    "ins",
    "iso",
    "isp",
    "jar",
    "jnlp",
    "js",
    "jse",
    "lib",
    "lnk",
    "mde",
    "msc",
    "msi",
    "msix",
    "msixbundle",
    "msp",
    "mst",
    "nsh",
    "pif",
    "ps1",
    "ps1xml",
    "ps2",
    "psc1",
    "psm1",
    "reg",
    "scf",
    "scr",
    "sct",
    "settingcontent-ms",
    "shb",
    "sys",
    "url",
    "vb",
    "vbe",
    "vbs",
    "vhd",
    "vhdx",
    "vxd",
    "wsc",
    "wsf",
    "wsh",
    "xll",
    "xnk",
];

/// The scores of this engine's symbols.
const BLOCKED_EXT: (&str, f64) = ("ATTACH_BLOCKED_EXT", 8.0);
const DOUBLE_EXT: (&str, f64) = ("ATTACH_DOUBLE_EXT", 8.0);
const TYPE_MISMATCH: (&str, f64) = ("ATTACH_TYPE_MISMATCH", 6.0);
const OFFICE_MACRO: (&str, f64) = ("OFFICE_MACRO", 4.0);
const PDF_JAVASCRIPT: (&str, f64) = ("PDF_JAVASCRIPT", 4.0);
const PDF_LAUNCH: (&str, f64) = ("PDF_LAUNCH", 6.0);
const HTML_SMUGGLING: (&str, f64) = ("HTML_SMUGGLING", 8.0);
const ARCHIVE_ENCRYPTED: (&str, f64) = ("ARCHIVE_ENCRYPTED", 3.0);
const ARCHIVE_BOMB: (&str, f64) = ("ARCHIVE_BOMB", 6.0);

/// Extensions a document is disguised as in front of the real one.
const DECOY_EXTENSIONS: &[&str] = &[
    "7z", "avi", "bmp", "csv", "doc", "docx", "eml", "gif", "htm", "html", "jpeg", "jpg", "mov",
    "mp3", "mp4", "msg", "odt", "pdf", "png", "ppt", "pptx", "rar", "rtf", "tif", "tiff", "txt",
    "wav", "xls", "xlsx", "xml", "zip",
];

/// Extensions an executable may carry without being disguised: its own kinds and
/// names that claim nothing.
const EXECUTABLE_EXTENSIONS: &[&str] = &[
    "ax", "bin", "class", "dat", "dex", "dll", "drv", "dylib", "efi", "elf", "ko", "mui", "node",
    "o", "ocx", "out", "so", "sys", "tmp",
];

/// The storages that hold VBA macros in an OLE (compound file) document.
const MACRO_STORAGES: &[&str] = &["Macros", "_VBA_PROJECT_CUR", "VBA"];

/// HTML attachments larger than this are judged on their first part only.
const HTML_SCAN_LIMIT: usize = 16 * 1024 * 1024;

/// A `data:` URL of an application type with this much base64 carries a file.
const SMUGGLED_DATA_URL_MIN: usize = 1024;

/// Compressed PDF streams inflated to look for hidden names, how far each, and
/// how far all together.
const PDF_MAX_STREAMS: usize = 256;
const PDF_STREAM_LIMIT: u64 = 1024 * 1024;
const PDF_TOTAL_LIMIT: u64 = 16 * 1024 * 1024;

/// Zip entries whose names are checked when the archive is re-read for its
/// directory.
const ZIP_MAX_ENTRIES: usize = 10_000;

/// Checks attachments against blocked extensions and for disguises and active
/// content.
pub struct AttachmentEngine {
    blocked: HashSet<String>,
}

impl AttachmentEngine {
    /// An engine blocking `blocked_extensions` (case-insensitive, with or without
    /// the leading dot); [`DEFAULT_BLOCKED`] is the usual choice.
    pub fn new(blocked_extensions: Vec<String>) -> Self {
        AttachmentEngine {
            blocked: blocked_extensions
                .into_iter()
                .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// Blocked and double extensions of one name at `location`.
    fn check_name(&self, name: &str, location: &str, report: &mut Report) {
        let Some(verdict) = self.judge_name(name) else {
            return;
        };
        let (symbol, score) = if verdict.starts_with("extension:") {
            BLOCKED_EXT
        } else {
            DOUBLE_EXT
        };
        report.add(
            FindingKind::BlockedAttachment,
            &verdict,
            location,
            (symbol, score),
            &format!("{name:?} at {location}"),
        );
    }

    /// What is wrong with a file name, if anything: a double extension (the worse
    /// disguise) or a blocked extension.
    fn judge_name(&self, name: &str) -> Option<String> {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        if base.contains(['\u{202e}', '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}']) {
            return Some("double_extension:bidi_override".to_owned());
        }
        // Windows ignores trailing dots and spaces.
        let trimmed = base.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
        let (stem, extension) = trimmed.rsplit_once('.')?;
        let extension = extension.to_ascii_lowercase();
        if !self.blocked.contains(&extension) {
            return None;
        }
        let padded = stem.ends_with("   ") || stem.ends_with("___");
        let inner = stem
            .trim_end_matches(|c: char| c.is_whitespace() || c == '_')
            .rsplit_once('.')
            .map(|(_, inner)| inner.to_ascii_lowercase());
        match inner {
            Some(inner) if DECOY_EXTENSIONS.contains(&inner.as_str()) => {
                Some(format!("double_extension:{inner}.{extension}"))
            }
            _ if padded => Some(format!("double_extension:padded.{extension}")),
            _ => Some(format!("extension:{extension}")),
        }
    }

    /// An executable whose name or declared type claims something else.
    fn check_type(&self, file: &File, report: &mut Report) {
        let Some(kind) = executable_kind(&file.data) else {
            return;
        };
        let name = file.name.as_deref().unwrap_or("");
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let extension = base
            .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase());
        let claim = match extension {
            Some(e) if self.blocked.contains(&e) || EXECUTABLE_EXTENSIONS.contains(&e.as_str()) => {
                return
            }
            Some(e) => e,
            None => match file.declared_type.as_deref() {
                Some(t) if claims_document(t) => t.rsplit('/').next().unwrap_or(t).to_owned(),
                _ => return,
            },
        };
        report.add(
            FindingKind::BlockedAttachment,
            &format!("mismatch:{kind}-as-{claim}"),
            &file.location,
            TYPE_MISMATCH,
            &format!("{kind} executable named {name:?} at {}", file.location),
        );
    }

    /// Re-reads a zip's directory: macros of OOXML documents, and names of members
    /// that unpacking could not list because they are encrypted.
    fn check_zip(&self, file: &File, report: &mut Report) {
        let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(file.data.as_slice())) else {
            return;
        };
        let mut has_macros = false;
        for index in 0..archive.len().min(ZIP_MAX_ENTRIES) {
            let Ok(entry) = archive.by_index_raw(index) else {
                continue;
            };
            let name = entry.name();
            let base = name.rsplit('/').next().unwrap_or(name);
            has_macros |= base.eq_ignore_ascii_case("vbaProject.bin");
            if entry.encrypted() {
                let location = format!("{}/{name}", file.location);
                self.check_name(name, &location, report);
            }
        }
        if has_macros {
            report.add(
                FindingKind::ActiveContent,
                "office_macro",
                &file.location,
                OFFICE_MACRO,
                &format!("Office document with VBA macros at {}", file.location),
            );
        }
    }
}

impl Engine for AttachmentEngine {
    fn name(&self) -> &'static str {
        "attachments"
    }

    fn version(&self) -> String {
        format!("1 ({} blocked extensions)", self.blocked.len())
    }

    fn scan(&self, message: &Parsed<'_>) -> Outcome {
        let mut report = Report::default();
        for file in &message.contents.files {
            if file.inline_body {
                continue;
            }
            if let Some(name) = &file.name {
                self.check_name(name, &file.location, &mut report);
            }
            self.check_type(file, &mut report);
            let data = file.data.as_slice();
            if data.starts_with(b"PK\x03\x04") {
                self.check_zip(file, &mut report);
            } else if data.starts_with(OLE_MAGIC) {
                check_ole(file, &mut report);
            } else if is_pdf(data) {
                check_pdf(file, &mut report);
            } else if is_html(file) {
                check_html(file, &mut report);
            }
        }
        for finding in &message.contents.findings {
            let (symbol, what) = match finding.kind {
                FindingKind::Encrypted => (ARCHIVE_ENCRYPTED, "encrypted archive"),
                FindingKind::Bomb => (ARCHIVE_BOMB, "archive unpacking stopped"),
                _ => continue,
            };
            report.hit(
                symbol,
                &format!("{what} ({}) at {}", finding.name, finding.location),
            );
        }
        report.outcome
    }
}

/// Findings and hits gathered for one message, one hit a symbol.
#[derive(Default)]
struct Report {
    outcome: Outcome,
}

impl Report {
    fn add(
        &mut self,
        kind: FindingKind,
        name: &str,
        location: &str,
        symbol: (&str, f64),
        description: &str,
    ) {
        let finding = Finding {
            kind,
            name: name.to_owned(),
            location: location.to_owned(),
        };
        if !self.outcome.findings.contains(&finding) {
            self.outcome.findings.push(finding);
        }
        self.hit(symbol, description);
    }

    /// Adds a hit for `symbol` unless it already has one: a symbol counts once.
    fn hit(&mut self, (symbol, score): (&str, f64), description: &str) {
        if !self.outcome.hits.iter().any(|h| h.symbol == symbol) {
            self.outcome.hits.push(Hit::new(symbol, score, description));
        }
    }

    /// Whether `location` lies inside a file already found to be `name`.
    fn within(&self, name: &str, location: &str) -> bool {
        self.outcome.findings.iter().any(|f| {
            f.name == name
                && location
                    .strip_prefix(f.location.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// The kind of executable `data` is, by its content.
fn executable_kind(data: &[u8]) -> Option<&'static str> {
    let kind = infer::get(data)?;
    match kind.extension() {
        // infer only looks at `MZ`; a Windows program also has a PE header.
        "exe" | "dll" => is_pe(data).then_some("exe"),
        "elf" => Some("elf"),
        "mach" => Some("macho"),
        "class" => Some("class"),
        "dex" | "dey" => Some("dex"),
        _ => None,
    }
}

/// Whether `data` is a Portable Executable: `MZ`, then `PE\0\0` where the DOS
/// header points.
fn is_pe(data: &[u8]) -> bool {
    let Some(offset) = data.get(0x3c..0x40) else {
        return false;
    };
    let offset = u32::from_le_bytes([offset[0], offset[1], offset[2], offset[3]]) as usize;
    data.starts_with(b"MZ")
        && offset
            .checked_add(4)
            .and_then(|end| data.get(offset..end))
            .is_some_and(|sig| sig == b"PE\0\0")
}

/// Whether a declared Content-Type names a document, image, sound, video or text.
fn claims_document(declared: &str) -> bool {
    ["image/", "audio/", "video/", "text/"]
        .iter()
        .any(|p| declared.starts_with(p))
        || declared == "application/pdf"
        || declared == "application/msword"
        || declared == "application/rtf"
        || declared.contains("officedocument")
        || declared.contains("ms-excel")
        || declared.contains("ms-powerpoint")
}

const OLE_MAGIC: &[u8] = &[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];

/// An OLE document (Word, Excel, PowerPoint 97-2003) with a VBA storage. A
/// `vbaProject.bin` inside an OOXML document already flagged is not flagged again.
fn check_ole(file: &File, report: &mut Report) {
    if report.within("office_macro", &file.location) {
        return;
    }
    let Ok(compound) = cfb::CompoundFile::open(Cursor::new(file.data.as_slice())) else {
        return;
    };
    let has_macros = compound.walk().any(|entry| {
        entry.is_storage()
            && MACRO_STORAGES
                .iter()
                .any(|s| entry.name().eq_ignore_ascii_case(s))
    });
    if has_macros {
        report.add(
            FindingKind::ActiveContent,
            "office_macro",
            &file.location,
            OFFICE_MACRO,
            &format!("Office document with VBA macros at {}", file.location),
        );
    }
}

/// Whether `data` is a PDF: readers accept the header anywhere in the first KiB.
fn is_pdf(data: &[u8]) -> bool {
    let head = &data[..data.len().min(1024)];
    head.windows(5).any(|w| w == b"%PDF-")
}

/// A PDF with JavaScript (`/JS`, `/JavaScript`, so also an `/OpenAction` that runs
/// it) or a `/Launch` action, also when the names hide in compressed object streams
/// or behind `#xx` escapes.
fn check_pdf(file: &File, report: &mut Report) {
    let mut names = HashSet::new();
    pdf_names(&file.data, &mut names);
    pdf_stream_names(&file.data, &mut names);
    let description = |what: &str| format!("PDF with {what} at {}", file.location);
    if names.contains("JavaScript") || names.contains("JS") {
        report.add(
            FindingKind::ActiveContent,
            "pdf_javascript",
            &file.location,
            PDF_JAVASCRIPT,
            &description("JavaScript"),
        );
    }
    if names.contains("Launch") {
        report.add(
            FindingKind::ActiveContent,
            "pdf_launch",
            &file.location,
            PDF_LAUNCH,
            &description("a launch action"),
        );
    }
}

/// Collects the PDF names (`/Name`, with `#xx` escapes decoded) of interest in `data`.
fn pdf_names(data: &[u8], names: &mut HashSet<&'static str>) {
    const WANTED: &[&str] = &["JavaScript", "JS", "Launch"];
    let is_delimiter = |b: u8| b.is_ascii_whitespace() || b"()<>[]{}/%".contains(&b) || b == 0;
    let mut index = 0;
    while let Some(offset) = data[index..].iter().position(|&b| b == b'/') {
        let start = index + offset + 1;
        let end = data[start..]
            .iter()
            .position(|&b| is_delimiter(b))
            .map_or(data.len(), |n| start + n);
        index = end.max(start);
        let raw = &data[start..end];
        if raw.len() > 32 {
            continue;
        }
        let mut name = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let escaped = (raw[i] == b'#')
                .then(|| raw.get(i + 1..i + 3))
                .flatten()
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match escaped {
                Some(byte) => {
                    name.push(byte);
                    i += 3;
                }
                None => {
                    name.push(raw[i]);
                    i += 1;
                }
            }
        }
        if let Some(found) = WANTED.iter().find(|w| w.as_bytes() == name.as_slice()) {
            names.insert(found);
        }
    }
}

/// Looks for names in a PDF's Flate-compressed streams, each inflated up to
/// [`PDF_STREAM_LIMIT`] and one at a time, at most [`PDF_MAX_STREAMS`] of them and
/// [`PDF_TOTAL_LIMIT`] bytes in all.
fn pdf_stream_names(data: &[u8], names: &mut HashSet<&'static str>) {
    let mut index = 0;
    let mut streams = 0;
    let mut total = 0u64;
    let mut inflated = Vec::new();
    while streams < PDF_MAX_STREAMS && total < PDF_TOTAL_LIMIT {
        let Some(offset) = find(&data[index..], b"stream") else {
            break;
        };
        let mut start = index + offset + b"stream".len();
        index = start;
        // `endstream` also contains `stream`; its data never follows.
        if data[..start - b"stream".len()].ends_with(b"end") {
            continue;
        }
        if data.get(start) == Some(&b'\r') {
            start += 1;
        }
        if data.get(start) == Some(&b'\n') {
            start += 1;
        }
        inflated.clear();
        let decoder = flate2::read::ZlibDecoder::new(&data[start..]);
        let _ = decoder.take(PDF_STREAM_LIMIT).read_to_end(&mut inflated);
        if !inflated.is_empty() {
            streams += 1;
            total += inflated.len() as u64;
            pdf_names(&inflated, names);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a file is an HTML document, by declared type, name or content.
fn is_html(file: &File) -> bool {
    if file
        .declared_type
        .as_deref()
        .is_some_and(|t| t == "text/html" || t == "application/xhtml+xml")
    {
        return true;
    }
    let named = file.name.as_deref().is_some_and(|n| {
        let n = n.to_ascii_lowercase();
        [".htm", ".html", ".shtml", ".xhtml", ".hta", ".svg"]
            .iter()
            .any(|e| n.ends_with(e))
    });
    let head: Vec<u8> = file
        .data
        .iter()
        .take(512)
        .map(u8::to_ascii_lowercase)
        .collect();
    named || find(&head, b"<html").is_some() || find(&head, b"<!doctype html").is_some()
}

/// HTML that assembles a file in the browser: a large `data:application/...`
/// base64 URL, or script that decodes data (`atob`) into a `Blob` and offers it
/// for download.
fn check_html(file: &File, report: &mut Report) {
    let text: Vec<u8> = file
        .data
        .iter()
        .take(HTML_SCAN_LIMIT)
        .map(u8::to_ascii_lowercase)
        .collect();
    let large_data_url = {
        let mut found = false;
        let mut index = 0;
        while let Some(offset) = find(&text[index..], b"data:application/") {
            let start = index + offset;
            index = start + 1;
            let header_end = text[start..]
                .iter()
                .take(128)
                .position(|&b| b == b',')
                .map(|n| start + n);
            let Some(comma) = header_end else {
                continue;
            };
            if !text[start..comma].ends_with(b";base64") {
                continue;
            }
            let payload = text[comma + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(b))
                .count();
            if payload >= SMUGGLED_DATA_URL_MIN {
                found = true;
                break;
            }
        }
        found
    };
    let scripted = find(&text, b"<script").is_some()
        && find(&text, b"atob(").is_some()
        && find(&text, b"blob(").is_some()
        && (find(&text, b"download").is_some() || find(&text, b"mssaveoropenblob").is_some());
    if large_data_url || scripted {
        report.add(
            FindingKind::ActiveContent,
            "html_smuggling",
            &file.location,
            HTML_SMUGGLING,
            &format!("HTML attachment that builds a file at {}", file.location),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::contents::tests::{
        mark_encrypted, message_with, scan_raw, stored_zip_of, zip_of,
    };
    use super::*;

    fn engine() -> AttachmentEngine {
        AttachmentEngine::new(DEFAULT_BLOCKED.iter().map(|e| (*e).to_owned()).collect())
    }

    fn findings(outcome: &Outcome) -> Vec<(FindingKind, &str, &str)> {
        outcome
            .findings
            .iter()
            .map(|f| (f.kind, f.name.as_str(), f.location.as_str()))
            .collect()
    }

    fn symbols(outcome: &Outcome) -> Vec<&str> {
        outcome.hits.iter().map(|h| h.symbol.as_str()).collect()
    }

    /// A minimal Portable Executable header: `MZ`, and `PE\0\0` at 0x80.
    fn pe() -> Vec<u8> {
        let mut data = vec![0u8; 0x200];
        data[..2].copy_from_slice(b"MZ");
        data[0x3c] = 0x80;
        data[0x80..0x84].copy_from_slice(b"PE\0\0");
        data
    }

    /// An OLE compound file with a stream and, if `macros`, a VBA storage.
    fn ole(storage: Option<&str>) -> Vec<u8> {
        let mut compound = cfb::CompoundFile::create(Cursor::new(Vec::new())).unwrap();
        compound
            .create_stream("/WordDocument")
            .unwrap()
            .write_all(b"document")
            .unwrap();
        if let Some(storage) = storage {
            compound.create_storage(format!("/{storage}")).unwrap();
            compound
                .create_stream(format!("/{storage}/dir"))
                .unwrap()
                .write_all(b"vba")
                .unwrap();
        }
        compound.flush().unwrap();
        compound.into_inner().into_inner()
    }

    fn ooxml(with_macros: bool) -> Vec<u8> {
        let project = ole(Some("VBA"));
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", b"<w:document/>"),
        ];
        if with_macros {
            entries.push(("word/vbaProject.bin", &project));
        }
        zip_of(&entries)
    }

    #[test]
    fn blocked_and_double_extensions() {
        let raw = message_with(&[
            ("setup.EXE", "application/octet-stream", b"x"),
            ("invoice.pdf.exe", "application/octet-stream", b"x"),
            ("report.pdf      .exe", "application/octet-stream", b"x"),
            ("notes.txt", "text/plain", b"x"),
            ("run.js.", "application/octet-stream", b"x"),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::BlockedAttachment as B;
        assert_eq!(
            findings(&outcome),
            [
                (B, "extension:exe", "part 2"),
                (B, "double_extension:pdf.exe", "part 3"),
                (B, "double_extension:pdf.exe", "part 4"),
                (B, "extension:js", "part 6"),
            ]
        );
        assert_eq!(
            symbols(&outcome),
            ["ATTACH_BLOCKED_EXT", "ATTACH_DOUBLE_EXT"]
        );
    }

    #[test]
    fn names_are_judged_like_windows_would() {
        let engine = engine();
        let judge = |n: &str| engine.judge_name(n);
        assert_eq!(judge("a/b/c.scr").as_deref(), Some("extension:scr"));
        assert_eq!(
            judge("photo.jpg   ___.lnk").as_deref(),
            Some("double_extension:jpg.lnk")
        );
        assert_eq!(
            judge("readme        .lnk").as_deref(),
            Some("double_extension:padded.lnk")
        );
        assert_eq!(judge("setup.v2.exe").as_deref(), Some("extension:exe"));
        assert_eq!(
            judge("invoice\u{202e}fdp.exe").as_deref(),
            Some("double_extension:bidi_override")
        );
        assert_eq!(judge("report.pdf"), None);
        assert_eq!(judge("exe"), None);
        let custom = AttachmentEngine::new(vec![".PDF".into()]);
        assert_eq!(custom.judge_name("a.pdf").as_deref(), Some("extension:pdf"));
        assert_eq!(custom.judge_name("a.exe"), None);
    }

    #[test]
    fn blocked_names_inside_archives_also_encrypted_ones() {
        let zip = zip_of(&[("docs/tool.vbs", b"x"), ("docs/readme.txt", b"x")]);
        let mut secret = stored_zip_of(&[("payload.exe", b"x")]);
        mark_encrypted(&mut secret);
        let raw = message_with(&[
            ("docs.zip", "application/zip", &zip),
            ("secret.zip", "application/zip", &secret),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::BlockedAttachment as B;
        assert_eq!(
            findings(&outcome),
            [
                (B, "extension:vbs", "part 2/docs/tool.vbs"),
                (B, "extension:exe", "part 3/payload.exe"),
            ]
        );
        assert_eq!(
            symbols(&outcome),
            ["ATTACH_BLOCKED_EXT", "ARCHIVE_ENCRYPTED"]
        );
    }

    #[test]
    fn an_executable_disguised_as_a_document() {
        let exe = pe();
        let raw = message_with(&[
            ("invoice.pdf", "application/pdf", &exe),
            ("scan", "image/jpeg", &exe),
            ("library.dll", "application/octet-stream", &exe),
            (
                "fake.txt",
                "text/plain",
                b"MZ but no PE header at all, just text",
            ),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::BlockedAttachment as B;
        assert_eq!(
            findings(&outcome),
            [
                (B, "mismatch:exe-as-pdf", "part 2"),
                (B, "mismatch:exe-as-jpeg", "part 3"),
            ]
        );
        assert_eq!(symbols(&outcome), ["ATTACH_TYPE_MISMATCH"]);
    }

    #[test]
    fn office_macros_in_ooxml_and_ole_but_not_in_a_plain_docx() {
        let raw = message_with(&[
            (
                "report.docm",
                "application/vnd.ms-word.document.macroEnabled.12",
                &ooxml(true),
            ),
            (
                "old.xls",
                "application/vnd.ms-excel",
                &ole(Some("_VBA_PROJECT_CUR")),
            ),
            ("letter.doc", "application/msword", &ole(Some("Macros"))),
            (
                "plain.docx",
                "application/vnd.openxmlformats-officedocument",
                &ooxml(false),
            ),
            ("plain.doc", "application/msword", &ole(None)),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::ActiveContent as A;
        // The vbaProject.bin inside the .docm is not reported a second time.
        assert_eq!(
            findings(&outcome),
            [
                (A, "office_macro", "part 2"),
                (A, "office_macro", "part 3"),
                (A, "office_macro", "part 4"),
            ]
        );
        assert_eq!(symbols(&outcome), ["OFFICE_MACRO"]);
    }

    #[test]
    fn pdfs_with_javascript_or_launch_actions() {
        let plain_js: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog /OpenAction 2 0 R >> endobj\n\
            2 0 obj << /S /JavaScript /JS (app.alert(1)) >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
        let escaped_launch: &[u8] =
            b"%PDF-1.7\n1 0 obj << /OpenAction << /S /L#61unch /F (cmd.exe) >> >> endobj\n%%EOF\n";
        let mut compressed = Vec::new();
        let mut encoder =
            flate2::write::ZlibEncoder::new(&mut compressed, flate2::Compression::default());
        encoder
            .write_all(b"3 0 obj << /S /JavaScript /JS 4 0 R >> endobj")
            .unwrap();
        encoder.finish().unwrap();
        let hidden = [
            &b"%PDF-1.5\n5 0 obj << /Type /ObjStm /Filter /FlateDecode >>\nstream\r\n"[..],
            &compressed,
            b"\r\nendstream\nendobj\n%%EOF\n",
        ]
        .concat();
        let raw = message_with(&[
            ("a.pdf", "application/pdf", plain_js),
            ("b.pdf", "application/pdf", escaped_launch),
            ("c.pdf", "application/pdf", &hidden),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::ActiveContent as A;
        assert_eq!(
            findings(&outcome),
            [
                (A, "pdf_javascript", "part 2"),
                (A, "pdf_launch", "part 3"),
                (A, "pdf_javascript", "part 4"),
            ]
        );
        assert_eq!(symbols(&outcome), ["PDF_JAVASCRIPT", "PDF_LAUNCH"]);
    }

    #[test]
    fn html_smuggling_by_script_or_data_url() {
        let script: &[u8] = b"<html><body><script>var d = atob('TVqQAAMAAAAEAAAA');\
            var b = new Blob([d], {type: 'application/octet-stream'});\
            var a = document.createElement('a'); a.href = URL.createObjectURL(b);\
            a.download = 'invoice.iso'; a.click();</script></body></html>";
        let data_url = format!(
            "<html><a href=\"data:application/octet-stream;base64,{}\" download>open</a></html>",
            "QUJD".repeat(400)
        );
        let image = format!(
            "<!DOCTYPE html><html><img src=\"data:image/png;base64,{}\"></html>",
            "QUJD".repeat(400)
        );
        let raw = message_with(&[
            ("message.html", "text/html", script),
            ("view.htm", "application/octet-stream", data_url.as_bytes()),
            ("newsletter.html", "text/html", image.as_bytes()),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        use FindingKind::ActiveContent as A;
        assert_eq!(
            findings(&outcome),
            [
                (A, "html_smuggling", "part 2"),
                (A, "html_smuggling", "part 3")
            ]
        );
        assert_eq!(symbols(&outcome), ["HTML_SMUGGLING"]);
    }

    #[test]
    fn the_html_body_is_not_an_attachment() {
        let raw = b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
            Content-Type: text/html\r\n\r\n<html><script>atob('x'); new Blob([x]); \
            a.download='a.exe'</script></html>\r\n";
        let outcome = scan_raw(&engine(), raw);
        assert!(outcome.findings.is_empty());
    }

    #[test]
    fn unpacking_findings_are_scored() {
        let mut archive = zip_of(&[("deep.txt", b"x")]);
        for level in 0..6 {
            archive = zip_of(&[(&format!("l{level}.zip"), &archive)]);
        }
        let raw = message_with(&[("deep.zip", "application/zip", &archive)]);
        let outcome = scan_raw(&engine(), &raw);
        assert!(outcome.findings.is_empty());
        assert_eq!(symbols(&outcome), ["ARCHIVE_BOMB"]);
        assert!(outcome.hits[0].description.contains("limit:depth"));
    }

    #[test]
    fn a_clean_message_with_a_pdf_and_an_image_has_no_findings() {
        let mut content = Vec::new();
        let mut encoder =
            flate2::write::ZlibEncoder::new(&mut content, flate2::Compression::default());
        encoder
            .write_all(b"BT /F1 12 Tf 72 712 Td (Hello) Tj ET")
            .unwrap();
        encoder.finish().unwrap();
        let pdf = [
            &b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
               2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n\
               3 0 obj << /Type /Page /Contents 4 0 R >> endobj\n\
               4 0 obj << /Length 40 /Filter /FlateDecode >>\nstream\n"[..],
            &content,
            b"\nendstream\nendobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        ]
        .concat();
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
        let raw = message_with(&[
            ("report.pdf", "application/pdf", &pdf),
            ("photo.png", "image/png", png),
            (
                "archive.zip",
                "application/zip",
                &zip_of(&[("notes.txt", b"notes")]),
            ),
        ]);
        let outcome = scan_raw(&engine(), &raw);
        assert!(outcome.findings.is_empty(), "{:?}", outcome.findings);
        assert!(outcome.hits.is_empty(), "{:?}", outcome.hits);
    }
}

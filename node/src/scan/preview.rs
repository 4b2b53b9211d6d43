//! What a quarantined message shows an administrator through the API: its headers
//! decoded, its text, its HTML turned into the text a reader would see, and the
//! list of its attachments (also inside archives) with their types, sizes and
//! SHA-256. Nothing is run or served as HTML: the preview is JSON strings only,
//! built by the same parser and unpacker the scanning pipeline uses.

use std::cell::Cell;

use mail_parser::PartType;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::contents::{unpack, Limits};
use super::spam::{decoded, headers_raw, html_text, truncate};

/// Header fields shown at most.
const MAX_HEADERS: usize = 200;
/// Bytes of one header field's value shown at most.
const MAX_HEADER_VALUE: usize = 4 * 1024;
/// Bytes of the text, and of the HTML's text, shown at most.
const MAX_TEXT: usize = 64 * 1024;
/// Attachments listed at most.
const MAX_ATTACHMENTS: usize = 500;

/// The preview of a raw message (see the module documentation). `truncated` says
/// whether anything was cut to the limits above.
pub fn preview(raw: &[u8], limits: &Limits) -> Value {
    let Some(message) = super::parse(raw) else {
        return json!({
            "headers": [], "text": null, "html_text": null, "attachments": [],
            "truncated": false, "parsed": false,
        });
    };
    let truncated = Cell::new(false);
    let cut = |text: &str, limit: usize| -> String {
        let kept = truncate(text, limit);
        if kept.len() < text.len() {
            truncated.set(true);
        }
        kept.to_string()
    };
    let mut headers = Vec::new();
    for (name, raw) in headers_raw(&message) {
        if headers.len() == MAX_HEADERS {
            truncated.set(true);
            break;
        }
        headers.push(json!({ "name": name, "value": cut(&decoded(&raw), MAX_HEADER_VALUE) }));
    }
    let part = |ids: &[u32], html: bool| {
        ids.iter()
            .filter_map(|&id| message.parts.get(id as usize))
            .find_map(|part| match (&part.body, html) {
                (PartType::Text(text), false) | (PartType::Html(text), true) => Some(text.as_ref()),
                _ => None,
            })
    };
    let text = part(&message.text_body, false).map(|t| cut(t, MAX_TEXT));
    let html = part(&message.html_body, true).map(|h| cut(&html_text(h), MAX_TEXT));
    let contents = unpack(&message, limits);
    let files: Vec<_> = contents.files.iter().filter(|f| !f.inline_body).collect();
    if files.len() > MAX_ATTACHMENTS {
        truncated.set(true);
    }
    let attachments: Vec<Value> = files
        .iter()
        .take(MAX_ATTACHMENTS)
        .map(|f| {
            json!({
                "location": f.location,
                "name": f.name,
                "declared_type": f.declared_type,
                "detected_type": infer::get(&f.data).map(|t| t.mime_type()),
                "size": f.data.len(),
                "sha256": hex::encode(Sha256::digest(&f.data)),
                "in_archive": f.depth > 0,
            })
        })
        .collect();
    json!({
        "headers": headers,
        "text": text,
        "html_text": html,
        "attachments": attachments,
        "truncated": truncated.get(),
        "parsed": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_shows_text_rendered_html_and_attachments_never_markup() {
        let raw = "From: =?utf-8?q?Caf=C3=A9?= <a@sender.test>\r\nSubject: invoice\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: multipart/alternative; boundary=\"c\"\r\n\r\n\
            --c\r\nContent-Type: text/plain\r\n\r\nPlease pay.\r\n\
            --c\r\nContent-Type: text/html\r\n\r\n<p>Please <b>pay</b><script>alert(1)</script>\
            <img src=\"https://track.test/x.gif\"></p>\r\n--c--\r\n\
            --b\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\n\
            Content-Disposition: attachment; filename=\"a.exe\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n\
            --b--\r\n";
        let p = preview(raw.as_bytes(), &Limits::default());
        assert_eq!(p["parsed"], true);
        assert_eq!(p["headers"][0]["name"], "From");
        assert_eq!(p["headers"][0]["value"], "Café <a@sender.test>");
        assert_eq!(p["text"].as_str().unwrap().trim(), "Please pay.");
        let html = p["html_text"].as_str().unwrap();
        assert!(html.contains("Please pay"), "{html}");
        assert!(!html.contains('<') && !html.contains("alert"), "{html}");
        let a = &p["attachments"][0];
        assert_eq!(a["name"], "a.exe");
        assert_eq!(a["declared_type"], "application/octet-stream");
        assert_eq!(a["size"], 32);
        assert_eq!(a["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(p["attachments"].as_array().unwrap().len(), 1);
        assert_eq!(p["truncated"], false);
    }

    #[test]
    fn a_preview_shows_header_fields_in_raw_latin1() {
        let raw = b"From: Jos\xe9 <jose@sender.test>\r\nSubject: caf\xe9 au lait\r\n\r\nbody\r\n";
        let p = preview(raw, &Limits::default());
        let headers: Vec<(&str, &str)> = p["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].as_str().unwrap(), h["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("From", "Jos\u{e9} <jose@sender.test>"),
                ("Subject", "caf\u{e9} au lait")
            ]
        );
    }

    #[test]
    fn a_preview_cuts_long_text_and_says_so() {
        let raw = format!("Subject: long\r\n\r\n{}\r\n", "word ".repeat(20_000));
        let p = preview(raw.as_bytes(), &Limits::default());
        assert_eq!(p["text"].as_str().unwrap().len(), MAX_TEXT);
        assert_eq!(p["truncated"], true);
        let empty = preview(b"", &Limits::default());
        assert_eq!(empty["attachments"], json!([]));
    }
}

//! The gateway's own messages to recipients (quarantine digests, portal links) as a
//! mail program reads them: the text and HTML parts decoded, and the links in them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The text and HTML parts of a digest or portal-link message, decoded (each is
/// base64); `None` when the message has not exactly those two.
pub fn parts(data: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let mut decoded = Vec::new();
    for part in text.split("\r\n--=_bulwark_").skip(1) {
        let Some((_, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let b64: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
        let bytes = STANDARD.decode(b64.trim()).ok()?;
        decoded.push(String::from_utf8(bytes).ok()?);
    }
    match <[String; 2]>::try_from(decoded) {
        Ok([text, html]) => Some((text, html)),
        Err(_) => None,
    }
}

/// The links a text part gives after `label: ` (one a listed message), in order.
pub fn links(text: &str, label: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{label}: ")))
        .map(str::to_string)
        .collect()
}

/// The link to the recipient's portal: the last link a text part gives.
pub fn portal_link(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|l| l.contains("/ui/my/l/"))
        .map(|l| l.trim().to_string())
}

/// The path of a link (`/ui/my/l/...`), without its scheme and host.
pub fn path(link: &str) -> &str {
    link.find("/ui/my/").map_or(link, |at| &link[at..])
}

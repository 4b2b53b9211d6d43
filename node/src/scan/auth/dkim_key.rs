//! The DKIM key record checked before the signature counts (RFC 6376 §3.6.1,
//! §6.1.2): mail-auth compares the body hash before it fetches the key, so a
//! signature whose key is unusable reads as a failed body hash. A key record that is
//! not a valid tag-list, names another version, an unknown key type or one that does
//! not fit the signature, has no usable `p=` or a revoked one, or excludes the
//! signature's hash or e-mail makes the signature a `permerror`, whatever the body.

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::DkimOutput;

use super::Authenticator;

impl Authenticator {
    /// For each signature, why its key record is unusable, if it is; `None` when it
    /// is usable or could not be read (mail-auth's own result then stands).
    pub(super) async fn dkim_key_problems(
        &self,
        outputs: &[DkimOutput<'_>],
    ) -> Vec<Option<String>> {
        let mut problems = Vec::with_capacity(outputs.len());
        for output in outputs {
            let problem = match output.signature() {
                Some(signature) => {
                    let name = format!("{}._domainkey.{}.", signature.s, signature.d);
                    match self.key_records(&name).await.as_deref() {
                        Some([record]) => key_problem(record, signature.a),
                        _ => None,
                    }
                }
                None => None,
            };
            problems.push(problem);
        }
        problems
    }

    /// The TXT records at `name`, each one's strings joined; `None` when the lookup
    /// failed or the name cannot be queried.
    pub(super) async fn key_records(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let name = Name::from_ascii(name).ok()?;
        let lookup = self.resolver.0.lookup(name, RecordType::TXT).await.ok()?;
        Some(
            lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// Why the key record `record` cannot verify a signature made with `algorithm`.
pub(super) fn key_problem(record: &[u8], algorithm: Algorithm) -> Option<String> {
    let Ok(text) = std::str::from_utf8(record) else {
        return Some("the key record is not text".to_string());
    };
    let tags = match tag_list(text) {
        Ok(tags) => tags,
        Err(why) => return Some(format!("the key record is not a tag-list: {why}")),
    };
    let tag = |name: &str| {
        tags.iter()
            .find(|(tag, _)| tag == name)
            .map(|(_, value)| value.as_str())
    };
    if let Some(position) = tags.iter().position(|(name, _)| name == "v") {
        if position != 0 || tags[0].1 != "DKIM1" {
            return Some("v= is not DKIM1 as the first tag".to_string());
        }
    }
    let key_type = tag("k").unwrap_or("rsa");
    let fits = match key_type {
        "rsa" => matches!(algorithm, Algorithm::RsaSha256 | Algorithm::RsaSha1),
        "ed25519" => matches!(algorithm, Algorithm::Ed25519Sha256),
        other => return Some(format!("unknown key type k={other}")),
    };
    if !fits {
        return Some(format!(
            "a k={key_type} key cannot verify this signature's algorithm"
        ));
    }
    let hash = match algorithm {
        Algorithm::RsaSha1 => "sha1",
        Algorithm::RsaSha256 | Algorithm::Ed25519Sha256 => "sha256",
    };
    if let Some(hashes) = tag("h") {
        if !list(hashes).any(|h| h == hash) {
            return Some(format!("the key allows h={hashes}, not {hash}"));
        }
    }
    if let Some(services) = tag("s") {
        if !list(services).any(|s| s == "*" || s == "email") {
            return Some(format!("the key serves s={services}, not email"));
        }
    }
    let Some(key) = tag("p") else {
        return Some("the key record has no p=".to_string());
    };
    let key: String = key.chars().filter(|c| !c.is_whitespace()).collect();
    if key.is_empty() {
        return Some("the key is revoked (empty p=)".to_string());
    }
    if !is_base64(&key) {
        return Some("p= is not base64".to_string());
    }
    let octets = key.len() / 4 * 3 - (key.len() - key.trim_end_matches('=').len());
    if key_type == "ed25519" && octets != 32 {
        return Some(format!(
            "the key does not parse: an ed25519 key is 32 octets, not {octets}"
        ));
    }
    match <DomainKey as TxtRecordParser>::parse(record) {
        Ok(_) => None,
        Err(e) => Some(format!("the key does not parse: {e}")),
    }
}

/// A tag-list (RFC 6376 §3.2): `name=value` specs separated by `;`, names
/// ALPHA *( ALPHA / DIGIT / "_" ), values of printable characters other than `;`
/// with inner white space, no name twice. Empty specs are let through.
pub(super) fn tag_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for spec in text.split(';') {
        if spec.trim().is_empty() {
            continue;
        }
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("{:?} has no =", spec.trim()))?;
        let name = name.trim();
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("{name:?} is not a tag name"));
        }
        let value = value.trim();
        if let Some(bad) = value
            .chars()
            .find(|c| !(matches!(c, '!'..='~') || matches!(c, ' ' | '\t' | '\r' | '\n')))
        {
            return Err(format!("{name}= holds {bad:?}"));
        }
        if tags.iter().any(|(seen, _)| seen == name) {
            return Err(format!("{name}= appears twice"));
        }
        tags.push((name.to_string(), value.to_string()));
    }
    Ok(tags)
}

/// The items of a colon-separated list, trimmed.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(':').map(str::trim)
}

/// Base64 with padding only at the end (RFC 6376 §2.4 base64string, white space
/// already removed).
pub(super) fn is_base64(text: &str) -> bool {
    let data = text.trim_end_matches('=');
    text.len().is_multiple_of(4)
        && text.len() - data.len() <= 2
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public key of RFC 8463 §A.2.
    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn unusable_key_records_are_named() {
        let good = format!("v=DKIM1; k=ed25519; p={KEY}");
        assert_eq!(key_problem(good.as_bytes(), Algorithm::Ed25519Sha256), None);
        for (record, why) in [
            (format!("v=DKIM1; k=ed25519; p=!{KEY}"), "not base64"),
            (format!("v=DKIM1; k=foo; p={KEY}"), "unknown key type"),
            ("v=DKIM1; k=ed25519; p=".to_string(), "revoked"),
            (
                format!("v=DKIM1; k=ed25519; junk; p={KEY}"),
                "not a tag-list",
            ),
            (format!("v=DKIM1; k=ed25519; p={KEY}; p={KEY}"), "twice"),
            (format!("k=ed25519; v=DKIM1; p={KEY}"), "first tag"),
            (format!("v=DKIM2; k=ed25519; p={KEY}"), "first tag"),
            (format!("v=DKIM1; k=rsa; p={KEY}"), "cannot verify"),
            (format!("v=DKIM1; k=ed25519; h=sha1; p={KEY}"), "not sha256"),
            (
                format!("v=DKIM1; k=ed25519; s=tlsrpt; p={KEY}"),
                "not email",
            ),
            ("v=DKIM1; k=ed25519".to_string(), "no p="),
            ("v=DKIM1; k=ed25519; p=AAAA".to_string(), "does not parse"),
        ] {
            let problem = key_problem(record.as_bytes(), Algorithm::Ed25519Sha256)
                .unwrap_or_else(|| panic!("{record} passed"));
            assert!(problem.contains(why), "{record}: {problem}");
        }
    }

    #[test]
    fn unknown_tags_and_a_trailing_separator_are_allowed() {
        let record = format!("v=DKIM1; k=ed25519; n=a note; t=y:s; p={KEY};");
        assert_eq!(
            key_problem(record.as_bytes(), Algorithm::Ed25519Sha256),
            None
        );
    }
}

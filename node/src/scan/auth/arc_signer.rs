//! A test-only ARC sealer that writes any set, however wrong, and signs it validly:
//! the tags of each field are the test's own text, and the signer adds only `bh=` to
//! an ARC-Message-Signature and `b=` to it and to an ARC-Seal. The AMS is signed as
//! DKIM signs (RFC 6376 §3.7, relaxed canonicalization, the fields its `h=` names
//! chosen from the bottom up), the AS over the ARC header fields in instance order
//! and then itself (RFC 8617 §5.1.1). Canonicalization and the RSA-SHA1 signature
//! are written here, not taken from mail-auth, so a case does not rest on the code
//! under test; RSA-SHA256 signatures come from ring, which cannot sign with SHA-1.

use mail_auth::common::crypto::SigningKey;
use num_bigint::BigUint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::fixture::rsa;
use super::results::base64;

/// The hash a signature is made with.
#[derive(Clone, Copy)]
pub(super) enum Hash {
    Sha256,
    Sha1,
}

/// What one ARC set holds, as its sealer writes it: the value of each field (or no
/// such field), with the AMS and AS tags lacking the `bh=` and `b=` the signer adds.
#[derive(Clone)]
pub(super) struct Set {
    pub(super) aar: Option<String>,
    pub(super) ams: Option<String>,
    /// The fields the AMS signs, whatever its `h=` says.
    pub(super) ams_signs: Vec<&'static str>,
    pub(super) seal: Option<String>,
    /// Fields added to the set after its AS, unsigned: a second AMS, say.
    pub(super) extra: Vec<(&'static str, String)>,
    pub(super) hash: Hash,
    pub(super) key: &'static str,
}

impl Set {
    /// The set a sealer following RFC 8617 writes as instance `i` with chain
    /// validation status `cv`, for domain `d` and selector `s` signing with `key`.
    pub(super) fn new(i: u32, cv: &str, d: &str, s: &str, key: &'static str) -> Self {
        Set {
            aar: Some(format!(
                "i={i}; {d}; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com"
            )),
            ams: Some(format!(
                "i={i}; a=rsa-sha256; c=relaxed/relaxed; d={d}; s={s}; t=1751364000; \
                 h=from:to:subject:date:message-id"
            )),
            ams_signs: vec!["from", "to", "subject", "date", "message-id"],
            seal: Some(format!(
                "i={i}; a=rsa-sha256; cv={cv}; d={d}; s={s}; t=1751364000"
            )),
            extra: Vec::new(),
            hash: Hash::Sha256,
            key,
        }
    }
}

/// A message and the ARC sets added to it, oldest first.
pub(super) struct Chain {
    /// Header fields of the message as first sent, top first.
    headers: Vec<(String, String)>,
    body: String,
    /// Each set's fields in the order they were added: AAR, AMS, AS, extras.
    sets: Vec<Vec<(String, String)>>,
}

impl Chain {
    /// `raw` (header fields each on one line, CRLF, then the body) before any set.
    pub(super) fn new(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header section");
        let headers = head
            .split("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(':').expect("a header field");
                (name.to_string(), value.trim_start().to_string())
            })
            .collect();
        Chain {
            headers,
            body: body.to_string(),
            sets: Vec::new(),
        }
    }

    /// The body, changed as a hop that rewrites it would.
    pub(super) fn edit_body(&mut self, body: &str) {
        self.body = body.to_string();
    }

    /// Adds `set` on top, signing its AMS over the message as it stands and its AS
    /// over every ARC field so far, set by set, then its own AAR, AMS and itself.
    pub(super) fn seal(&mut self, set: &Set) {
        let mut fields = Vec::new();
        if let Some(aar) = &set.aar {
            fields.push(("ARC-Authentication-Results".to_string(), aar.clone()));
        }
        if let Some(tags) = &set.ams {
            let mut headers = fields.clone();
            headers.extend(self.headers_top_first());
            let value = self.ams(&headers, tags, set);
            fields.push(("ARC-Message-Signature".to_string(), value));
        }
        if let Some(tags) = &set.seal {
            let mut sealed: Vec<(String, String)> = self.sets.iter().flatten().cloned().collect();
            sealed.extend(fields.iter().cloned());
            let unsigned = format!("{tags}; b=");
            let mut input = Vec::new();
            for (name, value) in &sealed {
                input.extend(relaxed_header(name, value).as_bytes());
                input.extend(b"\r\n");
            }
            input.extend(relaxed_header("ARC-Seal", &unsigned).as_bytes());
            let signature = sign(set.key, set.hash, &input);
            fields.push(("ARC-Seal".to_string(), format!("{unsigned}{signature}")));
        }
        fields.extend(
            set.extra
                .iter()
                .map(|(name, value)| ((*name).to_string(), value.clone())),
        );
        self.sets.push(fields);
    }

    /// Header fields top first: the newest set's, last added on top, then the
    /// older sets', then the message's own.
    fn headers_top_first(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .sets
            .iter()
            .rev()
            .flat_map(|set| set.iter().rev().cloned())
            .collect();
        headers.extend(self.headers.iter().cloned());
        headers
    }

    /// The AMS value for `tags`: the body hash, then the signature over the fields
    /// `set.ams_signs` names (each name taking the lowest field of that name not yet
    /// taken, RFC 6376 §5.4.2) and the AMS itself without its `b=` value.
    fn ams(&self, headers_top_first: &[(String, String)], tags: &str, set: &Set) -> String {
        let body_hash = base64(&digest(set.hash, relaxed_body(&self.body).as_bytes()));
        let unsigned = format!("{tags}; bh={body_hash}; b=");
        let mut taken = vec![false; headers_top_first.len()];
        let mut input = Vec::new();
        for name in &set.ams_signs {
            let found = headers_top_first
                .iter()
                .enumerate()
                .rev()
                .find(|(at, (field, _))| !taken[*at] && field.eq_ignore_ascii_case(name));
            if let Some((at, (field, value))) = found {
                taken[at] = true;
                input.extend(relaxed_header(field, value).as_bytes());
                input.extend(b"\r\n");
            }
        }
        input.extend(relaxed_header("ARC-Message-Signature", &unsigned).as_bytes());
        let signature = sign(set.key, set.hash, &input);
        format!("{unsigned}{signature}")
    }

    /// The message as sent on: every set's fields (the newest set on top, each
    /// set's AS above its AMS above its AAR), the message's fields, the body.
    pub(super) fn raw(&self) -> String {
        let mut raw = String::new();
        for (name, value) in self.headers_top_first() {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(&self.body);
        raw
    }
}

/// A header field in relaxed canonical form, without its CRLF (RFC 6376 §3.4.2).
fn relaxed_header(name: &str, value: &str) -> String {
    let unfolded = value.replace("\r\n", "");
    let value = unfolded.split([' ', '\t']).filter(|w| !w.is_empty());
    format!(
        "{}:{}",
        name.trim().to_ascii_lowercase(),
        value.collect::<Vec<_>>().join(" ")
    )
}

/// A body in relaxed canonical form (RFC 6376 §3.4.4).
fn relaxed_body(body: &str) -> String {
    let mut lines: Vec<String> = body
        .split("\r\n")
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            for c in line.chars() {
                if matches!(c, ' ' | '\t') {
                    if !out.ends_with(' ') {
                        out.push(' ');
                    }
                } else {
                    out.push(c);
                }
            }
            out.trim_end().to_string()
        })
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines.iter().map(|line| format!("{line}\r\n")).collect()
}

fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(data).to_vec(),
        Hash::Sha1 => Sha1::digest(data).to_vec(),
    }
}

/// The base64 RSASSA-PKCS1-v1_5 signature of `data` by `pem` with `hash`.
fn sign(pem: &str, hash: Hash, data: &[u8]) -> String {
    let signature = match hash {
        Hash::Sha256 => rsa(pem).sign(data).expect("RSA-SHA256 signature"),
        Hash::Sha1 => sign_sha1(pem, data),
    };
    base64(&signature)
}

/// RSASSA-PKCS1-v1_5 with SHA-1 (RFC 8017 §8.2.1, §9.2): the DigestInfo padded to
/// the modulus, raised to the private exponent.
fn sign_sha1(pem: &str, data: &[u8]) -> Vec<u8> {
    /// DER of the DigestInfo of a SHA-1 digest, up to the digest (RFC 8017 §9.2).
    const SHA1_INFO: [u8; 15] = [
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];
    let (modulus, exponent) = private_key(pem);
    let len = modulus.bits().div_ceil(8) as usize;
    let mut encoded = vec![0x00, 0x01];
    encoded.resize(len - SHA1_INFO.len() - 20 - 1, 0xff);
    encoded.push(0x00);
    encoded.extend(SHA1_INFO);
    encoded.extend(Sha1::digest(data));
    let signature = BigUint::from_bytes_be(&encoded)
        .modpow(&exponent, &modulus)
        .to_bytes_be();
    let mut out = vec![0; len - signature.len()];
    out.extend(signature);
    out
}

/// The modulus and private exponent of a PKCS#8 RSA key (RFC 5208 §5, RFC 8017
/// §A.1.2).
fn private_key(pem: &str) -> (BigUint, BigUint) {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("test key PEM");
    let (_, info, _) = der_item(der.secret_der());
    let (_, _version, rest) = der_item(info);
    let (_, _algorithm, rest) = der_item(rest);
    let (_, octets, _) = der_item(rest);
    let (_, key, _) = der_item(octets);
    let (_, _version, rest) = der_item(key);
    let (_, modulus, rest) = der_item(rest);
    let (_, _public, rest) = der_item(rest);
    let (_, private, _) = der_item(rest);
    (
        BigUint::from_bytes_be(modulus),
        BigUint::from_bytes_be(private),
    )
}

/// One DER item of `bytes`: its tag, its contents and what follows it.
fn der_item(bytes: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = bytes[0];
    let (len, start) = match bytes[1] {
        short @ 0..=0x7f => (usize::from(short), 2),
        long => {
            let octets = usize::from(long & 0x7f);
            let len = bytes[2..2 + octets]
                .iter()
                .fold(0, |len, b| len << 8 | usize::from(*b));
            (len, 2 + octets)
        }
    };
    (tag, &bytes[start..start + len], &bytes[start + len..])
}

/// The example of RFC 6376 §3.4.6.
#[test]
fn relaxed_canonical_forms_are_those_of_rfc6376_3_4_6() {
    assert_eq!(relaxed_header("A", " X"), "a:X");
    assert_eq!(relaxed_header("B ", " Y\t\r\n\tZ  "), "b:Y Z");
    assert_eq!(relaxed_body(" C \r\nD \t E\r\n\r\n\r\n"), " C\r\nD E\r\n");
}

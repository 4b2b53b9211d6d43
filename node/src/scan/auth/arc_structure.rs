//! The ARC header fields read to the letter of RFC 8617 before any signature
//! counts. mail-auth verifies a chain's signatures but is lenient about its form: a
//! set without an ARC-Message-Signature reads as no chain at all, repeated or
//! malformed tags are taken, `a=rsa-sha1` and a missing `a=` verify, an AMS may sign
//! the ARC-Seal or leave out From, and a `d=` that is no domain name becomes a DNS
//! error. Here each field is parsed as RFC 8617 §4 writes it (with RFC 6376's
//! tag-list, §3.2, and its tags, §3.5) and the chain's structure checked as §5.2 steps
//! 1 to 3 ask; a chain that breaks either fails, whatever its signatures say. What is
//! left is the signatures, mail-auth's, and the key records they use.

use mail_auth::common::crypto::Algorithm;

use super::dkim_key::{is_base64, tag_list};

/// The highest instance a set may have (RFC 8617 §4.2.1, §5.2 step 1).
const MAX_INSTANCE: u32 = 50;

/// What the ARC header fields of a message make of its chain.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Chain {
    /// No ARC header field at all: the one case that is `arc=none`.
    None,
    /// The fields break RFC 8617: the chain fails whatever its signatures say.
    Broken {
        /// The highest instance found, 0 when no field told one.
        instances: u32,
        reason: String,
    },
    /// Well formed: the signatures decide, with the keys they are verified by.
    Sound { keys: Vec<KeyUse> },
}

/// A key record a signature of the chain is verified with: every ARC-Seal's, and
/// the newest ARC-Message-Signature's (RFC 8617 §5.2 steps 4 and 6).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct KeyUse {
    /// `ARC-Seal` or `ARC-Message-Signature`.
    pub(super) field: &'static str,
    pub(super) instance: u32,
    pub(super) domain: String,
    pub(super) selector: String,
    pub(super) algorithm: Algorithm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Results,
    Signature,
    Seal,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Results, Kind::Signature, Kind::Seal];

    fn of(name: &[u8]) -> Option<Kind> {
        let name = name.trim_ascii();
        Kind::ALL
            .into_iter()
            .find(|kind| name.eq_ignore_ascii_case(kind.name().as_bytes()))
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Results => "ARC-Authentication-Results",
            Kind::Signature => "ARC-Message-Signature",
            Kind::Seal => "ARC-Seal",
        }
    }
}

/// RFC 8617 §4.1.3's `cv=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cv {
    None,
    Fail,
    Pass,
}

impl Cv {
    fn name(self) -> &'static str {
        match self {
            Cv::None => "none",
            Cv::Fail => "fail",
            Cv::Pass => "pass",
        }
    }
}

/// One ARC header field that parsed.
struct Field {
    kind: Kind,
    instance: u32,
    /// An ARC-Seal's chain validation status.
    cv: Option<Cv>,
    /// The key of an AMS or AS: domain, selector, algorithm.
    key: Option<(String, String, Algorithm)>,
}

/// Why a field is malformed, with its instance when that much parsed.
type Malformed = (Option<u32>, String);

/// The chain the ARC header fields among `headers` (name and raw value of every
/// field, in message order) make, checked as RFC 8617 §5.2 steps 1 to 3 ask.
pub(super) fn chain(headers: &[(&[u8], &[u8])]) -> Chain {
    let mut fields = Vec::new();
    let mut malformed = None;
    for (name, value) in headers {
        let Some(kind) = Kind::of(name) else {
            continue;
        };
        match parse(kind, value) {
            Ok(field) => fields.push(field),
            Err((instance, why)) => {
                malformed.get_or_insert_with(|| match instance {
                    Some(i) => format!("{} i={i}: {why}", kind.name()),
                    None => format!("{}: {why}", kind.name()),
                });
            }
        }
    }
    let instances = fields.iter().map(|f| f.instance).max().unwrap_or(0);
    if let Some(reason) = malformed {
        return Chain::Broken { instances, reason };
    }
    if fields.is_empty() {
        return Chain::None;
    }
    match structure(&fields, instances) {
        Err(reason) => Chain::Broken { instances, reason },
        Ok(()) => Chain::Sound {
            keys: fields
                .into_iter()
                .filter(|f| {
                    f.kind == Kind::Seal || (f.kind == Kind::Signature && f.instance == instances)
                })
                .filter_map(|f| {
                    let (domain, selector, algorithm) = f.key?;
                    Some(KeyUse {
                        field: f.kind.name(),
                        instance: f.instance,
                        domain,
                        selector,
                        algorithm,
                    })
                })
                .collect(),
        },
    }
}

/// RFC 8617 §5.2 step 2 (the newest ARC-Seal's `cv=fail` ends the chain) and step 3:
/// exactly one field of each kind for every instance from 1 to `newest`, without a
/// gap or a repetition, and `cv=none` at instance 1, `cv=pass` after.
fn structure(fields: &[Field], newest: u32) -> Result<(), String> {
    let seal = |i: u32| {
        fields
            .iter()
            .find(|f| f.kind == Kind::Seal && f.instance == i)
            .and_then(|f| f.cv)
    };
    if seal(newest) == Some(Cv::Fail) {
        return Err(format!(
            "the newest ARC-Seal, i={newest}, has cv=fail: the chain ended there"
        ));
    }
    for i in 1..=newest {
        let count = |kind: Kind| {
            fields
                .iter()
                .filter(|f| f.kind == kind && f.instance == i)
                .count()
        };
        if Kind::ALL.into_iter().all(|kind| count(kind) == 0) {
            return Err(format!(
                "no ARC set has i={i}: instances run from 1 to {newest} without a gap"
            ));
        }
        for kind in Kind::ALL {
            match count(kind) {
                0 => return Err(format!("set i={i} has no {}", kind.name())),
                1 => {}
                n => return Err(format!("set i={i} has {n} {} fields", kind.name())),
            }
        }
        let wanted = if i == 1 { Cv::None } else { Cv::Pass };
        if let Some(cv) = seal(i).filter(|cv| *cv != wanted) {
            return Err(format!(
                "ARC-Seal i={i} has cv={}, not {}",
                cv.name(),
                wanted.name()
            ));
        }
    }
    Ok(())
}

fn parse(kind: Kind, value: &[u8]) -> Result<Field, Malformed> {
    let text = std::str::from_utf8(value).map_err(|_| (None, "not text".to_string()))?;
    match kind {
        Kind::Results => results(text),
        Kind::Signature | Kind::Seal => signed(kind, text),
    }
}

/// An ARC-Authentication-Results value (RFC 8617 §4.1.1): `i=` first, then `;` and
/// the results, `[CFWS]` at the edges taken as white space.
fn results(text: &str) -> Result<Field, Malformed> {
    let fws = |s: &str| s.trim_start_matches([' ', '\t', '\r', '\n']).to_string();
    let after_i = fws(text)
        .strip_prefix('i')
        .map(fws)
        .and_then(|s| s.strip_prefix('=').map(fws))
        .ok_or((None, "does not start with i=".to_string()))?;
    let digits = after_i.len()
        - after_i
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let i = instance(&after_i[..digits]).map_err(|why| (None, why))?;
    let payload = fws(&after_i[digits..])
        .strip_prefix(';')
        .map(str::to_string)
        .ok_or((Some(i), "i= is not followed by ;".to_string()))?;
    if payload.trim().is_empty() {
        return Err((Some(i), "no results follow i=".to_string()));
    }
    Ok(Field {
        kind: Kind::Results,
        instance: i,
        cv: None,
        key: None,
    })
}

/// An ARC-Message-Signature (RFC 8617 §4.1.2: a DKIM-Signature with `i=` the
/// instance, `v=` ignored) or an ARC-Seal (§4.1.3: `i`, `a`, `b`, `cv`, `d`, `s`,
/// and `t`; no `h=`): a tag-list with each tag the RFCs define well formed.
fn signed(kind: Kind, text: &str) -> Result<Field, Malformed> {
    let mut specs: Vec<&str> = text.split(';').collect();
    specs.pop();
    if specs.iter().any(|spec| spec.trim().is_empty()) {
        return Err((None, "not a tag-list: an empty tag-spec".to_string()));
    }
    let tags = tag_list(text).map_err(|why| (None, format!("not a tag-list: {why}")))?;
    let tag = |name: &str| {
        tags.iter()
            .find(|(tag, _)| tag == name)
            .map(|(_, value)| value.as_str())
    };
    let i = instance(tag("i").ok_or((None, "no i=".to_string()))?).map_err(|why| (None, why))?;
    let bad = |why: String| (Some(i), why);
    let required: &[&str] = match kind {
        Kind::Seal => &["a", "b", "cv", "d", "s"],
        _ => &["a", "b", "bh", "d", "h", "s"],
    };
    if let Some(missing) = required.iter().find(|name| tag(name).is_none()) {
        return Err(bad(format!("no {missing}=")));
    }
    let value = |name: &str| tag(name).unwrap_or_default();
    let algorithm = algorithm(value("a")).map_err(bad)?;
    for name in ["b", "bh"] {
        if let Some(data) = tag(name) {
            let data: String = data.chars().filter(|c| !c.is_whitespace()).collect();
            if data.is_empty() || !is_base64(&data) {
                return Err(bad(format!("{name}= is not base64")));
            }
        }
    }
    let (domain, selector) = (value("d"), value("s"));
    if !is_domain_name(domain) {
        return Err(bad(format!("d={domain} is not a domain name")));
    }
    if !is_selector(selector) {
        return Err(bad(format!("s={selector} is not a selector")));
    }
    if selector.len() + domain.len() + "._domainkey.".len() > 253 {
        return Err(bad("s= and d= make a key name too long".to_string()));
    }
    for (name, most) in [("t", 12), ("x", 12), ("l", 76)] {
        if let Some(number) = tag(name) {
            if number.is_empty()
                || number.len() > most
                || !number.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad(format!("{name}={number} is not a number")));
            }
        }
    }
    let cv = match kind {
        Kind::Seal => {
            if tag("h").is_some() {
                return Err(bad(
                    "RFC 8617 §4.1.3 allows no h= in an ARC-Seal".to_string()
                ));
            }
            Some(chain_validation(value("cv")).map_err(bad)?)
        }
        _ => {
            signed_fields(value("h")).map_err(bad)?;
            if let Some(c) = tag("c") {
                canonicalization(c).map_err(bad)?;
            }
            None
        }
    };
    Ok(Field {
        kind,
        instance: i,
        cv,
        key: Some((
            domain.to_ascii_lowercase(),
            selector.to_ascii_lowercase(),
            algorithm,
        )),
    })
}

/// An instance: digits, 1 to 50 (RFC 8617 §4.2.1).
fn instance(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(i) if value.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_INSTANCE).contains(&i) => {
            Ok(i)
        }
        _ => Err(format!("i={value} is not an instance from 1 to 50")),
    }
}

/// `a=`: RSA or Ed25519 with SHA-256 (RFC 6376 §3.5, RFC 8463); never SHA-1, which
/// RFC 8301 §3.1 forbids to verify.
fn algorithm(value: &str) -> Result<Algorithm, String> {
    match value.to_ascii_lowercase().as_str() {
        "rsa-sha256" => Ok(Algorithm::RsaSha256),
        "ed25519-sha256" => Ok(Algorithm::Ed25519Sha256),
        "rsa-sha1" => Err("a=rsa-sha1, which RFC 8301 §3.1 forbids verifying".to_string()),
        _ => Err(format!("a={value} is not a signing algorithm")),
    }
}

fn chain_validation(value: &str) -> Result<Cv, String> {
    match value.to_ascii_lowercase().as_str() {
        "none" => Ok(Cv::None),
        "fail" => Ok(Cv::Fail),
        "pass" => Ok(Cv::Pass),
        _ => Err(format!("cv={value} is not none, fail or pass")),
    }
}

/// An AMS's `h=`: field names separated by colons, From among them (RFC 6376 §5.4,
/// §6.1.1) and no ARC-Seal (RFC 8617 §4.1.2: the seal is not the message's).
fn signed_fields(value: &str) -> Result<(), String> {
    let names: Vec<&str> = value.split(':').map(str::trim).collect();
    if let Some(bad) = names
        .iter()
        .find(|name| name.is_empty() || !name.bytes().all(|b| matches!(b, b'!'..=b'~')))
    {
        return Err(format!("h= names {bad:?}, not a header field"));
    }
    if !names.iter().any(|name| name.eq_ignore_ascii_case("from")) {
        return Err("the AMS does not sign From, which RFC 6376 §5.4 requires".to_string());
    }
    if names
        .iter()
        .any(|name| name.eq_ignore_ascii_case("arc-seal"))
    {
        return Err("the AMS signs the ARC-Seal, which RFC 8617 §4.1.2 forbids".to_string());
    }
    Ok(())
}

/// `c=`: `simple` or `relaxed`, for the header and optionally the body.
fn canonicalization(value: &str) -> Result<(), String> {
    let known = |part: &str| matches!(part, "simple" | "relaxed");
    match value.split_once('/') {
        Some((header, body)) if known(header) && known(body) => Ok(()),
        None if known(value) => Ok(()),
        _ => Err(format!("c={value} is not a canonicalization")),
    }
}

/// RFC 6376's `domain-name`: two labels or more (RFC 5321 sub-domains).
fn is_domain_name(value: &str) -> bool {
    value.len() <= 253 && value.split('.').count() >= 2 && is_selector(value)
}

/// RFC 6376's `selector`: sub-domains separated by dots, each a letter or digit,
/// then letters, digits and hyphens, not ending with a hyphen, at most 63 octets.
fn is_selector(value: &str) -> bool {
    value.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAR: &str = "i=1; example.net; spf=pass smtp.mailfrom=example.com";
    const AMS: &str = "i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=arc; \
                       h=from:to:subject; bh=AAAA; b=AAAA";
    const AS: &str = "i=1; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AAAA";

    fn check(fields: &[(&str, &str)]) -> Chain {
        let headers: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        chain(&headers)
    }

    fn reason(fields: &[(&str, &str)]) -> String {
        match check(fields) {
            Chain::Broken { reason, .. } => reason,
            other => panic!("{fields:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_message_without_arc_fields_has_no_chain() {
        assert_eq!(check(&[("From", "a@example.com")]), Chain::None);
    }

    #[test]
    fn a_sound_set_names_the_keys_of_its_seal_and_signature() {
        let Chain::Sound { keys } = check(&[
            ("ARC-Seal", AS),
            ("arc-message-signature", AMS),
            ("ARC-Authentication-Results ", AAR),
        ]) else {
            panic!("not sound");
        };
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].field, "ARC-Seal");
        assert_eq!(
            (keys[1].domain.as_str(), keys[1].selector.as_str()),
            ("example.net", "arc")
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        for (field, value, why) in [
            (
                "ARC-Seal",
                "i=1; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AA",
                "b= is not base64",
            ),
            (
                "ARC-Seal",
                "i=1;; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AAAA",
                "empty tag-spec",
            ),
            (
                "ARC-Seal",
                "i=1; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AAAA; t=soon",
                "t=soon",
            ),
            (
                "ARC-Seal",
                "i=1; a=rsa-sha256; cv=maybe; d=example.net; s=arc; b=AAAA",
                "cv=maybe",
            ),
            (
                "ARC-Seal",
                "i=1; a=rsa-sha256; cv=none; d=example.net; s=a_rc; b=AAAA",
                "s=a_rc",
            ),
            (
                "ARC-Seal",
                "i=1; a=rsa-sha256; cv=none; d=net; s=arc; b=AAAA",
                "d=net",
            ),
            (
                "ARC-Seal",
                "i=0; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AAAA",
                "i=0",
            ),
            (
                "ARC-Seal",
                "I=1; a=rsa-sha256; cv=none; d=example.net; s=arc; b=AAAA",
                "no i=",
            ),
            (
                "ARC-Message-Signature",
                &AMS.replace("c=relaxed/", "c=loose/"),
                "c=loose",
            ),
            (
                "ARC-Message-Signature",
                &AMS.replace("h=from:", "h=from::"),
                "h= names",
            ),
            (
                "ARC-Authentication-Results",
                "i=1 example.net; spf=pass",
                "not followed by ;",
            ),
            ("ARC-Authentication-Results", "i=1;", "no results"),
        ] {
            let got = reason(&[(field, value)]);
            assert!(got.contains(why), "{value}: {got}");
        }
    }

    #[test]
    fn the_structure_is_that_of_rfc8617_5_2() {
        let set = |i: u32, cv: &str| {
            [
                (
                    "ARC-Seal",
                    AS.replace("i=1", &format!("i={i}")).replace("cv=none", cv),
                ),
                (
                    "ARC-Message-Signature",
                    AMS.replace("i=1", &format!("i={i}")),
                ),
                (
                    "ARC-Authentication-Results",
                    AAR.replace("i=1", &format!("i={i}")),
                ),
            ]
        };
        let fields = |sets: &[[(&'static str, String); 3]]| -> Vec<(&'static str, String)> {
            sets.iter().flatten().cloned().collect()
        };
        let run = |fields: Vec<(&'static str, String)>| {
            let borrowed: Vec<(&str, &str)> =
                fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            check(&borrowed)
        };
        assert!(matches!(
            run(fields(&[set(1, "cv=none"), set(2, "cv=pass")])),
            Chain::Sound { ref keys } if keys.len() == 3
        ));
        for (sets, why) in [
            (
                vec![set(1, "cv=none"), set(2, "cv=fail")],
                "the newest ARC-Seal, i=2, has cv=fail",
            ),
            (
                vec![set(1, "cv=fail"), set(2, "cv=pass")],
                "ARC-Seal i=1 has cv=fail, not none",
            ),
            (vec![set(2, "cv=pass")], "no ARC set has i=1"),
        ] {
            match run(fields(&sets)) {
                Chain::Broken { reason, instances } => {
                    assert!(reason.contains(why), "{reason}");
                    assert_eq!(instances, 2);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

//! Our own `Authentication-Results` fields taken out of a message as it arrives, so
//! that only the results we add ourselves can claim our name (RFC 8601 §5).

/// `raw` without the `Authentication-Results` header fields whose authserv-id is
/// ours (compared without regard to case), as RFC 8601 §5 requires of a border MTA;
/// `None` when there are none. Other hosts' results and `ARC-Authentication-Results`
/// are kept.
pub fn strip_own_results(raw: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut removed = false;
    let mut pos = 0;
    while pos < raw.len() {
        let rest = &raw[pos..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            break;
        }
        let mut end = pos;
        loop {
            end = raw[end..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(raw.len(), |i| end + i + 1);
            if end >= raw.len() || !matches!(raw[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &raw[pos..end];
        if is_own_results(field, authserv_id) {
            removed = true;
        } else {
            out.extend_from_slice(field);
        }
        pos = end;
    }
    out.extend_from_slice(&raw[pos..]);
    removed.then_some(out)
}

/// Whether `field` (a whole header field, folded lines included) is an
/// `Authentication-Results` field naming `authserv_id`.
fn is_own_results(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|b| *b == b':') else {
        return false;
    };
    if !field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    let value = skip_cfws(&field[colon + 1..]);
    let id: Vec<u8> = if let Some(quoted) = value.strip_prefix(b"\"") {
        let mut id = Vec::new();
        let mut bytes = quoted.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'"' => break,
                b'\\' => id.extend(bytes.next()),
                b'\r' | b'\n' => {}
                _ => id.push(b),
            }
        }
        id
    } else {
        value
            .iter()
            .take_while(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'('))
            .copied()
            .collect()
    };
    !id.is_empty() && id.eq_ignore_ascii_case(authserv_id.as_bytes())
}

/// `bytes` after leading folding white space and (nested) comments.
fn skip_cfws(mut bytes: &[u8]) -> &[u8] {
    loop {
        match bytes.first() {
            Some(b' ' | b'\t' | b'\r' | b'\n') => bytes = &bytes[1..],
            Some(b'(') => {
                let mut depth = 0usize;
                let mut i = 0;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                bytes = bytes.get(i + 1..).unwrap_or_default();
            }
            _ => return bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "mx.bulwark.test";

    #[test]
    fn strip_own_results_removes_ours_only() {
        let raw = "Received: from x\r\n\
                   Authentication-Results: MX.Bulwark.Test; spf=pass smtp.mailfrom=a@b.test\r\n\
                   authentication-results:\r\n (forged) mx.bulwark.test;\r\n\tdkim=pass header.d=b.test\r\n\
                   Authentication-Results: other.example; spf=fail\r\n\
                   Authentication-Results: mx.bulwark.test.evil; spf=fail\r\n\
                   ARC-Authentication-Results: i=1; mx.bulwark.test; spf=pass\r\n\
                   Authentication-Results: \"mx.bulwark.test\" 1; dkim=pass\r\n\
                   Subject: hi\r\n\
                   \r\n\
                   Authentication-Results: mx.bulwark.test; in the body\r\n";
        let stripped = String::from_utf8(strip_own_results(raw.as_bytes(), ID).unwrap()).unwrap();
        assert_eq!(
            stripped,
            "Received: from x\r\n\
             Authentication-Results: other.example; spf=fail\r\n\
             Authentication-Results: mx.bulwark.test.evil; spf=fail\r\n\
             ARC-Authentication-Results: i=1; mx.bulwark.test; spf=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.bulwark.test; in the body\r\n"
        );
        let bare_lf = "Authentication-Results: mx.bulwark.test;\n spf=pass\nSubject: x\n\nbody\n";
        assert_eq!(
            strip_own_results(bare_lf.as_bytes(), ID).unwrap(),
            b"Subject: x\n\nbody\n"
        );
        assert_eq!(strip_own_results(b"Subject: x\r\n\r\nbody", ID), None);
        assert_eq!(
            strip_own_results(b"Authentication-Results: other; none\r\n", ID),
            None
        );
        assert_eq!(strip_own_results(b"", ID), None);
    }
}

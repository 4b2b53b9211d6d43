//! What the gateway changes in a message's header section before storing it, and
//! how values from outside are made safe to put in a header or a reply.

/// A value on one line: controls (CR and LF above all) become spaces, and the whole
/// is cut to at most `max` bytes on a character boundary.
pub fn one_line(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let mut end = max;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

/// The message with `prefix` and a space put before its subject (the first
/// `Subject` field of the header section), or a `Subject` field with just the prefix
/// added at the end of the header section when it has none. Prefixing twice is
/// avoided: a subject that already starts with the prefix is left alone.
pub fn prefix_subject(message: &[u8], prefix: &str) -> Vec<u8> {
    let header_end = header_end(message);
    let mut at = 0;
    while at < header_end {
        let line_end =
            memchr::memchr(b'\n', &message[at..header_end]).map_or(header_end, |i| at + i + 1);
        let line = &message[at..line_end];
        if line.len() > 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            let mut value = at + 8;
            while value < line_end && matches!(message[value], b' ' | b'\t') {
                value += 1;
            }
            if message[value..line_end].starts_with(prefix.as_bytes()) {
                return message.to_vec();
            }
            let mut out = Vec::with_capacity(message.len() + prefix.len() + 1);
            out.extend_from_slice(&message[..value]);
            if value == at + 8 {
                out.push(b' ');
            }
            out.extend_from_slice(prefix.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&message[value..]);
            return out;
        }
        at = line_end;
    }
    let mut out = Vec::with_capacity(message.len() + prefix.len() + 12);
    out.extend_from_slice(&message[..header_end]);
    out.extend_from_slice(b"Subject: ");
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message[header_end..]);
    out
}

/// Where the header section ends: the offset of the empty line (or the end).
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_gets_the_prefix_once() {
        let m = b"From: a@b.test\r\nSubject: hello\r\n\r\nSubject: in the body\r\n";
        let out = prefix_subject(m, "[SPAM]");
        assert_eq!(
            out,
            b"From: a@b.test\r\nSubject: [SPAM] hello\r\n\r\nSubject: in the body\r\n"
        );
        assert_eq!(prefix_subject(&out, "[SPAM]"), out);
        let folded = b"SUBJECT:\r\n =?utf-8?q?caf=C3=A9?=\r\n\r\nbody";
        assert_eq!(
            prefix_subject(folded, "[SPAM]"),
            b"SUBJECT: [SPAM] \r\n =?utf-8?q?caf=C3=A9?=\r\n\r\nbody"
        );
    }

    #[test]
    fn a_message_without_subject_gets_one() {
        assert_eq!(
            prefix_subject(b"From: a@b.test\r\n\r\nhi", "[SPAM]"),
            b"From: a@b.test\r\nSubject: [SPAM]\r\n\r\nhi"
        );
        assert_eq!(prefix_subject(b"\r\nhi", "[X]"), b"Subject: [X]\r\n\r\nhi");
        assert_eq!(
            prefix_subject(b"X-Subject: no\r\n\r\n", "[X]"),
            b"X-Subject: no\r\nSubject: [X]\r\n\r\n"
        );
    }

    #[test]
    fn values_are_kept_on_one_line_and_short() {
        assert_eq!(one_line("a\r\nb\tc", 100), "a  b c");
        assert_eq!(one_line("ééé", 3), "é");
    }
}

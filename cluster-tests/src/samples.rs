//! Messages for teaching and testing the Bayesian classifier: each class has its own
//! vocabulary, so a classifier that learned a few of each tells unseen ones apart.

/// Words of the spam messages.
pub const SPAM_WORDS: &[&str] = &[
    "viagra",
    "pharmacy",
    "discount",
    "pills",
    "casino",
    "jackpot",
    "winner",
    "lottery",
    "bitcoin",
    "investment",
    "guaranteed",
    "refinance",
    "unclaimed",
    "inheritance",
    "rolex",
    "replica",
    "slimming",
    "miracle",
];

/// Words of the ham messages.
pub const HAM_WORDS: &[&str] = &[
    "meeting",
    "agenda",
    "quarterly",
    "report",
    "budget",
    "review",
    "project",
    "deadline",
    "minutes",
    "schedule",
    "roadmap",
    "retrospective",
    "invoice",
    "contract",
    "onboarding",
    "architecture",
    "migration",
    "release",
];

/// Message number `n` of a class: 12 words of `words`, picked by `n`, from a sender
/// at `tag.test`, with a Message-ID of its own so each is a different message.
pub fn vocabulary_message(words: &[&str], n: usize, tag: &str) -> String {
    let picked: Vec<&str> = (0..12)
        .map(|i| words[(n * 7 + i * 5) % words.len()])
        .collect();
    format!(
        "From: Sender {n} <sender{n}@{tag}.test>\r\nTo: user@example.test\r\n\
         Subject: {} {}\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\n\
         Message-ID: <{tag}-{n}@{tag}.test>\r\n\r\n{}\r\n",
        picked[0],
        picked[1],
        picked.join(" ")
    )
}

/// A message the default policy quarantines (a Windows program attached) whose text
/// holds `marker` once, padded to about `size` bytes: a body that can be looked for
/// byte for byte on disk (never in a header, which the events record).
pub fn quarantined_with(marker: &str, size: usize) -> String {
    let mut text = format!("Hello, here is the tool. {marker}\r\n");
    let line = "The quick brown fox jumps over the lazy dog again and again.\r\n";
    while text.len() < size {
        text.push_str(line);
    }
    format!(
        "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: the tool\r\n\
         Date: Sat, 28 Nov 2026 07:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\n{text}\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n\
         TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\r\n--b--\r\n"
    )
}

/// A marker no other run writes (the time and the process), to put in a body.
pub fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("ERASEMARK{name}{nanos:x}p{}", std::process::id())
}

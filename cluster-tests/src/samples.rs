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

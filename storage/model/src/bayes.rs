//! The Bayesian classifier's training, replicated: what a lesson is, the event that
//! records it, and the token counts it changes.
//!
//! The node that receives a message to learn turns it into token hashes and proposes
//! a [`BayesLesson`]; every node applies the same lesson to the same counts, so every
//! node scores a message alike. A message is counted once, by the SHA-256 of its
//! bytes: learning it again as the same class changes nothing, learning it as the
//! other class moves it, forgetting it takes it out.
//!
//! The counts are kept twice: in the state database (column family `bayes`, written
//! in the same batch as the event) and in memory, loaded at open and updated after
//! each batch is written, because the classifier reads a few thousand of them per
//! message.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::Hash;
use crate::message::MessageId;

/// What a message is learned as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BayesClass {
    Spam,
    Ham,
}

impl BayesClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BayesClass::Spam => "spam",
            BayesClass::Ham => "ham",
        }
    }
}

/// A request to learn a message as a class (or to forget it), with its tokens as the
/// proposing node computed them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BayesLesson {
    /// SHA-256 of the message as submitted.
    pub digest: Hash,
    /// `None`: forget the message.
    pub class: Option<BayesClass>,
    /// The message's distinct token hashes.
    pub tokens: Vec<u64>,
    /// The stored message the lesson is about, when it is one.
    pub message_id: Option<MessageId>,
    /// The caller, as authenticated by the API.
    pub user: String,
    pub client_ip: Option<IpAddr>,
}

/// The `bayes.trained` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BayesTrained {
    pub digest: Hash,
    /// What the message is learned as now; `None`: forgotten.
    pub class: Option<BayesClass>,
    /// What it was learned as before this lesson.
    pub previous: Option<BayesClass>,
    /// Distinct tokens of the message.
    pub tokens: u32,
    pub message_id: Option<MessageId>,
    pub user: String,
    pub client_ip: Option<IpAddr>,
    /// Messages learned as spam and as ham after this lesson.
    pub spam_messages: u64,
    pub ham_messages: u64,
}

impl BayesTrained {
    /// Whether the lesson changed any count.
    pub fn changed(&self) -> bool {
        self.class != self.previous
    }
}

/// Token counts: how many spam and ham messages were learned, and per token in how
/// many of each it occurred.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BayesCounts {
    spam: u64,
    ham: u64,
    /// Keyed by token hashes, with a hasher seeded at random that is far quicker than
    /// SipHash for them (read a few thousand times per scanned message).
    tokens: HashMap<u64, (u32, u32), foldhash::fast::RandomState>,
}

impl BayesCounts {
    pub fn new() -> Self {
        BayesCounts::default()
    }

    /// Messages learned as spam and as ham.
    pub fn totals(&self) -> (u64, u64) {
        (self.spam, self.ham)
    }

    /// The spam and ham counts of each token, in the order given; `(0, 0)` for a
    /// token never learned.
    pub fn counts(&self, tokens: &[u64]) -> Vec<(u32, u32)> {
        tokens.iter().map(|t| self.get(*t)).collect()
    }

    pub fn get(&self, token: u64) -> (u32, u32) {
        self.tokens.get(&token).copied().unwrap_or_default()
    }

    /// Distinct tokens with a count.
    pub fn distinct_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Counts one message of `class` whose distinct tokens are `tokens`.
    pub fn learn(&mut self, tokens: &[u64], class: BayesClass) {
        self.change(tokens, class, true);
    }

    /// Takes back one message of `class` learned with `tokens` (counts stop at zero).
    pub fn unlearn(&mut self, tokens: &[u64], class: BayesClass) {
        self.change(tokens, class, false);
    }

    fn change(&mut self, tokens: &[u64], class: BayesClass, add: bool) {
        let step = |n: u64| if add { n + 1 } else { n.saturating_sub(1) };
        match class {
            BayesClass::Spam => self.spam = step(self.spam),
            BayesClass::Ham => self.ham = step(self.ham),
        }
        for &token in tokens {
            let (mut spam, mut ham) = self.get(token);
            let count = match class {
                BayesClass::Spam => &mut spam,
                BayesClass::Ham => &mut ham,
            };
            *count = if add {
                count.saturating_add(1)
            } else {
                count.saturating_sub(1)
            };
            self.set(token, (spam, ham));
        }
    }

    /// Sets one token's counts; `(0, 0)` removes it.
    pub fn set(&mut self, token: u64, counts: (u32, u32)) {
        if counts == (0, 0) {
            self.tokens.remove(&token);
        } else {
            self.tokens.insert(token, counts);
        }
    }

    pub fn set_totals(&mut self, (spam, ham): (u64, u64)) {
        self.spam = spam;
        self.ham = ham;
    }
}

/// Keys of the `bayes` column family: a token's counts, a learned message's class,
/// the message totals.
pub fn token_key(token: u64) -> [u8; 9] {
    let mut key = [b'w'; 9];
    key[1..].copy_from_slice(&token.to_be_bytes());
    key
}

pub fn message_key(digest: &Hash) -> [u8; 33] {
    let mut key = [b'm'; 33];
    key[1..].copy_from_slice(digest);
    key
}

pub const TOTALS_KEY: &[u8] = b"n";

/// The lessons of one applied batch before it is written: the counts of the tokens
/// they touch and the classes of the messages they name, as the batch leaves them.
pub struct LessonBatch {
    counts: BayesCounts,
    touched: HashSet<u64>,
    pub seen: HashMap<Hash, Option<BayesClass>>,
}

impl LessonBatch {
    pub fn new(memory: &BayesCounts) -> Self {
        let mut counts = BayesCounts::new();
        counts.set_totals(memory.totals());
        LessonBatch {
            counts,
            touched: HashSet::new(),
            seen: HashMap::new(),
        }
    }

    /// Applies `lesson` on top of what the batch has changed so far, `previous`
    /// being the class the message had before it.
    pub fn apply(
        &mut self,
        memory: &BayesCounts,
        lesson: &BayesLesson,
        previous: Option<BayesClass>,
    ) -> BayesTrained {
        if lesson.class != previous {
            for &token in &lesson.tokens {
                if self.touched.insert(token) {
                    self.counts.set(token, memory.get(token));
                }
            }
            if let Some(previous) = previous {
                self.counts.unlearn(&lesson.tokens, previous);
            }
            if let Some(class) = lesson.class {
                self.counts.learn(&lesson.tokens, class);
            }
        }
        self.seen.insert(lesson.digest, lesson.class);
        let (spam_messages, ham_messages) = self.counts.totals();
        BayesTrained {
            digest: lesson.digest,
            class: lesson.class,
            previous,
            tokens: lesson.tokens.len() as u32,
            message_id: lesson.message_id,
            user: lesson.user.clone(),
            client_ip: lesson.client_ip,
            spam_messages,
            ham_messages,
        }
    }

    /// Every token row the batch changed, with its new counts.
    pub fn rows(&self) -> impl Iterator<Item = (u64, (u32, u32))> + '_ {
        self.touched.iter().map(|&t| (t, self.counts.get(t)))
    }

    pub fn totals(&self) -> (u64, u64) {
        self.counts.totals()
    }

    /// Makes the in-memory counts what the written batch holds.
    pub fn commit(self, memory: &mut BayesCounts) {
        for (token, counts) in self.rows() {
            memory.set(token, counts);
        }
        memory.set_totals(self.counts.totals());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_and_unlearning_balance_and_stop_at_zero() {
        let mut counts = BayesCounts::new();
        counts.learn(&[1, 2], BayesClass::Spam);
        counts.learn(&[2, 3], BayesClass::Ham);
        assert_eq!(counts.totals(), (1, 1));
        assert_eq!(
            counts.counts(&[1, 2, 3, 4]),
            [(1, 0), (1, 1), (0, 1), (0, 0)]
        );
        counts.unlearn(&[1, 2], BayesClass::Spam);
        assert_eq!(counts.totals(), (0, 1));
        assert_eq!(counts.distinct_tokens(), 2, "token 1 is gone");
        counts.unlearn(&[9], BayesClass::Spam);
        assert_eq!(counts.totals(), (0, 1));
        assert_eq!(counts.get(9), (0, 0));
    }
}

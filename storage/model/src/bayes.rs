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
/// many of each it occurred and the day it was last learned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BayesCounts {
    spam: u64,
    ham: u64,
    /// Keyed by token hashes, with a hasher seeded at random that is far quicker than
    /// SipHash for them (read a few thousand times per scanned message).
    tokens: HashMap<u64, Token, foldhash::fast::RandomState>,
}

/// One token's counts and the day (since the Unix epoch, UTC) a lesson last counted
/// it; 0 for a token learned before the cluster ran at
/// [`crate::feature::BAYES_EXPIRY`], which is expired first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Token {
    pub spam: u32,
    pub ham: u32,
    pub day: u32,
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
        let t = self.token(token);
        (t.spam, t.ham)
    }

    /// A token's counts and day; all zero for a token never learned.
    pub fn token(&self, token: u64) -> Token {
        self.tokens.get(&token).copied().unwrap_or_default()
    }

    /// Distinct tokens with a count.
    pub fn distinct_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Counts one message of `class` whose distinct tokens are `tokens`.
    pub fn learn(&mut self, tokens: &[u64], class: BayesClass) {
        self.change(tokens, class, true, None);
    }

    /// Takes back one message of `class` learned with `tokens` (counts stop at zero).
    pub fn unlearn(&mut self, tokens: &[u64], class: BayesClass) {
        self.change(tokens, class, false, None);
    }

    /// `day`: stamp each token with it (a lesson applied at
    /// [`crate::feature::BAYES_EXPIRY`] or later).
    fn change(&mut self, tokens: &[u64], class: BayesClass, add: bool, day: Option<u32>) {
        let step = |n: u64| if add { n + 1 } else { n.saturating_sub(1) };
        match class {
            BayesClass::Spam => self.spam = step(self.spam),
            BayesClass::Ham => self.ham = step(self.ham),
        }
        for &token in tokens {
            let mut t = self.token(token);
            let count = match class {
                BayesClass::Spam => &mut t.spam,
                BayesClass::Ham => &mut t.ham,
            };
            *count = if add {
                count.saturating_add(1)
            } else {
                count.saturating_sub(1)
            };
            if let Some(day) = day {
                t.day = day;
            }
            self.set(token, t);
        }
    }

    /// Sets one token's counts and day; counts `(0, 0)` remove it.
    pub fn set(&mut self, token: u64, t: Token) {
        if (t.spam, t.ham) == (0, 0) {
            self.tokens.remove(&token);
        } else {
            self.tokens.insert(token, t);
        }
    }

    pub fn set_totals(&mut self, (spam, ham): (u64, u64)) {
        self.spam = spam;
        self.ham = ham;
    }

    /// The tokens an expiry down to `keep` removes, `limit` at most (see
    /// [`oldest`]).
    pub fn oldest(&self, keep: u64, limit: u64) -> Vec<u64> {
        oldest(self.tokens.iter().map(|(&k, &t)| (k, t)), keep, limit)
    }
}

/// Of `tokens`, those an expiry down to `keep` removes, `limit` at most: the longest
/// unlearned first (by day), of a day the rarest first (fewest messages), then by
/// hash, so every node removes the same ones. None when there are `keep` or fewer.
fn oldest(tokens: impl Iterator<Item = (u64, Token)>, keep: u64, limit: u64) -> Vec<u64> {
    let mut order: Vec<(u32, u32, u64)> = tokens
        .map(|(token, t)| (t.day, t.spam.saturating_add(t.ham), token))
        .collect();
    let excess = (order.len() as u64).saturating_sub(keep).min(limit) as usize;
    if excess == 0 {
        return Vec::new();
    }
    if excess < order.len() {
        order.select_nth_unstable(excess);
        order.truncate(excess);
    }
    order.into_iter().map(|(_, _, token)| token).collect()
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

/// A token's day (u32, big-endian; see [`Token::day`]) under its own key: the
/// releases before it read `w` rows only and open a database that has these.
pub fn day_key(token: u64) -> [u8; 9] {
    let mut key = [b'd'; 9];
    key[1..].copy_from_slice(&token.to_be_bytes());
    key
}

pub const TOTALS_KEY: &[u8] = b"n";

/// Days since the Unix epoch (UTC) at `time_ms`, the day a lesson stamps its tokens
/// with; 0 before the epoch.
pub fn day_of(time_ms: i64) -> u32 {
    u32::try_from(time_ms.div_euclid(86_400_000)).unwrap_or(if time_ms < 0 { 0 } else { u32::MAX })
}

/// A request to keep the classifier to `keep` tokens, removing `limit` at most (one
/// Raft entry and one write stay small; the leader proposes again for the rest),
/// proposed by the leader once it holds more than `max` (`scan.bayes_max_tokens`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BayesExpiry {
    pub keep: u64,
    pub limit: u64,
    pub max: u64,
}

/// The `bayes.expired` event: tokens removed by an expiry, and the day the newest of
/// them was last learned (0: before days were kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BayesExpired {
    pub before: u64,
    pub removed: u64,
    pub max: u64,
    pub newest_removed_day: u32,
}

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
    /// being the class the message had before it; `day`: stamp the tokens it counts
    /// with it ([`day_of`] the operation's time, from
    /// [`crate::feature::BAYES_EXPIRY`] on).
    pub fn apply(
        &mut self,
        memory: &BayesCounts,
        lesson: &BayesLesson,
        previous: Option<BayesClass>,
        day: Option<u32>,
    ) -> BayesTrained {
        if lesson.class != previous {
            for &token in &lesson.tokens {
                if self.touched.insert(token) {
                    self.counts.set(token, memory.token(token));
                }
            }
            if let Some(previous) = previous {
                self.counts.change(&lesson.tokens, previous, false, None);
            }
            if let Some(class) = lesson.class {
                self.counts.change(&lesson.tokens, class, true, day);
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

    /// Removes the tokens an expiry down to `expiry.keep` removes from the counts as
    /// the batch has left them so far (see [`oldest`]).
    pub fn expire(&mut self, memory: &BayesCounts, expiry: &BayesExpiry) -> BayesExpired {
        let untouched = memory
            .tokens
            .iter()
            .filter(|(token, _)| !self.touched.contains(token))
            .map(|(&k, &t)| (k, t));
        let changed = self.counts.tokens.iter().map(|(&k, &t)| (k, t));
        let before = untouched.clone().count() + self.counts.tokens.len();
        let removed = oldest(untouched.chain(changed), expiry.keep, expiry.limit);
        let mut newest_removed_day = 0;
        for &token in &removed {
            let day = if self.touched.insert(token) {
                memory.token(token).day
            } else {
                self.counts.token(token).day
            };
            newest_removed_day = newest_removed_day.max(day);
            self.counts.set(token, Token::default());
        }
        BayesExpired {
            before: before as u64,
            removed: removed.len() as u64,
            max: expiry.max,
            newest_removed_day,
        }
    }

    /// Every token row the batch changed, with its new counts (all zero: removed).
    pub fn rows(&self) -> impl Iterator<Item = (u64, Token)> + '_ {
        self.touched.iter().map(|&t| (t, self.counts.token(t)))
    }

    pub fn totals(&self) -> (u64, u64) {
        self.counts.totals()
    }

    /// Makes the in-memory counts what the written batch holds.
    pub fn commit(self, memory: &mut BayesCounts) {
        for (token, t) in self.rows() {
            memory.set(token, t);
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

    fn lesson(n: u8, class: Option<BayesClass>, tokens: &[u64]) -> BayesLesson {
        BayesLesson {
            digest: [n; 32],
            class,
            tokens: tokens.to_vec(),
            message_id: None,
            user: "admin".into(),
            client_ip: None,
        }
    }

    /// Applies `lessons` (each with its day) and commits them, as one batch.
    fn learn_days(memory: &mut BayesCounts, lessons: &[(BayesLesson, Option<u32>)]) {
        let mut batch = LessonBatch::new(memory);
        for (lesson, day) in lessons {
            batch.apply(memory, lesson, None, *day);
        }
        batch.commit(memory);
    }

    #[test]
    fn a_lesson_stamps_the_tokens_it_counts_with_its_day_once_days_are_kept() {
        let mut memory = BayesCounts::new();
        learn_days(
            &mut memory,
            &[(lesson(1, Some(BayesClass::Spam), &[1, 2]), None)],
        );
        assert_eq!(memory.token(1).day, 0, "learned before days were kept");
        learn_days(
            &mut memory,
            &[(lesson(2, Some(BayesClass::Ham), &[2, 3]), Some(20_000))],
        );
        assert_eq!(
            [memory.token(1), memory.token(2), memory.token(3)],
            [
                Token {
                    spam: 1,
                    ham: 0,
                    day: 0
                },
                Token {
                    spam: 1,
                    ham: 1,
                    day: 20_000
                },
                Token {
                    spam: 0,
                    ham: 1,
                    day: 20_000
                },
            ]
        );
        // Forgetting a message takes its counts, and leaves the day of the last
        // lesson that counted the token.
        let mut batch = LessonBatch::new(&memory);
        batch.apply(
            &memory,
            &lesson(2, None, &[2, 3]),
            Some(BayesClass::Ham),
            Some(20_005),
        );
        batch.commit(&mut memory);
        assert_eq!(
            memory.token(2),
            Token {
                spam: 1,
                ham: 0,
                day: 20_000
            }
        );
        assert_eq!(memory.token(3), Token::default());
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(86_400_000 * 20_000 + 5), 20_000);
        assert_eq!(day_of(-1), 0);
    }

    #[test]
    fn an_expiry_removes_the_longest_unlearned_then_the_rarest_and_keeps_the_totals() {
        let mut memory = BayesCounts::new();
        // Day 10: tokens 1..=4 (token 4 in two messages); day 12: 5 and 6; day 11:
        // 7, learned in the same batch as the expiry below.
        learn_days(
            &mut memory,
            &[
                (lesson(1, Some(BayesClass::Spam), &[1, 2, 4]), Some(10)),
                (lesson(2, Some(BayesClass::Ham), &[3, 4]), Some(10)),
                (lesson(3, Some(BayesClass::Ham), &[5, 6]), Some(12)),
            ],
        );
        let mut batch = LessonBatch::new(&memory);
        batch.apply(
            &memory,
            &lesson(4, Some(BayesClass::Spam), &[7, 1]),
            None,
            Some(11),
        );
        let expired = batch.expire(
            &memory,
            &BayesExpiry {
                keep: 4,
                limit: 100,
                max: 6,
            },
        );
        assert_eq!(
            expired,
            BayesExpired {
                before: 7,
                removed: 3,
                max: 6,
                newest_removed_day: 10
            }
        );
        batch.commit(&mut memory);
        assert_eq!(memory.distinct_tokens(), 4);
        // Of day 10, 2 and 3 (one message each) went before 4 (two); token 1 was
        // learned again on day 11 and stays.
        assert_eq!(memory.counts(&[2, 3, 4]), [(0, 0), (0, 0), (0, 0)]);
        assert_eq!(
            memory.token(1),
            Token {
                spam: 2,
                ham: 0,
                day: 11
            }
        );
        assert_eq!(memory.counts(&[5, 6, 7]), [(0, 1), (0, 1), (1, 0)]);
        assert_eq!(
            memory.totals(),
            (2, 2),
            "messages learned are still counted"
        );
        // Nothing to do at or under the size kept.
        let mut batch = LessonBatch::new(&memory);
        assert_eq!(
            batch
                .expire(
                    &memory,
                    &BayesExpiry {
                        keep: 4,
                        limit: 100,
                        max: 6
                    }
                )
                .removed,
            0
        );
        assert_eq!(batch.rows().count(), 0);
    }

    #[test]
    fn every_order_of_the_same_counts_expires_the_same_tokens() {
        let mut a = BayesCounts::new();
        let mut b = BayesCounts::new();
        let tokens: Vec<u64> = (0..500u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for (i, &token) in tokens.iter().enumerate() {
            let t = Token {
                spam: (i % 3) as u32,
                ham: 1,
                day: (i % 7) as u32,
            };
            a.set(token, t);
        }
        for (i, &token) in tokens.iter().enumerate().rev() {
            let t = Token {
                spam: (i % 3) as u32,
                ham: 1,
                day: (i % 7) as u32,
            };
            b.set(token, t);
        }
        let mut removed_a = a.oldest(300, 1000);
        let mut removed_b = b.oldest(300, 1000);
        removed_a.sort_unstable();
        removed_b.sort_unstable();
        assert_eq!(removed_a.len(), 200);
        assert_eq!(removed_a, removed_b);
        // A limit takes the oldest of the same order.
        let mut first = a.oldest(300, 50);
        first.sort_unstable();
        assert_eq!(first.len(), 50);
        assert!(first.iter().all(|t| removed_a.contains(t)));
        // Every token removed is no newer than every token kept.
        let key = |t: &u64| {
            let x = a.token(*t);
            (x.day, x.spam + x.ham, *t)
        };
        let newest_removed = removed_a.iter().map(key).max().unwrap();
        let kept = tokens.iter().filter(|t| !removed_a.contains(t));
        assert!(kept.map(key).all(|k| k > newest_removed));
    }
}

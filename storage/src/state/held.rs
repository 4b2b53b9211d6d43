//! The quarantine by address, so that a search by sender or recipient reads the
//! messages of that address or domain, not the whole quarantine.
//!
//! The `held` column family holds, for each quarantined message, a key with an empty
//! value per address term: the tag, the first 16 bytes of the SHA-256 of the term,
//! the message id. The terms are the envelope sender (`s`) and each recipient (`r`),
//! each as its lowercase address and as `@` and its lowercase domain (the null sender
//! as `<>`): the patterns [`super::address_matches`] takes. The keys are written in
//! the batch that changes the message's quarantine record, so the index never lags
//! the quarantine. A term's messages are in id order, which is arrival order, as the
//! listing pages them. A search reads the records its postings name and checks each
//! against the whole filter, so a hash collision costs time, never a wrong answer.

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use sha2::{Digest, Sha256};

use super::cf_handle;
use crate::layout::cf;
use crate::message::{MessageId, QuarantineRecord};
use crate::{codec, Result};

const BY_SENDER: u8 = b's';
const BY_RECIPIENT: u8 = b'r';

/// Tag and hashed term: a posting's key without its message id.
pub(super) type Term = [u8; 17];

fn term(tag: u8, text: &str) -> Term {
    let digest = Sha256::digest(text.to_ascii_lowercase().as_bytes());
    let mut t = [0u8; 17];
    t[0] = tag;
    t[1..].copy_from_slice(&digest[..16]);
    t
}

/// The terms an address is found by: itself and its domain (the null sender: `<>`).
fn address_terms(tag: u8, address: &str, out: &mut Vec<Term>) {
    if address.is_empty() {
        out.push(term(tag, "<>"));
        return;
    }
    out.push(term(tag, address));
    if let Some((_, domain)) = address.rsplit_once('@') {
        out.push(term(tag, &format!("@{domain}")));
    }
}

fn keys(record: &QuarantineRecord) -> Vec<Vec<u8>> {
    let mut terms = Vec::new();
    address_terms(BY_SENDER, &record.mail_from, &mut terms);
    for r in &record.recipients {
        address_terms(BY_RECIPIENT, r, &mut terms);
    }
    terms.sort_unstable();
    terms.dedup();
    terms
        .into_iter()
        .map(|t| [&t[..], &record.message_id.key()[..]].concat())
        .collect()
}

/// The term a search pattern is found by, when the index can serve it exactly:
/// `<>` (or nothing: the null sender), an address, or `@domain` with no other `@`;
/// `None` for a pattern it cannot.
fn pattern_term(tag: u8, pattern: &str) -> Option<Term> {
    if pattern.is_empty() || pattern == "<>" {
        return Some(term(tag, "<>"));
    }
    if pattern.starts_with('@') {
        let served = pattern.len() > 1 && pattern.matches('@').count() == 1;
        return served.then(|| term(tag, pattern));
    }
    Some(term(tag, pattern))
}

/// The posting list a search by `sender` or else `recipient` reads, if either can
/// be served.
pub(super) fn term_for(sender: Option<&str>, recipient: Option<&str>) -> Option<Term> {
    sender
        .and_then(|s| pattern_term(BY_SENDER, s))
        .or_else(|| recipient.and_then(|r| pattern_term(BY_RECIPIENT, r)))
}

/// Adds to `write` what moves message `id` in the index from its stored record `old`
/// to `new` (`None`: not quarantined).
pub(super) fn update(
    db: &DB,
    write: &mut WriteBatch,
    old: Option<&QuarantineRecord>,
    new: Option<&QuarantineRecord>,
) {
    let held = cf_handle(db, cf::HELD);
    let (old, new) = (
        old.map(keys).unwrap_or_default(),
        new.map(keys).unwrap_or_default(),
    );
    for key in old.iter().filter(|k| !new.contains(k)) {
        write.delete_cf(held, key);
    }
    for key in new.iter().filter(|k| !old.contains(k)) {
        write.put_cf(held, key, []);
    }
}

/// Indexes every quarantined message into `write`: for a database written before
/// the index.
pub(super) fn rebuild(db: &DB, write: &mut WriteBatch) -> Result<()> {
    let held = cf_handle(db, cf::HELD);
    let mut iter = db.raw_iterator_cf(cf_handle(db, cf::QUARANTINE));
    iter.seek_to_first();
    while let Some(value) = iter.value() {
        let record: QuarantineRecord = codec::decode(value)?;
        for key in keys(&record) {
            write.put_cf(held, key, []);
        }
        iter.next();
    }
    iter.status()?;
    Ok(())
}

/// Term `t`'s messages after `after`, in order, each given to `read` until it says
/// the page is full (false) or `max` were read; the id to go on after, `None` when
/// the term has no message further.
pub(super) fn walk(
    db: &DB,
    t: &Term,
    after: Option<MessageId>,
    max: usize,
    mut read: impl FnMut(MessageId) -> Result<bool>,
) -> Result<Option<MessageId>> {
    let start = match after {
        Some(id) if id.0 == u128::MAX => return Ok(None),
        Some(id) => [&t[..], &(id.0 + 1).to_be_bytes()[..]].concat(),
        None => t.to_vec(),
    };
    let mut iter = db.iterator_cf(
        cf_handle(db, cf::HELD),
        IteratorMode::From(&start, Direction::Forward),
    );
    let of_term = |key: &[u8]| -> Result<Option<MessageId>> {
        let Some(rest) = key.strip_prefix(&t[..]) else {
            return Ok(None);
        };
        let bytes: [u8; 16] = rest.try_into().map_err(|_| {
            crate::Error::Decode(format!("a quarantine posting of {} bytes", key.len()))
        })?;
        Ok(Some(MessageId(u128::from_be_bytes(bytes))))
    };
    let mut read_so_far = 0;
    while let Some(item) = iter.next() {
        let Some(id) = of_term(&item?.0)? else {
            return Ok(None);
        };
        read_so_far += 1;
        if !read(id)? {
            let more = match iter.next() {
                Some(next) => of_term(&next?.0)?.is_some(),
                None => false,
            };
            return Ok(more.then_some(id));
        }
        if read_so_far >= max {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_the_index_serves_exactly() {
        assert_eq!(
            pattern_term(BY_SENDER, "A@B.test"),
            Some(term(BY_SENDER, "a@b.test"))
        );
        assert_eq!(
            pattern_term(BY_SENDER, "@b.test"),
            Some(term(BY_SENDER, "@B.TEST"))
        );
        assert_eq!(pattern_term(BY_SENDER, ""), pattern_term(BY_SENDER, "<>"));
        assert_eq!(
            pattern_term(BY_SENDER, "postmaster"),
            Some(term(BY_SENDER, "Postmaster"))
        );
        // A pattern address_matches reads as a suffix across an `@` of the local
        // part: scanned.
        assert_eq!(pattern_term(BY_SENDER, "@b\"@c.test"), None);
        assert_eq!(pattern_term(BY_SENDER, "@"), None);
        assert_ne!(term(BY_SENDER, "a@b.test"), term(BY_RECIPIENT, "a@b.test"));
    }
}

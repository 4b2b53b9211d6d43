//! Evidence for an auditor: a file holding the events of a range or of a message with
//! everything needed to check them on another machine, without the cluster.
//!
//! A bundle holds a contiguous run of the chain, from the first event asked for to a
//! signed checkpoint that covers the last one, each event as stored (its encoding, so
//! its hash can be recomputed) and as the API shows it, plus the signing keys the
//! cluster trusted. [`verify`] recomputes every hash and link, checks that each
//! readable event says what its encoding says, and that a checkpoint whose signature
//! holds, by a key trusted for its node at that point, names an event of the run at
//! or after every event asked for. What it cannot know is whether the trusted keys
//! are the cluster's: pinning them (`--trusted-signer`, or against the SIEM's copy of
//! the checkpoints and `audit.key_rotated` events) is the auditor's step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::event::{EventKind, StoredEvent};
use crate::signer::Signers;

/// The format's name and version, first in every bundle.
pub const FORMAT: &str = "bulwark-audit-bundle/1";

/// An audit bundle as written to a file (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    /// When and by which node it was made, and what was asked.
    pub created: String,
    pub node: u64,
    pub query: serde_json::Value,
    /// The seqs of the events asked for, all within `events`.
    pub selected: Vec<u64>,
    /// The run of the chain, in order, without gaps.
    pub events: Vec<BundleEvent>,
    /// The keys the cluster trusted for each node's checkpoints.
    pub signers: BTreeMap<u64, Signers>,
}

/// One event of a bundle: its stored encoding (hex) and its JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleEvent {
    pub stored: String,
    pub event: serde_json::Value,
}

impl BundleEvent {
    pub fn new(stored: &StoredEvent) -> crate::Result<BundleEvent> {
        Ok(BundleEvent {
            stored: hex::encode(codec::encode(stored)?),
            event: stored.to_json(),
        })
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BundleReport {
    pub ok: bool,
    /// Events of the run checked.
    pub events: u64,
    /// Events asked for.
    pub selected: u64,
    /// The last event a valid checkpoint covers (0: none).
    pub covered_through: u64,
    pub checkpoints: u64,
    /// The keys of the checkpoints that held, as `node:hex`.
    pub signers: Vec<String>,
    pub problem: Option<String>,
}

/// Checks `bundle` on its own; with `trusted` (`node:hex`), only checkpoints signed
/// by those keys count.
pub fn verify(bundle: &Bundle, trusted: &[String]) -> BundleReport {
    let mut report = BundleReport {
        selected: bundle.selected.len() as u64,
        ..BundleReport::default()
    };
    match check(bundle, trusted, &mut report) {
        Ok(()) => report.ok = true,
        Err(problem) => report.problem = Some(problem),
    }
    report
}

fn check(bundle: &Bundle, trusted: &[String], report: &mut BundleReport) -> Result<(), String> {
    if bundle.format != FORMAT {
        return Err(format!(
            "format {:?}, not {FORMAT:?}: not a bundle this version reads",
            bundle.format
        ));
    }
    let mut run: Vec<StoredEvent> = Vec::with_capacity(bundle.events.len());
    for (i, item) in bundle.events.iter().enumerate() {
        let bytes = hex::decode(&item.stored)
            .map_err(|e| format!("event {} of the run: its encoding is not hex: {e}", i + 1))?;
        let stored: StoredEvent = codec::decode(&bytes)
            .map_err(|e| format!("event {} of the run does not decode: {e}", i + 1))?;
        let seq = stored.event.seq;
        if let Some(before) = run.last() {
            if seq != before.event.seq + 1 {
                return Err(format!(
                    "event {seq} follows {}: the run has a gap",
                    before.event.seq
                ));
            }
            if stored.prev_hash != before.hash {
                return Err(format!("event {seq} does not link to the event before it"));
            }
        }
        if !stored.hash_is_valid() {
            return Err(format!("event {seq}: its hash does not match its content"));
        }
        if !says_the_same(&stored, &item.event) {
            return Err(format!(
                "event {seq}: the readable event differs from what its encoding says"
            ));
        }
        run.push(stored);
        report.events += 1;
    }
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Err("the bundle holds no events".into());
    };
    let (first, last) = (first.event.seq, last.event.seq);
    if let Some(outside) = bundle
        .selected
        .iter()
        .find(|seq| !(first..=last).contains(*seq))
    {
        return Err(format!(
            "event {outside} is asked for but not in the run {first}..{last}"
        ));
    }
    let mut signers = std::collections::BTreeSet::new();
    for stored in &run {
        let EventKind::ChainCheckpoint(c) = &stored.event.kind else {
            continue;
        };
        let at = stored.event.seq;
        let named = c
            .seq
            .checked_sub(first)
            .and_then(|i| run.get(i as usize))
            .filter(|e| e.event.seq < at);
        let signer = format!("{}:{}", c.node, hex::encode(&c.public_key));
        let pinned = trusted.is_empty() || trusted.contains(&signer);
        let key_trusted = bundle
            .signers
            .get(&c.node)
            .is_some_and(|s| s.trusted_at(&c.public_key, at));
        if !c.signature_is_valid() {
            return Err(format!(
                "the checkpoint at event {at}: its signature is not valid"
            ));
        }
        if !key_trusted {
            return Err(format!(
                "the checkpoint at event {at} is signed by {signer}, a key the bundle's \
                 signers do not trust for that node there"
            ));
        }
        match named {
            Some(named) if named.hash == c.hash && pinned => {
                report.checkpoints += 1;
                report.covered_through = report.covered_through.max(c.seq);
                signers.insert(signer);
            }
            Some(named) if named.hash != c.hash => {
                return Err(format!(
                    "the checkpoint at event {at} names hash {} for event {}, which the run \
                     does not hold: the history before it was rewritten",
                    hex::encode(c.hash),
                    c.seq
                ));
            }
            // Signed by a key the auditor did not pin, or naming an event before the
            // run: it proves nothing here.
            _ => {}
        }
    }
    report.signers = signers.into_iter().collect();
    if let Some(uncovered) = bundle
        .selected
        .iter()
        .find(|seq| **seq > report.covered_through)
    {
        return Err(if report.checkpoints == 0 {
            "no checkpoint signed by a trusted key covers the events asked for".to_string()
        } else {
            format!(
                "event {uncovered} is after the last signed checkpoint ({}): not yet covered",
                report.covered_through
            )
        });
    }
    Ok(())
}

/// True when `shown` is what the encoding says: its JSON as this build renders it,
/// or as a build before the API marker (`event.provider`, derived from the encoding
/// alone) rendered it, so that a bundle written by one still verifies.
fn says_the_same(stored: &StoredEvent, shown: &serde_json::Value) -> bool {
    let mut rendered = stored.to_json();
    if rendered == *shown {
        return true;
    }
    let Some(map) = rendered.as_object_mut() else {
        return false;
    };
    let Some(event) = map.get_mut("event").and_then(|e| e.as_object_mut()) else {
        return false;
    };
    if event.remove("provider").is_none() {
        return false;
    }
    if event.is_empty() {
        map.remove("event");
    }
    rendered == *shown
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::event::{ChainCheckpoint, Event, Hash};
    use crate::signer::TrustedKey;

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    /// A chain of notes 1..=n, then a checkpoint of event `n` signed by node 1 with
    /// `signer`.
    fn chain(n: u64, signer: &Ed25519KeyPair) -> Vec<StoredEvent> {
        let mut prev: Hash = [7; 32];
        let mut out = Vec::new();
        let push = |kind: EventKind, out: &mut Vec<StoredEvent>, prev: &mut Hash| {
            let event = Event {
                seq: out.len() as u64 + 1,
                time_ms: 1_700_000_000_000,
                node: 1,
                raft_index: 1,
                op_id: 1,
                kind,
            };
            let hash = event.chain_hash(prev).unwrap();
            out.push(StoredEvent {
                event,
                prev_hash: *prev,
                hash,
            });
            *prev = hash;
        };
        for i in 0..n {
            let kind = EventKind::AuditNote {
                author: "a".into(),
                text: format!("note {i}"),
            };
            push(kind, &mut out, &mut prev);
        }
        let named = out.last().unwrap().hash;
        let checkpoint = ChainCheckpoint {
            seq: n,
            hash: named,
            node: 1,
            public_key: signer.public_key().as_ref().to_vec(),
            signature: signer
                .sign(&ChainCheckpoint::message(n, &named))
                .as_ref()
                .to_vec(),
        };
        push(
            EventKind::ChainCheckpoint(Box::new(checkpoint)),
            &mut out,
            &mut prev,
        );
        out
    }

    fn bundle(run: &[StoredEvent], selected: Vec<u64>, signer: &Ed25519KeyPair) -> Bundle {
        let trusted = Signers {
            keys: vec![TrustedKey {
                public_key: signer.public_key().as_ref().to_vec(),
                from_seq: 0,
            }],
        };
        Bundle {
            format: FORMAT.into(),
            created: "2026-12-05T00:00:00Z".into(),
            node: 1,
            query: serde_json::json!({}),
            selected,
            events: run.iter().map(|e| BundleEvent::new(e).unwrap()).collect(),
            signers: [(1, trusted)].into_iter().collect(),
        }
    }

    #[test]
    fn a_whole_bundle_verifies_and_names_its_signer() {
        let signer = key();
        let good = bundle(&chain(3, &signer), vec![2, 3], &signer);
        let report = verify(&good, &[]);
        assert!(report.ok, "{report:?}");
        assert_eq!((report.events, report.covered_through), (4, 3));
        let name = format!("1:{}", hex::encode(signer.public_key().as_ref()));
        assert_eq!(report.signers, vec![name.clone()]);
        assert!(verify(&good, std::slice::from_ref(&name)).ok);
        // Pinned to another key: nothing covers the events.
        let other = verify(&good, &[format!("1:{}", "ab".repeat(32))]);
        assert!(!other.ok);
        assert!(other.problem.unwrap().contains("no checkpoint"));
    }

    #[test]
    fn every_kind_of_tampering_shows() {
        let signer = key();
        let run = chain(3, &signer);
        let good = bundle(&run, vec![2], &signer);
        let fails = |b: &Bundle, words: &str| {
            let report = verify(b, &[]);
            assert!(!report.ok, "{report:?}");
            let problem = report.problem.unwrap();
            assert!(problem.contains(words), "{problem}");
        };
        // The readable JSON edited, its encoding left.
        let mut edited = good.clone();
        edited.events[1].event["message"] = "something else".into();
        fails(&edited, "differs");
        // Written before the API marker: the same note without it still verifies,
        // but not with another author.
        let mut older = good.clone();
        assert_eq!(older.events[1].event["event"]["provider"], "api");
        older.events[1]
            .event
            .as_object_mut()
            .unwrap()
            .remove("event");
        assert!(verify(&older, &[]).ok);
        older.events[1].event["user"]["name"] = "someone else".into();
        fails(&older, "differs");
        // An event dropped from the run.
        let mut gap = good.clone();
        gap.events.remove(1);
        fails(&gap, "gap");
        // An event's content rewritten and re-encoded without re-chaining.
        let mut rewritten = run.clone();
        rewritten[1].event.kind = EventKind::AuditNote {
            author: "a".into(),
            text: "forged".into(),
        };
        fails(&bundle(&rewritten, vec![2], &signer), "hash does not match");
        // Rewritten and re-chained: the checkpoint no longer names the run.
        let mut prev = rewritten[0].hash;
        for e in rewritten.iter_mut().skip(1) {
            e.prev_hash = prev;
            e.hash = e.event.chain_hash(&prev).unwrap();
            prev = e.hash;
        }
        fails(&bundle(&rewritten, vec![2], &signer), "rewritten");
        // Re-signed by a forger whose key the bundle claims is trusted: an auditor
        // who pinned the real key sees nothing covered.
        let forger = key();
        let forged = bundle(&chain(3, &forger), vec![2], &forger);
        assert!(verify(&forged, &[]).ok);
        let real = format!("1:{}", hex::encode(signer.public_key().as_ref()));
        assert!(!verify(&forged, &[real]).ok);
        // Signed by a key the bundle's own signers do not trust.
        fails(&bundle(&run, vec![2], &forger), "do not trust");
        // An event asked for after the checkpoint's reach, or outside the run.
        fails(&bundle(&run, vec![4], &signer), "not yet covered");
        fails(&bundle(&run, vec![9], &signer), "not in the run");
        let mut format = good.clone();
        format.format = "other/2".into();
        fails(&format, "format");
    }
}

//! Checkpoint signers: a node's new key becomes the one trusted for its checkpoints
//! from the event that records the change (`audit.key_rotated`) on.

use super::{Changes, Outcome, Stored, Write};
use crate::event::{EventKind, SignerChanged};
use crate::signer::TrustedKey;

/// An Ed25519 public key's length.
const KEY_LEN: usize = 32;

/// Trusts `command.public_key` for node `command.node` from event `seq` on. The key
/// it replaces is the one on record, whatever the command says; the key already
/// trusted changes nothing and records nothing; a retired key is never trusted again.
pub fn trust<S: Stored>(
    changes: &mut Changes<'_>,
    store: &S,
    command: &SignerChanged,
    seq: u64,
) -> Result<Outcome, S::Error> {
    let node = command.node;
    if command.public_key.len() != KEY_LEN {
        let reason = format!(
            "a signing key of node {node} is {} bytes, not an Ed25519 public key",
            command.public_key.len()
        );
        return Ok((Vec::new(), Some(reason)));
    }
    let mut signers = changes.signers(store, node)?;
    let previous = signers.current().map(<[u8]>::to_vec);
    if previous.as_deref() == Some(command.public_key.as_slice()) {
        return Ok((Vec::new(), None));
    }
    if signers
        .keys
        .iter()
        .any(|k| k.public_key == command.public_key)
    {
        let reason = format!("a retired signing key of node {node} is not trusted again");
        return Ok((Vec::new(), Some(reason)));
    }
    signers.keys.push(TrustedKey {
        public_key: command.public_key.clone(),
        from_seq: if previous.is_some() { seq } else { 0 },
    });
    changes.signers.insert(node, signers.clone());
    changes.writes.push(Write::Signers(node, signers));
    let event = EventKind::SignerChanged(Box::new(SignerChanged {
        node,
        public_key: command.public_key.clone(),
        endorsement: previous.as_ref().and(command.endorsement.clone()),
        previous,
    }));
    Ok((vec![event], None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::memory::Memory;

    fn change(node: u64, key: u8, endorsement: Option<Vec<u8>>) -> SignerChanged {
        SignerChanged {
            node,
            public_key: vec![key; 32],
            previous: None,
            endorsement,
        }
    }

    #[test]
    fn a_first_key_is_trusted_from_the_start_and_a_new_one_from_its_event() {
        let mut store = Memory::default();
        let mut changes = Changes::default();
        let (events, refused) = trust(&mut changes, &store, &change(1, 1, None), 7).unwrap();
        assert_eq!(refused, None);
        let EventKind::SignerChanged(first) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(first.previous, None);
        // The same key again in the same batch: nothing.
        let (again, _) = trust(&mut changes, &store, &change(1, 1, None), 8).unwrap();
        assert!(again.is_empty());
        store.commit(changes);
        assert!(store.signers[&1].trusted_at(&[1; 32], 0));

        let mut changes = Changes::default();
        let rotation = change(1, 2, Some(vec![9; 64]));
        let (events, _) = trust(&mut changes, &store, &rotation, 40).unwrap();
        let EventKind::SignerChanged(rotated) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(rotated.previous, Some(vec![1; 32]));
        assert_eq!(rotated.endorsement, Some(vec![9; 64]));
        store.commit(changes);
        let signers = &store.signers[&1];
        assert!(signers.trusted_at(&[1; 32], 39) && !signers.trusted_at(&[1; 32], 40));
        assert!(signers.trusted_at(&[2; 32], 40));
        // Another node's keys are its own.
        assert!(!store.signers.contains_key(&2));
    }

    #[test]
    fn a_retired_key_or_one_of_the_wrong_length_is_refused() {
        let mut store = Memory::default();
        let mut changes = Changes::default();
        trust(&mut changes, &store, &change(1, 1, None), 1).unwrap();
        trust(&mut changes, &store, &change(1, 2, None), 2).unwrap();
        store.commit(changes);
        let mut changes = Changes::default();
        let (events, refused) = trust(&mut changes, &store, &change(1, 1, None), 3).unwrap();
        assert!(events.is_empty());
        assert!(refused.unwrap().contains("retired"));
        let mut short = change(1, 3, None);
        short.public_key.truncate(16);
        let (events, refused) = trust(&mut changes, &store, &short, 3).unwrap();
        assert!(events.is_empty() && refused.unwrap().contains("16 bytes"));
        assert!(changes.writes.is_empty());
    }
}

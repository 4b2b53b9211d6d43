//! The keys the cluster trusts to sign checkpoints of the event chain: per node, each
//! key with the event from which it signs. Replicated, so every node's online verify
//! pins the same signers as `bulwark audit verify --trusted-signer` does offline.

use serde::{Deserialize, Serialize};

/// A node's trusted keys, oldest first; the last is the one it signs with now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signers {
    pub keys: Vec<TrustedKey>,
}

/// One Ed25519 public key and the first event seq whose checkpoint it may sign (0
/// for a node's first key: checkpoints it signed before keys were on record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub public_key: Vec<u8>,
    pub from_seq: u64,
}

impl Signers {
    /// The key the node signs with now.
    pub fn current(&self) -> Option<&[u8]> {
        self.keys.last().map(|k| k.public_key.as_slice())
    }

    /// True when `public_key` was the node's key for a checkpoint recorded as event
    /// `seq`: the newest key trusted from an event at or before it.
    pub fn trusted_at(&self, public_key: &[u8], seq: u64) -> bool {
        self.keys
            .iter()
            .rev()
            .find(|k| k.from_seq <= seq)
            .is_some_and(|k| k.public_key == public_key)
    }
}

/// The key of a node's trusted signers in the state's metadata.
pub fn key(node: u64) -> Vec<u8> {
    let mut key = b"signer/".to_vec();
    key.extend_from_slice(&node.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_signs_from_its_event_until_the_next_one() {
        let signers = Signers {
            keys: vec![
                TrustedKey {
                    public_key: vec![1; 32],
                    from_seq: 0,
                },
                TrustedKey {
                    public_key: vec![2; 32],
                    from_seq: 50,
                },
            ],
        };
        assert_eq!(signers.current(), Some(&[2u8; 32][..]));
        assert!(signers.trusted_at(&[1; 32], 10));
        assert!(signers.trusted_at(&[1; 32], 49));
        assert!(!signers.trusted_at(&[1; 32], 50));
        assert!(signers.trusted_at(&[2; 32], 50));
        assert!(!signers.trusted_at(&[2; 32], 49));
        assert!(!signers.trusted_at(&[3; 32], 60));
        assert!(!Signers::default().trusted_at(&[1; 32], 1));
    }
}

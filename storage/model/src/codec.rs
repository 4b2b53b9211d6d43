//! The one encoding of every stored and transmitted record.
//!
//! A record is one format-version byte followed by bincode 2 (serde mode, standard
//! configuration). A future release that changes a record type bumps
//! [`FORMAT_VERSION`] and keeps the old shape to decode and migrate records written
//! by this one; decoding refuses versions it does not know instead of misreading them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Version written in front of every record produced by this build.
pub const FORMAT_VERSION: u8 = 1;

/// Largest record accepted by [`decode`]: bounds what hostile or corrupt input can
/// make us allocate.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out)
}

/// Encodes raw bytes (a message body) as a record: the version byte, then the bytes.
pub fn encode_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a record written by [`encode_bytes`].
pub fn decode_bytes(record: &[u8]) -> Result<&[u8]> {
    match record.split_first() {
        None => Err(Error::Empty),
        Some((&FORMAT_VERSION, body)) => Ok(body),
        Some((&found, _)) => Err(Error::UnknownVersion {
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

/// Decodes a record written by [`encode`], checking its version and size.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.first() {
        None => Err(Error::Empty),
        Some(&FORMAT_VERSION) => {
            let body = &bytes[1..];
            if body.len() > MAX_RECORD {
                return Err(Error::Decode(format!("record of {} bytes", body.len())));
            }
            let cfg = config().with_limit::<MAX_RECORD>();
            let (value, used) = bincode::serde::decode_from_slice(body, cfg)
                .map_err(|e| Error::Decode(e.to_string()))?;
            if used != body.len() {
                return Err(Error::Decode(format!(
                    "{} trailing bytes",
                    body.len() - used
                )));
            }
            Ok(value)
        }
        Some(&found) => Err(Error::UnknownVersion {
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_carries_version() {
        let bytes = encode(&("note", 7u64)).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode(&bytes).unwrap();
        assert_eq!(back, ("note".to_string(), 7));
    }

    #[test]
    fn unknown_version_and_garbage_are_refused() {
        let mut bytes = encode(&5u64).unwrap();
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(Error::UnknownVersion { found: 9, .. })
        ));
        assert!(matches!(decode::<u64>(&[]), Err(Error::Empty)));
        let mut trailing = encode(&5u64).unwrap();
        trailing.push(0);
        assert!(matches!(decode::<u64>(&trailing), Err(Error::Decode(_))));
    }
}

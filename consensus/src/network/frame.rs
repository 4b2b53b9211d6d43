//! Frames: a 4-byte big-endian length, then one record in storage's versioned codec.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted from a peer: one Raft RPC carries at most a few MiB of
/// entries, but a single entry may hold a large message.
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> io::Result<()> {
    let bytes = bulwark_storage::codec::encode(value).map_err(invalid)?;
    if bytes.len() > MAX_FRAME {
        return Err(invalid(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            bytes.len()
        )));
    }
    let len = u32::try_from(bytes.len()).map_err(invalid)?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await
}

pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "peer sent a frame of {len} bytes, limit {MAX_FRAME}"
        )));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes).await?;
    bulwark_storage::codec::decode(&bytes).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_oversized_frames_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &("hello", 42u32)).await.unwrap();
        let back: (String, u32) = read_frame(&mut b).await.unwrap();
        assert_eq!(back, ("hello".to_string(), 42));

        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let err = read_frame::<_, u32>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

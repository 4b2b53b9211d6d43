/// What can go wrong encoding or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("record encoding: {0}")]
    Encode(String),
    #[error("record decoding: {0}")]
    Decode(String),
    #[error("record has format version {found}, this build reads up to {supported}")]
    UnknownVersion { found: u8, supported: u8 },
    #[error("empty record")]
    Empty,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

use std::path::PathBuf;

/// Everything that can go wrong below the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record encoding: {0}")]
    Encode(String),
    #[error("record decoding: {0}")]
    Decode(String),
    #[error("record has format version {found}, this build reads up to {supported}")]
    UnknownVersion { found: u8, supported: u8 },
    #[error("empty record")]
    Empty,
    #[error("the log has a gap: expected index {expected}, found {found}")]
    LogGap { expected: u64, found: u64 },
    #[error("invalid data directory {path}: {reason}")]
    Layout { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

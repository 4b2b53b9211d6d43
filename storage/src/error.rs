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
    #[error(transparent)]
    Record(#[from] bulwark_model::Error),
    /// A key or value of the engine's own layout that does not read.
    #[error("record decoding: {0}")]
    Decode(String),
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

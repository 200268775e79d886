//! Errors of the cache store. Errors are `Clone` because one failed batch
//! answers every caller whose write was in it.

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The filesystem holding the store is (nearly) full. Nothing of the
    /// write was applied; reads keep working and writes resume once space
    /// returns.
    #[error("disk full writing cache store {path}: {detail}")]
    DiskFull { path: PathBuf, detail: String },

    /// The write would grow the store past `max_bytes` even after evicting
    /// every cached event. Nothing of the write was applied.
    #[error(
        "cache store {path} is at its size cap: {payload} bytes stored + {growth} bytes would exceed {cap}"
    )]
    CapacityExceeded {
        path: PathBuf,
        payload: u64,
        growth: u64,
        cap: u64,
    },

    /// Another process holds the store open.
    #[error("cache store {path} is already open in another process")]
    Locked { path: PathBuf },

    #[error("i/o error on cache store {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// An engine error that is neither I/O nor disk space.
    #[error("cache store engine error on {path}: {detail}")]
    Engine { path: PathBuf, detail: String },

    /// A stored value could not be decoded: a bug or an unknown newer layout.
    #[error("cache store {path} holds an undecodable {what}")]
    Decode { path: PathBuf, what: String },

    /// A key component contains a NUL byte or is empty where it may not be.
    #[error("invalid cache key: {0}")]
    InvalidKey(String),

    /// An object handed to a scoped write does not belong to the scope.
    #[error("object {object} is outside scope {scope}")]
    OutsideScope { object: String, scope: String },

    /// A paginated list cannot be committed: a page failed or pages are missing.
    #[error("staged list for {scope} is incomplete: {detail}")]
    StagingIncomplete { scope: String, detail: String },

    /// The store could not be reopened after an I/O failure.
    #[error("cache store {path} is unavailable: {reason}")]
    Unavailable { path: PathBuf, reason: String },

    /// The writer thread has stopped (store dropped or writer panicked).
    #[error("cache store writer for {path} has stopped")]
    WriterStopped { path: PathBuf },

    /// A caller-supplied scope predicate panicked; the operation was refused.
    #[error("a scope predicate panicked while writing cache store {path}")]
    PredicatePanicked { path: PathBuf },

    /// Reading an OpenYurt cache directory failed as a whole.
    #[error("cannot import openyurt cache {path}")]
    Import {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Whether retrying later can succeed once the operator frees space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}

//! The store's error type: one enum whose variants tell the caller what to do next.
//!
//! The service maps these to gRPC codes in one place (`InvalidScope`/`InvalidInput` →
//! `INVALID_ARGUMENT`, `NotFound` → `NOT_FOUND`, `Conflict` → `ABORTED`, the rest →
//! `INTERNAL`/`FAILED_PRECONDITION`), so each variant means one kind of remedy.

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store, grouped by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The scope is malformed (no part set, a part empty, too long or holding NUL).
    /// Fix the request; nothing was read or written.
    #[error("invalid scope: {0}")]
    InvalidScope(String),

    /// The request is malformed (bad span, token bytes that do not match their shape,
    /// unknown memory id, ...). Fix the request; nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A page or memory named by id does not exist in this scope (it may never have
    /// existed, have been forgotten, or belong to another scope — the store does not say which).
    #[error("not found: {0}")]
    NotFound(String),

    /// An optimistic check failed: the page or scope changed since the caller read it.
    /// Re-read and retry; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The store was written by another model and the caller asked to refuse it
    /// (`OnModelMismatch::Refuse`). Open with `OnModelMismatch::Reencode` to re-encode the
    /// stale pages, or open with the model that wrote it.
    #[error("store was written by model {stored:?}, but opened for model {requested:?}")]
    ModelMismatch { stored: String, requested: String },

    /// The on-disk schema is not one this build can read. Use a matching build or migrate.
    #[error("store schema version {found} is not supported (this build reads version {supported})")]
    SchemaMismatch { found: u32, supported: u32 },

    /// Stored bytes failed a check (checksum, record decoding, decompression). Data on disk
    /// is damaged: restore from a backup or forget the affected scope.
    #[error("corrupt store data: {0}")]
    Corrupt(String),

    /// The storage engine failed (I/O, disk full, lock held by another process). Retry
    /// later or check the disk; a write that returned this was not acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    pub(crate) fn invalid(what: impl std::fmt::Display) -> Self {
        Self::InvalidInput(what.to_string())
    }
}

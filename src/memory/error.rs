//! [`MemoryError`]: the one error of the memory API, grouped by what the caller should do, so the service maps each
//! variant to one gRPC code ([`MemoryError::code`]).

use optimem_renderer::RenderError;
use optimem_store::StoreError;

use crate::engine::EngineError;
use crate::model::ModelError;

/// The gRPC status a [`MemoryError`] becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    Cancelled,
    Internal,
}

/// Everything a memory call can fail with. A call that fails changes nothing stored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The request is malformed (empty message list, empty role or content, oversized text, bad selector or scope).
    /// Fix the request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A memory or page named by id is not in this scope.
    #[error("not found: {0}")]
    NotFound(String),
    /// The model's queue is full. Retry later.
    #[error("busy: {0}")]
    Busy(#[source] EngineError),
    /// Too many pages are waiting for their vision tokens (`MemoryConfig::max_pending`). Retry later.
    #[error("busy: {pending} pages are waiting to be encoded (at most {cap}); retry later")]
    Backlogged { pending: usize, cap: usize },
    /// The request cannot be served in the store's state: EXACT recall of pages whose source text was not kept, a
    /// store opened for another model than the engine's. Change the request or the configuration.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change to the same scope won; nothing was written. Retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller cancelled the call.
    #[error("cancelled")]
    Cancelled,
    /// The store failed (I/O, corrupt data).
    #[error("store: {0}")]
    Store(#[source] StoreError),
    /// The model failed or its worker stopped.
    #[error("engine: {0}")]
    Engine(#[source] EngineError),
    /// A stored raster could not be decoded or resampled.
    #[error("render: {0}")]
    Render(#[from] RenderError),
}

impl MemoryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Busy(_) | Self::Backlogged { .. } => ErrorCode::ResourceExhausted,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Conflict(_) => ErrorCode::Aborted,
            Self::Cancelled => ErrorCode::Cancelled,
            Self::Store(_) | Self::Engine(_) | Self::Render(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn invalid(what: impl std::fmt::Display) -> Self {
        Self::InvalidArgument(what.to_string())
    }
}

impl From<StoreError> for MemoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidScope(_) | StoreError::InvalidInput(_) => {
                Self::InvalidArgument(e.to_string())
            }
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::ModelMismatch { .. } | StoreError::SchemaMismatch { .. } => {
                Self::FailedPrecondition(e.to_string())
            }
            StoreError::Corrupt(_) | StoreError::Storage(_) => Self::Store(e),
        }
    }
}

impl From<EngineError> for MemoryError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy { .. } => Self::Busy(e),
            _ => Self::Engine(e),
        }
    }
}

impl From<ModelError> for MemoryError {
    fn from(e: ModelError) -> Self {
        Self::Engine(EngineError::Model(e))
    }
}

//! The error type of the model library (`crate::model`).
//!
//! Every variant tells the caller what to do about it: fix the model directory (config, weights,
//! tokenizer), fix the request (prompt, image embeddings, lengths), or treat it as an internal
//! failure of the tensor backend.

use std::path::PathBuf;

/// Errors raised while loading or running DeepSeek-OCR.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // ---- decoder, generation and tokenizer (issue 4) -------------------------------------------
    /// A config.json field is missing, has the wrong type, or holds a value we do not implement.
    /// The model directory must be fixed; the message names the field.
    #[error("config.json field `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// A checkpoint tensor is missing or has the wrong shape or dtype. The message names the
    /// tensor; the weights do not belong to this config.
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },

    /// A model-directory file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// tokenizer.json could not be loaded or used (encode/decode failed, a required token is
    /// absent). The model directory's tokenizer must be fixed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The number of `<image>` placeholder positions differs from the number of image embeddings
    /// supplied. The prompt and the DeepEncoder output disagree: rebuild one from the other.
    #[error(
        "prompt has {placeholders} <image> positions but {embeddings} image embeddings were given"
    )]
    ImageTokenMismatch {
        placeholders: usize,
        embeddings: usize,
    },

    /// The request does not fit in the context: the KV cache or the configured context cap would
    /// be exceeded. Shorten the prompt or ask for fewer tokens.
    #[error("context full: {requested} positions requested, capacity is {capacity}")]
    ContextFull { requested: usize, capacity: usize },

    /// An argument is malformed (wrong tensor rank or width, inconsistent options). A caller bug.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tensor operation failed inside candle (out of memory, device error). Internal.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    // ---- end of decoder block --------------------------------------------------------------------
}

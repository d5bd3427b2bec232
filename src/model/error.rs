//! The model's error type.
//!
//! Every fallible function in `crate::model` returns [`ModelError`]. The variants are grouped by what the
//! caller should do: fix the model directory (a missing file, tensor or config value), fix the input
//! (an image that cannot be decoded or has no pixels), or treat it as a bug or resource problem (a
//! tensor-library failure). The names of tensors and config fields are carried verbatim so that a broken
//! checkpoint is diagnosed from the message alone.

use std::path::PathBuf;

/// Errors raised while loading or running DeepSeek-OCR.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the model directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The model directory holds no `*.safetensors` file.
    #[error("no *.safetensors file in model directory {dir}")]
    NoWeights { dir: PathBuf },

    /// `config.json` is not valid JSON or does not have the expected structure.
    #[error("invalid config {what}: {reason}")]
    ConfigParse { what: String, reason: String },

    /// A config value is unknown, inconsistent with another value, or outside what this port supports.
    #[error("config field `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// The checkpoint lacks a tensor the model needs; the directory is not a checkpoint of this layout.
    #[error("checkpoint lacks tensor `{name}`")]
    MissingTensor { name: String },

    /// A checkpoint tensor exists but has the wrong shape for the configured sizes.
    #[error("checkpoint tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// The input image could not be decoded or is unusable (zero-sized, wrong buffer length, ...).
    #[error("bad image: {reason}")]
    Image { reason: String },

    /// The input to a model call is inconsistent (wrong shape or count); a caller bug, not a data problem.
    #[error("bad model input: {reason}")]
    Input { reason: String },

    /// `tokenizer.json` could not be loaded or used (encode/decode failed, a required token such as
    /// `<image>` is absent). The model directory's tokenizer must be fixed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The prompt's `<image>` positions and the image embeddings supplied differ in number: the prompt
    /// and the DeepEncoder output disagree; rebuild one from the other.
    #[error(
        "prompt has {placeholders} <image> positions but {embeddings} image embeddings were given"
    )]
    ImageTokenMismatch {
        placeholders: usize,
        embeddings: usize,
    },

    /// The request does not fit in the context: the KV cache, the RoPE table or the context cap would be
    /// exceeded. Shorten the prompt or ask for fewer tokens.
    #[error("context full: {requested} positions requested, capacity is {capacity}")]
    ContextFull { requested: usize, capacity: usize },
    /// The tensor library failed (out of memory, device error, or an internal shape bug).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the model module.
pub type Result<T> = std::result::Result<T, ModelError>;

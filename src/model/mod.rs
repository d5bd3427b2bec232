//! DeepSeek-OCR in candle: the model half of optimem.
//!
//! # Layout
//! * [`config`]: vision sizes from `config.json` (official layout + optional `vision` section) and the
//!   checkpoint-loading helpers (`load_safetensors_mmap`, named-tensor loading).
//! * [`error`]: [`ModelError`], the error of every model call.
//! * `cuda` (feature `cuda`): CUDA device settings (the memory pool keeps freed memory, no per-buffer event tracking),
//!   the bias-epilogue GEMM and the launchers of our own fused kernels (`cuda/fused.cu`, compiled by build.rs).
//! * [`fused`]: SwiGLU, RMSNorm, row gathers, the MoE combination and softmax as one fused kernel each on a CUDA GPU
//!   in bf16, composite candle ops elsewhere.
//! * [`preprocess`]: image decoding, Pillow-exact resize/pad, Gundam tiles, [`Mode`] and [`PreparedImage`].
//! * [`interp`]: torch-exact bicubic-antialias and linear resizes for the position tables.
//! * `kernels`: vectorised CPU f32 kernels (SAM's rel-pos softmax, the erf GELU) behind AVX2 dispatch.
//! * [`sam`], [`clip`]: the two towers of the DeepEncoder (`model.sam_model`, `model.vision_model`).
//! * [`deepencoder`]: fusion, projector and the 2-D token layout; token counts and the tile rule.
//! * [`decoder`]: the DeepSeek-3B-MoE language model (plain MHA, MoE with shared experts) that reads the vision tokens.
//! * [`generate`]: greedy or sampled decoding with the no-repeat n-gram guard, streaming through a callback.
//! * [`pipeline`]: [`OcrModel`], the whole model from a model directory: encode pages, decode vision tokens, OCR.
//! * [`tokenizer`]: prompt building (plain template, `<image>` placeholders) and incremental detokenisation.
//!
//! # Encoder API
//! ```no_run
//! # fn main() -> Result<(), optimem::model::ModelError> {
//! use optimem::model::{DeepEncoder, Image8, Mode, VisionConfig, config, preprocess};
//! let dir = std::path::Path::new("models/optimem-tiny");
//! let cfg = VisionConfig::from_config_json(&config::read_config_json(dir)?)?;
//! let vb = config::load_safetensors_mmap(dir, candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! let encoder = DeepEncoder::new(&cfg, vb)?; // vb at the checkpoint root
//! let page = Image8::decode(&std::fs::read("page.png").map_err(|e| optimem::model::ModelError::Image {
//!     reason: e.to_string(),
//! })?)?;
//! let prepared = preprocess::prepare(&page, Mode::Small)?;
//! let n = encoder.layout(&prepared).num_tokens(); // `<image>` placeholders to insert (111 for Small)
//! let embeddings = encoder.encode(&prepared)?; // [n, n_embed]
//! assert_eq!(embeddings.dim(0).ok(), Some(n));
//! # Ok(()) }
//! ```
//! Placeholder counts before preprocessing: [`preprocess::num_image_tokens`] (official patch size,
//! HF's 9 tiles) or [`preprocess::image_layout`] (any patch size and tile limit).
//!
//! Invariants: the placeholder count and the embedding sequence come from the same
//! [`deepencoder::layout::TokenLayout`]; every tensor is loaded by its official checkpoint name and a
//! missing or mis-shaped one is an error naming it; models are dtype/device generic (`vb.dtype()`,
//! `vb.device()`), with the position-table resizes computed in f32.

pub mod clip;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decoder;
pub mod deepencoder;
pub mod error;
pub mod fused;
pub mod generate;
pub mod interp;
pub(crate) mod kernels;
pub mod pipeline;
pub mod preprocess;
pub mod sam;
pub mod tokenizer;

pub use config::VisionConfig;
pub use deepencoder::DeepEncoder;
pub use error::ModelError;
pub use pipeline::{FREE_OCR_PROMPT, OcrModel};
pub use preprocess::{Image8, Mode, PreparedImage};

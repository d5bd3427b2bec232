//! DeepSeek-OCR in candle: the language half (decoder, generation, tokenizer).
//!
//! `decoder` is the DeepSeek-3B-MoE language model that reads the vision tokens,
//! `generate` drives it (greedy or sampled, with the no-repeat n-gram guard, streaming),
//! `tokenizer` builds prompts and detokenises the output incrementally.
//! The vision half (DeepEncoder) lives beside these modules in the encoder's files.

pub mod decoder;
pub mod error;
pub mod generate;
pub mod tokenizer;

pub use error::ModelError;

//! optimem: optical context-compression memory for LLM agents.
//!
//! Agents' text history is rendered into page images ([`optimem_renderer`]), compressed by the DeepSeek-OCR DeepEncoder into a
//! few vision tokens per page, stored, and decoded back to text by the DeepSeek-3B-MoE decoder on recall.
//!
//! # Layout
//! - [`input`]: reading plain text and chat logs (JSONL / JSON arrays) with line-numbered errors.
//! - [`model`]: DeepSeek-OCR in candle (DeepEncoder, MoE decoder, generation, tokenizer), loading the official checkpoint layout.
//! - [`engine`]: the model's worker thread behind a bounded queue (encode, decode with streaming and cancel, count).
//! - [`threads`]: the model's CPU threads (count pinned once, lower scheduling priority than request handling).
//! - [`memory`]: Remember / Recall / Age / Forget / Stats over the renderer, the engine and the store.
//! - [`service`]: the gRPC service `optimem.v1.Memory` over [`memory`], with health, reflection and bearer-token auth.
//! - [`metrics`]: precision, word recall, text tokens and compression ratio, one definition everywhere (DESIGN.md §6).
//! - [`fox`]: the Fox-style compression benchmark (`optimem bench fox`); [`compress`]: `optimem compress`.
//! - [`bench_encoder`], [`bench_decoder`]: full-size benchmarks (random weights or `--model DIR`) behind `optimem bench encoder|decoder`.
//! - [`bench`]: the product under load on this machine's model, behind `optimem bench service|memory`.

pub mod bench;
pub mod bench_decoder;
pub mod bench_encoder;
pub mod compress;
pub mod engine;
pub mod fox;
pub mod input;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod service;
pub mod threads;

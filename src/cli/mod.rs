//! The verbs of the `optimem` binary. Each function takes validated arguments from `main.rs` and does one job.

pub mod bench;
pub mod client;
pub mod compress;
pub mod fox;
pub mod ocr;
pub mod render;
pub mod serve;

//! placeholder

pub mod bench_encoder;
pub mod model;

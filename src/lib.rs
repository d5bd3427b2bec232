//! placeholder

pub mod bench_decoder;
pub mod model;

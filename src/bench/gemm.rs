//! `optimem bench gemm`: the CPU GEMM of every linear layer ([`optimem_gemm`], through
//! `model::kernels::MatmulWeight` as the model holds its weights) against candle's f32 GEMM (the `gemm` crate)
//! on the same values, at the official model's shapes, side by side in one process. Per shape: GFLOP/s of each side,
//! median and range of `repeat` timed calls after one untimed call, and the largest difference between the two
//! results relative to the largest magnitude (both sum the same f32 products in different orders, so it must stay at
//! rounding level; past [`TOLERANCE`] the run fails).
//!
//! candle's side multiplies an f32 copy of the weight, made before timing: for the bf16 decoder weights this is
//! kinder to candle than what the model did before our GEMM (widening the weight on every call).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::bench::range;
use crate::model::ModelError;
use crate::model::kernels::MatmulWeight;

/// Largest accepted `max |ours − candle| / max |candle|`.
pub const TOLERANCE: f64 = 1e-5;

/// One shape's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct GemmRow {
    /// The layer this shape is.
    pub layer: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The weight's dtype as the model keeps it on the CPU (bf16 in panels, or f32).
    pub weight: String,
    pub max_rel_diff: f64,
    /// GFLOP/s: median, min, max.
    pub ours_gflops: (f64, f64, f64),
    pub candle_gflops: (f64, f64, f64),
}

impl GemmRow {
    pub fn ok(&self) -> bool {
        self.max_rel_diff <= TOLERANCE
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GemmReport {
    pub threads: usize,
    pub repeat: usize,
    pub rows: Vec<GemmRow>,
}

impl GemmReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "CPU GEMM, {} threads, median (range) of {} calls\n\n| layer | m × n × k | weight | ours GFLOP/s | candle f32 \
             GFLOP/s | ours / candle | max rel diff |\n|---|---|---|---|---|---|---|\n",
            self.threads, self.repeat
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} × {} × {} | {} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:.2}× | {:.1e}{} |\n",
                r.layer,
                r.m,
                r.n,
                r.k,
                r.weight,
                r.ours_gflops.0,
                r.ours_gflops.1,
                r.ours_gflops.2,
                r.candle_gflops.0,
                r.candle_gflops.1,
                r.candle_gflops.2,
                r.ours_gflops.0 / r.candle_gflops.0,
                r.max_rel_diff,
                if r.ok() { "" } else { " **FAIL**" },
            ));
        }
        s
    }
}

/// The shapes: (layer, rows, out, in, bf16 weight). Decoder rows are a 256-token prefill's (about a Base page's 273
/// vision tokens), each expert's ~24 of them (256 tokens × top-6 / 64 experts), and one decoded token; encoder rows
/// are a Base page's (SAM 64 × 64 tokens, CLIP 257).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("decoder attention q/k/v, prefill", 256, 3840, 1280, true),
    ("decoder layer-0 MLP down, prefill", 256, 1280, 6848, true),
    (
        "decoder shared experts gate/up, prefill",
        256,
        3584,
        1280,
        true,
    ),
    ("decoder expert gate/up, prefill", 24, 1792, 1280, true),
    ("decoder expert down, prefill", 24, 1280, 896, true),
    ("decoder expert gate/up, decode", 1, 1792, 1280, true),
    ("decoder attention q/k/v, decode", 1, 3840, 1280, true),
    ("SAM qkv", 4096, 2304, 768, false),
    ("SAM MLP fc2", 4096, 768, 3072, false),
    ("CLIP-L MLP fc1", 257, 4096, 1024, false),
];

/// Values in [−1, 1) from a fixed xorshift sequence (the same inputs on every run).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let (lo, hi) = range(&v);
    (v[v.len() / 2], lo, hi)
}

/// `f`'s result and its GFLOP/s over `repeat` timed calls after one untimed call.
fn time(
    flop: f64,
    repeat: usize,
    f: &dyn Fn() -> Result<Tensor, ModelError>,
) -> Result<(Tensor, Vec<f64>), ModelError> {
    let out = f()?;
    let mut rates = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t0 = Instant::now();
        std::hint::black_box(f()?);
        rates.push(flop / t0.elapsed().as_secs_f64() / 1e9);
    }
    Ok((out, rates))
}

/// Runs every shape on the CPU with rayon's current pool.
pub fn run(repeat: usize) -> Result<GemmReport, ModelError> {
    let dev = Device::Cpu;
    let mut rows = Vec::with_capacity(SHAPES.len());
    for (i, &(layer, m, n, k, bf16)) in SHAPES.iter().enumerate() {
        let x = Tensor::from_vec(values(m * k, 2 * i as u64 + 1), (m, k), &dev)?;
        let mut w = Tensor::from_vec(values(n * k, 2 * i as u64 + 2), (n, k), &dev)?;
        if bf16 {
            w = w.to_dtype(DType::BF16)?;
        }
        let ours_w = MatmulWeight::new(w.clone())?;
        let w32t = w.to_dtype(DType::F32)?.t()?;
        let flop = 2.0 * (m * n * k) as f64;
        let (ours, ours_rates) = time(flop, repeat, &|| ours_w.matmul_t(&x))?;
        let (theirs, candle_rates) = time(flop, repeat, &|| Ok(x.matmul(&w32t)?))?;
        let diff = (&ours - &theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()? as f64;
        let scale = theirs.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        rows.push(GemmRow {
            layer: layer.into(),
            m,
            n,
            k,
            weight: match &ours_w {
                MatmulWeight::Panels { .. } => "bf16 panels".into(),
                MatmulWeight::Plain(w) => format!("{:?}", w.dtype()).to_lowercase(),
            },
            max_rel_diff: if scale > 0.0 { diff / scale } else { diff },
            ours_gflops: median_range(ours_rates),
            candle_gflops: median_range(candle_rates),
        });
    }
    Ok(GemmReport {
        threads: rayon::current_num_threads(),
        repeat,
        rows,
    })
}

//! `optimem bench kernels`: every op of [`crate::model::fused`] at the official model's shapes, run both ways in one
//! process on this machine's device: fused kernel (on a CUDA GPU in bf16) and the composite candle ops it replaces.
//! Per op, the largest difference between the two (relative to the largest magnitude of the composite result) and
//! the median time of each side with its range. A difference beyond the op's tolerance fails the run, so this is also
//! the check of the kernels on the hardware they run on (CI's machine has no GPU; the model's parity fixtures cover
//! the composite path).
//!
//! Tolerances: gathers copy, so they must be equal; every other op rounds to bf16 at most twice on either side, and
//! the composite path rounds differently in places (candle's bf16 softmax exponentiates in bf16, its SiLU computes in
//! bf16), so those may differ by a few bf16 steps (2⁻⁸ relative each).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::bench::range;
use crate::model::{ModelError, fused};

/// One op's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub op: String,
    pub shape: String,
    /// max |fused − composite| / max |composite|.
    pub max_rel_diff: f64,
    pub tolerance: f64,
    pub fused_ms: (f64, f64, f64),
    pub composite_ms: (f64, f64, f64),
}

impl KernelRow {
    pub fn ok(&self) -> bool {
        self.max_rel_diff <= self.tolerance
    }
}

/// The report: one row per op, and whether fused kernels ran at all on this device.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub device: String,
    pub fused_active: bool,
    pub rows: Vec<KernelRow>,
}

impl KernelReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "device: {}, fused kernels {}\n\n| op | shape | max rel diff (tolerance) | fused ms median (range) | \
             composite ms median (range) | composite / fused |\n|---|---|---|---|---|---|\n",
            self.device,
            if self.fused_active {
                "active"
            } else {
                "not available (CUDA build on a GPU, bf16)"
            }
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.2e} ({:.0e}){} | {:.4} ({:.4}–{:.4}) | {:.4} ({:.4}–{:.4}) | {:.2}× |\n",
                r.op,
                r.shape,
                r.max_rel_diff,
                r.tolerance,
                if r.ok() { "" } else { " **FAIL**" },
                r.fused_ms.0,
                r.fused_ms.1,
                r.fused_ms.2,
                r.composite_ms.0,
                r.composite_ms.1,
                r.composite_ms.2,
                r.composite_ms.0 / r.fused_ms.0
            ));
        }
        s
    }
}

/// A bf16 step, relative.
const BF16_STEP: f64 = 1.0 / 256.0;

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let (lo, hi) = range(&v);
    (v[v.len() / 2], lo, hi)
}

/// Times `f` `repeat` times after one untimed call (device synchronised around each), in ms.
fn time(
    dev: &Device,
    repeat: usize,
    f: &dyn Fn() -> Result<Tensor, ModelError>,
) -> Result<(Tensor, Vec<f64>), ModelError> {
    let out = f()?;
    dev.synchronize()?;
    let mut ms = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t0 = Instant::now();
        std::hint::black_box(f()?);
        dev.synchronize()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((out, ms))
}

fn compare(
    op: &str,
    shape: &str,
    tolerance: f64,
    dev: &Device,
    repeat: usize,
    f: &dyn Fn() -> Result<Tensor, ModelError>,
) -> Result<KernelRow, ModelError> {
    fused::set_enabled(true);
    let (a, fused_ms) = time(dev, repeat, f)?;
    fused::set_enabled(false);
    let run = time(dev, repeat, f);
    fused::set_enabled(true);
    let (b, composite_ms) = run?;
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let diff = (&a - &b)?.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    let scale = b.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(KernelRow {
        op: op.into(),
        shape: shape.into(),
        max_rel_diff: if scale > 0.0 { diff / scale } else { diff },
        tolerance,
        fused_ms: median_range(fused_ms),
        composite_ms: median_range(composite_ms),
    })
}

/// Runs every op at the official shapes (`tokens` decoder rows; SAM's Base global attention; CLIP-L's).
pub fn run(
    dev: &Device,
    dtype: DType,
    tokens: usize,
    repeat: usize,
) -> Result<KernelReport, ModelError> {
    let (hidden, inter, k, experts) = (1280usize, 896usize, 6usize, 64usize);
    let randn = |shape: &[usize]| -> Result<Tensor, ModelError> {
        Ok(Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?)
    };
    let mut rows = Vec::new();

    // SwiGLU of the routed experts' padded batch (about k rows per token) and of the shared experts.
    let gu = randn(&[tokens * k, 2 * inter])?;
    rows.push(compare(
        "swiglu",
        &format!("{:?}", gu.dims()),
        2.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::swiglu(&gu, inter),
    )?);

    // The GELU of SAM's MLP over a Base page's 64 × 64 grid.
    let g = (randn(&[4096, 3072])? * 2.0)?;
    rows.push(compare(
        "gelu_erf",
        &format!("{:?}", g.dims()),
        2.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::gelu_erf(&g),
    )?);

    let x = randn(&[tokens, hidden])?;
    let w = (randn(&[hidden])? * 0.1)?;
    let unit = Tensor::ones(hidden, DType::F32, dev)?;
    rows.push(compare(
        "rms_norm",
        &format!("{:?}", x.dims()),
        2.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::rms_norm(&x, &w, &unit, 1e-6),
    )?);

    // The padded dispatch's input gather (each token to ~k expert rows) and the decode step's expert-weight gather.
    let idx: Vec<u32> = (0..tokens * k)
        .map(|i| ((i * 7919) % tokens) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, tokens * k, dev)?;
    rows.push(compare(
        "gather_rows",
        &format!("{:?} of {:?}", idx.dims(), x.dims()),
        0.0,
        dev,
        repeat,
        &|| fused::gather_rows(&x, &idx),
    )?);
    let stacked = randn(&[experts, 2 * inter, hidden])?;
    let picks = Tensor::from_vec(vec![3u32, 17, 42, 5, 63, 0], k, dev)?;
    rows.push(compare(
        "gather_rows",
        &format!("{:?} of {:?}", picks.dims(), stacked.dims()),
        0.0,
        dev,
        repeat,
        &|| fused::gather_rows(&stacked, &picks),
    )?);

    // A MoE layer's experts on their sorted rows (uneven counts, as routing gives): one grouped GEMM per projection
    // against one GEMM per expert.
    let mut segments = Vec::new();
    let mut start = 0;
    for e in 0..experts {
        let len = (tokens * k / experts) * (1 + e % 3) * 2 / 4 + e % 5;
        if len > 0 {
            segments.push((e, start, len));
            start += len;
        }
    }
    let xs = randn(&[start, hidden])?;
    rows.push(compare(
        "grouped_matmul_t (gate_up)",
        &format!(
            "{start} rows in {} experts, {:?}",
            segments.len(),
            stacked.dims()
        ),
        2.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::grouped_matmul_t(&xs, &stacked, &segments),
    )?);

    // The MoE combination: k rows of the experts' output per token, weighted, plus the shared experts.
    let y = randn(&[tokens * k + 512, hidden])?;
    let rows_of: Vec<u32> = (0..tokens * k)
        .map(|i| ((i * 104_729) % (tokens * k + 512)) as u32)
        .collect();
    let rows_of = Tensor::from_vec(rows_of, tokens * k, dev)?;
    let wk = (Tensor::rand(0f32, 0.5, (tokens, k), dev)?).contiguous()?;
    let shared = randn(&[tokens, hidden])?;
    rows.push(compare(
        "moe_combine",
        &format!("n {tokens}, k {k}, h {hidden}"),
        2.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::moe_combine(&y, &rows_of, &wk, Some(&shared)),
    )?);

    // Causal attention scores of a prefill (10 heads), SAM's Base global attention, CLIP-L's.
    let scores = (randn(&[1, 10, tokens, tokens])? * 4.0)?;
    let mask = {
        let mut m = vec![0f32; tokens * tokens];
        for r in 0..tokens {
            m[r * tokens + r + 1..(r + 1) * tokens].fill(f32::NEG_INFINITY);
        }
        Tensor::from_vec(m, (tokens, tokens), dev)?
    };
    let masked = crate::model::decoder::attention::masked_dtype(dtype, dev);
    let mask = mask.to_dtype(masked)?;
    rows.push(compare(
        "causal_softmax",
        &format!("{:?}", scores.dims()),
        4.0 * BF16_STEP,
        dev,
        repeat,
        &|| fused::causal_softmax(&scores, 1.0 / 128f64.sqrt(), 0, Some(&mask), masked),
    )?);
    for (name, shape) in [
        ("softmax (SAM global)", [12usize, 4096, 4096]),
        ("softmax (CLIP-L)", [16, 257, 257]),
    ] {
        let s = (randn(&shape)? * 4.0)?;
        rows.push(compare(
            name,
            &format!("{shape:?}"),
            4.0 * BF16_STEP,
            dev,
            repeat,
            &|| fused::softmax(&s, 1.0),
        )?);
    }
    // SAM attention, a Base page's global block (64 × 64 grid) and its windowed blocks (25 windows of 14 × 14): the
    // folded operands made by one kernel from the qkv output, against copies, two small GEMMs and concatenations.
    let sam = crate::model::config::SamConfig::default();
    let (c, hd) = (sam.embed_dim, sam.head_dim());
    for (name, grid, batch) in [
        ("SAM attention (global)", 64usize, 1usize),
        ("SAM attention (windows)", 14, 25),
    ] {
        let mut ts = std::collections::HashMap::new();
        ts.insert("qkv.weight".to_string(), (randn(&[3 * c, c])? * 0.03)?);
        ts.insert("qkv.bias".to_string(), (randn(&[3 * c])? * 0.1)?);
        ts.insert("proj.weight".to_string(), (randn(&[c, c])? * 0.03)?);
        ts.insert("proj.bias".to_string(), (randn(&[c])? * 0.1)?);
        ts.insert(
            "rel_pos_h".to_string(),
            (randn(&[2 * grid - 1, hd])? * 0.1)?,
        );
        ts.insert(
            "rel_pos_w".to_string(),
            (randn(&[2 * grid - 1, hd])? * 0.1)?,
        );
        let vb = candle_nn::VarBuilder::from_tensors(ts, dtype, dev);
        let attn = crate::model::sam::attention::Attention::new(&sam, grid, vb)?;
        let x = randn(&[batch, grid, grid, c])?;
        rows.push(compare(
            name,
            &format!("{:?}", x.dims()),
            4.0 * BF16_STEP,
            dev,
            repeat,
            &|| attn.forward(&x),
        )?);
    }
    // SAM's window partition of a Base page's 64 × 64 grid (zero-padded to 70 × 70, 25 windows of 14 × 14), and back.
    let grid = randn(&[1, 64, 64, c])?;
    rows.push(compare(
        "window_partition",
        &format!("{:?}", grid.dims()),
        0.0,
        dev,
        repeat,
        &|| Ok(crate::model::sam::window_partition(&grid, 14)?.0),
    )?);
    let windows = crate::model::sam::window_partition(&grid, 14)?.0;
    rows.push(compare(
        "window_unpartition",
        &format!("{:?}", windows.dims()),
        0.0,
        dev,
        repeat,
        &|| crate::model::sam::window_unpartition(&windows, 14, (70, 70), (64, 64)),
    )?);
    Ok(KernelReport {
        device: format!("{dev:?} {dtype:?}"),
        fused_active: fused::active(dev, dtype),
        rows,
    })
}

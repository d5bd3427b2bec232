//! CPU f32 kernels for the encoder's element-wise hot spots, written so that they vectorise.
//!
//! A `perf` profile of `bench encoder --mode small` on the bundled model had a quarter of the time in
//! the rel-pos softmax (a scalar loop: its running sum is an in-order float reduction, which LLVM does
//! not vectorise) and a tenth in `gelu_erf` (libm's scalar `erff` per element). The kernels here keep
//! reductions in 8 independent lanes and use branch-free polynomials, and run inside functions compiled
//! for AVX2 + FMA when the CPU has them (the binary itself targets baseline x86-64). They do the same
//! IEEE operations in the same order on every path (Rust never fuses `a·b + c` unless told to), so results do
//! not depend on the CPU.
//!
//! The linear layers' GEMM is the `optimem-gemm` crate ([`matmul_t`], [`MatmulWeight`]). Decoding at batch 1 is
//! bound by memory bandwidth (every active weight is read once per token); the official checkpoint, like the
//! bundled model, is stored in bf16, so the decoder keeps such weights in bf16 (exactly: every f32 it would hold is
//! a bf16 value), in the panel layout the GEMM's tiles read directly: half the bytes of f32, and no packing per
//! call.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::error::Result;

/// Lanes of the split reductions: one AVX register of f32.
const LANES: usize = 8;

/// Elements per rayon task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// Calls `body` compiled for AVX2 + FMA when this CPU has them, else compiled for the baseline.
/// `body` is an `#[inline(always)]` function, so that it is compiled anew inside the AVX2 wrapper.
macro_rules! with_avx2 {
    ($body:ident ( $($arg:expr),* $(,)? )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_fma_detected() {
                // SAFETY: `avx2_fma` only enables instructions the check above found on this CPU.
                #[allow(unsafe_code)]
                unsafe { avx2_fma(#[inline(always)] || $body($($arg),*)) }
            } else {
                $body($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body($($arg),*)
        }
    }};
}

/// Whether this CPU has AVX2 and FMA, the features [`avx2_fma`] and [`dots_avx2`] are compiled for.
#[cfg(target_arch = "x86_64")]
fn avx2_fma_detected() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Runs `f` (inlined into it) with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `eˣ` for `x ≤ 0` (softmax after subtracting the row maximum, `exp(−z²)`): 1.2e-7 max relative error
/// against `f32::exp` over [−87, 0] (measured in the test below).
///
/// Cody–Waite range reduction `x = n·ln2 + r` and Cephes' degree-6 polynomial for `eʳ`, written with
/// plain adds and multiplies (rounding by the 1.5·2²³ trick, `2ⁿ` by building the exponent bits) so a
/// loop over it vectorises, which a loop calling `expf` does not. Inputs below −87 are clamped there
/// (result ≈ 1.6e-38, not the smaller true value: invisible in a softmax weight or an erfc tail).
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer in the low mantissa bits
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n ∈ [−126, 0]: the integer sits in t's low mantissa bits.
    let n_int = (t.to_bits() as i32) - (ROUND.to_bits() as i32);
    y * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Maximum of `xs` (−∞ when empty), in [`LANES`] lanes.
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Sum of `xs`, in [`LANES`] lanes.
#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// In place: `row ← softmax(row)`.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = max_lanes(row);
    for d in row.iter_mut() {
        *d = exp_nonpositive(*d - max);
    }
    let inv = 1.0 / sum_lanes(row);
    for d in row.iter_mut() {
        *d *= inv;
    }
}

/// One row of the SAM attention: `out = softmax(logits·scale + rel_h[row(j)] + rel_w[col(j)])`, where
/// key `j` sits at row `j / kw`, column `j % kw` (`logits`, `out`: `kh·kw`; `rel_h`: `kh`; `rel_w`: `kw`).
#[inline(always)]
fn rel_pos_softmax_row(logits: &[f32], rel_h: &[f32], rel_w: &[f32], scale: f32, out: &mut [f32]) {
    let kw = rel_w.len();
    for ((o_row, s_row), &hb) in out
        .chunks_exact_mut(kw)
        .zip(logits.chunks_exact(kw))
        .zip(rel_h)
    {
        for ((d, &s), &wb) in o_row.iter_mut().zip(s_row).zip(rel_w) {
            *d = s * scale + (hb + wb);
        }
    }
    softmax_in_place(out);
}

/// [`rel_pos_softmax_row`] over a block of rows.
#[inline(always)]
fn rel_pos_softmax_rows(
    logits: &[f32],
    rel_h: &[f32],
    rel_w: &[f32],
    (kh, kw): (usize, usize),
    scale: f32,
    out: &mut [f32],
) {
    let n = kh * kw;
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        rel_pos_softmax_row(
            &logits[r * n..(r + 1) * n],
            &rel_h[r * kh..(r + 1) * kh],
            &rel_w[r * kw..(r + 1) * kw],
            scale,
            o,
        );
    }
}

/// `softmax(logits·scale + rel_h[.., row(j)] + rel_w[.., col(j)])` over the last dimension of CPU f32
/// slices: `logits` `[rows, kh·kw]`, `rel_h` `[rows, kh]`, `rel_w` `[rows, kw]`. Rows run in parallel.
pub(crate) fn rel_pos_softmax(
    logits: &[f32],
    rel_h: &[f32],
    rel_w: &[f32],
    (kh, kw): (usize, usize),
    scale: f32,
) -> Vec<f32> {
    let n = (kh * kw).max(1);
    let mut out = vec![0f32; logits.len()];
    // A few rows per task: a row is a few KiB, too little to be worth a rayon task of its own.
    let rows_per_task = (CHUNK / n).max(1);
    out.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(t, o)| {
            let r0 = t * rows_per_task;
            let rows = o.len() / n;
            let (lg, rh, rw) = (
                &logits[r0 * n..(r0 + rows) * n],
                &rel_h[r0 * kh..(r0 + rows) * kh],
                &rel_w[r0 * kw..(r0 + rows) * kw],
            );
            with_avx2!(rel_pos_softmax_rows(lg, rh, rw, (kh, kw), scale, o))
        });
    out
}

/// `erfc(z)` for `z ≥ 0`: Abramowitz & Stegun 7.1.26, `t·P(t)·e^(−z²)` with `t = 1/(1 + p·z)`, whose
/// absolute error as an `erf` is at most 1.5e-7; evaluated as `erfc` it also keeps its accuracy
/// relative to the small tail values, where `1 + erf(−z)` would cancel.
#[inline(always)]
fn erfc_nonnegative(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let t = 1.0 / (1.0 + P * z);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    poly * exp_nonpositive(-(z * z))
}

/// `x·Φ(x) = ½·x·(1 + erf(x/√2))`, the exact GELU, with the `erf` of [`erfc_nonnegative`].
#[inline(always)]
fn gelu_erf_one(x: f32) -> f32 {
    let c = erfc_nonnegative(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    // 1 + erf(x/√2) is 2 − erfc(|x|/√2) above zero and erfc(|x|/√2) below it.
    let one_plus_erf = if x >= 0.0 { 2.0 - c } else { c };
    0.5 * x * one_plus_erf
}

#[inline(always)]
fn gelu_erf_slice(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = gelu_erf_one(x);
    }
}

/// The exact (erf) GELU as a candle op on contiguous CPU f32 tensors.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("gelu-erf-f32: f32 only");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu-erf-f32: the input must be contiguous");
        };
        let src = &data[a..b];
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, x)| with_avx2!(gelu_erf_slice(x, o)));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x.gelu_erf()`: on the CPU in f32 the vectorised kernel above (within 3e-7·max(1, |x|) of libm's
/// `erf`), elsewhere candle's own op.
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1_no_bwd(&GeluErf)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// `x · wᵀ` over the last dimension of `x` (any rank; `w` is `[out, in]`).
///
/// An f32 `x` on the CPU with an f32 or bf16 `w` takes [`optimem_gemm`] (a bf16 weight is widened as it is packed);
/// every other pairing is candle's matmul as `candle_nn::Linear` does it (mismatched dtypes are its error, not a
/// silent conversion on every call).
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    on_rows(x, |x2| {
        let ours = x2.dtype() == DType::F32
            && x2.device().is_cpu()
            && matches!(w.dtype(), DType::BF16 | DType::F32);
        Ok(if ours {
            x2.apply_op2_no_bwd(&w.contiguous()?, &PackedMatmulT)?
        } else {
            x2.matmul(&w.t()?)?
        })
    })
}

/// `x[b] · w[b]ᵀ` for `x` `[B, m, k]` and `w` `[B, n, k]` → `[B, m, n]` (attention's `q·kᵀ`, and `p·v` with `w = vᵀ`):
/// [`optimem_gemm::matmul_t_batched`] for CPU f32, candle's batched matmul otherwise.
pub(crate) fn batched_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(
        if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            x.contiguous()?
                .apply_op2_no_bwd(&w.contiguous()?, &BatchedMatmulT)?
        } else {
            x.matmul(&w.t()?)?
        },
    )
}

/// [`batched_matmul_t`] on the CPU.
struct BatchedMatmulT;

impl CustomOp2 for BatchedMatmulT {
    fn name(&self) -> &'static str {
        "batched-matmul-f32-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(xd), CpuStorage::F32(wd)) = (s1, s2) else {
            candle_core::bail!("batched-matmul-f32-t: f32 only");
        };
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("batched-matmul-f32-t: inputs must be contiguous");
        };
        let (&[b, m, k], &[b2, n, k2]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "batched-matmul-f32-t: 3-D inputs only, got {:?} {:?}",
                l1.dims(),
                l2.dims()
            );
        };
        if b != b2 || k != k2 {
            candle_core::bail!(
                "batched-matmul-f32-t: shapes {:?} {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let out = optimem_gemm::matmul_t_batched(&xd[xa..xb], &wd[wa..wb], b, m, k, n);
        Ok((CpuStorage::F32(out), Shape::from((b, m, n))))
    }
}

/// `x · wᵀ` for CPU `x` f32 `[m, k]` and `w` f32 or bf16 `[n, k]` (both contiguous) → f32 `[m, n]`, by
/// [`optimem_gemm`].
struct PackedMatmulT;

impl CustomOp2 for PackedMatmulT {
    fn name(&self) -> &'static str {
        "matmul-f32-packed-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xd) = s1 else {
            candle_core::bail!("matmul-f32-packed-t: needs f32 x");
        };
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("matmul-f32-packed-t: inputs must be contiguous");
        };
        let (&[m, k], &[n, k2]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "matmul-f32-packed-t: 2-D inputs only, got {:?} {:?}",
                l1.dims(),
                l2.dims()
            );
        };
        if k != k2 {
            candle_core::bail!(
                "matmul-f32-packed-t: shapes {:?} {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let w = match s2 {
            CpuStorage::F32(w) => optimem_gemm::Weight::F32(&w[wa..wb]),
            CpuStorage::BF16(w) => optimem_gemm::Weight::Bf16(&w[wa..wb]),
            _ => candle_core::bail!("matmul-f32-packed-t: needs an f32 or bf16 weight"),
        };
        let out = optimem_gemm::matmul_t(&xd[xa..xb], m, k, w, n);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `f` applied to the rows of `x` (any rank) as one contiguous `[rows, in]` matrix; its `[rows, out]` result gets
/// `x`'s leading dimensions back.
pub(crate) fn on_rows(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let last = x.dim(candle_core::D::Minus1)?;
    let lead = &x.dims()[..x.rank() - 1];
    let y = f(&x
        .contiguous()?
        .reshape((lead.iter().product::<usize>(), last))?)?;
    let mut out_dims = lead.to_vec();
    out_dims.push(y.dim(1)?);
    Ok(y.reshape(out_dims)?)
}

/// `w` in bf16 when it is an f32 CPU tensor whose every value is a bf16 value (the low 16 bits of each
/// f32 are zero), as when an f32 model is loaded from a bf16 checkpoint: the same numbers in half the
/// memory. Anything else is returned as it is.
pub(crate) fn compact_bf16(w: Tensor) -> Result<Tensor> {
    if !w.device().is_cpu() || w.dtype() != DType::F32 {
        return Ok(w);
    }
    let exact = {
        let flat = w.flatten_all()?;
        let (storage, layout) = flat.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => d[a..b]
                .par_chunks(CHUNK)
                .all(|c| c.iter().all(|v| v.to_bits() & 0xffff == 0)),
            _ => false,
        }
    };
    Ok(if exact { w.to_dtype(DType::BF16)? } else { w })
}

/// A weight `[.., n, k]` for `x · wᵀ`, as a layer keeps it: the tensor as loaded, or, for a CPU weight whose values
/// are all bf16 values (a bf16 checkpoint's, official or bundled), the bf16 panels the CPU GEMM's tiles read
/// directly (`optimem_gemm::pack_panels`: the same numbers, in the order the tiles load them, so that no call packs or widens
/// a weight). The checkpoint is unchanged; only the layout in memory differs.
#[derive(Debug, Clone)]
pub(crate) enum MatmulWeight {
    Plain(Tensor),
    /// `data` bf16 `[.., optimem_gemm::panels_len(n, k)]`: one panel block per leading index.
    Panels {
        data: Tensor,
        n: usize,
        k: usize,
    },
}

impl MatmulWeight {
    /// `w` in panels when it is a CPU tensor whose values are all bf16 values ([`compact_bf16`]), else as it is.
    pub(crate) fn new(w: Tensor) -> Result<Self> {
        let w = compact_bf16(w)?;
        if !w.device().is_cpu() || w.dtype() != DType::BF16 || w.rank() < 2 {
            return Ok(Self::Plain(w));
        }
        let dims = w.dims().to_vec();
        let (lead, n, k) = (
            &dims[..dims.len() - 2],
            dims[dims.len() - 2],
            dims[dims.len() - 1],
        );
        let count: usize = lead.iter().product();
        let flat = w.contiguous()?.flatten_all()?.to_vec1::<bf16>()?;
        let per = optimem_gemm::panels_len(n, k);
        let mut packed = Vec::with_capacity(count * per);
        for block in flat.chunks_exact((n * k).max(1)).take(count) {
            packed.extend(optimem_gemm::pack_panels(block, n, k));
        }
        let mut shape = lead.to_vec();
        shape.push(per);
        Ok(Self::Panels {
            data: Tensor::from_vec(packed, shape, w.device())?,
            n,
            k,
        })
    }

    /// The weight `[.., n, k]` as loaded (a copy out of the panels).
    pub(crate) fn plain(&self) -> Result<Tensor> {
        match self {
            Self::Plain(w) => Ok(w.clone()),
            Self::Panels { data, n, k } => {
                let lead = &data.dims()[..data.rank() - 1];
                let flat = data.flatten_all()?.to_vec1::<bf16>()?;
                let per = optimem_gemm::panels_len(*n, *k);
                let mut out = Vec::with_capacity(flat.len() / per.max(1) * n * k);
                for block in flat.chunks_exact(per.max(1)).take(lead.iter().product()) {
                    out.extend(optimem_gemm::unpack_panels(block, *n, *k));
                }
                let mut shape = lead.to_vec();
                shape.extend([*n, *k]);
                Ok(Tensor::from_vec(out, shape, data.device())?)
            }
        }
    }

    /// Entry `i` of the leading dimension (an expert of a stacked weight), without a copy.
    pub(crate) fn get(&self, i: usize) -> Result<Self> {
        Ok(match self {
            Self::Plain(w) => Self::Plain(w.get(i)?),
            Self::Panels { data, n, k } => Self::Panels {
                data: data.get(i)?,
                n: *n,
                k: *k,
            },
        })
    }

    /// The size of the leading dimension (1 for a scalar).
    pub(crate) fn dim0(&self) -> usize {
        let t = match self {
            Self::Plain(w) => w,
            Self::Panels { data, .. } => data,
        };
        t.dims().first().copied().unwrap_or(1)
    }

    /// `x · wᵀ` over the last dimension of `x` (as [`matmul_t`]).
    pub(crate) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(w) => matmul_t(x, w),
            Self::Panels { data, n, k } => on_rows(x, |x2| {
                if x2.dtype() != DType::F32
                    || !x2.device().is_cpu()
                    || x2.dim(1)? != *k
                    || data.rank() != 1
                {
                    return Err(candle_core::Error::Msg(format!(
                        "matmul with panels: needs CPU f32 rows of {k} and one weight, got {:?} {:?} and {:?}",
                        x2.dtype(),
                        x2.dims(),
                        data.dims()
                    ))
                    .into());
                }
                Ok(x2.apply_op2_no_bwd(data, &PanelsMatmulT { n: *n })?)
            }),
        }
    }
}

/// `x · wᵀ` for CPU `x` f32 `[m, k]` and `w` in bf16 panels (`optimem_gemm::pack_panels` of an `n × k` weight) → f32 `[m, n]`.
struct PanelsMatmulT {
    n: usize,
}

impl CustomOp2 for PanelsMatmulT {
    fn name(&self) -> &'static str {
        "matmul-f32-panels-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(xd), CpuStorage::BF16(wd)) = (s1, s2) else {
            candle_core::bail!("matmul-f32-panels-t: needs f32 x and bf16 panels");
        };
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("matmul-f32-panels-t: inputs must be contiguous");
        };
        let &[m, k] = l1.dims() else {
            candle_core::bail!("matmul-f32-panels-t: 2-D x only, got {:?}", l1.dims());
        };
        if wb - wa != optimem_gemm::panels_len(self.n, k) {
            candle_core::bail!(
                "matmul-f32-panels-t: {} values are not the panels of {} × {k}",
                wb - wa,
                self.n
            );
        }
        let out = optimem_gemm::matmul_t(
            &xd[xa..xb],
            m,
            k,
            optimem_gemm::Weight::Panels(&wd[wa..wb]),
            self.n,
        );
        Ok((CpuStorage::F32(out), Shape::from((m, self.n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=2_000_000 {
            let x = -87.0 * i as f32 / 2_000_000.0;
            let (a, b) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        eprintln!("fast exp: max relative error {worst:e}");
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_matches_candles_libm_gelu() -> Result<()> {
        let n = 400_001;
        let xs: Vec<f32> = (0..n)
            .map(|i| -20.0 + 40.0 * i as f32 / (n - 1) as f32)
            .collect();
        let x = Tensor::from_vec(xs.clone(), n, &Device::Cpu)?;
        let ours = gelu_erf(&x)?.to_vec1::<f32>()?;
        let libm = x.gelu_erf()?.to_vec1::<f32>()?;
        let mut worst = 0f32;
        for ((&x, &a), &b) in xs.iter().zip(&ours).zip(&libm) {
            let err = (a - b).abs() / x.abs().max(1.0);
            worst = worst.max(err);
        }
        eprintln!("gelu: max |Δ| / max(1, |x|) = {worst:e}");
        assert!(worst < 3e-7, "{worst:e}");
        // Exact at the fixed points, sign-symmetric identity gelu(x) − gelu(−x) = x.
        assert_eq!(gelu_erf_one(0.0), 0.0);
        for x in [0.1f32, 1.0, 3.0, 7.5] {
            assert!((gelu_erf_one(x) - gelu_erf_one(-x) - x).abs() <= 4e-7 * x.max(1.0));
        }
        // Any layout: a transposed input gives the transposed result.
        let m = Tensor::from_vec(xs[..12].to_vec(), (3, 4), &Device::Cpu)?;
        let via_t = gelu_erf(&m.t()?)?.t()?.to_vec2::<f32>()?;
        assert_eq!(via_t, gelu_erf(&m)?.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn lane_reductions_see_every_element() {
        for len in [0usize, 1, 7, 8, 9, 17, 100] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_lanes(&xs), want_max, "len {len}");
            assert_eq!(sum_lanes(&xs), xs.iter().sum::<f32>(), "len {len}");
        }
    }

    #[test]
    fn softmax_rows_match_the_formula() {
        let (kh, kw, rows) = (3usize, 5usize, 70usize);
        let n = kh * kw;
        let val = |i: usize| ((i * 7919) % 97) as f32 / 13.0 - 3.0;
        let logits: Vec<f32> = (0..rows * n).map(val).collect();
        let rel_h: Vec<f32> = (0..rows * kh).map(|i| val(i + 5)).collect();
        let rel_w: Vec<f32> = (0..rows * kw).map(|i| val(i + 11)).collect();
        let got = rel_pos_softmax(&logits, &rel_h, &rel_w, (kh, kw), 0.5);
        for r in 0..rows {
            let z: Vec<f64> = (0..n)
                .map(|j| {
                    f64::from(logits[r * n + j]) * 0.5
                        + f64::from(rel_h[r * kh + j / kw])
                        + f64::from(rel_w[r * kw + j % kw])
                })
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for j in 0..n {
                let want = (z[j] - max).exp() / sum;
                let d = (f64::from(got[r * n + j]) - want).abs();
                assert!(d < 1e-6, "row {r} col {j}: {d:e}");
            }
        }
    }

    #[test]
    fn bf16_matmul_equals_f32_matmul_on_the_same_values() -> Result<()> {
        let dev = Device::Cpu;
        // Row counts around the 4 × 2 blocks, widths around the lanes, and beyond the kernel's rows (GEMM).
        for (m, k, n) in [
            (1usize, 1280usize, 300usize),
            (1, 16, 4),
            (2, 19, 7),
            (3, 37, 5),
            (3, 8, 9),
            (5, 37, 13),
            (16, 3, 30),
            (17, 64, 1000),
            (129, 8, 9),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?.to_dtype(DType::BF16)?;
            let w32 = w.to_dtype(DType::F32)?;
            let want = x.matmul(&w32.t()?)?;
            let got = matmul_t(&x, &w)?;
            let d = (&got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-4 * (k as f32).sqrt(), "{m}x{k}x{n}: {d}");
            // The same numbers from the weight kept in panels.
            let panels = MatmulWeight::new(w.clone())?;
            assert!(matches!(panels, MatmulWeight::Panels { .. }));
            assert_eq!(
                panels.matmul_t(&x)?.to_vec2::<f32>()?,
                got.to_vec2::<f32>()?,
                "panels {m}x{k}x{n}"
            );
            assert_eq!(panels.plain()?.to_vec2::<bf16>()?, w.to_vec2::<bf16>()?);
            // A batch of rows as a 3-D input, and a zero-copy row block of a stacked weight.
            let stacked = Tensor::stack(&[&w, &w], 0)?;
            let x3 = x.unsqueeze(0)?;
            let got3 = matmul_t(&x3, &stacked.get(1)?)?.squeeze(0)?;
            let d = (got3 - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-4 * (k as f32).sqrt(), "3-D {m}x{k}x{n}: {d}");
        }
        Ok(())
    }

    #[test]
    fn only_bf16_exact_weights_are_compacted() -> Result<()> {
        let dev = Device::Cpu;
        let exact = Tensor::randn(0f32, 1.0, (4, 6), &dev)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?;
        let c = compact_bf16(exact.clone())?;
        assert_eq!(c.dtype(), DType::BF16);
        assert_eq!(
            c.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            exact.to_vec2::<f32>()?
        );
        let inexact = (exact + 1e-3)?;
        assert_eq!(compact_bf16(inexact)?.dtype(), DType::F32);
        Ok(())
    }
}

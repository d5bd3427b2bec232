//! Torch-exact resizes of small constant tables: bicubic with antialias and 1-D linear.
//!
//! candle has neither. DeepSeek-OCR needs them to fit learned tables to the grid of the input:
//! SAM's `pos_embed` (64×64 → 32/40/80) and CLIP's `position_embedding` (16×16 → 8/10/20) with
//! `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` in fp32, and the global blocks'
//! `rel_pos_h/w` tables (127 → 63/79/159) with `F.interpolate(mode="linear", align_corners=False)` in fp32
//! (spec §2.2, §2.3, §9 item 4).
//!
//! Both follow ATen's CPU kernels operation by operation (weights in f32 with the same fused
//! multiply-adds, the same index rounding, horizontal pass before vertical). Measured against torch 2.11
//! (tests/encoder_parity.rs): linear and bicubic upsampling are bit-identical, bicubic downsampling
//! within 2.4e-7 (1–2 ulp). The tables are tiny, so the work is done on host vectors and the result
//! is put back on the tensor's device as f32.

use candle_core::{DType, Tensor};

use super::error::{ModelError, Result};

/// Keys' cubic convolution kernel with a = −0.5, as ATen's `HelperInterpCubic::aa_filter`.
///
/// ATen's CPU kernels are compiled per instruction set with FMA contraction, so the polynomials are
/// evaluated with fused multiply-adds; `mul_add` reproduces torch's weights bit for bit (checked on
/// one-hot inputs against torch 2.11 on x86-64 AVX2).
fn cubic_filter(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        // ((A + 2)·x − (A + 3))·x·x + 1
        ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0)
    } else if x < 2.0 {
        // ((A·x − 5A)·x + 8A)·x − 4A
        A.mul_add(x, -5.0 * A)
            .mul_add(x, 8.0 * A)
            .mul_add(x, -4.0 * A)
    } else {
        0.0
    }
}

/// Per-output-pixel taps of the antialiased separable filter: source start, tap count, weights.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `out_size × max_taps`, row-major; only the first `len[i]` of row `i` are used.
    weights: Vec<f32>,
    max_taps: usize,
}

/// ATen `_compute_weights_aa` for the bicubic filter (interp_size 4), align_corners=False.
///
/// Mixed float/double arithmetic mirrors the C++ expression types, so weights round as torch's do.
fn bicubic_aa_taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f32 / out_size as f32;
    let support: f32 = if scale >= 1.0 {
        (2.0 * f64::from(scale)) as f32
    } else {
        2.0
    };
    let max_taps = (support.ceil() as usize) * 2 + 1;
    let invscale: f32 = if scale >= 1.0 {
        (1.0 / f64::from(scale)) as f32
    } else {
        1.0
    };
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0f32; out_size * max_taps];
    for i in 0..out_size {
        let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
        let xmin = (f64::from(center - support) + 0.5) as i64;
        let xmin = xmin.max(0);
        let xmax = ((f64::from(center + support) + 0.5) as i64).min(in_size as i64);
        let xsize = (xmax - xmin).clamp(0, max_taps as i64) as usize;
        let row = &mut weights[i * max_taps..(i + 1) * max_taps];
        let mut total = 0f32;
        for (j, w) in row.iter_mut().enumerate().take(xsize) {
            let arg =
                ((f64::from((j as i64 + xmin) as f32 - center) + 0.5) * f64::from(invscale)) as f32;
            *w = cubic_filter(arg);
            total += *w;
        }
        if total != 0.0 {
            for w in row.iter_mut().take(xsize) {
                *w /= total;
            }
        }
        start.push(xmin as usize);
        len.push(xsize);
    }
    Taps {
        start,
        len,
        weights,
        max_taps,
    }
}

/// Resizes planes `[planes, in_h, in_w]` (row-major) to `[planes, out_h, out_w]` with torch's
/// antialiased bicubic: width pass first, then height, as ATen's separable kernel.
pub fn bicubic_aa_planes(
    src: &[f32],
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let mut cur = src.to_vec();
    let mut w_now = in_w;
    if out_w != in_w {
        let taps = bicubic_aa_taps(in_w, out_w);
        let mut next = vec![0f32; planes * in_h * out_w];
        for (r, out_row) in next.chunks_mut(out_w).enumerate() {
            let in_row = &cur[r * in_w..(r + 1) * in_w];
            for (x, o) in out_row.iter_mut().enumerate() {
                let ws = &taps.weights[x * taps.max_taps..x * taps.max_taps + taps.len[x]];
                *o = dot(&in_row[taps.start[x]..], ws);
            }
        }
        cur = next;
        w_now = out_w;
    }
    if out_h != in_h {
        let taps = bicubic_aa_taps(in_h, out_h);
        let mut next = vec![0f32; planes * out_h * w_now];
        for p in 0..planes {
            let plane = &cur[p * in_h * w_now..(p + 1) * in_h * w_now];
            for y in 0..out_h {
                let ws = &taps.weights[y * taps.max_taps..y * taps.max_taps + taps.len[y]];
                let out_row = &mut next[(p * out_h + y) * w_now..(p * out_h + y + 1) * w_now];
                for (x, o) in out_row.iter_mut().enumerate() {
                    let mut acc = 0f32;
                    for (j, &w) in ws.iter().enumerate() {
                        let v = plane[(taps.start[y] + j) * w_now + x];
                        acc = if j == 0 { v * w } else { v.mul_add(w, acc) };
                    }
                    *o = acc;
                }
            }
        }
        cur = next;
    }
    cur
}

/// `Σ src[j]·w[j]`, accumulated left to right from the first product (fused), as ATen does.
fn dot(src: &[f32], ws: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (j, (&v, &w)) in src.iter().zip(ws).enumerate() {
        acc = if j == 0 { v * w } else { v.mul_add(w, acc) };
    }
    acc
}

/// Resizes `[planes, in_len]` to `[planes, out_len]` like `F.interpolate(mode="linear",
/// align_corners=False)` on CPU in fp32 (ATen `compute_source_index_and_lambda`).
pub fn linear_planes(src: &[f32], planes: usize, in_len: usize, out_len: usize) -> Vec<f32> {
    if in_len == out_len {
        return src.to_vec();
    }
    let ratio = in_len as f32 / out_len as f32;
    let mut out = vec![0f32; planes * out_len];
    for i in 0..out_len {
        // Fused as in ATen's FMA-contracted build (see `cubic_filter`).
        let real = ratio.mul_add(i as f32 + 0.5, -0.5).max(0.0);
        let i0 = (real.floor() as usize).min(in_len - 1);
        let lambda1 = (real - i0 as f32).clamp(0.0, 1.0);
        let lambda0 = 1.0 - lambda1;
        let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
        for p in 0..planes {
            let row = &src[p * in_len..(p + 1) * in_len];
            out[p * out_len + i] = lambda0.mul_add(row[i0], lambda1 * row[i1]);
        }
    }
    out
}

/// Resizes an NHWC table `[1, H, W, C]` to `[1, out, out, C]` (bicubic, antialias), in f32.
///
/// This is SAM's `get_abs_pos`: permute to NCHW, interpolate in fp32, permute back. The returned tensor
/// is f32 on the input's device; the caller casts to its working dtype.
pub fn resize_nhwc_bicubic_aa(table: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, h, w, c) = table.dims4()?;
    if n != 1 {
        return Err(ModelError::Input {
            reason: format!("position table must have batch 1, got {n}"),
        });
    }
    let planes = table
        .to_dtype(DType::F32)?
        .squeeze(0)?
        .permute((2, 0, 1))?
        .contiguous()?;
    let data = planes.flatten_all()?.to_vec1::<f32>()?;
    let out = bicubic_aa_planes(&data, c, h, w, out_h, out_w);
    let t = Tensor::from_vec(out, (c, out_h, out_w), table.device())?;
    Ok(t.permute((1, 2, 0))?.unsqueeze(0)?.contiguous()?)
}

/// Resizes a `[L, C]` table along its length to `[out_len, C]` (linear, align_corners=False), in f32.
///
/// This is the interpolation branch of SAM's `get_rel_pos` for the global blocks.
pub fn resize_rows_linear(table: &Tensor, out_len: usize) -> Result<Tensor> {
    let (l, c) = table.dims2()?;
    let planes = table.to_dtype(DType::F32)?.t()?.contiguous()?;
    let data = planes.flatten_all()?.to_vec1::<f32>()?;
    let out = linear_planes(&data, c, l, out_len);
    Ok(Tensor::from_vec(out, (c, out_len), table.device())?
        .t()?
        .contiguous()?)
}

/// Resized copies of a constant table, computed once per target size.
///
/// Position tables are resized for each input grid the model sees (a few sizes per process), so the
/// result is kept. Poisoning cannot leave a half-written entry, so a poisoned lock is simply reused.
#[derive(Debug)]
pub(crate) struct ResizeCache<T: Clone>(
    std::sync::Mutex<std::collections::HashMap<(usize, usize), T>>,
);

impl<T: Clone> Default for ResizeCache<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

impl<T: Clone> ResizeCache<T> {
    pub(crate) fn get_or_try(
        &self,
        key: (usize, usize),
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(v) = lock().get(&key) {
            return Ok(v.clone());
        }
        let v = make()?;
        lock().insert(key, v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_sum_to_one_and_keep_constants() {
        for (i, o) in [
            (64, 32),
            (64, 40),
            (64, 80),
            (16, 8),
            (16, 10),
            (16, 20),
            (5, 5),
        ] {
            let src = vec![0.75f32; 3 * i * i];
            let out = bicubic_aa_planes(&src, 3, i, i, o, o);
            assert_eq!(out.len(), 3 * o * o);
            assert!(out.iter().all(|v| (v - 0.75).abs() < 1e-6), "{i}->{o}");
        }
    }

    #[test]
    fn bicubic_downsample_by_two_uses_widened_support() {
        // 4 → 2: scale 2, support 4, taps from the whole row, cubic evaluated at (k - c + 0.5)/2.
        let taps = bicubic_aa_taps(4, 2);
        assert_eq!(taps.max_taps, 9);
        assert_eq!((taps.start[0], taps.len[0]), (0, 4));
        let raw: Vec<f32> = (0..4)
            .map(|k| cubic_filter((k as f32 - 1.0 + 0.5) / 2.0))
            .collect();
        let total: f32 = raw.iter().sum();
        for (w, r) in taps.weights.iter().zip(&raw) {
            assert!((w - r / total).abs() < 1e-7);
        }
    }

    #[test]
    fn linear_matches_hand_computed_values() {
        // 3 → 5, align_corners=False: sources max(0,(i+.5)*.6-.5) = 0, .4, 1, 1.6, 2.2.
        let out = linear_planes(&[0.0, 10.0, 20.0], 1, 3, 5);
        let want = [0.0, 4.0, 10.0, 16.0, 20.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn nhwc_wrapper_keeps_layout() -> Result<()> {
        // A table whose value is its channel index stays so after resizing.
        let c = 3;
        let data: Vec<f32> = (0..4 * 4 * c).map(|k| (k % c) as f32).collect();
        let t = Tensor::from_vec(data, (1, 4, 4, c), &candle_core::Device::Cpu)?;
        let r = resize_nhwc_bicubic_aa(&t, 6, 6)?;
        assert_eq!(r.dims(), &[1, 6, 6, c]);
        let v = r.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            v.iter()
                .enumerate()
                .all(|(k, x)| (x - (k % c) as f32).abs() < 1e-5)
        );
        Ok(())
    }
}

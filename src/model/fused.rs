//! Ops that run as one fused kernel on a CUDA GPU in bf16 (`cuda::fused`, cargo feature `cuda`) and as composite
//! candle ops everywhere else. Both give the PyTorch reference's numbers: the fused kernels compute in f32 and round
//! to bf16 where the reference's separate ops each round.
//!
//! Why fused: Nsight Compute on a 1,000-token prefill at the official size (H200, session 14) put most of the GPU
//! time in candle's element-wise kernels around the GEMMs, not in the GEMMs: strided bf16 multiplies and SiLU of the
//! SwiGLUs (29 %), row gathers at one element per thread (9 %), casts and the RMSNorm's four passes, the attention's
//! scale, mask and softmax as three passes over the scores. And candle's bf16 softmax (one warp a row, three passes,
//! the exponentials rounded to bf16 before they are summed) took 31 % of a Base page's encoder time in four global
//! attention blocks.
//!
//! [`set_enabled`] turns the fused kernels off for the whole process, so that `bench kernels` and `bench decoder
//! --no-fused` can time both paths in one run.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::model::ModelError;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for every later op of this process (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether ops on `device` in `dtype` take the fused kernels: a CUDA build, a CUDA device, bf16, not turned off.
pub fn active(device: &Device, dtype: DType) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && dtype == DType::BF16
        && ENABLED.load(Ordering::Relaxed)
}

/// Calls the fused kernel `$k` (a `cuda::fused` function returning `Option<Tensor>`) when `$t` qualifies.
macro_rules! try_fused {
    ($t:expr, $k:ident($($arg:expr),*)) => {{
        #[cfg(feature = "cuda")]
        {
            if active($t.device(), $t.dtype()) {
                crate::model::cuda::fused::$k($($arg),*)?
            } else {
                None
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ($($arg,)*);
            None::<Tensor>
        }
    }};
}

/// `silu(gate) · up` for `gate_up` = `[gate | up]` along the last dimension, each `width` wide.
pub fn swiglu(gate_up: &Tensor, width: usize) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(gate_up, swiglu(gate_up, width)) {
        return Ok(y);
    }
    let last = gate_up.rank() - 1;
    let gate = gate_up.narrow(last, 0, width)?;
    let up = gate_up.narrow(last, width, width)?;
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

/// Exact (erf) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(x, gelu_erf(x)) {
        return Ok(y);
    }
    crate::model::kernels::gelu_erf(x)
}

/// `DeepseekV2RMSNorm`: `weight · (x_f32 · rsqrt(mean(x_f32²) + eps)).to(x.dtype)`; `unit` is ones in f32 of the
/// weight's size (candle's fused f32 kernel wants a scale; the real weight is applied after the cast).
pub fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    unit: &Tensor,
    eps: f32,
) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(x, rms_norm(x, weight, eps)) {
        return Ok(y);
    }
    let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, unit, eps)?;
    Ok(normed.to_dtype(x.dtype())?.broadcast_mul(weight)?)
}

/// `out[s..s + len] = x[s..s + len] · w[e]ᵀ` for every segment `(e, s, len)` of `x` `[rows, k]` (segments in row
/// order, covering every row), with `w` `[experts, n, k]`: a MoE layer's experts on their sorted rows. One cuBLAS
/// grouped GEMM on a GPU; one product per segment elsewhere.
pub fn grouped_matmul_t(
    x: &Tensor,
    w: &Tensor,
    segments: &[(usize, usize, usize)],
) -> Result<Tensor, ModelError> {
    #[cfg(feature = "cuda")]
    if active(x.device(), x.dtype())
        && let Some(y) = crate::model::cuda::grouped::grouped_matmul_t(x, w, segments)?
    {
        return Ok(y);
    }
    let parts = segments
        .iter()
        .map(|&(e, s, len)| crate::model::kernels::matmul_t(&x.narrow(0, s, len)?, &w.get(e)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// SAM attention's operands with the rel-pos bias folded into q·kᵀ, made by one kernel straight from the qkv
/// projection's output `qkv` `[B, gh, gw, 3·heads·hd]` and the grid's tables `rh` `[gh, gh, hd]`, `rw`
/// `[gw, gw, hd]`: `(q_aug, k_aug, v)` as `sam::attention` builds them from copies, two small GEMMs and two
/// concatenations. `None` where there is no fused kernel: the caller builds them itself.
pub fn sam_qkv_aug(
    qkv: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>, ModelError> {
    #[cfg(feature = "cuda")]
    if active(qkv.device(), qkv.dtype()) {
        return crate::model::cuda::fused::sam_qkv_aug(qkv, rh, rw, heads, scale as f32);
    }
    let _ = (qkv, rh, rw, heads, scale);
    Ok(None)
}

/// `x.transpose(1, 2).contiguous()` of a 4-D `x` (heads split from or merged into the rows of attention operands).
pub fn transpose12(x: &Tensor) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(x, transpose12(x)) {
        return Ok(y);
    }
    Ok(x.transpose(1, 2)?.contiguous()?)
}

/// SAM's window partition as one kernel: `x` `[b, h, w, c]` into zero-padded `ws × ws` windows
/// `[b·nh·nw, ws, ws, c]`. `None` where there is no fused kernel.
pub fn window_partition(x: &Tensor, ws: usize) -> Result<Option<Tensor>, ModelError> {
    Ok(try_fused!(x, window_partition(x, ws)))
}

/// The inverse of [`window_partition`] for a `[b, h, w, c]` grid, cropping the padding. `None` where there is no
/// fused kernel.
pub fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    bhw: (usize, usize, usize),
) -> Result<Option<Tensor>, ModelError> {
    Ok(try_fused!(windows, window_unpartition(windows, ws, bhw)))
}

/// Rows `idx` (u32) of `src` (`index_select` along dimension 0).
pub fn gather_rows(src: &Tensor, idx: &Tensor) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(src, gather_rows(src, idx)) {
        return Ok(y);
    }
    Ok(src.index_select(idx, 0)?)
}

/// A MoE layer's output from its experts' rows: token `t`'s routed output is `Σ_j w[t, j] · y[rows_of[t·k + j]]`
/// in f32 (`w` `[n, k]` f32, `y` `[rows, h]`), cast to `y`'s dtype, plus `shared[t]` (the shared experts' output,
/// `[n, h]`) when given. `[n, h]` in `y`'s dtype.
pub fn moe_combine(
    y: &Tensor,
    rows_of: &Tensor,
    w: &Tensor,
    shared: Option<&Tensor>,
) -> Result<Tensor, ModelError> {
    if let Some(out) = try_fused!(y, moe_combine(y, rows_of, w, shared)) {
        return Ok(out);
    }
    let (n, k) = w.dims2()?;
    let h = y.dim(1)?;
    // Each token's k rows weighted and summed in f32 as one batched product `(n, 1, k) · (n, k, h)`: a GEMM where a
    // broadcast multiply and a reduction take two element-wise passes over `n·k·h`.
    let picked = gather_rows(y, rows_of)?
        .to_dtype(DType::F32)?
        .reshape((n, k, h))?;
    let routed = w.unsqueeze(1)?.matmul(&picked)?.squeeze(1)?;
    add_shared(&routed.to_dtype(y.dtype())?, shared)
}

/// `routed + shared` (both in the activations' dtype), or `routed` alone.
pub fn add_shared(routed: &Tensor, shared: Option<&Tensor>) -> Result<Tensor, ModelError> {
    Ok(match shared {
        Some(s) => (routed + s)?,
        None => routed.clone(),
    })
}

/// `softmax(x · scale)` over the last dimension, accumulated in f32, in `x`'s dtype.
pub fn softmax(x: &Tensor, scale: f64) -> Result<Tensor, ModelError> {
    if let Some(y) = try_fused!(x, softmax(x, scale as f32, None::<(usize, usize)>)) {
        return Ok(y);
    }
    let scaled = if scale == 1.0 {
        x.clone()
    } else {
        (x * scale)?
    };
    Ok(candle_nn::ops::softmax_last_dim(&scaled)?)
}

/// Causal attention probabilities from `scores` `[.., rows, keys]`: `softmax(scores · scale + mask)` with query row
/// `r` at position `offset + r` seeing keys `0..=offset + r`. `mask` is the additive mask for the composite path
/// (`[rows, keys]` or the scores' shape, 0 or −inf); `None` where no key is hidden. The result is in `scores`' dtype;
/// the composite path normalises in `masked` (f32 on the CPU, whose softmax computes in its input's dtype).
pub fn causal_softmax(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    mask: Option<&Tensor>,
    masked: DType,
) -> Result<Tensor, ModelError> {
    let rows = scores.dim(candle_core::D::Minus2)?;
    if let Some(y) = try_fused!(scores, softmax(scores, scale as f32, Some((rows, offset)))) {
        return Ok(y);
    }
    let keys = scores.dim(candle_core::D::Minus1)?;
    if mask.is_none() && offset + 1 < keys {
        return Err(ModelError::Input {
            reason: format!(
                "causal_softmax: {rows} query rows at offset {offset} over {keys} keys need a mask"
            ),
        });
    }
    let s = (scores * scale)?.to_dtype(masked)?;
    let s = match mask {
        Some(m) => s.broadcast_add(m)?,
        None => s,
    };
    Ok(candle_nn::ops::softmax_last_dim(&s)?.to_dtype(scores.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> Result<f32, ModelError> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    #[test]
    fn causal_softmax_hides_the_future_and_refuses_a_missing_mask() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let scores = Tensor::new(
            &[[[[1f32, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]]],
            &dev,
        )?;
        let inf = f32::NEG_INFINITY;
        let mask = Tensor::new(&[[0f32, inf, inf], [0.0, 0.0, inf], [0.0, 0.0, 0.0]], &dev)?;
        let p = causal_softmax(&scores, 0.5, 0, Some(&mask), DType::F32)?
            .squeeze(0)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        assert_eq!(p[0], vec![1.0, 0.0, 0.0]);
        let (a, b) = ((0.5f32 * 0.5).exp(), (-0.5f32).exp());
        assert!(
            (p[1][0] - a / (a + b)).abs() < 1e-6 && p[1][2] == 0.0,
            "{p:?}"
        );
        assert!(p[2].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6), "{p:?}");
        // Three query rows from position 0 hide keys: without a mask the composite path must refuse, not attend to
        // the future.
        assert!(causal_softmax(&scores, 0.5, 0, None, DType::F32).is_err());
        // One query row at the last position sees every key: no mask is needed.
        let last = scores.narrow(2, 2, 1)?;
        let p = causal_softmax(&last, 1.0, 2, None, DType::F32)?;
        assert!(close(&p, &softmax(&last, 1.0)?)? < 1e-7);
        Ok(())
    }

    #[test]
    fn moe_combine_weights_the_k_rows_of_each_token_and_adds_the_shared_output()
    -> Result<(), ModelError> {
        let dev = Device::Cpu;
        // Three expert-output rows of width 2; token 0 takes rows 2 and 0, token 1 rows 1 and 2.
        let y = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev)?;
        let rows_of = Tensor::new(&[2u32, 0, 1, 2], &dev)?;
        let w = Tensor::new(&[[0.5f32, 0.25], [1.0, 2.0]], &dev)?;
        let shared = Tensor::new(&[[10f32, 20.0], [30.0, 40.0]], &dev)?;
        let got = moe_combine(&y, &rows_of, &w, Some(&shared))?;
        let want = Tensor::new(
            &[
                [0.5f32 * 5.0 + 0.25 + 10.0, 0.5 * 6.0 + 0.5 + 20.0],
                [3.0 + 10.0 + 30.0, 4.0 + 12.0 + 40.0],
            ],
            &dev,
        )?;
        assert!(close(&got, &want)? < 1e-6, "{got}");
        let alone = moe_combine(&y, &rows_of, &w, None)?;
        assert!(close(&(alone + &shared)?, &want)? < 1e-6);
        Ok(())
    }

    #[test]
    fn grouped_matmul_applies_each_segments_own_weight() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (7, 4), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (3, 5, 4), &dev)?;
        let segments = [(2usize, 0usize, 3usize), (0, 3, 4)];
        let got = grouped_matmul_t(&x, &w, &segments)?;
        for &(e, s, len) in &segments {
            let want = x.narrow(0, s, len)?.matmul(&w.get(e)?.t()?)?;
            assert!(close(&got.narrow(0, s, len)?, &want)? < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn composite_ops_match_their_definitions() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let gu = Tensor::randn(0f32, 1.0, (3, 8), &dev)?;
        let (g, u) = (gu.narrow(1, 0, 4)?, gu.narrow(1, 4, 4)?);
        let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
        assert!(close(&swiglu(&gu, 4)?, &(silu * u)?)? < 1e-6);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev)?;
        assert!(close(&transpose12(&x)?, &x.transpose(1, 2)?.contiguous()?)? == 0.0);
        let idx = Tensor::new(&[1u32, 0, 1], &dev)?;
        let rows = gather_rows(&x, &idx)?;
        assert!(close(&rows.get(2)?, &x.get(1)?)? == 0.0 && rows.dim(0)? == 3);
        // Nothing fused on the CPU, and a window partition there is the caller's own.
        assert!(!active(&dev, DType::BF16));
        assert!(window_partition(&x.narrow(3, 0, 4)?, 2)?.is_none());
        Ok(())
    }
}

//! SAM attention (`blocks.N.attn`): multi-head attention with decomposed relative position
//! (spec §2.2, "Attention with rel-pos").
//!
//! The rel-pos tables are gathered per grid (linearly resized in f32 when the grid is not the
//! pretraining one), the bias terms `rel_h`, `rel_w` come from the unscaled q, and SDPA runs in blocks
//! of query rows with the bias folded into the q·kᵀ GEMM ([`sdpa_rel_pos`]).

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::model::config::{Linear, SamConfig, linear, tensor};
use crate::model::error::Result;
use crate::model::interp::{ResizeCache, resize_rows_linear};
use crate::model::{fused, kernels};

/// Upper bound on elements of one block of attention logits (`heads·B × rows × N`), 128 MiB in f32.
const ATTN_CHUNK_ELEMS: usize = 32 << 20;

/// The same on an accelerator, where each block costs a copy, two GEMMs and a softmax in launches: a Base page's
/// global attention (12 × 4,096 × 4,096) is one block of 384 MiB in bf16.
const GPU_ATTN_CHUNK_ELEMS: usize = 256 << 20;

/// `blocks.N.attn`: multi-head attention with decomposed relative position.
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    /// Per (h, w) grid: `Rh` `[h, h, hd]`, `Rw` `[w, w, hd]`, and the keys' one-hot row/column
    /// indicators `[h·w, h + w]` that turn the rel-pos bias into part of the q·kᵀ product.
    rel_cache: ResizeCache<(Tensor, Tensor, Tensor)>,
}

impl Attention {
    pub(crate) fn new(cfg: &SamConfig, input_size: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim;
        let table = (2 * input_size - 1, cfg.head_dim());
        Ok(Self {
            qkv: linear(&vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: linear(&vb.pp("proj"), dim, dim, true)?,
            num_heads: cfg.num_heads,
            rel_pos_h: tensor(&vb, table, "rel_pos_h")?,
            rel_pos_w: tensor(&vb, table, "rel_pos_w")?,
            rel_cache: ResizeCache::default(),
        })
    }

    /// `get_rel_pos(size, size, table)`: `R[q, k] = table'[q − k + size − 1]`, where `table'` is the
    /// table linearly resized (f32) to `2·size − 1` rows when its length differs.
    fn rel_table(table: &Tensor, size: usize) -> Result<Tensor> {
        let len = 2 * size - 1;
        let resized = if table.dim(0)? == len {
            table.clone()
        } else {
            resize_rows_linear(table, len)?.to_dtype(table.dtype())?
        };
        let idx: Vec<u32> = (0..size)
            .flat_map(|q| (0..size).map(move |k| (q + size - 1 - k) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, size * size, table.device())?;
        Ok(resized.index_select(&idx, 0)?.reshape((size, size, ()))?)
    }

    /// `[h·w, h + w]`: for key `j = r·w + c`, ones at column `r` and at column `h + c`.
    fn key_indicators(h: usize, w: usize, like: &Tensor) -> Result<Tensor> {
        let mut data = vec![0f32; h * w * (h + w)];
        for r in 0..h {
            for c in 0..w {
                let row = (r * w + c) * (h + w);
                data[row + r] = 1.0;
                data[row + h + c] = 1.0;
            }
        }
        let t = Tensor::from_vec(data, (h * w, h + w), like.device())?;
        Ok(t.to_dtype(like.dtype())?)
    }

    /// `[B, H, W, C]` → `[B, H, W, C]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("attn").entered();
        let (b, h, w, c) = x.dims4()?;
        let (n, heads) = (h * w, self.num_heads);
        let hd = c / heads;
        let bh = b * heads;
        let qkv_out = self.qkv.forward(x)?;
        let (rh, rw, key_ind) = self.rel_cache.get_or_try((h, w), || {
            Ok((
                Self::rel_table(&self.rel_pos_h, h)?,
                Self::rel_table(&self.rel_pos_w, w)?,
                Self::key_indicators(h, w, &self.rel_pos_h)?,
            ))
        })?;
        let limit = if x.device().is_cpu() {
            ATTN_CHUNK_ELEMS
        } else {
            GPU_ATTN_CHUNK_ELEMS
        };
        let rows = (limit / (bh * n)).clamp(1, n);
        let scale = 1.0 / (hd as f64).sqrt();
        let o = if let Some((q_aug, k_aug, v)) =
            fused::sam_qkv_aug(&qkv_out, &rh, &rw, heads, scale)?
        {
            let _span = tracing::trace_span!("attn-sdpa").entered();
            attend_folded(&q_aug, &k_aug.t()?, &v, rows)?
        } else {
            self.sdpa_unfused(&qkv_out, &rh, &rw, &key_ind, rows)?
        };
        let o = fused::transpose12(&o.reshape((b, heads, n, hd))?)?.reshape((b, h, w, c))?;
        self.proj.forward(&o)
    }

    /// The attention from the qkv projection's output `[B, H, W, 3·C]` with candle ops: `[B·heads, H·W, hd]`.
    fn sdpa_unfused(
        &self,
        qkv: &Tensor,
        rh: &Tensor,
        rw: &Tensor,
        key_ind: &Tensor,
        rows: usize,
    ) -> Result<Tensor> {
        let (b, h, w, c3) = qkv.dims4()?;
        let (n, heads) = (h * w, self.num_heads);
        let hd = c3 / 3 / heads;
        let bh = b * heads;
        // qkv.reshape(B, H*W, 3, heads, hd).permute(2, 0, 3, 1, 4).reshape(3, B*heads, H*W, hd)
        let qkv = qkv
            .reshape((b, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?.reshape((bh, n, hd))?;
        let k = qkv.get(1)?.contiguous()?.reshape((bh, n, hd))?;
        let v = qkv.get(2)?.contiguous()?.reshape((bh, n, hd))?;
        let (rel_h, rel_w) = {
            let _span = tracing::trace_span!("attn-rel-pos").entered();
            let rq = q.reshape((bh, h, w, hd))?;
            // rel_h = einsum("bhwc,hkc->bhwk", r_q, Rh): batched over the query row.
            let rel_h = rq
                .permute((1, 0, 2, 3))?
                .contiguous()?
                .reshape((h, bh * w, hd))?
                .matmul(&rh.transpose(1, 2)?)?
                .reshape((h, bh, w, h))?
                .permute((1, 0, 2, 3))?
                .contiguous()?
                .reshape((bh, n, h))?;
            // rel_w = einsum("bhwc,wkc->bhwk", r_q, Rw): batched over the query column.
            let rel_w = rq
                .permute((2, 0, 1, 3))?
                .contiguous()?
                .reshape((w, bh * h, hd))?
                .matmul(&rw.transpose(1, 2)?)?
                .reshape((w, bh, h, w))?
                .permute((1, 2, 0, 3))?
                .contiguous()?
                .reshape((bh, n, w))?;
            (rel_h, rel_w)
        };

        let _span = tracing::trace_span!("attn-sdpa").entered();
        sdpa_rel_pos(&q, &k, &v, &rel_h, &rel_w, key_ind, rows)
    }
}

/// `softmax(q·kᵀ/√d + bias)·v` with `bias[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)]`, `rows` query
/// rows at a time.
///
/// `q, k, v`: `[BH, N, d]`; `rel_h`: `[BH, N, kh]`; `rel_w`: `[BH, N, kw]`; `key_ind`: `[N, kh + kw]`,
/// the one-hot row and column of every key (N = kh·kw). This is SDPA with
/// `attn_mask = rel_h + rel_w` (only q·kᵀ is scaled; the bias was made from the unscaled q).
/// The `(BH × N × N)` bias is never materialised: on CPU in f32 a fused op adds it while taking the
/// softmax ([`RelPosSoftmax`]); elsewhere it is folded into the GEMM ([`sdpa_rel_pos_folded`]).
pub(super) fn sdpa_rel_pos(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
    key_ind: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        sdpa_rel_pos_fused(q, k, v, rel_h, rel_w, rows)
    } else {
        sdpa_rel_pos_folded(q, k, v, rel_h, rel_w, key_ind, rows)
    }
}

/// CPU f32 path: q·kᵀ in our GEMM, then one pass per row adding scale, bias and softmax, then p·v.
fn sdpa_rel_pos_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    let (_, n, hd) = q.dims3()?;
    let op = RelPosSoftmax {
        scale: (1.0 / (hd as f64).sqrt()) as f32,
    };
    // Both products as `x · wᵀ` with row-major operands (our GEMM's form): `q·kᵀ`, then `p·v = p·(vᵀ)ᵀ`.
    let (k, vt) = (k.contiguous()?, v.t()?.contiguous()?);
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        let logits = kernels::batched_matmul_t(&q.narrow(1, start, len)?, &k)?;
        let rh = rel_h.narrow(1, start, len)?.contiguous()?;
        let rw = rel_w.narrow(1, start, len)?.contiguous()?;
        let probs = logits.apply_op3_no_bwd(&rh, &rw, &op)?;
        outs.push(kernels::batched_matmul_t(&probs, &vt)?);
    }
    Ok(Tensor::cat(&outs, 1)?)
}

/// Any-device path: the bias folded into the product,
/// `[q/√d | rel_h | rel_w] · [k | key_ind]ᵀ = q·kᵀ/√d + rel_h[i, row(j)] + rel_w[i, col(j)]`.
/// One GEMM with a longer inner dimension (d + kh + kw) replaces the bias passes; on GPUs the extra
/// GEMM work is cheaper than separate element-wise kernels.
fn sdpa_rel_pos_folded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel_h: &Tensor,
    rel_w: &Tensor,
    key_ind: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    let (bh, n, hd) = q.dims3()?;
    let scale = 1.0 / (hd as f64).sqrt();
    let kk = key_ind.dim(1)?;
    let ind = key_ind.unsqueeze(0)?.broadcast_as((bh, n, kk))?;
    // The inner dimension padded with zero columns to a multiple of 8 (a window's 64 + 14 + 14 = 92 becomes 96):
    // tensor-core GEMMs want 16-byte aligned bf16 rows, and zeros add nothing to the products.
    let pad = (8 - (hd + kk) % 8) % 8;
    let mut q_parts = vec![(q * scale)?, rel_h.clone(), rel_w.clone()];
    let mut k_parts = vec![k.clone(), ind];
    if pad > 0 {
        let zeros = Tensor::zeros((bh, n, pad), q.dtype(), q.device())?;
        q_parts.push(zeros.clone());
        k_parts.push(zeros);
    }
    let q_aug = Tensor::cat(&q_parts, 2)?;
    // Materialised: the concatenation's layout is backend-specific (on CUDA its batch stride is not plain),
    // and cuBLAS takes only plain or simply transposed operands.
    let kt = Tensor::cat(&k_parts, 2)?.t()?.contiguous()?;
    attend_folded(&q_aug, &kt, v, rows)
}

/// `softmax(q_aug · kt) · v`, `rows` query rows at a time: `q_aug` `[BH, N, D]`, `kt` `[BH, D, N]` (the rel-pos bias
/// and scale already folded in), `v` `[BH, N, d]`.
fn attend_folded(q_aug: &Tensor, kt: &Tensor, v: &Tensor, rows: usize) -> Result<Tensor> {
    let n = q_aug.dim(1)?;
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        // A contiguous block keeps the GEMM's batch stride plain for every backend (cuBLAS included).
        let logits = q_aug.narrow(1, start, len)?.contiguous()?.matmul(kt)?;
        let probs = fused::softmax(&logits, 1.0)?;
        outs.push(probs.matmul(v)?);
    }
    Ok(Tensor::cat(&outs, 1)?)
}

/// `softmax(logits·scale + rel_h[.., row(j)] + rel_w[.., col(j)])` over the last dimension, in one pass
/// per row (CPU, f32): `logits` `[.., kh·kw]`, `rel_h` `[.., kh]`, `rel_w` `[.., kw]`, all contiguous.
struct RelPosSoftmax {
    scale: f32,
}

impl candle_core::CustomOp3 for RelPosSoftmax {
    fn name(&self) -> &'static str {
        "rel-pos-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
            let CpuStorage::F32(data) = s else {
                candle_core::bail!("rel-pos-softmax: f32 only");
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("rel-pos-softmax: inputs must be contiguous");
            };
            Ok(&data[a..b])
        }
        let (logits, rel_h, rel_w) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let n = l1.dims().last().copied().unwrap_or(0);
        let kh = l2.dims().last().copied().unwrap_or(0);
        let kw = l3.dims().last().copied().unwrap_or(0);
        let row_count = logits.len().checked_div(n).unwrap_or(0);
        if kh * kw != n || rel_h.len() != row_count * kh || rel_w.len() != row_count * kw {
            candle_core::bail!(
                "rel-pos-softmax: shapes {:?} {:?} {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let out = kernels::rel_pos_softmax(logits, rel_h, rel_w, (kh, kw), self.scale);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_one_block() -> Result<()> {
        let dev = Device::Cpu;
        let (bh, kh, kw, d) = (3, 4, 5, 8);
        let n = kh * kw;
        let q = Tensor::randn(0f32, 1.0, (bh, n, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (bh, n, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (bh, n, d), &dev)?;
        let rel_h = Tensor::randn(0f32, 1.0, (bh, n, kh), &dev)?;
        let rel_w = Tensor::randn(0f32, 1.0, (bh, n, kw), &dev)?;
        let ind = Attention::key_indicators(kh, kw, &q)?;
        let whole = sdpa_rel_pos_folded(&q, &k, &v, &rel_h, &rel_w, &ind, n)?;
        // The reference formula, with the full (BH, N, N) bias materialised as in PyTorch.
        let bias = rel_h
            .unsqueeze(3)?
            .broadcast_add(&rel_w.unsqueeze(2)?)?
            .reshape((bh, n, n))?;
        let logits = ((q.matmul(&k.t()?)? / (d as f64).sqrt())? + bias)?;
        let naive = candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v)?;
        for rows in [1, 3, 7, n] {
            let folded = sdpa_rel_pos_folded(&q, &k, &v, &rel_h, &rel_w, &ind, rows)?;
            let fused = sdpa_rel_pos_fused(&q, &k, &v, &rel_h, &rel_w, rows)?;
            for (name, t) in [("folded", folded), ("fused", fused)] {
                let diff = (t - &whole)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(diff < 1e-6, "{name}, rows {rows}: {diff}");
            }
        }
        let diff = (naive - &whole)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn rel_table_indexes_by_offset() -> Result<()> {
        // Row r of the table holds r: R[q, k] must be q − k + size − 1.
        let table = Tensor::arange(0f32, 7.0, &Device::Cpu)?.reshape((7, 1))?;
        let r = Attention::rel_table(&table, 4)?
            .squeeze(2)?
            .to_vec2::<f32>()?;
        assert_eq!(r[0], vec![3.0, 2.0, 1.0, 0.0]);
        assert_eq!(r[3], vec![6.0, 5.0, 4.0, 3.0]);
        Ok(())
    }
}

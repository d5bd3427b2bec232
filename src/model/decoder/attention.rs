//! Plain multi-head causal self-attention (transformers' `LlamaAttention`, spec §4.2).
//!
//! DeepSeek-OCR sets `use_mla: false`, so each layer has `q_proj`, `k_proj`, `v_proj`, `o_proj`
//! (hidden → hidden, bias only if `attention_bias`), non-interleaved RoPE over the full head and
//! scale 1/√head_dim. candle's `deepseek2.rs` only knows MLA, hence this module.
//!
//! Prefill attends in chunks of query rows so that the score matrix stays bounded
//! (`[B, heads, QUERY_CHUNK, kv_len]` in f32) even for prompts of thousands of positions.
//! The softmax accumulates in f32, as the eager reference's does ([`masked_dtype`]).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::model::decoder::TextConfig;
use crate::model::decoder::kv_cache::KvCache;
use crate::model::decoder::layers::{Linear, fused_linear, linear, split_last};
use crate::model::decoder::rope::RotaryEmbedding;
use crate::model::{ModelError, fused};

/// Query rows attended at once during prefill by default (bounds the f32 score matrix: 512 rows ×
/// 8,192 keys × 10 heads × 4 B = 168 MB at the official size and full context).
pub const QUERY_CHUNK: usize = 512;

/// The same on an accelerator, where memory is plentiful and every chunk is seven more kernel launches: a prompt of
/// up to 2,048 positions attends in one chunk (its f32 scores are 671 MB at the official size and full context).
pub const GPU_QUERY_CHUNK: usize = 2048;
/// Largest causal mask [`CausalMasks::new`] stores expanded to the scores' shape (64 MiB).
pub const EXPANDED_MASK_BYTES: usize = 64 << 20;

/// Additive causal masks for one forward, shared by every layer.
///
/// Query row `i` of the forward sits at absolute position `offset + i` and may see keys
/// `0..=offset + i`. One mask per query chunk, `[rows, offset + chunk_end]`, 0 or -inf in the dtype the scores are
/// masked in ([`Attention::forward`]); `None` where no key is hidden (a single-token step).
#[derive(Debug)]
pub struct CausalMasks {
    chunks: Vec<(usize, usize, Option<Tensor>)>,
}

impl CausalMasks {
    /// Masks for `t` query rows at positions `offset..offset + t`, attended `chunk` rows at a time, in `dtype`.
    ///
    /// `expand_to` `(batch, heads)`: on an accelerator each mask is stored expanded to the scores' shape
    /// `[batch, heads, rows, kv]` when that takes at most [`EXPANDED_MASK_BYTES`], so that every layer adds it with
    /// the contiguous kernel instead of a broadcast, whose per-element index arithmetic is slow (a 1,000-token prefill
    /// on an H200 spent 2.8 of its 22.6 ms of GPU time in bf16 adds, 59 µs a launch; Nsight Compute).
    pub fn new(
        offset: usize,
        t: usize,
        chunk: usize,
        dtype: DType,
        device: &Device,
        expand_to: Option<(usize, usize)>,
    ) -> Result<Self, ModelError> {
        let chunk = chunk.max(1);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < t {
            let rows = chunk.min(t - start);
            let kv_len = offset + start + rows;
            // The fused softmax masks by position itself (`fused::causal_softmax`).
            let mask = if rows == 1 || fused::active(device, dtype) {
                None
            } else {
                let mut m = vec![0f32; rows * kv_len];
                for r in 0..rows {
                    let visible = offset + start + r + 1;
                    m[r * kv_len + visible..(r + 1) * kv_len].fill(f32::NEG_INFINITY);
                }
                let m = Tensor::from_vec(m, (rows, kv_len), device)?.to_dtype(dtype)?;
                Some(match expand_to {
                    Some((b, heads))
                        if !device.is_cpu()
                            && b * heads * rows * kv_len * dtype.size_in_bytes()
                                <= EXPANDED_MASK_BYTES =>
                    {
                        m.broadcast_as((b, heads, rows, kv_len))?.contiguous()?
                    }
                    _ => m,
                })
            };
            chunks.push((start, rows, mask));
            start += rows;
        }
        Ok(Self { chunks })
    }
}

/// The dtype scores are masked and normalised in: the activations' own on CUDA, whose softmax kernels accumulate in
/// f32 for bf16 and f16 input, so that masking (adding 0 or -inf, exact in any dtype) and the softmax give the same
/// numbers as widening the scores to f32 first, without two casts and twice the bytes of a prefill's largest tensor;
/// f32 elsewhere (candle's CPU softmax computes in its input's dtype).
pub fn masked_dtype(dtype: DType, device: &Device) -> DType {
    if device.is_cuda() { dtype } else { DType::F32 }
}

/// One layer's `self_attn`.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` in one layer ([`fused_linear`]).
    qkv: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub fn new(cfg: &TextConfig, vb: &VarBuilder) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let kv = cfg.num_key_value_heads * hd;
        let bias = cfg.attention_bias;
        Ok(Self {
            qkv: fused_linear(
                vb,
                &[
                    ("q_proj", cfg.num_attention_heads * hd),
                    ("k_proj", kv),
                    ("v_proj", kv),
                ],
                h,
                bias,
            )?,
            o_proj: linear(&vb.pp("o_proj"), cfg.num_attention_heads * hd, h, bias)?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f64).sqrt(),
        })
    }

    /// `x`: `[B, T, hidden]` at positions `cache.len()..cache.len() + T`. Writes this layer's keys
    /// and values into `cache` (the caller advances it after the last layer).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        masks: &CausalMasks,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("attn").entered();
        let (b, t, _) = x.dims3()?;
        let offset = cache.len();
        let split = |y: Tensor, heads: usize| -> Result<Tensor, ModelError> {
            Ok(y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q_width, kv_width) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        // Sub-spans for `bench decoder --profile`: projections and RoPE into the cache, then the attention proper.
        let qkv_span = tracing::trace_span!("attn-qkv").entered();
        let [q, k, v] = split_last(&self.qkv.forward(x)?, [q_width, kv_width, kv_width])?;
        let q = split(q, self.num_heads)?;
        let k = split(k, self.num_kv_heads)?;
        let v = split(v, self.num_kv_heads)?;
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;
        let (k, v) = cache.write(layer, &k, &v)?;
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads)?;
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads)?;
        drop(qkv_span);
        let core_span = tracing::trace_span!("attn-core").entered();

        let mut outs = Vec::with_capacity(masks.chunks.len());
        for (start, rows, mask) in &masks.chunks {
            let kv_len = offset + start + rows;
            let q = q.narrow(2, *start, *rows)?;
            let k = k.narrow(2, 0, kv_len)?;
            let v = v.narrow(2, 0, kv_len)?;
            // scores = q kᵀ / √d in the activation dtype, softmax accumulated in f32 (eager LlamaAttention).
            let probs = fused::causal_softmax(
                &q.matmul(&k.t()?)?,
                self.scale,
                offset + start,
                mask.as_ref(),
                masked_dtype(v.dtype(), v.device()),
            )?;
            outs.push(probs.matmul(&v)?);
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 2)?
        };
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        drop(core_span);
        self.o_proj.forward(&out)
    }
}

/// Repeats each key/value head `n_rep` times (grouped-query attention); a no-op for MHA.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor, ModelError> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, t, d))?
        .reshape((b, h * n_rep, t, d))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_hides_the_future_only() -> Result<(), ModelError> {
        let masks = CausalMasks::new(2, 3, QUERY_CHUNK, DType::F32, &Device::Cpu, None)?;
        assert_eq!(masks.chunks.len(), 1);
        let m = masks.chunks[0]
            .2
            .as_ref()
            .map(|m| m.to_vec2::<f32>())
            .transpose()?;
        let m = m.unwrap_or_default();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            m,
            vec![
                vec![0., 0., 0., inf, inf],
                vec![0., 0., 0., 0., inf],
                vec![0.; 5]
            ]
        );
        let single = CausalMasks::new(7, 1, QUERY_CHUNK, DType::F32, &Device::Cpu, None)?;
        assert!(single.chunks[0].2.is_none());
        Ok(())
    }
}

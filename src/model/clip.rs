//! CLIP-L/14 fed by SAM features (`model.vision_model.*`, spec §2.3).
//!
//! DeepSeek-OCR drops CLIP's own patch embedding: SAM's `net_3` output `[B, 1024, h, w]` is flattened
//! row-major into the patch tokens. A CLS token is prepended, the 16×16 position table is resized to
//! h×w (bicubic + antialias in f32, CLS row kept), then `pre_layrnorm` (sic) and 24 pre-norm layers with a
//! fused `qkv_proj` and quick_gelu. There is no final norm. The checkpoint's unused
//! `embeddings.patch_embedding.weight` (and `position_ids`) are tolerated, never loaded.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::{ClipConfig, LayerNorm, Linear, layer_norm, linear, tensor};
use super::error::{ModelError, Result};
use super::fused;
use super::interp::{ResizeCache, resize_nhwc_bicubic_aa};

/// LayerNorm eps of every CLIP norm (`layernorm_epsilon` 1e-5).
const CLIP_LN_EPS: f64 = 1e-5;

/// `x·sigmoid(1.702·x)`.
fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

/// `transformer.layers.N.self_attn`: fused-qkv multi-head attention, no mask.
struct ClipAttention {
    qkv_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl ClipAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("clip-attn").entered();
        let (b, n, c) = x.dims3()?;
        let heads = self.num_heads;
        let hd = c / heads;
        // xqkv.view(b, n, 3, heads, hd): q = first `c` outputs, then k, then v.
        let qkv = self
            .qkv_proj
            .forward(x)?
            .reshape((b, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let probs = fused::softmax(&q.matmul(&k.t()?)?, 1.0 / (hd as f64).sqrt())?;
        let o = fused::transpose12(&probs.matmul(&v)?)?.reshape((b, n, c))?;
        self.out_proj.forward(&o)
    }
}

/// `transformer.layers.N`.
struct ClipLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl ClipLayer {
    fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: layer_norm(&vb.pp("layer_norm1"), d, CLIP_LN_EPS)?,
            self_attn: ClipAttention {
                qkv_proj: linear(&attn.pp("qkv_proj"), d, 3 * d, true)?,
                out_proj: linear(&attn.pp("out_proj"), d, d, true)?,
                num_heads: cfg.num_heads,
            },
            layer_norm2: layer_norm(&vb.pp("layer_norm2"), d, CLIP_LN_EPS)?,
            fc1: linear(&mlp.pp("fc1"), d, cfg.ffn_hidden_size, true)?,
            fc2: linear(&mlp.pp("fc2"), cfg.ffn_hidden_size, d, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("clip-layer").entered();
        let h = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let m = self.fc2.forward(&quick_gelu(
            &self.fc1.forward(&self.layer_norm2.forward(&h)?)?,
        )?)?;
        Ok((h + m)?)
    }
}

/// `vision_model`: CLIP-L over SAM features.
pub struct ClipVisionModel {
    class_embedding: Tensor,
    /// `[num_positions, D]`, CLS row first.
    position_embedding: Tensor,
    pos_grid: usize,
    pos_cache: ResizeCache<Tensor>,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipLayer>,
}

impl ClipVisionModel {
    /// Loads `vb` = `model.vision_model`.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_layers)
            .map(|i| ClipLayer::new(cfg, vb.pp(format!("transformer.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            class_embedding: tensor(&emb, d, "class_embedding")?,
            position_embedding: tensor(
                &emb.pp("position_embedding"),
                (cfg.num_positions(), d),
                "weight",
            )?,
            pos_grid: cfg.pos_grid(),
            pos_cache: ResizeCache::default(),
            pre_layrnorm: layer_norm(&vb.pp("pre_layrnorm"), d, CLIP_LN_EPS)?,
            layers,
        })
    }

    /// CLIP's `get_abs_pos`: CLS row, then the grid resized to h×w in f32 and cast back.
    fn positions_for(&self, h: usize, w: usize) -> Result<Tensor> {
        if (h, w) == (self.pos_grid, self.pos_grid) {
            return Ok(self.position_embedding.clone());
        }
        self.pos_cache.get_or_try((h, w), || {
            let g = self.pos_grid;
            let d = self.position_embedding.dim(1)?;
            let cls = self.position_embedding.narrow(0, 0, 1)?;
            let grid = self
                .position_embedding
                .narrow(0, 1, g * g)?
                .reshape((1, g, g, d))?;
            let resized = resize_nhwc_bicubic_aa(&grid, h, w)?
                .to_dtype(self.position_embedding.dtype())?
                .reshape((h * w, d))?;
            Ok(Tensor::cat(&[&cls, &resized], 0)?)
        })
    }

    /// SAM features `[B, D, h, w]` → hidden states `[B, 1 + h·w, D]` (CLS first).
    pub fn forward(&self, sam_features: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("clip").entered();
        let (b, d, h, w) = sam_features.dims4()?;
        if d != self.class_embedding.dim(0)? {
            return Err(ModelError::Input {
                reason: format!(
                    "SAM features have {d} channels, CLIP expects {}",
                    self.class_embedding.dim(0)?
                ),
            });
        }
        let patches = sam_features.flatten_from(2)?.transpose(1, 2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches.to_dtype(cls.dtype())?], 1)?;
        let x = x.broadcast_add(&self.positions_for(h, w)?.unsqueeze(0)?)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_gelu_values() -> Result<()> {
        let x = Tensor::new(&[-1.0f32, 0.0, 2.0], &candle_core::Device::Cpu)?;
        let y = quick_gelu(&x)?.to_vec1::<f32>()?;
        let want = [
            -1.0 / (1.0 + 1.702f32.exp()),
            0.0,
            2.0 / (1.0 + (-3.404f32).exp()),
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        Ok(())
    }
}

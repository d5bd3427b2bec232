//! The DeepSeek-3B-MoE language model that turns vision tokens back into text (spec §4).
//!
//! A stack of pre-norm layers (`h = x + attn(norm(x))`, `out = h + ffn(norm(h))`): plain MHA with
//! non-interleaved RoPE ([`attention`]), a dense SwiGLU MLP below `first_k_dense_replace` and a
//! mixture of experts above ([`moe`]), RMSNorm in f32, an untied `lm_head`, logits in f32.
//! The struct tree follows the checkpoint (`model.embed_tokens`, `model.layers.N.{self_attn,mlp,
//! input_layernorm,post_attention_layernorm}`, `model.norm`, `lm_head`), so the official
//! safetensors load unchanged.
//!
//! Entry points: [`DeepseekOcrDecoder::prompt_embeds`] embeds the prompt ids and writes the
//! DeepEncoder output over the `<image>` positions (spec §5.5); [`DeepseekOcrDecoder::forward_embeds`]
//! runs embeddings through the layers with a preallocated [`KvCache`], for the prefill and for each
//! incremental step alike.

pub mod attention;
mod config;
pub mod kv_cache;
mod layers;
pub mod moe;
pub mod rope;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

pub use config::{HiddenAct, ScoringFunc, TextConfig, TopkMethod};
pub use kv_cache::KvCache;

use crate::model::ModelError;
use attention::{Attention, CausalMasks};
use layers::{Linear, Mlp, RmsNorm, decoder_linear, weight};
use moe::{Dispatch, Moe};
use rope::RotaryEmbedding;

/// The `mlp` of one layer: dense below `first_k_dense_replace`, MoE above.
#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Moe(Box<Moe>),
}

/// `model.layers.N`.
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: FeedForward,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, layer_idx: usize, vb: &VarBuilder) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let mlp = if cfg.is_moe_layer(layer_idx) {
            FeedForward::Moe(Box::new(Moe::new(cfg, &vb.pp("mlp"))?))
        } else {
            FeedForward::Dense(Mlp::new(&vb.pp("mlp"), h, cfg.intermediate_size)?)
        };
        Ok(Self {
            self_attn: Attention::new(cfg, &vb.pp("self_attn"))?,
            mlp,
            input_layernorm: RmsNorm::new(&vb.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
            post_attention_layernorm: RmsNorm::new(
                &vb.pp("post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        masks: &CausalMasks,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let attn =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, rope, masks, cache, layer)?;
        let h = (x + attn)?;
        let normed = self.post_attention_layernorm.forward(&h)?;
        let ffn = match &self.mlp {
            FeedForward::Dense(m) => m.forward(&normed)?,
            FeedForward::Moe(m) => m.forward(&normed)?,
        };
        Ok((h + ffn)?)
    }
}

/// The decoder with its LM head.
#[derive(Debug, Clone)]
pub struct DeepseekOcrDecoder {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryEmbedding,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
    /// Query rows per attention chunk in a prefill ([`attention::QUERY_CHUNK`] by default on the CPU,
    /// [`attention::GPU_QUERY_CHUNK`] on an accelerator).
    query_chunk: usize,
}

impl DeepseekOcrDecoder {
    /// Loads the decoder from `vb` rooted at the checkpoint's top level (it reads `model.*` and
    /// `lm_head.weight`). dtype and device come from `vb`.
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        let vm = vb.pp("model");
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = weight(&vm.pp("embed_tokens"), (v, h), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, i, &vm.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            decoder_linear(embed.clone(), None)?
        } else {
            decoder_linear(weight(&vb.pp("lm_head"), (v, h), "weight")?, None)?
        };
        Ok(Self {
            embed_tokens: Embedding::new(embed, h),
            layers,
            norm: RmsNorm::new(&vm.pp("norm"), h, cfg.rms_norm_eps)?,
            lm_head,
            rope: RotaryEmbedding::new(
                cfg.head_dim(),
                cfg.rope_theta,
                cfg.max_position_embeddings,
                vb.dtype(),
                vb.device(),
            )?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            query_chunk: if vb.device().is_cpu() {
                attention::QUERY_CHUNK
            } else {
                attention::GPU_QUERY_CHUNK
            },
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for `batch` sequences of up to `capacity` positions, in this model's dtype.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::new(&self.cfg, batch, capacity, self.dtype, &self.device)
    }

    /// Forces the MoE dispatch path of every layer (tests and benchmarks; `Auto` by default).
    pub fn set_moe_dispatch(&mut self, dispatch: Dispatch) {
        for layer in &mut self.layers {
            if let FeedForward::Moe(m) = &mut layer.mlp {
                m.set_dispatch(dispatch);
            }
        }
    }

    /// Sets how many query rows a prefill attends at once (memory versus launch count; the result
    /// does not depend on it).
    pub fn set_query_chunk(&mut self, rows: usize) {
        self.query_chunk = rows.max(1);
    }

    /// `embed_tokens(ids)`: `[T, hidden]` for a 1-D id list.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor, ModelError> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Input {
                reason: format!(
                    "token id {bad} is outside the vocabulary ({})",
                    self.cfg.vocab_size
                ),
            });
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed_tokens.forward(&ids)?)
    }

    /// The prefill input `[1, T, hidden]`: token embeddings with `image_embeds` (`[N, hidden]`, the
    /// DeepEncoder sequences of all images in prompt order) written over the positions where
    /// `image_mask` is true, in order (spec §5.5). A count mismatch is an error.
    pub fn prompt_embeds(
        &self,
        ids: &[u32],
        image_mask: &[bool],
        image_embeds: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let tokens = self.embed_ids(ids)?;
        let spliced = match image_embeds {
            Some(img) => splice_image_embeds(&tokens, image_mask, &img.to_dtype(self.dtype)?)?,
            None => {
                if image_mask.len() != ids.len() {
                    return Err(ModelError::Input {
                        reason: format!(
                            "image mask has {} entries for {} tokens",
                            image_mask.len(),
                            ids.len()
                        ),
                    });
                }
                let n = image_mask.iter().filter(|&&m| m).count();
                if n > 0 {
                    return Err(ModelError::ImageTokenMismatch {
                        placeholders: n,
                        embeddings: 0,
                    });
                }
                tokens
            }
        };
        Ok(spliced.unsqueeze(0)?)
    }

    /// Runs `embeds` (`[B, T, hidden]`, positions `cache.len()..`) through the decoder and returns
    /// the logits of every position, `[B, T, vocab]` in f32.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let hidden = self.hidden_states(embeds, cache)?;
        self.logits(&hidden)
    }

    /// Like [`Self::forward_embeds`] but only the last position's logits, `[B, vocab]` in f32: what
    /// generation needs, without a `[T, vocab]` head over the whole prompt.
    pub fn forward_embeds_last(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let hidden = self.hidden_states(embeds, cache)?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.logits(&last)
    }

    /// The LM head on hidden states (`[.., hidden]` as [`Self::hidden_states`] returns them): logits in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// The final-normed hidden states `[B, T, hidden]` (the LM head's input); advances `cache` by T.
    /// Public for parity dumps, which compare them with the reference's `last_hidden_state`.
    pub fn hidden_states(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("decoder", t = embeds.dims().get(1).copied().unwrap_or(0))
            .entered();
        let (b, t, h) = embeds.dims3().map_err(|_| ModelError::Input {
            reason: format!("embeddings must be [B, T, hidden], got {:?}", embeds.dims()),
        })?;
        if h != self.cfg.hidden_size || t == 0 || b != cache.batch() {
            return Err(ModelError::Input {
                reason: format!(
                    "embeddings {:?} do not fit hidden_size {} and a cache of batch {}",
                    embeds.dims(),
                    self.cfg.hidden_size,
                    cache.batch()
                ),
            });
        }
        cache.check_room(t)?;
        let offset = cache.len();
        // Also catches positions beyond the RoPE table before any layer writes the cache.
        self.rope.tables(offset, t)?;
        let mask_dtype = attention::masked_dtype(self.dtype, &self.device);
        let masks = CausalMasks::new(
            offset,
            t,
            self.query_chunk,
            mask_dtype,
            &self.device,
            Some((embeds.dim(0)?, self.cfg.num_attention_heads)),
        )?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &self.rope, &masks, cache, i)?;
        }
        cache.advance(t);
        self.norm.forward(&x)
    }
}

/// Writes the rows of `image_embeds` (`[N, H]`) over the rows of `token_embeds` (`[T, H]`) where
/// `image_mask` is true, in order — PyTorch `inputs_embeds[mask] = image_embeds` (masked_scatter).
/// Done as one gather from `[token_embeds; image_embeds]` so it stays on the device.
pub fn splice_image_embeds(
    token_embeds: &Tensor,
    image_mask: &[bool],
    image_embeds: &Tensor,
) -> Result<Tensor, ModelError> {
    let (t, h) = token_embeds.dims2()?;
    let (n, hi) = image_embeds.dims2()?;
    if image_mask.len() != t {
        return Err(ModelError::Input {
            reason: format!("image mask has {} entries for {t} tokens", image_mask.len()),
        });
    }
    if hi != h {
        return Err(ModelError::Input {
            reason: format!("image embeddings are {hi} wide, the decoder {h}"),
        });
    }
    let placeholders = image_mask.iter().filter(|&&m| m).count();
    if placeholders != n {
        return Err(ModelError::ImageTokenMismatch {
            placeholders,
            embeddings: n,
        });
    }
    let mut next_image = t as u32;
    let rows: Vec<u32> = image_mask
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            if m {
                next_image += 1;
                next_image - 1
            } else {
                i as u32
            }
        })
        .collect();
    let both = Tensor::cat(
        &[token_embeds, &image_embeds.to_dtype(token_embeds.dtype())?],
        0,
    )?;
    Ok(both.index_select(&Tensor::new(rows.as_slice(), token_embeds.device())?, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_writes_image_rows_in_order_and_checks_the_count() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let tok = Tensor::new(&[[0f32, 0.], [1., 1.], [2., 2.], [3., 3.]], &dev)?;
        let img = Tensor::new(&[[10f32, 10.], [20., 20.]], &dev)?;
        let out = splice_image_embeds(&tok, &[false, true, true, false], &img)?;
        assert_eq!(
            out.to_vec2::<f32>()?,
            vec![vec![0., 0.], vec![10., 10.], vec![20., 20.], vec![3., 3.]]
        );
        let err = splice_image_embeds(&tok, &[false, true, false, false], &img);
        assert!(matches!(
            err,
            Err(ModelError::ImageTokenMismatch {
                placeholders: 1,
                embeddings: 2
            })
        ));
        Ok(())
    }
}

//! `optimem bench decoder`: speed and memory of the MoE decoder at the official size, without the
//! official weights.
//!
//! The decoder is built at the official DeepSeek-OCR shapes (12 layers, hidden 1280, 64 routed
//! experts top-6 plus 2 shared, vocab 129,280; spec §4.1) from random weights created lazily, tensor
//! by tensor, on the target device as the loader asks for them. Speed does not depend on the values,
//! only the routing spread does, and random routers spread tokens over all experts as a trained one
//! roughly does. It times a prefill of `prompt_tokens` positions and `decode_tokens` batch-1 greedy
//! steps through the KV cache (each step synchronises on its token, as real decoding does), and
//! reports the KV-cache cost per 1,000 positions. Not a test: run it on purpose, on quiet hardware.

use std::fmt;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::model::ModelError;
use crate::model::decoder::moe::Dispatch;
use crate::model::decoder::{DeepseekOcrDecoder, TextConfig};

/// The decoder fields of the official config.json (spec §4.1); defaults as documented.
pub fn official_text_config() -> Result<TextConfig, ModelError> {
    TextConfig::from_config_json(&serde_json::json!({
        "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848,
        "moe_intermediate_size": 896, "num_hidden_layers": 12, "num_attention_heads": 10,
        "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_experts_per_tok": 6, "first_k_dense_replace": 1, "topk_method": "greedy",
        "n_group": 1, "topk_group": 1, "use_mla": false, "max_position_embeddings": 8192,
        "bos_token_id": 0, "eos_token_id": 1
    }))
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct DecoderBenchOptions {
    pub config: TextConfig,
    pub dtype: DType,
    pub device: Device,
    /// Positions in the timed prefill (a Gundam page is ~900, Base 273).
    pub prompt_tokens: usize,
    /// Timed batch-1 decode steps after the prefill.
    pub decode_tokens: usize,
    /// Untimed runs before timing (kernel compilation, allocator warm-up).
    pub warmup: usize,
    pub dispatch: Dispatch,
    pub seed: u64,
}

impl DecoderBenchOptions {
    /// Official shapes, a 1,000-position prefill and 128 decode steps.
    pub fn official(dtype: DType, device: Device) -> Result<Self, ModelError> {
        Ok(Self {
            config: official_text_config()?,
            dtype,
            device,
            prompt_tokens: 1000,
            decode_tokens: 128,
            warmup: 1,
            dispatch: Dispatch::Auto,
            seed: 0,
        })
    }
}

/// Measured figures.
#[derive(Debug, Clone)]
pub struct DecoderBenchReport {
    pub parameters: usize,
    pub weight_bytes: usize,
    pub build_s: f64,
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub kv_bytes_per_1000_tokens: usize,
    pub dtype: DType,
    pub device: String,
}

impl DecoderBenchReport {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_s
    }
}

impl fmt::Display for DecoderBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "decoder bench on {} ({:?}), random weights",
            self.device, self.dtype
        )?;
        writeln!(
            f,
            "  weights: {:.3} G parameters, {:.2} GB, built in {:.1} s",
            self.parameters as f64 / 1e9,
            self.weight_bytes as f64 / 1e9,
            self.build_s
        )?;
        writeln!(
            f,
            "  prefill: {} positions in {:.3} s ({:.0} tokens/s)",
            self.prompt_tokens,
            self.prefill_s,
            self.prefill_tokens_per_s()
        )?;
        writeln!(
            f,
            "  decode:  {} tokens at batch 1 in {:.3} s ({:.1} tokens/s, {:.2} ms/token)",
            self.decode_tokens,
            self.decode_s,
            self.decode_tokens_per_s(),
            1e3 * self.decode_s / self.decode_tokens.max(1) as f64
        )?;
        write!(
            f,
            "  KV cache: {} bytes per 1,000 positions ({:.1} MB)",
            self.kv_bytes_per_1000_tokens,
            self.kv_bytes_per_1000_tokens as f64 / 1e6
        )
    }
}

/// A VarBuilder backend that invents every tensor it is asked for: N(0, 1/fan_in) matrices so that
/// activations keep their scale, ones for norm weights.
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.ends_with("norm.weight") {
            return Tensor::ones(s, dtype, dev);
        }
        let fan_in = *s.dims().last().unwrap_or(&1) as f64;
        Tensor::randn(0f32, (1.0 / fan_in).sqrt() as f32, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape ({name})")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Builds the decoder from random weights and times it.
pub fn run(opts: &DecoderBenchOptions) -> Result<DecoderBenchReport, ModelError> {
    let dev = &opts.device;
    if dev.is_cuda() {
        dev.set_seed(opts.seed)?;
    }
    let start = Instant::now();
    let backend: Box<dyn SimpleBackend> = Box::new(RandomWeights);
    let vb = VarBuilder::from_backend(backend, opts.dtype, dev.clone());
    let mut model = DeepseekOcrDecoder::new(&opts.config, vb)?;
    model.set_moe_dispatch(opts.dispatch);
    dev.synchronize()?;
    let build_s = start.elapsed().as_secs_f64();
    let parameters = count_parameters(&opts.config);

    let h = opts.config.hidden_size;
    let capacity = opts.prompt_tokens + opts.decode_tokens;
    let prompt =
        (Tensor::randn(0f32, 1.0, (1, opts.prompt_tokens, h), dev)?.to_dtype(opts.dtype)? * 0.5)?;
    let mut cache = model.new_cache(1, capacity)?;

    let mut prefill_s = f64::INFINITY;
    let mut decode_s = f64::INFINITY;
    for _ in 0..opts.warmup + 1 {
        cache.reset();
        dev.synchronize()?;
        let t0 = Instant::now();
        let logits = model.forward_embeds_last(&prompt, &mut cache)?;
        let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        prefill_s = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        for _ in 0..opts.decode_tokens {
            let x = model.embed_ids(&[next])?.unsqueeze(0)?;
            let logits = model.forward_embeds_last(&x, &mut cache)?;
            next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        }
        decode_s = t1.elapsed().as_secs_f64();
    }
    Ok(DecoderBenchReport {
        parameters,
        weight_bytes: parameters * opts.dtype.size_in_bytes(),
        build_s,
        prompt_tokens: opts.prompt_tokens,
        prefill_s,
        decode_tokens: opts.decode_tokens,
        decode_s,
        kv_bytes_per_1000_tokens: cache.bytes_per_position() * 1000,
        dtype: opts.dtype,
        device: format!("{:?}", dev.location()),
    })
}

/// Parameters of the decoder at `cfg` (every tensor the loader reads).
pub fn count_parameters(cfg: &TextConfig) -> usize {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let hd = cfg.head_dim();
    let kv = cfg.num_key_value_heads * hd;
    let bias = usize::from(cfg.attention_bias);
    let attn = h * h + 2 * h * kv + h * h + bias * (2 * h + 2 * kv);
    let mlp = |i: usize| 3 * h * i;
    let mut total = v * h + h + if cfg.tie_word_embeddings { 0 } else { v * h };
    for layer in 0..cfg.num_hidden_layers {
        total += attn + 2 * h;
        total += if cfg.is_moe_layer(layer) {
            let e = cfg.n_routed_experts.unwrap_or(0);
            e * h
                + e * mlp(cfg.moe_intermediate_size)
                + mlp(cfg.moe_intermediate_size * cfg.n_shared_experts.unwrap_or(0))
        } else {
            mlp(cfg.intermediate_size)
        };
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §6.1: the decoder of the real checkpoint has 2,934,734,080 parameters.
    #[test]
    fn official_parameter_count() -> Result<(), ModelError> {
        assert_eq!(count_parameters(&official_text_config()?), 2_934_734_080);
        Ok(())
    }

    #[test]
    fn bench_runs_at_a_tiny_size() -> Result<(), ModelError> {
        let mut opts = DecoderBenchOptions::official(DType::F32, Device::Cpu)?;
        let cfg = serde_json::json!({
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 1,
            "num_experts_per_tok": 2, "first_k_dense_replace": 1, "topk_method": "greedy",
            "use_mla": false, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1
        });
        opts.config = TextConfig::from_config_json(&cfg)?;
        opts.prompt_tokens = 20;
        opts.decode_tokens = 5;
        opts.warmup = 0;
        let r = run(&opts)?;
        assert_eq!(r.parameters, count_parameters(&opts.config));
        // 2 layers × (k + v) × 4 heads × 8 dims × 4 bytes per position.
        assert_eq!(r.kv_bytes_per_1000_tokens, 1000 * 2 * 2 * 4 * 8 * 4);
        assert!(r.prefill_s > 0.0 && r.decode_s > 0.0);
        Ok(())
    }
}

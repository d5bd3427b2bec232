//! `optimem bench decoder`: speed and memory of the MoE decoder at the official size, and parity dumps.
//!
//! By default the decoder is built at the official DeepSeek-OCR shapes (12 layers, hidden 1280, 64 routed
//! experts top-6 plus 2 shared, vocab 129,280; spec §4.1) from random weights created lazily, tensor by
//! tensor, on the target device as the loader asks for them. Speed does not depend on the values, only the
//! routing spread does, and random routers spread tokens over all experts as a trained one roughly does.
//! With a model directory ([`DecoderBenchOptions::from_model_dir`]) the weights are loaded from it instead,
//! so the PyTorch reference (`tools/reference/bench_full.py`) can run the same weights on the same prompt.
//! The prompt is `prompt_tokens` ids drawn in the vocabulary from a seeded generator. It times a prefill
//! and `decode_tokens` batch-1 greedy steps through the KV cache (each step synchronises on its token, as
//! real decoding does), and reports the KV-cache cost per 1,000 positions. Not a test: run it on purpose,
//! on quiet hardware.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::bench::profile::{self, SpanProfile, SpanRow};
use crate::bench_encoder::{device_name, peak_rss_bytes};
use crate::model::ModelError;
use crate::model::config::{load_safetensors_mmap, read_config_json};
use crate::model::decoder::moe::Dispatch;
use crate::model::decoder::{DeepseekOcrDecoder, TextConfig};

/// Prefill positions whose logits a run keeps (the whole `[T, vocab]` would be hundreds of MB).
pub const LOGITS_KEPT: usize = 8;

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
    /// Timed runs (at least 1): the report gives their median and range, as this machine's timings vary by ±15 %.
    pub repeat: usize,
    pub dispatch: Dispatch,
    /// Seeds the prompt ids (and the random weights on CUDA).
    pub seed: u64,
    /// The model directory the weights come from; None: random weights at `config`.
    pub model: Option<PathBuf>,
    /// After the timed runs, one more prefill under a [`SpanProfile`], reported by model span.
    pub profile: bool,
    /// Also time the same decode at this batch (B copies of the prompt stepping together, as the engine batches queued
    /// decodes), beside batch 1 in the same run; 0 or 1: batch 1 only.
    pub batch: usize,
}

impl DecoderBenchOptions {
    /// Official shapes, random weights, a 1,000-position prefill and 128 decode steps.
    pub fn official(dtype: DType, device: Device) -> Result<Self, ModelError> {
        Ok(Self {
            config: official_text_config()?,
            dtype,
            device,
            prompt_tokens: 1000,
            decode_tokens: 128,
            warmup: 1,
            repeat: 1,
            dispatch: Dispatch::Auto,
            seed: 0,
            model: None,
            batch: 0,
            profile: false,
        })
    }

    /// As [`Self::official`] with the config and weights of a model directory (official layout).
    pub fn from_model_dir(dir: &Path, dtype: DType, device: Device) -> Result<Self, ModelError> {
        Ok(Self {
            config: TextConfig::from_config_json(&read_config_json(dir)?)?,
            model: Some(dir.to_path_buf()),
            ..Self::official(dtype, device)?
        })
    }
}

/// Measured figures.
#[derive(Debug, Clone)]
pub struct DecoderBenchReport {
    /// "random" or the model directory the weights came from.
    pub weights: String,
    pub parameters: usize,
    pub weight_bytes: usize,
    pub build_s: f64,
    pub prompt_tokens: usize,
    /// Median of the timed prefills.
    pub prefill_s: f64,
    /// Every timed prefill, in order.
    pub prefill_runs_s: Vec<f64>,
    pub decode_tokens: usize,
    /// Median of the timed decodes.
    pub decode_s: f64,
    /// Every timed decode, in order.
    pub decode_runs_s: Vec<f64>,
    /// The batched decode beside it: batch size and seconds for `decode_tokens` steps (None: not run).
    pub batch_decode: Option<(usize, f64)>,
    pub kv_bytes_per_1000_tokens: usize,
    pub dtype: DType,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub seed: u64,
    pub warmup: usize,
    /// The MoE dispatch asked for (`auto` picks per forward by device and token count).
    pub dispatch: Dispatch,
    /// One more prefill's time by model span (`--profile`), longest self time first.
    pub profile: Option<Vec<SpanRow>>,
    /// Peak resident memory of the process (host memory, not GPU memory), if the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

impl DecoderBenchReport {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_s
    }

    /// The report as one JSON object (for scripts: `--json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "decoder",
            "weights": self.weights,
            "device": self.device,
            "dtype": self.dtype.as_str(),
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "build_s": self.build_s,
            "seed": self.seed,
            "warmup": self.warmup,
            "dispatch": format!("{:?}", self.dispatch).to_lowercase(),
            "prompt_tokens": self.prompt_tokens,
            "repeat": self.prefill_runs_s.len(),
            "prefill_s": self.prefill_s,
            "prefill_runs_s": self.prefill_runs_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s(),
            "decode_tokens": self.decode_tokens,
            "decode_s": self.decode_s,
            "decode_runs_s": self.decode_runs_s,
            "decode_tokens_per_s": self.decode_tokens_per_s(),
            "batch": self.batch_decode.map(|(b, _)| b),
            "batch_decode_s": self.batch_decode.map(|(_, s)| s),
            "batch_decode_tokens_per_s": self.batch_decode.map(|(b, s)| (b * self.decode_tokens) as f64 / s),
            "kv_bytes_per_1000_tokens": self.kv_bytes_per_1000_tokens,
            "peak_rss_bytes": self.peak_rss_bytes,
            "profile": self.profile,
        })
    }
}

/// The median of `runs` (the mean of the middle two for an even count); infinity for none.
fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::INFINITY,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// ", median of N, min–max" after a median, or nothing for a single run.
fn range_note(runs: &[f64]) -> String {
    if runs.len() < 2 {
        return String::new();
    }
    let (lo, hi) = crate::bench::range(runs);
    format!(" (median of {}, {lo:.3}–{hi:.3} s)", runs.len())
}

impl fmt::Display for DecoderBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = if self.weights == "random" {
            "random weights".to_string()
        } else {
            format!("weights from {}", self.weights)
        };
        writeln!(
            f,
            "decoder bench on {} ({}), {weights}, MoE dispatch {:?}",
            self.device,
            self.dtype.as_str(),
            self.dispatch
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
            "  prefill: {} positions in {:.3} s{} ({:.0} tokens/s)",
            self.prompt_tokens,
            self.prefill_s,
            range_note(&self.prefill_runs_s),
            self.prefill_tokens_per_s()
        )?;
        writeln!(
            f,
            "  decode:  {} tokens at batch 1 in {:.3} s{} ({:.1} tokens/s, {:.2} ms/token)",
            self.decode_tokens,
            self.decode_s,
            range_note(&self.decode_runs_s),
            self.decode_tokens_per_s(),
            1e3 * self.decode_s / self.decode_tokens.max(1) as f64
        )?;
        if let Some((b, s)) = self.batch_decode {
            writeln!(
                f,
                "  decode:  {} steps at batch {b} in {s:.3} s ({:.1} tokens/s, {:.2}× batch 1's tokens/s)",
                self.decode_tokens,
                (b * self.decode_tokens) as f64 / s,
                (b * self.decode_tokens) as f64 / s / self.decode_tokens_per_s()
            )?;
        }
        write!(
            f,
            "  KV cache: {} bytes per 1,000 positions ({:.1} MB)",
            self.kv_bytes_per_1000_tokens,
            self.kv_bytes_per_1000_tokens as f64 / 1e6
        )?;
        if let Some(b) = self.peak_rss_bytes {
            write!(f, "\n  peak RSS {:.2} GiB", b as f64 / (1u64 << 30) as f64)?;
        }
        if let Some(rows) = &self.profile {
            write!(
                f,
                "\none more prefill by model span:\n{}",
                profile::table(rows)
            )?;
        }
        Ok(())
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

/// A run's report and the prefill's outputs.
#[derive(Debug, Clone)]
pub struct DecoderBenchRun {
    pub report: DecoderBenchReport,
    /// The prompt ids.
    pub ids: Vec<u32>,
    /// The final-normed hidden states of the prefill `[T, hidden]`, in the model dtype.
    pub hidden: Tensor,
    /// Logits of the last `min(T, LOGITS_KEPT)` prefill positions `[k, vocab]`, f32.
    pub logits_last: Tensor,
    /// The greedy tokens of the last timed decode.
    pub decoded: Vec<u32>,
}

impl DecoderBenchRun {
    /// Writes `ids` (i64 `[T]`), `hidden` (f32 `[T, hidden]`), `logits_last` (f32 `[k, vocab]`) and
    /// `decoded` (i64 `[decode_tokens]`) to a safetensors file.
    pub fn save_dump(&self, path: &Path) -> Result<(), ModelError> {
        let cpu = &Device::Cpu;
        let ids = |v: &[u32]| {
            let v: Vec<i64> = v.iter().map(|&i| i64::from(i)).collect();
            let n = v.len();
            Tensor::from_vec(v, n, cpu)
        };
        let tensors = HashMap::from([
            ("ids".to_string(), ids(&self.ids)?),
            (
                "hidden".to_string(),
                self.hidden.to_dtype(DType::F32)?.to_device(cpu)?,
            ),
            ("logits_last".to_string(), self.logits_last.to_device(cpu)?),
            ("decoded".to_string(), ids(&self.decoded)?),
        ]);
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }
}

/// `n` token ids in `0..vocab` from `seed` (splitmix64): the same on every machine, and written to the
/// dump so that the reference reads the identical prompt.
pub fn prompt_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // Modulo bias is irrelevant here: the ids only need to be deterministic and in range.
            (z % vocab as u64) as u32
        })
        .collect()
}

/// Builds the decoder (random weights, or the model directory's) and times it.
pub fn run(opts: &DecoderBenchOptions) -> Result<DecoderBenchRun, ModelError> {
    let dev = &opts.device;
    if dev.is_cuda() {
        dev.set_seed(opts.seed)?;
    }
    if opts.prompt_tokens == 0 || opts.decode_tokens == 0 {
        return Err(ModelError::Input {
            reason: "the prompt and the decode need at least one token each".into(),
        });
    }
    let start = Instant::now();
    let (vb, weights) = match &opts.model {
        Some(dir) => (
            load_safetensors_mmap(dir, opts.dtype, dev)?,
            dir.display().to_string(),
        ),
        None => {
            let backend: Box<dyn SimpleBackend> = Box::new(RandomWeights);
            (
                VarBuilder::from_backend(backend, opts.dtype, dev.clone()),
                "random".to_string(),
            )
        }
    };
    let mut model = DeepseekOcrDecoder::new(&opts.config, vb)?;
    model.set_moe_dispatch(opts.dispatch);
    dev.synchronize()?;
    let build_s = start.elapsed().as_secs_f64();
    let parameters = count_parameters(&opts.config);

    let capacity = opts.prompt_tokens + opts.decode_tokens;
    let ids = prompt_ids(opts.seed, opts.prompt_tokens, opts.config.vocab_size);
    let prompt = model.embed_ids(&ids)?.unsqueeze(0)?;
    let mut cache = model.new_cache(1, capacity)?;
    let kept = opts.prompt_tokens.min(LOGITS_KEPT);

    let mut prefill_runs_s = Vec::with_capacity(opts.repeat);
    let mut decode_runs_s = Vec::with_capacity(opts.repeat);
    let mut outputs = None;
    let mut decoded = Vec::with_capacity(opts.decode_tokens);
    for run in 0..opts.warmup + opts.repeat.max(1) {
        let timed = run >= opts.warmup;
        cache.reset();
        decoded.clear();
        dev.synchronize()?;
        let t0 = Instant::now();
        let hidden = model.hidden_states(&prompt, &mut cache)?.squeeze(0)?;
        let logits = model.logits(&hidden.narrow(0, opts.prompt_tokens - kept, kept)?)?;
        let mut next = logits.get(kept - 1)?.argmax(0)?.to_scalar::<u32>()?;
        if timed {
            prefill_runs_s.push(t0.elapsed().as_secs_f64());
        }
        if outputs.is_none() {
            outputs = Some((hidden, logits));
        }

        let t1 = Instant::now();
        for _ in 0..opts.decode_tokens {
            decoded.push(next);
            let x = model.embed_ids(&[next])?.unsqueeze(0)?;
            let logits = model.forward_embeds_last(&x, &mut cache)?;
            next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        }
        if timed {
            decode_runs_s.push(t1.elapsed().as_secs_f64());
        }
    }
    let profile = opts
        .profile
        .then(|| {
            cache.reset();
            SpanProfile::measure(dev, || model.hidden_states(&prompt, &mut cache))
        })
        .transpose()?;
    // The same steps at batch B: B copies of the prompt through one cache, each step feeding B tokens.
    let batch_decode = if opts.batch > 1 {
        let b = opts.batch;
        let prompts = Tensor::cat(&vec![prompt.clone(); b], 0)?;
        let mut cache = model.new_cache(b, capacity)?;
        let mut best = f64::INFINITY;
        for _ in 0..opts.warmup + 1 {
            cache.reset();
            let logits = model.forward_embeds_last(&prompts, &mut cache)?;
            let mut next = logits.argmax(1)?.to_vec1::<u32>()?;
            dev.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..opts.decode_tokens {
                let x = model.embed_ids(&next)?.unsqueeze(1)?;
                next = model
                    .forward_embeds_last(&x, &mut cache)?
                    .argmax(1)?
                    .to_vec1::<u32>()?;
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Some((b, best))
    } else {
        None
    };
    let (hidden, logits_last) = outputs.ok_or_else(|| ModelError::Input {
        reason: "no prefill ran".into(),
    })?;
    let report = DecoderBenchReport {
        weights,
        parameters,
        weight_bytes: parameters * opts.dtype.size_in_bytes(),
        build_s,
        prompt_tokens: opts.prompt_tokens,
        prefill_s: median(&prefill_runs_s),
        prefill_runs_s,
        decode_tokens: opts.decode_tokens,
        decode_s: median(&decode_runs_s),
        decode_runs_s,
        batch_decode,
        kv_bytes_per_1000_tokens: cache.bytes_per_position() * 1000,
        dtype: opts.dtype,
        device: device_name(dev),
        seed: opts.seed,
        dispatch: opts.dispatch,
        profile,
        warmup: opts.warmup,
        peak_rss_bytes: peak_rss_bytes(),
    };
    Ok(DecoderBenchRun {
        report,
        ids,
        hidden,
        logits_last,
        decoded,
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
        let r = run(&opts)?.report;
        assert_eq!(r.parameters, count_parameters(&opts.config));
        // 2 layers × (k + v) × 4 heads × 8 dims × 4 bytes per position.
        assert_eq!(r.kv_bytes_per_1000_tokens, 1000 * 2 * 2 * 4 * 8 * 4);
        assert!(r.prefill_s > 0.0 && r.decode_s > 0.0);
        Ok(())
    }
}

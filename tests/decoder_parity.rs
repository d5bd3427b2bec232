//! Parity of the Rust decoder with the PyTorch reference (tools/reference, transformers modules).
//!
//! `tests/fixtures/ocr-small/` holds a random-weight model at a small config (hidden 64, 3 layers:
//! one dense, two MoE with 4 experts top-2 and a shared expert) and `decoder.safetensors`: a prompt
//! of BOS + text + 73 image embeddings + text, its spliced embeddings, the prefill logits of every
//! position, and 64 greedy tokens without and with the windowed no-repeat n-gram rule
//! (fixture README and metadata). Everything here runs in f32 on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use optimem::model::ModelError;
use optimem::model::decoder::moe::Dispatch;
use optimem::model::decoder::{DeepseekOcrDecoder, TextConfig};
use optimem::model::generate::{
    Control, GenerateOptions, NoRepeatNgram, Sampling, StopReason, generate, generate_text,
};
use optimem::model::tokenizer::OcrTokenizer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The agreed prefill tolerance (issue 4): max |Δ| of f32 logits.
const LOGITS_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocr-small")
}

struct Fixture {
    cfg: TextConfig,
    weights: HashMap<String, Tensor>,
    dec: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

fn load() -> Result<Fixture, Box<dyn std::error::Error>> {
    let dir = fixtures();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let cfg = TextConfig::from_config_json(&json)?;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let bytes = std::fs::read(dir.join("decoder.safetensors"))?;
    let dec = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    Ok(Fixture {
        cfg,
        weights,
        dec,
        meta,
    })
}

impl Fixture {
    fn model(&self) -> Result<DeepseekOcrDecoder, ModelError> {
        let vb = VarBuilder::from_tensors(self.weights.clone(), DType::F32, &Device::Cpu);
        DeepseekOcrDecoder::new(&self.cfg, vb)
    }

    fn tensor(&self, name: &str) -> Result<&Tensor, Box<dyn std::error::Error>> {
        self.dec
            .get(name)
            .ok_or_else(|| format!("decoder.safetensors lacks {name}").into())
    }

    fn ids(&self, name: &str) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        let v = self.tensor(name)?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        Ok(v.into_iter().map(u32::try_from).collect::<Result<_, _>>()?)
    }

    fn meta_usize(&self, key: &str) -> Result<usize, Box<dyn std::error::Error>> {
        let v = self
            .meta
            .get(key)
            .ok_or_else(|| format!("metadata lacks {key}"))?;
        Ok(v.trim().parse()?)
    }

    /// The prompt ids, its image mask and spliced embeddings `[1, T, H]` built by our code.
    fn prompt(
        &self,
        model: &DeepseekOcrDecoder,
    ) -> Result<(Vec<u32>, Tensor), Box<dyn std::error::Error>> {
        let ids = self.ids("input_ids")?;
        let mask: Vec<bool> = self
            .tensor("images_seq_mask")?
            .to_vec1::<u8>()?
            .into_iter()
            .map(|m| m != 0)
            .collect();
        let img = self.tensor("image_embeds")?;
        Ok((ids.clone(), model.prompt_embeds(&ids, &mask, Some(img))?))
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32, candle_core::Error> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn greedy_options(steps: usize, no_repeat: Option<NoRepeatNgram>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: steps,
        max_context: 8192,
        eos_token_id: None, // the fixture disabled EOS
        sampling: Sampling::Greedy,
        no_repeat,
    }
}

#[test]
fn spliced_prompt_embeddings_match() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let image_id = fx.meta_usize("image_token_id")? as u32;
    assert_eq!(ids.iter().filter(|&&i| i == image_id).count(), 73);
    let want = fx.tensor("inputs_embeds")?.unsqueeze(0)?;
    let d = max_abs_diff(&embeds, &want)?;
    assert!(d == 0.0, "spliced embeddings differ by {d}");
    Ok(())
}

#[test]
fn prefill_logits_match_position_by_position() -> TestResult {
    let fx = load()?;
    let want = fx.tensor("logits")?;
    for dispatch in [
        Dispatch::Auto,
        Dispatch::Gather,
        Dispatch::Grouped,
        Dispatch::Padded,
    ] {
        let mut model = fx.model()?;
        model.set_moe_dispatch(dispatch);
        let (ids, embeds) = fx.prompt(&model)?;
        let mut cache = model.new_cache(1, ids.len())?;
        let logits = model.forward_embeds(&embeds, &mut cache)?.squeeze(0)?;
        assert_eq!(logits.dims(), want.dims());
        eprintln!(
            "{dispatch:?}: prefill logits max |Δ| = {:e}",
            max_abs_diff(&logits, want)?
        );
        for p in 0..ids.len() {
            let d = max_abs_diff(&logits.get(p)?, &want.get(p)?)?;
            assert!(d <= LOGITS_TOL, "{dispatch:?}: position {p} differs by {d}");
        }
    }
    Ok(())
}

#[test]
fn chunked_attention_and_split_prefill_give_the_same_logits() -> TestResult {
    let fx = load()?;
    let want = fx.tensor("logits")?;
    let mut model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    // Attention in query chunks of 16 rows (6 chunks for 89 positions).
    model.set_query_chunk(16);
    let mut cache = model.new_cache(1, ids.len())?;
    let chunked = model.forward_embeds(&embeds, &mut cache)?.squeeze(0)?;
    assert!(max_abs_diff(&chunked, want)? <= LOGITS_TOL);
    // The prompt prefilled in two calls (50 then 39 positions) through the cache.
    let mut cache = model.new_cache(1, ids.len())?;
    let a = model.forward_embeds(&embeds.narrow(1, 0, 50)?, &mut cache)?;
    let b = model.forward_embeds(&embeds.narrow(1, 50, ids.len() - 50)?, &mut cache)?;
    let split = Tensor::cat(&[a, b], 1)?.squeeze(0)?;
    assert!(max_abs_diff(&split, want)? <= LOGITS_TOL);
    Ok(())
}

#[test]
fn greedy_ids_match_with_the_kv_cache() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let want = fx.ids("greedy_ids")?;
    let mut streamed = Vec::new();
    let g = generate(
        &model,
        &embeds,
        &ids,
        &greedy_options(want.len(), None),
        |t| {
            streamed.push(t);
            Control::Continue
        },
    )?;
    assert_eq!(g.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!(g.stop, StopReason::MaxNewTokens);
    Ok(())
}

#[test]
fn greedy_ngram_ids_match_with_the_windowed_rule() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let want = fx.ids("greedy_ngram_ids")?;
    let whitelist: Vec<u32> =
        serde_json::from_str(fx.meta.get("whitelist").ok_or("metadata lacks whitelist")?)?;
    let rule = NoRepeatNgram::Windowed {
        ngram_size: fx.meta_usize("ngram_size")?,
        window_size: fx.meta_usize("window_size")?,
        whitelist,
    };
    let g = generate(
        &model,
        &embeds,
        &ids,
        &greedy_options(want.len(), Some(rule)),
        |_| Control::Continue,
    )?;
    assert_eq!(g.tokens, want);
    assert_ne!(
        g.tokens,
        fx.ids("greedy_ids")?,
        "the rule must change this continuation"
    );
    Ok(())
}

#[test]
fn cached_steps_equal_a_full_re_prefill() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let greedy = fx.ids("greedy_ids")?;
    let t = ids.len();
    let mut cache = model.new_cache(1, t + greedy.len())?;
    let mut logits = model.forward_embeds_last(&embeds, &mut cache)?;
    for (step, &tok) in greedy.iter().enumerate().take(40) {
        if [0usize, 1, 17, 39].contains(&step) {
            // Re-prefill prompt + the first `step` generated tokens from scratch.
            let gen_embeds = model.embed_ids(&greedy[..step])?.unsqueeze(0)?;
            let full = Tensor::cat(&[&embeds, &gen_embeds], 1)?;
            let mut fresh = model.new_cache(1, t + step)?;
            let again = model.forward_embeds_last(&full, &mut fresh)?;
            let d = max_abs_diff(&logits, &again)?;
            assert!(
                d <= LOGITS_TOL,
                "step {step}: cached and re-prefilled logits differ by {d}"
            );
        }
        logits = model.forward_embeds_last(&model.embed_ids(&[tok])?.unsqueeze(0)?, &mut cache)?;
    }
    assert_eq!(cache.len(), t + 40);
    Ok(())
}

#[test]
fn generation_stops_on_eos_callback_and_context_cap() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let greedy = fx.ids("greedy_ids")?;
    // EOS: pretend the third greedy token is EOS; it is not reported.
    let mut opts = greedy_options(64, None);
    opts.eos_token_id = Some(greedy[2]);
    let g = generate(&model, &embeds, &ids, &opts, |_| Control::Continue)?;
    assert_eq!(
        (g.tokens.as_slice(), g.stop),
        (&greedy[..2], StopReason::Eos)
    );
    // The callback cancels after 5 tokens.
    let mut n = 0;
    let g = generate(&model, &embeds, &ids, &greedy_options(64, None), |_| {
        n += 1;
        if n == 5 {
            Control::Stop
        } else {
            Control::Continue
        }
    })?;
    assert_eq!(
        (g.tokens.as_slice(), g.stop),
        (&greedy[..5], StopReason::Stopped)
    );
    // The context cap: 89 prompt positions + 7 = 96.
    let mut opts = greedy_options(64, None);
    opts.max_context = ids.len() + 7;
    let g = generate(&model, &embeds, &ids, &opts, |_| Control::Continue)?;
    assert_eq!(
        (g.tokens.as_slice(), g.stop),
        (&greedy[..7], StopReason::ContextFull)
    );
    // A prompt that fills the context is refused.
    opts.max_context = ids.len();
    let err = generate(&model, &embeds, &ids, &opts, |_| Control::Continue);
    assert!(matches!(err, Err(ModelError::ContextFull { .. })));
    Ok(())
}

#[test]
fn a_full_cache_is_an_error_before_any_write() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let mut cache = model.new_cache(1, ids.len() - 1)?;
    let err = model.forward_embeds(&embeds, &mut cache);
    assert!(matches!(
        err,
        Err(ModelError::ContextFull {
            requested: 89,
            capacity: 88
        })
    ));
    assert_eq!(cache.len(), 0);
    Ok(())
}

#[test]
fn missing_or_misshaped_tensors_are_named() -> TestResult {
    let fx = load()?;
    let check = |weights: HashMap<String, Tensor>, name: &str| -> TestResult {
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        match DeepseekOcrDecoder::new(&fx.cfg, vb) {
            Err(
                ModelError::MissingTensor { name: got } | ModelError::TensorShape { name: got, .. },
            ) => {
                assert_eq!(got, name)
            }
            Err(e) => return Err(format!("expected a weight error for {name}, got {e}").into()),
            Ok(_) => return Err(format!("loading without {name} succeeded").into()),
        }
        Ok(())
    };
    for name in [
        "model.layers.2.mlp.experts.3.down_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.2.mlp.shared_experts.gate_proj.weight",
        "lm_head.weight",
    ] {
        let mut w = fx.weights.clone();
        w.remove(name).ok_or(format!("fixture lacks {name}"))?;
        check(w, name)?;
    }
    let mut w = fx.weights.clone();
    w.insert(
        "model.layers.1.mlp.gate.weight".into(),
        Tensor::zeros((5, 64), DType::F32, &Device::Cpu)?,
    );
    check(w, "model.layers.1.mlp.gate.weight")?;
    Ok(())
}

#[test]
fn generate_text_streams_the_decoded_continuation() -> TestResult {
    let fx = load()?;
    let model = fx.model()?;
    let (ids, embeds) = fx.prompt(&model)?;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tokenizers/deepseek-v3/tokenizer.json");
    let tok = OcrTokenizer::from_file(&path, 0, 1)?;
    let mut pieces = Vec::new();
    let (text, g) = generate_text(
        &model,
        &tok,
        &embeds,
        &ids,
        &greedy_options(64, None),
        |piece| {
            pieces.push(piece.to_string());
            Control::Continue
        },
    )?;
    assert_eq!(g.tokens, fx.ids("greedy_ids")?);
    assert_eq!(text, tok.decode(&g.tokens)?);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.len() > 1, "text must arrive in pieces: {pieces:?}");
    Ok(())
}

//! The shipped model (`models/optimem-tiny`) in Rust equals the PyTorch reference on the same weights: one of our rendered
//! Small pages goes through preprocessing, the DeepEncoder and the decoder, and the prompt's logits (|Δ| ≤ 1e-3) and the
//! greedy continuation (identical ids) match `tests/fixtures/bundled/expected.safetensors`, written by
//! `tools/reference/make_bundled_fixture.py`. Re-run that script whenever the shipped weights change.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use optimem::model::generate::{GenerateOptions, NoRepeatNgram, Sampling, generate};
use optimem::model::{FREE_OCR_PROMPT, Image8, Mode, OcrModel};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32, candle_core::Error> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

#[test]
fn shipped_model_matches_the_reference() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = OcrModel::load(&root.join("models/optimem-tiny"), &Device::Cpu, DType::F32)?;
    let fx = candle_core::safetensors::load(
        root.join("tests/fixtures/bundled/expected.safetensors"),
        &Device::Cpu,
    )?;
    let get = |k: &str| fx.get(k).ok_or_else(|| format!("fixture lacks {k}"));

    let page = Image8::decode(&std::fs::read(
        root.join("tests/fixtures/bundled/page_small.png"),
    )?)?;
    let embeds = model.encode(&page, Mode::Small)?;
    // The trained projector's outputs reach |x| ≈ 760, so the embeddings are compared relative to their largest value
    // (f32 rounding of such values alone is ~1e-4 absolute); the logits below are compared absolutely.
    let want = get("image_embeds")?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let d = max_abs_diff(&embeds, want)? / scale;
    eprintln!("image embeddings max |Δ| / max |x| = {d:e}");
    assert!(d <= 1e-5, "image embeddings differ by {d} relative");

    let prompt = model
        .tokenizer
        .encode_prompt(FREE_OCR_PROMPT, &[embeds.dim(0)?])?;
    let want_ids: Vec<u32> = get("input_ids")?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    assert_eq!(prompt.ids, want_ids, "prompt ids");

    let input = model
        .decoder
        .prompt_embeds(&prompt.ids, &prompt.image_mask, Some(&embeds))?;
    let mut cache = model.decoder.new_cache(1, prompt.ids.len())?;
    let logits = model
        .decoder
        .forward_embeds(&input, &mut cache)?
        .squeeze(0)?;
    let t = logits.dim(0)?;
    let d = max_abs_diff(&logits.narrow(0, t - 4, 4)?, get("last_logits")?)?;
    eprintln!("prompt logits max |Δ| {d:e}");
    assert!(d <= 1e-3, "prompt logits differ by {d}");

    let steps = get("greedy_ids")?.dim(0)?;
    let eos = model.text.eos_token_id;
    let opts = GenerateOptions {
        max_new_tokens: steps,
        max_context: 8192,
        eos_token_id: Some(eos),
        sampling: Sampling::Greedy,
        no_repeat: Some(NoRepeatNgram::Windowed {
            ngram_size: 30,
            window_size: 90,
            whitelist: vec![],
        }),
    };
    let out = generate(&model.decoder, &input, &prompt.ids, &opts, |_| {
        optimem::model::generate::Control::Continue
    })?;
    let mut got = out.tokens.clone();
    if out.stop == optimem::model::generate::StopReason::Eos {
        got.push(eos); // the reference keeps the EOS id it stopped on
    }
    let want: Vec<u32> = get("greedy_ids")?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    assert_eq!(got, want, "greedy continuation");
    Ok(())
}

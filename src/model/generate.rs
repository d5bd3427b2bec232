//! Autoregressive generation over the decoder: greedy (or seeded top-p sampling), EOS, the
//! no-repeat n-gram guard, token streaming, and a hard cap on the total context (spec §5.6).
//!
//! The prompt is prefilled once from its embeddings (text with the vision tokens spliced in), then
//! each new token is embedded and fed through the same [`KvCache`], preallocated for exactly the
//! positions the request can use. [`generate`] reports every token to a callback that may stop the
//! run (a cancelled request); [`generate_text`] wraps it with incremental detokenisation so that a
//! caller receives text as soon as it is valid UTF-8.

use candle_core::Tensor;

use crate::model::ModelError;
use crate::model::decoder::{DeepseekOcrDecoder, KvCache};
use crate::model::tokenizer::{Detokenizer, OcrTokenizer};

mod ngram;
mod sampling;

pub use ngram::{NoRepeatNgram, banned_ngram_completions};
pub use sampling::Sampling;
use sampling::{SplitMix64, choose};

/// vLLM `max_model_len` in the official scripts: prompt plus output never exceed it (spec §9).
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// What [`generate`] needs besides the model and the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Hard cap on prompt + generated positions; also sizes the KV cache.
    pub max_context: usize,
    /// Generation stops when this id is chosen (it is not reported). `None` disables the stop.
    pub eos_token_id: Option<u32>,
    pub sampling: Sampling,
    pub no_repeat: Option<NoRepeatNgram>,
}

impl GenerateOptions {
    /// The official image-script settings (OCR-RUN-IMG): greedy, up to 8192 new tokens within a
    /// context of 8192, n-gram 30 over a window of 90 with `whitelist` (the `<td>`, `</td>` ids).
    pub fn ocr(eos_token_id: u32, whitelist: Vec<u32>) -> Self {
        Self {
            max_new_tokens: DEFAULT_MAX_CONTEXT,
            max_context: DEFAULT_MAX_CONTEXT,
            eos_token_id: Some(eos_token_id),
            sampling: Sampling::Greedy,
            no_repeat: Some(NoRepeatNgram::Windowed {
                ngram_size: 30,
                window_size: 90,
                whitelist,
            }),
        }
    }
}

/// The callback's answer after each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    MaxNewTokens,
    /// `max_context` reached before `max_new_tokens`.
    ContextFull,
    /// The callback returned [`Control::Stop`].
    Stopped,
}

/// The generated ids (EOS excluded) and why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Generates from `prompt_embeds` (`[1, T, hidden]`, e.g. [`DeepseekOcrDecoder::prompt_embeds`]).
/// `prompt_ids` are the T prompt ids; only the whole-sequence n-gram rule reads them (pass `&[]`
/// otherwise). `on_token` sees each id as it is chosen and may stop the run.
pub fn generate(
    model: &DeepseekOcrDecoder,
    prompt_embeds: &Tensor,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Control,
) -> Result<Generation, ModelError> {
    let _span = tracing::debug_span!("decode").entered();
    let (b, t, _) = prompt_embeds.dims3()?;
    if b != 1 {
        return Err(ModelError::Input {
            reason: format!("generate takes one sequence, got a batch of {b}"),
        });
    }
    if let Some(rule) = &opts.no_repeat {
        rule.validate()?;
        if matches!(rule, NoRepeatNgram::WholeSequence { .. }) && prompt_ids.len() != t {
            return Err(ModelError::Input {
                reason: format!(
                    "the whole-sequence n-gram rule needs the {t} prompt ids, got {}",
                    prompt_ids.len()
                ),
            });
        }
    }
    let max_pos = model.config().max_position_embeddings;
    if opts.max_context > max_pos {
        return Err(ModelError::Input {
            reason: format!(
                "max_context {} exceeds max_position_embeddings {max_pos}",
                opts.max_context
            ),
        });
    }
    if t >= opts.max_context {
        return Err(ModelError::ContextFull {
            requested: t + 1,
            capacity: opts.max_context,
        });
    }
    let room = opts.max_context - t;
    let budget = opts.max_new_tokens.min(room);
    let limit_stop = if opts.max_new_tokens <= room {
        StopReason::MaxNewTokens
    } else {
        StopReason::ContextFull
    };
    if budget == 0 {
        return Ok(Generation {
            tokens: Vec::new(),
            stop: limit_stop,
        });
    }
    // The last chosen token is never fed back, so T + budget - 1 positions suffice.
    let mut cache: KvCache = model.new_cache(1, t + budget - 1)?;
    let mut rng = SplitMix64(match opts.sampling {
        Sampling::TopP { seed, .. } => seed,
        Sampling::Greedy => 0,
    });

    let mut logits = model
        .forward_embeds_last(prompt_embeds, &mut cache)?
        .squeeze(0)?;
    let mut tokens = Vec::new();
    loop {
        let banned = match &opts.no_repeat {
            Some(rule) => rule.banned(prompt_ids, &tokens),
            None => Vec::new(),
        };
        let next = choose(&logits, &banned, &opts.sampling, &mut rng)?;
        if opts.eos_token_id == Some(next) {
            return Ok(Generation {
                tokens,
                stop: StopReason::Eos,
            });
        }
        tokens.push(next);
        if on_token(next) == Control::Stop {
            return Ok(Generation {
                tokens,
                stop: StopReason::Stopped,
            });
        }
        if tokens.len() == budget {
            return Ok(Generation {
                tokens,
                stop: limit_stop,
            });
        }
        let embeds = model.embed_ids(&[next])?.unsqueeze(0)?;
        logits = model.forward_embeds_last(&embeds, &mut cache)?.squeeze(0)?;
    }
}

/// [`generate`] with incremental detokenisation: `on_text` receives each new piece of text as soon
/// as it ends on a UTF-8 boundary, and may stop the run. Special tokens are kept in the text
/// (`<|ref|>`, `<|det|>`, as the official scripts print them); EOS is never emitted.
pub fn generate_text(
    model: &DeepseekOcrDecoder,
    tokenizer: &OcrTokenizer,
    prompt_embeds: &Tensor,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> Control,
) -> Result<(String, Generation), ModelError> {
    let mut detok: Detokenizer<'_> = tokenizer.detokenizer();
    let mut text = String::new();
    let mut failure = None;
    let generation = generate(model, prompt_embeds, prompt_ids, opts, |id| {
        match detok.push(id) {
            Ok(Some(piece)) => {
                text.push_str(&piece);
                on_text(&piece)
            }
            Ok(None) => Control::Continue,
            Err(e) => {
                failure = Some(e);
                Control::Stop
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(rest) = detok.finish()? {
        text.push_str(&rest);
        on_text(&rest);
    }
    Ok((text, generation))
}

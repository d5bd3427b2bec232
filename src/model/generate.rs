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
    // One option set: `generate_batch` refuses a prompt batch of any other size than 1.
    let mut out = generate_batch(
        model,
        prompt_embeds,
        prompt_ids,
        std::slice::from_ref(opts),
        |_, id| on_token(id),
    )?;
    out.pop().ok_or_else(|| ModelError::Input {
        reason: "generation returned no sequence".into(),
    })
}

/// How many new tokens a row may generate, and why it stops when it has: checks `opts` against the
/// model and a prompt of `t` positions.
fn row_budget(
    model: &DeepseekOcrDecoder,
    t: usize,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
) -> Result<(usize, StopReason), ModelError> {
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
    let limit_stop = if opts.max_new_tokens <= room {
        StopReason::MaxNewTokens
    } else {
        StopReason::ContextFull
    };
    Ok((opts.max_new_tokens.min(room), limit_stop))
}

/// Generates a batch of sequences that share their prompt length: `prompt_embeds` is `[B, T, hidden]`
/// (one row per sequence: the same prompt ids, each with its own image embeddings spliced in), `opts`
/// one per row (each its own cap, stop id, sampling and n-gram rule). The rows advance together, one
/// position per step, through one [`KvCache`] of batch B: at batch 1 a decode step reads every
/// weight for one token, at batch B for B tokens, which is why batching pays on a CPU whose decode is
/// bound by memory bandwidth. A row that has stopped is fed its stop id (its outputs are ignored)
/// until every row has stopped. `on_token(row, id)` sees each id as it is chosen and may stop that
/// row. Row `i` of the answer is exactly what [`generate`] gives for row `i` alone, up to the
/// floating-point summation order of the batched matrix products.
pub fn generate_batch(
    model: &DeepseekOcrDecoder,
    prompt_embeds: &Tensor,
    prompt_ids: &[u32],
    opts: &[GenerateOptions],
    mut on_token: impl FnMut(usize, u32) -> Control,
) -> Result<Vec<Generation>, ModelError> {
    let _span = tracing::debug_span!("decode", batch = opts.len()).entered();
    let (b, t, _) = prompt_embeds.dims3()?;
    if b != opts.len() || b == 0 {
        return Err(ModelError::Input {
            reason: format!("a batch of {b} prompts with {} option sets", opts.len()),
        });
    }
    let mut budgets = Vec::with_capacity(b);
    for o in opts {
        budgets.push(row_budget(model, t, prompt_ids, o)?);
    }
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
    // A row's stop reason once it has stopped.
    let mut stopped: Vec<Option<StopReason>> = budgets
        .iter()
        .map(|&(budget, limit)| (budget == 0).then_some(limit))
        .collect();
    let longest = budgets.iter().map(|r| r.0).max().unwrap_or(0);
    if longest > 0 {
        // The last chosen token is never fed back, so T + longest - 1 positions suffice.
        let mut cache: KvCache = model.new_cache(b, t + longest - 1)?;
        let mut rngs: Vec<SplitMix64> = opts
            .iter()
            .map(|o| {
                SplitMix64(match o.sampling {
                    Sampling::TopP { seed, .. } => seed,
                    Sampling::Greedy => 0,
                })
            })
            .collect();
        let mut logits = model.forward_embeds_last(prompt_embeds, &mut cache)?;
        // The batch rows still generating, in cache order: `logits` row j and cache row j belong to `live[j]`.
        // A row that stops leaves the cache before the next step, so the steps after it cost what the rows left
        // cost (every row has the same prompt length, so nothing else is per row).
        let mut live: Vec<usize> = (0..b).filter(|&i| stopped[i].is_none()).collect();
        if live.len() < b {
            cache.retain_rows(&live)?;
            logits = logits.index_select(
                &Tensor::new(index_u32(&live).as_slice(), logits.device())?,
                0,
            )?;
        }
        while !live.is_empty() {
            let mut feed = Vec::with_capacity(live.len());
            let mut kept = Vec::with_capacity(live.len());
            for (j, &i) in live.iter().enumerate() {
                let banned = match &opts[i].no_repeat {
                    Some(rule) => rule.banned(prompt_ids, &tokens[i]),
                    None => Vec::new(),
                };
                let next = choose(&logits.get(j)?, &banned, &opts[i].sampling, &mut rngs[i])?;
                if opts[i].eos_token_id == Some(next) {
                    stopped[i] = Some(StopReason::Eos);
                    continue;
                }
                tokens[i].push(next);
                if on_token(i, next) == Control::Stop {
                    stopped[i] = Some(StopReason::Stopped);
                } else if tokens[i].len() == budgets[i].0 {
                    stopped[i] = Some(budgets[i].1);
                } else {
                    feed.push(next);
                    kept.push(j);
                }
            }
            if kept.is_empty() {
                break;
            }
            if kept.len() < live.len() {
                cache.retain_rows(&kept)?;
                live = kept.iter().map(|&j| live[j]).collect();
            }
            let embeds = model.embed_ids(&feed)?.unsqueeze(1)?;
            logits = model.forward_embeds_last(&embeds, &mut cache)?;
        }
    }
    Ok(tokens
        .into_iter()
        .zip(stopped)
        .map(|(tokens, stop)| Generation {
            tokens,
            // Every row has stopped when the loop ends.
            stop: stop.unwrap_or(StopReason::MaxNewTokens),
        })
        .collect())
}

fn index_u32(rows: &[usize]) -> Vec<u32> {
    rows.iter().map(|&r| r as u32).collect()
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
    // One option set: `generate_batch` refuses a prompt batch of any other size than 1.
    let mut out = generate_text_batch(
        model,
        tokenizer,
        prompt_embeds,
        prompt_ids,
        std::slice::from_ref(opts),
        |_, piece| on_text(piece),
    )?;
    out.pop().ok_or_else(|| ModelError::Input {
        reason: "generation returned no sequence".into(),
    })
}

/// [`generate_batch`] with incremental detokenisation per row: `on_text(row, piece)` as in
/// [`generate_text`]. A row whose ids do not detokenise stops, and the batch answers its error.
pub fn generate_text_batch(
    model: &DeepseekOcrDecoder,
    tokenizer: &OcrTokenizer,
    prompt_embeds: &Tensor,
    prompt_ids: &[u32],
    opts: &[GenerateOptions],
    mut on_text: impl FnMut(usize, &str) -> Control,
) -> Result<Vec<(String, Generation)>, ModelError> {
    let mut detoks: Vec<Detokenizer<'_>> = opts.iter().map(|_| tokenizer.detokenizer()).collect();
    let mut texts = vec![String::new(); opts.len()];
    let mut failure = None;
    let generations = generate_batch(
        model,
        prompt_embeds,
        prompt_ids,
        opts,
        |i, id| match detoks[i].push(id) {
            Ok(Some(piece)) => {
                texts[i].push_str(&piece);
                on_text(i, &piece)
            }
            Ok(None) => Control::Continue,
            Err(e) => {
                failure = Some(e);
                Control::Stop
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut out = Vec::with_capacity(generations.len());
    for (i, ((mut text, generation), mut detok)) in
        texts.into_iter().zip(generations).zip(detoks).enumerate()
    {
        if let Some(rest) = detok.finish()? {
            text.push_str(&rest);
            on_text(i, &rest);
        }
        out.push((text, generation));
    }
    Ok(out)
}

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

/// vLLM `max_model_len` in the official scripts: prompt plus output never exceed it (spec §9).
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Argmax (temperature 0), what every official path uses.
    Greedy,
    /// Softmax at `temperature`, keep the smallest set of tokens whose probability reaches `top_p`,
    /// draw from it with a generator seeded by `seed` (the same seed gives the same text).
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// The repetition guard. Looping is the dominant failure of this model (spec §5.6): keep one on.
#[derive(Debug, Clone, PartialEq)]
pub enum NoRepeatNgram {
    /// vLLM's `NoRepeatNGramLogitsProcessor` of DeepSeek-OCR (OCR-NGRAM), over the generated ids
    /// only: once `ngram_size` ids exist, every id that followed an earlier occurrence of the last
    /// `ngram_size - 1` ids, at a start index within the last `window_size` ids, is banned unless
    /// whitelisted. Image script: 30 / 90 / {`<td>`, `</td>`}; PDF script: 20 / 50.
    Windowed {
        ngram_size: usize,
        window_size: usize,
        whitelist: Vec<u32>,
    },
    /// transformers' `no_repeat_ngram_size` (the HF `infer()` path, 20, or 35 in eval mode): no
    /// window, no whitelist, over the whole sequence, prompt included.
    WholeSequence { ngram_size: usize },
}

impl NoRepeatNgram {
    /// Ids banned as the next token, given the prompt and the ids generated so far.
    pub fn banned(&self, prompt: &[u32], generated: &[u32]) -> Vec<u32> {
        match self {
            NoRepeatNgram::Windowed {
                ngram_size,
                window_size,
                whitelist,
            } => {
                let mut banned = banned_ngram_completions(generated, *ngram_size, *window_size);
                banned.retain(|t| !whitelist.contains(t));
                banned
            }
            NoRepeatNgram::WholeSequence { ngram_size } => {
                let mut all = Vec::with_capacity(prompt.len() + generated.len());
                all.extend_from_slice(prompt);
                all.extend_from_slice(generated);
                banned_ngram_completions(&all, *ngram_size, usize::MAX)
            }
        }
    }

    fn validate(&self) -> Result<(), ModelError> {
        match self {
            // n = 1 is degenerate in the Python original (`ids[-0:]` is the whole list, so nothing
            // is ever banned); refuse it rather than silently differ.
            NoRepeatNgram::Windowed {
                ngram_size,
                window_size,
                ..
            } if *ngram_size < 2 || *window_size == 0 => Err(ModelError::Input {
                reason: format!(
                    "windowed no-repeat n-gram needs ngram_size >= 2 and window_size >= 1, got {ngram_size} / {window_size}"
                ),
            }),
            NoRepeatNgram::WholeSequence { ngram_size: 0 } => Err(ModelError::Input {
                reason: "no_repeat_ngram_size must be positive".into(),
            }),
            _ => Ok(()),
        }
    }
}

/// The core of both n-gram rules: for every start `i` in `[max(0, len - window), len - n]`, if
/// `ids[i..i+n-1]` equals the last `n - 1` ids, ban `ids[i+n-1]`. Nothing while `len < n`.
/// Returns the banned ids sorted, without duplicates.
pub fn banned_ngram_completions(ids: &[u32], n: usize, window: usize) -> Vec<u32> {
    let len = ids.len();
    if n == 0 || len < n {
        return Vec::new();
    }
    let prefix = &ids[len - (n - 1)..];
    let start = len.saturating_sub(window);
    let end = len - n + 1;
    let mut banned: Vec<u32> = (start..end)
        .filter(|&i| &ids[i..i + n - 1] == prefix)
        .map(|i| ids[i + n - 1])
        .collect();
    banned.sort_unstable();
    banned.dedup();
    banned
}

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

/// Picks the next id from `[vocab]` f32 logits with `banned` ids at -inf.
fn choose(
    logits: &Tensor,
    banned: &[u32],
    sampling: &Sampling,
    rng: &mut SplitMix64,
) -> Result<u32, ModelError> {
    if banned.is_empty() && *sampling == Sampling::Greedy {
        return Ok(logits.argmax(0)?.to_scalar::<u32>()?);
    }
    let mut v = logits.to_vec1::<f32>()?;
    for &id in banned {
        if let Some(x) = v.get_mut(id as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    match sampling {
        Sampling::Greedy => Ok(argmax_first(&v)),
        Sampling::TopP {
            temperature, top_p, ..
        } => {
            if *temperature <= 0.0 {
                return Ok(argmax_first(&v));
            }
            Ok(sample_top_p(&v, *temperature, *top_p, rng.next_f64()))
        }
    }
}

/// Index of the first maximum (torch's argmax tie rule).
fn argmax_first(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Nucleus sampling with a uniform draw `u` in [0, 1).
fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut n_keep = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p {
            n_keep = i + 1;
            break;
        }
    }
    let probs = &probs[..n_keep.max(1)];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = u * mass;
    for &(i, p) in probs {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    probs.last().map_or(0, |p| p.0 as u32)
}

/// SplitMix64: a tiny seeded generator, enough for reproducible sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windowed(n: usize, w: usize, wl: &[u32]) -> NoRepeatNgram {
        NoRepeatNgram::Windowed {
            ngram_size: n,
            window_size: w,
            whitelist: wl.to_vec(),
        }
    }

    #[test]
    fn windowed_rule_bans_the_completion_of_a_repeated_prefix() {
        // 3-grams: the prefix is the last two ids (1, 2); "1 2" was followed by 3 earlier.
        let ids = [1, 2, 3, 9, 1, 2];
        assert_eq!(windowed(3, 100, &[]).banned(&[], &ids), vec![3]);
        // Two earlier completions, both banned.
        let ids = [1, 2, 3, 1, 2, 4, 1, 2];
        assert_eq!(windowed(3, 100, &[]).banned(&[], &ids), vec![3, 4]);
        // Shorter than the n-gram: nothing.
        assert_eq!(
            windowed(3, 100, &[]).banned(&[], &[1, 2]),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn windowed_rule_respects_the_window_edge() {
        // len 8, window 6: start index max(0, 8 - 6) = 2, so the occurrence at i = 0 is out...
        let ids = [1, 2, 3, 7, 7, 7, 1, 2];
        assert_eq!(windowed(3, 6, &[]).banned(&[], &ids), Vec::<u32>::new());
        // ...and with window 8 the start is 0 and it is in.
        assert_eq!(windowed(3, 8, &[]).banned(&[], &ids), vec![3]);
        // The start index itself is included: an occurrence at i = len - window is seen.
        let ids = [5, 1, 2, 3, 7, 1, 2];
        assert_eq!(windowed(3, 6, &[]).banned(&[], &ids), vec![3]);
        assert_eq!(windowed(3, 5, &[]).banned(&[], &ids), Vec::<u32>::new());
    }

    #[test]
    fn windowed_rule_never_bans_whitelisted_ids() {
        let td = 128821;
        let ids = [td, 5, td, 6, td];
        assert_eq!(windowed(2, 90, &[]).banned(&[], &ids), vec![5, 6]);
        let ids = [5, td, 6, 5];
        assert_eq!(windowed(2, 90, &[]).banned(&[], &ids), vec![td]);
        assert_eq!(
            windowed(2, 90, &[td, 128822]).banned(&[], &ids),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn windowed_rule_ignores_the_prompt_and_whole_sequence_reads_it() {
        let prompt = [1, 2, 3];
        let generated = [1, 2];
        assert_eq!(
            windowed(3, 90, &[]).banned(&prompt, &generated),
            Vec::<u32>::new()
        );
        let whole = NoRepeatNgram::WholeSequence { ngram_size: 3 };
        assert_eq!(whole.banned(&prompt, &generated), vec![3]);
        // HF semantics for n = 1: every id seen so far is banned.
        let one = NoRepeatNgram::WholeSequence { ngram_size: 1 };
        assert_eq!(one.banned(&[4], &[2, 4]), vec![2, 4]);
    }

    #[test]
    fn degenerate_rules_are_refused() {
        assert!(windowed(1, 10, &[]).validate().is_err());
        assert!(windowed(3, 0, &[]).validate().is_err());
        assert!(
            NoRepeatNgram::WholeSequence { ngram_size: 0 }
                .validate()
                .is_err()
        );
        assert!(windowed(20, 50, &[]).validate().is_ok());
    }

    #[test]
    fn top_p_keeps_the_nucleus_and_is_reproducible() {
        // Probabilities ∝ e^l: with top_p 0.5 only the best token (p ≈ 0.84) survives.
        let logits = [0.0f32, 3.0, 1.0, f32::NEG_INFINITY];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_top_p(&logits, 1.0, 0.5, u), 1);
        }
        // With top_p 1 a draw near 1 reaches the least likely finite token; banned ids never.
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.9999), 0);
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        assert_eq!(
            (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert!((0..1000).all(|_| (0.0..1.0).contains(&a.next_f64())));
    }

    #[test]
    fn greedy_choice_skips_banned_ids() -> Result<(), ModelError> {
        let logits = Tensor::new(&[0.5f32, 2.0, 1.5], &candle_core::Device::Cpu)?;
        let mut rng = SplitMix64(0);
        assert_eq!(choose(&logits, &[], &Sampling::Greedy, &mut rng)?, 1);
        assert_eq!(choose(&logits, &[1], &Sampling::Greedy, &mut rng)?, 2);
        Ok(())
    }
}

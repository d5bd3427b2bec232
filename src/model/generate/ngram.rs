//! The no-repeat n-gram guards (spec §5.6): the windowed rule of DeepSeek-OCR's vLLM scripts
//! (OCR-NGRAM) and transformers' whole-sequence `no_repeat_ngram_size`.

use crate::model::ModelError;

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

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
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
}

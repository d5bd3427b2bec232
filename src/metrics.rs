//! The numbers we report, with one definition everywhere (DESIGN.md §6): text tokens, precision, word recall and the
//! compression ratio. `optimem bench fox` and `optimem compress --verify` both score OCR output here.
//!
//! - **Precision** = 1 − Levenshtein(pred, truth) / max(len(pred), len(truth)), over Unicode scalar values (Rust `char`s)
//!   after collapsing runs of whitespace into one space (leading and trailing runs are dropped, so a trailing newline in
//!   the decoder's output costs nothing). Two empty strings score 1.
//! - **Word recall** = the share of the truth's whitespace-separated words that the prediction also contains, each word of
//!   the prediction matching at most one of the truth (multiset intersection). An empty truth scores 1.
//! - **Text tokens** are counted with the DeepSeek-V3 tokenizer when its `tokenizer.json` is at hand, else with the model's
//!   own; [`TextTokenizer::name`] says which, and every report prints it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why text tokens could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The tokenizer file is missing or not a `tokenizers` JSON file; pass another with `--tokenizer`.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
}

/// The text with every run of whitespace replaced by one space and no whitespace at either end, as `char`s.
pub fn collapse_whitespace(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars());
    }
    out
}

/// Edit distance (insertions, deletions, substitutions; each costs 1) between two `char` sequences, in O(len(b)) memory.
pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    if a.is_empty() {
        return b.len();
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = diag + usize::from(ca != cb);
            diag = row[j + 1];
            row[j + 1] = sub.min(diag + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// One prediction scored against its truth.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// 1 − edit distance / longer length, in [0, 1].
    pub precision: f64,
    /// Share of the truth's words found in the prediction, in [0, 1].
    pub word_recall: f64,
    /// Levenshtein distance after whitespace collapsing.
    pub edit_distance: usize,
    /// Lengths in `char`s after whitespace collapsing.
    pub pred_chars: usize,
    pub truth_chars: usize,
}

impl Score {
    pub fn new(pred: &str, truth: &str) -> Self {
        let p = collapse_whitespace(pred);
        let t = collapse_whitespace(truth);
        let edit_distance = levenshtein(&p, &t);
        Self {
            precision: precision_from(edit_distance, p.len(), t.len()),
            word_recall: word_recall(pred, truth),
            edit_distance,
            pred_chars: p.len(),
            truth_chars: t.len(),
        }
    }

    /// Pools many scores into one as if their texts were one document: 1 − Σ distance / Σ longer length (long pages weigh
    /// more), and word recall weighted by the truth's length.
    pub fn pooled(scores: &[Score]) -> Option<Score> {
        if scores.is_empty() {
            return None;
        }
        let dist: usize = scores.iter().map(|s| s.edit_distance).sum();
        let longer: usize = scores.iter().map(|s| s.pred_chars.max(s.truth_chars)).sum();
        let truth: usize = scores.iter().map(|s| s.truth_chars).sum();
        let recall = if truth == 0 {
            1.0
        } else {
            scores
                .iter()
                .map(|s| s.word_recall * s.truth_chars as f64)
                .sum::<f64>()
                / truth as f64
        };
        Some(Score {
            precision: precision_from(dist, longer, 0),
            word_recall: recall,
            edit_distance: dist,
            pred_chars: scores.iter().map(|s| s.pred_chars).sum(),
            truth_chars: truth,
        })
    }
}

fn precision_from(distance: usize, len_a: usize, len_b: usize) -> f64 {
    let longer = len_a.max(len_b);
    if longer == 0 {
        1.0
    } else {
        1.0 - distance as f64 / longer as f64
    }
}

/// Precision as DESIGN.md §6 defines it.
pub fn precision(pred: &str, truth: &str) -> f64 {
    Score::new(pred, truth).precision
}

/// Word recall as DESIGN.md §6 and this module's doc define it.
pub fn word_recall(pred: &str, truth: &str) -> f64 {
    let mut available: HashMap<&str, usize> = HashMap::new();
    for w in pred.split_whitespace() {
        *available.entry(w).or_default() += 1;
    }
    let (mut total, mut found) = (0usize, 0usize);
    for w in truth.split_whitespace() {
        total += 1;
        if let Some(n) = available.get_mut(w).filter(|n| **n > 0) {
            *n -= 1;
            found += 1;
        }
    }
    if total == 0 {
        1.0
    } else {
        found as f64 / total as f64
    }
}

/// Compression ratio = text tokens / vision tokens.
pub fn compression_ratio(text_tokens: usize, vision_tokens: usize) -> f64 {
    if vision_tokens == 0 {
        f64::INFINITY
    } else {
        text_tokens as f64 / vision_tokens as f64
    }
}

/// Where the DeepSeek-V3 `tokenizer.json` (with the OCR tokens) lives in the repository (committed as `.zst`).
pub const DEEPSEEK_V3_TOKENIZER: &str = "assets/tokenizers/deepseek-v3/tokenizer.json";

/// The tokenizer that counts text tokens, with the name reports print.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
}

impl TextTokenizer {
    /// Loads `path`, or its zstd-compressed twin `path.zst` (how the DeepSeek-V3 file is committed).
    pub fn from_file(path: &Path, name: impl Into<String>) -> Result<Self, MetricsError> {
        let err = |reason: String| MetricsError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let bytes =
            crate::model::tokenizer::read_tokenizer_json(path).map_err(|e| err(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            name: name.into(),
        })
    }

    /// The DeepSeek-V3 tokenizer from `explicit`, else from [`DEEPSEEK_V3_TOKENIZER`] under the working directory or the
    /// source tree this binary was built from; when none exists, `model_dir/tokenizer.json` (the model's own).
    pub fn resolve(
        explicit: Option<&Path>,
        model_dir: Option<&Path>,
    ) -> Result<Self, MetricsError> {
        if let Some(p) = explicit {
            return Self::from_file(p, format!("{} (given)", p.display()));
        }
        let candidates = [
            PathBuf::from(DEEPSEEK_V3_TOKENIZER),
            Path::new(env!("CARGO_MANIFEST_DIR")).join(DEEPSEEK_V3_TOKENIZER),
        ];
        let present = |p: &PathBuf| {
            let mut zst = p.clone().into_os_string();
            zst.push(".zst");
            p.is_file() || Path::new(&zst).is_file()
        };
        if let Some(p) = candidates.iter().find(|p| present(p)) {
            return Self::from_file(p, format!("DeepSeek-V3 ({})", p.display()));
        }
        match model_dir {
            Some(dir) => {
                let p = dir.join("tokenizer.json");
                Self::from_file(&p, format!("the model's own ({})", p.display()))
            }
            None => Err(MetricsError::Tokenizer {
                path: PathBuf::from(DEEPSEEK_V3_TOKENIZER),
                reason: "not found, and no model directory to fall back on".into(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Text tokens of `text`, special tokens not added (`add_special_tokens=False`).
    pub fn count(&self, text: &str) -> Result<usize, MetricsError> {
        self.inner
            .encode(text, false)
            .map(|e| e.len())
            .map_err(|e| MetricsError::Tokenizer {
                path: PathBuf::from(&self.name),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn levenshtein_hand_examples() {
        assert_eq!(levenshtein(&chars("kitten"), &chars("sitting")), 3);
        assert_eq!(levenshtein(&chars("flaw"), &chars("lawn")), 2);
        assert_eq!(levenshtein(&chars(""), &chars("abc")), 3);
        assert_eq!(levenshtein(&chars("abc"), &chars("")), 3);
        assert_eq!(levenshtein(&chars(""), &chars("")), 0);
        // Unicode scalar values, not bytes: é (2 bytes) vs e is one substitution; 中文 vs 中国 one as well.
        assert_eq!(levenshtein(&chars("café"), &chars("cafe")), 1);
        assert_eq!(levenshtein(&chars("中文"), &chars("中国")), 1);
    }

    #[test]
    fn whitespace_runs_collapse() {
        assert_eq!(collapse_whitespace("  a \t\n b\n\n"), chars("a b"));
        assert_eq!(collapse_whitespace(" \n "), Vec::<char>::new());
        assert_eq!(precision("a  b\nc\n", "a b c"), 1.0);
    }

    #[test]
    fn precision_hand_examples() {
        // kitten/sitting: 3 edits over the longer 7 chars.
        assert!((precision("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
        assert_eq!(precision("", ""), 1.0);
        assert_eq!(precision("", "abc"), 0.0);
        assert_eq!(precision("abc", ""), 0.0);
        // 4 chars vs 4 chars, one substitution (ü vs u).
        assert!((precision("über", "uber") - 0.75).abs() < 1e-12);
        let s = Score::new("the cat  sat", "the cat sat down");
        assert_eq!(s.edit_distance, 5);
        assert_eq!((s.pred_chars, s.truth_chars), (11, 16));
        assert!((s.precision - (1.0 - 5.0 / 16.0)).abs() < 1e-12);
        assert!((s.word_recall - 0.75).abs() < 1e-12);
    }

    #[test]
    fn word_recall_counts_each_word_once() {
        assert!((word_recall("the the", "the the the") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(word_recall("x y z", ""), 1.0);
        assert_eq!(word_recall("", "a b"), 0.0);
        assert_eq!(word_recall("b a", "a b"), 1.0);
    }

    #[test]
    fn counts_with_the_committed_deepseek_v3_tokenizer() {
        let t = TextTokenizer::resolve(None, None).expect("assets/ tokenizer (zstd) loads");
        assert!(t.name().starts_with("DeepSeek-V3"), "{}", t.name());
        // The OCR tokens are single added tokens; prose is several.
        assert_eq!(t.count("<image>").expect("count"), 1);
        let n = t
            .count("Optical memory keeps the gist of old turns.")
            .expect("count");
        assert!((5..=15).contains(&n), "{n}");
        assert_eq!(t.count("").expect("count"), 0);
    }

    #[test]
    fn pooled_weighs_by_length() {
        let a = Score::new("abcd", "abcd"); // 0 of 4
        let b = Score::new("ab", "xy"); // 2 of 2
        let p = Score::pooled(&[a, b]).expect("two scores");
        assert!((p.precision - (1.0 - 2.0 / 6.0)).abs() < 1e-12);
        assert!(Score::pooled(&[]).is_none());
        assert!((compression_ratio(1000, 100) - 10.0).abs() < 1e-12);
    }
}

//! The Fox report: the paper's Table 2, our per-page results and per-bucket means, as markdown and as JSON for
//! regression tracking.

use std::fmt::Write as _;

use optimem_renderer::Tier;
use serde::{Deserialize, Serialize};

use crate::metrics::{Score, compression_ratio};

/// One row of the paper's Table 2 (spec §7): precision (%) and compression (×) at 64 and 100 vision tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaperRow {
    pub bucket: (usize, usize),
    pub tiny_precision: f64,
    pub tiny_compression: f64,
    pub small_precision: f64,
    pub small_compression: f64,
    pub pages: usize,
}

const fn row(lo: usize, tp: f64, tc: f64, sp: f64, sc: f64, pages: usize) -> PaperRow {
    PaperRow {
        bucket: (lo, lo + 100),
        tiny_precision: tp,
        tiny_compression: tc,
        small_precision: sp,
        small_compression: sc,
        pages,
    }
}

/// DeepSeek-OCR paper, Table 2: Fox English pages, prompt "Free OCR.".
pub const PAPER_TABLE: [PaperRow; 7] = [
    row(600, 96.5, 10.5, 98.5, 6.7, 7),
    row(700, 93.8, 11.8, 97.3, 7.5, 28),
    row(800, 83.8, 13.2, 96.8, 8.5, 28),
    row(900, 85.9, 15.1, 96.8, 9.7, 14),
    row(1000, 79.3, 16.5, 91.5, 10.6, 11),
    row(1100, 76.4, 17.7, 89.8, 11.3, 8),
    row(1200, 59.1, 19.7, 87.1, 12.6, 4),
];

impl PaperRow {
    /// The paper's row for a bucket, if it reports one (600–1,300 text tokens).
    pub fn for_bucket(bucket: (usize, usize)) -> Option<&'static PaperRow> {
        PAPER_TABLE.iter().find(|r| r.bucket == bucket)
    }

    /// (precision %, compression ×) at a mode (Tiny and Small only).
    pub fn at(&self, tier: Tier) -> Option<(f64, f64)> {
        match tier {
            Tier::Tiny => Some((self.tiny_precision, self.tiny_compression)),
            Tier::Small => Some((self.small_precision, self.small_compression)),
            _ => None,
        }
    }
}

/// The paper's (precision %, compression ×) for a bucket and mode, where it reports one (Tiny and Small, 600–1,300
/// text tokens).
pub fn paper_row(bucket: (usize, usize), tier: Tier) -> Option<(f64, f64)> {
    PaperRow::for_bucket(bucket)?.at(tier)
}

/// One page decoded at one mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageResult {
    pub mode: Tier,
    pub vision_tokens: u32,
    pub score: Score,
    pub generated_tokens: usize,
    pub prediction: String,
}

/// One page and its results at every mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageRow {
    pub bucket: (usize, usize),
    pub source: String,
    pub first_word: usize,
    pub text_tokens: usize,
    pub chars: usize,
    pub font_size: f32,
    pub results: Vec<PageResult>,
}

/// Our means over a bucket's pages at one mode, with the paper's beside them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketCell {
    pub mode: Tier,
    pub vision_tokens: u32,
    /// Mean of the pages' precision, in [0, 1].
    pub precision: f64,
    pub word_recall: f64,
    /// Mean text tokens / vision tokens.
    pub compression: f64,
    pub paper_precision: Option<f64>,
    pub paper_compression: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketRow {
    pub bucket: (usize, usize),
    pub pages: usize,
    /// The paper's page count, for its buckets (600–1,300 text tokens).
    pub paper_pages: Option<usize>,
    pub mean_text_tokens: f64,
    pub cells: Vec<BucketCell>,
}

/// Reports written before `--max-font-size` existed fitted every page up to the top of the range.
fn default_max_font_size() -> f32 {
    super::FONT_SIZE_RANGE.1
}

/// Everything one run measured, written as `fox.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoxReport {
    pub model_dir: String,
    pub model_id: String,
    /// Which tokenizer counted text tokens (DESIGN.md §6).
    pub counting_tokenizer: String,
    /// The model's own tokenizer decodes.
    pub decoding_tokenizer: String,
    pub text_source: String,
    /// The text ran out and pages were cut from its beginning again.
    pub text_reused: bool,
    pub pages_per_bucket: usize,
    /// The largest body font size a page was set at (each page: the largest that fits it, up to this).
    #[serde(default = "default_max_font_size")]
    pub max_font_size: f32,
    pub max_new_tokens: usize,
    pub device: String,
    pub modes: Vec<Tier>,
    pub buckets: Vec<BucketRow>,
    pub pages: Vec<PageRow>,
}

/// Per-bucket means of `pages` at each of `modes`, buckets in ascending order.
pub fn aggregate(pages: &[PageRow], modes: &[Tier]) -> Vec<BucketRow> {
    let mut buckets: Vec<(usize, usize)> = pages.iter().map(|p| p.bucket).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let mut out = Vec::new();
    for bucket in buckets {
        let in_bucket: Vec<&PageRow> = pages.iter().filter(|p| p.bucket == bucket).collect();
        let paper_row = PaperRow::for_bucket(bucket);
        let n = in_bucket.len() as f64;
        let mean_text_tokens = in_bucket.iter().map(|p| p.text_tokens as f64).sum::<f64>() / n;
        let cells = modes
            .iter()
            .map(|&mode| {
                let rs: Vec<(&PageRow, &PageResult)> = in_bucket
                    .iter()
                    .filter_map(|p| p.results.iter().find(|r| r.mode == mode).map(|r| (*p, r)))
                    .collect();
                let k = rs.len().max(1) as f64;
                let paper = paper_row.and_then(|r| r.at(mode));
                BucketCell {
                    mode,
                    vision_tokens: mode.vision_tokens(),
                    precision: rs.iter().map(|(_, r)| r.score.precision).sum::<f64>() / k,
                    word_recall: rs.iter().map(|(_, r)| r.score.word_recall).sum::<f64>() / k,
                    compression: rs
                        .iter()
                        .map(|(p, r)| compression_ratio(p.text_tokens, r.vision_tokens as usize))
                        .sum::<f64>()
                        / k,
                    paper_precision: paper.map(|p| p.0),
                    paper_compression: paper.map(|p| p.1),
                }
            })
            .collect();
        out.push(BucketRow {
            bucket,
            pages: in_bucket.len(),
            paper_pages: paper_row.map(|r| r.pages),
            mean_text_tokens,
            cells,
        });
    }
    out
}

impl FoxReport {
    /// The report as markdown: a header naming the model, text and tokenizers, then the Table 2 layout with ours beside
    /// the paper's.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Fox-style compression benchmark\n");
        let _ = writeln!(s, "- model: `{}` ({})", self.model_dir, self.model_id);
        let _ = writeln!(
            s,
            "- text: {}{}",
            self.text_source,
            if self.text_reused {
                " (text ran out and was reused)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "- text tokens counted with: {}", self.counting_tokenizer);
        let _ = writeln!(
            s,
            "- decoded with: {} and the prompt `<image>\\nFree OCR.`, greedy, at most {} new tokens",
            self.decoding_tokenizer, self.max_new_tokens
        );
        let _ = writeln!(
            s,
            "- pages per bucket: {} (the paper's counts in parentheses); device: {}",
            self.pages_per_bucket, self.device
        );
        let _ = writeln!(
            s,
            "- each page in the largest type that fits it, up to font size {}",
            self.max_font_size
        );
        let _ = writeln!(
            s,
            "- precision = 1 − Levenshtein / longer length over Unicode scalars after collapsing whitespace (DESIGN.md §6); compression = text tokens / vision tokens\n"
        );
        let mut head = String::from("| Text tokens | Pages |");
        let mut rule = String::from("|---|---|");
        for m in &self.modes {
            let _ = write!(
                head,
                " {m} ({} vis. tok.): precision / word recall / compression | paper |",
                m.vision_tokens()
            );
            rule.push_str("---|---|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for b in &self.buckets {
            let paper_pages = b.paper_pages.map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = write!(
                s,
                "| {}–{} | {}{paper_pages} |",
                b.bucket.0, b.bucket.1, b.pages
            );
            for c in &b.cells {
                let paper = match (c.paper_precision, c.paper_compression) {
                    (Some(p), Some(r)) => format!("{p:.1}% / {r:.1}×"),
                    _ => "—".into(),
                };
                let _ = write!(
                    s,
                    " {:.1}% / {:.1}% / {:.1}× | {paper} |",
                    100.0 * c.precision,
                    100.0 * c.word_recall,
                    c.compression
                );
            }
            s.push('\n');
        }
        let all: Vec<Score> = self
            .pages
            .iter()
            .flat_map(|p| p.results.iter().map(|r| r.score))
            .collect();
        if let Some(p) = Score::pooled(&all) {
            let _ = writeln!(
                s,
                "\nAll pages and modes pooled: precision {:.1}%, word recall {:.1}%.",
                100.0 * p.precision,
                100.0 * p.word_recall
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(mode: Tier, pred: &str, truth: &str) -> PageResult {
        PageResult {
            mode,
            vision_tokens: mode.vision_tokens(),
            score: Score::new(pred, truth),
            generated_tokens: 0,
            prediction: pred.into(),
        }
    }

    #[test]
    fn aggregate_means_pages_and_attaches_the_paper() {
        let page = |tokens, pred| PageRow {
            bucket: (600, 700),
            source: "x".into(),
            first_word: 0,
            text_tokens: tokens,
            chars: 4,
            font_size: 10.0,
            results: vec![
                result(Tier::Tiny, pred, "abcd"),
                result(Tier::Base, pred, "abcd"),
            ],
        };
        let rows = aggregate(
            &[page(640, "abcd"), page(660, "abxx")],
            &[Tier::Tiny, Tier::Base],
        );
        assert_eq!(rows.len(), 1);
        let tiny = &rows[0].cells[0];
        assert!((tiny.precision - 0.75).abs() < 1e-12);
        assert!((tiny.compression - 650.0 / 64.0).abs() < 1e-12);
        assert_eq!(tiny.paper_precision, Some(96.5));
        assert_eq!(rows[0].cells[1].paper_precision, None);
        assert_eq!(rows[0].paper_pages, Some(7));
        assert!((rows[0].mean_text_tokens - 650.0).abs() < 1e-12);
    }
}

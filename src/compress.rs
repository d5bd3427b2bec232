//! `optimem compress`: a chat log or plain text → page PNGs at the tiers the memory layer's [`TierPolicy`] gives them, a
//! manifest, and a compression report (text tokens, vision tokens per tier, ratio, bytes), optionally verified by OCR.
//!
//! The policy is the memory layer's own: page ranks count from the newest page (rank 0 = the last page of the input),
//! exactly as Remember and Age rank a scope's pages. This module parses the `--policy` spelling and does the arithmetic;
//! the binary does the file work.

use std::fmt::Write as _;

use optimem_renderer::{Span, Tier};
use serde::{Deserialize, Serialize};

use crate::memory::TierPolicy;
use crate::metrics::{Score, compression_ratio};

/// Why a compress request is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The `--policy` text is malformed; the message shows the expected form.
    #[error(
        "policy {text:?}: {reason} (expected e.g. base:2,small:8,tiny: tier:count bands newest first, then the tier of every older page)"
    )]
    BadPolicy { text: String, reason: String },
}

/// The DeepSeek-OCR projector's output width (`n_embed` 1280), used for token bytes when no model config is at hand.
pub const DEFAULT_HIDDEN_SIZE: usize = 1280;

/// Parses `tier:count,…,tier` into a [`TierPolicy`]: each `tier:count` band takes the next `count` pages (newest
/// first), and the last item, a bare tier, takes every older page.
pub fn parse_policy(text: &str) -> Result<TierPolicy, CompressError> {
    let bad = |reason: String| CompressError::BadPolicy {
        text: text.to_owned(),
        reason,
    };
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    let (last, bands) = items.split_last().ok_or_else(|| bad("empty".into()))?;
    let tier = |s: &str| s.parse::<Tier>().map_err(|e| bad(e.to_string()));
    let mut out = Vec::with_capacity(bands.len());
    for item in bands {
        let (t, n) = item.split_once(':').ok_or_else(|| {
            bad(format!(
                "{item:?} needs a page count (tier:count); only the last item is bare"
            ))
        })?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("{n:?} is not a page count")))?;
        if count == 0 {
            return Err(bad(format!("{item:?} covers no pages")));
        }
        out.push((count, tier(t.trim())?));
    }
    if last.contains(':') {
        return Err(bad(format!(
            "the last item {last:?} must be a bare tier (it covers every older page)"
        )));
    }
    Ok(TierPolicy {
        bands: out,
        rest: tier(last)?,
    })
}

/// The tier of each of `pages` pages in input order: the last page is the newest (rank 0).
pub fn tiers_for_pages(pages: usize, policy: &TierPolicy) -> Vec<Tier> {
    (0..pages)
        .map(|i| policy.tier_for_rank(pages - 1 - i))
        .collect()
}

/// One page of the output directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageEntry {
    pub index: usize,
    pub file: String,
    pub tier: Tier,
    /// Recency rank within the input (0 = newest).
    pub rank: usize,
    pub pixels: u32,
    pub vision_tokens: u32,
    /// Embeddings the decoder is fed (layout newlines and separator included).
    pub embeddings: u32,
    /// Which turns (message index) and byte ranges of them the page shows.
    pub spans: Vec<Span>,
    pub text_bytes: usize,
    pub text_tokens: usize,
    pub png_bytes: usize,
    /// Stored tokens at f16: embeddings × hidden size × 2 bytes.
    pub token_bytes_f16: usize,
    /// OCR of the page at its tier against its text, with `--verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Score>,
}

/// Totals for one tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TierTotals {
    pub tier: Tier,
    pub pages: usize,
    pub text_tokens: usize,
    pub vision_tokens: usize,
    pub compression_ratio: f64,
}

/// The report written as `report.json` (and `report.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompressReport {
    pub counting_tokenizer: String,
    pub policy: String,
    pub pages: usize,
    pub text_bytes: usize,
    pub text_tokens: usize,
    pub vision_tokens: usize,
    pub compression_ratio: f64,
    pub per_tier: Vec<TierTotals>,
    pub hidden_size: usize,
    /// Where the hidden size came from (a model's config.json or the DeepSeek-OCR default).
    pub hidden_size_from: String,
    pub token_bytes_f16: usize,
    pub png_bytes: usize,
    /// Raw 8-bit grayscale rasters (pixels²), what the store would keep to re-encode.
    pub raster_bytes: usize,
    /// OCR precision and word recall over all pages pooled, with `--verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_overall: Option<Score>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_model: Option<String>,
}

impl CompressReport {
    /// Sums the page entries.
    pub fn new(
        pages: &[PageEntry],
        policy: &str,
        counting_tokenizer: &str,
        hidden_size: usize,
        hidden_size_from: &str,
    ) -> Self {
        let text_tokens: usize = pages.iter().map(|p| p.text_tokens).sum();
        let vision_tokens: usize = pages.iter().map(|p| p.vision_tokens as usize).sum();
        let mut per_tier: Vec<TierTotals> = Vec::new();
        for t in Tier::ALL {
            let of: Vec<&PageEntry> = pages.iter().filter(|p| p.tier == t).collect();
            if of.is_empty() {
                continue;
            }
            let tt = of.iter().map(|p| p.text_tokens).sum();
            let vt = of.iter().map(|p| p.vision_tokens as usize).sum();
            per_tier.push(TierTotals {
                tier: t,
                pages: of.len(),
                text_tokens: tt,
                vision_tokens: vt,
                compression_ratio: compression_ratio(tt, vt),
            });
        }
        let scores: Vec<Score> = pages.iter().filter_map(|p| p.verify).collect();
        Self {
            counting_tokenizer: counting_tokenizer.to_owned(),
            policy: policy.to_owned(),
            pages: pages.len(),
            text_bytes: pages.iter().map(|p| p.text_bytes).sum(),
            text_tokens,
            vision_tokens,
            compression_ratio: compression_ratio(text_tokens, vision_tokens),
            per_tier,
            hidden_size,
            hidden_size_from: hidden_size_from.to_owned(),
            token_bytes_f16: pages.iter().map(|p| p.token_bytes_f16).sum(),
            png_bytes: pages.iter().map(|p| p.png_bytes).sum(),
            raster_bytes: pages.iter().map(|p| (p.pixels as usize).pow(2)).sum(),
            verify_overall: Score::pooled(&scores),
            verify_model: None,
        }
    }

    pub fn markdown(&self, pages: &[PageEntry]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# optimem compress\n");
        let _ = writeln!(
            s,
            "- policy: `{}`; text tokens counted with {}",
            self.policy, self.counting_tokenizer
        );
        let _ = writeln!(
            s,
            "- {} page(s): {} text tokens → {} vision tokens, compression {:.2}×",
            self.pages, self.text_tokens, self.vision_tokens, self.compression_ratio
        );
        let ratio = |a: usize| {
            if self.text_bytes == 0 {
                f64::NAN
            } else {
                a as f64 / self.text_bytes as f64
            }
        };
        let _ = writeln!(
            s,
            "- bytes: text {} · vision tokens at f16 {} ({:.1}× the text; hidden size {} from {}) · PNG {} ({:.1}×) · raw rasters {} ({:.1}×)",
            self.text_bytes,
            self.token_bytes_f16,
            ratio(self.token_bytes_f16),
            self.hidden_size,
            self.hidden_size_from,
            self.png_bytes,
            ratio(self.png_bytes),
            self.raster_bytes,
            ratio(self.raster_bytes)
        );
        if let (Some(v), Some(m)) = (&self.verify_overall, &self.verify_model) {
            let _ = writeln!(
                s,
                "- verified with {m}: precision {:.1}%, word recall {:.1}% (all pages pooled)",
                100.0 * v.precision,
                100.0 * v.word_recall
            );
        }
        let _ = writeln!(
            s,
            "\n| Tier | Pages | Text tokens | Vision tokens | Compression |\n|---|---|---|---|---|"
        );
        for t in &self.per_tier {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2}× |",
                t.tier, t.pages, t.text_tokens, t.vision_tokens, t.compression_ratio
            );
        }
        let _ = writeln!(
            s,
            "\n| Page | Tier | Text tokens | Vision tokens | Compression | Precision |\n|---|---|---|---|---|---|"
        );
        for p in pages {
            let prec = p
                .verify
                .map_or("—".to_owned(), |v| format!("{:.1}%", 100.0 * v.precision));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2}× | {prec} |",
                p.file,
                p.tier,
                p.text_tokens,
                p.vision_tokens,
                compression_ratio(p.text_tokens, p.vision_tokens as usize)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_like_the_memory_default() {
        let p = parse_policy("base:2,small:8,tiny").expect("valid");
        assert_eq!(p, TierPolicy::default());
        let p = parse_policy(" tiny ").expect("valid");
        assert_eq!(p.bands, vec![]);
        assert_eq!(p.rest, Tier::Tiny);
        for bad in [
            "",
            "base:2",
            "base,tiny",
            "base:x,tiny",
            "base:0,tiny",
            "huge:1,tiny",
            "base:2,huge",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn newest_page_is_rank_zero() {
        let p = parse_policy("base:1,small:2,tiny").expect("valid");
        assert_eq!(
            tiers_for_pages(5, &p),
            vec![Tier::Tiny, Tier::Tiny, Tier::Small, Tier::Small, Tier::Base]
        );
        assert_eq!(tiers_for_pages(1, &p), vec![Tier::Base]);
        assert!(tiers_for_pages(0, &p).is_empty());
    }
}

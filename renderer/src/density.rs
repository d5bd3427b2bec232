//! Text density: how much text a page holds, and the font size that gives a target compression ratio at a tier.
//!
//! Compression ratio = text tokens / vision tokens (DESIGN.md §6). A page's text capacity is measured, not guessed: a fixed
//! English sample is laid out at the candidate font size and the characters that land on the first page are counted. Text
//! tokens follow from the tokenizer's characters-per-token on the user's text (about 4.2 for English prose with the DeepSeek
//! tokenizer; measure yours with `optimem bench fox`).

use crate::layout::{Document, LayoutConfig, Layouter, paginate};
use crate::tier::Tier;

/// Original English prose used only to measure capacity (no external text is embedded).
pub const SAMPLE_PROSE: &str = "Memory for an agent is not a transcript but a working record: what was asked, what was tried, \
what failed and why, which files changed, and what the user said they wanted next. Most of it is read rarely and never \
verbatim, yet losing it makes the agent repeat mistakes. Rendering old turns onto pages and keeping only a few vision \
tokens per page trades exactness for room, the way a person remembers the gist of last week's meeting but the exact words \
of the last minute. The newest pages stay sharp; older pages are stored at lower resolution and decoded with more errors, \
and the source text can still be kept beside them when an exact answer matters. ";

/// Characters of typical prose that fit on one page with this layout.
pub fn chars_per_page(config: &LayoutConfig) -> Result<usize, crate::RenderError> {
    let mut layouter = Layouter::new(config.clone())?;
    let mut text = String::new();
    // Enough text to overflow any sensible page: a 4-unit font on a 1024 canvas holds about 60k characters.
    while text.len() < 80_000 {
        text.push_str(SAMPLE_PROSE);
    }
    let lines = layouter.lines(Document::Text(&text));
    let pages = paginate(lines, config);
    Ok(pages.first().map_or(0, |p| {
        p.spans
            .iter()
            .map(|s| text[s.start..s.end].chars().count())
            .sum()
    }))
}

/// The font size at which a page of typical prose reaches `ratio` text tokens per vision token at `tier`.
/// Capacity falls monotonically with the font size, so a bisection over 4…64 logical units finds it.
pub fn font_size_for_ratio(
    tier: Tier,
    ratio: f64,
    chars_per_token: f64,
    base: &LayoutConfig,
) -> Result<f32, crate::RenderError> {
    if !(ratio.is_finite() && ratio > 0.0 && chars_per_token.is_finite() && chars_per_token > 0.0) {
        return Err(crate::RenderError::BadLayout(format!(
            "ratio {ratio} and chars/token {chars_per_token} must be positive"
        )));
    }
    let target_chars = ratio * f64::from(tier.vision_tokens()) * chars_per_token;
    let capacity = |fs: f32| {
        chars_per_page(&LayoutConfig {
            font_size: fs,
            ..base.clone()
        })
    };
    let (mut lo, mut hi) = (4.0f32, 64.0f32);
    if (capacity(lo)? as f64) < target_chars {
        return Err(crate::RenderError::BadLayout(format!(
            "ratio {ratio} needs more text than a page can hold"
        )));
    }
    for _ in 0..20 {
        let mid = (lo + hi) / 2.0;
        if (capacity(mid)? as f64) >= target_chars {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_page_holds_about_a_fox_page() {
        // Fox pages hold 600–1,300 DeepSeek tokens; at ~4.2 chars/token that is 2,500–5,500 characters.
        let n = chars_per_page(&LayoutConfig::default()).expect("layout");
        assert!(
            (2_500..=5_500).contains(&n),
            "{n} characters per default page"
        );
    }

    #[test]
    fn bigger_font_means_fewer_characters() {
        let small = chars_per_page(&LayoutConfig {
            font_size: 12.0,
            ..Default::default()
        })
        .expect("layout");
        let big = chars_per_page(&LayoutConfig {
            font_size: 24.0,
            ..Default::default()
        })
        .expect("layout");
        assert!(small > 2 * big, "{small} vs {big}");
    }

    #[test]
    fn solved_font_size_reaches_the_ratio() {
        let base = LayoutConfig::default();
        let fs = font_size_for_ratio(Tier::Small, 10.0, 4.2, &base).expect("solvable");
        let chars = chars_per_page(&LayoutConfig {
            font_size: fs,
            ..base.clone()
        })
        .expect("layout") as f64;
        let ratio = chars / 4.2 / 100.0;
        assert!(
            (9.5..11.5).contains(&ratio),
            "font {fs} gives ratio {ratio}"
        );
        assert!(font_size_for_ratio(Tier::Small, 0.0, 4.2, &base).is_err());
    }
}

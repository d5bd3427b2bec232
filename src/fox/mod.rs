//! The Fox-style compression benchmark behind `optimem bench fox` (DESIGN.md §6, the paper's Table 2): pages of held-out
//! prose with 600–1,300 text tokens (other ranges with `--buckets`), encoded at 64 (Tiny) and 100 (Small) vision tokens, decoded with `<image>\nFree OCR.`,
//! precision and word recall per bucket of 100 text tokens, beside the paper's numbers.
//!
//! # Layout
//! - [`pages`]: the corpus, the buckets, cutting pages to a token count and fitting each on one page.
//! - [`report`]: the paper's table, our per-bucket aggregates, markdown and JSON.
//! - [`plot`]: precision against compression ratio as a PNG, the paper's curves drawn in.

pub mod pages;
pub mod plot;
pub mod report;

use optimem_renderer::Tier;

use crate::engine::{mode_for, page_image};
use crate::metrics::Score;
use crate::model::OcrModel;
use crate::model::generate::Control;
pub use pages::{
    Corpus, FONT_SIZE_RANGE, FoxPage, PAPER_BUCKETS, bucket_of, build_pages, check_max_font_size,
    parse_buckets,
};
pub use report::{FoxReport, PageResult, PageRow, paper_row};

/// What can stop the benchmark; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FoxError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The text source gives no usable pages; pass more prose with `--text`.
    #[error("text source: {0}")]
    NoText(String),
    #[error(transparent)]
    Render(#[from] optimem_renderer::RenderError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// `--max-font-size` outside the sizes a page is fitted at.
    #[error(
        "--max-font-size {0}: must be a number from {min} to {max} (the body font size on the 1024-unit canvas)",
        min = FONT_SIZE_RANGE.0,
        max = FONT_SIZE_RANGE.1
    )]
    BadFontSize(f32),
    /// Drawing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
}

/// Settings of one run, recorded in the report.
#[derive(Clone, Debug)]
pub struct FoxConfig {
    pub tiers: Vec<Tier>,
    pub pages_per_bucket: usize,
    pub max_new_tokens: usize,
}

/// Encodes and decodes every page at every tier; `tick` is called after each OCR (for a progress bar).
pub fn run(
    model: &OcrModel,
    cfg: &FoxConfig,
    pages: &[FoxPage],
    base: &optimem_renderer::LayoutConfig,
    mut tick: impl FnMut(),
) -> Result<Vec<PageRow>, FoxError> {
    let opts = model.ocr_options(cfg.max_new_tokens);
    let mut rows = Vec::with_capacity(pages.len());
    for p in pages {
        let mut renderer = optimem_renderer::Renderer::new(optimem_renderer::LayoutConfig {
            font_size: p.font_size,
            ..base.clone()
        })?;
        let mut results = Vec::with_capacity(cfg.tiers.len());
        for &tier in &cfg.tiers {
            let img = page_image(&renderer.rasterize(&p.page, tier))?;
            let (text, generation) = model.ocr(
                &img,
                mode_for(tier),
                crate::model::FREE_OCR_PROMPT,
                &opts,
                |_| Control::Continue,
            )?;
            results.push(PageResult {
                mode: tier,
                vision_tokens: tier.vision_tokens(),
                score: Score::new(&text, &p.text),
                generated_tokens: generation.tokens.len(),
                prediction: text,
            });
            tick();
        }
        rows.push(PageRow {
            bucket: p.bucket,
            source: p.source.clone(),
            first_word: p.first_word,
            text_tokens: p.text_tokens,
            chars: p.text.chars().count(),
            font_size: p.font_size,
            results,
        });
    }
    Ok(rows)
}

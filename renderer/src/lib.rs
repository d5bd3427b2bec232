//! optimem-renderer: text and chat turns → laid-out pages → grayscale rasters at DeepSeek-OCR resolutions.
//!
//! This crate knows nothing of models, storage or gRPC. It turns what an agent said into the page images the DeepEncoder reads.
//!
//! # Layout
//! - [`fonts`]: the embedded faces (no system fonts, so pixels are identical on every machine).
//! - [`layout`]: shaping and line breaking with cosmic-text on a fixed logical canvas; pagination; the spans of input each page shows.
//! - [`raster`]: glyph outlines → cached anti-aliased masks → an 8-bit grayscale page at any tier.
//! - [`resample`]: Pillow-compatible antialiased resizing and [`downsample`], the "far blurry" ageing step.
//! - [`tier`]: the resolution modes (Tiny 512, Small 640, Base 1024, Large 1280, Gundam).
//! - [`density`]: text capacity per page and the font size for a target compression ratio.
//!
//! # Example
//! ```
//! use optimem_renderer::{Document, LayoutConfig, Renderer, Tier};
//! let mut r = Renderer::new(LayoutConfig::default())?;
//! let pages = r.paginate(Document::Text("Hello, optical memory."));
//! let img = r.rasterize(&pages[0], Tier::Small);
//! assert_eq!((img.width, img.height), (640, 640));
//! # Ok::<(), optimem_renderer::RenderError>(())
//! ```

pub mod density;
pub mod fonts;
pub mod image;
pub mod layout;
pub mod raster;
pub mod resample;
pub mod tier;

pub use image::GrayImage;
pub use layout::{Document, LayoutConfig, Page, Span, Turn};
pub use resample::downsample;
pub use tier::Tier;

/// What can go wrong while rendering. Every variant is a caller mistake or bad input, never a crash.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The layout geometry leaves no room for text; fix the configuration.
    #[error("unusable layout configuration: {0}")]
    BadLayout(String),
    /// The tier name is not one of tiny, small, base, large, gundam.
    #[error("unknown tier {0:?} (expected tiny, small, base, large or gundam)")]
    UnknownTier(String),
    /// Ageing only moves pages down in resolution.
    #[error("cannot move a {from}-px page up to {to} px: pages only move down")]
    Upsample { from: u32, to: u32 },
    /// PNG encoding or decoding failed (corrupt or unsupported image).
    #[error("PNG: {0}")]
    Png(String),
    /// Blank space asked for above the text that is negative, not a number, or leaves no room for a line.
    #[error(
        "\"top\" must be between 0 and {max} (logical units above the text on the first page: the content height \
         less one line at this font size), got {top}"
    )]
    BadTop { top: f32, max: f32 },
}

/// A glyph's position for training and inspection: the byte offset of its character in the page's visible text, and its
/// centre in pixels at the rasterized size.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct GlyphCentre {
    pub offset: usize,
    pub x: f32,
    pub y: f32,
}

/// Layout plus rasterization, with their caches. One per thread.
#[derive(Debug)]
pub struct Renderer {
    layouter: layout::Layouter,
    raster: raster::Rasterizer,
}

impl Renderer {
    pub fn new(config: LayoutConfig) -> Result<Self, RenderError> {
        Ok(Self {
            layouter: layout::Layouter::new(config)?,
            raster: raster::Rasterizer::new(),
        })
    }

    pub fn config(&self) -> &LayoutConfig {
        self.layouter.config()
    }

    /// Lays out a document and cuts it into pages. Empty plain text gives no pages.
    pub fn paginate(&mut self, doc: Document<'_>) -> Vec<Page> {
        let lines = self.layouter.lines(doc);
        layout::paginate(lines, self.layouter.config())
    }

    /// [`Renderer::paginate`] with blank space above the text on the first page: `first_top` logical units, from 0
    /// to [`Renderer::max_top`] (see [`layout::paginate_below`]); anything else is [`RenderError::BadTop`].
    pub fn paginate_below(
        &mut self,
        doc: Document<'_>,
        first_top: f32,
    ) -> Result<Vec<Page>, RenderError> {
        let max = self.max_top();
        if !(first_top.is_finite() && (0.0..=max).contains(&first_top)) {
            return Err(RenderError::BadTop {
                top: first_top,
                max,
            });
        }
        let lines = self.layouter.lines(doc);
        Ok(layout::paginate_below(
            lines,
            self.layouter.config(),
            first_top,
        ))
    }

    /// The most blank space [`Renderer::paginate_below`] takes above the text: the content height less one line pitch.
    pub fn max_top(&self) -> f32 {
        let config = self.layouter.config();
        config.content_height() - config.line_pitch()
    }

    /// Draws a page at a tier's resolution.
    pub fn rasterize(&mut self, page: &Page, tier: Tier) -> GrayImage {
        self.raster
            .rasterize(&self.layouter.fonts, page, tier.pixels())
    }

    /// Draws a page on a square of any size (benchmarks, custom resolutions).
    pub fn rasterize_px(&mut self, page: &Page, pixels: u32) -> GrayImage {
        self.raster.rasterize(&self.layouter.fonts, page, pixels)
    }

    /// The visible text of a page and the centre of each of its glyphs at `pixels` resolution.
    pub fn glyph_centres(
        page: &Page,
        messages: &[&str],
        pixels: u32,
    ) -> (String, Vec<GlyphCentre>) {
        let (text, starts) = page.visible_text(messages);
        let scale = pixels as f32 / page.config.canvas;
        let mut out = Vec::new();
        for (pl, start) in page.lines.iter().zip(starts) {
            let baseline = pl.top + pl.line.baseline;
            for g in &pl.line.glyphs {
                out.push(GlyphCentre {
                    offset: start + g.offset,
                    x: (page.config.margin + g.x + g.advance / 2.0) * scale,
                    // The middle of the x-height band, about a third of the font size above the baseline.
                    y: (baseline + g.y - 0.35 * g.font_size) * scale,
                });
            }
        }
        (text, out)
    }
}

//! Pages → grayscale pixels at a tier's resolution.
//!
//! Glyph outlines come straight from the embedded font files (skrifa, unhinted, so shapes scale exactly with the tier) and are
//! filled with tiny-skia's anti-aliased scan converter into a per-glyph coverage mask. Masks are cached by (face, glyph, size,
//! quarter-pixel position), so a page costs a few thousand small blits once the cache is warm: that is what makes the renderer
//! fast enough to feed training on the GPU machine. All arithmetic on pixels is integer, so output is identical everywhere.

use std::collections::HashMap;

use skrifa::instance::{LocationRef, Size};
use skrifa::outline::{DrawSettings, OutlinePen};
use skrifa::{FontRef, GlyphId, MetadataProvider};
use tiny_skia::{FillRule, Mask, PathBuilder, Transform};

use crate::fonts::Fonts;
use crate::image::GrayImage;
use crate::layout::Page;

/// Subpixel positions per pixel, horizontally and vertically.
const SUBPIXEL: f32 = 4.0;
/// Ink of the rule drawn between chat turns (0 black … 255 white).
const RULE_INK: u8 = 160;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GlyphKey {
    font: cosmic_text::fontdb::ID,
    glyph_id: u16,
    ppem_bits: u32,
    sub_x: u8,
    sub_y: u8,
}

/// A glyph's coverage, positioned relative to the integer pixel of its pen position.
#[derive(Debug)]
struct GlyphMask {
    left: i32,
    top: i32,
    width: u32,
    height: u32,
    coverage: Vec<u8>,
}

struct PathPen {
    builder: PathBuilder,
}

// Font units are y-up; the page is y-down.
impl OutlinePen for PathPen {
    fn move_to(&mut self, x: f32, y: f32) {
        self.builder.move_to(x, -y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        self.builder.line_to(x, -y);
    }
    fn quad_to(&mut self, cx0: f32, cy0: f32, x: f32, y: f32) {
        self.builder.quad_to(cx0, -cy0, x, -y);
    }
    fn curve_to(&mut self, cx0: f32, cy0: f32, cx1: f32, cy1: f32, x: f32, y: f32) {
        self.builder.cubic_to(cx0, -cy0, cx1, -cy1, x, -y);
    }
    fn close(&mut self) {
        self.builder.close();
    }
}

/// Rasterizes pages; keeps a glyph-mask cache, so reuse one per thread.
#[derive(Default)]
pub struct Rasterizer {
    cache: HashMap<GlyphKey, Option<GlyphMask>>,
}

impl std::fmt::Debug for Rasterizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rasterizer({} cached glyphs)", self.cache.len())
    }
}

impl Rasterizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Draws `page` on a white square of `pixels` × `pixels`.
    pub fn rasterize(&mut self, fonts: &Fonts, page: &Page, pixels: u32) -> GrayImage {
        let mut img = GrayImage::blank(pixels, pixels);
        let scale = pixels as f32 / page.config.canvas;
        let gap = page.config.turn_gap * page.config.line_pitch();
        for (i, pl) in page.lines.iter().enumerate() {
            if pl.line.rule_before && i > 0 {
                let y = (pl.top - gap / 2.0) * scale;
                let x0 = page.config.margin * scale;
                let x1 = (page.config.canvas - page.config.margin) * scale;
                draw_hrule(&mut img, x0, x1, y, scale.max(1.0));
            }
            let baseline = pl.top + pl.line.baseline;
            for g in &pl.line.glyphs {
                let x = (page.config.margin + g.x) * scale;
                let y = (baseline + g.y) * scale;
                let ppem = g.font_size * scale;
                self.draw_glyph(fonts, &mut img, g.font, g.glyph_id, ppem, x, y);
            }
        }
        img
    }

    #[allow(clippy::too_many_arguments)] // A glyph draw is exactly these coordinates; a struct would only rename them.
    fn draw_glyph(
        &mut self,
        fonts: &Fonts,
        img: &mut GrayImage,
        font: cosmic_text::fontdb::ID,
        glyph_id: u16,
        ppem: f32,
        x: f32,
        y: f32,
    ) {
        let (px, fx) = split(x);
        let (py, fy) = split(y);
        let key = GlyphKey {
            font,
            glyph_id,
            ppem_bits: ppem.to_bits(),
            sub_x: fx,
            sub_y: fy,
        };
        let mask = self.cache.entry(key).or_insert_with(|| {
            render_glyph(
                fonts,
                font,
                glyph_id,
                ppem,
                fx as f32 / SUBPIXEL,
                fy as f32 / SUBPIXEL,
            )
        });
        if let Some(m) = mask {
            blit(img, m, px + m.left, py + m.top);
        }
    }
}

/// Splits a coordinate into its integer pixel and quarter-pixel bin.
fn split(v: f32) -> (i32, u8) {
    let q = (v * SUBPIXEL).round() as i64;
    let p = q.div_euclid(SUBPIXEL as i64);
    (p as i32, q.rem_euclid(SUBPIXEL as i64) as u8)
}

fn render_glyph(
    fonts: &Fonts,
    font: cosmic_text::fontdb::ID,
    glyph_id: u16,
    ppem: f32,
    dx: f32,
    dy: f32,
) -> Option<GlyphMask> {
    let face = fonts.face(font)?;
    let font_ref = FontRef::from_index(face.data, face.index).ok()?;
    let outline = font_ref
        .outline_glyphs()
        .get(GlyphId::new(u32::from(glyph_id)))?;
    let mut pen = PathPen {
        builder: PathBuilder::new(),
    };
    outline
        .draw(
            DrawSettings::unhinted(Size::new(ppem), LocationRef::default()),
            &mut pen,
        )
        .ok()?;
    let path = pen.builder.finish()?;
    let b = path.bounds();
    let left = (b.left() + dx).floor() as i32 - 1;
    let top = (b.top() + dy).floor() as i32 - 1;
    let width = ((b.right() + dx).ceil() as i32 + 1 - left).max(1) as u32;
    let height = ((b.bottom() + dy).ceil() as i32 + 1 - top).max(1) as u32;
    let mut mask = Mask::new(width, height)?;
    let t = Transform::from_translate(dx - left as f32, dy - top as f32);
    mask.fill_path(&path, FillRule::Winding, true, t);
    Some(GlyphMask {
        left,
        top,
        width,
        height,
        coverage: mask.data().to_vec(),
    })
}

/// Darkens the page by a coverage mask: paper × (1 − coverage), in integers.
fn blit(img: &mut GrayImage, m: &GlyphMask, x0: i32, y0: i32) {
    let (w, h) = (img.width as i32, img.height as i32);
    for row in 0..m.height as i32 {
        let y = y0 + row;
        if y < 0 || y >= h {
            continue;
        }
        let src = &m.coverage[(row as usize) * m.width as usize..][..m.width as usize];
        let cx0 = (-x0).max(0);
        let cx1 = (w - x0).min(m.width as i32);
        if cx0 >= cx1 {
            continue;
        }
        let dst_row = &mut img.pixels[(y * w) as usize..][..w as usize];
        for cx in cx0..cx1 {
            let a = u32::from(src[cx as usize]);
            if a != 0 {
                let d = &mut dst_row[(x0 + cx) as usize];
                *d = ((u32::from(*d) * (255 - a) + 127) / 255) as u8;
            }
        }
    }
}

/// A horizontal rule of `thickness` px centred on `y`, from `x0` to `x1`.
fn draw_hrule(img: &mut GrayImage, x0: f32, x1: f32, y: f32, thickness: f32) {
    let top = (y - thickness / 2.0).round().max(0.0) as u32;
    let rows = thickness.round().max(1.0) as u32;
    let (a, b) = (
        x0.round().max(0.0) as u32,
        (x1.round() as u32).min(img.width),
    );
    for yy in top..(top + rows).min(img.height) {
        for xx in a..b {
            let d = &mut img.pixels[(yy * img.width + xx) as usize];
            *d = (*d).min(RULE_INK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rounds_to_quarter_pixels() {
        assert_eq!(split(10.0), (10, 0));
        assert_eq!(split(10.26), (10, 1));
        assert_eq!(split(10.9), (11, 0));
        assert_eq!(split(-0.3), (-1, 3));
    }

    #[test]
    fn blit_clips_at_the_edges() {
        let mut img = GrayImage::blank(4, 4);
        let m = GlyphMask {
            left: 0,
            top: 0,
            width: 3,
            height: 3,
            coverage: vec![255; 9],
        };
        blit(&mut img, &m, -1, 2);
        assert_eq!(img.pixels.iter().filter(|&&p| p == 0).count(), 4);
    }
}

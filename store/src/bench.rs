//! Microbenchmark of the store's footprint: bytes per page with f16 versus int8 tokens, and
//! the precision int8 costs, measured by writing the same pages into two fresh stores.
//!
//! The caller supplies real pages (rendered raster, the encoder's f32 tokens, source text)
//! so the figures are those of the product; `optimem bench memory` is meant to call
//! [`footprint`] and print its report beside the compression ratios.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, Tier};
use crate::memory::NewMemory;
use crate::page::{NewPage, Span};
use crate::scope::Scope;
use crate::sled_store::{Durability, OpenOptions, SledStore};
use crate::store::{BytesByKind, PageParts, PageSelector, Store, WritePages};
use crate::tokens::{TokenDtype, VisionTokens};

/// One page as the encoder made it, before the store picks a token encoding.
#[derive(Clone, Debug)]
pub struct BenchPage {
    pub tier: Tier,
    pub text_tokens: u32,
    pub vision_tokens: u32,
    pub raster_png: Vec<u8>,
    /// Row-major f32 tokens of shape `token_shape`.
    pub tokens: Vec<f32>,
    pub token_shape: Vec<u32>,
    pub source: String,
}

/// What one token encoding costs, per page on average.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    pub dtype: TokenDtype,
    pub pages: u64,
    /// Logical bytes per page, by kind (keys and values).
    pub bytes_per_page: BytesByKind,
    /// sled's files per page after a flush (includes the engine's log overhead).
    pub db_bytes_on_disk_per_page: u64,
    /// Largest |stored − original| over all token values.
    pub max_abs_error: f32,
    /// Root-mean-square error over all token values.
    pub rms_error: f32,
    /// `rms_error` divided by the RMS of the original values.
    pub relative_rms_error: f32,
}

/// f16 and int8 footprints of the same pages.
#[derive(Clone, Debug, PartialEq)]
pub struct FootprintReport {
    pub f16: Footprint,
    pub int8: Footprint,
}

/// Writes `pages` into fresh stores under `dir` (`dir/f16`, `dir/int8`, which must not
/// exist) and measures each.
pub fn footprint(dir: &Path, pages: &[BenchPage]) -> Result<FootprintReport> {
    if pages.is_empty() {
        return Err(StoreError::invalid("footprint needs at least one page"));
    }
    Ok(FootprintReport {
        f16: measure(&dir.join("f16"), pages, TokenDtype::F16)?,
        int8: measure(&dir.join("int8"), pages, TokenDtype::Int8RowScale)?,
    })
}

fn measure(dir: &Path, pages: &[BenchPage], dtype: TokenDtype) -> Result<Footprint> {
    if dir.exists() {
        return Err(StoreError::invalid(format!(
            "{} already exists; footprint needs a fresh store",
            dir.display()
        )));
    }
    let opts = OpenOptions {
        durability: Durability::Background { every_ms: 1000 },
        ..OpenOptions::new("bench")
    };
    let store = SledStore::open(dir, opts)?;
    let scope = Scope::user("bench")?;
    for p in pages {
        let memory = NewMemory {
            id: MemoryId::new(),
            role: "user".into(),
            time_ms: 0,
            metadata: Default::default(),
            text_bytes: p.source.len().max(1) as u64,
        };
        let len = p.source.len().max(1) as u64;
        let page = NewPage {
            tier: p.tier,
            text_tokens: p.text_tokens,
            vision_tokens: p.vision_tokens,
            spans: vec![Span {
                memory: memory.id,
                text: 0..len,
                page: 0..len as u32,
            }],
            raster_png: p.raster_png.clone(),
            tokens: Some(VisionTokens::from_f32(
                &p.tokens,
                p.token_shape.clone(),
                dtype,
            )?),
            source: if p.source.is_empty() {
                " ".into()
            } else {
                p.source.clone()
            },
        };
        store.write_pages(
            &scope,
            WritePages {
                memories: vec![memory],
                replace_last: None,
                pages: vec![page],
            },
        )?;
    }
    store.flush()?;
    let stats = store.stats(None)?;
    let n = pages.len() as u64;
    let per = |b: u64| b / n;

    let stored = store.get_pages(
        &scope,
        &PageSelector::LastN(pages.len()),
        PageParts {
            tokens: true,
            ..PageParts::NONE
        },
    )?;
    let (mut max_abs, mut sq_err, mut sq_val, mut count) = (0f32, 0f64, 0f64, 0usize);
    for (orig, page) in pages.iter().zip(&stored) {
        let back = page
            .tokens
            .as_ref()
            .map(VisionTokens::to_f32)
            .unwrap_or_default();
        for (a, b) in orig.tokens.iter().zip(&back) {
            let e = (a - b).abs();
            max_abs = max_abs.max(e);
            sq_err += f64::from(e) * f64::from(e);
            sq_val += f64::from(*a) * f64::from(*a);
            count += 1;
        }
    }
    let rms_error = (sq_err / count.max(1) as f64).sqrt() as f32;
    let rms_value = (sq_val / count.max(1) as f64).sqrt() as f32;
    Ok(Footprint {
        dtype,
        pages: n,
        bytes_per_page: BytesByKind {
            tokens: per(stats.bytes.tokens),
            rasters: per(stats.bytes.rasters),
            sources: per(stats.bytes.sources),
            metadata: per(stats.bytes.metadata),
        },
        db_bytes_on_disk_per_page: per(stats.db_bytes_on_disk),
        max_abs_error: max_abs,
        rms_error,
        relative_rms_error: if rms_value > 0.0 {
            rms_error / rms_value
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian-ish values (sum of uniforms) with per-row scales, like projector outputs.
    fn synthetic(rows: u32, width: u32, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..rows * width)
            .map(|i| {
                let row_scale = 0.5 + (i / width % 5) as f32;
                (uniform() + uniform() + uniform() + uniform()) * row_scale
            })
            .collect()
    }

    #[test]
    fn int8_halves_token_bytes_at_a_measured_precision_cost() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        // The Base tier feeds 273 embeddings of width 1280 (DESIGN.md §1).
        let (rows, width) = (273u32, 1280u32);
        let pages: Vec<BenchPage> = (0..4)
            .map(|i| BenchPage {
                tier: Tier::Base,
                text_tokens: 900,
                vision_tokens: 256,
                raster_png: [b"\x89PNG\r\n\x1a\n".as_slice(), &[i as u8; 40_000]].concat(),
                tokens: synthetic(rows, width, i + 1),
                token_shape: vec![rows, width],
                source: "The quick brown fox jumps over the lazy dog. ".repeat(80),
            })
            .collect();
        let report = footprint(dir.path(), &pages)?;
        let (f16, int8) = (&report.f16, &report.int8);
        let (r, w) = (u64::from(rows), u64::from(width));
        assert_eq!(f16.bytes_per_page.tokens, 16 + r * w * 2);
        assert_eq!(int8.bytes_per_page.tokens, 16 + r * 4 + r * w);
        assert_eq!(f16.bytes_per_page.rasters, int8.bytes_per_page.rasters);
        assert!(int8.db_bytes_on_disk_per_page < f16.db_bytes_on_disk_per_page);
        // f16 keeps ~3 significant digits; int8 per-row loses more but stays within half a
        // step (max|row| / 254) of every value.
        assert!(f16.relative_rms_error < 1e-3, "{f16:?}");
        assert!(
            int8.relative_rms_error < 2e-2 && int8.relative_rms_error > f16.relative_rms_error,
            "{int8:?}"
        );
        eprintln!("footprint per Base page ({rows}x{width} tokens): {report:#?}");
        Ok(())
    }
}

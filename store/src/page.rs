//! Pages: what the caller hands in (`NewPage`, `PageUpdate`), what the store keeps as
//! metadata (`PageMeta`, small, scanned for tier policy and stats) and what it gives back
//! (`Page`, metadata plus whichever heavy parts were asked for).
//!
//! The heavy parts (raster, tokens, source) live under separate keys so that listing a
//! scope never loads them; `PageMeta` holds a length and CRC-32 of each, checked on every
//! read, so a page whose parts disagree is reported as `Corrupt` instead of returned.
//!
//! A page's vision tokens may be pending ([`TokenState::Pending`]): a Remember that encodes
//! write-behind stores the raster, spans and source at once and the tokens later, through
//! [`Store::put_tokens`](crate::Store::put_tokens). A pending page has no `tokens` entry, an
//! empty token shape and no model id.

use std::ops::Range;

use crate::codec::{Reader, Writer};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId, Tier};
use crate::tokens::{TokenDtype, VisionTokens};

/// Where a piece of one memory lies on a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The memory (message) the piece belongs to.
    pub memory: MemoryId,
    /// Byte range of the piece in that memory's text.
    pub text: Range<u64>,
    /// Byte range of the piece in the page's source text.
    pub page: Range<u32>,
}

/// Whether a page's vision tokens are stored yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// Not yet: the raster is stored, the tokens will be encoded from it (write-behind, or an
    /// ageing that moved a pending page down a tier).
    Pending,
    /// Stored, made by the model named in `PageMeta::model_id`.
    Encoded,
}

impl TokenState {
    fn code(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Encoded => 1,
        }
    }

    fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(Self::Pending),
            1 => Ok(Self::Encoded),
            _ => Err(StoreError::corrupt(format!("unknown token state {c}"))),
        }
    }
}

/// A page to write: the rendered raster, its vision tokens (or none yet) and the text it shows.
#[derive(Clone, Debug)]
pub struct NewPage {
    pub tier: Tier,
    /// Text tokens of `source` (by the tokenizer the caller reports).
    pub text_tokens: u32,
    /// The paper's vision-token count for this page (64/100/256/400, or Gundam's total);
    /// the stored array's rows (the embeddings actually fed) are recorded separately.
    pub vision_tokens: u32,
    /// The memories on this page, in page order.
    pub spans: Vec<Span>,
    /// Grayscale PNG bytes of the page at its tier's size.
    pub raster_png: Vec<u8>,
    /// The page's vision tokens; `None` writes the page with its tokens pending.
    pub tokens: Option<VisionTokens>,
    /// The page's text; stored (zstd) only when the retention policy keeps sources.
    pub source: String,
}

/// New tier, raster and tokens for an existing page (ageing).
#[derive(Clone, Debug)]
pub struct PageUpdate {
    pub tier: Tier,
    pub vision_tokens: u32,
    pub raster_png: Vec<u8>,
    /// The new raster's tokens; `None` leaves the page pending (its old tokens are dropped).
    pub tokens: Option<VisionTokens>,
}

/// Length and CRC-32 of one stored part of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub bytes: u64,
    pub crc32: u32,
}

impl PartInfo {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }

    /// Checks `bytes` against this record; `what` names the part in the error.
    pub(crate) fn check(&self, bytes: &[u8], page: PageId, what: &str) -> Result<()> {
        let found = Self::of(bytes);
        if found != *self {
            return Err(StoreError::corrupt(format!(
                "page {page} {what}: stored {} bytes crc {:08x}, metadata says {} bytes crc {:08x}",
                found.bytes, found.crc32, self.bytes, self.crc32
            )));
        }
        Ok(())
    }
}

/// Everything about a page except its heavy parts.
#[derive(Clone, Debug, PartialEq)]
pub struct PageMeta {
    pub id: PageId,
    /// Position in the scope, increasing with every page appended.
    pub seq: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Bumped by every change to the page; the optimistic check of `update_page`.
    pub generation: u64,
    pub tier: Tier,
    pub text_tokens: u32,
    /// Length of the page's source text in bytes (known even when the text is not kept).
    pub text_bytes: u32,
    /// The paper's vision-token count.
    pub vision_tokens: u32,
    pub spans: Vec<Span>,
    /// Time (ms) of the earliest memory on the page; with `last_memory_ms`, what the
    /// time-range selector matches.
    pub first_memory_ms: u64,
    /// Time (ms) of the latest memory on the page.
    pub last_memory_ms: u64,
    /// Whether the tokens are stored yet; the token fields below are empty while pending.
    pub token_state: TokenState,
    /// The model that produced the tokens (empty while pending).
    pub model_id: String,
    pub token_dtype: TokenDtype,
    pub token_shape: Vec<u32>,
    pub tokens: PartInfo,
    pub raster: PartInfo,
    /// The zstd-compressed source text, when kept.
    pub source: Option<PartInfo>,
}

impl PageMeta {
    /// Number of stored token vectors (embeddings actually fed to the decoder); 0 while pending.
    pub fn token_rows(&self) -> u64 {
        if self.token_shape.is_empty() {
            return 0;
        }
        self.token_shape[..self.token_shape.len() - 1]
            .iter()
            .map(|&d| u64::from(d))
            .product()
    }

    /// True while the page's tokens are not stored yet.
    pub fn is_pending(&self) -> bool {
        self.token_state == TokenState::Pending
    }

    /// True when `model_id` cannot use the page's tokens as stored: they are pending, or another model made them.
    /// Either way they are (re-)encoded from the stored raster.
    pub fn needs_tokens(&self, model_id: &str) -> bool {
        self.is_pending() || self.model_id != model_id
    }

    /// The memories this page holds a piece of, in page order, without repeats.
    pub fn memories(&self) -> Vec<MemoryId> {
        let mut out: Vec<MemoryId> = Vec::new();
        for s in &self.spans {
            if !out.contains(&s.memory) {
                out.push(s.memory);
            }
        }
        out
    }
}

/// A page as returned by a read: metadata plus the parts that were asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub meta: PageMeta,
    pub raster_png: Option<Vec<u8>>,
    /// `None` when not asked for or pending (`meta.token_state` tells which).
    pub tokens: Option<VisionTokens>,
    /// `None` when not asked for or not kept (`meta.source` tells which).
    pub source: Option<String>,
}

/// Version 2 adds the token state after the last field; version 1 records (schema 1) are read as `Encoded`.
const PAGE_META_VERSION: u8 = 2;
const PAGE_META_VERSION_1: u8 = 1;

fn put_part(w: &mut Writer, p: PartInfo) {
    w.u64(p.bytes).u32(p.crc32);
}

fn get_part(r: &mut Reader<'_>) -> Result<PartInfo> {
    Ok(PartInfo {
        bytes: r.u64()?,
        crc32: r.u32()?,
    })
}

pub(crate) fn encode_meta(m: &PageMeta) -> Vec<u8> {
    let mut w = Writer::new(PAGE_META_VERSION);
    w.fixed(&m.id.to_bytes())
        .u64(m.seq)
        .u64(m.created_ms)
        .u64(m.updated_ms)
        .u64(m.generation);
    w.u8(m.tier.code())
        .u32(m.text_tokens)
        .u32(m.text_bytes)
        .u32(m.vision_tokens);
    w.u32(m.spans.len() as u32);
    for s in &m.spans {
        w.fixed(&s.memory.to_bytes())
            .u64(s.text.start)
            .u64(s.text.end)
            .u32(s.page.start)
            .u32(s.page.end);
    }
    w.u64(m.first_memory_ms)
        .u64(m.last_memory_ms)
        .str(&m.model_id);
    w.u8(m.token_dtype.code()).u32(m.token_shape.len() as u32);
    for &d in &m.token_shape {
        w.u32(d);
    }
    put_part(&mut w, m.tokens);
    put_part(&mut w, m.raster);
    w.opt(m.source, put_part);
    w.u8(m.token_state.code());
    w.finish()
}

pub(crate) fn decode_meta(buf: &[u8]) -> Result<PageMeta> {
    let (mut r, version) =
        Reader::new_versions(buf, "page", PAGE_META_VERSION_1..=PAGE_META_VERSION)?;
    let id = PageId::from_bytes(r.fixed()?);
    let (seq, created_ms, updated_ms, generation) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let tier = Tier::from_code(r.u8()?)?;
    let (text_tokens, text_bytes, vision_tokens) = (r.u32()?, r.u32()?, r.u32()?);
    let n = r.count(40)?;
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let memory = MemoryId::from_bytes(r.fixed()?);
        spans.push(Span {
            memory,
            text: r.u64()?..r.u64()?,
            page: r.u32()?..r.u32()?,
        });
    }
    let (first_memory_ms, last_memory_ms) = (r.u64()?, r.u64()?);
    let model_id = r.string()?;
    let token_dtype = TokenDtype::from_code(r.u8()?)?;
    let dims = r.count(4)?;
    let token_shape = (0..dims).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let tokens = get_part(&mut r)?;
    let raster = get_part(&mut r)?;
    let source = r.opt(get_part)?;
    let token_state = if version == PAGE_META_VERSION_1 {
        TokenState::Encoded
    } else {
        TokenState::from_code(r.u8()?)?
    };
    r.finish()?;
    if token_shape.is_empty() != (token_state == TokenState::Pending) {
        return Err(StoreError::corrupt(format!(
            "page {id} is {token_state:?} with a token shape of {dims} dimensions"
        )));
    }
    Ok(PageMeta {
        id,
        seq,
        created_ms,
        updated_ms,
        generation,
        tier,
        text_tokens,
        text_bytes,
        vision_tokens,
        spans,
        first_memory_ms,
        last_memory_ms,
        token_state,
        model_id,
        token_dtype,
        token_shape,
        tokens,
        raster,
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_meta() -> PageMeta {
        PageMeta {
            id: PageId::new(),
            seq: 41,
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_500,
            generation: 3,
            tier: Tier::Gundam,
            text_tokens: 812,
            text_bytes: 3000,
            vision_tokens: 656,
            spans: vec![
                Span {
                    memory: MemoryId::new(),
                    text: 100..900,
                    page: 0..800,
                },
                Span {
                    memory: MemoryId::new(),
                    text: 0..2200,
                    page: 800..3000,
                },
            ],
            first_memory_ms: 5,
            last_memory_ms: 9,
            token_state: TokenState::Encoded,
            model_id: "optimem-tiny@abc".into(),
            token_dtype: TokenDtype::Int8RowScale,
            token_shape: vec![3, 111, 1280],
            tokens: PartInfo { bytes: 1, crc32: 2 },
            raster: PartInfo { bytes: 3, crc32: 4 },
            source: Some(PartInfo { bytes: 5, crc32: 6 }),
        }
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() -> Result<()> {
        let m = sample_meta();
        let enc = encode_meta(&m);
        assert_eq!(decode_meta(&enc)?, m);
        assert_eq!(m.token_rows(), 333);
        let no_source = PageMeta {
            source: None,
            spans: vec![],
            ..m
        };
        assert_eq!(decode_meta(&encode_meta(&no_source))?, no_source);
        for cut in 0..enc.len() {
            assert!(matches!(
                decode_meta(&enc[..cut]),
                Err(StoreError::Corrupt(_))
            ));
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(matches!(decode_meta(&longer), Err(StoreError::Corrupt(_))));
        Ok(())
    }

    #[test]
    fn pending_meta_round_trips_and_state_must_match_the_shape() -> Result<()> {
        let pending = PageMeta {
            token_state: TokenState::Pending,
            model_id: String::new(),
            token_shape: vec![],
            tokens: PartInfo { bytes: 0, crc32: 0 },
            ..sample_meta()
        };
        assert_eq!(decode_meta(&encode_meta(&pending))?, pending);
        assert_eq!(pending.token_rows(), 0);
        assert!(pending.is_pending() && pending.needs_tokens("optimem-tiny@abc"));
        let encoded = sample_meta();
        assert!(!encoded.needs_tokens("optimem-tiny@abc") && encoded.needs_tokens("other"));
        // Pending with a shape, or encoded without one, is damage.
        for bad in [
            PageMeta {
                token_state: TokenState::Pending,
                ..sample_meta()
            },
            PageMeta {
                token_shape: vec![],
                ..sample_meta()
            },
        ] {
            assert!(matches!(
                decode_meta(&encode_meta(&bad)),
                Err(StoreError::Corrupt(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn version_1_records_read_as_encoded() -> Result<()> {
        let m = sample_meta();
        let mut v1 = encode_meta(&m);
        // Version 1 is version 2 without the trailing token state.
        v1[0] = PAGE_META_VERSION_1;
        v1.pop();
        assert_eq!(decode_meta(&v1)?, m);
        Ok(())
    }
}

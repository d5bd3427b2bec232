//! Recall: select a scope's pages (memory ids, last N pages, time range), keep the newest that fit a budget, and give
//! them back in time order as source text (EXACT), page PNGs (IMAGES), vision tokens (EMBEDDINGS) or text decoded
//! from the stored vision tokens by the model (OPTICAL, optionally streamed as it is generated).
//!
//! EXACT and IMAGES never wait for the encoder. OPTICAL and EMBEDDINGS of a page whose tokens are pending (write-behind)
//! or stale (another model's) encode it on demand from its raster and store the tokens, so a client never fails because
//! encoding is behind; the cancel flag is checked before each such encode.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use optimem_store::{MemoryId, Page, PageId, PageMeta, PageParts, PageSelector, Scope};

use crate::model::generate::Control;

use super::{Memory, MemoryError, Result};

/// Which pages to recall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The pages these memories lie on.
    Memories(Vec<MemoryId>),
    /// The newest `n` pages.
    LastPages(usize),
    /// Pages holding a memory said in this time range (ms since the Unix epoch, end exclusive).
    TimeRange(Range<u64>),
}

/// What to give back for each page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecallMode {
    /// Text decoded by the model from the stored vision tokens (prompt [`crate::model::FREE_OCR_PROMPT`]).
    Optical,
    /// The page's source text, when the store keeps sources.
    Exact,
    /// The page raster as PNG, for any vision-language model.
    Images,
    /// The stored vision tokens as f32.
    Embeddings,
}

/// Limits on a recall; the newest pages that fit are kept. `None` means no limit (beyond the server's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub max_pages: Option<usize>,
    /// Paper vision tokens summed over the pages returned.
    pub max_vision_tokens: Option<u64>,
}

/// One memory's piece on a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub memory: MemoryId,
    /// Byte range of the piece in the memory's text.
    pub range: Range<u64>,
    pub text: String,
}

/// What a page gives back, by mode.
#[derive(Clone, Debug, PartialEq)]
pub enum Recalled {
    /// EXACT: the page's text (role labels included) and each memory's piece of it.
    Exact {
        text: String,
        pieces: Vec<Piece>,
    },
    /// OPTICAL: the decoded text; `cancelled` when generation was stopped early.
    Optical {
        text: String,
        tokens: usize,
        cancelled: bool,
    },
    Png(Vec<u8>),
    /// Row-major f32 values of `shape` (`[embeddings, hidden]`).
    Embeddings {
        values: Vec<f32>,
        shape: Vec<u32>,
    },
}

/// One recalled page.
#[derive(Clone, Debug, PartialEq)]
pub struct RecallItem {
    pub meta: PageMeta,
    pub content: Recalled,
}

/// What a streaming OPTICAL recall reports as it goes.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// Decoding of this page starts.
    Page(&'a PageMeta),
    /// Text just generated for the current page.
    Piece(&'a str),
}

impl Memory {
    /// Recalls pages of `scope` in time order; see the module doc.
    #[tracing::instrument(name = "recall", skip_all, fields(scope = %scope, mode = ?mode))]
    pub fn recall(
        &self,
        scope: &Scope,
        selector: &Selector,
        mode: RecallMode,
        budget: Budget,
    ) -> Result<Vec<RecallItem>> {
        self.recall_until(
            scope,
            selector,
            mode,
            budget,
            Arc::new(AtomicBool::new(false)),
        )
    }

    /// [`Memory::recall`] that ends with `Cancelled` once `cancel` is set (checked before each page's decode or
    /// on-demand encode).
    pub fn recall_until(
        &self,
        scope: &Scope,
        selector: &Selector,
        mode: RecallMode,
        budget: Budget,
        cancel: Arc<AtomicBool>,
    ) -> Result<Vec<RecallItem>> {
        if mode == RecallMode::Optical {
            return self.recall_stream(scope, selector, budget, cancel, |_| Control::Continue);
        }
        let parts = match mode {
            RecallMode::Exact => PageParts {
                source: true,
                ..PageParts::NONE
            },
            RecallMode::Images => PageParts {
                raster: true,
                ..PageParts::NONE
            },
            RecallMode::Embeddings | RecallMode::Optical => PageParts {
                tokens: true,
                ..PageParts::NONE
            },
        };
        let pages = self.select(scope, selector, budget, parts)?;
        if mode == RecallMode::Exact
            && let Some(p) = pages.iter().find(|p| p.source.is_none())
        {
            return Err(MemoryError::FailedPrecondition(format!(
                "page {} has no source text (the store does not keep sources): use OPTICAL, IMAGES or EMBEDDINGS",
                p.meta.id
            )));
        }
        let mut out = Vec::with_capacity(pages.len());
        for p in pages {
            let p = if mode == RecallMode::Embeddings {
                // A page forgotten while its tokens were being made is left out, as if read after the forget.
                match self.usable_tokens(scope, p, &cancel)? {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                p
            };
            out.push({
                let content = match mode {
                    RecallMode::Exact => exact(&p),
                    RecallMode::Images => Recalled::Png(p.raster_png.unwrap_or_default()),
                    _ => {
                        let t = p
                            .tokens
                            .as_ref()
                            .ok_or_else(|| missing(&p.meta, "tokens"))?;
                        Recalled::Embeddings {
                            values: t.to_f32(),
                            shape: t.shape().to_vec(),
                        }
                    }
                };
                RecallItem {
                    meta: p.meta,
                    content,
                }
            });
        }
        Ok(out)
    }

    /// OPTICAL recall, streaming: `on_event` sees each page as its decoding starts and each piece of text as it is
    /// generated; returning [`Control::Stop`], or setting `cancel`, ends the call with `Cancelled`.
    pub fn recall_stream(
        &self,
        scope: &Scope,
        selector: &Selector,
        budget: Budget,
        cancel: Arc<AtomicBool>,
        mut on_event: impl FnMut(StreamEvent<'_>) -> Control,
    ) -> Result<Vec<RecallItem>> {
        let parts = PageParts {
            tokens: true,
            ..PageParts::NONE
        };
        let pages = self.select(scope, selector, budget, parts)?;
        let mut out = Vec::with_capacity(pages.len());
        for p in pages {
            let Some(p) = self.usable_tokens(scope, p, &cancel)? else {
                continue;
            };
            if cancel.load(Ordering::Relaxed)
                || on_event(StreamEvent::Page(&p.meta)) == Control::Stop
            {
                return Err(MemoryError::Cancelled);
            }
            let t = p
                .tokens
                .as_ref()
                .ok_or_else(|| missing(&p.meta, "tokens"))?;
            let (rows, cols) = (t.rows(), t.width());
            let _span =
                tracing::info_span!("decode", page = %p.meta.id, tier = ?p.meta.tier).entered();
            let decoded = self.engine.decode(
                t.to_f32(),
                rows,
                cols,
                decode_budget(&p.meta, self.cfg.max_new_tokens),
                cancel.clone(),
                |piece| on_event(StreamEvent::Piece(piece)),
            )?;
            if decoded.cancelled {
                return Err(MemoryError::Cancelled);
            }
            out.push(RecallItem {
                meta: p.meta,
                content: Recalled::Optical {
                    text: decoded.text,
                    tokens: decoded.tokens,
                    cancelled: false,
                },
            });
        }
        Ok(out)
    }

    /// The selected pages within the budget (newest kept), in time order, with `parts` loaded.
    fn select(
        &self,
        scope: &Scope,
        selector: &Selector,
        budget: Budget,
        parts: PageParts,
    ) -> Result<Vec<Page>> {
        let sel = match selector {
            Selector::Memories(ids) if ids.is_empty() => {
                return Err(MemoryError::invalid("no memory ids to recall"));
            }
            Selector::Memories(ids) => PageSelector::Memories(ids.clone()),
            Selector::LastPages(0) => {
                return Err(MemoryError::invalid("last-pages selector asks for 0 pages"));
            }
            Selector::LastPages(n) => PageSelector::LastN(*n),
            Selector::TimeRange(r) if r.start >= r.end => {
                return Err(MemoryError::invalid(format!(
                    "empty time range {}..{}",
                    r.start, r.end
                )));
            }
            Selector::TimeRange(r) => PageSelector::TimeRange(r.clone()),
        };
        let metas = self.store.get_pages(scope, &sel, PageParts::NONE)?;
        let max_pages = budget
            .max_pages
            .unwrap_or(usize::MAX)
            .min(self.cfg.limits.max_recall_pages);
        let max_vision = budget.max_vision_tokens.unwrap_or(u64::MAX);
        let mut kept: Vec<PageId> = Vec::new();
        let mut vision = 0u64;
        for p in metas.iter().rev() {
            let v = vision + u64::from(p.meta.vision_tokens);
            if kept.len() >= max_pages || v > max_vision {
                break;
            }
            vision = v;
            kept.push(p.meta.id);
        }
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        kept.reverse();
        Ok(self
            .store
            .get_pages(scope, &PageSelector::Ids(kept), parts)?)
    }
}

fn missing(meta: &PageMeta, what: &str) -> MemoryError {
    MemoryError::Store(optimem_store::StoreError::Corrupt(format!(
        "page {} came back without its {what}",
        meta.id
    )))
}

fn exact(p: &Page) -> Recalled {
    let text = p.source.clone().unwrap_or_default();
    let pieces = p
        .meta
        .spans
        .iter()
        .map(|s| Piece {
            memory: s.memory,
            range: s.text.clone(),
            text: text
                .get(s.page.start as usize..s.page.end as usize)
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    Recalled::Exact { text, pieces }
}

/// Tokens an OPTICAL recall may generate for a page: what the page holds (its text tokens, counted with the model's
/// tokenizer when it was written) with room for the drawn chat labels (a few tokens per memory on the page) and a
/// quarter more for transcription variants, never more than `cap`. A faithful reading ends well inside it; a model that
/// loops (repeats a phrase until the cap) is cut at the page's length instead of at the global cap.
pub fn decode_budget(meta: &PageMeta, cap: usize) -> usize {
    const PER_MEMORY: usize = 16;
    const SLACK: usize = 32;
    let held = meta.text_tokens as usize;
    (held + held / 4 + PER_MEMORY * meta.spans.len() + SLACK).min(cap)
}

//! Write-behind encoding: pages whose vision tokens are missing or unusable — pending (a Remember wrote them without
//! tokens) or stale (another model made them) — are encoded from their stored rasters at their own tiers, and the
//! tokens stored with one checked [`Store::put_tokens`](optimem_store::Store::put_tokens) per page.
//!
//! Three callers share this: the background [`Encoder`] thread, woken by Remember through the [`Backlog`](super::backlog)
//! and stopped by the server's shutdown after the page in progress; a Recall that needs the tokens of such a page now
//! (OPTICAL, EMBEDDINGS), which encodes it on its own thread and persists the result so the encoder skips it; and
//! [`Memory::reencode_stale`], the same work done in one call. The encoder's and `reencode_stale`'s encodes go through
//! the engine's background lane, one at a time, while a recall's go through the lane for encodes someone waits on:
//! a recall is never queued behind background encodes (decodes still go first of all).
//!
//! A page is encoded by one of them at a time ([`Backlog::claim`](super::backlog::Backlog::claim)): a recall that
//! meets a page the encoder is encoding waits for that encode and reads its tokens instead of encoding the page twice
//! (that background job is still taken within a few jobs: the engine's lanes do not starve). Whoever stores a page's
//! tokens first wins; a page refilled, aged or forgotten meanwhile refuses the late tokens (its generation moved, or
//! it is gone), and the encoder looks at it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use optimem_renderer::{GrayImage, Tier};
use optimem_store::{Page, PageId, PageParts, PageSelector, Scope, StoreError, VisionTokens};

use super::policy::from_store;
use super::{ErrorCode, Memory, MemoryError, Result};

/// How long the encoder waits before trying again after the engine's queue was full.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// What a re-encoding run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencodeReport {
    /// Pages whose tokens were made by the loaded model.
    pub reencoded: Vec<PageId>,
    /// Pages changed or forgotten by someone else meanwhile (a changed page is looked at again by the encoder).
    pub skipped: usize,
    /// True when the run was stopped before it had looked at every page.
    pub stopped: bool,
}

/// Who waits for an encode: it picks the engine's lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EncodeFor {
    /// A caller is waiting (a recall, a synchronous Remember): before background work.
    Caller,
    /// Nobody is (the encoder, ageing, re-encoding): after every other job, in at most half the queue.
    Background,
}

/// What happened to one page the encoder looked at.
enum Outcome {
    /// Its tokens are stored now.
    Encoded,
    /// It needed nothing (already encoded, or forgotten), or changed under the encoder and is queued again.
    Skipped,
}

/// The background encoder: one thread that takes pages from the memory's backlog and encodes them, until stopped.
#[derive(Debug)]
pub struct Encoder {
    memory: Arc<Memory>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Encoder {
    /// Starts encoding `memory`'s backlog (seeded when the memory opened, fed by Remember) on a new thread.
    pub fn start(memory: Arc<Memory>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (m, flag) = (memory.clone(), stop.clone());
        // The thread reports to the subscriber of the thread that started it, as the engine's worker does.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let thread = std::thread::Builder::new()
            .name("optimem-encoder".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || m.encode_backlog(&flag))
            })?;
        Ok(Self {
            memory,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the encoder and waits for the page in progress to be stored; the rest stays pending in the store, and
    /// the next start's scan finds it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.memory.backlog.wake_all();
        if let Some(t) = self.thread.take() {
            // A panicking encoder has already logged; there is nothing more to do with it here.
            let _ = t.join();
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Memory {
    /// Pages known to need tokens (pending or stale) that the encoder has not stored yet.
    pub fn pages_to_encode(&self) -> usize {
        self.backlog.len()
    }

    /// The encoder's loop: the next page of the backlog, encoded and stored, until `stop`.
    fn encode_backlog(&self, stop: &AtomicBool) {
        while let Some((scope, id)) = self.backlog.next(stop) {
            let _span = tracing::info_span!("tokens.background", page = %id).entered();
            match self.encode_stored(&scope, id, stop) {
                Ok(_) => {}
                Err(e) if e.code() == ErrorCode::ResourceExhausted => {
                    self.backlog.requeue(&scope, id);
                    self.backlog.wait(stop, BUSY_RETRY);
                }
                Err(e) => {
                    // Left pending in the store: a recall of it reports the error, the next start tries again.
                    tracing::error!(page = %id, error = %e, "encoding a page from its raster failed");
                    self.backlog.drop_page(id);
                }
            }
        }
    }

    /// Encodes page `id` from its stored raster, in the background lane, if it still needs tokens, and stores them.
    /// Waits first while a recall encodes the same page (`stop` ends the wait; the page is looked at again).
    fn encode_stored(&self, scope: &Scope, id: PageId, stop: &AtomicBool) -> Result<Outcome> {
        let Some(_claim) = self.backlog.claim(id, stop) else {
            self.backlog.requeue(scope, id);
            return Ok(Outcome::Skipped);
        };
        let parts = PageParts {
            raster: true,
            ..PageParts::NONE
        };
        let page = match self
            .store
            .get_pages(scope, &PageSelector::Ids(vec![id]), parts)
        {
            Ok(mut pages) => pages.pop(),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(page) = page else {
            self.backlog.settle(scope, id, None);
            return Ok(Outcome::Skipped);
        };
        if !page.meta.needs_tokens(self.store.model_id()) {
            self.backlog.settle(scope, id, Some(page.meta.generation));
            return Ok(Outcome::Skipped);
        }
        Ok(
            match self.fill_tokens(scope, page, EncodeFor::Background)? {
                Some(_) => Outcome::Encoded,
                None => Outcome::Skipped,
            },
        )
    }

    /// Encodes `page` (read with its raster) and stores its tokens at the page's generation. Returns the page with
    /// its tokens as stored, or `None` when the store refused them (the page changed or went meanwhile; the backlog
    /// looks at it again).
    fn fill_tokens(&self, scope: &Scope, page: Page, waiter: EncodeFor) -> Result<Option<Page>> {
        let Page {
            meta, raster_png, ..
        } = page;
        let png = raster_png.ok_or_else(|| {
            MemoryError::Store(StoreError::Corrupt(format!(
                "page {} came back without its raster",
                meta.id
            )))
        })?;
        let (tokens, _) =
            self.encode_tokens(&GrayImage::from_png(&png)?, from_store(meta.tier), waiter)?;
        match self
            .store
            .put_tokens(scope, meta.id, meta.generation, tokens.clone())
        {
            Ok(stored) => {
                self.backlog.settle(scope, meta.id, Some(stored.generation));
                Ok(Some(Page {
                    meta: stored,
                    raster_png: Some(png),
                    tokens: Some(tokens),
                    source: None,
                }))
            }
            Err(StoreError::Conflict(_)) => {
                self.backlog.requeue(scope, meta.id);
                Ok(None)
            }
            Err(StoreError::NotFound(_)) => {
                self.backlog.settle(scope, meta.id, None);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `page` (read with its tokens) with tokens the loaded model can use: as read when they are, else encoded now
    /// from the page's current raster and stored (a Recall must not fail because encoding is behind). `None` when the
    /// page was forgotten meanwhile. Checks `cancel` first: the encode itself cannot be interrupted.
    pub(super) fn usable_tokens(
        &self,
        scope: &Scope,
        page: Page,
        cancel: &AtomicBool,
    ) -> Result<Option<Page>> {
        if page.tokens.is_some() && !page.meta.needs_tokens(self.store.model_id()) {
            return Ok(Some(page));
        }
        let _span = tracing::info_span!("tokens.on_demand", page = %page.meta.id).entered();
        // Up to a few rounds: a page refilled or aged between the read and the store is read and encoded again.
        for _ in 0..3 {
            if cancel.load(Ordering::Relaxed) {
                return Err(MemoryError::Cancelled);
            }
            // The encoder (or another recall) may be encoding this page now: wait for it, then read what it stored.
            let Some(_claim) = self.backlog.claim(page.meta.id, cancel) else {
                return Err(MemoryError::Cancelled);
            };
            let parts = PageParts {
                raster: true,
                tokens: true,
                ..PageParts::NONE
            };
            let current =
                match self
                    .store
                    .get_pages(scope, &PageSelector::Ids(vec![page.meta.id]), parts)
                {
                    Ok(mut p) => p.pop(),
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e.into()),
                };
            let Some(current) = current else {
                return Ok(None);
            };
            if current.tokens.is_some() && !current.meta.needs_tokens(self.store.model_id()) {
                return Ok(Some(current));
            }
            if let Some(filled) = self.fill_tokens(scope, current, EncodeFor::Caller)? {
                return Ok(Some(filled));
            }
        }
        Err(MemoryError::Conflict(format!(
            "page {} kept changing while its tokens were encoded; retry",
            page.meta.id
        )))
    }

    /// `raster` encoded at `tier` in the engine lane for `waiter`: the tokens as stored (in the configured dtype) and
    /// the paper's vision-token count.
    pub(super) fn encode_tokens(
        &self,
        raster: &GrayImage,
        tier: Tier,
        waiter: EncodeFor,
    ) -> Result<(VisionTokens, u32)> {
        let enc = {
            let _span = tracing::info_span!("encode", tier = %tier).entered();
            match waiter {
                EncodeFor::Caller => self.engine.encode(raster, tier)?,
                EncodeFor::Background => self.engine.encode_background(raster, tier)?,
            }
        };
        let tokens = VisionTokens::from_f32(
            &enc.values,
            vec![enc.rows as u32, enc.cols as u32],
            self.cfg.token_dtype,
        )?;
        Ok((tokens, enc.vision_tokens))
    }

    /// Encodes, from their stored rasters and at their own tiers, every page whose tokens are pending or were made by
    /// another model (after the store was opened by a new model with `OnModelMismatch::Reencode`), one checked
    /// `put_tokens` per page, in this call. Checks `stop` before each page. A full engine queue ends the run with
    /// `Busy`; what was done stays done. The server leaves this to its background [`Encoder`].
    #[tracing::instrument(name = "reencode", skip_all)]
    pub fn reencode_stale(&self, stop: &AtomicBool) -> Result<ReencodeReport> {
        let mut report = ReencodeReport::default();
        for (scope, meta) in self.store.pages_to_encode(None)? {
            if stop.load(Ordering::Relaxed) {
                report.stopped = true;
                break;
            }
            match self.encode_stored(&scope, meta.id, stop)? {
                Outcome::Encoded => report.reencoded.push(meta.id),
                Outcome::Skipped => report.skipped += 1,
            }
        }
        Ok(report)
    }
}

//! Age: "near sharp, far blurry". Each page whose recency rank now calls for a less sharp tier is moved down: its
//! stored raster is downsampled to the lower tier's size (the same layout, optically blurred), re-encoded at that
//! tier, and its tier, raster and tokens replaced in one atomic `update_page`. Pages never move up.
//!
//! A page whose tokens are still pending (write-behind) is downsampled and left pending: the encoder encodes it once,
//! at its new tier. Re-encoding after a model change lives with the encoder (`encoder.rs`).
//!
//! Ageing runs page by page and can be stopped between pages (a server shutting down): every page is either moved or
//! left as it was, and the next run picks up the rest.

use std::sync::atomic::{AtomicBool, Ordering};

use optimem_renderer::{GrayImage, Tier, downsample};
use optimem_store::{PageId, PageMeta, PageParts, PageSelector, PageUpdate, Scope, StoreError};

use super::encoder::EncodeFor;
use super::policy::{from_store, sharpness, to_store};
use super::{Memory, MemoryError, Result};

/// One page moved down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aged {
    pub scope: Scope,
    pub page: PageId,
    pub from: Tier,
    pub to: Tier,
    /// Embeddings stored after re-encoding.
    pub embeddings: u64,
}

/// What an Age did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgeReport {
    pub aged: Vec<Aged>,
    /// Pages changed by someone else while being aged (left for the next run).
    pub skipped: usize,
    /// True when the run was stopped before it had looked at every page.
    pub stopped: bool,
}

impl Memory {
    /// Ages one scope, or every scope of the store.
    pub fn age(&self, scope: Option<&Scope>) -> Result<AgeReport> {
        self.age_until(scope, &AtomicBool::new(false))
    }

    /// Ages like [`Memory::age`], checking `stop` before each page: a stopped run has moved some pages and left the
    /// others as they were.
    pub fn age_until(&self, scope: Option<&Scope>, stop: &AtomicBool) -> Result<AgeReport> {
        let scopes = match scope {
            Some(s) => vec![s.clone()],
            None => self.store.list_scopes()?,
        };
        let mut report = AgeReport::default();
        for scope in &scopes {
            self.age_scope(scope, stop, &mut report)?;
            if report.stopped {
                break;
            }
        }
        Ok(report)
    }

    /// A page's stored raster; `None` when the page was forgotten meanwhile.
    fn raster_of(&self, scope: &Scope, meta: &PageMeta) -> Result<Option<Vec<u8>>> {
        let parts = PageParts {
            raster: true,
            ..PageParts::NONE
        };
        match self
            .store
            .get_pages(scope, &PageSelector::Ids(vec![meta.id]), parts)
        {
            Ok(mut p) => Ok(p.pop().and_then(|p| p.raster_png)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `raster` (whose PNG is `png`) at `tier`, as the update that stores it: encoded now, or left pending (`encode`
    /// false) for the encoder.
    fn aged_update(
        &self,
        raster: &GrayImage,
        tier: Tier,
        png: Vec<u8>,
        encode: bool,
    ) -> Result<PageUpdate> {
        let (tokens, vision_tokens) = if encode {
            let (t, v) = self.encode_tokens(raster, tier, EncodeFor::Background)?;
            (Some(t), v)
        } else {
            (None, tier.vision_tokens())
        };
        Ok(PageUpdate {
            tier: to_store(tier),
            vision_tokens,
            raster_png: png,
            tokens,
        })
    }

    fn age_scope(&self, scope: &Scope, stop: &AtomicBool, report: &mut AgeReport) -> Result<()> {
        let metas = self.store.list_pages(scope)?;
        let n = metas.len();
        for (i, meta) in metas.iter().enumerate() {
            let from = from_store(meta.tier);
            let to = self.cfg.policy.tier_for_rank(n - 1 - i);
            if sharpness(to) >= sharpness(from) {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                report.stopped = true;
                return Ok(());
            }
            let Some(png) = self.raster_of(scope, meta)? else {
                report.skipped += 1;
                continue;
            };
            let raster = downsample(&GrayImage::from_png(&png)?, to)?;
            let png = raster.to_png()?;
            // A pending page stays pending at its new tier: encoding its old raster would be wasted.
            let update = self.aged_update(&raster, to, png, !meta.is_pending())?;
            match self
                .store
                .update_page(scope, meta.id, meta.generation, update)
            {
                Ok(m) => report.aged.push(Aged {
                    scope: scope.clone(),
                    page: meta.id,
                    from,
                    to,
                    embeddings: m.token_rows(),
                }),
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => report.skipped += 1,
                Err(e) => return Err(MemoryError::from(e)),
            }
        }
        Ok(())
    }
}

//! Age: "near sharp, far blurry". Each page whose recency rank now calls for a less sharp tier is moved down: its
//! stored raster is downsampled to the lower tier's size (the same layout, optically blurred), re-encoded at that
//! tier, and its tier, raster and tokens replaced in one atomic `update_page`. Pages never move up.

use optimem_renderer::{GrayImage, Tier, downsample};
use optimem_store::{PageId, PageParts, PageSelector, PageUpdate, Scope, StoreError, VisionTokens};

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
}

impl Memory {
    /// Ages one scope, or every scope of the store.
    pub fn age(&self, scope: Option<&Scope>) -> Result<AgeReport> {
        let scopes = match scope {
            Some(s) => vec![s.clone()],
            None => self.store.list_scopes()?,
        };
        let mut report = AgeReport::default();
        for scope in &scopes {
            self.age_scope(scope, &mut report)?;
        }
        Ok(report)
    }

    fn age_scope(&self, scope: &Scope, report: &mut AgeReport) -> Result<()> {
        let metas = self.store.list_pages(scope)?;
        let n = metas.len();
        for (i, meta) in metas.iter().enumerate() {
            let from = from_store(meta.tier);
            let to = self.cfg.policy.tier_for_rank(n - 1 - i);
            if sharpness(to) >= sharpness(from) {
                continue;
            }
            let parts = PageParts {
                raster: true,
                ..PageParts::NONE
            };
            let page = match self
                .store
                .get_pages(scope, &PageSelector::Ids(vec![meta.id]), parts)
            {
                Ok(mut p) => p.pop(),
                // Forgotten meanwhile: nothing to age.
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(png) = page.and_then(|p| p.raster_png) else {
                report.skipped += 1;
                continue;
            };
            let raster = downsample(&GrayImage::from_png(&png)?, to)?;
            let enc = self.engine.encode(&raster, to)?;
            let tokens = VisionTokens::from_f32(
                &enc.values,
                vec![enc.rows as u32, enc.cols as u32],
                self.cfg.token_dtype,
            )?;
            let update = PageUpdate {
                tier: to_store(to),
                vision_tokens: enc.vision_tokens,
                raster_png: raster.to_png()?,
                tokens,
            };
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

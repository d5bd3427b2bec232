//! Reading pages, memories, stale-page lists and stats.
//!
//! Selectors that need a scan (last N, time range) scan metadata outside a transaction to
//! find the pages, then read each page's metadata and parts again inside one transaction:
//! a page changed or forgotten meanwhile is read whole in its new state or skipped, never
//! half old and half new.

use std::collections::BTreeSet;

use sled::IVec;
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::keys::{memory_key, seq_in_scope};
use super::{SledStore, TxResult, abort, from_tx, tx};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId};
use crate::memory::{Memory, decode_memory};
use crate::page::{Page, PageMeta, decode_meta};
use crate::scope::Scope;
use crate::store::{PageParts, PageSelector, Stats, Store};
use crate::tokens::VisionTokens;

/// Bytes of a page-id key (the UUID).
const ID_KEY_BYTES: u64 = 16;

/// Finds page `id` in this scope: its `pages` key and metadata, or `None` if the page does
/// not exist or belongs to another scope.
pub(super) fn locate(
    page_ids: &TransactionalTree,
    pages: &TransactionalTree,
    enc: &[u8],
    id: PageId,
) -> TxResult<Option<(IVec, PageMeta)>> {
    let Some(key) = page_ids.get(id.to_bytes())? else {
        return Ok(None);
    };
    if seq_in_scope(enc, &key).is_none() {
        return Ok(None);
    }
    match pages.get(&key)? {
        Some(v) => Ok(Some((key, tx(decode_meta(&v))?))),
        None => abort(StoreError::corrupt(format!(
            "page {id} is indexed but has no metadata"
        ))),
    }
}

/// The parts trees a page read needs.
struct Parts<'a> {
    rasters: &'a TransactionalTree,
    tokens: &'a TransactionalTree,
    sources: &'a TransactionalTree,
}

impl Parts<'_> {
    fn part(&self, tree: &TransactionalTree, meta: &PageMeta, what: &str) -> TxResult<IVec> {
        match tree.get(meta.id.to_bytes())? {
            Some(v) => Ok(v),
            None => abort(StoreError::corrupt(format!(
                "page {} has no {what}",
                meta.id
            ))),
        }
    }

    /// Loads the asked-for parts of a page, checking each against its metadata.
    fn load(&self, meta: PageMeta, want: PageParts) -> TxResult<Page> {
        let id = meta.id;
        let raster_png = if want.raster {
            let v = self.part(self.rasters, &meta, "raster")?;
            tx(meta.raster.check(&v, id, "raster"))?;
            Some(v.to_vec())
        } else {
            None
        };
        let tokens = if want.tokens && !meta.is_pending() {
            let v = self.part(self.tokens, &meta, "tokens")?;
            tx(meta.tokens.check(&v, id, "tokens"))?;
            let t = VisionTokens::from_raw(meta.token_dtype, meta.token_shape.clone(), v.to_vec())
                .map_err(|e| StoreError::corrupt(format!("page {id} tokens: {e}")));
            Some(tx(t)?)
        } else {
            None
        };
        let source = match meta.source {
            Some(info) if want.source => {
                let v = self.part(self.sources, &meta, "source")?;
                tx(info.check(&v, id, "source"))?;
                let text = zstd::bulk::decompress(&v, meta.text_bytes as usize)
                    .map_err(|e| StoreError::corrupt(format!("page {id} source: {e}")))
                    .and_then(|b| {
                        String::from_utf8(b).map_err(|_| {
                            StoreError::corrupt(format!("page {id} source is not UTF-8"))
                        })
                    });
                Some(tx(text)?)
            }
            _ => None,
        };
        Ok(Page {
            meta,
            raster_png,
            tokens,
            source,
        })
    }
}

impl SledStore {
    /// Metadata of every page under `prefix` (one scope, or everything when empty), in key
    /// order, with the scope each belongs to.
    fn scan_scoped_metas(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Scope, PageMeta)>> + '_ {
        self.pages.scan_prefix(prefix).map(|kv| {
            let (k, v) = kv?;
            let (scope, rest) = Scope::decode_prefix(&k)?;
            if rest.len() != 8 {
                return Err(StoreError::corrupt("page key has a bad sequence number"));
            }
            Ok((scope, decode_meta(&v)?))
        })
    }

    /// Metadata of a scope's pages, in sequence order.
    pub(super) fn scan_metas(&self, enc: &[u8]) -> Result<Vec<PageMeta>> {
        self.scan_scoped_metas(enc)
            .map(|r| r.map(|(_, m)| m))
            .collect()
    }

    pub(super) fn get_pages_inner(
        &self,
        scope: &Scope,
        selector: &PageSelector,
        want: PageParts,
    ) -> Result<Vec<Page>> {
        let enc = scope.encode();
        // Pages to read, by id; `true` when a missing page is an error rather than a race.
        let (ids, must_exist): (Vec<PageId>, bool) = match selector {
            PageSelector::Ids(ids) => (ids.clone(), true),
            PageSelector::Memories(mids) => {
                let mems = self.get_memories_inner(scope, mids)?;
                (mems.into_iter().flat_map(|m| m.pages).collect(), false)
            }
            PageSelector::LastN(n) => {
                let mut ids = Vec::new();
                for v in self.pages.scan_prefix(&enc).values().rev().take(*n) {
                    ids.push(decode_meta(&v?)?.id);
                }
                (ids, false)
            }
            PageSelector::TimeRange(range) => {
                let metas = self.scan_metas(&enc)?;
                let hit =
                    |m: &PageMeta| m.first_memory_ms < range.end && m.last_memory_ms >= range.start;
                (metas.into_iter().filter(hit).map(|m| m.id).collect(), false)
            }
        };
        let unique: BTreeSet<PageId> = ids.into_iter().collect();
        let trees = (
            &self.page_ids,
            &self.pages,
            &self.rasters,
            &self.tokens,
            &self.sources,
        );
        let mut pages = from_tx(trees.transaction(
            |(page_ids, pages, rasters, tokens, sources)| {
                let parts = Parts {
                    rasters,
                    tokens,
                    sources,
                };
                let mut out = Vec::with_capacity(unique.len());
                for &id in &unique {
                    match locate(page_ids, pages, &enc, id)? {
                        Some((_, meta)) => out.push(parts.load(meta, want)?),
                        None if must_exist => {
                            return abort(StoreError::NotFound(format!(
                                "page {id} in scope {scope}"
                            )));
                        }
                        None => {}
                    }
                }
                Ok(out)
            },
        ))?;
        pages.sort_by_key(|p| p.meta.seq);
        Ok(pages)
    }

    pub(super) fn get_memories_inner(
        &self,
        scope: &Scope,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>> {
        let enc = scope.encode();
        ids.iter()
            .map(|&id| match self.memories.get(memory_key(&enc, id))? {
                Some(v) => decode_memory(&v),
                None => Err(StoreError::NotFound(format!(
                    "memory {id} in scope {scope}"
                ))),
            })
            .collect()
    }

    /// Pages of one scope or everywhere for which `keep(meta, store's model id)` holds, in key order.
    pub(super) fn pages_where(
        &self,
        scope: Option<&Scope>,
        keep: impl Fn(&PageMeta, &str) -> bool,
    ) -> Result<Vec<(Scope, PageMeta)>> {
        let prefix = scope.map(Scope::encode).unwrap_or_default();
        let mut out = Vec::new();
        for r in self.scan_scoped_metas(&prefix) {
            let (s, m) = r?;
            if keep(&m, self.model_id()) {
                out.push((s, m));
            }
        }
        Ok(out)
    }

    pub(super) fn stats_inner(&self, scope: Option<&Scope>) -> Result<Stats> {
        let prefix = scope.map(Scope::encode).unwrap_or_default();
        let mut st = Stats::default();
        for kv in self.pages.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let m = decode_meta(&v)?;
            st.pages += 1;
            st.pages_per_tier[m.tier.code() as usize] += 1;
            st.vision_tokens += u64::from(m.vision_tokens);
            st.token_rows += m.token_rows();
            st.text_tokens += u64::from(m.text_tokens);
            st.text_bytes += u64::from(m.text_bytes);
            if m.is_pending() {
                st.pending_pages += 1;
                st.pending_per_tier[m.tier.code() as usize] += 1;
            } else {
                st.stale_pages += u64::from(m.model_id != self.model_id());
                st.bytes.tokens += ID_KEY_BYTES + m.tokens.bytes;
            }
            st.bytes.rasters += ID_KEY_BYTES + m.raster.bytes;
            st.bytes.sources += m.source.map_or(0, |s| ID_KEY_BYTES + s.bytes);
            // The `pages` entry and its `page_ids` entry (id → key).
            st.bytes.metadata += (k.len() + v.len()) as u64 + ID_KEY_BYTES + k.len() as u64;
        }
        for kv in self.memories.scan_prefix(&prefix) {
            let (k, v) = kv?;
            st.memories += 1;
            st.bytes.metadata += (k.len() + v.len()) as u64;
        }
        // Scope encodings are prefix-free, so with a scope this finds only its own head.
        for kv in self.heads.scan_prefix(&prefix) {
            let (k, v) = kv?;
            st.scopes += 1;
            st.bytes.metadata += (k.len() + v.len()) as u64;
        }
        st.db_bytes_on_disk = self.db.size_on_disk()?;
        Ok(st)
    }
}

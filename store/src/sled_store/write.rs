//! Writing pages and updating them (ageing, re-encoding), each in one transaction.
//!
//! Input is checked before the transaction (shapes, spans, PNG signature) and against the
//! stored state inside it (memory ids, the last page, generations); any failure aborts the
//! transaction, so a rejected request leaves the store exactly as it was.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use sled::IVec;
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::keys::{Head, memory_key, page_key};
use super::{SledStore, TxResult, abort, from_tx, now_ms, tx};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId, Tier};
use crate::memory::{Memory, decode_memory, encode_memory};
use crate::page::{
    NewPage, PageMeta, PageUpdate, PartInfo, Span, TokenState, decode_meta, encode_meta,
};
use crate::scope::Scope;
use crate::store::{WritePages, WriteReceipt};
use crate::tokens::{TokenDtype, VisionTokens};

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// zstd level for source text: level 3 is zstd's default, fast and within a few percent of
/// the higher levels on prose.
const SOURCE_ZSTD_LEVEL: i32 = 3;

/// A page checked and encoded, ready to be written (possibly more than once, if sled
/// retries the transaction: the blobs are `IVec`s, so a retry does not copy them).
struct Prepared {
    id: PageId,
    tier: Tier,
    text_tokens: u32,
    text_bytes: u32,
    vision_tokens: u32,
    spans: Vec<Span>,
    raster: IVec,
    raster_info: PartInfo,
    tokens: TokenParts,
    source: Option<(IVec, PartInfo)>,
}

/// What the metadata records of a page's tokens, and their stored bytes (`None` while pending).
#[derive(Clone)]
struct TokenParts {
    state: TokenState,
    dtype: TokenDtype,
    shape: Vec<u32>,
    info: PartInfo,
    bytes: Option<IVec>,
}

impl TokenParts {
    fn of(tokens: Option<VisionTokens>) -> Self {
        match tokens {
            Some(t) => {
                let (dtype, shape) = (t.dtype(), t.shape().to_vec());
                let bytes = t.into_bytes();
                Self {
                    state: TokenState::Encoded,
                    dtype,
                    shape,
                    info: PartInfo::of(&bytes),
                    bytes: Some(IVec::from(bytes)),
                }
            }
            // A pending page records no shape and no bytes; the dtype is a placeholder until the tokens come.
            None => Self {
                state: TokenState::Pending,
                dtype: TokenDtype::F16,
                shape: vec![],
                info: PartInfo { bytes: 0, crc32: 0 },
                bytes: None,
            },
        }
    }

    /// Records these tokens in `meta`, stamped with `model_id` when encoded.
    fn stamp(&self, meta: &mut PageMeta, model_id: &str) {
        meta.token_state = self.state;
        meta.model_id = match self.state {
            TokenState::Encoded => model_id.to_owned(),
            TokenState::Pending => String::new(),
        };
        meta.token_dtype = self.dtype;
        meta.token_shape = self.shape.clone();
        meta.tokens = self.info;
    }

    /// Writes the bytes under the page's id, or removes a previous version's while pending.
    fn store(&self, tokens: &TransactionalTree, idb: &[u8]) -> TxResult<()> {
        match &self.bytes {
            Some(b) => {
                tokens.insert(idb, b.clone())?;
            }
            None => {
                tokens.remove(idb)?;
            }
        }
        Ok(())
    }
}

fn check_png(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(StoreError::invalid("raster is not a PNG (bad signature)"));
    }
    Ok(())
}

impl SledStore {
    fn prepare(&self, index: usize, p: NewPage) -> Result<Prepared> {
        let bad = |what: String| StoreError::invalid(format!("page {index}: {what}"));
        check_png(&p.raster_png).map_err(|e| bad(e.to_string()))?;
        let text_bytes =
            u32::try_from(p.source.len()).map_err(|_| bad("source text over 4 GiB".into()))?;
        if p.spans.is_empty() {
            return Err(bad("holds no memory span".into()));
        }
        for s in &p.spans {
            if s.text.start >= s.text.end || s.page.start >= s.page.end {
                return Err(bad(format!(
                    "span of memory {} is empty or reversed",
                    s.memory
                )));
            }
            if s.page.end > text_bytes {
                return Err(bad(format!(
                    "span of memory {} ends at byte {} of a {text_bytes}-byte page",
                    s.memory, s.page.end
                )));
            }
        }
        let source = if self.opts.keep_source {
            let z = zstd::bulk::compress(p.source.as_bytes(), SOURCE_ZSTD_LEVEL).map_err(|e| {
                StoreError::invalid(format!("page {index}: compressing source: {e}"))
            })?;
            let info = PartInfo::of(&z);
            Some((IVec::from(z), info))
        } else {
            None
        };
        let raster_info = PartInfo::of(&p.raster_png);
        Ok(Prepared {
            id: PageId::new(),
            tier: p.tier,
            text_tokens: p.text_tokens,
            text_bytes,
            vision_tokens: p.vision_tokens,
            spans: p.spans,
            raster: IVec::from(p.raster_png),
            raster_info,
            tokens: TokenParts::of(p.tokens),
            source,
        })
    }

    pub(super) fn write_pages_inner(
        &self,
        scope: &Scope,
        write: WritePages,
    ) -> Result<WriteReceipt> {
        let WritePages {
            memories: new_memories,
            replace_last,
            pages,
        } = write;
        if pages.is_empty() {
            return Err(StoreError::invalid("a write needs at least one page"));
        }
        let mut fresh: BTreeMap<MemoryId, Memory> = BTreeMap::new();
        for m in new_memories {
            m.validate()?;
            let id = m.id;
            if fresh.insert(id, Memory::from_new(m)).is_some() {
                return Err(StoreError::invalid(format!("memory {id} is given twice")));
            }
        }
        let prepared = pages
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.prepare(i, p))
            .collect::<Result<Vec<_>>>()?;
        if let Some(id) = fresh.keys().find(|id| {
            !prepared
                .iter()
                .any(|p| p.spans.iter().any(|s| s.memory == **id))
        }) {
            return Err(StoreError::invalid(format!(
                "memory {id} lies on none of the pages written"
            )));
        }
        let enc = scope.encode();
        let now = now_ms();
        let trees = self.all_trees();
        let pages = from_tx(trees.transaction(|(heads, pages, page_ids, memories, rasters, tokens, sources)| {
            let mut head = match heads.get(&enc)? {
                Some(v) => tx(Head::decode(&v))?,
                None => Head::default(),
            };
            let mut touched: BTreeMap<MemoryId, Memory> = BTreeMap::new();
            for (id, m) in &fresh {
                if memories.get(memory_key(&enc, *id))?.is_some() {
                    return abort(StoreError::invalid(format!("memory {id} is already stored in this scope")));
                }
                touched.insert(*id, m.clone());
            }
            let mut out = Vec::with_capacity(prepared.len());
            for (i, p) in prepared.iter().enumerate() {
                let (id, seq, created_ms, generation) = match replace_last.filter(|_| i == 0) {
                    Some(r) => {
                        let old = match head.next_seq.checked_sub(1) {
                            Some(seq) => pages.get(page_key(&enc, seq))?,
                            None => None,
                        };
                        let old = match old {
                            Some(v) => tx(decode_meta(&v))?,
                            None => return abort(StoreError::Conflict(format!("page {} is not the scope's last page", r.id))),
                        };
                        if old.id != r.id || old.generation != r.generation {
                            return abort(StoreError::Conflict(format!(
                                "page {} at generation {} is not the scope's last page (that is {} at generation {})",
                                r.id, r.generation, old.id, old.generation
                            )));
                        }
                        for mid in old.memories() {
                            load(&mut touched, memories, &enc, mid)?.pages.retain(|pid| *pid != old.id);
                        }
                        if p.source.is_none() {
                            sources.remove(&old.id.to_bytes())?;
                        }
                        (old.id, old.seq, old.created_ms, old.generation + 1)
                    }
                    None => {
                        head.next_seq += 1;
                        (p.id, head.next_seq - 1, now, 0)
                    }
                };
                let (mut first, mut last) = (u64::MAX, 0);
                for s in &p.spans {
                    let m = load(&mut touched, memories, &enc, s.memory)?;
                    if s.text.end > m.text_bytes {
                        return abort(StoreError::invalid(format!(
                            "page {i}: span ends at byte {} of memory {} which has {} bytes",
                            s.text.end, s.memory, m.text_bytes
                        )));
                    }
                    first = first.min(m.time_ms);
                    last = last.max(m.time_ms);
                    if !m.pages.contains(&id) {
                        m.pages.push(id);
                    }
                }
                let mut meta = PageMeta {
                    id,
                    seq,
                    created_ms,
                    updated_ms: now,
                    generation,
                    tier: p.tier,
                    text_tokens: p.text_tokens,
                    text_bytes: p.text_bytes,
                    vision_tokens: p.vision_tokens,
                    spans: p.spans.clone(),
                    first_memory_ms: first,
                    last_memory_ms: last,
                    token_state: TokenState::Pending,
                    model_id: String::new(),
                    token_dtype: TokenDtype::F16,
                    token_shape: vec![],
                    tokens: PartInfo { bytes: 0, crc32: 0 },
                    raster: p.raster_info,
                    source: p.source.as_ref().map(|(_, info)| *info),
                };
                p.tokens.stamp(&mut meta, &self.opts.model_id);
                let key = page_key(&enc, seq);
                let idb = id.to_bytes();
                pages.insert(key.as_slice(), encode_meta(&meta))?;
                page_ids.insert(&idb, key)?;
                rasters.insert(&idb, p.raster.clone())?;
                p.tokens.store(tokens, &idb)?;
                if let Some((z, _)) = &p.source {
                    sources.insert(&idb, z.clone())?;
                }
                out.push(meta);
            }
            for (id, m) in &touched {
                if m.pages.is_empty() {
                    return abort(StoreError::invalid(format!("the replacement page drops memory {id} from every page")));
                }
                memories.insert(memory_key(&enc, *id), encode_memory(m))?;
            }
            head.version += 1;
            heads.insert(enc.as_slice(), head.encode())?;
            Ok(out)
        }))?;
        Ok(WriteReceipt { pages })
    }

    pub(super) fn update_page_inner(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        update: PageUpdate,
    ) -> Result<PageMeta> {
        check_png(&update.raster_png)?;
        let enc = scope.encode();
        let raster_info = PartInfo::of(&update.raster_png);
        let raster = IVec::from(update.raster_png);
        let token_parts = TokenParts::of(update.tokens);
        let now = now_ms();
        let trees = (
            &self.heads,
            &self.pages,
            &self.page_ids,
            &self.rasters,
            &self.tokens,
        );
        from_tx(
            trees.transaction(|(heads, pages, page_ids, rasters, tokens)| {
                let Some((key, mut meta)) = super::read::locate(page_ids, pages, &enc, id)? else {
                    return abort(StoreError::NotFound(format!("page {id} in scope {scope}")));
                };
                if meta.generation != expected_generation {
                    return abort(StoreError::Conflict(format!(
                        "page {id} is at generation {}, not {expected_generation}",
                        meta.generation
                    )));
                }
                meta.tier = update.tier;
                meta.vision_tokens = update.vision_tokens;
                token_parts.stamp(&mut meta, &self.opts.model_id);
                meta.raster = raster_info;
                meta.updated_ms = now;
                meta.generation += 1;
                let idb = id.to_bytes();
                pages.insert(key, encode_meta(&meta))?;
                rasters.insert(&idb, raster.clone())?;
                token_parts.store(tokens, &idb)?;
                bump_version(heads, &enc)?;
                Ok(meta)
            }),
        )
    }

    pub(super) fn put_tokens_inner(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        tokens: VisionTokens,
    ) -> Result<PageMeta> {
        let enc = scope.encode();
        let token_parts = TokenParts::of(Some(tokens));
        let now = now_ms();
        let trees = (&self.heads, &self.pages, &self.page_ids, &self.tokens);
        from_tx(trees.transaction(|(heads, pages, page_ids, tokens)| {
            let Some((key, mut meta)) = super::read::locate(page_ids, pages, &enc, id)? else {
                return abort(StoreError::NotFound(format!("page {id} in scope {scope}")));
            };
            if meta.generation != expected_generation {
                return abort(StoreError::Conflict(format!(
                    "page {id} is at generation {}, not {expected_generation}: its raster changed",
                    meta.generation
                )));
            }
            if !meta.needs_tokens(&self.opts.model_id) {
                return abort(StoreError::Conflict(format!(
                    "page {id} already holds tokens of model {:?}",
                    meta.model_id
                )));
            }
            token_parts.stamp(&mut meta, &self.opts.model_id);
            meta.updated_ms = now;
            pages.insert(key, encode_meta(&meta))?;
            token_parts.store(tokens, &id.to_bytes())?;
            bump_version(heads, &enc)?;
            Ok(meta)
        }))
    }
}

/// The memory `id` of this scope, from this transaction's working set or the store.
fn load<'a>(
    touched: &'a mut BTreeMap<MemoryId, Memory>,
    memories: &TransactionalTree,
    enc: &[u8],
    id: MemoryId,
) -> TxResult<&'a mut Memory> {
    match touched.entry(id) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(e) => match memories.get(memory_key(enc, id))? {
            Some(v) => Ok(e.insert(tx(decode_memory(&v))?)),
            None => abort(StoreError::invalid(format!(
                "memory {id} is neither in this write nor stored in this scope"
            ))),
        },
    }
}

/// Marks the scope as changed (see `Head::version`).
pub(super) fn bump_version(heads: &TransactionalTree, enc: &[u8]) -> TxResult<()> {
    let mut head = match heads.get(enc)? {
        Some(v) => tx(Head::decode(&v))?,
        None => return abort(StoreError::corrupt("a scope with pages has no head")),
    };
    head.version += 1;
    heads.insert(enc, head.encode())?;
    Ok(())
}

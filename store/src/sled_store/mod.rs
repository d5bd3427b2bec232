//! `SledStore`: the single-node [`Store`] on sled 0.34.
//!
//! Every change is one sled transaction over the trees it touches. sled seals a
//! transaction's writes as one batch in its log, so after a crash recovery replays all of
//! it or none of it; `Durability::Flush` then calls `Db::flush` before the method returns.
//! Reads of a page's metadata and heavy parts happen inside one transaction too, so a
//! concurrent ageing can never hand a reader the new raster with the old tokens.

mod forget;
mod keys;
mod read;
mod write;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::codec::{Reader, Writer};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId};
use crate::memory::Memory;
use crate::page::{Page, PageMeta, PageUpdate};
use crate::scope::Scope;
use crate::store::{ForgetReport, PageParts, PageSelector, Stats, Store, WritePages, WriteReceipt};
use crate::tokens::VisionTokens;

/// The on-disk schema this build writes. Version 2 added pending tokens (`TokenState`).
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest schema this build opens. A version 1 store is migrated on open by recording
/// version 2: its page records (format 1) read as encoded pages, and records written from
/// then on are format 2, so the schema number keeps an older build from misreading them
/// (it refuses the store with `SchemaMismatch`).
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `Db::flush` (fsync) before every mutating method returns: an acknowledged write
    /// survives a crash.
    Flush,
    /// Acknowledge once applied in memory; sled's flusher fsyncs every `every_ms`
    /// milliseconds, so a crash may lose the writes of the last interval (each one whole).
    Background { every_ms: u64 },
}

/// What to do when the store was written by another model than the one opening it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnModelMismatch {
    /// Open, record the new model id, and report the stale pages (`Store::stale_pages`) so
    /// the caller re-encodes them from their rasters with `Store::update_page`.
    Reencode,
    /// Refuse to open with `StoreError::ModelMismatch`.
    Refuse,
}

/// How to open a [`SledStore`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The model whose tokens are written from now on (stamped on every page written).
    pub model_id: String,
    pub durability: Durability,
    pub on_model_mismatch: OnModelMismatch,
    /// Retention policy: keep each page's source text (zstd) for exact recall.
    pub keep_source: bool,
    /// sled's page cache size.
    pub cache_capacity_bytes: u64,
}

impl OpenOptions {
    /// Defaults: flush every write, re-encode on model change, keep sources, 64 MiB cache.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            durability: Durability::Flush,
            on_model_mismatch: OnModelMismatch::Reencode,
            keep_source: true,
            cache_capacity_bytes: 64 << 20,
        }
    }
}

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The model id the store held before, when it differed from the one opening it.
    pub previous_model_id: Option<String>,
    /// Pages whose tokens another model made (to re-encode).
    pub stale_pages: u64,
    /// Pages whose tokens are pending (to encode).
    pub pending_pages: u64,
    /// The schema version the store had when it was migrated to [`SCHEMA_VERSION`] by this open.
    pub migrated_from: Option<u32>,
}

/// The sled-backed store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    heads: sled::Tree,
    pages: sled::Tree,
    page_ids: sled::Tree,
    memories: sled::Tree,
    rasters: sled::Tree,
    tokens: sled::Tree,
    sources: sled::Tree,
    opts: OpenOptions,
    report: OpenReport,
}

/// `heads, pages, page_ids, memories, rasters, tokens, sources`.
type AllTrees<'a> = (
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
);

const MODEL_ID_MAX_BYTES: usize = 1024;

/// How long `open` waits for the store's file lock to be released (see `open_when_unlocked`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens `config`'s database, waiting up to `LOCK_WAIT` while its file lock is held. A `sled::Db` dropped in this
/// process releases the lock only when its background flusher thread has seen the drop, a few milliseconds later, so
/// a store reopened at once (a server restarted in process, a test) could find its own old lock; a lock held by
/// another process still fails, after the wait. sled 0.34 reports the lock as an I/O error with this message only.
fn open_when_unlocked(config: &sled::Config) -> std::result::Result<sled::Db, sled::Error> {
    let start = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store at `path`. Fails with `SchemaMismatch` on a store of
    /// another schema, with `ModelMismatch` on another model's store under
    /// `OnModelMismatch::Refuse`, and with `Storage` if another process holds it.
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Self> {
        if opts.model_id.is_empty() || opts.model_id.len() > MODEL_ID_MAX_BYTES {
            return Err(StoreError::invalid(format!(
                "model id must be 1..={MODEL_ID_MAX_BYTES} bytes"
            )));
        }
        let every_ms = match opts.durability {
            Durability::Flush => 500,
            Durability::Background { every_ms } => every_ms.max(1),
        };
        let config = sled::Config::new()
            .path(path.as_ref())
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(Some(every_ms));
        let db = open_when_unlocked(&config)?;
        let meta = db.open_tree("meta")?;
        let pages = db.open_tree("pages")?;
        let (previous_model_id, migrated_from) = check_meta(&meta, &pages, &opts)?;
        let store = Self {
            heads: db.open_tree("heads")?,
            page_ids: db.open_tree("page_ids")?,
            memories: db.open_tree("memories")?,
            rasters: db.open_tree("rasters")?,
            tokens: db.open_tree("tokens")?,
            sources: db.open_tree("sources")?,
            pages,
            db,
            opts,
            report: OpenReport::default(),
        };
        let (mut stale_pages, mut pending_pages) = (0, 0);
        for (_, m) in store.pages_to_encode(None)? {
            if m.is_pending() {
                pending_pages += 1;
            } else {
                stale_pages += 1;
            }
        }
        Ok(Self {
            report: OpenReport {
                previous_model_id,
                stale_pages,
                pending_pages,
                migrated_from,
            },
            ..store
        })
    }

    /// What `open` found (model change, stale pages).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &OpenOptions {
        &self.opts
    }

    /// Every data tree, in one fixed order, for the transactions that may touch any of them.
    fn all_trees(&self) -> AllTrees<'_> {
        (
            &self.heads,
            &self.pages,
            &self.page_ids,
            &self.memories,
            &self.rasters,
            &self.tokens,
            &self.sources,
        )
    }

    /// Runs one page-writing transaction in a `store.commit` span, then acknowledges it.
    fn commit<T>(&self, pages: usize, transaction: impl FnOnce() -> Result<T>) -> Result<T> {
        let done = {
            let _span = tracing::info_span!("store.commit", pages).entered();
            transaction()?
        };
        self.ack()?;
        Ok(done)
    }

    /// Acknowledges a mutation per the durability setting.
    fn ack(&self) -> Result<()> {
        if self.opts.durability == Durability::Flush {
            let _span = tracing::info_span!("store.flush").entered();
            self.db.flush()?;
        }
        Ok(())
    }
}

/// Checks or initialises the `meta` tree (migrating an older schema, see
/// [`OLDEST_SCHEMA_VERSION`]); returns the previous model id when it changed, and the schema
/// migrated from.
fn check_meta(
    meta: &sled::Tree,
    pages: &sled::Tree,
    opts: &OpenOptions,
) -> Result<(Option<String>, Option<u32>)> {
    const WHAT: &str = "meta";
    let mut migrated_from = None;
    match meta.get("schema_version")? {
        Some(v) => {
            let mut r = Reader::new(&v, WHAT, 1)?;
            let found = r.u32()?;
            r.finish()?;
            if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&found) {
                return Err(StoreError::SchemaMismatch {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found != SCHEMA_VERSION {
                migrated_from = Some(found);
            }
        }
        None if !pages.is_empty() => {
            return Err(StoreError::corrupt(
                "store holds pages but no schema version",
            ));
        }
        None => {}
    }
    let stored = match meta.get("model_id")? {
        Some(v) => {
            let mut r = Reader::new(&v, WHAT, 1)?;
            let id = r.string()?;
            r.finish()?;
            Some(id)
        }
        None => None,
    };
    let previous = stored.filter(|s| *s != opts.model_id);
    if let Some(stored) = &previous
        && opts.on_model_mismatch == OnModelMismatch::Refuse
    {
        return Err(StoreError::ModelMismatch {
            stored: stored.clone(),
            requested: opts.model_id.clone(),
        });
    }
    let mut schema = Writer::new(1);
    schema.u32(SCHEMA_VERSION);
    let mut model = Writer::new(1);
    model.str(&opts.model_id);
    let mut batch = sled::Batch::default();
    batch.insert("schema_version", schema.finish());
    batch.insert("model_id", model.finish());
    meta.apply_batch(batch)?;
    meta.flush()?;
    Ok((previous, migrated_from))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// Aborts the transaction with a store error.
fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Lifts a store result into a transaction result (aborting on error).
fn tx<T>(r: Result<T>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

fn from_tx<T>(r: std::result::Result<T, TransactionError<StoreError>>) -> Result<T> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Storage(e),
    })
}

impl Store for SledStore {
    fn model_id(&self) -> &str {
        &self.opts.model_id
    }

    fn write_pages(&self, scope: &Scope, write: WritePages) -> Result<WriteReceipt> {
        self.commit(write.pages.len(), || self.write_pages_inner(scope, write))
    }

    fn get_pages(
        &self,
        scope: &Scope,
        selector: &PageSelector,
        parts: PageParts,
    ) -> Result<Vec<Page>> {
        let _span = tracing::info_span!("store.read").entered();
        self.get_pages_inner(scope, selector, parts)
    }

    fn list_pages(&self, scope: &Scope) -> Result<Vec<PageMeta>> {
        self.scan_metas(&scope.encode())
    }

    fn get_memories(&self, scope: &Scope, ids: &[MemoryId]) -> Result<Vec<Memory>> {
        self.get_memories_inner(scope, ids)
    }

    fn update_page(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        update: PageUpdate,
    ) -> Result<PageMeta> {
        self.commit(1, || {
            self.update_page_inner(scope, id, expected_generation, update)
        })
    }

    fn forget_scope(&self, scope: &Scope) -> Result<ForgetReport> {
        let report = self.forget_scope_inner(scope)?;
        self.ack()?;
        Ok(report)
    }

    fn forget_memories(&self, scope: &Scope, ids: &[MemoryId]) -> Result<ForgetReport> {
        let report = self.forget_memories_inner(scope, ids)?;
        self.ack()?;
        Ok(report)
    }

    fn put_tokens(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        tokens: VisionTokens,
    ) -> Result<PageMeta> {
        self.commit(1, || {
            self.put_tokens_inner(scope, id, expected_generation, tokens)
        })
    }

    fn stale_pages(&self, scope: Option<&Scope>) -> Result<Vec<(Scope, PageMeta)>> {
        self.pages_where(scope, |m, model| !m.is_pending() && m.model_id != model)
    }

    fn pages_to_encode(&self, scope: Option<&Scope>) -> Result<Vec<(Scope, PageMeta)>> {
        self.pages_where(scope, PageMeta::needs_tokens)
    }

    fn stats(&self, scope: Option<&Scope>) -> Result<Stats> {
        self.stats_inner(scope)
    }

    fn list_scopes(&self) -> Result<Vec<Scope>> {
        self.heads
            .iter()
            .keys()
            .map(|k| Ok(Scope::decode_prefix(&k?)?.0))
            .collect()
    }

    fn flush(&self) -> Result<()> {
        let _span = tracing::info_span!("store.flush").entered();
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The `Store` trait: the boundary between the memory logic and a storage backend.
//!
//! The trait is object-safe (`Arc<dyn Store>`) so that the service chooses its backend at
//! start-up from configuration — the local [`SledStore`](crate::SledStore) today, a
//! distributed one on a clustered KV later (DESIGN.md §8) — without making the memory logic
//! and the service generic over it. Methods are blocking: the service calls them from
//! `spawn_blocking`, which suits sled and costs a networked backend one thread per call in
//! flight, a price that is small next to encoding a page.
//!
//! Every method takes the scope it acts in; nothing crosses scopes except the store-wide
//! reports (`stats(None)`, `stale_pages(None)`, `pages_to_encode(None)`) and `list_scopes`.

use std::ops::Range;

use crate::error::Result;
use crate::ids::{MemoryId, PageId, Tier};
use crate::memory::{Memory, NewMemory};
use crate::page::{NewPage, Page, PageMeta, PageUpdate};
use crate::scope::Scope;
use crate::tokens::VisionTokens;

/// One atomic write to a scope: new memories and the pages that hold them.
#[derive(Clone, Debug, Default)]
pub struct WritePages {
    /// Memories first named by this write; every one must appear in some page's spans.
    pub memories: Vec<NewMemory>,
    /// Replace the scope's last page by the first of `pages` (same id and sequence number),
    /// e.g. when new messages fill a page that was written half empty. Fails with
    /// `Conflict` unless that page is still the last one and still at that generation.
    pub replace_last: Option<ReplaceLast>,
    /// Pages in order; appended after the scope's last page.
    pub pages: Vec<NewPage>,
}

/// Which page `WritePages::replace_last` expects to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceLast {
    pub id: PageId,
    pub generation: u64,
}

/// What a write did, acknowledged only once durable per the store's `Durability`.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReceipt {
    /// Metadata of every page written, in order (the replaced page first, if any).
    pub pages: Vec<PageMeta>,
}

/// Which pages of a scope to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageSelector {
    /// These pages, in sequence order; `NotFound` if any is not in the scope.
    Ids(Vec<PageId>),
    /// The newest `n` pages, in sequence order.
    LastN(usize),
    /// Pages whose memories' times (ms) — from the earliest to the latest on the page —
    /// overlap the range, in sequence order.
    TimeRange(Range<u64>),
    /// The pages these memories lie on, in sequence order; `NotFound` if a memory is not
    /// in the scope.
    Memories(Vec<MemoryId>),
}

/// Which heavy parts of a page to load (metadata always comes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageParts {
    pub raster: bool,
    pub tokens: bool,
    pub source: bool,
}

impl PageParts {
    pub const ALL: Self = Self {
        raster: true,
        tokens: true,
        source: true,
    };
    pub const NONE: Self = Self {
        raster: false,
        tokens: false,
        source: false,
    };
}

/// What a forget removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgetReport {
    pub pages: Vec<PageId>,
    pub memories: Vec<MemoryId>,
    /// Memories that were not asked to be forgotten but shared a removed page with one
    /// that was: their pieces on those pages are gone (the forgotten text must not survive
    /// on a raster). The memory logic may re-remember them from their other pages.
    pub partially_lost: Vec<MemoryId>,
}

/// Logical bytes stored, by kind (keys plus values, before sled's own overhead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BytesByKind {
    pub tokens: u64,
    pub rasters: u64,
    /// zstd-compressed source texts.
    pub sources: u64,
    /// Page metadata, memories, indexes and per-scope heads.
    pub metadata: u64,
}

impl BytesByKind {
    pub fn total(&self) -> u64 {
        self.tokens + self.rasters + self.sources + self.metadata
    }
}

/// Counts and sizes of a scope or of the whole store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub scopes: u64,
    pub pages: u64,
    /// Pages per tier, indexed by `Tier::code()`.
    pub pages_per_tier: [u64; 5],
    pub memories: u64,
    /// The paper's vision-token counts, summed.
    pub vision_tokens: u64,
    /// Token vectors actually stored (embeddings fed to the decoder), summed.
    pub token_rows: u64,
    pub text_tokens: u64,
    pub text_bytes: u64,
    /// Pages whose tokens were made by another model than the store's.
    pub stale_pages: u64,
    /// Pages whose tokens are pending (written write-behind, not encoded yet).
    pub pending_pages: u64,
    /// Pending pages per tier, indexed by `Tier::code()`.
    pub pending_per_tier: [u64; 5],
    pub bytes: BytesByKind,
    /// Size of the whole database on disk (all scopes, with the engine's overhead).
    pub db_bytes_on_disk: u64,
}

impl Stats {
    pub fn pages_at(&self, tier: Tier) -> u64 {
        self.pages_per_tier[tier.code() as usize]
    }

    pub fn pending_at(&self, tier: Tier) -> u64 {
        self.pending_per_tier[tier.code() as usize]
    }

    /// Text tokens per vision token (the paper's compression ratio); `None` when empty.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.vision_tokens > 0).then(|| self.text_tokens as f64 / self.vision_tokens as f64)
    }
}

/// A storage backend for optical memory. See the module doc for why it is object-safe
/// and blocking, and the crate doc for the durability contract every backend keeps.
pub trait Store: Send + Sync {
    /// The model whose tokens this store holds; pages from another model are stale.
    fn model_id(&self) -> &str;

    /// Writes memories and pages to a scope in one atomic change.
    fn write_pages(&self, scope: &Scope, write: WritePages) -> Result<WriteReceipt>;

    /// Reads pages with the requested parts, in sequence order.
    fn get_pages(
        &self,
        scope: &Scope,
        selector: &PageSelector,
        parts: PageParts,
    ) -> Result<Vec<Page>>;

    /// Metadata of every page of a scope, in sequence order, without heavy parts.
    fn list_pages(&self, scope: &Scope) -> Result<Vec<PageMeta>>;

    /// Reads memories by id; `NotFound` if any is not in the scope.
    fn get_memories(&self, scope: &Scope, ids: &[MemoryId]) -> Result<Vec<Memory>>;

    /// Replaces a page's tier, raster and tokens (ageing), stamping the store's model id (or
    /// leaving the page pending when the update has no tokens), if the page is still at
    /// `expected_generation` (else `Conflict`). Bumps the generation.
    fn update_page(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        update: PageUpdate,
    ) -> Result<PageMeta>;

    /// Stores the tokens of a page that needs them (pending, or made by another model),
    /// encoded from its raster at `expected_generation`, stamping the store's model id. Fails
    /// with `Conflict` if the page changed since (aged, refilled: a new generation) or no
    /// longer needs tokens (someone else stored them), and `NotFound` if it was forgotten;
    /// nothing is written then. Filling in tokens changes neither what the page shows nor
    /// its generation, so a Remember that read the page before can still refill it.
    fn put_tokens(
        &self,
        scope: &Scope,
        id: PageId,
        expected_generation: u64,
        tokens: VisionTokens,
    ) -> Result<PageMeta>;

    /// Removes every page and memory of a scope.
    fn forget_scope(&self, scope: &Scope) -> Result<ForgetReport>;

    /// Removes memories and every page holding a piece of them.
    fn forget_memories(&self, scope: &Scope, ids: &[MemoryId]) -> Result<ForgetReport>;

    /// Pages whose tokens another model made, in one scope or everywhere.
    fn stale_pages(&self, scope: Option<&Scope>) -> Result<Vec<(Scope, PageMeta)>>;

    /// Pages whose tokens must be encoded from their rasters — pending, or made by another
    /// model — in one scope or everywhere, in key order (scope, then sequence).
    fn pages_to_encode(&self, scope: Option<&Scope>) -> Result<Vec<(Scope, PageMeta)>>;

    /// Counts and sizes of one scope or of the whole store.
    fn stats(&self, scope: Option<&Scope>) -> Result<Stats>;

    /// Every scope written to and not forgotten since (`forget_scope` removes it; a scope
    /// whose memories were all forgotten one by one stays, keeping its sequence counter).
    fn list_scopes(&self) -> Result<Vec<Scope>>;

    /// Makes every write so far durable (a no-op cost under `Durability::Flush`).
    fn flush(&self) -> Result<()>;
}

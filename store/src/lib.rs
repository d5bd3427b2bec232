//! `optimem-store`: the durable store of optical memory — scopes, memories, pages, their
//! rasters, vision tokens and source text — on sled.
//!
//! The store knows nothing of models, rendering or gRPC. A page's raster is PNG bytes, its
//! vision tokens an opaque typed array ([`VisionTokens`]: shape, dtype, bytes) stamped with
//! the id of the model that made them. The memory logic in the main crate decides what to
//! render, encode and age; this crate keeps the result safe and gives it back in order.
//!
//! ```
//! use optimem_store::*;
//! # fn main() -> Result<()> {
//! let dir = tempfile::tempdir().map_err(|e| StoreError::InvalidInput(e.to_string()))?;
//! let store = SledStore::open(dir.path(), OpenOptions::new("optimem-tiny"))?;
//! let scope = Scope::new(Some("alice"), Some("helper"), None)?;
//! let memory = NewMemory {
//!     id: MemoryId::new(),
//!     role: "user".into(),
//!     time_ms: 1_700_000_000_000,
//!     metadata: Default::default(),
//!     text_bytes: 5,
//! };
//! let page = NewPage {
//!     tier: Tier::Small,
//!     text_tokens: 2,
//!     vision_tokens: 100,
//!     spans: vec![Span { memory: memory.id, text: 0..5, page: 0..5 }],
//!     raster_png: b"\x89PNG\r\n\x1a\n...".to_vec(),
//!     tokens: Some(VisionTokens::from_f32(&[0.5; 2 * 8], vec![2, 8], TokenDtype::F16)?),
//!     source: "hello".into(),
//! };
//! let written = store.write_pages(&scope, WritePages { memories: vec![memory], replace_last: None, pages: vec![page] })?;
//! let back = store.get_pages(&scope, &PageSelector::LastN(1), PageParts::ALL)?;
//! assert_eq!(back[0].meta, written.pages[0]);
//! assert_eq!(back[0].source.as_deref(), Some("hello"));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`store`]: the [`Store`] trait (the backend boundary) and its request and report types.
//! - [`sled_store`]: [`SledStore`], the single-node backend: open options, the `meta` tree
//!   (schema version, model id), and one transaction per change (`write`, `read`, `forget`;
//!   `keys` documents the key layout).
//! - [`scope`]: [`Scope`] validation and its prefix-free key encoding (isolation).
//! - [`ids`]: UUID v7 [`PageId`] and [`MemoryId`], the [`Tier`] code.
//! - [`page`] and [`memory`]: the records and their on-disk encoding.
//! - [`tokens`]: [`VisionTokens`] and the f32 ↔ f16 / int8-per-row conversions.
//! - `codec`: the small binary record format shared by the records.
//! - [`bench`](mod@bench): bytes on disk per page for f16 versus int8 tokens, and int8's precision cost.
//! - [`error`]: [`StoreError`], whose variants say what the caller should do.
//!
//! # Durability contract
//!
//! - **Atomicity.** Every method that changes the store — write pages (append, or replace
//!   the last page and append), update a page (age or re-encode), forget a scope, forget
//!   memories — is one sled transaction over all the keys it touches. sled 0.34 seals a
//!   transaction's writes as one batch in its log, and recovery replays a batch whole or
//!   not at all: after a crash the store holds the state before the change or after it,
//!   never a mix (a page whose tier, raster and tokens disagree, a memory naming a page
//!   that is not there).
//! - **When a write is durable.** With [`Durability::Flush`] (the default) a mutating method
//!   returns only after `Db::flush` has written and fsynced the log: an acknowledged write
//!   survives a crash or power loss. With [`Durability::Background`] it returns once
//!   applied in memory and sled's flusher fsyncs every `every_ms` milliseconds: a crash can
//!   lose the changes of that last interval, each lost change still all-or-nothing. The
//!   crash test (`tests/crash.rs`) checks the first guarantee under SIGKILL; run against
//!   `Background` it reports lost acknowledged writes, as it should.
//! - **Concurrency.** Changes are serialisable (sled transactions with conflict retry):
//!   concurrent appends to one scope get dense, increasing sequence numbers in commit order,
//!   and no change is lost.
//! - **Rejected requests.** A request that fails validation, an optimistic check
//!   (`Conflict`) or a lookup (`NotFound`) aborts its transaction: nothing is written.
//! - **Reads.** A page's metadata and parts are read in one transaction and checked against
//!   the CRC-32 and length recorded in the metadata; a mismatch is `Corrupt`, never
//!   returned as data.
//! - **Model changes.** The `meta` tree records the schema version and the model id. Opening
//!   a store written by another model either refuses ([`OnModelMismatch::Refuse`]) or
//!   records the new id and reports the stale pages ([`OnModelMismatch::Reencode`]), which
//!   the caller re-encodes from their rasters through [`Store::put_tokens`].
//! - **Pending tokens.** A page may be written with its tokens pending ([`TokenState`]): the
//!   write is as durable as any other (raster, spans, source), and the tokens follow in one
//!   [`Store::put_tokens`] transaction checked against the page's generation, so an ageing,
//!   refill or forget that happened meanwhile wins and the late tokens are refused.
//!   [`Store::pages_to_encode`] lists the pending and the stale pages, for a worker that
//!   resumes after a restart.

pub mod bench;
mod codec;
pub mod error;
pub mod ids;
pub mod memory;
pub mod page;
pub mod scope;
pub mod sled_store;
pub mod store;
pub mod tokens;

pub use error::{Result, StoreError};
pub use ids::{MemoryId, PageId, Tier};
pub use memory::{Memory, NewMemory};
pub use page::{NewPage, Page, PageMeta, PageUpdate, PartInfo, Span, TokenState};
pub use scope::Scope;
pub use sled_store::{
    Durability, OnModelMismatch, OpenOptions, OpenReport, SCHEMA_VERSION, SledStore,
};
pub use store::{
    BytesByKind, ForgetReport, PageParts, PageSelector, ReplaceLast, Stats, Store, WritePages,
    WriteReceipt,
};
pub use tokens::{TokenDtype, VisionTokens};

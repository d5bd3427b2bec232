//! The memory logic: Remember / Recall / Age / Forget / Stats over the renderer, the [`Engine`] and a [`Store`]
//! (DESIGN.md §1, §4, §6). The gRPC service and the CLI call this; it knows nothing of either.
//!
//! # Layout
//! - [`error`]: [`MemoryError`] and its gRPC [`ErrorCode`].
//! - [`policy`]: [`TierPolicy`], "near sharp, far blurry".
//! - [`remember`]: chat messages → pages (filling the scope's last page first) → one atomic write, with the vision
//!   tokens ([`EncodeMode::Sync`]) or without them ([`EncodeMode::Background`], write-behind).
//! - [`recall`]: selectors, budgets and the four modes (OPTICAL streaming), in time order.
//! - [`age`]: moving old pages down a tier; forget and stats live here in `mod.rs`.
//! - [`encoder`]: encoding pages whose tokens are pending or stale from their rasters — the background [`Encoder`],
//!   on demand for a recall, or all at once ([`Memory::reencode_stale`]); `backlog` is the queue between them.

pub mod age;
mod backlog;
pub mod encoder;
pub mod error;
pub mod policy;
pub mod recall;
pub mod remember;
mod renderers;

use std::sync::Arc;

use optimem_renderer::LayoutConfig;
use optimem_store::{ForgetReport, MemoryId, Scope, Stats, Store, TokenDtype};

use crate::engine::Engine;
pub use age::{AgeReport, Aged};
use backlog::Backlog;
pub use encoder::{Encoder, ReencodeReport};
pub use error::{ErrorCode, MemoryError};
pub use policy::TierPolicy;
pub use recall::{Budget, RecallItem, RecallMode, Recalled, Selector, StreamEvent, decode_budget};
pub use remember::{Message, PageWritten, Remembered};
use renderers::RendererPool;

pub type Result<T, E = MemoryError> = std::result::Result<T, E>;

/// Per-request limits (DESIGN.md §5): a request over them is `InvalidArgument` before anything is rendered.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_messages: usize,
    /// Longest message content, in bytes.
    pub max_message_bytes: usize,
    /// Most content bytes in one Remember.
    pub max_total_bytes: usize,
    /// Most pages one Recall returns (a budget may ask for fewer).
    pub max_recall_pages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_message_bytes: 256 * 1024,
            max_total_bytes: 4 * 1024 * 1024,
            max_recall_pages: 256,
        }
    }
}

/// When Remember's pages get their vision tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeMode {
    /// Before the write: Remember replies once the pages and their tokens are stored (offline use, benchmarks of the
    /// encoder, a library caller with no [`Encoder`] running). Remember waits for the engine.
    Sync,
    /// After the write (write-behind): Remember stores raster, spans and source and replies; an [`Encoder`] makes the
    /// tokens, and a recall that needs them first encodes them on demand. Remember never waits for the engine.
    Background,
}

/// How memories are rendered, encoded and stored.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    pub layout: LayoutConfig,
    pub policy: TierPolicy,
    /// How vision tokens are stored (f16 by default, DESIGN.md §1).
    pub token_dtype: TokenDtype,
    pub limits: Limits,
    /// Cap on tokens generated per page by OPTICAL recall.
    pub max_new_tokens: usize,
    pub encode: EncodeMode,
    /// With [`EncodeMode::Background`], pages that may wait for their tokens: at the cap Remember is refused with
    /// `ResourceExhausted`, so the backlog (and how far tokens lag behind the writes) stays bounded.
    pub max_pending: usize,
    /// Remembers that render at the same time, each with its own renderer (made on first need); more wait for one.
    /// Default: one per core, at most 4.
    pub renderers: usize,
}

/// Default cap on pages waiting for tokens: about three minutes of Base encodes on a 2-core CPU, a few seconds on a
/// GPU.
pub const DEFAULT_MAX_PENDING: usize = 64;

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            layout: LayoutConfig::default(),
            policy: TierPolicy::default(),
            token_dtype: TokenDtype::F16,
            limits: Limits::default(),
            max_new_tokens: 2048,
            encode: EncodeMode::Sync,
            max_pending: DEFAULT_MAX_PENDING,
            renderers: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

/// Optical memory over one store and one model.
pub struct Memory {
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    renderers: RendererPool,
    cfg: MemoryConfig,
    /// Pages whose tokens are still to be encoded (pending or stale), for the [`Encoder`] and Remember's cap.
    backlog: Backlog,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("model", &self.engine.model_id())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// What to forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forget {
    /// Every page and memory of the scope.
    Scope,
    /// These memories and every page holding a piece of them.
    Memories(Vec<MemoryId>),
}

/// A scope's or the store's figures, with the compression ratio (text tokens / paper vision tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryStats {
    /// The store's honest byte picture: tokens, rasters, sources, metadata, bytes on disk.
    pub store: Stats,
    pub compression_ratio: Option<f64>,
}

impl Memory {
    /// Memory over `store`, whose tokens must come from the engine's model (else `FailedPrecondition`: open the store
    /// with `OpenOptions::new(engine.model_id())`). Scans the store for pages whose tokens are pending or stale: the
    /// backlog an [`Encoder`] resumes.
    pub fn new(store: Arc<dyn Store>, engine: Arc<Engine>, cfg: MemoryConfig) -> Result<Self> {
        if store.model_id() != engine.model_id() {
            return Err(MemoryError::FailedPrecondition(format!(
                "store holds tokens of model {:?}, the engine runs {:?}",
                store.model_id(),
                engine.model_id()
            )));
        }
        let renderers = RendererPool::new(cfg.layout.clone(), cfg.renderers)?;
        let backlog = Backlog::default();
        for (scope, meta) in store.pages_to_encode(None)? {
            backlog.push(&scope, meta.id, meta.generation);
        }
        Ok(Self {
            store,
            engine,
            renderers,
            cfg,
            backlog,
        })
    }

    /// Makes all the renderers Remember may use and fills their caches at the tiers the policy gives new pages; a
    /// server calls this before it accepts requests. Returns how many renderers are ready.
    pub fn warm_up(&self) -> Result<usize> {
        let p = &self.cfg.policy;
        let mut tiers: Vec<_> = p.bands.iter().map(|&(_, t)| t).chain([p.rest]).collect();
        tiers.sort();
        tiers.dedup();
        self.renderers.warm(&tiers)
    }

    pub fn config(&self) -> &MemoryConfig {
        &self.cfg
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Forgets a scope or some of its memories in one atomic change (pages waiting for tokens leave the backlog).
    pub fn forget(&self, scope: &Scope, what: &Forget) -> Result<ForgetReport> {
        let report = match what {
            Forget::Scope => self.store.forget_scope(scope)?,
            Forget::Memories(ids) if ids.is_empty() => {
                return Err(MemoryError::invalid("no memory ids to forget"));
            }
            Forget::Memories(ids) => self.store.forget_memories(scope, ids)?,
        };
        for &id in &report.pages {
            self.backlog.settle(scope, id, None);
        }
        Ok(report)
    }

    /// Figures for one scope or the whole store.
    pub fn stats(&self, scope: Option<&Scope>) -> Result<MemoryStats> {
        let store = self.store.stats(scope)?;
        Ok(MemoryStats {
            compression_ratio: store.compression_ratio(),
            store,
        })
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

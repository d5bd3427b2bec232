//! `optimem serve`: loads the model and the store, then serves `optimem.v1.Memory` (with health and reflection) until
//! Ctrl-C or SIGTERM, finishing in-flight requests and flushing the store before exiting. Ages the store in the
//! background every `--age-every`, and after a model change re-encodes the store's pages from their rasters (or, with
//! `--on-model-change refuse`, will not start). Remember's vision tokens are written behind by default (`--encode`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use optimem::engine::{DEFAULT_NICE, DEFAULT_QUEUE, Engine, EngineConfig};
use optimem::memory::{DEFAULT_MAX_PENDING, EncodeMode, Limits, Memory, MemoryConfig, TierPolicy};
use optimem::service::{AuthToken, ServerConfig};
use optimem_renderer::LayoutConfig;
use optimem_store::{Durability, OnModelMismatch, OpenOptions, SledStore, StoreError, TokenDtype};

/// How the model shares the CPU and which tiers new pages are stored at: the flags `serve` and `bench service` share.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelTuning {
    /// Nice value (0–19) of the model's threads: above request handling's 0, so a Remember's rendering is served
    /// first and the model takes the CPU left over; 0 gives the model equal footing.
    #[arg(long, default_value_t = DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub model_nice: i32,
    /// Recency rank → tier of new pages, newest first: tier:count bands, then the tier of every older page
    /// (e.g. base:2,small:8,tiny). Default: base:2,small:8,tiny with each tier the model was not trained to read
    /// (config.json `trained_tiers`) moved down to the sharpest one it reads.
    #[arg(long)]
    pub policy: Option<String>,
}

impl ModelTuning {
    /// `--policy` parsed; `None` when it was not given (the server then fits its default to the model).
    pub fn policy(&self) -> Result<Option<TierPolicy>> {
        Ok(self
            .policy
            .as_deref()
            .map(optimem::compress::parse_policy)
            .transpose()?)
    }
}

/// What to do with a store whose pages another model encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnModelChange {
    /// Start, and re-encode the stale pages from their stored rasters in the background (one atomic write per page;
    /// an OPTICAL or EMBEDDINGS recall of a page not yet re-encoded encodes it first).
    Reencode,
    /// Refuse to start, naming both models.
    Refuse,
}

/// When Remember's pages get their vision tokens (`serve --encode`, `bench service --encode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encode {
    /// Before Remember replies: the reply waits for the model (offline use).
    Sync,
    /// After: Remember stores raster, source and metadata durably and replies; a background thread encodes the tokens
    /// (an OPTICAL or EMBEDDINGS recall of a page still pending encodes it on the spot).
    Background,
}

impl From<Encode> for EncodeMode {
    fn from(e: Encode) -> Self {
        match e {
            Encode::Sync => EncodeMode::Sync,
            Encode::Background => EncodeMode::Background,
        }
    }
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// The store's directory (created if missing).
    #[arg(long, default_value = "./optimem-data")]
    data: PathBuf,
    /// Model directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
    model: PathBuf,
    /// Body font size of new pages, in logical units on the 1024-unit canvas (the text-density knob, as in `render`
    /// and `compress`). The default 17 is a Fox page; larger type puts fewer characters on a page (less compression)
    /// in glyphs a small model reads more surely (benches/README.md, session 10).
    #[arg(long, default_value_t = LayoutConfig::default().font_size)]
    font_size: f32,
    /// File holding the bearer token clients must send; without it the service is open to anyone who can connect.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Largest request message accepted, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Most messages in one Remember.
    #[arg(long, default_value_t = Limits::default().max_messages)]
    max_messages: usize,
    /// Most content bytes in one Remember.
    #[arg(long, default_value_t = Limits::default().max_total_bytes)]
    max_request_text_bytes: usize,
    /// Most pages one Recall returns.
    #[arg(long, default_value_t = Limits::default().max_recall_pages)]
    max_recall_pages: usize,
    /// Model jobs that may wait while one runs; beyond it requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_QUEUE)]
    queue: usize,
    #[command(flatten)]
    tuning: ModelTuning,
    /// Age the whole store in the background this often (e.g. 10m, 1h); 0 turns it off (clients may still call Age).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    age_every: Duration,
    /// When the store's pages were encoded by another model than --model.
    #[arg(long, value_enum, default_value_t = OnModelChange::Reencode)]
    on_model_change: OnModelChange,
    /// When Remember's pages get their vision tokens.
    #[arg(long, value_enum, default_value_t = Encode::Background)]
    encode: Encode,
    /// With --encode background: pages that may wait for their tokens; beyond it Remember gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING)]
    max_pending: usize,
    /// How vision tokens are stored: f16, or int8 with one f32 scale per row (about half the bytes; see
    /// `bench memory` for its precision cost).
    #[arg(long, value_enum, default_value_t = Tokens::F16)]
    tokens: Tokens,
    /// Do not keep the source text of new pages (retention policy): EXACT recall of them then fails with
    /// FAILED_PRECONDITION, and only the raster and the vision tokens remember what was said.
    #[arg(long)]
    no_source: bool,
    /// 0 (the default): every write is flushed to disk before it is acknowledged. A period (e.g. 500ms): writes are
    /// acknowledged once applied and flushed that often, so a crash may lose the last period's writes, each one whole.
    #[arg(long, default_value = "0", value_parser = super::parse_duration)]
    flush_every: Duration,
}

/// How `serve --tokens` stores vision tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tokens {
    F16,
    Int8,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let layout = LayoutConfig {
        font_size: a.font_size,
        ..LayoutConfig::default()
    };
    // checked before the model loads, so a bad value is a quick error
    layout.validate().context("--font-size")?;
    let auth_token = match &a.auth_token_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            Some(AuthToken::new(&text).with_context(|| format!("{} is blank", f.display()))?)
        }
        None => None,
    };
    let (device, dtype) = super::ocr::device()?;
    let engine = Engine::load(
        &a.model,
        &device,
        dtype,
        EngineConfig {
            queue: a.queue,
            nice: a.tuning.model_nice,
        },
    )
    .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let opts = OpenOptions {
        on_model_mismatch: match a.on_model_change {
            OnModelChange::Reencode => OnModelMismatch::Reencode,
            OnModelChange::Refuse => OnModelMismatch::Refuse,
        },
        durability: if a.flush_every.is_zero() {
            Durability::Flush
        } else {
            Durability::Background {
                every_ms: u64::try_from(a.flush_every.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            }
        },
        keep_source: !a.no_source,
        ..OpenOptions::new(engine.model_id())
    };
    let store = match SledStore::open(&a.data, opts) {
        Ok(s) => s,
        Err(StoreError::ModelMismatch { stored, requested }) => bail!(
            "the store in {} holds vision tokens of model {stored:?}, and --model {} is {requested:?}: start with \
             --on-model-change reencode to re-encode its pages from their rasters, or point --model at {stored:?}",
            a.data.display(),
            a.model.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the store in {}", a.data.display()));
        }
    };
    let report = store.open_report();
    if let Some(from) = report.migrated_from {
        eprintln!(
            "optimem: migrated the store from schema {from} to {}",
            optimem_store::SCHEMA_VERSION
        );
    }
    if report.pending_pages > 0 {
        eprintln!(
            "optimem: {} page(s) wait for their vision tokens; encoding them in the background",
            report.pending_pages
        );
    }
    if report.stale_pages > 0 {
        eprintln!(
            "optimem: {} page(s) hold tokens of {}; re-encoding them from their rasters in the background",
            report.stale_pages,
            report
                .previous_model_id
                .as_deref()
                .map_or_else(|| "another model".to_owned(), |m| format!("model {m:?}"))
        );
    }
    let policy = a.tuning.policy()?;
    let cfg = MemoryConfig {
        layout,
        policy: optimem::memory::policy::for_engine(policy, &engine),
        limits: Limits {
            max_messages: a.max_messages,
            max_total_bytes: a.max_request_text_bytes,
            max_message_bytes: Limits::default()
                .max_message_bytes
                .min(a.max_request_text_bytes),
            max_recall_pages: a.max_recall_pages,
        },
        encode: a.encode.into(),
        max_pending: a.max_pending,
        token_dtype: match a.tokens {
            Tokens::F16 => TokenDtype::F16,
            Tokens::Int8 => TokenDtype::Int8RowScale,
        },
        ..MemoryConfig::default()
    };
    let memory = Arc::new(Memory::new(Arc::new(store), Arc::new(engine), cfg)?);
    memory.warm_up()?;
    let config = ServerConfig {
        max_message_bytes: a.max_message_bytes,
        auth_token,
        age_every: (!a.age_every.is_zero()).then_some(a.age_every),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .with_context(|| format!("binding {}", a.addr))?;
        eprintln!(
            "optimem: serving optimem.v1.Memory on {} (model {}, tiers {}, data {}{})",
            listener.local_addr()?,
            memory.engine().model_id(),
            memory.config().policy,
            a.data.display(),
            if config.auth_token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
        optimem::service::run(listener, memory, config, shutdown_signal()).await?;
        eprintln!("optimem: stopped, store flushed");
        anyhow::Ok(())
    })
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what service managers and `docker stop` send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler could be installed: wait for SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("optimem: shutting down: finishing in-flight requests");
}

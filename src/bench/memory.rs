//! `optimem bench memory`: the memory layer alone (no gRPC) on this machine's model, one caller, per tier and per
//! token encoding.
//!
//! For each tier (every page written at it) and each encoding (f16, int8 with a per-row scale), a fresh store in a
//! temporary directory remembers the same chat turns of about a thousand text tokens, then every page is recalled
//! OPTICAL. Reported: remember and recall latency and throughput; bytes per 1,000 text tokens by kind (the store's own
//! figures: tokens, rasters, source, metadata) and on disk (sled's figure and the directory walked); and the precision
//! (DESIGN.md §6) of each page decoded from f16 and from int8 tokens against the page's source text. The renderer and
//! the encoder are deterministic, so both stores hold the same pages and the same f32 tokens before storage: the
//! difference in precision is int8's cost alone.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use optimem_renderer::Tier;
use optimem_store::{OpenOptions, Scope, SledStore, Store, TokenDtype};
use serde::Serialize;

use super::{BenchError, Latency, chat_turn, dir_bytes};
use crate::engine::{Engine, EngineConfig};
use crate::memory::{
    Budget, Memory, MemoryConfig, Message, RecallMode, Recalled, Selector, StreamEvent, TierPolicy,
};
use crate::metrics::{TextTokenizer, precision, word_recall};
use crate::model::generate::Control;

/// What to run.
#[derive(Clone, Debug)]
pub struct MemoryBenchOptions {
    pub model: PathBuf,
    pub device: Device,
    pub dtype: DType,
    pub tiers: Vec<Tier>,
    /// Turns remembered per tier and encoding.
    pub turns: usize,
    /// Text tokens per turn, about.
    pub turn_tokens: usize,
    /// Cap on tokens decoded per page.
    pub max_new_tokens: usize,
    /// tokenizer.json that counts text tokens (default: DeepSeek-V3 from assets/, else the model's).
    pub tokenizer: Option<PathBuf>,
}

/// Bytes by kind, as stored or per 1,000 text tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Bytes {
    pub tokens: f64,
    pub rasters: f64,
    pub sources: f64,
    pub metadata: f64,
    /// The four above.
    pub store_total: f64,
    /// sled's own size of the database on disk.
    pub sled_on_disk: f64,
    /// Every file of the store's directory, after a flush (sled preallocates its log, so few pages cost more per
    /// token than many).
    pub directory: f64,
}

impl Bytes {
    fn scaled(&self, by: f64) -> Self {
        Self {
            tokens: self.tokens * by,
            rasters: self.rasters * by,
            sources: self.sources * by,
            metadata: self.metadata * by,
            store_total: self.store_total * by,
            sled_on_disk: self.sled_on_disk * by,
            directory: self.directory * by,
        }
    }
}

/// One tier with one token encoding.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub tier: String,
    pub dtype: String,
    pub turns: usize,
    pub pages: u64,
    /// Text tokens of the pages' source text (role labels included), by the report's tokenizer.
    pub text_tokens: u64,
    /// The paper's count and the embeddings actually stored, summed.
    pub vision_tokens: u64,
    pub embeddings: u64,
    /// Latency of one Remember of one turn (render, encode, count, write and flush).
    pub remember: Latency,
    pub remember_turns_per_s: f64,
    /// Pages encoded by the Remembers (the scope's last page is filled and encoded again when a turn starts on it).
    pub pages_encoded: u64,
    /// Latency of decoding one page (OPTICAL), measured between the pages of one streaming recall.
    pub recall: Latency,
    pub recall_pages_per_s: f64,
    pub tokens_decoded: u64,
    pub encode_ms_per_page: f64,
    pub decode_ms_per_token: f64,
    pub bytes: Bytes,
    pub bytes_per_1k_text_tokens: Bytes,
    /// Mean precision and word recall of the decoded pages against their source text.
    pub precision: f64,
    pub word_recall: f64,
    #[serde(skip)]
    decoded: Vec<String>,
}

/// What int8 costs at one tier.
#[derive(Clone, Debug, Serialize)]
pub struct Int8Cost {
    pub tier: String,
    pub pages: usize,
    pub precision_f16: f64,
    pub precision_int8: f64,
    /// int8 − f16.
    pub precision_delta: f64,
    pub word_recall_f16: f64,
    pub word_recall_int8: f64,
    /// Pages whose decoded text is the same from both encodings.
    pub pages_identical: usize,
    /// Token bytes of int8 as a share of f16's.
    pub token_bytes_ratio: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub model: String,
    pub device: String,
    pub tokenizer: String,
    pub turn_text_tokens: f64,
    pub max_new_tokens: usize,
    pub runs: Vec<Run>,
    pub int8: Vec<Int8Cost>,
}

/// Runs the benchmark; see the module doc.
pub fn run(opts: &MemoryBenchOptions) -> Result<MemoryReport, BenchError> {
    if opts.turns == 0 || opts.turn_tokens == 0 || opts.tiers.is_empty() {
        return Err(BenchError::Options(
            "--turns, --turn-tokens and --tiers must not be zero or empty".into(),
        ));
    }
    let tokenizer = TextTokenizer::resolve(opts.tokenizer.as_deref(), Some(&opts.model))?;
    let turns = (0..opts.turns)
        .map(|n| chat_turn(0, n, opts.turn_tokens, |t| Ok(tokenizer.count(t)?)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut turn_tokens = 0;
    for t in &turns {
        turn_tokens += tokenizer.count(t)?;
    }
    let engine = Arc::new(Engine::load(
        &opts.model,
        &opts.device,
        opts.dtype,
        EngineConfig::default(),
    )?);
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    let mut int8 = Vec::new();
    for &tier in &opts.tiers {
        let f16 = run_one(
            &engine,
            &dir,
            tier,
            TokenDtype::F16,
            &turns,
            &tokenizer,
            opts,
        )?;
        let q8 = run_one(
            &engine,
            &dir,
            tier,
            TokenDtype::Int8RowScale,
            &turns,
            &tokenizer,
            opts,
        )?;
        int8.push(int8_cost(tier, &f16, &q8));
        runs.push(f16);
        runs.push(q8);
    }
    Ok(MemoryReport {
        model: engine.model_id().to_owned(),
        device: format!("{:?} ({:?})", opts.device, opts.dtype),
        tokenizer: tokenizer.name().to_owned(),
        turn_text_tokens: turn_tokens as f64 / turns.len() as f64,
        max_new_tokens: opts.max_new_tokens,
        runs,
        int8,
    })
}

fn dtype_name(d: TokenDtype) -> &'static str {
    match d {
        TokenDtype::F16 => "f16",
        TokenDtype::Int8RowScale => "int8",
    }
}

/// Remembers `turns` into a fresh store at `tier` with `dtype`, recalls every page, measures.
fn run_one(
    engine: &Arc<Engine>,
    dir: &tempfile::TempDir,
    tier: Tier,
    dtype: TokenDtype,
    turns: &[String],
    tokenizer: &TextTokenizer,
    opts: &MemoryBenchOptions,
) -> Result<Run, BenchError> {
    let path = dir.path().join(format!("{tier}-{}", dtype_name(dtype)));
    let store = Arc::new(SledStore::open(&path, OpenOptions::new(engine.model_id()))?);
    let cfg = MemoryConfig {
        policy: TierPolicy {
            bands: Vec::new(),
            rest: tier,
        },
        token_dtype: dtype,
        max_new_tokens: opts.max_new_tokens,
        ..MemoryConfig::default()
    };
    let memory = Memory::new(store.clone(), engine.clone(), cfg)?;
    let scope = Scope::user("bench")?;

    let before = engine.stats();
    let mut remember = Vec::with_capacity(turns.len());
    let mut pages_encoded = 0u64;
    let t_all = Instant::now();
    for (n, t) in turns.iter().enumerate() {
        let msg = Message {
            role: if n.is_multiple_of(2) {
                "user"
            } else {
                "assistant"
            }
            .into(),
            content: t.clone(),
            time_ms: None,
            metadata: Default::default(),
        };
        let t0 = Instant::now();
        let r = memory.remember(&scope, &[msg])?;
        remember.push(t0.elapsed());
        pages_encoded += r.pages.len() as u64;
    }
    let remember_s = t_all.elapsed().as_secs_f64();
    let encoded = engine.stats().since(&before);

    store.flush()?;
    let stats = store.stats(None)?;
    let all = Selector::LastPages(stats.pages as usize);
    let exact = memory.recall(&scope, &all, RecallMode::Exact, Budget::default())?;
    let sources: Vec<String> = exact
        .into_iter()
        .map(|i| match i.content {
            Recalled::Exact { text, .. } => text,
            _ => String::new(),
        })
        .collect();
    let mut text_tokens = 0u64;
    for s in &sources {
        text_tokens += tokenizer.count(s)? as u64;
    }

    let (decoded, recall) = decode_all(&memory, &scope, &all)?;
    let decode = engine.stats().since(&before).since(&encoded);
    let recall_s: f64 = recall.iter().map(Duration::as_secs_f64).sum();
    let n = sources.len().max(1) as f64;
    let precision_mean = decoded
        .iter()
        .zip(&sources)
        .map(|(d, s)| precision(d, s))
        .sum::<f64>()
        / n;
    let word_recall_mean = decoded
        .iter()
        .zip(&sources)
        .map(|(d, s)| word_recall(d, s))
        .sum::<f64>()
        / n;
    let bytes = Bytes {
        tokens: stats.bytes.tokens as f64,
        rasters: stats.bytes.rasters as f64,
        sources: stats.bytes.sources as f64,
        metadata: stats.bytes.metadata as f64,
        store_total: stats.bytes.total() as f64,
        sled_on_disk: stats.db_bytes_on_disk as f64,
        directory: dir_bytes(&path)? as f64,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Run {
        tier: tier.to_string(),
        dtype: dtype_name(dtype).into(),
        turns: turns.len(),
        pages: stats.pages,
        text_tokens,
        vision_tokens: stats.vision_tokens,
        embeddings: stats.token_rows,
        remember: Latency::of(&remember),
        remember_turns_per_s: turns.len() as f64 / remember_s.max(1e-9),
        pages_encoded,
        recall: Latency::of(&recall),
        recall_pages_per_s: recall.len() as f64 / recall_s.max(1e-9),
        tokens_decoded: decode.tokens_generated,
        encode_ms_per_page: per(ms(encoded.encode_time), encoded.encodes),
        decode_ms_per_token: per(ms(decode.decode_time), decode.tokens_generated),
        bytes,
        bytes_per_1k_text_tokens: bytes.scaled(1000.0 / (text_tokens.max(1) as f64)),
        precision: precision_mean,
        word_recall: word_recall_mean,
        decoded,
    })
}

fn per(total: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { total / n as f64 }
}

/// Every selected page decoded OPTICAL through one streaming recall: the texts, and each page's time (from its start
/// to the next page's start, or the end).
fn decode_all(
    memory: &Memory,
    scope: &Scope,
    selector: &Selector,
) -> Result<(Vec<String>, Vec<Duration>), BenchError> {
    let mut starts: Vec<Instant> = Vec::new();
    let items = memory.recall_stream(
        scope,
        selector,
        Budget::default(),
        Arc::new(AtomicBool::new(false)),
        |event| {
            if let StreamEvent::Page(_) = event {
                starts.push(Instant::now());
            }
            Control::Continue
        },
    )?;
    let end = Instant::now();
    let times = starts
        .iter()
        .enumerate()
        .map(|(i, t)| starts.get(i + 1).copied().unwrap_or(end) - *t)
        .collect();
    let texts = items
        .into_iter()
        .map(|i| match i.content {
            Recalled::Optical { text, .. } => text,
            _ => String::new(),
        })
        .collect();
    Ok((texts, times))
}

/// Compares the f16 and int8 runs of one tier page by page (same pages, same order).
fn int8_cost(tier: Tier, f16: &Run, int8: &Run) -> Int8Cost {
    let pages = f16.decoded.len().min(int8.decoded.len());
    let identical = f16
        .decoded
        .iter()
        .zip(&int8.decoded)
        .filter(|(a, b)| a == b)
        .count();
    Int8Cost {
        tier: tier.to_string(),
        pages,
        precision_f16: f16.precision,
        precision_int8: int8.precision,
        precision_delta: int8.precision - f16.precision,
        word_recall_f16: f16.word_recall,
        word_recall_int8: int8.word_recall,
        pages_identical: identical,
        token_bytes_ratio: int8.bytes.tokens / f16.bytes.tokens.max(1.0),
    }
}

impl MemoryReport {
    /// The report as markdown: throughput and latency, bytes per 1,000 text tokens, int8's precision cost.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model `{}` on {} · turns ≈ {:.0} text tokens ({}) · decodes ≤ {} tokens/page · one caller, no gRPC\n",
            self.model, self.device, self.turn_text_tokens, self.tokenizer, self.max_new_tokens
        );
        s.push_str("Throughput and latency (Remember = one turn: render, encode, count, write + flush; Recall = one page decoded OPTICAL):\n\n");
        s.push_str("| tier | encoding | turns | pages (encoded) | Remember p50 / p99 ms | turns/s | Recall p50 / p99 ms | pages/s | tokens decoded | encode ms/page | decode ms/token |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} ({}) | {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {:.2} | {} | {:.0} | {:.1} |",
                r.tier,
                r.dtype,
                r.turns,
                r.pages,
                r.pages_encoded,
                r.remember.p50_ms,
                r.remember.p99_ms,
                r.remember_turns_per_s,
                r.recall.p50_ms,
                r.recall.p99_ms,
                r.recall_pages_per_s,
                r.tokens_decoded,
                r.encode_ms_per_page,
                r.decode_ms_per_token
            );
        }
        s.push_str("\nBytes per 1,000 text tokens (the store's figures by kind; sled's size on disk; the directory walked):\n\n");
        s.push_str("| tier | encoding | pages | text tokens | vision tokens (embeddings) | ratio | token bytes | raster | source | metadata | store total | sled on disk | directory |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            let b = &r.bytes_per_1k_text_tokens;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} ({}) | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.tier,
                r.dtype,
                r.pages,
                r.text_tokens,
                r.vision_tokens,
                r.embeddings,
                r.text_tokens as f64 / r.vision_tokens.max(1) as f64,
                b.tokens,
                b.rasters,
                b.sources,
                b.metadata,
                b.store_total,
                b.sled_on_disk,
                b.directory
            );
        }
        s.push_str("\nPrecision cost of int8 tokens (DESIGN.md §6 precision and word recall of each page decoded against its source text; same pages, same f32 tokens before storage):\n\n");
        s.push_str("| tier | pages | precision f16 | precision int8 | Δ int8 − f16 | word recall f16 | word recall int8 | pages decoded identically | int8 token bytes / f16 |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for c in &self.int8 {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {:+.4} | {:.3} | {:.3} | {} / {} | {:.2} |",
                c.tier,
                c.pages,
                c.precision_f16,
                c.precision_int8,
                c.precision_delta,
                c.word_recall_f16,
                c.word_recall_int8,
                c.pages_identical,
                c.pages,
                c.token_bytes_ratio
            );
        }
        s
    }
}

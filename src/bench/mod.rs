//! Load and footprint benchmarks of the product itself, on this machine's model and store: `optimem bench service`
//! (the gRPC server under concurrent clients) and `optimem bench memory` (the memory layer alone: throughput, bytes on
//! disk per tier and token encoding, and the precision int8 tokens cost).
//!
//! Both report what they measure, in a markdown table and as JSON; neither asserts a speed (ARCHITECTURE.md: speed is
//! measured, never asserted in tests).
//!
//! # Layout
//! - this module: [`Latency`] (percentiles of a sample), [`range`] (min and max of repeats), [`StageTimes`] (a tracing
//!   layer that times the pipeline's stage spans, so a report can say where a request's time goes), [`BenchError`].
//! - [`service`]: the in-process server driven by N tonic clients.
//! - [`memory`]: remember / recall through the library, per tier and token encoding.
//! - [`kernels`]: the model's fused CUDA kernels against the composite ops they replace, on the GPU.

pub mod gemm;
pub mod kernels;
pub mod memory;
pub mod profile;
pub mod service;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::engine::EngineError;
use crate::memory::MemoryError;
use crate::metrics::MetricsError;
use crate::service::ServeError;

/// Why a benchmark could not run (a failed request is a figure in the report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense (zero clients, a zero duration, ...).
    #[error("bad benchmark options: {0}")]
    Options(String),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("store: {0}")]
    Store(#[from] optimem_store::StoreError),
    #[error("text tokens: {0}")]
    Metrics(#[from] MetricsError),
    #[error("server: {0}")]
    Serve(#[from] ServeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The benchmark's own client could not reach the server it started.
    #[error("client: {0}")]
    Client(String),
}

/// Min and max of a series of timed repeats, for "range" reporting (infinity and minus infinity for none).
pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Percentiles of a latency sample, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises `sample` (any order); all zeros when it is empty.
    pub fn of(sample: &[Duration]) -> Self {
        if sample.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = sample.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            count: ms.len(),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// The stage spans of the pipeline that [`StageTimes`] times; everything else (the model's TRACE spans, tonic's) is
/// ignored, so timing costs a few spans per request.
pub const STAGES: &[&str] = &[
    "remember",
    "render",
    "encode",
    "engine.encode",
    "count_tokens",
    "store.commit",
    "store.flush",
    "store.read",
    "decode",
    "engine.decode",
    "reencode",
];

/// When a timed span was created.
struct Started(Instant);

/// A tracing layer that records the wall time of every [`STAGES`] span, from creation to close, by span name.
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    samples: Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>,
}

impl StageTimes {
    /// Percentiles per stage, in [`STAGES`] order, of the stages seen so far.
    pub fn summary(&self) -> Vec<(String, Latency)> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        STAGES
            .iter()
            .filter_map(|name| {
                samples
                    .get(name)
                    .map(|s| ((*name).to_owned(), Latency::of(s)))
            })
            .collect()
    }

    /// A dispatcher with this layer and, beside it, the usual stderr log filtered by `OPTIMEM_LOG` (default `warn`).
    pub fn dispatch(&self) -> Dispatch {
        use tracing_subscriber::layer::SubscriberExt;
        let stages = self
            .clone()
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                // Stage spans are INFO; the model's own spans (one is also called `decode`) are TRACE.
                m.is_span() && *m.level() == tracing::Level::INFO && STAGES.contains(&m.name())
            }));
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_env("OPTIMEM_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            );
        Dispatch::new(tracing_subscriber::registry().with(stages).with(log))
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for StageTimes {
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Started(Instant::now()));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(elapsed) = span.extensions().get::<Started>().map(|s| s.0.elapsed()) else {
            return;
        };
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(span.name())
            .or_default()
            .push(elapsed);
    }
}

thread_local! {
    /// The benchmark's dispatcher on a runtime thread (see [`runtime_with`]).
    static THREAD_DISPATCH: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A multi-threaded tokio runtime whose threads (workers and the blocking pool, where the memory calls run) report to
/// `dispatch`: the binary's global subscriber is already set, so the benchmark's stage timer goes in per thread.
pub(crate) fn runtime_with(dispatch: Dispatch) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            THREAD_DISPATCH.with(|g| *g.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| THREAD_DISPATCH.with(|g| drop(g.borrow_mut().take())))
        .build()
}

/// A chat turn of about `tokens` text tokens of English prose (by `count`), different for each `(client, n)`: the
/// sentences of [`optimem_renderer::density::SAMPLE_PROSE`] in an order that rotates with them.
pub fn chat_turn(
    client: usize,
    n: usize,
    tokens: usize,
    mut count: impl FnMut(&str) -> Result<usize, BenchError>,
) -> Result<String, BenchError> {
    let sentences: Vec<&str> = optimem_renderer::density::SAMPLE_PROSE
        .split_inclusive(". ")
        .filter(|s| !s.trim().is_empty())
        .collect();
    let mut text = format!("Note {n} from agent {client}. ");
    let mut i = client * 7 + n * 3;
    // Grow four sentences (about 90 tokens) at a time, then measure: counting after each sentence would cost more
    // than it trims. The length guard stops a counter that never reaches the target.
    loop {
        for _ in 0..4 {
            text.push_str(sentences[i % sentences.len()]);
            i += 1;
        }
        if count(&text)? >= tokens || text.len() > tokens.saturating_mul(64) {
            return Ok(text);
        }
    }
}

/// Bytes of every file under `dir` (sled's files: its log, snapshots, config).
pub fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sample: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&sample);
        assert_eq!(l.count, 100);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!((l.mean_ms - 50.5).abs() < 1e-9);
        let one = Latency::of(&[Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn stage_times_records_only_stage_spans() {
        let times = StageTimes::default();
        tracing::dispatcher::with_default(&times.dispatch(), || {
            for _ in 0..3 {
                let _s = tracing::info_span!("render").entered();
            }
            let _other = tracing::info_span!("not-a-stage").entered();
            let _model = tracing::trace_span!("decode").entered();
            let _stage = tracing::info_span!("encode").entered();
        });
        let summary = times.summary();
        let names: Vec<&str> = summary.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["render", "encode"]);
        assert_eq!(summary[0].1.count, 3);
    }

    #[test]
    fn chat_turns_reach_the_token_target_and_differ() -> Result<(), BenchError> {
        let words = |t: &str| Ok(t.split_whitespace().count());
        let a = chat_turn(0, 0, 750, words)?;
        let b = chat_turn(1, 0, 750, words)?;
        let n = a.split_whitespace().count();
        assert!((750..900).contains(&n), "{n}");
        assert_ne!(a, b);
        Ok(())
    }
}

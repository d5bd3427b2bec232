//! Where a model forward's time goes: a tracing layer that times the model's own spans (`optimem::model::*`, TRACE
//! level) by name, for `optimem bench encoder --profile` and `bench decoder --profile`.
//!
//! Each row is one span name: how many times it was entered, its total time and its self time (total minus the time
//! of the spans entered inside it on the same thread). On an asynchronous device (CUDA) the layer synchronises the
//! device on every enter and exit, so a span's time is the device's time for the kernels it launched and not the
//! host's time to queue them; those synchronisations cost the GPU its overlap of launch and execution, so a profiled
//! forward is slower than a timed one and the benchmarks run it as one extra pass after their timed runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Serialize;
use tracing::span::Id;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One span name's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanRow {
    /// `module/span`, the module path relative to `optimem::model` (e.g. `sam::attention/attn-sdpa`).
    pub name: String,
    pub calls: u64,
    pub total_ms: f64,
    pub self_ms: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stat {
    calls: u64,
    total: Duration,
    own: Duration,
}

/// The layer; clones share their figures.
#[derive(Clone)]
pub struct SpanProfile {
    device: Device,
    stats: Arc<Mutex<HashMap<String, Stat>>>,
}

thread_local! {
    /// The spans open on this thread: when each was entered and the time of the spans entered inside it so far.
    static OPEN: RefCell<Vec<(Instant, Duration)>> = const { RefCell::new(Vec::new()) };
}

/// Spans of the model code: the only ones timed.
const TARGET: &str = "optimem::model";

impl SpanProfile {
    /// A profile that synchronises `device` around every span (a no-op on the CPU).
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            stats: Arc::default(),
        }
    }

    /// A dispatcher with only this layer, for `tracing::dispatcher::with_default` around the profiled pass.
    pub fn dispatch(&self) -> Dispatch {
        let only_model = tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with(TARGET)
        });
        Dispatch::new(tracing_subscriber::registry().with(self.clone().with_filter(only_model)))
    }

    /// Runs `f` with this profile as the thread's subscriber; on CUDA also marked for an external profiler started
    /// with capture off (`model::cuda::ProfilerCapture`), so that `ncu --profile-from-start off` sees this pass alone.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "cuda")]
        let _capture = crate::model::cuda::ProfilerCapture::start(&self.device);
        tracing::dispatcher::with_default(&self.dispatch(), f)
    }

    /// One pass of `f` under a new profile of `device` ([`Self::run`]): the rows it gave, or `f`'s error.
    pub fn measure<T, E>(
        device: &Device,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<Vec<SpanRow>, E> {
        let spans = Self::new(device);
        spans.run(f)?;
        Ok(spans.rows())
    }

    /// The rows so far, longest self time first.
    pub fn rows(&self) -> Vec<SpanRow> {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<SpanRow> = stats
            .iter()
            .map(|(name, s)| SpanRow {
                name: name.clone(),
                calls: s.calls,
                total_ms: s.total.as_secs_f64() * 1e3,
                self_ms: s.own.as_secs_f64() * 1e3,
            })
            .collect();
        rows.sort_by(|a, b| b.self_ms.total_cmp(&a.self_ms).then(a.name.cmp(&b.name)));
        rows
    }

    fn sync(&self) {
        // A failed synchronisation shows up in the forward itself; the profile only loses accuracy.
        let _ = self.device.synchronize();
    }
}

/// The rows as a markdown table, with each row's share of the summed self time.
pub fn table(rows: &[SpanRow]) -> String {
    let all: f64 = rows.iter().map(|r| r.self_ms).sum();
    let mut out =
        String::from("| span | calls | total ms | self ms | self share |\n|---|---|---|---|---|\n");
    for r in rows {
        let share = if all > 0.0 {
            100.0 * r.self_ms / all
        } else {
            0.0
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {share:.1} % |\n",
            r.name, r.calls, r.total_ms, r.self_ms
        ));
    }
    out
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanProfile {
    fn on_enter(&self, _id: &Id, _ctx: Context<'_, S>) {
        self.sync();
        OPEN.with(|open| open.borrow_mut().push((Instant::now(), Duration::ZERO)));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.sync();
        let Some((started, inner)) = OPEN.with(|open| open.borrow_mut().pop()) else {
            return;
        };
        let elapsed = started.elapsed();
        OPEN.with(|open| {
            if let Some(parent) = open.borrow_mut().last_mut() {
                parent.1 += elapsed;
            }
        });
        let Some(span) = ctx.span(id) else { return };
        let meta = span.metadata();
        let module = meta
            .target()
            .strip_prefix(TARGET)
            .unwrap_or(meta.target())
            .trim_start_matches("::");
        let name = if module.is_empty() {
            meta.name().to_owned()
        } else {
            format!("{module}/{}", meta.name())
        };
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let s = stats.entry(name).or_default();
        s.calls += 1;
        s.total += elapsed;
        s.own += elapsed.saturating_sub(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_spans_split_total_and_self_time() {
        let profile = SpanProfile::new(&Device::Cpu);
        tracing::dispatcher::with_default(&profile.dispatch(), || {
            for _ in 0..2 {
                let _outer = tracing::trace_span!(target: "optimem::model::sam", "outer").entered();
                std::thread::sleep(Duration::from_millis(5));
                let _inner =
                    tracing::trace_span!(target: "optimem::model::sam::attention", "inner")
                        .entered();
                std::thread::sleep(Duration::from_millis(10));
            }
            // Not model code: not timed.
            let _other = tracing::trace_span!(target: "optimem::engine", "other").entered();
        });
        let rows = profile.rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["sam::attention/inner", "sam/outer"]);
        let (inner, outer) = (&rows[0], &rows[1]);
        assert_eq!((inner.calls, outer.calls), (2, 2));
        assert!(inner.total_ms >= 20.0 && inner.self_ms == inner.total_ms);
        assert!(
            outer.total_ms >= inner.total_ms + 10.0,
            "{outer:?} {inner:?}"
        );
        assert!((outer.self_ms - (outer.total_ms - inner.total_ms)).abs() < 1e-6);
        let t = table(&rows);
        assert!(t.contains("| sam::attention/inner | 2 |"), "{t}");
    }
}

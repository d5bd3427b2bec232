//! Kill-and-reopen test of the memory layer (issue 5), beside the store's own (`store/tests/crash.rs`).
//!
//! The test binary re-runs itself as a child (`OPTIMEM_MEMORY_CRASH_DIR`). The child opens a `Memory` over a sled
//! store and the fixture model the way `serve` does by default — write-behind encoding with the background
//! `Encoder` running — and loops: Remember one or two messages (appending fills the scope's last page, so pages are
//! re-rendered and replaced), sometimes Age, sometimes Forget a whole scope once it has grown. It prints a line only
//! after each call has returned. The parent kills it with SIGKILL at a random moment, reopens, and checks:
//! - every acknowledged memory (not forgotten since) comes back whole from an EXACT recall of its id: its pieces, in
//!   order, are exactly the text the child sent;
//! - every page reads back whole in every mode that needs no model time (EXACT, IMAGES: its raster is a PNG);
//! - a background encoder started on the reopened store encodes every page still waiting for its tokens, and then
//!   every page has tokens of the shape its tier gives (no page is left half-written or half-aged).
//!
//! 8 kills by default (the child loads the model each time); `OPTIMEM_CRASH_ITERS=100` for the full run.

mod common;
// The store's crash-test helpers: the kill harness and the seeded generator.
#[path = "../store/tests/common/mod.rs"]
mod store_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use optimem::engine::{Engine, EngineConfig};
use optimem::memory::{
    Budget, EncodeMode, Encoder, Forget, Memory, MemoryConfig, MemoryError, Message, RecallMode,
    Recalled, Selector,
};
use optimem_store::{MemoryId, OpenOptions, Scope, SledStore, Tier as StoreTier};
use store_common::Rng;
use store_common::kill::{field, run_and_kill};

const DIR_ENV: &str = "OPTIMEM_MEMORY_CRASH_DIR";
/// Past this many pages in a scope the child forgets the scope.
const MAX_PAGES: u64 = 4;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn scopes() -> [Scope; 2] {
    [
        Scope::user("crash").expect("scope"),
        Scope::new(Some("crash"), None, Some("session")).expect("scope"),
    ]
}

/// The text of message `i` of remember call `k`: a few hundred bytes, different for every call.
fn content(k: u64, i: u64) -> String {
    let words: String = (0..30 + (k * 7 + i) % 40)
        .map(|w| format!("w{} ", (w * 13 + k) % 89))
        .collect();
    format!("call {k} message {i}: {words}")
}

/// The memory over `dir/db` and the fixture model in `dir/model`, as `serve` opens it: write-behind encoding.
fn open(dir: &std::path::Path) -> Result<Arc<Memory>, Box<dyn std::error::Error>> {
    let engine = Engine::load(
        &dir.join("model"),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        EngineConfig::default(),
    )?;
    let store = SledStore::open(dir.join("db"), OpenOptions::new(engine.model_id()))?;
    let cfg = MemoryConfig {
        policy: common::server::small_then_tiny(),
        max_new_tokens: 6,
        encode: EncodeMode::Background,
        ..MemoryConfig::default()
    };
    Ok(Arc::new(Memory::new(
        Arc::new(store),
        Arc::new(engine),
        cfg,
    )?))
}

/// One line to the parent, flushed before the next call starts.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: Remember / Age / Forget forever, each acknowledged after it returns.
fn child(dir: &std::path::Path, seed: u64) -> TestResult {
    let memory = open(dir)?;
    let _encoder = Encoder::start(memory.clone())?;
    let scopes = scopes();
    let mut rng = Rng::new(seed);
    let mut next = |n: u64| rng.below(n);
    say("READY");
    for k in 0.. {
        let s = next(2) as usize;
        let scope = &scopes[s];
        let pages = memory.stats(Some(scope))?.store.pages;
        match next(10) {
            _ if pages > MAX_PAGES => {
                say(&format!("MAYBE-GONE {s}"));
                memory.forget(scope, &Forget::Scope)?;
                say(&format!("GONE {s}"));
            }
            0..=7 => {
                let n = 1 + next(2);
                let messages: Vec<Message> = (0..n)
                    .map(|i| Message {
                        role: if i == 0 { "user" } else { "assistant" }.into(),
                        content: content(k, i),
                        time_ms: None,
                        metadata: Default::default(),
                    })
                    .collect();
                match memory.remember(scope, &messages) {
                    Ok(done) => {
                        for (i, id) in done.memory_ids.iter().enumerate() {
                            say(&format!("ACK {s} {id} {k} {i}"));
                        }
                    }
                    // The backlog is full: the encoder catches up.
                    Err(MemoryError::Backlogged { .. }) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {
                memory.age(Some(scope))?;
                say("AGED");
            }
        }
    }
    Ok(())
}

/// What the parent knows must be durable.
#[derive(Default)]
struct Expected {
    /// Acknowledged memory → (scope index, its text).
    memories: BTreeMap<MemoryId, (usize, String)>,
    /// Scopes whose forgetting was started: their memories may be gone.
    maybe_gone: BTreeSet<usize>,
}

impl Expected {
    fn apply(&mut self, line: &str) -> Result<(), String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| field::<u64>(Some(s), line);
        match w.as_slice() {
            ["ACK", s, id, k, i] => {
                let id: MemoryId = field(Some(id), line)?;
                self.memories
                    .insert(id, (num(s)? as usize, content(num(k)?, num(i)?)));
            }
            ["MAYBE-GONE", s] => {
                self.maybe_gone.insert(num(s)? as usize);
            }
            ["GONE", s] => {
                let s = num(s)? as usize;
                self.memories.retain(|_, (scope, _)| *scope != s);
                self.maybe_gone.remove(&s);
            }
            _ => {} // AGED, READY, libtest's own lines.
        }
        Ok(())
    }

    /// Checks the reopened memory against what was acknowledged; returns how many memories were checked.
    fn check(&mut self, memory: &Memory) -> Result<usize, String> {
        let scopes = scopes();
        let e = |e: MemoryError| e.to_string();
        let mut checked = 0;
        let mut lost = Vec::new();
        for (id, (s, text)) in &self.memories {
            let got = memory.recall(
                &scopes[*s],
                &Selector::Memories(vec![*id]),
                RecallMode::Exact,
                Budget::default(),
            );
            let items = match got {
                Ok(items) => items,
                Err(_) if self.maybe_gone.contains(s) => {
                    lost.push(*id);
                    continue;
                }
                Err(err) => return Err(format!("acknowledged memory {id}: {err}")),
            };
            let mut pieces: Vec<_> = items
                .iter()
                .filter_map(|item| match &item.content {
                    Recalled::Exact { pieces, .. } => Some(pieces),
                    _ => None,
                })
                .flatten()
                .filter(|p| p.memory == *id)
                .collect();
            pieces.sort_by_key(|p| p.range.start);
            let whole: String = pieces.iter().map(|p| p.text.as_str()).collect();
            if &whole != text {
                return Err(format!(
                    "memory {id} came back as {whole:?}, acknowledged {text:?}"
                ));
            }
            checked += 1;
        }
        for id in lost {
            self.memories.remove(&id);
        }
        self.maybe_gone.clear();
        for scope in &scopes {
            let all = Selector::LastPages(usize::MAX);
            for mode in [RecallMode::Exact, RecallMode::Images] {
                for item in memory
                    .recall(scope, &all, mode, Budget::default())
                    .map_err(e)?
                {
                    if let Recalled::Png(png) = &item.content
                        && !png.starts_with(b"\x89PNG\r\n\x1a\n")
                    {
                        return Err(format!("page {} has no PNG raster", item.meta.id));
                    }
                }
            }
        }
        Ok(checked)
    }
}

/// Runs one child, kills it `wait_ms` after it is ready, and returns its stdout lines.
fn run_child(
    dir: &std::path::Path,
    seed: u64,
    wait_ms: u64,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let seed = seed.to_string();
    run_and_kill(
        "memory_kill_and_reopen",
        &[
            (DIR_ENV, dir.as_os_str()),
            ("OPTIMEM_CRASH_SEED", seed.as_ref()),
        ],
        Duration::from_secs(120),
        Duration::from_millis(wait_ms),
    )
}

#[test]
fn memory_kill_and_reopen() -> TestResult {
    if let Ok(dir) = std::env::var(DIR_ENV) {
        let seed = std::env::var("OPTIMEM_CRASH_SEED")?.parse()?;
        child(std::path::Path::new(&dir), seed)?;
        return Err("child loop returned".into());
    }
    let iters: u64 = match std::env::var("OPTIMEM_CRASH_ITERS") {
        Ok(v) => v.parse()?,
        Err(_) => 8,
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let model = dir.join("model");
    std::fs::create_dir(&model)?;
    common::fixture_model_dir(&model);
    let (mut rng, seed) = Rng::from_time();
    let mut expected = Expected::default();
    let (mut acks, mut checked, mut aged, mut forgot) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..iters {
        // Kills from a few milliseconds to over a second in: mid-render, mid-write, mid-encode, mid-age.
        let wait = 5 + rng.below(1500);
        let lines = run_child(dir, rng.next(), wait)?;
        for line in &lines {
            acks += usize::from(line.starts_with("ACK"));
            aged += usize::from(line.ends_with("AGED"));
            forgot += usize::from(line.starts_with("GONE"));
            expected
                .apply(line)
                .map_err(|e| format!("seed {seed}, kill {i}: {e}"))?;
        }
        let memory = open(dir)?;
        checked = expected
            .check(&memory)
            .map_err(|e| format!("seed {seed}, kill {i}: {e}"))?;
        // Write-behind pages pending at the kill are encoded by the next encoder; none stays half-done.
        let encoder = Encoder::start(memory.clone())?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = memory.stats(None)?.store;
            let pending = st.pending_pages;
            if pending == 0 && st.stale_pages == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("seed {seed}, kill {i}: {pending} pages never encoded").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        encoder.stop();
        for scope in scopes() {
            let all = Selector::LastPages(usize::MAX);
            for item in memory.recall(&scope, &all, RecallMode::Embeddings, Budget::default())? {
                let Recalled::Embeddings { shape, .. } = &item.content else {
                    return Err("an EMBEDDINGS recall gave something else".into());
                };
                let want = match item.meta.tier {
                    StoreTier::Tiny => 73,
                    StoreTier::Small => 111,
                    other => return Err(format!("page at {other:?}: the policy gives none").into()),
                };
                if shape.first() != Some(&want) {
                    return Err(format!(
                        "seed {seed}, kill {i}: page {} at {:?} has tokens of shape {shape:?}",
                        item.meta.id, item.meta.tier
                    )
                    .into());
                }
            }
        }
    }
    eprintln!(
        "memory crash test: {iters} kills, {acks} acknowledged memories, {aged} ageing runs, {forgot} scopes forgotten, \
         {checked} memories checked after the last kill (seed {seed})"
    );
    assert!(
        acks > 0,
        "the children acknowledged nothing: the test exercised nothing"
    );
    Ok(())
}

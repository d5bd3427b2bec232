//! Remember / Recall / Age / Forget / Stats end to end on the random-weight fixture model and a sled store on disk:
//! every recall mode, filling the last page, ageing down (never up), forgetting, stats, scope isolation, typed errors
//! that leave the store unchanged, the engine's bounded queue, and re-encoding after a model change.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use optimem::engine::{Engine, EngineError};
use optimem::memory::policy::from_store;
use optimem::memory::{
    Budget, ErrorCode, Forget, Memory, MemoryConfig, MemoryError, Message, RecallMode, Recalled,
    Selector, StreamEvent, TierPolicy, decode_budget,
};
use optimem::model::generate::Control;
use optimem_renderer::{GrayImage, Tier};
use optimem_store::{
    OpenOptions, PageParts, PageSelector, Scope, SledStore, Store, TokenDtype, VisionTokens,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    store: Arc<SledStore>,
    engine: Arc<Engine>,
}

fn fixture(queue: usize, keep_source: bool) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = common::server::engine_in(tmp.path(), "model", queue);
    let mut opts = OpenOptions::new(engine.model_id());
    opts.keep_source = keep_source;
    let store = SledStore::open(tmp.path().join("db"), opts).expect("store");
    Fixture {
        _tmp: tmp,
        store: Arc::new(store),
        engine: Arc::new(engine),
    }
}

/// Small tiers keep the tests fast on two cores: the newest page Small, older ones Tiny.
fn config(policy: TierPolicy) -> MemoryConfig {
    MemoryConfig {
        policy,
        max_new_tokens: 6,
        ..MemoryConfig::default()
    }
}

fn small_then_tiny() -> TierPolicy {
    TierPolicy {
        bands: vec![(1, Tier::Small)],
        rest: Tier::Tiny,
    }
}

fn memory(f: &Fixture, policy: TierPolicy) -> Memory {
    Memory::new(f.store.clone(), f.engine.clone(), config(policy)).expect("memory")
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        time_ms: None,
        metadata: Default::default(),
    }
}

fn scope(user: &str) -> Scope {
    Scope::user(user).expect("scope")
}

/// About two and a half pages of prose at the default layout.
fn long_text(seed: usize) -> String {
    (0..1400)
        .map(|i| format!("word{} ", (i * 7 + seed) % 97))
        .collect()
}

#[test]
fn remember_then_recall_in_every_mode() {
    let f = fixture(4, true);
    let m = memory(&f, small_then_tiny());
    let s = scope("alice");
    let msgs = [
        msg("user", "What is optical memory?"),
        msg(
            "assistant",
            "Text rendered to pages and kept as vision tokens.",
        ),
    ];
    let r = m.remember(&s, &msgs).expect("remember");
    assert_eq!(r.memory_ids.len(), 2);
    assert_eq!(r.pages.len(), 1);
    let p = &r.pages[0];
    assert_eq!(
        (p.tier, p.vision_tokens, p.embeddings),
        (Tier::Small, 100, 111)
    );
    assert!(!p.replaced && p.text_tokens > 0);
    let ratio = r.compression_ratio.expect("ratio");
    assert!((ratio - f64::from(p.text_tokens) / 100.0).abs() < 1e-12);

    let all = Selector::LastPages(10);
    let exact = m
        .recall(&s, &all, RecallMode::Exact, Budget::default())
        .expect("exact");
    assert_eq!(exact.len(), 1);
    let Recalled::Exact { text, pieces } = &exact[0].content else {
        panic!("not exact: {:?}", exact[0].content)
    };
    assert!(text.contains("user: What is optical memory?"), "{text:?}");
    let piece_texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(piece_texts, [msgs[0].content.as_str(), &msgs[1].content]);
    assert_eq!(pieces[1].memory, r.memory_ids[1]);

    let images = m
        .recall(&s, &all, RecallMode::Images, Budget::default())
        .expect("images");
    let Recalled::Png(png) = &images[0].content else {
        panic!("not png")
    };
    let img = GrayImage::from_png(png).expect("png");
    assert_eq!((img.width, img.height), (640, 640));

    let emb = m
        .recall(&s, &all, RecallMode::Embeddings, Budget::default())
        .expect("embeddings");
    let Recalled::Embeddings { values, shape } = &emb[0].content else {
        panic!("not embeddings")
    };
    assert_eq!(shape, &[111, f.engine.hidden_size() as u32]);
    // The stored tokens are the page's encoding, within f16 rounding.
    let fresh = f.engine.encode(&img, Tier::Small).expect("encode");
    for (a, b) in values.iter().zip(&fresh.values) {
        assert!((a - b).abs() <= b.abs() * 1e-3 + 1e-4, "{a} vs {b}");
    }

    let optical = m
        .recall(&s, &all, RecallMode::Optical, Budget::default())
        .expect("optical");
    let Recalled::Optical { text, tokens, .. } = &optical[0].content else {
        panic!("not optical")
    };
    assert!(*tokens > 0 && *tokens <= 6, "{tokens}");
    // Streaming gives the same text, piece by piece, after the page event.
    let mut events = Vec::new();
    let streamed = m
        .recall_stream(
            &s,
            &all,
            Budget::default(),
            Arc::new(AtomicBool::new(false)),
            |e| {
                events.push(match e {
                    StreamEvent::Page(meta) => format!("page {}", meta.id),
                    StreamEvent::Piece(p) => p.to_owned(),
                });
                Control::Continue
            },
        )
        .expect("stream");
    assert_eq!(streamed, optical);
    assert_eq!(events[0], format!("page {}", p.id));
    assert_eq!(events[1..].concat(), *text);
    // Stopping from the callback cancels the call.
    let stopped = m.recall_stream(&s, &all, Budget::default(), Arc::default(), |e| match e {
        StreamEvent::Page(_) => Control::Continue,
        StreamEvent::Piece(_) => Control::Stop,
    });
    assert!(
        matches!(stopped, Err(MemoryError::Cancelled)),
        "{stopped:?}"
    );

    // Memory-id selector finds the page; an unknown id is NotFound.
    let by_id = m
        .recall(
            &s,
            &Selector::Memories(vec![r.memory_ids[0]]),
            RecallMode::Exact,
            Budget::default(),
        )
        .expect("by id");
    assert_eq!(by_id[0].meta.id, p.id);
    let unknown = m.recall(
        &s,
        &Selector::Memories(vec![optimem_store::MemoryId::new()]),
        RecallMode::Exact,
        Budget::default(),
    );
    assert_eq!(
        unknown.map_err(|e| e.code()).err(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn an_optical_recall_generates_no_more_than_the_page_holds() {
    let f = fixture(4, true);
    let cap = 4096;
    let m = Memory::new(
        f.store.clone(),
        f.engine.clone(),
        MemoryConfig {
            max_new_tokens: cap,
            ..config(small_then_tiny())
        },
    )
    .expect("memory");
    let s = scope("bounded");
    m.remember(&s, &[msg("user", "A short page.")])
        .expect("remember");
    let got = m
        .recall(
            &s,
            &Selector::LastPages(1),
            RecallMode::Optical,
            Budget::default(),
        )
        .expect("optical");
    let Recalled::Optical { tokens, .. } = &got[0].content else {
        panic!("not optical")
    };
    let budget = decode_budget(&got[0].meta, cap);
    let held = got[0].meta.text_tokens as usize;
    assert!(
        held > 0 && budget < 100,
        "{held} tokens held, budget {budget}"
    );
    // The random-weight model never says EOS: it runs to the page's budget, not to the global cap.
    assert_eq!(*tokens, budget);
}

#[test]
fn appending_fills_the_last_page_then_ages_down_never_up() {
    let f = fixture(4, true);
    let m = memory(&f, small_then_tiny());
    let s = scope("bob");
    let first = m.remember(&s, &[msg("user", "first note")]).expect("first");
    let second = m
        .remember(&s, &[msg("assistant", "second note")])
        .expect("second");
    // The same page was rewritten holding both memories.
    assert_eq!(second.pages.len(), 1);
    assert!(second.pages[0].replaced);
    assert_eq!(second.pages[0].id, first.pages[0].id);
    let metas = f.store.list_pages(&s).expect("list");
    assert_eq!(metas.len(), 1);
    assert_eq!(
        metas[0].memories(),
        [first.memory_ids[0], second.memory_ids[0]]
    );
    assert!(metas[0].generation > 0);

    // A long message spills over several pages: older ones are written at their rank's tier.
    let long = m.remember(&s, &[msg("user", &long_text(1))]).expect("long");
    assert!(long.pages.len() >= 2, "{}", long.pages.len());
    assert!(
        long.pages[0].replaced,
        "the half-empty page is filled first"
    );
    let tiers: Vec<Tier> = long.pages.iter().map(|p| p.tier).collect();
    assert_eq!(tiers.last(), Some(&Tier::Small));
    assert!(tiers[..tiers.len() - 1].iter().all(|&t| t == Tier::Tiny));

    // Its last page ends a memory that began on the page before: the next message starts a new page.
    let next = m.remember(&s, &[msg("user", "one more")]).expect("next");
    assert_eq!(next.pages.len(), 1);
    assert!(!next.pages[0].replaced);
    let before = f.store.list_pages(&s).expect("list");
    let previous_newest = &before[before.len() - 2];
    assert_eq!(previous_newest.tier, optimem_store::Tier::Small);

    let report = m.age(Some(&s)).expect("age");
    assert_eq!(report.aged.len(), 1, "{report:?}");
    let aged = &report.aged[0];
    assert_eq!(
        (aged.page, aged.from, aged.to),
        (previous_newest.id, Tier::Small, Tier::Tiny)
    );
    assert_eq!(aged.embeddings, 73);
    let after = f
        .store
        .get_pages(
            &s,
            &optimem_store::PageSelector::Ids(vec![aged.page]),
            optimem_store::PageParts::ALL,
        )
        .expect("get");
    let raster = GrayImage::from_png(after[0].raster_png.as_deref().expect("raster")).expect("png");
    assert_eq!((raster.width, after[0].meta.vision_tokens), (512, 64));
    assert_eq!(after[0].meta.token_shape[0], 73);
    assert!(after[0].meta.generation > previous_newest.generation);

    // Nothing left to age; and a sharper policy never moves pages up.
    assert!(m.age(None).expect("age again").aged.is_empty());
    let sharp = memory(
        &f,
        TierPolicy {
            bands: vec![],
            rest: Tier::Base,
        },
    );
    assert!(sharp.age(Some(&s)).expect("age sharp").aged.is_empty());
    let unchanged = f.store.list_pages(&s).expect("list");
    assert!(
        unchanged
            .iter()
            .all(|p| p.tier != optimem_store::Tier::Base)
    );

    // The budget keeps the newest pages, in time order.
    let n = unchanged.len();
    let budget = Budget {
        max_pages: Some(2),
        max_vision_tokens: None,
    };
    let got = m
        .recall(&s, &Selector::LastPages(100), RecallMode::Images, budget)
        .expect("recall");
    let ids: Vec<_> = got.iter().map(|i| i.meta.id).collect();
    assert_eq!(ids, [unchanged[n - 2].id, unchanged[n - 1].id]);
    let tight = Budget {
        max_pages: None,
        max_vision_tokens: Some(100 + 64),
    };
    let got = m
        .recall(&s, &Selector::LastPages(100), RecallMode::Images, tight)
        .expect("recall");
    assert_eq!(got.len(), 2, "a Small page (100) and a Tiny one (64)");
}

#[test]
fn forget_stats_and_scope_isolation() {
    let f = fixture(4, true);
    let m = memory(&f, small_then_tiny());
    let (a, b) = (scope("a"), scope("b"));
    let ra = m.remember(&a, &[msg("user", "alpha one")]).expect("a1");
    let rb = m.remember(&b, &[msg("user", "beta one")]).expect("b1");
    let ra2 = m.remember(&a, &[msg("user", &long_text(3))]).expect("a2");

    let sa = m.stats(Some(&a)).expect("stats a");
    let pages_a = f.store.list_pages(&a).expect("list");
    assert_eq!(sa.store.pages, pages_a.len() as u64);
    assert_eq!(sa.store.pages_per_tier.iter().sum::<u64>(), sa.store.pages);
    assert_eq!(sa.store.memories, 2);
    let vision: u64 = pages_a.iter().map(|p| u64::from(p.vision_tokens)).sum();
    let text: u64 = pages_a.iter().map(|p| u64::from(p.text_tokens)).sum();
    assert_eq!(
        (sa.store.vision_tokens, sa.store.text_tokens),
        (vision, text)
    );
    assert_eq!(sa.compression_ratio, Some(text as f64 / vision as f64));
    assert!(sa.store.bytes.tokens > 0 && sa.store.bytes.rasters > 0);
    let all = m.stats(None).expect("stats all");
    let sb = m.stats(Some(&b)).expect("stats b");
    assert_eq!(all.store.pages, sa.store.pages + sb.store.pages);
    assert_eq!(all.store.memories, 3);

    // Scopes are isolated: b sees only its own page, and a's memory ids are unknown there.
    let got = m
        .recall(
            &b,
            &Selector::LastPages(50),
            RecallMode::Exact,
            Budget::default(),
        )
        .expect("recall b");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].meta.id, rb.pages[0].id);
    let cross = m.recall(
        &b,
        &Selector::Memories(vec![ra.memory_ids[0]]),
        RecallMode::Exact,
        Budget::default(),
    );
    assert_eq!(cross.map_err(|e| e.code()).err(), Some(ErrorCode::NotFound));

    // The long memory's pieces, page after page, give back its text exactly.
    let long = m
        .recall(
            &a,
            &Selector::Memories(vec![ra2.memory_ids[0]]),
            RecallMode::Exact,
            Budget::default(),
        )
        .expect("recall long");
    assert_eq!(long.len(), ra2.pages.len());
    let mut joined = String::new();
    for item in &long {
        let Recalled::Exact { pieces, .. } = &item.content else {
            panic!("not exact")
        };
        for p in pieces.iter().filter(|p| p.memory == ra2.memory_ids[0]) {
            assert_eq!(p.range.start as usize, joined.len());
            joined.push_str(&p.text);
        }
    }
    assert_eq!(joined, long_text(3));

    // Forgetting the long memory removes its pages (and the short one sharing its first page).
    let report = m
        .forget(&a, &Forget::Memories(vec![ra2.memory_ids[0]]))
        .expect("forget");
    assert_eq!(report.pages.len(), ra2.pages.len());
    assert_eq!(report.partially_lost, [ra.memory_ids[0]]);
    assert!(f.store.list_pages(&a).expect("list").is_empty());
    let gone = m.recall(
        &a,
        &Selector::Memories(vec![ra2.memory_ids[0]]),
        RecallMode::Exact,
        Budget::default(),
    );
    assert_eq!(gone.map_err(|e| e.code()).err(), Some(ErrorCode::NotFound));

    m.forget(&b, &Forget::Scope).expect("forget b");
    assert_eq!(m.stats(Some(&b)).expect("stats").store.pages, 0);
}

#[test]
fn time_range_selects_pages_by_when_memories_were_said() {
    let f = fixture(4, true);
    let m = memory(&f, small_then_tiny());
    let s = scope("erin");
    let at = |t: u64, text: &str| Message {
        time_ms: Some(t),
        ..msg("user", text)
    };
    let early = m.remember(&s, &[at(1_000, &long_text(5))]).expect("early");
    let late = m.remember(&s, &[at(9_000, "later on")]).expect("late");
    let pick = |r: std::ops::Range<u64>| -> Vec<optimem_store::PageId> {
        m.recall(
            &s,
            &Selector::TimeRange(r),
            RecallMode::Images,
            Budget::default(),
        )
        .expect("recall")
        .into_iter()
        .map(|i| i.meta.id)
        .collect()
    };
    let early_ids: Vec<_> = early.pages.iter().map(|p| p.id).collect();
    assert_eq!(pick(0..2_000), early_ids);
    assert_eq!(pick(5_000..10_000), [late.pages[0].id]);
    assert!(pick(2_000..5_000).is_empty());
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let f = fixture(4, false);
    let m = memory(&f, small_then_tiny());
    let s = scope("carol");
    m.remember(&s, &[msg("user", "kept")]).expect("remember");
    let before = f.store.stats(None).expect("stats");
    let big = "x".repeat(m.config().limits.max_message_bytes + 1);
    for bad in [
        vec![],
        vec![msg("", "content")],
        vec![msg("user", "")],
        vec![msg("user", "  \n")],
        vec![msg("user", "fine"), msg("user", &big)],
    ] {
        let err = m.remember(&s, &bad).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    }
    let bad_scope = Scope::new(None, None, None).map_err(MemoryError::from);
    assert_eq!(
        bad_scope.map(|_| ()).map_err(|e| e.code()),
        Err(ErrorCode::InvalidArgument)
    );
    for sel in [
        Selector::LastPages(0),
        Selector::Memories(vec![]),
        Selector::TimeRange(5..5),
    ] {
        let err = m
            .recall(&s, &sel, RecallMode::Images, Budget::default())
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    }
    // This store keeps no source text: EXACT is refused, the others work.
    let exact = m.recall(
        &s,
        &Selector::LastPages(1),
        RecallMode::Exact,
        Budget::default(),
    );
    assert_eq!(
        exact.map_err(|e| e.code()).err(),
        Some(ErrorCode::FailedPrecondition)
    );
    assert_eq!(f.store.stats(None).expect("stats").pages, before.pages);
    assert_eq!(f.store.stats(None).expect("stats").bytes, before.bytes);
    assert_eq!(
        f.store.stats(None).expect("stats").memories,
        before.memories
    );

    // A store of another model is refused up front.
    let tmp = tempfile::tempdir().expect("tempdir");
    let other = SledStore::open(tmp.path(), OpenOptions::new("another-model")).expect("store");
    let refused = Memory::new(Arc::new(other), f.engine.clone(), MemoryConfig::default());
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code()),
        Err(ErrorCode::FailedPrecondition)
    );
}

#[test]
fn a_full_queue_is_busy_not_a_hang() {
    let f = fixture(1, true);
    let m = memory(&f, small_then_tiny());
    let s = scope("dave");
    let before = f.store.stats(None).expect("stats");
    let blank = GrayImage {
        width: 8,
        height: 8,
        pixels: vec![255; 64],
    };
    let guard = f.engine.pause().expect("pause");
    // The worker is held; one job fills the single queue slot.
    let engine = f.engine.clone();
    let page = blank.clone();
    let waiting = std::thread::spawn(move || engine.encode(&page, Tier::Tiny));
    while f.engine.queued() < 1 {
        std::thread::yield_now();
    }
    assert!(matches!(
        f.engine.encode(&blank, Tier::Tiny),
        Err(EngineError::Busy { queue: 1 })
    ));
    // Counting text tokens needs no queue slot.
    assert_eq!(f.engine.count_tokens("a b c").expect("count"), 3);
    // A Remember is refused before it renders anything: no `render` span is opened.
    let times = optimem::bench::StageTimes::default();
    let err = tracing::dispatcher::with_default(&times.dispatch(), || {
        m.remember(&s, &[msg("user", "hello")]).expect_err("busy")
    });
    assert_eq!(err.code(), ErrorCode::ResourceExhausted, "{err}");
    assert!(
        times.summary().iter().all(|(stage, _)| stage != "render"),
        "{:?}",
        times.summary()
    );
    assert_eq!(f.store.stats(None).expect("stats").pages, before.pages);
    drop(guard);
    assert_eq!(waiting.join().expect("thread").expect("encode").rows, 73);
    m.remember(&s, &[msg("user", "hello")])
        .expect("after the burst");
}

#[test]
fn a_stopped_age_moves_nothing_and_the_next_run_does() {
    // Without sources each Remember starts a page, so the older one waits at Small for an Age.
    let f = fixture(4, false);
    let m = memory(&f, small_then_tiny());
    let s = scope("jack");
    for text in ["one", "two"] {
        m.remember(&s, &[msg("user", text)]).expect("remember");
    }
    let before = f.store.list_pages(&s).expect("pages");
    let stopped = m
        .age_until(None, &AtomicBool::new(true))
        .expect("stopped age");
    assert!(stopped.stopped && stopped.aged.is_empty(), "{stopped:?}");
    assert_eq!(f.store.list_pages(&s).expect("pages"), before);
    let done = m.age_until(None, &AtomicBool::new(false)).expect("age");
    assert!(!done.stopped);
    assert_eq!(done.aged.len(), 1);
    assert_eq!(
        (done.aged[0].from, done.aged[0].to),
        (Tier::Small, Tier::Tiny)
    );
}

#[test]
fn reencoding_after_a_model_change_restamps_each_page_from_its_raster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(common::server::engine_in(tmp.path(), "model-a", 4));
    let b = Arc::new(common::server::engine_in(tmp.path(), "model-b", 4));
    assert_ne!(a.model_id(), b.model_id());
    let db = tmp.path().join("db");
    let s = scope("ivy");
    let written = {
        let store = Arc::new(SledStore::open(&db, OpenOptions::new(a.model_id())).expect("store"));
        let m = Memory::new(store.clone(), a.clone(), config(small_then_tiny())).expect("memory");
        m.remember(&s, &[msg("user", &long_text(4))])
            .expect("remember");
        store
            .get_pages(&s, &PageSelector::LastN(10), PageParts::ALL)
            .expect("pages")
    };
    assert!(written.len() >= 2);

    let store = Arc::new(SledStore::open(&db, OpenOptions::new(b.model_id())).expect("reopen"));
    let report = store.open_report().clone();
    assert_eq!(report.previous_model_id.as_deref(), Some(a.model_id()));
    assert_eq!(report.stale_pages, written.len() as u64);
    let m = Memory::new(store.clone(), b.clone(), config(small_then_tiny())).expect("memory");
    assert_eq!(m.pages_to_encode(), written.len());
    // A run stopped before its first page changes nothing.
    let stopped = m.reencode_stale(&AtomicBool::new(true)).expect("stopped");
    assert!(stopped.stopped && stopped.reencoded.is_empty());
    assert_eq!(store.stale_pages(None).expect("stale").len(), written.len());

    // Another model's tokens are never fed to this decoder: a recall that needs the newest page encodes it now.
    let got = m
        .recall(
            &s,
            &Selector::LastPages(1),
            RecallMode::Embeddings,
            Budget::default(),
        )
        .expect("encoded on demand");
    assert_eq!(got[0].meta.model_id, b.model_id());
    assert_eq!(
        store.stale_pages(None).expect("stale").len(),
        written.len() - 1
    );
    assert_eq!(m.pages_to_encode(), written.len() - 1);

    let done = m.reencode_stale(&AtomicBool::new(false)).expect("reencode");
    assert!(!done.stopped);
    assert_eq!(done.reencoded.len(), written.len() - 1);
    assert_eq!(m.pages_to_encode(), 0);
    let now = store
        .get_pages(&s, &PageSelector::LastN(10), PageParts::ALL)
        .expect("pages");
    for (old, new) in written.iter().zip(&now) {
        assert_eq!(new.meta.model_id, b.model_id());
        // Filling in tokens does not change what the page shows, nor its generation.
        assert_eq!(new.meta.generation, old.meta.generation);
        assert_eq!(
            (new.meta.id, new.meta.tier, &new.meta.spans, &new.raster_png),
            (old.meta.id, old.meta.tier, &old.meta.spans, &old.raster_png)
        );
        // The new tokens are model B's encoding of the stored raster at the page's own tier.
        let raster = GrayImage::from_png(new.raster_png.as_deref().expect("raster")).expect("png");
        let enc = b
            .encode(&raster, from_store(new.meta.tier))
            .expect("encode");
        let want = VisionTokens::from_f32(
            &enc.values,
            vec![enc.rows as u32, enc.cols as u32],
            TokenDtype::F16,
        )
        .expect("tokens");
        assert_eq!(new.tokens.as_ref(), Some(&want));
    }
    assert!(
        m.reencode_stale(&AtomicBool::new(false))
            .expect("again")
            .reencoded
            .is_empty()
    );
    m.recall(
        &s,
        &Selector::LastPages(1),
        RecallMode::Embeddings,
        Budget::default(),
    )
    .expect("fresh tokens");
}

/// Write-behind without an encoder running: Remember stores pages pending and never touches the engine; a recall that
/// needs their tokens encodes them on its own thread and stores them (checked by generation), exactly as the encoder
/// would; one that does not (EXACT, IMAGES) leaves them pending.
#[test]
fn write_behind_pages_are_encoded_on_demand_by_the_recall_that_needs_them() {
    let f = fixture(4, true);
    let cfg = MemoryConfig {
        encode: optimem::memory::EncodeMode::Background,
        ..config(small_then_tiny())
    };
    let m = Memory::new(f.store.clone(), f.engine.clone(), cfg).expect("memory");
    let s = scope("uma");
    let r = m
        .remember(&s, &[msg("user", &long_text(6))])
        .expect("remember");
    let n = r.pages.len();
    assert!(n >= 2 && r.pages.iter().all(|p| p.pending && p.embeddings == 0));
    assert_eq!(f.engine.stats().encodes, 0, "Remember encoded");
    assert_eq!(m.pages_to_encode(), n);
    for mode in [RecallMode::Exact, RecallMode::Images] {
        m.recall(&s, &Selector::LastPages(n), mode, Budget::default())
            .expect("never waits");
    }
    assert_eq!(f.engine.stats().encodes, 0);
    assert_eq!(f.store.stats(None).expect("stats").pending_pages, n as u64);

    let newest = m
        .recall(
            &s,
            &Selector::LastPages(1),
            RecallMode::Embeddings,
            Budget::default(),
        )
        .expect("embeddings");
    assert!(!newest[0].meta.is_pending() && newest[0].meta.token_rows() > 0);
    let Recalled::Embeddings { shape, .. } = &newest[0].content else {
        panic!("not embeddings: {:?}", newest[0].content)
    };
    assert_eq!(u64::from(shape[0]), newest[0].meta.token_rows());
    // Stored, at the page's generation, and off the backlog; the tokens read back are the ones returned.
    let stored = f
        .store
        .get_pages(
            &s,
            &PageSelector::Ids(vec![newest[0].meta.id]),
            PageParts::ALL,
        )
        .expect("page");
    assert_eq!(stored[0].meta, newest[0].meta);
    assert_eq!(f.engine.stats().encodes, 1);
    assert_eq!(m.pages_to_encode(), n - 1);

    // OPTICAL over every page encodes the rest (once each) and decodes them all.
    let all = m
        .recall(
            &s,
            &Selector::LastPages(n),
            RecallMode::Optical,
            Budget::default(),
        )
        .expect("optical");
    assert_eq!(all.len(), n);
    assert_eq!(f.engine.stats().encodes, n as u64);
    assert_eq!(m.pages_to_encode(), 0);
    assert_eq!(f.store.stats(None).expect("stats").pending_pages, 0);
    // Nothing left to do for a catch-up run either.
    assert!(
        m.reencode_stale(&AtomicBool::new(false))
            .expect("run")
            .reencoded
            .is_empty()
    );
}

/// A recall's encode is not queued behind background encodes: with three background encodes (the encoder's, ageing's)
/// waiting while the worker is held, the encode of a recall that meets a pending page, queued after them, runs first.
/// A second pause, queued right behind the recall's encode, stops the worker after it to look.
#[test]
fn a_recall_encode_overtakes_queued_background_encodes() {
    let f = fixture(16, true);
    let cfg = MemoryConfig {
        encode: optimem::memory::EncodeMode::Background,
        ..config(small_then_tiny())
    };
    let m = Arc::new(Memory::new(f.store.clone(), f.engine.clone(), cfg).expect("memory"));
    let s = scope("vera");
    m.remember(&s, &[msg("user", &long_text(7))])
        .expect("remember");
    let blank = GrayImage {
        width: 8,
        height: 8,
        pixels: vec![255; 64],
    };
    let queued = |n: usize| {
        while f.engine.queued() < n {
            std::thread::yield_now();
        }
    };
    let first = f.engine.pause().expect("pause");
    let background_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let background: Vec<_> = (0..3)
        .map(|_| {
            let (engine, page, done) = (f.engine.clone(), blank.clone(), background_done.clone());
            std::thread::spawn(move || {
                let r = engine.encode_background(&page, Tier::Tiny);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r
            })
        })
        .collect();
    queued(3);
    let recall = {
        let (m, s) = (m.clone(), s.clone());
        std::thread::spawn(move || {
            m.recall(
                &s,
                &Selector::LastPages(1),
                RecallMode::Optical,
                Budget::default(),
            )
        })
    };
    queued(4);
    let second = {
        let engine = f.engine.clone();
        std::thread::spawn(move || engine.pause())
    };
    queued(5);
    drop(first);
    let second = second.join().expect("thread").expect("pause");
    // The worker is held again: it has run the recall's encode, and no background one.
    assert_eq!(f.engine.stats().encodes, 1);
    assert_eq!(background_done.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(second);
    let got = recall.join().expect("thread").expect("recall");
    assert!(got.len() == 1 && !got[0].meta.is_pending(), "{got:?}");
    for b in background {
        assert_eq!(b.join().expect("thread").expect("encode").rows, 73);
    }
    assert_eq!(f.engine.stats().encodes, 4);
}

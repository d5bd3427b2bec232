//! Unit tests of `SledStore` on a temporary directory: round trips, isolation, forget,
//! stats, optimistic checks, model changes, and that rejected input changes nothing.

use std::collections::BTreeMap;

use super::*;
use crate::ids::Tier;
use crate::memory::NewMemory;
use crate::page::{NewPage, Span};
use crate::store::{PageParts, PageSelector, ReplaceLast};
use crate::tokens::{TokenDtype, VisionTokens};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn open(dir: &Path, model: &str) -> Result<SledStore> {
    SledStore::open(dir, OpenOptions::new(model))
}

fn memory(text_bytes: u64, time_ms: u64) -> NewMemory {
    NewMemory {
        id: MemoryId::new(),
        role: "user".into(),
        time_ms,
        metadata: BTreeMap::from([("k".into(), "v".into())]),
        text_bytes,
    }
}

/// A page holding the given pieces (memory id, byte range in it); the raster and tokens
/// carry `seed` so that pages differ.
fn page(pieces: &[(MemoryId, std::ops::Range<u64>)], seed: u8, tier: Tier) -> Result<NewPage> {
    let mut source = String::new();
    let mut spans = Vec::new();
    for (m, r) in pieces {
        let start = source.len() as u32;
        source.push_str(&"x".repeat((r.end - r.start) as usize));
        spans.push(Span {
            memory: *m,
            text: r.clone(),
            page: start..source.len() as u32,
        });
    }
    let mut raster_png = b"\x89PNG\r\n\x1a\n".to_vec();
    raster_png.extend(std::iter::repeat_n(seed, 100));
    let values: Vec<f32> = (0..4 * 16)
        .map(|i| (i as f32 + f32::from(seed)) / 10.0)
        .collect();
    Ok(NewPage {
        tier,
        text_tokens: source.len() as u32 / 4,
        vision_tokens: 64,
        spans,
        raster_png,
        tokens: VisionTokens::from_f32(&values, vec![4, 16], TokenDtype::F16)?,
        source,
    })
}

fn write(
    store: &SledStore,
    scope: &Scope,
    memories: Vec<NewMemory>,
    pages: Vec<NewPage>,
) -> Result<WriteReceipt> {
    store.write_pages(
        scope,
        WritePages {
            memories,
            replace_last: None,
            pages,
        },
    )
}

/// Every key and value of every tree, to prove a rejected request changed nothing.
type Snapshot = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

fn snapshot(store: &SledStore) -> Result<Snapshot> {
    let mut out = Vec::new();
    for name in store.db.tree_names() {
        let tree = store.db.open_tree(&name)?;
        let kvs = tree
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<std::result::Result<_, _>>()?;
        out.push((name.to_vec(), kvs));
    }
    Ok(out)
}

#[test]
fn write_then_read_by_every_selector() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m1")?;
    let scope = Scope::new(Some("alice"), Some("agent"), Some("s1"))?;
    let (a, b) = (memory(30, 1_000), memory(50, 2_000));
    let pages = vec![
        page(&[(a.id, 0..30), (b.id, 0..10)], 1, Tier::Large)?,
        page(&[(b.id, 10..50)], 2, Tier::Base)?,
    ];
    let originals = pages.clone();
    let receipt = write(&store, &scope, vec![a.clone(), b.clone()], pages)?;
    assert_eq!(
        receipt.pages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [0, 1]
    );
    let third = write(
        &store,
        &scope,
        vec![],
        vec![page(&[(b.id, 40..50)], 3, Tier::Small)?],
    )?;
    assert_eq!(third.pages[0].seq, 2);

    let all = store.get_pages(&scope, &PageSelector::LastN(10), PageParts::ALL)?;
    assert_eq!(all.len(), 3);
    for (got, want) in all.iter().zip(&originals) {
        assert_eq!(got.raster_png.as_deref(), Some(want.raster_png.as_slice()));
        assert_eq!(got.tokens.as_ref(), Some(&want.tokens));
        assert_eq!(got.source.as_deref(), Some(want.source.as_str()));
        assert_eq!(got.meta.model_id, "m1");
    }
    assert_eq!(all[0].meta.first_memory_ms, 1_000);
    assert_eq!(all[0].meta.last_memory_ms, 2_000);

    let last = store.get_pages(&scope, &PageSelector::LastN(2), PageParts::NONE)?;
    assert_eq!(last.iter().map(|p| p.meta.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(last[0].raster_png.is_none() && last[0].tokens.is_none() && last[0].source.is_none());

    let ids = vec![all[2].meta.id, all[0].meta.id];
    let by_id = store.get_pages(&scope, &PageSelector::Ids(ids), PageParts::NONE)?;
    assert_eq!(by_id.iter().map(|p| p.meta.seq).collect::<Vec<_>>(), [0, 2]);

    let of_a = store.get_pages(&scope, &PageSelector::Memories(vec![a.id]), PageParts::NONE)?;
    assert_eq!(of_a.iter().map(|p| p.meta.seq).collect::<Vec<_>>(), [0]);
    let in_range = store.get_pages(
        &scope,
        &PageSelector::TimeRange(1_500..3_000),
        PageParts::NONE,
    )?;
    assert_eq!(in_range.len(), 3);
    let early = store.get_pages(&scope, &PageSelector::TimeRange(0..1_001), PageParts::NONE)?;
    assert_eq!(early.iter().map(|p| p.meta.seq).collect::<Vec<_>>(), [0]);

    let mems = store.get_memories(&scope, &[b.id, a.id])?;
    assert_eq!(
        mems[0].pages,
        all.iter().map(|p| p.meta.id).collect::<Vec<_>>()
    );
    assert_eq!(mems[1].pages, vec![all[0].meta.id]);
    assert_eq!(mems[1].metadata, a.metadata);
    assert_eq!(
        store.list_pages(&scope)?,
        all.iter().map(|p| p.meta.clone()).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn scopes_are_isolated() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let wide = Scope::user("u")?;
    let narrow = Scope::new(Some("u"), None::<&str>, Some("s"))?;
    let (m1, m2) = (memory(10, 1), memory(10, 2));
    let p1 = write(
        &store,
        &wide,
        vec![m1.clone()],
        vec![page(&[(m1.id, 0..10)], 1, Tier::Base)?],
    )?
    .pages[0]
        .clone();
    let p2 = write(
        &store,
        &narrow,
        vec![m2.clone()],
        vec![page(&[(m2.id, 0..10)], 2, Tier::Base)?],
    )?
    .pages[0]
        .clone();
    assert_eq!((p1.seq, p2.seq), (0, 0));

    let not_found = |r: Result<_>| matches!(r, Err(StoreError::NotFound(_)));
    assert!(not_found(
        store
            .get_pages(&wide, &PageSelector::Ids(vec![p2.id]), PageParts::NONE)
            .map(|_| ())
    ));
    assert!(not_found(store.get_memories(&narrow, &[m1.id]).map(|_| ())));
    assert!(not_found(
        store.forget_memories(&wide, &[m2.id]).map(|_| ())
    ));
    let upd = PageUpdate {
        tier: Tier::Tiny,
        vision_tokens: 64,
        raster_png: page(&[], 9, Tier::Tiny)?.raster_png,
        tokens: p_tokens()?,
    };
    assert!(not_found(
        store.update_page(&wide, p2.id, 0, upd).map(|_| ())
    ));
    // A span may not name another scope's memory.
    let cross = write(
        &store,
        &wide,
        vec![],
        vec![page(&[(m2.id, 0..10)], 3, Tier::Base)?],
    );
    assert!(matches!(cross, Err(StoreError::InvalidInput(_))));

    assert_eq!(store.list_pages(&wide)?, vec![p1.clone()]);
    assert_eq!(
        store
            .get_pages(&narrow, &PageSelector::LastN(5), PageParts::NONE)?
            .len(),
        1
    );
    assert_eq!(store.stats(Some(&wide))?.pages, 1);
    assert_eq!(store.stats(None)?.pages, 2);
    assert_eq!(store.list_scopes()?.len(), 2);

    let report = store.forget_scope(&wide)?;
    assert_eq!(report.pages, vec![p1.id]);
    assert_eq!(report.memories, vec![m1.id]);
    assert!(store.list_pages(&wide)?.is_empty());
    assert_eq!(store.list_pages(&narrow)?, vec![p2]);
    assert_eq!(store.list_scopes()?, vec![narrow.clone()]);
    assert_eq!(store.get_memories(&narrow, &[m2.id])?.len(), 1);
    Ok(())
}

fn p_tokens() -> Result<VisionTokens> {
    VisionTokens::from_f32(&[0.25; 2 * 16], vec![2, 16], TokenDtype::Int8RowScale)
}

#[test]
fn replace_last_and_ageing_check_generations() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let a = memory(100, 5);
    let first = write(
        &store,
        &scope,
        vec![a.clone()],
        vec![page(&[(a.id, 0..40)], 1, Tier::Large)?],
    )?
    .pages[0]
        .clone();

    // The half-empty last page is replaced (same id and seq) and a new page follows it.
    let b = memory(20, 6);
    let replace = |generation| WritePages {
        memories: vec![b.clone()],
        replace_last: Some(ReplaceLast {
            id: first.id,
            generation,
        }),
        pages: vec![
            page(&[(a.id, 0..60)], 2, Tier::Large).expect("valid test page"),
            page(&[(a.id, 60..100), (b.id, 0..20)], 3, Tier::Large).expect("valid test page"),
        ],
    };
    assert!(matches!(
        store.write_pages(&scope, replace(7)),
        Err(StoreError::Conflict(_))
    ));
    let got = store.write_pages(&scope, replace(0))?;
    assert_eq!(
        (got.pages[0].id, got.pages[0].seq, got.pages[0].generation),
        (first.id, 0, 1)
    );
    assert_eq!(got.pages[1].seq, 1);
    assert_eq!(
        store.get_memories(&scope, &[a.id])?[0].pages,
        vec![first.id, got.pages[1].id]
    );
    // The first page is no longer the last one.
    let again = WritePages {
        memories: vec![],
        ..replace(1)
    };
    assert!(matches!(
        store.write_pages(&scope, again),
        Err(StoreError::Conflict(_))
    ));

    // Ageing: optimistic on the generation, stamps the store's model.
    let aged = PageUpdate {
        tier: Tier::Tiny,
        vision_tokens: 64,
        raster_png: page(&[], 4, Tier::Tiny)?.raster_png,
        tokens: p_tokens()?,
    };
    assert!(matches!(
        store.update_page(&scope, first.id, 0, aged.clone()),
        Err(StoreError::Conflict(_))
    ));
    let meta = store.update_page(&scope, first.id, 1, aged.clone())?;
    assert_eq!(
        (meta.tier, meta.generation, meta.token_dtype),
        (Tier::Tiny, 2, TokenDtype::Int8RowScale)
    );
    let back = store.get_pages(&scope, &PageSelector::Ids(vec![first.id]), PageParts::ALL)?;
    assert_eq!(back[0].raster_png.as_ref(), Some(&aged.raster_png));
    assert_eq!(back[0].tokens.as_ref(), Some(&aged.tokens));
    assert_eq!(back[0].source.as_deref(), Some("x".repeat(60).as_str()));
    Ok(())
}

#[test]
fn forgetting_memories_removes_every_page_showing_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let (a, b, c) = (memory(10, 1), memory(20, 2), memory(10, 3));
    let pages = vec![
        page(&[(a.id, 0..10), (b.id, 0..10)], 1, Tier::Base)?,
        page(&[(b.id, 10..20), (c.id, 0..10)], 2, Tier::Base)?,
        page(&[(c.id, 0..10)], 3, Tier::Base)?,
    ];
    let ids: Vec<PageId> = write(&store, &scope, vec![a.clone(), b.clone(), c.clone()], pages)?
        .pages
        .iter()
        .map(|m| m.id)
        .collect();
    let report = store.forget_memories(&scope, &[a.id])?;
    assert_eq!(report.pages, vec![ids[0]]);
    assert_eq!(report.memories, vec![a.id]);
    assert_eq!(report.partially_lost, vec![b.id]);
    assert_eq!(store.get_memories(&scope, &[b.id])?[0].pages, vec![ids[1]]);
    assert!(matches!(
        store.get_memories(&scope, &[a.id]),
        Err(StoreError::NotFound(_))
    ));

    // Forgetting b removes page 1, which c shared; c keeps page 2 and is partially lost.
    let report = store.forget_memories(&scope, &[b.id])?;
    assert_eq!(
        (report.pages, report.partially_lost),
        (vec![ids[1]], vec![c.id])
    );
    assert_eq!(
        store
            .list_pages(&scope)?
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![ids[2]]
    );
    let st = store.stats(Some(&scope))?;
    assert_eq!((st.pages, st.memories), (1, 1));
    assert_eq!(
        store.rasters.len() + store.tokens.len() + store.sources.len() + store.page_ids.len(),
        4
    );
    Ok(())
}

#[test]
fn stats_add_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let a = memory(30, 1);
    let pages = vec![
        page(&[(a.id, 0..10)], 1, Tier::Large)?,
        page(&[(a.id, 10..30)], 2, Tier::Tiny)?,
    ];
    let metas = write(&store, &scope, vec![a], pages)?.pages;
    let st = store.stats(Some(&scope))?;
    assert_eq!((st.scopes, st.pages, st.memories), (1, 2, 1));
    assert_eq!(
        (
            st.pages_at(Tier::Large),
            st.pages_at(Tier::Tiny),
            st.pages_at(Tier::Base)
        ),
        (1, 1, 0)
    );
    assert_eq!(st.vision_tokens, 128);
    assert_eq!(st.token_rows, 8);
    assert_eq!(st.text_bytes, 30);
    assert_eq!(
        st.text_tokens,
        metas.iter().map(|m| u64::from(m.text_tokens)).sum::<u64>()
    );
    assert_eq!(st.bytes.tokens, 2 * (16 + 4 * 16 * 2));
    assert_eq!(st.bytes.rasters, 2 * (16 + 108));
    assert_eq!(
        st.bytes.sources,
        metas
            .iter()
            .map(|m| 16 + m.source.map_or(0, |s| s.bytes))
            .sum::<u64>()
    );
    assert!(st.bytes.metadata > 0 && st.db_bytes_on_disk > 0);
    assert_eq!(st.stale_pages, 0);
    assert_eq!(st.compression_ratio(), Some(st.text_tokens as f64 / 128.0));
    Ok(())
}

#[test]
fn rejected_requests_change_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let a = memory(10, 1);
    let first = write(
        &store,
        &scope,
        vec![a.clone()],
        vec![page(&[(a.id, 0..10)], 1, Tier::Base)?],
    )?
    .pages[0]
        .clone();
    let before = snapshot(&store)?;

    let b = memory(10, 2);
    let good = page(&[(b.id, 0..10)], 2, Tier::Base)?;
    let bad_png = NewPage {
        raster_png: b"GIF89a".to_vec(),
        ..good.clone()
    };
    let past_end = page(&[(b.id, 0..11)], 2, Tier::Base)?;
    let mut past_page = good.clone();
    past_page.spans[0].page = 0..99;
    let cases: Vec<(&str, WritePages)> = vec![
        (
            "no pages",
            WritePages {
                memories: vec![b.clone()],
                ..Default::default()
            },
        ),
        (
            "bad png",
            WritePages {
                memories: vec![b.clone()],
                pages: vec![good.clone(), bad_png],
                ..Default::default()
            },
        ),
        (
            "span past memory",
            WritePages {
                memories: vec![b.clone()],
                pages: vec![past_end],
                ..Default::default()
            },
        ),
        (
            "span past page",
            WritePages {
                memories: vec![b.clone()],
                pages: vec![past_page],
                ..Default::default()
            },
        ),
        (
            "unknown memory",
            WritePages {
                pages: vec![good.clone()],
                ..Default::default()
            },
        ),
        (
            "memory on no page",
            WritePages {
                memories: vec![b.clone(), memory(1, 3)],
                pages: vec![good.clone()],
                ..Default::default()
            },
        ),
        (
            "memory twice",
            WritePages {
                memories: vec![b.clone(), b.clone()],
                pages: vec![good.clone()],
                ..Default::default()
            },
        ),
        (
            "memory exists",
            WritePages {
                memories: vec![a.clone()],
                pages: vec![page(&[(a.id, 0..10)], 3, Tier::Base)?],
                ..Default::default()
            },
        ),
        (
            "stale replace",
            WritePages {
                memories: vec![b.clone()],
                replace_last: Some(ReplaceLast {
                    id: first.id,
                    generation: 9,
                }),
                pages: vec![good.clone()],
            },
        ),
        (
            "replace drops a memory",
            WritePages {
                memories: vec![b.clone()],
                replace_last: Some(ReplaceLast {
                    id: first.id,
                    generation: 0,
                }),
                pages: vec![good.clone()],
            },
        ),
    ];
    for (name, case) in cases {
        let r = store.write_pages(&scope, case);
        assert!(
            matches!(
                r,
                Err(StoreError::InvalidInput(_) | StoreError::Conflict(_))
            ),
            "{name}: {r:?}"
        );
        assert!(snapshot(&store)? == before, "{name} changed the store");
    }
    let bad_update = PageUpdate {
        tier: Tier::Tiny,
        vision_tokens: 64,
        raster_png: vec![1, 2, 3],
        tokens: p_tokens()?,
    };
    assert!(store.update_page(&scope, first.id, 0, bad_update).is_err());
    assert!(store.forget_memories(&scope, &[a.id, b.id]).is_err());
    assert!(
        snapshot(&store)? == before,
        "rejected update or forget changed the store"
    );
    Ok(())
}

#[test]
fn model_change_refuses_or_reports_stale_pages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let scope = Scope::user("u")?;
    let id = {
        let store = open(dir.path(), "old")?;
        let a = memory(10, 1);
        write(
            &store,
            &scope,
            vec![a.clone()],
            vec![page(&[(a.id, 0..10)], 1, Tier::Base)?],
        )?
        .pages[0]
            .id
    };
    let refuse = OpenOptions {
        on_model_mismatch: OnModelMismatch::Refuse,
        ..OpenOptions::new("new")
    };
    match SledStore::open(dir.path(), refuse) {
        Err(StoreError::ModelMismatch { stored, requested }) => {
            assert_eq!((stored.as_str(), requested.as_str()), ("old", "new"))
        }
        other => panic!("expected ModelMismatch, got {other:?}"),
    }
    let store = open(dir.path(), "new")?;
    assert_eq!(
        store.open_report(),
        &OpenReport {
            previous_model_id: Some("old".into()),
            stale_pages: 1
        }
    );
    let stale = store.stale_pages(None)?;
    assert_eq!((stale.len(), &stale[0].0, stale[0].1.id), (1, &scope, id));
    assert_eq!(store.stats(None)?.stale_pages, 1);
    let raster = store
        .get_pages(&scope, &PageSelector::Ids(vec![id]), PageParts::ALL)?
        .remove(0);
    let update = PageUpdate {
        tier: raster.meta.tier,
        vision_tokens: raster.meta.vision_tokens,
        raster_png: raster.raster_png.unwrap_or_default(),
        tokens: p_tokens()?,
    };
    assert_eq!(
        store
            .update_page(&scope, id, raster.meta.generation, update)?
            .model_id,
        "new"
    );
    assert!(store.stale_pages(None)?.is_empty());
    drop(store);
    assert_eq!(
        open(dir.path(), "new")?.open_report(),
        &OpenReport::default()
    );
    Ok(())
}

#[test]
fn damaged_parts_and_schemas_are_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let scope = Scope::user("u")?;
    {
        let store = open(dir.path(), "m")?;
        let a = memory(10, 1);
        let id = write(
            &store,
            &scope,
            vec![a.clone()],
            vec![page(&[(a.id, 0..10)], 1, Tier::Base)?],
        )?
        .pages[0]
            .id;
        store
            .rasters
            .insert(id.to_bytes(), b"\x89PNG\r\n\x1a\nflipped".to_vec())?;
        let r = store.get_pages(
            &scope,
            &PageSelector::LastN(1),
            PageParts {
                raster: true,
                ..PageParts::NONE
            },
        );
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        // Without the raster the page still reads.
        assert_eq!(
            store
                .get_pages(
                    &scope,
                    &PageSelector::LastN(1),
                    PageParts {
                        tokens: true,
                        ..PageParts::NONE
                    }
                )?
                .len(),
            1
        );
        let mut w = Writer::new(1);
        w.u32(SCHEMA_VERSION + 1);
        store
            .db
            .open_tree("meta")?
            .insert("schema_version", w.finish())?;
        store.flush()?;
    }
    match open(dir.path(), "m") {
        Err(StoreError::SchemaMismatch { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    Ok(())
}

#[test]
fn dropping_sources_by_retention_policy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(
        dir.path(),
        OpenOptions {
            keep_source: false,
            ..OpenOptions::new("m")
        },
    )?;
    let scope = Scope::user("u")?;
    let a = memory(10, 1);
    let meta = write(
        &store,
        &scope,
        vec![a.clone()],
        vec![page(&[(a.id, 0..10)], 1, Tier::Base)?],
    )?
    .pages
    .remove(0);
    assert_eq!((meta.source, meta.text_bytes), (None, 10));
    let got = store.get_pages(&scope, &PageSelector::LastN(1), PageParts::ALL)?;
    assert!(got[0].source.is_none() && got[0].raster_png.is_some());
    assert!(store.sources.is_empty());
    Ok(())
}

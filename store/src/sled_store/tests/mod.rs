//! Unit tests of `SledStore` on a temporary directory: round trips, isolation, forget,
//! stats, optimistic checks, model changes, and that rejected input changes nothing.
//! This file holds the shared helpers and the read tests; `changes` tests what mutates a
//! scope, `opening` what happens at open time and when data on disk is damaged, `pending`
//! pages written without tokens and the checked update that fills them in.

mod changes;
mod opening;
mod pending;

use std::collections::BTreeMap;

use super::*;
use crate::ids::Tier;
use crate::memory::NewMemory;
use crate::page::{NewPage, Span};
use crate::store::{PageParts, PageSelector, ReplaceLast};
use crate::tokens::{TokenDtype, VisionTokens};

pub(super) type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

pub(super) fn open(dir: &Path, model: &str) -> Result<SledStore> {
    SledStore::open(dir, OpenOptions::new(model))
}

pub(super) fn memory(text_bytes: u64, time_ms: u64) -> NewMemory {
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
pub(super) fn page(
    pieces: &[(MemoryId, std::ops::Range<u64>)],
    seed: u8,
    tier: Tier,
) -> Result<NewPage> {
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
        tokens: Some(VisionTokens::from_f32(
            &values,
            vec![4, 16],
            TokenDtype::F16,
        )?),
        source,
    })
}

pub(super) fn write(
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

/// One 10-byte memory written alone on a Base page; `tokens: false` writes the page pending (write-behind).
pub(super) fn write_one(store: &SledStore, scope: &Scope, tokens: bool) -> Result<PageMeta> {
    let a = memory(10, 1);
    let mut new = page(&[(a.id, 0..10)], 1, Tier::Base)?;
    if !tokens {
        new.tokens = None;
    }
    Ok(write(store, scope, vec![a], vec![new])?.pages.remove(0))
}

/// Every key and value of every tree, to prove a rejected request changed nothing.
pub(super) type Snapshot = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

pub(super) fn snapshot(store: &SledStore) -> Result<Snapshot> {
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

pub(super) fn p_tokens() -> Result<VisionTokens> {
    VisionTokens::from_f32(&[0.25; 2 * 16], vec![2, 16], TokenDtype::Int8RowScale)
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
        assert_eq!(got.tokens.as_ref(), want.tokens.as_ref());
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
    let narrow = Scope::new(Some("u"), None, Some("s"))?;
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
        tokens: Some(p_tokens()?),
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

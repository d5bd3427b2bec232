//! Tests of the changes to a scope: replace, age, forget, stats, rejected input.

use super::*;

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
        tokens: Some(p_tokens()?),
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
    assert_eq!(back[0].tokens.as_ref(), aged.tokens.as_ref());
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
        tokens: Some(p_tokens()?),
    };
    assert!(store.update_page(&scope, first.id, 0, bad_update).is_err());
    assert!(store.forget_memories(&scope, &[a.id, b.id]).is_err());
    assert!(
        snapshot(&store)? == before,
        "rejected update or forget changed the store"
    );
    Ok(())
}

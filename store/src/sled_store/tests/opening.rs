//! Tests of opening a store: model changes, schema versions, damaged parts, retention.

use super::*;

#[test]
fn model_change_refuses_or_reports_stale_pages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let scope = Scope::user("u")?;
    let id = {
        let store = open(dir.path(), "old")?;
        write_one(&store, &scope, true)?.id
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
            stale_pages: 1,
            ..OpenReport::default()
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
        tokens: Some(p_tokens()?),
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
        let id = write_one(&store, &scope, true)?.id;
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
fn a_schema_1_store_is_migrated_on_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let scope = Scope::user("u")?;
    let written = {
        let store = open(dir.path(), "m")?;
        let meta = write_one(&store, &scope, true)?;
        // Rewind the store to schema 1: its page record in format 1 (no token state).
        let mut v1 = crate::page::encode_meta(&meta);
        v1[0] = 1;
        v1.pop();
        store
            .pages
            .insert(keys::page_key(&scope.encode(), meta.seq), v1)?;
        let mut w = Writer::new(1);
        w.u32(1);
        store
            .db
            .open_tree("meta")?
            .insert("schema_version", w.finish())?;
        store.flush()?;
        meta
    };
    let store = open(dir.path(), "m")?;
    assert_eq!(store.open_report().migrated_from, Some(1));
    let back = store.get_pages(&scope, &PageSelector::LastN(1), PageParts::ALL)?;
    assert_eq!(back[0].meta, written);
    assert!(back[0].tokens.is_some() && !back[0].meta.is_pending());
    drop(store);
    // Recorded as schema 2 from then on.
    assert_eq!(open(dir.path(), "m")?.open_report().migrated_from, None);
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
    let meta = write_one(&store, &scope, true)?;
    assert_eq!((meta.source, meta.text_bytes), (None, 10));
    let got = store.get_pages(&scope, &PageSelector::LastN(1), PageParts::ALL)?;
    assert!(got[0].source.is_none() && got[0].raster_png.is_some());
    assert!(store.sources.is_empty());
    Ok(())
}

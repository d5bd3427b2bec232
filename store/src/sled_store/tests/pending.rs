//! Pages written with their tokens pending, and `put_tokens`, the checked update that fills them in: it wins only
//! against the page it was encoded from, so an ageing, refill or forget that happened meanwhile is never undone.

use super::*;
use crate::page::{PageUpdate, TokenState};

/// `page` with its tokens left pending.
fn pending(pieces: &[(MemoryId, std::ops::Range<u64>)], seed: u8, tier: Tier) -> Result<NewPage> {
    Ok(NewPage {
        tokens: None,
        ..page(pieces, seed, tier)?
    })
}

fn by_id(store: &SledStore, scope: &Scope, id: crate::ids::PageId) -> Result<crate::page::Page> {
    Ok(store
        .get_pages(scope, &PageSelector::Ids(vec![id]), PageParts::ALL)?
        .remove(0))
}

#[test]
fn a_pending_page_is_stored_whole_and_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let a = memory(10, 1);
    let new = pending(&[(a.id, 0..10)], 1, Tier::Base)?;
    let meta = write(&store, &scope, vec![a.clone()], vec![new.clone()])?
        .pages
        .remove(0);
    assert_eq!(meta.token_state, TokenState::Pending);
    assert_eq!(
        (meta.token_rows(), meta.vision_tokens, meta.text_tokens),
        (0, 64, 2)
    );
    assert!(meta.needs_tokens("m"));
    let back = by_id(&store, &scope, meta.id)?;
    assert_eq!(back.meta, meta);
    assert_eq!(back.tokens, None);
    assert_eq!(back.raster_png.as_ref(), Some(&new.raster_png));
    assert_eq!(back.source.as_deref(), Some(new.source.as_str()));
    assert!(!store.tokens.contains_key(meta.id.to_bytes())?);

    let st = store.stats(None)?;
    assert_eq!((st.pages, st.pending_pages, st.stale_pages), (1, 1, 0));
    assert_eq!(
        (st.pending_at(Tier::Base), st.token_rows, st.bytes.tokens),
        (1, 0, 0)
    );
    assert!(store.stale_pages(None)?.is_empty());
    let todo = store.pages_to_encode(None)?;
    assert_eq!((todo.len(), &todo[0].0, todo[0].1.id), (1, &scope, meta.id));
    assert_eq!(
        store.pages_to_encode(Some(&Scope::user("other")?))?.len(),
        0
    );
    drop(store);
    assert_eq!(open(dir.path(), "m")?.open_report().pending_pages, 1);
    Ok(())
}

#[test]
fn put_tokens_fills_a_pending_page_once_at_its_generation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let meta = write_one(&store, &scope, false)?;
    let before = snapshot(&store)?;
    // Another generation, another scope, another page: refused, nothing written.
    let wrong_gen = store.put_tokens(&scope, meta.id, meta.generation + 1, p_tokens()?);
    assert!(
        matches!(wrong_gen, Err(StoreError::Conflict(_))),
        "{wrong_gen:?}"
    );
    let other_scope = store.put_tokens(&Scope::user("v")?, meta.id, 0, p_tokens()?);
    assert!(
        matches!(other_scope, Err(StoreError::NotFound(_))),
        "{other_scope:?}"
    );
    assert_eq!(snapshot(&store)?, before);

    let done = store.put_tokens(&scope, meta.id, meta.generation, p_tokens()?)?;
    assert_eq!(done.token_state, TokenState::Encoded);
    assert_eq!(
        (done.model_id.as_str(), done.generation),
        ("m", meta.generation)
    );
    assert_eq!(
        (done.token_rows(), done.token_dtype),
        (2, TokenDtype::Int8RowScale)
    );
    let back = by_id(&store, &scope, meta.id)?;
    assert_eq!(back.meta, done);
    assert_eq!(back.tokens, Some(p_tokens()?));
    assert_eq!(store.stats(None)?.pending_pages, 0);
    assert!(store.pages_to_encode(None)?.is_empty());
    // A second writer (on-demand encode racing the background worker) is refused: the tokens are there.
    let again = store.put_tokens(&scope, meta.id, meta.generation, p_tokens()?);
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    Ok(())
}

#[test]
fn ageing_refilling_or_forgetting_a_pending_page_beats_its_late_tokens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), "m")?;
    let scope = Scope::user("u")?;
    let a = memory(10, 1);
    let first = write(
        &store,
        &scope,
        vec![a.clone()],
        vec![pending(&[(a.id, 0..10)], 1, Tier::Base)?],
    )?
    .pages
    .remove(0);

    // Ageing a pending page downsamples it and leaves it pending; tokens encoded from the old raster lose.
    let aged = PageUpdate {
        tier: Tier::Tiny,
        vision_tokens: 64,
        raster_png: page(&[], 4, Tier::Tiny)?.raster_png,
        tokens: None,
    };
    let after_age = store.update_page(&scope, first.id, first.generation, aged.clone())?;
    assert_eq!(
        (after_age.tier, after_age.token_state),
        (Tier::Tiny, TokenState::Pending)
    );
    assert_eq!(after_age.generation, first.generation + 1);
    let late = store.put_tokens(&scope, first.id, first.generation, p_tokens()?);
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");
    assert_eq!(by_id(&store, &scope, first.id)?.meta, after_age);

    // Refilled (the last page replaced by Remember): the tokens of the old content lose too.
    let b = memory(5, 2);
    let refilled = store.write_pages(
        &scope,
        WritePages {
            memories: vec![b.clone()],
            replace_last: Some(ReplaceLast {
                id: first.id,
                generation: after_age.generation,
            }),
            pages: vec![pending(&[(a.id, 0..10), (b.id, 0..5)], 5, Tier::Base)?],
        },
    )?;
    let refilled = &refilled.pages[0];
    assert!(refilled.is_pending());
    let late = store.put_tokens(&scope, first.id, after_age.generation, p_tokens()?);
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");

    // Replacing an encoded page by a pending one drops the old tokens with it.
    store.put_tokens(&scope, first.id, refilled.generation, p_tokens()?)?;
    assert!(store.tokens.contains_key(first.id.to_bytes())?);
    let c = memory(5, 3);
    store.write_pages(
        &scope,
        WritePages {
            memories: vec![c.clone()],
            replace_last: Some(ReplaceLast {
                id: first.id,
                generation: refilled.generation,
            }),
            pages: vec![pending(
                &[(a.id, 0..10), (b.id, 0..5), (c.id, 0..5)],
                6,
                Tier::Base,
            )?],
        },
    )?;
    assert!(!store.tokens.contains_key(first.id.to_bytes())?);
    assert!(by_id(&store, &scope, first.id)?.meta.is_pending());

    // Forgotten: the late tokens find nothing and write nothing.
    let gen_now = by_id(&store, &scope, first.id)?.meta.generation;
    store.forget_memories(&scope, &[a.id])?;
    let before = snapshot(&store)?;
    let gone = store.put_tokens(&scope, first.id, gen_now, p_tokens()?);
    assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
    assert_eq!(snapshot(&store)?, before);
    assert_eq!(store.stats(None)?.pending_pages, 0);
    Ok(())
}

#[test]
fn stale_pages_take_tokens_of_the_new_model_through_put_tokens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let scope = Scope::user("u")?;
    let id = {
        let store = open(dir.path(), "old")?;
        write_one(&store, &scope, true)?.id
    };
    let store = open(dir.path(), "new")?;
    let todo = store.pages_to_encode(None)?;
    assert_eq!((todo.len(), todo[0].1.is_pending()), (1, false));
    let generation = todo[0].1.generation;
    let meta = store.put_tokens(&scope, id, generation, p_tokens()?)?;
    assert_eq!(
        (meta.model_id.as_str(), meta.generation),
        ("new", generation)
    );
    assert!(store.pages_to_encode(None)?.is_empty() && store.stale_pages(None)?.is_empty());
    Ok(())
}

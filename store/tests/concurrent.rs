//! Concurrency: writers appending to one scope keep their order and lose nothing, and
//! readers racing ageing and last-page replacement never see a page made of two versions.

mod common;

use std::sync::Arc;

use common::{
    Rng, check_page, check_scope, new_memory, next_blurrier, source_nonce, stamped_page,
    stamped_update,
};
use optimem_store::{
    OpenOptions, PageParts, PageSelector, ReplaceLast, Scope, SledStore, Store, StoreError, Tier,
    WritePages,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WRITERS: u64 = 4;
const WRITES_EACH: u64 = 25;

#[test]
fn concurrent_writers_keep_order_and_lose_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), OpenOptions::new("m"))?);
    let scope = Scope::new(Some("u"), Some("a"), Some("s"))?;
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, scope) = (Arc::clone(&store), scope.clone());
            std::thread::spawn(move || -> Result<Vec<_>, StoreError> {
                let mut rng = Rng::new(w + 1);
                let mut written = Vec::new();
                for i in 0..WRITES_EACH {
                    let memory = new_memory(100);
                    // The nonce records writer and position, to check order afterwards.
                    let page = stamped_page(memory.id, 0..100, (w << 32) | i, Tier::Base, &mut rng);
                    let write = WritePages {
                        memories: vec![memory],
                        replace_last: None,
                        pages: vec![page],
                    };
                    written.push(store.write_pages(&scope, write)?.pages.remove(0));
                }
                Ok(written)
            })
        })
        .collect();
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.join().map_err(|_| "writer panicked")??);
    }
    let pages = check_scope(store.as_ref(), &scope)?;
    assert_eq!(pages.len() as u64, WRITERS * WRITES_EACH);
    // Sequence numbers are dense: no two writers got the same one, none was skipped.
    let seqs: Vec<u64> = pages.iter().map(|p| p.meta.seq).collect();
    assert_eq!(seqs, (0..WRITERS * WRITES_EACH).collect::<Vec<_>>());
    for m in &acked {
        assert!(
            pages.iter().any(|p| p.meta == *m),
            "acknowledged page {} is missing or changed",
            m.id
        );
    }
    // Each writer's pages appear in the order it wrote them.
    for w in 0..WRITERS {
        let order: Vec<u64> = pages
            .iter()
            .map(source_nonce)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|n| n >> 32 == w)
            .map(|n| n & 0xffff_ffff)
            .collect();
        assert_eq!(order, (0..WRITES_EACH).collect::<Vec<_>>(), "writer {w}");
    }
    Ok(())
}

#[test]
fn readers_never_see_half_aged_or_half_replaced_pages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let opts = OpenOptions {
        durability: optimem_store::Durability::Background { every_ms: 200 },
        ..OpenOptions::new("m")
    };
    let store = Arc::new(SledStore::open(dir.path(), opts)?);
    let scope = Scope::user("u")?;
    let mut rng = Rng::new(7);
    for _ in 0..8 {
        let memory = new_memory(100);
        let page = stamped_page(memory.id, 0..100, rng.next(), Tier::Gundam, &mut rng);
        store.write_pages(
            &scope,
            WritePages {
                memories: vec![memory],
                replace_last: None,
                pages: vec![page],
            },
        )?;
    }
    let changer = {
        let (store, scope) = (Arc::clone(&store), scope.clone());
        std::thread::spawn(move || -> Result<u32, StoreError> {
            let mut rng = Rng::new(11);
            let mut changes = 0;
            for _ in 0..150 {
                let metas = store.list_pages(&scope)?;
                let meta = &metas[rng.below(metas.len() as u64) as usize];
                let r = if rng.below(3) == 0 {
                    let last = &metas[metas.len() - 1];
                    let span = last.spans[0].clone();
                    let page =
                        stamped_page(span.memory, span.text, rng.next(), last.tier, &mut rng);
                    let replace = Some(ReplaceLast {
                        id: last.id,
                        generation: last.generation,
                    });
                    store
                        .write_pages(
                            &scope,
                            WritePages {
                                memories: vec![],
                                replace_last: replace,
                                pages: vec![page],
                            },
                        )
                        .map(drop)
                } else {
                    // Stay at the same tier once at the bottom: the stamp still changes.
                    let tier = next_blurrier(meta.tier).unwrap_or(meta.tier);
                    let page = store
                        .get_pages(&scope, &PageSelector::Ids(vec![meta.id]), PageParts::ALL)?
                        .remove(0);
                    let nonce = source_nonce(&page).map_err(StoreError::InvalidInput)?;
                    store
                        .update_page(
                            &scope,
                            meta.id,
                            page.meta.generation,
                            stamped_update(nonce, tier, &mut rng),
                        )
                        .map(drop)
                };
                match r {
                    Ok(()) => changes += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(changes)
        })
    };
    let mut reads = 0;
    while !changer.is_finished() {
        for p in store.get_pages(&scope, &PageSelector::LastN(8), PageParts::ALL)? {
            check_page(&p)?;
        }
        reads += 1;
    }
    let changes = changer.join().map_err(|_| "changer panicked")??;
    assert!(
        changes > 100 && reads > 0,
        "{changes} changes, {reads} reads"
    );
    check_scope(store.as_ref(), &scope)?;
    Ok(())
}

//! What the server does beside requests (issue 5): ageing the store every `age_every`, with shutdown waiting for the
//! page being aged; and after a model change, re-encoding another model's pages from their rasters in the background
//! (the same encoder as write-behind pages, `service_write_behind.rs`), never feeding those tokens to its decoder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::server::*;
use optimem::memory::{Limits, Memory};
use optimem::service::ServerConfig;
use optimem::service::pb::{self, selector::By};
use optimem_store::{OpenOptions, SledStore, Store};
use tonic::Code;

/// Without sources a page is never filled again: each Remember starts a page, and the older one, now at rank 1, is
/// Small where the policy wants Tiny until something ages it.
async fn two_pages_one_to_age(c: &mut Client) {
    for text in ["the first page", "the second page"] {
        c.remember(remember_req(scope("hana", ""), vec![msg("user", text)]))
            .await
            .expect("remember");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ages_the_store_in_the_background() {
    let f = fixture(16);
    let config = ServerConfig {
        age_every: Some(Duration::from_millis(50)),
        ..ServerConfig::default()
    };
    let server = start_with(
        &f,
        Setup {
            config,
            keep_source: false,
            ..Setup::default()
        },
    )
    .await;
    let mut c = server.client().await;
    two_pages_one_to_age(&mut c).await;
    until(&mut c, "the older page aged to Tiny", |st| {
        tier_pages(st, pb::Tier::Tiny) == 1 && tier_pages(st, pb::Tier::Small) == 1
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_page_being_aged() {
    let f = fixture(16);
    // Ageing is off while the pages are written, then on in a second server over the same store.
    let server = start_with(
        &f,
        Setup {
            keep_source: false,
            ..Setup::default()
        },
    )
    .await;
    two_pages_one_to_age(&mut server.client().await).await;
    server.stop().await;

    let pause = f.engine.pause().expect("pause");
    let config = ServerConfig {
        age_every: Some(Duration::from_millis(10)),
        ..ServerConfig::default()
    };
    let server = start_with(
        &f,
        Setup {
            config,
            keep_source: false,
            ..Setup::default()
        },
    )
    .await;
    // The age's encode of the older page waits in the queue of the held worker.
    server.stop_after_held_job(&f, pause, "ageing").await;

    // The page in progress was aged and written before the store was flushed and closed.
    let store = SledStore::open(
        f.tmp.path().join("db"),
        OpenOptions::new(f.engine.model_id()),
    )
    .expect("reopen");
    let st = store.stats(None).expect("stats");
    assert_eq!(
        (
            st.pages_at(optimem_store::Tier::Tiny),
            st.pages_at(optimem_store::Tier::Small)
        ),
        (1, 1),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_models_pages_are_never_decoded_and_are_reencoded_in_the_background() {
    let f = fixture(16);
    let db = f.tmp.path().join("db");
    // Pages written by model A (the fixture's engine).
    {
        let store = SledStore::open(&db, OpenOptions::new(f.engine.model_id())).expect("store");
        let memory = Memory::new(
            Arc::new(store),
            f.engine.clone(),
            memory_config(Limits::default(), 6),
        )
        .expect("memory");
        memory
            .remember(
                &optimem_store::Scope::user("ivan").expect("scope"),
                &[optimem::memory::Message {
                    role: "user".into(),
                    content: long_text(3),
                    ..Default::default()
                }],
            )
            .expect("remember");
    }
    // Model B opens the store: its pages are stale until re-encoded. B's worker is held so that they stay stale.
    let b = Arc::new(engine_in(f.tmp.path(), "model-b", 16));
    assert_ne!(b.model_id(), f.engine.model_id());
    let store = SledStore::open(&db, OpenOptions::new(b.model_id())).expect("reopen");
    let stale = store.open_report().stale_pages;
    assert!(stale >= 2, "{stale} stale pages");
    let pause = b.pause().expect("pause");
    let memory = Memory::new(
        Arc::new(store),
        b.clone(),
        memory_config(Limits::default(), 6),
    )
    .expect("memory");
    let server = serve(Arc::new(memory), ServerConfig::default()).await;
    let mut c = server.client().await;
    let s = scope("ivan", "");
    // A recall that needs the page's tokens waits for them to be encoded by this model (here: held), within its
    // deadline; it never gets the other model's tokens.
    for mode in [pb::RecallMode::Embeddings, pb::RecallMode::Optical] {
        let mut req = tonic::Request::new(recall_req(s.clone(), By::LastPages(1), mode));
        req.set_timeout(Duration::from_millis(300));
        let err = status(c.recall(req).await);
        assert!(
            matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{mode:?}: {err:?}"
        );
    }
    // The source text does not depend on the model.
    c.recall(recall_req(
        s.clone(),
        By::LastPages(1),
        pb::RecallMode::Exact,
    ))
    .await
    .expect("exact");
    let before = c
        .stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(before.stale_pages, stale);

    drop(pause);
    until(&mut c, "every page re-encoded", |st| st.stale_pages == 0).await;
    let after = c
        .stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!((after.pages, &after.tiers), (before.pages, &before.tiers));
    let emb = c
        .recall(recall_req(s, By::LastPages(1), pb::RecallMode::Embeddings))
        .await
        .expect("fresh tokens")
        .into_inner();
    assert_eq!(emb.pages[0].shape[1] as usize, b.hidden_size());
    assert!(!emb.pages[0].page.as_ref().expect("page").tokens_pending);
    server.stop().await;
}

//! Write-behind encoding (issue 6): under `serve --encode background` Remember stores each page's raster, source and
//! metadata durably and replies without waiting for the model; the server's encoder makes the vision tokens after.
//! These tests hold the engine's worker (`Engine::pause`) so that pages stay pending exactly as long as a test needs:
//! a Remember, an Age, a Forget or an EXACT recall that answers while the worker is held did not wait for the model.

mod common;

use common::server::*;
use optimem::service::pb::{self, selector::By};
use optimem_store::{OpenOptions, SledStore, Store};
use tonic::Code;

fn user(name: &str) -> Option<pb::Scope> {
    scope(name, "")
}

fn recall(s: &Option<pb::Scope>, mode: pb::RecallMode) -> pb::RecallRequest {
    recall_req(s.clone(), By::LastPages(16), mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_pages_are_pending_then_encoded_in_the_background() {
    let f = fixture(16);
    let server = start_write_behind(&f, Setup::default()).await;
    let mut c = server.client().await;
    let s = user("wren");

    let pause = f.engine.pause().expect("pause");
    let r = c
        .remember(remember_req(s.clone(), vec![msg("user", &long_text(1))]))
        .await
        .expect("remember answers without the model")
        .into_inner();
    assert!(r.pages.len() >= 2, "{r:?}");
    for p in &r.pages {
        assert!(p.tokens_pending && p.embeddings == 0, "{p:?}");
        // The paper's count is known from the tier before any encode.
        assert!([64, 100].contains(&p.vision_tokens), "{p:?}");
        assert!(p.text_tokens > 0, "{p:?}");
    }
    assert!(r.compression_ratio > 0.0);
    let st = stats(&mut c).await;
    assert_eq!(st.pending_pages, r.pages.len() as u64);
    assert_eq!(
        tier_pending(&st, pb::Tier::Small) + tier_pending(&st, pb::Tier::Tiny),
        st.pending_pages
    );
    assert_eq!((st.embeddings, st.bytes_tokens), (0, 0));
    // EXACT and IMAGES never wait for the encoder.
    let exact = c
        .recall(recall(&s, pb::RecallMode::Exact))
        .await
        .expect("exact")
        .into_inner();
    assert_eq!(exact.pages.len(), r.pages.len());
    assert!(
        exact
            .pages
            .iter()
            .all(|p| p.page.as_ref().is_some_and(|i| i.tokens_pending))
    );
    let images = c
        .recall(recall(&s, pb::RecallMode::Images))
        .await
        .expect("images")
        .into_inner();
    assert!(images.pages.iter().all(|p| p.png.starts_with(b"\x89PNG")));

    drop(pause);
    let st = until(&mut c, "every page encoded", |st| st.pending_pages == 0).await;
    assert!(st.embeddings > 0 && st.bytes_tokens > 0, "{st:?}");
    let exact = c
        .recall(recall(&s, pb::RecallMode::Exact))
        .await
        .expect("exact")
        .into_inner();
    for p in &exact.pages {
        let info = p.page.as_ref().expect("page");
        assert!(!info.tokens_pending && info.embeddings > 0, "{info:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optical_and_embeddings_recall_of_a_pending_page_encode_it_on_demand() {
    let f = fixture(16);
    let server = start_write_behind(&f, Setup::default()).await;
    let mut c = server.client().await;
    let s = user("yara");
    // Each recall comes right after its Remember: the newest page is pending unless the encoder was quicker; either
    // way the recall answers with tokens of this model, never an error.
    for (i, mode) in [pb::RecallMode::Embeddings, pb::RecallMode::Optical]
        .into_iter()
        .enumerate()
    {
        let r = c
            .remember(remember_req(
                s.clone(),
                vec![msg("user", &long_text(10 + i))],
            ))
            .await
            .expect("remember")
            .into_inner();
        assert!(r.pages.iter().all(|p| p.tokens_pending));
        let got = c
            .recall(recall_req(s.clone(), By::LastPages(1), mode))
            .await
            .expect("recall of a page written behind")
            .into_inner();
        let page = &got.pages[0];
        let info = page.page.as_ref().expect("page");
        assert!(!info.tokens_pending && info.embeddings > 0, "{info:?}");
        match mode {
            pb::RecallMode::Embeddings => {
                assert_eq!(u64::from(page.shape[0]), info.embeddings);
                assert_eq!(
                    page.embeddings.len(),
                    4 * (page.shape[0] * page.shape[1]) as usize
                );
            }
            // The fixture model reads nothing useful; that it decoded at all is the point.
            _ => assert!(
                page.png.is_empty() && page.embeddings.is_empty(),
                "{page:?}"
            ),
        }
    }
    // The page's tokens were stored by the recall (or the encoder), once: nothing is left to do for the newest.
    let st = until(&mut c, "the backlog drained", |st| st.pending_pages == 0).await;
    assert_eq!(st.stale_pages, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finishes_the_pages_left_pending() {
    let f = fixture(16);
    let server = start_write_behind(&f, Setup::default()).await;
    let mut c = server.client().await;
    let pause = f.engine.pause().expect("pause");
    let r = c
        .remember(remember_req(user("zeno"), vec![msg("user", &long_text(2))]))
        .await
        .expect("remember")
        .into_inner();
    let written = r.pages.len() as u64;
    assert!(written >= 2, "{r:?}");
    // The encoder is waiting for the held worker with the first page: shutdown waits for that page, then stops.
    server
        .stop_after_held_job(&f, pause, "the page being encoded")
        .await;
    {
        let store = SledStore::open(
            f.tmp.path().join("db"),
            OpenOptions::new(f.engine.model_id()),
        )
        .expect("reopen");
        assert_eq!(store.open_report().pending_pages, written - 1);
        assert_eq!(store.stats(None).expect("stats").pending_pages, written - 1);
    }

    // The next server finds them by its start-up scan and encodes them, without any new Remember to wake it.
    let server = start_write_behind(&f, Setup::default()).await;
    let mut c = server.client().await;
    let st = until(&mut c, "the pages left pending encoded", |st| {
        st.pending_pages == 0
    })
    .await;
    assert_eq!(st.pages, written);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ageing_and_forgetting_pending_pages_need_no_encode() {
    let f = fixture(16);
    // Without sources each Remember starts a page: two pages, the older one due to age from Small to Tiny.
    let setup = Setup {
        keep_source: false,
        ..Setup::default()
    };
    let server = start_write_behind(&f, setup).await;
    let mut c = server.client().await;
    let s = user("abel");
    let pause = f.engine.pause().expect("pause");
    let mut ids = Vec::new();
    for text in ["the first page", "the second page"] {
        let r = c
            .remember(remember_req(s.clone(), vec![msg("user", text)]))
            .await
            .expect("remember")
            .into_inner();
        ids.push(r.memory_ids[0].clone());
    }
    let aged = c
        .age(pb::AgeRequest { scope: s.clone() })
        .await
        .expect("age answers without the model")
        .into_inner();
    assert_eq!(aged.aged.len(), 1, "{aged:?}");
    let a = &aged.aged[0];
    assert_eq!(
        (a.from_tier, a.to_tier, a.embeddings),
        (pb::Tier::Small as i32, pb::Tier::Tiny as i32, 0)
    );
    let st = stats(&mut c).await;
    assert_eq!(st.pending_pages, 2);
    assert_eq!(
        (
            tier_pending(&st, pb::Tier::Tiny),
            tier_pending(&st, pb::Tier::Small)
        ),
        (1, 1)
    );
    // The aged page's raster is the downsampled one: a Tiny PNG (512 px wide).
    let images = c
        .recall(recall(&s, pb::RecallMode::Images))
        .await
        .expect("images")
        .into_inner();
    let png = image_width(&images.pages[0].png);
    assert_eq!(png, 512);

    // Forgetting the newer page's memory removes a pending page outright.
    let gone = c
        .forget(pb::ForgetRequest {
            scope: s.clone(),
            memory_ids: vec![ids[1].clone()],
        })
        .await
        .expect("forget answers without the model")
        .into_inner();
    assert_eq!(gone.page_ids.len(), 1);
    assert_eq!(stats(&mut c).await.pending_pages, 1);

    drop(pause);
    until(&mut c, "the aged page encoded", |st| st.pending_pages == 0).await;
    let emb = c
        .recall(recall(&s, pb::RecallMode::Embeddings))
        .await
        .expect("embeddings")
        .into_inner();
    assert_eq!(emb.pages.len(), 1);
    let info = emb.pages[0].page.as_ref().expect("page");
    // Encoded once, at its new tier: Tiny's 64 paper tokens are 73 embeddings in the fixture model's layout.
    assert_eq!(
        (info.tier, info.vision_tokens, info.embeddings),
        (pb::Tier::Tiny as i32, 64, 73)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_cap_answers_resource_exhausted_and_bad_input_changes_nothing() {
    let f = fixture(16);
    let setup = Setup {
        max_pending: 2,
        ..Setup::default()
    };
    let server = start_write_behind(&f, setup).await;
    let mut c = server.client().await;
    let s = user("cleo");
    let pause = f.engine.pause().expect("pause");
    c.remember(remember_req(s.clone(), vec![msg("user", &long_text(4))]))
        .await
        .expect("under the cap");
    let before = stats(&mut c).await;
    assert!(before.pending_pages >= 2, "{before:?}");
    let err = status(
        c.remember(remember_req(s.clone(), vec![msg("user", "one more")]))
            .await,
    );
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("waiting to be encoded"), "{err:?}");
    // Bad input is still named as such, and neither changes what is stored.
    assert_eq!(
        remember_code(&mut c, s.clone(), vec![msg("user", "  ")]).await,
        Code::InvalidArgument
    );
    let after = stats(&mut c).await;
    assert_eq!(
        (
            after.pages,
            after.memories,
            after.pending_pages,
            after.text_bytes
        ),
        (
            before.pages,
            before.memories,
            before.pending_pages,
            before.text_bytes
        )
    );

    drop(pause);
    until(&mut c, "the backlog drained", |st| st.pending_pages == 0).await;
    c.remember(remember_req(s, vec![msg("user", "one more")]))
        .await
        .expect("under the cap again");
    server.stop().await;
}

/// Width of a PNG from its IHDR chunk.
fn image_width(png: &[u8]) -> u32 {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24,
        "not a PNG"
    );
    u32::from_be_bytes([png[16], png[17], png[18], png[19]])
}

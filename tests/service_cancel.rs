//! Cancel on disconnect (issue 6): a client that goes away mid-recall stops the decoding it asked for. The observable
//! is the engine's own counters ([`optimem::engine::EngineStats`]), read after `Server::stop` has waited for every
//! request's blocking work: how many page decodes started, ran to their end, or were cut short.

mod common;

use std::time::Duration;

use common::server::*;
use optimem::service::pb::{self, selector::By};
use tonic::{Code, Request};

/// Pages in the scope, and more tokens per page than a cancelled decode may produce.
const MAX_NEW_TOKENS: usize = 400;

/// A server whose scope `s` holds several pages; the number of pages.
async fn server_with_pages(f: &Fixture) -> (Server, Option<pb::Scope>, u32) {
    let server = start_with(
        f,
        Setup {
            max_new_tokens: MAX_NEW_TOKENS,
            ..Setup::default()
        },
    )
    .await;
    let s = scope("frank", "cancel");
    let r = server
        .client()
        .await
        .remember(remember_req(
            s.clone(),
            vec![msg("user", &long_text(1)), msg("assistant", &long_text(2))],
        ))
        .await
        .expect("remember")
        .into_inner();
    let pages = r.pages.len() as u32;
    assert!(pages >= 4, "{pages} pages");
    (server, s, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_recall_stream_stops_decoding() {
    let f = fixture(16);
    let (server, s, pages) = server_with_pages(&f).await;
    let before = f.engine.stats();

    let mut c = server.client().await;
    let mut stream = c
        .recall_stream(recall_req(s, By::LastPages(pages), pb::RecallMode::Optical))
        .await
        .expect("stream")
        .into_inner();
    // The first page's header, then its first text: the decoder is running when the client goes away.
    let header = stream.message().await.expect("chunk").expect("a header");
    assert!(header.page.is_some());
    let piece = stream.message().await.expect("chunk").expect("a piece");
    assert!(!piece.text.is_empty() && !piece.done, "{piece:?}");
    drop(stream);
    drop(c);

    // `stop` returns once the stream's blocking work is over, so the counters are final.
    server.stop().await;
    let run = f.engine.stats().since(&before);
    assert_eq!(run.decodes_started, 1, "only the first page: {run:?}");
    assert_eq!(run.decodes_cancelled, 1, "and it was cut short: {run:?}");
    assert_eq!(run.decodes_finished, 0, "{run:?}");
    assert!(
        (run.tokens_generated as usize) < MAX_NEW_TOKENS,
        "stopped before its token cap: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_past_its_deadline_stops_decoding() {
    let f = fixture(16);
    let (server, s, pages) = server_with_pages(&f).await;
    let before = f.engine.stats();

    // The worker is held, so the first page's decode waits in the queue when the deadline passes.
    let pause = {
        let engine = f.engine.clone();
        tokio::task::spawn_blocking(move || engine.pause())
            .await
            .expect("join")
            .expect("pause")
    };
    let mut c = server.client().await;
    let mut req = Request::new(recall_req(s, By::LastPages(pages), pb::RecallMode::Optical));
    req.set_timeout(Duration::from_secs(2));
    let call = tokio::spawn(async move { c.recall(req).await });
    while f.engine.queued() == 0 {
        assert!(
            !call.is_finished(),
            "the deadline passed before the first decode was queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = call.await.expect("join").expect_err("past its deadline");
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    drop(pause);

    server.stop().await;
    let run = f.engine.stats().since(&before);
    // The queued decode is skipped, or stopped at its first token if the worker reached it first; no other page is
    // decoded.
    assert_eq!(run.decodes_finished, 0, "{run:?}");
    assert_eq!(run.decodes_cancelled, 1, "{run:?}");
    assert_eq!(run.decodes_started + run.decodes_skipped, 1, "{run:?}");
}

//! Each gRPC error code of the service, with its reason: malformed requests, configured limits, unknown ids, a full
//! engine queue, and the preconditions a request cannot meet in the store's state. A refused request stores nothing.

mod common;

use common::server::*;

use optimem::memory::Limits;
use optimem::service::ServerConfig;
use optimem::service::pb::{self, selector::By};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_has_its_code() {
    let f = fixture(1);
    let limits = Limits {
        max_messages: 3,
        max_message_bytes: 300,
        max_total_bytes: 500,
        max_recall_pages: 4,
    };
    let config = ServerConfig {
        max_message_bytes: 16 * 1024,
        ..ServerConfig::default()
    };
    let server = start(&f, limits, config).await;
    let mut c = server.client().await;
    let s = scope("bob", "");

    // Bad scopes, missing fields, malformed ids: INVALID_ARGUMENT.
    let x = || vec![msg("user", "x")];
    let invalid = Code::InvalidArgument;
    assert_eq!(remember_code(&mut c, None, x()).await, invalid);
    assert_eq!(
        remember_code(&mut c, Some(pb::Scope::default()), x()).await,
        invalid
    );
    assert_eq!(
        remember_code(&mut c, scope(&"u".repeat(300), ""), x()).await,
        invalid
    );
    assert_eq!(remember_code(&mut c, s.clone(), vec![]).await, invalid);
    assert_eq!(
        remember_code(&mut c, s.clone(), vec![msg("", "x")]).await,
        invalid
    );
    let no_selector = pb::RecallRequest {
        scope: s.clone(),
        ..Default::default()
    };
    assert_eq!(code(c.recall(no_selector).await), invalid);
    let bad_id = By::MemoryIds(pb::MemoryIds {
        ids: vec!["not-a-uuid".into()],
    });
    assert_eq!(recall_code(&mut c, s.clone(), bad_id).await, invalid);
    let stream_exact = recall_req(s.clone(), By::LastPages(1), pb::RecallMode::Exact);
    assert_eq!(code(c.recall_stream(stream_exact).await), invalid);

    // Configured limits, the message-size limit included: RESOURCE_EXHAUSTED.
    let exhausted = Code::ResourceExhausted;
    let four = ["a", "b", "c", "d"].map(|t| msg("user", t)).to_vec();
    assert_eq!(remember_code(&mut c, s.clone(), four).await, exhausted);
    let big = vec![msg("user", &"y ".repeat(200))];
    assert_eq!(remember_code(&mut c, s.clone(), big).await, exhausted);
    let total = vec![msg("user", &"z ".repeat(140)); 2];
    assert_eq!(remember_code(&mut c, s.clone(), total).await, exhausted);
    let huge = vec![msg("user", &"w ".repeat(10_000))];
    assert_eq!(remember_code(&mut c, s.clone(), huge).await, exhausted);
    assert_eq!(
        recall_code(&mut c, s.clone(), By::LastPages(5)).await,
        exhausted
    );

    // Unknown ids: NOT_FOUND. Nothing above was stored.
    let r = c
        .remember(remember_req(
            s.clone(),
            vec![msg("user", "the only memory")],
        ))
        .await
        .expect("remember")
        .into_inner();
    let unknown = optimem_store::MemoryId::new().to_string();
    let by_unknown = By::MemoryIds(pb::MemoryIds {
        ids: vec![unknown.clone()],
    });
    assert_eq!(
        code(
            c.recall(recall_req(s.clone(), by_unknown, pb::RecallMode::Exact))
                .await
        ),
        Code::NotFound
    );
    let forget_unknown = pb::ForgetRequest {
        scope: s.clone(),
        memory_ids: vec![unknown],
    };
    assert_eq!(code(c.forget(forget_unknown).await), Code::NotFound);
    let stats = c
        .stats(pb::StatsRequest { scope: s.clone() })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!((stats.memories, stats.pages), (1, 1));
    assert_eq!(r.memory_ids.len(), 1);

    // A full engine queue: RESOURCE_EXHAUSTED. The worker is paused; one Remember waits in the single queue slot.
    let pause = {
        let engine = f.engine.clone();
        tokio::task::spawn_blocking(move || engine.pause())
            .await
            .expect("join")
            .expect("pause")
    };
    let mut waiting_client = server.client().await;
    let waiting = tokio::spawn({
        let s = s.clone();
        async move {
            waiting_client
                .remember(remember_req(s, vec![msg("user", "queued")]))
                .await
        }
    });
    while f.engine.queued() == 0 {
        tokio::task::yield_now().await;
    }
    let no_room = vec![msg("user", "no room")];
    let busy = remember_code(&mut c, scope("carol", ""), no_room).await;
    assert_eq!(busy, Code::ResourceExhausted);
    drop(pause);
    waiting
        .await
        .expect("join")
        .expect("the queued Remember completes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_recall_from_a_store_without_sources_is_failed_precondition() {
    let f = fixture(16);
    let server = start_with(
        &f,
        Setup {
            keep_source: false,
            ..Setup::default()
        },
    )
    .await;
    let mut c = server.client().await;
    let s = scope("gina", "");
    c.remember(remember_req(
        s.clone(),
        vec![msg("user", "kept as pixels only")],
    ))
    .await
    .expect("remember");
    let err = status(
        c.recall(recall_req(
            s.clone(),
            By::LastPages(1),
            pb::RecallMode::Exact,
        ))
        .await,
    );
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("no source text") && err.message().contains("OPTICAL"),
        "the reason says why and what to use instead: {err:?}"
    );
    // The other modes still answer.
    c.recall(recall_req(s, By::LastPages(1), pb::RecallMode::Images))
        .await
        .expect("images");
    server.stop().await;
}

//! The gRPC service end to end on a real server (`127.0.0.1:0`, sled in a temp dir, the random-weight fixture model):
//! a round trip in every recall mode and streamed, then forget, age, stats and the health check.

mod common;

use common::server::*;

use optimem::memory::Limits;
use optimem::service::ServerConfig;
use optimem::service::pb::{self, selector::By};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_in_every_mode_stream_forget_age_stats_and_health() {
    let f = fixture(16);
    let server = start(&f, Limits::default(), ServerConfig::default()).await;
    let mut c = server.client().await;
    let s = scope("alice", "s1");

    let r = c
        .remember(remember_req(
            s.clone(),
            vec![
                msg("user", "hello optical memory"),
                msg("assistant", "hi there"),
            ],
        ))
        .await
        .expect("remember")
        .into_inner();
    assert_eq!(r.memory_ids.len(), 2);
    assert_eq!(r.pages.len(), 1);
    assert_eq!(r.pages[0].tier, pb::Tier::Small as i32);
    assert_eq!(r.pages[0].vision_tokens, 100);
    assert!(r.compression_ratio > 0.0);

    let exact = c
        .recall(recall_req(
            s.clone(),
            By::LastPages(1),
            pb::RecallMode::Exact,
        ))
        .await
        .expect("exact")
        .into_inner();
    assert_eq!(exact.pages.len(), 1);
    let page = &exact.pages[0];
    assert!(page.text.contains("hello optical memory") && page.text.contains("hi there"));
    assert_eq!(page.spans.len(), 2);
    assert_eq!(page.spans[0].memory_id, r.memory_ids[0]);
    assert_eq!(page.spans[0].text, "hello optical memory");
    assert_eq!(page.spans[1].end, "hi there".len() as u64);

    let images = c
        .recall(recall_req(
            s.clone(),
            By::MemoryIds(pb::MemoryIds {
                ids: vec![r.memory_ids[1].clone()],
            }),
            pb::RecallMode::Images,
        ))
        .await
        .expect("images")
        .into_inner();
    assert!(images.pages[0].png.starts_with(b"\x89PNG\r\n\x1a\n"));

    let emb = c
        .recall(recall_req(
            s.clone(),
            By::TimeRange(pb::TimeRange {
                from_unix_ms: 0,
                to_unix_ms: u64::MAX,
            }),
            pb::RecallMode::Embeddings,
        ))
        .await
        .expect("embeddings")
        .into_inner();
    let e = &emb.pages[0];
    assert_eq!(e.shape.len(), 2);
    assert_eq!(e.shape[1] as usize, f.engine.hidden_size());
    assert_eq!(u64::from(e.shape[0]), r.pages[0].embeddings);
    assert_eq!(
        e.embeddings.len(),
        4 * e.shape[0] as usize * e.shape[1] as usize
    );

    let optical = c
        .recall(recall_req(
            s.clone(),
            By::LastPages(1),
            pb::RecallMode::Optical,
        ))
        .await
        .expect("optical")
        .into_inner();
    assert_eq!(optical.pages.len(), 1);
    assert!(optical.pages[0].generated_tokens <= 6);

    // The stream: the page header first, text pieces, `done` last; the same greedy decode as the unary call.
    let mut stream = c
        .recall_stream(recall_req(
            s.clone(),
            By::LastPages(1),
            pb::RecallMode::Unspecified,
        ))
        .await
        .expect("stream")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        chunks.push(chunk);
    }
    assert_eq!(
        chunks
            .first()
            .and_then(|c| c.page.as_ref())
            .map(|p| &p.page_id),
        Some(&r.pages[0].page_id)
    );
    assert!(chunks.last().is_some_and(|c| c.done));
    assert_eq!(chunks.iter().filter(|c| c.done).count(), 1);
    let streamed: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(streamed, optical.pages[0].text);

    let stats = c
        .stats(pb::StatsRequest { scope: s.clone() })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!((stats.pages, stats.memories, stats.scopes), (1, 2, 1));
    assert_eq!(stats.vision_tokens, 100);
    assert_eq!(stats.tiers.len(), 5);
    assert!(stats.bytes_tokens > 0 && stats.bytes_rasters > 0 && stats.bytes_source > 0);

    let aged = c
        .age(pb::AgeRequest { scope: s.clone() })
        .await
        .expect("age")
        .into_inner();
    assert!(aged.aged.is_empty(), "the newest page stays Small");

    let forgot = c
        .forget(pb::ForgetRequest {
            scope: s.clone(),
            memory_ids: vec![r.memory_ids[0].clone()],
        })
        .await
        .expect("forget")
        .into_inner();
    // The page held both memories: it goes, and the other memory, whose only page it was, goes with it.
    assert!(forgot.memory_ids.contains(&r.memory_ids[0]));
    assert_eq!(forgot.page_ids, vec![r.pages[0].page_id.clone()]);
    let whole = c
        .stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(whole.pages, 0);

    let mut health = server.health().await;
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "optimem.v1.Memory".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

//! Concurrent clients on one scope and on their own, then a restart on the same data dir keeps every page.

mod common;

use common::server::*;

use optimem::memory::Limits;
use optimem::service::ServerConfig;
use optimem::service::pb::{self, selector::By};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_then_restart_keeps_the_data() {
    let f = fixture(16);
    let server = start(&f, Limits::default(), ServerConfig::default()).await;
    // Three clients append to one scope, two more to scopes of their own, all at once.
    let mut tasks = Vec::new();
    for (i, session) in ["shared", "shared", "shared", "own-1", "own-2"]
        .into_iter()
        .enumerate()
    {
        let mut c = server.client().await;
        tasks.push(tokio::spawn(async move {
            let turns = vec![
                msg("user", &format!("client {i} asks")),
                msg("assistant", &format!("answer {i}")),
            ];
            c.remember(remember_req(scope("dana", session), turns))
                .await
        }));
    }
    for t in tasks {
        t.await
            .expect("join")
            .expect("every concurrent Remember succeeds");
    }
    let mut c = server.client().await;
    let shared = c
        .recall(recall_req(
            scope("dana", "shared"),
            By::LastPages(4),
            pb::RecallMode::Exact,
        ))
        .await
        .expect("recall")
        .into_inner();
    let spans: usize = shared.pages.iter().map(|p| p.spans.len()).sum();
    assert_eq!(
        spans, 6,
        "each of the 6 shared-scope messages is on a page once"
    );
    let seqs: Vec<u64> = shared
        .pages
        .iter()
        .filter_map(|p| p.page.as_ref())
        .map(|p| p.sequence)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "time order: {seqs:?}");
    for own in ["own-1", "own-2"] {
        let st = c
            .stats(pb::StatsRequest {
                scope: scope("dana", own),
            })
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(st.memories, 2);
    }
    let before = c
        .stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner();
    server.stop().await;

    // The same data dir, a new server.
    let server = start(&f, Limits::default(), ServerConfig::default()).await;
    let mut c = server.client().await;
    let after = c
        .stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        (after.memories, after.pages, after.scopes),
        (before.memories, before.pages, 3)
    );
    let again = c
        .recall(recall_req(
            scope("dana", "shared"),
            By::LastPages(4),
            pb::RecallMode::Exact,
        ))
        .await
        .expect("recall")
        .into_inner();
    assert_eq!(again.pages, shared.pages);
    server.stop().await;
}

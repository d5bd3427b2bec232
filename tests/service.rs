//! The gRPC service end to end: a real server on `127.0.0.1:0` over a sled store in a temp dir and the random-weight
//! fixture model, driven by the generated client. Round trips in every recall mode and streamed, each error code,
//! bearer-token auth (health and reflection stay open), concurrent clients, a restart on the same data dir, and the
//! health check.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use optimem::engine::{Engine, EngineConfig};
use optimem::memory::{Limits, Memory, MemoryConfig, TierPolicy};
use optimem::service::pb::memory_client::MemoryClient;
use optimem::service::pb::{self, selector::By};
use optimem::service::{AuthToken, ServeError, ServerConfig};
use optimem_renderer::Tier;
use optimem_store::{OpenOptions, SledStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

struct Fixture {
    tmp: tempfile::TempDir,
    engine: Arc<Engine>,
}

fn fixture(queue: usize) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    common::fixture_model_dir(&model);
    let engine =
        Engine::load(&model, &Device::Cpu, DType::F32, EngineConfig { queue }).expect("engine");
    Fixture {
        tmp,
        engine: Arc::new(engine),
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Stops the server and waits until it has flushed and let go of the store.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("join")
            .expect("server stopped cleanly");
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    async fn client(&self) -> MemoryClient<Channel> {
        MemoryClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

/// Small tiers keep the tests fast on two cores; decoding is capped at a few tokens.
fn memory_config(limits: Limits) -> MemoryConfig {
    MemoryConfig {
        policy: TierPolicy {
            bands: vec![(1, Tier::Small)],
            rest: Tier::Tiny,
        },
        max_new_tokens: 6,
        limits,
        ..MemoryConfig::default()
    }
}

async fn start(f: &Fixture, limits: Limits, config: ServerConfig) -> Server {
    let mut opts = OpenOptions::new(f.engine.model_id());
    opts.keep_source = true;
    let store = SledStore::open(f.tmp.path().join("db"), opts).expect("store");
    let memory =
        Memory::new(Arc::new(store), f.engine.clone(), memory_config(limits)).expect("memory");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(optimem::service::run(
        listener,
        Arc::new(memory),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn scope(user: &str, session: &str) -> Option<pb::Scope> {
    Some(pb::Scope {
        user: user.into(),
        agent: String::new(),
        session: session.into(),
    })
}

fn msg(role: &str, content: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

fn remember_req(scope: Option<pb::Scope>, messages: Vec<pb::Message>) -> pb::RememberRequest {
    pb::RememberRequest { scope, messages }
}

fn recall_req(scope: Option<pb::Scope>, by: By, mode: pb::RecallMode) -> pb::RecallRequest {
    pb::RecallRequest {
        scope,
        selector: Some(pb::Selector { by: Some(by) }),
        mode: mode.into(),
        budget: None,
    }
}

/// The code a Remember fails with.
async fn remember_code(
    c: &mut MemoryClient<Channel>,
    scope: Option<pb::Scope>,
    messages: Vec<pb::Message>,
) -> Code {
    code(c.remember(remember_req(scope, messages)).await)
}

/// The code an EXACT Recall fails with.
async fn recall_code(c: &mut MemoryClient<Channel>, scope: Option<pb::Scope>, by: By) -> Code {
    code(c.recall(recall_req(scope, by, pb::RecallMode::Exact)).await)
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

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

    // Configured limits: RESOURCE_EXHAUSTED; over the message-size limit, tonic's OUT_OF_RANGE.
    let exhausted = Code::ResourceExhausted;
    let four = ["a", "b", "c", "d"].map(|t| msg("user", t)).to_vec();
    assert_eq!(remember_code(&mut c, s.clone(), four).await, exhausted);
    let big = vec![msg("user", &"y ".repeat(200))];
    assert_eq!(remember_code(&mut c, s.clone(), big).await, exhausted);
    let total = vec![msg("user", &"z ".repeat(140)); 2];
    assert_eq!(remember_code(&mut c, s.clone(), total).await, exhausted);
    let huge = vec![msg("user", &"w ".repeat(10_000))];
    assert_eq!(
        remember_code(&mut c, s.clone(), huge).await,
        Code::OutOfRange
    );
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
async fn bearer_token_is_required_when_configured() {
    let f = fixture(16);
    let config = ServerConfig {
        auth_token: AuthToken::new("s3cret"),
        ..ServerConfig::default()
    };
    let server = start(&f, Limits::default(), config).await;
    let mut c = server.client().await;
    let with = |token: Option<&str>| {
        let mut req = Request::new(pb::StatsRequest { scope: None });
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        req
    };
    for bad in [None, Some("s3cre"), Some("s3cret!"), Some("")] {
        assert_eq!(code(c.stats(with(bad)).await), Code::Unauthenticated);
    }
    c.stats(with(Some("s3cret")))
        .await
        .expect("the right token passes");
    // Health stays open for probes.
    let mut health = server.health().await;
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");
    // So does reflection: grpcurl can list and describe the API without the .proto.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(server.channel().await)
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"optimem.v1.Memory"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    server.stop().await;
}

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

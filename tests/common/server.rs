//! A real `optimem.v1.Memory` server for the service tests: the fixture model's engine, a sled store in a temp dir,
//! `service::run` on `127.0.0.1:0` with a oneshot shutdown, and the generated clients; plus the request builders the
//! tests share.

use std::sync::Arc;

use candle_core::{DType, Device};
use optimem::engine::{Engine, EngineConfig, PauseGuard};
use optimem::memory::{DEFAULT_MAX_PENDING, EncodeMode, Limits, Memory, MemoryConfig, TierPolicy};
use optimem::service::pb::memory_client::MemoryClient;
use optimem::service::pb::{self, selector::By};
use optimem::service::{ServeError, ServerConfig};
use optimem_renderer::Tier;
use optimem_store::{OpenOptions, SledStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// A temp dir holding the fixture model (in `model/`) and the store (`db/`), and the engine over that model.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub engine: Arc<Engine>,
}

/// The fixture's engine with a queue of `queue` jobs.
pub fn fixture(queue: usize) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = engine_in(tmp.path(), "model", queue);
    Fixture {
        tmp,
        engine: Arc::new(engine),
    }
}

/// An engine over the fixture weights copied into `dir/name`. The model id names the directory, so two names give two
/// models as far as a store can tell (same weights, different ids).
pub fn engine_in(dir: &std::path::Path, name: &str, queue: usize) -> Engine {
    let model = dir.join(name);
    std::fs::create_dir(&model).expect("mkdir");
    super::fixture_model_dir(&model);
    Engine::load(
        &model,
        &Device::Cpu,
        DType::F32,
        EngineConfig {
            queue,
            ..EngineConfig::default()
        },
    )
    .expect("engine")
}

/// How a test's server is set up beyond the fixture.
pub struct Setup {
    pub limits: Limits,
    pub config: ServerConfig,
    pub keep_source: bool,
    pub max_new_tokens: usize,
    /// When Remember's pages get their tokens; `Sync` unless a test is about write-behind.
    pub encode: EncodeMode,
    pub max_pending: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            config: ServerConfig::default(),
            keep_source: true,
            // Decoding is capped at a few tokens: the tests check the plumbing, not the reading.
            max_new_tokens: 6,
            encode: EncodeMode::Sync,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// Small tiers keep the tests fast on two cores: the newest page Small, the rest Tiny.
pub fn small_then_tiny() -> TierPolicy {
    TierPolicy {
        bands: vec![(1, Tier::Small)],
        rest: Tier::Tiny,
    }
}

pub fn memory_config(limits: Limits, max_new_tokens: usize) -> MemoryConfig {
    MemoryConfig {
        policy: small_then_tiny(),
        max_new_tokens,
        limits,
        ..MemoryConfig::default()
    }
}

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Stops the server and waits until it has flushed and let go of the store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("join")
            .expect("server stopped cleanly");
    }

    /// Stops the server while `pause` holds the engine's worker and a job waits in its queue, checks that the
    /// shutdown waits for that job (`what` names it in the failure), then lets the worker go and waits for the stop.
    pub async fn stop_after_held_job(self, f: &Fixture, pause: PauseGuard, what: &str) {
        while f.engine.queued() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let stopping = tokio::spawn(self.stop());
        // A negative check: while the job cannot finish, neither can the shutdown.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!stopping.is_finished(), "shutdown did not wait for {what}");
        drop(pause);
        stopping.await.expect("server stopped");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    pub async fn client(&self) -> MemoryClient<Channel> {
        MemoryClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

/// A server over the fixture's store (`db/`, keeping sources) with these limits and settings.
pub async fn start(f: &Fixture, limits: Limits, config: ServerConfig) -> Server {
    start_with(
        f,
        Setup {
            limits,
            config,
            ..Setup::default()
        },
    )
    .await
}

pub async fn start_with(f: &Fixture, setup: Setup) -> Server {
    let mut opts = OpenOptions::new(f.engine.model_id());
    opts.keep_source = setup.keep_source;
    let store = SledStore::open(f.tmp.path().join("db"), opts).expect("store");
    let cfg = MemoryConfig {
        encode: setup.encode,
        max_pending: setup.max_pending,
        ..memory_config(setup.limits, setup.max_new_tokens)
    };
    let memory = Memory::new(Arc::new(store), f.engine.clone(), cfg).expect("memory");
    serve(Arc::new(memory), setup.config).await
}

/// Serves `memory` on `127.0.0.1:0` until [`Server::stop`].
pub async fn serve(memory: Arc<Memory>, config: ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(optimem::service::run(listener, memory, config, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

pub fn scope(user: &str, session: &str) -> Option<pb::Scope> {
    Some(pb::Scope {
        user: user.into(),
        agent: String::new(),
        session: session.into(),
    })
}

pub fn msg(role: &str, content: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

pub fn remember_req(scope: Option<pb::Scope>, messages: Vec<pb::Message>) -> pb::RememberRequest {
    pb::RememberRequest { scope, messages }
}

pub fn recall_req(scope: Option<pb::Scope>, by: By, mode: pb::RecallMode) -> pb::RecallRequest {
    pb::RecallRequest {
        scope,
        selector: Some(pb::Selector { by: Some(by) }),
        mode: mode.into(),
        budget: None,
    }
}

/// The code a Remember fails with.
pub async fn remember_code(
    c: &mut MemoryClient<Channel>,
    scope: Option<pb::Scope>,
    messages: Vec<pb::Message>,
) -> Code {
    code(c.remember(remember_req(scope, messages)).await)
}

/// The code an EXACT Recall fails with.
pub async fn recall_code(c: &mut MemoryClient<Channel>, scope: Option<pb::Scope>, by: By) -> Code {
    code(c.recall(recall_req(scope, by, pb::RecallMode::Exact)).await)
}

pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

/// The status a call fails with (code and reason).
pub fn status<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    r.expect_err("the call must fail")
}

/// A write-behind server (`serve --encode background`) over the fixture's store, with these settings otherwise.
pub async fn start_write_behind(f: &Fixture, setup: Setup) -> Server {
    start_with(
        f,
        Setup {
            encode: EncodeMode::Background,
            ..setup
        },
    )
    .await
}

/// About two and a half pages of words at the default layout.
pub fn long_text(seed: usize) -> String {
    (0..1400)
        .map(|i| format!("word{} ", (i * 7 + seed) % 97))
        .collect()
}

pub type Client = MemoryClient<Channel>;

/// Polls the store-wide Stats until `done` holds (background work is observed, not waited for by a guess); fails after
/// two minutes, showing the last Stats.
pub async fn until(
    c: &mut Client,
    what: &str,
    done: impl Fn(&pb::StatsResponse) -> bool,
) -> pb::StatsResponse {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let st = stats(c).await;
        if done(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The store-wide Stats.
pub async fn stats(c: &mut Client) -> pb::StatsResponse {
    c.stats(pb::StatsRequest { scope: None })
        .await
        .expect("stats")
        .into_inner()
}

/// Pages at `tier` in a Stats answer.
pub fn tier_pages(st: &pb::StatsResponse, tier: pb::Tier) -> u64 {
    tier_stats(st, tier).pages
}

/// Pages at `tier` whose tokens are pending, in a Stats answer.
pub fn tier_pending(st: &pb::StatsResponse, tier: pb::Tier) -> u64 {
    tier_stats(st, tier).pending
}

fn tier_stats(st: &pb::StatsResponse, tier: pb::Tier) -> pb::TierStats {
    st.tiers
        .iter()
        .find(|t| t.tier == tier as i32)
        .cloned()
        .unwrap_or_default()
}

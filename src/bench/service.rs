//! `optimem bench service`: the real server, in process on `127.0.0.1:0` over a sled store in a temporary directory,
//! driven for a fixed time by N concurrent tonic clients. Each client, in its own session, remembers one chat turn of
//! about a thousand text tokens, then recalls its newest page OPTICAL (decoded by the model), and again, until the time
//! is up; requests in flight then finish and count, and every client recalls at least once however short the run.
//!
//! Reported per RPC: completed requests per second, latency percentiles of the successful ones, and failures by gRPC
//! code, `RESOURCE_EXHAUSTED` (a full engine queue or encoding backlog; the client backs off before its next call)
//! apart. The stage spans of the pipeline ([`super::StageTimes`]) and the engine's own counters say where the time
//! went. With write-behind encoding (the server's default) the run then waits, server still up, until the encoder has
//! drained the backlog the clients left, and reports how long that took. The engine's counters are read when the
//! last client finishes and again after the drain, so the client phase and the drain are reported apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde::Serialize;
use tokio::sync::oneshot;
use tonic::Code;

use super::{BenchError, Latency, StageTimes, chat_turn, runtime_with};
use crate::engine::{Engine, EngineConfig, EngineStats};
use crate::memory::{EncodeMode, Memory, MemoryConfig, TierPolicy};
use crate::metrics::TextTokenizer;
use crate::service::ServerConfig;
use crate::service::pb::memory_client::MemoryClient;
use crate::service::pb::{self, selector::By};
use optimem_store::{OpenOptions, SledStore, Tier as StoreTier};

/// What to run.
#[derive(Clone, Debug)]
pub struct ServiceBenchOptions {
    pub model: PathBuf,
    pub device: Device,
    pub dtype: DType,
    pub clients: usize,
    pub duration: Duration,
    /// The engine's queue (the server's `--queue`).
    pub queue: usize,
    /// Nice value of the model's threads (the server's `--model-nice`).
    pub model_nice: i32,
    /// Text tokens per remembered turn, about.
    pub turn_tokens: usize,
    /// Cap on tokens decoded per recalled page (the memory layer's `max_new_tokens`).
    pub max_new_tokens: usize,
    /// How long a client waits after `RESOURCE_EXHAUSTED` before its next call, as a well-behaved client would.
    pub backoff: Duration,
    /// The tiers new pages are written at (the server's default: newest 2 Base, next 8 Small, the rest Tiny).
    /// `None`: the server's default, fitted to the tiers the model reads (`memory::policy::for_engine`).
    pub policy: Option<TierPolicy>,
    /// tokenizer.json that sizes the turns (default: DeepSeek-V3 from assets/, else the model's).
    pub tokenizer: Option<PathBuf>,
    /// When Remember's pages get their tokens (the server's `--encode`).
    pub encode: EncodeMode,
    /// Pages that may wait for their tokens (the server's `--max-pending`).
    pub max_pending: usize,
}

/// One RPC's figures.
#[derive(Clone, Debug, Serialize)]
pub struct RpcReport {
    pub rpc: String,
    pub ok: usize,
    /// Successful requests per second of the run.
    pub ok_per_s: f64,
    /// Latency of the successful requests.
    pub latency: Latency,
    /// Refused because the engine's queue was full.
    pub resource_exhausted: usize,
    /// Every other failure, by gRPC code.
    pub errors: BTreeMap<String, usize>,
}

/// One stage's span times.
#[derive(Clone, Debug, Serialize)]
pub struct StageRow {
    pub stage: String,
    pub latency: Latency,
    /// Sum over all spans, seconds.
    pub total_s: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceReport {
    pub model: String,
    pub device: String,
    pub clients: usize,
    pub duration_s: f64,
    /// From the first request to the last answer (in-flight requests finish after `duration_s`).
    pub elapsed_s: f64,
    pub queue: usize,
    pub model_nice: i32,
    /// The tier policy of new pages, as `--policy` takes it.
    pub policy: String,
    /// Mean text tokens of the remembered turns, and the tokenizer that counted them.
    pub turn_text_tokens: f64,
    pub tokenizer: String,
    pub max_new_tokens: usize,
    pub rpcs: Vec<RpcReport>,
    pub stages: Vec<StageRow>,
    /// The engine's counters from the start until the last client finished (the drain apart).
    pub engine: EngineSummary,
    /// Pages in the store at the end, by tier (tiny, small, base, large, gundam).
    pub pages_per_tier: [u64; 5],
    /// `sync` or `background` (write-behind).
    pub encode: String,
    pub max_pending: usize,
    /// Pages waiting for their tokens when the last client finished, and the time the encoder then took to store them
    /// all (the server still up, no clients).
    pub pending_at_end: usize,
    pub drain_s: f64,
    /// The engine's counters over the drain alone (its busy share is of `drain_s`).
    pub drain_engine: EngineSummary,
}

/// The engine's counters over the run, as rates.
#[derive(Clone, Debug, Serialize)]
pub struct EngineSummary {
    pub jobs: u64,
    pub busy_refusals: u64,
    pub mean_queue_wait_ms: f64,
    pub max_queue_wait_ms: f64,
    pub encodes: u64,
    pub encode_ms_per_page: f64,
    pub decodes: u64,
    pub decodes_cancelled: u64,
    /// Batched generations, and the decodes that ran in them.
    pub decode_batches: u64,
    pub batched_decodes: u64,
    pub tokens_generated: u64,
    pub decode_ms_per_token: f64,
    /// Share of the run's wall time the worker spent encoding and decoding.
    pub busy_share: f64,
}

impl EngineSummary {
    pub fn of(s: &EngineStats, elapsed: Duration) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let per = |d: Duration, n: u64| if n == 0 { 0.0 } else { ms(d) / n as f64 };
        let busy = s.encode_time + s.decode_time;
        Self {
            jobs: s.jobs,
            busy_refusals: s.busy,
            mean_queue_wait_ms: per(s.queue_wait, s.jobs),
            max_queue_wait_ms: ms(s.max_queue_wait),
            encodes: s.encodes,
            encode_ms_per_page: per(s.encode_time, s.encodes),
            decodes: s.decodes_started,
            decodes_cancelled: s.decodes_cancelled,
            decode_batches: s.decode_batches,
            batched_decodes: s.batched_decodes,
            tokens_generated: s.tokens_generated,
            decode_ms_per_token: per(s.decode_time, s.tokens_generated),
            busy_share: busy.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    Remember,
    Recall,
}

/// One request's outcome.
struct Sample {
    rpc: Rpc,
    latency: Duration,
    code: Code,
}

/// Turns per client kept ready, so that sizing them costs nothing during the run.
const TURNS_PER_CLIENT: usize = 4;

/// Runs the benchmark; see the module doc.
pub fn run(opts: &ServiceBenchOptions) -> Result<ServiceReport, BenchError> {
    if opts.clients == 0 || opts.duration.is_zero() || opts.turn_tokens == 0 {
        return Err(BenchError::Options(
            "--clients, --duration and --turn-tokens must be above zero".into(),
        ));
    }
    let tokenizer = TextTokenizer::resolve(opts.tokenizer.as_deref(), Some(&opts.model))?;
    let mut turns = Vec::with_capacity(opts.clients * TURNS_PER_CLIENT);
    let mut turn_tokens = 0usize;
    for c in 0..opts.clients {
        for n in 0..TURNS_PER_CLIENT {
            let t = chat_turn(c, n, opts.turn_tokens, |t| Ok(tokenizer.count(t)?))?;
            turn_tokens += tokenizer.count(&t)?;
            turns.push(t);
        }
    }
    let turns = Arc::new(turns);

    let times = StageTimes::default();
    let dispatch = times.dispatch();
    let data = tempfile::tempdir()?;
    // The engine's worker thread reports to the dispatcher current where it is started.
    let memory = tracing::dispatcher::with_default(&dispatch, || -> Result<_, BenchError> {
        let engine = Engine::load(
            &opts.model,
            &opts.device,
            opts.dtype,
            EngineConfig {
                queue: opts.queue,
                nice: opts.model_nice,
            },
        )?;
        let store = SledStore::open(data.path().join("db"), OpenOptions::new(engine.model_id()))?;
        let cfg = MemoryConfig {
            max_new_tokens: opts.max_new_tokens,
            policy: crate::memory::policy::for_engine(opts.policy.clone(), &engine),
            encode: opts.encode,
            max_pending: opts.max_pending,
            ..MemoryConfig::default()
        };
        let memory = Memory::new(Arc::new(store), Arc::new(engine), cfg)?;
        // As `serve` does before it accepts requests.
        memory.warm_up()?;
        Ok(Arc::new(memory))
    })?;

    let rt = runtime_with(dispatch)?;
    let Driven {
        samples,
        elapsed,
        at_stop,
        pending_at_end,
        drain,
    } = rt.block_on(drive(memory.clone(), opts, turns))?;
    drop(rt);

    let engine = EngineSummary::of(&at_stop, elapsed);
    let drain_engine = EngineSummary::of(&memory.engine().stats().since(&at_stop), drain);
    let stats = memory.store().stats(None)?;
    let mut rpcs = Vec::new();
    for (rpc, name) in [
        (Rpc::Remember, "Remember (1 turn)"),
        (Rpc::Recall, "Recall OPTICAL (1 page)"),
    ] {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.rpc == rpc).collect();
        let ok: Vec<Duration> = mine
            .iter()
            .filter(|s| s.code == Code::Ok)
            .map(|s| s.latency)
            .collect();
        let mut errors = BTreeMap::new();
        for s in &mine {
            if s.code != Code::Ok && s.code != Code::ResourceExhausted {
                *errors.entry(format!("{:?}", s.code)).or_insert(0) += 1;
            }
        }
        rpcs.push(RpcReport {
            rpc: name.into(),
            ok: ok.len(),
            ok_per_s: ok.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: Latency::of(&ok),
            resource_exhausted: mine
                .iter()
                .filter(|s| s.code == Code::ResourceExhausted)
                .count(),
            errors,
        });
    }
    let stages = times
        .summary()
        .into_iter()
        .map(|(stage, latency)| StageRow {
            total_s: latency.mean_ms * latency.count as f64 / 1e3,
            stage,
            latency,
        })
        .collect();
    Ok(ServiceReport {
        model: memory.engine().model_id().to_owned(),
        device: format!("{:?} ({:?})", opts.device, opts.dtype),
        clients: opts.clients,
        duration_s: opts.duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        queue: opts.queue,
        model_nice: opts.model_nice,
        policy: memory.config().policy.to_string(),
        turn_text_tokens: turn_tokens as f64 / (opts.clients * TURNS_PER_CLIENT) as f64,
        tokenizer: tokenizer.name().to_owned(),
        max_new_tokens: opts.max_new_tokens,
        rpcs,
        stages,
        engine,
        pages_per_tier: StoreTier::ALL.map(|t| stats.pages_at(t)),
        encode: format!("{:?}", opts.encode).to_lowercase(),
        max_pending: opts.max_pending,
        pending_at_end,
        drain_s: drain.as_secs_f64(),
        drain_engine,
    })
}

/// How often the drain wait looks at the backlog.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// What [`drive`] saw.
struct Driven {
    samples: Vec<Sample>,
    /// From the first request to the last answer.
    elapsed: Duration,
    /// The engine's counters when the last client finished.
    at_stop: EngineStats,
    /// The backlog the clients left, and the time the encoder took to store it.
    pending_at_end: usize,
    drain: Duration,
}

/// Starts the server, runs the clients, waits for the encoder to drain the backlog, stops the server.
async fn drive(
    memory: Arc<Memory>,
    opts: &ServiceBenchOptions,
    turns: Arc<Vec<String>>,
) -> Result<Driven, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(crate::service::run(
        listener,
        memory.clone(),
        ServerConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut clients = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        clients.push(
            MemoryClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| BenchError::Client(e.to_string()))?
                .max_decoding_message_size(64 << 20),
        );
    }
    let start = Instant::now();
    let deadline = start + opts.duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(client_loop(i, c, deadline, turns.clone(), opts.backoff)))
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.map_err(|e| BenchError::Client(e.to_string()))?);
    }
    let elapsed = start.elapsed();
    let at_stop = memory.engine().stats();
    let pending_at_end = memory.pages_to_encode();
    let drained = Instant::now();
    while memory.pages_to_encode() > 0 {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain = drained.elapsed();
    let _ = stop.send(());
    server
        .await
        .map_err(|e| BenchError::Client(format!("server task: {e}")))??;
    Ok(Driven {
        samples,
        elapsed,
        at_stop,
        pending_at_end,
        drain,
    })
}

/// One client: remember a turn, recall the newest page, until `deadline`.
async fn client_loop(
    i: usize,
    mut c: MemoryClient<tonic::transport::Channel>,
    deadline: Instant,
    turns: Arc<Vec<String>>,
    backoff: Duration,
) -> Vec<Sample> {
    let scope = Some(pb::Scope {
        user: "bench".into(),
        agent: String::new(),
        session: format!("client-{i}"),
    });
    let mut samples = Vec::new();
    let (mut remembered, mut recalled) = (false, false);
    let mut n = 0usize;
    while Instant::now() < deadline {
        let turn = &turns[i * TURNS_PER_CLIENT + n % TURNS_PER_CLIENT];
        let req = pb::RememberRequest {
            scope: scope.clone(),
            messages: vec![pb::Message {
                role: if n.is_multiple_of(2) {
                    "user"
                } else {
                    "assistant"
                }
                .into(),
                content: turn.clone(),
                ..Default::default()
            }],
        };
        n += 1;
        let t0 = Instant::now();
        let code = c.remember(req).await.err().map_or(Code::Ok, |s| s.code());
        samples.push(Sample {
            rpc: Rpc::Remember,
            latency: t0.elapsed(),
            code,
        });
        remembered |= code == Code::Ok;
        if code == Code::ResourceExhausted {
            tokio::time::sleep(backoff).await;
        }
        // Every client recalls at least once, however short the run.
        if !remembered || (recalled && Instant::now() >= deadline) {
            continue;
        }
        let req = pb::RecallRequest {
            scope: scope.clone(),
            selector: Some(pb::Selector {
                by: Some(By::LastPages(1)),
            }),
            mode: pb::RecallMode::Optical.into(),
            budget: None,
        };
        let t0 = Instant::now();
        let code = c.recall(req).await.err().map_or(Code::Ok, |s| s.code());
        samples.push(Sample {
            rpc: Rpc::Recall,
            latency: t0.elapsed(),
            code,
        });
        recalled = true;
        if code == Code::ResourceExhausted {
            tokio::time::sleep(backoff).await;
        }
    }
    samples
}

/// Goals from issue 6.
const REMEMBER_P99_GOAL_MS: f64 = 250.0;
const RECALL_P50_GOAL_MS: f64 = 1000.0;

impl ServiceReport {
    /// The report as markdown: the run, one row per RPC, the goals, and where the time went.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model `{}` on {} · {} clients · {:.0} s (ran {:.1} s) · engine queue {} · model nice {} · encode {} (≤ {} pending) · \
             tiers {} · turns ≈ {:.0} text tokens ({}) · recall decodes ≤ {} tokens/page\n",
            self.model,
            self.device,
            self.clients,
            self.duration_s,
            self.elapsed_s,
            self.queue,
            self.model_nice,
            self.encode,
            self.max_pending,
            self.policy,
            self.turn_text_tokens,
            self.tokenizer,
            self.max_new_tokens
        );
        s.push_str("| RPC | ok | ok/s | p50 ms | p90 ms | p99 ms | max ms | RESOURCE_EXHAUSTED | other errors |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rpcs {
            let errors = if r.errors.is_empty() {
                "0".to_owned()
            } else {
                r.errors
                    .iter()
                    .map(|(c, n)| format!("{c}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let l = &r.latency;
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                r.rpc,
                r.ok,
                r.ok_per_s,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                r.resource_exhausted,
                errors
            );
        }
        let goal = |name: &str, got: Option<f64>, goal: f64, what: &str| match got {
            Some(v) if v > 0.0 => format!(
                "{name} {what} {:.0} ms (goal ≤ {goal:.0} ms: {})",
                v,
                if v <= goal { "met" } else { "missed" }
            ),
            _ => format!("{name} {what}: no successful request"),
        };
        let remember = self.rpcs.first().map(|r| r.latency.p99_ms);
        let recall = self.rpcs.get(1).map(|r| r.latency.p50_ms);
        let _ = writeln!(
            s,
            "\n{}; {}.\n",
            goal("Remember", remember, REMEMBER_P99_GOAL_MS, "p99"),
            goal("Recall OPTICAL", recall, RECALL_P50_GOAL_MS, "p50")
        );
        s.push_str("Where the time goes (span wall times, summed over all requests; `encode` and `decode` include the wait in the engine's queue, `engine.*` is the model alone):\n\n");
        s.push_str("| stage | spans | mean ms | p50 ms | p99 ms | max ms | total s |\n|---|---|---|---|---|---|---|\n");
        for r in &self.stages {
            let l = &r.latency;
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.stage, l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.max_ms, r.total_s
            );
        }
        let e = &self.engine;
        let _ = writeln!(
            s,
            "\nEngine until the clients stopped: {} jobs, busy {:.0}% of the run; queue wait mean {:.0} ms, max {:.0} ms; {} refused (queue \
             full). Encode {:.0} ms/page over {} pages. Decode {} pages ({} cancelled; {} in {} batches), {} tokens, {:.1} ms/token. \
             Pages stored by tier (tiny/small/base/large/gundam): {:?}. Backlog at the end: {} pages waiting for \
             tokens, drained in {:.1} s ({} encodes, {:.0} ms/page, busy {:.0}% of the drain).",
            e.jobs,
            e.busy_share * 100.0,
            e.mean_queue_wait_ms,
            e.max_queue_wait_ms,
            e.busy_refusals,
            e.encode_ms_per_page,
            e.encodes,
            e.decodes,
            e.decodes_cancelled,
            e.batched_decodes,
            e.decode_batches,
            e.tokens_generated,
            e.decode_ms_per_token,
            self.pages_per_tier,
            self.pending_at_end,
            self.drain_s,
            self.drain_engine.encodes,
            self.drain_engine.encode_ms_per_page,
            self.drain_engine.busy_share * 100.0
        );
        s
    }
}

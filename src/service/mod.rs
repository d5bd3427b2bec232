//! The gRPC service (DESIGN.md §5): `optimem.v1.Memory` over [`Memory`], plus gRPC health and reflection, served by
//! [`run`] until a shutdown future completes.
//!
//! Every handler validates its request, then runs the memory call on `spawn_blocking`: rendering, the store and the
//! engine all block, and the reactor must stay free to accept and stream. Errors from the memory layer become a
//! [`tonic::Status`] in one place ([`convert::status`]); requests over a configured limit are `RESOURCE_EXHAUSTED`.
//! An OPTICAL recall whose client goes away (cancel, deadline, dropped stream) sets the decoder's cancel flag, so the
//! model stops at the next token instead of decoding for nobody (and a decode still queued is skipped).
//!
//! Beside the requests, [`run`] keeps the store in shape on the same engine: its [`Encoder`] thread encodes the pages
//! whose tokens are pending (Remember writes them write-behind under `EncodeMode::Background`) or stale (another model
//! made them), resuming the backlog found at start; and every [`ServerConfig::age_every`] it ages the store. Both go
//! page by page through the engine's background lane, so requests go ahead of them, and shutdown waits for the
//! page in progress.
//!
//! # Layout
//! - [`pb`]: the code generated from `proto/optimem/v1/memory.proto` (server and client) and its descriptor set.
//! - `convert`: wire ↔ memory types and the error mapping.
//! - `auth`: the optional bearer-token interceptor.

mod auth;
mod convert;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::memory::{Encoder, Forget, Memory, MemoryError, RecallMode, StreamEvent};
use crate::model::generate::Control;
pub use auth::AuthToken;
use pb::memory_server::MemoryServer;

/// The generated protobuf types, server and client of `optimem.v1`.
pub mod pb {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::unwrap_used,
        reason = "generated code"
    )]
    tonic::include_proto!("optimem.v1");

    /// The encoded file descriptor set of `optimem.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("optimem_v1_descriptor");
}

/// Server settings beyond the memory's own [`crate::memory::Limits`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request message tonic decodes, in bytes; a larger one is refused before it is parsed (`OUT_OF_RANGE`).
    /// Bounds the memory one request can pin, whatever its content.
    pub max_message_bytes: usize,
    /// When set, every `optimem.v1.Memory` call must carry `authorization: Bearer <token>` (health and reflection stay
    /// open, for probes and tooling).
    pub auth_token: Option<AuthToken>,
    /// Period of the background ageing of the whole store ("near sharp, far blurry" kept without clients calling
    /// `Age`); `None` leaves ageing to the `Age` call. The first run is one period after start.
    pub age_every: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // Room for the memory layer's default 4 MiB of content per Remember plus the protobuf framing around it.
            max_message_bytes: 8 * 1024 * 1024,
            auth_token: None,
            age_every: None,
        }
    }
}

/// How long background maintenance waits before trying again after the engine's queue was full.
const MAINTENANCE_RETRY: Duration = Duration::from_secs(1);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (the listener or the HTTP/2 layer).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor set (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Writes could not be flushed at shutdown.
    #[error("flush at shutdown: {0}")]
    Flush(#[from] MemoryError),
    /// The background encoder's thread could not be started.
    #[error("starting the encoder: {0}")]
    Encoder(#[from] std::io::Error),
    /// A blocking task panicked.
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Serves `memory` on `listener` until `shutdown` completes, then stops accepting, lets in-flight requests finish
/// (their blocking work included), and flushes the store.
pub async fn run(
    listener: TcpListener,
    memory: Arc<Memory>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Each blocking task holds a clone of `inflight`; `done` yields `None` once the last one is dropped.
    let (inflight, mut done) = mpsc::channel::<()>(1);
    let service = MemoryService {
        memory: memory.clone(),
        inflight,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<MemoryServer<MemoryService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let memory_service = InterceptedService::new(
        MemoryServer::new(service).max_decoding_message_size(config.max_message_bytes),
        auth::Auth::new(config.auth_token),
    );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, model = memory.engine().model_id(), "serving optimem.v1.Memory");
    }
    let encoder = Encoder::start(memory.clone())?;
    let stop_maintenance = Arc::new(AtomicBool::new(false));
    let (maintenance_shutdown, maintenance_stopped) = oneshot::channel();
    let maintenance = tokio::spawn(maintain(
        memory.clone(),
        config.age_every,
        stop_maintenance.clone(),
        maintenance_stopped,
    ));
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_exhaustion::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(memory_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            // Probes see the server draining while in-flight requests finish.
            health
                .set_not_serving::<MemoryServer<MemoryService>>()
                .await;
        })
        .await?;
    // The router (and every service clone) is gone; wait for blocking work still running, and for maintenance and the
    // encoder to finish the page they are on (pages still pending are found again at the next start).
    stop_maintenance.store(true, Ordering::Relaxed);
    let _ = maintenance_shutdown.send(());
    let encoder = tokio::task::spawn_blocking(move || encoder.stop());
    maintenance.await?;
    encoder.await?;
    let _ = done.recv().await;
    let store = memory.store().clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await?
        .map_err(MemoryError::from)?;
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// `optimem.v1.Memory` over a shared [`Memory`].
#[derive(Clone, Debug)]
pub struct MemoryService {
    memory: Arc<Memory>,
    /// Held by every blocking task, so [`run`] can wait for them at shutdown.
    inflight: mpsc::Sender<()>,
}

/// tonic answers a request message over `max_decoding_message_size` with OUT_OF_RANGE, before any handler runs; the
/// API answers every configured limit with RESOURCE_EXHAUSTED and uses OUT_OF_RANGE for nothing else, so the status of
/// such a (trailers-only) response is rewritten. Statuses sent later in a stream's trailers are never OUT_OF_RANGE.
fn size_limit_is_exhaustion<B>(mut res: http::Response<B>) -> http::Response<B> {
    let headers = res.headers_mut();
    // Only an error response (trailers-only) carries its status in the headers: a success reads nothing here.
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    if code == Some(tonic::Code::OutOfRange as i32) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    res
}

/// The span of one request: every stage span of the memory layer (render, encode, decode, store…) nests in it.
fn request_span(method: &'static str, scope: &dyn std::fmt::Display) -> tracing::Span {
    tracing::info_span!("rpc", method, scope = %scope)
}

/// An optional scope in a span: the scope, or `*` for every scope.
struct ScopeOrAll<'a>(Option<&'a optimem_store::Scope>);

impl std::fmt::Display for ScopeOrAll<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(scope) => scope.fmt(f),
            None => f.write_str("*"),
        }
    }
}

/// Sets the decoder's cancel flag when the handler's future is dropped (client cancelled, deadline passed).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl MemoryService {
    /// Runs `f` on the blocking pool inside the request's span and maps its error.
    async fn blocking<T: Send + 'static>(
        &self,
        span: tracing::Span,
        f: impl FnOnce(&Memory) -> Result<T, MemoryError> + Send + 'static,
    ) -> Result<T, Status> {
        let memory = self.memory.clone();
        let guard = self.inflight.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            span.in_scope(|| f(&memory))
        })
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
        .map_err(convert::status)
    }
}

type ChunkStream = ReceiverStream<Result<pb::RecallChunk, Status>>;

#[tonic::async_trait]
impl pb::memory_server::Memory for MemoryService {
    async fn remember(
        &self,
        req: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        let req = req.into_inner();
        let scope = convert::scope(req.scope)?;
        let messages = convert::messages(req.messages, &self.memory.config().limits)?;
        let span = request_span("Remember", &scope);
        let done = self
            .blocking(span, move |m| m.remember(&scope, &messages))
            .await?;
        Ok(Response::new(convert::remembered(done)))
    }

    async fn recall(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let req = req.into_inner();
        let limits = &self.memory.config().limits;
        let scope = convert::scope(req.scope)?;
        let selector = convert::selector(req.selector, limits)?;
        let mode = convert::mode(req.mode)?;
        let budget = convert::budget(req.budget);
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let span = request_span("Recall", &scope);
        let items = self
            .blocking(span, move |m| match mode {
                RecallMode::Optical => {
                    m.recall_stream(&scope, &selector, budget, cancel, |_| Control::Continue)
                }
                _ => m.recall_until(&scope, &selector, mode, budget, cancel),
            })
            .await?;
        Ok(Response::new(pb::RecallResponse {
            pages: items.into_iter().map(convert::recalled).collect(),
        }))
    }

    type RecallStreamStream = ChunkStream;

    async fn recall_stream(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = req.into_inner();
        let limits = &self.memory.config().limits;
        let scope = convert::scope(req.scope)?;
        let selector = convert::selector(req.selector, limits)?;
        if convert::mode(req.mode)? != RecallMode::Optical {
            return Err(Status::invalid_argument(
                "RecallStream decodes text: mode must be OPTICAL (use Recall for EXACT, IMAGES, EMBEDDINGS)",
            ));
        }
        let budget = convert::budget(req.budget);
        // A small buffer: a slow reader slows the decoder instead of piling text up in memory.
        let (tx, rx) = mpsc::channel(16);
        let memory = self.memory.clone();
        let guard = self.inflight.clone();
        // The client's going away (cancel, deadline, dropped stream) drops `rx`: the watcher then sets the cancel
        // flag at once, stopping a decode in its prefill or still in the queue, not only at the next text it sends.
        // It lets go of its sender when the decoding is over, so the stream can end.
        let cancel = Arc::new(AtomicBool::new(false));
        let (finished, decoding) = oneshot::channel::<()>();
        let watched = tx.clone();
        let flag = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watched.closed() => flag.store(true, Ordering::Relaxed),
                _ = decoding => {}
            }
        });
        let span = request_span("RecallStream", &scope);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _finished = finished;
            let _enter = span.enter();
            stream_recall(&memory, &scope, &selector, budget, cancel, &tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let req = req.into_inner();
        let scope = convert::scope(req.scope)?;
        let what = if req.memory_ids.is_empty() {
            Forget::Scope
        } else {
            Forget::Memories(convert::memory_ids(&req.memory_ids)?)
        };
        let span = request_span("Forget", &scope);
        let report = self
            .blocking(span, move |m| m.forget(&scope, &what))
            .await?;
        Ok(Response::new(convert::forgotten(report)))
    }

    async fn age(&self, req: Request<pb::AgeRequest>) -> Result<Response<pb::AgeResponse>, Status> {
        let scope = convert::opt_scope(req.into_inner().scope)?;
        let span = request_span("Age", &ScopeOrAll(scope.as_ref()));
        let report = self.blocking(span, move |m| m.age(scope.as_ref())).await?;
        Ok(Response::new(pb::AgeResponse {
            aged: report.aged.iter().map(convert::aged).collect(),
            skipped: report.skipped as u32,
        }))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let scope = convert::opt_scope(req.into_inner().scope)?;
        let span = request_span("Stats", &ScopeOrAll(scope.as_ref()));
        let stats = self
            .blocking(span, move |m| m.stats(scope.as_ref()))
            .await?;
        Ok(Response::new(convert::stats(stats)))
    }
}

/// The blocking half of RecallStream: decodes page by page, sending each page's header, its text as generated and a
/// `done` chunk. A send that fails means the client is gone: generation stops at the next token.
fn stream_recall(
    memory: &Memory,
    scope: &optimem_store::Scope,
    selector: &crate::memory::Selector,
    budget: crate::memory::Budget,
    cancel: Arc<AtomicBool>,
    tx: &mpsc::Sender<Result<pb::RecallChunk, Status>>,
) {
    let send = |chunk: pb::RecallChunk| tx.blocking_send(Ok(chunk)).is_ok();
    let done = || pb::RecallChunk {
        done: true,
        ..Default::default()
    };
    let mut open = false;
    let result = memory.recall_stream(scope, selector, budget, cancel, |event| {
        let sent = match event {
            StreamEvent::Page(meta) => {
                (!std::mem::replace(&mut open, true) || send(done()))
                    && send(pb::RecallChunk {
                        page: Some(convert::page_info(meta)),
                        ..Default::default()
                    })
            }
            StreamEvent::Piece(text) => send(pb::RecallChunk {
                text: text.to_owned(),
                ..Default::default()
            }),
        };
        if sent {
            Control::Continue
        } else {
            Control::Stop
        }
    });
    match result {
        Ok(_) if open => {
            send(done());
        }
        Ok(_) => {}
        // The client went away: nobody to tell.
        Err(MemoryError::Cancelled) if tx.is_closed() => {}
        Err(e) => {
            let _ = tx.blocking_send(Err(convert::status(e)));
        }
    }
}

/// Background ageing over the server's engine: the whole store every `age_every`. Blocking work runs on the blocking
/// pool and checks `stop` between pages; `shutdown` ends the waiting in between. (Pages whose tokens are pending or
/// stale are the [`Encoder`]'s.)
async fn maintain(
    memory: Arc<Memory>,
    age_every: Option<Duration>,
    stop: Arc<AtomicBool>,
    mut shutdown: oneshot::Receiver<()>,
) {
    use tokio::time::{Instant, sleep_until};
    let Some(every) = age_every else {
        // Nothing scheduled: wait for shutdown so `run` can always join this task.
        let _ = shutdown.await;
        return;
    };
    let mut due = Instant::now() + every;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            () = sleep_until(due) => {}
        }
        let (m, flag) = (memory.clone(), stop.clone());
        let result = tokio::task::spawn_blocking(move || m.age_until(None, &flag)).await;
        due = match result {
            Ok(Ok(r)) => {
                tracing::info!(
                    aged = r.aged.len(),
                    skipped = r.skipped,
                    "background ageing"
                );
                Instant::now() + every
            }
            Ok(Err(e)) if e.code() == crate::memory::ErrorCode::ResourceExhausted => {
                Instant::now() + MAINTENANCE_RETRY.min(every)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "background ageing failed");
                Instant::now() + every
            }
            Err(e) => {
                tracing::error!(error = %e, "background ageing task failed");
                Instant::now() + every
            }
        };
    }
}

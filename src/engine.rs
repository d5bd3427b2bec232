//! The engine: one worker thread that owns the [`OcrModel`] and runs its jobs — encode a page raster into vision
//! tokens, decode stored vision tokens back to text (streaming, cancellable). Text tokens are counted with the model's
//! tokenizer on the caller's thread: a tokenizer is cheap and thread-safe, and a count queued behind page encodes
//! would make every Remember wait in the queue twice.
//!
//! It sits between the memory logic ([`crate::memory`]) and the model. The model runs on a plain `std::thread`, never
//! on an async runtime, because a forward pass blocks for milliseconds to seconds. Jobs reach it through a bounded
//! queue: when the queue is full a submission fails at once with [`EngineError::Busy`] (the service's
//! `RESOURCE_EXHAUSTED`) instead of queueing without limit or hanging the caller. Jobs are taken by priority, without
//! starving any (see `queue`): decodes, which a reader waits on, first; then encodes someone waits on ([`Engine::encode`]:
//! a recall that met a page without usable tokens, a synchronous Remember); then background encodes
//! ([`Engine::encode_background`]: the write-behind encoder, ageing, stale pages), which may fill only half the queue
//! so that they never make a waiting caller `Busy`. Calls are blocking: the caller waits for its job's answer (the
//! service calls them from `spawn_blocking`).
//!
//! The worker keeps [`EngineStats`]: jobs, time queued, time in the model, decodes finished or cut short. They are
//! how `optimem bench` says where a request's time went, and how tests see that a cancelled decode stopped.

mod queue;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use optimem_renderer::{GrayImage, Tier};

use crate::model::generate::{Control, StopReason};
use crate::model::tokenizer::OcrTokenizer;
use crate::model::{Image8, Mode, ModelError, OcrModel};
use crate::threads::ModelThreads;
use queue::{JobQueue, Lane, PushError};

/// Jobs waiting beyond the one running, by default: enough to smooth a burst, small enough that a caller learns
/// quickly that the model is saturated.
pub const DEFAULT_QUEUE: usize = 16;

/// Most decodes the worker runs as one batched generation: queued decodes of pages with the same number of vision
/// tokens (the same tier) share their prompt length, so they step together through one KV cache and each decode step
/// reads the weights once for all of them (`generate_batch`).
pub const MAX_DECODE_BATCH: usize = 8;

/// What can go wrong with an engine call, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job queue is full: the model is saturated. Retry later (gRPC `RESOURCE_EXHAUSTED`); nothing was run.
    #[error("engine busy: {queue} jobs already queued")]
    Busy { queue: usize },
    /// The worker has stopped (shut down, or a job panicked); the engine must be restarted.
    #[error("engine worker has stopped")]
    Stopped,
    /// The input does not fit the model (token width differs from the model's hidden size, ...): a caller bug or
    /// tokens made by another model.
    #[error("bad engine input: {0}")]
    Input(String),
    /// The model failed on this job.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Vision tokens of one page: `rows` embeddings (what the decoder is fed, newlines and view separator included) of
/// `cols` values each, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub values: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// The paper's vision-token count for the tier (64 / 100 / 256 / 400 / Gundam's).
    pub vision_tokens: u32,
}

/// Text decoded from vision tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    /// Tokens generated (EOS excluded).
    pub tokens: usize,
    /// True when the cancel flag or the piece callback stopped generation early.
    pub cancelled: bool,
}

/// The DeepSeek-OCR resolution mode that encodes a page rasterized at `tier`.
pub fn mode_for(tier: Tier) -> Mode {
    match tier {
        Tier::Tiny => Mode::Tiny,
        Tier::Small => Mode::Small,
        Tier::Base => Mode::Base,
        Tier::Large => Mode::Large,
        Tier::Gundam => Mode::Gundam,
    }
}

/// A grayscale page as the 3-channel image the model's preprocessing expects (the official pipeline converts every
/// image to RGB; a gray page gives three equal channels).
pub fn page_image(page: &GrayImage) -> Result<Image8, EngineError> {
    Ok(Image8::new(
        page.width as usize,
        page.height as usize,
        3,
        crate::model::preprocess::gray_to_rgb(&page.pixels),
    )?)
}

enum DecodeMsg {
    Piece(String),
    Done(Result<Decoded, EngineError>),
}

/// What the worker has done since it started: the figures `optimem bench` breaks a request's time down with, and what
/// tests observe (a cancelled decode shows in `decodes_cancelled` and `tokens_generated`, not in a log line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Jobs the worker has taken from the queue (pauses included).
    pub jobs: u64,
    /// Submissions refused because the queue was full.
    pub busy: u64,
    /// Time jobs spent queued before the worker took them, summed, and the longest wait.
    pub queue_wait: Duration,
    pub max_queue_wait: Duration,
    /// Pages encoded (successfully or not) and the worker's time on them.
    pub encodes: u64,
    pub encode_time: Duration,
    /// Decodes the worker started, and how they ended: ran to EOS or the token cap, stopped early by the cancel flag,
    /// or skipped because the flag was already set when the worker reached them (a client gone while queued).
    pub decodes_started: u64,
    pub decodes_finished: u64,
    pub decodes_cancelled: u64,
    pub decodes_skipped: u64,
    pub decode_time: Duration,
    /// Batched generations (two decodes or more run together, see [`MAX_DECODE_BATCH`]) and the decodes they ran.
    pub decode_batches: u64,
    pub batched_decodes: u64,
    /// Text tokens generated by all decodes.
    pub tokens_generated: u64,
    /// Token counts (on callers' threads) and the time they took.
    pub counts: u64,
    pub count_time: Duration,
}

impl EngineStats {
    /// What happened between `earlier` (a snapshot of the same engine) and this snapshot; the longest queue wait is
    /// the longest so far.
    pub fn since(&self, earlier: &EngineStats) -> EngineStats {
        EngineStats {
            jobs: self.jobs.saturating_sub(earlier.jobs),
            busy: self.busy.saturating_sub(earlier.busy),
            queue_wait: self.queue_wait.saturating_sub(earlier.queue_wait),
            max_queue_wait: self.max_queue_wait,
            encodes: self.encodes.saturating_sub(earlier.encodes),
            encode_time: self.encode_time.saturating_sub(earlier.encode_time),
            decodes_started: self.decodes_started.saturating_sub(earlier.decodes_started),
            decode_batches: self.decode_batches.saturating_sub(earlier.decode_batches),
            batched_decodes: self.batched_decodes.saturating_sub(earlier.batched_decodes),
            decodes_finished: self
                .decodes_finished
                .saturating_sub(earlier.decodes_finished),
            decodes_cancelled: self
                .decodes_cancelled
                .saturating_sub(earlier.decodes_cancelled),
            decodes_skipped: self.decodes_skipped.saturating_sub(earlier.decodes_skipped),
            decode_time: self.decode_time.saturating_sub(earlier.decode_time),
            tokens_generated: self
                .tokens_generated
                .saturating_sub(earlier.tokens_generated),
            counts: self.counts.saturating_sub(earlier.counts),
            count_time: self.count_time.saturating_sub(earlier.count_time),
        }
    }
}

/// A job and when it was queued (for `EngineStats::queue_wait`).
struct Queued {
    job: Job,
    at: Instant,
}

enum Job {
    Encode {
        image: Image8,
        tier: Tier,
        /// Which encode lane it waits in.
        lane: Lane,
        reply: mpsc::Sender<Result<Encoded, EngineError>>,
    },
    Decode(DecodeJob),
    Pause {
        started: mpsc::Sender<()>,
        resume: Receiver<()>,
    },
}

/// One page's vision tokens to decode, and where its text goes.
struct DecodeJob {
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    max_new_tokens: usize,
    cancel: Arc<AtomicBool>,
    reply: mpsc::Sender<DecodeMsg>,
}

impl Job {
    /// For a decode whose caller still waits, the shape of its vision tokens: decodes of one shape can run as one batch.
    fn batch_key(&self) -> Option<(usize, usize)> {
        match self {
            Job::Decode(d) if !d.cancel.load(Ordering::Relaxed) => Some((d.rows, d.cols)),
            _ => None,
        }
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Jobs that may wait while one runs; a submission beyond this is [`EngineError::Busy`]. At least 1.
    pub queue: usize,
    /// Nice value (0–19) of the worker and of the model's CPU threads ([`crate::threads::ModelThreads`]): above the
    /// request handlers' 0, so rendering a Remember's pages is not slowed by an encode running beside it.
    pub nice: i32,
}

/// The model's nice value by default: a Remember's rendering is served first, the model takes the rest of the CPU.
pub const DEFAULT_NICE: i32 = 10;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE,
            nice: DEFAULT_NICE,
        }
    }
}

/// The model's worker thread and its queue. Cheap to share (`Arc<Engine>`); dropping it drains the queue and joins
/// the worker.
#[derive(Debug)]
pub struct Engine {
    /// Jobs submitted and not yet taken by the worker, by lane (see `queue`).
    jobs: Arc<JobQueue<Queued>>,
    /// `None` when the worker could not be spawned: every call answers `Stopped`.
    worker: Option<JoinHandle<()>>,
    queue: usize,
    model_id: String,
    hidden: usize,
    /// Updated by the worker after each job, read by [`Engine::stats`].
    stats: Arc<Mutex<EngineStats>>,
    /// The modes the weights were trained to read (`None`: every mode), from the model's config.json.
    trained: Option<Vec<Mode>>,
    /// The model's tokenizer, for counting on the caller's thread.
    tokenizer: OcrTokenizer,
}

/// Holds the worker idle until dropped (see [`Engine::pause`]).
#[derive(Debug)]
pub struct PauseGuard {
    _resume: mpsc::Sender<()>,
}

impl Engine {
    /// Loads a model directory and starts its worker.
    pub fn load(
        dir: &std::path::Path,
        device: &Device,
        dtype: DType,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        Ok(Self::start(OcrModel::load(dir, device, dtype)?, cfg))
    }

    /// Starts the worker that owns `model`.
    pub fn start(model: OcrModel, cfg: EngineConfig) -> Self {
        let queue = cfg.queue.max(1);
        let jobs = Arc::new(JobQueue::<Queued>::new(queue));
        let model_id = model.id.clone();
        let hidden = model.text.hidden_size;
        let trained = model.trained_modes.clone();
        let tokenizer = model.tokenizer.clone();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let worker_stats = stats.clone();
        let worker_jobs = jobs.clone();
        // The worker reports to the subscriber of the thread that started it (the global one, or a benchmark's or a
        // test's scoped one), so the model's spans land where its callers' do.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let nice = cfg.nice;
        // No pool, no worker: every call then answers `Stopped`.
        let threads = ModelThreads::new(nice)
            .inspect_err(|e| tracing::error!(error = %e, "could not start the model's threads"))
            .ok();
        let worker = threads.and_then(|threads| {
            std::thread::Builder::new()
                .name("optimem-engine".into())
                .spawn(move || {
                    // However the worker ends (a job may panic), waiting jobs are dropped, so their callers get
                    // `Stopped` instead of waiting forever.
                    let _abandon = Abandon(worker_jobs.clone());
                    crate::threads::lower_priority(nice);
                    tracing::dispatcher::with_default(&dispatch, || {
                        while let Some(first) = worker_jobs.pop() {
                            // Decodes of pages of the same size that wait behind this one run with it.
                            let more = match first.job.batch_key() {
                                Some(key) => worker_jobs.take_matching(
                                    Lane::Decode,
                                    MAX_DECODE_BATCH - 1,
                                    |q| q.job.batch_key() == Some(key),
                                ),
                                None => Vec::new(),
                            };
                            for q in std::iter::once(&first).chain(&more) {
                                let wait = q.at.elapsed();
                                update(&worker_stats, |s| {
                                    s.jobs += 1;
                                    s.queue_wait += wait;
                                    s.max_queue_wait = s.max_queue_wait.max(wait);
                                });
                            }
                            // The pool's threads report to the same subscriber as the worker.
                            threads.run(|| {
                                tracing::dispatcher::with_default(&dispatch, || {
                                    // `more` holds decodes only (their batch key matched).
                                    match first.job {
                                        Job::Decode(d) if !more.is_empty() => {
                                            let rest =
                                                more.into_iter().filter_map(|q| match q.job {
                                                    Job::Decode(d) => Some(d),
                                                    _ => None,
                                                });
                                            run_decodes(
                                                &model,
                                                std::iter::once(d).chain(rest).collect(),
                                                &worker_stats,
                                            );
                                        }
                                        job => run(&model, job, &worker_stats),
                                    }
                                })
                            });
                        }
                    });
                })
                .ok()
        });
        Self {
            jobs,
            worker,
            queue,
            model_id,
            hidden,
            stats,
            trained,
            tokenizer,
        }
    }

    /// Whether the loaded weights were trained to read pages of `tier` (config.json `trained_tiers`; the official
    /// checkpoint reads every tier).
    pub fn reads(&self, tier: Tier) -> bool {
        self.trained
            .as_ref()
            .is_none_or(|modes| modes.contains(&mode_for(tier)))
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> EngineStats {
        // A poisoned lock means a job panicked mid-update; the figures are still the best there are.
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Jobs waiting for the worker (not counting the one running): a load figure for health and metrics.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the queue is full right now, so that a caller can refuse work before preparing it (a Remember renders
    /// its pages before it submits them). The submission itself is the exact check.
    pub fn saturated(&self) -> bool {
        self.queued() >= self.queue
    }

    /// `Busy`, counted as a refusal, for a caller that saw [`Engine::saturated`].
    pub fn busy(&self) -> EngineError {
        update(&self.stats, |s| s.busy += 1);
        EngineError::Busy { queue: self.queue }
    }

    /// The id of the loaded weights, stamped on every page they encode.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Width of one vision token (the decoder's hidden size).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn submit(&self, job: Job) -> Result<(), EngineError> {
        if self.worker.is_none() {
            return Err(EngineError::Stopped);
        }
        let lane = match job {
            Job::Decode(_) => Lane::Decode,
            Job::Encode { lane, .. } => lane,
            // Whoever pauses the worker waits for it to stop.
            Job::Pause { .. } => Lane::Encode,
        };
        let at = Instant::now();
        self.jobs
            .push(lane, Queued { job, at })
            .map_err(|e| match e {
                PushError::Full => self.busy(),
                PushError::Closed => EngineError::Stopped,
            })
    }

    /// Encodes a page rasterized at `tier` into its vision tokens, for a caller someone waits on (a recall, a
    /// synchronous Remember): it goes before background encodes.
    pub fn encode(&self, page: &GrayImage, tier: Tier) -> Result<Encoded, EngineError> {
        self.encode_in(page, tier, Lane::Encode)
    }

    /// [`Engine::encode`] for work nobody waits on (the background encoder, ageing, re-encoding stale pages): it goes
    /// after every other job unless it has waited `queue::STREAK` jobs, and is `Busy` once half the queue is full.
    pub fn encode_background(&self, page: &GrayImage, tier: Tier) -> Result<Encoded, EngineError> {
        self.encode_in(page, tier, Lane::Background)
    }

    fn encode_in(&self, page: &GrayImage, tier: Tier, lane: Lane) -> Result<Encoded, EngineError> {
        let (reply, rx) = mpsc::channel();
        self.submit(Job::Encode {
            image: page_image(page)?,
            tier,
            lane,
            reply,
        })?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }

    /// Decodes vision tokens (`rows × cols`, as [`Engine::encode`] made them) with the free-OCR prompt, at most
    /// `max_new_tokens` tokens. `on_piece` receives the text as it is generated on the calling thread; returning
    /// [`Control::Stop`] from it, or setting `cancel`, stops generation at the next token.
    pub fn decode(
        &self,
        values: Vec<f32>,
        rows: usize,
        cols: usize,
        max_new_tokens: usize,
        cancel: Arc<AtomicBool>,
        mut on_piece: impl FnMut(&str) -> Control,
    ) -> Result<Decoded, EngineError> {
        if cols != self.hidden || rows == 0 || values.len() != rows * cols {
            return Err(EngineError::Input(format!(
                "{} values as {rows}×{cols} tokens; the model takes rows of {}",
                values.len(),
                self.hidden
            )));
        }
        let (reply, rx) = mpsc::channel();
        self.submit(Job::Decode(DecodeJob {
            values,
            rows,
            cols,
            max_new_tokens,
            cancel: cancel.clone(),
            reply,
        }))?;
        loop {
            match rx.recv().map_err(|_| EngineError::Stopped)? {
                DecodeMsg::Piece(p) => {
                    if on_piece(&p) == Control::Stop {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                DecodeMsg::Done(result) => return result,
            }
        }
    }

    /// Text tokens of `text` by the model's tokenizer (the metric of DESIGN.md §6 when no DeepSeek-V3 tokenizer is
    /// configured), counted on the caller's thread.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        let t0 = Instant::now();
        let n = self.tokenizer.encode_text(text)?.len();
        update(&self.stats, |s| {
            s.counts += 1;
            s.count_time += t0.elapsed();
        });
        Ok(n)
    }

    /// Holds the worker idle until the guard is dropped, returning once the worker has stopped taking jobs: for
    /// maintenance that must not race with model calls, and for tests that fill the queue deterministically. The
    /// pause itself takes a queue slot until the worker picks it up.
    pub fn pause(&self) -> Result<PauseGuard, EngineError> {
        let (started, started_rx) = mpsc::channel();
        let (resume_tx, resume) = mpsc::channel();
        self.submit(Job::Pause { started, resume })?;
        started_rx.recv().map_err(|_| EngineError::Stopped)?;
        Ok(PauseGuard { _resume: resume_tx })
    }
}

/// Empties and closes the queue when the worker thread ends.
struct Abandon(Arc<JobQueue<Queued>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(w) = self.worker.take() {
            // A worker that panicked has already failed its callers with `Stopped`; nothing more to report here.
            let _ = w.join();
        }
    }
}

fn update(stats: &Mutex<EngineStats>, f: impl FnOnce(&mut EngineStats)) {
    f(&mut stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
}

fn run(model: &OcrModel, job: Job, stats: &Mutex<EngineStats>) {
    // A caller that gave up has dropped its receiver; its answer is discarded.
    let t0 = Instant::now();
    match job {
        Job::Encode {
            image, tier, reply, ..
        } => {
            let result = {
                let _span = tracing::info_span!("engine.encode", tier = %tier).entered();
                encode(model, &image, tier)
            };
            update(stats, |s| {
                s.encodes += 1;
                s.encode_time += t0.elapsed();
            });
            let _ = reply.send(result);
        }
        Job::Decode(d) if d.cancel.load(Ordering::Relaxed) => {
            // The caller went away while this waited in the queue: no prefill for nobody.
            update(stats, |s| {
                s.decodes_skipped += 1;
                s.decodes_cancelled += 1;
            });
            let _ = d.reply.send(DecodeMsg::Done(Ok(Decoded {
                text: String::new(),
                tokens: 0,
                cancelled: true,
            })));
        }
        Job::Decode(d) => run_decodes(model, vec![d], stats),
        Job::Pause { started, resume } => {
            let _ = started.send(());
            // Returns when the guard's sender is dropped.
            let _ = resume.recv();
        }
    }
}

/// Decodes of one shape (`Job::batch_key`), one or several, as one generation: each caller is streamed its own text and
/// gets its own answer.
fn run_decodes(model: &OcrModel, jobs: Vec<DecodeJob>, stats: &Mutex<EngineStats>) {
    let t0 = Instant::now();
    let mut embeds = Vec::with_capacity(jobs.len());
    let mut opts = Vec::with_capacity(jobs.len());
    let mut callers = Vec::with_capacity(jobs.len());
    let mut failed = None;
    for job in jobs {
        match Tensor::from_vec(job.values, (job.rows, job.cols), model.decoder.device())
            .and_then(|t| t.to_dtype(model.decoder.dtype()))
        {
            Ok(t) => embeds.push(t),
            Err(e) => failed = Some(e.to_string()),
        }
        opts.push(model.ocr_options(job.max_new_tokens));
        callers.push((job.cancel, job.reply));
    }
    let n = callers.len() as u64;
    update(stats, |s| {
        s.decodes_started += n;
        if n > 1 {
            s.decode_batches += 1;
            s.batched_decodes += n;
        }
    });
    let result = match failed {
        Some(reason) => Err(ModelError::Input { reason }),
        None => {
            let _span = tracing::info_span!("engine.decode", batch = n).entered();
            model.decode_batch(&embeds, crate::model::FREE_OCR_PROMPT, &opts, |i, piece| {
                let (cancel, reply) = &callers[i];
                let _ = reply.send(DecodeMsg::Piece(piece.to_owned()));
                if cancel.load(Ordering::Relaxed) {
                    Control::Stop
                } else {
                    Control::Continue
                }
            })
        }
    };
    let elapsed = t0.elapsed();
    match result {
        Ok(done) => {
            for ((text, generation), (_, reply)) in done.into_iter().zip(&callers) {
                let cancelled = generation.stop == StopReason::Stopped;
                let tokens = generation.tokens.len();
                update(stats, |s| {
                    s.tokens_generated += tokens as u64;
                    if cancelled {
                        s.decodes_cancelled += 1;
                    } else {
                        s.decodes_finished += 1;
                    }
                });
                let _ = reply.send(DecodeMsg::Done(Ok(Decoded {
                    text,
                    tokens,
                    cancelled,
                })));
            }
        }
        Err(e) if callers.len() == 1 => {
            let _ = callers[0]
                .1
                .send(DecodeMsg::Done(Err(EngineError::Model(e))));
        }
        // The batch failed as a whole (a model error is not specific to one page): every caller gets its reason.
        Err(e) => {
            for (_, reply) in &callers {
                let _ = reply.send(DecodeMsg::Done(Err(EngineError::Model(
                    ModelError::Input {
                        reason: format!("batched decode failed: {e}"),
                    },
                ))));
            }
        }
    }
    update(stats, |s| s.decode_time += elapsed);
}

fn encode(model: &OcrModel, image: &Image8, tier: Tier) -> Result<Encoded, EngineError> {
    let t = model.encode(image, mode_for(tier))?;
    let (rows, cols) = t.dims2().map_err(ModelError::from)?;
    let values = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(ModelError::from)?;
    Ok(Encoded {
        values,
        rows,
        cols,
        vision_tokens: tier.vision_tokens(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_pages_become_three_equal_channels_and_tiers_map_to_modes() -> Result<(), EngineError> {
        let page = GrayImage {
            width: 2,
            height: 1,
            pixels: vec![10, 200],
        };
        let img = page_image(&page)?;
        assert_eq!((img.width(), img.height(), img.channels()), (2, 1, 3));
        assert_eq!(img.data(), &[10, 10, 10, 200, 200, 200]);
        for tier in Tier::ALL {
            assert_eq!(mode_for(tier).name(), tier.name());
        }
        Ok(())
    }
}

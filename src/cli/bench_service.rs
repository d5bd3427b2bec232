//! `optimem bench service`: flags → [`optimem::bench::service`], report as markdown or JSON on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use optimem::bench::service::{ServiceBenchOptions, run as run_bench};
use optimem::engine::DEFAULT_QUEUE;
use optimem::memory::DEFAULT_MAX_PENDING;

use super::serve::{Encode, ModelTuning};

#[derive(clap::Args)]
pub struct ServiceArgs {
    /// Concurrent clients, each with its own connection and session.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long clients keep sending (e.g. 60s, 2m); requests in flight then finish and count.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    duration: Duration,
    /// Model directory.
    #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
    model: PathBuf,
    /// The engine's queue, as `serve --queue`.
    #[arg(long, default_value_t = DEFAULT_QUEUE)]
    queue: usize,
    #[command(flatten)]
    tuning: ModelTuning,
    /// Text tokens per remembered chat turn, about.
    #[arg(long, default_value_t = 1000)]
    turn_tokens: usize,
    /// Cap on tokens decoded per recalled page (the server's default).
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// Wait after RESOURCE_EXHAUSTED before a client's next call.
    #[arg(long, default_value = "100ms", value_parser = super::parse_duration)]
    backoff: Duration,
    /// tokenizer.json that sizes the turns (default: the DeepSeek-V3 one in assets/, else the model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// When Remember's pages get their vision tokens, as `serve --encode`.
    #[arg(long, value_enum, default_value_t = Encode::Background)]
    encode: Encode,
    /// Pages that may wait for their tokens, as `serve --max-pending`.
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING)]
    max_pending: usize,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ServiceArgs) -> Result<()> {
    let policy = a.tuning.policy()?;
    let (device, dtype) = super::ocr::device()?;
    eprintln!(
        "bench service: {} clients for {:?} against an in-process server ({})",
        a.clients,
        a.duration,
        a.model.display()
    );
    let report = run_bench(&ServiceBenchOptions {
        model: a.model,
        device,
        dtype,
        clients: a.clients,
        duration: a.duration,
        queue: a.queue,
        model_nice: a.tuning.model_nice,
        turn_tokens: a.turn_tokens,
        max_new_tokens: a.max_new_tokens,
        backoff: a.backoff,
        policy,
        tokenizer: a.tokenizer,
        encode: a.encode.into(),
        max_pending: a.max_pending,
    })?;
    super::print_report(a.json, &report, |r| r.markdown())
}

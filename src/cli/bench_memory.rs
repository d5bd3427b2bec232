//! `optimem bench memory`: flags → [`optimem::bench::memory`], report as markdown or JSON on stdout.

use std::path::PathBuf;

use anyhow::Result;
use optimem::bench::memory::{MemoryBenchOptions, run as run_bench};
use optimem_renderer::Tier;

#[derive(clap::Args)]
pub struct MemoryArgs {
    /// Model directory.
    #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
    model: PathBuf,
    /// Tiers to measure; every page of a run is written at its tier.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small,base")]
    tiers: Vec<Tier>,
    /// Chat turns remembered per tier and token encoding.
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Text tokens per turn, about.
    #[arg(long, default_value_t = 1000)]
    turn_tokens: usize,
    /// Cap on tokens decoded per page.
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// tokenizer.json that counts text tokens (default: the DeepSeek-V3 one in assets/, else the model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    json: bool,
}

pub fn run(a: MemoryArgs) -> Result<()> {
    let (device, dtype) = super::ocr::device()?;
    eprintln!(
        "bench memory: {} turn(s) per tier and encoding at {:?} ({})",
        a.turns,
        a.tiers,
        a.model.display()
    );
    let report = run_bench(&MemoryBenchOptions {
        model: a.model,
        device,
        dtype,
        tiers: a.tiers,
        turns: a.turns,
        turn_tokens: a.turn_tokens,
        max_new_tokens: a.max_new_tokens,
        tokenizer: a.tokenizer,
    })?;
    super::print_report(a.json, &report, |r| r.markdown())
}
